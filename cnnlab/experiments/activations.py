"""The activations experiment: sigmoid, tanh, ReLU, leaky ReLU, ELU, SELU and GELU on one network
(note 002, "Activation Functions": "just use ReLU").

One MLP without normalisation (the lecture's sigmoid problems show most without it) is trained once
per activation and seed; only ``model.act`` changes. Each activation gets cnnlab's default
initialisation for it (He for the ReLU family, LeCun for SELU, Glorot with torch's gain for sigmoid
and tanh: docs/models.md, "The default rule, and SELU"), so no activation is handicapped by a scale
meant for another.

Measured per run: how fast it converges (the mean training loss of epoch 1), the final val and test
accuracy, and what the activations of the trained network look like on a fixed batch (the first
:data:`FIXED_BATCH` validation images), read with forward hooks on the activation modules:

* dead units: output exactly 0 for every image of the batch (no gradient flows through them);
* never-positive units: pre-activation <= 0 for every image (for ReLU the same units; leaky ReLU, ELU,
  SELU and GELU still pass a gradient there, which is what the lecture says they were made for);
* saturated outputs (sigmoid, tanh): the share of (unit, image) outputs within 1% of the output range
  from a bound, where the derivative is at most 4% of its peak (sigmoid: y(1 - y) <= 0.0099 of 0.25;
  tanh: 1 - y^2 <= 0.0396 of 1).

Also measured (note 002, "Sigmoid outputs are not zero-centred"): for every Linear layer fed by an activation
(each hidden layer after the first, and the classifier), the share of per-example gradient rows of one sign.
A neuron i's weight gradient for one example is dL/dy_i * h, h the layer's input (the previous activation's
outputs): when every h_j > 0 (sigmoid), the row's entries all take the sign of dL/dy_i, so one example's
update can raise or lower all of the neuron's weights together, never some up and some down (the notes'
zig-zag). A zero-centred activation (tanh) gives rows of mixed signs. Read on the fixed batch with its labels,
from hooks on the layers' inputs and output gradients (:func:`one_sign_rows`).

The helpers :func:`last_model`, :func:`fixed_batch`, :func:`split_accuracy` and :func:`finite_stats` are shared
with the regularisation experiments (cnnlab.experiments.regularisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cnnlab.errors import counted
from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    bar_plot,
)
from cnnlab.experiments.training import (
    ALIKE_NOISE,
    PICK_RULE,
    data_problem,
    DIVERGED,
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
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.layers.act import act_base, get_act_layer
from cnnlab.run import RunFolder

FIXED_BATCH = 256  # validation images the activation statistics are read on (the first ones, in split order)
SATURATION_BAND = 0.01  # a bounded output within this share of its range from a bound counts as saturated
# Output ranges of the saturating activations (the bounds their outputs approach).
BOUNDS: dict[type, tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}

# setting -> model.act. Leaky ReLU with the notes' alpha = 0.1 ("通常设置 α = 0.1"), not torch's 0.01.
ACT_SPECS = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
    "leaky_relu": "leaky_relu:0.1",
    "elu": "elu",
    "selu": "selu",
    "gelu": "gelu",
}
SATURATING = ("sigmoid", "tanh")

# The verdict rule's numbers, fixed before any run.
SPEED_MARGIN = 0.05  # nats: ReLU's epoch-1 training loss must be lower by more than this and the spread
ACCURACY_TOLERANCE = 0.01  # 1 point: ReLU's test accuracy may trail the best activation's by this plus the spread


@dataclass(frozen=True)
class Recipe:
    """What one size trains: the same recipe at every size, only the data and the length change."""

    train_per_class: Optional[int]  # training images per class (None: the whole training split)
    epochs: int
    depth: int  # hidden layers of the MLP
    width: int  # units per hidden layer


RECIPES = {
    "tiny": Recipe(train_per_class=20, epochs=1, depth=2, width=32),
    "quick": Recipe(train_per_class=None, epochs=10, depth=4, width=256),
    "full": Recipe(train_per_class=1000, epochs=10, depth=4, width=256),
}
DATA = {"tiny": "digits", "quick": "digits", "full": "fashion-mnist"}
VAL_FRACTION = 0.02  # Fashion-MNIST: 1,200 training images held out, as the recipes do (digits has its own val split)


def mlp_sections(recipe: Recipe, act: str) -> dict[str, dict[str, Any]]:
    """The run's config sections: lenet5-digits' SGD recipe (lr 0.05, momentum 0.9, weight decay 5e-4,
    cosine) without its warmup (tiny trains one epoch), no augmentation and no label smoothing."""
    return {
        "model": {"name": "mlp", "act": act, "norm": "none",
                  "options": {"depth": recipe.depth, "width": recipe.width}},
        "data": {"train_per_class": recipe.train_per_class, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": recipe.epochs, "batch_size": 128},
    }


# ---------------------------------------------------------------------------------------------
# trained models and fixed batches (shared with cnnlab.experiments.regularisation)


def last_model(run_dir: str | Path):
    """The run's model with its last weights (the end of training), in eval mode, or None when the run
    has no last checkpoint (it diverged before its first epoch ended)."""
    from cnnlab.train.checkpoint import load_run_model

    path = RunFolder(Path(run_dir)).last
    return load_run_model(path) if path.is_file() else None


def fixed_batch(loaded, size: int = FIXED_BATCH) -> torch.Tensor:
    """The first ``size`` validation images, preprocessed as the run's evaluation does: (B, C, H, W)."""
    from cnnlab.evaluate.evaluate import eval_loader

    _, loader = eval_loader(loaded, split="val", batch_size=size)
    images, _ = next(iter(loader))
    return images


def fixed_examples(loaded, size: int = FIXED_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` validation images (as :func:`fixed_batch`) and their labels: (B, C, H, W), (B,)."""
    from cnnlab.evaluate.evaluate import eval_loader

    _, loader = eval_loader(loaded, split="val", batch_size=size)
    images, labels = next(iter(loader))
    return images, labels


def split_accuracy(loaded, split: str) -> float:
    """Top-1 accuracy of ``loaded`` (eval mode, no augmentation) on ``split`` of its run's data: the
    training split is the run's subset (data.train_per_class), as clean images."""
    from cnnlab.evaluate.evaluate import black_fill, eval_loader, predict_probabilities

    _, loader = eval_loader(loaded, split=split)
    probs, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    return float((probs.argmax(1) == labels).double().mean())  # in double, as cnnlab eval counts


# ---------------------------------------------------------------------------------------------
# activation statistics


@dataclass(frozen=True)
class ActivationStats:
    """What a network's activation layers do on one batch."""

    layers: int  # activation modules hooked
    units: int  # their units: features per image (channels x positions for maps)
    dead: int  # output exactly 0 for every image
    never_positive: int  # input <= 0 for every image
    saturated_share: Optional[float]  # share of (unit, image) outputs near a bound; None: the activation is unbounded

    @property
    def dead_share(self) -> float:
        return self.dead / self.units if self.units else math.nan

    @property
    def never_positive_share(self) -> float:
        return self.never_positive / self.units if self.units else math.nan


def activation_stats(model: nn.Module, images: torch.Tensor, act_type: type) -> ActivationStats:
    """Hook every module of class ``act_type`` in ``model``, run ``images`` (B, ...) through it in eval
    mode, and count dead, never-positive and saturated units (see the module docstring)."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    inputs: dict[int, torch.Tensor] = {}

    def before(module, args):  # the input is kept before an in-place activation overwrites it
        inputs[id(module)] = args[0].detach().flatten(1).clone()  # (B, units)

    def after(module, args, output):
        records.append((inputs.pop(id(module)), output.detach().flatten(1)))  # (B, units) each

    modules = [m for m in model.modules() if type(m) is act_type]
    handles = [m.register_forward_pre_hook(before) for m in modules]
    handles += [m.register_forward_hook(after) for m in modules]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    units = dead = never_positive = saturated = outputs = 0
    bounds = BOUNDS.get(act_type)
    for pre, out in records:
        units += out.shape[1]
        dead += int((out == 0).all(dim=0).sum())
        never_positive += int((pre <= 0).all(dim=0).sum())
        if bounds is not None:
            low, high = bounds
            band = SATURATION_BAND * (high - low)
            saturated += int(((out <= low + band) | (out >= high - band)).sum())
            outputs += out.numel()
    return ActivationStats(layers=len(records), units=units, dead=dead, never_positive=never_positive,
                           saturated_share=(saturated / outputs if outputs else None) if bounds is not None else None)


@dataclass(frozen=True)
class GradientSigns:
    """Per-example weight-gradient rows of the Linear layers fed by an activation, and how many have one sign."""

    rows: int  # (example, neuron) pairs whose gradient row is not all zero
    one_sign: int  # of them, rows whose nonzero entries all have one sign
    layers: tuple[str, ...]  # the layers measured

    @property
    def share(self) -> float:
        return self.one_sign / self.rows if self.rows else math.nan


def one_sign_rows(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> GradientSigns:
    """For every nn.Linear of ``model`` but the first (which is fed by the pixels, not by an activation), the
    per-example gradient of the cross-entropy loss with respect to its weight, dL/dW[e] = outer(dL/dy[e], h[e])
    (out, in) for example e, and how many of its rows (one per neuron) have entries of one sign. Eval mode; the
    model's gradients are left as they were (none)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)][1:]
    inputs: dict[str, torch.Tensor] = {}
    output_grads: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(module, args, output):
            inputs[name] = args[0].detach()  # (B, in): the previous activation's outputs
        return hook

    def keep_grad(name: str):
        def hook(module, grad_input, grad_output):
            output_grads[name] = grad_output[0].detach()  # (B, out): dL/dy per example
        return hook

    handles = [m.register_forward_hook(keep_input(name)) for name, m in linears]
    handles += [m.register_full_backward_hook(keep_grad(name)) for name, m in linears]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            # summed, not averaged: example e's rows are then the gradient of its own loss
            loss = nn.functional.cross_entropy(model(images), labels, reduction="sum")
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    rows = one_sign = 0
    for name, _ in linears:
        per_example = output_grads[name][:, :, None] * inputs[name][:, None, :]  # (B, out, in)
        positive, negative = (per_example > 0).any(dim=2), (per_example < 0).any(dim=2)  # (B, out) each
        nonzero = positive | negative
        rows += int(nonzero.sum())
        one_sign += int((nonzero & ~(positive & negative)).sum())
    return GradientSigns(rows=rows, one_sign=one_sign, layers=tuple(name for name, _ in linears))


def trained_stats(outcome: RunOutcome, act: str) -> Optional[ActivationStats]:
    """The activation statistics of a run's last weights on the fixed batch; None for a diverged run."""
    if outcome.status == DIVERGED:
        return None
    loaded = last_model(outcome.run_dir)
    if loaded is None:
        return None
    return activation_stats(loaded.model, fixed_batch(loaded), act_base(get_act_layer(act)))


# ---------------------------------------------------------------------------------------------
# the experiment


def _first_epoch_loss(outcome: RunOutcome) -> Optional[float]:
    if outcome.status == DIVERGED or not outcome.curve:
        return None
    value = outcome.curve[0].get("train_loss")
    return value if value is not None and math.isfinite(value) else None


# Measured per run, beyond RunOutcome's fields.
MEASURES = ("epoch1_train_loss", "dead_share", "never_positive_share", "saturated_share", "one_sign_grad_share")
# The zig-zag check's numbers, fixed before any run: sigmoid's rows are of one sign by construction (every input
# positive), so anything short of (nearly) all would contradict the argument; tanh's mixed-sign inputs should
# leave at most half of its rows of one sign for the contrast to show. Each share is exact for its net (no seed
# noise to wait out), so a run on the wrong side of either line decides against the claim: tanh with most of its
# rows of one sign is not the zero-centred remedy the notes describe.
ONE_SIGN_SIGMOID = 0.99
ONE_SIGN_TANH = 0.5


def run_measures(outcome: RunOutcome, act: str) -> dict[str, Any]:
    """The run's epoch-1 training loss and its activation statistics (None where the run diverged)."""
    stats = trained_stats(outcome, act)
    signs = trained_gradient_signs(outcome)
    return {
        "epoch1_train_loss": _first_epoch_loss(outcome),
        "dead_share": stats.dead_share if stats else None,
        "never_positive_share": stats.never_positive_share if stats else None,
        "saturated_share": stats.saturated_share if stats else None,
        "units_measured": stats.units if stats else None,
        "one_sign_grad_share": signs.share if signs else None,
    }


def trained_gradient_signs(outcome: RunOutcome) -> Optional[GradientSigns]:
    """:func:`one_sign_rows` of a run's last weights on the fixed batch; None for a diverged run."""
    if outcome.status == DIVERGED:
        return None
    loaded = last_model(outcome.run_dir)
    if loaded is None:
        return None
    return one_sign_rows(loaded.model, *fixed_examples(loaded))


def finite_stats(values) -> SeedStats:
    """The seed statistics of ``values``, leaving out missing (diverged) and non-finite ones."""
    return SeedStats(tuple(v for v in values if v is not None and math.isfinite(v)))


def run_activations(ctx: RunContext) -> ExperimentResult:
    recipe = RECIPES[ctx.size]
    configs = {name: experiment_config(ctx.data, mlp_sections(recipe, act)) for name, act in ACT_SPECS.items()}
    outcomes = train_settings(ctx, configs)
    per_run = [(o, run_measures(o, ACT_SPECS[o.setting])) for o in outcomes]
    measured = {name: {key: finite_stats(m[key] for o, m in per_run if o.setting == name) for key in MEASURES}
                for name in ACT_SPECS}

    # One summary row per activation (mean and std over seeds), then one row per run.
    extra = {name: {"act": act} for name, act in ACT_SPECS.items()}
    rows = summary_rows(outcomes, list(ACT_SPECS), ["train_loss", "train_acc", "val_acc", "test_acc"], extra)
    for row in rows:
        for key, stats in measured[row["setting"]].items():
            row[f"{key}_mean"] = stats.mean if stats.n else None
            row[f"{key}_std"] = stats.std if stats.n else None
        units = [m["units_measured"] for o, m in per_run if o.setting == row["setting"] and m["units_measured"]]
        row["units_measured"] = units[0] if units else None
    rows += [o.row(act=ACT_SPECS[o.setting], **m) for o, m in per_run]

    speed = {name: measured[name]["epoch1_train_loss"] for name in ACT_SPECS}
    chance = chance_level(outcomes)
    checks = [
        unless_learned(better(f"ReLU converges faster than {slow} (lower mean training loss in epoch 1)",
                              "relu", speed["relu"], slow, speed[slow], higher=False, min_margin=SPEED_MARGIN,
                              scale=1.0, unit=" nats"), outcomes, chance, ("relu", slow))
        for slow in SATURATING
    ]
    checks.append(just_use_relu_check(outcomes, chance))
    checks.append(zigzag_check(per_run))
    plots = _plots(ctx.out, outcomes, rows[:len(ACT_SPECS)])
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def zigzag_check(per_run: list[tuple[RunOutcome, dict[str, Any]]]) -> Check:
    """Note 002: sigmoid's outputs are all positive, so a neuron's per-example weight gradients share one sign;
    tanh's are zero-centred and do not. Decided on every finished run at any seed count: the share is a property
    of each trained net's forward and backward pass, not a comparison of training outcomes."""
    shares = {name: [m["one_sign_grad_share"] for o, m in per_run
                     if o.setting == name and m["one_sign_grad_share"] is not None
                     and math.isfinite(m["one_sign_grad_share"])] for name in SATURATING}
    claim = ("sigmoid's outputs are not zero-centred: the per-example weight gradients of a layer fed by sigmoid "
             "have one sign per neuron, those of a layer fed by tanh do not")
    parts, failed = [], []
    if shares["sigmoid"]:
        low = min(shares["sigmoid"])
        parts.append(f"sigmoid {low:.2%} at least (over {counted(len(shares['sigmoid']), 'run')}; needs "
                     f"{ONE_SIGN_SIGMOID:.0%})")
        if low < ONE_SIGN_SIGMOID:
            failed.append(f"a sigmoid run has fewer than {ONE_SIGN_SIGMOID:.0%}")
    else:
        parts.append("no finished sigmoid run")
    if shares["tanh"]:
        high = max(shares["tanh"])
        parts.append(f"tanh {high:.2%} at most (over {counted(len(shares['tanh']), 'run')}; needs at most "
                     f"{ONE_SIGN_TANH:.0%})")
        if high > ONE_SIGN_TANH:
            failed.append(f"a tanh run has more than {ONE_SIGN_TANH:.0%}")
    else:
        parts.append("no finished tanh run")
    margin = "rows of one sign: " + ", ".join(parts)
    if failed:  # either half clearly fails, whether or not the other could be measured
        return Check(claim, FAILS, f"{margin}: {' and '.join(failed)}")
    if not shares["sigmoid"] or not shares["tanh"]:
        return Check(claim, INCONCLUSIVE, f"{margin}: both are needed to decide")
    return Check(claim, HOLDS, margin)


def best_by_validation(outcomes: list[RunOutcome]) -> Optional[str]:
    """The activation with the highest mean final validation accuracy over its seeds (never the test split, which
    then judges it), among those none of whose seeds diverged; None when no activation qualifies."""
    val = {name: seed_stats(outcomes, name, "val_acc") for name in ACT_SPECS}
    finished = {name: stats.mean for name, stats in val.items() if stats.n and not diverged_anywhere(outcomes, name)}
    return max(finished, key=lambda name: finished[name]) if finished else None


def just_use_relu_check(outcomes: list[RunOutcome], chance: float) -> Check:
    """'Just use ReLU': ReLU's mean test accuracy against the best activation's, the best chosen on validation;
    INCONCLUSIVE when neither learned (``chance``: 1 / the number of classes; training.unless_learned).

    Choosing the best by test accuracy and then comparing test accuracies would pick the activation whose
    test score the noise flattered most, and judge ReLU against that draw."""
    test = {name: seed_stats(outcomes, name, "test_acc") for name in ACT_SPECS}
    best = best_by_validation(outcomes)
    if best is None or not test["relu"].n:
        why = ("no finished ReLU run to compare" if not test["relu"].n else
               "every activation diverged on some seed, so none is picked as the best")
        return Check("'just use ReLU': ReLU's test accuracy is within tolerance of the best", INCONCLUSIVE, why)
    claim = (f"'just use ReLU': ReLU's test accuracy is within {ACCURACY_TOLERANCE * 100:g} point of the best "
             f"activation's by validation accuracy ({best})")
    check = alike(claim, "relu", test["relu"], best, test[best], tolerance=ACCURACY_TOLERANCE)
    # ReLU ahead of the best (or the best itself) is not behind it, however wide the spread: the claim is one-sided
    if check.verdict != HOLDS and min(test["relu"].n, test[best].n) >= MIN_SEEDS and (
            test["relu"].mean >= test[best].mean):
        check = Check(claim, HOLDS, f"{check.margin}; ReLU is not behind" if best != "relu" else
                      f"{check.margin}; ReLU is the best by validation itself")
    return unless_learned(check, outcomes, chance, ("relu", best))


def _plots(out: Path, outcomes: list[RunOutcome], rows: list[dict]) -> list[Path]:
    # a setting some of whose seeds diverged is named so: its curves and bars are the mean of the others only
    label = {row["setting"]: row["setting"] + (f" ({row['diverged']} of {row['diverged'] + row['seeds']} diverged)"
                                               if row.get("diverged") else "") for row in rows}
    loss, val, loss_bands, val_bands = {}, {}, {}, {}
    for name in ACT_SPECS:
        epochs, means, stds = mean_curve(outcomes, name, "train_loss")
        loss[label[name]], loss_bands[label[name]] = (epochs, means), stds
        epochs, means, stds = mean_curve(outcomes, name, "val_acc")
        val[label[name]], val_bands[label[name]] = (epochs, means), stds
    loss_panel, val_panel = "training loss (mean over seeds)", "val accuracy"
    curves = line_plot(out / "activations_by_epoch.png",
                       "ReLU converges faster than sigmoid and tanh (note 002: 'just use ReLU')",
                       {loss_panel: loss, val_panel: val}, log_y=(loss_panel,),
                       bands={loss_panel: loss_bands, val_panel: val_bands})

    def column(key: str) -> list[float]:
        return [row.get(key) if row.get(key) is not None else math.nan for row in rows]

    bars = bar_plot(out / "activations_bars.png",
                    "Final accuracy, dead units and saturation per activation (note 002: 'just use ReLU')",
                    [label[row["setting"]] for row in rows],
                    {"test accuracy (mean over seeds)": {"test": column("test_acc_mean")},
                     "share of units (fixed batch, last weights)": {
                         "dead: output 0 on every image": column("dead_share_mean"),
                         "never positive: input <= 0 on every image": column("never_positive_share_mean")},
                     "saturated outputs (sigmoid, tanh)": {"saturated": column("saturated_share_mean")}})
    return [curves, bars]


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with a class too small for the tiny subset, no test split ('just use ReLU' is judged on test
    accuracy), or too few training images at ``size`` for one batch (every activation trains on the same data
    and batch, so one run's config stands for all)."""
    return data_problem(dataset, per_class=RECIPES["tiny"].train_per_class, test_split=True, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec,
                                                              mlp_sections(RECIPES[at], ACT_SPECS["relu"]))])


ACTIVATIONS = Experiment(
    name="activations",
    claim="ReLU converges faster than sigmoid and tanh, and nothing is clearly better than it: just use ReLU "
          "(leaky ReLU, ELU, SELU and GELU only squeeze out the last 0.1%). Sigmoid's outputs are not zero-centred, "
          "so the gradients on a neuron's incoming weights all share one sign per example (zig-zag updates).",
    source=("002", "实践上比 Sigmoid 收敛更快 ... 不要想太多，就用 ReLU 好了; 如果需要压榨那最后的 0.1% 的精度，"
                   "再尝试用 Leaky ReLU / ELU / SELU / GELU; 不要使用 Sigmoid 或 Tanh; "
                   "Sigmoid 的输出并不是以 0 为中心的（输出都是正数）... 需要锯齿形(zigzag)的移动"),
    rule="Per activation, 3+ seeds, the same MLP without normalisation and the same recipe. Speed: the mean training "
         f"loss of epoch 1. 'ReLU converges faster than sigmoid' (and than tanh) HOLDS when ReLU's mean is lower by "
         f"more than the larger spread (sample std over seeds) and more than {SPEED_MARGIN} nats, DOES NOT HOLD when "
         "it is higher by as much, INCONCLUSIVE in between. 'Just use ReLU' HOLDS when ReLU's mean test accuracy "
         f"is within {ACCURACY_TOLERANCE * 100:g} point plus the larger spread of the best activation's mean (the "
         f"best: the highest mean final VALIDATION accuracy, never the test split; {PICK_RULE}; ReLU itself may be the "
         "best, and ReLU level with it or ahead holds whatever the spread), DOES NOT HOLD when that activation is "
         f"ahead by more, {ALIKE_NOISE}. Fewer than 3 seeds: "
         "INCONCLUSIVE. Dead units (output 0 on every image of the first 256 validation images), never-positive "
         "units and saturated outputs of the last weights are reported, not judged. Zig-zag (note 002): per run, the "
         "share of per-example weight-gradient rows (example x neuron, rows not all zero) of one sign, over every "
         "Linear layer fed by an activation, on the first 256 validation images and their labels (last weights, "
         f"eval mode). It HOLDS when every sigmoid run has at least {ONE_SIGN_SIGMOID:.0%} and every tanh run at "
         f"most {ONE_SIGN_TANH:.0%}, DOES NOT HOLD when a sigmoid run has less than {ONE_SIGN_SIGMOID:.0%} or a tanh "
         f"run more than {ONE_SIGN_TANH:.0%} (tanh is the notes' zero-centred remedy), is INCONCLUSIVE only when "
         "sigmoid or tanh has no finished run to measure; decided at any seed count (a property of each net, not a "
         "comparison of training outcomes). "
         f"{LEARNED_RULE}",
    runs="an MLP (no normalisation, cnnlab's default init per activation) trained once per activation and seed: "
         "sigmoid, tanh, ReLU, leaky ReLU (alpha 0.1), ELU, SELU, GELU; SGD lr 0.05, momentum 0.9, weight decay "
         "5e-4, cosine, batch 128, no augmentation",
    sizes={
        "tiny": SizeInfo("digits, 20 images per class, MLP 2 x 32, 1 epoch, 7 runs (mechanics only)", 9.0),
        "quick": SizeInfo("digits, all 1,259 training images, MLP 4 x 256, 10 epochs, 7 activations x 3 seeds", 125.0),
        "full": SizeInfo("Fashion-MNIST 28x28, 1,000 training images per class (10,000), 1,200 val, 10,000 test; "
                         "MLP 4 x 256, 10 epochs, 7 activations x 3 seeds", 230.0),
    },
    run=run_activations,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [ACTIVATIONS]
