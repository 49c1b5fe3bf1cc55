"""``cnnlab check``: the lecture's sanity checks before any tuning, each with a verdict.

1. Initial loss: at initialisation a classifier should be unsure of every class, so its
   cross-entropy is about ln(C) (2.303 for 10 classes). Measured with no regularisation term
   (weight decay is not part of the loss here) and no label smoothing.
2. Activation and gradient statistics per layer at initialisation: the lecture's weight-init
   demonstration on the user's own model. Activations that shrink layer after layer (vanishing),
   grow (exploding), ReLU units that never fire, tanh/sigmoid units stuck at their bounds, and
   gradients that differ by orders of magnitude between layers are flagged.
3. Overfit a small sample: with augmentation, weight decay, dropout and label smoothing off, a
   working model and optimiser drive a few dozen images to 100% training accuracy. If they cannot,
   nothing longer will work either. The sample takes the training split's classes in turn: a sample
   of one class is fitted by the classifier's bias alone, which proves little.

Every check returns PASS, WARN or FAIL with its numbers and a one-line remedy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F

from cnnlab.analysis.stats import LayerStats, layer_statistics
from cnnlab.config import AugConfig, RunConfig
from cnnlab.errors import CnnlabError, counted, shown_value, whole_number

if TYPE_CHECKING:
    from cnnlab.train.engine import RunSetup

VERDICTS = ("PASS", "WARN", "FAIL")
# A loss that is not finite before any step comes from the starting weights, not from a learning rate
INIT_OVERFLOW_REMEDY = "A layer overflows at initialisation: check the input normalisation and the weight init."


def loaded_weights_remedy(finding: str) -> str:
    """What to check when weights model.init_from loaded misbehave on these images (``finding``: what was seen):
    the preprocessing, since no init scheme made them and model.init does not apply to them."""
    return (f"{finding}: check that the images are preprocessed as the source's were (data.normalize, "
            "data.image_size); model.init does not apply to loaded weights.")


@dataclass
class CheckThresholds:
    """Where a number turns a PASS into a WARN or a FAIL (each a ratio or a share unless noted)."""

    loss_pass: float = 0.1  # |initial loss / ln C - 1| up to this is a PASS
    loss_fail_high: float = 1.5  # initial loss above 1.5 ln C: logits far too large at init (the lecture's FAIL)
    loss_fail_low: float = 0.5  # below 0.5 ln C: the untrained model already "knows" the labels, a leak or a bug
    std_warn: float = 10.0  # a layer's activation std off by 10x from the first weighted layer's (either way)
    std_fail: float = 100.0  # ... by 100x: vanished or exploded
    dead_warn: float = 0.5  # share of ReLU units that no image in the batch activates
    dead_fail: float = 0.9
    saturated_warn: float = 0.3  # share of tanh/sigmoid outputs within 1% of a bound (gradient ~0)
    saturated_fail: float = 0.7
    # max / min over the weighted layers of ||dL/dW|| / ||W|| (over those a norm follows, of ||dL/dW|| x ||W||)
    grad_spread_warn: float = 1e3
    grad_spread_fail: float = 1e5


@dataclass
class CheckResult:
    name: str  # initial_loss | init_statistics | overfit_sample
    verdict: str  # PASS | WARN | FAIL
    summary: str  # the measured numbers, one line
    remedy: str = ""  # one line; empty on PASS
    details: dict = field(default_factory=dict)  # everything measured, for --json


def _worst(verdicts) -> str:
    return max(verdicts, key=VERDICTS.index, default="PASS")


# ---------------------------------------------------------------------------------------------
# 1. initial loss


def judge_initial_loss(loss: float, num_classes: int, th: CheckThresholds = CheckThresholds(),
                       trained_classifier: Optional[str] = None) -> CheckResult:
    """The verdict on a measured initial loss against ln(num_classes).

    ``trained_classifier``: where the classifier's weights came from when model.init_from loaded it (the
    source knew these classes), else None. ln C is the loss of a fresh classifier; a trained one should
    do better than chance, so only a loss above ln C is then flagged.
    """
    expected = math.log(num_classes)
    details = {"loss": loss, "expected": expected, "ratio": loss / expected if math.isfinite(loss) else None,
               "trained_classifier": trained_classifier}
    if not math.isfinite(loss):
        return CheckResult("initial_loss", "FAIL", f"initial loss is {loss} (expected ln {num_classes} = {expected:.3f})",
                           INIT_OVERFLOW_REMEDY, details)
    ratio = loss / expected
    summary = f"initial loss {loss:.3f} vs ln {num_classes} = {expected:.3f} (ratio {ratio:.2f})"
    if trained_classifier is not None:
        summary += f"; the classifier comes trained from {trained_classifier}"
        if ratio <= 1 + th.loss_pass:
            return CheckResult("initial_loss", "PASS", summary + ", so a loss below ln C is expected", "", details)
        return CheckResult("initial_loss", "FAIL" if ratio > th.loss_fail_high else "WARN",
                           summary + ", yet its loss is above chance",
                           "The source's classifier predicts these images worse than chance: check that the classes "
                           "mean what they meant to the source (data.classes and their order) and that the images are "
                           "preprocessed as the source's were (data.normalize, data.image_size).", details)
    if abs(ratio - 1) <= th.loss_pass:
        return CheckResult("initial_loss", "PASS", summary, "", details)
    if ratio > th.loss_fail_high:
        return CheckResult("initial_loss", "FAIL", summary, "The logits are far too large at initialisation: scale "
                           "down the classifier's init (or zero it) and check the input normalisation.", details)
    if ratio < th.loss_fail_low:
        return CheckResult("initial_loss", "FAIL", summary, "Below chance before training: the labels may leak into "
                           "the input, or the loss is computed on the wrong targets.", details)
    if ratio > 1:
        return CheckResult("initial_loss", "WARN", summary, "The untrained model is overconfident: a smaller init "
                           "of the last layer brings the loss to ln C.", details)
    return CheckResult("initial_loss", "WARN", summary, "Lower than ln C before training: check that the labels are "
                       "not predictable from something trivial (e.g. class-sorted batches).", details)


@torch.no_grad()
def initial_loss(model: torch.nn.Module, batches,
                 train_mode: Optional[Callable[[torch.nn.Module], None]] = None) -> float:
    """Mean cross-entropy (no smoothing) of ``model`` in train mode over ``batches`` of (x, y).

    Train mode, because BatchNorm then normalises with the batch's statistics, as in the first
    training step (its running statistics are still at their defaults). ``train_mode`` puts the model
    in the modes of a run's first step (default ``model.train()``): a fine-tuning run's frozen stages
    and ``train.bn_eval`` run their BatchNorm on running statistics and their dropout off. Pass a copy:
    BatchNorm's running statistics move.
    """
    total, images = 0.0, 0
    if train_mode is None:
        model.train()
    else:
        train_mode(model)
    for x, y in batches:
        output = model(x)
        logits = output.logits if hasattr(output, "logits") else output
        total += F.cross_entropy(logits.float(), y, reduction="sum").item()
        images += len(y)
    return total / max(images, 1)


# ---------------------------------------------------------------------------------------------
# 2. activation and gradient statistics


def _units_text(rows: list[LayerStats]) -> str:
    """The worst dead share of the ReLU-type units and saturated share of the tanh/sigmoid ones, for the kinds the
    model has: a tanh network (LeNet-5's default) has no unit that can die, and a ReLU one none that saturates."""
    dead = [r.dead for r in rows if r.dead is not None]
    saturated = [r.saturated for r in rows if r.saturated is not None]
    parts = []
    if dead:
        parts.append(f"dead ReLU units up to {max(dead):.0%}")
    if saturated:
        parts.append(f"saturated tanh/sigmoid outputs up to {max(saturated):.0%}")
    return ", ".join(parts) or "no ReLU, tanh or sigmoid units to check for dead or saturated outputs"


def _gradient_spreads(weighted: list[LayerStats], compared: list[LayerStats], th: CheckThresholds,
                      flags: list[tuple[str, str]]) -> str:
    """The summary's words on how far the layers' gradients differ, each kind of layer on its own measure, with a
    flag added to ``flags`` per measure past its thresholds.

    The layers a norm follows are compared on their weights' directions (LayerStats.direction_grad): their
    relative gradients go as 1/||W||^2 and spread 10^4x over a ResNet-50 at a correct init (a 3-channel stem
    against 2048-channel 1x1 convs), which says nothing of the backward signal."""
    parts = []
    for group, value, label in ((compared, lambda r: r.grad_ratio, "relative gradient spread"),
                                ([r for r in weighted if r.normalised], lambda r: r.direction_grad,
                                 "gradient spread on the weights' directions (||dL/dW|| x ||W||) of the layers a "
                                 "norm follows")):
        group = [r for r in group if value(r) is not None]
        if not group:
            continue
        low, high = min(group, key=value), max(group, key=value)
        if value(low) <= 0:  # a layer whose weights are all zero, behind a norm: it computes nothing to move
            parts.append(f"{label} unbounded ({low.name}'s weights are all zero)")
            flags.append(("FAIL", f"{label} unbounded: {low.name}'s weights are all zero"))
            continue
        spread = value(high) / value(low)
        parts.append(f"{label} {spread:.3g}x")
        if spread >= th.grad_spread_warn:
            flags.append(("FAIL" if spread >= th.grad_spread_fail else "WARN",
                          f"{label}: {spread:.3g}x between layers ({low.name} smallest, {high.name} largest)"))
    return "; ".join(parts) or "no gradient spread to compare"


def judge_statistics(rows: list[LayerStats], th: CheckThresholds = CheckThresholds(),
                     loaded_from: Optional[str] = None) -> CheckResult:
    """Flags vanishing/exploding activations, dead ReLUs, saturated units and gradient spread.

    ``loaded_from``: where model.init_from loaded the weights from (None: a fresh initialisation). The
    statistics are then those of the loaded network, which no init scheme produced, so the remedy does not
    recommend one.
    """
    # The classifier starts small on purpose (loss ln C), so it is left out of the comparisons.
    weighted = [r for r in rows if r.grad_ratio is not None and not r.classifier]
    # Conv and linear layers that do not train (model.freeze) get no gradient and are left out, and counted (by
    # name: a layer called twice has a row for each call). A layer that trains but gets no gradient from this loss
    # (GoogLeNet's auxiliary heads) is no frozen layer.
    frozen = sorted({r.name for r in rows if r.frozen and not r.classifier})
    flags: list[tuple[str, str]] = []  # (verdict, sentence)
    if not weighted and frozen:
        return CheckResult("init_statistics", "PASS",
                           f"only the classifier trains: the other {counted(len(frozen), 'weighted layer')} are "
                           "frozen, so there are no statistics of trained layers to compare", "",
                           {"layers": [asdict(r) for r in rows], "flags": [], "frozen": frozen})
    if not weighted:
        return CheckResult("init_statistics", "WARN", "no conv or linear layer found", "", {"layers": []})
    # The scale the init gives a layer matters where the next layer sees it: a conv whose output feeds only a
    # BatchNorm (in training), GroupNorm or LayerNorm hands on the norm's unit scale, whatever its own (a ResNet's
    # convs after the stem read normalised maps and sit 10-30x above the 1-channel stem's output). Those are not
    # compared; one whose output also goes past the norm (a pre-activation ResNet's stem, into the shortcut) is.
    compared = [r for r in weighted if not r.normalised]
    normalised = len(weighted) - len(compared)
    reference = compared[0].std if compared else math.nan
    first = "the first layer's" if compared and compared[0] is weighted[0] else (
        f"{compared[0].name}'s (the first layer compared)" if compared else "")
    # The first weighted layer, and the first compared (the reference) where that is another: every output the same
    # number (zero weights) carries nothing from the images from here on, whether a norm follows or not
    for layer in [weighted[0]] + [r for r in compared[:1] if r is not weighted[0]]:
        if layer.std == 0:
            flags.append(("FAIL", f"activations are constant at {layer.name} (std 0 at init): the layers after it see "
                                  "no difference between images"))
    for row in rows:
        if not (math.isfinite(row.mean) and math.isfinite(row.std)):
            flags.append(("FAIL", f"{row.name} outputs non-finite values"))
            continue
        if row.name in {w.name for w in compared} and reference > 0:
            scale = row.std / reference
            row.extra["std_vs_first"] = scale
            off = max(scale, 1 / scale) if scale > 0 else math.inf
            if off >= th.std_warn:
                word = "vanish" if scale < 1 else "explode"
                flags.append(("FAIL" if off >= th.std_fail else "WARN",
                              f"activations {word} at {row.name}: std {row.std:.3g} is {scale:.3g}x {first}"))
        # shares strictly above their thresholds, as the docs state them (50% dead exactly is no flag)
        if row.dead is not None and row.dead > th.dead_warn:
            flags.append(("FAIL" if row.dead > th.dead_fail else "WARN",
                          f"{row.dead:.0%} of the units after {row.name} never fire (dead ReLUs)"))
        if row.saturated is not None and row.saturated > th.saturated_warn:
            flags.append(("FAIL" if row.saturated > th.saturated_fail else "WARN",
                          f"{row.saturated:.0%} of the outputs of {row.name} are saturated"))
    ratios = [r.grad_ratio for r in weighted]
    if any(not math.isfinite(g) for g in ratios):
        flags.append(("FAIL", "non-finite gradients at initialisation"))
        gradients = "relative gradient spread unbounded (a layer gets a non-finite gradient)"
    elif min(ratios) <= 0:
        zero = [r.name for r in weighted if r.grad_ratio <= 0]
        flags.append(("FAIL", f"no gradient reaches {', '.join(zero[:3])}{' ...' if len(zero) > 3 else ''}"))
        gradients = "relative gradient spread unbounded (a layer gets no gradient)"
    else:
        gradients = _gradient_spreads(weighted, compared, th, flags)
    stds = [r.extra["std_vs_first"] for r in compared if "std_vs_first" in r.extra]
    if not compared:
        scales = "each feeds a norm that sets its scale, so no activation std is compared"
    elif stds:
        scales = f"activation std {min(stds):.2g}x..{max(stds):.2g}x {first}"
    else:
        scales = f"activation std not comparable ({first} is " + ("0)" if reference == 0 else "not finite)")
    if compared and normalised:
        scales += f" ({normalised} that feed a norm, which sets their scale, left out)"
    layers = f"{len(weighted)} weighted layers" + (f" that train ({len(frozen)} frozen, left out)" if frozen else "")
    summary = f"{layers}: {scales}, {_units_text(rows)}, {gradients}"
    if loaded_from is not None:
        summary = f"{summary} (of the network loaded from {loaded_from}, not of a fresh init)"
    verdict = _worst(v for v, _ in flags)
    if flags:
        summary += "; " + "; ".join(sentence for _, sentence in flags[:3])
        if len(flags) > 3:
            summary += f"; and {len(flags) - 3} more (see --json)"
    if verdict == "PASS":
        remedy = ""
    elif loaded_from is not None:
        # the run starts from these weights, not from model.init: changing the init scheme changes nothing, and
        # a norm the source lacks would leave the loaded weights without their tensors (refused)
        remedy = loaded_weights_remedy(f"These are the statistics of the weights loaded from {loaded_from} on "
                                       "these images")
    else:
        remedy = ("Use an init matched to the activation (He/Kaiming for ReLU, Xavier for tanh) or add "
                  "normalisation (model.norm=bn).")
    return CheckResult("init_statistics", verdict, summary, remedy,
                       {"layers": [asdict(r) for r in rows], "flags": [s for _, s in flags], "frozen": frozen})


# ---------------------------------------------------------------------------------------------
# 3. overfit a small sample


def regularisation_off(config: RunConfig) -> RunConfig:
    """The config for overfitting: no augmentation, mixing, smoothing, weight decay, dropout or drop path.

    The augmentation is the 'none' preset with nothing set on top, so a resolved config (a run's
    config.yaml, whose every augmentation field is concrete) loses its augmentation and smoothing too.
    """
    options = dict(config.model.options)
    if "drop_path_rate" in options:
        options["drop_path_rate"] = 0.0
    return replace(
        config,
        # No added dropout either: hidden_drop_rate / stage_drop_rate None add none (and drop_rate 0 turns
        # off the architecture's own dropout layers, those after hidden FC layers included).
        model=replace(config.model, drop_rate=0.0, hidden_drop_rate=None, stage_drop_rate=None,
                      options=options),
        aug=AugConfig(preset="none"),
        optim=replace(config.optim, weight_decay=0.0),
    )


# A final loss this many times the first is a climb, not a stall: at lr 100 LeNet-5's went 2.30 -> 4.83 on the
# digits, which the "barely moved" branch called a learning rate too low.
OVERFIT_RISE = 1.1
# A lowest loss above this share of the first barely moved; a last loss above it, after a lower one, lost its fall
OVERFIT_STALL = 0.9
DIVERGED_REMEDY = "The loss diverged: the learning rate is too high for this model (try a tenth), or add warmup."
# What a loss that climbed above its start says, after the climb's own words
LR_TOO_HIGH = ("the learning rate is too high for this model (try a tenth), or add warmup; the steps overshoot "
               "instead of descending.")


def judge_overfit(history: list[dict], steps_budget: int, num_images: int, classes: int,
                  split_classes: Optional[int] = None, trained_classifier: Optional[str] = None,
                  num_classes: Optional[int] = None, th: CheckThresholds = CheckThresholds(),
                  loaded_from: Optional[str] = None) -> CheckResult:
    """The verdict on an overfitting run's history of {step, loss, acc} checkpoints (step 0: before training).

    ``classes``: how many classes the sample's images belong to; ``split_classes``: how many the training
    split holds (None: not known), for the remedy. PASS when a checkpoint after training reaches 100% on
    a sample of two classes or more. A sample already at 100% before the first step is a WARN (a FAIL if
    the loss then diverged): fitting it proves nothing about learning. A sample of one class fitted after
    training is a WARN too: the classifier's bias alone fits it. ``trained_classifier``: where a classifier
    model.init_from loaded came from (None: a fresh one), for the remedy when the sample was fitted before
    the first step. ``num_classes``: the model's outputs, for ln C: a sample not fitted from a start loss far
    above it (``th.loss_fail_high`` x ln C) is the initialisation's to fix first. A step whose loss was not
    finite records no accuracy (None). ``loaded_from``: where model.init_from loaded the hidden layers from (None:
    a fresh init), whose start loss the preprocessing, not an init scheme, answers for.
    """
    details = {"history": history, "steps_budget": steps_budget, "images": num_images, "classes": classes}
    first, last = history[0], history[-1]
    if first["acc"] >= 1.0:
        # Fitted at step 0: the untrained model already classifies every image (a sample of one class, or
        # a handful of images), so reaching 100% says nothing about whether the model and optimiser learn.
        trained = f"; after {last['step']} steps the loss was {last['loss']:.3g}" if last["step"] > 0 else ""
        fitted = "the one image was" if num_images == 1 else f"all {num_images} images were"  # not "all 1 images"
        summary = (f"{fitted} classified correctly before the first step (loss "
                   f"{first['loss']:.3f}){trained}: the sample was fitted before training, which proves nothing "
                   "about learning")
        if not math.isfinite(last["loss"]):  # training itself broke: that is a finding whatever the sample
            return CheckResult("overfit_sample", "FAIL", summary, DIVERGED_REMEDY, details)
        if trained_classifier is not None:  # more images would not help: the source already knows these classes
            return CheckResult("overfit_sample", "WARN", summary, f"The network starts trained on these classes "
                               f"({trained_classifier}): to see that the model and optimiser learn, run the check "
                               "without model.init_from.", details)
        return CheckResult("overfit_sample", "WARN", summary, "Overfit a sample the untrained model gets wrong: "
                           "more images from more classes (--samples, or a larger training split).", details)
    reached = next((h for h in history if h["acc"] is not None and h["acc"] >= 1.0), None)
    if reached is not None:
        summary = (f"100% of {counted(num_images, 'image')} fitted after {reached['step']} steps "
                   f"(loss {first['loss']:.3f} -> {reached['loss']:.3g})")
        if classes < 2:
            # Raising one output's bias labels every image right: no filter needs to learn anything.
            if split_classes is not None and split_classes < 2:
                remedy = ("The training split holds a single class, so no sample can show more: check the data "
                          "(data.spec, data.classes) and give it images of two classes or more.")
            else:
                remedy = ("Overfit images of two classes or more: raise --samples (64 by default; the sample takes "
                          "the training split's classes in turn).")
            return CheckResult("overfit_sample", "WARN", f"{summary}, but the sample holds one class: the "
                               "classifier's bias alone fits that, which proves little about learning", remedy, details)
        # Fitted, but past a loss above the start: the steps overshot on the way, and on the whole training
        # split, which no number of steps fits, the same rate would not come back down
        peak = max((h for h in history[1:] if h["step"] <= reached["step"]), key=lambda h: h["loss"])
        if not math.isfinite(peak["loss"]) or peak["loss"] > OVERFIT_RISE * first["loss"]:
            return CheckResult("overfit_sample", "WARN", f"{summary}, but the loss rose to {peak['loss']:.3g} at step "
                               f"{peak['step']} first", f"The loss rose before it fell: {LR_TOO_HIGH}", details)
        return CheckResult("overfit_sample", "PASS", summary, "", details)
    start_broken = not math.isfinite(first["loss"])  # the initial weights already give no finite loss
    if start_broken:
        # no accuracy from broken logits (argmax of NaNs picks a class by position) counts as images fitted
        summary = (f"the loss was {first['loss']} before the first step, from the initial weights, so none of "
                   f"the {counted(num_images, 'image')} counts as fitted")
        if last["step"] > 0:
            summary += f" (loss {last['loss']} at step {last['step']})"
    elif last["acc"] is None:  # the loss broke at that step: no accuracy was measured there
        best = max((h["acc"] for h in history if h["acc"] is not None), default=0.0)
        summary = (f"the loss became {last['loss']} at step {last['step']} (loss {first['loss']:.3f} at the start), "
                   f"with {best:.1%} of {counted(num_images, 'image')} fitted at best before it")
    else:
        summary = (f"{last['acc']:.1%} of {counted(num_images, 'image')} after {last['step']} steps "
                   f"(loss {first['loss']:.3f} -> {last['loss']:.3g})")
    # The highest checkpoint after the start: a loss that climbed past the start and came back down part-way
    # overshot, whatever it ended at, so neither "barely moved" nor "falls too slowly" (raise the lr) applies.
    peak = max(history[1:], key=lambda h: h["loss"], default=first)
    # The lowest finite checkpoint after the start: a loss that fell and then lost it did move
    lowest = min((h for h in history[1:] if math.isfinite(h["loss"])), key=lambda h: h["loss"], default=first)
    chance = math.log(num_classes) if num_classes and num_classes > 1 else None
    if start_broken:  # check 1's finding: no learning rate makes a loss that is not finite before any step
        remedy = f"The loss is not finite before any step, so the learning rate is not the cause. {INIT_OVERFLOW_REMEDY}"
    elif chance is not None and first["loss"] > th.loss_fail_high * chance and loaded_from is not None:
        remedy = loaded_weights_remedy(f"The loss started at {first['loss']:.3g}, {first['loss'] / chance:.3g}x "
                                       f"ln {num_classes} (check 1), from the weights loaded from {loaded_from}")
    elif chance is not None and first["loss"] > th.loss_fail_high * chance:
        # the lecture: a loss far above ln C before any step is the initialisation's, whatever the rate does next
        remedy = (f"The loss started at {first['loss']:.3g}, {first['loss'] / chance:.3g}x ln {num_classes} (check 1): "
                  "the initialisation is off before any step. Fix it first (an init matched to the activation, "
                  "He/Kaiming for ReLU; or model.norm=bn), then judge the learning rate.")
    elif not math.isfinite(last["loss"]):
        remedy = DIVERGED_REMEDY
    elif last["loss"] > OVERFIT_RISE * first["loss"]:
        remedy = f"The loss rose: {LR_TOO_HIGH}"
    elif peak["loss"] > OVERFIT_RISE * first["loss"]:
        remedy = f"The loss rose to {peak['loss']:.3g} at step {peak['step']} before it came back down: {LR_TOO_HIGH}"
    elif lowest["loss"] > OVERFIT_STALL * first["loss"]:
        remedy = ("The loss barely moved: the learning rate is too low, or gradients do not reach the weights "
                  "(frozen layers, a detached tensor, a wrong loss).")
    elif last["loss"] > OVERFIT_STALL * first["loss"]:
        # it fell, then climbed back to about its start without passing it: learning happened and was lost
        remedy = (f"The loss fell to {lowest['loss']:.3g} at step {lowest['step']}, then went back to "
                  f"{last['loss']:.3g}: the model lost what it had fitted. Too little capacity (a wider or deeper "
                  "model) or units that died during training (dead ReLUs: model.norm=bn, a smaller learning rate, "
                  "or model.act=leaky_relu) do this.")
    else:
        remedy = ("The loss falls but too slowly: raise the learning rate, allow more --steps, or use a bigger "
                  "model; check that the labels match the images.")
    return CheckResult("overfit_sample", "FAIL", summary, remedy, details)


def overfit_sample(run: RunSetup, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, steps: int,
                   every: int = 10) -> list[dict]:
    """Train ``run``'s model on the fixed sample (x, y) for up to ``steps`` steps at a constant lr; stop at 100%.

    Each step is the engine's :func:`~cnnlab.train.engine.train_step` with the run's optimiser, loss
    (smoothing, auxiliary-head weight), precision and clipping. Every ``every`` steps the whole sample
    is scored in train mode under no_grad (BatchNorm with the sample's statistics, as in training;
    dropout is off in this config). Returns the history.
    """
    from cnnlab.train.engine import train_step

    model = run.model

    def score(step: int) -> dict:
        with torch.no_grad():
            output = model(x)
            logits = output.logits if hasattr(output, "logits") else output
            loss = F.cross_entropy(logits.float(), y).item()
            acc = (logits.argmax(dim=1) == y).double().mean().item()  # a share of images: exact, as cnnlab eval's
        return {"step": step, "loss": loss, "acc": acc}

    run.train_mode()  # model.train() with the run's frozen stages and BatchNorm modes (train.bn_eval)
    history = [score(0)]
    for step in range(1, steps + 1):
        start = ((step - 1) * batch_size) % len(x)
        index = torch.arange(start, start + batch_size) % len(x)  # cycle through the sample
        loss = train_step(model, x[index], y[index], run.optimizer, run.scaler, run.step_settings).loss.item()
        if not math.isfinite(loss):
            history.append({"step": step, "loss": loss, "acc": None})  # not measured: the weights are broken
            break
        if step % every == 0 or step == steps:
            history.append(score(step))
            if history[-1]["acc"] >= 1.0:
                break
    return history


def balanced_sample(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Positions of ``count`` images (all of them when there are fewer) that take the classes in turn: one
    image of each class, then a second of each, and so on, a class that runs out dropping from the turn.
    Which images of a class, and the order of the classes, are drawn with ``seed``. A shuffled draw of a
    few images, or of a split where one class dominates, can come out all of one class, which the
    classifier's bias alone fits."""
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(labels == label).flatten() for label in torch.unique(labels)]
    members = [positions[torch.randperm(len(positions), generator=generator)] for positions in members]
    members = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
    count = min(count, len(labels))
    picked = []
    for depth in range(max((len(positions) for positions in members), default=0)):
        picked += [positions[depth] for positions in members if depth < len(positions)][:count - len(picked)]
        if len(picked) == count:
            break
    return torch.stack(picked) if picked else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# all three


def run_checks(config: RunConfig, *, batches: int = 4, samples: int = 64, steps: int = 300,
               thresholds: CheckThresholds = CheckThresholds(),
               progress: Optional[Callable[[str], None]] = None) -> list[CheckResult]:
    """Run the three checks on ``config``'s model and data; a fresh initialisation for each.

    ``batches``: batches of the training split (no augmentation) for the initial loss and the
    statistics. ``samples``: images to overfit (:func:`balanced_sample`: the classes in turn), trained
    ``steps`` steps at most. A training split with
    fewer images or batches is used whole, and the result says so (:func:`check_warnings`). CPU threads as in
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
        return _run_checks(config, batches, samples, steps, thresholds, progress)


def _run_checks(config: RunConfig, batches: int, samples: int, steps: int, thresholds: CheckThresholds,
                progress: Optional[Callable[[str], None]]) -> list[CheckResult]:
    """:func:`run_checks` in its thread setting."""
    from cnnlab.data.loaders import make_loader
    from cnnlab.train.engine import announce_precision, announce_unused_settings, setup_run

    say = progress or (lambda message: None)
    bad = [f"{name}={shown_value(value)}" for name, value in (("batches", batches), ("samples", samples),
                                                               ("steps", steps))
           if whole_number(value) is None or value < 1]
    if bad:
        raise CnnlabError(f"--batches, --samples and --steps must be whole numbers of at least 1, got "
                          f"{', '.join(bad)}.")
    # The engine's set-up (the same initial weights as `cnnlab train`); deterministic kernels left as they are.
    run = setup_run(config, loaders=False, deterministic=False)
    announce_precision(run)
    announce_unused_settings(run, schedule=False)  # once: the overfitting check's second set-up says nothing
    batch_size = config.train.batch_size
    # A fixed, shuffled, unaugmented view of the training split.
    loader = make_loader(run.dataset, "train", run.stats, batch_size=batch_size, train=False, device=run.device,
                         seed=config.train.seed, shuffle=True)
    taken = []  # the batches for the initial loss and the statistics
    for x, y in loader:
        taken.append((x, y))
        if len(taken) >= batches:
            break
    results = []

    # model.init_from may load the classifier too (the source had these classes): ln C is then not the target
    report = run.init_report
    trained_classifier = f"model.init_from '{report.source}'" if report is not None and not report.skipped else None
    say("initial loss")
    # the first training step's modes (epoch 0: the head-only phase when train.probe_epochs is set)
    loss = initial_loss(copy.deepcopy(run.model), taken[:batches], train_mode=lambda model: run.plan.apply(model, 0))
    results.append(judge_initial_loss(loss, run.dataset.num_classes, thresholds, trained_classifier))
    if len(taken) < batches:  # the whole split was read: say so rather than check fewer batches in silence
        images = sum(len(b[1]) for b in taken)  # the last batch, or the only one, may be short
        given = counted(len(taken), "batch", "batches")
        results[-1].details["warnings"] = [f"--batches {batches}: the training split gives {given} "
                                           f"({counted(images, 'image')} at batch size {batch_size}); "
                                           f"the initial loss reads all {len(taken)}"]

    say("activation and gradient statistics")
    # the modes of the first step that trains the network: after train.probe_epochs' head-only epochs, whose
    # frozen stages would leave nothing but the classifier to compare
    first = run.config.train.probe_epochs
    rows = layer_statistics(copy.deepcopy(run.model), *taken[0], train_mode=lambda model: run.plan.apply(model, first))
    loaded_from = f"model.init_from '{report.source}'" if report is not None and report.loaded else None
    results.append(judge_statistics(rows, thresholds, loaded_from))
    initial, statistics = results
    if initial.verdict == "FAIL" and initial.details["ratio"] and initial.details["ratio"] > thresholds.loss_fail_high \
            and any("explode" in flag for flag in statistics.details.get("flags", [])):
        # the logits are large because the layers before the classifier blow the signal up: scaling the classifier
        # down would hide that
        if loaded_from is not None:
            initial.remedy = loaded_weights_remedy(f"The activations explode in the hidden layers loaded from "
                                                   f"{loaded_from} (check 2), so the logits are large before the "
                                                   "classifier")
        else:
            initial.remedy = ("The activations explode in the hidden layers (check 2), so the logits are large before "
                              "the classifier: fix the hidden layers' init (He/Kaiming for ReLU, Xavier for tanh) or "
                              "add normalisation (model.norm=bn), then look at the classifier's.")

    # The sample takes the classes in turn (unaugmented, normalised as training normalises), so that fitting
    # it takes more than the classifier's bias; consecutive images differ in class, and so do the batches.
    train_split = run.dataset.train
    sample = train_split.subset(balanced_sample(train_split.labels, samples, config.train.seed))
    sample_batches = list(make_loader(run.dataset, sample, run.stats, batch_size=batch_size, train=False,
                                      device=run.device, shuffle=False))
    x = torch.cat([b[0] for b in sample_batches])  # (N, C, H, W), N = samples or the whole split if smaller
    y = torch.cat([b[1] for b in sample_batches])
    say(f"overfitting {counted(len(x), 'image')}")  # the true count: a small split gives fewer than --samples
    fit = setup_run(regularisation_off(config), run.device, loaders=False, deterministic=False)  # fresh weights
    history = overfit_sample(fit, x, y, batch_size=min(batch_size, len(x)), steps=steps)
    results.append(judge_overfit(history, steps, len(x), classes=len(torch.unique(y)),
                                 split_classes=len(torch.unique(train_split.labels)),
                                 trained_classifier=trained_classifier, num_classes=run.dataset.num_classes,
                                 th=thresholds, loaded_from=loaded_from))
    if len(x) < samples:  # the split is smaller than asked: all of it is the sample, and the user is told
        results[-1].details["warnings"] = [f"--samples {samples}: the training split has "
                                           f"{counted(len(x), 'image')}; the overfitting check fits all {len(x)}"]
    return results


def check_warnings(results: list[CheckResult]) -> list[str]:
    """What the checks did other than asked (an option larger than the training split), one line each."""
    return [line for result in results for line in result.details.get("warnings", [])]


def results_json(results: list[CheckResult]) -> dict:
    """The checks as plain JSON data, non-finite numbers as null (as ``cnnlab lr-find --json`` writes them)."""
    from cnnlab.text import finite_or_null

    return finite_or_null({"verdict": _worst(r.verdict for r in results), "checks": [asdict(r) for r in results]})
