"""The pre-activation experiment (note 002, "改善残差块的设计"): the original residual block cannot learn
the identity, the pre-activation block can, and it is slightly more accurate.

Exact checks, no training. The blocks are the zoo's own: every block of ``resnet18`` (post-activation,
:class:`cnnlab.layers.residual.BasicBlock`: out = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)) and of
``preact_resnet18`` (:class:`cnnlab.layers.residual.PreActBasicBlock`: out = x + conv2(relu(bn2(conv1(
relu(bn1(x))))))), the two nets the accuracy check trains. Each block reads one seeded N(0, 1) batch
(B, C_in, S, S), half of whose numbers are negative, in training mode (batch statistics) and in eval mode
(running statistics), on a copy of the block:

* random weights: the block's He-initialised convs with its BN scales, shifts and running statistics drawn
  at random (a trained block's are not 1 and 0), so that the post block's sign does not rest on the
  initial BN. Its output ends in a ReLU, so its minimum is >= 0 whatever the weights, and at every
  negative input number x_i its distance to x is at least -x_i: max|out - x| >= max(-x) > 0.
* convs zeroed (every conv weight, and bias where there is one): the post block keeps its BN at the
  initial state (scale 1, shift 0, running mean 0, variance 1), which maps the zero conv output to 0 in
  both modes, so it returns relu(0 + x) = relu(x), at distance max(-x) from x. (A BN shift b would make
  it relu(x + b): non-negative all the same.) The pre-activation block keeps its drawn BN: its branch
  ends in the zeroed conv, so it returns x + 0 = x whatever the BN holds, bit for bit.

The accuracy check trains ``resnet18`` and ``preact_resnet18`` (a post/pre-activation pair of one depth,
the ImageNet-style one: 18 layers, 11.2M parameters, option-B projection shortcuts) with one recipe,
degradation's (He et al.'s CIFAR recipe: SGD momentum 0.9, weight decay 1e-4, lr 0.1 per 128 images at
batch 64, cosine decay, no augmentation; cnnlab.experiments.depth), at 32x32, the nets' smallest input
(Fashion-MNIST's 28x28 resized), and judges their test accuracy over seeds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cnnlab.experiments.base import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    verdict_of,
)
from cnnlab.experiments.depth import Budget, depth_sections
from cnnlab.experiments.training import (
    LEARNED_RULE,
    MIN_SEEDS,
    RunOutcome,
    SeedStats,
    chance_level,
    data_problem,
    experiment_config,
    line_plot,
    mean_curve,
    seed_stats,
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.io import save_png
from cnnlab.threads import tick

POST, PRE = "resnet18", "preact_resnet18"  # a post- and a pre-activation net of one depth (ImageNet stem)
NETS = (POST, PRE)

# ---------------------------------------------------------------------------------------------
# the exact checks

BLOCK_SEED = 0  # torch seed of the nets' weights, the drawn BN values and the inputs
BLOCK_INPUTS = {  # size -> (batch B, side S) of the N(0, 1) input every block reads: convs take any size
    "tiny": (4, 4),
    "quick": (16, 8),
    "full": (16, 8),
}
MODES = ("train", "eval")  # BN with batch statistics (as in training) and with running statistics


def zoo_blocks(net: str) -> list[tuple[str, nn.Module]]:
    """(name, block) for every residual block of the zoo's ``net``, in order; He init as the zoo builds it."""
    from cnnlab.layers.residual import _ResidualBlock
    from cnnlab.models import create_model

    model = create_model(net, num_classes=10, in_chans=1)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _ResidualBlock)]


def draw_norms(block: nn.Module, generator: torch.Generator) -> None:
    """Draw every BN's scale, shift and running statistics at random, as training would leave them."""
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))  # scale in [0.5, 1.5)
                module.bias.copy_(torch.randn(c, generator=generator))  # shift N(0, 1)
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))  # in [0.5, 1.5)


def zero_convs(block: nn.Module) -> int:
    """Zero every conv's weight (and bias) in ``block``; returns how many convs were zeroed."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
    return len(convs)


def block_output(block: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The block's output on ``x`` in ``mode`` (train: batch statistics; eval: running ones), on a copy, so
    that training mode's update of the running statistics leaves ``block`` as it was."""
    block = copy.deepcopy(block)
    block.train(mode == "train")
    with torch.no_grad():
        return block(x)


def exact_rows(size: str) -> list[dict[str, Any]]:
    """One row per (net, block, weights, mode): the numbers the exact checks read (module docstring)."""
    batch, side = BLOCK_INPUTS[size]
    torch.manual_seed(BLOCK_SEED)  # the nets' He init
    generator = torch.Generator().manual_seed(BLOCK_SEED)  # the drawn BN values and the inputs
    rows = []
    tick()  # torch's threads: as many as the cores other processes leave free (cnnlab.threads)
    for net in NETS:
        for name, block in zoo_blocks(net):
            in_chs = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
            x = torch.randn(batch, in_chs, side, side, generator=generator)  # (B, C_in, S, S)
            identity = block.residual and block.shortcut is None  # the shortcut passes x unchanged
            drawn = copy.deepcopy(block)
            draw_norms(drawn, generator)
            zeroed = copy.deepcopy(drawn if block.is_preact else block)  # post: BN at init, see the docstring
            convs = zero_convs(zeroed)
            for weights, module in (("random", drawn), ("convs zeroed", zeroed)):
                for mode in MODES:
                    out = block_output(module, x, mode)
                    same_shape = out.shape == x.shape
                    rows.append({
                        "net": net,
                        "block": name,
                        "preact": block.is_preact,
                        "identity_shortcut": identity,
                        "weights": weights,
                        "bn": "initial" if weights == "convs zeroed" and not block.is_preact else "drawn",
                        "convs_zeroed": convs if weights == "convs zeroed" else 0,
                        "mode": mode,
                        "input_min": float(x.min()),
                        "negative_share": float((x < 0).double().mean()),
                        "output_min": float(out.min()),
                        "max_neg_x": float((-x).max()),  # max(-x): how far relu(x) lies from x
                        # max|out - x| and max|out - relu(x)|: only where the block keeps the shape
                        "dist_to_x": float((out - x).abs().max()) if same_shape else None,
                        "dist_to_relu_x": float((out - torch.relu(x)).abs().max()) if same_shape else None,
                        "equals_x": bool(same_shape and torch.equal(out, x)),
                    })
    return rows


def _rows(rows: list[dict], net: str, weights: str, identity_only: bool = False) -> list[dict]:
    return [r for r in rows if r["net"] == net and r["weights"] == weights
            and (r["identity_shortcut"] or not identity_only)]


def _nothing_measured(claim: str, net: str, weights: str) -> Check:
    """A check given no row of ``net`` with ``weights``: nothing was measured, so nothing is decided."""
    return Check(claim, INCONCLUSIVE, f"{net}, {weights}: no row, nothing measured")


NO_IDENTITY_BLOCK = "no identity-shortcut block"  # the blocks whose shortcut passes x unchanged: none measured


def non_negative_check(rows: list[dict]) -> Check:
    """The post block's output is >= 0 on inputs with negative values, so it is never the identity there.
    Decided on every block; the distance to x is confirmed at the identity-shortcut blocks, where there are any."""
    claim = ("the original (post-activation) block's output is non-negative, so it cannot be the identity on "
             "inputs with negative values")
    post = _rows(rows, POST, "random")
    if not post:
        return _nothing_measured(claim, POST, "random weights")
    identity = [r for r in post if r["identity_shortcut"]]
    lowest_out, lowest_in = min(r["output_min"] for r in post), min(r["input_min"] for r in post)
    # at a negative x_i the output (>= 0) is at least -x_i away from x_i
    closest = min((r["dist_to_x"] - r["max_neg_x"] for r in identity), default=None)
    holds = lowest_out >= 0 and lowest_in < 0 and (closest is None or closest >= 0)
    distance = (f"at the {len({r['block'] for r in identity})} identity-shortcut blocks max abs(out - x) - max(-x) "
                f"is at least {closest:.4g} (needed: >= 0)" if identity
                else f"{NO_IDENTITY_BLOCK}, so max abs(out - x) - max(-x) was not measured")
    return Check(claim, verdict_of(holds),
                 f"{POST}'s {len({r['block'] for r in post})} blocks, random weights and drawn BN, train and eval "
                 f"mode: lowest output {lowest_out:.6g} (needed: >= 0) on inputs as low as {lowest_in:.4g} "
                 f"({min(r['negative_share'] for r in post):.0%} or more negative); {distance}")


def zeroed_post_check(rows: list[dict]) -> Check:
    """With its convs zeroed (BN at init) the post block returns relu(x): max(-x) away from x."""
    claim = "with every conv zeroed the original block returns relu(x), not x"
    if not _rows(rows, POST, "convs zeroed"):
        return _nothing_measured(claim, POST, "convs zeroed")
    zeroed = _rows(rows, POST, "convs zeroed", identity_only=True)
    if not zeroed:  # the claim is about a shortcut that passes x unchanged
        return Check(claim, INCONCLUSIVE, f"{POST}, convs zeroed: {NO_IDENTITY_BLOCK} to compare with x")
    worst = max(r["dist_to_relu_x"] for r in zeroed)
    gap = max(abs(r["dist_to_x"] - r["max_neg_x"]) for r in zeroed)
    nearest = min(r["dist_to_x"] for r in zeroed)
    holds = worst == 0 and gap == 0 and nearest > 0
    return Check(claim, verdict_of(holds),
                 f"{POST}'s {len({r['block'] for r in zeroed})} identity-shortcut blocks, BN at init, train and eval "
                 f"mode: max abs(out - relu(x)) = {worst:.3g} (needed: 0); max abs(out - x) equals max(-x) to within "
                 f"{gap:.3g} (needed: 0) and is at least {nearest:.4g} (needed: > 0)")


def zeroed_preact_check(rows: list[dict]) -> Check:
    """With its convs zeroed the pre-activation block returns x bit for bit."""
    claim = "with every conv zeroed the pre-activation block returns x: the true identity"
    if not _rows(rows, PRE, "convs zeroed"):
        return _nothing_measured(claim, PRE, "convs zeroed")
    zeroed = _rows(rows, PRE, "convs zeroed", identity_only=True)
    if not zeroed:  # the claim is about a shortcut that passes x unchanged
        return Check(claim, INCONCLUSIVE, f"{PRE}, convs zeroed: {NO_IDENTITY_BLOCK} to compare with x")
    exact = [r for r in zeroed if r["equals_x"]]
    worst = max(r["dist_to_x"] for r in zeroed)
    return Check(claim, verdict_of(len(exact) == len(zeroed)),
                 f"{PRE}'s {len({r['block'] for r in zeroed})} identity-shortcut blocks, drawn BN, train and eval "
                 f"mode: output == x bit for bit in {len(exact)} of {len(zeroed)} cases, max abs(out - x) = "
                 f"{worst:.3g} (needed: 0)")


def identity_plot(path: Path, size: str) -> Path:
    """Output against input, number by number, of the first block of each net: the post block's points lie
    on or above 0 (on relu(x) with its convs zeroed), the pre-activation block's zeroed points on y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch, side = BLOCK_INPUTS[size]
    torch.manual_seed(BLOCK_SEED)
    generator = torch.Generator().manual_seed(BLOCK_SEED)
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.4), sharey=True)
    shown = 2000  # points per series: enough to see the shape
    for ax, net, title in ((axes[0], POST, "original block (resnet18): relu after the addition"),
                           (axes[1], PRE, "pre-activation block (preact_resnet18): relu inside the branch")):
        name, block = next((n, b) for n, b in zoo_blocks(net) if b.residual and b.shortcut is None)
        x = torch.randn(batch, block.out_chs, side, side, generator=generator)
        drawn = copy.deepcopy(block)
        draw_norms(drawn, generator)
        zeroed = copy.deepcopy(drawn if block.is_preact else block)
        zero_convs(zeroed)
        flat = x.flatten()[:shown]
        for label, module, marker in (("random weights", drawn, "."), ("convs zeroed", zeroed, "x")):
            out = block_output(module, x, "eval").flatten()[:shown]
            ax.scatter(flat, out, s=4, marker=marker, alpha=0.5, label=label)
        line = torch.linspace(float(flat.min()), float(flat.max()), 2)
        ax.plot(line, line, color="black", linewidth=0.8, linestyle="--", label="y = x (the identity)")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(f"{title}\n{name}, eval mode", fontsize=9)
        ax.set_xlabel("input x (one number)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("block output at the same place")
    fig.suptitle("The original block's output is never negative; the pre-activation block with zero convs is the "
                 "identity", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, "the identity plot")


# ---------------------------------------------------------------------------------------------
# the accuracy check


BUDGETS = {
    "tiny": Budget(train_per_class=10, epochs=1, batch_size=16),  # 100 digits in 6 steps of 16: mechanics only
    "quick": Budget(train_per_class=100, epochs=5),  # 1,000 images: 15 steps per epoch, 75 in all
    "full": Budget(train_per_class=300, epochs=6),  # 3,000 images: 46 steps per epoch, 276 in all
}
IMAGE_SIZE = 32  # pixels: the zoo's resnet18 and preact_resnet18 take at least 32x32 (`cnnlab models`)
DATA = {"tiny": "digits", "quick": "fashion-mnist", "full": "fashion-mnist"}
# "A small gain": the pre-activation net's mean test accuracy ahead by less than this (a fraction: 2 points).
SMALL_GAIN = 0.02


def preact_sections(net: str, budget: Budget) -> dict[str, dict[str, Any]]:
    """The run's config sections: degradation's recipe (He et al.'s CIFAR recipe), at 32x32."""
    return depth_sections(net, budget, image_size=IMAGE_SIZE)


def small_gain(pre: SeedStats, post: SeedStats, bound: float = SMALL_GAIN) -> Check:
    """"The pre-activation net is a little more accurate": HOLDS when its mean test accuracy is ahead by more
    than the larger spread and by less than ``bound``; DOES NOT HOLD when it is behind by more than the larger
    spread; INCONCLUSIVE otherwise (within the spread, or ahead by ``bound`` or more: not a small gain), and
    with fewer than MIN_SEEDS seeds on a side."""
    claim = (f"the pre-activation net's test accuracy is a little higher: ahead by more than the spread and by "
             f"less than {bound * 100:g} points")
    shown = f"{PRE} {pre.text(100, '%')} vs {POST} {post.text(100, '%')}"
    if min(pre.n, post.n) < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    ahead = pre.mean - post.mean
    spread = max(pre.std, post.std)
    margin = (f"{shown}: {PRE} ahead by {ahead * 100:+.2f} points; the larger spread {spread * 100:.2f}, the "
              f"small-gain bound {bound * 100:g}")
    if -ahead > spread:
        return Check(claim, FAILS, margin)
    if spread < ahead < bound:
        return Check(claim, HOLDS, margin)
    if ahead >= bound and ahead > spread:
        return Check(claim, INCONCLUSIVE, f"{margin}: ahead, but not by a small gain")
    return Check(claim, INCONCLUSIVE, f"{margin}: within the spread")


def accuracy_check(outcomes: list[RunOutcome]) -> Check:
    check = small_gain(seed_stats(outcomes, PRE, "test_acc"), seed_stats(outcomes, POST, "test_acc"))
    return unless_learned(check, outcomes, chance_level(outcomes), (PRE, POST))


def _accuracy_plots(out: Path, outcomes: list[RunOutcome]) -> list[Path]:
    curves: dict[str, dict] = {"val accuracy (mean over seeds)": {}, "training loss (mean over seeds)": {}}
    bands: dict[str, dict] = {panel: {} for panel in curves}
    for panel, key in zip(curves, ("val_acc", "train_loss")):
        for net in NETS:
            epochs, means, stds = mean_curve(outcomes, net, key)
            curves[panel][net], bands[panel][net] = (epochs, means), stds
    by_epoch = line_plot(out / "preact_by_epoch.png",
                         "Per epoch: resnet18 (ReLU after the addition) vs preact_resnet18 (ReLU inside the branch)",
                         curves, bands=bands, log_y=("training loss (mean over seeds)",))
    return [by_epoch, seed_plot(out / "preact_test_accuracy.png", outcomes)]


def seed_plot(path: Path, outcomes: list[RunOutcome]) -> Path:
    """Test accuracy of every run (dots), and each net's mean with its spread (bar): the numbers the accuracy
    check weighs, on an axis that shows a point's difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, net in enumerate(NETS):
        values = [100 * o.test_acc for o in outcomes if o.setting == net and o.test_acc is not None]
        stats = seed_stats(outcomes, net, "test_acc")
        ax.scatter([i] * len(values), values, s=18, alpha=0.7, label=f"{net}: each seed")
        if stats.n:
            ax.errorbar([i + 0.12], [100 * stats.mean], yerr=[100 * stats.std], fmt="o", color="black", capsize=4,
                        label="mean ± spread" if i == 0 else None)
    ax.set_xticks(range(len(NETS)))
    ax.set_xticklabels(NETS)
    ax.set_xlim(-0.6, len(NETS) - 0.4)
    ax.set_ylabel("test accuracy (%), best checkpoint by val")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Test accuracy: the pre-activation net is claimed a little better\n(note 002; \"small\": "
                 f"ahead by less than {SMALL_GAIN * 100:g} points)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, "the test accuracy plot")


def run_preact(ctx: RunContext) -> ExperimentResult:
    block_rows = exact_rows(ctx.size)
    checks = [non_negative_check(block_rows), zeroed_post_check(block_rows), zeroed_preact_check(block_rows)]
    plots = [identity_plot(ctx.out / "preact_identity.png", ctx.size)]

    budget = BUDGETS[ctx.size]
    configs = {net: experiment_config(ctx.data, preact_sections(net, budget)) for net in NETS}
    outcomes = train_settings(ctx, configs)  # scored on the test split: the claim is about accuracy
    extra = {POST: {"preact": False}, PRE: {"preact": True}}
    summary = summary_rows(outcomes, list(NETS), ["train_loss", "train_acc", "val_acc", "test_acc", "seconds"], extra)
    checks.append(accuracy_check(outcomes))
    plots += _accuracy_plots(ctx.out, outcomes)
    rows = summary + [o.row(**extra[o.setting]) for o in outcomes] + block_rows
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with a class too small for the tiny subset, no test split (the accuracy claim is judged on
    it), or too few training images at ``size`` for one batch (both nets share the data and the batch)."""
    return data_problem(dataset, per_class=BUDGETS["tiny"].train_per_class, test_split=True, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec, preact_sections(POST, BUDGETS[at]))])


PREACT = Experiment(
    name="preact",
    claim="The original residual block has its ReLU after the addition, so its output is non-negative and it "
          "cannot learn the identity; the pre-activation block puts the ReLU inside the branch and learns the true "
          "identity by setting its conv weights to zero. This gives a small gain in accuracy (little used in "
          "practice).",
    source=("002", "原来的残差块：ReLU 在残差块后，实际上无法学习恒等函数，因为输出是非负的 / 预激活(pre-activation)的"
                   "残差块：ReLU 在残差块内，可以通过将卷积权重设置为零来学习真实的恒等函数 / "
                   "这一调整在准确率上有了微小的进步，但在实践上用的不多"),
    rule="Exact checks on the zoo's blocks (every block of resnet18 and of preact_resnet18), one seeded N(0, 1) "
         "input per block, train and eval mode. 'Non-negative' HOLDS if every post-activation block's output, with "
         "random weights and randomly drawn BN values, has its minimum >= 0 while the input has negative values, "
         "and at every identity-shortcut block max abs(out - x) >= max(-x). 'Zeroed post block returns relu(x)' HOLDS "
         "if, with every conv zeroed and BN at its initial state (scale 1, shift 0), max abs(out - relu(x)) = 0 and "
         "max abs(out - x) = max(-x) > 0 at every identity-shortcut block. 'Zeroed pre-activation block is the "
         "identity' HOLDS if, with every conv zeroed and BN left drawn at random, the output equals x bit for bit "
         "at every identity-shortcut block. Each exact check HOLDS or DOES NOT HOLD; no tolerance (the float error "
         "is reported). Accuracy: resnet18 and preact_resnet18 trained with one recipe, 3+ seeds each, scored on "
         "the test split (the best checkpoint by validation accuracy). It HOLDS if preact_resnet18's mean test "
         "accuracy is ahead of resnet18's by more than the larger spread (sample std over seeds) and by less than "
         f"{SMALL_GAIN * 100:g} points (a small gain); DOES NOT HOLD if it is behind by more than the larger "
         f"spread; INCONCLUSIVE otherwise (within the spread, or ahead by {SMALL_GAIN * 100:g} points or more), and "
         f"with fewer than {MIN_SEEDS} seeds. {LEARNED_RULE} 'Little used in practice' is not tested.",
    runs="the blocks of resnet18 (post-activation) and preact_resnet18 (pre-activation) on a seeded batch, random "
         "and with zeroed convs; then both nets trained with degradation's recipe (He et al.'s: SGD momentum 0.9, "
         "weight decay 1e-4, lr 0.1 per 128 images at batch 64, cosine decay, no augmentation) at 32x32, scored "
         "on the test split",
    sizes={
        "tiny": SizeInfo("blocks on 4 images of 4x4; digits at 32x32, 10 images per class, 1 epoch (6 steps of "
                         "16), the 2 nets, 1 seed (mechanics only)", 15.0),
        "quick": SizeInfo("blocks on 16 images of 8x8; Fashion-MNIST at 32x32, 100 training images per class "
                          "(1,000), 5 epochs (75 steps), 600 val, 10,000 test; the 2 nets x 3 seeds", 160.0),
        "full": SizeInfo("blocks on 16 images of 8x8; Fashion-MNIST at 32x32, 300 training images per class "
                         "(3,000), 6 epochs (276 steps), 600 val, 10,000 test; the 2 nets x 3 seeds", 230.0),
    },
    run=run_preact,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [PREACT]
