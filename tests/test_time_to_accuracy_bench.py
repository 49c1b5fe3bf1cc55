"""bench/time_to_accuracy.py's pieces that decide its numbers: the tutorial baseline's data and how the curves are read.

The bench itself trains for minutes and prints times, which no test asserts; these tests check that
the baseline reads the same Fashion-MNIST images as cnnlab does, and that times to a threshold and
the per-minute curve come from the right evaluations.
"""

import pytest
import torch

from _bench import load_bench
from cnnlab.data.sources import _idx_file, locate_fashion_mnist, read_idx

bench = load_bench("time_to_accuracy")

RECORDS = [{"seconds": 40.0, "last": 0.88, "ema": 0.90}, {"seconds": 80.0, "last": 0.915, "ema": 0.905},
           {"seconds": 130.0, "last": 0.905, "ema": 0.93}, {"seconds": 185.0, "last": 0.94, "ema": 0.941}]


def test_time_to_a_threshold_is_the_first_evaluation_at_or_above_it():
    assert bench.time_to(RECORDS, "last", 0.91) == 80.0
    assert bench.time_to(RECORDS, "last", 0.915) == 80.0  # "at or above"
    assert bench.time_to(RECORDS, "ema", 0.91) == 130.0  # a later dip does not matter; the first crossing does
    assert bench.time_to(RECORDS, "last", 0.95) is None
    assert bench.clock_text(None) == "not reached" and "3 min 05.0 s" in bench.clock_text(185.0)


def test_the_curve_gives_each_minute_the_last_evaluation_before_it():
    # minute 1: the 40 s record; minute 2: the 80 s one (130 s is past 120 s); minute 3: 130 s (185 s is past 180 s)
    assert bench.at_minutes(RECORDS, "last") == [(1, 0.88), (2, 0.915), (3, 0.905)]
    assert bench.at_minutes([{"seconds": 70.0, "last": 0.5}], "last") == []  # no evaluation by minute 1


def test_the_tutorial_baseline_reads_the_same_images_and_labels_as_cnnlab(tmp_path):
    """torchvision's FashionMNIST over the folder the bench lays out holds exactly cnnlab's idx data."""
    from torchvision import datasets

    source = locate_fashion_mnist()
    assert source is not None, "Fashion-MNIST is missing: make test installs it (apt-get install dataset-fashion-mnist)"
    root = bench.torchvision_root(source, tmp_path / "tv")
    for train, stem in ((True, "train"), (False, "t10k")):
        count = 60_000 if train else 10_000
        ours_x = read_idx(_idx_file(source, f"{stem}-images-idx3-ubyte"), count, (28, 28))
        ours_y = read_idx(_idx_file(source, f"{stem}-labels-idx1-ubyte"), count)
        theirs = datasets.FashionMNIST(root, train=train, download=False)
        assert len(theirs) == count
        assert torch.equal(theirs.data, ours_x) and torch.equal(theirs.targets, ours_y.long())


def test_the_tutorial_network_is_the_two_conv_cnn():
    model = bench.TutorialCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(RuntimeError):  # the 64 x 7 x 7 flatten is for 28x28 inputs only
        model(torch.zeros(2, 1, 32, 32))


# The recipe runs below train 20 images per class and hold out 1% of the training split for validation: 600 images
# the engine evaluates after every epoch (with the EMA weights too where kept). No test reads val accuracy, and
# 20% of the split (12,000 images) was two thirds of a run's time.


def test_a_budgeted_recipe_s_clock_starts_with_its_timed_steps(tmp_path):
    """train.minutes spends time timing steps before the first epoch: the bench counts it as training."""
    import json

    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.train.logging import read_metrics

    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=fashion-mnist", "data.train_per_class=20", "data.val_fraction=0.01",
        "train.batch_size=32", "train.epochs=2", "train.minutes=10", "log.quiet=true", "log.curves=false"])
    records = bench.run_recipe(config, tmp_path / "run")
    timing = json.loads((tmp_path / "run" / "budget.json").read_text())
    seconds = [row["epoch_seconds"] for row in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert timing["epochs"] == 2 and timing["probe_seconds"] > 0  # 10 minutes hold both epochs of 5 steps
    assert [r["seconds"] for r in records] == pytest.approx([timing["probe_seconds"] + seconds[0],
                                                            timing["probe_seconds"] + seconds[0] + seconds[1]])


def _first_images(source, into, train: int, test: int):
    """A folder of Fashion-MNIST's four idx files (unpacked) holding only the first ``train`` and ``test`` images of
    ``source``'s, with their labels: torchvision reads an idx file's own count, so the baseline reads just these."""
    import gzip
    import struct

    into.mkdir()
    for stem, count in (("train", train), ("t10k", test)):
        for kind, item_bytes in (("images-idx3", 28 * 28), ("labels-idx1", 1)):
            name = f"{stem}-{kind}-ubyte"
            path = _idx_file(source, name)
            with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                data = f.read()
            header = 16 if item_bytes > 1 else 8  # magic and count, then rows and columns for images
            kept = data[:4] + struct.pack(">I", count) + data[8:header] + data[header:header + count * item_bytes]
            (into / name).write_bytes(kept)
    return into


def test_the_baseline_stops_within_one_step_of_its_minutes(monkeypatch, tmp_path):
    """--baseline-minutes is checked after every step, not at the next test score EVAL_EVERY steps later."""
    source = locate_fashion_mnist()
    assert source is not None, "Fashion-MNIST is missing: make test installs it (apt-get install dataset-fashion-mnist)"
    # Ten batches of training images and 1,000 test images: the loop stops within its first epoch, and its one score
    # reads every test image (the 10,000 of the real split were most of this test's time); the files hold the real
    # ones, as test_the_tutorial_baseline_reads_the_same_images_and_labels_as_cnnlab checks the baseline reads them.
    source = _first_images(source, tmp_path / "fashion", train=10 * bench.BASELINE_BATCH, test=1_000)
    ticks = iter(range(10**6))  # a clock that advances 1 s at every read: the bench reads it once a step

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return float(next(ticks))

    monkeypatch.setattr(bench, "time", Clock)
    limit = 4.5  # seconds on that clock: passed during the fifth step
    records = bench.run_baseline(source, minutes=limit / 60, goal=1.0)  # a goal no loop reaches this soon
    assert len(records) == 1  # scored once, where it stopped, not after EVAL_EVERY steps
    stop = records[0]
    assert stop["step"] < bench.EVAL_EVERY
    assert limit <= stop["seconds"] < limit + 1  # past the limit by less than one step's clock read
    assert 0 <= stop["test"] <= 1


def test_score_every_scores_those_epochs_and_always_the_last(tmp_path):
    """--score-every 2 over 3 epochs scores epochs 2 and 3, each at the training seconds up to its end."""
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.run import RunFolder
    from cnnlab.train.logging import read_metrics

    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=fashion-mnist", "data.train_per_class=20", "data.val_fraction=0.01",
        "train.batch_size=32", "train.epochs=3", "train.ema=true", "log.quiet=true", "log.curves=false"])
    records = bench.run_recipe(config, tmp_path / "run", score_every=2)
    seconds = [row["epoch_seconds"] for row in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert [r["epoch"] for r in records] == [2, 3]
    assert [r["seconds"] for r in records] == pytest.approx([seconds[0] + seconds[1], sum(seconds)])
    # the last record scored the weights the run ended with: the evaluation of its own checkpoint agrees
    final = bench.score_checkpoint(RunFolder(tmp_path / "run").last, ema=True)
    assert (records[-1]["ema"], records[-1]["ema_flip"]) == (final["none"], final["flip"])
    assert {"last", "last_flip", "ema", "ema_flip"} <= records[0].keys()


def test_a_score_is_the_exact_share_of_test_images_so_a_goal_met_exactly_counts(tmp_path):
    """9,500 of 10,000 right is 95%: a float32 mean read it as 0.94999999, and a run that ended on 95.00% was
    reported as not reaching 95%."""
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model, predict_probabilities
    from cnnlab.run import RunFolder
    from cnnlab.train.engine import train

    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=fashion-mnist", "data.train_per_class=20", "data.val_fraction=0.01",
        "train.batch_size=32", "train.epochs=1", "log.quiet=true", "log.curves=false"])
    # a checkpoint to score, trained by the engine as run_recipe trains it (without run_recipe's own scoring: two
    # passes over the test images that this test does not read)
    train(config, tmp_path / "run")
    checkpoint = RunFolder(tmp_path / "run").last
    loaded = load_model(checkpoint)
    _, loader = eval_loader(loaded, split="test")
    probs, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    right = int((probs.argmax(dim=1) == labels).sum())
    assert len(labels) == 10_000 and bench.score_checkpoint(checkpoint, ema=False)["none"] == right / 10_000
    assert bench.time_to([{"seconds": 1.0, "last": 9_500 / 10_000}], "last", 0.95) == 1.0


# ---------------------------------------------------------------------------------------------
# main: what it refuses before training, what it keeps, and a Ctrl-C during the recipe


def _run_main(monkeypatch, capsys, *args):
    """The bench's ``main`` as its ``__main__`` runs it, in this process: (exit status, stdout, stderr)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", *args])
    with pytest.raises(SystemExit) as exited:
        bench.run_main(bench.main)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def _scores_without_a_model(monkeypatch):
    """score_checkpoint without a checkpoint: each scored epoch reads 0.9 (0.91 with flip TTA)."""
    monkeypatch.setattr(bench, "score_checkpoint", lambda checkpoint, ema: {"none": 0.9, "flip": 0.91})


def _train_that_stops(signum, epochs_before: int, finished: bool):
    """The engine's train, as a stop signal leaves it: ``epochs_before`` epochs end (each 2 s of training), then
    it returns with the TrainResult flags a Ctrl-C (SIGINT) or SIGTERM sets: ``interrupted`` when the run was cut
    short, only ``stop_requested`` when the signal came in its last step and it finished."""
    from cnnlab.train.engine import TrainResult

    def train(config, out, console=None, on_epoch_end=None):
        for epoch in range(1, epochs_before + 1):
            on_epoch_end({"epoch": epoch, "epoch_seconds": 2.0, "val_acc": 0.8})
        return TrainResult(run_dir=out, best_val_acc=0.8, best_epoch=1, final={}, interrupted=not finished,
                           checkpoint_saved=not finished, stop_requested=True, stop_signal=signum)

    return train


@pytest.mark.parametrize("signum, code, word", [(2, 130, "interrupted"), (15, 143, "stopped by SIGTERM")])
def test_a_stop_signal_during_the_recipe_stops_the_bench_before_the_baseline(monkeypatch, capsys, tmp_path,
                                                                              signum, code, word):
    """The engine stops at the next step on Ctrl-C and returns: the bench took that for a finished recipe, exited 0
    and went on to train the baseline for minutes."""
    import json

    _scores_without_a_model(monkeypatch)
    monkeypatch.setattr(bench, "train", _train_that_stops(signum, epochs_before=2, finished=False))
    monkeypatch.setattr(bench, "run_baseline", lambda *args, **kwargs: pytest.fail("the baseline must not start"))
    status, out, err = _run_main(monkeypatch, capsys, "--out", str(tmp_path / "out"))
    assert status == code, out + err
    assert "recipe epoch   1" in out and "recipe epoch   2" in out and "recipe epoch   3" not in out
    assert "recipe final, 4.0 s of training: last 90.00%" in out  # what it scored, not a score at the stop
    assert err.strip().splitlines()[-1] == (f"{word} during the recipe's run: the 2 scored epochs are above, and "
                                            "the tutorial baseline was not trained.")
    record = json.loads((tmp_path / "out" / "time_to_accuracy.json").read_text())
    assert [r["epoch"] for r in record["recipe"]] == [1, 2] and record["baseline"] == []
    assert record["interrupted"] == f"{word} during the recipe's run"


def test_a_stop_before_the_first_epoch_ends_is_no_crash(monkeypatch, capsys, tmp_path):
    # No epoch ended, so nothing was scored: there is no last epoch to score (it raised KeyError: 'epoch')
    _scores_without_a_model(monkeypatch)
    monkeypatch.setattr(bench, "train", _train_that_stops(2, epochs_before=0, finished=False))
    status, out, err = _run_main(monkeypatch, capsys, "--no-baseline")
    assert status == 130 and "Traceback" not in err, out + err
    assert err.strip().splitlines()[-1] == "interrupted during the recipe's run: no epoch was scored."


def test_a_stop_in_the_recipe_s_last_step_scores_the_finished_run_and_still_stops(monkeypatch, capsys, tmp_path):
    _scores_without_a_model(monkeypatch)
    monkeypatch.setattr(bench, "train", _train_that_stops(2, epochs_before=3, finished=True))
    monkeypatch.setattr(bench, "run_baseline", lambda *args, **kwargs: pytest.fail("the baseline must not start"))
    status, out, err = _run_main(monkeypatch, capsys, "--score-every", "2")
    assert status == 130, out + err
    assert "recipe epoch   2" in out and "recipe epoch   3" in out  # the last epoch scored, as in a finished run
    assert err.strip().splitlines()[-1].startswith("interrupted after the recipe's last step (its run is complete)")


def test_the_record_keeps_the_recipe_s_curve_when_the_baseline_fails(monkeypatch, capsys, tmp_path):
    """The record was written once, at the very end (and not atomically): a baseline that failed lost the
    recipe's curve of, at full length, an hour of training."""
    import json

    recipe = [{"epoch": 1, "seconds": 30.0, "val_acc": 0.9, "last": 0.9, "last_flip": 0.91}]
    monkeypatch.setattr(bench, "run_recipe", lambda config, out, score_every=1: recipe)

    def broken_baseline(*args, **kwargs):
        raise RuntimeError("the baseline broke")

    monkeypatch.setattr(bench, "run_baseline", broken_baseline)
    with pytest.raises(RuntimeError, match="the baseline broke"):
        _run_main(monkeypatch, capsys, "--out", str(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "time_to_accuracy.json").read_text())
    assert record["recipe"] == recipe and record["baseline"] == [] and record["interrupted"] is None

    baseline = [{"step": 200, "epoch": 1, "seconds": 20.0, "test": 0.88}]
    monkeypatch.setattr(bench, "run_baseline", lambda *args, **kwargs: baseline)
    assert _run_main(monkeypatch, capsys, "--out", str(tmp_path / "again"))[0] == 0
    record = json.loads((tmp_path / "again" / "time_to_accuracy.json").read_text())
    assert record["recipe"] == recipe and record["baseline"] == baseline  # written again, with both sides
    assert not [path.name for path in (tmp_path / "again").iterdir() if path.name != "time_to_accuracy.json"]


def test_an_out_that_holds_an_earlier_run_is_refused_with_the_bench_s_own_advice(monkeypatch, capsys, tmp_path):
    """The engine refused it after the machine line was printed, advising --resume, which the bench has not."""
    earlier = tmp_path / "out" / bench.RUN_FOLDER
    earlier.mkdir(parents=True)
    (earlier / "last.safetensors").write_bytes(b"")
    monkeypatch.setattr(bench, "run_recipe", lambda *args, **kwargs: pytest.fail("nothing may train"))
    status, out, err = _run_main(monkeypatch, capsys, "--out", str(tmp_path / "out"), "--no-baseline")
    assert status == 2 and out == "" and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert f"--out {tmp_path / 'out'} already holds {earlier}" in message
    assert "Choose another --out, or remove" in message and "--resume" not in message
    (tmp_path / "file").write_text("")
    status, out, err = _run_main(monkeypatch, capsys, "--out", str(tmp_path / "file"), "--no-baseline")
    assert status == 2 and "is a file, not a folder" in err and out == ""


def test_the_default_recipe_is_found_from_any_folder(monkeypatch, capsys, tmp_path):
    """The default --config was relative to the current folder: from anywhere but the repository's root the bench
    refused its own default ("does not exist")."""

    class Trained(Exception):
        pass

    def recipe_loaded(config, out, score_every=1):
        assert config.model.name == "vgg_mini" and config.data.spec == "fashion-mnist"
        raise Trained

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "run_recipe", recipe_loaded)
    with pytest.raises(Trained):
        _run_main(monkeypatch, capsys, "--no-baseline")
    assert "(a) recipe recipes/fashion-mnist-fast.yaml:" in capsys.readouterr().out  # shown within the repository
    assert bench.DEFAULT_RECIPE.is_file() and bench.DEFAULT_RECIPE.is_absolute()
