"""Reading a run's curves: the lecture's rules for loss and accuracy curves, turned into findings.

Each rule reads metrics.csv rows (one per epoch) and/or steps.csv rows (one per optimiser step) and
returns at most one :class:`Finding` that quotes the run's own numbers. The rules are independent of
one another, except that a diverged run (non-finite or exploding loss) reports only that: every other
rule would be reading curves the explosion has ruined, and the learning rate must be fixed first. So
does a run whose val loss alone is not finite (val_not_finite): the val curves are unreadable, and the
cause lies in evaluation, not in the rate.

==================  =======  ===================================================================
rule                verdict  what it looks for
==================  =======  ===================================================================
diverged            FAIL     a NaN/inf loss, or the smoothed step loss climbing far above its start, not undone
val_not_finite      FAIL     a NaN/inf val loss while every training loss is finite (eval-mode statistics)
spike_unresolved    WARN     a climb the run came back from, ending where a constant guess would for some class
                             count, read without the class count: a recovered spike or a collapse, unknown
flat_start          WARN     the smoothed loss barely falls over the first steps
rising_start        WARN     the smoothed loss rises over the first steps (short of diverged's factor)
overfitting         WARN     train accuracy well above val, or val loss rising while train loss falls
underfitting        WARN     train and val close together, both poor
still_improving     WARN     val accuracy still climbing in the last epochs
plateau_no_decay    WARN     the train loss flat over the last epochs while the lr stayed constant
late_decay          WARN     a loss plateau that only ends when a step schedule cuts the lr
early_decay         WARN     a step schedule cut the lr while the train loss was still falling fast
noisy_loss          WARN     per-step loss scattered widely around its moving average
==================  =======  ===================================================================

The three learning-rate rules read metrics.csv's train_loss and lr (the lr an epoch ended with), one
value per epoch: an epoch's mean loss is smooth enough to compare epoch with epoch, where the per-step
loss is not. They share one measure of progress (how far an epoch lowered the best train_loss so far),
one idea of a plateau (``decay_plateau_epochs`` epochs in a row each lowering it by under
``decay_plateau_change``) and one of a step decay (the lr held constant, then at least ``decay_factor``
times lower). The lecture's readings they turn into findings: the loss will not go down at a constant
lr, so decay it (plateau_no_decay); the loss plateaued long before the decay (late_decay); the loss was
still falling when the lr was decayed (early_decay).

Every number a rule compares against lives in :class:`Thresholds`. A rule whose input is too short to
judge (a run of a few epochs or steps) finds nothing, and a NOTE (rule NOT_CHECKED) names it. A run folder's
diagnosis also notes a run that has not trained all its epochs (UNFINISHED: interrupted, stopped or still running,
as the caller read the run; still_improving then points to the epochs it has to go, not to more epochs) and a
metrics.csv that lost rows of epochs status.json records as finished (CUT_EPOCHS, or LOST_EPOCHS when none is left).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Optional
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError, counted, display_name
from cnnlab.run import (CHECKPOINT_BEST, CHECKPOINT_LAST, CURVES_FILE, METRICS_FILE, STATUS_FILE, STEPS_FILE, MetaKey,
                        RunFolder)
from cnnlab.train.checkpoint import read_checkpoint_meta
from cnnlab.train.logging import loss_text, moving_average, read_metrics, read_steps

FAIL = "FAIL"
WARN = "WARN"
NOTE = "NOTE"  # not a verdict on the curves: what was read (a line a crash cut short was left out)
NO_EPOCHS = "no_epochs"  # the rule of the NOTE that metrics.csv holds no finished epoch: no verdict on the curves yet
# the rule of the NOTE that metrics.csv lost the epochs status.json records as finished: no verdict on the curves
LOST_EPOCHS = "lost_epochs"
NOT_CHECKED = "not_checked"  # the rule of the NOTE naming the rules a run too short for them could not check
# the rule of the NOTE that metrics.csv lost its last rows (of epochs status.json records as finished) but holds some:
# the rules read the epochs left
CUT_EPOCHS = "cut_epochs"
# the rule of the NOTE that the run has not trained all its epochs (interrupted, stopped, or still running): its
# curves end where it stopped, not where its schedule does
UNFINISHED = "unfinished"
UNFINISHED_STATES = ("interrupted", "stopped", "running")  # cnnlab.report.runs.read_run's states of such a run
# A NaN/inf val loss while every training loss is finite: evaluation broke (BatchNorm's running statistics), not training
VAL_NOT_FINITE = "val_not_finite"
# A climb the run came back from, read without the class count: a recovered spike, or a collapse to a constant
# guess (a loss near ln C), cannot be told apart (:func:`_climbing`)
SPIKE_UNRESOLVED = "spike_unresolved"
# The loss climbing over the first steps, short of diverged's factor: flat_start's window, read the other way
RISING_START = "rising_start"


@dataclass
class Finding:
    """One problem read from the curves: which rule, how bad, what was seen, what to do."""

    rule: str  # short id, e.g. "overfitting"; "input" for a NOTE about the files read
    verdict: str  # FAIL (the run is broken), WARN (the run works but could be better) or NOTE (about the input)
    title: str  # the problem and its usual cause, e.g. "Loss explodes (learning rate too high)"
    evidence: str  # the run's own numbers that triggered the rule
    remedy: str  # one line: what to change


@dataclass(frozen=True)  # frozen: the shared default instance in diagnose()'s signature cannot be changed
class Thresholds:
    """Every number the rules compare against. Accuracies are fractions (0.05 = 5 points)."""

    # steps in the moving average of the per-step loss: enough to average out batch-to-batch noise,
    # few enough that a 20-step start window still has a start and an end
    smoothing_steps: int = 10

    # flat_start: the start is this fraction of all steps (the lecture's "first few hundred iterations")
    flat_start_fraction: float = 0.10
    # flat_start: fewer steps than this in the start window are too few to call it flat; rule skipped
    flat_start_min_steps: int = 20
    # flat_start: the smoothed loss must fall by at least this fraction of its start value over the window
    flat_start_min_drop: float = 0.02
    # rising_start: the straight line fitted to log(loss) over flat_start's window must rise at least this much
    rising_start_min_rise: float = 0.05
    # rising_start: and its slope must lie this many standard errors above zero (batch noise alone rarely does)
    rising_start_sigmas: float = 4.0
    # flat_start: a start loss above this many times ln(C) means an overconfident initialisation
    # (a fresh classifier should output near-uniform probabilities, loss ln(C))
    init_loss_ratio: float = 1.5

    # diverged: the smoothed loss rising to this many times its start value, and still this many times the lowest
    # value before the rise at the end of the run, is an explosion, not noise
    diverge_factor: float = 1.5

    # overfitting: final train_acc - val_acc above this (fraction) is a generalisation gap
    overfit_gap: float = 0.05
    # overfitting: final val_loss at least (1 + this) times its minimum counts as rising
    overfit_val_rise: float = 0.10
    # overfitting: the val_loss minimum must be at least this many epochs before the end (not a blip)
    overfit_min_epochs_since_best: int = 2

    # underfitting: |train_acc - val_acc| below this (fraction) means train and val are close
    underfit_gap: float = 0.02
    # underfitting: final train_acc below this is "poor". Relative to the task: 0.90 suits
    # MNIST-like data; raise it for easy data, lower it for hard data (e.g. 0.6 for ImageNet top-1)
    underfit_train_acc: float = 0.90

    # still_improving: fewer epochs than this are too few to speak of "the end" of a curve
    improving_min_epochs: int = 4
    # still_improving: the end is this fraction of the epochs...
    improving_tail_fraction: float = 0.25
    # ...but at least this many epochs
    improving_tail_min_epochs: int = 2
    # still_improving: val_acc gained over the end more than this (fraction; 0.005 = half a point)
    improving_min_gain: float = 0.005

    # late_decay, early_decay: lr falling by at least this factor from one epoch to the next, after it held
    # constant (flat_lr_tolerance) over the decay_plateau_epochs + 1 epochs before, is a step decay. The
    # hold matters: a cosine's last epochs also fall 2x and more per epoch, but never hold still
    decay_factor: float = 2.0
    # plateau_no_decay, late_decay, early_decay: epochs in a row that make a plateau (all flat), and the
    # epochs before a decay that early_decay reads (all falling)
    decay_plateau_epochs: int = 2
    # plateau_no_decay, late_decay: flat = an epoch lowered the best train_loss so far by less than this
    # fraction (a rise counts as flat). Against the best, not the epoch before: a noisy epoch climbing
    # back from a rise is no progress (torch's ReduceLROnPlateau compares with the best too)
    decay_plateau_change: float = 0.01
    # late_decay: the first epoch after the decay lowered the best train_loss so far by more than this fraction
    decay_min_improvement: float = 0.05
    # plateau_no_decay, late_decay, early_decay: lrs within this fraction of each other (max / min - 1) are
    # constant. Constant and step schedules repeat the very same value; a decaying schedule moves it by
    # more, even over a cosine's last epochs unless its floor (min_lr_factor) is high
    flat_lr_tolerance: float = 0.001
    # early_decay: each of the decay_plateau_epochs epochs before a step decay lowered the best train_loss
    # so far by at least this fraction. Three times the flat bar: between 1% and 3% per epoch the decay
    # is about on time and neither decay rule speaks
    early_decay_min_fall: float = 0.03

    # noisy_loss: fewer steps than this are too few to judge noise; rule skipped
    noise_min_steps: int = 50
    # noisy_loss: std of (loss - moving average) over the mean moving average, second half of the run,
    # above this is noise that hides the trend (a smooth run sits near 0.05-0.10)
    noise_max: float = 0.25


DEFAULT_THRESHOLDS = Thresholds()


# ---------------------------------------------------------------------------------------------
# helpers


def _num(value: float) -> str:
    """A loss or lr for evidence: 4 significant digits (2.303, 0.0512, 1.2, inf, nan)."""
    return f"{value:.4g}"


def _column(rows: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """(epochs, values) of the metrics rows where ``key`` has a value."""
    epochs, values = [], []
    for row in rows:
        if row.get(key) is not None and row.get("epoch") is not None:
            epochs.append(row["epoch"])
            values.append(row[key])
    return epochs, np.asarray(values, dtype=np.float64)


def _steps_arrays(steps: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step numbers, losses, lrs) of the steps.csv rows."""
    numbers = np.asarray([row["step"] for row in steps], dtype=np.int64)
    losses = np.asarray([row["loss"] for row in steps], dtype=np.float64)
    lrs = np.asarray([row["lr"] for row in steps], dtype=np.float64)
    return numbers, losses, lrs


@dataclass(frozen=True)
class NonFiniteLoss:
    """A loss that was NaN or inf: a step's (``step``, from steps.csv) or an epoch's (``epoch``, from metrics.csv)."""

    key: str  # "loss" for a step's; "train_loss" or "val_loss" for an epoch's
    value: float
    index: int  # its row in the steps or the metrics rows given
    step: int | None = None
    epoch: int | None = None
    lr: float | None = None

    def text(self) -> str:
        """Where it happened: 'the loss became nan at step 12', 'train_loss became inf at epoch 3'."""
        if self.step is not None:
            return f"the loss became {self.value} at step {self.step}"
        return f"{self.key} became {self.value} at epoch {self.epoch}"


def non_finite_losses(metrics: list[dict], steps: list[dict]) -> tuple[NonFiniteLoss | None, NonFiniteLoss | None]:
    """``(training, val_only)``: the first training loss that is NaN or inf, and the first epoch whose val_loss
    alone is (before any epoch whose training loss is not finite).

    ``training``: a step's loss (steps.csv, read first: it is the finer record), else an epoch's train_loss,
    or its val_loss when the epoch has no finite train_loss beside it: the run diverged (the ``diverged``
    rule; `cnnlab runs` and the report call such a run diverged). ``val_only``: a val_loss that is not finite
    in an epoch whose train_loss is, before any training loss that is not: evaluation broke (eval-mode
    statistics such as BatchNorm's running mean and variance), not training (VAL_NOT_FINITE, unless the
    loss diverged as well)."""
    training = val_only = None
    for index, row in enumerate(steps):
        if not math.isfinite(row["loss"]):
            training = NonFiniteLoss("loss", float(row["loss"]), index, step=row["step"], lr=row.get("lr"))
            break
    for index, row in enumerate(metrics):
        for key in ("train_loss", "val_loss"):
            value = row.get(key)
            if value is None or math.isfinite(value):
                continue
            found = NonFiniteLoss(key, float(value), index, epoch=row.get("epoch"), lr=row.get("lr"))
            train_loss = row.get("train_loss")
            if key == "val_loss" and train_loss is not None and math.isfinite(train_loss):
                val_only = val_only or found
                continue
            return training or found, val_only
    return training, val_only


# ---------------------------------------------------------------------------------------------
# rules


def _diverged(metrics: list[dict], steps: list[dict], t: Thresholds, num_classes: int | None = None) -> Finding | None:
    """FAIL when (a) any step loss, or any epoch's train_loss (or its val_loss together with it), is NaN or inf;
    or (b) the smoothed loss (``smoothing_steps``-step trailing mean of the step losses; the per-epoch
    train_loss when there is no steps.csv) rises above ``diverge_factor`` x the first loss recorded and, at the end
    of the run, is still above ``diverge_factor`` x the lowest loss before that rise (the first loss included) or,
    with ``num_classes``, still within ``diverge_factor`` of ln C, a uniform guess's loss.
    Otherwise a val_loss that is not finite while the training losses are gives the VAL_NOT_FINITE
    finding (:func:`_val_not_finite`), which names evaluation-mode statistics rather than the learning rate.

    The first loss is the untrained model's (about ln C), so (b) catches both a loss that explodes at
    once (a learning rate 100x too high: 2.3 -> 200 within a few steps) and one that falls and then
    climbs back past its start, also when it then settles where a broken network sits (ln C, far above
    where it had fallen to). A climb the run comes back from is a spike, not an explosion (the lecture's
    explosion runs to inf or NaN, and it reads a noisy loss through its moving average): a fine-tune that
    starts from a trained classifier starts from one low, noisy loss, and a bump of 1.6x over it that the
    run undoes is not a FAIL. A fresh network that explodes at once and collapses to a constant guess ends
    level with its start too (both about ln C): with ``num_classes`` known, ending near ln C keeps it a FAIL.
    Without it, a climb the run came back from that ends near ln C for some class count is the WARN
    SPIKE_UNRESOLVED, which says the two cannot be told apart (returned when no FAIL is found)."""
    title = "Loss explodes (learning rate too high)"
    remedy = "Lower optim.lr by 10x or add schedule.warmup_epochs; optim.grad_clip also guards against spikes."
    # A val_loss that is not finite in an epoch whose train_loss is (val_only): evaluation broke, not necessarily
    # training. Kept, not returned: a training loss that later turns non-finite, or climbs (b), is the divergence.
    training, val_only = non_finite_losses(metrics, steps)
    if training is not None and training.step is not None:
        where = f"{_num(training.value)} at step {training.step} (lr {_num(training.lr)})"
        if training.step == 1:
            # Step 1's loss comes from the weights the run started from: no learning rate has acted yet
            return Finding("diverged", FAIL, "Loss not finite at the first step, before any update",
                           f"loss is {where}, computed with the starting weights: the learning rate is not the "
                           "cause",
                           "Check what the first forward pass depends on: the starting weights (model.init, "
                           "model.bias_init, model.init_from), the input normalisation (data.mean, data.std) and "
                           "the loss settings (train.aux_weight). `cnnlab check` reads the loss and each layer's "
                           "statistics at initialisation.")
        if training.index == 0:
            evidence = f"loss is {where}, the first step recorded"
        else:
            evidence = f"loss {_num(steps[0]['loss'])} at step {steps[0]['step']} rose to {where}"
        return Finding("diverged", FAIL, title, evidence, remedy)
    if training is not None:
        lr_text = f" (lr {_num(training.lr)})" if training.lr is not None else ""
        evidence = f"{training.key} is {_num(training.value)} at epoch {training.epoch}{lr_text}"
        return Finding("diverged", FAIL, title, evidence, remedy)
    climbing = _climbing(metrics, steps, t, title, remedy, num_classes)
    if climbing is not None and climbing.verdict == FAIL:
        if val_only is not None:
            climbing.evidence += f"; val_loss became {_num(val_only.value)} at epoch {val_only.epoch}"
        return climbing
    # A val loss that broke is a FAIL of its own; an unresolved spike (a WARN) is said only without one
    return _val_not_finite(metrics[val_only.index]) if val_only is not None else climbing


def _val_not_finite(row: dict) -> Finding:
    """FAIL for the first epoch whose val_loss is NaN or inf while its train_loss, and every training loss
    recorded, is finite: the weights train, but the model in eval mode computes non-finite outputs. What
    differs in eval mode is what it reads instead of the batch: BatchNorm's running mean and variance
    (overflowed, or NaN from one bad batch), so the learning rate is not the first suspect."""
    return Finding(
        VAL_NOT_FINITE, FAIL, "Validation loss not finite while the training loss is (evaluation-mode statistics, "
        "not training divergence)",
        f"val_loss is {_num(row['val_loss'])} at epoch {row.get('epoch')}, the first such epoch, while train_loss "
        f"is {_num(row['train_loss'])} there and every training loss recorded is finite",
        "Look at what the model reads only in eval mode: inf or nan in the BatchNorm layers' running_mean and "
        f"running_var (buffers in {CHECKPOINT_LAST}). Where those statistics overflow, a norm without running "
        "statistics (model.norm=gn) or a larger BatchNorm eps (model.norm_options) avoids it; lowering optim.lr "
        "helps only if the activations that feed them grow because of it.")


def _climbing(metrics: list[dict], steps: list[dict], t: Thresholds, title: str, remedy: str,
              num_classes: int | None = None) -> Finding | None:
    """(b) of :func:`_diverged`: a finite loss that climbs above ``diverge_factor`` x its start, an explosion
    under way that has not reached inf yet (a FAIL). A climb the run came back from is a spike (None) when the
    loss ends far below ln C; without ``num_classes``, ending within ``diverge_factor`` of ln C for some class
    count (C >= 2) gives the WARN SPIKE_UNRESOLVED instead, naming the class counts that would make it a FAIL."""
    if steps:
        xs, losses, lrs = _steps_arrays(steps)
        window, unit = min(t.smoothing_steps, len(losses)), "step"
    else:
        epochs, losses = _column(metrics, "train_loss")
        xs = np.asarray(epochs)
        lrs = np.asarray([row.get("lr") if row.get("lr") is not None else math.nan
                          for row in metrics if row.get("train_loss") is not None], dtype=np.float64)
        window, unit = 1, "epoch"  # an epoch's loss is already a mean over its steps
    if losses.size < 2 or losses[0] <= 0:
        return None
    start, first_x = losses[0], xs[0]
    smoothed = moving_average(losses, window)[window - 1:]  # from the first full window on
    xs, lrs = xs[window - 1:], lrs[window - 1:]
    above = np.flatnonzero(smoothed > t.diverge_factor * start)
    if not above.size:
        return None
    rise = above[0]
    # Still climbing, or stuck high, at the end: the rise persisted. Against the lowest loss before it, so a
    # loss that fell, exploded and settled at ln C (a dead network) stays a FAIL though it ends near its start.
    lowest = min(start, float(smoothed[:rise].min())) if rise else start
    # Undone, but only a spike if the run ends below a uniform guess's loss: a fresh network (start about ln C)
    # that explodes and collapses to a constant output ends level with its start, and learned nothing.
    near_chance = (num_classes is not None and num_classes > 1
                   and smoothed[-1] * t.diverge_factor > math.log(num_classes))
    undone = smoothed[-1] <= t.diverge_factor * lowest
    mean_of = f" ({window}-{unit} mean)" if window > 1 else ""
    evidence = (f"loss {_num(start)} at {unit} {first_x} rose to {_num(smoothed[rise])}{mean_of} at {unit} "
                f"{xs[rise]} ({loss_text(smoothed[rise] / start, 2)}x its start; lr {_num(lrs[rise])})")  # 1.62x, 5.41e+18x
    if not undone or near_chance:
        return Finding("diverged", FAIL, title, evidence, remedy)
    # Without the class count, the end is a constant guess's loss for every C with ln C < diverge_factor x the
    # end; none such when even two classes' ln 2 is beyond it (a fine-tune's spike that ends low): a spike.
    ceiling = t.diverge_factor * float(smoothed[-1])
    if num_classes is not None or ceiling <= math.log(2):
        return None
    most = f"up to {math.ceil(math.exp(ceiling)) - 1:,}" if ceiling < math.log(1e9) else "any number of"
    evidence += (f", then came back to {_num(smoothed[-1])}{mean_of} at {unit} {xs[-1]}; that is within "
                 f"{t.diverge_factor:g}x of ln C, a constant guess's loss, for {most} classes, and the class count "
                 "is not known here")
    return Finding(SPIKE_UNRESOLVED, WARN, "Loss spiked and came back, class count unknown: a recovery cannot be "
                   "told from a collapse to a constant guess", evidence,
                   "Give the class count (diagnose(..., num_classes=C); `cnnlab diagnose RUN` reads it from the "
                   "run's checkpoint). A loss that ends near ln C learned nothing: treat it as diverged (lower "
                   "optim.lr by 10x or add schedule.warmup_epochs); one far below ln C recovered from a spike.")


def _flat_start_window(steps: list[dict], t: Thresholds) -> int:
    """How many steps make "the start" that flat_start reads."""
    return math.ceil(t.flat_start_fraction * len(steps))


def _clear_rise(losses: np.ndarray, t: Thresholds) -> float | None:
    """The rise over ``losses`` (the start window) of a straight line fitted to log(loss), as a fraction, when it
    is at least ``rising_start_min_rise`` and its slope ``rising_start_sigmas`` standard errors from zero; None
    otherwise. Two 10-step means of a flat, noisy loss differ by a few percent either way: a rise must stand
    out from that noise to be read as the rate's doing."""
    values = np.log(np.clip(losses, 1e-12, None))
    steps = np.arange(len(values), dtype=np.float64)
    if len(values) < 3:
        return None
    slope, intercept = np.polyfit(steps, values, 1)
    residuals = values - (slope * steps + intercept)
    spread = np.sqrt(np.sum(residuals ** 2) / (len(values) - 2) / np.sum((steps - steps.mean()) ** 2))
    rise = math.expm1(slope * (len(values) - 1))
    if rise < t.rising_start_min_rise or (spread > 0 and slope / spread < t.rising_start_sigmas):
        return None
    return rise


def _flat_start(steps: list[dict], num_classes: int | None, t: Thresholds, aux_heads: float = 0.0) -> Finding | None:
    """WARN when, over the first ``flat_start_fraction`` of the steps (skipped when that is fewer than
    ``flat_start_min_steps`` steps), the mean loss of the window's last ``smoothing_steps`` steps is less
    than ``flat_start_min_drop`` (relative) below the mean of its first ``smoothing_steps`` steps, and less than as
    much above it; RISING_START instead when the window's loss clearly climbs (:func:`_clear_rise`). With ``num_classes`` the evidence
    compares the start loss with ln(C), the loss of a uniform guess (times 1 + ``aux_heads``)."""
    length = _flat_start_window(steps, t)
    if length < t.flat_start_min_steps:
        return None
    numbers, losses, lrs = _steps_arrays(steps[:length])
    window = min(t.smoothing_steps, length // 2)  # the start and end means must not overlap
    smoothed = moving_average(losses, window)
    start, end = smoothed[window - 1], smoothed[-1]
    if start <= 0:
        return None
    drop = (start - end) / start
    if drop >= t.flat_start_min_drop:
        return None
    direction = "lower" if drop >= 0 else "higher"
    # a warmup ramps the lr inside the window: show the range so the reader sees why it stayed flat
    lr_text = _num(lrs[-1]) if lrs[0] == lrs[-1] else f"{_num(lrs[0])} -> {_num(lrs[-1])}"
    evidence = (f"mean loss {_num(start)} over steps {numbers[0]}-{numbers[window - 1]}, {_num(end)} over steps "
                f"{numbers[-window]}-{numbers[-1]}: {abs(drop):.1%} {direction} across the first "
                f"{t.flat_start_fraction:.0%} of steps (lr {lr_text})")
    far_above = None  # whether the start loss is far above a uniform guess's (None: the class count is unknown)
    if num_classes is not None and num_classes > 1:
        uniform = math.log(num_classes) * (1 + aux_heads)  # the auxiliary classifiers' losses guess too
        chance = (f"ln({num_classes}) = {_num(uniform)}" if not aux_heads else
                  f"ln({num_classes}) x {1 + aux_heads:g} = {_num(uniform)} (the auxiliary classifiers' losses added)")
        evidence += f"; start loss {_num(start)} vs {chance} for a uniform guess"
        far_above = start > t.init_loss_ratio * uniform
    rise = _clear_rise(losses, t)
    if rise is not None:
        # Not flat: the loss climbs from the first steps on (short of diverged's factor). A raised rate would
        # make it worse; the lecture reads a loss that goes up early as a learning rate too high.
        evidence += f"; a fitted trend rises {rise:.1%} over the window, {t.rising_start_sigmas:g}+ times its noise"
        remedy = "Lower optim.lr (an LR range test finds a good one), or ramp it up with schedule.warmup_epochs."
        if far_above:
            remedy = ("The start loss is far above ln(C): check the weight init (smaller last layer) and the input "
                      "normalisation first; then lower optim.lr (an LR range test finds a good one), or ramp it up "
                      "with schedule.warmup_epochs.")
        return Finding(RISING_START, WARN, "Loss rising at the start (learning rate too high)", evidence, remedy)
    if -drop >= t.flat_start_min_drop:
        # risen as much as a flat start may fall, but not clearly (batch noise): neither flat nor a clear rise, and
        # "raise optim.lr" would be the wrong advice for a loss that goes up
        return None
    if far_above is None:
        remedy = ("Raise optim.lr (an LR range test finds a good one); if the start loss is far above ln(C), "
                  "fix the initialisation first.")
    elif far_above:
        remedy = ("The start loss is far above ln(C): the initialisation is overconfident; check the "
                  "weight init (smaller last layer) and the input normalisation.")
    else:
        remedy = "The start loss is near ln(C), so the init is fine: raise optim.lr (an LR range test finds one)."
    return Finding("flat_start", WARN, "Loss flat at the start (bad initialisation or learning rate too low)",
                   evidence, remedy)


def _overfitting(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN when (a) the last epoch's train_acc - val_acc > ``overfit_gap``, or (b) the last val_loss is
    >= (1 + ``overfit_val_rise``) x its minimum, that minimum lies at least ``overfit_min_epochs_since_best``
    epochs before the last, and train_loss at the last epoch is below train_loss at the minimum's epoch."""
    parts = []
    gap_fired = False
    last = metrics[-1] if metrics else {}
    if last.get("train_acc") is not None and last.get("val_acc") is not None:
        gap = last["train_acc"] - last["val_acc"]
        # in points rounded to 1e-9: 0.75 - 0.70 is 0.05000000000000004, no more than 5 points
        if round(gap * 100, 9) > round(t.overfit_gap * 100, 9):
            parts.append(f"train acc {last['train_acc']:.1%} vs val acc {last['val_acc']:.1%} at epoch "
                         f"{last['epoch']} (gap {gap * 100:.1f} points)")
            gap_fired = True
    epochs, val_loss = _column(metrics, "val_loss")
    if val_loss.size:
        best = int(np.argmin(val_loss))
        train_at = {row["epoch"]: row.get("train_loss") for row in metrics}
        train_best, train_end = train_at.get(epochs[best]), train_at.get(epochs[-1])
        if (val_loss[-1] >= (1 + t.overfit_val_rise) * val_loss[best]
                and len(val_loss) - 1 - best >= t.overfit_min_epochs_since_best
                and train_best is not None and train_end is not None and train_end < train_best):
            rise = val_loss[-1] / val_loss[best] - 1
            parts.append(f"val loss {_num(val_loss[best])} at epoch {epochs[best]} rose to {_num(val_loss[-1])} "
                         f"at epoch {epochs[-1]} (+{rise:.0%}) while train loss fell "
                         f"{_num(train_best)} -> {_num(train_end)}")
    if not parts:
        return None
    # the title names what fired: a rising val loss alone is not "train fits far better than val"
    title = ("Overfitting (train fits far better than val)" if gap_fired else
             "Overfitting (val loss rising while train loss falls)")
    return Finding("overfitting", WARN, title, "; ".join(parts),
                   "Add regularisation (optim.weight_decay, model.drop_rate, a stronger aug.preset) or more "
                   f"data; use {CHECKPOINT_BEST}, the best epoch's weights.")


def _underfitting(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN when, at the last epoch, |train_acc - val_acc| < ``underfit_gap`` and train_acc <
    ``underfit_train_acc`` (a poor score for the task: adjust the threshold to the task's difficulty)."""
    last = metrics[-1] if metrics else {}
    if last.get("train_acc") is None or last.get("val_acc") is None:
        return None
    gap = last["train_acc"] - last["val_acc"]
    if abs(gap) >= t.underfit_gap or last["train_acc"] >= t.underfit_train_acc:
        return None
    evidence = (f"train acc {last['train_acc']:.1%} vs val acc {last['val_acc']:.1%} at epoch {last['epoch']} "
                f"(gap {gap * 100:.1f} points), train acc below {t.underfit_train_acc:.0%}")
    return Finding("underfitting", WARN, "Underfitting (the model cannot fit even the training data)", evidence,
                   "Use a bigger model or train longer (train.epochs) and ease off regularisation; if this "
                   "accuracy is good for your task, lower Thresholds.underfit_train_acc.")


def _still_improving(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN when there are at least ``improving_min_epochs`` val_acc values, the last one is the best (an earlier
    epoch may equal it), above every other epoch of the end (a curve level at its top over its last epochs has
    levelled off, whatever it rose from), and over the end, the last ``improving_tail_fraction`` of the epochs (at
    least ``improving_tail_min_epochs``), val_acc rose by more than ``improving_min_gain``."""
    epochs, val_acc = _column(metrics, "val_acc")
    if val_acc.size < t.improving_min_epochs:
        return None
    tail = max(t.improving_tail_min_epochs, round(t.improving_tail_fraction * val_acc.size))
    tail = min(tail, val_acc.size - 1)  # the gain is measured from the epoch before the tail
    gain = val_acc[-1] - val_acc[-1 - tail]
    level = val_acc[-1] <= val_acc[-1 - tail:-1].max()  # no higher than an epoch of the end before it
    if val_acc[-1] < val_acc.max() or level or gain <= t.improving_min_gain:
        return None
    evidence = (f"val acc {val_acc[-1 - tail]:.1%} at epoch {epochs[-1 - tail]} -> {val_acc[-1]:.1%} at epoch "
                f"{epochs[-1]} (+{gain * 100:.1f} points over the last {tail} epochs), best at the last epoch")
    return Finding("still_improving", WARN, "Still improving (training stopped too early)", evidence,
                   "Train longer (raise train.epochs): the val accuracy has not levelled off.")


def _lr_rows(metrics: list[dict]) -> list[dict]:
    """The metrics rows with both a train_loss and an lr: what the learning-rate rules read."""
    return [row for row in metrics if row.get("train_loss") is not None and row.get("lr") is not None]


def _constant_lr(rows: list[dict], t: Thresholds) -> bool:
    """Whether the rows' lrs (all positive) lie within ``flat_lr_tolerance`` of each other."""
    lrs = [row["lr"] for row in rows]
    return min(lrs) > 0 and max(lrs) <= (1 + t.flat_lr_tolerance) * min(lrs)


def _gains(rows: list[dict]) -> list[float]:
    """For each row, how far its train_loss lies below the lowest of the rows before it, as a fraction
    of that lowest loss: negative when it is higher, nan for the first row (nothing before it).

    Measured against the best so far, as torch's ReduceLROnPlateau does, so that a noisy epoch that
    only climbs back from a rise does not count as progress. On a loss that falls every epoch, this
    is the fall from the epoch before."""
    gains, best = [math.nan], math.inf
    for before, row in itertools.pairwise(rows):
        best = min(best, before["train_loss"])
        gains.append((best - row["train_loss"]) / best if best > 0 else 0.0)  # a zero loss has nothing to lose
    return gains


@dataclass
class _StepDecay:
    """A step decay in the metrics rows, and the train losses around it (late_decay and early_decay)."""

    before: dict  # the last epoch at the higher lr
    after: dict  # the first epoch trained at the lower lr
    window: list[dict]  # the decay_plateau_epochs epochs before the decay, and the one before them
    window_gains: list[float]  # the gain (:func:`_gains`) of each window row after the first: one per epoch
    gain: float  # the gain of ``after``: what the first epoch at the lower lr brought


def _step_decays(rows: list[dict], t: Thresholds) -> list[_StepDecay]:
    """Every epoch of ``rows`` (:func:`_lr_rows`) whose lr is at least ``decay_factor`` x lower than the
    epoch before's, after a constant lr (:func:`_constant_lr`) over the ``decay_plateau_epochs`` + 1
    epochs before it. Metrics' lr is the lr the epoch ended with, so that epoch is the first trained at
    the lower rate. A cosine never holds its lr, so its steep last epochs are not step decays."""
    gains = _gains(rows)
    decays = []
    for i in range(t.decay_plateau_epochs + 1, len(rows)):
        before, after = rows[i - 1], rows[i]
        window = rows[i - 1 - t.decay_plateau_epochs:i]
        if after["lr"] * t.decay_factor > before["lr"] or not _constant_lr(window, t):
            continue  # not a step decay
        decays.append(_StepDecay(before, after, window, gains[i - t.decay_plateau_epochs:i], gains[i]))
    return decays


def _plateau_no_decay(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN when each of the last ``decay_plateau_epochs`` epochs or more lowered the best train_loss so
    far by less than ``decay_plateau_change`` (relative; :func:`_gains`), and the lr over those epochs
    and the one before them stayed within ``flat_lr_tolerance`` of itself: the loss stopped falling and
    nothing lowered the rate.

    Only the end of the run is read: a plateau that a later decay broke is late_decay's, and an lr
    decayed during the plateau (a cosine, a step inside it) means a lower rate was already tried."""
    rows = _lr_rows(metrics)
    gains = _gains(rows)
    start = len(rows) - 1  # the plateau is rows[start:], grown backwards while it stays flat at one lr
    while start > 0 and gains[start] < t.decay_plateau_change and _constant_lr(rows[start - 1:], t):
        start -= 1
    flat_epochs = len(rows) - 1 - start
    if flat_epochs < t.decay_plateau_epochs or start == 0:
        # flat from the first epoch on: the loss never fell, and a lower rate is no cure for that (flat_start
        # and underfitting read such a run: an lr too low, or a bad initialisation)
        return None
    # rows[start] set the best loss the flat epochs measure against: it fell clearly (or it is the first)
    first, last = rows[start], rows[-1]
    low, high = min(row["lr"] for row in rows[start:]), max(row["lr"] for row in rows[start:])
    lr_text = f"at {_num(low)}" if low == high else f"within {_num(low)}-{_num(high)}"
    evidence = (f"train loss {_num(first['train_loss'])} at epoch {first['epoch']}, then under "
                f"{t.decay_plateau_change:.0%} below the best so far in each of the {flat_epochs} epochs since "
                f"({_num(last['train_loss'])} at epoch {last['epoch']}, the last) while lr stayed {lr_text}")
    return Finding("plateau_no_decay", WARN, "Loss plateaued at a constant learning rate (decay it)", evidence,
                   f"Decay the learning rate: schedule.name=step with epoch {first['epoch']} in "
                   "schedule.step_epochs (where the loss levelled off), or schedule.name=cosine.")


def _late_decay(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN for each step decay (:func:`_step_decays`) whose first epoch lowered the best train_loss so
    far by more than ``decay_min_improvement`` (relative; :func:`_gains`), when each of the
    ``decay_plateau_epochs`` epochs before it had lowered it by less than ``decay_plateau_change``.
    The mirror of :func:`_early_decay`."""
    parts = []
    for decay in _step_decays(_lr_rows(metrics), t):
        if max(decay.window_gains) >= t.decay_plateau_change or decay.gain <= t.decay_min_improvement:
            continue
        first, before, after = decay.window[0], decay.before, decay.after
        parts.append(f"train loss {_num(first['train_loss'])} -> {_num(before['train_loss'])} over epochs "
                     f"{first['epoch']}-{before['epoch']} (under {t.decay_plateau_change:.0%} per epoch), "
                     f"then {_num(after['train_loss'])} at epoch {after['epoch']} (-{decay.gain:.0%}) when lr "
                     f"fell {_num(before['lr'])} -> {_num(after['lr'])}")
    if not parts:
        return None
    return Finding("late_decay", WARN, "Learning-rate decay came late (loss plateaued before it)", "; ".join(parts),
                   "Decay earlier: move schedule.step_epochs to where the loss levels off, "
                   "or use schedule.name=cosine.")


def _early_decay(metrics: list[dict], t: Thresholds) -> Finding | None:
    """WARN for each step decay (:func:`_step_decays`) when each of the ``decay_plateau_epochs`` epochs
    before it had lowered the best train_loss so far by at least ``early_decay_min_fall`` (relative;
    :func:`_gains`): the rate was cut while it was still doing its work. The mirror of :func:`_late_decay`."""
    parts = []
    for decay in _step_decays(_lr_rows(metrics), t):
        slowest = min(decay.window_gains)  # the epoch before the decay that gained least
        if slowest < t.early_decay_min_fall:
            continue
        first, before, after = decay.window[0], decay.before, decay.after
        parts.append(f"train loss {_num(first['train_loss'])} -> {_num(before['train_loss'])} over epochs "
                     f"{first['epoch']}-{before['epoch']}, still falling {slowest:.1%} per epoch or more "
                     f"(over {t.early_decay_min_fall:.0%}), when lr fell {_num(before['lr'])} -> "
                     f"{_num(after['lr'])} at epoch {after['epoch']}")
    if not parts:
        return None
    return Finding("early_decay", WARN, "Learning-rate decay came early (loss was still falling)", "; ".join(parts),
                   "Decay later: move schedule.step_epochs later (to where the loss levels off), training "
                   "longer (train.epochs) if need be.")


def _noisy_loss(steps: list[dict], t: Thresholds) -> Finding | None:
    """WARN when, over the second half of the steps (at least ``noise_min_steps`` steps in all), the std
    of (loss - its ``smoothing_steps``-step trailing mean) exceeds ``noise_max`` times the larger of the
    trailing mean's level there and the range the trailing mean covers over the whole run.

    The range matters at the end of a good run: a loss that fell from 2.3 to 0.1 scatters by far more
    than 25% of 0.1 at batch 32, yet the curve's trend (2.3 -> 0.1) is plain to see."""
    if len(steps) < t.noise_min_steps:
        return None
    numbers, losses, _ = _steps_arrays(steps)
    smoothed = moving_average(losses, t.smoothing_steps)
    half = len(losses) // 2
    level = smoothed[half:].mean()
    if level <= 0:
        return None
    scatter = float(np.std(losses[half:] - smoothed[half:]))
    span = float(np.max(smoothed) - np.min(smoothed))  # how far the trend moved: the plot's scale
    ratio = scatter / max(level, span)
    if ratio <= t.noise_max:
        return None
    evidence = (f"per-step loss scatters {_num(scatter)} (std) around its {t.smoothing_steps}-step mean of "
                f"{_num(level)} over steps {numbers[half]}-{numbers[-1]}: {ratio:.0%} of the larger of that mean "
                f"and the {_num(span)} range the mean covered (limit {t.noise_max:.0%})")
    return Finding("noisy_loss", WARN, "Noisy loss (batch too small or learning rate high)", evidence,
                   f"Read the trend from the moving average ({CURVES_FILE}); for a steadier loss raise "
                   "train.batch_size or lower optim.lr.")


def _not_checked(metrics: list[dict], steps: list[dict], t: Thresholds) -> Finding | None:
    """A NOTE naming each rule the run was too short for (each rule skips such input and finds nothing),
    so that "no problems found" is not read as a pass of rules that never looked. Only for a run with a
    finished epoch: without one, the NO_EPOCHS note of :func:`diagnose_run` already says there is no verdict."""
    if not metrics:
        return None
    missing = []
    if not steps:
        missing.append(f"flat_start, rising_start and noisy_loss (they read {STEPS_FILE}, which holds no step)")
    else:
        window = _flat_start_window(steps, t)
        if window < t.flat_start_min_steps:
            missing.append(f"flat_start and rising_start (they read the first {t.flat_start_fraction:.0%} of the "
                           f"steps, {window} of this run's {len(steps)}, and need {t.flat_start_min_steps})")
        if len(steps) < t.noise_min_steps:
            missing.append(f"noisy_loss (needs {t.noise_min_steps} steps, the run has {len(steps)})")
    last = metrics[-1]
    accuracies = [key for key in ("train_acc", "val_acc") if last.get(key) is None]
    if accuracies:  # a metrics.csv without them (written by another tool, or cut by hand)
        missing.append(f"underfitting and overfitting's accuracy gap (they read train_acc and val_acc, and the last "
                       f"epoch has no {' or '.join(accuracies)})")
    val_losses = _column(metrics, "val_loss")[1].size
    if val_losses < t.overfit_min_epochs_since_best + 1:
        missing.append(f"overfitting's val-loss rise (needs {t.overfit_min_epochs_since_best + 1} epochs with a val "
                       f"loss, the run has {val_losses})")
    val_epochs = _column(metrics, "val_acc")[1].size
    if val_epochs < t.improving_min_epochs:
        missing.append(f"still_improving (needs {t.improving_min_epochs} epochs with a val accuracy, the run has "
                       f"{val_epochs})")
    lr_epochs = len(_lr_rows(metrics))
    needed = t.decay_plateau_epochs + 2
    loss_epochs = _column(metrics, "train_loss")[1].size
    if lr_epochs < needed and loss_epochs >= needed:
        # long enough, but the lr column is empty or missing: counting its rows would call a 10-epoch run 0 long
        column = (f"the lr column of {METRICS_FILE} is missing or empty" if lr_epochs == 0 else
                  f"the lr column of {METRICS_FILE} has a value in only {lr_epochs} of the {loss_epochs} epochs")
        missing.append(f"plateau_no_decay, late_decay and early_decay (they read the lr of {needed} epochs or more: "
                       f"{column})")
    else:
        # a plateau: that many flat epochs after the one they compare with, which must itself have fallen from the
        # first
        if lr_epochs < needed:
            missing.append(f"plateau_no_decay (needs {needed} epochs, the run has {lr_epochs})")
        if lr_epochs < needed:  # a step decay: a held lr over that many epochs, then the cut
            missing.append(f"late_decay and early_decay (need {needed} epochs, the run has {lr_epochs})")
    if not missing:
        return None
    return Finding(NOT_CHECKED, NOTE, "Rules not checked: the run is too short for them, or lacks their columns",
                   "; ".join(missing),
                   "Nothing to fix in a short run (a search trial, a quick test); its other rules still read the "
                   "curves. Train longer for these to read them too (a rule that lacks a column needs a "
                   f"{METRICS_FILE} that records it, as cnnlab train writes).")


# ---------------------------------------------------------------------------------------------
# public API


def diagnose(metrics: list[dict], steps: list[dict], num_classes: int | None = None,
             thresholds: Thresholds = DEFAULT_THRESHOLDS, aux_heads: float = 0.0) -> list[Finding]:
    """The findings for a run's metrics rows (per epoch) and step rows (per step); [] for a healthy run, and
    CnnlabError when both are empty.

    A run too short for some rules gets a NOTE (rule NOT_CHECKED) naming them, first.

    ``num_classes``: the run's class count C. Give it whenever it is known (:func:`run_num_classes` reads it
    from a run folder; :func:`diagnose_run` does so). It lets the flat-start rule compare the start loss with
    ln(C), and the diverged rule tell a spike the run undid from an explosion that left a constant guess (a
    loss near ln C, where a fresh network also starts). Without it, a loss that climbed past
    ``thresholds.diverge_factor`` (1.5) x its start and came back to within that factor of ln C for some C >= 2
    is not passed: it gets the WARN SPIKE_UNRESOLVED, saying that a recovery cannot be told from a collapse,
    and for which class counts it would be the latter.

    ``aux_heads``: train.aux_weight x the auxiliary classifiers whose losses the training loss adds (GoogLeNet's
    two at 0.3: 0.6; :func:`run_aux_heads`), so that a start loss of (1 + that) x ln C reads as chance, not as an
    overconfident initialisation.
    """
    metrics, steps = list(metrics), list(steps)
    if not metrics and not steps:  # [] is a healthy run's answer: a run with no rows is not one
        raise CnnlabError("diagnose was given no rows: there is no training to judge. Give the run's metrics rows "
                          "(one per epoch) and step rows, or call diagnose_run(RUN_FOLDER), which reads them.")
    broken = _diverged(metrics, steps, thresholds, num_classes)  # diverged, val_not_finite, or spike_unresolved
    if broken is not None and broken.verdict == FAIL:
        return [broken]  # the other rules would read curves a non-finite or exploding loss has ruined
    findings = [
        broken,  # None, or the WARN of a spike read without the class count
        _flat_start(steps, num_classes, thresholds, aux_heads),
        _overfitting(metrics, thresholds),
        _underfitting(metrics, thresholds),
        _still_improving(metrics, thresholds),
        _plateau_no_decay(metrics, thresholds),
        _late_decay(metrics, thresholds),
        _early_decay(metrics, thresholds),
        _noisy_loss(steps, thresholds),
    ]
    return [finding for finding in [_not_checked(metrics, steps, thresholds), *findings] if finding is not None]


def run_num_classes(run_dir: str | Path) -> int | None:
    """The class count a run folder records, for :func:`diagnose`'s ``num_classes``: from its last checkpoint,
    else its best one (the last may be gone), or None when neither holds one to read."""
    folder = RunFolder(run_dir)
    for path in (folder.last, folder.best):
        if not path.is_file():
            continue
        try:
            value = read_checkpoint_meta(path).get(MetaKey.NUM_CLASSES)
        except CnnlabError:
            continue  # a damaged checkpoint only costs the ln(C) comparisons; the curves are still readable
        if value is not None:
            return int(value)
    return None


def run_aux_heads(run_dir: str | Path) -> float:
    """train.aux_weight x the auxiliary classifiers of a run's model (GoogLeNet's ``aux_heads``), whose losses its
    training loss adds, for :func:`diagnose`'s ``aux_heads``; 0 when the run's config.yaml cannot be read."""
    import torch

    from cnnlab.run import build_model

    try:
        config = RunFolder(run_dir).read_config()
        if not config.train.aux_weight:
            return 0.0
        with torch.device("meta"):  # the structure only: no weights are drawn
            model = build_model(config.model, num_classes=2, in_chans=config.data.channels or 3)
    except CnnlabError:
        return 0.0  # the comparison with ln C then leaves the auxiliary terms out, as for a run without them
    return config.train.aux_weight * len(getattr(model, "aux_heads", ()))


def diagnose_run(run_dir: str | Path, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 run_state: Optional[tuple[str, str]] = None) -> list[Finding]:
    """:func:`diagnose` on a run folder's metrics.csv and steps.csv.

    ``run_state``: (state, one-sentence note) of the run as :func:`cnnlab.report.runs.read_run` reads them
    (`cnnlab diagnose` passes them): a run that has not trained all its epochs (interrupted, stopped, running) gets
    a NOTE (rule UNFINISHED) with that note, and its still_improving points to the epochs it has to go.

    Either file may be missing or hold no rows (a run stopped in its first epoch has steps but no
    epoch), but not both: a verdict needs something to read. With no epoch, only the step rules run and
    a NOTE finding (rule NO_EPOCHS) says so; without another finding there is no verdict yet. A last
    line of metrics.csv or steps.csv cut short (a crash, a copy stopped part-way) is left out and reported as a NOTE finding. NOTEs come first. Raises CnnlabError, naming
    the path and the problem, when ``run_dir`` does not exist or is a file, when neither file holds a
    row, and when a file is not what cnnlab writes (binary, another header, a line that is not numbers).
    """
    from cnnlab.errors import check_path_argument

    run_dir = check_path_argument(run_dir, "run_dir", "a run folder")
    point = "Point at the folder a `cnnlab train` run wrote (its --out)."
    if not run_dir.exists():
        raise CnnlabError(f"'{display_name(str(run_dir))}' does not exist, so it is not a run folder. {point}")
    if not run_dir.is_dir():
        hint = (f"This is one of a run's files: diagnose its folder, '{display_name(str(run_dir.parent))}'."
                if run_dir.name in (METRICS_FILE, STEPS_FILE) else point)
        raise CnnlabError(f"'{display_name(str(run_dir))}' is a file, not a run folder: `cnnlab diagnose` reads the {METRICS_FILE} "
                          f"and {STEPS_FILE} inside a run folder. {hint}")
    folder = RunFolder(run_dir)
    metrics_path, steps_path = folder.metrics, folder.steps
    if not metrics_path.exists() and not steps_path.exists():
        holder = folder.starting_holder()
        if holder is not None:  # a run starting: it holds its folder before its first step is logged
            raise CnnlabError(f"'{display_name(str(run_dir))}' is the folder of a run that is starting ({holder}): "
                              f"it has no {METRICS_FILE} or {STEPS_FILE} yet. Diagnose it once it has trained a few "
                              "steps.")
        finished = _recorded_epochs(folder)
        if folder.is_run() and finished:  # a run that trained: its files were deleted since
            raise CnnlabError(f"'{display_name(str(run_dir))}' is a run folder whose {METRICS_FILE} and {STEPS_FILE} "
                              f"are gone, though its {STATUS_FILE} records {counted(finished, 'finished epoch')}: "
                              f"there is nothing to diagnose. Restore the two files from a copy.")
        if folder.is_run() and folder.status.is_file():  # a run killed (SIGKILL, out of memory) before its first step
            raise CnnlabError(f"'{display_name(str(run_dir))}' is a run folder with neither {METRICS_FILE} nor "
                              f"{STEPS_FILE} (a run stopped before it logged its first step): there is nothing to "
                              "diagnose. A verdict needs at least one recorded step or epoch; train (or resume) the "
                              "run first.")
        raise CnnlabError(f"'{display_name(str(run_dir))}' is not a run folder: it has neither "
                          f"{METRICS_FILE} nor {STEPS_FILE}. {point}")
    for path in (metrics_path, steps_path):
        if path.exists() and not path.is_file():
            raise CnnlabError(f"'{display_name(str(path))}' is not a file, so the run's curves cannot be read from it. {point}")
    metrics_skipped: list[tuple[str, str]] = []
    steps_skipped: list[tuple[str, str]] = []
    # status.json before metrics.csv: a live run writes an epoch's row first, then its status, so read in this
    # order the status never counts an epoch the rows lack unless they were cut
    finished = _recorded_epochs(folder)
    metrics, steps = read_metrics(metrics_path, metrics_skipped), read_steps(steps_path, steps_skipped)
    if not metrics and not steps:
        raise CnnlabError(f"'{display_name(str(metrics_path))}' {_no_rows(metrics_path, metrics_skipped)} and "
                          f"'{display_name(str(steps_path))}' {_no_rows(steps_path, steps_skipped)}: there is nothing to "
                          f"diagnose in '{display_name(str(run_dir))}'. A verdict needs at least one recorded step "
                          "or epoch; train (or resume) the run first.")
    last = metrics[-1].get("epoch") if metrics else None
    # rows cut from the end since they were written (the case of none left is below): the cut line, if any, is
    # named in this note, not in an "input" note that would call it a run stopped while writing it
    cut = bool(metrics) and isinstance(last, int) and finished > last
    notes = [] if not cut else [Finding(
        CUT_EPOCHS, NOTE, f"{METRICS_FILE} lacks some of the run's finished epochs",
        f"its last complete row is epoch {last}"
        + "".join(f" ({where} cut short)" for where, _ in metrics_skipped)
        + f", but {STATUS_FILE} records {counted(finished, 'finished epoch')}; the rules read the first {last} only",
        f"The file was cut since those epochs were written: restore {METRICS_FILE} from a copy for a verdict on the "
        "whole run.")]
    notes += [Finding("input", NOTE, f"{counted(len(skipped), 'line')} of {name} left out",
                     "; ".join(f"{where} {why}" for where, why in skipped),
                     f"Nothing to fix: {counted(len(rows), kind + ' row')} {'was' if len(rows) == 1 else 'were'} "
                     "read; a run stopped mid-write leaves its last line unfinished.")
             for name, skipped, rows, kind in ((METRICS_FILE, metrics_skipped, metrics, "epoch"),
                                               (STEPS_FILE, steps_skipped, steps, "step"))
              if skipped and not (cut and name == METRICS_FILE)]
    findings = diagnose(metrics, steps, run_num_classes(run_dir), thresholds, run_aux_heads(run_dir))
    if not metrics:
        # Most rules read epochs (train/val accuracy, the lr an epoch ended with): with none, only the step
        # rules (diverged, flat_start, noisy_loss) had anything to read. A run whose loss diverged in its first
        # epoch has nothing to resume: the remedy is the diverged finding's, then a new run.
        diverged = any(finding.rule == "diverged" for finding in findings)
        if finished and not diverged:  # the run had finished epochs: its metrics.csv was emptied or cut since
            notes.append(Finding(LOST_EPOCHS, NOTE, f"{METRICS_FILE} holds none of the run's finished epochs",
                                 f"'{display_name(str(metrics_path))}' {_no_rows(metrics_path)}, but {STATUS_FILE} "
                                 f"records {counted(finished, 'finished epoch')}; only the step rules could read "
                                 "anything",
                                 f"The file was emptied or cut since, and a resume cannot train finished epochs "
                                 f"again: restore {METRICS_FILE} from a copy, or train the run again."))
        else:
            notes.append(Finding(NO_EPOCHS, NOTE, "No finished epoch yet",
                                 f"'{display_name(str(metrics_path))}' {_no_rows(metrics_path)}; "
                                 f"{counted(len(steps), 'step')} {'was' if len(steps) == 1 else 'were'} recorded in "
                                 f"{STEPS_FILE}, so only the step rules could read anything",
                                 "The loss diverged before the first epoch ended: apply the diverged finding's remedy "
                                 "and train the run again." if diverged else
                                 "Train (or resume) the run past its first epoch, then diagnose it again."))
    unfinished = _unfinished(run_state) if metrics else None
    if unfinished is not None:
        notes.append(unfinished)
        # "Train longer (raise train.epochs)" would send the user to a new run, when this one has epochs to go
        findings = [replace(finding, remedy=f"Let the run train the rest of its epochs first ({NOTE} {UNFINISHED}"
                                            "): its val accuracy may level off there.")
                    if finding.rule == "still_improving" else finding for finding in findings]
    return notes + findings


def _unfinished(run_state: Optional[tuple[str, str]]) -> Finding | None:
    """A NOTE when the run's state (``run_state``: diagnose_run's) says it stopped before its last epoch (a Ctrl-C, a
    killed process) or is still training: the curves end there, and the rules read a run cut short. Its evidence is
    the state's note ("interrupted (Ctrl-C) after 8 of 40 epochs; `cnnlab train --resume RUN` continues it."). None
    for a finished run, and where the state is not known."""
    if run_state is None or run_state[0] not in UNFINISHED_STATES:
        return None
    state, note = run_state
    going = state == "running"
    return Finding(UNFINISHED, NOTE, "The run is still training" if going else "The run stopped before its last epoch",
                   note.rstrip("."),
                   "Its curves end at its last finished epoch: diagnose it again once it has finished." if going else
                   "Its curves end where it stopped: diagnose it again once it has trained all its epochs.")


def _recorded_epochs(folder: RunFolder) -> int:
    """The epochs the run's status.json records as finished; 0 where it records none or cannot be read."""
    epoch = folder.recorded_status().get("epoch")  # {} where it is missing, not JSON, or not a mapping
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else 0


def _no_rows(path: Path, skipped: list[tuple[str, str]] = ()) -> str:
    """Why a run file gave no rows: it is missing, empty, holds only its header or a line cut short."""
    if not path.exists():
        return "does not exist"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    if skipped:
        return "holds no complete row (" + "; ".join(f"{where} {why}" for where, why in skipped) + ")"
    return "holds no rows (only its header)"


def findings_text(findings: list[Finding]) -> str:
    """Plain text, one block per finding (``WARN rule: title`` then evidence and remedy, indented).

    NOTE findings (about the input) come first; with nothing else, the text ends by saying the curves
    show no problem (by the rules that could read them, after a NOT_CHECKED note; the curves so far of an
    UNFINISHED run, the epochs left after CUT_EPOCHS), or, when no epoch has finished (a NO_EPOCHS note), that
    there is nothing to diagnose yet.
    """
    blocks = [f"{f.verdict} {f.rule}: {f.title}\n  evidence: {f.evidence}\n  remedy: {f.remedy}" for f in findings]
    if all(f.verdict == NOTE for f in findings):
        if any(f.rule == NO_EPOCHS for f in findings):
            blocks.append("Nothing to diagnose yet: no epoch has finished, so there is no verdict on the curves.")
        elif any(f.rule == LOST_EPOCHS for f in findings):
            blocks.append(f"No verdict on the curves: the run's finished epochs are not in its {METRICS_FILE}.")
        else:
            # the curves read are those of a cut metrics.csv, or of a run that has not trained all its epochs
            read = ("the epochs left in its metrics file" if any(f.rule == CUT_EPOCHS for f in findings) else
                    "the curves so far" if any(f.rule == UNFINISHED for f in findings) else "the curves")
            could = " by the rules that could read them" if any(f.rule == NOT_CHECKED for f in findings) else ""
            blocks.append(f"No problems found in {read}{could}.")
    return "\n".join(blocks)


def findings_json(findings: list[Finding]) -> list[dict]:
    """The findings as JSON-ready dicts with keys rule, verdict, title, evidence, remedy."""
    return [asdict(finding) for finding in findings]
