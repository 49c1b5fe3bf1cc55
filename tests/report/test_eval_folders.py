"""Which eval folders a run keeps apart, and which of them are its test accuracy.

Two real runs (lenet5 on synthetic data, one epoch each, with different seeds so that their weights differ)
are evaluated with `cnnlab eval`: a corner TTA with two shifts must land in two folders, each shown with its
shift, and an eval folder copied from one run into the other must not count as the other's test accuracy.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.report.page import render_run
from cnnlab.report.runs import read_run, runs_rows
from cnnlab.run import EVAL_METRICS_FILE, MEASURED_KEY, eval_folder_name

DATA = "synthetic:classes=3,train=48,val=16,test=16,channels=1"
CONFIG = ["model.name=lenet5", f"data.spec={DATA}", "train.epochs=1", "train.batch_size=16", "log.quiet=true",
          "train.threads=1", "log.curves=false"]
PLAIN = eval_folder_name("test", "none", False)


def _train(run: Path, seed: int) -> Path:
    from cnnlab.train import engine

    threads = torch.get_num_threads()
    try:
        engine.train(apply_overrides(RunConfig(), [*CONFIG, f"train.seed={seed}"]), run)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trained runs, a and b, side by side."""
    root = tmp_path_factory.mktemp("evalfolders")
    return _train(root / "a", 0), _train(root / "b", 1)


def test_corner_shifts_get_their_own_folders_and_read_apart(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    plain = run_eval(run, tta="5crop", batch_size=16, mistakes=0)
    one = run_eval(run, tta="5crop", shift=1, batch_size=16, mistakes=0)
    three = run_eval(run, tta="5crop", shift=3, batch_size=16, mistakes=0)
    folders = {Path(report["files"]["metrics"]).parent.name for report in (plain, one, three)}
    # the mode's own shift keeps the plain name, so an eval from before these names is still found by it
    assert Path(plain["files"]["metrics"]).parent.name == eval_folder_name("test", "5crop", False)
    assert len(folders) == 3, folders  # none replaced another
    for report in (plain, one, three):
        assert json.loads(Path(report["files"]["metrics"]).read_text())["shift"] == report["shift"]
    assert (one["shift"], three["shift"]) == (1, 3)

    record = read_run(run)
    texts = {item.name: item.tta_text for item in record.evals}
    assert len(set(texts.values())) == 3, texts  # the listing and page tell them apart by their settings
    assert texts[Path(three["files"]["metrics"]).parent.name] == "5crop, shift 3 px"
    page = render_run(record)
    assert "5crop, shift 1 px" in page and "5crop, shift 3 px" in page


def test_multiscale_scales_get_their_own_folder(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    default = run_eval(run, tta="multiscale", batch_size=16, mistakes=0)
    other = run_eval(run, tta="multiscale", scales=[0.8, 1.0, 1.25], batch_size=16, mistakes=0)
    assert Path(default["files"]["metrics"]).parent.name == eval_folder_name("test", "multiscale", False)
    assert Path(other["files"]["metrics"]).parent != Path(default["files"]["metrics"]).parent
    texts = {item.tta_text for item in read_run(run).evals}
    assert any("scales 0.8 1 1.25" in text for text in texts), texts


def test_an_eval_folder_copied_from_another_run_is_not_its_test_accuracy(runs, tmp_path, cli):
    from cnnlab.evaluate.evaluate import run_eval

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    run_eval(b, batch_size=16, mistakes=0)
    (b / PLAIN).rename(b / "kept")  # b's own eval, kept out of the way
    report = run_eval(a, batch_size=16, mistakes=0)
    shutil.copytree(a / PLAIN, b / PLAIN)  # by hand: a's eval now sits in b as eval-test-none

    record = read_run(b)
    (copied,) = [item for item in record.evals if item.name == PLAIN]
    assert record.test_acc is None
    # not b's own eval gone out of date (the listing would say "stale: evaluate again"): it never measured b's weights
    assert copied.stale is None and not record.test_stale
    assert copied.elsewhere is not None and "a" in Path(copied.elsewhere).parts
    assert record.test_elsewhere  # the header says why the run's own weights show no test accuracy
    assert "not evaluated: its test eval measured another run's weights" in render_run(record)
    (row,) = runs_rows([record])
    assert row["test"] is None and [item["result"] for item in row["elsewhere"]] == [PLAIN]
    code, out, _ = cli(["runs", str(tmp_path)])
    assert code == 0 and f"{PLAIN} measured another run's weights" in " ".join(out.split())

    # a's own eval in a is still a's test accuracy
    assert read_run(a).test_acc == pytest.approx(report["top1"])


def test_an_eval_written_outside_and_moved_into_another_run_is_not_its_test_accuracy(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    run_eval(a / "best.safetensors", out=tmp_path / "elsewhere", batch_size=16, mistakes=0)
    shutil.copytree(tmp_path / "elsewhere", b / PLAIN)  # its record leads out of b, to a's checkpoint

    record = read_run(b)
    assert record.test_acc is None  # its checkpoint's file name, best.safetensors, is b's too
    (moved,) = [item for item in record.evals if item.name == PLAIN]
    assert moved.elsewhere is not None


def test_an_eval_written_outside_and_moved_into_its_own_run_counts(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    a = tmp_path / "a"
    shutil.copytree(runs[0], a)
    report = run_eval(a / "best.safetensors", out=tmp_path / "elsewhere", batch_size=16, mistakes=0)
    shutil.move(tmp_path / "elsewhere", a / PLAIN)

    assert read_run(a).test_acc == pytest.approx(report["top1"])


def test_an_old_record_without_weights_is_judged_by_its_checkpoint_name(runs, tmp_path):
    from cnnlab.evaluate.evaluate import run_eval

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    report = run_eval(a, batch_size=16, mistakes=0)
    shutil.copytree(a / PLAIN, b / PLAIN)
    metrics_path = b / PLAIN / EVAL_METRICS_FILE
    metrics = json.loads(metrics_path.read_text())
    del metrics[MEASURED_KEY]  # as an older cnnlab wrote it: the checkpoint's name is all there is
    metrics_path.write_text(json.dumps(metrics))

    assert read_run(b).test_acc == pytest.approx(report["top1"])  # as before: the name matches b's best


def test_a_shift_or_scales_equal_to_the_default_write_to_the_plain_folder(runs, tmp_path):
    """--shift and --scales named the folder whenever given: `--shift 4` where the run's own shift is 4, or the
    default scales in another order, measured what the plain eval measures and wrote the same numbers to a second
    folder. The shift the run uses is checked against its config.yaml, read here with yaml."""
    import yaml

    from cnnlab.evaluate.evaluate import run_eval
    from cnnlab.evaluate.tta import DEFAULT_SCALES

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    aug = yaml.safe_load((run / "config.yaml").read_text())["aug"]
    assert aug["crop"] == "translate" and aug["translate"] > 0  # the run trained with shifts: its own is the default
    plain = run_eval(run, tta="5crop", batch_size=16, mistakes=0)
    assert plain["shift"] == aug["translate"]
    given = run_eval(run, tta="5crop", shift=aug["translate"], batch_size=16, mistakes=0)
    assert given["files"]["metrics"] == plain["files"]["metrics"]
    assert Path(given["files"]["metrics"]).parent.name == eval_folder_name("test", "5crop", False)
    assert given["top1"] == plain["top1"] and given["shift"] == plain["shift"]
    other = run_eval(run, tta="5crop", shift=aug["translate"] + 1, batch_size=16, mistakes=0)
    assert Path(other["files"]["metrics"]).parent.name == eval_folder_name("test", "5crop", False,
                                                                           shift=aug["translate"] + 1)

    default = run_eval(run, tta="multiscale", batch_size=16, mistakes=0)
    reordered = run_eval(run, tta="multiscale", scales=list(reversed(DEFAULT_SCALES)), batch_size=16, mistakes=0)
    assert reordered["files"]["metrics"] == default["files"]["metrics"]
    assert reordered["top1"] == pytest.approx(default["top1"])
    assert sorted(path.name for path in run.glob("eval-*")) == sorted(
        [eval_folder_name("test", "5crop", False), eval_folder_name("test", "5crop", False, shift=aug["translate"] + 1),
         eval_folder_name("test", "multiscale", False)])


def test_a_shift_equal_to_an_eighth_of_the_side_is_the_default_of_a_run_trained_without_shifts(tmp_path):
    """A run trained without pad-and-crop shifts has its corner views shifted by 1/8 of the side: given that
    shift, the eval writes to the plain folder; the eighth is worked out here from the recorded image size."""
    from cnnlab.evaluate.evaluate import run_eval
    from cnnlab.train import engine
    from cnnlab.train.checkpoint import read_checkpoint_meta

    run = tmp_path / "unshifted"
    threads = torch.get_num_threads()
    try:
        engine.train(apply_overrides(RunConfig(), [*CONFIG, "aug.preset=none"]), run)
    finally:
        torch.set_num_threads(threads)
    size = read_checkpoint_meta(run / "best.safetensors")["image_size"]
    eighth = max(1, round(size / 8))
    plain = run_eval(run, tta="10crop", batch_size=16, mistakes=0)
    assert plain["shift"] == eighth
    given = run_eval(run, tta="10crop", shift=eighth, batch_size=16, mistakes=0)
    assert Path(given["files"]["metrics"]).parent.name == eval_folder_name("test", "10crop", False)
    assert sorted(path.name for path in run.glob("eval-*")) == [eval_folder_name("test", "10crop", False)]
