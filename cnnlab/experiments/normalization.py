"""Two normalisation experiments (notes 000, 001, 003):

* ``norm-batch``: BatchNorm, GroupNorm, LayerNorm and InstanceNorm at batch sizes from 2 to 128
  (Wu & He 2018, Fig. 1): BN's statistics come from the batch, so it degrades at small batches; GN and
  LN normalise each image on its own and do not.
* ``bn-lr``: one plain VGG-style net with and without BatchNorm over learning rates from 0.01 to 3
  (Ioffe & Szegedy 2015): BN allows higher rates and converges faster, with similar final accuracy.

Both change one knob of an otherwise fixed recipe: ``model.norm`` (cnnlab.layers.norm: ``bn``,
``gn:G``, ``ln``, ``in``, ``none``), and the batch size or the learning rate. Every image is resized
to 16x16 so that the 3 seeds of every setting fit the size's time budget on 2 CPU cores.

Choices made before any run, with their reasons:

* norm-batch trains ``resnet8`` (the CIFAR ResNet with one block per stage, 16-32-64 channels: small
  enough for batch 2 on a CPU, and every norm has a place after each conv) with the recipe of
  recipes/fashion-mnist-source.yaml (SGD momentum 0.9, weight decay 5e-4, lr 0.2 per 256 images),
  with a cosine decay instead of one-cycle (no warmup to interact with the batch size), no
  augmentation and no label smoothing. GN uses 8 groups (``gn:8``): 2, 4 and 8 channels per group in
  resnet8's three stages, so it is neither IN (one channel per group) nor LN (one group); Wu & He's 32
  groups would make it IN in the 16- and 32-channel stages.
* Equal budget: the same number of epochs at every batch size (so batch 2 takes 64 times as many steps
  as batch 128), and the learning rate follows the batch by the linear scaling rule (Goyal et al. 2017,
  note 004's "batch size提高,学习率也有应该提高"): lr = 0.2 x batch / 256, through optim.lr_batch.
  This is Wu & He's protocol; the largest batches get few steps on the small budgets here, so a norm's
  best batch may be a middle one, and the verdict compares each norm's smallest batch with its own best.
* bn-lr trains ``vgg_mini`` (one 3x3 conv per stage, 24-48-96-192 channels, max pools, a pooled head:
  no shortcuts, so nothing but BN keeps the signal scaled) with ``model.norm`` bn or none (the convs
  then get biases), SGD momentum 0.9, weight decay 5e-4, batch 64, a cosine decay from the swept rate
  and no warmup (a warmup would hide what a high rate does at the start), no augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from cnnlab.config import RunConfig
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
from cnnlab.experiments.training import (
    ALIKE_NOISE,
    PICK_RULE,
    data_problem,
    DIVERGED,
    LEARNED_MARGIN,
    LEARNED_RULE,
    MIN_SEEDS,
    RunOutcome,
    SeedStats,
    alike,
    better,
    chance_level,
    diverged_anywhere,
    experiment_config,
    line_plot,
    mean_curve,
    seed_stats,
    learned,
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.io import save_png

IMAGE_SIZE = 16  # pixels: every data set is resized to 16x16 (the time budget; see the module docstring)
VAL_FRACTION = 0.01  # Fashion-MNIST: 600 training images held out to pick checkpoints and settings (digits has its own)
DATA = {"tiny": "digits", "quick": "digits", "full": "fashion-mnist"}
TINY_PER_CLASS = 10  # training images per class at tiny, the smallest subset either experiment takes


def _stats(values: Sequence[Optional[float]]) -> SeedStats:
    return SeedStats(tuple(v for v in values if v is not None and math.isfinite(v)))


def _finished(outcomes: Sequence[RunOutcome], setting: str) -> list[RunOutcome]:
    return [o for o in outcomes if o.setting == setting and o.status != DIVERGED]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# norm-batch: BN vs GN vs LN vs IN at batch sizes 2..128 (Wu & He 2018)

NORMS = {"bn": "bn", "gn": "gn:8", "ln": "ln", "in": "in"}  # setting prefix -> model.norm
BATCH_INDEPENDENT = ("gn", "ln")  # the norms the claim says do not degrade (IN is measured, not judged)
NB_NET = "resnet8"
NB_LR, NB_LR_BATCH = 0.2, 256  # recipes/fashion-mnist-source.yaml: lr 0.2 for 256 images, scaled linearly


@dataclass(frozen=True)
class NormBatchBudget:
    """What one size of norm-batch trains."""

    norms: tuple[str, ...]
    batches: tuple[int, ...]  # ascending; the first is "the smallest batch" of the verdict
    train_per_class: Optional[int]  # None: the whole training split
    epochs: int


NB_BUDGETS = {
    "tiny": NormBatchBudget(("bn", "gn"), (2, 16), TINY_PER_CLASS, 1),
    # 100 per class and 3 epochs: with 30 per class and 2 epochs no norm got off chance level on digits.
    "quick": NormBatchBudget(tuple(NORMS), (2, 16, 128), 100, 3),
    # Steps of 8x (2, 16, 128) rather than 4x (2, 8, 32, 128): each run has a fixed cost of seconds (loading
    # Fashion-MNIST twice, testing on its 10,000 test images), and 48 runs do not fit 8 minutes.
    "full": NormBatchBudget(tuple(NORMS), (2, 16, 128), 50, 4),
}


def nb_steps(budget: NormBatchBudget, batch: int, classes: int = 10) -> int:
    """Optimiser steps of one run at ``batch``: the training loader drops an epoch's short last batch, so
    each epoch takes the full batches of ``train_per_class`` x ``classes`` images (digits and Fashion-MNIST
    both have 10 classes)."""
    return budget.train_per_class * classes // batch * budget.epochs


def _nb_steps_text(size: str) -> str:
    """'(1,500 steps at batch 2, 21 at batch 128)': the steps of the size's smallest and largest batch."""
    budget = NB_BUDGETS[size]
    small, large = budget.batches[0], budget.batches[-1]
    return f"({nb_steps(budget, small):,} steps at batch {small}, {nb_steps(budget, large):,} at batch {large})"


def nb_setting(norm: str, batch: int) -> str:
    return f"{norm}-b{batch}"


def norm_batch_sections(norm: str, batch: int, budget: NormBatchBudget) -> dict[str, dict[str, Any]]:
    """The run's config sections (see the module docstring)."""
    return {
        "model": {"name": NB_NET, "norm": NORMS[norm]},
        "data": {"train_per_class": budget.train_per_class, "image_size": IMAGE_SIZE, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none", "label_smoothing": 0.0},
        "optim": {"name": "sgd", "lr": NB_LR, "lr_batch": NB_LR_BATCH, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": budget.epochs, "batch_size": batch},
    }


def best_batch(outcomes: Sequence[RunOutcome], norm: str, batches: Sequence[int]) -> Optional[int]:
    """The batch size with the highest mean final validation accuracy (never the test split), among those none of
    whose seeds diverged; None when no batch qualifies."""
    means = {b: seed_stats(outcomes, nb_setting(norm, b), "val_acc") for b in batches}
    finished = {b: s.mean for b, s in means.items() if s.n and not diverged_anywhere(outcomes, nb_setting(norm, b))}
    return max(finished, key=lambda b: (finished[b], -b)) if finished else None


def batch_drop(outcomes: Sequence[RunOutcome], norm: str, best: int, smallest: int) -> SeedStats:
    """Per seed, test accuracy at ``best`` minus test accuracy at ``smallest`` (seeds finished at both)."""
    at_best = {o.seed: o.test_acc for o in _finished(outcomes, nb_setting(norm, best))}
    at_small = {o.seed: o.test_acc for o in _finished(outcomes, nb_setting(norm, smallest))}
    return _stats([at_best[s] - at_small[s] for s in sorted(at_best) if s in at_small
                   and at_best[s] is not None and at_small[s] is not None])


def check_norm_batch_data(dataset, size: str) -> Optional[str]:
    """Refuse data with fewer than 2 classes, a class too small for the tiny subset, no test split (the checks
    compare test accuracies), or too few training images at ``size`` for its largest batch (the norms share the
    data, so one norm's runs stand for all)."""

    def runs_at(at: str) -> list[RunConfig]:
        budget = NB_BUDGETS[at]
        return [experiment_config(dataset.spec, norm_batch_sections(budget.norms[0], batch, budget))
                for batch in budget.batches]

    return data_problem(dataset, per_class=TINY_PER_CLASS, test_split=True, size=size, runs_at=runs_at)


def run_norm_batch(ctx: RunContext) -> ExperimentResult:
    budget = NB_BUDGETS[ctx.size]
    settings = {nb_setting(n, b): (n, b) for n in budget.norms for b in budget.batches}
    configs = {name: experiment_config(ctx.data, norm_batch_sections(n, b, budget))
               for name, (n, b) in settings.items()}
    outcomes = train_settings(ctx, configs)

    extra = {name: {"norm": NORMS[n], "batch_size": b, "lr": NB_LR * b / NB_LR_BATCH, "epochs": budget.epochs}
             for name, (n, b) in settings.items()}
    rows = summary_rows(outcomes, list(settings), ["train_loss", "train_acc", "val_acc", "test_acc", "seconds"], extra)
    for row in rows:
        row["best_batch_by_val"] = best_batch(outcomes, settings[row["setting"]][0], budget.batches)
    rows += [o.row(**extra[o.setting]) for o in outcomes]  # one row per run
    checks = norm_batch_checks(outcomes, budget.norms, budget.batches, chance_level(outcomes))
    plot = _norm_batch_plot(ctx.out / "norm_batch.png", outcomes, budget)
    return ExperimentResult(rows, checks, [plot], runs=[Path(o.run_dir) for o in outcomes])


def norm_batch_checks(outcomes: Sequence[RunOutcome], norms: Sequence[str], batches: Sequence[int],
                      chance: float) -> list[Check]:
    """The checks of the rule: BN's own drop at the smallest batch, then GN's and LN's drop against BN's. A drop
    between two batches that learned nothing decides nothing (``chance``: 1 / the number of classes;
    :func:`cnnlab.experiments.training.unless_learned`)."""
    smallest = batches[0]
    best = {n: best_batch(outcomes, n, batches) for n in norms}
    pair = {n: (nb_setting(n, best[n]), nb_setting(n, smallest)) for n in norms if best[n] is not None}
    checks = [_bn_degrades(outcomes, best["bn"], smallest)]
    if "bn" in pair:
        checks[0] = unless_learned(checks[0], outcomes, chance, pair["bn"])
    drops = {n: batch_drop(outcomes, n, best[n], smallest) for n in norms if best[n] is not None}
    for norm in BATCH_INDEPENDENT:
        if norm not in norms:
            continue
        claim = (f"{norm.upper()} loses less than BN from its best batch to batch {smallest} "
                 "(test accuracy, per-seed drop)")
        if "bn" not in drops or norm not in drops:
            checks.append(Check(claim, INCONCLUSIVE, "a norm has no batch size whose every seed finished"))
            continue
        checks.append(unless_learned(better(claim, f"{norm} drop (best batch {best[norm]})", drops[norm],
                                            f"bn drop (best batch {best['bn']})", drops["bn"], higher=False),
                                     outcomes, chance, pair[norm], pair["bn"]))
    return checks


def _bn_degrades(outcomes: Sequence[RunOutcome], best: Optional[int], smallest: int) -> Check:
    claim = f"BN degrades at small batches: its test accuracy at batch {smallest} is below its best batch's"
    if best is None:
        return Check(claim, INCONCLUSIVE, "BN has no batch size whose every seed finished")
    at_small = seed_stats(outcomes, nb_setting("bn", smallest), "test_acc")
    if best == smallest:
        verdict = INCONCLUSIVE if at_small.n < MIN_SEEDS else FAILS
        return Check(claim, verdict, f"BN's best batch by validation accuracy is the smallest, {smallest} "
                                     f"(test {at_small.text(100)})")
    return better(claim, f"bn batch {best} (best)", seed_stats(outcomes, nb_setting("bn", best), "test_acc"),
                  f"bn batch {smallest}", at_small)


def _norm_batch_plot(path: Path, outcomes: Sequence[RunOutcome], budget: NormBatchBudget) -> Path:
    acc_panel, loss_panel = "test accuracy (mean ± std over seeds)", "training loss, last epoch"
    panels: dict[str, dict] = {acc_panel: {}, loss_panel: {}}
    bands: dict[str, dict] = {acc_panel: {}, loss_panel: {}}
    for norm in budget.norms:
        for panel, key in ((acc_panel, "test_acc"), (loss_panel, "train_loss")):
            xs, means, stds = [], [], []
            for batch in budget.batches:
                stats = seed_stats(outcomes, nb_setting(norm, batch), key)
                if stats.n:
                    xs.append(batch)
                    means.append(stats.mean)
                    stds.append(stats.std)
            panels[panel][NORMS[norm]] = (xs, means)
            bands[panel][NORMS[norm]] = stds
    return line_plot(path, "BN degrades at small batches; GN and LN do not (Wu & He 2018; note 001)", panels,
                     x_label="batch size (log scale; same epochs, lr scaled with the batch)", log_x=True,
                     log_y=(loss_panel,), bands=bands)


NORM_BATCH = Experiment(
    name="norm-batch",
    claim="BatchNorm's statistics come from the batch, so it degrades at small batch sizes; LayerNorm and GroupNorm "
          "normalise each image on its own and do not depend on the batch size (Wu & He 2018).",
    source=("001", "Batch Norm: 它强烈依赖于批次大小 N。如果 N 很小，计算出的 μ 和 σ 误差较大，效果会变差 / Layer Norm: "
                   "与批次大小 N 无关。即使批次很小，标准化结果也很稳定 / Group Norm: 它不依赖于批次 N (000: BN/LN/IN/GN)"),
    rule="Per norm and batch size, 3+ seeds, the same resnet8 recipe for the same number of epochs, lr = 0.2 x "
         f"batch / 256. A norm's best batch is the one with the highest mean final VALIDATION accuracy ({PICK_RULE}); "
         "accuracies "
         "compared are TEST accuracies of each run's best checkpoint. 'BN degrades' HOLDS when BN's mean test "
         "accuracy at its best batch beats its mean at the smallest batch by more than the larger spread (sample "
         "std over seeds), DOES NOT HOLD when the smallest batch is ahead by as much or is BN's best batch, "
         "INCONCLUSIVE in between. 'GN (LN) loses less than BN' compares per-seed drops (test accuracy at the "
         "norm's own best batch minus at the smallest batch): HOLDS when GN's (LN's) mean drop is smaller than "
         "BN's by more than the larger spread of the drops, DOES NOT HOLD when it is larger by as much, "
         f"INCONCLUSIVE in between. Fewer than 3 seeds: INCONCLUSIVE. IN is measured, not judged. {LEARNED_RULE}",
    runs="resnet8 at 16x16 with model.norm bn, gn:8, ln or in, at each batch size, the same epochs (more steps at "
         "small batches), SGD momentum 0.9, weight decay 5e-4, lr 0.2 x batch / 256, cosine, no augmentation",
    sizes={
        "tiny": SizeInfo("digits at 16x16, 10 images per class, bn and gn at batch 2 and 16, 1 epoch, 1 seed "
                         "(mechanics only)", 20.0),
        "quick": SizeInfo("digits at 16x16, 100 images per class (1,000), bn, gn, ln, in at batch 2, 16, 128, "
                          f"3 epochs {_nb_steps_text('quick')}, 3 seeds (36 runs)", 270.0),
        "full": SizeInfo("Fashion-MNIST at 16x16, 50 training images per class (500), 600 val, 10,000 test; bn, gn, "
                         f"ln, in at batch 2, 16, 128, 4 epochs {_nb_steps_text('full')}, 3 seeds (36 runs)", 580.0),
    },
    run=run_norm_batch,
    notes=("001", "000"),  # note 000: the four norms compared
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_norm_batch_data,
)


# ---------------------------------------------------------------------------------------------
# bn-lr: with and without BatchNorm over learning rates (Ioffe & Szegedy 2015)

BN_VARIANTS = {"bn": "bn", "no-bn": "none"}  # setting prefix -> model.norm
LR_NET = "vgg_mini"
LR_BATCH = 64  # images per step at every rate
TRAINS_MARGIN = LEARNED_MARGIN  # a rate "trains" when no seed diverged and it learned (training.learned)
SPEED_MARGIN = 0.05  # nats: BN's epoch-1 training loss must be lower by more than this and the spread
ACCURACY_TOLERANCE = 0.01  # 1 point: "similar final accuracy" allows this plus the larger spread


@dataclass(frozen=True)
class LrBudget:
    """What one size of bn-lr trains."""

    lrs: tuple[float, ...]  # ascending
    train_per_class: Optional[int]  # None: the whole training split
    epochs: int
    batch_size: int = LR_BATCH


LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # half-decades: 0.01 .. 1 as the notes' range, and one step past it
LR_BUDGETS = {
    "tiny": LrBudget((0.1, 3.0), TINY_PER_CLASS, 1, batch_size=16),
    "quick": LrBudget(LR_GRID, None, 3),
    "full": LrBudget(LR_GRID, 200, 5),
}


def lr_setting(variant: str, lr: float) -> str:
    return f"{variant}-lr{lr:g}"


def bn_lr_sections(variant: str, lr: float, budget: LrBudget) -> dict[str, dict[str, Any]]:
    """The run's config sections (see the module docstring)."""
    return {
        "model": {"name": LR_NET, "norm": BN_VARIANTS[variant]},
        "data": {"train_per_class": budget.train_per_class, "image_size": IMAGE_SIZE, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none", "label_smoothing": 0.0},
        "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": budget.epochs, "batch_size": budget.batch_size},
    }


def trains(outcomes: Sequence[RunOutcome], setting: str, chance: float) -> bool:
    """No seed diverged and the setting learned: its mean final validation accuracy beats chance by
    :data:`TRAINS_MARGIN` (the shared rule's margin, :func:`cnnlab.experiments.training.learned`)."""
    mine = [o for o in outcomes if o.setting == setting]
    if not mine or any(o.status == DIVERGED for o in mine):
        return False
    return learned(outcomes, setting, chance)


def best_lr(outcomes: Sequence[RunOutcome], variant: str, lrs: Sequence[float], chance: float) -> Optional[float]:
    """The rate that trains with the highest mean final validation accuracy; None when none trains."""
    trained = {lr: seed_stats(outcomes, lr_setting(variant, lr), "val_acc").mean
               for lr in lrs if trains(outcomes, lr_setting(variant, lr), chance)}
    return max(trained, key=lambda lr: trained[lr]) if trained else None


def _first_loss(outcome: RunOutcome) -> Optional[float]:
    """The mean training loss of epoch 1; None for a diverged run (its loss is not a number)."""
    if outcome.status == DIVERGED or not outcome.curve:
        return None
    value = outcome.curve[0].get("train_loss")
    return value if value is not None and math.isfinite(value) else None


def _epoch1_loss(outcomes: Sequence[RunOutcome], setting: str) -> SeedStats:
    return _stats([_first_loss(o) for o in outcomes if o.setting == setting])


def check_bn_lr_data(dataset, size: str) -> Optional[str]:
    """Refuse data with fewer than 2 classes, a class too small for the tiny subset, no test split ('similar
    final accuracy' compares test accuracies), or too few training images at ``size`` for one batch (every
    setting trains on the same data and batch)."""

    def runs_at(at: str) -> list[RunConfig]:
        budget = LR_BUDGETS[at]
        return [experiment_config(dataset.spec, bn_lr_sections(next(iter(BN_VARIANTS)), budget.lrs[0], budget))]

    return data_problem(dataset, per_class=TINY_PER_CLASS, test_split=True, size=size, runs_at=runs_at)


def run_bn_lr(ctx: RunContext) -> ExperimentResult:
    budget = LR_BUDGETS[ctx.size]
    settings = {lr_setting(v, lr): (v, lr) for v in BN_VARIANTS for lr in budget.lrs}
    configs = {name: experiment_config(ctx.data, bn_lr_sections(v, lr, budget)) for name, (v, lr) in settings.items()}
    outcomes = train_settings(ctx, configs)
    chance = chance_level(outcomes)

    trained = {name: trains(outcomes, name, chance) for name in settings}
    extra = {name: {"norm": BN_VARIANTS[v], "lr": lr, "trains": trained[name]} for name, (v, lr) in settings.items()}
    rows = summary_rows(outcomes, list(settings), ["train_loss", "train_acc", "val_acc", "test_acc"], extra)
    for row in rows:
        stats = _epoch1_loss(outcomes, row["setting"])
        row["epoch1_train_loss_mean"] = stats.mean if stats.n else None
        row["epoch1_train_loss_std"] = stats.std if stats.n else None
    rows += [o.row(**extra[o.setting], epoch1_train_loss=_first_loss(o)) for o in outcomes]  # one row per run

    checks = bn_lr_checks(outcomes, budget.lrs, chance)
    plots = [_lr_plot(ctx.out / "bn_lr_accuracy.png", outcomes, budget, chance),
             _lr_curves_plot(ctx.out / "bn_lr_loss_by_epoch.png", outcomes, budget)]
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def bn_lr_checks(outcomes: Sequence[RunOutcome], lrs: Sequence[float], chance: float) -> list[Check]:
    """The three checks of the rule; ``chance`` is 1 / the number of classes."""
    settings = [lr_setting(v, lr) for v in BN_VARIANTS for lr in lrs]
    seeds = min((sum(1 for o in outcomes if o.setting == name) for name in settings), default=0)
    highest = {v: max((lr for lr in lrs if trains(outcomes, lr_setting(v, lr), chance)), default=None)
               for v in BN_VARIANTS}
    best = {v: best_lr(outcomes, v, lrs, chance) for v in BN_VARIANTS}
    return [
        _higher_lr_check(highest, lrs, seeds, chance),
        _speed_check(outcomes, best["no-bn"]),
        _final_accuracy_check(outcomes, best),
    ]


def _rate(lr: Optional[float]) -> str:
    """A learning rate of the grid as the grid is written (1, not 1.0); "none" where no rate trains."""
    return "none" if lr is None else f"{lr:g}"


def _higher_lr_check(highest: dict[str, Optional[float]], lrs: Sequence[float], seeds: int, chance: float) -> Check:
    claim = "BN allows a higher learning rate: the highest rate that trains is higher with BN"
    shown = (f"highest rate that trains (no divergence, mean final val accuracy >= chance {chance:.0%} + "
             f"{TRAINS_MARGIN * 100:g} points): with BN {_rate(highest['bn'])}, without {_rate(highest['no-bn'])}; grid "
             f"{', '.join(f'{lr:g}' for lr in lrs)}")
    if seeds < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    bn, plain = highest["bn"], highest["no-bn"]
    if bn is None and plain is None:
        return Check(claim, INCONCLUSIVE, f"{shown}: neither net trains at any rate")
    if plain is None:
        return Check(claim, HOLDS, shown)
    if bn is None:
        return Check(claim, FAILS, shown)
    if bn > plain:
        return Check(claim, HOLDS, shown)
    if bn == plain == max(lrs):
        return Check(claim, INCONCLUSIVE, f"{shown}: both train at the top of the grid")
    return Check(claim, FAILS, shown)


def _speed_check(outcomes: Sequence[RunOutcome], shared: Optional[float]) -> Check:
    claim = "BN converges faster: lower training loss in epoch 1 at the rate that suits the net without BN"
    if shared is None:
        return Check(claim, INCONCLUSIVE, "the net without BN trains at no rate of the grid")
    return better(f"{claim} ({shared:g})", "bn", _epoch1_loss(outcomes, lr_setting("bn", shared)),
                  "no-bn", _epoch1_loss(outcomes, lr_setting("no-bn", shared)), higher=False,
                  min_margin=SPEED_MARGIN, scale=1.0, unit=" nats")


def _final_accuracy_check(outcomes: Sequence[RunOutcome], best: dict[str, Optional[float]]) -> Check:
    claim = (f"similar final accuracy: test accuracy at each net's best rate within {ACCURACY_TOLERANCE * 100:g} "
             "point")
    if best["bn"] is None or best["no-bn"] is None:
        return Check(claim, INCONCLUSIVE, f"best rates: with BN {_rate(best['bn'])}, without {_rate(best['no-bn'])} "
                                          "(none: trains at no rate of the grid)")
    return alike(claim, f"bn at lr {best['bn']:g}", seed_stats(outcomes, lr_setting("bn", best["bn"]), "test_acc"),
                 f"no-bn at lr {best['no-bn']:g}", seed_stats(outcomes, lr_setting("no-bn", best["no-bn"]), "test_acc"),
                 tolerance=ACCURACY_TOLERANCE)


def _lr_plot(path: Path, outcomes: Sequence[RunOutcome], budget: LrBudget, chance: float) -> Path:
    """Final test accuracy against the rate (log x), mean ± std over the finished seeds; a cross at chance
    marks a rate where a seed diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = []  # every rate drawn, as a mean or a cross
    for variant, colour in zip(BN_VARIANTS, ("tab:blue", "tab:red")):
        xs, means, stds, crashed = [], [], [], []
        for lr in budget.lrs:
            name = lr_setting(variant, lr)
            stats = seed_stats(outcomes, name, "test_acc")
            if stats.n:
                xs.append(lr)
                means.append(100 * stats.mean)
                stds.append(100 * stats.std)
            if any(o.setting == name and o.status == DIVERGED for o in outcomes):
                crashed.append(lr)
        label = "with BN" if variant == "bn" else "without BN"
        ax.plot(xs, means, marker="o", color=colour, label=label)
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=colour, alpha=0.15)
        drawn += xs
        if crashed and math.isfinite(chance):
            ax.scatter(crashed, [100 * chance] * len(crashed), marker="x", s=60, color=colour,
                       label=f"{label}: a seed diverged")
            drawn += crashed
    if math.isfinite(chance):
        ax.axhline(100 * chance, color="grey", linewidth=0.8, linestyle=":", label="chance")
    if drawn:
        ax.set_xscale("log")
    else:  # every run diverged before a checkpoint: nothing to place on a log axis (matplotlib would raise)
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("test accuracy (%), finished seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("BN allows higher learning rates, with similar final accuracy (note 003)", fontsize=11)
    return _save(fig, path)


def _lr_curves_plot(path: Path, outcomes: Sequence[RunOutcome], budget: LrBudget) -> Path:
    panels: dict[str, dict] = {"with BN": {}, "without BN": {}}
    for variant, panel in zip(BN_VARIANTS, panels):
        for lr in budget.lrs:
            epochs, means, _ = mean_curve(outcomes, lr_setting(variant, lr), "train_loss")
            if epochs:
                panels[panel][f"lr {lr:g}"] = (epochs, means)
    return line_plot(path, "BN converges faster: training loss per epoch at each learning rate (note 003)", panels,
                     y_labels={p: "training loss (mean over finished seeds)" for p in panels}, log_y=tuple(panels))


BN_LR = Experiment(
    name="bn-lr",
    claim="Batch normalisation speeds up convergence and allows a larger learning rate, but generally does not "
          "change the model's accuracy.",
    source=("003", "可以加速收敛速度(可以使用较大的学习率),但一般都不改变模型精度"),
    rule="Per net (vgg_mini with BN, and without any norm) and learning rate, 3+ seeds, the same recipe. A rate "
         f"'trains' when no seed diverged and the mean final validation accuracy beats chance by at least "
         f"{TRAINS_MARGIN * 100:g} points. 'Higher rate' HOLDS when the highest rate that trains is higher with BN "
         "(or BN trains and the plain net trains at no rate), DOES NOT HOLD when it is not, INCONCLUSIVE when both "
         "train at the top of the grid or neither trains. 'Faster' compares the mean training loss of epoch 1 at "
         "the rate with the best mean final validation accuracy WITHOUT BN: HOLDS when BN's is lower by more than "
         f"the larger spread (sample std over seeds) and {SPEED_MARGIN} nats, DOES NOT HOLD when higher by as "
         "much, INCONCLUSIVE in between. 'Similar accuracy' compares the test accuracy of each net at its own best "
         f"rate (by validation): HOLDS when the means differ by at most {ACCURACY_TOLERANCE * 100:g} point plus the "
         f"larger spread, DOES NOT HOLD otherwise, {ALIKE_NOISE}. Fewer than 3 seeds: INCONCLUSIVE. A diverged run "
         "counts as a "
         f"failure to train and is left out of the means. {LEARNED_RULE} (The checks here compare only rates "
         "that train, which learned by the same margin.)",
    runs="vgg_mini at 16x16 with model.norm bn or none, at learning rates 0.01, 0.03, 0.1, 0.3, 1, 3; SGD momentum "
         "0.9, weight decay 5e-4, batch 64, cosine decay from the rate, no warmup, no augmentation",
    sizes={
        "tiny": SizeInfo("digits at 16x16, 10 images per class, rates 0.1 and 3, batch 16, 1 epoch, 1 seed "
                         "(mechanics only)", 20.0),
        "quick": SizeInfo("digits at 16x16, all 1,259 training images, the 6 rates, 3 epochs (57 steps), 3 seeds "
                          "(36 runs)", 180.0),
        "full": SizeInfo("Fashion-MNIST at 16x16, 200 training images per class (2,000), 600 val, 10,000 test; the 6 "
                         "rates, 5 epochs (155 steps), 3 seeds (36 runs)", 380.0),
    },
    run=run_bn_lr,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_bn_lr_data,
)

EXPERIMENTS = [NORM_BATCH, BN_LR]
