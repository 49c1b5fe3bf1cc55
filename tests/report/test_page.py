"""The report page built from RunRecords made here: escaping, hooks, states, missing parts, size, comparison.

The records are built directly (no training): each test sets exactly the fields it is about. The
browser test (test_browser.py) opens pages of real runs; these tests check the HTML text itself.
"""

import base64
import html
import math
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cnnlab.report.page import MAX_CONFUSION_CLASSES, render_comparison, render_run
from cnnlab.report.runs import EvalRecord, RunRecord
from cnnlab.tune.diagnose import Finding

SCRIPT = "<script>alert(1)</script>"
BOLD = "<b>&"
STATE_NOTES = {
    "running": "running on host (pid 12): 3 of 10 epochs done, last update 2026-12-01T10:00:00.",
    "interrupted": "interrupted (Ctrl-C) after 3 of 10 epochs; `cnnlab train --resume RUN` continues it.",
    "diverged": "diverged after 2 of 10 epochs: the loss became nan at step 73.",
    "failed": "failed after 1 of 10 epochs: CUDA out of memory.",
    "stopped": "stopped after 3 of 10 epochs: status.json says running, but its process 12 on host is gone.",
    "incomplete": "3 of 10 epochs recorded and no report.txt: the run stopped early or is still running.",
    "empty": "no epoch finished (metrics.csv holds no complete row).",
}
STATE_LABELS = {"running": "Still running", "interrupted": "Interrupted", "diverged": "Diverged", "failed": "Failed",
                "stopped": "Stopped", "incomplete": "Incomplete", "empty": "No epoch finished yet"}


# --- building records -------------------------------------------------------------------------------


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels (incompressible: its size is about width * height * 3 bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def metric_rows(epochs: int, steps_per_epoch: int = 10, ema: bool = False) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": 2.0 / epoch, "train_acc": 1 - 0.5 / epoch,
               "val_loss": 2.2 / epoch, "val_acc": 0.9 - 0.3 / epoch, "ema_val_loss": None, "ema_val_acc": None,
               "lr": 0.1 * (1 - epoch / (epochs + 1)), "epoch_seconds": 1.5, "images_per_second": 1234.6}
        if ema:
            row["ema_val_loss"], row["ema_val_acc"] = 2.1 / epoch, 0.91 - 0.3 / epoch
        rows.append(row)
    return rows


def step_rows(count: int) -> list[tuple[int, float, float]]:
    return [(step, 2.3 * math.exp(-step / (count / 3)) + 0.05 * math.sin(step), 0.1 * (1 - step / count))
            for step in range(1, count + 1)]


def config(**sections) -> dict:
    base = {"model": {"name": "lenet5", "norm": None}, "data": {"spec": "digits"},
            "optim": {"name": "sgd", "lr": 0.05, "betas": [0.9, 0.999]}, "train": {"epochs": 10, "seed": 0},
            "log": {"smoothing": 50}}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return base


def eval_record(folder: Path, classes: list[str], name: str = "eval-test-none", mistakes_png: bytes = None,
                tta: str = "none") -> EvalRecord:
    """An eval with a confusion matrix whose diagonal holds 90% of each class."""
    folder.mkdir(parents=True, exist_ok=True)
    size = len(classes)
    confusion = [[90 if i == j else (10 if j == (i + 1) % size else 0) for j in range(size)] for i in range(size)]
    metrics = {"images": 100 * size, "top1": 0.9, "top5": 0.99, "loss": 0.31, "macro_f1": 0.9,
               "per_class": [{"class": c, "precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 1234} for c in classes],
               "confusion": confusion, "checkpoint": str(folder.parent / "best.safetensors"), "model": "lenet5",
               "weights": "raw", "data": "digits", "split": "test", "tta": tta, "views": 1, "seconds": 2.5,
               "images_per_second": 4000.0, "notes": [f"note about {classes[0]}"],
               "mistakes": [{"index": 7, "true": classes[0], "predicted": classes[1], "probability": 0.97}]}
    png = None
    if mistakes_png is not None:
        png = folder / "mistakes.png"
        png.write_bytes(mistakes_png)
    return EvalRecord(name=name, path=folder, metrics=metrics, confusion_png=None, mistakes_png=png)


def record(path: Path, **fields) -> RunRecord:
    """A finished 10-epoch run; ``fields`` replace any of its values."""
    rows = metric_rows(10)
    values = dict(path=path, name=path.name, state="finished", state_note="finished 10 of 10 epochs.",
                  config=config(), model="lenet5", data="digits", epochs_planned=10, rows=rows, steps=step_rows(100),
                  best_val_acc=max(r["val_acc"] for r in rows), best_epoch=10, final_val_acc=rows[-1]["val_acc"],
                  seconds=15.0, images_per_second=1234.6, wall_seconds=[1.5 * (i + 1) for i in range(10)],
                  params=61_706, macs=416_520, environment=None, init=None, summary_text=None,
                  findings=[], evals=[], ensembles=[], test_acc=None, problems=[], curves_png=None)
    values.update(fields)
    return RunRecord(**values)


# --- checking HTML -----------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Balance(HTMLParser):
    """Fails on a closing tag that does not match the open one; ``stack`` holds what is left open."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.text, self.attrs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path ... />: opens and closes
        self.attrs.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Balance:
    """The page parsed; asserts every tag is closed in order and nothing is left open."""
    assert page.startswith("<!DOCTYPE html>")
    parser = Balance()
    parser.feed(page)
    parser.close()
    assert parser.errors == [], parser.errors[:5]
    assert parser.stack == [], f"left open: {parser.stack}"
    tags = [tag for tag, _ in parser.attrs]
    for tag in ("html", "head", "body", "main", "style"):
        assert tags.count(tag) == 1, f"{tag} appears {tags.count(tag)} times"
    assert page.split("</head>")[0].count("<title>") == 1  # (each chart has its own <title> too)
    return parser


def assert_self_contained(page: str) -> None:
    """Nothing to fetch, nothing to run: no URL, no script, no stylesheet link; images inline."""
    for forbidden in ("http://", "https://", "<script", "<link", "<iframe", "url(", "@import"):
        assert forbidden not in page, forbidden
    parser = parse(page)
    for tag, attrs in parser.attrs:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)  # no event handlers
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]


def hook(page: str, css_class: str) -> list[str]:
    """data-value of each element whose class list holds ``css_class``."""
    return re.findall(rf'class="[^"]*\b{css_class}\b[^"]*" data-value="([^"]*)"', page)


# --- one run -----------------------------------------------------------------------------------------


def test_a_finished_run_page_is_self_contained_and_well_formed(tmp_path):
    run = record(tmp_path / "lenet5-digits", evals=[eval_record(tmp_path / "e", list("0123456789"),
                                                                mistakes_png=png_bytes(20, 10))],
                 test_acc=0.9, summary_text="layer table\nparameters  61,706", environment={
                     "cpu": "AMD EPYC", "cores": 2, "device": "cpu", "torch": "2.14.1", "cnnlab": "0.1.0",
                     "python": "3.11.7", "platform": "Linux-6.1"})
    page = render_run(run)
    assert_self_contained(page)
    assert "<title>lenet5-digits</title>" in page
    assert '<h1 class="run-name" data-run="lenet5-digits">lenet5-digits</h1>' in page
    assert "banner" not in page.split("</header>")[1].split("<nav>")[0]  # finished: no banner
    # hooks carry the fractions exactly; the text shows percentages with two decimals
    assert hook(page, "best-val") == [repr(run.best_val_acc)] and f"{run.best_val_acc:.2%}" in page
    assert hook(page, "final-val") == [repr(run.final_val_acc)]
    assert hook(page, "test-acc") == ["0.9"] and "90.00%" in page
    for text in ("61,706", "416,520", "1,235", "15.0 s", "10 / 10", "AMD EPYC, 2 cores", "torch 2.14.1"):
        assert text in page, text
    assert page.count("<svg") == 4  # step loss, epoch loss, epoch accuracy, learning rate
    for unit in ("step", "epoch", "loss", "accuracy (%)", "learning rate"):
        assert f">{unit}</text>" in page, unit
    assert '<details><summary>Per-layer summary</summary><pre>layer table' in page  # collapsed


def test_the_machine_line_says_how_many_processes_trained_a_ddp_run(tmp_path):
    """environment.json's processes (torchrun's ranks) is on the page, so a DDP run's img/s does not read as one
    process's speed; one process, or a record from before the key, says nothing about it."""
    machine = {"cpu": "AMD EPYC", "cores": 2, "device": "cpu", "torch": "2.14.1"}
    ddp = render_run(record(tmp_path / "ddp", environment={**machine, "processes": 2}))
    assert "AMD EPYC, 2 cores · 2 processes (DDP) · torch 2.14.1" in html.unescape(ddp)
    for name, environment in (("one", {**machine, "processes": 1}), ("old", machine)):
        assert "processes" not in render_run(record(tmp_path / name, environment=environment)), name


def test_the_mistakes_png_is_embedded_byte_for_byte(tmp_path):
    data = png_bytes(30, 20, seed=3)
    run = record(tmp_path / "run", evals=[eval_record(tmp_path / "e", ["a", "b", "c"], mistakes_png=data)])
    page = render_run(run)
    (encoded,) = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(encoded) == data


def test_a_file_that_is_not_a_png_is_named_not_embedded(tmp_path):
    run = record(tmp_path / "run", evals=[eval_record(tmp_path / "e", ["a", "b"], mistakes_png=b"GIF89a...")])
    page = render_run(run)
    assert "<img" not in page and "mistakes.png is not a PNG image." in page


def test_the_confusion_matrix_is_a_shaded_table(tmp_path):
    classes = ["cat", "dog", "bird"]
    page = render_run(record(tmp_path / "run", evals=[eval_record(tmp_path / "e", classes)]))
    matrix = page.split('<table class="cm">')[1].split("</table>")[0]
    assert matrix.count("<tr>") == 1 + len(classes)  # a header row and one row per true class
    cells = re.findall(r'<td class="([^"]+)"[^>]*>([\d,]+)</td>', matrix)
    assert len(cells) == len(classes) ** 2
    # 90 of 100 on the diagonal: 0.9 * 8 shades rounds to 7; 10 of 100 off it: 0.8 rounds to 1; zeros muted
    assert [css for css, count in cells if count == "90"] == ["d7"] * 3
    assert [css for css, count in cells if count == "10"] == ["o1"] * 3
    assert [css for css, count in cells if count == "0"] == ["z"] * 3
    assert "1,234" in page  # per-class support with a thousands separator


def test_many_classes_list_the_most_confused_pairs_instead(tmp_path):
    classes = [f"class{i}" for i in range(MAX_CONFUSION_CLASSES + 10)]
    page = render_run(record(tmp_path / "run", evals=[eval_record(tmp_path / "e", classes)]))
    assert '<table class="cm">' not in page
    assert "Most confused pairs (40 classes: too many for the full matrix)" in page
    assert "<details><summary>Per class" in page  # the long per-class table starts collapsed


def test_class_names_config_values_findings_and_names_are_escaped(tmp_path):
    classes = [SCRIPT, "dog", "cat"]
    run = record(tmp_path / f"run-{BOLD}", name=f"run-{BOLD}",
                 config=config(data={"spec": f"csv:{BOLD}/labels.csv"}), data=f"csv:{BOLD}/labels.csv",
                 evals=[eval_record(tmp_path / "e", classes, name=f"eval-{SCRIPT}")],
                 findings=[Finding("overfitting", "WARN", f"title {SCRIPT}", f"evidence {BOLD}", f"remedy {SCRIPT}")],
                 problems=[f"metrics.csv: line 3 {SCRIPT} cut short"], summary_text=f"layer {SCRIPT}",
                 init={"source": f"/runs/{BOLD}", "loaded": [SCRIPT], "text": f"loaded {BOLD}"},
                 ensembles=[{"split": "test", "tta": "none", "members": [{"checkpoint": SCRIPT, "top1": 0.5}],
                             "ensemble": {"top1": 0.6}, "best_member_top1": 0.5, "gain_over_best_member": 0.1}],
                 environment={"device": SCRIPT, "platform": BOLD})
    page = render_run(run)
    assert SCRIPT not in page and BOLD not in page
    assert "<script" not in page and "<b>" not in page
    escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert page.count(escaped_script) >= 10  # per-class, confusion, mistakes, finding, problems, summary, ...
    assert "run-&lt;b&gt;&amp;" in page and "<title>run-&lt;b&gt;&amp;</title>" in page
    assert 'data-run="run-&lt;b&gt;&amp;"' in page
    text = "".join(parse(page).text)
    assert SCRIPT in text and f"evidence {BOLD}" in text  # decoded, the text is the original
    assert_self_contained(page)


def test_the_config_shown_reads_back_with_class_names_yaml_would_take_for_values(tmp_path):
    """The page's "Resolved config" is YAML a user copies into a file: a class named 1e3 was shown unquoted, which
    cnnlab's reader takes for the number 1000.0; '1.5', 'true', 'null' and '012' were quoted already."""
    from cnnlab.config import safe_load_unique

    names = ["1e3", "8e-3", "1.5", "true", "null", "012", "plain"]
    page = render_run(record(tmp_path / "run", config=config(data={"classes": names})))
    shown = re.search(r'<pre class="config">(.*?)</pre>', page, re.S)
    assert shown is not None
    assert safe_load_unique(html.unescape(shown.group(1)))["data"]["classes"] == names


@pytest.mark.parametrize("state", sorted(STATE_NOTES))
def test_every_unfinished_state_gets_a_banner(tmp_path, state):
    rows = [] if state == "empty" else metric_rows(3)
    if state == "diverged":
        rows[-1]["train_loss"] = math.nan
    run = record(tmp_path / "run", state=state, state_note=STATE_NOTES[state], rows=rows,
                 steps=[] if state == "empty" else step_rows(30),
                 best_val_acc=None if state == "empty" else 0.8, final_val_acc=None if state == "empty" else 0.8,
                 wall_seconds=[1.5 * (i + 1) for i in range(len(rows))], seconds=1.5 * len(rows))
    page = render_run(run)
    banner = re.search(r'<div class="banner b-(\w+)" role="status">(.*?)</div>', page)
    assert banner is not None, state
    assert STATE_LABELS[state] in banner.group(2) and STATE_NOTES[state].split("`")[0] in banner.group(2)
    assert banner.group(1) == {"diverged": "FAIL", "failed": "FAIL", "running": "NOTE"}.get(state, "WARN")
    assert_self_contained(page)
    if state == "empty":
        assert page.count(">no data yet<") == 4 and "Nothing to read yet" in page
    if state == "diverged":
        assert "train loss: nan at x = 3" in page  # the chart marks the NaN


def test_a_run_with_steps_but_no_epoch_gets_no_pass(tmp_path):
    run = record(tmp_path / "run", state="running", state_note=STATE_NOTES["running"], rows=[], steps=step_rows(30),
                 findings=[], best_val_acc=None, final_val_acc=None, wall_seconds=[], seconds=0.0)
    diagnosis = re.search(r'<section class="card" id="diagnosis">(.*?)</section>', render_run(run)).group(1)
    assert "PASS" not in diagnosis and "no epoch has finished" in diagnosis


def test_a_run_without_a_finished_epoch_shows_no_training_time(tmp_path):
    # metrics.csv holds epoch times only for finished epochs: a run diverged in its first epoch trained for
    # a while, but no file says how long, and `cnnlab runs` shows no time for it either.
    run = record(tmp_path / "run", state="diverged", state_note=STATE_NOTES["diverged"], rows=[],
                 steps=step_rows(8), best_val_acc=None, best_epoch=None, final_val_acc=None, wall_seconds=[],
                 seconds=0.0, images_per_second=None)
    header = re.search(r"<header.*?</header>", render_run(run), re.S).group(0)
    assert re.search(r"training time</dt><dd>—</dd>", header), header
    finished = record(tmp_path / "finished")
    cells = re.findall(r'<tr class="run-row[^"]*" data-run="([^"]+)">(.*?)</tr>', render_comparison([finished, run]))
    times = {name: re.findall(r'<td class="num">([^<]*)</td>', row)[2] for name, row in cells}  # epochs, time, images/s
    assert times == {"finished": "15.0 s", "run": "—"}


def test_a_note_is_no_verdict_and_the_pass_says_which_rules_read_the_curves(tmp_path):
    def diagnosis(findings):
        page = render_run(record(tmp_path / "run", findings=findings))
        return re.search(r'<section class="card" id="diagnosis">(.*?)</section>', page).group(1)

    assert "PASS</span> No rule found a problem" in diagnosis([])
    short = diagnosis([Finding("not_checked", "NOTE", "Rules not checked", "still_improving (needs 4 epochs)", "")])
    assert "still_improving (needs 4 epochs)" in short
    assert "PASS</span> No rule that could read the curves found a problem" in short
    assert "PASS" not in diagnosis([Finding("not_checked", "NOTE", "t", "e", ""), Finding("overfitting", "WARN", "t",
                                                                                            "e", "r")])


def test_file_problems_get_a_banner_and_a_list(tmp_path):
    page = render_run(record(tmp_path / "run", problems=["steps.csv: the last line (412) was cut short and left out"]))
    assert '<div class="banner b-WARN"' in page and "1 file problem:" in page
    assert '<section class="card" id="problems">' in page and "(412) was cut short" in page


def test_a_run_with_nothing_optional_still_renders_every_section(tmp_path):
    run = record(tmp_path / "bare", config=None, model="?", data="?", epochs_planned=None, rows=[], steps=[],
                 best_val_acc=None, best_epoch=None, final_val_acc=None, seconds=0.0, images_per_second=None,
                 wall_seconds=[], params=None, macs=None, state="empty", state_note="no epoch finished.",
                 problems=["config.yaml could not be read"])
    page = render_run(run)
    assert_self_contained(page)
    for text in ("not recorded", "not evaluated", "planned: unknown", "The config could not be read",
                 "No per-layer summary recorded.", "no data yet"):
        assert text in page, text
    assert hook(page, "best-val") == [] and 'class="best-val"' in page  # shown as "—", no data-value
    assert "test-acc" not in page and "eval-1" not in page and 'id="tta"' not in page


def test_ema_curves_tta_table_and_ensembles_are_shown(tmp_path):
    evals = [eval_record(tmp_path / "a", ["x", "y"], name="eval-test-none"),
             eval_record(tmp_path / "b", ["x", "y"], name="eval-test-flip", tta="flip")]
    ensemble = {"split": "test", "tta": "none", "weights": "raw", "file": "/runs/r/ensemble-3.json",
                "members": [{"checkpoint": "/runs/a/best.safetensors", "model": "lenet5", "top1": 0.9, "loss": 0.3},
                            {"checkpoint": "/runs/b/best.safetensors", "model": "lenet5", "top1": 0.91, "loss": 0.3}],
                "ensemble": {"top1": 0.93, "loss": 0.25}, "best_member_top1": 0.91, "gain_over_best_member": 0.02}
    page = render_run(record(tmp_path / "run", rows=metric_rows(10, ema=True), evals=evals, ensembles=[ensemble]))
    assert ">EMA val loss</text>" in page and ">EMA val accuracy</text>" in page
    tta = page.split('id="tta"')[1]
    assert "eval-test-flip" in tta and "eval-test-none" in tta
    assert "Ensemble 1 (ensemble-3.json)" in tta and "93.00%" in tta and "+2.00 points" in tta


def test_the_45_epoch_fashion_mnist_report_stays_under_3_mb(tmp_path):
    # 45 epochs of 60,000 images at batch 256: 235 steps an epoch, 10,575 steps; one eval of 10 classes
    # with a ~100 KB mistakes.png (random pixels do not compress)
    steps_per_epoch = 235
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    mistakes = png_bytes(190, 180)
    assert 95_000 < len(mistakes) < 110_000
    run = record(tmp_path / "resnet-fashion", rows=metric_rows(45, steps_per_epoch, ema=True),
                 steps=step_rows(45 * steps_per_epoch), epochs_planned=45,
                 wall_seconds=[30.0 * (i + 1) for i in range(45)],
                 evals=[eval_record(tmp_path / "e", classes, mistakes_png=mistakes)], test_acc=0.9,
                 summary_text="\n".join(f"layer {i} " + "x" * 100 for i in range(80)))
    page = render_run(run)
    assert len(page) < 3_000_000
    assert len(page.encode("utf-8")) < 3_000_000
    # the step curves are drawn from at most 1,000 points each, not 10,575
    step_chart = page.split("<svg")[1]
    for path in re.findall(r'<path d="([^"]+)" fill="none"', step_chart):
        assert path.count("L") + path.count("M") <= 1000
    assert_self_contained(page)


# --- several runs ------------------------------------------------------------------------------------


def comparison_records(tmp_path) -> list[RunRecord]:
    """Three runs differing in optim.lr and train.seed (and one in a key the others lack)."""
    runs = []
    for index, (lr, seed) in enumerate([(0.02, 0), (0.05, 1), (0.1, 2)]):
        rows = metric_rows(5 + index)
        for row in rows:
            row["val_acc"] -= 0.02 * abs(index - 1)  # the middle run is the best
        extra = {"optim": {"lr": lr}, "train": {"seed": seed}}
        if index == 2:
            extra["aug"] = {"preset": "light"}
        runs.append(record(tmp_path / f"run-lr{lr}", config=config(**extra), rows=rows,
                           best_val_acc=max(r["val_acc"] for r in rows), final_val_acc=rows[-1]["val_acc"],
                           best_epoch=len(rows), wall_seconds=[2.0 * (i + 1) for i in range(len(rows))],
                           test_acc=0.85 if index == 0 else None))
    return runs


def test_comparison_table_has_exactly_the_differing_keys_and_stars_the_best(tmp_path):
    runs = comparison_records(tmp_path)
    page = render_comparison(runs)
    assert_self_contained(page)
    assert "<title>3 runs: run-lr0.02, run-lr0.05, run-lr0.1</title>" in page
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table.split("</thead>")[0])
    keys = [h for h in headers if "." in h]
    assert keys == ["aug.preset", "optim.lr", "train.seed"]
    rows = re.findall(r'<tr class="(run-row[^"]*)" data-run="([^"]+)">(.*?)</tr>', table)
    assert [name for _, name, _ in rows] == [run.name for run in runs]
    assert [css for css, _, _ in rows] == ["run-row", "run-row best", "run-row"]
    assert "★" in rows[1][2] and "★" not in rows[0][2] + rows[2][2]
    assert hook(table, "best-val") == [repr(run.best_val_acc) for run in runs]
    assert hook(table, "test-acc") == ["0.85"]
    assert '<td class="muted">—</td>' in rows[0][2]  # aug.preset: absent in the first run's config
    assert page.count('<svg class="chart"') == 4
    for label in ("epoch", "training time (s)", "accuracy (%)", "loss"):
        assert f">{label}</text>" in page
    for run in runs:
        assert page.count(f">{run.name}</text>") == 4  # named in each chart's legend


def test_each_table_row_shows_the_line_its_run_is_drawn_with_beyond_the_palette(tmp_path):
    """Past the palette's 7 colours a chart tells runs apart by dash pattern as well; the table's swatch of each
    run must be that same line (colour and dashes), so that 9 runs have 9 different swatches."""
    import xml.etree.ElementTree as ET

    runs = [record(tmp_path / f"run{index}", best_val_acc=0.5 + index / 100) for index in range(9)]
    page = render_comparison(runs)
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    swatches = {}
    for name, cell in re.findall(r'<tr class="run-row[^"]*" data-run="([^"]+)"><td>(<svg.*?</svg>)', table):
        line = ET.fromstring(cell).find("path")
        swatches[name] = (line.get("stroke"), line.get("stroke-dasharray"))
    assert len(swatches) == 9 and len(set(swatches.values())) == 9
    chart = ET.fromstring(re.search(r'<svg class="chart".*?</svg>', page, re.S).group(0))
    for path in chart.iter("path"):
        title = path.find("title")
        if title is not None and title.text in swatches:
            assert (path.get("stroke"), path.get("stroke-dasharray")) == swatches.pop(title.text)
    assert swatches == {}  # every run's line was found in the chart


def test_of_runs_with_equal_best_val_accuracy_the_first_is_starred(tmp_path):
    runs = comparison_records(tmp_path)
    runs[2].best_val_acc = runs[1].best_val_acc  # a tie with the best: the table's order decides, as max() does
    rows = re.findall(r'<tr class="(run-row[^"]*)" data-run="([^"]+)">', render_comparison(runs))
    assert [css for css, _ in rows] == ["run-row", "run-row best", "run-row"]


def test_comparison_states_problems_and_missing_data(tmp_path):
    runs = comparison_records(tmp_path)
    runs[0].state, runs[0].state_note = "diverged", "diverged after 5 of 10 epochs: the loss became nan at step 40."
    runs[1].problems = ["metrics.csv: the last line was cut short"]
    runs.append(record(tmp_path / "empty-run", rows=[], steps=[], best_val_acc=None, final_val_acc=None,
                       best_epoch=None, wall_seconds=[], state="empty", state_note="no epoch finished.", config=None))
    page = render_comparison(runs)
    assert_self_contained(page)
    assert '<div class="banner b-FAIL"' in page and "the loss became nan at step 40" in page
    # the run's own note, once: not after its state's label, whose word the note repeats ("Diverged, diverged")
    assert f"<strong>{runs[0].name}:</strong> diverged after 5 of 10 epochs" in page and "Diverged, " not in page
    assert "empty-run: " not in page.split('id="problems"')[0].split("banner")[0]
    assert "run-lr0.05: metrics.csv: the last line was cut short" in page
    assert "empty-run (no data)" in page  # named in the legends, with nothing to draw
    assert page.count('class="run-row') == 4 and page.count('class="run-row best"') == 1


def test_comparison_title_is_shortened():
    from cnnlab.report.page import TITLE_NAMES_CHARS, _comparison_title

    runs = [record(Path(f"/runs/a-rather-long-run-name-{i:02d}")) for i in range(12)]
    title = _comparison_title(runs)
    assert title.startswith("12 runs: a-rather-long-run-name-00, ") and title.endswith(", …")
    assert len(title) <= len("12 runs: ") + TITLE_NAMES_CHARS + len(", …")


def test_the_learning_rate_chart_says_whose_rate_it_is_where_parameters_train_at_several(tmp_path):
    def title(**optim) -> str:
        page = render_run(record(tmp_path / "run", config=config(optim=optim)))
        (found,) = {text for text in parse(page).text if text.startswith("Learning rate per step")}  # title, tooltip
        return found

    assert title() == "Learning rate per step"  # one rate: the column is every parameter's
    classifier = "Learning rate per step (the classifier's; the other rates follow from the config)"
    assert title(layer_decay=0.7) == classifier
    assert title(backbone_lr_mult=0.1) == classifier
    assert title(name="muon") == classifier
    # a multiplier above 1 too: the column is the classifier's rate whatever the other groups' order
    assert title(backbone_lr_mult=2.0) == classifier


def test_the_mistakes_table_says_it_holds_the_most_confident_few_of_all_the_mistakes(tmp_path):
    # metrics.json keeps the 16 most confident mistakes; the page called them "The 16 mistakes" of a run with 39
    from cnnlab.report.page import _mistakes
    from cnnlab.report.runs import EvalRecord

    mistakes = [{"index": k, "label": "a", "predicted": "b", "confidence": 0.9} for k in range(16)]
    record = EvalRecord(name="eval-test-none", path=tmp_path, confusion_png=None, mistakes_png=None,
                        metrics={"images": 269, "top1": 1 - 39 / 269, "mistakes": mistakes})
    assert "The 16 most confident of 39 mistakes as a table" in _mistakes(record)
    record.metrics["top1"] = 1 - 16 / 269  # every mistake listed
    assert "The 16 mistakes as a table" in _mistakes(record)


def test_only_a_run_that_early_stopping_ended_says_why_under_its_name(tmp_path):
    """The line under the name is status.json's reason; a finished run whose metrics.csv lost its last rows
    (100 of 120 recorded) stopped for no reason, and said 'ended early' all the same."""
    stopped = record(tmp_path / "a", epochs_planned=30, state_note="finished 11 of 30 epochs: stopped early after "
                                                                    "epoch 11 of 30: no gain")
    assert '<p class="sub ended-early">finished 11 of 30 epochs: stopped early' in render_run(stopped)
    cut = record(tmp_path / "b", epochs_planned=120, state_note="finished 120 of 120 epochs.")
    assert "ended-early" not in render_run(cut)


def test_runs_trained_in_other_precisions_say_so_where_their_configs_read_alike(tmp_path):
    """train.precision: auto is bf16 on a CPU with bf16 units and fp32 elsewhere: two runs of one config.yaml
    compared as '0 config keys differ' though one trained in bf16 and the other in fp32."""
    from cnnlab.report.page import trained_precision

    runs = [record(tmp_path / "xeon", environment={"precision": "bf16"}),
            record(tmp_path / "epyc", environment={"precision": "fp32"}),
            record(tmp_path / "moved", environment={"precision": "fp32", "earlier": [{"precision": "bf16"},
                                                                                      {"precision": "bf16"}]}),
            record(tmp_path / "old", environment=None)]
    assert [trained_precision(run) for run in runs] == ["bf16", "fp32", "bf16, then fp32", None]
    table = render_comparison(runs).split('<table class="runs">')[1].split("</table>")[0]
    assert "<th>trained in</th>" in table or ">trained in</th>" in table
    assert re.findall(r'<td class="(?:muted )?precision">([^<]*)</td>', table) == ["bf16", "fp32", "bf16, then fp32",
                                                                                "—"]
    alike = render_comparison(runs[:1] + [record(tmp_path / "twin", environment={"precision": "bf16"})])
    assert "trained in" not in alike  # the same precision: no column
