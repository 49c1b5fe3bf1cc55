"""A training-time budget (``train.minutes``): time a few steps before the run, then train the epochs that fit.

The recipes are named by their budgets ("5 minutes", "45 minutes"), but an epoch's time depends on the
machine: the 5-minute recipe's epochs took 28-34 s in bf16 on a CPU with bf16 units and 80 s in fp32 on
one without. With ``train.minutes`` set, the engine times :data:`TIMED_STEPS` training steps (after
:data:`WARMUP_STEPS` untimed ones) on the run's own model, optimiser and batches before the first epoch,
and lowers ``train.epochs`` to the whole epochs that fit the budget with :data:`SPARE` of it to spare. It never
raises it: ``train.epochs`` is the schedule the recipe was chosen with, and a faster machine runs it whole.

The schedule, the EMA and every checkpoint are then those of a run configured with that many epochs from
the start, because the timed steps are undone: the weights and buffers, the optimiser's and the loss
scaler's state and the random generators are put back as they were, and the loader draws an epoch's
batches from (seed, epoch) alone. With ``train.deterministic`` a budgeted run that comes to E epochs
trains bit for bit as one with ``train.epochs=E``.

The budget counts training steps, as ``epoch_seconds`` in metrics.csv and bench/time_to_accuracy.py do:
the per-epoch evaluation comes on top. It is a plan, not a deadline: a machine that slows down
part-way (the VMs here drift by about 15% from minute to minute) can end past it, and report.txt
says by how much.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from cnnlab.config import RunConfig, validate_config
from cnnlab.devices import synchronize
from cnnlab.errors import CnnlabError, counted, noun_for
from cnnlab.text import duration_text

WARMUP_STEPS = 3  # untimed: the first steps create oneDNN's kernels and fill the allocator's caches
# Timed: about 3 s for the fast recipe's batches of 256 in fp32 on 2 cores. A 2-core VM's step time moves
# between phases some 20 steps long (130-200 ms for those batches within a minute), so 10 steps once
# read 0.206 s for epochs that then ran at 0.155 s a step; 20 average over about one phase.
TIMED_STEPS = 20
# The epochs fill at most 90% of the budget: the recipes' epoch counts were chosen with 5% to spare from
# one-epoch probes, and 10 timed steps read 3-13% faster than the run's epochs then took in four of five runs
# (mostly the VM's drift; the loop's EMA update, now timed too, takes 0.2-0.3 ms of a 130-245 ms step; docs/speed.md).
SPARE = 0.10


@dataclass(frozen=True)
class BudgetFit:
    """What the timed steps said and the epochs chosen from them."""

    minutes: float  # the budget (train.minutes)
    asked_epochs: int  # train.epochs as configured: the most the run trains
    epochs: int  # what the run trains
    steps_per_epoch: int
    timed_steps: int  # steps timed: TIMED_STEPS, or fewer in a tiny epoch
    step_seconds: float  # mean time of one timed step, its batch's loading included
    probe_seconds: float  # the whole timing, untimed steps and undoing included: taken off the budget

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch

    def record(self) -> dict:
        """budget.json: these fields and the estimated epoch, in seconds."""
        return {**asdict(self), "epoch_seconds": self.epoch_seconds}

    def describe(self) -> str:
        """One paragraph for the console: the measurement, the arithmetic and what it decided."""
        budget = f"train.minutes={self.minutes:g}"
        each = " each" if self.timed_steps != 1 else ""  # "1 timed step took 0.357 s", not "... s each"
        measured = (f"{counted(self.timed_steps, 'timed step')} took {self.step_seconds:.3f} s{each}, so an epoch of "
                    f"{self.steps_per_epoch:,} {noun_for(self.steps_per_epoch, 'step')} takes about "
                    f"{duration_text(self.epoch_seconds)}")
        planned = duration_text(self.epochs * self.epoch_seconds + self.probe_seconds)
        if fits_epochs(self.minutes, self.epoch_seconds, self.probe_seconds) < 1:
            return (f"{budget}: {measured}, longer than the budget allows, so the run trains 1 epoch (about "
                    f"{planned}); raise train.minutes, or shrink the epoch (a smaller data.train_per_class, model "
                    f"or image size).")
        if self.epochs == self.asked_epochs:
            fit = (f"all {self.epochs} epochs of train.epochs fit" if self.epochs != 1 else
                   "the 1 epoch of train.epochs fits")
            return (f"{budget}: {measured}; {fit} the budget (about {planned} "
                    f"of training, the {self.probe_seconds:.1f} s of timing included).")
        return (f"{budget}: {measured}; {self.epochs} of train.epochs={self.asked_epochs} fit {100 * (1 - SPARE):.0f}% "
                f"of the budget (about {planned} of training, the {self.probe_seconds:.1f} s of timing included), "
                f"so the schedule is that of a {self.epochs}-epoch run.")


def fits_epochs(minutes: float, epoch_seconds: float, probe_seconds: float) -> int:
    """Whole epochs of ``epoch_seconds`` in ``minutes`` less :data:`SPARE` and the timing itself (may be 0)."""
    usable = minutes * 60.0 * (1.0 - SPARE) - probe_seconds
    return max(0, math.floor(usable / epoch_seconds)) if epoch_seconds > 0 else 0


def fit_to_budget(run, train_step: Callable, forward_model: torch.nn.Module | None = None) -> tuple[RunConfig, BudgetFit]:
    """Time ``train_step`` on ``run`` (a :class:`cnnlab.train.engine.RunSetup` with loaders; the engine passes
    its :func:`cnnlab.train.engine.train_step`), undo the steps, and return the config with ``train.epochs``
    lowered to what fits ``train.minutes``, and the measurement.

    The steps call ``forward_model``: what the loop will call, ``run.model`` compiled under ``train.compile``
    (the default: ``run.model`` itself). A compiled model's first step compiles it, so the budget pays for that,
    and the timed steps run at the compiled speed. The steps are those of the fine-tuning phase: a head-only
    phase (``train.probe_epochs``) trains other parameters, so the loop compiles it again, outside the budget.

    The config is checked again at its new length: a schedule whose milestones, warmup or SWA tail no longer
    fit gets a message naming both the budget and the setting.
    """
    t = run.config.train
    steps_per_epoch = len(run.train_loader)
    started = time.perf_counter()
    forward_model = run.model if forward_model is None else forward_model  # not `or`: an nn.Sequential has a len()
    step_seconds, timed_steps = _time_steps(run, steps_per_epoch, train_step, forward_model)
    probe_seconds = time.perf_counter() - started
    fitting = fits_epochs(t.minutes, step_seconds * steps_per_epoch, probe_seconds)
    epochs = max(1, min(t.epochs, fitting))  # at least one: a run with no epoch would be no run
    fit = BudgetFit(minutes=t.minutes, asked_epochs=t.epochs, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    timed_steps=timed_steps, step_seconds=step_seconds, probe_seconds=probe_seconds)
    config = replace(run.config, train=replace(t, epochs=epochs))
    try:
        validate_config(config)
    except CnnlabError as err:
        fitted = (f"leaves time for {epochs} of train.epochs={t.epochs} epochs" if fitting >= 1 else
                  f"leaves time for no whole epoch, so 1 of train.epochs={t.epochs} would train")
        each = duration_text(fit.epoch_seconds) if fit.epoch_seconds >= 1 else f"{fit.epoch_seconds:.2g} s"
        raise CnnlabError(f"train.minutes={t.minutes:g} {fitted} (about {each} each here), and at that length: "
                          f"{str(err).removeprefix('Bad config: ')} Raise train.minutes, or change those settings "
                          "to suit a shorter run.") from None
    return config, fit


def _time_steps(run, steps_per_epoch: int, train_step: Callable, forward_model: torch.nn.Module) -> tuple[float, int]:
    """(mean seconds of a training step of ``run`` through ``forward_model``, steps timed), from the first batches
    of epoch 0, each step's loading and augmentation included; then every piece of state the steps touched is
    restored."""
    from cnnlab.train.ema import ModelEma
    from cnnlab.train.schedule import lr_factor

    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    t = run.config.train
    # A throwaway average: the loop updates its EMA after every step, and that update is part of the step's time.
    ema = ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup) if t.ema else None
    saved = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
             "scaler": copy.deepcopy(scaler.state_dict()), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
             "numpy": np.random.get_state(), "python": random.getstate()}
    # A tiny epoch times what it has: half its steps untimed (at most WARMUP_STEPS), then the rest.
    warmup = min(WARMUP_STEPS, steps_per_epoch // 2)
    timed = min(TIMED_STEPS, steps_per_epoch - warmup)
    total_steps = steps_per_epoch * t.epochs
    run.train_mode()  # the fine-tuning phase: all unfrozen stages get gradients, the slower steps
    run.train_loader.set_epoch(0)
    batches = iter(run.train_loader)
    started = time.perf_counter()
    for step in range(warmup + timed):
        if step == warmup:
            synchronize(run.device)
            started = time.perf_counter()
        x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(run.config.schedule, step, total_steps, steps_per_epoch)
        train_step(forward_model, x, y, optimizer, scaler, run.step_settings)
        if ema is not None:
            ema.update(model)
    synchronize(run.device)
    seconds = time.perf_counter() - started
    del batches  # a file loader's worker processes end here
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])
    np.random.set_state(saved["numpy"])
    random.setstate(saved["python"])
    return seconds / timed, timed
