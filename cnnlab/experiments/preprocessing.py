"""The normalize experiment: inputs normalised by the data's mean/std vs raw [0, 255] pixels (note 002).

The notes (002, "Data Preprocessing"): subtract the per-channel mean and divide by the per-channel std,
because "before normalisation the classification loss is very sensitive to changes in the weight
matrix and hard to optimise; after normalisation it is less sensitive to small weight changes and
easier to optimise".

Three input scalings, each a setting of cnnlab's one normalisation knob (:func:`cnnlab.data.stats.
resolve_normalization`; the loaders compute ``(x - mean) / std`` with x the pixels on the [0, 1] scale):

* ``normalised``: ``data.normalize=dataset``, the training split's mean and std: inputs centred, unit std;
* ``unit``: ``data.normalize=none``, mean 0 and std 1: the pixels enter as [0, 1];
* ``raw``: ``data.mean=[0]``, ``data.std=[1/255]``: (x - 0) / (1/255) = 255 x, the pixels as stored, [0, 255].

Two measurements:

1. Training (the claim "easier to optimise"): LeNet-5 without normalisation layers (so nothing inside the
   network undoes the input's scale) trained with one recipe under each scaling; and, reported beside it,
   the same net with BatchNorm after each conv, which rescales the first layer's output whatever the input.
2. Sensitivity (the claim "the loss is sensitive to changes in the weight matrix"): a linear softmax
   classifier on the pixels, as in the notes' figure, at W = 0; the mean absolute change of the loss on a
   fixed set of training images when W gets a small random perturbation (the same draws for every scaling).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch

from cnnlab.config import DataConfig, RunConfig
from cnnlab.errors import counted
from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    bar_plot,
)
from cnnlab.experiments.training import (
    data_problem,
    DIVERGED,
    LEARNED_RULE,
    MIN_SEEDS,
    SeedStats,
    better,
    chance_level,
    experiment_config,
    line_plot,
    mean_curve,
    summary_rows,
    train_settings,
    unless_learned,
)

MODEL = "lenet5"
NORMALISED, UNIT, RAW = "normalised", "unit", "raw"
SCALINGS = (NORMALISED, UNIT, RAW)
SCALING_TEXT = {NORMALISED: "normalised by the data's mean/std", UNIT: "[0, 1] pixels, not normalised",
                RAW: "raw [0, 255] pixels"}
# The data keys of each scaling. Explicit data.mean/std override data.normalize; one value serves every channel.
SCALING_DATA: dict[str, dict[str, Any]] = {
    NORMALISED: {"normalize": "dataset"},
    UNIT: {"normalize": "none"},
    RAW: {"mean": [0.0], "std": [1 / 255]},  # (x - 0) / (1/255) = 255 x for x on the [0, 1] scale
}
NETS = {"plain": "none", "bn": "bn"}  # net -> model.norm: LeNet-5 as the paper has it, and with BN after each conv
NET_TEXT = {"plain": "LeNet-5, no normalisation layers", "bn": "LeNet-5 + BatchNorm after each conv"}

# recipes/lenet5-digits.yaml, LeNet-5's known-good recipe in cnnlab (tanh, SGD 0.05 with momentum, cosine after
# one warmup epoch (none in a 1-epoch run), batch 32, light shifts); the epochs and the training subset come
# from the size.
RECIPE: dict[str, dict[str, Any]] = {
    "model": {"name": MODEL},
    "aug": {"preset": "light"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "train": {"batch_size": 32},
    "log": {"quiet": True},
}
SIZES = {  # size -> (training images per class, None: all; epochs; nets); tiny trains the plain net only
    "tiny": (10, 1, ("plain",)),
    "quick": (None, 6, ("plain", "bn")),
    "full": (1000, 3, ("plain", "bn")),
}

# The sensitivity measure: a linear softmax classifier (logits = W x, W of shape (classes, pixels)) at W = 0,
# perturbed by W = SIGMA * N(0, 1) draws; the notes' small-random-number scale (W = 0.01 * np.random.randn).
SIGMA = 0.01
DRAWS = 16  # perturbations averaged
SENSITIVITY_IMAGES = 1000  # at most this many of the runs' training images, the first ones, unaugmented


def setting_name(net: str, scaling: str) -> str:
    """Run folder name: OUT/runs/NAME/seedK."""
    return scaling if net == "plain" else f"{net}-{scaling}"


def check_normalize_data(dataset, size: str) -> Optional[str]:
    """Why ``dataset`` cannot be used at ``size``, or None."""
    return data_problem(dataset, model=MODEL, size=size,
                        runs_at=lambda at: list(normalize_configs(dataset.spec, at).values()))


# ---------------------------------------------------------------------------------------------
# sensitivity of a linear classifier's loss to small weight changes


def _inputs(data: str, per_class: Optional[int], scaling: str,
            count: int) -> tuple[torch.Tensor, torch.Tensor, int, list[float], list[float]]:
    """(x (N, D) float64 as the network sees them, labels (N,), classes, mean, std): the first ``count`` images of
    the runs' training split (classes mixed), unaugmented, normalised the way a run with ``scaling`` does it."""
    from cnnlab.data import ChannelStats, dataset_stats, load_source, resolve_normalization
    from cnnlab.data.loaders import make_loader

    config = DataConfig(spec=data, train_per_class=per_class, **SCALING_DATA[scaling])
    dataset = load_source(config)
    stats, _ = dataset_stats(dataset)
    norm = resolve_normalization(config, stats, dataset.channels)
    loader = make_loader(dataset, "train", ChannelStats(mean=tuple(norm.mean), std=tuple(norm.std), pixels=0),
                         batch_size=count, train=False, shuffle=False)
    x, y = next(iter(loader))  # (N, C, H, W) normalised
    return x.flatten(1).double(), y, dataset.num_classes, list(norm.mean), list(norm.std)


def loss_sensitivity(x: torch.Tensor, y: torch.Tensor, classes: int, *, sigma: float = SIGMA, draws: int = DRAWS,
                     seed: int = 0) -> float:
    """Mean |L(W) - L(0)| over ``draws`` perturbations W = sigma * N(0, 1) of a linear softmax classifier
    (logits = x W^T, no bias; L the mean cross-entropy over x). L(0) = ln(classes). Deterministic in ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    base = math.log(classes)  # every logit 0: the uniform prediction
    changes = []
    for _ in range(draws):
        weights = sigma * torch.randn(classes, x.shape[1], generator=generator, dtype=torch.float64)  # (K, D)
        loss = torch.nn.functional.cross_entropy(x @ weights.T, y)  # (N, K) logits
        changes.append(abs(float(loss) - base))
    return sum(changes) / len(changes)


def _sensitivity(data: str, per_class: Optional[int]) -> dict[str, dict[str, Any]]:
    """scaling -> {loss change, the mean/std used, the inputs' range} for the linear classifier."""
    result = {}
    for scaling in SCALINGS:
        x, y, classes, mean, std = _inputs(data, per_class, scaling, SENSITIVITY_IMAGES)
        result[scaling] = {"loss_change": loss_sensitivity(x, y, classes), "input_mean": mean, "input_std": std,
                           "input_min": float(x.min()), "input_max": float(x.max()), "images": len(y),
                           "classes": classes}
    return result


# ---------------------------------------------------------------------------------------------
# the run


def _has_test_split(data: str) -> bool:
    from cnnlab.config import quiet_notes
    from cnnlab.data import load_source

    with quiet_notes():
        dataset = load_source(data)
    return dataset.test is not None and len(dataset.test) > 0


def _loss_stats(outcomes, setting: str, chance: float) -> tuple[SeedStats, int]:
    """(the final training loss over the seeds, diverged seeds): a diverged run (non-finite loss) failed to
    optimise, and its loss counts as the loss of a uniform guess, ln(classes)."""
    values, diverged = [], 0
    for outcome in (o for o in outcomes if o.setting == setting):
        if outcome.status == DIVERGED or outcome.train_loss is None or not math.isfinite(outcome.train_loss):
            values.append(chance)
            diverged += 1
        else:
            values.append(float(outcome.train_loss))
    return SeedStats(tuple(values)), diverged


def normalize_configs(data: str, size: str) -> dict[str, RunConfig]:
    """setting -> the run it trains at ``size`` on ``data``: the recipe, the net's norm, the scaling's data keys."""
    per_class, epochs, nets = SIZES[size]
    configs = {}
    for net in nets:
        for scaling in SCALINGS:
            sections = {key: dict(value) for key, value in RECIPE.items()}
            sections["model"]["norm"] = NETS[net]
            sections["data"] = {"train_per_class": per_class, **SCALING_DATA[scaling]}
            sections["train"]["epochs"] = epochs
            sections["schedule"]["warmup_epochs"] = min(1, epochs - 1)  # the recipe's one warmup epoch, if it fits
            configs[setting_name(net, scaling)] = experiment_config(data, sections)
    return configs


def run_normalize(ctx: RunContext) -> ExperimentResult:
    per_class, epochs, nets = SIZES[ctx.size]
    configs = normalize_configs(ctx.data, ctx.size)
    # The checks are about training loss; test accuracy is only reported, so data without a test split is
    # used, and its runs are not scored (test_acc empty) rather than scored on val under a test name.
    outcomes = train_settings(ctx, configs, evaluate=_has_test_split(ctx.data))
    sensitivity = _sensitivity(ctx.data, per_class)
    chance = math.log(sensitivity[RAW]["classes"])  # the loss of a uniform guess: what a diverged run counts as

    extra = {setting_name(net, scaling): {"net": NET_TEXT[net], "scaling": SCALING_TEXT[scaling],
                                          "input_mean": sensitivity[scaling]["input_mean"],
                                          "input_std": sensitivity[scaling]["input_std"]}
             for net in nets for scaling in SCALINGS}
    rows = summary_rows(outcomes, list(configs), ("train_loss", "train_acc", "val_acc", "test_acc"), extra)
    rows += [o.row(**extra[o.setting]) for o in outcomes]  # one row per run: each seed, and a diverged one, by name
    rows += [{"setting": f"linear-{scaling}", "net": "linear softmax classifier at W = 0",
              "scaling": SCALING_TEXT[scaling], "input_mean": values["input_mean"], "input_std": values["input_std"],
              "input_min": values["input_min"], "input_max": values["input_max"],
              "loss_change": values["loss_change"], "images": values["images"]}
             for scaling, values in sensitivity.items()]

    stats = {setting: _loss_stats(outcomes, setting, chance) for setting in configs}
    shown = {s: f"{SCALING_TEXT[s]}: {stats[s][0].text(1.0, digits=4)}"
                + (f", {stats[s][1]} diverged" if stats[s][1] else "") for s in SCALINGS}
    normalised, raw = stats[NORMALISED][0], stats[RAW][0]
    check = better(f"{NET_TEXT['plain']}: normalised inputs reach a lower training loss than raw [0, 255] pixels "
                   f"after {counted(epochs, 'epoch')}", NORMALISED, normalised, RAW, raw, higher=False, scale=1.0, unit="")
    margin = check.margin
    if min(normalised.n, raw.n) >= MIN_SEEDS:  # the same rule as better's, the losses to 4 decimals
        margin = (f"{shown[NORMALISED]} vs {shown[RAW]}: normalised lower by {raw.mean - normalised.mean:+.4f}, "
                  f"needed more than {max(normalised.std, raw.std):.4f} (the larger std over seeds)")
    check = unless_learned(Check(check.claim, check.verdict, f"{margin}; for reference, {shown[UNIT]}; diverged runs "
                                 f"count as ln(C) = {chance:.3f}"),
                           outcomes, chance_level(outcomes), (NORMALISED, RAW))
    raw_change, norm_change = sensitivity[RAW]["loss_change"], sensitivity[NORMALISED]["loss_change"]
    sensitive = Check(
        "a linear classifier's loss changes more under a small random weight change with raw [0, 255] pixels than "
        "with normalised inputs", HOLDS if raw_change > norm_change else FAILS,
        f"mean |loss change| over {DRAWS} draws W = {SIGMA} N(0, 1) from W = 0 on {sensitivity[RAW]['images']} "
        f"training images: raw {raw_change:.4g}, normalised {norm_change:.4g} (ratio {raw_change / norm_change:.3g}); "
        f"for reference, [0, 1] {sensitivity[UNIT]['loss_change']:.4g}")

    panels, bands = {}, {}
    for net in nets:
        panel = f"training loss: {NET_TEXT[net]}"
        panels[panel], bands[panel] = {}, {}
        for scaling in SCALINGS:
            setting = setting_name(net, scaling)
            xs, means, stds = mean_curve(outcomes, setting, "train_loss")
            diverged = sum(1 for o in outcomes if o.setting == setting and o.status == DIVERGED)
            label = scaling + (f" ({diverged} diverged)" if diverged else "")
            if xs:
                panels[panel][label], bands[panel][label] = (xs, means), stds
    curves = line_plot(ctx.out / "normalize_loss.png",
                       "Normalised inputs are easier to optimise than raw pixels (note 002)", panels,
                       y_labels={p: f"training loss, mean ± std over {counted(ctx.seeds, 'seed')}" for p in panels},
                       bands=bands)
    bars = bar_plot(ctx.out / "normalize_sensitivity.png",
                    "Before normalisation the loss is very sensitive to the weights (note 002)",
                    [SCALING_TEXT[s] for s in SCALINGS],
                    {f"linear classifier: mean |loss change|, W = {SIGMA} N(0, 1)":
                     {"loss change": [sensitivity[s]["loss_change"] for s in SCALINGS]}}, log=True)
    return ExperimentResult(rows, [check, sensitive], [curves, bars], [Path(o.run_dir) for o in outcomes])


NORMALIZE = Experiment(
    name="normalize",
    claim="Normalising the inputs by the data's per-channel mean and std makes the network easier to optimise "
          "than raw pixels: before normalisation the loss is very sensitive to changes in the weights.",
    source=("002", "归一化前：分类损失对权重矩阵的变化非常敏感，难以优化；归一化后：对小权重变化不太敏感，更容易优化"),
    rule="Training: LeNet-5 without normalisation layers, one recipe (recipes/lenet5-digits.yaml) for every input "
         "scaling, at least 3 seeds. HOLDS when the normalised inputs' final training loss (mean over seeds) is "
         "lower than the raw [0, 255] pixels' by more than the larger std over seeds; DOES NOT HOLD when raw is "
         "lower by as much; INCONCLUSIVE in between or with fewer than 3 seeds. A run that diverges (non-finite "
         "loss) failed to optimise: its loss counts as ln(classes), a uniform guess. [0, 1] pixels and the same "
         "net with BatchNorm are reported, not checked. Sensitivity (deterministic): a linear softmax classifier "
         f"on the pixels at W = 0; HOLDS when the mean absolute loss change over {DRAWS} random perturbations "
         f"W = {SIGMA:g} N(0, 1) (the same draws for every scaling) on the runs' first {SENSITIVITY_IMAGES:,} "
         "training images, or all of them where the runs train on fewer, is larger with raw pixels than with "
         "normalised ones, DOES NOT HOLD otherwise. "
         f"{LEARNED_RULE}",
    runs="LeNet-5 (tanh) without and with BatchNorm, each trained with inputs normalised by the training split's "
         "mean/std, as [0, 1] pixels and as raw [0, 255] pixels (data.mean=[0], data.std=[1/255]); and a linear "
         "classifier's loss under small random weight changes for the same three scalings",
    sizes={
        "tiny": SizeInfo("digits, 10 images per class, 1 epoch, 1 seed, the net without BN only: 3 runs", 6.0),
        "quick": SizeInfo("digits (all 1,259 training images), 6 epochs, 3 seeds, both nets: 18 runs", 120.0),
        "full": SizeInfo("Fashion-MNIST, 1000 training images per class (10,000), 3 epochs, 3 seeds, both nets: "
                         "18 runs", 330.0),
    },
    run=run_normalize,
    seeds=(1, 10, 3),
    data={"tiny": "digits", "quick": "digits", "full": "fashion-mnist"},
    check_data=check_normalize_data,
)

EXPERIMENTS = [NORMALIZE]
