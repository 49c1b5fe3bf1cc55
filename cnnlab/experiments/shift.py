"""The shift experiment: convolution is translation-equivariant, and pooling makes a layer less sensitive to a
small shift (notes 000 and 003).

One small CNN (cnnlab's ``vgg_mini`` at three stages: 3x3 conv, BatchNorm, ReLU, 2x2 max pool; global average
pooling into the classifier) is trained briefly without augmentation, so whatever tolerance of shifts it shows
comes from its architecture, not from shifted training images. Its last weights are then measured in eval mode
(BatchNorm is then a fixed per-channel affine map, which commutes with a shift):

(a) Equivariance. For every conv block (conv, norm, activation; stride 1), the block's output for the image
    shifted by s pixels against the block's output for the image, shifted by one position, where s is the
    block's cumulative stride (1 before the first pool, 2 after it, 4 after the second): a shift of one position
    of that map. The shift is circular (``torch.roll``), so the two differ only where a position's receptive
    field meets the zero padding or the wrapped edge; :func:`interior_mask` leaves those positions out by the
    receptive-field arithmetic, and the border is reported on its own. A copy of the network with circular
    padding must match on the whole map (of the image cropped to a whole number of the block's strides, so that
    every pool tiles it). Computed in float64, so round-off cannot pass for a difference.
(b) Sensitivity. For every max pool, the relative change ||f(x shifted 1 pixel) - f(x)|| / ||f(x)|| of the
    pool's input and of its output (the same positions compared, no shift undone), over the 4 directions.
(c) The classifier. Test accuracy, and the share of test images whose predicted class is unchanged
    (Zhang 2019's consistency), for images shifted by 1, 2 and 3 pixels in each of the 4 directions, the
    vacated edge filled with black.

(a) and (b) read the first :data:`cnnlab.experiments.activations.FIXED_BATCH` validation images; only (c)
uses the test split, and nothing is chosen on it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cnnlab.experiments.activations import finite_stats, fixed_batch, last_model
from cnnlab.experiments.base import (
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    bar_plot,
    verdict_of,
)
from cnnlab.experiments.training import (
    ALIKE_NOISE,
    DIVERGED,
    LEARNED_RULE,
    MIN_SEEDS,
    RunOutcome,
    alike,
    better,
    chance_level,
    data_problem,
    experiment_config,
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.layers.blocks import ConvNormAct

MODEL = "vgg_mini"
# Three stages of (3x3 convs, channels), each ending in a 2x2 max pool: 28 -> 14 -> 7 -> 3 on Fashion-MNIST.
MODEL_CFG = [[1, 16], [1, 32], [1, 64]]
SETTING = "cnn"  # the one trained setting: OUT/runs/cnn/seedK
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up
SHIFTS = (1, 2, 3)  # pixels, for (c)

# The verdict rule's numbers, fixed before any run.
EXACT_TOLERANCE = 1e-9  # (a): float64 relative error; round-off is ~1e-15, a real difference is >1e-3
POOL_MARGIN = 0.05  # (b): the pool's output must change less than its input by more than this and the spread
SHIFT_TOLERANCE = 0.01  # (c): a 1-pixel shift may cost this much test accuracy plus the spread


@dataclass(frozen=True)
class Recipe:
    train_per_class: Optional[int]  # training images per class (None: the whole training split)
    epochs: int


RECIPES = {
    "tiny": Recipe(train_per_class=20, epochs=1),
    "quick": Recipe(train_per_class=None, epochs=8),
    "full": Recipe(train_per_class=500, epochs=8),
}
DATA = {"tiny": "digits", "quick": "digits", "full": "fashion-mnist"}
VAL_FRACTION = 0.02  # Fashion-MNIST: 1,200 training images held out (digits has its own val split)


def shift_sections(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """vgg_mini (3 stages) with augmentation's SGD recipe, and no augmentation: no shifted training image."""
    return {
        "model": {"name": MODEL, "options": {"cfg": MODEL_CFG}},
        "data": {"train_per_class": recipe.train_per_class, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none"},
        "optim": {"name": "sgd", "lr": 0.1, "lr_batch": 128, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": recipe.epochs, "batch_size": 64},
    }


# ---------------------------------------------------------------------------------------------
# shifting images and maps


def shift_image(images: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """``images`` (B, C, H, W) with their content moved ``dy`` rows down and ``dx`` columns right; the vacated
    rows and columns take ``fill`` (C,), the value of a black pixel after normalisation."""
    height, width = images.shape[-2:]
    out = fill.to(images).view(1, -1, 1, 1).expand_as(images).clone()
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


@dataclass(frozen=True)
class Geometry:
    """Where a map position looks in the input: position i of an axis covers input pixels
    [i * jump + start, i * jump + start + size - 1] (negative or past the edge: padding). Square kernels and
    symmetric padding (vgg_mini's 3x3 convs and 2x2 pools): :meth:`after` reads the first axis's values."""

    size: int = 1  # receptive field, pixels
    jump: int = 1  # cumulative stride: input pixels per map position
    start: int = 0  # the input pixel of position 0's first tap

    def after(self, module: nn.Module) -> "Geometry":
        """The geometry after ``module`` (a conv, a pool, or a block of them; others leave it unchanged)."""
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride, padding = (_first(getattr(module, key)) for key in ("kernel_size", "stride", "padding"))
            dilation = _first(getattr(module, "dilation", 1))
            return Geometry(self.size + (kernel - 1) * dilation * self.jump, self.jump * stride,
                            self.start - padding * self.jump)
        geometry = self
        for child in module.children():
            geometry = geometry.after(child)
        return geometry


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def interior_mask(geometry: Geometry, side: int, positions: int, image_side: int) -> torch.Tensor:
    """(positions,) True where the map position's receptive field lies inside the image both for the image and
    for the image rolled by ``side`` pixels (= one position): there neither the padding nor the wrapped edge
    reaches it, so f(roll(x))[i] and f(x)[i - 1] are computed from the same pixels."""
    index = torch.arange(positions)
    first = index * geometry.jump + geometry.start  # the receptive field's first input pixel
    last = first + geometry.size - 1
    # f(roll(x))[i] reads rolled pixels [first, last]: inside the image and past the wrapped band [0, side)
    # f(x)[i - 1] reads [first - side, last - side]: inside the image (the same condition)
    return (first >= side) & (last <= image_side - 1) & (index >= 1)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||; 0 when both are 0."""
    scale = float(b.norm())
    difference = float((a - b).norm())
    return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)


# ---------------------------------------------------------------------------------------------
# (a) equivariance


def _circular(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose convs pad circularly (the same weights): a shift then wraps around exactly."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.Conv2d):
            module.padding_mode = "circular"
    return twin


def equivariance_rows(model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
    """One row per conv block of ``model.features`` (and per axis): its output for the image rolled by its
    cumulative stride against its output rolled by one position, in the interior (zero padding), on the whole
    map (zero padding: the border effect) and on the whole map with circular padding (of the image cropped to a
    whole number of the block's strides, which a circular shift needs). float64, eval mode."""
    model = copy.deepcopy(model).double().eval()
    twin = _circular(model)
    x = images.double()
    image_side = x.shape[-1]
    rows = []
    geometry = Geometry()
    with torch.no_grad():
        for index, module in enumerate(model.features):
            geometry = geometry.after(module)
            if not isinstance(module, ConvNormAct):
                continue
            prefix, twin_prefix = model.features[:index + 1], twin.features[:index + 1]
            step = geometry.jump  # input pixels per position of this block's map
            # The circular copy wraps exactly only where the pools before the block tile the image: on a side that
            # is not a whole number of strides (30 pixels, 2 pools) a pool leaves its last row out, and the rolled
            # image is pooled in other pairs. Its check reads the top-left crop of whole strides (28 of 30).
            periodic = x[..., :x.shape[-2] - x.shape[-2] % step, :x.shape[-1] - x.shape[-1] % step]
            for axis, name in ((-1, "width"), (-2, "height")):
                rolled = torch.roll(x, step, dims=axis)
                shifted_map = torch.roll(prefix(x), 1, dims=axis)  # the map moved by one position
                of_shifted = prefix(rolled)  # the map of the moved image
                keep = interior_mask(geometry, step, of_shifted.shape[axis], image_side)
                inside = (lambda t: t[..., keep]) if axis == -1 else (lambda t: t[..., keep, :])
                rows.append({
                    "part": "a", "layer": f"features.{index}", "axis": name, "input_shift_px": step,
                    "map_side": of_shifted.shape[axis], "interior_positions": int(keep.sum()),
                    "receptive_field": geometry.size,
                    "interior_rel_error": _relative(inside(of_shifted), inside(shifted_map)),
                    "whole_map_rel_error": _relative(of_shifted, shifted_map),
                    "circular_rel_error": _relative(twin_prefix(torch.roll(periodic, step, dims=axis)),
                                                    torch.roll(twin_prefix(periodic), 1, dims=axis)),
                })
    return rows


# ---------------------------------------------------------------------------------------------
# (b) sensitivity before and after each pool


def pool_rows(model: nn.Module, images: torch.Tensor, fill: torch.Tensor) -> list[dict[str, Any]]:
    """One row per max pool of ``model.features``: the relative change of its input and of its output when the
    image moves 1 pixel (pooled over the 4 directions: sqrt(sum ||diff||^2 / sum ||f||^2)). Eval mode; the
    model is left in the mode it was in."""
    pools = [(index, m) for index, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(index: int):
        def hook(module, args, output):
            seen[index] = (args[0].detach().clone(), output.detach().clone())
        return hook

    def maps(x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        seen.clear()
        model.features(x)
        return dict(seen)

    handles = [module.register_forward_hook(record(index)) for index, module in pools]
    was_training = model.training
    try:
        model.eval()  # BatchNorm's running statistics: the same map for an image whatever else is in the batch
        with torch.no_grad():
            base = maps(images)
            change = {index: [0.0, 0.0] for index, _ in pools}  # sum of squared differences: before, after
            for dy, dx in DIRECTIONS:
                moved = maps(shift_image(images, dy, dx, fill))
                for index, _ in pools:
                    for side in (0, 1):
                        change[index][side] += float((moved[index][side] - base[index][side]).pow(2).sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    rows = []
    for number, (index, _) in enumerate(pools, start=1):
        before_norm = float(base[index][0].pow(2).sum()) * len(DIRECTIONS)
        after_norm = float(base[index][1].pow(2).sum()) * len(DIRECTIONS)
        before = math.sqrt(change[index][0] / before_norm) if before_norm else math.nan
        after = math.sqrt(change[index][1] / after_norm) if after_norm else math.nan
        rows.append({"part": "b", "layer": f"features.{index}", "pool": number,
                     "map_side_before": base[index][0].shape[-1], "map_side_after": base[index][1].shape[-1],
                     "rel_change_before": before, "rel_change_after": after,
                     "ratio_after_before": after / before if before else math.nan})
    return rows


# ---------------------------------------------------------------------------------------------
# (c) the classifier on shifted test images


def shifted_accuracy(loaded, shifts=SHIFTS) -> dict[str, float]:
    """Test accuracy at shift 0 and, per shift in pixels, over the 4 directions: the accuracy and the share of
    images whose predicted class is the unshifted image's (consistency)."""
    from cnnlab.evaluate.evaluate import black_fill, eval_loader

    fill = black_fill(loaded.meta)
    _, loader = eval_loader(loaded, split="test")
    correct = {0: 0, **{s: 0 for s in shifts}}
    same = {s: 0 for s in shifts}
    images_seen = 0
    model = loaded.model.eval()
    with torch.no_grad():
        for images, labels in loader:
            base = model(images).argmax(1)
            correct[0] += int((base == labels).sum())
            images_seen += len(labels)
            for s in shifts:
                for dy, dx in DIRECTIONS:
                    predicted = model(shift_image(images, dy * s, dx * s, fill)).argmax(1)
                    correct[s] += int((predicted == labels).sum())
                    same[s] += int((predicted == base).sum())
    views = images_seen * len(DIRECTIONS)
    result = {"test_acc_shift0": correct[0] / images_seen}
    for s in shifts:
        result[f"test_acc_shift{s}"] = correct[s] / views
        result[f"consistency_shift{s}"] = same[s] / views
    return result


# ---------------------------------------------------------------------------------------------
# the experiment


def measure_run(outcome: RunOutcome) -> Optional[dict[str, Any]]:
    """Everything (a)-(c) measure on one run's last weights; None for a diverged run or one without weights."""
    if outcome.status == DIVERGED:
        return None
    loaded = last_model(outcome.run_dir)
    if loaded is None:
        return None
    from cnnlab.evaluate.evaluate import black_fill

    images = fixed_batch(loaded)
    return {"equivariance": equivariance_rows(loaded.model, images),
            "pools": pool_rows(loaded.model, images, black_fill(loaded.meta)),
            "accuracy": shifted_accuracy(loaded)}


def equivariance_check(measured: list[dict]) -> Check:
    """(a): exact in the interior and with circular padding, for every block, axis and run."""
    rows = [row for m in measured for row in m["equivariance"]]
    if not rows:
        return Check("(a) conv is shift-equivariant", INCONCLUSIVE, "no trained network to measure")
    interior = max(row["interior_rel_error"] for row in rows)
    circular = max(row["circular_rel_error"] for row in rows)
    border = [row["whole_map_rel_error"] for row in rows]
    return Check(
        "(a) every conv block's map of a shifted image equals its shifted map (away from the border; everywhere "
        "with circular padding)",
        verdict_of(interior <= EXACT_TOLERANCE and circular <= EXACT_TOLERANCE),
        f"largest relative error over {len(rows)} block x axis x run: interior {interior:.1e}, circular padding "
        f"{circular:.1e} (limit {EXACT_TOLERANCE:g}); the whole map with zero padding differs by "
        f"{min(border):.3f} to {max(border):.3f} (the border effect, reported, not judged)")


def pool_checks(measured: list[dict]) -> list[Check]:
    """(b): per pool, its output's relative change under a 1-pixel shift against its input's, over the seeds."""
    checks = []
    pools = sorted({row["pool"] for m in measured for row in m["pools"]})
    for pool in pools:
        rows = [row for m in measured for row in m["pools"] if row["pool"] == pool]
        after = finite_stats(row["rel_change_after"] for row in rows)
        before = finite_stats(row["rel_change_before"] for row in rows)
        checks.append(better(
            f"(b) max pool {pool} makes the features less sensitive to a 1-pixel shift (smaller relative change "
            "after it than before it)", "after", after, "before", before, higher=False, min_margin=POOL_MARGIN,
            scale=1.0, unit="", digits=3))  # 3 digits: a lead of 0.052 against the margin 0.05 read "0.05 vs 0.05"
    if not pools:
        checks.append(Check("(b) pooling makes the features less sensitive to a 1-pixel shift", INCONCLUSIVE,
                             "no trained network to measure"))
    return checks


def classifier_check(measured: list[dict], outcomes: list[RunOutcome], chance: float) -> Check:
    """(c): the test accuracy at a 1-pixel shift alike the unshifted one (1 point plus the spread)."""
    plain = finite_stats(m["accuracy"]["test_acc_shift0"] for m in measured)
    moved = finite_stats(m["accuracy"]["test_acc_shift1"] for m in measured)
    # the same nets on moved images: judged by their per-net differences, whose spread the nets' own cancels
    costs = finite_stats(m["accuracy"]["test_acc_shift1"] - m["accuracy"]["test_acc_shift0"] for m in measured)
    check = alike(f"(c) a 1-pixel shift costs the classifier at most {SHIFT_TOLERANCE * 100:g} point of test "
                  "accuracy (mean over 4 directions)", "shifted 1 px", moved, "unshifted", plain,
                  tolerance=SHIFT_TOLERANCE, differences=costs)
    return unless_learned(check, outcomes, chance, (SETTING,))


def run_shift(ctx: RunContext) -> ExperimentResult:
    recipe = RECIPES[ctx.size]
    configs = {SETTING: experiment_config(ctx.data, shift_sections(recipe))}
    outcomes = train_settings(ctx, configs)
    measured_by_run = [(o, measure_run(o)) for o in outcomes]
    measured = [m for _, m in measured_by_run if m is not None]
    chance = chance_level(outcomes)

    accuracy_keys = ["test_acc_shift0"] + [f"{kind}_shift{s}" for s in SHIFTS
                                            for kind in ("test_acc", "consistency")]
    rows = summary_rows(outcomes, [SETTING], ["val_acc", "test_acc"], {SETTING: {"part": "c", "model": MODEL}})
    for key in accuracy_keys:
        stats = finite_stats(m["accuracy"][key] for m in measured)
        rows[0][f"{key}_mean"] = stats.mean if stats.n else None
        rows[0][f"{key}_std"] = stats.std if stats.n else None
    for outcome, m in measured_by_run:
        if m is None:
            continue
        where = {"seed": outcome.seed, "run_dir": outcome.run_dir}
        rows += [{**where, **row} for row in m["equivariance"] + m["pools"]]
        rows.append({**where, "part": "c", **m["accuracy"]})

    checks = [equivariance_check(measured), *pool_checks(measured), classifier_check(measured, outcomes, chance)]
    plots = _plots(ctx.out, measured) if measured else []
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def _plots(out: Path, measured: list[dict]) -> list[Path]:
    pools = sorted({row["pool"] for m in measured for row in m["pools"]})

    def mean_pool(pool: int, key: str) -> float:
        return finite_stats(row[key] for m in measured for row in m["pools"] if row["pool"] == pool).mean

    def mean_acc(key: str) -> float:
        return finite_stats(m["accuracy"][key] for m in measured).mean

    sensitivity = bar_plot(
        out / "shift_pooling.png", "Max pooling makes the features less sensitive to a 1-pixel shift (note 003)",
        [f"pool {p}" for p in pools],
        {"relative change under a 1-pixel shift": {"before the pool": [mean_pool(p, "rel_change_before") for p in pools],
                                                    "after the pool": [mean_pool(p, "rel_change_after") for p in pools]}})
    labels = ["0 px"] + [f"{s} px" for s in SHIFTS]
    classifier = bar_plot(
        out / "shift_accuracy.png", "The classifier on shifted test images (no shift augmentation in training)",
        labels,
        {"test accuracy": {"accuracy": [mean_acc("test_acc_shift0")] + [mean_acc(f"test_acc_shift{s}") for s in SHIFTS]},
         "prediction unchanged by the shift": {"consistency": [1.0] + [mean_acc(f"consistency_shift{s}")
                                                                      for s in SHIFTS]}})
    return [sensitivity, classifier]


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with a class too small for the tiny subset, images smaller than vgg_mini takes, no test split
    ((c) is judged on test accuracy), or too few training images for one batch at ``size``."""
    return data_problem(dataset, per_class=RECIPES["tiny"].train_per_class, model=MODEL, test_split=True, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec, shift_sections(RECIPES[at]))])


SHIFT = Experiment(
    name="shift",
    claim="Convolution is translation-equivariant (shifting the input shifts the feature map), and pooling makes a "
          "layer less sensitive to a small shift, so a CNN's classification tolerates a 1-pixel shift.",
    source=("003", "使用池化层的理由:卷积对位置敏感,需要降低卷积层对位置的敏感性 "
                   "(000: translation equivariance: Features of images don't depend on their location in the image)"),
    rule="One small CNN trained without augmentation, 3+ seeds, measured on its last weights in eval mode. (a) For "
         "every conv block, the map of the image shifted by the block's cumulative stride equals its map shifted by "
         f"one position to a float64 relative error of at most {EXACT_TOLERANCE:g}, on the positions whose "
         "receptive field meets neither the zero padding nor the wrapped edge, and on the whole map with circular "
         "padding (of the image cropped to whole strides, which a circular shift through the pools needs): HOLDS, else DOES NOT HOLD (exact arithmetic, decided at any seed count; the whole map with zero "
         "padding is reported, not judged). (b) Per max pool: the relative change ||f(x moved 1 pixel) - f(x)|| / "
         "||f(x)|| of its output (4 directions, the first 256 validation images) is below its input's by more than "
         f"the larger spread (sample std over seeds) and {POOL_MARGIN:g}: HOLDS; above by as much: DOES NOT HOLD; "
         "else INCONCLUSIVE. (c) The mean test accuracy on images moved 1 pixel (4 directions, black fill) is "
         f"within {SHIFT_TOLERANCE * 100:g} point plus the spread over seeds of the per-net differences of the "
         f"unshifted accuracy (the same nets measured twice): HOLDS, else DOES NOT HOLD; {ALIKE_NOISE}; 2 and 3 "
         "pixels and the share of unchanged predictions are reported, not "
         f"judged. Fewer than {MIN_SEEDS} seeds: (b) and (c) INCONCLUSIVE. {LEARNED_RULE} It applies to (c); (a) and "
         "(b) measure the layers, whatever the weights learned.",
    runs="vgg_mini with three stages (3x3 conv 16-32-64, BatchNorm, ReLU, 2x2 max pool; global average pool), no "
         "augmentation; SGD lr 0.1 per 128 images, momentum 0.9, weight decay 5e-4, cosine, batch 64",
    sizes={
        "tiny": SizeInfo("digits (32x32), 20 images per class, 1 epoch, 1 seed (mechanics only; (a) is decided)", 8.0),
        "quick": SizeInfo("digits (32x32), all 1,259 training images, 8 epochs, 3 seeds", 20.0),
        "full": SizeInfo("Fashion-MNIST 28x28, 500 images per class (5,000), 1,200 val, 10,000 test; 8 epochs, "
                         "3 seeds", 80.0),
    },
    run=run_shift,
    notes=("003", "000"),
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [SHIFT]
