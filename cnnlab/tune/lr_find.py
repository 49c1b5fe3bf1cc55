"""The learning-rate range test (Smith 2017; fastai's ``lr_find``): the lecture's step 3.

Train the user's model from its initialisation for ``num_steps`` steps while the learning rate grows
geometrically from ``start_lr`` to ``end_lr``, recording the training loss of every step. Too low a
rate leaves the loss flat, a good one makes it fall, too high a one makes it explode. The sweep
stops early once the loss has clearly exploded, and :func:`suggest_lr` reads a rate off the curve.

The rule (:func:`suggest_lr`), stated in ``LrSweep.rule``:

1. Filter the raw per-step losses (:func:`filter_losses`): a running median over 5 steps, then a
   running mean over 7 steps, both centred. The median removes isolated spikes, which a single
   unlucky batch makes in either direction; the mean removes the remaining batch-to-batch noise.
   Both are centred, so the filtered minimum stays where the loss's minimum is. A trailing average
   lags: a bias-corrected EMA with beta 0.9 (fastai smooths with 0.98) trails by about 9 steps,
   0.7 decades of lr at 100 steps over 8 decades: on a synthetic curve with its minimum at lr 0.1
   it put the suggestion 1.7x too high, where the centred filters put it 1.3x low (the safe side).
2. Find the minimum of the filtered curve: ``min_loss_lr``.
3. Suggestion = ``min_loss_lr / 10``, one order of magnitude before the minimum, where the loss
   still falls fast and training is stable (Smith 2017; fastai's ``lr_min``). It is never below the
   lr where the filtered loss first fell 1% below its starting value: lower rates do not train.
4. When the filtered loss never falls 1% below its start, there is no suggestion (None).
5. When the filtered minimum lies in the sweep's last 5 steps (half of each window: where the centred filters
   reach past the last lr and read it only in part) and the filtered loss rose less than 1% after it, the rule
   says the loss was still falling at the last lr: the minimum may lie beyond end_lr.

A single raw spike cannot move the result. Rules without the median can be fooled: after one high
batch an EMA falls back steeply, which a steepest-slope rule (fastai's ``steep``) takes for learning,
and the minimum of the raw losses can be one lucky low batch deep in the explosion.

The loss at step i is computed before step i's update, so it shows the effect of the rates before
it (fastai's and Smith's convention). Nothing is saved: the model is trained only to be measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError, counted, is_number, shown_value, whole_number
from cnnlab.io import save_png
from cnnlab.limits import MAX_LR

MEDIAN_WINDOW = 5  # steps in the centred running median (odd); it ignores up to 2 spikes among the 5
MEAN_WINDOW = 7  # steps in the centred running mean that follows (odd)
MIN_DROP = 0.01  # the filtered loss must fall this share below its start to count as falling
DIVISOR = 10.0  # suggestion = lr at the filtered minimum / DIVISOR
NO_SUGGESTION = " No suggestion: "  # opens the sentence suggest_lr adds to the rule when there is none


@dataclass
class LrSweep:
    """One range test: the raw curve, the filtered curve the rule reads, and its result."""

    lrs: list[float]  # lr of each step (of optim.lr's parameters: the head's), geometric from start_lr
    losses: list[float]  # raw training loss of each step (the last may be non-finite)
    smoothed: list[float]  # filter_losses(losses): the curve the rule reads (NaN from a non-finite loss on)
    suggestion: float | None  # None when the filtered loss never went down (rule says so)
    min_loss_lr: float | None  # lr at the filtered minimum; None with no suggestion
    rule: str  # the rule in words, and why there is no suggestion when there is none
    stopped: str  # "reached end_lr ...", "diverged at lr ...", or "non-finite loss at lr ..."


# ---------------------------------------------------------------------------------------------
# the rule: pure functions of the recorded curve


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """``out[i] = median(values[i - h : i + h + 1])``, h = window // 2, the window clipped at the ends."""
    half = window // 2
    count = len(values)
    return np.array([np.median(values[max(0, i - half) : min(count, i + half + 1)]) for i in range(count)])


def _centred_mean(values: np.ndarray, window: int) -> np.ndarray:
    """``out[i] = mean(values[i - h : i + h + 1])``, h = window // 2, the window clipped at the ends.

    Not :func:`cnnlab.train.logging.moving_average`: that mean trails, so it lags (window - 1) / 2
    steps and would move the minimum to a higher lr.
    """
    half = window // 2
    count = len(values)
    totals = np.concatenate(([0.0], np.cumsum(values)))  # totals[i] = sum of the first i values
    index = np.arange(count)
    starts = np.maximum(index - half, 0)
    ends = np.minimum(index + half + 1, count)  # exclusive
    return (totals[ends] - totals[starts]) / (ends - starts)


def filter_losses(losses: Sequence[float], *, median_window: int = MEDIAN_WINDOW,
                  mean_window: int = MEAN_WINDOW) -> np.ndarray:
    """The curve the rule reads: a centred running median, then a centred running mean, (N,) -> (N,).

    Losses from the first non-finite one on are left out and come back as NaN: after a NaN or an
    infinity the network is broken, and one would poison every mean that included it.
    """
    for name, window in (("median_window", median_window), ("mean_window", mean_window)):
        if int(window) != window or window < 1 or window % 2 == 0:
            raise ValueError(f"{name} must be an odd whole number >= 1, got {window!r}.")
    values = np.asarray(losses, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    usable = len(values) if finite.all() else int(np.argmin(finite))  # index of the first non-finite loss
    if usable:
        out[:usable] = _centred_mean(_running_median(values[:usable], int(median_window)), int(mean_window))
    return out


# A raw loss this many times the filtered minimum, among the last steps the filters read only in part, is a
# blow-up: the sweep's end is then no sign that the loss was still falling.
BLOW_UP = 2.0
# A filtered curve whose lowest point is this many times the first step's raw loss (taken before any update) rose
# from the first lr on (a flat sweep's noise moves it by percents, not by half)
ROSE_AT_ONCE = 1.5


# Why there is no suggestion when step 1's loss (before any update) is not finite
INIT_BROKEN = ("step 1's loss was {loss}, and it comes from the starting weights, before any update: no learning rate "
               "is the cause. Check the weight init and the input normalisation, e.g. with `cnnlab check`.")


def _rule_text(median_window: int, mean_window: int, min_drop: float, divisor: float) -> str:
    return (f"Suggested lr = the lr at the minimum of the filtered loss (running median over {median_window} steps, "
            f"then running mean over {mean_window} steps, both centred, so single spikes are ignored) divided by "
            f"{divisor:g}, but not below the lr where the filtered loss first fell {min_drop:.0%} below its start.")


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], *, median_window: int = MEDIAN_WINDOW,
               mean_window: int = MEAN_WINDOW, min_drop: float = MIN_DROP, divisor: float = DIVISOR,
               reached_end: bool = True) -> tuple[float | None, float | None, list[float], str]:
    """Read a learning rate off a range test's curve (the rule is in the module docstring).

    Returns ``(suggestion, min_loss_lr, smoothed, rule)``: both lrs None when the filtered loss never
    fell ``min_drop`` below its start, ``smoothed`` the filtered losses (:func:`filter_losses`), and
    ``rule`` the rule in words, followed by the reason when there is no suggestion. ``reached_end``: the sweep
    ran to its end_lr (False: it stopped where the loss diverged), which decides the advice for a loss that
    never fell.
    """
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses: one loss per lr is needed.")
    if not 0 <= min_drop < 1 or divisor < 1:
        raise ValueError(f"min_drop must lie in [0, 1) and divisor be >= 1, got {min_drop!r} and {divisor!r}.")
    lrs = np.asarray(lrs, dtype=np.float64)
    smoothed = filter_losses(losses, median_window=median_window, mean_window=mean_window)
    rule = _rule_text(median_window, mean_window, min_drop, divisor)
    finite = np.flatnonzero(np.isfinite(smoothed))  # a prefix: filter_losses cuts at the first non-finite loss
    if len(losses) and not math.isfinite(losses[0]):
        # step 1's loss is measured before any update: no rate of the sweep made it, the starting weights did
        return None, None, smoothed.tolist(), rule + NO_SUGGESTION + INIT_BROKEN.format(loss=losses[0])
    if len(finite) < 2:
        return None, None, smoothed.tolist(), rule + NO_SUGGESTION + "fewer than 2 finite losses were recorded."

    raw = np.asarray(losses, dtype=np.float64)
    start = smoothed[0]
    lowest = int(np.argmin(smoothed[finite]))  # the first index of the minimum
    threshold = start * (1 - min_drop)
    if not smoothed[lowest] <= threshold:
        # the filtered start already reads the next steps' losses: quote the first step's own loss too
        reason = (f"{NO_SUGGESTION}the filtered loss never fell {min_drop:.0%} below its start ({start:.4g}, the first "
                  f"step's own loss {raw[0]:.4g}; lowest {smoothed[lowest]:.4g}), so no lr in [{lrs[0]:.2g}, "
                  f"{lrs[finite[-1]]:.2g}] made it go down.")
        # raw[0] is the loss before any update, of the initial weights alone: a median of the first steps would
        # already read losses the first rates raised (or inf/nan), and a loss up from its first update would pass
        # for a flat one
        if smoothed[lowest] > ROSE_AT_ONCE * raw[0]:  # well above the loss before any update
            reason += (" The loss rose from the first lr on: start_lr (--start-lr) is already past where the loss "
                       "goes down; sweep from a lower one (1e-7 is usual).")
        elif reached_end and len(finite) == len(smoothed):  # the sweep ended below the rates that move this loss
            reason += (" Sweep to a higher end_lr (--end-lr; 10 is usual); if the loss stays flat up to there, "
                       "check the model and the data with `cnnlab check`.")
        else:  # flat, then it blew up: no rate in between moved it, and higher ones only break it
            reason += (" It stayed flat until it diverged, so no rate of this sweep trains the network: check the "
                       "model and the data with `cnnlab check`.")
        return None, None, smoothed.tolist(), rule + reason

    # The centred filters read the sweep's last `edge` steps only in part: their windows reach past the last lr,
    # so there the filtered curve rests on fewer losses, and one high last batch lifts it at the last step or two
    # while the loss still falls. A minimum in that edge that the curve never clearly (min_drop) rose from is no
    # turning point. Not after a non-finite loss: the sweep stopped there because the loss broke.
    edge = median_window // 2 + mean_window // 2
    ends_at_minimum = (len(finite) == len(smoothed) and lowest >= len(smoothed) - max(edge, 1)
                       and max(smoothed[lowest:]) <= (1 + min_drop) * smoothed[lowest])
    # ... unless a raw loss there blew up, which the clipped windows hide: the loss was not still falling, and the
    # minimum is the filtered curve's lowest before the blow-up
    blow_up = int(np.argmax(raw[lowest:])) + lowest if ends_at_minimum else lowest
    # ... and stayed up to the end: one high batch the next step undid is the noise the filters are there to ignore
    blew_up = ends_at_minimum and float(np.min(raw[blow_up:])) > BLOW_UP * smoothed[lowest]
    if blew_up:
        rule += (f" The raw loss blew up at the end ({raw[blow_up]:.4g} at lr {lrs[blow_up]:.2g}, over {BLOW_UP:g}x "
                 f"the filtered curve's lowest, {smoothed[lowest]:.4g} at lr {lrs[lowest]:.2g}), where the centred "
                 "filters read only part of their windows: the loss stopped falling there")
        if blow_up > 0 and np.min(smoothed[:blow_up]) <= threshold:
            lowest = int(np.argmin(smoothed[:blow_up]))
            # the quoted lowest sat at or after the blow-up: say which minimum the suggestion reads instead
            rule += (f", so the minimum is read before that lr: {smoothed[lowest]:.4g} at lr "
                     f"{lrs[lowest]:.2g}.")
        else:  # nothing before the blow-up fell min_drop below the start: the lowest stays where it was
            rule += "."
    elif ends_at_minimum:
        before_end = counted(len(smoothed) - 1 - lowest, "step")
        where = ("" if lowest == len(smoothed) - 1 else
                 f" (the filtered minimum lies {before_end} before the end, among the last {edge} steps that the "
                 f"centred filters read only in part, and the filtered loss rose under {min_drop:.0%} after it)")
        rule += (f" The loss was still falling at the last lr{where}, so the minimum may lie beyond it: "
                 "raise end_lr (--end-lr) to see it.")
    first_fall = int(np.argmax(smoothed[finite] <= threshold))  # first index at or below the threshold
    min_loss_lr = float(lrs[lowest])
    suggestion = max(min_loss_lr / divisor, float(lrs[first_fall]))
    return suggestion, min_loss_lr, smoothed.tolist(), rule


# ---------------------------------------------------------------------------------------------
# the sweep


def _batches(loader):
    """The training loader's batches for ever, one epoch (its own order and augmentation) after another."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def short_sweep_warning(start_lr: float, end_lr: float, num_steps: int) -> str | None:
    """Why a sweep of ``num_steps`` is too short to read, or None: each filtered loss reads the raw losses of
    MEDIAN_WINDOW + MEAN_WINDOW - 1 steps, and where those span more than a quarter of the sweep, a dip or a
    blow-up narrower than them is smoothed away (15 steps over 1e-7..10 made a 19% fall and a 7.7x blow-up read
    as "the loss never fell")."""
    reach = MEDIAN_WINDOW + MEAN_WINDOW - 1
    if num_steps >= 4 * reach:
        return None
    decades = math.log10(end_lr / start_lr) * reach / (num_steps - 1)
    return (f"a sweep of {num_steps} steps is short for the rule's filters: each filtered loss reads {reach} steps, "
            f"{decades:.1f} decades of lr here, so a fall or a blow-up narrower than that is smoothed away and the "
            f"suggestion may not be what the loss did. Sweep {4 * reach} steps or more (--steps; 100 is usual).")


def _check_arguments(start_lr: float, end_lr: float, num_steps: int, diverge_factor: float) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr), ("diverge_factor", diverge_factor)):
        if not is_number(value):  # text or None would fail the comparisons below with a TypeError
            raise CnnlabError(f"The range test's {name} must be a number, got {shown_value(value)}.")
    if not (0 < start_lr < end_lr <= MAX_LR):
        raise CnnlabError(f"The range test needs 0 < start_lr < end_lr <= {MAX_LR:g}, got start_lr={start_lr:g} "
                          f"(--start-lr) and end_lr={end_lr:g} (--end-lr). The usual range is 1e-7 to 10.")
    if whole_number(num_steps) is None or num_steps < MEDIAN_WINDOW + MEAN_WINDOW:
        raise CnnlabError(f"The range test needs a whole number of at least {MEDIAN_WINDOW + MEAN_WINDOW} steps "
                          f"to filter its curve, got num_steps={num_steps!r} (--steps). 100 is usual.")
    if not diverge_factor > 1:
        raise CnnlabError(f"diverge_factor must be above 1 (the sweep stops when the filtered loss passes that many "
                          f"times its minimum), got {diverge_factor!r}. 4 is usual.")


def lr_sweep(config: RunConfig, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
             diverge_factor: float = 4.0, device=None,
             progress: Callable[[int, int, float, float], None] | None = None) -> LrSweep:
    """Run the range test on ``config``'s data, model, augmentation, loss and optimiser.

    Step i trains one batch at ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``
    for the parameters ``optim.lr`` sets (the head's, at ``lr_scale`` 1; groups whose ``peak_lr`` differs,
    such as the backbone's at ``optim.backbone_lr_mult``, keep their ratio to it). The lrs are the rates
    the optimiser steps with: with ``optim.lr_batch`` set,
    the ``optim.lr`` that gives the suggestion is ``suggestion * lr_batch / batch_size``. With
    ``optim.name=muon`` the Muon group keeps its ratio ``muon_lr / lr``.

    Stops after ``num_steps`` steps, at the first non-finite loss, or when the filtered loss (the
    rule's own filter, so one high batch cannot stop it) passes ``diverge_factor`` times its minimum
    so far. ``device``: a name or torch.device (default: ``config.train.device``). ``progress(step,
    num_steps, lr, loss)`` is called after each step (step counts from 1). CPU threads as in
    :func:`cnnlab.train.engine.train` (train.threads fixes them).
    """
    from cnnlab.config import check_thread_setting, validate_config
    from cnnlab.threads import run_threads
    from cnnlab.train.engine import keeps_deterministic_setting

    # Checked before the thread setting is read: a config built in Python (train.threads="2", a section given
    # as a dict) would otherwise fail there as an internal error instead of naming the key.
    validate_config(config)
    check_thread_setting(config.train.threads)
    with run_threads(config.train.threads), keeps_deterministic_setting():
        return _sweep(config, start_lr, end_lr, num_steps, diverge_factor, device, progress)


def _sweep(config: RunConfig, start_lr: float, end_lr: float, num_steps: int, diverge_factor: float, device,
           progress) -> LrSweep:
    """:func:`lr_sweep` in its thread setting."""
    from cnnlab.train.engine import announce_precision, announce_unused_settings, setup_run, train_step
    from cnnlab.train.schedule import scaled_lr

    _check_arguments(start_lr, end_lr, num_steps, diverge_factor)
    # The same set-up as `cnnlab train` with this config: the same initial weights, data order,
    # augmentation, loss and optimiser (deterministic kernels left as they are: nothing is kept).
    run = setup_run(config, device, validation=False, deterministic=False)  # the sweep never validates
    announce_precision(run)
    announce_unused_settings(run, schedule=False)  # the sweep sets the rate itself
    optimizer = run.optimizer  # the user's momentum and weight decay
    # The sweep's lr is optim.lr's step rate (the head's; lr_scale 1), which --lr sets. Not the first group's:
    # groups are ordered fastest first, so with optim.backbone_lr_mult above 1 that is the backbone's group.
    reference = scaled_lr(run.config.optim, run.config.train.images_per_step)  # the peak setup_run scaled to
    scales = [group["peak_lr"] / reference for group in optimizer.param_groups]  # 1.0 each without per-stage rates

    batches = _batches(run.train_loader)
    lrs: list[float] = []
    losses: list[float] = []
    stopped = f"reached end_lr {end_lr:g} after {num_steps} steps"
    run.train_mode()  # model.train() with the run's frozen stages and BatchNorm modes (train.bn_eval)
    for step in range(num_steps):
        lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] = lr * scale
        x, y = next(batches)  # x (B, C, H, W) normalised on device; y (B,) or soft (B, K) after mixup
        # The step updates the model before the stop rules below read its loss: the model is only measured,
        # so the update of the step that stops the sweep changes nothing the sweep returns.
        result = train_step(run.model, x, y, optimizer, run.scaler, run.step_settings)
        value = result.loss.item()  # a sync point: the stop rules read every step's loss
        lrs.append(lr)
        losses.append(value)
        if progress is not None:
            progress(step + 1, num_steps, lr, value)
        if not math.isfinite(value):
            stopped = f"non-finite loss at lr {lr:.3g} (step {step + 1}): the loss became {value}"
            break
        filtered = filter_losses(losses)  # recomputed over the whole prefix: O(steps), negligible next to a step
        lowest = float(np.min(filtered))
        if filtered[-1] > diverge_factor * lowest:
            stopped = (f"diverged at lr {lr:.3g} (step {step + 1}): the filtered loss {filtered[-1]:.4g} passed "
                       f"{diverge_factor:g} x its minimum {lowest:.4g}")
            break

    suggestion, min_loss_lr, smoothed, rule = suggest_lr(lrs, losses, reached_end=len(losses) == num_steps)
    return LrSweep(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion, min_loss_lr=min_loss_lr,
                   rule=rule, stopped=stopped)


# ---------------------------------------------------------------------------------------------
# output


def no_suggestion_reason(sweep: LrSweep) -> str | None:
    """Why the sweep has no suggestion, as :func:`suggest_lr` adds it to the rule; None when it has one."""
    if sweep.suggestion is not None:
        return None
    _, found, reason = sweep.rule.partition(NO_SUGGESTION)
    return reason if found else "the rule found none."


def sweep_json(sweep: LrSweep) -> dict:
    """The sweep as plain JSON data: every field, with non-finite numbers as null, ``steps``, and
    ``no_suggestion``, why there is no suggestion (:func:`no_suggestion_reason`; null when there is one)."""
    from cnnlab.text import finite_or_null

    data = finite_or_null(asdict(sweep))
    data["steps"] = len(sweep.lrs)
    data["no_suggestion"] = no_suggestion_reason(sweep)
    return data


def no_plot_reason(sweep: LrSweep) -> str | None:
    """Why :func:`save_lr_plot` has nothing to draw for ``sweep``, or None when it can draw it."""
    if not np.isfinite(np.asarray(sweep.losses, dtype=np.float64)).any():
        return "the sweep recorded no finite loss"
    return None


def save_lr_plot(sweep: LrSweep, path: str | Path) -> Path:
    """Draw the range test into a PNG: loss against lr (log axis), the suggestion as a vertical line.

    Raw losses are faint, the filtered curve bold; the filtered minimum is marked. The y axis spans
    the filtered curve and most raw losses (2nd to 98th percentile), but at most the start plus twice
    the fall, so neither a spike nor the explosion flattens the valley the rule reads. Written
    atomically: a failed write leaves the previous file.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state; PNG renders through Agg

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"The lr plot must be a .png, got '{path}'.")
    lrs = np.asarray(sweep.lrs, dtype=np.float64)
    raw = np.asarray(sweep.losses, dtype=np.float64)
    smoothed = np.asarray(sweep.smoothed, dtype=np.float64)
    if no_plot_reason(sweep) is not None:
        raise CnnlabError(f"There is nothing to plot for '{path}': {no_plot_reason(sweep)}.")

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    try:
        ax.plot(lrs, np.where(np.isfinite(raw), raw, np.nan), color="C0", alpha=0.3, linewidth=0.8,
                label="loss per step")
        ax.plot(lrs, smoothed, color="C0", linewidth=2.0, label="filtered loss (what the rule reads)")
        if sweep.min_loss_lr is not None:
            # at the minimum's own step: where a blow-up moved the minimum back, the lowest point lies later
            at = np.flatnonzero(np.asarray(lrs) == sweep.min_loss_lr)
            ax.plot([sweep.min_loss_lr], [smoothed[at[0]] if len(at) else np.nanmin(smoothed)], "o", color="C1",
                    label=f"filtered minimum at lr {sweep.min_loss_lr:.2g}")
        if sweep.suggestion is not None:
            ax.axvline(sweep.suggestion, color="C3", linestyle="--", label=f"suggested lr {sweep.suggestion:.2g}")
        else:
            # the rule's reason, shortened to a legend line: its sentence opens with what went wrong
            reason = (no_suggestion_reason(sweep) or "").split(" (", 1)[0].split(",", 1)[0].rstrip(".")
            ax.plot([], [], " ", label=f"no suggestion: {reason}")
        ax.set_xscale("log")
        finite_raw = raw[np.isfinite(raw)]
        finite_smoothed = smoothed[np.isfinite(smoothed)]
        low = min(np.percentile(finite_raw, 2), finite_smoothed.min())
        high = max(np.percentile(finite_raw, 98), finite_smoothed.max())
        fall = finite_smoothed[0] - finite_smoothed.min()
        if fall > 0:  # show the start and twice the fall above it: the explosion leaves the frame, the valley fills it
            high = min(high, finite_smoothed[0] + 2 * fall)
        margin = 0.05 * (high - low) if high > low else 0.05 * abs(high) + 1e-3
        ax.set_ylim(low - margin, high + margin)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR range test: {sweep.stopped}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_png(fig, path, "the lr plot")
    finally:
        fig.clear()  # release the artists now; a Figure without pyplot is not held anywhere else
    return path
