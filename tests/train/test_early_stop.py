"""Early stopping (train.early_stop_patience, train.early_stop_min_delta) on the validation accuracy."""

import json

import pytest

from cnnlab.config import RunConfig, apply_overrides, load_config, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.train import engine
from cnnlab.train.checkpoint import read_checkpoint_meta
from cnnlab.train.logging import read_metrics

SMALL = [
    "model.name=lenet5", "data.spec=synthetic:classes=4,train=64,val=32,test=32", "train.batch_size=16",
    "train.deterministic=true", "train.precision=fp32", "log.quiet=true", "log.curves=false",
]


def config_of(*extra):
    return apply_overrides(RunConfig(), SMALL + list(extra))


def keras_stop_epoch(accuracies, patience, min_delta):
    """The 1-based epoch after which Keras' EarlyStopping(monitor='val_accuracy', mode='max', patience, min_delta)
    stops, or None: written from its documented rule, as the independent reference."""
    best, wait = -float("inf"), 0
    for epoch, acc in enumerate(accuracies, 1):
        if acc - min_delta > best:
            best, wait = acc, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


def scripted_val_acc(monkeypatch, accuracies):
    """engine.evaluate returns ``accuracies`` in turn, one per epoch (no EMA: one evaluation an epoch)."""
    calls = []

    def evaluate(model, loader, info=None):
        calls.append(1)
        return 1.0, accuracies[len(calls) - 1]

    monkeypatch.setattr(engine, "evaluate", evaluate)
    return calls


def test_a_stalled_run_stops_after_patience_epochs_finished_and_a_resume_keeps_it_stopped(tmp_path, capsys):
    """A learning rate of 1e-9 leaves the weights, and so the validation accuracy, where they started: epoch 1 sets
    the reference and epochs 2 and 3 do not improve on it, so patience 2 ends the run after epoch 3 of 10."""
    config = config_of("train.epochs=10", "optim.lr=1e-9", "train.early_stop_patience=2")
    result = engine.train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len({row["val_acc"] for row in rows}) == 1  # stalled, as the test needs
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert not result.interrupted and result.best_epoch == 1
    assert result.stopped_early.startswith("stopped early after epoch 3 of 10: the validation accuracy has not "
                                           "improved for 2 epochs (train.early_stop_patience=2)")
    assert result.stopped_early in capsys.readouterr().out  # the log says why
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 3 and status["message"] == result.stopped_early
    report = (tmp_path / "run" / "report.txt").read_text()
    assert "stopped early   after epoch 3 of 10: no val acc gain in 2 epochs (train.early_stop_patience=2)" in report
    assert read_checkpoint_meta(tmp_path / "run" / "best.safetensors")["epoch"] == 1
    from cnnlab.report.runs import read_run  # what `cnnlab runs` and the report page say of it

    assert read_run(tmp_path / "run").state_note == f"finished 3 of 10 epochs: {result.stopped_early}"
    from cnnlab.report.page import render_run

    assert f'<p class="sub ended-early">finished 3 of 10 epochs: stopped early after epoch 3 of 10' in render_run(
        read_run(tmp_path / "run"))  # the page says why under the run's name, not only a badge and 3/10
    # a resume trains nothing: the run is finished
    resumed = engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    assert "stopped early after epoch 3 of 10" in capsys.readouterr().err and resumed.stopped_early
    assert len(read_metrics(tmp_path / "run" / "metrics.csv")) == 3
    assert read_checkpoint_meta(tmp_path / "run" / "last.safetensors")["epoch"] == 3
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "finished"


@pytest.mark.parametrize("accuracies, patience, min_delta", [
    ([0.50, 0.60, 0.60, 0.59, 0.61, 0.61, 0.61, 0.61], 2, 0.0),  # a tie is no gain
    ([0.50, 0.504, 0.508, 0.52, 0.522, 0.524, 0.526, 0.53], 2, 0.005),  # small gains add up past the delta
    ([0.50, 0.60, 0.55, 0.58, 0.61, 0.70, 0.69, 0.68], 3, 0.0),  # a dip, then a gain: the count starts again
    ([0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57], 1, 0.0),  # always improving: never stops
])
def test_the_run_stops_where_keras_early_stopping_does(tmp_path, monkeypatch, accuracies, patience, min_delta):
    expected = keras_stop_epoch(accuracies, patience, min_delta)
    scripted_val_acc(monkeypatch, accuracies)
    config = config_of(f"train.epochs={len(accuracies)}", f"train.early_stop_patience={patience}",
                       f"train.early_stop_min_delta={min_delta}")
    result = engine.train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == (expected or len(accuracies))
    assert (result.stopped_early is not None) == (expected is not None)
    # the best checkpoint is still chosen by any gain, whatever the delta
    assert result.best_val_acc == max(accuracies[:len(rows)])


def test_an_interrupted_run_resumes_counting_the_epochs_without_a_gain(tmp_path, monkeypatch):
    """The count since the last gain is in the checkpoint: with min_delta 0.005, epoch 3 (0.508) is the last gain
    (epoch 2's 0.504 is not one), while the best is epoch 5's 0.512. Stopped after epoch 4 and resumed, the run
    still ends after epoch 5, as an uninterrupted one does (the best epoch alone would say epoch 7)."""
    accuracies = [0.50, 0.504, 0.508, 0.51, 0.512, 0.50, 0.50, 0.50]
    extra = ("train.epochs=8", "train.early_stop_patience=2", "train.early_stop_min_delta=0.005")
    assert keras_stop_epoch(accuracies, 2, 0.005) == 5
    scripted_val_acc(monkeypatch, accuracies)

    def stop_after_epoch_4(row):
        if row["epoch"] == 4:
            raise KeyboardInterrupt  # at once, after epoch 4's checkpoint

    assert engine.train(config_of(*extra), tmp_path / "run", on_epoch_end=stop_after_epoch_4).interrupted
    assert read_checkpoint_meta(tmp_path / "run" / "last.safetensors")["improved"] == {"val_acc": 0.508, "epoch": 3}
    scripted_val_acc(monkeypatch, accuracies[4:])
    result = engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2, 3, 4, 5]
    assert result.stopped_early and result.best_epoch == 5


def test_the_gain_counted_is_a_fraction_of_accuracy():
    state = engine.RunState()
    for acc in (0.50, 0.504, 0.506):
        state.epoch_done(acc, 0.005)
    assert state.improved == {"val_acc": 0.506, "epoch": 3} and state.epochs_without_gain() == 0
    state.epoch_done(0.51, 0.005)
    assert state.epochs_without_gain() == 1  # 0.4 points above 0.506: less than half a point


@pytest.mark.parametrize("override, expected", [
    ("train.early_stop_patience=-1", "train.early_stop_patience=-1 must not be negative"),
    ("train.early_stop_patience=1.5", "train.early_stop_patience must be int"),
    ("train.early_stop_min_delta=-0.01", "must lie in \\[0, 1\\): it is a fraction of accuracy"),
    ("train.early_stop_min_delta=1", "must lie in \\[0, 1\\): it is a fraction of accuracy"),
    ("train.early_stop_min_delta=0.01", "early stopping is off \\(train.early_stop_patience=0\\)"),
])
def test_bad_early_stopping_settings_are_refused_by_name(override, expected):
    with pytest.raises(CnnlabError, match=expected):
        validate_config(apply_overrides(RunConfig(), [override]))


@pytest.mark.parametrize("swa_epochs, expected", [
    (8, "the uniform average of train.swa_epochs=8 holds 4 of its 32 planned steps (from step 9)"),
    (2, "the uniform average of train.swa_epochs=2 never began (it starts at step 33): the EMA weights are the "
        "ordinary EMA"),
])
def test_a_run_early_stopping_ends_says_how_much_of_its_swa_average_it_took(tmp_path, capsys, swa_epochs, expected):
    """train.swa_epochs averages the last epochs of train.epochs: a run that stops early stops inside that tail or
    before it, and the EMA weights it keeps are not the average the run announced. 4 steps an epoch, 10 epochs:
    stalled (lr 1e-9), patience 2 ends the run after epoch 3, at step 12."""
    config = config_of("train.epochs=10", "optim.lr=1e-9", "train.early_stop_patience=2", "train.ema=true",
                       f"train.swa_epochs={swa_epochs}")
    result = engine.train(config, tmp_path / "run")
    assert result.stopped_early.endswith(expected)
    err = capsys.readouterr().err
    assert "early stopping, train.early_stop_patience, ends the run sooner, and the average with it" in err
    assert expected.split(" (from")[0].split(" (it starts")[0] in (tmp_path / "run" / "report.txt").read_text().replace("\n", " ")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["message"] == result.stopped_early


def test_the_head_only_epochs_do_not_count_towards_the_patience(tmp_path, monkeypatch):
    """train.probe_epochs=3 trains the head alone first: a head that stalls there (epochs 2 and 3 below epoch 1)
    used to end the run after epoch 2, before the backbone ever trained. The patience counts from epoch 4 on,
    against the head-only phase's best: epoch 4 gains nothing on it, so patience 1 ends the run there."""
    accuracies = [0.60, 0.59, 0.58, 0.60, 0.70, 0.70]
    scripted_val_acc(monkeypatch, accuracies)
    config = config_of("train.epochs=6", "train.probe_epochs=3", "train.early_stop_patience=1")
    result = engine.train(config, tmp_path / "run")
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2, 3, 4]
    assert result.stopped_early.startswith("stopped early after epoch 4 of 6: the validation accuracy has not "
                                           "improved for 1 epoch after the head-only ones (train.early_stop_patience=1)"
                                           ", since 60.00% at epoch 1")
    # a fine-tuning epoch that gains keeps it going: here the run trains all 6 epochs
    scripted_val_acc(monkeypatch, [0.60, 0.59, 0.58, 0.65, 0.70, 0.71])
    result = engine.train(config, tmp_path / "run2")
    assert result.stopped_early is None and len(read_metrics(tmp_path / "run2" / "metrics.csv")) == 6


def test_a_run_early_stopping_ends_says_how_many_of_its_snapshots_it_saved(tmp_path):
    """train.snapshots saves one snapshot per cycle of a cyclic schedule over train.epochs: 4 cycles of 2 epochs
    (8 steps). Stalled, patience 2 ends the run after epoch 3 (step 12), past the first cycle only."""
    config = config_of("train.epochs=8", "optim.lr=1e-9", "train.early_stop_patience=2", "schedule.name=cyclic",
                       "schedule.cycles=4", "train.snapshots=true")
    result = engine.train(config, tmp_path / "run")
    assert result.stopped_early.endswith("; it saved 1 of its 4 snapshots (train.snapshots, one per cycle)")
    assert sorted(path.name for path in (tmp_path / "run").glob("snapshot-*")) == ["snapshot-1.safetensors"]
    assert "it saved 1 of its 4 snapshots" in " ".join((tmp_path / "run" / "report.txt").read_text().split())


@pytest.mark.parametrize("extra, said", [
    (("train.epochs=3", "train.early_stop_patience=2"),
     "train.early_stop_patience=2 cannot end this run early: the first epoch always counts as a gain, so the earliest "
     "stop would come after epoch 3, and the run ends after its 3 (train.epochs) anyway. A patience of 1 or less can "
     "stop it, or more epochs."),
    (("train.epochs=5", "train.probe_epochs=3", "train.early_stop_patience=2"),
     "the 3 head-only epochs (train.probe_epochs) are not counted, so the earliest stop would come after epoch 5, and "
     "the run ends after its 5"),
    (("train.epochs=2", "train.early_stop_patience=1"), "No patience can stop a run this short"),
    (("train.epochs=4", "train.early_stop_patience=2"), None),  # after epoch 3 at the earliest: it can act
])
def test_a_patience_that_can_never_stop_the_run_is_named_before_training(tmp_path, capsys, extra, said):
    engine.train(config_of("optim.lr=1e-9", *extra), tmp_path / "run")
    err = " ".join(capsys.readouterr().err.split())
    if said is None:
        assert "cannot end this run early" not in err
    else:
        assert said in err
