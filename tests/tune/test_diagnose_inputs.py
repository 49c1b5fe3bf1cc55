"""`cnnlab diagnose` fed run files it did not write: each is refused naming the file and the problem.

Every case goes through the library (CnnlabError) and the command line (exit 2, the path in the
one-line message, no traceback); one also through a fresh `python -m cnnlab` process, as a user
runs it. The legitimate oddities keep working: inf/nan losses of a diverged run, a steps.csv whose
last line a crash cut short (left out and reported, not dropped in silence), steps without epochs.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.train.logging import METRIC_COLUMNS, read_metrics, read_steps
from cnnlab.tune.diagnose import NOTE, diagnose_run, findings_json, findings_text

HEADER = "epoch,step,train_loss,train_acc,val_loss,val_acc,lr\n"
ROW = "1,10,2.1,0.3,2.2,0.3,0.1\n"
STEPS_HEADER = "step,loss,lr\n"


def _run(tmp_path, metrics=None, steps=None, name="run"):
    """A run folder holding the given metrics.csv / steps.csv contents (str or bytes; None: no file)."""
    folder = tmp_path / name
    folder.mkdir()
    for file, content in (("metrics.csv", metrics), ("steps.csv", steps)):
        if content is not None:
            data = content.encode() if isinstance(content, str) else content
            (folder / file).write_bytes(data)
    return folder


# (id, metrics.csv, steps.csv, the file the message names, pattern of the problem)
BAD_RUNS = [
    ("random-bytes", np.random.default_rng(0).bytes(2048), None, "metrics.csv", "not UTF-8 text"),
    ("latin-1", (HEADER + "1,10,2.1,0.3,2.2,0.3,0.1 caf").encode() + b"\xe9\n", None, "metrics.csv", "line 2 is not UTF-8"),
    ("nul-bytes", HEADER.encode() + b"1,10,2.1,0.3,\x00,0.3,0.1\n", None, "metrics.csv", "NUL byte"),
    ("unknown-columns", "time,value\n1,2\n", None, "metrics.csv", "unknown column.*'time'"),
    ("no-epoch-column", "step,train_loss\n10,2.1\n", None, "metrics.csv", "no 'epoch' column"),
    ("column-twice", "epoch,epoch\n1,1\n", None, "metrics.csv", "named twice"),
    ("non-numeric", HEADER + ROW + "2,20,oops,0.4,2.0,0.4,0.1\n", None, "metrics.csv", "line 3.*train_loss is 'oops'"),
    ("fractional-epoch", HEADER + "1.5,10,2.1,0.3,2.2,0.3,0.1\n", None, "metrics.csv", "epoch is '1.5', not a whole"),
    ("infinite-epoch", HEADER + "inf,10,2.1,0.3,2.2,0.3,0.1\n", None, "metrics.csv", "epoch is 'inf'"),
    ("empty-epoch", HEADER + ",10,2.1,0.3,2.2,0.3,0.1\n", None, "metrics.csv", "epoch is empty"),
    ("short-metrics-row", HEADER + ROW + "2,20,2.0\n", None, "metrics.csv", "line 3 has 3 cell.*header has 7"),
    ("extra-cells", HEADER + ROW.strip() + ",9,9\n", None, "metrics.csv", "line 2 has 9 cell"),
    ("empty-file", "", None, "metrics.csv", "is empty .*nothing to diagnose"),
    ("header-only", HEADER, None, "metrics.csv", "holds no rows .*nothing to diagnose"),
    ("header-only-both", HEADER, STEPS_HEADER, "steps.csv", "holds no rows .*nothing to diagnose"),
    ("no-metrics-empty-steps", None, STEPS_HEADER, "metrics.csv", "does not exist .*nothing to diagnose"),
    ("only-a-cut-step", None, STEPS_HEADER + "1,2.3", "steps.csv", "no complete row.*cut short"),
    ("steps-random", HEADER + ROW, np.random.default_rng(1).bytes(512), "steps.csv", "not UTF-8 text"),
    ("steps-header", HEADER + ROW, "iteration,loss\n1,2.3\n", "steps.csv", "header .*step,loss,lr is expected"),
    ("steps-bad-middle-line", HEADER + ROW, STEPS_HEADER + "1,2.3,0.1\n2,x,0.1\n3,2.2,0.1\n", "steps.csv", "line 3"),
]


@pytest.mark.parametrize("metrics, steps, names, pattern", [c[1:] for c in BAD_RUNS], ids=[c[0] for c in BAD_RUNS])
def test_bad_run_files_are_refused_naming_the_file(tmp_path, cli, metrics, steps, names, pattern):
    run = _run(tmp_path, metrics, steps)
    with pytest.raises(CnnlabError) as refused:
        diagnose_run(run)
    message = str(refused.value)
    assert str(run / names) in message
    assert re.search(pattern, message), message
    code, out, err = cli(["diagnose", str(run)])
    assert code == 2 and "Traceback" not in err and str(run / names) in err, err
    assert err.startswith("error: ") and err.count("\n") == 1  # one paragraph
    code, out, err = cli(["diagnose", str(run), "--json"])
    assert code == 2 and out == "" and str(run / names) in err


@pytest.mark.parametrize("which", ["missing", "file", "metrics-file", "empty-folder", "metrics-is-a-folder"])
def test_paths_that_are_not_run_folders(tmp_path, cli, which):
    if which == "missing":
        path, pattern = tmp_path / "no-such-run", "does not exist"
    elif which == "file":
        path, pattern = tmp_path / "notes.txt", "is a file, not a run folder"
        path.write_text("hello\n")
    elif which == "metrics-file":
        run = _run(tmp_path, HEADER + ROW)
        path, pattern = run / "metrics.csv", f"is a file, not a run folder.*diagnose its folder, '{run}'"
    elif which == "empty-folder":
        path, pattern = tmp_path, "has neither metrics.csv nor steps.csv"
    else:
        run = _run(tmp_path)
        (run / "metrics.csv").mkdir()
        path, pattern = run, "metrics.csv' is not a file"
    with pytest.raises(CnnlabError, match=pattern) as refused:
        diagnose_run(path)
    assert str(path) in str(refused.value)
    code, out, err = cli(["diagnose", str(path)])
    assert code == 2 and "Traceback" not in err and str(path) in err, err


def test_a_fresh_process_exits_2_without_a_traceback(tmp_path):
    """As a user runs it (one process: each costs seconds of imports; tests/test_bad_input.py runs random bytes)."""
    path = _run(tmp_path, HEADER + ROW) / "metrics.csv"  # the run's file given instead of its folder
    result = subprocess.run([sys.executable, "-m", "cnnlab", "diagnose", str(path)], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(path) in result.stderr, result.stderr
    assert "is a file, not a run folder" in result.stderr and "does not exist" not in result.stderr


def test_inf_and_nan_losses_are_data_and_still_diagnosed_as_divergence(tmp_path, cli):
    run = _run(tmp_path, HEADER + ROW + "2,20,inf,0.1,nan,0.1,0.1\n", STEPS_HEADER + "19,2.1,0.1\n20,inf,0.1\n")
    rows = read_metrics(run / "metrics.csv")
    assert rows[1]["train_loss"] == float("inf") and np.isnan(rows[1]["val_loss"])
    assert read_steps(run / "steps.csv")[-1]["loss"] == float("inf")
    (finding,) = diagnose_run(run)
    assert (finding.rule, finding.verdict) == ("diverged", "FAIL")
    code, out, err = cli(["diagnose", str(run)])
    assert code == 1 and "diverged" in out


def test_a_step_line_cut_short_by_a_crash_is_left_out_and_reported(tmp_path, cli):
    steps = STEPS_HEADER + "".join(f"{i},{2.3 - 0.01 * i},0.1\n" for i in range(1, 31)) + "31,2.0"
    run = _run(tmp_path, HEADER + ROW, steps)
    skipped = []
    assert len(read_steps(run / "steps.csv", skipped)) == 30
    assert skipped == [(f"{run / 'steps.csv'} line 32", "cut short with no line end ('31,2.0'): the run stopped "
                                                         "while writing it")]
    findings = diagnose_run(run)
    assert findings[0].verdict == NOTE and findings[0].rule == "input"
    assert "line 32" in findings[0].evidence and "30 step rows were read" in findings[0].remedy
    assert [f.rule for f in findings if f.verdict == NOTE] == ["input", "not_checked"]  # one epoch: a short run
    text = findings_text(findings)
    assert text.startswith("NOTE input: 1 line of steps.csv left out")
    assert findings_json(findings)[0]["verdict"] == NOTE
    code, out, err = cli(["diagnose", str(run)])
    assert code == 0 and "NOTE input" in out and "line 32" in out
    # a cut line that still parses is left out too: its last number may have lost digits
    (run / "steps.csv").write_text(STEPS_HEADER + "1,2.3,0.1\n2,2.2,0.0")
    assert read_steps(run / "steps.csv") == [{"step": 1, "loss": 2.3, "lr": 0.1}]


def test_a_metrics_line_cut_short_is_left_out_and_reported(tmp_path, cli):
    """A copy or a full disk can cut metrics.csv's last line (cnnlab's own writes are atomic): the curves
    are still read, and a note names the line, as for steps.csv."""
    steps = STEPS_HEADER + "".join(f"{i},{2.3 - 0.01 * i},0.1\n" for i in range(1, 21))
    run = _run(tmp_path, HEADER + ROW + "2,20,2.0", steps)
    with pytest.raises(CnnlabError, match="line 3 has 3 cell"):
        read_metrics(run / "metrics.csv")  # a caller that cannot report the line still gets it refused
    skipped = []
    assert read_metrics(run / "metrics.csv", skipped) == read_metrics(_run(tmp_path, HEADER + ROW, name="whole") /
                                                                      "metrics.csv")
    assert skipped == [(f"{run / 'metrics.csv'} line 3", "cut short with no line end ('2,20,2.0'): the run stopped "
                                                           "while writing it")]
    findings = diagnose_run(run)
    assert (findings[0].rule, findings[0].verdict) == ("input", NOTE)
    assert findings[0].title == "1 line of metrics.csv left out"
    assert "line 3" in findings[0].evidence and "1 epoch row was read" in findings[0].remedy
    code, out, err = cli(["diagnose", str(run)])
    assert code == 0 and "NOTE input: 1 line of metrics.csv left out" in out, err
    # a cut line that still parses is left out too (a number may have lost digits), and a cut header leaves no row
    (run / "metrics.csv").write_text(HEADER + ROW + "2,20,2.0,0.4,2.0,0.4,0.1")
    skipped = []
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv", skipped)] == [1] and len(skipped) == 1
    (run / "metrics.csv").write_text(HEADER[:10])
    assert read_metrics(run / "metrics.csv", skipped) == [] and "line 1" in skipped[-1][0]
    assert [f.rule for f in diagnose_run(run)][:2] == ["input", "no_epochs"]


def test_a_run_stopped_in_its_first_epoch_is_read_from_its_steps(tmp_path):
    """No metrics.csv (or only its header, after resuming from epoch 0) but steps: the step rules run,
    and a note says the epoch rules had nothing to read."""
    steps = STEPS_HEADER + "".join(f"{i},{2.3 + 0.5 * i},1.0\n" for i in range(1, 30))
    for metrics in (None, HEADER):
        run = _run(tmp_path, metrics, steps, name=f"run-{metrics is None}")
        note, diverged = diagnose_run(run)
        assert [(f.rule, f.verdict) for f in (note, diverged)] == [("no_epochs", NOTE), ("diverged", "FAIL")]
        # Nothing to resume: the note sends the user to the diverged remedy, not to train past the epoch
        assert "diverged before the first epoch ended" in note.remedy and "resume" not in note.remedy


def test_diagnose_json_names_a_run_whose_name_is_not_utf8_as_everywhere(tmp_path, cli):
    """The "run" field held the raw surrogate (jq printed U+FFFD, Python could not encode it back)."""
    import json

    steps = STEPS_HEADER + "".join(f"{i},{2.3 - 0.01 * i},0.1\n" for i in range(1, 7))
    run = _run(tmp_path, None, steps, name=os.fsdecode(b"odd\xff"))
    code, out, err = cli(["diagnose", str(run), "--json"])
    assert json.loads(out)["run"] == f"{tmp_path}/odd\\xff", out


def test_a_run_with_no_finished_epoch_gets_no_verdict(tmp_path, cli):
    """Steps that show no problem but no epoch in metrics.csv: not 'No problems found', but nothing to
    diagnose yet, and what to do."""
    steps = STEPS_HEADER + "".join(f"{i},{2.3 - 0.01 * i},0.1\n" for i in range(1, 7))
    for metrics in (None, HEADER):
        run = _run(tmp_path, metrics, steps, name=f"run-{metrics is None}")
        (finding,) = diagnose_run(run)
        assert (finding.rule, finding.verdict) == ("no_epochs", NOTE) and "6 step" in finding.evidence
        text = findings_text([finding])
        assert "No problems found" not in text and "Nothing to diagnose yet" in text
        code, out, err = cli(["diagnose", str(run)])
        assert code == 0 and "No problems found" not in out and "Nothing to diagnose yet" in out
        assert "Train (or resume) the run past its first epoch" in " ".join(out.split())
    # a finished run whose metrics.csv was emptied since: no resume brings its epochs back
    (run / "status.json").write_text('{"state": "finished", "epoch": 3}')
    (finding,) = diagnose_run(run)
    assert finding.rule == "lost_epochs" and "status.json records 3 finished epochs" in finding.evidence
    assert "restore metrics.csv from a copy" in finding.remedy and "Train (or resume)" not in finding.remedy
    text = findings_text([finding])
    assert "no epoch has finished" not in text and "the run's finished epochs are not in its metrics.csv" in text


def test_a_metrics_file_cut_since_its_epochs_finished_is_named_not_called_a_stop_mid_write(tmp_path, cli):
    """A finished 8-epoch run whose metrics.csv was cut to 4 rows and part of a fifth: the note said "the run
    stopped while writing it" and "Nothing to fix", though status.json records 8 finished epochs."""
    rows = "".join(f"{e},{10 * e},{0.3 - 0.01 * e},0.95,0.3,0.94,0.1\n" for e in range(1, 5))
    run = _run(tmp_path, HEADER + rows + "5,50,1.5", None)
    (run / "status.json").write_text('{"state": "finished", "epoch": 8, "epochs": 8}')
    findings = diagnose_run(run)
    assert [f.rule for f in findings if f.verdict == NOTE][0] == "cut_epochs"
    (cut,) = [f for f in findings if f.rule == "cut_epochs"]
    assert "its last complete row is epoch 4" in cut.evidence and "line 6 cut short" in cut.evidence
    assert "status.json records 8 finished epochs" in cut.evidence and "restore metrics.csv" in cut.remedy
    assert not any(f.rule == "input" for f in findings)  # the cut line is this note's, not a stop mid-write
    assert "stopped while writing" not in findings_text(findings)
    code, out, _ = cli(["diagnose", str(run)])
    assert code == 0 and "No problems found in the epochs left in its metrics file" in out
    (run / "status.json").write_text('{"state": "finished", "epoch": 4, "epochs": 4}')  # as written: no note
    assert [f.rule for f in diagnose_run(run) if f.verdict == NOTE][0] == "input"


def test_a_live_run_whose_epoch_ends_while_it_is_read_is_not_called_cut(tmp_path, monkeypatch):
    """A run writes an epoch's metrics row, then its status.json: read in the other order, an epoch that ended
    between the two reads made a live run's healthy metrics.csv "cut" (restore it from a copy)."""
    from cnnlab.tune import diagnose as diagnose_lib

    rows = "".join(f"{e},{10 * e},{0.3 - 0.01 * e},0.95,0.3,0.94,0.1\n" for e in range(1, 5))
    run = _run(tmp_path, HEADER + rows, None)
    status = run / "status.json"
    status.write_text('{"state": "finished", "epoch": 4, "epochs": 8}')
    read = diagnose_lib.read_metrics

    def epoch_ends_after_the_rows_are_read(path, skipped=None):
        found = read(path, skipped)
        with open(run / "metrics.csv", "a") as metrics:  # the engine: the next row, then the status
            metrics.write("5,50,0.25,0.95,0.3,0.94,0.1\n")
        status.write_text('{"state": "finished", "epoch": 5, "epochs": 8}')
        return found

    monkeypatch.setattr(diagnose_lib, "read_metrics", epoch_ends_after_the_rows_are_read)
    assert not any(f.rule == "cut_epochs" for f in diagnose_run(run))


def test_an_interrupted_run_is_noted_and_still_improving_points_to_its_epochs_to_go(tmp_path, cli):
    """A run stopped by Ctrl-C at epoch 8 of 40 got "still_improving: Train longer (raise train.epochs)" and
    "Nothing to fix in a short run", with no word that it had 32 epochs to go and how to continue it."""
    rows = "".join(f"{e},{10 * e},{2.0 - 0.1 * e},{0.5 + 0.03 * e},2.1,{0.5 + 0.03 * e},0.1\n" for e in range(1, 9))
    run = _run(tmp_path, HEADER + rows, None)
    (run / "config.yaml").write_text("model:\n  name: lenet5\ntrain:\n  epochs: 40\n")
    (run / "last.safetensors").write_bytes(b"")  # what --resume continues from: named in the note
    (run / "status.json").write_text('{"state": "interrupted", "epoch": 8, "epochs": 40}')

    def diagnosed():  # as `cnnlab diagnose --json` reads the run
        code, out, err = cli(["diagnose", str(run), "--json"])
        assert code == 0, err
        return json.loads(out)["findings"]

    findings = diagnosed()
    (note,) = [f for f in findings if f["rule"] == "unfinished"]
    assert note["verdict"] == NOTE and "interrupted (Ctrl-C) after 8 of 40 epochs" in note["evidence"]
    assert f"cnnlab train --resume {run}" in note["evidence"]
    (improving,) = [f for f in findings if f["rule"] == "still_improving"]
    assert "the rest of its epochs" in improving["remedy"] and "raise train.epochs" not in improving["remedy"]
    code, out, _ = cli(["diagnose", str(run)])
    assert code == 0 and out.index("NOTE unfinished") < out.index("WARN still_improving")
    (run / "status.json").write_text('{"state": "finished", "epoch": 8, "epochs": 8}')
    findings = diagnosed()
    assert not any(f["rule"] == "unfinished" for f in findings)
    assert "raise train.epochs" in [f for f in findings if f["rule"] == "still_improving"][0]["remedy"]


def test_the_readers_accept_what_the_writers_write(tmp_path):
    """Every column, empty EMA cells, a byte order mark a spreadsheet adds, CRLF line ends, blank lines."""
    header = ",".join(METRIC_COLUMNS)
    row = "1,10,2.1,0.3,2.2,0.3,,,0.1,1.5,640.0"
    (tmp_path / "metrics.csv").write_bytes(("\ufeff" + header + "\r\n" + row + "\r\n\r\n").encode())
    (rows,) = read_metrics(tmp_path / "metrics.csv")
    assert rows["epoch"] == 1 and rows["ema_val_loss"] is None and rows["images_per_second"] == 640.0
    (tmp_path / "steps.csv").write_bytes(b"step,loss,lr\r\n1,2.3,0.1\r\n2,2.2,0.1\r\n")
    assert [r["step"] for r in read_steps(tmp_path / "steps.csv")] == [1, 2]
    (tmp_path / "steps.csv").write_bytes(b"")
    assert read_steps(tmp_path / "steps.csv") == []
