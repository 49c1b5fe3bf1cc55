"""The regularisation experiments of note 002: dropout and data augmentation.

dropout. (a) Inverted and vanilla dropout give the same expectation: for each kind, the dropout layers
of a trained net (``model.dropout``, cnnlab.layers.dropout) are run in training mode over many masks on
fixed inputs (the activations that reach them on the first 256 validation images), and the mean is
compared with the layer's test-time output against its standard error; nets trained with either kind
reach alike accuracy. (b) Dropout shrinks the gap between training and validation accuracy: the same
MLP with ``model.hidden_drop_rate`` 0 and 0.5 on a small training subset it can memorise. (c) The test
pass stands for the ensemble of sub-networks dropout trains: on each p=0.5 net (best checkpoint, the test
split), the test pass's accuracy against the averaged softmax of M sub-networks (one mask each, drawn by
the net's own dropout layers in training mode and shared by every image of the pass, the rest of the net
in eval mode) and against the sub-networks one by one.

augmentation. An ablation on a small training subset: no augmentation, each augmentation alone (flip,
shift, erasing, mixup, CutMix), and the ``strong`` preset, each shown with its train-val gap and test
accuracy. Flips are left out where a mirror image changes the label (``DataSet.hflip_safe``: digits, gray
synthetic data).

The gap. Training accuracy is measured on clean images: the run's last weights in eval mode on its
training subset, without augmentation or dropout (the per-epoch training accuracy of metrics.csv is
taken in training mode, under dropout and augmentation, and would shrink the gap by itself). The gap
is that accuracy minus the last epoch's validation accuracy (the same weights).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from cnnlab.experiments.activations import (
    finite_stats,
    fixed_batch,
    last_model,
    split_accuracy,
)
from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Check,
    Experiment,
    combine_verdicts,
    ExperimentResult,
    RunContext,
    SizeInfo,
    bar_plot,
    verdict_of,
)
from cnnlab.experiments.training import (
    ALIKE_NOISE,
    PICK_RULE,
    data_problem,
    DIVERGED,
    SeedStats,
    LEARNED_RULE,
    RunOutcome,
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
from cnnlab.models.dropout import KINDS

VAL_FRACTION = 0.02  # Fashion-MNIST: 1,200 training images held out, as the recipes do (digits has its own val split)
GAP_MARGIN = 0.01  # 1 point: a gap "shrinks" only by more than this and the larger spread
ACCURACY_TOLERANCE = 0.01  # 1 point: inverted and vanilla dropout "alike" within this plus the larger spread
TEST_MARGIN = 0.005  # half a point: the best augmentation "beats" none by more than this and the larger spread


@dataclass
class Measured:
    """One run's clean training accuracy and gap (None when the run diverged)."""

    train_clean: Optional[float]
    gap: Optional[float]


def measure_gap(outcome: RunOutcome) -> Measured:
    """Clean training accuracy of the run's last weights, and that minus the last epoch's val accuracy."""
    if outcome.status == DIVERGED or outcome.val_acc is None:
        return Measured(None, None)
    loaded = last_model(outcome.run_dir)
    if loaded is None:
        return Measured(None, None)
    train = split_accuracy(loaded, "train")
    return Measured(train, train - outcome.val_acc)


def _gap_columns(row: dict, measured: list[Measured]) -> None:
    for key in ("train_clean", "gap"):
        stats = finite_stats(getattr(m, key) for m in measured)
        row[f"{key}_mean"] = stats.mean if stats.n else None
        row[f"{key}_std"] = stats.std if stats.n else None


def _nan(value) -> float:
    return math.nan if value is None else value


# ---------------------------------------------------------------------------------------------
# dropout

DROP_RATE = 0.5  # the notes' "通常设置为 0.5" (and their listing's keep probability p = 0.5)
DROPOUT_SETTINGS = {  # setting -> (model.dropout, model.hidden_drop_rate)
    "p0": ("inverted", None),  # no dropout
    "inverted-p0.5": ("inverted", DROP_RATE),
    "vanilla-p0.5": ("vanilla", DROP_RATE),
}
# The expectation test: |z| of the summed difference at most Z_TOTAL_LIMIT (two-sided p ~ 6e-5 when the
# expectation is right), and at most ELEMENT_SHARE_LIMIT of the elements beyond |z| = 3 (0.27% expected).
Z_TOTAL_LIMIT = 4.0
ELEMENT_Z = 3.0
ELEMENT_SHARE_LIMIT = 0.01


@dataclass(frozen=True)
class DropoutRecipe:
    train_per_class: int
    epochs: int
    width: int  # units of each of the MLP's two hidden layers
    draws: int  # dropout masks the expectation test averages over
    sub_networks: int  # masks (sub-networks) the ensemble check averages the softmax of, on the whole test split


# M = 50 sub-networks at every size, fixed before any number was seen: each is a pass over the whole test split
# (10,000 Fashion-MNIST images through the 2 x 1024 MLP: about 0.55 s of one core's CPU time, measured), so 50
# keep the check under half a minute of CPU per net, while averaging enough masks for the average to be an
# ensemble's rather than a few sub-networks'.
SUB_NETWORKS = 50
DROPOUT_RECIPES = {
    "tiny": DropoutRecipe(train_per_class=10, epochs=2, width=64, draws=200, sub_networks=SUB_NETWORKS),
    "quick": DropoutRecipe(train_per_class=50, epochs=30, width=1024, draws=1000, sub_networks=SUB_NETWORKS),
    "full": DropoutRecipe(train_per_class=100, epochs=40, width=1024, draws=1000, sub_networks=SUB_NETWORKS),
}
# Digits is too easy for a gap to show (a CNN on 30 digits per class reaches 99% val accuracy): quick and
# full train on Fashion-MNIST subsets, tiny on digits.
DATA = {"tiny": "digits", "quick": "fashion-mnist", "full": "fashion-mnist"}


def dropout_sections(recipe: DropoutRecipe, kind: str, rate: Optional[float]) -> dict[str, dict[str, Any]]:
    """The notes' 3-layer net (two hidden ReLU layers, dropout after each) as cnnlab's mlp; SGD as the
    lenet5-digits recipe (lr 0.05, momentum 0.9, weight decay 5e-4, cosine), no augmentation."""
    return {
        "model": {"name": "mlp", "act": "relu", "norm": "none", "dropout": kind, "hidden_drop_rate": rate,
                  "options": {"depth": 2, "width": recipe.width}},
        "data": {"train_per_class": recipe.train_per_class, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": recipe.epochs, "batch_size": 64},
    }


@dataclass(frozen=True)
class ExpectationTest:
    """Many training-mode passes of one dropout layer on a fixed input against its test-time output."""

    layer: str  # the module's name in the model
    kind: str  # the class that implements it
    p: float  # drop probability
    elements: int  # values of the input
    draws: int  # masks averaged
    z_total: float  # (sum of the mean outputs - sum of the test outputs) / its standard error
    share_beyond: float  # share of the elements with |z| > ELEMENT_Z (elements whose input is not 0)
    zero_mismatches: int  # elements with input 0 (no variance) whose mean and test output differ
    control_z_total: float  # the same statistic against the OTHER kind's test-time output (must be far off)

    @property
    def holds(self) -> bool:
        return (abs(self.z_total) <= Z_TOTAL_LIMIT and self.share_beyond <= ELEMENT_SHARE_LIMIT
                and self.zero_mismatches == 0)


def dropout_moments(module: nn.Dropout, h: torch.Tensor, draws: int, seed: int = 0):
    """(mean, unbiased variance) of ``module``'s training-mode output over ``draws`` masks, and its
    eval-mode output; the global RNG is left as it was."""
    was_training = module.training
    total = torch.zeros_like(h, dtype=torch.float64)
    squares = torch.zeros_like(total)
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            module.train()
            for _ in range(draws):
                y = module(h.clone()).double()  # a clone: an in-place dropout must not change h
                total += y
                squares += y * y
            module.eval()
            test = module(h.clone()).double()
    finally:
        module.train(was_training)
    mean = total / draws
    var = (squares / draws - mean * mean).clamp_min(0.0) * draws / (draws - 1)
    return mean, var, test


def _z(mean: torch.Tensor, var: torch.Tensor, target: torch.Tensor, draws: int) -> tuple[float, float, int]:
    """(z of the summed difference, share of |z| > ELEMENT_Z per element, exact mismatches where var = 0)."""
    varies = var > 0
    se_total = math.sqrt(float(var.sum()) / draws)
    difference = float((mean - target).sum())
    if se_total > 0:
        z_total = difference / se_total
    else:  # every input is 0: the outputs are exactly 0 in both modes
        z_total = 0.0 if torch.equal(mean, target) else math.inf
    z = (mean - target)[varies] / (var[varies] / draws).sqrt()
    share = float((z.abs() > ELEMENT_Z).float().mean()) if z.numel() else 0.0
    mismatches = int((mean[~varies] != target[~varies]).sum())
    return z_total, share, mismatches


def dropout_layers(model: nn.Module) -> dict[str, nn.Dropout]:
    """``model``'s dropout layers that drop anything (p > 0; cnnlab's VanillaDropout is an nn.Dropout), by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}


def layer_inputs(model: nn.Module, layers: dict[str, nn.Module], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What reaches each of ``layers`` (a name -> module of ``model``) in an eval-mode pass over ``images``:
    {name: (B, *shape)}, captured with forward pre-hooks (before an in-place layer writes it). ``model`` is
    left in eval mode."""
    names = {id(m): name for name, m in layers.items()}
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(module, args):
        inputs[names[id(module)]] = args[0].detach().clone()  # e.g. (B, width) or (B, C, H, W)

    handles = [m.register_forward_pre_hook(keep_input) for m in layers.values()]
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def expectation_tests(model: nn.Module, images: torch.Tensor, draws: int) -> list[ExpectationTest]:
    """The expectation test for every dropout layer of ``model`` on the inputs that reach it from ``images``
    (captured in eval mode, :func:`layer_inputs`)."""
    layers = dropout_layers(model)
    inputs = layer_inputs(model, layers, images)
    tests = []
    for name, module in layers.items():
        h = inputs[name]
        mean, var, test = dropout_moments(module, h, draws)
        keep = 1.0 - module.p
        # The other kind's test-time rule: vanilla scales by keep at test time, inverted does nothing.
        other = h.double() if isinstance(module, KINDS["vanilla"]) else keep * h.double()
        z_total, share, mismatches = _z(mean, var, test, draws)
        control, _, _ = _z(mean, var, other, draws)
        tests.append(ExpectationTest(layer=name, kind=type(module).__name__, p=module.p, elements=h.numel(),
                                     draws=draws, z_total=z_total, share_beyond=share, zero_mismatches=mismatches,
                                     control_z_total=control))
    return tests


def _expectation_check(kind: str, outcomes: list[RunOutcome], draws: int, depth: int) -> tuple[Check, list[dict]]:
    setting = next(name for name, (k, rate) in DROPOUT_SETTINGS.items() if k == kind and rate)
    claim = (f"{kind} dropout: the mean training-mode output over {draws} masks equals the test-time output "
             f"(every dropout layer of the trained net)")
    run = next((o for o in outcomes if o.setting == setting and o.status != DIVERGED), None)
    loaded = last_model(run.run_dir) if run is not None else None
    if loaded is None:
        return Check(claim, INCONCLUSIVE, f"no finished {setting} run to take the layers from"), []
    tests = expectation_tests(loaded.model, fixed_batch(loaded), draws)
    expected = KINDS[kind].__name__
    rows = [{"setting": f"expectation test: {setting}", "seed": run.seed, **vars(t), "expectation_holds": t.holds}
            for t in tests]
    right_layers = len(tests) == depth and all(t.kind == expected for t in tests)
    text = "; ".join(
        f"{t.layer} ({t.kind}, p={t.p:g}, {t.elements:,} values): z of the summed difference {t.z_total:+.2f} "
        f"(limit {Z_TOTAL_LIMIT:g}), {t.share_beyond:.2%} of values beyond |z| {ELEMENT_Z:g} (limit "
        f"{ELEMENT_SHARE_LIMIT:.0%}), {t.zero_mismatches} mismatches where the input is 0; against the other "
        f"kind's test-time rule z = {t.control_z_total:+.1f}" for t in tests)
    if not right_layers:
        text = (f"expected {depth} {expected} layers (model.dropout={kind}, one after each hidden layer), found "
                f"{[t.kind for t in tests]}; " + text)
    return Check(claim, verdict_of(right_layers and all(t.holds for t in tests)), text), rows


# ---------------------------------------------------------------------------------------------
# (c) the ensemble reading: the test pass against the average of M sub-networks

ENSEMBLE_SEED = 0  # the masks' seed (torch's global RNG, forked: the caller's stream is left as it was)
ENSEMBLE_RULE = (
    f"(c) The ensemble reading, per kind, 3+ seeds: on each p=0.5 net's best checkpoint (the weights test_acc "
    f"scores), over the whole test split, {SUB_NETWORKS} sub-networks (seeded), each with one mask per dropout layer, "
    "drawn by that layer in training mode and used for every image, the rest of the net in eval mode. 'The average "
    "beats one sub-network' HOLDS when the accuracy of the averaged softmax (mean over seeds) is above the mean "
    "sub-network accuracy by more than the larger spread over seeds and the largest spread (sample std) among one "
    f"net's {SUB_NETWORKS} sub-networks, DOES NOT HOLD when below by as much, INCONCLUSIVE in between. 'The test pass "
    "is alike the average' HOLDS when their mean accuracies differ by at most "
    f"{ACCURACY_TOLERANCE * 100:g} point plus the spread over seeds of the per-net differences (the same nets "
    f"measured twice), else DOES NOT HOLD; {ALIKE_NOISE}. The ensemble reading "
    "HOLDS when both hold, DOES NOT HOLD when either does not, INCONCLUSIVE otherwise; the share of images on which "
    "the test pass and the average predict the same class is reported, not judged.")


@dataclass(frozen=True)
class SubNetworkEnsemble:
    """One trained net on one split: its test pass, M sub-networks one by one, and their averaged softmax."""

    images: int
    masks: int  # M: sub-networks (one mask per dropout layer each, the same for every image)
    test_pass_acc: float  # (a) every unit on, the activations scaled (the net in eval mode)
    ensemble_acc: float  # (b) argmax of the mean of the M sub-networks' softmax outputs
    sub_accs: tuple[float, ...]  # (c) each sub-network's accuracy, in mask order
    agreement: float  # share of images on which (a) and (b) predict the same class
    mean_probs: Optional[torch.Tensor] = None  # (N, K) the averaged softmax, when asked for

    @property
    def sub_mean(self) -> float:
        return SeedStats(self.sub_accs).mean

    @property
    def sub_std(self) -> float:
        """The sample standard deviation over the M sub-networks: the sub-networks' spread."""
        return SeedStats(self.sub_accs).std


def draw_masks(model: nn.Module, images: torch.Tensor, count: int,
               seed: int = ENSEMBLE_SEED) -> dict[str, torch.Tensor]:
    """``count`` masks per dropout layer of ``model``: {layer name: (count, *shape)}, shape being one image's
    activations at that layer (found by an eval-mode pass over ``images``).

    Each mask is the layer's own training-mode output on ones, so it carries the layer's rule: 0 or
    1 / (1 - p) for inverted dropout (nn.Dropout), 0 or 1 for vanilla (VanillaDropout). Drawn mask by mask,
    layer by layer in module order, after torch.manual_seed(seed) in a forked RNG (the global stream is left as
    it was); only the dropout layers are switched to training mode, and back.
    """
    layers = dropout_layers(model)
    was_training = {module: module.training for module in model.modules()}
    # one image's activations at each layer, e.g. (width,) or (C, H, W)
    shapes = {name: h.shape[1:] for name, h in layer_inputs(model, layers, images).items()}
    masks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            for layer in layers.values():
                layer.train()
            for _ in range(count):
                for name, layer in layers.items():
                    ones = torch.ones((1, *shapes[name]), dtype=images.dtype)  # a fresh tensor: inplace layers write it
                    masks[name].append(layer(ones)[0])
    finally:
        for module, training in was_training.items():  # each module's own mode, as it was
            module.training = training
    return {name: torch.stack(drawn) for name, drawn in masks.items()}


class _FixedMask(nn.Module):
    """Stands in for a dropout layer during the passes: with ``index`` k, sub-network k (every image multiplied
    by the same mask k); with ``index`` None, the layer itself in eval mode (the test pass)."""

    def __init__(self, layer: nn.Dropout, masks: torch.Tensor):
        super().__init__()
        self._layer = (layer,)  # a tuple, not a child: model.train()/eval() must not reach it through the stand-in
        self.masks = masks  # (M, *shape): a plain attribute, never saved
        self.index: Optional[int] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self._layer[0](x)  # eval mode: inverted does nothing, vanilla scales by 1 - p
        return x * self.masks[self.index]  # (B, *shape) * (*shape): one sub-network for the whole batch


@contextmanager
def fixed_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[list[_FixedMask]]:
    """``model`` with each dropout layer named in ``masks`` replaced, in its slot, by a :class:`_FixedMask`
    (their ``index`` picks the sub-network, None the test pass); the layers are put back on exit. Nothing else
    changes: the rest of the net stays in the mode it is in (eval, for the passes)."""
    layers = dropout_layers(model)
    stand_ins = {id(layers[name]): _FixedMask(layers[name], drawn) for name, drawn in masks.items()}
    swapped = []
    try:
        for parent in list(model.modules()):
            for slot, child in list(parent._modules.items()):
                if child is not None and id(child) in stand_ins:
                    parent._modules[slot] = stand_ins[id(child)]  # same slot: a Sequential keeps its order
                    swapped.append((parent, slot, child))
        yield list(stand_ins.values())
    finally:
        for parent, slot, child in swapped:
            parent._modules[slot] = child


def sub_network_ensemble(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], masks: int,
                         seed: int = ENSEMBLE_SEED, keep_probs: bool = False) -> SubNetworkEnsemble:
    """The test pass, ``masks`` sub-networks and their averaged softmax over ``batches`` of (images, labels).

    The masks are drawn once (:func:`draw_masks`, on the first batch's shapes) and sub-network k uses mask k
    for every image of every batch, so that it is one network and its accuracy is that network's. The model
    is in eval mode throughout (BatchNorm uses its running statistics); the dropout layers only draw the masks
    in training mode. The average is of probabilities (softmax), not of logits, in float64. Every batch must
    give the first batch's activation shapes at the dropout layers (images of one size: an MLP's always are).
    ``keep_probs``: also return the (N, K) averaged softmax.
    """
    from cnnlab.threads import tick

    if masks < 1:
        raise ValueError(f"sub_network_ensemble needs at least one mask, not {masks}")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("sub_network_ensemble needs at least one batch of images")
    images = test_right = ensemble_right = agree = 0
    sub_right = torch.zeros(masks, dtype=torch.long)
    kept = []
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:  # from here on every module gets its own mode back, whatever fails (a mask's shape, a batch)
        drawn = draw_masks(model, first[0], masks, seed)
        with torch.no_grad(), fixed_masks(model, drawn) as stand_ins:
            for x, y in _chain(first, iterator):
                tick()  # torch's CPU threads follow the cores other processes leave free
                for stand_in in stand_ins:
                    stand_in.index = None
                test_pred = model(x).argmax(1)  # (B,) the test pass
                total = None
                for k in range(masks):
                    for stand_in in stand_ins:
                        stand_in.index = k
                    probs = torch.softmax(model(x).double(), dim=1)  # (B, K) sub-network k
                    sub_right[k] += int((probs.argmax(1) == y).sum())
                    total = probs if total is None else total + probs
                mean = total / masks  # (B, K) the M-mask average
                ensemble_pred = mean.argmax(1)
                images += len(y)
                test_right += int((test_pred == y).sum())
                ensemble_right += int((ensemble_pred == y).sum())
                agree += int((ensemble_pred == test_pred).sum())
                if keep_probs:
                    kept.append(mean)
    finally:
        for module, training in was_training.items():  # each module's own mode, as it was
            module.training = training
    return SubNetworkEnsemble(
        images=images, masks=masks, test_pass_acc=test_right / images, ensemble_acc=ensemble_right / images,
        sub_accs=tuple(float(r) / images for r in sub_right), agreement=agree / images,
        mean_probs=torch.cat(kept) if keep_probs else None)


def _chain(first, rest: Iterator):
    yield first
    yield from rest


def run_ensemble(outcome: RunOutcome, masks: int) -> Optional[SubNetworkEnsemble]:
    """:func:`sub_network_ensemble` of a run's best checkpoint (the weights its test_acc scores) on the test
    split, preprocessed as evaluation does; None when the run diverged or kept no best checkpoint."""
    from cnnlab.evaluate.evaluate import eval_loader
    from cnnlab.run import RunFolder
    from cnnlab.train.checkpoint import load_run_model

    best = RunFolder(Path(outcome.run_dir)).best
    if outcome.status == DIVERGED or not best.is_file():
        return None
    loaded = load_run_model(best)
    _, loader = eval_loader(loaded, split="test")
    return sub_network_ensemble(loaded.model, loader, masks)


def _ensemble_check(kind: str, outcomes: list[RunOutcome], masks: int, chance: float) -> tuple[Check, list[dict]]:
    """(c) for one kind, over its p=0.5 runs, by :data:`ENSEMBLE_RULE`."""
    setting = next(name for name, (k, rate) in DROPOUT_SETTINGS.items() if k == kind and rate)
    claim = (f"{kind} dropout: the test pass stands for the ensemble of sub-networks (the average of {masks} "
             "sub-networks' softmax beats one sub-network by more than their spread, and the test pass is "
             "alike it in test accuracy)")
    measured = [(o, run_ensemble(o, masks)) for o in outcomes if o.setting == setting]
    measured = [(o, e) for o, e in measured if e is not None]
    rows = [{"setting": f"sub-network ensemble: {setting}", "seed": o.seed, "run_dir": o.run_dir, "masks": e.masks,
             "images": e.images, "test_pass_acc": e.test_pass_acc, "ensemble_acc": e.ensemble_acc,
             "sub_acc_mean": e.sub_mean, "sub_acc_std": e.sub_std, "sub_acc_min": min(e.sub_accs),
             "sub_acc_max": max(e.sub_accs), "test_ensemble_agreement": e.agreement} for o, e in measured]
    if not measured:
        return Check(claim, INCONCLUSIVE, f"no finished {setting} run with a best checkpoint"), rows
    test_pass = SeedStats(tuple(e.test_pass_acc for _, e in measured))
    ensemble = SeedStats(tuple(e.ensemble_acc for _, e in measured))
    single = SeedStats(tuple(e.sub_mean for _, e in measured))
    spread = max(e.sub_std for _, e in measured)  # the largest spread among one net's sub-networks
    average = f"average of {masks}"
    beats = better(f"the average of {masks} sub-networks beats one sub-network", average, ensemble,
                   "one sub-network (mean)", single, min_margin=spread)
    # the same nets measured twice: judged by their per-net differences, whose spread the nets' own cancels
    stands = alike("the test pass is alike the average", "test pass", test_pass, average, ensemble,
                   tolerance=ACCURACY_TOLERANCE,
                   differences=SeedStats(tuple(e.test_pass_acc - e.ensemble_acc for _, e in measured)))
    agreement = SeedStats(tuple(e.agreement for _, e in measured))
    text = (f"largest spread (sample std) among one net's {masks} sub-networks {spread * 100:.2f} points, the "
            f"minimum margin of 'beats'; beats {beats.verdict}: {beats.margin}; alike {stands.verdict}: "
            f"{stands.margin}; the test pass and the average predict the same class on "
            f"{agreement.text(100, '%')} of the {measured[0][1].images:,} test images")
    check = Check(claim, combine_verdicts([beats, stands]), text)
    return unless_learned(check, outcomes, chance, (setting,)), rows


def run_dropout(ctx: RunContext) -> ExperimentResult:
    recipe = DROPOUT_RECIPES[ctx.size]
    configs = {name: experiment_config(ctx.data, dropout_sections(recipe, kind, rate))
               for name, (kind, rate) in DROPOUT_SETTINGS.items()}
    outcomes = train_settings(ctx, configs)
    measured = {o.run_dir: measure_gap(o) for o in outcomes}
    extra = {name: {"dropout": kind, "hidden_drop_rate": rate or 0.0}
             for name, (kind, rate) in DROPOUT_SETTINGS.items()}
    rows = summary_rows(outcomes, list(DROPOUT_SETTINGS), ["train_acc", "val_acc", "test_acc"], extra)
    gaps = {}
    for row in rows:
        mine = [measured[o.run_dir] for o in outcomes if o.setting == row["setting"]]
        _gap_columns(row, mine)
        gaps[row["setting"]] = finite_stats(m.gap for m in mine)
    run_rows = [o.row(**extra[o.setting], **vars(measured[o.run_dir])) for o in outcomes]

    checks, test_rows = [], []
    for kind in KINDS:
        check, found = _expectation_check(kind, outcomes, recipe.draws, depth=2)
        checks.append(check)
        test_rows += found
    test = {name: seed_stats(outcomes, name, "test_acc") for name in DROPOUT_SETTINGS}
    chance = chance_level(outcomes)
    ensemble_checks, ensemble_rows = [], []
    for kind in KINDS:
        check, found = _ensemble_check(kind, outcomes, recipe.sub_networks, chance)
        ensemble_checks.append(check)
        ensemble_rows += found
    checks.append(unless_learned(
        alike("nets trained with inverted and with vanilla dropout (p=0.5) reach alike test accuracy",
              "inverted-p0.5", test["inverted-p0.5"], "vanilla-p0.5", test["vanilla-p0.5"],
              tolerance=ACCURACY_TOLERANCE), outcomes, chance, ("inverted-p0.5", "vanilla-p0.5")))
    checks.append(unless_learned(
        better("inverted dropout p=0.5 shrinks the train-val accuracy gap (clean train accuracy minus val, last "
               "weights)",
               "inverted-p0.5", gaps["inverted-p0.5"], "p0", gaps["p0"], higher=False, min_margin=GAP_MARGIN),
        outcomes, chance, ("inverted-p0.5", "p0")))
    checks += ensemble_checks
    plots = _dropout_plots(ctx.out, outcomes, rows)
    return ExperimentResult(rows + run_rows + test_rows + ensemble_rows, checks, plots,
                            runs=[Path(o.run_dir) for o in outcomes])


def _dropout_plots(out: Path, outcomes: list[RunOutcome], rows: list[dict]) -> list[Path]:
    train, val, train_bands, val_bands = {}, {}, {}, {}
    for name in DROPOUT_SETTINGS:
        epochs, means, stds = mean_curve(outcomes, name, "train_acc")
        train[name], train_bands[name] = (epochs, means), stds
        epochs, means, stds = mean_curve(outcomes, name, "val_acc")
        val[name], val_bands[name] = (epochs, means), stds
    train_panel, val_panel = "train accuracy (training mode: dropout on)", "val accuracy"
    curves = line_plot(out / "dropout_by_epoch.png", "Dropout (p=0.5) narrows the gap between train and val accuracy",
                       {train_panel: train, val_panel: val}, bands={train_panel: train_bands, val_panel: val_bands})
    labels = [row["setting"] for row in rows]
    bars = bar_plot(out / "dropout_gap.png",
                    "Dropout shrinks the train-val gap; inverted and vanilla dropout train alike (note 002)", labels,
                    {"accuracy, last weights (mean over seeds)": {
                        "train (clean: eval mode)": [_nan(r["train_clean_mean"]) for r in rows],
                        "val": [_nan(r["val_acc_mean"]) for r in rows]},
                     "train - val gap": {"gap": [_nan(r["gap_mean"]) for r in rows]},
                     "test accuracy (best checkpoint)": {"test": [_nan(r["test_acc_mean"]) for r in rows]}})
    return [curves, bars]


def check_dropout_data(dataset, size: str) -> Optional[str]:
    """Why ``dataset`` cannot be used at ``size``, or None: it needs a test split (the trained nets are compared
    on test accuracy); the settings differ only in the dropout layers, so one setting's run stands for all in
    the batch check."""
    kind, rate = next(iter(DROPOUT_SETTINGS.values()))
    return data_problem(dataset, per_class=DROPOUT_RECIPES["tiny"].train_per_class, test_split=True, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec,
                                                              dropout_sections(DROPOUT_RECIPES[at], kind, rate))])


DROPOUT = Experiment(
    name="dropout",
    claim="Inverted dropout (scaled while training) and vanilla dropout (scaled at test time) have the same "
          "expectation: test output = expected training output; dropout regularises: it narrows the gap "
          "between training and validation accuracy; and dropout trains a large ensemble of sub-networks that "
          "share parameters, for which the test pass (every unit on, activations scaled) stands.",
    source=("002", "测试时的输出 = 训练时的期望输出 ... Vanilla Dropout: Not recommended implementation ... "
                   "更常用的方法是“反向(inverse) Dropout”; Dropout 是在训练一个很大的（共享参数的）模型集(ensemble); "
                   "001: 训练损失远低于验证损失：模型过拟合，需要增加正则化（Dropout）"),
    notes=("002", "001"),  # note 001: a training loss far below the validation loss calls for dropout
    rule="(a) Expectation, per kind (seeded, no spread needed): on the trained net's dropout layers (one after each "
         "hidden layer, of the class model.dropout names), the mean of the training-mode output over many masks on "
         "the inputs the first 256 validation images give HOLDS as equal to the test-time output when the summed "
         f"difference is within {Z_TOTAL_LIMIT:g} standard errors, at most {ELEMENT_SHARE_LIMIT:.0%} of the values are "
         f"beyond {ELEMENT_Z:g} standard errors (0.27% expected), and values with input 0 match exactly; DOES NOT HOLD "
         "otherwise. (a) Trained nets, 3+ seeds: inverted and vanilla p=0.5 are alike when their mean test "
         f"accuracies differ by at most {ACCURACY_TOLERANCE * 100:g} point plus the larger spread (sample std), else "
         f"DOES NOT HOLD; {ALIKE_NOISE}. (b) The gap is clean training accuracy (last weights, eval mode, the "
         "training subset) minus the last epoch's val accuracy; 'dropout shrinks it' HOLDS when inverted dropout's "
         f"p=0.5 mean gap (the form the notes recommend) is below p=0's by more than the larger spread and "
         f"{GAP_MARGIN * 100:g} point, DOES NOT HOLD when above by as much, INCONCLUSIVE in between; vanilla p=0.5's "
         f"gap is reported, not judged. {ENSEMBLE_RULE} Fewer than 3 seeds: the trained-net checks ((a)'s "
         "accuracies, (b), (c)) are "
         f"INCONCLUSIVE. {LEARNED_RULE}",
    runs="the notes' 3-layer net (an MLP with two hidden ReLU layers, no norm) on a small training subset, "
         "without dropout and with dropout p=0.5 after each hidden layer, inverted and vanilla; SGD lr 0.05, "
         "momentum 0.9, weight decay 5e-4, cosine, batch 64, no augmentation",
    # The ensemble reading adds 2 x seeds nets x 51 passes over the test split: 28 s of one core's CPU time per
    # net on the 10,000 Fashion-MNIST test images (measured with getrusage, the machine busy), so about 170 s at
    # quick and full (3 seeds) on top of the training; about 1 s at tiny (269 digits, 2 x 64 units).
    sizes={
        "tiny": SizeInfo("digits, 10 images per class, MLP 2 x 64, 2 epochs, 3 runs, 200 masks, 50 sub-networks "
                         "(mechanics only)", 7.0),
        "quick": SizeInfo("Fashion-MNIST 28x28, 50 images per class (500), 1,200 val, 10,000 test; MLP 2 x 1024, "
                          "30 epochs, 3 settings x 3 seeds, 1,000 masks, 50 sub-networks on the test split", 295.0),
        "full": SizeInfo("Fashion-MNIST 28x28, 100 images per class (1,000), 1,200 val, 10,000 test; MLP 2 x 1024, "
                         "40 epochs, 3 settings x 3 seeds, 1,000 masks, 50 sub-networks on the test split", 440.0),
    },
    run=run_dropout,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_dropout_data,
)


# ---------------------------------------------------------------------------------------------
# augmentation

MODEL = "vgg_mini"  # a CNN: shifts and crops act on the feature maps' positions, as the lecture's figures assume
# Per stage (3x3 convs, channels): vgg_mini's table at two thirds of its width (24-48-96-192), 98,922 parameters
# on 1x28x28 and 10 classes, so that 21 runs fit the full size's minutes; still far more than 1,000 images need.
MODEL_CFG = [[1, 16], [1, 32], [1, 64], [1, 128]]


@dataclass(frozen=True)
class AugRecipe:
    train_per_class: int
    epochs: int


AUG_RECIPES = {
    "tiny": AugRecipe(train_per_class=10, epochs=1),
    "quick": AugRecipe(train_per_class=50, epochs=12),
    "full": AugRecipe(train_per_class=100, epochs=20),
}


def augmentation_settings(image_size: int, channels: int, hflip_safe: bool) -> dict[str, dict[str, Any]]:
    """setting -> aug section. Each augmentation alone with the value its preset gives (flip and shift:
    ``light``; erasing, mixup and CutMix: ``strong``), mixup and CutMix on every batch, then ``strong``
    itself. No flip setting where a mirror changes the label."""
    from cnnlab.data.transforms import resolve_aug

    light = resolve_aug("light", image_size, channels, hflip_safe)
    strong = resolve_aug("strong", image_size, channels, hflip_safe)
    settings: dict[str, dict[str, Any]] = {"none": {"preset": "none"}}
    if hflip_safe:
        settings["flip"] = {"preset": "none", "hflip": light.hflip}
    settings["shift"] = {"preset": "none", "crop": "translate", "translate": light.translate}
    settings["erasing"] = {"preset": "none", "erasing": strong.erasing}
    settings["mixup"] = {"preset": "none", "mixup_alpha": strong.mixup_alpha, "mix_prob": 1.0}
    settings["cutmix"] = {"preset": "none", "cutmix_alpha": strong.cutmix_alpha, "mix_prob": 1.0}
    settings["strong"] = {"preset": "strong"}
    return settings


def augmentation_sections(recipe: AugRecipe, aug: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """vgg_mini with fashion-mnist-best's SGD (lr 0.1 per 128 images, momentum 0.9, weight decay 5e-4, cosine)."""
    return {
        "model": {"name": MODEL, "options": {"cfg": MODEL_CFG}},
        "data": {"train_per_class": recipe.train_per_class, "val_fraction": VAL_FRACTION},
        "aug": dict(aug),
        "optim": {"name": "sgd", "lr": 0.1, "lr_batch": 128, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": recipe.epochs, "batch_size": 64, "channels_last": True},
    }


def _described(aug: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in aug.items())


def run_augmentation(ctx: RunContext) -> ExperimentResult:
    from cnnlab.data.sources import load_source

    recipe = AUG_RECIPES[ctx.size]
    dataset = load_source(ctx.data)
    settings = augmentation_settings(dataset.image_size, dataset.channels, dataset.hflip_safe)
    configs = {name: experiment_config(ctx.data, augmentation_sections(recipe, aug)) for name, aug in settings.items()}
    outcomes = train_settings(ctx, configs)
    measured = {o.run_dir: measure_gap(o) for o in outcomes}
    extra = {name: {"aug": _described(aug)} for name, aug in settings.items()}
    rows = summary_rows(outcomes, list(settings), ["train_acc", "val_acc", "best_val_acc", "test_acc"], extra)
    gaps = {}
    for row in rows:
        mine = [measured[o.run_dir] for o in outcomes if o.setting == row["setting"]]
        _gap_columns(row, mine)
        gaps[row["setting"]] = finite_stats(m.gap for m in mine)
    summaries = len(rows)

    augmented = [name for name in settings if name != "none"]
    chance = chance_level(outcomes)
    per_setting = {name: unless_learned(better(f"{name} shrinks the gap", name, gaps[name], "none", gaps["none"],
                                               higher=False, min_margin=GAP_MARGIN), outcomes, chance, (name, "none"))
                   for name in augmented}
    for row in rows:
        if row["setting"] in per_setting:
            row["shrinks_gap"] = per_setting[row["setting"]].verdict
    holding = [name for name, c in per_setting.items() if c.verdict == HOLDS]
    failing = [name for name, c in per_setting.items() if c.verdict == FAILS]
    majority = len(augmented) / 2
    verdict = HOLDS if len(holding) > majority else FAILS if len(failing) > majority else INCONCLUSIVE
    checks = [Check(
        f"augmentation shrinks the train-val gap: a majority of the {len(augmented)} augmented settings do",
        verdict,
        f"{len(holding)} of {len(augmented)} shrink it by the rule ({', '.join(holding) or 'none'}), "
        f"{len(failing)} widen it ({', '.join(failing) or 'none'}): "
        + "; ".join(f"{name} {c.verdict}: {c.margin}" for name, c in per_setting.items()))]

    val = {name: seed_stats(outcomes, name, "best_val_acc") for name in augmented}
    ranked = [name for name in augmented if val[name].n and not diverged_anywhere(outcomes, name)]
    if ranked:
        chosen = max(ranked, key=lambda name: val[name].mean)  # chosen on validation, judged on test
        checks.append(unless_learned(
            better(f"the best augmented setting by val accuracy ({chosen}) beats no augmentation on test accuracy",
                   chosen, seed_stats(outcomes, chosen, "test_acc"), "none", seed_stats(outcomes, "none", "test_acc"),
                   min_margin=TEST_MARGIN), outcomes, chance, (chosen, "none")))
    else:
        checks.append(Check("the best augmented setting beats no augmentation on test accuracy", INCONCLUSIVE,
                            "no augmented setting finished every seed"))
    if not dataset.hflip_safe:
        rows.append({"setting": "flip", "aug": "left out",
                     "note": f"a mirror image changes the label on {dataset.spec} (flips are not label-preserving), so "
                             "the flip setting is not run and the strong preset resolves to hflip=0"})
    plots = _augmentation_plots(ctx.out, outcomes, rows[:summaries])
    rows += [o.row(**extra[o.setting], **vars(measured[o.run_dir])) for o in outcomes]
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def _augmentation_plots(out: Path, outcomes: list[RunOutcome], rows: list[dict]) -> list[Path]:
    labels = [row["setting"] for row in rows]
    bars = bar_plot(out / "augmentation_gap.png",
                    "Data augmentation as a regulariser: a smaller train-val gap (note 002)", labels,
                    {"accuracy, last weights (mean over seeds)": {
                        "train (clean: eval mode, no augmentation)": [_nan(r["train_clean_mean"]) for r in rows],
                        "val": [_nan(r["val_acc_mean"]) for r in rows]},
                     "train - val gap": {"gap": [_nan(r["gap_mean"]) for r in rows]},
                     "test accuracy (best checkpoint)": {"test": [_nan(r["test_acc_mean"]) for r in rows]}})
    train, val, train_bands, val_bands = {}, {}, {}, {}
    for name in labels:
        epochs, means, stds = mean_curve(outcomes, name, "train_acc")
        train[name], train_bands[name] = (epochs, means), stds
        epochs, means, stds = mean_curve(outcomes, name, "val_acc")
        val[name], val_bands[name] = (epochs, means), stds
    train_panel, val_panel = "train accuracy (training mode: augmented)", "val accuracy"
    curves = line_plot(out / "augmentation_by_epoch.png",
                       "Augmentation slows fitting the training set and narrows the gap", {train_panel: train, val_panel: val}, bands={train_panel: train_bands, val_panel: val_bands})
    return [bars, curves]


def check_augmentation_data(dataset, size: str) -> Optional[str]:
    """Why ``dataset`` cannot be used at ``size``, or None: it needs a test split (the setting chosen on
    validation is judged on test accuracy); the settings differ only in the augmentation, so the baseline's
    run (no augmentation) stands for all in the batch check."""
    return data_problem(dataset, per_class=AUG_RECIPES["tiny"].train_per_class, model=MODEL, test_split=True,
                        size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec,
                                                              augmentation_sections(AUG_RECIPES[at], {"preset": "none"}))])


AUGMENTATION = Experiment(
    name="augmentation",
    claim="Data augmentation is a regulariser: training on transformed copies of the images (flips, shifts, "
          "erasing/cutout, mixup, CutMix) narrows the gap between training and validation accuracy and helps the "
          "test accuracy when data is scarce.",
    source=("002", "数据增强(data augmentation)也是一种正则化方法; 挖剪(cutout) ... 在像 CIFAR 这样小的数据集上表现很好"),
    rule="Per setting, 3+ seeds, the same network and recipe on a small training subset. The gap is clean training "
         "accuracy (last weights, eval mode, no augmentation, the training subset) minus the last epoch's val "
         "accuracy. A setting shrinks the gap when its mean gap is below no augmentation's by more than the larger "
         f"spread (sample std) and {GAP_MARGIN * 100:g} point, widens it when above by as much. 'Augmentation shrinks "
         "the gap' HOLDS when more than half of the augmented settings shrink it, DOES NOT HOLD when more than half "
         "widen it, INCONCLUSIVE otherwise. The augmented setting with the best mean val accuracy (chosen on "
         f"validation, never on test; {PICK_RULE}) 'beats no augmentation' when its mean test accuracy is higher "
         "by more than the "
         f"larger spread and {TEST_MARGIN * 100:g} point, DOES NOT HOLD when lower by as much, INCONCLUSIVE in "
         "between. Fewer than 3 seeds: INCONCLUSIVE. Where a mirror changes the label (digits), flip is left out. "
         f"{LEARNED_RULE}",
    runs="vgg_mini (BatchNorm) on a small class-balanced training subset with: no augmentation, horizontal flip "
         "(p 0.5), pad-and-crop shift (an eighth of the side), random erasing (p 0.25), mixup (alpha 0.2), CutMix "
         "(alpha 1), each alone (mixup and CutMix on every batch), and the strong preset (flip, shift, colour jitter, "
         "RandAugment 2/9, erasing, mixup/CutMix on half the batches, label smoothing 0.1); SGD lr 0.1 per 128 "
         "images, momentum 0.9, weight decay 5e-4, cosine, batch 64",
    sizes={
        "tiny": SizeInfo("digits, 10 images per class, 1 epoch, 6 settings (no flip: it changes a digit), "
                         "1 seed (mechanics only)", 10.0),
        "quick": SizeInfo("Fashion-MNIST 28x28, 50 images per class (500), 1,200 val, 10,000 test; 12 epochs, "
                          "7 settings x 3 seeds", 240.0),
        "full": SizeInfo("Fashion-MNIST 28x28, 100 images per class (1,000), 1,200 val, 10,000 test; 20 epochs, "
                         "7 settings x 3 seeds", 470.0),
    },
    run=run_augmentation,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_augmentation_data,
)

EXPERIMENTS = [DROPOUT, AUGMENTATION]
