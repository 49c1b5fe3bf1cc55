"""Evals and saved ensemble results of a run that was resumed and trained on: they measured weights the run
has replaced since, so `cnnlab runs` and the run's page show them as stale, never as its test accuracy.

A real run (lenet5 on synthetic data, 3 planned epochs) is stopped by Ctrl-C in its second epoch, evaluated
(`cnnlab eval` of its best checkpoint and of last.safetensors, and an ensemble of the two saved in the run),
then resumed to its end. Its val accuracy is made to rise every epoch, so best.safetensors is written again
by the resume, as last.safetensors always is.
"""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.report.page import render_comparison, render_run
from cnnlab.report.runs import find_runs, read_run, runs_rows
from cnnlab.run import MEASURED_KEY, RunFolder, eval_folder_name

DATA = "synthetic:classes=3,train=96,val=32,test=32,channels=1"
CONFIG = ["model.name=lenet5", f"data.spec={DATA}", "train.epochs=3", "train.batch_size=16", "log.quiet=true",
          "train.threads=1", "log.curves=false"]
STEPS_PER_EPOCH = 96 // 16
PLAIN = eval_folder_name("test", "none", False)
OF_LAST = eval_folder_name("test", "none", False, "last")


def _rising_val(monkeypatch):
    """Every epoch's val accuracy above the one before: each epoch is a new best, so best.safetensors is written
    at each epoch's end (the real evaluation's accuracy on 32 images may stay put)."""
    from cnnlab.train import engine

    scores = iter([0.1 * k for k in range(1, 20)])
    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: (1.0, next(scores)))


def _stopped_in_epoch_two(monkeypatch, run: Path):
    """A run stopped by Ctrl-C two steps into its second epoch: best and last at epoch 1 (last 2 batches on)."""
    from cnnlab.train import engine

    original, calls = engine.training_loss, []

    def ctrl_c(*args):
        calls.append(1)
        if len(calls) == STEPS_PER_EPOCH + 2:
            signal.raise_signal(signal.SIGINT)  # through the engine's handler: the step finishes, then it stops
        return original(*args)

    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(engine, "training_loss", ctrl_c)
            result = engine.train(apply_overrides(RunConfig(), CONFIG), run)
    finally:
        torch.set_num_threads(threads)
    assert result.interrupted and result.checkpoint_saved


def _resume(run: Path):
    from cnnlab.train import engine

    threads = torch.get_num_threads()
    try:
        result = engine.train(RunFolder(run).read_config(), run, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert not result.interrupted


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """(the run folder, its evals and ensemble before the resume), the run resumed to its end since. Before the
    resume, the whole run was also copied as `cp -r` copies it (the files' times not kept): before["early"]."""
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.evaluate import run_eval

    run = tmp_path_factory.mktemp("stale") / "run"
    copies = tmp_path_factory.mktemp("copies")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _rising_val(monkeypatch)
        _stopped_in_epoch_two(monkeypatch, run)
        folder = RunFolder(run)
        before = {
            "read": read_run(run),
            "best": run_eval(run, split="test", mistakes=0),
            "last": run_eval(folder.last, split="test", mistakes=0),
            "ensemble": run_ensemble([folder.best, folder.last], out=run / "pair.json"),
        }
        before["read_after_eval"] = read_run(run)
        before["early"] = Path(shutil.copytree(run, copies / "early", copy_function=shutil.copyfile))
        _resume(run)
    return run, before


def test_each_result_records_the_weights_it_measured(resumed):
    from cnnlab.train.checkpoint import read_checkpoint_meta

    run, before = resumed
    plain = json.loads((run / PLAIN / "metrics.json").read_text())[MEASURED_KEY]
    assert plain["file"] == "../best.safetensors"  # relative to the eval folder: it holds in a moved run
    assert (plain["epoch"], plain["step"]) == (1, STEPS_PER_EPOCH)  # the best epoch, before the Ctrl-C
    assert plain["checksum"].startswith("crc32:")
    last = json.loads((run / OF_LAST / "metrics.json").read_text())[MEASURED_KEY]
    assert last["file"] == "../last.safetensors" and last["step"] == STEPS_PER_EPOCH + 2
    members = json.loads((run / "pair.json").read_text())["members"]
    assert [m[MEASURED_KEY]["file"] for m in members] == ["best.safetensors", "last.safetensors"]
    # and the run has moved on since: the files now hold the last epoch
    assert read_checkpoint_meta(run / "best.safetensors")["epoch"] == 3


def test_a_stale_eval_of_last_alone_leaves_the_test_column_blank_not_stale(resumed, tmp_path):
    """An eval of last.safetensors is never the run's test accuracy: once stale it made the column read "stale",
    whose remedy (evaluate it again) brought no test accuracy back. It is still named among the stale results."""

    run, _ = resumed
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    shutil.rmtree(copy / PLAIN)
    record = read_run(copy)
    assert record.test_acc is None and not record.test_stale
    assert OF_LAST in dict(record.stale_results)
    assert runs_rows([record])[0]["test_stale"] is False


def test_before_the_resume_the_results_are_current(resumed):
    _, before = resumed
    record = before["read_after_eval"]
    assert record.test_acc == before["best"]["top1"]
    assert [e.stale for e in record.evals] == [None, None]
    assert record.ensembles[0]["stale"] is None and record.stale_results == []


def test_after_the_resume_they_are_stale_and_not_the_test_accuracy(resumed, cli):
    run, before = resumed
    record = read_run(run)
    assert record.state == "finished" and record.epochs_done == 3
    assert record.test_acc is None and record.test_stale  # not the old eval's figure
    stale = dict(record.stale_results)
    assert set(stale) == {PLAIN, OF_LAST, "pair.json"}
    assert "best.safetensors at epoch 1 (step 6)" in stale[PLAIN] and "now holds epoch 3 (step 18)" in stale[PLAIN]
    assert "last.safetensors at epoch 1 and 2 batches (step 8)" in stale[OF_LAST]
    assert "best.safetensors" in stale["pair.json"] and "last.safetensors" in stale["pair.json"]

    row = runs_rows([record])[0]
    assert row["test"] is None and row["test_stale"]
    # each eval measured again on the file it read: `cnnlab eval RUN` reads best.safetensors, so the eval of
    # last.safetensors is named by that file, or the note would send the user round in circles
    assert (f"evaluate again (`cnnlab eval {run}`, `cnnlab eval {run / 'last.safetensors'}`, with the same options)"
            in row["stale_remedy"])
    assert [item["result"] for item in row["stale"]] == [PLAIN, OF_LAST, "pair.json"]
    code, out, _ = cli(["runs", str(run.parent)])
    assert code == 0
    line = [line for line in out.splitlines() if line.startswith("run ")][-1]  # the run's row, after the header's
    assert "lenet5" in line and "stale" in line and f"{before['best']['top1']:.2%}" not in line
    assert f"note: {run}: stale" in out and PLAIN in out and "pair.json" in out

    page = render_run(record)
    assert 'class="test-acc"' not in page and "test-stale" in page
    assert f"Evaluation: {PLAIN} (stale)" in page and "Ensemble 1 (pair.json) (stale)" in page
    assert "Stale results:" in page
    assert "test-stale" in render_comparison([record, record])


def test_the_stale_note_wraps_at_80_columns_as_one_indented_paragraph(resumed, cli, monkeypatch):
    """The note is about 230 characters: wrapped by the terminal, its second line began at column 0 as if it were
    a line of its own. Each line now fits, the lines after the first indented under the text after "note: "."""
    from cnnlab.cli import console

    run, _ = resumed
    monkeypatch.setattr(console, "width", 80)
    code, out, _ = cli(["runs", str(run.parent)])
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"note: {run}: stale"))
    rest = lines[start + 1:]
    follow = rest[:next(i for i, line in enumerate(rest) if not line.startswith(" " * len("note: ")))]
    note = [lines[start], *follow]
    # each line fits but one holding a command longer than the width, which is kept whole to copy (the terminal
    # folds it)
    assert len(note) > 1 and all(len(line) <= 80 or "`cnnlab ensemble" in line or "`cnnlab eval" in line
                                 for line in note), note
    assert all(line[len("note: ")] != " " for line in follow)  # indented under the text, no further
    text = " ".join(line.strip() for line in note)
    assert text.startswith(f"note: {run}: stale (measured weights replaced since): {PLAIN}, ")
    assert (f"evaluate again (`cnnlab eval {run}`, `cnnlab eval {run / 'last.safetensors'}`, with the same "
            "options); ") in text
    # a saved ensemble is measured again by the ensemble, not by `cnnlab eval` (the advice once named eval alone)
    assert f"run the ensemble again (`cnnlab ensemble {run / 'best.safetensors'} {run / 'last.safetensors'} --out " \
           f"{run / 'pair.json'}`, with the same options) to measure the weights there now" in text


def test_a_new_eval_is_current_again_and_survives_a_move_and_a_copy_without_times(resumed, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    run, _ = resumed
    copy = shutil.copytree(run, tmp_path / "work")
    fresh = run_eval(copy, split="test", mistakes=0)
    record = read_run(copy)
    assert record.test_acc == fresh["top1"] and not record.test_stale
    assert [name for name, _ in record.stale_results] == [OF_LAST, "pair.json"]  # only those not measured again

    moved = copy.rename(tmp_path / "moved")  # the record names the checkpoint relative to the eval folder
    assert read_run(moved).test_acc == fresh["top1"]
    # a copy that does not keep the files' times: the weights' identity, not a time, tells
    plain = shutil.copytree(moved, tmp_path / "plain", copy_function=shutil.copyfile)
    os.utime(plain / "best.safetensors", ns=(2**62, 2**62))  # written "after" the eval, same weights
    assert read_run(plain).test_acc == fresh["top1"]


def test_a_whole_run_copied_and_trained_on_has_stale_results_not_another_runs(resumed, tmp_path, monkeypatch, cli):
    """`cp -r original copy`, then `cnnlab train --resume copy`: the copy's evals measured the weights the copy held
    then, which its resume replaced. Their records lead to the copy's own files (no longer those weights) and name
    the original's by absolute path (still those weights), as an eval folder copied in from another run does; the
    copy's steps.csv, the original's up to the step they measured, tells them apart."""
    from cnnlab.evaluate.evaluate import run_eval

    _, before = resumed
    original = Path(shutil.copytree(before["early"], tmp_path / "original"))  # stopped in epoch 2, as it was
    report = run_eval(original, split="test", mistakes=0)  # its eval-test-none now names original/best.safetensors
    copy = Path(shutil.copytree(original, tmp_path / "copy", copy_function=shutil.copyfile))
    _rising_val(monkeypatch)
    _resume(copy)

    record = read_run(copy)
    assert record.epochs_done == 3 and record.test_acc is None
    plain = next(item for item in record.evals if item.name == PLAIN)
    assert plain.metrics["checkpoint"] == str(original / "best.safetensors")  # still those weights
    assert plain.elsewhere is None and record.test_stale and not record.test_elsewhere
    assert "best.safetensors at epoch 1 (step 6)" in plain.stale and "now holds epoch 3 (step 18)" in plain.stale
    row = runs_rows([record])[0]
    assert row["test_stale"] and row["elsewhere"] == []
    code, out, _ = cli(["runs", str(tmp_path)])
    text = " ".join(out.split())
    assert code == 0 and f"note: {copy}: stale" in text and "another run's weights" not in text
    page = render_run(record)
    assert f"Evaluation: {PLAIN} (stale)" in page and "another run" not in page
    assert read_run(original).test_acc == report["top1"]  # the original's eval still describes it


def test_an_eval_of_weights_a_copy_never_held_is_another_runs(resumed, tmp_path):
    """The same records the other way round: the original, trained on, is evaluated again and that eval folder is
    copied into the copy taken before the resume (its steps.csv ends at the Ctrl-C), which never held the weights:
    another run's, not stale."""
    from cnnlab.evaluate.evaluate import run_eval

    run, before = resumed
    original = shutil.copytree(run, tmp_path / "original")
    report = run_eval(original, split="test", mistakes=0)  # the best weights of epoch 3
    early = shutil.copytree(before["early"], tmp_path / "early")
    shutil.rmtree(early / PLAIN)
    shutil.copytree(original / PLAIN, early / PLAIN)

    record = read_run(early)
    plain = next(item for item in record.evals if item.name == PLAIN)
    assert plain.elsewhere == str(original / "best.safetensors") and plain.stale is None
    assert record.test_acc is None and not record.test_stale
    assert "another run's weights" in render_run(record)
    assert read_run(original).test_acc == report["top1"]  # in the run it measured, the eval is current


def test_an_eval_without_a_record_is_judged_by_the_files_times(resumed, tmp_path):
    """Evals of an older cnnlab record no weights: stale when the checkpoint was written after metrics.json."""
    run, before = resumed
    copy = shutil.copytree(run, tmp_path / "old" / run.name)  # moved: the ensemble's members name run/*.safetensors
    metrics_path = copy / PLAIN / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    del metrics[MEASURED_KEY]
    metrics_path.write_text(json.dumps(metrics))
    for member_file in (copy / "pair.json",):
        result = json.loads(member_file.read_text())
        for member in result["members"]:
            del member[MEASURED_KEY]
        member_file.write_text(json.dumps(result))
    checkpoint = copy / "best.safetensors"
    written = metrics_path.stat().st_mtime_ns
    os.utime(checkpoint, ns=(written + 10**9, written + 10**9))  # the checkpoint written after the eval
    record = read_run(copy)
    assert record.test_acc is None and "older cnnlab" in dict(record.stale_results)[PLAIN]
    assert "older cnnlab" in dict(record.stale_results)["pair.json"]  # its members name this run's files
    os.utime(checkpoint, ns=(written - 10**9, written - 10**9))
    for name in ("last.safetensors",):
        os.utime(copy / name, ns=(written - 10**9, written - 10**9))
    os.utime(copy / "pair.json", ns=(written, written))
    record = read_run(copy)
    assert record.test_acc == before["best"]["top1"] and PLAIN not in dict(record.stale_results)
    assert "pair.json" not in dict(record.stale_results)


def _replace_with(target: Path, source: Path) -> None:
    """``target`` replaced by a copy of ``source`` as a run replaces its checkpoints: a rename over it."""
    temporary = target.with_name(f".{target.name}.test.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def test_an_eval_whose_checkpoint_a_run_replaced_mid_eval_records_the_weights_it_read(resumed, tmp_path,
                                                                                      monkeypatch):
    """`cnnlab eval RUN` from a second terminal while RUN trains: the run wrote a new best.safetensors after the
    eval had read its weights. The eval recorded the new file's identity beside the old weights' accuracy, and
    `cnnlab runs` showed that figure as the run's current test accuracy."""
    from cnnlab.evaluate import evaluate

    run, before = resumed
    copy = Path(shutil.copytree(before["early"], tmp_path / "run", copy_function=shutil.copyfile))  # best: epoch 1
    original = evaluate.predict_probabilities

    def after_a_new_best(*args, **kwargs):
        _replace_with(copy / "best.safetensors", run / "best.safetensors")  # the run's epoch 3
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_probabilities", after_a_new_best)
    report = evaluate.run_eval(copy, split="test", mistakes=0)
    assert (report[MEASURED_KEY]["epoch"], report[MEASURED_KEY]["step"]) == (1, STEPS_PER_EPOCH)  # what it read
    assert report["top1"] == before["best"]["top1"]  # the epoch-1 weights' accuracy, as before the resume
    record = read_run(copy)
    assert record.test_acc is None and record.test_stale  # the file holds other weights now


def test_a_checkpoint_replaced_while_it_is_loaded_is_read_again(resumed, tmp_path, monkeypatch):
    """The metadata and the weights are two reads of the file: a rename between them is seen by the identity read
    before and after, and the load starts again, so that the model, its metadata and its identity are one state."""
    from cnnlab.errors import CnnlabError
    from cnnlab.train import checkpoint

    run, before = resumed
    copy = Path(shutil.copytree(before["early"], tmp_path / "run", copy_function=shutil.copyfile))
    original, calls = checkpoint._load_run_model, []

    def replaced_once(*args):
        calls.append(1)
        loaded = original(*args)
        if len(calls) == 1:
            _replace_with(copy / "best.safetensors", run / "best.safetensors")
        return loaded

    monkeypatch.setattr(checkpoint, "_load_run_model", replaced_once)
    loaded = checkpoint.load_run_model(copy)
    assert len(calls) == 2 and loaded.meta["epoch"] == 3 and loaded.identity["epoch"] == 3
    state, _ = checkpoint.load_weights(run / "best.safetensors")
    assert all(torch.equal(value, state[name]) for name, value in loaded.model.state_dict().items() if name in state)

    # replaced at every read (a run writing the file faster than it can be read): refused in words, not looped on
    calls.clear()
    sources = [run / "best.safetensors", before["early"] / "best.safetensors"]  # the first read: epoch 3 -> epoch 1

    def replaced_always(*args):
        calls.append(1)
        loaded = original(*args)
        _replace_with(copy / "best.safetensors", sources[len(calls) % 2])
        return loaded

    monkeypatch.setattr(checkpoint, "_load_run_model", replaced_always)
    with pytest.raises(CnnlabError, match=f"was replaced {checkpoint.LOAD_TRIES} times while it was being read"):
        checkpoint.load_run_model(copy)


def test_a_page_built_while_its_run_moved_on_is_built_again(resumed, tmp_path, monkeypatch):
    """`cnnlab report RUN` while RUN finishes: the page was built from the run's files as they were, and written
    after the run's own last page, which it replaced for good ("running, 38 of 60 epochs"). A change to the run's
    status.json or metrics.csv during the build now builds the page again, from the files as they are then."""
    import cnnlab.report as report

    run, before = resumed
    copy = Path(shutil.copytree(before["early"], tmp_path / "run", copy_function=shutil.copyfile))  # stopped
    original, pages = report.build_report, []

    def the_run_ends_meanwhile(*args, **kwargs):
        built = original(*args, **kwargs)
        pages.append(built[0])
        if len(pages) == 1:  # the run's last epoch and its end, written while the first page was being built
            for name in ("metrics.csv", "status.json"):
                _replace_with(copy / name, run / name)
        return built

    monkeypatch.setattr(report, "build_report", the_run_ends_meanwhile)
    said = []
    written = report.write_report([copy], say=said.append)
    assert len(pages) == 2 and pages[0] != pages[1]
    assert written.read_text() == pages[1]  # the page of the files as they are now
    # the first page: a run stopped in its second epoch (a banner says so); the page written: the finished run
    assert "<strong>Interrupted:</strong> interrupted (Ctrl-C) after 1 of 3 epochs" in pages[0]
    assert "Interrupted:" not in pages[1]
