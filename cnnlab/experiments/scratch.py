"""The from-scratch experiment: does training from scratch catch up with fine-tuning given time?

Note 002 ("Transfer Learning", the doubts it lists) cites He et al. 2019, "Rethinking ImageNet Pre-training":
training from scratch reaches about the results of fine-tuning a pretrained model when it trains long enough;
only with very little data does pretraining and fine-tuning beat training from scratch.

The experiment shares the transfer experiment's source run and target (:mod:`cnnlab.experiments.transfer`:
LeNet-5 trained on the data's first half of the classes; the *similar* target is the other half) and its
ladder (:func:`cnnlab.transfer.ladder.run_transfer`), but runs only two rungs, ``scratch`` and ``all``
(fine-tune every layer), at the transfer experiment's smallest and largest similar sizes, and at several budgets,
each a multiple of the transfer experiment's optimiser steps per rung (``SETTINGS``, per size): one ladder per
budget. Where the transfer experiment asks which rung wins at one fixed budget, this one asks how the gap
all - scratch moves as the budget grows.

Runs. The source is OUT/runs/source (seed 0), as in the transfer experiment at the same size. Each
budget's ladder is OUT/steps-N/SIZE/seedK/RUNG, with its transfer.json and transfer.png (N: the budget's
optimiser steps per rung, as given to the ladder). OUT/report.html compares the source and every rung's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cnnlab.config import DataConfig, quiet_notes
from cnnlab.errors import CnnlabError, counted
from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
)
from cnnlab.experiments.training import MIN_SEEDS, experiment_config
from cnnlab.experiments.transfer import (
    FINETUNE_SECTIONS,
    SETTINGS as TRANSFER_SETTINGS,
    SIMILAR,
    SOURCE_RUN,
    TARGET_VAL_FRACTION,
    _check_counts,
    _Say,
    _training_runs,
    check_transfer_data,
    names_width,
    split_classes,
    train_source,
)

PLOT_FILE = "from-scratch.png"
# A gap within the larger std of the two rungs "or this" counts as no gap: with 3 seeds a std can come out
# near 0 by chance, and half a point of test accuracy is about the noise of one seed's test score here
# (Fashion-MNIST's 5,000 test images of 5 classes: sqrt(0.9 * 0.1 / 5000) = 0.4 points at 90%).
TOLERANCE = 0.005  # accuracy (a fraction): half a point


@dataclass(frozen=True)
class ScratchSize:
    """What one size of the experiment runs: the transfer experiment's sizes and steps, times ``factors``."""

    factors: tuple[int, ...]  # each budget as a multiple of the transfer experiment's steps per rung; 1 first

    def budgets(self, size: str) -> list[int]:
        """The optimiser steps per rung of each budget at ``size`` (what each ladder is given)."""
        return [factor * TRANSFER_SETTINGS[size].steps for factor in self.factors]

    @staticmethod
    def sizes(size: str) -> tuple[int, ...]:
        """Images per class of the similar target: the smallest is "very little", the largest "large"."""
        return TRANSFER_SETTINGS[size].similar


# Chosen before any run, from a one-thread timing of LeNet-5's step (12 ms at batch 128) and the transfer
# experiment's full time: 1x, 3x and 9x fit the full size in about 15 minutes on 2 cores, where 1x, 4x and 16x
# would take about 20. tiny: two budgets, the mechanics.
SETTINGS = {
    "tiny": ScratchSize(factors=(1, 2)),
    "quick": ScratchSize(factors=(1, 3, 9)),
    "full": ScratchSize(factors=(1, 3, 9)),
}


def _factors_text(factors: tuple[int, ...]) -> str:
    """Budgets as the rule and the size lines say them: (1, 3, 9) -> '1x, 3x and 9x'."""
    shown = [f"{factor}x" for factor in factors]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def _budgets_rule() -> str:
    """The budgets of every size, for the rule (one text for all sizes): the full size's, then each size that
    differs by name, e.g. '1x, 3x and 9x its optimiser steps per rung (--size tiny: 1x and 2x)'."""
    general = SETTINGS["full"].factors
    others = [f"--size {size}: {_factors_text(setting.factors)}" for size, setting in SETTINGS.items()
              if setting.factors != general]
    return f"{_factors_text(general)} its optimiser steps per rung" + (f" ({'; '.join(others)})" if others else "")


# ---------------------------------------------------------------------------------------------
# the rule


@dataclass(frozen=True)
class Gap:
    """all - scratch at one size and budget, over the seeds."""

    size: int  # images per class
    steps: int  # optimiser steps per rung at this size (the budget given to the ladder, rounded up to whole epochs)
    scratch: Optional[float]  # mean test accuracy; None: every seed diverged
    finetuned: Optional[float]  # the rung "all"
    spread: float  # the larger of the two rungs' sample stds over the seeds
    runs: int  # the fewer of the two rungs' finished seeds

    @property
    def gap(self) -> Optional[float]:
        return None if self.scratch is None or self.finetuned is None else self.finetuned - self.scratch

    @property
    def margin(self) -> float:
        """How far the gap must be from 0 to count: the larger spread, or TOLERANCE when that is larger."""
        return max(self.spread, TOLERANCE)

    def text(self) -> str:
        if self.gap is None:
            return f"{self.steps} steps: diverged"
        return (f"{self.steps} steps: all {100 * self.finetuned:.1f}% - scratch {100 * self.scratch:.1f}% = "
                f"{100 * self.gap:+.1f} points (spread {100 * self.spread:.1f})")


def _undecided(gaps: list[Gap], seeds: int) -> Optional[str]:
    """Why ``gaps`` decide nothing, or None."""
    if seeds < MIN_SEEDS:
        return f"fewer than {MIN_SEEDS} seeds decide nothing"
    if any(g.gap is None or g.runs < MIN_SEEDS for g in gaps):
        return f"a rung finished fewer than {MIN_SEEDS} seeds (the others diverged), which decides nothing"
    return None


def catches_up_check(gaps: list[Gap], seeds: int, spec: str) -> Check:
    """(a) at the large size: fine-tuning leads by more than its margin at the shortest budget (the larger
    spread, or TOLERANCE), and the gap all - scratch at the longest budget is at most its margin (scratch ahead
    by any amount counts: it caught up) and smaller than at the shortest: HOLDS; above the margin at the longest:
    DOES NOT HOLD; at most the margin there, but fine-tuning did not lead clearly at the shortest (there was no
    lead to close) or its lead did not shrink: INCONCLUSIVE."""
    short, long = gaps[0], gaps[-1]
    claim = (f"with quite a lot of data ({short.size} per class, {spec}), training from scratch catches up with "
             "fine-tuning given long enough training")
    margin = "; ".join(g.text() for g in gaps)
    why = _undecided(gaps, seeds)
    if why:
        return Check(claim, INCONCLUSIVE, f"{margin}: {why}")
    if long.gap > long.margin:
        return Check(claim, FAILS, f"{margin}: at {long.steps} steps fine-tuning still leads by more than "
                                   f"{100 * long.margin:.1f} points")
    within = f"{margin}: fine-tuning does not lead by more than {100 * long.margin:.1f} points at {long.steps} steps"
    if short.gap <= short.margin:
        return Check(claim, INCONCLUSIVE, f"{within}, but it did not lead by more than {100 * short.margin:.1f} at "
                                          f"{short.steps} either: there was no lead to close")
    if long.gap >= short.gap:
        return Check(claim, INCONCLUSIVE, f"{within}, but its lead is not smaller than at {short.steps}")
    return Check(claim, HOLDS, f"{margin}: fine-tuning leads by more than {100 * short.margin:.1f} points at "
                               f"{short.steps} steps and by at most {100 * long.margin:.1f} at {long.steps}")


def small_data_check(gaps: list[Gap], seeds: int, spec: str) -> Check:
    """(b) at the small size: fine-tuning beats scratch by more than the margin (the larger spread, or TOLERANCE)
    even at the longest budget: HOLDS; scratch beats fine-tuning by more than the margin there: DOES NOT HOLD;
    within the margin: INCONCLUSIVE (no clear winner)."""
    long = gaps[-1]
    claim = (f"with very little data ({long.size} per class, {spec}), pretraining and fine-tuning beat training "
             "from scratch even when both train long")
    margin = "; ".join(g.text() for g in gaps)
    why = _undecided(gaps, seeds)
    if why:
        return Check(claim, INCONCLUSIVE, f"{margin}: {why}")
    if long.gap > long.margin:
        return Check(claim, HOLDS, f"{margin}: at {long.steps} steps fine-tuning leads by more than "
                                   f"{100 * long.margin:.1f} points")
    if long.gap < -long.margin:
        return Check(claim, FAILS, f"{margin}: at {long.steps} steps scratch leads by more than "
                                   f"{100 * long.margin:.1f} points")
    return Check(claim, INCONCLUSIVE, f"{margin}: at {long.steps} steps the gap is within {100 * long.margin:.1f} "
                                      "points, no clear winner")


def gaps_at(ladders: dict[int, Any], size: int) -> list[Gap]:
    """The gap at ``size`` for each budget's ladder result (steps -> TransferResult), shortest budget first."""
    from cnnlab.transfer.ladder import ALL, SCRATCH

    gaps = []
    for steps, result in sorted(ladders.items()):
        rows = {row.rung: row for row in result.table if row.size == size}
        scratch, tuned = rows[SCRATCH], rows[ALL]
        # the steps this size ran: a budget is rounded up to whole epochs of the size's data (1,000 per class:
        # 100 -> 117), so the margins name what the table shows
        gaps.append(Gap(size=size, steps=result.budgets[size].steps, scratch=scratch.test_mean,
                        finetuned=tuned.test_mean,
                        spread=max(scratch.test_std or 0.0, tuned.test_std or 0.0),
                        runs=min(scratch.runs, tuned.runs)))
    return gaps


# ---------------------------------------------------------------------------------------------
# the run


def _plot(path: Path, ladders: dict[int, Any], sizes: tuple[int, ...], spec: str, seeds: int) -> Path:
    """Test accuracy against optimiser steps per rung, one panel per size, one line per rung (± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from cnnlab.io import save_png
    from cnnlab.transfer.ladder import ALL, RUNG_TEXT, SCRATCH

    budgets = sorted(ladders)
    figure, axes = plt.subplots(1, len(sizes), figsize=(5.6 * len(sizes), 4.4), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        for rung in (SCRATCH, ALL):
            points = [(steps, row) for steps in budgets for row in ladders[steps].table
                      if row.size == size and row.rung == rung and row.test_mean is not None]
            if points:
                axis.errorbar([steps for steps, _ in points], [100 * row.test_mean for _, row in points],
                              yerr=[100 * (row.test_std or 0.0) for _, row in points], marker="o", capsize=3,
                              label=f"{rung}: {RUNG_TEXT[rung]}")
        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xticks(budgets, [str(steps) for steps in budgets])
        axis.set_xlabel("optimiser steps per rung (the budget)")
        axis.set_ylabel(f"test accuracy (%), mean ± std over {counted(seeds, 'seed')}")
        axis.set_title(f"{size} images per class", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"Scratch vs pretrained (note 002; He et al. 2019) on {spec}:\ndoes scratch catch up with "
                    "fine-tuning given time, except with very little data?", fontsize=10, parse_math=False)
    figure.tight_layout()
    return save_png(figure, path, "the from-scratch plot")


def budget_folder(steps: int) -> str:
    """OUT/steps-N: one budget's ladder."""
    return f"steps-{steps}"


def run_scratch_experiment(ctx: RunContext) -> ExperimentResult:
    from cnnlab.data import load_source
    from cnnlab.transfer.ladder import ALL, SCRATCH, run_transfer

    plan = SETTINGS[ctx.size]
    sizes = plan.sizes(ctx.size)
    source_data = load_source(DataConfig(spec=ctx.data))
    problem = check_transfer_data(source_data)
    if problem:  # the size's default data, or --data checked already: this only guards a library caller
        raise CnnlabError(f"The from-scratch experiment cannot use {ctx.data}: {problem}.")
    source_classes, target_classes = split_classes(source_data.num_classes)
    similar_data = DataConfig(spec=ctx.data, classes=target_classes, val_fraction=TARGET_VAL_FRACTION)
    _check_counts(similar_data, max(sizes), SIMILAR)
    spec = (f"{ctx.data} classes {target_classes[0]}-{target_classes[-1]} "
            f"({', '.join(source_data.classes[k] for k in target_classes)})")

    # The runs' lines count the source and both rungs of every budget's ladder.
    budgets = plan.budgets(ctx.size)
    ctx.runs.plan(1 + len(budgets) * len(sizes) * ctx.seeds * len((SCRATCH, ALL)))
    width = names_width({budget_folder(steps): sizes for steps in budgets}, ctx.seeds, (SCRATCH, ALL))
    # The source: the transfer experiment's at this size, one run (seed 0) that every rung reusing it starts from.
    source_dir, source = train_source(ctx, source_data.num_classes, width, "fine-tune")

    # One ladder per budget, scratch and all only, the transfer experiment's fine-tuning settings.
    base = experiment_config(similar_data.spec, FINETUNE_SECTIONS)
    ladders = {}
    for steps in budgets:
        folder = budget_folder(steps)
        with quiet_notes():
            ladders[steps] = run_transfer(str(source_dir), similar_data, base, per_class=list(sizes), seeds=ctx.seeds,
                                          out=ctx.out / folder, similarity=None, steps=steps,
                                          console=_Say(ctx.say), rungs=(SCRATCH, ALL), count=ctx.runs,
                                          label=folder, width=width)

    rows: list[dict[str, Any]] = [{
        "budget": None, "steps": None, "size": None, "rung": SOURCE_RUN, "test_mean": source.test_acc,
        "test_std": None, "val_mean": source.val_acc, "seconds_mean": source.seconds, "runs": 1, "failed": 0}]
    for factor, (steps, result) in zip(plan.factors, sorted(ladders.items())):
        for row in result.table:
            rows.append({"budget": f"{factor}x", "steps": result.budgets[row.size].steps, "size": row.size,
                         "rung": row.rung, "test_mean": row.test_mean, "test_std": row.test_std,
                         "val_mean": row.val_mean, "seconds_mean": row.seconds_mean, "runs": row.runs,
                         "failed": row.failed})
    if len(sizes) < 2:
        checks = [Check(f"the gap all - scratch against the budget ({spec})", INCONCLUSIVE,
                        "; ".join(g.text() for g in gaps_at(ladders, sizes[0])) + f": one size ({sizes[0]} per "
                        "class) only: the claim compares very little data with quite a lot, so this size checks the "
                        "mechanics and decides nothing")]
    else:
        checks = [catches_up_check(gaps_at(ladders, max(sizes)), ctx.seeds, spec),
                  small_data_check(gaps_at(ladders, min(sizes)), ctx.seeds, spec)]
    runs = [source_dir] + [run for steps in sorted(ladders) for run in _training_runs(ladders[steps])]
    plot = _plot(ctx.out / PLOT_FILE, ladders, sizes, spec, ctx.seeds)
    return ExperimentResult(rows, checks, [plot], runs)


def _describe(size: str, data: str, source: str) -> str:
    """A size's description, from the settings (numbers computed, not typed)."""
    sizes = ScratchSize.sizes(size)
    budgets = SETTINGS[size].budgets(size)
    seeds = SCRATCH_SEEDS[0] if size == "tiny" else SCRATCH_SEEDS[2]
    runs = 2 * len(sizes) * len(budgets) * seeds
    return (f"{data}: the transfer experiment's source ({source}); scratch and all on the similar target at "
            f"{' and '.join(str(s) for s in sizes)} per class, at {', '.join(str(b) for b in budgets)} optimiser "
            f"steps per rung ({_factors_text(SETTINGS[size].factors)} the transfer experiment's), "
            f"{counted(seeds, 'seed')} ({runs} training runs and the source)")


SCRATCH_SEEDS = (1, 10, 3)

SCRATCH_VS_PRETRAINED = Experiment(
    name="from-scratch",
    claim="Training from scratch reaches about the accuracy of fine-tuning a pretrained model when it trains long "
          "enough (He et al. 2019, 'Rethinking ImageNet Pre-training'); only with very little data does pretraining "
          "and fine-tuning beat training from scratch.",
    source=("002", "受到质疑: 在 ImageNet 上从头训练一个模型可以取得和采用预训练模型微调差不多的结果（只要训练时间足够长）; "
                   "只有当数据量很小时，预训练 + 微调才能击败从头训练的策略"),
    rule="On the transfer experiment's similar target (the data's second half of the classes; the source is LeNet-5 "
         "trained on the first half), the transfer ladder's 'scratch' and 'all' (every layer fine-tuned, pretrained "
         "weights at a tenth of the rate) run at its smallest and largest size, at "
         f"{_budgets_rule()}. gap = mean test accuracy of all - scratch over the seeds; margin = the larger of the two stds, "
         f"or {TOLERANCE * 100:g} points when that is larger. (a) At the largest size: HOLDS when the gap at the longest budget is "
         "at most the margin (scratch ahead counts) and smaller than at the shortest, where all led by more than the "
         "margin; DOES NOT HOLD "
         "when it is above the margin at the longest; INCONCLUSIVE when at most the margin there but all did not lead "
         "clearly at the shortest (no lead to close) or its lead did not shrink. (b) At the smallest size: HOLDS "
         "when all "
         "beats scratch by more than the margin at the longest budget; DOES NOT HOLD when scratch beats all by more "
         f"than it; INCONCLUSIVE within it. Fewer than {MIN_SEEDS} seeds, or a rung with fewer than {MIN_SEEDS} "
         "finished seeds, decide nothing (INCONCLUSIVE).",
    runs="The transfer experiment's LeNet-5 source (recipes/lenet5-digits.yaml's settings) on the data's first half of "
         "the classes; then cnnlab transfer's ladder with the rungs scratch and all only "
         "(recipes/transfer-finetune.yaml's settings) on the other half, one ladder per budget",
    # Measured on one thread (the machine was busy): quick 111 s wall, 107 CPU seconds; full 434 CPU seconds
    # (651 s wall beside another job). tiny: about 7 s.
    sizes={
        "tiny": SizeInfo(_describe("tiny", "digits", "classes 0-4, 20 per class, 1 epoch") +
                         ": the mechanics, one size, nothing decided", 7.0),
        "quick": SizeInfo(_describe("quick", "Fashion-MNIST", "classes 0-4, 1000 per class, 3 epochs"), 110.0),
        "full": SizeInfo(_describe("full", "Fashion-MNIST", "classes 0-4, all 29,400 images, 3 epochs"), 330.0),
    },
    run=run_scratch_experiment,
    seeds=SCRATCH_SEEDS,
    data={"tiny": "digits", "quick": "fashion-mnist", "full": "fashion-mnist"},
    check_data=check_transfer_data,
)

EXPERIMENTS = [SCRATCH_VS_PRETRAINED]
