"""Learning-rate schedules as pure functions of the step.

The engine sets ``group['lr'] = group['peak_lr'] * lr_factor(config, step, total_steps,
steps_per_epoch)`` before every optimiser step, so the schedule holds no state: a resumed run only
needs its step count to continue on exactly the same curve, and the curve can be drawn before a run.

``step`` counts optimiser steps from 0 (the step about to be taken) to ``total_steps - 1``. The
factor multiplies the peak learning rate (:func:`scaled_lr`) and lies in [0, 1]:

- ``constant``: 1.
- ``step``: multiplied by ``step_gamma`` at the start of each epoch in ``step_epochs`` (epochs of
  the whole run, warmup included: the ResNet recipe's 30/60/90; torch's MultiStepLR). Milestone ``e``
  lowers the rate from epoch ``e + 1`` (1-based) on, so one at the run's last epoch never takes
  effect: :func:`unreached_milestones` says why a new run refuses it.
- ``cosine``: half a cosine from 1 down to ``min_lr_factor`` over the steps after the warmup
  (Loshchilov & Hutter 2017 without restarts; torch's CosineAnnealingLR with T_max = those steps).
- ``cyclic``: ``cycles`` cosines with warm restarts, each from 1 down to ``min_lr_factor``, sharing
  the steps after the warmup equally (SGDR; snapshot ensembles save the weights at the end of each
  cycle, Huang et al. 2017; torch's CosineAnnealingWarmRestarts with T_0 = steps per cycle).
- ``onecycle``: Smith & Topin 2017 as torch's OneCycleLR (anneal_strategy='cos', three_phase=False)
  defines it: from 1/onecycle_div up to 1 over the first ``onecycle_pct`` of the steps, then down to
  1/(onecycle_div * onecycle_final_div) along a cosine. It has its own rise, so warmup is refused.

Linear warmup comes before every schedule but one-cycle: from ``warmup_start`` up to 1 over
``warmup_epochs * steps_per_epoch`` steps, rounded half up and at least one (Goyal et al. 2017; torch's LinearLR).
A warmup must leave the schedule after it the steps its rate needs to fall below the peak (2 for a cosine, one
more than the cycles for 'cyclic', 1 for the rest): :func:`overlong_warmup` says why one that does not is refused.
"""

from __future__ import annotations

import math

from cnnlab.config import CHOICES, OptimConfig, ScheduleConfig, schedule_problems
from cnnlab.errors import CnnlabError, counted
from cnnlab.run import snapshot_name

SCHEDULES: tuple[str, ...] = CHOICES[("schedule", "name")]  # constant, step, cosine, cyclic, onecycle


def warmup_steps(config: ScheduleConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of linear warmup: ``warmup_epochs`` (may be fractional) rounded half up to whole steps,
    and at least one when ``warmup_epochs`` is above 0.

    The floor of one step: a warmup shorter than half a step (0.04 epochs of a 9-step epoch) would otherwise
    round to none, and the run would start at the peak rate that the warmup was asked to spare it, without a
    word. One step of warmup takes step 0 at ``warmup_start`` of the peak, as a longer warmup's first step does.
    """
    if config.warmup_epochs <= 0:
        return 0
    return max(1, _rounded_steps(config.warmup_epochs, steps_per_epoch))


def _rounded_steps(epochs: float, steps_per_epoch: int) -> int:
    """``epochs`` of ``steps_per_epoch`` steps, rounded half up to whole steps (in float, as the run counts them)."""
    return math.floor(epochs * steps_per_epoch + 0.5)


def steps_to_fall(config: ScheduleConfig) -> int:
    """Steps after the warmup the schedule needs before its rate falls below the peak: 1 where it never falls
    by design (constant, a floor of min_lr_factor=1) or falls at fixed epochs (step, whose milestones are
    checked to come after the warmup). A cosine's first step after the warmup is at the peak (position 0 of its
    curve), so it needs 2. 'cyclic' shares the steps among its cycles as evenly as whole steps allow, each
    cycle starting at the peak: one more step than cycles gives a cycle 2 steps, with fewer every cycle is a
    single step at the peak.

    >>> steps_to_fall(ScheduleConfig(name="cosine")), steps_to_fall(ScheduleConfig(name="cyclic", cycles=3))
    (2, 4)
    """
    if config.name not in ("cosine", "cyclic") or config.min_lr_factor >= 1.0:
        return 1
    return 2 if config.name == "cosine" else config.cycles + 1


def overlong_warmup(config: ScheduleConfig, total_steps: int, steps_per_epoch: int,
                    after_probe: bool = False) -> str | None:
    """Why a warmup leaves the schedule after it too few of the ``total_steps`` to act, as a paragraph; None
    when it leaves enough (:func:`steps_to_fall`) or there is no warmup. ``after_probe``: the schedule runs over
    the epochs after train.probe_epochs.

    The config's check (``warmup_epochs`` below the run's epochs) cannot see the rounding to whole steps: 1.95 of
    2 epochs of 9 steps is 17.55 steps, rounded half up to 18, the whole run. The rate would then still be rising
    when the run ends, and the schedule after the warmup would never run. A warmup that leaves a cosine one step
    (17 of 18) fails the same way a step later: that step is the top of the cosine, so the run ends at the peak
    rate. The rule is the schedule's own need, not a share of the run: a long warmup with room for the rate to
    fall runs as asked (the cosine is compressed into the steps it has). A run too short for a warmup step and
    the schedule's fall both (2 steps for a cosine) keeps only the rule that the warmup leaves a step: no
    warmup fits there, and a run that short is a smoke test.
    """
    warmup = warmup_steps(config, steps_per_epoch)
    # A run with no room for both a warmup step and the schedule's fall (a smoke test of 2 steps, for a cosine)
    # keeps the rate up with any warmup: the warmup it was given only needs to leave a step
    needed = steps_to_fall(config) if total_steps > steps_to_fall(config) else 1
    left = total_steps - warmup
    if config.name == "onecycle" or warmup == 0 or left >= needed:
        return None
    steps = (f"the {counted(total_steps, 'step')} after train.probe_epochs" if after_probe
             else f"this run's {counted(total_steps, 'step')}")
    longest = _longest_warmup_epochs(total_steps - needed, steps_per_epoch)
    if longest is None:  # no warmup of a step or more leaves the schedule what it needs
        fix = "set schedule.warmup_epochs to 0"
    else:
        fix = f"shorten schedule.warmup_epochs to {longest:g} or less"
    more = "or train more steps (train.epochs, a smaller train.batch_size or train.accum_steps)"
    rounding = f"({steps_per_epoch:,} an epoch; the warmup is rounded half up to whole steps)"
    if left <= 0:
        return (f"schedule.warmup_epochs={config.warmup_epochs:g} is {counted(warmup, 'step')}, all of {steps} "
                f"{rounding}. The rate would still be rising when the run ends, and the {config.name} schedule "
                f"after the warmup would never run. For a warmup that leaves the schedule "
                f"{counted(needed, 'step')}, {fix}, {more}.")
    if config.name == "cosine":
        why = "its first step is at the top of the cosine, and the rate falls from the second on"
    else:
        why = (f"each of its {config.cycles} cycles starts at the peak, so a cycle falls only from its second "
               f"step, and the steps after the warmup need to outnumber the cycles for one to have it")
        if left >= 2:
            fix += f", set schedule.cycles to {left - 1} or fewer"
    return (f"schedule.warmup_epochs={config.warmup_epochs:g} is {counted(warmup, 'step')} of {steps} {rounding}, "
            f"and leaves the {config.name} schedule after it {counted(left, 'step')}: {why}. The rate would never "
            f"fall below the peak, and the run would end at it. For a warmup that leaves the schedule "
            f"{counted(needed, 'step')}, {fix}, {more}.")


def unreached_milestones(config: ScheduleConfig, epochs: int, length: str | None = None) -> str | None:
    """Why schedule.step_epochs holds a milestone that never takes effect in a run of ``epochs`` epochs (those the
    schedule runs over), as a paragraph; None when each one does, or the schedule is not 'step'. ``length``
    names that run in the message (default ``train.epochs=N``).

    A milestone ``e`` lowers the rate once ``e`` epochs are done, from step ``e x steps_per_epoch`` on (torch's
    MultiStepLR counts the same way). A milestone equal to the run's epochs would lower it after the run's last
    step: the run ends at the rate before it, while config.yaml says it decayed. The config's check
    (:func:`cnnlab.config.schedule_problems`) refuses milestones beyond the run; this one, like
    :func:`overlong_warmup`, is made for a new run only, so that a run an older version started resumes.

    >>> unreached_milestones(ScheduleConfig(name="step", step_epochs=[5, 9]), 10) is None
    True
    """
    if config.name != "step":
        return None
    late = [epoch for epoch in config.step_epochs if epoch >= epochs]
    if not late:
        return None
    length = length or f"train.epochs={epochs}"
    why = (f"schedule.step_epochs={list(config.step_epochs)} has {', '.join(str(e) for e in late)}, the end of the "
           f"run ({length}): the rate drops once a milestone's epochs are done (as torch's MultiStepLR counts), so it "
           "would drop after the last step and never take effect.")
    if epochs > 1:
        fix = f"Set the milestone to {epochs - 1} or less (the largest that takes effect), or train more epochs."
    else:
        fix = "A run of one epoch has no epoch after a milestone: train more epochs, or use schedule.name=constant."
    return f"{why} {fix}"


def _longest_warmup_epochs(steps: int, steps_per_epoch: int) -> float | None:
    """The longest schedule.warmup_epochs that rounds (half up) to ``steps`` or fewer and to one or more, written
    shortly; None when ``steps`` is below 1. Half up, every warmup below (steps + 0.5) / steps_per_epoch epochs
    rounds to ``steps`` or fewer: the longest number of 3 decimals that does (16.5 / 9 = 1.8333...: 1.833, 16.497
    steps, 16). A warmup under a thousandth of an epoch is given as steps / steps_per_epoch to 3 significant
    digits, which round to the same steps."""
    if steps < 1:
        return None
    bound = (steps + 0.5) / steps_per_epoch  # the first warmup that rounds to steps + 1
    # From the first thousandth at or above the bound, down to the first that rounds to ``steps`` as the run rounds
    # it: in float, a warmup on the bound may round either way (32.7 of 5 steps to 164, 4.975 of 100 to 497)
    thousandths = math.ceil(bound * 1000)
    while thousandths > 0 and _rounded_steps(thousandths / 1000, steps_per_epoch) > steps:
        thousandths -= 1
    if thousandths <= 0:
        return float(f"{steps / steps_per_epoch:.3g}")
    return thousandths / 1000


def _half_cosine(position: float, length: float, floor: float) -> float:
    """From 1 at ``position`` 0 down to ``floor`` at ``position == length`` along half a cosine."""
    return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * position / length)) / 2.0


def _cycle_bounds(total_steps: int, warmup: int, cycles: int) -> list[int]:
    """Step counts where the cycles start, plus ``total_steps`` where the last one ends.

    The steps after the warmup are split as equally as whole steps allow: cycle k starts at
    ``warmup + (k * remaining) // cycles``, so cycles differ by at most one step and are exactly
    equal when ``cycles`` divides the remaining steps.
    """
    remaining = total_steps - warmup
    return [warmup + (k * remaining) // cycles for k in range(cycles + 1)]


def _onecycle_factor(config: ScheduleConfig, step: int, total_steps: int) -> float:
    """torch's OneCycleLR (two phases, cosine annealing) divided by max_lr.

    Phase 1 ends at step ``pct * total - 1`` (a float, as in torch), phase 2 at ``total - 1``; each
    phase runs a cosine from its start to its end value: ``end + (start - end) / 2 * (cos(pi*pct) + 1)``.
    """
    initial = 1.0 / config.onecycle_div  # torch: initial_lr = max_lr / div_factor
    final = initial / config.onecycle_final_div  # torch: min_lr = initial_lr / final_div_factor
    rise_end = float(config.onecycle_pct * total_steps) - 1.0
    if step <= rise_end:
        start_step, end_step, start_value, end_value = 0.0, rise_end, initial, 1.0
    else:
        start_step, end_step, start_value, end_value = rise_end, float(total_steps - 1), 1.0, final
    length = end_step - start_step
    # A phase of zero length (a run of 1 step, or pct * total == 1) sits at its end value; torch
    # would divide by zero there.
    pct = (step - start_step) / length if length > 0 else 1.0
    return end_value + (start_value - end_value) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def lr_factor(config: ScheduleConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The multiplier of the peak learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Pure: the same arguments always give the same factor. See the module docstring for each schedule.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step={step} lies outside the run's {total_steps} steps (0 to {total_steps - 1}).")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be at least 1.")
    name = config.name
    if name not in SCHEDULES:
        raise CnnlabError(f"schedule.name='{name}' is not allowed: choose one of {', '.join(SCHEDULES)}.")
    if name == "onecycle":
        if config.warmup_epochs > 0:
            raise CnnlabError(_ONECYCLE_WARMUP)
        return _onecycle_factor(config, step, total_steps)

    warmup = warmup_steps(config, steps_per_epoch)

    if step < warmup:
        # Linear from warmup_start at step 0 towards 1, reached at step == warmup (LinearLR).
        return config.warmup_start + (1.0 - config.warmup_start) * step / warmup
    # Steps after the warmup; at least one, so a warmup rounded up to the whole run cannot divide by 0.
    after, remaining = step - warmup, max(total_steps - warmup, 1)

    if name == "constant":
        return 1.0
    if name == "step":
        # Epoch milestones count from the start of the run: the factor drops at step e * steps_per_epoch.
        passed = sum(1 for epoch in config.step_epochs if step >= epoch * steps_per_epoch)
        return config.step_gamma ** passed
    if name == "cosine":
        return _half_cosine(after, remaining, config.min_lr_factor)
    # cyclic: the cycle holding this step, then the half cosine within it. Cycle k starts at k * remaining //
    # cycles steps after the warmup (_cycle_bounds), so the last cycle starting at or before `after` is the
    # largest k with k * remaining < (after + 1) * cycles; computed, not searched (the cycles may be many)
    cycles = config.cycles
    k = min(cycles - 1, ((after + 1) * cycles - 1) // remaining)
    start, end = warmup + k * remaining // cycles, warmup + (k + 1) * remaining // cycles
    return _half_cosine(step - start, end - start, config.min_lr_factor)


def snapshot_steps(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> list[int]:
    """Where each 'cyclic' cycle ends, as a count of finished steps; ``[]`` for every other schedule.

    A value ``s`` means: the cycle's last update was step ``s - 1`` (0-based), so the weights after
    ``s`` steps are the cycle's snapshot, at the bottom of its learning-rate cosine. The engine
    compares it with its step counter after ``step += 1``. The last value is ``total_steps``.
    """
    if config.name != "cyclic":
        return []
    bounds = _cycle_bounds(total_steps, warmup_steps(config, steps_per_epoch), config.cycles)
    ends = bounds[1:]
    # A cycle with no steps (more cycles than steps) would repeat its predecessor's end: skip it.
    return sorted({end for end in ends if end > bounds[0]})


def flat_cycles(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> str | None:
    """Why 'cyclic' never lowers the rate in a run of ``total_steps`` (its cycles as many as the steps after the
    warmup, so that each is a single step at the peak), as a sentence; None when a cycle has room to fall, for
    other schedules, and for a run of one step after the warmup, whose rate has nowhere to fall anyway.

    >>> flat_cycles(ScheduleConfig(name="cyclic", cycles=9), total_steps=9, steps_per_epoch=9)[:42]
    "schedule.cycles=9 shares the run's 9 steps"
    """
    if config.name != "cyclic" or config.min_lr_factor >= 1.0:
        return None
    warmup = min(warmup_steps(config, steps_per_epoch), total_steps)
    after = total_steps - warmup
    if after < 2 or after > config.cycles:
        return None
    steps = f"the {counted(after, 'step')} after the warmup" if warmup else f"the run's {counted(after, 'step')}"
    return (f"schedule.cycles={config.cycles} shares {steps} among as many "
            f"cycles or more, so each is a single step at the peak rate, which never falls: set schedule.cycles to "
            f"{after - 1} or fewer for a cycle to fall, or train more steps (train.epochs, a smaller "
            "train.batch_size).")


def snapshot_shortfall(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> str | None:
    """Why a run with train.snapshots saves fewer snapshots than ``cycles``, as a sentence; None when it saves one
    per cycle. Each cycle needs a step of its own after the warmup: with fewer steps than cycles, the cycles
    without a step are empty (the learning rate has only as many cosines as steps) and have no snapshot.

    >>> snapshot_shortfall(ScheduleConfig(name="cyclic", cycles=3), total_steps=12, steps_per_epoch=4) is None
    True
    """
    if config.name != "cyclic":
        return None
    saved = len(snapshot_steps(config, total_steps, steps_per_epoch))
    if saved >= config.cycles:
        return None
    warmup = min(warmup_steps(config, steps_per_epoch), total_steps)
    after = total_steps - warmup
    steps_text = counted(after, "step")
    if warmup:
        steps_text += f" after its {counted(warmup, 'warmup step')}"
    if saved:
        last = f" to {snapshot_name(saved)}" if saved > 1 else ""
        saved_text = f"only {counted(saved, 'snapshot')} will be saved ({snapshot_name(1)}{last})"
    else:
        saved_text = "no snapshot will be saved"
    more = "train more steps (train.epochs, a smaller train.batch_size or train.accum_steps)"
    shorter_warmup = "shorten schedule.warmup_epochs, " if warmup else ""
    fix = (f"For {config.cycles}, {more}, {shorter_warmup}or set schedule.cycles to {after} or fewer." if after
           else f"For any, shorten schedule.warmup_epochs or {more}.")
    return (f"train.snapshots=true with schedule.cycles={config.cycles} asks for {config.cycles} snapshots, but the "
            f"schedule has {steps_text} and each cycle needs a step of its own, so {saved_text}. {fix}")


def scaled_lr(optim: OptimConfig, batch_size: int) -> float:
    """The peak learning rate for ``batch_size`` images per optimiser step (train.images_per_step: the batch size
    times train.accum_steps).

    With ``lr_batch`` set, the linear scaling rule (Goyal et al. 2017): ``lr * batch_size / lr_batch``,
    e.g. lr 0.1 per 256 images is 0.05 at batch 128. Without it, ``lr`` as given.
    """
    if optim.lr_batch is None:
        return optim.lr
    return optim.lr * batch_size / optim.lr_batch


_ONECYCLE_WARMUP = ("schedule.warmup_epochs must be 0 for schedule.name='onecycle' (one-cycle has its own "
                    "rise over schedule.onecycle_pct of the steps): set warmup_epochs to 0, or pick another schedule.")


def validate_schedule(config: ScheduleConfig, epochs: int) -> None:
    """Check ``config`` for a run of ``epochs`` epochs; CnnlabError naming every bad field and its range.

    The checks are :func:`cnnlab.config.schedule_problems`, the ones :func:`cnnlab.config.validate_config`
    makes for a whole run config: this raises them for a schedule alone.
    """
    problems = schedule_problems(config, epochs)
    if problems:
        raise CnnlabError("Bad schedule: " + "; ".join(problems) + ".")
