"""Ctrl-C anywhere in a run, then --resume: the run ends bit for bit where an uninterrupted one does.

A real SIGINT lands at any point of a step. Each case below raises one from inside the run (a forward
hook on a BatchNorm layer, a gradient hook during backward, the optimiser step, the EMA update, the
evaluation, a checkpoint write), lets the engine stop, resumes the run folder and compares it with one
uninterrupted reference run: every tensor of last.safetensors and best.safetensors (weights, BatchNorm
buffers with num_batches_tracked, EMA weights and buffers, optimiser state, RNG states) with
torch.equal, their metadata, every metrics.csv value but the wall-clock columns, and steps.csv.

The model has BatchNorm and dropout, EMA is on and the augmentation preset draws random numbers, so a
batch that counts twice, a skipped EMA update or a shifted RNG state all show up. The signal is raised
with signal.raise_signal, so it goes through the engine's SIGINT handler as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import safetensors
import safetensors.torch
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from cnnlab.config import RunConfig, apply_overrides, load_config
from cnnlab.train import engine
from cnnlab.train import logging as train_logging
from cnnlab.train import schedule
from cnnlab.train.ema import ModelEma
from cnnlab.train.logging import read_metrics

TRAIN_IMAGES, BATCH, EPOCHS = 96, 16, 3
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 6
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS  # 18
SMALL = [
    "model.name=resnet8", f"data.spec=synthetic:classes=4,train={TRAIN_IMAGES},val=32,test=32", "data.image_size=16",
    f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}", "optim.lr=0.05", "schedule.warmup_epochs=0.5",
    "train.deterministic=true", "train.ema=true", "aug.preset=strong", "model.drop_rate=0.2", "log.quiet=true",
]
TIMING = {"epoch_seconds", "images_per_second"}  # wall-clock columns: the only ones allowed to differ


def small_config() -> RunConfig:
    return apply_overrides(RunConfig(), SMALL)


def _no_curves(patch: pytest.MonkeyPatch) -> None:
    """curves.png (matplotlib, ~1 s an epoch here) is drawn from metrics.csv, which is compared instead."""
    patch.setattr(train_logging, "save_curves", lambda *args, **kwargs: None)


@pytest.fixture(scope="module", autouse=True)
def _python_sigint_handler():
    """These tests press Ctrl-C through Python's own SIGINT handler. A test run started in the background
    (``make test &`` in a script) inherits SIGINT ignored, which the engine rightly leaves alone, so the
    module installs Python's handler for its tests and restores what it found."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run of the small config."""
    run = tmp_path_factory.mktemp("interrupt") / "reference"
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        result = engine.train(small_config(), run)
    assert not result.interrupted and result.final["step"] == TOTAL_STEPS
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the engine's handler is gone again
    return run


# ---------------------------------------------------------------------------------------------
# where the Ctrl-C lands


class CtrlC:
    """Ctrl-C pressed ``times`` times in a row, the first time it is called (later calls do nothing)."""

    def __init__(self, times: int = 1) -> None:
        self.left = times

    def __call__(self) -> None:
        while self.left > 0:
            self.left -= 1
            signal.raise_signal(signal.SIGINT)  # a second press raises KeyboardInterrupt right here


@dataclass
class Run:
    """What the cases' hooks see: the training step under way (1-based, set by lr_factor) and the model."""

    step: Optional[int] = None
    model: Optional[torch.nn.Module] = None
    on_model: list = field(default_factory=list)  # called once the model is built, before the EMA copy
    cleanup: list = field(default_factory=list)
    presses: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)

    def ctrl_c(self, times: int) -> CtrlC:
        press = CtrlC(times)
        self.presses.append(press)
        return press

    def count(self, name: str) -> int:
        """How many times ``name`` has been reached, this call included."""
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]


def _middle(modules: list):
    return modules[len(modules) // 2]


def in_forward(patch, run: Run, at_step: int, times: int = 1) -> None:
    """Inside forward, just after a BatchNorm layer has updated its running statistics."""
    press = run.ctrl_c(times)

    def hook(module, inputs, output):
        if module.training and run.step == at_step:  # not the EMA copy, not evaluation
            press()

    def register():
        _middle([m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]).register_forward_hook(hook)

    run.on_model.append(register)


def in_backward(patch, run: Run, at_step: int, times: int = 1) -> None:
    """Inside backward: the gradient of a middle convolution's weight has just been computed."""
    press = run.ctrl_c(times)

    def hook(grad):
        if run.step == at_step:
            press()

    def register():
        _middle([m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]).weight.register_hook(hook)

    run.on_model.append(register)


def after_optimizer_step(patch, run: Run, at_step: int, times: int = 1) -> None:
    """The weights are updated; the EMA and the position are not yet."""
    press = run.ctrl_c(times)

    def hook(optimizer, args, kwargs):
        if run.step == at_step:
            press()

    run.cleanup.append(register_optimizer_step_post_hook(hook).remove)


def in_ema_update(patch, run: Run, at_step: int, times: int = 1) -> None:
    """Inside ModelEma.update, half-way: the weights and BatchNorm statistics averaged, the count not yet."""
    press = run.ctrl_c(times)
    original_update, original_lerp = ModelEma.update, torch._foreach_lerp_

    def lerp_then_press(*args, **kwargs):
        original_lerp(*args, **kwargs)
        press()

    def update(self, model):
        if run.step != at_step:
            return original_update(self, model)
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(torch, "_foreach_lerp_", lerp_then_press)
            return original_update(self, model)

    patch.setattr(ModelEma, "update", update)


def in_evaluation(patch, run: Run, call: int, times: int = 1) -> None:
    """Inside engine.evaluate call number ``call`` (two an epoch: raw model, then EMA), after its first batch."""
    press = run.ctrl_c(times)
    original = engine.evaluate

    class PressingLoader:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for index, batch in enumerate(self.loader):
                if index == 1:
                    press()
                yield batch

    def evaluate(model, loader, *args, **kwargs):
        if run.count("evaluate") == call:
            loader = PressingLoader(loader)
        return original(model, loader, *args, **kwargs)

    patch.setattr(engine, "evaluate", evaluate)


def in_checkpoint_write(patch, run: Run, name: str, call: int, times: int = 1) -> None:
    """Inside safetensors' write of the ``call``-th checkpoint to file ``name`` (last or best.safetensors)."""
    from cnnlab.train import checkpoint

    press = run.ctrl_c(times)
    original_save, original_write = checkpoint.save_checkpoint, safetensors.torch.save_file

    def write_after_press(*args, **kwargs):
        press()
        return original_write(*args, **kwargs)

    def save_checkpoint(path, **kwargs):
        if Path(path).name != name or run.count(name) != call:
            return original_save(path, **kwargs)
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(safetensors.torch, "save_file", write_after_press)
            return original_save(path, **kwargs)

    patch.setattr(checkpoint, "save_checkpoint", save_checkpoint)


LAST, BEST = engine.CHECKPOINT_LAST, engine.CHECKPOINT_BEST
EPOCH_1 = {"epoch": 1, "batch": 0, "step": 6}  # last.safetensors at the end of epoch 1
EPOCH_2 = {"epoch": 2, "batch": 0, "step": 12}
# Each case: where the presses land (a list of (where, options)), and where last.safetensors then stands
# ({"epoch": epochs done, "batch": batches of the next, "step": steps}; None: the run still completes).
# A request is voted on in each step's all_reduce, after the forward pass: one that lands before the
# vote stops the run at the end of that step, one after it (backward, optimiser, EMA) at the end of
# the next step or, after an epoch's last step, at the end of the epoch (after evaluation and checkpoints).
CASES = {
    "forward": ([(in_forward, dict(at_step=8))], {"epoch": 1, "batch": 2, "step": 8}),
    "backward": ([(in_backward, dict(at_step=9))], {"epoch": 1, "batch": 4, "step": 10}),
    "optimizer-step": ([(after_optimizer_step, dict(at_step=3))], {"epoch": 0, "batch": 4, "step": 4}),
    "ema-update": ([(in_ema_update, dict(at_step=10))], {"epoch": 1, "batch": 5, "step": 11}),
    "ema-update-at-the-end-of-an-epoch": ([(in_ema_update, dict(at_step=6))], EPOCH_1),
    "evaluation": ([(in_evaluation, dict(call=3))], EPOCH_2),
    "ema-evaluation": ([(in_evaluation, dict(call=2))], EPOCH_1),
    "best-checkpoint-write": ([(in_checkpoint_write, dict(name=BEST, call=1))], EPOCH_1),
    "last-checkpoint-write": ([(in_checkpoint_write, dict(name=LAST, call=1))], EPOCH_1),
    "after-the-last-vote-of-the-run": ([(in_ema_update, dict(at_step=TOTAL_STEPS))], None),
    # A second press stops the run at once, mid-step: nothing new is saved, the last checkpoint is kept.
    "twice-in-forward": ([(in_forward, dict(at_step=10, times=2))], EPOCH_1),
    "twice-in-ema-update": ([(in_ema_update, dict(at_step=14, times=2))], EPOCH_2),
    "twice-in-a-checkpoint-write": ([(in_checkpoint_write, dict(name=LAST, call=2, times=2))], EPOCH_1),
    "again-while-the-stop-is-saved": ([(in_forward, dict(at_step=8)), (in_checkpoint_write, dict(name=LAST, call=2))],
                                      EPOCH_1),
}


def interrupted_run(run_dir: Path, presses: list):
    """Train the small config in ``run_dir`` with Ctrl-C pressed where ``presses`` say."""
    run = Run()
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        original_lr_factor, original_build_run = schedule.lr_factor, engine.build_run

        def lr_factor(config, step, total, per_epoch):  # called once a step, before its forward pass
            run.step = step + 1
            return original_lr_factor(config, step, total, per_epoch)

        def build_run(config, device, source=None):
            dataset, stats, model, aug = original_build_run(config, device, source)
            run.model = model
            for register in run.on_model:
                register()
            return dataset, stats, model, aug

        patch.setattr(schedule, "lr_factor", lr_factor)
        patch.setattr(engine, "build_run", build_run)
        for where, options in presses:
            where(patch, run, **options)
        try:
            result = engine.train(small_config(), run_dir)
        finally:
            for remove in run.cleanup:
                remove()
    assert all(press.left == 0 for press in run.presses), "the run never reached a Ctrl-C of the case"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    return result


# ---------------------------------------------------------------------------------------------
# comparing run folders


def assert_same_checkpoint(a: Path, b: Path) -> None:
    tensors_a, tensors_b = safetensors.torch.load_file(str(a)), safetensors.torch.load_file(str(b))
    assert sorted(tensors_a) == sorted(tensors_b), a.name
    assert any(key.endswith("num_batches_tracked") for key in tensors_a if key.startswith("ema/"))
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), f"{a.name}: {key} differs"
    with safetensors.safe_open(str(a), framework="pt") as handle:
        meta_a = handle.metadata()
    with safetensors.safe_open(str(b), framework="pt") as handle:
        meta_b = handle.metadata()
    for key in meta_a.keys() | meta_b.keys():
        value_a, value_b = meta_a.get(key), meta_b.get(key)
        if key in ("meta", "optim", "ema", "rng"):
            value_a, value_b = json.loads(value_a), json.loads(value_b)
        assert value_a == value_b, f"{a.name}: metadata '{key}' differs"


def assert_same_run(reference: Path, run: Path) -> None:
    for name in (engine.CHECKPOINT_LAST, engine.CHECKPOINT_BEST):
        assert_same_checkpoint(reference / name, run / name)
    rows_a, rows_b = read_metrics(reference / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [row["epoch"] for row in rows_b] == list(range(1, EPOCHS + 1))
    for row_a, row_b in zip(rows_a, rows_b):
        untimed_a = {key: value for key, value in row_a.items() if key not in TIMING}
        assert untimed_a == {key: value for key, value in row_b.items() if key not in TIMING}
    steps_a = list(csv.reader((reference / "steps.csv").read_text().splitlines()))
    steps_b = list(csv.reader((run / "steps.csv").read_text().splitlines()))
    assert len(steps_a) == 1 + TOTAL_STEPS and steps_a == steps_b
    assert not list(run.glob("*.tmp")), "a checkpoint write left its temporary file"


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_anywhere_then_resume_is_bit_identical(case, reference, tmp_path):
    presses, expected = CASES[case]
    run_dir = tmp_path / "run"
    stopped = interrupted_run(run_dir, presses)
    if expected is None:  # the request came after the last step's vote: the run is complete anyway
        assert not stopped.interrupted
        assert stopped.stop_requested  # but a caller running several runs stops after this one
        assert_same_run(reference, run_dir)
        return
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        resumed = engine.train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert not resumed.interrupted and resumed.final["step"] == TOTAL_STEPS
    assert_same_run(reference, run_dir)
    # what the stopped run said about itself (the CLI's message comes from these)
    assert stopped.interrupted and stopped.stop_requested
    assert stopped.checkpoint_saved == (sum(options.get("times", 1) for _, options in presses) == 1)
    assert stopped.last_checkpoint == expected


def test_a_resumed_epoch_counts_its_training_time_before_the_ctrl_c(tmp_path):
    """epoch_seconds and images_per_second of an epoch interrupted part-way: the checkpoint records the
    epoch's training seconds so far, and the resumed run adds the rest. Epoch 2's two steps before the
    Ctrl-C (steps 7 and 8) are made slow, so a row timing only the steps after the resume would be short."""
    pause = 0.3  # seconds each slow step sleeps

    def slow_steps(patch, run: Run) -> None:
        def hook(module, inputs, output):
            if module.training and run.step in (7, 8):
                time.sleep(pause)

        run.on_model.append(lambda: run.model.register_forward_hook(hook))

    run_dir = tmp_path / "run"
    stopped = interrupted_run(run_dir, [(in_forward, dict(at_step=8)), (slow_steps, {})])
    assert stopped.last_checkpoint == {"epoch": 1, "batch": 2, "step": 8}
    with safetensors.safe_open(str(run_dir / engine.CHECKPOINT_LAST), framework="pt") as handle:
        before = json.loads(handle.metadata()["meta"])["partial_seconds"]
    assert before >= 2 * pause
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        engine.train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    epoch_2 = read_metrics(run_dir / "metrics.csv")[1]
    assert epoch_2["epoch_seconds"] > before
    assert epoch_2["images_per_second"] == pytest.approx(TRAIN_IMAGES / epoch_2["epoch_seconds"])


def test_ctrl_c_twice_before_the_first_checkpoint_leaves_nothing_to_resume(tmp_path):
    stopped = interrupted_run(tmp_path / "run", [(in_forward, dict(at_step=3, times=2))])
    assert stopped.interrupted and not stopped.checkpoint_saved and stopped.last_checkpoint is None
    assert not (tmp_path / "run" / engine.CHECKPOINT_LAST).exists()


def test_off_the_main_thread_sigint_is_left_alone(tmp_path):
    """signal.signal works only on the main thread: train() elsewhere runs without a handler of its own."""
    results = []
    config = apply_overrides(small_config(), ["train.epochs=1"])
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        thread = threading.Thread(target=lambda: results.append(engine.train(config, tmp_path / "run")))
        thread.start()
        thread.join()
    assert len(results) == 1 and not results[0].interrupted
    assert results[0].last_checkpoint == {"epoch": 1, "batch": 0, "step": STEPS_PER_EPOCH}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stop_request_handler_records_then_raises():
    stop = engine.StopRequest(announce=False)
    stop.install()
    try:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        signal.raise_signal(signal.SIGINT)
        assert stop.requested  # the first press only asks
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_in_set_up_that_python_swallows_still_stops_the_run_at_its_first_step(tmp_path, capsys):
    """In set-up the handler raises at once; raised inside a weakref callback or __del__ (torch runs them while it
    builds the model and the loaders), the KeyboardInterrupt is printed as "Exception ignored" and dropped, and
    the run trained every epoch and ended as finished: a Ctrl-C or a pre-emption's SIGTERM lost. Recorded first,
    it stops the run at its first step boundary."""
    import weakref

    original = engine.setup_run

    def setup_then_a_swallowed_ctrl_c(*args, **kwargs):
        run = original(*args, **kwargs)

        class Collected:
            pass

        collected = Collected()
        handle = weakref.ref(collected, lambda _: signal.raise_signal(signal.SIGINT))
        del collected  # the callback runs here; Python prints its KeyboardInterrupt and goes on
        assert handle() is None
        return run

    config = apply_overrides(small_config(), ["train.epochs=2"])
    unraisable_hook = sys.unraisablehook
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        patch.setattr(engine, "setup_run", setup_then_a_swallowed_ctrl_c)
        result = engine.train(config, tmp_path / "run")
    assert result.interrupted and result.stop_signal == signal.SIGINT
    assert result.last_checkpoint == {"epoch": 0, "batch": 1, "step": 1}
    assert "Exception ignored" not in capsys.readouterr().err  # no traceback of it: the stop is said instead
    assert sys.unraisablehook is unraisable_hook  # the hook there was before, back


def test_a_second_ctrl_c_after_the_stop_s_checkpoint_keeps_it_as_the_one_saved(tmp_path):
    # The first press stops the run at step 8 and its checkpoint is written; the second lands while the stop's
    # curves are drawn. The run then said "nothing new was saved" of the checkpoint this stop had just written.
    def while_curves_are_drawn(patch, run: Run) -> None:
        press = run.ctrl_c(1)
        patch.setattr(engine, "_draw_curves_at_stop", lambda *args, **kwargs: press())

    stopped = interrupted_run(tmp_path / "run", [(in_forward, dict(at_step=8)), (while_curves_are_drawn, {})])
    assert stopped.interrupted and stopped.checkpoint_saved
    assert stopped.last_checkpoint == {"epoch": 1, "batch": 2, "step": 8}


def test_ctrl_c_while_the_finished_run_writes_its_reports_leaves_report_txt_out_and_a_resume_writes_it(
        reference, tmp_path, cli):
    # The run trained every epoch; a Ctrl-C in the caller's reports (the curve check, the page) ended the command
    # with 130 and no word, and report.txt, the mark of a run whose reports are all written, was written anyway.
    from cnnlab.report.runs import read_run

    run_dir = tmp_path / "run"

    def before_report(folder):
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the signal did not stop the reports")

    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        with pytest.raises(engine.ReportsInterrupted) as stopped:
            engine.train(small_config(), run_dir, before_report=before_report)
    assert stopped.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not (run_dir / "report.txt").exists()
    assert_same_checkpoint(reference / engine.CHECKPOINT_LAST, run_dir / engine.CHECKPOINT_LAST)
    assert "report.txt is missing" in " ".join(read_run(run_dir, diagnose=False).problems)
    # the command says what happened and how to go on, with the exit code of a Ctrl-C
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_draw_curves_at_stop", lambda *args, **kwargs: None)
        patch.setattr("cnnlab.cli._print_diagnosis", lambda *args, **kwargs: signal.raise_signal(signal.SIGINT))
        code, out, err = cli(["train", "--config", str(run_dir / "config.yaml"), "--out", str(tmp_path / "again"),
                              "--set", "train.epochs=1", "--set", "log.curves=false"])  # no curves.png is read
    assert code == 130 and "Traceback" not in err
    assert "interrupted while writing the finished run's reports" in err and "cnnlab train --resume" in err
    assert not (tmp_path / "again" / "report.txt").exists()
    code, out, err = cli(["train", "--resume", str(tmp_path / "again")])
    assert code == 0 and (tmp_path / "again" / "report.txt").is_file()


@pytest.fixture(scope="module")
def stopped_at_epoch_2(tmp_path_factory) -> Path:
    """One run stopped at the end of epoch 2 (step 12), untouched: each test that damages it works on a copy."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    interrupted_run(run_dir, [(in_evaluation, dict(call=3))])
    return run_dir


@pytest.mark.parametrize("damage", ["metrics deleted", "metrics header only", "steps deleted"])
def test_a_resume_names_the_rows_its_logs_lost_and_runs_lists_them(damage, stopped_at_epoch_2, tmp_path, capsys):
    # The rows of the epochs and steps a checkpoint holds cannot be redone: a resume once went on without a word,
    # and the finished run was listed as whole, its time one epoch short.
    from cnnlab.report.runs import read_run

    run_dir = tmp_path / "run"
    shutil.copytree(stopped_at_epoch_2, run_dir)  # stopped at the end of epoch 2 (step 12)
    if damage == "metrics deleted":
        (run_dir / "metrics.csv").unlink()
    elif damage == "metrics header only":
        text = (run_dir / "metrics.csv").read_text()
        (run_dir / "metrics.csv").write_text(text.splitlines()[0] + "\n")
        assert "lacks the rows of epochs 1-2" in " ".join(read_run(run_dir, diagnose=False).problems)
    else:
        (run_dir / "steps.csv").unlink()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        resumed = engine.train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert not resumed.interrupted
    err = " ".join(capsys.readouterr().err.split())
    lost = ("steps.csv lacks the rows of steps 1-12" if damage == "steps deleted"
            else "metrics.csv lacks the rows of epochs 1-2")
    assert f"warning: {lost}, which the checkpoint holds (epoch 2, step 12)" in err
    if damage != "steps deleted":
        assert [row["epoch"] for row in read_metrics(run_dir / "metrics.csv")] == [3]
        problems = " ".join(read_run(run_dir, diagnose=False).problems)
        assert "lacks the rows of epochs 1-2, which the run finished" in problems


def test_a_resume_says_a_damaged_best_checkpoint_was_damaged_when_it_replaces_it(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    interrupted_run(run_dir, [(in_checkpoint_write, dict(name=LAST, call=1))])  # the end of epoch 1, its best
    best = run_dir / engine.CHECKPOINT_BEST
    best.write_bytes(best.read_bytes()[:1000])  # cut short
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        _no_curves(patch)
        engine.train(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "note: best.safetensors could not be read (" in err and "copied last.safetensors" in err
    assert "was behind" not in err
    assert_same_run(reference, run_dir)
