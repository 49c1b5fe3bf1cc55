"""The loss-surface experiment (note 004, "在Loss函数中增加残差网络里面的残差模块,使得损失曲面更加平滑": adding
residual modules makes the loss surface smoother; Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the
Loss Landscape of Neural Nets", Fig. 5: ResNet-56 against ResNet-56 without shortcuts).

What is measured. The loss is the training objective without its weight decay: the mean cross-entropy over a
fixed, seeded set of the run's own training images, read as its evaluation reads them (no augmentation, the
run's normalisation), with the net in eval mode, so that BatchNorm uses its running statistics and the loss is
a function of the weights alone. Two measures, on each run's best checkpoint (by validation accuracy):

* 1-D slices along Li et al.'s filter-normalised random directions. A direction d is drawn N(0, 1) with the
  shape of the weights, and each of its filters (an output channel of a conv weight, a row of a linear weight)
  is rescaled to the norm of the matching filter of the trained weights, so that a step of alpha moves every
  filter by alpha times its own size, whatever the scale BatchNorm left it at. Biases and BatchNorm's scale
  and shift get d = 0 (Li et al.: "we ignore bias and BN parameters"). The loss is read at theta + alpha d for
  alpha on a grid in [-1, 1].
* Sharpness: the Hessian's eigenvalue of largest magnitude over the same weights (conv and linear weights), by
  power iteration with Hessian-vector products (double backward), from a seeded start. At a trained minimum
  it is the largest, positive one: the curvature of the steepest direction.

The nets and recipe are degradation's at 56 layers (cnnlab.experiments.depth): ``plain56`` and ``resnet56``,
one table with and without shortcuts (the same parameters and MACs), He et al.'s CIFAR recipe, images resized
to 16x16.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.experiments.activations import finite_stats
from cnnlab.experiments.base import Check, Experiment, ExperimentResult, RunContext, SizeInfo
from cnnlab.experiments.depth import Budget, depth_sections
from cnnlab.experiments.training import (
    DIVERGED,
    LEARNED_MARGIN,
    MIN_SEEDS,
    RunOutcome,
    better,
    chance_level,
    data_problem,
    experiment_config,
    measure_runs,
    summary_rows,
    train_settings,
    unless_each_learned,
)
from cnnlab.io import save_png
from cnnlab.text import short_number
from cnnlab.threads import tick

DEPTH = 56
PLAIN, RESNET = f"plain{DEPTH}", f"resnet{DEPTH}"  # one table, with and without shortcuts: Li et al.'s Fig. 5 pair
NETS = (PLAIN, RESNET)

BUDGETS = {  # degradation's budgets (cnnlab.experiments.depth.BUDGETS)
    "tiny": Budget(train_per_class=10, epochs=1, batch_size=16),  # 100 digits in 6 steps of 16: mechanics only
    "quick": Budget(train_per_class=None, epochs=3),  # digits' 1,259 training images: 19 steps per epoch, 57 in all
    "full": Budget(train_per_class=100, epochs=8),  # 1,000 images: 15 steps per epoch, 120 in all
}
DATA = {"tiny": "digits", "quick": "digits", "full": "fashion-mnist"}


@dataclass(frozen=True)
class Probe:
    """What one size measures on each trained run."""

    images: int  # training images the loss is read on (all of the split when it has fewer)
    directions: int  # filter-normalised random directions, one 1-D slice each
    iterations: int  # power iteration steps for the top Hessian eigenvalue: a Hessian-vector product each


# At full the 1,000 images are the whole training subset (100 per class). A loss on 1,000 images of 16x16 costs
# resnet56 about 1 s on one core and a Hessian-vector product about 10 s, so a run's measures take about 4
# minutes there, longer than its training; quick reads 200 images to stay in minutes, tiny checks the mechanics.
# The sizes' times are runs alone on 2 cores (torch's default threads): tiny 16 s, quick 228 s, full 826 s (about
# 2 min of measures per run after 12-13 s of training).
POWER_ITERATIONS = 20  # Hessian-vector products per run at quick and full; tiny's 5 show the mechanics
PROBES = {"tiny": Probe(images=32, directions=2, iterations=5),
          "quick": Probe(images=200, directions=5, iterations=POWER_ITERATIONS),
          "full": Probe(images=1000, directions=5, iterations=POWER_ITERATIONS)}
GRID_POINTS = 21  # alphas from -GRID_RANGE to GRID_RANGE, evenly spaced: 0.1 apart, 0 in the middle
GRID_RANGE = 1.0  # in filter norms: alpha = 1 moves every filter by its own norm
RISE_AT = 0.5  # check (a) reads the slice at +-half a filter's norm, a point of the grid
IMAGE_SEED = 0  # the training images drawn (the same for every run: the split does not depend on train.seed)
DIRECTION_SEED = 0  # direction k is drawn with seed DIRECTION_SEED + k: the same raw draw for both nets
POWER_SEED = 0  # the power iteration's start vector
BATCH = 250  # images per pass: a double backward through resnet56 holds its activations


def grid(points: int = GRID_POINTS, span: float = GRID_RANGE) -> list[float]:
    """The alphas of a slice: ``points`` evenly spaced from -span to span, computed as span * (2i - (n - 1)) /
    (n - 1) so that 0 and, on the default grid, +-0.5 are exact."""
    if points < 3 or points % 2 == 0:
        raise ValueError(f"a slice needs an odd number of points, at least 3 (0 in the middle), not {points}")
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


# ---------------------------------------------------------------------------------------------
# directions and slices


def surface_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights a direction moves, in module order: every conv's and linear layer's weight. Biases and
    normalisation parameters are left out (Li et al.'s "we ignore bias and BN parameters")."""
    return [module.weight for module in model.modules()
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight is not None]


def filter_normalised(weights: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Li et al.'s direction: d ~ N(0, 1) shaped like each weight, each filter of d (output channel of a conv,
    row of a linear weight) rescaled to the norm of the same filter of the weight. A filter whose weight is all
    zero gets a zero direction."""
    directions = []
    for weight in weights:
        d = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)  # (C_out, C_in, k, k) or (out, in)
        flat_d, flat_w = d.reshape(len(d), -1), weight.detach().reshape(len(weight), -1)  # (C_out, rest)
        scale = flat_w.norm(dim=1) / flat_d.norm(dim=1)  # (C_out,)
        directions.append((flat_d * scale[:, None]).reshape(weight.shape))
    return directions


def direction(weights: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The k-th direction of an experiment run (seeded: :data:`DIRECTION_SEED` + k)."""
    return filter_normalised(weights, torch.Generator().manual_seed(DIRECTION_SEED + k))


@contextmanager
def kept(weights: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """The weights' values on entry (cloned), copied back into them on leaving, bit for bit, even after an
    error."""
    originals = [w.detach().clone() for w in weights]
    try:
        yield originals
    finally:
        with torch.no_grad():
            for weight, original in zip(weights, originals):
                weight.copy_(original)


Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (images (B, C, H, W), labels (B,))


def mean_loss(model: nn.Module, batches: Batches) -> float:
    """The mean cross-entropy of ``model`` as it is (in eval mode) over every image of ``batches``; the sums are
    added in float64 so that the mean does not depend on how the images are batched beyond float32's rounding."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            tick()  # torch's CPU threads follow the cores other processes leave free
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
            count += len(y)
    return total / count


def slice_losses(model: nn.Module, batches: Batches, weights: Sequence[torch.Tensor],
                 along: Sequence[torch.Tensor], alphas: Sequence[float]) -> list[float]:
    """The loss at weights + alpha * along for each alpha, the weights put back exactly afterwards."""
    losses = []
    with kept(weights) as originals, torch.no_grad():
        for alpha in alphas:
            for weight, original, d in zip(weights, originals, along):
                weight.copy_(original + alpha * d)
            losses.append(mean_loss(model, batches))
    return losses


def second_differences(losses: Sequence[float]) -> list[float]:
    """L[i - 1] - 2 L[i] + L[i + 1] for every inner point of a slice: all >= 0 on a convex curve."""
    return [a - 2 * b + c for a, b, c in zip(losses, losses[1:], losses[2:])]


# ---------------------------------------------------------------------------------------------
# sharpness


def hessian_vector(model: nn.Module, batches: Batches, weights: Sequence[torch.Tensor],
                   vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the mean loss over every image of ``batches``, H its Hessian over ``weights``: per batch the
    gradient of (gradient . v) of its share of the mean (its summed loss / all images), added up."""
    count = sum(len(y) for _, y in batches)
    product = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        tick()
        loss = F.cross_entropy(model(x), y, reduction="sum") / count  # this batch's share of the mean
        grads = torch.autograd.grad(loss, list(weights), create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        for total, part in zip(product, torch.autograd.grad(dot, list(weights))):
            total += part
    return product


def _norm(vector: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in vector))


@dataclass(frozen=True)
class Eigen:
    """The power iteration's answer."""

    value: float  # the Rayleigh quotient v . H v of the last unit vector v: the eigenvalue of largest magnitude
    change: float  # |last value - the one before| / |last value|: how far from converged (NaN after 1 iteration)
    iterations: int  # the steps taken: fewer than asked where H v = 0


def top_eigenvalue(model: nn.Module, batches: Batches, weights: Sequence[torch.Tensor],
                   iterations: int = POWER_ITERATIONS, seed: int = POWER_SEED) -> Eigen:
    """The Hessian's eigenvalue of largest magnitude over ``weights``, by ``iterations`` steps of power
    iteration (v <- H v / |H v|) from a seeded N(0, 1) start; the model is left as it was."""
    if iterations < 1:
        raise ValueError(f"the power iteration needs at least 1 step, not {iterations}")
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(w.shape, generator=generator, dtype=w.dtype) for w in weights]
    size = _norm(vector)
    vector = [v / size for v in vector]
    values: list[float] = []
    for _ in range(iterations):
        product = hessian_vector(model, batches, weights, vector)
        values.append(sum(float((v.double() * p.double()).sum()) for v, p in zip(vector, product)))
        size = _norm(product)
        if size == 0.0:  # H v = 0: v lies in the null space and the quotient is 0
            break
        vector = [p / size for p in product]
    change = abs(values[-1] - values[-2]) / abs(values[-1]) if len(values) > 1 and values[-1] != 0 else math.nan
    return Eigen(values[-1], change, len(values))


# ---------------------------------------------------------------------------------------------
# one run's measures


@dataclass
class Surface:
    """One run's loss surface around its trained weights."""

    setting: str
    seed: int
    run_dir: str
    images: int  # training images the loss was read on
    loss: float  # at the trained weights
    alphas: list[float]
    slices: list[list[float]]  # per direction, the loss at each alpha
    eigen: Eigen

    def rise(self, k: int, at: float = RISE_AT) -> float:
        """L(theta + at d_k) + L(theta - at d_k) - 2 L(theta): how far the loss climbs at +-``at`` (a grid point)."""
        losses = self.slices[k]
        return losses[self.alphas.index(at)] + losses[self.alphas.index(-at)] - 2 * self.loss

    def mean_rise(self) -> float:
        return sum(self.rise(k) for k in range(len(self.slices))) / len(self.slices)

    def convex(self, k: int) -> bool:
        return all(second >= 0 for second in second_differences(self.slices[k]))

    def nonconvex(self) -> int:
        return sum(1 for k in range(len(self.slices)) if not self.convex(k))


def training_batches(loaded, images: int, seed: int = IMAGE_SEED, batch: int = BATCH) -> Batches:
    """``images`` of the run's training split (all of them when it has fewer), drawn with ``seed`` and kept in the
    split's order, preprocessed as the run's evaluation reads them (no augmentation), in batches of ``batch``."""
    from cnnlab.config import quiet_notes
    from cnnlab.evaluate.evaluate import eval_loader

    with quiet_notes():
        _, loader = eval_loader(loaded, split="train", batch_size=batch)
        pairs = list(loader)
    x = torch.cat([p[0] for p in pairs])  # (N, C, H, W)
    y = torch.cat([p[1] for p in pairs])  # (N,)
    picked = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:images].sort().values
    x, y = x[picked], y[picked]
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]


def surface_run(outcome: RunOutcome, probe: Probe) -> Optional[Surface]:
    """The slices and sharpness of a run's best checkpoint; None for a diverged run or one without one."""
    from cnnlab.run import RunFolder
    from cnnlab.train.checkpoint import load_run_model

    best = RunFolder(Path(outcome.run_dir)).best
    if outcome.status == DIVERGED or not best.is_file():
        return None
    loaded = load_run_model(best)
    batches = training_batches(loaded, probe.images)
    model = loaded.model.eval()
    weights = surface_weights(model)
    alphas = grid()
    slices = [slice_losses(model, batches, weights, direction(weights, k), alphas) for k in range(probe.directions)]
    return Surface(outcome.setting, outcome.seed, outcome.run_dir, sum(len(y) for _, y in batches),
                   mean_loss(model, batches), alphas, slices, top_eigenvalue(model, batches, weights, probe.iterations))


def surface_shown(run: Surface) -> str:
    """A run's measures as its line shows them: "loss 0.0412, rise 0.132, eig 41.3" (the loss at the trained
    weights, the mean rise of check (a), the top Hessian eigenvalue), each in a bounded width
    (:func:`cnnlab.text.short_number`: 3 significant digits, 4 for the eigenvalue, an exponent without its plus
    sign: 1.235e4, -6.81e38). A line "surface 20 of 20  resnet56/seed9  loss 0.0412, rise 0.117, eig 1234  59 min
    59 s" is 80 columns; wider measures go on a line of their own (:func:`measure_line`)."""
    return (f"loss {short_number(run.loss)}, rise {short_number(run.mean_rise())}, "
            f"eig {short_number(run.eigen.value, 4)}")


def _losses_text(losses: Sequence[float]) -> str:
    return " ".join(f"{value:.6g}" for value in losses)


def surface_rows(surfaces: Sequence[Surface]) -> list[dict[str, Any]]:
    """One table row per (run, direction), with the rise and convexity of its slice, and one per run with its
    sharpness."""
    rows = []
    for run in surfaces:
        base = {"seed": run.seed, "run_dir": run.run_dir, "images": run.images, "loss": run.loss}
        for k, losses in enumerate(run.slices):
            rows.append({"setting": f"slice: {run.setting}", **base, "direction": k, "rise": run.rise(k),
                         "convex": run.convex(k), "min_second_difference": min(second_differences(losses)),
                         "alphas": _losses_text(run.alphas), "losses": _losses_text(losses)})
        rows.append({"setting": f"sharpness: {run.setting}", **base, "top_eigenvalue": run.eigen.value,
                     "eigen_last_change": run.eigen.change, "power_iterations": run.eigen.iterations})
    return rows


# ---------------------------------------------------------------------------------------------
# the checks


RISE_CLAIM = (f"the ResNet's loss rises less around its minimum: {RESNET}'s mean rise at +-{RISE_AT:g} of a filter's "
              f"norm is lower than {PLAIN}'s")
SHARPNESS_CLAIM = f"the ResNet's minimum is flatter: {RESNET}'s top Hessian eigenvalue is lower than {PLAIN}'s"
# The shared rule (LEARNED_RULE) asks one side of a comparison to have learned. Here both must: (a) and (b) compare
# the shapes of two trained minima, and a net still near its initial loss has not reached one.
BOTH_LEARNED_RULE = (f"Both nets learned: a net learned when its mean final validation accuracy is at least chance "
                     f"(1 / classes) + {LEARNED_MARGIN * 100:g} points; unless both did, (a) and (b) are "
                     "INCONCLUSIVE, never HOLDS or DOES NOT HOLD.")


def surface_checks(surfaces: Sequence[Surface], outcomes: Sequence[RunOutcome], chance: float) -> list[Check]:
    """Checks (a) and (b) of the rule, each INCONCLUSIVE unless both nets learned; (c) is only reported."""
    checks = []
    for claim, measure, digits in ((RISE_CLAIM, Surface.mean_rise, 4),
                                   (SHARPNESS_CLAIM, lambda run: run.eigen.value, 3)):
        values = {net: [measure(run) for run in surfaces if run.setting == net] for net in NETS}
        # The top eigenvalue measures a minimum's curvature only where it is positive: a negative one (largest in
        # magnitude) says the weights sit at a saddle, where "lower is flatter" would reward it
        at_saddle = (lambda v: math.isfinite(v) and v < 0) if claim == SHARPNESS_CLAIM else (lambda v: False)
        kept = {net: [v for v in values[net] if not at_saddle(v)] for net in NETS}
        stats = {net: finite_stats(kept[net]) for net in NETS}
        check = better(claim, RESNET, stats[RESNET], PLAIN, stats[PLAIN], higher=False, scale=1.0, unit="",
                       digits=digits)
        # A loss that overflowed leaves a run without a finite measure: it is left out of the mean, and said
        said = []
        for why, counts in (("a measure that is not finite", {net: len(kept[net]) - stats[net].n for net in NETS}),
                            ("a negative top eigenvalue (a saddle, not a minimum)",
                             {net: len(values[net]) - len(kept[net]) for net in NETS})):
            if any(counts.values()):
                said.append(f"runs left out for {why}: "
                            + ", ".join(f"{net} {count}" for net, count in counts.items() if count))
        if said:
            check = Check(check.claim, check.verdict, "; ".join([check.margin, *said]))
        checks.append(unless_each_learned(check, outcomes, chance, NETS))
    return checks


# ---------------------------------------------------------------------------------------------
# plots


def slices_plot(path: Path, surfaces: Sequence[Surface]) -> Path:
    """Li et al.'s Fig. 5 in one dimension: the loss along each direction, one panel per net (shared, log
    y axis), a line per direction and seed, coloured by seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NETS), figsize=(10.4, 4.4), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, net in zip(axes[0], NETS):
        for run in (run for run in surfaces if run.setting == net):
            for k, losses in enumerate(run.slices):
                ax.plot(run.alphas, losses, color=colours[run.seed % len(colours)], linewidth=1.0, alpha=0.8,
                        label=f"seed {run.seed}" if k == 0 else None)
        nonconvex = sum(run.nonconvex() for run in surfaces if run.setting == net)
        slices = sum(len(run.slices) for run in surfaces if run.setting == net)
        ax.set_title(f"{net}: {nonconvex} of {slices} slices not convex", fontsize=10)
        ax.set_xlabel("alpha (filter norms along a filter-normalised random direction)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (cross-entropy, eval mode)")
    fig.suptitle("Loss along random directions around the trained weights (claimed: the ResNet's is smoother and "
                 "flatter;\nLi et al. 2018, Fig. 5; note 004)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, "the loss slices plot")


def sharpness_plot(path: Path, surfaces: Sequence[Surface]) -> Path:
    """The top Hessian eigenvalue per run, a dot per seed and a bar for the mean, per net."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for i, net in enumerate(NETS):
        values = [run.eigen.value for run in surfaces if run.setting == net and math.isfinite(run.eigen.value)]
        if values:
            ax.bar(i, sum(values) / len(values), width=0.5, alpha=0.4, color="tab:blue" if net == RESNET else "tab:red")
            ax.scatter([i] * len(values), values, color="black", s=14, zorder=3)
    ax.set_xticks(range(len(NETS)))
    ax.set_xticklabels(NETS)
    steps = sorted({run.eigen.iterations for run in surfaces})
    ax.set_ylabel(f"top Hessian eigenvalue ({' or '.join(map(str, steps)) or 'no'} power iterations)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Sharpness of the trained minimum (claimed: the ResNet's is flatter)\n(bar: mean over seeds; "
                 "dots: each seed)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, "the sharpness plot")


# ---------------------------------------------------------------------------------------------
# the experiment


def run_surface(ctx: RunContext) -> ExperimentResult:
    budget = BUDGETS[ctx.size]
    configs = {net: experiment_config(ctx.data, depth_sections(net, budget)) for net in NETS}
    outcomes = train_settings(ctx, configs, evaluate=False)  # measured on training images: no test pass
    chance = chance_level(outcomes)
    probe = PROBES[ctx.size]
    # a hundred losses and probe.iterations Hessian products per run: a line for each
    surfaces = measure_runs(ctx, outcomes, "surface", lambda o: surface_run(o, probe), surface_shown)
    extra = {PLAIN: {"shortcuts": False}, RESNET: {"shortcuts": True}}
    summary = summary_rows(outcomes, list(NETS), ["train_loss", "train_acc", "val_acc", "seconds"], extra)
    for row in summary:
        mine = [run for run in surfaces if run.setting == row["setting"]]
        for key, stats in (("rise", finite_stats(run.mean_rise() for run in mine)),
                           ("top_eigenvalue", finite_stats(run.eigen.value for run in mine))):
            row[f"{key}_mean"] = stats.mean if stats.n else None
            row[f"{key}_std"] = stats.std if stats.n else None
        row["slices"] = sum(len(run.slices) for run in mine)
        row["nonconvex_slices"] = sum(run.nonconvex() for run in mine)
    rows = summary + [o.row(**extra[o.setting]) for o in outcomes] + surface_rows(surfaces)
    plots = [slices_plot(ctx.out / "loss_slices.png", surfaces),
             sharpness_plot(ctx.out / "sharpness.png", surfaces)]
    return ExperimentResult(rows, surface_checks(surfaces, outcomes, chance), plots,
                            runs=[Path(o.run_dir) for o in outcomes])


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with fewer than 2 classes, a class too small for the tiny subset, or too few training images at
    ``size`` for one batch (both nets share the data and the batch)."""
    return data_problem(dataset, per_class=BUDGETS["tiny"].train_per_class, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec, depth_sections(PLAIN, BUDGETS[at]))])


_ALPHAS = grid()
SURFACE = Experiment(
    name="loss-surface",
    claim="Residual modules make the loss surface smoother: around its trained minimum a ResNet's loss rises less "
          "and its curvature is lower than those of the same net without shortcuts, whose surface is rougher (Li "
          "et al. 2018, Fig. 5: ResNet-56 against ResNet-56 without shortcuts).",
    source=("004", "在Loss函数中增加残差网络里面的残差模块,使得损失曲面更加平滑。"),
    rule=f"{PLAIN} and {RESNET} trained with one recipe, 3+ seeds each; each run's best checkpoint (by validation "
         "accuracy) measured in eval mode (BatchNorm's running statistics) on a fixed, seeded set of its own "
         "training images as its evaluation reads them; the loss is the mean cross-entropy. Directions: d ~ N(0, 1) "
         "shaped like the conv and linear weights, each filter (output channel, or row) rescaled to the norm of the "
         "same filter of the trained weights; biases and BatchNorm parameters get 0 (Li et al.). Each of a fixed "
         f"number of seeded directions gives a slice L(theta + alpha d) at {GRID_POINTS} alphas from "
         f"{_ALPHAS[0]:g} to {_ALPHAS[-1]:g}. (a) 'The ResNet's loss rises less': per run the mean over directions "
         f"of L(theta + {RISE_AT:g} d) + L(theta - {RISE_AT:g} d) - 2 L(theta); HOLDS when {RESNET}'s mean over "
         f"seeds is lower than {PLAIN}'s by more than the larger spread (sample std over seeds), DOES NOT HOLD "
         "when higher by as much, INCONCLUSIVE in between. (b) 'The ResNet's minimum is flatter': the Hessian's "
         f"eigenvalue of largest magnitude over the same weights, by {POWER_ITERATIONS} steps of power iteration "
         f"({PROBES['tiny'].iterations} at tiny) with Hessian-vector products from a seeded start; the same rule "
         "(lower is flatter); a run whose eigenvalue is negative (a saddle, not a minimum) is left out of its mean "
         "and named. A run whose measure is not finite (a loss that overflowed) is left out of that mean "
         f"and named. (c) Reported, not judged: per net, the slices whose {GRID_POINTS - 2} second differences are not all >= 0 (not convex). "
         f"Fewer than {MIN_SEEDS} seeds: INCONCLUSIVE. {BOTH_LEARNED_RULE}",
    runs=f"{PLAIN} and {RESNET} (cnnlab's CIFAR nets, BatchNorm) at 16x16 with degradation's recipe (He et al.'s: "
         "SGD momentum 0.9, weight decay 1e-4, lr 0.1 per 128 images at batch 64, cosine decay, no augmentation); "
         f"then on each run's best checkpoint the loss along filter-normalised random directions at {GRID_POINTS} "
         f"points of [{_ALPHAS[0]:g}, {_ALPHAS[-1]:g}] and the top Hessian eigenvalue ({POWER_ITERATIONS} power "
         f"iterations; {PROBES['tiny'].iterations} at tiny)",
    sizes={
        "tiny": SizeInfo("digits at 16x16, 10 images per class, 1 epoch (6 steps of 16), the 2 nets, 1 seed; the loss "
                         f"on {PROBES['tiny'].images} training images, {PROBES['tiny'].directions} directions, "
                         f"{PROBES['tiny'].iterations} power iterations (mechanics only)", 16.0),
        "quick": SizeInfo("digits at 16x16, all 1,259 training images, 3 epochs (57 steps), the 2 nets x 3 seeds; "
                          f"the loss on {PROBES['quick'].images} training images, {PROBES['quick'].directions} "
                          "directions", 228.0),
        "full": SizeInfo("Fashion-MNIST at 16x16, 100 training images per class (1,000; 600 of the training split "
                         "held out as val), 8 epochs (120 steps), the 2 nets x 3 seeds; the loss on all "
                         f"{PROBES['full'].images} training images, {PROBES['full'].directions} directions",
                         830.0),  # 13 min 46 s alone on 2 cores (docs/experiments.md)
    },
    run=run_surface,
    notes=("004",),
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [SURFACE]
