"""The degradation experiment: plain-20 vs plain-56 and ResNet-20 vs ResNet-56 (He et al. 2016,
section 4.2, Fig. 1 and Fig. 6; notes 002, 001 and 004 on 退化, "degradation").

The claim is about TRAINING error: a deeper plain net fits its own training images worse than a
shallower one (so it is not overfitting but an optimisation problem), and residual shortcuts remove
this. The four nets are cnnlab's CIFAR nets of section 4.2 (``plain20``, ``plain56``, ``resnet20``,
``resnet56``: 3 stages of 16, 32 and 64 channels, BatchNorm after every conv, option-A shortcuts, so
plainN and resnetN have the same parameters and MACs).

Training error is ``1 - train_acc`` of the last epoch as the engine reports it: the mean over the
epoch's batches in training mode (BatchNorm with batch statistics), as He et al. plot it. Augmentation
and label smoothing are off, so the images the error is measured on are the training images
themselves.

The recipe is He et al.'s CIFAR-10 recipe, fixed before any run: SGD with momentum 0.9 (not Nesterov),
weight decay 1e-4, learning rate 0.1 per 128 images (here batch 64 with the linear scaling rule, so
0.05: twice the steps of batch 128 on the small budgets below), BatchNorm (the nets' own), no dropout.
The paper divides the rate by 10 at 32k and 48k iterations; a run of a few hundred steps has no room
for that, so the rate follows a cosine decay instead. Images are resized to 16x16 (Fashion-MNIST's
28x28 and CIFAR-10's 32x32 alike) so that the four nets at 3 seeds fit the size's time budget on
2 CPU cores: at 16x16 ResNet-56 costs 31 MMACs per image instead of 96 at 28x28
(``cnnlab summary resnet56 --input 1x16x16``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from cnnlab.experiments.base import (
    HOLDS,
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
)
from cnnlab.experiments.training import (
    data_problem,
    DIVERGED,
    LEARNED_RULE,
    RunOutcome,
    SeedStats,
    better,
    chance_level,
    experiment_config,
    line_plot,
    mean_curve,
    no_worse,
    summary_rows,
    train_settings,
    unless_learned,
)
from cnnlab.io import save_png

# setting -> (depth, shortcuts). The paper's Fig. 6 pairs: plain-20/56 (left) and ResNet-20/56 (middle).
NETS = {
    "plain20": (20, False),
    "plain56": (56, False),
    "resnet20": (20, True),
    "resnet56": (56, True),
}
SHALLOW, DEEP = 20, 56


@dataclass(frozen=True)
class Budget:
    """What one size trains: the same recipe at every size, only the data and the length change."""

    train_per_class: Optional[int]  # training images per class (None: the whole training split)
    epochs: int
    batch_size: int = 64  # images per step; the rate follows it by the linear scaling rule


BUDGETS = {
    # 100 digits in 6 steps of 16 (mechanics only; 16 so that 2-class data still fills a batch)
    "tiny": Budget(train_per_class=10, epochs=1, batch_size=16),
    "quick": Budget(train_per_class=None, epochs=3),  # digits' 1,259 training images: 19 steps per epoch, 57 in all
    "full": Budget(train_per_class=100, epochs=8),  # 1,000 images: 15 steps per epoch, 120 in all
}
IMAGE_SIZE = 16  # pixels: every data set is resized to 16x16 (see the module docstring)
VAL_FRACTION = 0.01  # Fashion-MNIST: 600 training images held out to pick the best checkpoint (digits has its own val)
# "No worse": ResNet-56's training error may be above ResNet-20's by this much, within the spread (and no more)
ERROR_TOLERANCE = 0.01  # 1 point of training error


def _cifar10_present() -> bool:
    """Whether a copy of CIFAR-10 lies in cnnlab's search path. Only looked for, never downloaded: the
    experiment list must not wait on the network."""
    try:
        from cnnlab.data.cifar import CIFAR10
        from cnnlab.data.sources import data_dirs

        for folder in data_dirs(CIFAR10.spec):
            for fmt in (CIFAR10.binary, CIFAR10.python):
                if (folder / fmt.archive).is_file() or (folder / fmt.folder).is_dir():
                    return True
    except OSError:
        return False
    return False


# The paper's data set when it is here; else Fashion-MNIST (28x28 grey garments, resized to 16x16 as CIFAR-10 would be).
FULL_DATA = "cifar10" if _cifar10_present() else "fashion-mnist"
DATA = {"tiny": "digits", "quick": "digits", "full": FULL_DATA}


def depth_sections(net: str, budget: Budget, image_size: int = IMAGE_SIZE) -> dict[str, dict[str, Any]]:
    """The run's config sections: He et al.'s CIFAR recipe (see the module docstring); ``image_size`` in pixels
    (the preact experiment takes the same recipe at 32x32)."""
    return {
        "model": {"name": net},
        "data": {"train_per_class": budget.train_per_class, "image_size": image_size, "val_fraction": VAL_FRACTION},
        "aug": {"preset": "none", "label_smoothing": 0.0},
        "optim": {"name": "sgd", "lr": 0.1, "lr_batch": 128, "momentum": 0.9, "nesterov": False,
                  "weight_decay": 1e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": budget.epochs, "batch_size": budget.batch_size},
    }


def training_error(outcome: RunOutcome) -> Optional[float]:
    """1 - the last epoch's training accuracy; None for a diverged run (it is counted, not averaged)."""
    if outcome.status == DIVERGED or outcome.train_acc is None or not math.isfinite(outcome.train_acc):
        return None
    return 1.0 - outcome.train_acc


def error_stats(outcomes: list[RunOutcome], setting: str) -> SeedStats:
    values = [training_error(o) for o in outcomes if o.setting == setting]
    return SeedStats(tuple(v for v in values if v is not None))


def degradation_checks(outcomes: list[RunOutcome], chance: float) -> list[Check]:
    """The two checks of the rule, on the runs' training errors; a pair of nets that learned nothing decides
    nothing (``chance``: 1 / the number of classes; :func:`cnnlab.experiments.training.unless_learned`)."""
    errors = {net: error_stats(outcomes, net) for net in NETS}
    plain, resnet = (f"plain{SHALLOW}", f"plain{DEEP}"), (f"resnet{DEEP}", f"resnet{SHALLOW}")
    return [
        # "plain-56 has higher training error": plain-20's error is lower by more than the spread. plain-56
        # learning nothing while plain-20 learns is the degradation itself: decided as usual.
        unless_learned(better(f"the deeper plain net trains worse: plain-{DEEP}'s training error is higher than "
                              f"plain-{SHALLOW}'s", plain[0], errors[plain[0]], plain[1], errors[plain[1]],
                              higher=False), outcomes, chance, plain),
        unless_learned(no_worse(f"shortcuts remove the degradation: ResNet-{DEEP}'s training error is not higher "
                                f"than ResNet-{SHALLOW}'s", resnet[0], errors[resnet[0]], resnet[1],
                                errors[resnet[1]], tolerance=ERROR_TOLERANCE, higher=False), outcomes, chance,
                       resnet),
    ]


def run_degradation(ctx: RunContext) -> ExperimentResult:
    budget = BUDGETS[ctx.size]
    configs = {net: experiment_config(ctx.data, depth_sections(net, budget)) for net in NETS}
    outcomes = train_settings(ctx, configs, evaluate=False)  # the claim is about training error
    extra = {net: {"depth": depth, "shortcuts": shortcuts} for net, (depth, shortcuts) in NETS.items()}
    rows = summary_rows(outcomes, list(NETS), ["train_loss", "train_acc", "val_acc", "seconds"], extra)
    for row in rows:
        stats = error_stats(outcomes, row["setting"])
        row["train_error_mean"] = stats.mean if stats.n else None
        row["train_error_std"] = stats.std if stats.n else None
    rows += [o.row(**extra[o.setting], train_error=training_error(o)) for o in outcomes]  # one row per run

    checks = degradation_checks(outcomes, chance_level(outcomes))
    plots = [degradation_plot(ctx.out / "degradation.png", outcomes),
             _loss_plot(ctx.out / "training_loss.png", outcomes)]
    return ExperimentResult(rows, checks, plots, runs=[Path(o.run_dir) for o in outcomes])


def _error_curve(outcomes: list[RunOutcome], net: str, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean error %, std) over the seeds from an accuracy column of metrics.csv."""
    epochs, means, stds = mean_curve(outcomes, net, key)
    return epochs, [100 * (1 - m) for m in means], [100 * s for s in stds]


def degradation_plot(path: Path, outcomes: list[RunOutcome]) -> Path:
    """He et al.'s Fig. 6 (left and middle): error per epoch, thin lines training, thick lines validation,
    plain nets on the left and ResNets on the right; the band is the training error's spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), sharey=True)
    colours = {SHALLOW: "tab:orange", DEEP: "tab:red"}
    for ax, shortcuts, title in ((axes[0], False, "plain networks"), (axes[1], True, "ResNets")):
        for net, (depth, has_shortcuts) in NETS.items():
            if has_shortcuts != shortcuts:
                continue
            label = f"{'ResNet' if shortcuts else 'plain'}-{depth}"
            epochs, train, spread = _error_curve(outcomes, net, "train_acc")
            if epochs:
                ax.plot(epochs, train, color=colours[depth], linewidth=1.0, label=f"{label} training")
                ax.fill_between(epochs, [m - s for m, s in zip(train, spread)], [m + s for m, s in zip(train, spread)],
                                color=colours[depth], alpha=0.15)
            epochs, val, _ = _error_curve(outcomes, net, "val_acc")
            if epochs:
                ax.plot(epochs, val, color=colours[depth], linewidth=2.6, label=f"{label} validation")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("error (%): thin = training, thick = validation")
    fig.suptitle(f"Deeper plain nets train worse (plain-{DEEP} above plain-{SHALLOW}); "
                 f"shortcuts remove it (He et al. 2016, Fig. 6)", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


def _loss_plot(path: Path, outcomes: list[RunOutcome]) -> Path:
    panels: dict[str, dict] = {"plain networks": {}, "ResNets": {}}
    bands: dict[str, dict] = {"plain networks": {}, "ResNets": {}}
    for net, (depth, shortcuts) in NETS.items():
        panel = "ResNets" if shortcuts else "plain networks"
        epochs, means, stds = mean_curve(outcomes, net, "train_loss")
        panels[panel][net] = (epochs, means)
        bands[panel][net] = stds
    return line_plot(path, f"Training loss per epoch: plain-{DEEP} fits its training images worse than plain-{SHALLOW}",
                     panels, y_labels={p: "training loss (mean over seeds)" for p in panels},
                     log_y=tuple(panels), bands=bands)


def check_data(dataset, size: str) -> Optional[str]:
    """Refuse data with fewer than 2 classes, a class too small for the tiny subset, or too few training
    images at ``size`` for one batch (the nets share the data and the batch, so one net's run stands for all)."""
    return data_problem(dataset, per_class=BUDGETS["tiny"].train_per_class, size=size,
                        runs_at=lambda at: [experiment_config(dataset.spec,
                                                              depth_sections(next(iter(NETS)), BUDGETS[at]))])


DEGRADATION = Experiment(
    name="degradation",
    claim="A deeper plain network has HIGHER TRAINING error than a shallower one (degradation: not overfitting but "
          "an optimisation problem), and residual connections remove this: ResNet-56 trains at least as well as "
          "ResNet-20 (He et al. 2016, Fig. 1 and 6).",
    source=("002", "无论是在测试还是在训练时，56 层的网络比 22 层表现更糟；"
                   "但这也意味着不是由过拟合导致的问题 ... (004: 模型层数增加到一定的数量时,有可能会退化; "
                   "001: 层数更多的解更难找 ... 导致性能下降（退化）)"),
    rule="Training error = 1 - the last epoch's training accuracy (training mode, no augmentation), per net and seed, "
         "3+ seeds; a diverged run is counted in the table and left out of the mean. 'The deeper plain net trains "
         "worse' HOLDS when plain-20's mean training error is lower than plain-56's by more than the larger spread "
         "(sample std over seeds), DOES NOT HOLD when it is higher by as much, INCONCLUSIVE in between. 'Shortcuts "
         "remove the degradation' HOLDS when ResNet-56's mean training error is lower than ResNet-20's or higher by "
         f"at most the larger spread and at most {ERROR_TOLERANCE * 100:g} point, DOES NOT HOLD when it is higher by "
         f"more than the spread, INCONCLUSIVE in between. Fewer than 3 finished seeds: "
         f"INCONCLUSIVE. {LEARNED_RULE} Validation accuracy is otherwise reported, not judged.",
    runs="plain20, plain56, resnet20, resnet56 (cnnlab's CIFAR nets, BatchNorm) at 16x16, He et al.'s recipe: SGD "
         "momentum 0.9, weight decay 1e-4, lr 0.1 per 128 images at batch 64 (0.05), cosine decay, no augmentation; "
         "CIFAR-10 at full when a copy is present, else Fashion-MNIST",
    sizes={
        "tiny": SizeInfo("digits at 16x16, 10 images per class, 1 epoch (6 steps of 16), the 4 nets, 1 seed "
                         "(mechanics only)", 25.0),
        "quick": SizeInfo("digits at 16x16, all 1,259 training images, 3 epochs (57 steps), the 4 nets x 3 seeds",
                          170.0),
        "full": SizeInfo(f"{'CIFAR-10' if FULL_DATA == 'cifar10' else 'Fashion-MNIST (no CIFAR-10 copy here)'} "
                         "resized to 16x16, 100 training images per class (1,000), 8 epochs (120 steps), the best "
                         "checkpoint picked on 1% of the training split held out (600 Fashion-MNIST images), 10,000 "
                         "test images; the 4 nets x 3 seeds. 28x28 or more images do not fit 8 minutes on 2 cores",
                         720.0),
    },
    run=run_degradation,
    notes=("002", "004", "001"),
    seeds=(1, 10, 3),
    data=DATA,
    check_data=check_data,
)

EXPERIMENTS = [DEGRADATION]
