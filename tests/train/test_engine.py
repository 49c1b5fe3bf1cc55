"""The training engine end to end on small real and synthetic data: files, exact resume, errors."""

import copy
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides, load_config, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.train import engine
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.ema import ModelEma
from cnnlab.train.logging import read_metrics

CPU_HAS_BF16_UNITS = engine.cpu_has_bf16_units  # the real check: tests/conftest.py patches it for the session

SMALL = [
    "model.name=lenet5", "data.spec=synthetic:classes=4,train=192,val=64,test=64", "train.batch_size=32",
    "train.epochs=3", "optim.lr=0.05", "schedule.warmup_epochs=0.5", "train.deterministic=true", "log.quiet=true",
]


# for runs whose tests read no curves.png: drawing it is most of a small run's time (0.8 s of 1.2 s, measured)
NO_CURVES = "log.curves=false"


def small_config(*extra):
    return apply_overrides(RunConfig(), SMALL + list(extra))


def test_a_run_writes_every_file_and_learns(tmp_path):
    result = engine.train(small_config("train.ema=true"), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "steps.csv", "last.safetensors", "best.safetensors", "curves.png",
                 "summary.txt", "report.txt"):
        assert (run / name).is_file(), name
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 3 * 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["ema_val_acc"] is not None
    assert len(list(csv.reader(open(run / "steps.csv")))) == 1 + 18
    # config.yaml repeats the run: the config as given, with the augmentation preset resolved for the data
    _, _, _, resolved_aug = engine.build_run(small_config(), torch.device("cpu"))
    assert load_config(run / "config.yaml") == replace(small_config("train.ema=true"), aug=resolved_aug)
    assert result.best_val_acc == max(r["val_acc"] for r in rows)
    # the checkpoint's weights give exactly the recorded validation accuracy
    dataset, stats, model, _ = engine.build_run(small_config(), torch.device("cpu"))
    meta = load_checkpoint(run / "last.safetensors", model=model)
    from cnnlab.data.loaders import make_loader

    val = make_loader(dataset, "val", stats, batch_size=32, train=False)
    loss, acc = engine.evaluate(model, val)
    assert acc == rows[-1]["val_acc"] and loss == pytest.approx(rows[-1]["val_loss"], abs=1e-6)
    assert meta["epoch"] == 3 and meta["classes"] == dataset.classes


def test_the_training_images_each_epoch_leaves_out_are_counted_in_a_note(tmp_path, capsys):
    """200 images in batches of 32: 6 batches an epoch, and the 8 images that fill no batch are named before training;
    192 divide evenly and get no such note."""
    config = small_config(NO_CURVES, "data.spec=synthetic:classes=4,train=200,val=64,test=64", "train.epochs=1")
    engine.train(config, tmp_path / "uneven")
    err = capsys.readouterr().err
    assert "note: 8 of the 200 training images (4%) fill no whole batch of 32: each epoch trains 6 batches (192 " \
           "images) and leaves 8 out" in err
    assert "train.batch_size=25 leaves none out." in err  # 200's divisors from 16 to 64: 20, 25, 40, 50
    assert len(list(csv.reader(open(tmp_path / "uneven" / "steps.csv")))) == 1 + 6  # the note's count of batches
    engine.train(small_config(NO_CURVES, "train.epochs=1"), tmp_path / "even")
    assert "fill no whole batch" not in capsys.readouterr().err


def test_the_left_out_note_suggests_a_batch_size_only_where_one_near_it_divides_the_images():
    assert engine._dividing_batch_size(200, 32) == 25
    assert engine._dividing_batch_size(1259, 128) is None  # a prime: no batch size from 64 to 256 divides it
    assert engine._dividing_batch_size(1000, 128) == 125
    assert engine._dividing_batch_size(6, 2) == 2  # divides already; never suggests 1


ONE_BY_ONE = ["model.name=resnet18", "data.spec=synthetic:classes=2,train=8,val=4,test=4", "data.image_size=32",
              "train.epochs=1", "log.quiet=true"]  # resnet18's last stage sees 1x1 maps at 32x32


def test_a_batch_of_one_image_at_batch_norm_on_1x1_maps_is_refused_before_the_run(tmp_path):
    """BatchNorm in training mode cannot normalise one value per channel; torch raised a ValueError in the first
    step, which cnnlab reported as an internal error. Refused with the layer named, before the folder is written."""
    config = apply_overrides(RunConfig(), ONE_BY_ONE + ["train.batch_size=1"])
    with pytest.raises(CnnlabError, match=r"train.batch_size=1 gives the BatchNorm layer 'features.stage4.0.[\w.]+' "
                                          r"one value per channel \(one image's 1x1 map\)") as err:
        engine.train(config, tmp_path / "run")
    assert "train.batch_size=2 or more" in str(err.value) and not (tmp_path / "run" / "config.yaml").exists()
    # In evaluation mode BatchNorm normalises with its running statistics, which one image does not need
    run = engine.setup_run(apply_overrides(RunConfig(), ONE_BY_ONE + ["train.batch_size=1", "train.bn_eval=all"]))
    run.train_mode()  # as the loop does: BatchNorm in eval mode
    x, y = next(iter(run.train_loader))
    assert len(y) == 1 and engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings).updated
    # batches of 2 images are what BatchNorm needs, and a bucket of one image (its batch is that image) is named
    run = engine.setup_run(apply_overrides(RunConfig(), ONE_BY_ONE + ["train.batch_size=2"]))
    assert run.train_loader.smallest_batch == 2
    bucket = SimpleNamespace(smallest_batch=1)
    problem = engine.one_image_batch_norm(run.model, run.plan, bucket, image_size=32, batch_size=2)
    assert problem.startswith("The batch of the aspect-ratio bucket that holds a single training image gives the "
                              "BatchNorm layer 'features.stage4.")


def test_a_resume_on_training_images_that_changed_is_refused_and_goes_on_once_they_are_back(tmp_path):
    """Images added to the folder after the run started made more steps an epoch: the resumed run bent its
    schedule part-way (the rate jumped back up) and validated on another hold-out, without a word."""
    from PIL import Image

    from cnnlab.run import RunFolder

    images, generator = tmp_path / "images", torch.Generator().manual_seed(0)

    def write(label, index):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / label / f"{index}.png")

    for label in ("ant", "bee"):
        (images / label).mkdir(parents=True)
        for index in range(10):
            write(label, index)
    config = apply_overrides(RunConfig(), [f"data.spec=folder:{images}", "data.image_size=28", "model.name=lenet5",
                                           "train.batch_size=4", "train.epochs=2", "log.quiet=true", "log.curves=false"])

    def stop_after_the_first_epoch(row):
        raise KeyboardInterrupt  # a Ctrl-C at once, after epoch 1's checkpoint

    run_dir = tmp_path / "run"
    assert engine.train(config, run_dir, on_epoch_end=stop_after_the_first_epoch).interrupted
    recorded = RunFolder(run_dir).read_config()
    for label in ("ant", "bee"):
        for index in range(10, 18):
            write(label, index)
    with pytest.raises(CnnlabError, match=r"cannot resume on its data as it is now: it has 32 training images now, "
                                          r"where the run trained on 18; and its 32 training images in batches "
                                          r"of 4 now make 8 steps an epoch, where the run took 4 "):
        engine.train(recorded, run_dir, resume=True)
    for label in ("ant", "bee"):
        for index in range(10, 18):
            (images / label / f"{index}.png").unlink()
    # one image more: as many steps an epoch, and the refusal names the count before the statistics it moved
    write("bee", 10)
    # (20 images less the validation hold-out's 2 were 18; 36 less 4 are 32 above)
    with pytest.raises(CnnlabError, match=r"now: it has 19 training images now, where the run trained on 18; and its "
                                          r"training images now normalise with another mean and std"):
        engine.train(recorded, run_dir, resume=True)
    (images / "bee" / "10.png").unlink()
    # as many images, one of them other pixels: the same steps, but the data's mean and std moved
    kept = (images / "ant" / "0.png").read_bytes()
    Image.fromarray(torch.full((8, 8, 3), 255, dtype=torch.uint8).numpy()).save(images / "ant" / "0.png")
    with pytest.raises(CnnlabError, match=r"now normalise with another mean and std"):
        engine.train(recorded, run_dir, resume=True)
    (images / "ant" / "0.png").write_bytes(kept)
    result = engine.train(recorded, run_dir, resume=True)  # the data as it was: the run goes on
    assert not result.interrupted and result.final["epoch"] == 2 and result.final["step"] == 2 * 4
    # a resume of the finished run trains nothing, and its result still gives the last row metrics.csv holds
    again = engine.train(recorded, run_dir, resume=True)
    assert again.final["epoch"] == 2 and again.final["val_acc"] == result.final["val_acc"]


def test_of_epochs_with_equal_val_accuracy_the_first_is_kept_as_best(tmp_path, monkeypatch):
    """Every epoch scores the same: best.safetensors keeps the first epoch's weights, the epoch the run
    reports as best, and the epoch `cnnlab report` names as best (the first of equals too)."""
    from cnnlab.report.runs import read_run
    from cnnlab.train.checkpoint import read_checkpoint_meta

    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: (0.5, 0.75))
    result = engine.train(small_config(NO_CURVES), tmp_path / "run")
    assert [row["val_acc"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [0.75] * 3
    assert result.best_epoch == 1
    assert read_checkpoint_meta(tmp_path / "run" / "best.safetensors")["epoch"] == 1
    assert read_run(tmp_path / "run").best_epoch == 1


def test_a_stop_between_the_two_checkpoint_writes_resumes_with_best_and_the_metrics_consistent(tmp_path,
                                                                                             monkeypatch, capsys):
    """The process dies writing the second file of an epoch end's pair (last, best) at a new best; the resume
    leaves best.safetensors holding an epoch whose row metrics.csv keeps, and the one the run reports as best.
    The scores are set so that the epoch trained again (if any) does worse than the one the stop cut short."""
    from cnnlab.train.checkpoint import read_checkpoint_meta

    class Killed(Exception):
        pass

    scores = iter([0.5, 0.9, 0.4, 0.45])  # epoch 1, epoch 2 (a new best), then whatever the resume evaluates

    def evaluate(*args, **kwargs):
        accuracy = next(scores)
        return 1.0 - accuracy, accuracy

    real_save, writes = engine.save_run_checkpoint, []

    def save_then_die(path, *args, **kwargs):
        writes.append(path.name)
        if len(writes) == 4:  # the second file written at the end of epoch 2
            raise Killed
        real_save(path, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(engine, "evaluate", evaluate)
    with monkeypatch.context() as patch:
        patch.setattr(engine, "save_run_checkpoint", save_then_die)
        with pytest.raises(Killed):
            engine.train(small_config("log.curves=false"), run)
    capsys.readouterr()
    result = engine.train(load_config(run / "config.yaml"), run, resume=True)
    rows = read_metrics(run / "metrics.csv")
    best_row = max(rows, key=lambda row: row["val_acc"])
    meta = read_checkpoint_meta(run / "best.safetensors")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert meta["epoch"] == best_row["epoch"] == result.best_epoch
    assert meta["best"] == {"val_acc": best_row["val_acc"], "epoch": best_row["epoch"]}
    err = capsys.readouterr().err
    assert "best.safetensors was behind last.safetensors" in err and "copied last.safetensors" in err


def test_a_val_loss_that_breaks_while_training_is_fine_is_named_at_its_epoch_and_the_run_goes_on(
        tmp_path, monkeypatch, capsys):
    """BatchNorm running statistics gone non-finite (as when they overflow) after epoch 1's evaluation: eval mode
    reads them and gives a NaN val loss, while training normalises with the batch's own and stays finite."""
    real_evaluate, calls = engine.evaluate, []

    def evaluate(model, loader, info=None):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's evaluation
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.fill_(math.nan)
        return real_evaluate(model, loader, info)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    result = engine.train(small_config("model.norm=bn", "log.curves=false"), tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3] and not result.interrupted  # not stopped
    assert math.isfinite(rows[0]["val_loss"]) and all(math.isnan(row["val_loss"]) for row in rows[1:])
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    out = capsys.readouterr().out
    assert out.count("the validation loss is nan while the training loss is finite") == 1
    assert "epoch 2: the validation loss is nan" in out
    from cnnlab.tune.diagnose import VAL_NOT_FINITE, diagnose_run  # the curve check: not "diverged"

    assert [finding.rule for finding in diagnose_run(tmp_path / "run")] == [VAL_NOT_FINITE]


def _interrupt_at(monkeypatch, stop_step):
    from cnnlab.train import schedule

    original = schedule.lr_factor

    def interrupting(config, step, total, per_epoch):
        if step == stop_step:
            raise KeyboardInterrupt
        return original(config, step, total, per_epoch)

    monkeypatch.setattr(schedule, "lr_factor", interrupting)


def test_a_resumed_run_hides_the_tensorboard_steps_it_takes_again(tmp_path, monkeypatch):
    writers = []

    class FakeWriter:  # torch.utils.tensorboard.SummaryWriter as the engine uses it
        def __init__(self, log_dir, purge_step=None):
            self.purge_step, self.steps = purge_step, []
            writers.append(self)

        def add_scalar(self, tag, value, step):
            if tag == "train/loss_step":
                self.steps.append(step)

        def flush(self):
            pass

        def close(self):
            pass

    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_step=9)  # steps 7-9 are logged after the end-of-epoch-1 checkpoint (step 6)
        assert engine.train(small_config(NO_CURVES, "log.tensorboard=true"), tmp_path / "run").interrupted
    engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    first, resumed = writers
    assert first.purge_step is None and first.steps == list(range(1, 10))
    assert resumed.purge_step == 7 == resumed.steps[0]  # TensorBoard hides the first process's 7-9


def test_a_resume_removes_the_copies_its_killed_writes_left(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_step=8)
        assert engine.train(small_config(), run).interrupted
    # what a process killed inside atomic_path leaves: hidden temporary copies, as large as the checkpoint
    left = [run / ".last.safetensors.k1ll3d.tmp", run / ".best.safetensors.x.tmp", run / ".snapshot-1.safetensors.y.tmp"]
    other = run / ".ensemble.json.z.tmp"  # not the run's to remove: another command may be writing it
    for path in (*left, other):
        path.write_bytes(b"partial")
    # one killed inside safetensors' write: the temporary folder, with safetensors' own temporary file in it
    left.append(run / ".last.safetensors.w.tmp")
    left[-1].mkdir()
    (left[-1] / ".tmpK1ll3d").write_bytes(b"partial")
    # and those of the run's other atomic writes: its logs, plot, status and reports
    from cnnlab import run as names

    left += [run / f".{name}.k1ll3d.tmp" for name in (names.METRICS_FILE, names.CURVES_FILE, names.STATUS_FILE,
                                                       names.REPORT_FILE, names.REPORT_HTML_FILE, names.CONFIG_FILE)]
    for path in left[-6:]:
        path.write_bytes(b"partial")
    mine = [run / ".metrics.csv.k1ll3d.txt", run / "metrics.csv.k1ll3d.tmp", run / ".notes.txt.k1ll3d.tmp"]
    for path in mine:  # names atomic_path never makes for the run's files: a user's, kept
        path.write_text("mine")
    engine.train(load_config(run / "config.yaml"), run, resume=True)
    assert [path.name for path in left if path.exists()] == [] and other.exists()
    assert all(path.read_text() == "mine" for path in mine)


def test_a_new_run_over_an_earlier_one_removes_the_copies_its_killed_writes_left(tmp_path, capsys):
    """Also the temporary copies of the files a new run writes as it starts (status.json, config.yaml), named
    with the earlier run's files it removes."""
    from cnnlab import run as names

    run = tmp_path / "run"
    engine.train(small_config("train.epochs=1"), run)
    (run / names.CHECKPOINT_LAST).unlink()  # nothing to resume: a new run may start there
    left = [run / f".{name}.k1ll3d.tmp" for name in (names.STATUS_FILE, names.CONFIG_FILE, names.ENVIRONMENT_FILE,
                                                      names.SUMMARY_FILE, names.METRICS_FILE)]
    for path in left:
        path.write_bytes(b"partial")
    other = run / ".my-results.json.k1ll3d.tmp"  # not a name of the run's files: kept
    other.write_bytes(b"mine")
    capsys.readouterr()
    engine.train(small_config("train.epochs=1"), run)
    assert [path.name for path in left if path.exists()] == [] and other.exists()
    note = capsys.readouterr().err.split("note: removed ")[1]
    assert all(path.name in note for path in left) and other.name not in note
    # in a folder no run wrote (no config.yaml), beside a file by a run's name that is someone else's, such a copy
    # is not taken for a killed run's own: the run is refused, and nothing is removed
    (run / names.CHECKPOINT_LAST).unlink()
    (run / names.CONFIG_FILE).unlink()
    for name in names.RUN_FILES:
        (run / name).unlink(missing_ok=True)
    left[0].write_bytes(b"partial")
    (run / names.METRICS_FILE).write_text("fold,score\n1,0.9\n")
    with pytest.raises(CnnlabError, match=rf"{left[0].name}.*which no cnnlab run wrote there"):
        engine.train(small_config("train.epochs=1"), run)
    assert left[0].exists() and (run / names.METRICS_FILE).read_text() == "fold,score\n1,0.9\n"


# A fresh run killed inside its very first write (config.yaml): the process dies with the temporary copy written.
KILLED_IN_FIRST_WRITE = """
import os, pathlib, sys
from cnnlab.config import RunConfig, apply_overrides
from cnnlab.train import engine

write_text = pathlib.Path.write_text

def killed_writing_the_config(self, *args, **kwargs):
    if self.name.startswith(".config.yaml."):
        write_text(self, "model:\\n  name: lenet5\\n")  # part of the file
        os._exit(9)
    return write_text(self, *args, **kwargs)

pathlib.Path.write_text = killed_writing_the_config
engine.train(apply_overrides(RunConfig(), sys.argv[2:]), sys.argv[1])
"""


def test_a_folder_where_a_fresh_run_was_killed_in_its_first_write_is_trained_into(tmp_path, capsys):
    """A run killed while it wrote its first file left .config.yaml.XXXX.tmp and nothing else of a run's; a new
    run there was refused, naming that file as one no cnnlab run wrote. It is removed, with a note naming it, and
    the folder is trained into as an empty one; a file of someone else's by another name stays."""
    import os
    import subprocess

    from cnnlab import run as names

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", KILLED_IN_FIRST_WRITE, str(run), *SMALL, "train.epochs=1"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 9, done.stderr
    (left,) = [path for path in run.iterdir() if path.name != names.LOCK_FILE]
    assert left.name.startswith(f".{names.CONFIG_FILE}.") and left.name.endswith(".tmp"), left
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    engine.train(small_config("train.epochs=1"), run)
    assert not left.exists() and (run / names.CHECKPOINT_LAST).is_file() and (run / "notes.txt").read_text() == "mine"
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: removed ")]
    assert len(note) == 1 and left.name in note[0] and "killed" in note[0], note


def test_a_run_killed_drawing_its_last_curves_gets_them_from_the_resume(tmp_path, monkeypatch, capsys):
    """The process dies drawing curves.png after the last epoch's checkpoints: the resume has no epoch left to
    train, and still ends with the curves of every epoch and step."""
    from cnnlab.train import logging as run_logging

    class Killed(Exception):
        pass

    def die(*args, **kwargs):
        raise Killed

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(run_logging, "save_curves", die)
        with pytest.raises(Killed):
            engine.train(small_config(), run)
    assert not (run / "curves.png").exists() and (run / "last.safetensors").is_file()
    real_save_curves, drawn = run_logging.save_curves, []

    def recorded_save_curves(rows, path, *args, steps=(), **kwargs):
        drawn.append((len(rows), len(steps)))
        return real_save_curves(rows, path, *args, steps=steps, **kwargs)

    monkeypatch.setattr(run_logging, "save_curves", recorded_save_curves)
    result = engine.train(load_config(run / "config.yaml"), run, resume=True)
    assert not result.interrupted and "nothing is left to train" in capsys.readouterr().err
    assert drawn == [(3, 18)] and (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_disk_that_fills_up_fails_the_run_with_its_own_error_not_the_status_write_after_it(tmp_path, monkeypatch,
                                                                                              capsys):
    """The disk fills up while a checkpoint is written; status.json cannot record the failure either. The run
    stops with the checkpoint's error (what failed), and the status that could not be written is a warning."""
    import cnnlab.io

    real_save, real_write_json, saves = engine.save_run_checkpoint, cnnlab.io.write_json_atomic, []

    def full_after_epoch_1(path, *args, **kwargs):
        saves.append(path.name)
        if len(saves) > 2:  # epoch 1's last and best are written
            raise CnnlabError(f"Cannot write the checkpoint to '{path}': No space left on device.")
        real_save(path, *args, **kwargs)

    def write_json(path, data, what="the file"):
        if len(saves) > 2:
            raise CnnlabError(f"Cannot write {what} to '{path}': No space left on device.")
        real_write_json(path, data, what)

    monkeypatch.setattr(engine, "save_run_checkpoint", full_after_epoch_1)
    monkeypatch.setattr(cnnlab.io, "write_json_atomic", write_json)
    with pytest.raises(CnnlabError, match="Cannot write the checkpoint"):
        engine.train(small_config("log.curves=false"), tmp_path / "run")
    assert "warning: status.json could not record that the run failed: Cannot write the run status" in (
        capsys.readouterr().err)


def test_a_run_resumed_quietly_resumes_again_as_recorded(tmp_path, monkeypatch):
    # `--resume RUN --quiet` changes only what the console shows: the checkpoint it writes records quiet=true
    # while config.yaml keeps quiet=false, and the next resume must not take that for an edited config.yaml.
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_step=8)  # in epoch 2: last.safetensors holds epoch 1
        assert engine.train(small_config(NO_CURVES, "log.quiet=false"), run).interrupted
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_step=14)  # in epoch 3: the quiet resume wrote the epoch-2 checkpoint
        recorded = load_config(run / "config.yaml")
        quiet = replace(recorded, log=replace(recorded.log, quiet=True))
        assert engine.train(quiet, run, resume=True).interrupted
    assert not load_config(run / "config.yaml").log.quiet
    result = engine.train(load_config(run / "config.yaml"), run, resume=True)
    assert not result.interrupted and [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1, 2, 3]


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_ctrl_c_then_resume_ends_bit_identical(tmp_path, monkeypatch, optimizer):
    extra = ("aug.preset=strong", "train.ema=true", "model.drop_rate=0.3", f"optim.name={optimizer}")
    whole = engine.train(small_config(NO_CURVES, *extra), tmp_path / "whole")
    _interrupt_at(monkeypatch, stop_step=8)  # part-way through epoch 2 (6 steps per epoch)
    stopped = engine.train(small_config(NO_CURVES, *extra), tmp_path / "split")
    # A KeyboardInterrupt that is not the engine's deferred Ctrl-C (test_interrupt.py) stops at once: the
    # state may be mid-step, so nothing is saved and the end-of-epoch-1 checkpoint is the one to resume.
    assert stopped.interrupted and not stopped.checkpoint_saved
    assert stopped.last_checkpoint == {"epoch": 1, "batch": 0, "step": 6}
    monkeypatch.undo()
    resumed = engine.train(load_config(tmp_path / "split" / "config.yaml"), tmp_path / "split", resume=True)
    assert not resumed.interrupted
    timing = {"epoch_seconds", "images_per_second"}
    a, b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "split" / "metrics.csv")
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b):
        assert {k: v for k, v in row_a.items() if k not in timing} == {k: v for k, v in row_b.items() if k not in timing}
    dataset, _, model_a, _ = engine.build_run(small_config(NO_CURVES), torch.device("cpu"))
    _, _, model_b, _ = engine.build_run(small_config(NO_CURVES), torch.device("cpu"))
    load_checkpoint(tmp_path / "whole" / "last.safetensors", model=model_a)
    load_checkpoint(tmp_path / "split" / "last.safetensors", model=model_b)
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(p, q), name
    assert whole.best_val_acc == resumed.best_val_acc


def test_muon_trains_the_hidden_convs_and_learns(tmp_path):
    config = small_config(NO_CURVES, "optim.name=muon", "optim.muon_lr=0.05", "train.epochs=4")
    engine.train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    config = small_config("optim.lr=1e12", "schedule.warmup_epochs=0", "train.epochs=2")
    with pytest.raises(engine.NonFiniteLossError,
                       match=r"at epoch 1, step \d+.*lower optim.lr.*No checkpoint was written"):
        engine.train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "last.safetensors").exists()  # so the message must not promise one
    assert not (tmp_path / "run" / "last.safetensors.tmp").exists()


def test_a_loss_that_is_not_finite_before_any_update_does_not_blame_the_learning_rate(tmp_path):
    # Weights of std 1e30 without a norm to rescale them overflow float32 in the first forward pass: no update
    # has been made, so lowering optim.lr (the advice for a run that diverges) could never help.
    config = small_config("model.name=resnet8", "model.norm=none", "model.init=normal:1e30", "data.image_size=16")
    with pytest.raises(engine.NonFiniteLossError, match=r"at epoch 1, step 1, before any update, so the learning rate "
                                                        r"is not the cause.*model.init.*cnnlab check") as err:
        engine.train(config, tmp_path / "run")
    assert "lower optim.lr" not in str(err.value)


def test_nan_loss_after_a_checkpoint_names_the_checkpoint_kept(tmp_path, monkeypatch):
    original, calls = engine.training_loss, []

    def loss_becomes_nan_at_step_8(*args):
        loss, logits = original(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 8 else loss), logits

    monkeypatch.setattr(engine, "training_loss", loss_becomes_nan_at_step_8)
    with pytest.raises(engine.NonFiniteLossError, match=r"at epoch 2, step 8.*The last checkpoint in .*run' "
                                                        r"\(end of epoch 1, step 6\) is intact"):
        engine.train(small_config(), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.safetensors", model=engine.build_run(
        small_config(), torch.device("cpu"))[2])["step"] == 6


def loss_explodes_then_nan(monkeypatch, nan_at_step: int) -> None:
    """The training loss reads 1e17 times its value from the first step (its gradients stay the real loss's, so
    the weights train normally) and becomes NaN at ``nan_at_step``: a run diverging on a fixed schedule."""
    original, calls = engine.training_loss, []

    def exploding(*args):
        loss, logits = original(*args)
        calls.append(1)
        if len(calls) == nan_at_step:
            return loss * float("nan"), logits
        return loss + loss.detach() * 1e17, logits

    monkeypatch.setattr(engine, "training_loss", exploding)


def test_a_diverged_run_draws_its_curves_and_writes_no_final_report(tmp_path, monkeypatch):
    # The short run draws curves.png only at its end, which a non-finite loss never reaches: the engine draws it
    # as it stops, with the epoch done and the steps up to the one that blew up.
    loss_explodes_then_nan(monkeypatch, nan_at_step=8)
    with pytest.raises(engine.NonFiniteLossError, match=r"at epoch 2, step 8"):
        engine.train(small_config(), tmp_path / "run")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "run" / "report.txt").exists()  # the report of a finished run: this one did not finish
    # with log.curves=false (as `cnnlab experiment` runs) nothing is drawn
    loss_explodes_then_nan(monkeypatch, nan_at_step=8)
    with pytest.raises(engine.NonFiniteLossError):
        engine.train(small_config("log.curves=false"), tmp_path / "quiet")
    assert not (tmp_path / "quiet" / "curves.png").exists()


def test_a_ctrl_c_part_way_through_an_epoch_draws_the_curves_of_the_steps_done(tmp_path, monkeypatch, capsys):
    """A short run draws curves.png only at an epoch's end after CURVES_EVERY seconds, and at its last epoch: a run
    stopped by Ctrl-C in its first epoch was left without one. The stop draws it, with every step done; a failure
    to draw is a warning, and the stop stays the saved one that --resume continues."""
    import signal

    from cnnlab.train import logging as run_logging

    original, calls = engine.training_loss, []

    def ctrl_c_at_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # through the engine's handler: the step finishes, then it stops
        return original(*args)

    monkeypatch.setattr(engine, "training_loss", ctrl_c_at_step_3)
    real_save_curves, drawn = run_logging.save_curves, []

    def recorded_save_curves(rows, path, *args, steps=(), **kwargs):
        drawn.append(len(steps))
        return real_save_curves(rows, path, *args, steps=steps, **kwargs)

    monkeypatch.setattr(run_logging, "save_curves", recorded_save_curves)
    result = engine.train(small_config(), tmp_path / "run")
    assert result.interrupted and result.checkpoint_saved
    assert drawn == [3] and (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    calls.clear()
    monkeypatch.setattr(run_logging, "save_curves", disk_full)
    result = engine.train(small_config(), tmp_path / "full")
    assert result.interrupted and result.checkpoint_saved
    assert "warning: no curves.png for the interrupted run: OSError" in capsys.readouterr().err
    assert json.loads((tmp_path / "full" / "status.json").read_text())["state"] == "interrupted"


def test_a_failure_drawing_a_diverged_runs_curves_leaves_the_divergence_error(tmp_path, monkeypatch, capsys):
    from cnnlab.train import logging as run_logging

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    loss_explodes_then_nan(monkeypatch, nan_at_step=8)
    monkeypatch.setattr(run_logging, "save_curves", disk_full)
    with pytest.raises(engine.NonFiniteLossError, match=r"became nan at epoch 2, step 8"):
        engine.train(small_config(), tmp_path / "run")
    assert "warning: no curves.png for the diverged run: OSError" in capsys.readouterr().err


def test_resume_refuses_another_model_and_a_reused_folder_is_refused(tmp_path, monkeypatch):
    engine.train(small_config(NO_CURVES, "train.epochs=1"), tmp_path / "run")
    with monkeypatch.context() as patch:
        # Refused before the set-up: the data is not loaded and no train.minutes steps are timed.
        patch.setattr(engine, "setup_run", lambda *args, **kwargs: pytest.fail("set up a run in a held folder"))
        with pytest.raises(CnnlabError, match="already holds a run"):
            engine.train(small_config(NO_CURVES, "train.epochs=1", "train.minutes=1"), tmp_path / "run")
    other = small_config(NO_CURVES, "train.epochs=2", "model.name=resnet20")
    with pytest.raises(CnnlabError, match="resnet20"):
        engine.train(other, tmp_path / "run", resume=True)
    with pytest.raises(CnnlabError, match="Nothing to resume"):
        engine.train(small_config(NO_CURVES), tmp_path / "empty", resume=True)


def test_resume_continues_as_config_yaml_records_and_refuses_any_other_config(tmp_path, monkeypatch):
    """The recorded config is the resolved one (here: the epochs train.minutes fitted, and the augmentation
    preset expanded); a library caller resuming with the config it started from, or a changed one, is
    refused before anything is set up, with the keys and both values named."""
    from cnnlab.run import RunFolder
    from cnnlab.train import budget

    given = small_config(NO_CURVES, "train.epochs=10", "train.minutes=5", "aug.preset=light")
    fit = SimpleNamespace(describe=lambda: "2 epochs fit", record=dict)  # untimed: fits 2 of the 10 epochs
    monkeypatch.setattr(budget, "fit_to_budget", lambda run, *args: (
        replace(run.config, train=replace(run.config.train, epochs=2)), fit))
    _interrupt_at(monkeypatch, stop_step=8)  # in epoch 2 of 2 (6 steps an epoch)
    engine.train(given, tmp_path / "run")
    monkeypatch.undo()
    recorded = RunFolder(tmp_path / "run").read_config()
    assert recorded.train.epochs == 2 and recorded.aug != given.aug
    with monkeypatch.context() as patch:
        patch.setattr(engine, "setup_run", lambda *args, **kwargs: pytest.fail("set up a run with the wrong config"))
        with pytest.raises(CnnlabError, match=r"train.epochs: 10 given, 2 recorded.*read_config\(\)"):
            engine.train(given, tmp_path / "run", resume=True)
        with pytest.raises(CnnlabError, match=r"optim.lr: 0.1 given, 0.05 recorded"):
            engine.train(replace(recorded, optim=replace(recorded.optim, lr=0.1)), tmp_path / "run", resume=True)
    quiet = replace(recorded, log=replace(recorded.log, quiet=not recorded.log.quiet))  # `--resume RUN --quiet`
    assert engine.resumed_config(quiet, RunFolder(tmp_path / "run")) == quiet
    result = engine.train(recorded, tmp_path / "run", resume=True)
    assert result.final["epoch"] == 2 and [row["epoch"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2]


def test_a_deterministic_run_does_not_leave_deterministic_kernels_on():
    """Experiments, searches and the transfer ladder set up many runs in one process."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        engine.setup_run(small_config("train.deterministic=true"), loaders=False)
        assert torch.are_deterministic_algorithms_enabled()
        engine.setup_run(small_config("train.deterministic=false"), loaders=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


def test_an_epochs_training_time_includes_the_work_still_queued_on_the_device(tmp_path, monkeypatch):
    """A GPU runs the last step's backward and update after the Python loop has moved on: epoch_seconds read the
    clock before they had run. The wait for the device is stood in for by a 1-second sleep, which the epoch's
    time must include (the 2-step epochs themselves take a fraction of it)."""
    import time

    waits = []

    def slow_synchronize(device):
        waits.append(device.type)
        time.sleep(1.0)

    monkeypatch.setattr(engine, "synchronize", slow_synchronize)
    engine.train(small_config("train.epochs=2", "data.spec=synthetic:classes=4,train=64,val=32,test=32", NO_CURVES),
                 tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert waits == ["cpu", "cpu"]  # once per epoch, for the run's device
    assert all(row["epoch_seconds"] >= 1.0 for row in rows)


def test_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CnnlabError, match="run folder .*file' is a file, not a folder"):
        engine.train(small_config(), blocker / "run")


def test_soft_targets_are_smoothed_towards_the_uniform_distribution():
    """Mixup/CutMix targets (B, K) with label smoothing eps: the loss is the cross-entropy against
    (1 - eps) x target + eps / K, worked out by hand, as for hard labels."""
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    target = torch.softmax(torch.randn(6, 4) * 3, dim=1)  # mixed labels: rows of probabilities
    smoothed = 0.8 * target + 0.2 / 4
    expected = -(smoothed * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(engine.soft_cross_entropy(logits, target, 0.2), expected, atol=1e-6)


def test_a_step_smooths_the_labels_and_clips_the_gradients_as_configured():
    """One train_step with the run's settings against the loss and the update worked out by hand: label
    smoothing eps spreads eps over the K classes, (1 - eps) x NLL + eps x mean over classes of -log p
    (Szegedy et al. 2016), and clipping scales the whole gradient to norm optim.grad_clip when larger."""
    smoothing, clip = 0.2, 0.05
    run = engine.setup_run(small_config(f"aug.label_smoothing={smoothing}", f"optim.grad_clip={clip}",
                                        "optim.momentum=0", "optim.weight_decay=0"), loaders=False)
    model, optimizer = run.model, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    torch.manual_seed(1)
    x, y = torch.randn(8, *run.dataset.train.images.shape[1:]), torch.randint(0, 4, (8,))
    reference = copy.deepcopy(model)
    log_p = torch.log_softmax(reference(x).float(), dim=1)
    expected_loss = ((1 - smoothing) * -log_p[torch.arange(8), y] + smoothing * -log_p.mean(dim=1)).mean()
    expected_loss.backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 2 * clip  # the clip acts
    result = engine.train_step(model, x, y, optimizer, run.scaler, run.step_settings)
    assert torch.allclose(result.loss, expected_loss, atol=1e-6)
    for after, before, grad in zip(model.parameters(), reference.parameters(), grads):
        assert torch.allclose(after, before - grad * clip / norm, atol=1e-6)  # SGD, lr 1: w - clipped gradient


def test_the_step_totals_read_the_steps_tensors_in_one_host_copy_and_sum_them_as_python_would():
    """StepTotals, the step's sync point, brings the loss and the correct count to the host as one float64
    copy: no .item() on the step's own tensors (float32 loss, int64 count), each of which would wait for the
    forward pass on a GPU. Only the host-side float64 sums and votes are read with .item(). The sums equal
    the Python arithmetic they replace."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ItemDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:  # what .item() and float(t) run
                self.dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    logits, target = torch.randn(7, 5), torch.randint(0, 5, (7,))
    loss = torch.nn.functional.cross_entropy(logits, target)  # () float32
    totals = engine.StepTotals(engine.StopRequest(announce=False), engine.dist_utils.DistInfo())
    with ItemDtypes() as reads:
        assert totals(engine.StepResult(loss, logits, target))
    assert reads.dtypes and set(reads.dtypes) == {torch.float64}
    correct = int((logits.argmax(dim=1) == target).sum())
    assert totals.sums.tolist() == [loss.item() * 7, correct, 7]  # bit for bit: float64 as Python's floats
    assert totals.loss == loss.item() * 7 / 7


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_auxiliary_losses_are_weighted_and_smoothed_like_the_main_loss(smoothing):
    from cnnlab.models import AuxLogits

    torch.manual_seed(0)
    logits, aux1, aux2 = torch.randn(3, 4, 5).unbind(0)
    target = torch.tensor([0, 1, 2, 3])
    loss, main = engine.training_loss(AuxLogits(logits, (aux1, aux2)), target, smoothing, 0.3)

    def ce(z):
        return torch.nn.functional.cross_entropy(z, target, label_smoothing=smoothing)

    assert torch.allclose(loss, ce(logits) + 0.3 * (ce(aux1) + ce(aux2)))
    assert main is logits


def test_cyclic_schedule_saves_one_snapshot_per_cycle(tmp_path):
    config = small_config(NO_CURVES, "schedule.name=cyclic", "schedule.cycles=3", "train.snapshots=true",
                          "schedule.warmup_epochs=0")
    engine.train(config, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").glob("snapshot-*.safetensors")) == [
        "snapshot-1.safetensors", "snapshot-2.safetensors", "snapshot-3.safetensors"]


def test_a_run_with_fewer_steps_than_cycles_names_the_snapshots_it_saves(tmp_path, capsys):
    # 6 steps (192 images, batch 32, one epoch) for 8 cycles: two cycles have no step and no snapshot
    config = small_config("schedule.name=cyclic", "schedule.cycles=8", "train.snapshots=true",
                          "schedule.warmup_epochs=0", "train.epochs=1", "log.curves=false")
    engine.train(config, tmp_path / "run")
    saved = sorted(p.name for p in (tmp_path / "run").glob("snapshot-*.safetensors"))
    err = capsys.readouterr().err
    assert len(saved) < 8 and err.count("asks for 8 snapshots") == 1
    assert f"only {len(saved)} snapshots will be saved (snapshot-1.safetensors to {saved[-1]})" in err


def test_a_new_run_removes_the_weights_an_earlier_run_left_without_a_checkpoint_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    earlier = small_config("schedule.name=cyclic", "schedule.cycles=3", "train.snapshots=true",
                           "schedule.warmup_epochs=0", "train.epochs=1", "log.curves=false")
    engine.train(earlier, run)
    snapshots = sorted(p.name for p in run.glob("snapshot-*.safetensors"))
    assert len(snapshots) == 3
    # A folder that still holds last.safetensors is refused, and keeps every file a resume needs
    with pytest.raises(CnnlabError, match="already holds a run"):
        engine.train(small_config("train.epochs=1"), run)
    assert sorted(p.name for p in run.glob("snapshot-*.safetensors")) == snapshots
    (run / "last.safetensors").unlink()  # the earlier run can no longer be resumed
    (run / ".snapshot-2.safetensors.k1ll3d.tmp").write_bytes(b"partial")
    # a checkpoint write killed inside safetensors: its temporary folder, with safetensors' own file in it
    (run / ".snapshot-3.safetensors.k1ll3d.tmp").mkdir()
    (run / ".snapshot-3.safetensors.k1ll3d.tmp" / ".tmpK1ll3d").write_bytes(b"partial")
    capsys.readouterr()
    result = engine.train(small_config("train.epochs=1", "log.curves=false"), run)  # no snapshots of its own
    assert not list(run.glob("snapshot-*.safetensors")) and not list(run.glob(".snapshot-*"))
    err = capsys.readouterr().err
    assert err.count("note: removed ") == 1
    for name in ("best.safetensors", *snapshots, ".snapshot-2.safetensors.k1ll3d.tmp",
                 ".snapshot-3.safetensors.k1ll3d.tmp"):
        assert name in err
    assert engine.RunFolder(run).snapshots() == []
    assert result.best_epoch == 1 and (run / "best.safetensors").is_file()  # this run's best, written again


def _earlier_run_in(run: Path) -> bytes:
    """A folder holding every file an earlier run and the commands after it write, but last.safetensors (nothing
    to resume), each with the same marker text; a user's notes beside them. Returns the marker."""
    from cnnlab import run as names

    from cnnlab.config import save_config

    marker = b"an earlier run's file"
    run.mkdir()
    for name in names.RUN_FILES:
        if name not in (names.CHECKPOINT_LAST, names.LOCK_FILE):
            (run / name).write_bytes(marker)
    # the earlier run's config, with the marker as a comment: a folder whose config.yaml is no run config is refused
    save_config(small_config("train.epochs=7"), run / names.CONFIG_FILE)
    (run / names.CONFIG_FILE).write_bytes((run / names.CONFIG_FILE).read_bytes() + b"# " + marker + b"\n")
    # `cnnlab export`'s default files beside best.safetensors: of its weights, and of its EMA weights
    for name in (names.snapshot_name(1), "best.onnx", "best-ema.pt"):
        (run / name).write_bytes(marker)
    for folder in (names.eval_folder_name("test", "none", False), names.eval_folder_name("test", "flip", True)):
        (run / folder).mkdir()
        for name in (names.EVAL_METRICS_FILE, names.EVAL_CONFUSION_FILE, names.EVAL_CONFUSION_PNG,
                     names.EVAL_MISTAKES_PNG):
            (run / folder / name).write_bytes(marker)
    (run / names.eval_folder_name("test", "flip", True) / "my-notes.txt").write_text("mine")
    (run / names.TENSORBOARD_DIR).mkdir()
    (run / names.TENSORBOARD_DIR / "events.out.tfevents.1700000000.host.1.0").write_bytes(marker)
    (run / ".report.html.k1ll3d.tmp").write_bytes(marker)  # a killed write's temporary copy
    # `cnnlab ensemble --out RUN/my-three.json`: a result of the earlier weights, under a name of the user's
    (run / "my-three.json").write_text(json.dumps({"members": [{"checkpoint": str(run / "best.safetensors"),
                                                                "top1": 0.9}], "ensemble": {"top1": 0.92}}))
    (run / "notes.txt").write_text("my notes on this folder")
    (run / "my-settings.json").write_text(json.dumps({"lr": 0.1}))  # the user's JSON: no ensemble result
    return marker


def test_a_new_run_keeps_nothing_of_an_earlier_run_that_later_commands_would_read_as_its_own(tmp_path, capsys):
    from cnnlab import run as names

    run = tmp_path / "run"
    marker = _earlier_run_in(run)
    # Neither model.init_from nor train.minutes nor curves: init.json, budget.json and curves.png are not written
    engine.train(small_config("train.epochs=1", "log.curves=false"), run)
    err = capsys.readouterr().err
    # Every file a run writes at the top of its folder is this run's or gone: none is the earlier run's
    for name in names.RUN_FILES:
        assert not (run / name).exists() or marker not in (run / name).read_bytes(), name
    for name in (names.INIT_FILE, names.BUDGET_FILE, names.CURVES_FILE, names.DIAGNOSIS_FILE, names.REPORT_HTML_FILE,
                 names.snapshot_name(1), "best.onnx", "best-ema.pt", ".report.html.k1ll3d.tmp"):
        assert not (run / name).exists(), name
    assert not (run / "eval-test-none").exists() and not (run / names.TENSORBOARD_DIR).exists()
    # The ensemble result, whatever its name: the run's page would show it beside the new weights
    assert not (run / "my-three.json").exists()
    from cnnlab.report.runs import read_run

    assert read_run(run, diagnose=False).ensembles == []
    # What is not cnnlab's stays, and so does the folder it is in
    assert (run / "notes.txt").read_text() == "my notes on this folder"
    assert json.loads((run / "my-settings.json").read_text()) == {"lr": 0.1}
    assert [p.name for p in (run / "eval-test-flip-ema").iterdir()] == ["my-notes.txt"]
    assert err.count("note: removed ") == 1
    for shown in ("init.json", "budget.json", "report.html", "diagnosis.txt", "eval-test-none/", "tensorboard/",
                  "eval-test-flip-ema/metrics.json", "best.onnx", "my-three.json"):
        assert shown in err, shown
    assert "notes.txt" not in err and "config.yaml" not in err  # the user's file, and one the run rewrites
    assert "my-settings.json" not in err


def test_a_new_run_refuses_a_folder_whose_earlier_files_it_cannot_remove(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _earlier_run_in(run)
    earlier_config = (run / "config.yaml").read_bytes()
    unlink = Path.unlink

    def refuse_report(path, *args, **kwargs):
        if path.name == "report.txt":
            raise PermissionError(13, "Permission denied")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse_report)
    with pytest.raises(CnnlabError, match="holds report.txt from an earlier run.*Permission denied.*another --out"):
        engine.train(small_config("train.epochs=1"), run)
    assert (run / "config.yaml").read_bytes() == earlier_config  # refused before the new run wrote anything


@pytest.mark.parametrize("config_yaml", [None, "my: project\n", "model: [unclosed\n"])
def test_a_new_run_refuses_a_folder_whose_files_by_a_runs_names_no_run_wrote(tmp_path, config_yaml):
    """`--out .` in a project folder holding a metrics.csv and report.txt of its own, and a config.yaml of another
    program or none: the run would replace them or remove them as an earlier run's. Refused, with nothing changed;
    a folder with only files of other names is trained into."""
    run = tmp_path / "project"
    run.mkdir()
    mine = {"metrics.csv": "fold,score\n1,0.9\n", "report.txt": "my report\n", "notes.txt": "notes\n"}
    if config_yaml is not None:
        mine["config.yaml"] = config_yaml
    for name, text in mine.items():
        (run / name).write_text(text)
    with pytest.raises(CnnlabError, match="which no cnnlab run wrote there.*another --out") as error:
        engine.train(small_config("train.epochs=1", "log.curves=false"), run)
    assert "metrics.csv" in str(error.value) and "report.txt" in str(error.value) and "notes.txt" not in str(error.value)
    assert {path.name: path.read_text() for path in run.iterdir()} == mine
    for name in ("metrics.csv", "report.txt", "config.yaml"):
        (run / name).unlink(missing_ok=True)
    engine.train(small_config("train.epochs=1", "log.curves=false"), run)
    assert (run / "notes.txt").read_text() == "notes\n" and (run / "last.safetensors").is_file()


def test_bf16_channels_last_and_googlenet_auxiliary_heads_train(tmp_path):
    config = small_config(NO_CURVES, "model.name=googlenet", "train.precision=bf16", "train.channels_last=true",
                          "train.epochs=1", "data.spec=synthetic:classes=3,train=64,val=16,test=16")
    result = engine.train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 1 and rows[0]["train_loss"] > 0 and result.best_epoch == 1


def test_fp16_needs_cuda():
    with pytest.raises(CnnlabError, match="fp16 needs a CUDA GPU"):
        engine.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("units, expected", [(True, torch.bfloat16), (False, None)])
def test_precision_auto_is_bf16_on_a_cpu_with_bf16_units_and_fp32_elsewhere(monkeypatch, units, expected):
    monkeypatch.setattr(engine, "cpu_has_bf16_units", lambda: units)
    assert engine.resolve_precision("auto", torch.device("cpu")) is expected
    assert engine.resolve_precision("fp32", torch.device("cpu")) is None  # an explicit choice is kept
    assert engine.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_bf16_units_are_read_from_the_cpu():
    # The independent reference: the kernel's own list of the CPU's instruction-set flags. (The suite's
    # conftest patches the check to fp32 everywhere; the function itself is kept here.)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with (not Linux)")
    flags = next(set(line.split(":", 1)[1].split()) for line in cpuinfo.read_text().splitlines()
                 if line.startswith("flags"))
    assert CPU_HAS_BF16_UNITS() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_compile_auto_runs_eager_and_reads_yaml_booleans():
    # auto is eager on every device: compiling lost more often than it won on the CPU and on an H200
    assert engine.resolve_compile("auto") is False
    assert engine.resolve_compile("on") is True and engine.resolve_compile("off") is False
    assert small_config().train.compile == "auto"
    assert small_config("train.compile=true").train.compile == "on"  # YAML's booleans, as older configs wrote them
    assert small_config("train.compile=false").train.compile == "off"
    with pytest.raises(CnnlabError, match="train.compile='fast' is not allowed: choose one of auto, on, off"):
        small_config("train.compile=fast")
    # The Python API bypasses the config reader: its booleans still work, anything else is refused
    assert engine.resolve_compile(True) is True and engine.resolve_compile(False) is False
    with pytest.raises(CnnlabError, match="train.compile='yes' is not allowed"):
        engine.resolve_compile("yes")


@pytest.mark.parametrize("change, pattern", [
    (lambda c: setattr(c.train, "threads", "2"), "train.threads must be int, got '2'"),
    (lambda c: setattr(c.train, "device", 0), "train.device must be str, got 0"),
    (lambda c: setattr(c, "train", {"epochs": 1}), "The config's train section must be a TrainConfig, got dict"),
    (lambda c: setattr(c, "model", None), "The config's model section must be a ModelConfig, got NoneType"),
])
def test_train_checks_a_config_built_in_python_before_it_reads_a_field(tmp_path, change, pattern):
    """train() reads the device, compile and thread settings before the set-up's own check: a bad value there was
    an internal error (TypeError, AttributeError) instead of a message naming the key."""
    config = small_config("train.epochs=1", "log.curves=false")
    change(config)
    with pytest.raises(CnnlabError, match=pattern):
        engine.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the folder is written


def test_train_refuses_a_config_that_is_not_a_run_config(tmp_path):
    with pytest.raises(CnnlabError, match="A run's config must be a RunConfig, got dict"):
        engine.train({"train": {"epochs": 1}}, tmp_path / "run")


@pytest.mark.parametrize("setting, compiled", [("on", True), ("auto", False), ("off", False)])
def test_the_engine_compiles_the_model_as_train_compile_says(tmp_path, monkeypatch, setting, compiled):
    """The wiring, without inductor's compile time: torch.compile is replaced by a recorder that returns the model."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(model) or model)
    config = small_config(f"train.compile={setting}", "train.device=cpu", "train.epochs=1", "log.curves=false")
    engine.train(config, tmp_path / "run")
    assert len(calls) == (1 if compiled else 0)
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["compiled"] is compiled  # resolved, recorded


@pytest.mark.parametrize("units, setting, recorded", [(True, "auto", "bf16"), (False, "auto", "fp32"),
                                                       (True, "fp32", "fp32")])
def test_the_engine_trains_and_records_the_precision_auto_chose(tmp_path, monkeypatch, capsys, units, setting,
                                                                 recorded):
    monkeypatch.setattr(engine, "cpu_has_bf16_units", lambda: units)
    real_autocast, dtypes = engine.autocast, set()

    def recorded_autocast(device_type, dtype):
        dtypes.add(dtype)
        return real_autocast(device_type, dtype)

    monkeypatch.setattr(engine, "autocast", recorded_autocast)
    real_evaluate, evaluated_under_autocast = engine.evaluate, []

    def observed_evaluate(model, loader, *args):
        hook = model.register_forward_hook(lambda *_: evaluated_under_autocast.append(torch.is_autocast_enabled("cpu")))
        try:
            return real_evaluate(model, loader, *args)
        finally:
            hook.remove()

    monkeypatch.setattr(engine, "evaluate", observed_evaluate)
    config = small_config(f"train.precision={setting}", "train.device=cpu", "train.epochs=1", "log.curves=false")
    engine.train(config, tmp_path / "run")
    assert dtypes == {torch.bfloat16 if recorded == "bf16" else None}  # every training step ran so
    assert evaluated_under_autocast and not any(evaluated_under_autocast)  # validation in fp32 whatever trained
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["precision"] == recorded
    assert ("trains in bf16 autocast here" in capsys.readouterr().err) is (recorded == "bf16")


def test_every_file_records_the_resolved_config_and_the_preprocessing(tmp_path):
    """config.yaml, checkpoints and snapshots hold the augmentation as resolved (every field concrete) and the
    preprocessing keys, so a snapshot is usable alone; resolving the recorded config again changes nothing."""
    from cnnlab.config import config_from_dict
    from cnnlab.data.transforms import unresolved_fields
    from cnnlab.run import PREPROCESSING_KEYS, RunFolder
    from cnnlab.train.checkpoint import read_checkpoint_meta

    config = small_config("schedule.name=cyclic", "schedule.cycles=2", "train.snapshots=true",
                          "schedule.warmup_epochs=0", "train.epochs=2")
    assert unresolved_fields(config.aug)  # as given: the preset fills the augmentation
    engine.train(config, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    recorded = load_config(folder.config)
    assert not unresolved_fields(recorded.aug)
    assert recorded.aug.label_smoothing == 0.1 and recorded.aug.crop == "translate"  # the standard preset's
    checkpoint = read_checkpoint_meta(folder.last)
    for path in (folder.last, folder.best, folder.snapshot(1), folder.snapshot(2)):
        meta = read_checkpoint_meta(path, require=PREPROCESSING_KEYS)
        assert config_from_dict(meta["config"]) == recorded, path.name
        assert {key: meta[key] for key in PREPROCESSING_KEYS} == {key: checkpoint[key] for key in PREPROCESSING_KEYS}
    assert read_checkpoint_meta(folder.snapshot(1))["step"] == 6  # the end of the first of 2 cycles over 12 steps
    assert engine.setup_run(recorded, loaders=False).config == recorded  # `--config RUN/config.yaml` repeats it


def test_train_lr_find_and_check_share_one_set_up():
    """setup_run gives lr-find and check the model `cnnlab train` starts from, and the loss settings it trains with."""
    config = small_config("aug.label_smoothing=0.05", "train.aux_weight=0.4", "optim.grad_clip=2.0")
    a = engine.setup_run(config)
    b = engine.setup_run(config, "cpu", loaders=False)
    assert a.train_loader is not None and b.train_loader is None and b.val_loader is None
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert a.step_settings == engine.StepSettings(device_type="cpu", autocast_dtype=None, smoothing=0.05,
                                                  aux_weight=0.4, grad_clip=2.0)
    assert [g["peak_lr"] for g in a.optimizer.param_groups] == [0.05] * len(a.optimizer.param_groups)


def test_train_step_stops_before_the_update_when_told():
    """before_update sits between the loss and the backward pass: False leaves weights and optimiser untouched."""
    run = engine.setup_run(small_config(), loaders=False)
    size = run.dataset.image_size
    x, y = torch.randn(8, run.model.in_chans, size, size), torch.randint(0, 4, (8,))
    before = {key: value.clone() for key, value in run.model.state_dict().items()}
    seen = []
    result = engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings,
                               before_update=lambda step: seen.append(step.loss.item()) or False)
    assert not result.updated and seen == [result.loss.item()] and result.logits.shape == (8, 4)
    assert all(torch.equal(before[key], value) for key, value in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters())
    for group in run.optimizer.param_groups:
        group["lr"] = group["peak_lr"]
    assert engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings).updated
    assert any(not torch.equal(before[key], value) for key, value in run.model.state_dict().items())


def test_an_ema_decay_the_run_cannot_reach_is_named_and_the_default_is_not(tmp_path, capsys):
    # 1 epoch of 6 steps: the warm-up's last decay is (1 + 5) / (10 + 5) = 0.4; 0.3 is reached after 3.
    engine.train(small_config(NO_CURVES, "train.ema=true", "train.ema_decay=0.9995", "train.epochs=1"), tmp_path / "chosen")
    err = capsys.readouterr().err
    assert "train.ema_decay=0.9995 is never reached" in err and "0.4000 at the last of its 6 updates" in err
    engine.train(small_config(NO_CURVES, "train.ema=true", "train.epochs=1"), tmp_path / "default")
    assert "ema_decay" not in capsys.readouterr().err
    engine.train(small_config(NO_CURVES, "train.ema=true", "train.ema_decay=0.3", "train.epochs=1"), tmp_path / "reached")
    assert "ema_decay" not in capsys.readouterr().err


def test_the_default_ema_decay_without_warmup_names_the_initial_weights_share(tmp_path, capsys):
    # 1 epoch of 6 steps at the default decay 0.999: the initial copy keeps 0.999^6 of the average
    engine.train(small_config(NO_CURVES, "train.ema=true", "train.ema_warmup=false", "train.epochs=1"), tmp_path / "nowarm")
    err = capsys.readouterr().err
    assert "train.ema_warmup=false" in err and f"{0.999 ** 6:.1%} the initial (untrained) weights" in err
    # a uniform tail restarts the average: nothing of the initial weights is left at the end
    engine.train(small_config(NO_CURVES, "train.ema=true", "train.ema_warmup=false", "train.epochs=1", "train.swa_epochs=0.5"),
                 tmp_path / "swa")
    assert "the initial (untrained) weights" not in capsys.readouterr().err


def test_adamw_at_the_sgd_default_rate_is_noted_once_under_quiet_notes(tmp_path, capsys):
    import cnnlab.config

    config = small_config(NO_CURVES, "optim.name=adamw", "optim.lr=0.1", "train.epochs=1")
    with cnnlab.config.quiet_notes():  # as a search's trials and an experiment's runs train
        engine.train(config, tmp_path / "first")
        engine.train(config, tmp_path / "second")
    assert capsys.readouterr().err.count("optim.lr=0.1, the default rate for SGD") == 1
    engine.train(small_config(NO_CURVES, "optim.name=adamw", "optim.lr=0.001", "train.epochs=1"), tmp_path / "set")
    assert "the default rate for SGD" not in capsys.readouterr().err


def test_swa_epochs_average_the_last_steps_uniformly_and_say_so(tmp_path, capsys, monkeypatch):
    # 3 epochs of 6 steps; swa_epochs=1.5 averages the last 9 steps: the EMA model is their plain mean.
    config = small_config("train.ema=true", "train.swa_epochs=1.5")
    weights = []
    original = engine.train_step

    def recording(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return result

    monkeypatch.setattr(engine, "train_step", recording)
    engine.train(config, tmp_path / "run")
    assert "the uniform average of the weights after each of the last 9 of 18 steps, from step 10 on" in \
        capsys.readouterr().err
    assert len(weights) == 18
    _, _, model, _ = engine.build_run(small_config(), torch.device("cpu"))
    averaged = ModelEma(model)
    load_checkpoint(tmp_path / "run" / "last.safetensors", ema_model=averaged)
    for name, param in averaged.module.named_parameters():
        torch.testing.assert_close(param, torch.stack([w[name] for w in weights[9:]]).mean(0), rtol=1e-5, atol=1e-6)


def test_swa_epochs_shorter_than_half_a_step_still_average_the_last_step(tmp_path, capsys):
    # 0.05 of a 6-step epoch is 0.3 steps: the tail is the last step, so the EMA weights are the last weights
    # (the first uniform update copies them), not an exponential average with SWA silently off.
    engine.train(small_config("train.ema=true", "train.swa_epochs=0.05"), tmp_path / "run")
    assert "the uniform average of the weights after each of the last 1 of 18 steps, from step 18 on" in \
        capsys.readouterr().err
    _, _, model, _ = engine.build_run(small_config(), torch.device("cpu"))
    averaged = ModelEma(model)
    load_checkpoint(tmp_path / "run" / "last.safetensors", model=model, ema_model=averaged)
    for (name, param), ema_param in zip(model.named_parameters(), averaged.module.parameters()):
        torch.testing.assert_close(ema_param, param, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("extra, message", [
    (("train.ema=true", "train.swa_epochs=4"), r"train.swa_epochs=4.0 must lie in 0..train.epochs \(3\)"),
    (("train.swa_epochs=1",), "train.swa_epochs=1.0 averages into the EMA weights: set train.ema=true"),
])
def test_bad_swa_epochs_are_named(extra, message):
    with pytest.raises(CnnlabError, match=message):
        validate_config(small_config(*extra))


@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_compiled_run_keeps_one_thread_count(tmp_path, monkeypatch, setting):
    """torch.compile guards its code on torch's thread count (a new count compiles again), so a compiled run
    is pinned: the governor makes no change inside it. An eager run stays adaptive."""
    from cnnlab import threads

    pinned = []
    real_step = engine.train_step

    def observed_step(*args, **kwargs):
        pinned.append(threads.GOVERNOR.pinned)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)  # the wiring, without inductor
    monkeypatch.setattr(engine, "train_step", observed_step)
    config = small_config(f"train.compile={setting}", "train.device=cpu", "train.epochs=1", "log.curves=false",
                          "train.deterministic=false")  # SMALL's deterministic runs are pinned anyway
    engine.train(config, tmp_path / "run")
    assert pinned and all(count == (1 if setting == "on" else 0) for count in pinned)


def test_cudnn_times_its_algorithms_on_cuda_unless_the_run_is_deterministic(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    engine.choose_cudnn_algorithms(torch.device("cpu"), deterministic=False)
    assert torch.backends.cudnn.benchmark is False  # nothing to choose on the CPU
    engine.choose_cudnn_algorithms(torch.device("cuda"), deterministic=True)
    assert torch.backends.cudnn.benchmark is False  # a fixed choice: bit-identical repeats
    engine.choose_cudnn_algorithms(torch.device("cuda"), deterministic=False)
    assert torch.backends.cudnn.benchmark is True

    # setup_run, which every run goes through, asks with the run's device and determinism.
    asked = []
    monkeypatch.setattr(engine, "choose_cudnn_algorithms", lambda device, deterministic: asked.append((device, deterministic)))
    engine.setup_run(small_config("train.device=cpu"), loaders=False)
    engine.setup_run(small_config("train.device=cpu", "train.deterministic=false"), loaders=False)
    engine.setup_run(small_config("train.device=cpu", "train.deterministic=false"), loaders=False, deterministic=True)
    assert asked == [(torch.device("cpu"), True), (torch.device("cpu"), False), (torch.device("cpu"), True)]


def test_the_run_saves_and_resumes_its_loss_scaler(tmp_path, monkeypatch):
    """fp16 trains only on CUDA, so here the wiring: every checkpoint gets the run's GradScaler, and --resume
    loads into it (tests/train/test_checkpoint.py checks that its state round trips)."""
    from cnnlab.train import checkpoint

    seen = {"save": [], "load": []}
    runs = []
    real_setup = engine.setup_run
    monkeypatch.setattr(engine, "setup_run", lambda *args, **kwargs: runs.append(real_setup(*args, **kwargs)) or runs[-1])
    real_save, real_load = checkpoint.save_checkpoint, checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint",
                        lambda *args, **kwargs: seen["save"].append(kwargs.get("scaler")) or real_save(*args, **kwargs))
    monkeypatch.setattr(checkpoint, "load_checkpoint",
                        lambda *args, **kwargs: seen["load"].append(kwargs.get("scaler")) or real_load(*args, **kwargs))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_step=8)  # in epoch 2 of 2: last.safetensors holds epoch 1
        engine.train(small_config("train.epochs=2", "log.curves=false"), tmp_path / "run")
    engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    first, second = runs
    assert seen["save"] and all(s is first.scaler or s is second.scaler for s in seen["save"])
    assert any(s is second.scaler for s in seen["save"])  # the resumed run's checkpoints too
    assert seen["load"] == [second.scaler]  # --resume loads into the run's own scaler


def test_held_folder_messages_show_the_folder_name_printable(tmp_path):
    """A folder whose name holds a tab or a newline is named with its escapes (cnnlab.errors.display_name) in the
    refusals of a held folder, as everywhere else, not with the raw characters that break the message's line."""
    from cnnlab.run import RunFolder

    held = tmp_path / "held\trun"
    held.mkdir()
    (held / "last.safetensors").write_bytes(b"")  # a checkpoint without its config.yaml
    with pytest.raises(CnnlabError) as refused:
        engine.refuse_held_folder(RunFolder(held))
    assert "held\\trun" in str(refused.value) and "\t" not in str(refused.value)
    (held / "config.yaml").write_text("model: {name: resnet8}\n")
    with pytest.raises(CnnlabError, match="already holds a run") as refused:
        engine.refuse_held_folder(RunFolder(held))
    assert "held\\trun" in str(refused.value) and "\t" not in str(refused.value)

    foreign = tmp_path / "not\na run"
    foreign.mkdir()
    (foreign / "metrics.csv").write_text("a user's own table\n")
    with pytest.raises(CnnlabError, match="which no cnnlab run wrote") as refused:
        engine.refuse_held_folder(RunFolder(foreign))
    assert "not\\na run" in str(refused.value) and "\n" not in str(refused.value)


def test_data_channels_that_disagree_with_the_models_in_chans_are_refused(cli, tmp_path):
    """--model resnet8,in_chans=1 with data.channels=3 trained on one channel (the data follows the model) with
    exit 0 and no word, and config.yaml recorded data.channels: 3, a setting the run did not use."""
    args = ["train", "--data", "synthetic:classes=2,train=8,val=4,test=4", "--epochs", "1", "--batch-size", "4",
            "--set", "log.curves=false", "--quiet"]
    code, _, err = cli([*args, "--model", "resnet8,in_chans=1", "--set", "data.channels=3",
                        "--out", str(tmp_path / "a")])
    assert code == 2 and "Traceback" not in err, err
    assert "data.channels=3 and the model's in_chans=1 disagree" in err and not (tmp_path / "a").exists()
    code, _, err = cli([*args, "--model", "resnet8,in_chans=1", "--set", "data.channels=1",
                        "--out", str(tmp_path / "b")])
    assert code == 0, err  # the same number to both


def test_a_run_recorded_before_the_channels_refusal_still_resumes_and_a_search_refuses_it_up_front(tmp_path,
                                                                                                 monkeypatch):
    """Runs recorded with a data.channels other than in_chans trained on in_chans: their resume (which takes no
    --set) is not refused. A search with that base config is refused before its first trial, not trial by trial."""
    from cnnlab.run import RunFolder
    from cnnlab.tune.search import check_trial_data

    config = apply_overrides(RunConfig(), ["model.name=resnet8", "model.options.in_chans=1", "data.channels=3",
                                           "data.spec=synthetic:classes=2,train=8,val=4,test=4", "train.epochs=2",
                                           "train.batch_size=4", "log.quiet=true", "log.curves=false"])
    with pytest.raises(CnnlabError, match="data.channels=3 and the model's in_chans=1 disagree"):
        check_trial_data(config, {})
    monkeypatch.setattr(engine, "refuse_other_channels", lambda config: None)  # as cnnlab trained before

    def stop(row):
        raise KeyboardInterrupt

    assert engine.train(config, tmp_path / "run", on_epoch_end=stop).interrupted
    monkeypatch.undo()
    resumed = engine.train(RunFolder(tmp_path / "run").read_config(), tmp_path / "run", resume=True)
    assert resumed.final["epoch"] == 2
