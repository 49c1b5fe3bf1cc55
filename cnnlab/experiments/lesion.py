"""The lesion experiment (note 004, "ResNet是深浅模型的集成": a ResNet is an ensemble of deep and shallow
models; Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles of relatively shallow
networks").

Why an ensemble: a residual block computes y = act(x + f(x)), so unrolling n blocks gives 2^n paths from
input to output, one for each choice of "through f" or "along the shortcut" at every block, of every
length from 0 to n. A plain net has one path through all of its layers. If a ResNet behaves like an
ensemble of its paths, deleting one block at test time removes only the half of the paths that run
through it, and the others still predict; in a plain net the one path is cut. Veit et al. test this by
lesion: delete blocks from a trained net, retrain nothing, and score it.

Deleting a block means replacing it by what its shortcut carries. At a block whose input and output
have one shape that is the identity, in both nets: for the post-activation blocks of ``resnet20``,
act(x + 0) = relu(x) = x, as x comes out of a ReLU; for ``plain20``'s blocks, out = x. At the ResNet's
two downsampling blocks the shortcut is parameter-free (option A: stride-2 subsample, zero channels
added), so their branch can be removed too (reported, not judged: Veit et al. find those deletions
costly); a plain net's downsampling blocks carry nothing without their convs and are never deleted.
The nets are in eval mode throughout: BatchNorm keeps its running statistics, as it would at test time.

The measure is the share of the intact net's accuracy above chance that a lesioned net keeps:
(acc_lesioned - chance) / (acc_intact - chance), 1 for no loss and 0 for a net that guesses. Scores
are on the test split, of each run's best checkpoint (by validation accuracy), preprocessed as
``cnnlab eval`` does.

The nets and recipe are degradation's at 20 layers (cnnlab.experiments.depth): ``plain20`` and
``resnet20`` (3 stages of 16, 32, 64 channels, 3 blocks each, BatchNorm, the same parameters and
MACs), He et al.'s CIFAR recipe, images resized to 16x16.
"""

from __future__ import annotations

import itertools
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from cnnlab.experiments.activations import finite_stats
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
from cnnlab.experiments.depth import Budget, depth_sections
from cnnlab.experiments.training import (
    DIVERGED,
    LEARNED_RULE,
    MIN_SEEDS,
    RunOutcome,
    SeedStats,
    better,
    chance_level,
    data_problem,
    experiment_config,
    measure_runs,
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.io import save_png
from cnnlab.text import short_number
from cnnlab.threads import tick

DEPTH = 20
PLAIN, RESNET = f"plain{DEPTH}", f"resnet{DEPTH}"  # one table, with and without shortcuts: same parameters and MACs
NETS = (PLAIN, RESNET)
STAGES = 3
BLOCKS_PER_STAGE = (DEPTH - 2) // 6  # He et al.'s CIFAR nets: 6n + 2 layers, n blocks in each of 3 stages
# Every block keeps its input's shape except the first of each later stage (stride 2, channels doubled): 7 of 9.
SAME_SHAPE_BLOCKS = STAGES * BLOCKS_PER_STAGE - (STAGES - 1)

BUDGETS = {
    "tiny": Budget(train_per_class=10, epochs=1, batch_size=16),  # 100 digits in 6 steps of 16: mechanics only
    "quick": Budget(train_per_class=None, epochs=5),  # digits' 1,259 training images: 19 steps per epoch, 95 in all
    "full": Budget(train_per_class=500, epochs=6),  # 5,000 images: 78 steps per epoch, 468 in all
}
DATA = {"tiny": "digits", "quick": "digits", "full": "fashion-mnist"}

# Random subsets of k deleted blocks scored per k and net; every subset when there are no more than this.
# At full each subset is a pass over 10,000 test images (about 2 s for either net on 2 cores): 3 per k keeps the
# lesions of the 6 runs near 5 minutes; digits' 269 test images afford 6.
SUBSETS_PER_K = {"tiny": 2, "quick": 6, "full": 3}
SUBSET_SEED = 0  # python random seed of the subsets drawn (the same subsets for every run of a net)

# "Costs little": one deleted block leaves the ResNet at least this share of its accuracy above chance, on
# average over the blocks. Veit et al.'s "does not noticeably affect" (ResNet-110 on CIFAR-10 keeps about
# 0.98); a tenth lost is already a noticeable loss, so this bound is a generous reading.
LITTLE_LOSS_SHARE = 0.9
# "Gradual": no single step from k - 1 to k deleted blocks takes this share or more of the ResNet's whole fall
# from intact to every deletable block deleted (a cliff at one step, as a plain net's first deletion, takes
# most of it).
STEP_SHARE = 0.5
# Below this fall (accuracy points as a fraction) from intact to every deletable block deleted, there is
# nothing to call gradual or sudden: about two standard errors of a score near 90% on digits' 269 test images
# (2 x sqrt(0.9 x 0.1 / 269) = 3.7 points; 6.1 at 50%).
MIN_FALL = 0.04


# ---------------------------------------------------------------------------------------------
# deleting blocks


@dataclass(frozen=True)
class Block:
    """A residual block of a net, as a lesion sees it."""

    name: str  # its module name ("layers.0.1")
    same_shape: bool  # its output has its input's shape: deleted, it is the identity
    residual: bool  # it has a shortcut (a ResNet block); a plain block has none


def blocks_of(model: nn.Module, images: torch.Tensor) -> list[Block]:
    """The net's residual blocks in order, each with whether its input and output have one shape, found by
    one forward pass of ``images`` (B, C, H, W) in eval mode."""
    from cnnlab.layers.residual import _ResidualBlock

    found = [(name, module) for name, module in model.named_modules() if isinstance(module, _ResidualBlock)]
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [module.register_forward_hook(
        lambda module, inputs, output, name=name: shapes.__setitem__(name, (inputs[0].shape, output.shape)))
        for name, module in found]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [Block(name, shapes[name][0] == shapes[name][1], module.residual) for name, module in found]


def deletable(blocks: Sequence[Block]) -> list[str]:
    """The blocks both nets can lose: those whose input and output have one shape (the identity stands in)."""
    return [b.name for b in blocks if b.same_shape]


def downsampling(blocks: Sequence[Block]) -> list[str]:
    """A ResNet's blocks that change the shape: deleted, their (parameter-free or projection) shortcut stands in."""
    return [b.name for b in blocks if b.residual and not b.same_shape]


class BranchRemoved(nn.Module):
    """A block with its residual branch deleted: what its shortcut carries, through the activation after the
    addition for a post-activation block (act(shortcut(x) + 0)); the identity for a block without shortcut
    (a plain block of one shape: nothing but the convs to delete)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if not block.residual:
            return x
        carried = x if block.shortcut is None else block.shortcut(x)  # (B, C_out, H/s, W/s)
        return carried if block.is_preact else block.act(carried)


@contextmanager
def deleted(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """``model`` with the named blocks' branches removed (:class:`BranchRemoved`), put back on leaving."""
    swapped = []
    try:
        for name in names:
            parent_name, _, slot = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            block = parent._modules[slot]
            parent._modules[slot] = BranchRemoved(block)  # same slot: a Sequential keeps its order
            swapped.append((parent, slot, block))
        yield
    finally:
        for parent, slot, block in swapped:
            parent._modules[slot] = block


def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``batches`` of (images (B, C, H, W), labels (B,))."""
    right = seen = 0
    with torch.no_grad():
        for x, y in batches:
            tick()  # torch's CPU threads follow the cores other processes leave free
            right += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return right / seen


def subsets(names: Sequence[str], k: int, most: int, seed: int = SUBSET_SEED) -> list[tuple[str, ...]]:
    """Up to ``most`` distinct k-subsets of ``names`` (in the names' order): every one when there are no more
    than ``most``, else ``most`` drawn at random with ``seed`` (a fixed list: every run of a net gets the same)."""
    if not 0 <= k <= len(names):
        raise ValueError(f"cannot delete {k} of {len(names)} blocks")
    if math.comb(len(names), k) <= most:
        return list(itertools.combinations(names, k))
    drawn: list[tuple[str, ...]] = []
    rng = random.Random(f"{seed}-{k}")
    while len(drawn) < most:  # math.comb(...) > most distinct subsets exist: this ends
        pick = tuple(sorted(rng.sample(range(len(names)), k)))
        subset = tuple(names[i] for i in pick)
        if subset not in drawn:
            drawn.append(subset)
    return drawn


SHARE_EXPONENT_FROM = 100.0  # a share kept this far from 0..1 is shown with an exponent: two decimals would be wide


def retained(acc: float, intact: float, chance: float) -> Optional[float]:
    """The share of the intact net's accuracy above chance that a lesioned net keeps; None when the intact net
    is not above chance (there is nothing to keep)."""
    if not intact > chance:
        return None
    return (acc - chance) / (intact - chance)


@dataclass
class Lesions:
    """One run's lesion scores: the intact net, each block deleted alone, and k deleted blocks."""

    setting: str
    seed: int
    run_dir: str
    intact: float  # test accuracy of the intact net
    single: dict[str, float]  # deletable block -> test accuracy with it deleted
    down: dict[str, float]  # a ResNet's downsampling block -> test accuracy with its branch deleted
    by_k: dict[int, list[tuple[tuple[str, ...], float]]]  # k -> (subset, test accuracy) for each subset scored
    chance: float

    def share(self, acc: float) -> Optional[float]:
        return retained(acc, self.intact, self.chance)

    def single_share(self) -> Optional[float]:
        """The mean share kept over the deletable blocks, each deleted alone."""
        shares = [self.share(acc) for acc in self.single.values()]
        return None if not shares or None in shares else sum(shares) / len(shares)

    def curve(self) -> list[tuple[int, float]]:
        """(k, mean test accuracy over the subsets scored) for k = 0 (intact) to every deletable block."""
        return [(0, self.intact)] + [(k, sum(a for _, a in scored) / len(scored))
                                     for k, scored in sorted(self.by_k.items())]

    def largest_step_share(self) -> Optional[float]:
        """The largest fall of the mean accuracy between k - 1 and k deleted blocks, as a share of the whole fall
        from intact to every deletable block deleted; None when the whole fall is below :data:`MIN_FALL`."""
        points = [acc for _, acc in self.curve()]  # k = 0 (intact), 1, ...; only k = 0 without deletable blocks
        fall = points[0] - points[-1]
        if fall < MIN_FALL:
            return None
        return max(a - b for a, b in zip(points, points[1:])) / fall


def lesion_run(outcome: RunOutcome, most: int, chance: float) -> Optional[Lesions]:
    """The lesions of a run's best checkpoint on the test split (preprocessed as evaluation does); None for a
    diverged run or one without a best checkpoint."""
    from cnnlab.evaluate.evaluate import eval_loader
    from cnnlab.run import RunFolder
    from cnnlab.train.checkpoint import load_run_model

    best = RunFolder(Path(outcome.run_dir)).best
    if outcome.status == DIVERGED or not best.is_file():
        return None
    loaded = load_run_model(best)
    _, loader = eval_loader(loaded, split="test")
    batches = list(loader)  # read once, scored many times (10,000 images of 16x16: about 10 MB)
    model = loaded.model.eval()
    blocks = blocks_of(model, batches[0][0])
    names = deletable(blocks)
    single = {}
    for name in names:
        with deleted(model, [name]):
            single[name] = accuracy(model, batches)
    down = {}
    for name in downsampling(blocks):
        with deleted(model, [name]):
            down[name] = accuracy(model, batches)
    by_k: dict[int, list[tuple[tuple[str, ...], float]]] = {1: [((name,), acc) for name, acc in single.items()]}
    for k in range(2, len(names) + 1):
        by_k[k] = []
        for subset in subsets(names, k, most):
            with deleted(model, subset):
                by_k[k].append((subset, accuracy(model, batches)))
    return Lesions(outcome.setting, outcome.seed, outcome.run_dir, accuracy(model, batches), single, down,
                   by_k if names else {}, chance)


def lesion_shown(run: Lesions) -> str:
    """A run's lesions as its line shows them: "test 85.16%, one out keeps 0.80" (the intact net's test accuracy;
    "one out": the mean share kept over the blocks deleted one at a time, to two decimals). An intact net barely
    above chance makes the share huge (-1.2e+11): from :data:`SHARE_EXPONENT_FROM` on it is written with 2
    significant digits and a short exponent (:func:`cnnlab.text.short_number`, -1.2e11), so the line's width
    stays bounded. A line "lesions 20 of 20  resnet20/seed9  test 85.16%, one out keeps 0.86  59 min 59 s" is 78
    columns."""
    kept = run.single_share()
    if kept is None:
        return f"test {run.intact:.2%}"
    share = f"{kept:.2f}" if abs(kept) < SHARE_EXPONENT_FROM else short_number(kept, 2)
    return f"test {run.intact:.2%}, one out keeps {share}"


def lesion_rows(lesions: Sequence[Lesions]) -> list[dict[str, Any]]:
    """One table row per lesion scored: the run, what was deleted, how many blocks, accuracy and share kept."""
    rows = []
    for run in lesions:
        base = {"setting": f"lesion: {run.setting}", "seed": run.seed, "run_dir": run.run_dir}
        rows.append({**base, "deleted": "", "kind": "intact", "k": 0, "test_acc": run.intact, "share_kept": 1.0})
        for name, acc in run.down.items():
            rows.append({**base, "deleted": name, "kind": "downsampling", "k": 1, "test_acc": acc,
                         "share_kept": run.share(acc)})
        for k, scored in sorted(run.by_k.items()):
            for subset, acc in scored:
                rows.append({**base, "deleted": " ".join(subset), "kind": "same shape", "k": k, "test_acc": acc,
                             "share_kept": run.share(acc)})
    return rows


# ---------------------------------------------------------------------------------------------
# the checks


def _against(difference: float, bound: float) -> str:
    """"0.14 below the bound 0.9": where a mean lies against a bound."""
    return f"{abs(difference):.2f} {'above' if difference >= 0 else 'below'} the bound {bound:g}"


def at_least(claim: str, name: str, stats: SeedStats, bound: float, what: str) -> Check:
    """"``stats`` is at least ``bound``": HOLDS when the mean is at or above it by more than the spread (sample
    std over seeds), DOES NOT HOLD when below it by more than the spread, INCONCLUSIVE in between and with
    fewer than MIN_SEEDS seeds."""
    shown = f"{name} {stats.text()}"
    if stats.n < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    above = stats.mean - bound
    margin = f"{shown}: {what} {_against(above, bound)}, the spread {stats.std:.2f}"
    if above > stats.std or (above >= 0 and stats.std == 0):
        return Check(claim, HOLDS, margin)
    if -above > stats.std:
        return Check(claim, FAILS, margin)
    return Check(claim, INCONCLUSIVE, f"{margin}: within the spread")


def below(claim: str, name: str, stats: SeedStats, bound: float, what: str) -> Check:
    """"``stats`` is below ``bound``": HOLDS when the mean is under it by more than the spread, DOES NOT HOLD
    when at or above it by more than the spread, INCONCLUSIVE in between and with fewer than MIN_SEEDS seeds."""
    shown = f"{name} {stats.text()}"
    if stats.n < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    under = bound - stats.mean
    margin = f"{shown}: {what} {_against(-under, bound)}, the spread {stats.std:.2f}"
    if under > stats.std:
        return Check(claim, HOLDS, margin)
    if -under > stats.std or (under <= 0 and stats.std == 0):
        return Check(claim, FAILS, margin)
    return Check(claim, INCONCLUSIVE, f"{margin}: within the spread")


def lesion_checks(lesions: Sequence[Lesions], outcomes: list[RunOutcome], chance: float) -> list[Check]:
    """The three checks of the rule (:data:`LESION`'s rule), each INCONCLUSIVE when the nets learned nothing."""
    share = {net: finite_stats(run.single_share() for run in lesions if run.setting == net) for net in NETS}
    steps = finite_stats(run.largest_step_share() for run in lesions if run.setting == RESNET)
    no_fall = sum(1 for run in lesions if run.setting == RESNET and run.largest_step_share() is None)
    contrast = better(f"deleting one block costs {RESNET} less than {PLAIN}: it keeps a larger share of its "
                      "accuracy above chance", RESNET, share[RESNET], PLAIN, share[PLAIN], scale=1.0, unit="")
    little = at_least(f"deleting one block costs {RESNET} little: it keeps at least {LITTLE_LOSS_SHARE:g} of its "
                      "accuracy above chance, on average over the blocks", RESNET, share[RESNET], LITTLE_LOSS_SHARE,
                      "mean share kept")
    gradual = below(f"deleting more blocks lowers {RESNET}'s accuracy gradually: no one more deleted block takes "
                    f"{STEP_SHARE:g} or more of its whole fall", RESNET, steps, STEP_SHARE, "largest step's share")
    if no_fall and not steps.values:  # every run left out: "no finished run" would say they did not finish
        gradual = Check(gradual.claim, gradual.verdict,
                        f"{RESNET}: none of its {no_fall} run(s) fell {MIN_FALL * 100:g} points or more in all, so no "
                        f"step is measured: fewer than {MIN_SEEDS} seeds decide nothing")
    elif no_fall:
        gradual = Check(gradual.claim, gradual.verdict,
                        f"{gradual.margin}; {no_fall} run(s) fell less than {MIN_FALL * 100:g} points in all and are "
                        "left out")
    return [unless_learned(check, outcomes, chance, NETS if check is contrast else (RESNET,))
            for check in (contrast, little)] + [unless_learned(gradual, outcomes, chance, (RESNET,))]


# ---------------------------------------------------------------------------------------------
# plots


def _mean_by(runs: Sequence[Lesions], key) -> list[float]:
    return [sum(values) / len(values) for values in zip(*(key(run) for run in runs))]


def single_plot(path: Path, lesions: Sequence[Lesions]) -> Path:
    """Veit et al.'s Fig. 3: test accuracy with each deletable block deleted alone, per net (mean over seeds,
    dots for each seed), against the intact nets and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    colours = {PLAIN: "tab:red", RESNET: "tab:blue"}
    for net in NETS:
        runs = [run for run in lesions if run.setting == net]
        if not runs:
            continue
        names = list(runs[0].single)
        for run in runs:
            ax.scatter(range(len(names)), [100 * run.single[n] for n in names], s=10, alpha=0.5, color=colours[net])
        ax.plot(range(len(names)), _mean_by(runs, lambda r: [100 * r.single[n] for n in names]), marker="o",
                color=colours[net], label=f"{net}: one block deleted (mean over seeds)")
        intact = sum(run.intact for run in runs) / len(runs)
        ax.axhline(100 * intact, color=colours[net], linestyle="--", linewidth=0.9, label=f"{net} intact")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, fontsize=7)
    if lesions:
        ax.axhline(100 * lesions[0].chance, color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel("the block deleted (its input and output have one shape)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Deleting one block at test time (claimed: the ResNet keeps most of its accuracy, the plain net\n"
                 "does not; Veit et al. 2016, Fig. 3; note 004: a ResNet is an ensemble of deep and shallow nets)",
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, "the single-deletion plot")


def curve_plot(path: Path, lesions: Sequence[Lesions]) -> Path:
    """Veit et al.'s Fig. 5a: mean test accuracy against the number of blocks deleted, per net and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = {PLAIN: "tab:red", RESNET: "tab:blue"}
    for net in NETS:
        for i, run in enumerate(run for run in lesions if run.setting == net):
            ks, accs = zip(*run.curve())
            ax.plot(ks, [100 * a for a in accs], marker="o", color=colours[net], alpha=0.7,
                    label=net if i == 0 else None)
    if lesions:
        ax.axhline(100 * lesions[0].chance, color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel("blocks deleted (mean over the subsets scored; one line per seed)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Deleting more blocks (claimed: the ResNet's accuracy falls step by step)\n(Veit et al. 2016, "
                 "Fig. 5a)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, "the deletion curve plot")


# ---------------------------------------------------------------------------------------------
# the experiment


def run_lesion(ctx: RunContext) -> ExperimentResult:
    budget = BUDGETS[ctx.size]
    configs = {net: experiment_config(ctx.data, depth_sections(net, budget)) for net in NETS}
    outcomes = train_settings(ctx, configs)  # scored on the test split: the lesions are scored there too
    chance = chance_level(outcomes)
    # tens of passes over the test split per run: a line for each
    lesions = measure_runs(ctx, outcomes, "lesions", lambda o: lesion_run(o, SUBSETS_PER_K[ctx.size], chance),
                           lesion_shown)
    extra = {PLAIN: {"shortcuts": False}, RESNET: {"shortcuts": True}}
    summary = summary_rows(outcomes, list(NETS), ["train_loss", "train_acc", "val_acc", "test_acc", "seconds"], extra)
    for row in summary:
        mine = [run for run in lesions if run.setting == row["setting"]]
        kept = finite_stats(run.single_share() for run in mine)
        row["one_deleted_share_kept_mean"] = kept.mean if kept.n else None
        row["one_deleted_share_kept_std"] = kept.std if kept.n else None
    rows = summary + [o.row(**extra[o.setting]) for o in outcomes] + lesion_rows(lesions)
    plots = [single_plot(ctx.out / "lesion_one_block.png", lesions),
             curve_plot(ctx.out / "lesion_by_count.png", lesions)]
    return ExperimentResult(rows, lesion_checks(lesions, outcomes, chance), plots,
                            runs=[Path(o.run_dir) for o in outcomes])


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with a class too small for the tiny subset, no test split (the lesions are scored on it), or
    too few training images at ``size`` for one batch (both nets share the data and the batch)."""
    return data_problem(dataset, per_class=BUDGETS["tiny"].train_per_class, test_split=True, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec, depth_sections(PLAIN, BUDGETS[at]))])


LESION = Experiment(
    name="lesion",
    claim="A ResNet is an ensemble of deep and shallow networks: its shortcuts make 2^n paths of every length, "
          "so deleting one residual block at test time costs it little, while deleting a block of a plain net "
          "of the same depth breaks it, and deleting more blocks lowers a ResNet's accuracy gradually (Veit et "
          "al. 2016).",
    source=("004", "ResNet是深浅模型的集成。"),
    rule=f"{PLAIN} and {RESNET} trained with one recipe, 3+ seeds each; each run's best checkpoint (by validation "
         "accuracy) scored on the test split intact and with blocks deleted, retraining nothing (eval mode). A "
         "deleted block is replaced by what its shortcut carries: the identity at every block whose input and "
         f"output have one shape (the same {SAME_SHAPE_BLOCKS} places in both nets). Share kept = (lesioned "
         "accuracy - chance) / (intact accuracy - chance), chance = 1 / classes; per run the mean over the blocks "
         f"deleted one at a time. (a) 'Costs the ResNet less' HOLDS when {RESNET}'s mean share kept is above "
         f"{PLAIN}'s by more than the larger spread (sample std over seeds), DOES NOT HOLD when below by as much, "
         f"INCONCLUSIVE in between. (b) 'Costs the ResNet little' HOLDS when {RESNET}'s mean share kept is at "
         f"least {LITTLE_LOSS_SHARE:g} by more than its spread, DOES NOT HOLD when below {LITTLE_LOSS_SHARE:g} by "
         f"more than its spread, INCONCLUSIVE in between. (c) 'Gradually': per {RESNET} run, the mean accuracy over "
         "up to a fixed number of seeded random subsets of k deleted blocks (every subset where there are no "
         f"more), k = 0 (intact) to all {SAME_SHAPE_BLOCKS}; the largest fall from k - 1 to k as a share of the "
         f"whole fall from 0 to {SAME_SHAPE_BLOCKS}; it HOLDS when the mean of that share over seeds is below "
         f"{STEP_SHARE:g} by more than its spread, DOES NOT HOLD when at or above it by more than its spread, "
         f"INCONCLUSIVE in between; a run whose whole fall is under {MIN_FALL * 100:g} points is left out (nothing "
         f"falls). Fewer than {MIN_SEEDS} seeds: INCONCLUSIVE. {LEARNED_RULE} The downsampling blocks' lesions "
         f"({RESNET} only) are reported, not judged.",
    runs=f"{PLAIN} and {RESNET} (cnnlab's CIFAR nets, BatchNorm) at 16x16 with degradation's recipe (He et al.'s: "
         "SGD momentum 0.9, weight decay 1e-4, lr 0.1 per 128 images at batch 64, cosine decay, no augmentation); "
         f"then each run's best checkpoint scored on the test split with each of its {SAME_SHAPE_BLOCKS} same-shape "
         f"blocks deleted alone, with k of them deleted for every k, and ({RESNET}) each downsampling block's "
         "branch deleted",
    sizes={  # times: each size run alone on 2 cores, torch's default threads (docs/experiments.md)
        "tiny": SizeInfo("digits at 16x16, 10 images per class, 1 epoch (6 steps of 16), the 2 nets, 1 seed; up "
                         f"to {SUBSETS_PER_K['tiny']} subsets per k (mechanics only)", 17.0),
        "quick": SizeInfo("digits at 16x16, all 1,259 training images, 5 epochs (95 steps), 269 test images; the "
                          f"2 nets x 3 seeds; up to {SUBSETS_PER_K['quick']} subsets per k", 49.0),
        "full": SizeInfo("Fashion-MNIST at 16x16, 500 training images per class (5,000; 600 of the training split "
                         "held out as val), 6 epochs (468 steps), 10,000 test images; the 2 nets x 3 seeds; up to "
                         f"{SUBSETS_PER_K['full']} subsets per k", 275.0),
    },
    run=run_lesion,
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [LESION]
