"""The HTML report opened in a real headless Chromium: a trained digits run, a 3-run comparison, hostile names.

The runs are real (LeNet-5 on scikit-learn's digits, one or two epochs) and built once per module.
Every number the page shows is checked against the run's own files, read here with the csv and json
modules, not through the report code.
"""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.evaluate.evaluate import run_eval
from cnnlab.report import write_report
from cnnlab.run import RunFolder
from cnnlab.train.engine import train

BASE = ["model.name=lenet5", "data.spec=digits", "train.batch_size=64", "log.quiet=true"]
SCREEN = (1280, 800)  # (width, height) pixels: a laptop
PHONE = (375, 800)  # a phone held upright
COMPARED = [("0", "0.02"), ("1", "0.05"), ("2", "0.1")]  # (train.seed, optim.lr) of the three compared runs
SCRIPT_CLASS = "<script>alert(1)</script>"  # a label no file system allows as a folder name (it holds a '/')
IMG_CLASS = "<img src=x onerror=alert(2)>"  # fires even where a <script> would not (innerHTML, attributes)
MISTAKES = 4  # most confidently wrong images per eval: enough for mistakes.png, quick to draw


def train_run(folder, *overrides):
    """Train ``BASE + overrides`` into ``folder``; returns the folder."""
    threads = torch.get_num_threads()
    try:
        train(apply_overrides(RunConfig(), BASE + list(overrides)), folder)
    finally:
        torch.set_num_threads(threads)  # the engine sets the run's threads process-wide
    return folder


def evaluate(run):
    """Evaluate the run's test split (a few mistakes: each is a subplot to draw); returns its metrics.json path."""
    return run_eval(run, mistakes=MISTAKES)["files"]["metrics"]


def val_accuracies(run) -> list[float]:
    """Every epoch's val_acc from metrics.csv, read with the csv module (independent of cnnlab's reader)."""
    with open(RunFolder(run).metrics, newline="") as handle:
        return [float(row["val_acc"]) for row in csv.DictReader(handle) if row["val_acc"]]


def eval_top1(metrics_json) -> float:
    """top1 from an eval's metrics.json, read with the json module."""
    with open(metrics_json) as handle:
        return json.load(handle)["top1"]


@pytest.fixture(scope="module", autouse=True)
def _browser_first(browser):
    """Launch the browser (or fail, naming `make test`) before any run is trained."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Statistics go to a per-module folder (the function-scoped autouse fixture starts too late for these runs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        patch.delenv("CNNLAB_DATA", raising=False)
        yield


@pytest.fixture(scope="module")
def single(cache, tmp_path_factory):
    """One evaluated 2-epoch digits run and its report: (run folder, eval metrics.json, report.html)."""
    run = train_run(tmp_path_factory.mktemp("single") / "lenet5-digits", "train.epochs=2")
    return run, evaluate(run), write_report([run])


@pytest.fixture(scope="module")
def compared(cache, tmp_path_factory):
    """Three 1-epoch runs differing in seed and learning rate (not evaluated), and their comparison page."""
    root = tmp_path_factory.mktemp("compared")
    runs = [train_run(root / f"seed{seed}-lr{lr}", "train.epochs=1", f"train.seed={seed}", f"optim.lr={lr}")
            for seed, lr in COMPARED]
    return runs, write_report(runs, out=root / "compare.html")


@pytest.fixture(scope="module")
def hostile(cache, tmp_path_factory):
    """A run on a CSV data set whose labels, folders and run name are HTML: (run, report.html)."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "<svg onload=alert(3)>"  # the data spec (a path) is shown in the config and header
    images = data / "images"
    images.mkdir(parents=True)
    generator = np.random.default_rng(0)
    rows = [("path", "label", "split")]
    for label, name in enumerate([SCRIPT_CLASS, IMG_CLASS, "cat"]):
        for index, split in enumerate(["train"] * 8 + ["val"] * 3 + ["test"] * 3):
            # (32, 32, 3) uint8 noise around a per-class grey level, so the classes are learnable
            pixels = generator.integers(0, 64, size=(32, 32, 3)) + 64 * label
            file = images / f"c{label}-{index}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(file)
            rows.append((str(file.relative_to(data)), name, split))
    with open(data / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    run = train_run(root / "run-<b onmouseover=alert(4)>bold", f"data.spec=csv:{data / 'labels.csv'}",
                    "train.epochs=1", "train.batch_size=8")
    evaluate(run)  # class names reach the page through the eval tables too
    return run, write_report([run])


# --- page checks ---------------------------------------------------------------------------------


def check_screenshot(page, size) -> None:
    """The viewport's screenshot decodes to a picture with content: many colours, not one flat background."""
    png = page.screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8
    width, height = size
    assert pixels.shape == (height, width, 3)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)  # (K, 3) distinct colours
    background = counts.max() / counts.sum()  # share of the commonest colour
    assert len(colours) >= 16, f"the screenshot has only {len(colours)} colours: the page looks blank"
    assert background <= 0.99, f"{background:.1%} of the screenshot is one colour: the page looks blank"


def check_media(page) -> int:
    """With every <details> opened: each <img> decodes, each top-level <svg> has a size. Returns their count."""
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    images = page.evaluate("""async () => Promise.all([...document.images].map(async (img) => {
        let error = null;
        try { await img.decode(); } catch (e) { error = String(e); }
        return {src: (img.getAttribute('src') || '').slice(0, 40), width: img.naturalWidth,
                height: img.naturalHeight, error};
    }))""")
    for image in images:
        assert image["width"] > 0 and image["height"] > 0 and image["error"] is None, f"image did not decode: {image}"
    boxes = page.evaluate("""[...document.querySelectorAll('svg')].filter(s => !s.parentElement.closest('svg'))
        .map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; })""")
    for width, height in boxes:
        assert width > 0 and height > 0, f"an inline <svg> renders with no area: {boxes}"
    return len(images) + len(boxes)


def check_phone(open_report, report) -> None:
    """At 375 px the page loads cleanly and the page itself does not scroll sideways (wide tables scroll inside)."""
    page, log = open_report(report, *PHONE)
    log.assert_clean()
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE[0], f"at {PHONE[0]} px the page is {overflow} px wide"
    check_media(page)


def hook_value(page, selector) -> float:
    """The data-value (a fraction written as a float's repr) the elements matching ``selector`` agree on."""
    values = page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.value)")
    assert len(set(values)) == 1, f"{selector}: expected one value, found {values}"
    return float(values[0])


def shown_percent(value: float) -> str:
    return f"{value:.2%}"  # accuracies read as 93.20%


# --- one run ---------------------------------------------------------------------------------------


def test_run_report_loads_clean_and_matches_the_run_files(single, open_report):
    run, metrics_json, report = single
    assert report == RunFolder(run).html_report
    page, log = open_report(report, *SCREEN)
    log.assert_clean()
    check_screenshot(page, SCREEN)
    assert page.title() == run.name
    names = page.eval_on_selector_all(".run-name", "els => els.map(e => [e.dataset.run, e.innerText])")
    assert names and all(data_run == run.name and run.name in text for data_run, text in names), names

    accuracies = val_accuracies(run)
    assert len(accuracies) == 2
    best, final, test = max(accuracies), accuracies[-1], eval_top1(metrics_json)
    assert hook_value(page, ".best-val") == pytest.approx(best, abs=1e-12)
    assert hook_value(page, ".final-val") == pytest.approx(final, abs=1e-12)
    assert hook_value(page, ".test-acc") == pytest.approx(test, abs=1e-12)
    assert shown_percent(best) in page.inner_text(".best-val")
    assert shown_percent(test) in page.inner_text(".test-acc")
    assert check_media(page) >= 2  # the curves at least, and the eval's images


def test_run_report_reads_on_a_phone(single, open_report):
    check_phone(open_report, single[2])


# --- three runs ------------------------------------------------------------------------------------


def test_comparison_table_stars_the_best_run(compared, open_report):
    runs, report = compared
    page, log = open_report(report, *SCREEN)
    log.assert_clean()
    check_screenshot(page, SCREEN)
    assert page.title().startswith(f"{len(runs)} runs")

    rows = page.eval_on_selector_all("tr.run-row",
                                     "rows => rows.map(r => [r.dataset.run, r.classList.contains('best')])")
    assert sorted(name for name, _ in rows) == sorted(run.name for run in runs)
    best = {run.name: max(val_accuracies(run)) for run in runs}
    starred = [name for name, is_best in rows if is_best]
    assert len(starred) == 1, f"rows marked best: {starred}"
    assert best[starred[0]] == max(best.values()), f"starred {starred[0]}, best val per run {best}"
    assert "★" in page.inner_text("tr.run-row.best")
    for run in runs:
        shown = hook_value(page, f'tr.run-row[data-run="{run.name}"] .best-val')
        assert shown == pytest.approx(best[run.name], abs=1e-12)

    headers = page.eval_on_selector_all("table:has(tr.run-row) th", "ths => ths.map(th => th.innerText.trim())")
    assert any("optim.lr" in h for h in headers) and any("train.seed" in h for h in headers), headers
    assert not any("model.name" in h or "data.spec" in h for h in headers), f"keys that do not differ: {headers}"
    legends = page.eval_on_selector_all("svg", "svgs => svgs.map(s => s.textContent).join(' ')")
    for run in runs:
        assert run.name in legends, f"no chart legend names {run.name}"
    assert check_media(page) >= 4  # four overlaid charts


def test_comparison_reads_on_a_phone(compared, open_report):
    check_phone(open_report, compared[1])


# --- hostile text ----------------------------------------------------------------------------------


def test_html_in_class_names_and_paths_shows_as_text(hostile, open_report):
    run, report = hostile
    page, log = open_report(report, *SCREEN)
    log.assert_clean()  # no alert() dialog, no request for the img src "x", no console errors
    check_media(page)
    text = page.inner_text("body")
    for name in (SCRIPT_CLASS, IMG_CLASS, "<svg onload=alert(3)>", run.name):
        assert name in text, f"{name} is not shown as text"
    assert page.title() == run.name
    assert page.eval_on_selector_all(".run-name", "els => els.map(e => e.dataset.run)")[0] == run.name
    scripts = page.eval_on_selector_all("script", "els => els.map(e => e.textContent)")
    assert not any("alert(" in script for script in scripts), "a class name became a script"
    handlers = page.evaluate("[...document.querySelectorAll('*')].filter(e => e.hasAttribute('onerror') || "
                             "e.hasAttribute('onload')).length")
    assert handlers == 0, "a class name or path became an element with an event handler"
