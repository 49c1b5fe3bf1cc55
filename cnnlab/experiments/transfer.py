"""The transfer experiment: the notes' data-size x similarity table, measured with cnnlab's transfer ladder.

The notes (002, "Transfer Learning") summarise when to reuse a trained network:

=================  ==========================================  ===============================================
                   very similar data                           very different data
=================  ==========================================  ===============================================
very little data   a linear classifier on the top layer        use another model or collect more data
quite a lot        fine-tune all layers                        fine-tune all layers, or train from scratch
=================  ==========================================  ===============================================

The experiment trains one source network, then runs :func:`cnnlab.transfer.ladder.run_transfer` (the
rungs scratch, probe, top and all at several images-per-class sizes and seeds, winners by mean test
accuracy, a rung within one std of the best tying with it) on a similar and on a different target.
Each ladder verdict at its smallest ("very little") and largest ("quite a lot") size is one check.

Data split. The experiment's data (``--data``) is the source data: its first half of the classes
(the first K // 2, in the data's class order) trains the source; the rest is the similar target, the
same kind of images in classes the source never saw. The different target is scikit-learn's digits
(pen strokes instead of the source's images), read at the source's image size and channels; when the
source data is digits itself, it is cnnlab's synthetic stripe images instead.

Runs. The source is one run (seed 0) in OUT/runs/source; every ladder seed starts from it (a seed
draws the target's training subset, its validation hold-out and the rung's initialisation). The
ladders' runs are OUT/similar/SIZE/seedK/RUNG and OUT/different/SIZE/seedK/RUNG, each ladder with its
transfer.json and transfer.png. OUT/report.html compares the source and the similar ladder's runs
(one data set); the different ladder's runs, on other data, have their own page, OUT/report-DATA.html.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cnnlab.config import DataConfig, quiet_notes
from cnnlab.errors import CnnlabError, counted
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
    DIVERGED,
    MIN_SEEDS,
    READ,
    ROUNDING,
    RUNS_FOLDER,
    RunOutcome,
    experiment_config,
    train_or_read,
)
from cnnlab.text import LINE_COLUMNS, duration_text, note_lines

MODEL = "lenet5"  # the source's architecture: the notes' LeNet-5 (two conv stages, three fully connected layers)
MIN_CLASSES = 4  # the source and the similar target need two classes each
DIFFERENT_DATA = "digits"  # the different target: pen strokes instead of photographed objects
DIFFERENT_CLASSES = 5  # classes of the synthetic stand-in used when the source data is digits itself
SOURCE_RUN = "source"  # OUT/runs/source
SIMILAR, DIFFERENT = "similar", "different"  # OUT/similar and OUT/different: the ladders' folders
PLOT_FILE = "transfer.png"

# The source's recipe: recipes/lenet5-digits.yaml, LeNet-5's known-good settings in cnnlab (the epochs and
# the training subset come from the size). aug 'light' shifts, and mirrors where that keeps the label.
SOURCE_SECTIONS: dict[str, dict[str, Any]] = {
    "model": {"name": MODEL},
    "aug": {"preset": "light"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "train": {"batch_size": 32},
    "log": {"quiet": True},
}
SOURCE_VAL_FRACTION = 0.02  # recipes/fashion-mnist-source.yaml: 2% of the training images held out
# Every training rung starts from recipes/transfer-finetune.yaml (the ladder sets the rest per rung).
FINETUNE_SECTIONS: dict[str, dict[str, Any]] = {
    "aug": {"preset": "light"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 1, "batch_size": 128, "bn_eval": "frozen"},
}
TARGET_VAL_FRACTION = 0.01  # recipes/transfer-finetune.yaml
# The different/little cell: scratch tied with a better rung "ties for the best" only when behind it by at most this;
# tied further behind, within a wider spread, it is noise that says nothing either way
SCRATCH_TIE_TOLERANCE = 0.01  # 1 point of test accuracy


@dataclass(frozen=True)
class TransferSize:
    """What one size of the experiment runs."""

    source_per_class: Optional[int]  # training images per class of the source run; None: all of them
    source_epochs: int
    # Images per class of the similar target: the smallest is "very little", the largest "quite a lot"; with one
    # size (tiny) the notes' table cannot be read, and the experiment only checks its mechanics.
    similar: tuple[int, ...]
    different: tuple[int, ...]  # the same for the different target (digits has about 125 training images per class)
    steps: int  # optimiser steps of every training rung at every size (the ladder's equal budget)


SETTINGS = {
    "tiny": TransferSize(source_per_class=20, source_epochs=1, similar=(3,), different=(3,), steps=1),
    "quick": TransferSize(source_per_class=1000, source_epochs=3, similar=(10, 200), different=(10, 100), steps=20),
    "full": TransferSize(source_per_class=None, source_epochs=3, similar=(10, 1000), different=(10, 100), steps=100),
}


# ---------------------------------------------------------------------------------------------
# the data: source classes, the similar target, the different target


def split_classes(count: int) -> tuple[list[int], list[int]]:
    """(source classes, similar-target classes) of data with ``count`` classes: the first half, the rest."""
    half = count // 2
    return list(range(half)), list(range(half, count))


def different_spec(source_spec: str, sizes: tuple[int, ...]) -> str:
    """The different target's data spec: digits, or synthetic stripes when the source data is digits."""
    if source_spec.split(":")[0] != DIFFERENT_DATA:
        return DIFFERENT_DATA
    # Enough training images for the largest size; gray like digits (the source's channels are used anyway).
    return f"synthetic:classes={DIFFERENT_CLASSES},train={DIFFERENT_CLASSES * max(sizes)},val=50,test=100,channels=1"


def source_config(spec: str, size: str, num_classes: int):
    """The RunConfig of the source run at ``size`` on the data ``spec`` (``num_classes`` classes): its first half
    of the classes."""
    plan = SETTINGS[size]
    source_classes, _ = split_classes(num_classes)
    sections = {key: dict(value) for key, value in SOURCE_SECTIONS.items()}
    sections["data"] = {"classes": source_classes, "train_per_class": plan.source_per_class,
                        "val_fraction": SOURCE_VAL_FRACTION}
    sections["train"]["epochs"] = plan.source_epochs
    sections["schedule"]["warmup_epochs"] = 1 if plan.source_epochs > 1 else 0  # the recipe's one warmup epoch
    return experiment_config(spec, sections)


def target_probes(spec: str, size: str, num_classes: int) -> list:
    """Stand-ins for the two targets' largest rungs at ``size`` on the source data ``spec``, for counting only
    (training.data_problem): each asks for a class-balanced subset of the largest rung's images per class of
    the target's data, split as the ladder splits it. Batch 1: a rung's images per class are what must fit."""
    plan = SETTINGS[size]
    _, target_classes = split_classes(num_classes)
    targets = ((spec, target_classes, max(plan.similar)), (different_spec(spec, plan.different), None, max(plan.different)))
    return [experiment_config(target, {"model": {"name": MODEL}, "train": {"batch_size": 1},
                                       "data": {"classes": classes, "train_per_class": largest,
                                                "val_fraction": TARGET_VAL_FRACTION}})
            for target, classes, largest in targets]


def check_transfer_data(dataset, size: Optional[str] = None) -> Optional[str]:
    """Why ``dataset`` cannot be the source data, or None: it needs a test split, and at a ``size`` the source
    run's class-balanced subset and batch, and the targets' largest rungs, must fit its classes (another size
    is advised only where all of them fit). _check_counts guards the targets again for library callers."""
    from cnnlab.experiments.training import data_problem
    from cnnlab.models import model_info

    if dataset.num_classes < MIN_CLASSES:
        return (f"it has {dataset.num_classes} classes, and the experiment splits the classes into a source half and "
                f"a similar-target half of at least 2 classes each, so it needs {MIN_CLASSES} or more")
    smallest = model_info(MODEL).min_size
    if dataset.image_size < smallest:
        return f"its images are {dataset.image_size}x{dataset.image_size} pixels, and {MODEL} needs at least {smallest}"
    # The rungs are scored on the test split: on data without one, the ladder would score them on the
    # validation images their best checkpoints were chosen on.
    if size is None:
        return data_problem(dataset, test_split=True)
    return data_problem(dataset, test_split=True, size=size,
                        runs_at=lambda at: [source_config(dataset.spec, at, dataset.num_classes),
                                            *target_probes(dataset.spec, at, dataset.num_classes)])


def _check_counts(data: DataConfig, largest: int, what: str) -> None:
    """Refuse, before anything trains, a target whose classes have fewer training images than ``largest``."""
    from cnnlab.data import load_source

    dataset = load_source(data)
    counts = dataset.train.labels.bincount(minlength=dataset.num_classes).tolist()
    if min(counts) < largest:
        short = min(range(len(counts)), key=counts.__getitem__)
        raise CnnlabError(f"The {what} target ({data.spec}) needs {largest} training images per class at this size, "
                          f"and its class '{dataset.classes[short]}' has {counts[short]}. Run a smaller --size, or "
                          "give --data with more images per class.")


# ---------------------------------------------------------------------------------------------
# checks from the ladder's verdicts


def _rung_text(table, size: int) -> str:
    """'scratch 81.2% ± 2.1, probe ...' for one size of a ladder's summary table."""
    parts = []
    for row in (r for r in table if r.size == size):
        if row.test_mean is None:
            shown = "diverged"
        else:
            shown = f"{100 * row.test_mean:.1f}% ± {100 * (row.test_std or 0):.1f}"
        failed = f" ({row.failed} diverged)" if row.failed and row.test_mean is not None else ""
        parts.append(f"{row.rung} {shown}{failed}")
    return ", ".join(parts)


def verdict_check(target: str, spec: str, verdict, table, seeds: int) -> Check:
    """One cell of the notes' table, decided from the ladder's :class:`SizeVerdict` at that size.

    A cell with recommended rungs HOLDS when every rung tied for the best is one of them, DOES NOT
    HOLD when none is, and is INCONCLUSIVE when the tie mixes both. The (different, very little) cell
    recommends no rung ("use another model or collect more data"): it HOLDS when scratch ties for the
    best (reusing the source gives no clear gain) and DOES NOT HOLD when a rung that reuses the source
    wins clearly. Fewer than MIN_SEEDS seeds decide nothing, nor does a rung with fewer than MIN_SEEDS
    finished seeds (the others diverged).
    """
    from cnnlab.transfer.ladder import SCRATCH

    amount = "very little" if verdict.row == "small" else "quite a lot of"
    claim = f"{amount} {target} data ({verdict.size} per class, {spec}): '{verdict.lecture}'"
    shown = (f"{_rung_text(table, verdict.size)} over {counted(seeds, 'seed')}; winner {verdict.winner}"
             f" (tied for the best: {', '.join(verdict.tied) or 'none'})")
    if verdict.expected is None:
        expected = "scratch ties for the best (no clear gain from the source)"
    else:
        expected = f"the best is {' or '.join(verdict.expected)}"
    margin = f"{shown}; the notes' cell expects {expected}"
    if seeds < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{margin}: fewer than {MIN_SEEDS} seeds decide nothing")
    if not verdict.tied:
        return Check(claim, INCONCLUSIVE, f"{margin}: every run diverged")
    # A rung whose other seeds diverged has a mean of fewer seeds (and a spread of 0 with one): it decides
    # nothing, as a setting with fewer than MIN_SEEDS finished seeds decides nothing in the other experiments.
    short = [row.rung for row in table if row.size == verdict.size and 0 < row.runs < MIN_SEEDS]
    if short:
        return Check(claim, INCONCLUSIVE, f"{margin}: {', '.join(short)} finished fewer than {MIN_SEEDS} seeds "
                                          "(the others diverged), which decides nothing")
    if verdict.expected is None:
        if SCRATCH not in verdict.tied:
            return Check(claim, FAILS, margin)
        at_size = {row.rung: row.test_mean for row in table if row.size == verdict.size and row.test_mean is not None}
        behind = max(at_size.values()) - at_size[SCRATCH]
        if behind > SCRATCH_TIE_TOLERANCE + ROUNDING:
            return Check(claim, INCONCLUSIVE, f"{margin}: scratch ties only within the spread, {behind * 100:.1f} "
                                              f"points behind the best, more than {SCRATCH_TIE_TOLERANCE * 100:g}")
        return Check(claim, HOLDS, margin)
    recommended = [rung for rung in verdict.tied if rung in verdict.expected]
    if len(recommended) == len(verdict.tied):
        return Check(claim, HOLDS, margin)
    return Check(claim, FAILS if not recommended else INCONCLUSIVE, margin)


# ---------------------------------------------------------------------------------------------
# the run


class _Say:
    """The ladder's console: each line it prints goes to the experiment's ``say`` (the ladder puts the experiment's
    run count and the target's name in it: :func:`_ladder`)."""

    def __init__(self, say) -> None:
        self.say = say

    def print(self, text: str, **_options) -> None:
        self.say(text.rstrip())


def names_width(ladders: dict[str, tuple[int, ...]], seeds: int, rungs: tuple[str, ...]) -> int:
    """The width of the run lines' names: the source's, and each ladder's widest run name at ``seeds`` seeds
    (``ladders``: its folder -> its sizes; :func:`cnnlab.transfer.ladder.rung_name`, LADDER/SIZE/seedK/RUNG), so
    that the lines of the source and of every ladder align."""
    from cnnlab.transfer.ladder import rung_name

    return max(len(SOURCE_RUN), *(len(rung_name(folder, max(sizes), seeds - 1, rung))
                                  for folder, sizes in ladders.items() for rung in rungs))


def _ladder(ctx: RunContext, source_dir: Path, target: str, data: DataConfig, sizes: tuple[int, ...], steps: int,
            width: int):
    """Run (or continue) one ladder into OUT/TARGET, its run names padded to ``width``; its data notes are shown
    once on stderr."""
    from cnnlab.transfer.ladder import run_transfer

    base = experiment_config(data.spec, FINETUNE_SECTIONS)
    with quiet_notes():
        return run_transfer(str(source_dir), data, base, per_class=list(sizes), seeds=ctx.seeds,
                            out=ctx.out / target, similarity=target, steps=steps, console=_Say(ctx.say),
                            count=ctx.runs, label=target, width=width)


def _plot(path: Path, ladders: dict[str, Any], specs: dict[str, str], seeds: int) -> Path:
    """Test accuracy against images per class, one panel per target, one line per rung (± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from cnnlab.io import save_png
    from cnnlab.transfer.ladder import RUNG_TEXT, RUNGS

    figure, axes = plt.subplots(1, len(ladders), figsize=(6.2 * len(ladders), 4.6), squeeze=False)
    for axis, (target, result) in zip(axes[0], ladders.items()):
        for rung in RUNGS:
            rows = [row for row in result.table if row.rung == rung and row.test_mean is not None]
            if rows:
                axis.errorbar([row.size for row in rows], [100 * row.test_mean for row in rows],
                              yerr=[100 * (row.test_std or 0.0) for row in rows], marker="o", capsize=3,
                              label=f"{rung}: {RUNG_TEXT[rung]}")
        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xticks(result.sizes, [str(size) for size in result.sizes])
        axis.set_xlabel("training images per class")
        axis.set_ylabel(f"{result.metric_split} accuracy (%), mean ± std over {counted(seeds, 'seed')}")
        # one cell a line: on one line the different target's two cells ran past the panel ("... or train from s")
        cells = "\n".join(f"{v.size} per class: {v.lecture}" for v in result.verdicts if v.lecture)
        axis.set_title(f"{target} data: {specs[target]}\nthe notes:\n{cells or 'one size only, no cell of the table'}",
                       fontsize=8, parse_math=False)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Transfer (note 002): little similar data -> linear classifier on the top layer, a lot -> "
                    "fine-tune all layers;\nlittle different data -> another model or more data, a lot -> fine-tune "
                    "all layers or train from scratch", fontsize=10)
    figure.tight_layout()
    return save_png(figure, path, "the transfer plot")


def train_source(ctx: RunContext, num_classes: int, width: int, purpose: str) -> tuple[Path, RunOutcome]:
    """Train (or read back) the source network, one run (seed 0) in OUT/runs/source that every ladder starts from,
    saying first what it is (:func:`source_text`, wrapped at 80 columns: the data spec can be a long path) and then
    its line (:func:`source_line`, its name padded to ``width``). A diverged source is refused: there is nothing to
    ``purpose`` ("transfer", "fine-tune")."""
    source_dir = ctx.out / RUNS_FOLDER / SOURCE_RUN
    ctx.say("\n".join(note_lines(SOURCE_RUN, source_text(ctx.data, num_classes), LINE_COLUMNS)))
    started = time.perf_counter()
    source = train_or_read(source_config(ctx.data, ctx.size, num_classes), source_dir, SOURCE_RUN)
    if source.status == DIVERGED:
        raise CnnlabError(f"The source network's training diverged (non-finite loss) in '{source_dir}', so there is "
                          f"nothing to {purpose}. Delete that folder to train it again.")
    ctx.say(source_line(ctx.runs.finished(), source, time.perf_counter() - started, width))
    return source_dir, source


def source_text(data: str, num_classes: int) -> str:
    """What the source network is, said before it trains: "lenet5 on digits classes 0-4"."""
    source_classes, _ = split_classes(num_classes)
    return f"{MODEL} on {data} classes {source_classes[0]}-{source_classes[-1]}"


def source_line(place: str, source: RunOutcome, seconds: float, width: int) -> str:
    """The source's run line, as its ladders' lines read (:func:`cnnlab.transfer.ladder.rung_line`): ``place``,
    its name padded to ``width``, its test accuracy (the table has its val accuracy too) and the ``seconds`` it
    took here; "read back" in the time's place for a source an earlier call trained."""
    ending = "read back" if source.status == READ else duration_text(seconds)
    return f"{place}  {SOURCE_RUN:<{width}}  test {source.test_acc:.2%}  {ending}"


def run_transfer_experiment(ctx: RunContext) -> ExperimentResult:
    from cnnlab.data import load_source
    from cnnlab.transfer.ladder import RUNGS, TRAINING_RUNGS

    plan = SETTINGS[ctx.size]
    source_data = load_source(DataConfig(spec=ctx.data))
    problem = check_transfer_data(source_data)
    if problem:  # the size's default data, or --data checked already: this only guards a library caller
        raise CnnlabError(f"The transfer experiment cannot use {ctx.data}: {problem}.")
    source_classes, target_classes = split_classes(source_data.num_classes)
    names = source_data.classes
    similar_data = DataConfig(spec=ctx.data, classes=target_classes, val_fraction=TARGET_VAL_FRACTION)
    different_data = DataConfig(spec=different_spec(ctx.data, plan.different), val_fraction=TARGET_VAL_FRACTION)
    _check_counts(similar_data, max(plan.similar), SIMILAR)
    _check_counts(different_data, max(plan.different), DIFFERENT)
    specs = {SIMILAR: f"{ctx.data} classes {target_classes[0]}-{target_classes[-1]} "
                      f"({', '.join(names[k] for k in target_classes)})",
             DIFFERENT: different_data.spec if different_data.spec == DIFFERENT_DATA
             else f"synthetic stripes ({DIFFERENT_CLASSES} classes)"}

    # The runs' lines count the source and every training rung of both ladders (the probes train no network).
    ctx.runs.plan(1 + ctx.seeds * len(TRAINING_RUNGS) * (len(plan.similar) + len(plan.different)))
    # The source: one run (seed 0) that every ladder seed starts from.
    width = names_width({SIMILAR: plan.similar, DIFFERENT: plan.different}, ctx.seeds, RUNGS)
    source_dir, source = train_source(ctx, source_data.num_classes, width, "transfer")

    ladders = {SIMILAR: _ladder(ctx, source_dir, SIMILAR, similar_data, plan.similar, plan.steps, width),
               DIFFERENT: _ladder(ctx, source_dir, DIFFERENT, different_data, plan.different, plan.steps, width)}

    rows: list[dict[str, Any]] = [{
        "target": SOURCE_RUN, "data": f"{ctx.data} classes {source_classes[0]}-{source_classes[-1]}", "size": None,
        "rung": SOURCE_RUN, "test_mean": source.test_acc, "test_std": None, "val_mean": source.val_acc,
        "seconds_mean": source.seconds, "runs": 1, "failed": 0}]
    checks: list[Check] = []
    for target, result in ladders.items():
        by_size = {v.size: v for v in result.verdicts}
        for row in result.table:
            verdict = by_size[row.size]
            rows.append({"target": target, "data": specs[target], "size": row.size, "rung": row.rung,
                         "test_mean": row.test_mean, "test_std": row.test_std, "val_mean": row.val_mean,
                         "seconds_mean": row.seconds_mean, "runs": row.runs, "failed": row.failed,
                         "steps": result.budgets[row.size].steps, "winner": verdict.winner,
                         "tied": ", ".join(verdict.tied), "lecture": verdict.lecture,
                         "ladder_verdict": verdict.verdict})
        if len(result.sizes) < 2:
            checks.append(Check(f"{target} data ({specs[target]}): the notes' table", INCONCLUSIVE,
                                f"one size ({result.sizes[0]} per class) only: the table compares very little data "
                                "with quite a lot, so this size checks the mechanics and decides nothing"))
        checks += [verdict_check(target, specs[target], v, result.table, ctx.seeds)
                   for v in result.verdicts if v.row is not None]
    # run_experiment writes one comparison page per data set: the source and the similar ladder share the
    # source's data (OUT/report.html); the different ladder's runs get OUT/report-DATA.html.
    runs = [source_dir] + _training_runs(ladders[SIMILAR]) + _training_runs(ladders[DIFFERENT])
    plot = _plot(ctx.out / PLOT_FILE, ladders, specs, ctx.seeds)
    return ExperimentResult(rows, checks, [plot], runs)


def _training_runs(result) -> list[Path]:
    """The run folders of a ladder's training rungs (the probe trains no network)."""
    return [Path(run.run_dir) for run in result.runs if run.run_dir]


TRANSFER = Experiment(
    name="transfer",
    claim="With very little data similar to the source's, a linear classifier on the top layer is best; with quite "
          "a lot, fine-tune all layers. With very little, very different data, reuse does not help (use another "
          "model or collect more data); with quite a lot, fine-tune all layers or train from scratch.",
    source=("002", "非常少的数据: 在最终层使用线性分类器 | 使用别的模型或收集更多的数据; "
                   "相当多的数据: 微调所有模型层 | 要么微调所有模型层，要么从头训练"),
    rule="Each cell of the notes' table is one check, read from cnnlab transfer's ladder (scratch, probe = a "
         "logistic regression on the source's pooled features, top = the top stage and a new head, all = every "
         "layer at a tenth of the rate) at the target's smallest ('very little') and largest ('quite a lot') size: "
         "the best rung by mean test accuracy over the seeds, every rung within one std of it tied with it. A cell "
         "with recommended rungs HOLDS when every tied rung is recommended (similar/little: probe; similar/a lot: "
         "all; different/a lot: all or scratch), DOES NOT HOLD when none is, and is INCONCLUSIVE when the tie mixes "
         "both. The different/little cell recommends no rung: it HOLDS when scratch ties for the best (the source "
         f"gives no clear gain) and is at most {SCRATCH_TIE_TOLERANCE * 100:g} point behind it, is INCONCLUSIVE when "
         "it ties further behind (within a wider spread), and DOES NOT HOLD when a rung reusing the source wins "
         "clearly. With fewer than 3 "
         "seeds every cell is INCONCLUSIVE, and so is a cell where a rung finished fewer than 3 (the others "
         "diverged). Sizes between the smallest and largest are reported, not checked.",
    runs="A LeNet-5 source trained on the data's first half of the classes (recipes/lenet5-digits.yaml's settings); "
         "then cnnlab transfer's ladder (recipes/transfer-finetune.yaml's settings, equal optimiser steps per rung) "
         "on the other half of the classes (similar) and on digits read at the source's size (different; "
         "synthetic stripes when the source data is digits)",
    sizes={
        "tiny": SizeInfo("digits: source on classes 0-4 (20 per class, 1 epoch); ladders at 3 per class only on "
                         "digits 5-9 (similar) and synthetic stripes (different), 1 step per rung, 1 seed: the "
                         "mechanics, no cell of the table (7 networks: the source and 3 training rungs per ladder, "
                         "the fewest both ladders allow)", 12.0),
        "quick": SizeInfo("Fashion-MNIST: source on classes 0-4 (1000 per class, 3 epochs); ladders at 10 and 200 "
                          "per class on classes 5-9 (similar) and at 10 and 100 per class on digits (different), 20 "
                          "optimiser steps per training rung, 3 seeds (36 training runs, 12 probes)", 150.0),
        "full": SizeInfo("Fashion-MNIST: source on classes 0-4 (all 29,400 training images, 3 epochs); ladders at 10 "
                         "and 1000 per class on classes 5-9 (similar) and at 10 and 100 per class on digits "
                         "(different), 100 optimiser steps per training rung, 3 seeds (36 training runs, 12 probes)",
                         290.0),
    },
    run=run_transfer_experiment,
    notes=("002", "000"),  # note 000: with too little data, reuse a pretrained model (head or fine-tune)
    seeds=(1, 10, 3),
    data={"tiny": "digits", "quick": "fashion-mnist", "full": "fashion-mnist"},
    check_data=check_transfer_data,
)

EXPERIMENTS = [TRANSFER]
