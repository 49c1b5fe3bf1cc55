"""cnnlab.report.runs on real run folders written by the training engine, and on damaged copies of them.

Two tiny runs (lenet5, 3 synthetic classes, 2 epochs) are trained once for the module; run A is also
evaluated. Every number read_run reports is checked against the files read independently here with
the csv/json modules (and params/MACs against the model and torch's FlopCounterMode). Copies are then
damaged the ways a crash or a person damages them: a cut-short line, an empty or missing file,
binary garbage, a status.json that is not JSON or names a dead process. Each still reads, with the
damage named in ``problems``.
"""

import csv
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.io import hold_folder
from cnnlab.report.runs import (
    HELD_RUNS_DEPTH,
    RECORD_STATES,
    SEARCH_TRIALS_DIR,
    SORT_KEYS,
    STALE_SECONDS,
    check_comparable,
    differing_config,
    expand_runs,
    find_runs,
    held_runs,
    is_run_folder,
    read_run,
    runs_rows,
    skipped_text,
)
from cnnlab.run import EXPERIMENT_SETTINGS_FILE, REPORT_HTML_FILE, RUN_STATES, RunFolder, eval_folder_name

DATA = "synthetic:classes=3,train=96,val=32,test=32,channels=1"
BASE = ["model.name=lenet5", f"data.spec={DATA}", "train.epochs=2", "train.batch_size=16", "log.quiet=true",
        "train.threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (lr 0.1, seed 0, evaluated on test) and run B (lr 0.05, seed 1): the real engine, in-process."""
    from cnnlab.evaluate.evaluate import run_eval
    from cnnlab.train.engine import train

    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        train(apply_overrides(RunConfig(), BASE + ["optim.lr=0.1", "train.seed=0"]), root / "a")
        train(apply_overrides(RunConfig(), BASE + ["optim.lr=0.05", "train.seed=1"]), root / "b")
        run_eval(root / "a", split="test", mistakes=4)
    finally:
        torch.set_num_threads(threads)
    return {"a": root / "a", "b": root / "b"}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _csv_rows(path: Path) -> list[dict]:
    """metrics.csv / steps.csv read with the csv module alone: the independent reference."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_status(folder: Path, **fields) -> None:
    status = json.loads(RunFolder(folder).status.read_text())
    status.update(fields)
    RunFolder(folder).status.write_text(json.dumps(status))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): os.kill(pid, 0) finds no such process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _mentions(problems: list[str], *words: str) -> bool:
    return any(all(word in problem for word in words) for problem in problems)


# ---------------------------------------------------------------------------------------------
# a healthy run


def test_finished_run_matches_its_files(runs):
    from torch.utils.flop_counter import FlopCounterMode

    from cnnlab.models import create_model
    from cnnlab.train.checkpoint import read_checkpoint_meta
    from cnnlab.tune.diagnose import diagnose_run

    folder = RunFolder(runs["a"])
    record = read_run(folder.path)
    assert record.problems == []
    assert record.state == "finished" and "2 of 2 epochs" in record.state_note
    assert record.name == "a" and record.model == "lenet5" and record.data == DATA
    assert record.epochs_planned == 2 and record.epochs_done == 2

    rows = _csv_rows(folder.metrics)
    val = [float(row["val_acc"]) for row in rows]
    best = max(range(len(val)), key=lambda i: val[i])  # first of equals, as the engine picks best
    assert record.best_val_acc == val[best] and record.best_epoch == int(rows[best]["epoch"])
    assert record.final_val_acc == val[-1]
    seconds = [float(row["epoch_seconds"]) for row in rows]
    assert record.seconds == pytest.approx(sum(seconds))
    assert record.wall_seconds == pytest.approx([sum(seconds[:i + 1]) for i in range(len(seconds))])
    images = sum(float(row["images_per_second"]) * float(row["epoch_seconds"]) for row in rows)
    assert record.images_per_second == pytest.approx(images / sum(seconds))
    assert [row["epoch"] for row in record.rows] == [int(row["epoch"]) for row in rows]

    steps = _csv_rows(folder.steps)
    assert record.steps == [(int(s["step"]), float(s["loss"]), float(s["lr"])) for s in steps]

    # params and MACs from summary.txt, against the model itself and torch's flop counter (FLOPs = 2 x MACs)
    meta = read_checkpoint_meta(folder.last)
    model = create_model("lenet5", num_classes=meta["num_classes"], in_chans=meta["in_chans"]).eval()
    assert record.params == sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, meta["in_chans"], meta["image_size"], meta["image_size"]))
    assert record.macs == counter.get_total_flops() // 2

    # the curve rules read the same rows as `cnnlab diagnose`
    assert record.findings == diagnose_run(folder.path)
    # the eval and the test accuracy from its metrics.json
    eval_name = eval_folder_name("test", "none", False)
    metrics = json.loads((folder.path / eval_name / "metrics.json").read_text())
    assert [e.name for e in record.evals] == [eval_name]
    assert record.evals[0].metrics == metrics and record.test_acc == metrics["top1"]
    assert record.evals[0].confusion_png.is_file() and record.evals[0].mistakes_png.is_file()
    assert record.environment == json.loads(folder.environment.read_text())
    assert record.status["state"] == "finished" and record.curves_png == folder.curves
    assert record.config["optim"]["lr"] == 0.1 and record.init is None
    assert "parameters" in record.summary_text


# ---------------------------------------------------------------------------------------------
# damaged runs: each still reads, with the damage named


def test_metrics_cut_mid_line_keeps_the_complete_rows(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "cut"))
    text = folder.metrics.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    folder.metrics.write_text(text[:last_start + 20])  # the crash stopped the last row 20 characters in
    folder.status.unlink()  # an old run: the state comes from the files
    first = _csv_rows(runs["a"] / "metrics.csv")[0]

    record = read_run(folder.path)
    assert len(record.rows) == 1 and record.rows[0]["epoch"] == 1
    assert record.best_val_acc == float(first["val_acc"]) == record.final_val_acc
    assert record.seconds == pytest.approx(float(first["epoch_seconds"]))
    assert _mentions(record.problems, "metrics.csv", "line 3", "cut short")
    assert record.state == "incomplete" and "1 of 2 epochs" in record.state_note


def test_metrics_row_that_parses_but_lost_its_newline_is_left_out(runs, tmp_path):
    """A cut last line can still look whole ("0.12" cut to "0.1"): without its newline it is not trusted."""
    folder = RunFolder(_copy(runs["a"], tmp_path / "cut"))
    folder.metrics.write_text(folder.metrics.read_text().rstrip("\n"))
    record = read_run(folder.path)
    assert len(record.rows) == 1 and _mentions(record.problems, "metrics.csv", "cut short")


def test_a_metrics_header_cut_short_is_one_problem_not_two(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "header"))
    folder.metrics.write_text(folder.metrics.read_text()[:20])  # the crash came inside the header line
    record = read_run(folder.path)
    assert record.rows == []
    damage = [p for p in record.problems if "metrics.csv" in p]
    assert len(damage) == 1 and "line 1 is cut short" in damage[0] and "damaged too" not in damage[0]


def test_a_config_cut_short_is_named_rather_than_filled_with_defaults_in_silence(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "cut-config"))
    text = folder.config.read_text()
    folder.config.write_text(text[:text.index("\noptim:") + 1])  # everything from the optim section on is gone
    record = read_run(folder.path)
    assert record.model == "lenet5"  # what is there is still read
    assert _mentions(record.problems, "config.yaml lacks the sections optim, schedule, train, log", "defaults")


def test_a_config_holding_a_number_too_long_to_read_is_named_and_the_run_still_listed(runs, tmp_path):
    """Its raw read (for the model and data names) let the error through: `cnnlab runs` stopped, listing no run."""
    folder = RunFolder(_copy(runs["a"], tmp_path / "long-number"))
    folder.config.write_text(re.sub(r"^  epochs: \d+", "  epochs: " + "1" * 5000, folder.config.read_text(),
                                    count=1, flags=re.MULTILINE))
    record = read_run(folder.path)
    assert _mentions(record.problems, "a whole number of 5,000 digits", "line ")


def test_a_finished_run_whose_checkpoints_are_gone_or_cut_short_is_named(runs, tmp_path):
    gone = RunFolder(_copy(runs["a"], tmp_path / "gone"))
    gone.best.unlink()
    gone.last.unlink()
    record = read_run(gone.path)
    assert record.state == "finished" and _mentions(record.problems, "Neither best.safetensors nor last", "gone")
    cut = RunFolder(_copy(runs["a"], tmp_path / "cut"))
    cut.best.write_bytes(cut.best.read_bytes()[:500])
    record = read_run(cut.path)
    assert _mentions(record.problems, f"'{cut.best}' is damaged")
    # last.safetensors is sound: named only as the way out, never as damaged
    assert _mentions(record.problems, f"the run's other checkpoint ('{cut.last}')")
    assert not _mentions(record.problems, f"'{cut.last}' is damaged")
    assert read_run(runs["a"]).problems == []  # the sound run: nothing to say


def test_cnnlab_report_says_on_the_console_when_a_run_has_damaged_files(runs, tmp_path, cli):
    damaged = RunFolder(_copy(runs["a"], tmp_path / "damaged"))
    damaged.last.write_bytes(b"")
    code, out, err = cli(["report", str(damaged.path), "--out", str(tmp_path / "d.html")])
    assert code == 0 and f"note: {damaged.path}: 1 problem with its files, listed on the page" in out
    code, out, err = cli(["report", str(runs["a"]), "--out", str(tmp_path / "a.html")])
    assert code == 0 and "problem" not in out


def test_the_cnnlab_runs_commands_the_report_names_run_as_shown(runs, tmp_path, cli):
    """The `cnnlab runs FOLDER` a message suggests reaches the folder when its name holds a space or a quote."""
    parent = tmp_path / "Bob's runs"
    damaged = RunFolder(_copy(runs["a"], parent / "damaged"))
    damaged.last.write_bytes(b"")
    for args in (["report", str(damaged.path), "--out", str(tmp_path / "d.html")], ["report", str(parent)]):
        _, out, err = cli(args)
        command = shlex.split(re.search(r"`cnnlab (runs [^`]+)`", out + err).group(1))
        assert command == ["runs", str(parent)]
        code, listed, _ = cli(command)
        assert code == 0 and "damaged" in listed


def test_the_cnnlab_runs_command_the_report_names_runs_for_a_folder_named_like_an_option(runs, tmp_path, cli,
                                                                                       monkeypatch):
    """`cnnlab report -- -grp` suggested `cnnlab runs -grp`, which reads -grp as options ("No such option: -g")."""
    _copy(runs["a"], tmp_path / "-grp" / "a")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["report", "--", "-grp"])
    command = shlex.split(re.search(r"`cnnlab (runs [^`]+)`", out + err).group(1))
    assert code == 2 and command == ["runs", "./-grp"], err
    code, listed, err = cli(command)
    assert code == 0 and "a" in listed.split(), err


def test_empty_metrics_is_an_empty_run(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "empty"))
    folder.metrics.write_bytes(b"")
    folder.status.unlink()
    folder.report.unlink()
    record = read_run(folder.path)
    assert record.state == "empty" and record.rows == []
    assert record.best_val_acc is None and record.final_val_acc is None and record.seconds == 0.0
    assert _mentions(record.problems, "metrics.csv", "empty")
    assert record.steps  # steps.csv is intact and still read


def test_missing_steps_is_named(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "nosteps"))
    folder.steps.unlink()
    record = read_run(folder.path)
    assert record.steps == [] and len(record.rows) == 2 and record.state == "finished"
    assert _mentions(record.problems, "steps.csv", "missing")


def _before_first_epoch(source: Path, target: Path, *, stepped: bool) -> RunFolder:
    """A copy of a run as the engine leaves it before its first epoch ends: status.json (epoch 0),
    config.yaml, summary.txt and environment.json, steps.csv once a step was taken, and nothing the end
    of an epoch or of the run writes."""
    folder = RunFolder(_copy(source, target))
    for path in (folder.metrics, folder.best, folder.last, folder.report, folder.curves, folder.diagnosis,
                 folder.html_report):
        path.unlink(missing_ok=True)
    for path in folder.path.glob("eval-*"):
        shutil.rmtree(path)
    if stepped:
        folder.steps.write_text("\n".join(folder.steps.read_text().splitlines()[:4]) + "\n")  # 3 steps
    else:
        folder.steps.unlink()
    return folder


def test_a_run_in_its_first_epoch_has_no_damaged_files(runs, tmp_path, cli):
    # Running (its process alive) with 3 steps taken: metrics.csv comes at the epoch's end.
    running = _before_first_epoch(runs["a"], tmp_path / "running", stepped=True)
    _write_status(running.path, state="running", pid=os.getpid(), host=socket.gethostname(), epoch=0)
    with hold_folder(running.lock, "a training run"):  # as the engine holds it while it trains
        record = read_run(running.path)
    assert record.state == "running" and record.rows == [] and len(record.steps) == 3
    assert record.problems == []
    # Failed before its first step: neither log was started.
    failed = _before_first_epoch(runs["a"], tmp_path / "failed", stepped=False)
    _write_status(failed.path, state="failed", epoch=0, message="CUDA out of memory")
    record = read_run(failed.path)
    assert record.state == "failed" and record.problems == []
    code, out, _ = cli(["runs", str(tmp_path)])
    assert code == 0 and "warning" not in out and "damaged" not in out
    # Once the status counts a finished epoch, a missing metrics.csv or steps.csv is damage again.
    _write_status(failed.path, epoch=1)
    problems = read_run(failed.path).problems
    assert _mentions(problems, "metrics.csv", "missing") and _mentions(problems, "steps.csv", "missing")


@pytest.mark.parametrize("state", ["interrupted", "running"])
def test_a_run_stopped_before_its_first_checkpoint_is_not_sent_to_resume(runs, tmp_path, state, cli):
    # Killed (or stopped by a second Ctrl-C) in its first epoch: no last.safetensors, which --resume needs.
    folder = _before_first_epoch(runs["a"], tmp_path / f"{state} run", stepped=True)  # a space: quoted
    _write_status(folder.path, state=state, pid=_dead_pid(), host=socket.gethostname(), epoch=0)
    record = read_run(folder.path)
    assert record.state == ("stopped" if state == "running" else "interrupted")
    assert "--resume" not in record.state_note and "nothing to resume" in record.state_note
    # The command the note gives starts the run again in its folder.
    command = shlex.split(re.search(r"`cnnlab (train [^`]+)`", record.state_note).group(1))
    threads = torch.get_num_threads()
    try:
        code, _, err = cli(command)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert read_run(folder.path).state == "finished" and folder.last.is_file()


def test_steps_cut_mid_line_is_noted(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "cutsteps"))
    text = folder.steps.read_text()
    folder.steps.write_text(text[:-5])
    record = read_run(folder.path)
    assert len(record.steps) == len(_csv_rows(runs["a"] / "steps.csv")) - 1
    assert _mentions(record.problems, "steps.csv", "left out")


def test_binary_garbage_in_the_csvs(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "garbage"))
    metrics_lines = folder.metrics.read_bytes().split(b"\n")
    # line 3 (epoch 2) overwritten by bytes that are not text; line 2 (epoch 1) survives
    folder.metrics.write_bytes(b"\n".join(metrics_lines[:2] + [b"\x00\xff\xfe garbage \x9c"] + metrics_lines[3:]))
    steps_lines = folder.steps.read_bytes().split(b"\n")
    folder.steps.write_bytes(b"\n".join(steps_lines[:4] + [b"\x00\x01\x02,\xff"] + steps_lines[5:]))

    record = read_run(folder.path)
    assert [row["epoch"] for row in record.rows] == [1]
    assert len(record.steps) == 3  # the 3 steps before the damaged line 5
    assert _mentions(record.problems, "metrics.csv", "Read 1 complete epoch row before the damage.")
    assert _mentions(record.problems, "steps.csv", "Read 3 step rows before the damage.")


def test_all_garbage_metrics(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "allgarbage"))
    folder.metrics.write_bytes(bytes(range(256)) * 4 + b"\n")
    record = read_run(folder.path)
    assert record.rows == [] and _mentions(record.problems, "metrics.csv")
    assert record.state == "finished"  # status.json still says so; the problems say why there are no curves


def test_status_not_json_falls_back_to_the_files(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "badstatus"))
    folder.status.write_text("{not json")
    record = read_run(folder.path)
    assert _mentions(record.problems, "status.json", "not JSON")
    assert record.state == "finished"  # report.txt and 2 of 2 epochs


def test_status_with_an_unknown_state(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "oddstatus"))
    _write_status(folder.path, state="paused")
    record = read_run(folder.path)
    assert record.state == "finished" and _mentions(record.problems, "status.json", "'paused'")


@pytest.mark.parametrize("mode", [0o000, 0o600], ids=["no-access", "listed-not-entered"])
def test_a_run_folder_that_cannot_be_entered_is_skipped_and_named(runs, tmp_path, mode):
    """Another user's private run folder beside one's own: `cnnlab runs` stopped with an internal error
    (Permission denied on its config.yaml). As root, whom permissions do not stop, the command runs without the
    capability to pass them (setpriv)."""
    root = tmp_path / "tree"
    _copy(runs["a"], root / "mine")
    locked = _copy(runs["a"], root / "private")
    command = [sys.executable, "-m", "cnnlab", "runs", str(root)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("run as root, and no setpriv to run the command without root's access to every file")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    locked.chmod(mode)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())  # as the terminal's width wrapped it
    assert f"1 run in {root}; 1 folder skipped (cannot be read): {locked}" in said, done.stdout


def test_a_link_into_a_folder_that_cannot_be_entered_is_skipped_and_named(runs, tmp_path):
    """A link to another user's private folder beside one's runs: its stat is refused (EACCES), and `cnnlab runs`
    listed nothing at all, exit 2. The runs are listed, the link named as skipped."""
    root = tmp_path / "tree"
    _copy(runs["a"], root / "mine")
    private = tmp_path / "private"
    (private / "inside").mkdir(parents=True)
    (root / "shared").symlink_to(private / "inside")
    command = [sys.executable, "-m", "cnnlab", "runs", str(root)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("run as root, and no setpriv to run the command without root's access to every file")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    private.chmod(0o000)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        private.chmod(0o755)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert f"1 run in {root}; 1 folder skipped (cannot be read): {root / 'shared'}" in said, done.stdout


def test_unreadable_config(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "badconfig"))
    folder.config.write_bytes(b"model: [unclosed\n\x00\xff")
    record = read_run(folder.path)
    assert record.config is None and record.model == "?" and record.data == "?"
    assert _mentions(record.problems, "config.yaml")
    assert len(record.rows) == 2 and record.epochs_planned == 2  # planned from status.json


def test_a_comparison_says_which_runs_config_it_could_not_read(runs, tmp_path):
    """A run whose config.yaml cannot be read has no data set and no config keys to compare: the page named the
    other run's data for both and said "0 config keys differ", as if the two were set alike (lr 0.1 and 0.05)."""
    from cnnlab.report.page import render_comparison

    folder = RunFolder(_copy(runs["a"], tmp_path / "badconfig"))
    folder.config.write_text("model: [unclosed\n")
    header = re.search(r'<p class="sub">(.*?)</p>', render_comparison([read_run(folder.path), read_run(runs["b"])]))
    text = re.sub(r"<[^>]+>", "", header.group(1))
    assert "not known for badconfig (config.yaml cannot be read)" in text
    assert "config keys not compared (config.yaml cannot be read for badconfig)" in text and "0 config keys" not in text
    third = read_run(_copy(runs["b"], tmp_path / "c"))
    header = re.search(r'<p class="sub">(.*?)</p>', render_comparison([read_run(folder.path), read_run(runs["a"]),
                                                                          read_run(runs["b"]), third]))
    assert "config keys differ (not counting badconfig: config.yaml cannot be read)" in header.group(1)


def test_config_this_version_refuses_still_names_model_and_data(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "oddconfig"))
    config = yaml.safe_load(folder.config.read_text())
    config["train"]["no_such_key"] = 3
    folder.config.write_text(yaml.safe_dump(config))
    record = read_run(folder.path)
    assert record.model == "lenet5" and record.data == DATA and record.config["train"]["no_such_key"] == 3
    assert _mentions(record.problems, "no_such_key")



def test_a_refused_config_shows_its_values_as_cnnlab_reads_them(runs, tmp_path):
    """A config.yaml this cnnlab refuses is still shown, read by cnnlab's own reader: an unquoted 1e-3 is the
    number a run takes (plain PyYAML read it as the text '1e-3', shown quoted as a string on the page), a
    quoted '1e3' stays the class name 1e3, and a key given twice keeps its last value instead of hiding it all."""
    import html

    from cnnlab.config import dump_yaml, safe_load_unique
    from cnnlab.report.page import render_run

    folder = RunFolder(_copy(runs["a"], tmp_path / "refused"))
    config = yaml.safe_load(folder.config.read_text())
    config["train"]["no_such_key"] = 3  # refused by this cnnlab
    config["data"]["classes"] = ["1e3", "cat"]
    text = dump_yaml(config)  # as a run writes it: the class name '1e3' quoted
    text = re.sub(r"(?m)^(  lr: ).*$", r"\g<1>1e-3", text)  # as a person writes it: unquoted, no dot
    assert "lr: 1e-3" in text and "- '1e3'" in text
    folder.config.write_text(text)
    record = read_run(folder.path)
    assert _mentions(record.problems, "no_such_key") and record.model == "lenet5"
    assert record.config["optim"]["lr"] == 1e-3 and record.config["data"]["classes"] == ["1e3", "cat"]
    shown = re.search(r'<pre class="config">(.*?)</pre>', render_run(record), re.S)
    assert shown is not None
    read_back = safe_load_unique(html.unescape(shown.group(1)))  # the page's YAML, as a user would paste it
    assert read_back["optim"]["lr"] == 1e-3 and read_back["data"]["classes"] == ["1e3", "cat"]
    # refused for a key given twice: its values still shown, the last one kept
    folder.config.write_text(text + "train:\n  epochs: 5\n")
    record = read_run(folder.path)
    assert _mentions(record.problems, "twice") and record.config["train"] == {"epochs": 5}
    assert record.config["optim"]["lr"] == 1e-3 and record.model == "lenet5"

def test_the_best_epoch_of_equal_val_accuracies_is_the_first(runs, tmp_path):
    folder = _copy(runs["a"], tmp_path / "tie")
    rows = _csv_rows(folder / "metrics.csv")
    rows[-1]["val_acc"] = rows[0]["val_acc"] = "0.75"  # the engine keeps the first epoch's weights as best
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = read_run(folder)
    assert (record.best_val_acc, record.best_epoch) == (0.75, int(rows[0]["epoch"]))


def test_missing_summary_and_bad_eval_are_named(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "nosummary"))
    folder.summary.unlink()
    (folder.path / eval_folder_name("test", "flip", False)).mkdir()  # an eval that never wrote its metrics.json
    record = read_run(folder.path)
    assert record.params is None and record.macs is None and record.summary_text is None
    assert _mentions(record.problems, "summary.txt", "missing")
    assert _mentions(record.problems, "eval-test-flip/metrics.json", "missing")
    assert [e.name for e in record.evals] == [eval_folder_name("test", "none", False)]


def test_test_acc_prefers_the_plain_test_eval(runs, tmp_path):
    folder = _copy(runs["a"], tmp_path / "evals")
    none_dir = folder / eval_folder_name("test", "none", False)
    top1 = json.loads((none_dir / "metrics.json").read_text())["top1"]
    flip_dir = folder / eval_folder_name("test", "flip", False)
    flip_dir.mkdir()
    (flip_dir / "metrics.json").write_text(json.dumps({"top1": 0.123}))
    assert read_run(folder).test_acc == top1
    shutil.rmtree(none_dir)
    assert read_run(folder).test_acc == 0.123  # without the plain one, another test eval
    # an EMA eval whose folder sorts first is not taken over the raw weights' (the best val beside it is raw)
    ema_dir = folder / eval_folder_name("test", "10crop", True)
    ema_dir.mkdir()
    (ema_dir / "metrics.json").write_text(json.dumps({"top1": 0.456, "weights": "ema"}))
    assert ema_dir.name < flip_dir.name
    assert read_run(folder).test_acc == 0.123
    shutil.rmtree(flip_dir)
    assert read_run(folder).test_acc == 0.456  # the EMA's when no eval of the raw weights is left


def test_ensemble_results_are_read(runs, tmp_path):
    folder = _copy(runs["a"], tmp_path / "ensemble")
    result = {"members": [{"top1": 0.5}, {"top1": 0.6}], "ensemble": {"top1": 0.7}}
    (folder / "ensemble-test.json").write_text(json.dumps(result))
    (folder / "ensemble-bad.json").write_text("[1, 2")
    record = read_run(folder)
    assert [e["ensemble"]["top1"] for e in record.ensembles] == [0.7]
    assert record.ensembles[0]["file"] == str(folder / "ensemble-test.json")
    assert _mentions(record.problems, "ensemble-bad.json", "not JSON")
    # `cnnlab ensemble --out RUN/ANY-NAME.json` is shown too (only ensemble*.json was), other JSON is not
    from cnnlab.evaluate.ensemble import run_ensemble

    written = run_ensemble([runs["a"], runs["b"]], out=folder / "snapshots.json")
    record = read_run(folder)
    assert [e["file"] for e in record.ensembles] == [str(folder / "ensemble-test.json"), str(folder / "snapshots.json")]
    assert record.ensembles[1]["ensemble"]["top1"] == written["ensemble"]["top1"]
    assert (folder / "status.json").is_file() and (folder / "environment.json").is_file()  # read, and not ensembles


# ---------------------------------------------------------------------------------------------
# states


@pytest.mark.parametrize("state", ["interrupted", "diverged", "failed"])
def test_status_states_are_taken_with_their_message(runs, tmp_path, state):
    folder = _copy(runs["a"], tmp_path / state)
    messages = {"diverged": "Loss is nan at step 7", "failed": "RuntimeError: out of memory\n  on the device"}
    _write_status(folder, state=state, epoch=1, message=messages.get(state))
    record = read_run(folder)
    assert record.state == state and record.state in RUN_STATES
    assert "1 of 2 epochs" in record.state_note  # status.json's count of epochs done
    if state in messages:  # the message, on one line
        assert " ".join(messages[state].split()) in record.state_note and "\n" not in record.state_note


def test_running_with_a_dead_pid_is_stopped(runs, tmp_path):
    folder = _copy(runs["a"], tmp_path / "dead")
    pid = _dead_pid()
    _write_status(folder, state="running", pid=pid, host=socket.gethostname())
    record = read_run(folder)
    assert record.state == "stopped" and str(pid) in record.state_note and "--resume" in record.state_note


def test_running_with_a_live_pid_is_running(runs, tmp_path):
    folder = _copy(runs["a"], tmp_path / "alive")
    _write_status(folder, state="running", pid=os.getpid(), host=socket.gethostname())
    with hold_folder(RunFolder(folder).lock, "a training run"):  # as the engine holds it while it trains
        assert read_run(folder).state == "running"


def test_running_with_a_reused_pid_is_stopped(runs, tmp_path):
    """A restarted container or machine gives the dead run's pid to another process: the pid lives, but no process
    holds the run's folder (its lock file went with the run's end, or was never taken again), so it is stopped."""
    if sys.platform == "win32":
        pytest.skip("no flock: a run holds no lock file there")
    folder = _copy(runs["a"], tmp_path / "reused")
    _write_status(folder, state="running", pid=os.getpid(), host=socket.gethostname())  # alive: this process
    record = read_run(folder)
    assert record.state == "stopped" and ".lock is gone" in record.state_note and "--resume" in record.state_note


def test_running_on_another_host_goes_stale(runs, tmp_path):
    import datetime

    folder = _copy(runs["a"], tmp_path / "remote")
    now = datetime.datetime.now().astimezone()
    fresh = (now - datetime.timedelta(seconds=STALE_SECONDS / 2)).isoformat(timespec="seconds")
    stale = (now - datetime.timedelta(seconds=STALE_SECONDS * 2)).isoformat(timespec="seconds")
    host = socket.gethostname() + "-elsewhere"
    _write_status(folder, state="running", pid=_dead_pid(), host=host, updated=fresh)
    assert read_run(folder).state == "running"  # its pid means nothing here: only the time can tell
    _write_status(folder, state="running", updated=stale)
    record = read_run(folder)
    assert record.state == "stopped" and host in record.state_note


def test_old_run_with_a_nan_loss_is_diverged(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "nan"))
    folder.status.unlink()
    lines = folder.steps.read_text().split("\n")
    step, _, lr = lines[3].split(",")
    lines[3] = f"{step},nan,{lr}"
    folder.steps.write_text("\n".join(lines))
    record = read_run(folder.path)
    assert record.state == "diverged" and f"step {step}" in record.state_note
    assert record.findings and record.findings[0].rule == "diverged"


def _set_metric(folder: RunFolder, epoch: int, **values) -> None:
    rows = _csv_rows(folder.metrics)
    rows[epoch - 1].update(values)
    with open(folder.metrics, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_old_run_with_a_nan_val_loss_alone_is_not_diverged_as_diagnose_reads_it(runs, tmp_path, cli):
    from cnnlab.report.page import render_run
    from cnnlab.tune.diagnose import VAL_NOT_FINITE

    # Eval-mode statistics (BatchNorm's running variance) overflowed: val_loss nan while train_loss is finite
    folder = RunFolder(_copy(runs["a"], tmp_path / "valnan"))
    folder.status.unlink()
    _set_metric(folder, 2, val_loss="nan")
    record = read_run(folder.path)
    assert [finding.rule for finding in record.findings] == [VAL_NOT_FINITE]
    assert record.state == "finished"  # report.txt and every planned epoch: as the engine's status.json would say
    assert "val_loss became nan at epoch 2 while train_loss stayed finite" in record.state_note
    assert "val_not_finite" in record.state_note and "Diverged" not in render_run(record)
    code, out, err = cli(["runs", str(folder.path), "--json"])
    assert code == 0 and [row["state"] for row in json.loads(out)["runs"]] == ["finished"]
    folder.report.unlink()  # stopped short: incomplete, still not diverged
    record = read_run(folder.path, diagnose=False)
    assert record.state == "incomplete" and "val_not_finite" in record.state_note
    # the training loss NaN as well: that is divergence, for runs as for diagnose
    _set_metric(folder, 2, train_loss="nan")
    record = read_run(folder.path)
    assert record.state == "diverged" and "train_loss became nan at epoch 2" in record.state_note
    assert [finding.rule for finding in record.findings] == ["diverged"]


def test_old_run_states_from_files(runs, tmp_path):
    folder = RunFolder(_copy(runs["a"], tmp_path / "old"))
    folder.status.unlink()
    assert read_run(folder.path).state == "finished"
    folder.report.unlink()
    record = read_run(folder.path)
    assert record.state == "incomplete" and "report.txt" in record.state_note
    assert set(RECORD_STATES) >= {"finished", "incomplete", "empty", "stopped"}


# ---------------------------------------------------------------------------------------------
# not a run folder


def test_not_a_run_folder_is_refused(runs, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("x")
    holder = tmp_path / "holder"
    _copy(runs["a"], holder / "one")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file.txt", "is a file"),
        (tmp_path / "plain", "no config.yaml"),
        (holder, "cnnlab runs"),
        (runs["a"] / "metrics.csv", "name the folder"),
    ]
    for path, words in cases:
        with pytest.raises(CnnlabError) as info:
            read_run(path)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message
        assert not is_run_folder(path)


# ---------------------------------------------------------------------------------------------
# several runs


def test_runs_rows_sorting(runs, tmp_path):
    a, b = read_run(runs["a"]), read_run(runs["b"])
    empty_folder = RunFolder(_copy(runs["b"], tmp_path / "c"))
    empty_folder.metrics.write_text("")
    empty = read_run(empty_folder.path)
    records = [b, empty, a]

    assert [row["name"] for row in runs_rows(records)] == ["a", "b", "c"]
    by_best = [row["name"] for row in runs_rows(records, "best")]
    expected = sorted(["a", "b"], key=lambda n: -{"a": a.best_val_acc, "b": b.best_val_acc}[n])
    assert by_best == expected + ["c"]  # highest first, no value last
    assert [row["name"] for row in runs_rows(records, "test")][0] == "a"  # the only one evaluated
    by_time = [row["seconds"] for row in runs_rows(records, "time")]
    assert by_time[:2] == sorted(by_time[:2]) and by_time[2] is None  # no finished epoch: no time, listed last

    row = runs_rows([a])[0]
    assert row["epochs"] == "2/2" and row["best_val"] == a.best_val_acc and row["test"] == a.test_acc
    assert row["state"] == "finished" and row["model"] == "lenet5" and row["data"] == DATA
    json.dumps(runs_rows(records))  # plain values: `cnnlab runs --json` prints them as they are

    with pytest.raises(CnnlabError) as info:
        runs_rows(records, "accuracy")
    assert "'accuracy'" in str(info.value) and all(key in str(info.value) for key in SORT_KEYS)


def test_differing_config_names_only_what_differs(runs):
    a, b = read_run(runs["a"]), read_run(runs["b"])
    assert differing_config([a, b]) == ["optim.lr", "train.seed"]
    assert differing_config([a, a]) == [] and differing_config([a]) == []


def test_check_comparable_refuses_other_data(runs, tmp_path):
    a, b = read_run(runs["a"]), read_run(runs["b"])
    check_comparable([a, b])  # same data: no error
    other = RunFolder(_copy(runs["b"], tmp_path / "digits-run"))
    config = yaml.safe_load(other.config.read_text())
    config["data"]["spec"] = "digits"
    other.config.write_text(yaml.safe_dump(config))
    with pytest.raises(CnnlabError) as info:
        check_comparable([a, b, read_run(other.path)])
    message = str(info.value)
    assert DATA in message and "'digits'" in message and "digits-run" in message and "a, b" in message


def test_check_comparable_matches_a_typed_path_with_its_absolute_form(runs, tmp_path, monkeypatch):
    # runs now record folder:imgs as the absolute path it read, older runs as typed: the same data
    monkeypatch.chdir(tmp_path)
    specs = {"old-run": "folder:imgs", "new-run": f"folder:{tmp_path / 'imgs'}", "other-run": "folder:other"}
    records = {}
    for name, spec in specs.items():
        folder = RunFolder(_copy(runs["a"], tmp_path / name))
        config = yaml.safe_load(folder.config.read_text())
        config["data"]["spec"] = spec
        folder.config.write_text(yaml.safe_dump(config))
        records[name] = read_run(folder.path)
    check_comparable([records["old-run"], records["new-run"]])  # one folder, typed and absolute
    with pytest.raises(CnnlabError) as info:
        check_comparable(list(records.values()))
    message = str(info.value)
    assert "old-run, new-run" in message and "other-run" in message


def _with_config(source: Path, target: Path, **sections) -> Path:
    """A copy of the run ``source`` whose config.yaml has the given keys of each section set (None: removed)."""
    folder = RunFolder(_copy(source, target))
    config = yaml.safe_load(folder.config.read_text())
    for section, values in sections.items():
        for key, value in values.items():
            if value is None:
                config[section].pop(key, None)
            else:
                config[section][key] = value
    folder.config.write_text(yaml.safe_dump(config))
    return folder.path


def test_a_comparison_shows_a_typed_data_path_and_its_absolute_form_as_one_data_set(runs, tmp_path, monkeypatch):
    """An older run recorded its data folder as typed (folder:imgs), a newer one the absolute path it read (and
    what was typed in data.spec_typed). check_comparable takes them for one data set; the comparison's table listed
    data.spec among the keys that can change a result, and its header named two data sets. Now the spec is one
    of the settings that differ only in how a path was written, each run's value shown as it recorded it."""
    from cnnlab.report import build_report
    from cnnlab.report.page import render_comparison

    monkeypatch.chdir(tmp_path)
    absolute = f"folder:{tmp_path / 'imgs'}"
    old = _with_config(runs["a"], tmp_path / "old-run", data={"spec": "folder:imgs", "spec_typed": None})
    new = _with_config(runs["a"], tmp_path / "new-run", data={"spec": absolute, "spec_typed": "folder:imgs"})
    records = [read_run(old), read_run(new)]
    check_comparable(records)  # the notion the table must share: one data set

    page, _, _ = build_report([old, new])
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    headers = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
    assert headers[headers.index("diagnosis") + 1:] == [] and "0 config keys differ" in page
    sub = re.search(r'<p class="sub">data: (.*?) · ', page).group(1)
    assert sub == f"folder:imgs (also written {absolute})"  # one data set, both spellings
    apart = re.search(r'<details class="result-free"><summary>(.*?)</summary>(.*?)</details>', page, re.S)
    assert apart and apart.group(1).startswith("2 more settings differ but change no result")
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", apart.group(2)) == ["run", "data.spec", "data.spec_typed"]
    cells = {name: re.findall(r"<td[^>]*>(.*?)</td>", re.search(rf'<tr data-run="{name}">(.*?)</tr>',
                                                                apart.group(2)).group(1))
             for name in ("old-run", "new-run")}
    assert cells == {"old-run": ["old-run", "folder:imgs", "null"], "new-run": ["new-run", absolute, "folder:imgs"]}

    # another folder is other data: a result-changing key, and a data set of its own in the header (render_comparison
    # is called directly: build_report refuses such runs)
    other = read_run(_with_config(runs["a"], tmp_path / "other-run", data={"spec": "folder:other", "spec_typed": None}))
    page = render_comparison([*records, other])
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)[-1] == "data.spec"
    assert re.search(r'<p class="sub">data: (.*?) · ', page).group(1) == (
        f"folder:imgs (also written {absolute}); folder:other")

    quiet = _with_config(runs["a"], tmp_path / "chatty", log={"quiet": False})
    page, _, _ = build_report([runs["a"], quiet])
    assert "1 more setting differs but changes no result" in page


def test_same_setting_reads_paths_as_the_run_read_them(tmp_path, monkeypatch):
    from cnnlab.report.runs import same_setting

    monkeypatch.chdir(tmp_path)
    checkpoint = "runs/a/best.safetensors"
    assert same_setting("model.init_from", checkpoint, str(tmp_path / checkpoint))
    assert same_setting("data.data_dir", "~/data", str(Path("~/data").expanduser()))
    assert same_setting("data.spec", "Fashion_MNIST", "fashion-mnist")  # cnnlab.run.same_data's aliases
    assert same_setting("data.spec", "csv:labels.csv", f"csv:{tmp_path / 'labels.csv'}")
    assert not same_setting("data.spec", "folder:imgs", f"csv:{tmp_path / 'imgs'}")  # another kind of source
    assert not same_setting("model.init_from", "torchvision", str(tmp_path / "torchvision"))  # a word, not a path
    assert not same_setting("model.init_from", checkpoint, str(tmp_path / "runs/b/best.safetensors"))
    assert not same_setting("optim.lr", 0.1, "0.1") and same_setting("optim.lr", 0.1, 0.1)


def test_expand_runs_reads_a_search_folder_as_its_trials(runs, tmp_path):
    search = tmp_path / "search"
    trials = search / SEARCH_TRIALS_DIR
    for number, source in ((1, "b"), (0, "a"), (2, "a")):
        _copy(runs[source], trials / f"search-{number:04d}")
    (trials / "search-0003").mkdir()  # a trial that has not started: no config.yaml yet
    (search / "results.csv").write_text("number,val_acc\n")
    heard = []
    names = [path.name for path in expand_runs([search, runs["b"], runs["b"], trials / "search-0001"], heard.append)]
    assert names == ["search-0000", "search-0001", "search-0002", "b"]  # by trial name; the repeats kept once
    assert heard == [f"2 runs named more than once, shown once: {runs['b']}, {trials / 'search-0001'}"]

    with pytest.raises(CnnlabError) as info:
        expand_runs([trials])  # a folder holding runs is not expanded: a report compares the runs it is named
    assert str(trials) in str(info.value)
    with pytest.raises(CnnlabError):
        expand_runs([tmp_path / "nothing-here"])


def test_a_search_whose_trials_all_failed_in_set_up_points_at_their_errors(cli, tmp_path):
    """Trials that failed before making a run folder (a searched model name that does not exist) leave only rows
    in results.csv: the page's refusal said no trial had started."""
    search = tmp_path / "search"
    (search / SEARCH_TRIALS_DIR).mkdir(parents=True)
    (search / "study.db").write_bytes(b"")
    code, _, err = cli(["report", str(search)])
    assert code == 2 and "no trial has started" in err
    (search / "results.csv").write_text("number,state,error\n0,FAIL,Unknown model 'nosuch'\n")
    code, _, err = cli(["report", str(search)])
    assert code == 2 and "its trials failed before making one. Their errors are in results.csv" in err
    assert "no trial has started" not in err


def test_a_run_named_three_ways_is_one_run_named_more_than_once(runs, monkeypatch):
    """The note counts runs, not the spellings of their paths: 'a', its absolute path and a path through its
    parent are one run, named as it is shown (the first name), not '2 runs ...: a, /abs/a'."""
    monkeypatch.chdir(runs["a"].parent)
    heard = []
    spellings = ["a", str(runs["a"]), f"../{runs['a'].parent.name}/a", "b", "b"]
    assert [path.name for path in expand_runs(spellings, heard.append)] == ["a", "b"]
    assert heard == ["2 runs named more than once, shown once: a, b"]


def test_cnnlab_report_says_which_runs_it_was_named_twice(runs, tmp_path, cli):
    page = tmp_path / "new" / "r.html"  # its folder is created, as compare --plot and lr-find --out do
    code, out, err = cli(["report", str(runs["a"]), str(runs["b"]), str(runs["a"]), "--out", str(page)])
    assert code == 0, err
    assert f"note: 1 run named more than once, shown once: {runs['a']}" in out
    assert page.is_file()


def test_one_run_named_twice_gets_its_page_in_its_own_folder(runs, tmp_path, cli, monkeypatch):
    """`cnnlab report a1 a1` reports one run: its page goes to a1/report.html, as `cnnlab report a1` does, not
    to ./report.html (the place for several runs). A search folder holding one trial is still a search."""
    run = _copy(runs["a"], tmp_path / "a1")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["report", "a1", "a1", "./a1/"])
    assert code == 0, err
    assert RunFolder(run).html_report.is_file()
    assert not (tmp_path / REPORT_HTML_FILE).exists()

    search = tmp_path / "search"
    _copy(runs["a"], search / SEARCH_TRIALS_DIR / "search-0000")
    (search / "results.csv").write_text("number,val_acc\n")
    code, out, err = cli(["report", "search", "search"])
    assert code == 0, err
    assert (tmp_path / REPORT_HTML_FILE).is_file()


@pytest.mark.parametrize("opened", [True, False])
def test_report_open_says_when_no_browser_could_be_started(runs, tmp_path, cli, monkeypatch, opened):
    import webbrowser

    asked = []
    monkeypatch.setattr(webbrowser, "open", lambda url: asked.append(url) or opened)
    page = tmp_path / "r.html"
    code, out, err = cli(["report", str(runs["a"]), "--out", str(page), "--open"])
    assert code == 0 and asked == [page.resolve().as_uri()]
    assert ("no web browser could be started" in err) is not opened


def test_cnnlab_runs_names_damaged_files_instead_of_listing_the_run_as_sound(runs, tmp_path, cli):
    root = tmp_path / "runs"
    _copy(runs["a"], root / "a")
    (_copy(runs["b"], root / "b") / "metrics.csv").write_bytes(b"\x00\x01 not a table")
    code, out, err = cli(["runs", str(root), "--json"])
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["runs"]}
    assert rows["a"]["problems"] == [] and _mentions(rows["b"]["problems"], "metrics.csv")
    code, out, err = cli(["runs", str(root)])
    assert code == 0, err
    # one warning, on b, naming its file (the message names the file by its path, which the console may wrap)
    warnings = " ".join(out.split()).split("warning: ")[1:]
    assert len(warnings) == 1 and warnings[0].startswith(f"{root / 'b'}: ") and "metrics.csv" in warnings[0]
    assert "2 runs in" in out and "1 with missing or damaged files" in out


def test_a_run_reached_by_a_link_that_sorts_first_is_listed_under_its_own_name(runs, tmp_path):
    # 'lost/link' -> 'runs/a' sorted before 'runs/a': the run was listed as 'link' and its real folder skipped as
    # "a link"; a broken link was dropped without a word
    root = tmp_path / "tree"
    _copy(runs["a"], root / "runs" / "a")
    _copy(runs["b"], root / "lost" / "b")
    (root / "lost" / "link").symlink_to(root / "runs" / "a", target_is_directory=True)
    (root / "lost" / "broken").symlink_to(tmp_path / "nowhere")
    records, skipped = find_runs(root)
    assert [r.path.relative_to(root).as_posix() for r in records] == ["lost/b", "runs/a"]
    reasons = {path.relative_to(root).as_posix(): reason for path, reason in skipped}
    assert set(reasons) == {"lost/broken", "lost/link"}
    assert "broken link" in reasons["lost/broken"] and "already searched" in reasons["lost/link"]


def test_find_runs_lists_runs_and_counts_skipped_folders(runs, tmp_path):
    root = tmp_path / "runs"
    _copy(runs["a"], root / "a")
    _copy(runs["b"], root / "group" / "b2")
    _copy(runs["a"], root / "sweep" / SEARCH_TRIALS_DIR / "sweep-0000")
    (root / "sweep" / SEARCH_TRIALS_DIR / "sweep-0001").mkdir()  # a trial not started: inside a search
    (root / "empty").mkdir()
    (root / "notes" / "deeper").mkdir(parents=True)
    (root / "notes" / "todo.txt").write_text("x")
    (root / "readme.txt").write_text("files are not folders: not counted")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back up: named, not followed forever

    records, skipped = find_runs(root)
    assert [r.path.relative_to(root).as_posix() for r in records] == ["a", "group/b2", "sweep/trials/sweep-0000"]
    assert all(r.findings == [] for r in records)  # a listing does not diagnose
    reasons = {path.relative_to(root).as_posix(): reason for path, reason in skipped}
    # the run's own eval folder is not searched; a skipped folder hides the empty ones inside it
    assert set(reasons) == {"empty", "loop", "notes", "sweep/trials/sweep-0001"}
    assert reasons["empty"] == "empty folder" and "config.yaml" in reasons["notes"] and "link" in reasons["loop"]
    # the listing's last line: a link is not called a folder without runs (the run a link leads to is listed)
    text = skipped_text(skipped)
    assert "1 link skipped (to a folder searched already): " + str(root / "loop") in text
    assert "3 folders skipped (no run in them): " in text and str(root / "loop") not in text.split("link")[0]
    assert skipped_text([(root / "empty", "empty folder")]) == f"1 folder skipped (no run in it): {root / 'empty'}"

    assert find_runs(root / "a")[0][0].name == "a"  # a run folder itself lists as that one run
    with pytest.raises(CnnlabError) as info:
        find_runs(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    assert math.isfinite(records[0].seconds)


def test_held_runs_counts_only_what_holds_results(runs, tmp_path, cli):
    root = tmp_path / "experiment"
    _copy(runs["a"], root / "runs" / "a")  # a run outside a search counts as it is
    empty = RunFolder(_copy(runs["b"], root / "runs" / "b-stopped"))
    empty.metrics.write_text(empty.metrics.read_text().splitlines()[0] + "\n")  # no epoch finished: resumable
    finished = root / "search" / "grid-seed0"
    _copy(runs["a"], finished / SEARCH_TRIALS_DIR / "search-0000")
    dead = RunFolder(_copy(runs["b"], finished / SEARCH_TRIALS_DIR / "search-0001"))
    dead.metrics.unlink()  # a trial stopped before its first epoch ended: never resumed
    # a grid stopped before its first trial ended: its study and space, a trials/ folder or none
    unstarted = root / "search" / "grid-seed1"
    unstarted.mkdir(parents=True)
    (unstarted / "study.db").write_bytes(b"")
    (unstarted / "space.yaml").write_text("optim.lr: {low: 0.001, high: 0.1}\n")
    stopped = root / "search" / "random-seed0"
    _copy(runs["b"], stopped / SEARCH_TRIALS_DIR / "search-0000")
    RunFolder(stopped / SEARCH_TRIALS_DIR / "search-0000").metrics.unlink()

    held, empty_searches = held_runs(root)
    assert [path.relative_to(root).as_posix() for path in held] == [
        "runs/a", "runs/b-stopped", "search/grid-seed0/trials/search-0000"]
    assert [path.relative_to(root).as_posix() for path in empty_searches] == [
        "search/grid-seed1", "search/random-seed0"]
    assert held_runs(tmp_path / "nothing-here") == ([], [])
    # a study without trials/ is a search folder too: named as one, not as a folder without config.yaml
    code, out, err = cli(["runs", str(root / "search"), "--json"])
    skipped = {Path(row["path"]).name: row["reason"] for row in json.loads(out)["skipped"]}
    assert skipped["grid-seed1"] == f"a search folder whose {SEARCH_TRIALS_DIR}/ holds no run yet"


def test_evals_on_folders_of_one_name_keep_apart_and_record_the_data_they_read(runs, tmp_path, monkeypatch):
    """`eval --data folder:hold` recorded the path as typed: run from two working folders, the second eval replaced
    the first (one eval folder for both), and `cnnlab runs` from another folder could not match the record with
    the data it named. Each path gets its folder, and the record its absolute path."""
    import numpy as np
    from PIL import Image

    from cnnlab.evaluate.evaluate import run_eval
    from cnnlab.train.checkpoint import read_checkpoint_meta

    folder = RunFolder(_copy(runs["a"], tmp_path / "run"))
    meta = read_checkpoint_meta(folder.checkpoint())
    rng = np.random.default_rng(0)
    for place in ("A", "B"):
        for split in ("train", "test"):
            for name in meta["classes"]:
                (tmp_path / place / "hold" / split / name).mkdir(parents=True)
                for number in range(3):
                    pixels = rng.integers(0, 256, (meta["image_size"],) * 2, dtype=np.uint8)
                    Image.fromarray(pixels).save(tmp_path / place / "hold" / split / name / f"{number}.png")
    written = {}
    for place in ("A", "B"):
        monkeypatch.chdir(tmp_path / place)
        result = run_eval(folder.path, data="folder:hold", split="test", mistakes=0)
        written[place] = Path(result["files"]["metrics"]).parent
        recorded = json.loads((written[place] / "metrics.json").read_text())["data"]
        assert recorded == f"folder:{tmp_path / place / 'hold'}"
    assert written["A"] != written["B"] and written["A"].name.startswith("eval-test-none-on-folder-hold-")
    assert all((written[place] / "metrics.json").is_file() for place in written)  # none replaced the other
    # a run that records its data by its absolute path (A's hold): the eval on B's, typed alike, is other data
    config = yaml.safe_load(folder.config.read_text())
    config["data"].update(spec=f"folder:{tmp_path / 'A' / 'hold'}", spec_typed="folder:hold")
    folder.config.write_text(yaml.safe_dump(config))
    kept = shutil.move(written["A"], tmp_path / "kept")  # A's own eval would count (its data): set aside
    monkeypatch.chdir(tmp_path / "A")  # where B's "folder:hold" would lead
    assert read_run(folder.path).test_acc is None
    shutil.move(kept, written["A"])
    # A run older than the absolute record of its data kept "folder:hold" as typed, read from the working folder:
    # its eval is matched by how --data was given, as before the eval recorded the absolute path
    recorded = json.loads((written["A"] / "metrics.json").read_text())
    assert recorded["data_typed"] == "folder:hold"
    config = yaml.safe_load(folder.config.read_text())
    config["data"].update(spec="folder:hold", spec_typed=None)
    folder.config.write_text(yaml.safe_dump(config))
    own = folder.path / eval_folder_name("test", "none", False)
    (own / "metrics.json").write_text(json.dumps({**recorded, "top1": 0.25}))
    for place in written:  # the evals on the two folders would count too, by the same rule
        shutil.rmtree(written[place])
    monkeypatch.chdir(tmp_path)  # neither the folder the eval ran in nor the run's
    assert read_run(folder.path).test_acc == 0.25
    (own / "metrics.json").write_text(json.dumps({**recorded, "top1": 0.25, "data_typed": None}))
    assert read_run(folder.path).test_acc is None


def test_an_eval_of_another_split_written_where_the_test_eval_goes_is_not_the_test_accuracy(runs, tmp_path):
    """`eval RUN --split train --out RUN/eval-test-none` was read as the run's test accuracy by `cnnlab runs` and
    the run's page."""
    from cnnlab.evaluate.evaluate import run_eval

    folder = RunFolder(_copy(runs["a"], tmp_path / "run"))
    assert read_run(folder.path).test_acc is not None
    run_eval(folder.path, split="train", mistakes=0, out=folder.path / "eval-test-none")  # replaces the test eval
    assert read_run(folder.path).test_acc is None


def test_an_eval_of_another_checkpoint_or_data_gets_its_own_folder_and_is_not_the_test_accuracy(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    folder = RunFolder(_copy(runs["a"], tmp_path / "others"))
    own = json.loads((folder.path / eval_folder_name("test", "none", False) / "metrics.json").read_text())
    assert Path(own["checkpoint"]).name == folder.checkpoint().name
    other = run_eval(folder.last, split="test", mistakes=0)  # the last weights, not the run's best
    assert Path(other["files"]["metrics"]).parent.name == eval_folder_name("test", "none", False, "last")
    assert Path(other["files"]["metrics"]).parent.name == "eval-test-none-last"
    assert json.loads((folder.path / "eval-test-none" / "metrics.json").read_text()) == own  # kept, not replaced
    on_other = run_eval(folder.path, data="synthetic:classes=3,train=30,val=6,test=30,channels=1", split="test",
                        mistakes=0)
    assert Path(on_other["files"]["metrics"]).parent.name == "eval-test-none-on-synthetic-classes-3-train-30-val-6-test-30-channels-1"
    assert read_run(folder.path).test_acc == own["top1"]
    # an eval folder of an older version that an eval of last (or other data) overwrote is not the test accuracy
    plain = folder.path / "eval-test-none"
    (plain / "metrics.json").write_text(json.dumps({**own, "checkpoint": str(folder.last), "top1": 0.01}))
    (folder.path / "eval-test-flip").mkdir()
    (folder.path / "eval-test-flip" / "metrics.json").write_text(json.dumps({**own, "data": "digits", "top1": 0.02}))
    assert read_run(folder.path).test_acc is None


def test_an_eval_on_the_runs_own_data_counts_however_its_config_spells_the_spec(runs, tmp_path):
    import yaml

    folder = RunFolder(_copy(runs["a"], tmp_path / "typed"))
    own = json.loads((folder.path / eval_folder_name("test", "none", False) / "metrics.json").read_text())
    config = yaml.safe_load(folder.config.read_text())
    kind, _, options = config["data"]["spec"].partition(":")
    assert own["data"] == config["data"]["spec"]  # as the eval recorded it: the data set's own spelling
    config["data"]["spec"] = f" {kind.upper()}:{options}"  # as a person may type it: the loader reads the same
    folder.config.write_text(yaml.safe_dump(config))
    assert read_run(folder.path).test_acc == own["top1"]


def test_nested_runs_are_named_by_the_path_parts_that_tell_them_apart(runs, tmp_path):
    from cnnlab.report import build_report

    root = tmp_path / "ladder"
    for where in ("10/seed0/top", "30/seed0/top", "30/seed1/top", "scratch"):
        _copy(runs["a"], root / where)
    records, skipped = find_runs(root)
    assert sorted(r.name for r in records) == ["10/seed0/top", "30/seed0/top", "scratch", "seed1/top"]
    assert not skipped
    _, shown, _ = build_report([root / "10/seed0/top", root / "30/seed0/top"])
    assert [r.name for r in shown] == ["10/seed0/top", "30/seed0/top"]  # the page's labels, not "top" twice
    _, shown, _ = build_report([root / "scratch", root / "10/seed0/top"])
    assert [r.name for r in shown] == ["scratch", "top"]  # unique folder names stay as they are


@pytest.mark.parametrize("line_end", [b"\n", b""])
def test_binary_metrics_is_read_one_way_whatever_its_last_line_ends_with(runs, tmp_path, line_end):
    """A NUL byte in metrics.csv is damage, as `cnnlab diagnose` says; a last line without its line end does not
    make it a line the run stopped writing."""
    from cnnlab.train.logging import read_metrics

    folder = RunFolder(_copy(runs["a"], tmp_path / "nul"))
    lines = folder.metrics.read_bytes().rstrip(b"\n").split(b"\n")
    folder.metrics.write_bytes(b"\n".join(lines[:2] + [b"\x00" + lines[2][1:]]) + line_end)  # epoch 2's row
    with pytest.raises(CnnlabError) as info:
        read_metrics(folder.metrics)  # the reading `cnnlab diagnose` gives
    record = read_run(folder.path)
    damage = [problem for problem in record.problems if "metrics.csv" in problem]
    assert len(damage) == 1 and str(info.value) in damage[0] and "NUL byte" in damage[0]
    assert "cut short" not in damage[0]
    assert [row["epoch"] for row in record.rows] == [1]  # the row before the damage is kept


def test_a_run_that_lost_its_config_is_named_with_what_it_lacks(runs, tmp_path, cli):
    """A run folder without config.yaml is skipped as itself, not as its eval folder, and the listing says
    what it lacks; named alone, or inside a folder of runs."""
    lost = _copy(runs["a"], tmp_path / "runs" / "lost")
    (lost / "config.yaml").unlink()
    _copy(runs["b"], tmp_path / "runs" / "b")
    for root in (lost, tmp_path / "runs"):
        records, skipped = find_runs(root)
        assert [path for path, _ in skipped] == [lost]
        assert "config.yaml" in skipped[0][1] and "last.safetensors" in skipped[0][1]
        code, out, err = cli(["runs", str(root)])
        assert code == 0, err
        out = " ".join(out.split())  # as one line, however the console wrapped it
        assert f"no config.yaml, so not read as a run; restore its config.yaml from a copy to list it): {lost}" in out
        assert eval_folder_name("test", "none", False) not in out
    # deeper, in folders that hold no other run (a group's folder, a search's trials/): named as itself, not as
    # the folder above it with "no run folder inside"
    nested = _copy(runs["a"], tmp_path / "nested" / "group" / "lost")
    (nested / "config.yaml").unlink()
    for root in (tmp_path / "nested", tmp_path / "nested" / "group"):
        records, skipped = find_runs(root)
        assert records == [] and [path for path, _ in skipped] == [nested]
        assert "config.yaml" in skipped[0][1]
    # the folders beside it that hold no run are still named, each as itself
    (tmp_path / "nested" / "group" / "notes").mkdir()
    (tmp_path / "nested" / "other").mkdir()
    records, skipped = find_runs(tmp_path / "nested")
    assert [path for path, _ in skipped] == [nested, nested.parent / "notes", tmp_path / "nested" / "other"]
    code, out, err = cli(["report", str(lost)])
    assert code == 2 and str(lost) in err and "no config.yaml" in err and "Restore" in err
    # a page alone (`cnnlab report --out`, an experiment's folder) does not make a folder a run's
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / REPORT_HTML_FILE).write_text("<p>runs compared</p>")
    assert find_runs(pages) == ([], [])


def test_the_page_cnnlab_train_writes_lists_no_problem_of_its_own_making(tmp_path, cli):
    """The page is written before report.txt, which marks the reports done: it listed 'report.txt is missing' on
    every run's page. While the run's process holds the folder it is writing them, and that is no problem."""
    code, out, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8",
                          "--epochs", "1", "--batch-size", "8", "--quiet", "--set", "log.curves=false",
                          "--out", str(tmp_path / "run")])
    assert code == 0, err
    page = RunFolder(tmp_path / "run").html_report.read_text()
    assert "is missing" not in page and "file problem" not in page


def test_a_finished_run_stopped_while_writing_its_reports_says_how_to_get_them(runs, tmp_path, cli):
    """status.json says finished before the reports are written: a kill in between leaves no report.txt, and
    the listing says so and how to write them, as the resume it names then does."""
    folder = RunFolder(_copy(runs["b"], tmp_path / "unreported"))
    folder.report.unlink()
    folder.html_report.unlink(missing_ok=True)
    record = read_run(folder.path)
    assert record.state == "finished"
    assert _mentions(record.problems, "report.txt is missing", f"cnnlab train --resume {folder.path}")
    code, out, err = cli(["runs", str(folder.path)])
    assert code == 0, err
    assert "report.txt is missing" in " ".join(out.split())
    code, out, err = cli(["train", "--resume", str(folder.path)])  # what the listing names writes the reports
    assert code == 0, err
    assert folder.report.is_file() and folder.html_report.is_file()
    assert [row["epoch"] for row in read_run(folder.path).rows] == [1, 2]
    assert not _mentions(read_run(folder.path).problems, "report.txt")


def test_runs_in_folders_with_names_that_are_not_utf8_or_not_printable_are_listed_and_reported(runs, tmp_path, cli):
    """A folder name with a byte that is not UTF-8 (an archive from another system) or a newline: `cnnlab runs`
    lists it on one line, --json is strict JSON, and `cnnlab report` writes its page (a UTF-8 page cannot hold
    the raw byte): each shows the name as display_name does, bad\\xffname and new\\nline."""
    root = tmp_path / "odd"
    strange = _copy(runs["a"], root / os.fsdecode(b"bad\xffname"))
    _copy(runs["b"], root / "new\nline")
    code, out, err = cli(["runs", str(root)])
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("bad\\xffname ") for line in lines)
    assert any(line.startswith("new\\nline ") for line in lines)
    code, out, err = cli(["runs", str(root), "--json"])
    assert code == 0, err
    listed = json.loads(out)["runs"]
    assert {row["name"] for row in listed} == {"bad\\xffname", "new\\nline"}
    assert {row["path"] for row in listed} == {f"{root}/bad\\xffname", f"{root}/new\\nline"}
    out.encode("utf-8")  # no lone surrogate: JSON readers other than Python's refuse them

    page = tmp_path / "both.html"
    code, out, err = cli(["report", str(strange), str(root / "new\nline"), "--out", str(page)])
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert 'data-run="bad\\xffname"' in text and 'data-run="new\\nline"' in text
    assert f"{root}/bad\\xffname" in text
    code, out, err = cli(["report", str(strange)])
    assert code == 0, err
    assert f"report: {root}/bad\\xffname/report.html" in out
    assert 'data-run="bad\\xffname"' in RunFolder(strange).html_report.read_text(encoding="utf-8")


def test_a_search_reported_names_the_trial_folders_it_leaves_out(runs, tmp_path, cli):
    """`cnnlab report SEARCH` shows the trials that are runs; a folder in trials/ that is not one (a trial that
    lost its config.yaml, a folder someone put there) is counted and named, as `cnnlab runs` names it."""
    search = tmp_path / "search"
    trials = search / SEARCH_TRIALS_DIR
    _copy(runs["a"], trials / "search-0000")
    _copy(runs["b"], trials / "search-0001")
    (_copy(runs["a"], trials / "search-0002") / "config.yaml").unlink()
    (trials / "notes").mkdir()
    (trials / "notes" / "ideas.txt").write_text("try a larger lr\n")
    (trials / "search-0003").mkdir()  # a trial that has not started yet: not one left out
    heard = []
    assert [path.name for path in expand_runs([search], heard.append)] == ["search-0000", "search-0001"]
    assert len(heard) == 1
    assert f"{trials / 'search-0002'}" in heard[0] and "but no config.yaml" in heard[0]
    assert f"{trials / 'notes'}" in heard[0] and "search-0003" not in heard[0]
    code, out, err = cli(["report", str(search), "--out", str(tmp_path / "s.html")])
    assert code == 0, err
    assert f"note: {search}: " in out and "search-0002" in out
    heard.clear()
    expand_runs([_copy(runs["a"], tmp_path / "whole" / SEARCH_TRIALS_DIR / "search-0000").parent.parent], heard.append)
    assert heard == []  # a search whose trials are all runs gets no note


def test_cnnlab_runs_shows_long_run_names_whole(runs, tmp_path, cli):
    """A name wider than the terminal wraps within its cell instead of ending in "…": two runs whose long names
    differ only at the end stay apart."""
    prefix = "resnet20-cifar10-batch128-cosine-warmup5-weightdecay5e-4-label-smoothing0.1-mixup0.2-"
    for name in (prefix + "lr0.01", prefix + "lr0.1"):
        _copy(runs["a"], tmp_path / "long" / name)
    code, out, err = cli(["runs", str(tmp_path / "long")])
    assert code == 0, err
    assert "…" not in out
    lines = out.splitlines()
    width = lines[0].index("model")  # the run column ends where the next heading starts
    first_column = "".join(line[:width].strip() for line in lines[1:] if not line.startswith(("2 runs", "warning")))
    assert prefix + "lr0.01" in first_column and prefix + "lr0.1" in first_column


def test_a_metrics_csv_without_epoch_times_has_no_training_time_rather_than_zero(runs, tmp_path):
    """metrics.csv needs only its epoch column (an older run, a file written by another tool): without
    epoch_seconds the training time is unknown. It was shown as 0.0 s, sorted first by --sort time, and the
    run's curves were drawn at 0 s on the comparison's time axis."""
    from cnnlab.report import build_report

    untimed = RunFolder(_copy(runs["a"], tmp_path / "untimed"))
    rows = _csv_rows(untimed.metrics)
    kept = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    with open(untimed.metrics, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=kept, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    record = read_run(untimed.path, diagnose=False)
    assert record.rows and not record.problems
    listed = runs_rows([record, read_run(runs["b"], diagnose=False)], sort="time")
    assert [row["name"] for row in listed] == ["b", "untimed"]  # no time: last, as a run with no epoch
    assert listed[1]["seconds"] is None and listed[0]["seconds"] > 0

    page, _, _ = build_report([untimed.path, runs["b"]])
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    row = re.search(r'<tr class="run-row[^"]*" data-run="untimed">(.*?)</tr>', table).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[7] == "—"  # the time column (after swatch, run, best val, best epoch, final val, test, epochs)
    for chart in re.findall(r'<svg class="chart".*?</svg>', page, re.S):
        if "against training time" in chart:
            assert ">untimed (no data)</text>" in chart
    own, _, _ = build_report([untimed.path])
    assert re.search(r"<dt>training time</dt><dd>—</dd>", own)
    assert not record.has_training_time and read_run(runs["b"], diagnose=False).has_training_time


def test_cnnlab_runs_lists_a_run_trained_into_a_folder_of_another_run(runs, tmp_path, cli):
    """`--out runs/base/finetune` puts a run inside another run's folder: it was neither listed nor named as
    skipped. It is listed, and the outer run's eval folders are still not reported as skipped folders."""
    base = _copy(runs["a"], tmp_path / "runs" / "base")
    _copy(runs["b"], base / "finetune")
    records, skipped = find_runs(tmp_path / "runs")
    assert sorted(record.name for record in records) == ["base", "finetune"]
    assert skipped == []
    records, skipped = find_runs(base)  # the run named itself: it and the run inside it
    assert sorted(record.name for record in records) == ["base", "finetune"] and skipped == []
    code, out, err = cli(["runs", str(tmp_path / "runs"), "--json"])
    assert code == 0, err
    assert sorted(row["path"] for row in json.loads(out)["runs"]) == [str(base), str(base / "finetune")]


def _set_epoch_seconds(folder: Path, seconds: list[float]) -> None:
    """metrics.csv of ``folder`` with its epochs' training times replaced by ``seconds``."""
    rows = _csv_rows(folder / "metrics.csv")
    for row, value in zip(rows, seconds, strict=True):
        row["epoch_seconds"] = repr(value)
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("seconds, shown", [
    ([2250.0, 2250.0], "1 h 15 min"),  # 4,500 s: `cnnlab runs` wrote "75 min 00 s" where the page wrote this
    ([20.0, 39.96], "1 min 00 s"),  # 59.96 s: no "60.0 s"
    ([1800.0, 1799.6], "1 h 00 min"),  # 3,599.6 s: no "60 min 00 s"
    ([100.0, 145.0], "4 min 05 s"),
    ([6.0, 6.3], "12.3 s"),
    ([1e308, 7e307], "1.7e308 s"),  # a damaged record: read as 47,222,... (103 groups of digits) h 12 min
])
def test_cnnlab_runs_and_the_page_write_a_training_time_alike(runs, tmp_path, cli, seconds, shown):
    """One run's training time reads the same in `cnnlab runs`, on its own page and in a comparison's table;
    the expected texts are worked out by hand from the epochs' seconds."""
    from cnnlab.report import build_report

    root = tmp_path / "runs"
    timed = _copy(runs["a"], root / "timed")
    _set_epoch_seconds(timed, seconds)
    code, out, err = cli(["runs", str(root)])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("timed"))
    assert f"  {shown}  " in line
    own, _, _ = build_report([timed])
    assert re.search(rf"<dt>training time</dt><dd><span[^>]*>{re.escape(shown)}</span></dd>", own)
    page, _, _ = build_report([timed, runs["b"]])
    row = re.search(r'<tr class="run-row[^"]*" data-run="timed">(.*?)</tr>', page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[7] == shown  # the time column


def test_a_comparison_sets_apart_the_settings_that_change_no_result(runs, tmp_path):
    """log.quiet, log.smoothing and a run's record of how its data path was typed were columns of the
    comparison's table, beside optim.lr, as if they explained a difference in accuracy. They are listed apart,
    collapsed and labelled, with each run's value."""
    from dataclasses import fields

    from cnnlab.config import RECORD_KEYS, LogConfig
    from cnnlab.report import build_report

    other = RunFolder(_copy(runs["b"], tmp_path / "b"))
    config = yaml.safe_load(other.config.read_text())
    config["log"].update(quiet=False, smoothing=7)
    config["data"]["spec_typed"] = "synthetic:classes=3"  # a record only a run writes
    other.config.write_text(yaml.safe_dump(config))
    assert read_run(other.path).problems == []

    page, _, _ = build_report([runs["a"], other.path])
    table = page.split('<table class="runs">')[1].split("</table>")[0]
    headers = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
    # after the results, the keys that differ and can change a result, and no more
    assert headers[headers.index("diagnosis") + 1:] == ["optim.lr", "train.seed"]
    assert "2 config keys differ" in page
    apart = re.search(r'<details class="result-free"><summary>(.*?)</summary>(.*?)</details>', page, re.S)
    assert apart and apart.group(1).startswith("3 more settings differ but change no result")
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", apart.group(2)) == ["run", "data.spec_typed", "log.quiet", "log.smoothing"]
    row = re.search(r'<tr data-run="b">(.*?)</tr>', apart.group(2)).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row) == ["b", "synthetic:classes=3", "false", "7"]

    # the rule against the config's own lists: every log key and every path record is set apart, nothing else
    from cnnlab.report.runs import changes_results

    for key in [f"log.{item.name}" for item in fields(LogConfig)] + list(RECORD_KEYS):
        assert not changes_results(key), key
    for key in ("optim.lr", "train.seed", "data.spec", "model.init_from", "train.threads", "model.options.logit"):
        assert changes_results(key), key
    same, _, _ = build_report([runs["a"], runs["a"].parent / "b"])
    assert 'class="result-free"' not in same  # runs whose log settings agree have nothing set apart


def test_a_damaged_json_file_of_any_name_is_named_as_a_problem(runs, tmp_path, cli):
    """`cnnlab ensemble --out RUN/pair.json` saves a result under any name, and the page shows it; cut short, it
    was left out without a word (only ensemble*.json was named). Every JSON file the page reads and cannot parse
    is named, on the page, in `cnnlab runs` and in `cnnlab report`'s note; valid JSON that is no ensemble result
    is left alone, and status.json, read for itself, is named once."""
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.report import build_report

    root = tmp_path / "runs"
    folder = RunFolder(_copy(runs["a"], root / "a"))
    run_ensemble([runs["a"], runs["b"]], out=folder.path / "pair.json")
    whole = (folder.path / "pair.json").read_bytes()
    (folder.path / "pair.json").write_bytes(whole[:len(whole) // 2])  # a write cut short, as a full disk leaves it
    (folder.path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')  # not UTF-8
    (folder.path / "notes.json").write_text(json.dumps(["valid", "JSON", "but no result"]))
    (folder.path / "settings.json").write_text(json.dumps({"theme": "dark"}))
    record = read_run(folder.path)
    assert record.ensembles == []
    assert _mentions(record.problems, "pair.json", "not JSON") and _mentions(record.problems, "latin1.json", "not JSON")
    assert not _mentions(record.problems, "notes.json") and not _mentions(record.problems, "settings.json")
    assert len(record.problems) == 2

    code, out, err = cli(["runs", str(root)])
    assert code == 0, err
    warning = " ".join(out.split("warning:")[1].split())  # the console wraps it
    assert "pair.json is not JSON" in warning and "latin1.json is not JSON" in warning
    code, out, err = cli(["report", str(folder.path), "--out", str(tmp_path / "a.html")])
    assert code == 0 and f"note: {folder.path}: 2 problems with its files" in out
    page, _, _ = build_report([folder.path])
    problems = page.split('id="problems"')[1]
    assert "pair.json is not JSON" in problems and "latin1.json is not JSON" in problems

    folder.status.write_text("{not json")
    assert sum("status.json" in problem for problem in read_run(folder.path).problems) == 1


@pytest.mark.parametrize("pid, said", [("abc", "pid 'abc' is no process id"), (True, "pid True is no process id"),
                                       (0, "pid 0 is no process id"), (None, "names no pid")])
def test_a_status_without_a_process_id_says_its_run_was_judged_by_age(runs, tmp_path, pid, said):
    """A hand-edited status.json whose pid is no process id cannot have its process asked, even on this host:
    the run was called running (or stopped) by its last update's age alone, and nothing said so."""
    import datetime

    folder = _copy(runs["a"], tmp_path / "handmade")
    now = datetime.datetime.now().astimezone()
    fresh = (now - datetime.timedelta(seconds=STALE_SECONDS / 2)).isoformat(timespec="seconds")
    stale = (now - datetime.timedelta(seconds=STALE_SECONDS * 2)).isoformat(timespec="seconds")
    _write_status(folder, state="running", pid=pid, host=socket.gethostname(), updated=fresh)
    if pid is None:
        status = json.loads(RunFolder(folder).status.read_text())
        del status["pid"]
        RunFolder(folder).status.write_text(json.dumps(status))
    record = read_run(folder)
    assert record.state == "running"
    assert "pid unknown" in record.state_note and said in record.state_note and "age alone" in record.state_note
    assert _mentions(record.problems, said, "cannot be asked", "how long ago status.json was updated")
    _write_status(folder, state="running", updated=stale)
    record = read_run(folder)
    assert record.state == "stopped" and f"{said}, so its process could not be asked" in record.state_note
    assert _mentions(record.problems, said)
    _write_status(folder, state="running", pid=os.getpid(), updated=fresh)  # a process id: asked, nothing to say
    with hold_folder(RunFolder(folder).lock, "a training run"):
        record = read_run(folder)
    assert record.state == "running" and record.problems == [] and "pid unknown" not in record.state_note


def test_commands_a_message_suggests_show_a_name_that_is_not_utf8_escaped(runs, tmp_path, cli):
    """A folder named in another encoding (a byte that is not UTF-8) is shown as \\xff everywhere in cnnlab; the
    `cnnlab runs 'PATH'` that `cnnlab report` suggests, and the resume command of a run's state note, held the raw
    byte (printed as \\udcff, or refused by a UTF-8 terminal)."""
    from cnnlab.errors import display_name

    parent = tmp_path / os.fsdecode(b"caf\xe9 runs")
    run = _copy(runs["a"], parent / os.fsdecode(b"r\xff"))
    code, out, err = cli(["report", str(parent)])
    assert code == 2 and "Traceback" not in err
    shown = display_name(str(parent))
    assert "\\xe9" in shown and f"`cnnlab runs {shlex.quote(shown)}`" in " ".join(err.split())
    assert f"run folder in its first 4 levels: {display_name(run.name)}." in " ".join(err.split())
    assert not re.search("[\ud800-\udfff]", err)

    _write_status(run, state="interrupted", message="")
    code, out, err = cli(["runs", str(parent), "--json"])
    assert code == 0, err
    note = json.loads(out)["runs"][0]["note"]
    assert f"`cnnlab train --resume {shlex.quote(display_name(str(run)))}`" in note
    assert not re.search("[\ud800-\udfff]", note)


def test_a_long_note_wraps_as_one_indented_paragraph_and_keeps_a_command_whole():
    """cnnlab.text.note_lines: what `cnnlab runs` and `cnnlab report` print under their output."""
    from cnnlab.text import note_lines

    command = "`cnnlab runs '/tmp/a b/Bob'\"'\"'s runs'`"  # a quoted folder name with spaces: one command
    text = f"runs/x: 1 problem with its files, listed on the page ({command} names them too)."
    lines = note_lines("note", text, 60)
    assert lines[0].startswith("note: runs/x: 1 problem") and len(lines) > 1
    assert all(len(line) <= 60 for line in lines if command not in line)
    assert all(line.startswith(" " * len("note: ")) and line[len("note: ")] != " " for line in lines[1:])
    assert sum(command in line for line in lines) == 1  # never split inside the backticks
    assert " ".join(line.strip() for line in lines) == f"note: {text}"
    assert note_lines("warning", "short", 80) == ["warning: short"]


def test_one_folder_named_alone_is_a_report_of_that_run(runs, tmp_path):
    """build_report("runs/a") used to walk the text one character at a time ("'/' is not a run folder"), and
    apply_overrides(config, "KEY=VALUE") read 'm' as a --set; one of each given alone is taken as a list of one."""
    from cnnlab.report import build_report

    page, records, folders = build_report(str(runs["a"]))
    assert folders == build_report([runs["a"]])[2] and len(records) == 1
    assert apply_overrides(RunConfig(), "model.name=lenet5").model.name == "lenet5"


# ---------------------------------------------------------------------------------------------
# refusals that name what is there, and values no run produces


def test_a_search_whose_trials_lost_their_config_names_them_not_failed_trials(runs, tmp_path, cli):
    """Trials that ran (results.csv says COMPLETE) but lost their config.yaml were refused as "trials failed
    before making one. Their errors are in results.csv", though their folders are there and results.csv holds no
    error."""
    search = tmp_path / "search"
    trials = search / SEARCH_TRIALS_DIR
    for number, source in ((0, "a"), (1, "b")):
        (_copy(runs[source], trials / f"search-{number:04d}") / "config.yaml").unlink()
    (search / "results.csv").write_text("number,state,val_acc\n0,COMPLETE,0.9\n1,COMPLETE,0.8\n")
    code, _, err = cli(["report", str(search)])
    assert code == 2
    assert "failed before making one" not in err
    message = " ".join(err.split())  # the message wraps on the console
    assert str(trials / "search-0000") in message and str(trials / "search-0001") in message
    assert "but no config.yaml" in message and "2 folders" in message


def test_cnnlab_runs_names_a_broken_link_as_a_broken_link(runs, tmp_path, cli):
    """A link whose target is gone was grouped under "folders skipped (no run in them)"; --json gave its real
    reason."""
    root = tmp_path / "runs"
    _copy(runs["a"], root / "a")
    (root / "gone").symlink_to(tmp_path / "nothing-here", target_is_directory=True)
    (root / "empty").mkdir()
    records, skipped = find_runs(root)
    text = skipped_text(skipped)
    assert f"1 broken link skipped (what it names does not exist): {root / 'gone'}" in text
    assert f"1 folder skipped (no run in it): {root / 'empty'}" in text
    code, out, err = cli(["runs", str(root)])
    assert code == 0, err
    assert "1 broken link skipped" in out and str(root / "gone") not in out.split("broken link")[0]


def test_a_folder_holding_runs_further_down_is_refused_naming_them(runs, tmp_path):
    """A transfer ladder keeps its runs at SIZE/seedK/RUNG: `cnnlab report LADDER` gave the generic "it has no
    config.yaml" refusal, where a folder holding runs one level down is told to name them or list them."""
    ladder = tmp_path / "ladder"
    _copy(runs["a"], ladder / "10" / "seed0" / "top")
    _copy(runs["b"], ladder / "30" / "seed0" / "top")
    with pytest.raises(CnnlabError) as info:
        read_run(ladder)
    message = str(info.value)
    assert "holds 2 run folders in its first 4 levels: 10/seed0/top, 30/seed0/top" in message
    assert f"e.g. '{ladder / '10' / 'seed0' / 'top'}'" in message and f"`cnnlab runs {ladder}`" in message
    # the look stops a few levels down: a whole tree is not walked for a refusal
    deep = tmp_path / "deep"
    _copy(runs["a"], deep.joinpath(*["level"] * (HELD_RUNS_DEPTH + 1)))
    with pytest.raises(CnnlabError) as info:
        read_run(deep)
    assert "holds" not in str(info.value) and "no config.yaml" in str(info.value)


def test_a_comparison_made_inside_a_run_folder_does_not_replace_its_page(runs, tmp_path, cli, monkeypatch):
    """`cd RUN && cnnlab report . ../other` wrote the comparison over RUN/report.html, the page `cnnlab train`
    wrote for the run, without a word."""
    run = _copy(runs["a"], tmp_path / "a")
    other = _copy(runs["b"], tmp_path / "b")
    own = RunFolder(run).html_report
    own.write_text("the run's own page")
    monkeypatch.chdir(run)
    code, out, err = cli(["report", ".", "../b"])
    assert code == 2 and "--out" in err and "Traceback" not in err
    assert own.read_text() == "the run's own page"
    search = tmp_path / "search"
    _copy(runs["b"], search / SEARCH_TRIALS_DIR / "search-0000")
    code, _, _ = cli(["report", str(search)])  # a search is several runs: the same place
    assert code == 2 and own.read_text() == "the run's own page"
    # --out naming the run's page for other runs is refused too; the run's own page there is written
    own.write_text("the run's own page")
    for others in ([str(run), str(other)], [str(other)]):
        code, _, err = cli(["report", *others, "--out", str(own)])
        assert code == 2 and "it would replace that run's page" in err and own.read_text() == "the run's own page"
    assert cli(["report", str(run), "--out", str(own)])[0] == 0 and "<!DOCTYPE html>" in own.read_text()
    # the run alone is its own page; another single run gets its own; --out names any place
    assert cli(["report", "."])[0] == 0 and "<!DOCTYPE html>" in own.read_text()
    assert cli(["report", "../b"])[0] == 0 and RunFolder(other).html_report.is_file()
    code, _, err = cli(["report", ".", "../b", "--out", "../compare.html"])
    assert code == 0, err
    assert (tmp_path / "compare.html").is_file()


def test_a_comparison_does_not_replace_an_experiments_page(runs, tmp_path, cli, monkeypatch):
    """`cd EXP && cnnlab report runs/a runs/b` (or --out EXP/report.html) wrote over the comparison page `cnnlab
    experiment` wrote, without a word, and a rerun of the experiment, which read its kept result, did not write
    it again. Refused as a run's own page is; another name in the folder is written."""
    import json

    from cnnlab.run import EXPERIMENT_SETTINGS_FILE

    experiment = tmp_path / "exp"
    _copy(runs["a"], experiment / "runs" / "a")
    _copy(runs["b"], experiment / "runs" / "b")
    (experiment / EXPERIMENT_SETTINGS_FILE).write_text(json.dumps({"experiment": "bn-lr", "size": "tiny"}))
    pages = [experiment / "report.html", experiment / "report-digits.html"]
    for page in pages:
        page.write_text("the experiment's page")
    (experiment / "result.json").write_text(json.dumps({"reports": [page.name for page in pages]}))  # kept
    monkeypatch.chdir(experiment)
    code, _, err = cli(["report", "runs/a", "runs/b"])
    assert code == 2 and "With no --out, this page would go to 'report.html'" in err and "Traceback" not in err
    for page in pages:
        code, _, err = cli(["report", "runs/a", "runs/b", "--out", str(page)])
        assert code == 2 and "is a comparison page of the experiment in" in err, err
    assert all(page.read_text() == "the experiment's page" for page in pages)
    for _ in range(2):  # a page of the user's own, by a name the experiment did not write, is theirs to rewrite
        assert cli(["report", "runs/a", "runs/b", "--out", "report-mine.html"])[0] == 0
    assert "<!DOCTYPE html>" in (experiment / "report-mine.html").read_text()
    (experiment / "result.json").unlink()  # unfinished: the experiment writes its pages again as it finishes
    assert cli(["report", "runs/a", "runs/b"])[0] == 0 and "<!DOCTYPE html>" in pages[0].read_text()


def test_values_past_what_a_float_sums_give_an_unknown_time_and_a_page(runs, tmp_path, cli):
    """A metrics.csv whose epoch_seconds add up past the largest float made `cnnlab runs --json` write "seconds":
    Infinity (not JSON) and its table crash, and a train_loss of 1.7e308 (finite) crashed the page's log axis."""
    root = tmp_path / "runs"
    damaged = _copy(runs["a"], root / "a")
    _set_epoch_seconds(damaged, [1e308, 1e308])
    _set_metric(RunFolder(damaged), 2, train_loss=1.7e308)
    record = read_run(damaged)
    assert not record.has_training_time and record.images_per_second is None
    assert _mentions(record.problems, "epoch_seconds", "training time is unknown")

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    code, out, err = cli(["runs", str(root), "--json"])
    assert code == 0, err
    (row,) = json.loads(out, parse_constant=no_constants)["runs"]
    assert row["seconds"] is None
    code, out, err = cli(["runs", str(root), "--sort", "time"])
    assert code == 0 and "internal error" not in err
    code, out, err = cli(["report", str(damaged)])
    assert code == 0, err
    page = RunFolder(damaged).html_report.read_text()
    assert re.search(r"<dt>training time</dt><dd>—</dd>", page)


def test_a_run_in_its_first_moment_is_named_as_starting_not_as_no_run(tmp_path, cli):
    """A run holds its folder (its lock) before it writes its config.yaml: in that moment `cnnlab runs` skipped the
    folder as "no run in it", and `cnnlab report` called it "not a run folder"."""
    root = tmp_path / "runs"
    starting = root / "starting"
    with hold_folder(RunFolder(starting).lock, "a training run"):  # as the engine holds it as it starts
        records, skipped = find_runs(root)
        assert records == [] and [folder.name for folder, _ in skipped] == ["starting"]
        text = skipped_text(skipped)
        assert text.startswith("1 folder skipped (a run is starting in it, with no config.yaml yet; list them "
                               "again in a moment): "), text
        with pytest.raises(CnnlabError, match=r"is the folder of a run that is starting \(process \d+ on .*\): it "
                                              r"has no config.yaml yet\. Name it again in a moment\."):
            read_run(starting)
        for command in ("report", "diagnose"):
            code, _, err = cli([command, str(starting)])
            assert code == 2 and "a run that is starting" in err and "Traceback" not in err, (command, err)
    # let go (the run ended, or was killed before it wrote anything): an empty folder, named as before
    starting.mkdir(exist_ok=True)
    (starting / "notes.txt").write_text("mine")
    _, skipped = find_runs(root)
    assert skipped_text(skipped).startswith("1 folder skipped (no run in it): ")


def test_a_report_refused_for_other_data_sets_still_says_its_notes_first(runs, tmp_path, cli):
    """The notes a page's build gives (a run named twice, a run's damaged files) come before the refusal of runs
    trained on other data, as they did before the page was built again for a run that moved on meanwhile."""
    damaged = RunFolder(_copy(runs["a"], tmp_path / "damaged"))
    damaged.last.write_bytes(b"")
    other = _copy(runs["b"], tmp_path / "other")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["spec"] = "digits"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    code, out, err = cli(["report", str(runs["a"]), str(runs["a"]), str(damaged.path), str(other),
                          "--out", str(tmp_path / "all.html")])
    assert code == 2 and "trained on different data sets" in err and "Traceback" not in err, err
    assert "named more than once" in out and f"{damaged.path}: 1 problem with its files" in out, out


def test_an_experiment_that_holds_its_folder_is_named_as_an_experiment_not_a_run_starting(tmp_path, cli):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / EXPERIMENT_SETTINGS_FILE).write_text(json.dumps({"experiment": "dropout", "size": "tiny"}))
    with hold_folder(RunFolder(folder).lock, "an experiment"):  # as an experiment holds its --out while it runs
        with pytest.raises(CnnlabError, match="the folder of a `cnnlab experiment`, not a run folder"):
            read_run(folder)
        _, skipped = find_runs(tmp_path)
        assert "starting" not in " ".join(reason for _, reason in skipped)
        assert RunFolder(folder).starting_holder() is None
        code, _, err = cli(["diagnose", str(folder)])  # not "a run that is starting": it never will be one
        assert code == 2 and "is not a run folder" in err and "starting" not in err, err
