"""``cnnlab transfer``: the transfer-learning ladder at several training-set sizes, read against the lecture.

The lecture's table (CS231n-style): with very little data of a similar kind, fit a linear classifier
on the top layer; with quite a lot, fine-tune all layers; with very little data of a different kind,
try another model or collect more data; with quite a lot, fine-tune all layers or train from scratch.

At each size (images per class) and seed the ladder measures four rungs:

1. ``scratch``: the source's architecture from a fresh initialisation;
2. ``probe``: a logistic regression on the source's pooled features (:func:`cnnlab.transfer.probe.fit_probe`);
3. ``top``: start from the source, freeze everything below the top stage, train the top stage and a new head
   (``model.new_head``: the source's classifier is never loaded, even for a target with the same classes);
4. ``all``: start from the source, train everything, the pretrained weights at a tenth of the learning rate
   (``all_lr_mult`` when given, 1 included; else the base config's ``optim.backbone_lr_mult`` when it sets
   one other than 1, the default, which reads as "the lecture's tenth").

The multiplier acts in ``all`` only, and so does ``optim.layer_decay``: ``scratch`` loads no weights, ``probe``
trains none (a logistic regression on fixed features), and ``top`` trains its one unfrozen stage at the head's
rate, as that stage must adapt to the new data (everything below it is frozen, so no rate applies there).

Both rungs that start from the source follow the lecture's order, "train a feature extractor first,
then fine-tune": the first ``head_first`` share of their epochs trains the new head alone
(``train.probe_epochs``), so its random start does not send random gradients into the pretrained
layers.

A source trained with ``model.whiten`` (its first conv's filters set from its training images) passes
the setting to ``scratch``, which whitens its fresh first conv from the target's images; ``top`` and
``all`` load the source's whitened filters like every other weight, so they train with ``model.whiten``
none (``model.init_from`` and whitening both set the first conv: one of them per run).

With ``model.init_ema`` in the base config, ``probe``, ``top`` and ``all`` reuse the source run's EMA weights
(train.ema) instead of its raw ones; the source run's own ``model.init_ema`` (how it started) is not passed on.

The claim is stated before anything runs: with ``similarity="similar"`` the smallest size should be
won by ``probe`` and the largest by ``all``; with ``"different"`` the smallest size has no recommended
rung and the largest should be won by ``all`` or ``scratch``. Winners are by mean test accuracy over
the seeds; a rung within one standard deviation of the best ties with it.

Equal budgets: every training rung at every size runs about ``steps`` optimiser steps (epochs =
ceil(steps / steps per epoch), batch = min(the config's batch, images)), so a small training set is
not starved of updates; the config's own ``train.epochs`` is replaced, and a note says so when it
differs. Every training rung is an ordinary run of :func:`cnnlab.train.engine.train` in
OUT/<size>/seed<k>/<rung>; a finished run (its report written) is read, not retrained, and a
half-finished one resumes; a 'top' or 'all' run from before the rungs set ``model.new_head`` that loaded the
source's classifier is refused by name (:func:`check_old_heads`), and so is an 'all' run from before the head's
pretrained layers trained at the pretrained rate (:func:`check_old_head_rates`). OUT/transfer.json holds every
run's numbers (rewritten after each run; each training run's folder relative to OUT, so that it holds when OUT is
moved or copied) and OUT/transfer.png plots accuracy against images per class.
"""

from __future__ import annotations

import copy
import io
import math
import numbers
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from cnnlab.config import DataConfig, RunConfig, config_to_dict, record_paths, schedule_problems
from cnnlab.errors import CnnlabError, counted, display_name, first_few, shown_value, whole_number
from cnnlab.io import atomic_leftovers
from cnnlab.run import CONFIG_FILE, INIT_FILE, TRANSFER_RESULT_FILE, MetaKey, RunFolder, recorded_place
from cnnlab.text import RunCount, duration_text
from cnnlab.threads import keeps_thread_setting
from cnnlab.train.between_runs import stop_between_runs
from cnnlab.transfer.probe import (
    ProbeSource,
    fit_probe,
    load_probe_source,
    load_target,
    skipped_records,
    split_features,
    target_config,
    target_data,
)

SCRATCH, PROBE, TOP, ALL = "scratch", "probe", "top", "all"
RUNGS = (SCRATCH, PROBE, TOP, ALL)  # the order the lecture's recipe climbs: no reuse, then more and more training
TRAINING_RUNGS = (SCRATCH, TOP, ALL)
LECTURE_LR_MULT = 0.1  # "fine-tune at 1/10 of the original learning rate"


def rung_texts(all_lr_mult: float = LECTURE_LR_MULT) -> dict[str, str]:
    """What each rung does, in words; ``all_lr_mult`` is the factor of the pretrained weights' rate in 'all'."""
    return {SCRATCH: "from scratch", PROBE: "linear probe on the pooled features",
            TOP: "fine-tune the head and the top stage", ALL: f"fine-tune every layer, pretrained lr x {all_lr_mult:g}"}


RUNG_TEXT = rung_texts()  # with the lecture's tenth
SIMILARITIES = ("similar", "different")
HEAD_FIRST = 0.25  # share of a pretrained rung's epochs that trains the new head alone (train.probe_epochs)
TIE = "tie"
NO_RUNG = "no rung recommended"
# The lecture's table: what should win at the smallest ("little data") and largest ("a lot") size.
# None: the lecture recommends no rung ("try another model or collect more data").
EXPECTED = {"similar": {"small": (PROBE,), "large": (ALL,)},
            "different": {"small": None, "large": (ALL, SCRATCH)}}
LECTURE_SAYS = {("similar", "small"): "linear classifier on the top layer",
                ("similar", "large"): "fine-tune all layers",
                ("different", "small"): "try another model or collect more data",
                ("different", "large"): "fine-tune all layers, or train from scratch"}
RESULT_FILE = TRANSFER_RESULT_FILE
PLOT_FILE = "transfer.png"
# transfer.json records each training run's folder (runs[].run_dir) relative to the ladder's folder (its place,
# SIZE/seedK/RUNG: run_place), so that the record names the run, and a continued ladder finds the seconds it
# recorded, wherever the folder is moved or copied; RUN_DIRS_KEY says so. A transfer.json written before has
# the path as the call that trained the run named it (OUT/SIZE/seedK/RUNG from its working folder, or absolute).
RUN_DIRS_KEY = "run_dirs"
RUN_DIRS_RELATIVE = "relative to the ladder's folder"


# ---------------------------------------------------------------------------------------------
# the plan: what each rung trains


@dataclass(frozen=True)
class Budget:
    """The optimiser steps one training rung gets at one size."""

    images: int  # training images: size x classes
    batch_size: int  # min(the config's batch, images)
    steps_per_epoch: int  # images // batch (the training loader drops a last short batch)
    epochs: int  # ceil(steps / steps_per_epoch)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def budget_for(images: int, batch_size: int, steps: int) -> Budget:
    batch = min(batch_size, images)
    per_epoch = images // batch
    return Budget(images=images, batch_size=batch, steps_per_epoch=per_epoch, epochs=math.ceil(steps / per_epoch))


def top_freeze(model) -> str:
    """The model.freeze that leaves only the top stage and the head to train: the stages below the top
    one, or the stem alone for a network with one stage."""
    from cnnlab.models.stages import HEAD, STEM, model_stages

    stages = [stage.name for stage in model_stages(model) if stage.name not in (STEM, HEAD)]
    return stages[-2] if len(stages) >= 2 else STEM


def head_first_epochs(budget: Budget, head_first: float) -> int:
    """The head-only epochs of a pretrained rung: ``head_first`` of its epochs, at least one when the share
    is positive, and always leaving one epoch of fine-tuning."""
    if head_first <= 0 or budget.epochs < 2:
        return 0
    return min(max(1, round(head_first * budget.epochs)), budget.epochs - 1)


def pretrained_lr_mult(base: RunConfig, given: Optional[float] = None) -> float:
    """The factor of the pretrained weights' rate in 'all': ``given`` (``--all-lr-mult``) when set, 1 included;
    else ``base``'s optim.backbone_lr_mult, or the lecture's tenth when that is left at 1 (the default, which
    cannot tell "the same rate as the head" from "not set")."""
    if given is not None:
        return given
    return base.optim.backbone_lr_mult if base.optim.backbone_lr_mult != 1.0 else LECTURE_LR_MULT


def rung_config(base: RunConfig, rung: str, *, source: ProbeSource, source_spec: str, data: DataConfig, size: int,
                seed: int, budget: Budget, freeze: str, head_first: float = HEAD_FIRST,
                all_lr_mult: Optional[float] = None) -> RunConfig:
    """The RunConfig a training rung trains: ``base`` with the source's architecture, the subset, the
    seed, the equal-budget length and the rung's start, head-only epochs, freeze and learning-rate
    multiplier (:func:`pretrained_lr_mult` of ``all_lr_mult`` in 'all')."""
    from cnnlab.config import validate_config
    from cnnlab.train.schedule import unreached_milestones

    config = copy.deepcopy(base)
    # the source's image size and channels (the probe's view of the data), the subset, the seed
    config.data = replace(target_config(data, source), seed=seed, train_per_class=size)
    recorded = source.init.config
    if recorded is not None:  # a cnnlab run: the same architecture, options included
        config.model = copy.deepcopy(recorded.model)
    config.model.name = source.model_name
    config.model.init_from = None
    config.model.init_ema = False  # the source's own start, not the rungs': top and all take base's below
    config.model.freeze = None
    config.model.new_head = False  # only with weights to load (top and all set it below)
    config.train.seed = seed
    config.train.batch_size = budget.batch_size
    config.train.epochs = budget.epochs
    config.log.quiet = True
    if rung == SCRATCH:
        # A fresh network has nothing to keep: no head-only phase, no frozen BatchNorm statistics, and no slower
        # rate for its lower stages (optim.layer_decay is discriminative fine-tuning's, like backbone_lr_mult).
        config.train.probe_epochs = 0
        config.train.bn_eval = "off"
        config.optim.backbone_lr_mult = 1.0
        config.optim.layer_decay = 1.0
    else:
        config.model.init_from = source_spec
        config.model.init_ema = base.model.init_ema  # the source's weights the probe's features came from
        # A new head, as the lecture, Keras's transfer guide and fastai's fine_tune train: the source's classifier
        # is kept only by model.init_from's own rule (same class names), and same names need not mean the same
        # classes here (synthetic's class0..; a torchvision file records none). The probe fits a new one too.
        config.model.new_head = True
        # The source's first conv comes with its weights, whitened filters included: whitening it again from
        # the target's images would overwrite what the rung is meant to reuse. (scratch keeps the source's
        # model.whiten: the same recipe from a fresh start, whitened from the target's images.)
        config.model.whiten = "none"
        config.train.probe_epochs = head_first_epochs(budget, head_first)
        if rung == TOP:
            config.model.freeze = freeze
            # The top stage must adapt to the new classes: it trains at the head's rate whatever multiplier or
            # layer decay the base config gives (the stages below it are frozen, so no other rate applies).
            config.optim.backbone_lr_mult = 1.0
            config.optim.layer_decay = 1.0
        else:
            config.optim.backbone_lr_mult = pretrained_lr_mult(base, all_lr_mult)
    # The schedule against the rung's epochs (those after the head-only ones), named as the rung's: the base
    # config's train.epochs is a placeholder the ladder replaces from --steps.
    schedule_epochs = config.train.epochs - config.train.probe_epochs
    length = f"the '{rung}' rung's {counted(config.train.epochs, 'epoch')} at {size} images per class"
    if config.train.probe_epochs:
        length += f", less its {config.train.probe_epochs} head-only"
    fits = "(The ladder sets each rung's epochs from --steps: the base config's schedule must fit every rung.)"
    problems = schedule_problems(config.schedule, schedule_epochs, length)
    if problems:
        raise CnnlabError("Bad config: " + "; ".join(problems) + f". {fits}")
    validate_config(config)
    # `cnnlab train` refuses a step milestone at the end of the schedule's epochs, which validate_config leaves
    # to a new run: checked here too, so that the ladder refuses it before its first rung rather than when the
    # first pretrained rung starts, after 'scratch' trained
    problem = unreached_milestones(config.schedule, schedule_epochs, length)
    if problem:
        raise CnnlabError(f"{problem} {fits}")
    return config


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class RungRun:
    """One rung at one size and seed."""

    size: int
    seed: int
    rung: str
    test_acc: Optional[float]  # on the metric split (test, or val when the data has no test split)
    val_acc: Optional[float]
    # wall-clock time of the training run (every call's part of a run a Ctrl-C stopped and a later call continued),
    # or the probe's extraction (train split) and fit
    seconds: float
    # done | read (finished before, read back) | diverged | stopped (by Ctrl-C part-way: transfer.json keeps its
    # seconds so far for the call that continues it; never in a result's runs)
    status: str = "done"
    run_dir: Optional[str] = None  # training rungs
    steps: Optional[int] = None  # optimiser steps (training rungs)
    details: dict = field(default_factory=dict)  # the probe's C and grid; a diverged run's error


@dataclass
class RungSummary:
    """A rung at one size over the seeds."""

    size: int
    rung: str
    test_mean: Optional[float]
    test_std: Optional[float]  # sample std over the seeds (0 with one seed)
    val_mean: Optional[float]
    seconds_mean: float
    runs: int  # seeds that finished
    failed: int  # seeds whose training diverged


@dataclass
class SizeVerdict:
    """The winner at one size and how it compares with the lecture's table."""

    size: int
    winner: str  # a rung, or "tie"
    tied: list[str]  # the rungs within one std of the best (the winner alone when it is clear)
    row: Optional[str]  # "small" | "large" | None (a size between the lecture's two rows)
    expected: Optional[list[str]]  # the lecture's rung(s) for this row; None: none recommended
    lecture: Optional[str]  # the lecture's words for this cell
    verdict: Optional[str]  # agrees | agrees (tie) | disagrees | no rung recommended | None without similarity


@dataclass
class TransferResult:
    """What ``cnnlab transfer`` measured."""

    source: str
    model: str
    data: str
    classes: list[str]
    similarity: Optional[str]
    metric_split: str  # "test", or "val" for data without a test split
    sizes: list[int]
    seeds: int
    steps: int
    budgets: dict[int, Budget]
    freeze_top: str
    all_lr_mult: float  # optim.backbone_lr_mult of the 'all' rung
    runs: list[RungRun]
    table: list[RungSummary]
    verdicts: list[SizeVerdict]
    notes: list[str]
    seconds: float
    files: dict[str, str]
    # every file or CSV row the target data left out, {"path", "reason"} (the warning and a note count them)
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "model": self.model, "data": self.data, "classes": self.classes,
                "similarity": self.similarity, "metric_split": self.metric_split, "sizes": self.sizes,
                "seeds": self.seeds, "steps": self.steps,
                "budgets": {str(size): {**asdict(b), "steps": b.steps} for size, b in self.budgets.items()},
                "rungs": self.rung_texts(), "freeze_top": self.freeze_top, "all_lr_mult": self.all_lr_mult,
                "table": [asdict(row) for row in self.table], "verdicts": [asdict(v) for v in self.verdicts],
                "runs": [asdict(run) for run in self.runs], "notes": self.notes, "seconds": self.seconds,
                "files": self.files, "skipped": self.skipped}

    def rung_texts(self) -> dict[str, str]:
        return rung_texts(self.all_lr_mult)


def summarise(runs: list[RungRun], sizes: list[int], rungs: tuple[str, ...] = RUNGS) -> list[RungSummary]:
    """Mean and std over the seeds of each of ``rungs`` (all four by default) at each size."""
    table = []
    for size in sizes:
        for rung in rungs:
            mine = [r for r in runs if r.size == size and r.rung == rung]
            done = [r for r in mine if r.test_acc is not None]
            tests = [r.test_acc for r in done]
            vals = [r.val_acc for r in done if r.val_acc is not None]
            table.append(RungSummary(
                size=size, rung=rung, test_mean=statistics.fmean(tests) if tests else None,
                test_std=statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
                val_mean=statistics.fmean(vals) if vals else None,
                seconds_mean=statistics.fmean([r.seconds for r in mine]) if mine else 0.0,
                runs=len(done), failed=len(mine) - len(done)))
    return table


def winners(table: list[RungSummary], size: int) -> tuple[str, list[str]]:
    """(winner, tied): the best mean test accuracy; rungs within one std of it (the larger of the two
    stds) tie with it, and then the winner is "tie"."""
    rows = [row for row in table if row.size == size and row.test_mean is not None]
    if not rows:
        return TIE, []
    best = max(rows, key=lambda row: row.test_mean)
    tied = [row.rung for row in rows
            if best.test_mean - row.test_mean <= max(best.test_std or 0.0, row.test_std or 0.0)]
    tied.sort(key=RUNGS.index)
    return (best.rung if tied == [best.rung] else TIE), tied


def verdicts(table: list[RungSummary], sizes: list[int], similarity: Optional[str]) -> list[SizeVerdict]:
    """The winner at each size, compared with the lecture's table at the smallest and largest size."""
    result = []
    for size in sizes:
        winner, tied = winners(table, size)
        row = None
        if len(sizes) >= 2:
            row = "small" if size == min(sizes) else "large" if size == max(sizes) else None
        expected = lecture = verdict = None
        if similarity is not None and row is not None:
            expected = EXPECTED[similarity][row]
            lecture = LECTURE_SAYS[(similarity, row)]
            if expected is None:
                verdict = NO_RUNG
            elif winner in expected:
                verdict = "agrees"
            elif winner == TIE and set(tied) & set(expected):
                verdict = "agrees (tie)"
            else:
                verdict = "disagrees"
        result.append(SizeVerdict(size=size, winner=winner, tied=tied, row=row,
                                  expected=list(expected) if expected else None, lecture=lecture, verdict=verdict))
    return result


# ---------------------------------------------------------------------------------------------
# running the rungs


def run_place(size: int, seed: int, rung: str) -> Path:
    """Where a training rung's run folder lies in the ladder's folder: SIZE/seedK/RUNG."""
    return Path(str(size)) / f"seed{seed}" / rung


_PLACE_PARTS = 3  # the folders of a run's place: SIZE, seedK, RUNG (run_place)


def _training_seconds(run_dir: Path) -> float:
    """The sum of a run's epoch times (training only): the fallback for a run trained before any record."""
    from cnnlab.train.engine import read_metrics_rows

    return float(sum(row.get("epoch_seconds") or 0.0 for row in read_metrics_rows(run_dir)))


def evaluate_run(run_dir: Path, split: str) -> tuple[float, Optional[float]]:
    """(accuracy on ``split``, best val accuracy) of a run's best checkpoint, with the evaluation code of
    ``cnnlab eval`` (its preprocessing read from the checkpoint)."""
    from cnnlab.evaluate.evaluate import (
        black_fill,
        classification_report,
        eval_loader,
        load_model,
        predict_probabilities,
    )

    loaded = load_model(run_dir)
    _, loader = eval_loader(loaded, split=split)
    probs, labels, log_probs = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    report = classification_report(probs, labels, loaded.classes, log_probs)
    best = loaded.meta.get(MetaKey.BEST) or {}
    return report["top1"], best.get("val_acc")


class StoppedAfterRun(KeyboardInterrupt):
    """Ctrl-C in a rung's last step: the run finished (its report written), and the ladder stops after it.
    ``run`` is the finished rung, for transfer.json to record before the stop."""

    def __init__(self, run: RungRun):
        super().__init__()
        self.run = run


class StoppedInRun(KeyboardInterrupt):
    """Ctrl-C part-way through a rung's run: ``run`` (status "stopped") holds the wall-clock seconds it trained so
    far, which transfer.json records so that the call continuing the run adds them to its own."""

    def __init__(self, run: RungRun):
        super().__init__()
        self.run = run


def train_rung(config: RunConfig, run_dir: Path, split: str, rung: str, steps: int,
               recorded_seconds: Optional[float] = None) -> RungRun:
    """Train (or resume, or read back) one training rung and score its best checkpoint.

    ``recorded_seconds``: the wall-clock time earlier calls recorded for this run (transfer.json): its whole time
    when the run is read back (without a record, the run's epoch times are summed instead), the time before a stop
    when it is continued. Ctrl-C raises KeyboardInterrupt: :class:`StoppedAfterRun` when the run finished anyway
    (the stop came in its last step), :class:`StoppedInRun` with the seconds so far when it did not.
    """
    from rich.console import Console

    from cnnlab.train.engine import NonFiniteLossError, train

    folder = RunFolder(run_dir)
    common = dict(size=config.data.train_per_class, seed=config.train.seed, rung=rung, run_dir=str(run_dir),
                  steps=steps)
    stopped = False
    if folder.report.is_file():
        status = "read"
        seconds = recorded_seconds if recorded_seconds is not None else _training_seconds(run_dir)
    else:
        status = "done"
        quiet = Console(file=io.StringIO())  # the per-epoch lines and the report stay in the run folder
        started = time.perf_counter()
        resume = folder.last.is_file()  # half-finished: it continues as its config.yaml records it
        before = (recorded_seconds or 0.0) if resume else 0.0  # the stopped calls' part of its time

        def stopped_part() -> KeyboardInterrupt:
            if not folder.last.is_file():  # nothing kept to continue (it stopped before it began): the next call
                return KeyboardInterrupt()  # starts the run afresh, and times it whole
            return StoppedInRun(RungRun(**common, test_acc=None, val_acc=None, status="stopped",
                                        seconds=before + time.perf_counter() - started))

        try:
            result = train(folder.read_config() if resume else config, run_dir, resume=resume, console=quiet)
        except NonFiniteLossError as err:
            return RungRun(**common, test_acc=None, val_acc=None, seconds=before + time.perf_counter() - started,
                           status="diverged", details={"error": str(err)})
        except KeyboardInterrupt:  # a second Ctrl-C, inside the run
            raise stopped_part() from None
        if result.stop_requested:  # Ctrl-C, even in a run's last step: no further rung starts
            if not folder.report.is_file():
                raise stopped_part()
            # The stop came in the last step and the run finished: it is scored and recorded with its wall-clock
            # time before the ladder stops, so that the next call reads it back with that time, as it does every
            # finished run (not with its epochs' training time alone, which leaves out validation and checkpoints).
            stopped = True
        seconds = before + time.perf_counter() - started
    test_acc, val_acc = evaluate_run(run_dir, split)
    run = RungRun(**common, test_acc=test_acc, val_acc=val_acc, seconds=seconds, status=status)
    if stopped:
        raise StoppedAfterRun(run)
    return run


def probe_rung(source: ProbeSource, data: DataConfig, size: int, seed: int, split: str) -> RungRun:
    """The linear probe on the subset's features (each split's features cached by content)."""
    target = load_target(replace(data, seed=seed, train_per_class=size), source, announce=False)
    extracted = {name: split_features(source, target, name) for name in target.dataset.splits()}
    fit = fit_probe({name: part.features for name, part in extracted.items()},
                    {name: part.labels for name, part in extracted.items()})
    accuracy = fit.test_acc if split == "test" else fit.val_acc
    return RungRun(size=size, seed=seed, rung=PROBE, test_acc=accuracy, val_acc=fit.val_acc,
                   seconds=extracted["train"].seconds + fit.seconds,
                   details={"c": fit.c, "c_grid": fit.grid, "train_acc": fit.train_acc,
                            "extract_seconds": {name: part.seconds for name, part in extracted.items()},
                            "cached": {name: part.cached for name, part in extracted.items()}})


# ---------------------------------------------------------------------------------------------
# checks before anything runs


def parse_sizes(per_class) -> list[int]:
    """Images-per-class sizes, ascending and distinct; CnnlabError for anything else."""
    if isinstance(per_class, str):
        parts = [p.strip() for p in per_class.split(",") if p.strip()]
        try:
            per_class = [int(p) for p in parts]
        except ValueError:
            raise CnnlabError(f"--per-class '{per_class}' must be whole numbers separated by commas, e.g. "
                              "10,100,1000.") from None
    if isinstance(per_class, numbers.Integral):  # one size, as a Python caller may give it
        per_class = [per_class]
    try:
        given = [whole_number(n) for n in per_class]
    except TypeError:  # not a list of anything
        given = [None]
    if None in given:  # 2.5 or True is no size (int() made them 2 and 1)
        raise CnnlabError(f"per_class={shown_value(per_class)} must be sizes in images per class: whole numbers, as "
                          "a list (e.g. [10, 100, 1000]) or text separated by commas.")
    sizes = sorted(set(given))
    if not sizes or sizes[0] < 1:
        raise CnnlabError(f"--per-class {given} must list at least one size, each at least 1 image per "
                          "class (e.g. 10,100,1000).")
    repeated = [n for n in sizes if given.count(n) > 1]
    if repeated:
        raise CnnlabError(f"--per-class {given} names {', '.join(map(str, repeated))} more than once: each "
                          "size is one rung of the ladder (its seeds are --seeds). List each size once.")
    return sizes


def check_request(data: DataConfig, base: RunConfig, similarity: Optional[str], seeds: int, steps: int,
                  head_first: float = HEAD_FIRST, all_lr_mult: Optional[float] = None,
                  rungs: tuple[str, ...] = RUNGS) -> None:
    unknown = [rung for rung in rungs if rung not in RUNGS]
    if unknown or not rungs:
        raise CnnlabError(f"The ladder's rungs {list(rungs)} are not a selection of {', '.join(RUNGS)}: give one or "
                          "more of them.")
    if similarity is not None and similarity not in SIMILARITIES:
        raise CnnlabError(f"--similarity '{similarity}' is not known: choose similar (the target is the same kind of "
                          "images as the source's) or different, or leave it out to report the winners only.")
    if seeds < 1:
        raise CnnlabError(f"--seeds must be at least 1, got {seeds}.")
    if steps < 1:
        raise CnnlabError(f"--steps must be at least 1 optimiser step, got {steps}.")
    if not 0 <= head_first < 1:
        raise CnnlabError(f"--head-first {head_first} must lie in [0, 1): the share of a pretrained rung's epochs that "
                          "trains the new head alone (0 = none).")
    if all_lr_mult is not None and not (math.isfinite(all_lr_mult) and all_lr_mult > 0):
        raise CnnlabError(f"--all-lr-mult {all_lr_mult} must be a positive number: the factor of the pretrained "
                          "weights' learning rate in 'all' (0.1: the lecture's tenth; 1: the head's rate).")
    config_mult = base.optim.backbone_lr_mult
    if all_lr_mult is not None and config_mult != 1.0 and config_mult != all_lr_mult:
        raise CnnlabError(f"--all-lr-mult {all_lr_mult:g} and optim.backbone_lr_mult={config_mult:g} both set the "
                          "factor of the pretrained weights' learning rate in 'all': give one of them.")
    if base.train.probe_epochs:
        raise CnnlabError(f"train.probe_epochs={base.train.probe_epochs} is set, but the ladder sets each pretrained "
                          "rung's head-only epochs from --head-first (a share of its epochs): leave it out.")
    if base.train.minutes is not None:
        raise CnnlabError(f"train.minutes={base.train.minutes:g} is set, but the ladder gives every training rung about "
                          "--steps optimiser steps at every size (equal budgets), and a time budget would cut some "
                          "rungs short: leave train.minutes out, and set the length with --steps.")
    if base.train.early_stop_patience:
        raise CnnlabError(f"train.early_stop_patience={base.train.early_stop_patience} is set, but the ladder gives "
                          "every training rung about --steps optimiser steps at every size (equal budgets), and early "
                          "stopping would end some rungs sooner than others: leave train.early_stop_patience out.")
    if base.train.accum_steps != 1:
        raise CnnlabError(f"train.accum_steps={base.train.accum_steps} is set, but the ladder counts each batch as an "
                          "optimiser step when it gives every training rung about --steps of them, and at small sizes "
                          "an epoch may hold fewer batches than one accumulated step needs: leave train.accum_steps "
                          "out (a smaller train.batch_size takes less memory).")
    if data.train_per_class is not None:
        raise CnnlabError(f"data.train_per_class={data.train_per_class} is set, but the ladder sets it at each size "
                          "from --per-class: leave data.train_per_class out.")
    taken = [f"model.{key}={getattr(base.model, key)!r}" for key in ("init_from", "freeze")
             if getattr(base.model, key) is not None]
    if base.model.new_head:
        taken.append("model.new_head=True")
    if taken:
        raise CnnlabError(f"The config sets {', '.join(taken)}, but each rung of the ladder sets its own start and "
                          "freeze (scratch, probe, top, all): leave them out.")


def check_not_a_run(out: Path, source: str) -> None:
    """Refuse an ``out`` that is a training run's folder (the source's, typed as --out by mistake, or another), or
    any folder that holds something besides a ladder's own files (an experiment's, a folder of runs, notes): the
    ladder's runs and results would be written among them. A ladder's folder (its SIZE folders, transfer.json
    and transfer.png, what a killed write of them left) is continued."""
    where = (f"the ladder writes its runs below --out (SIZE/seedK/RUNG) and {RESULT_FILE} and {PLOT_FILE} beside "
             "them")
    instead = "Give the ladder a folder of its own, or leave out --out for runs/transfer-SOURCE-DATA."
    if RunFolder(out).is_run():
        which = ("the source run's folder" if Path(source).expanduser().resolve() == out.resolve()
                 else "a training run's folder")
        raise CnnlabError(f"--out '{out}' is {which} (it has its {CONFIG_FILE}): {where}, which would mix with that "
                          f"run's files. {instead}")
    if not out.is_dir():
        return
    own = {RESULT_FILE, PLOT_FILE, *(leftover.name for name in (RESULT_FILE, PLOT_FILE)
                                     for leftover in atomic_leftovers(out / name))}
    others = sorted(entry.name for entry in out.iterdir()
                    if entry.name not in own and not (entry.is_dir() and entry.name.isdigit()))
    if others:
        raise CnnlabError(f"--out '{display_name(str(out))}' holds {first_few([display_name(n) for n in others], 5)}, "
                          f"which no transfer ladder writes: {where}, which would mix with what is there. {instead}")


def check_model_keys(base: RunConfig, source: ProbeSource) -> None:
    """A cnnlab run records its architecture, and every rung trains it as recorded (:func:`rung_config`): a
    model.* key that ``base`` sets (other than its default) to another value than the run's would be replaced
    without effect, so it is refused. model.name is left out: a template names some model, which the source's
    replaces (recipes/transfer-finetune.yaml says so); model.init_from, model.freeze and model.new_head are
    :func:`check_request`'s, model.init_ema says which of the source's weights the rungs that reuse it read (the
    run's own value was its own start), and model.init_from_typed is a run's record of how init_from was typed. A torchvision weights file records no model config: ``base``'s keys apply."""
    from dataclasses import fields

    from cnnlab.config import RECORD_KEYS, ModelConfig

    recorded = source.init.config
    if recorded is None:
        return
    default = ModelConfig()
    replaced = [f"model.{f.name}={getattr(base.model, f.name)!r}" for f in fields(ModelConfig)
                if f.name not in ("name", "init_from", "init_ema", "freeze", "new_head")
                and f"model.{f.name}" not in RECORD_KEYS
                and getattr(base.model, f.name) != getattr(default, f.name)
                and getattr(base.model, f.name) != getattr(recorded.model, f.name)]
    if replaced:
        raise CnnlabError(f"The config sets {', '.join(replaced)}, but the source is a cnnlab run of "
                          f"{source.model_name}, which records its architecture: every rung trains that network as "
                          "it was recorded (its model.* keys), so these would be replaced without effect. Leave them "
                          "out.")


def check_rung_setup(base: RunConfig) -> None:
    """Refuse what every training rung's set-up would refuse on this machine (a train.precision its device
    cannot run, a train.threads the system cannot start) before any rung runs and leaves its folder."""
    from cnnlab.config import check_thread_setting
    from cnnlab.devices import resolve_device
    from cnnlab.train.engine import resolve_precision

    resolve_precision(base.train.precision, resolve_device(base.train.device))
    check_thread_setting(base.train.threads, announce=False)  # each run notes threads above the cores


def check_sizes(source: ProbeSource, data: DataConfig, sizes: list[int], seeds: int):
    """Every class has at least the largest size of training images at every seed (the data seed moves
    the validation hold-out). Returns (classes, has a test split, the data set's ``skipped``: every file and
    CSV row it left out, with why)."""
    largest = max(sizes)
    classes, has_test, skipped = [], True, []
    for seed in range(seeds):
        dataset = load_target(replace(data, seed=seed), source, announce=seed == 0).dataset
        classes, has_test = list(dataset.classes), dataset.test is not None and len(dataset.test) > 0
        skipped = list(dataset.skipped)  # the files read do not depend on the seed
        counts = dataset.train.labels.bincount(minlength=dataset.num_classes).tolist()
        short = [(name, count) for name, count in zip(dataset.classes, counts) if count < largest]
        if short:
            named = "; ".join(f"'{name}' has {count}" for name, count in short[:5])
            more = f"; and {len(short) - 5} more" if len(short) > 5 else ""
            held = (f"after the validation hold-out, data seed {seed}" if dataset.val_held_out else
                    f"in the training split: {dataset.spec} has its own validation split")
            raise CnnlabError(f"--per-class {largest} asks for more training images than some classes of "
                              f"{dataset.spec} have ({held}): {named}{more}. "
                              f"The largest size that works is {min(counts)}; lower --per-class.")
    return classes, has_test, skipped


def _settings(source: ProbeSource, data: DataConfig, base: RunConfig, steps: int, similarity: Optional[str],
              head_first: float, lr_mult: float) -> dict:
    """What every run in OUT depends on: a second run into OUT must repeat it (sizes and seeds may grow).
    ``lr_mult``: the resolved factor of 'all' (:func:`pretrained_lr_mult`). The source is its file's identity and
    the checksum of the weights read from it (:func:`_same_source_by_weights`)."""
    from cnnlab.train.checkpoint import tensors_checksum

    return {"source": {**source.identity, "checksum": tensors_checksum(source.init.state_dict)}, "data": asdict(data),
            "config": config_to_dict(base), "steps": steps, "similarity": similarity, "head_first": head_first,
            "all_lr_mult": lr_mult}


# Where the source's file lies and when it was written: what a ladder recorded of its source before it recorded the
# checksum of its weights, and all the checksum needs to replace
SOURCE_FILE_KEYS = ("path", "size", "mtime_ns")


def _same_source_by_weights(recorded: dict, given: dict) -> None:
    """Compare the source of two ladder settings by the checksum of its weights where both record one, not by its
    file's place: an experiment keeps its source run inside OUT (``transfer``, ``from-scratch``), so a moved or
    copied OUT named a new path and time and was refused. A record without a checksum (an older ladder's)
    compares the file as before. Both dicts are changed in place."""
    sources = [both.get("source") for both in (recorded, given)]
    if not all(isinstance(source, dict) for source in sources):
        return
    if all("checksum" in source for source in sources):
        for source in sources:
            for key in SOURCE_FILE_KEYS:
                source.pop(key, None)
    else:
        for source in sources:
            source.pop("checksum", None)


def _with_defaults(recorded: dict) -> dict:
    """A config as a ladder recorded it, with every key a later cnnlab added (model.init_ema, say) at its default:
    what that ladder trained. A record that does not read as a config is left as it is (and then differs)."""
    import json

    from cnnlab.config import config_from_dict

    try:
        return json.loads(json.dumps(config_to_dict(config_from_dict(recorded, template=True))))
    except (CnnlabError, TypeError, ValueError):
        return recorded


def _check_resume(out: Path, settings: dict) -> None:
    import json

    from cnnlab.config import RESUME_FREE_KEYS, flatten_config
    from cnnlab.train.engine import differences_text

    path = out / RESULT_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("settings")
        if recorded is not None and not isinstance(recorded, dict):
            raise ValueError("settings is not a mapping")
    except (OSError, ValueError, AttributeError):
        raise CnnlabError(f"'{path}' cannot be read as a transfer result, so the runs in '{out}' cannot be continued "
                          "safely. Choose another --out, or delete that file.") from None
    if isinstance(recorded, dict) and "all_lr_mult" not in recorded:
        # Recorded before --all-lr-mult existed: 'all' took the config's multiplier, or the tenth for its 1.
        config_mult = ((recorded.get("config") or {}).get("optim") or {}).get("backbone_lr_mult", 1.0)
        recorded["all_lr_mult"] = config_mult if config_mult != 1.0 else LECTURE_LR_MULT
    given = json.loads(json.dumps(settings))
    if isinstance(recorded, dict):
        _same_source_by_weights(recorded, given)
    for both in (recorded, given):  # keys a later cnnlab added were at their defaults in an older record
        if isinstance(both, dict) and isinstance(both.get("config"), dict):
            both["config"] = _with_defaults(both["config"])
            # Every rung sets optim.backbone_lr_mult itself, 'all' to all_lr_mult, recorded resolved: given as
            # --all-lr-mult 0.5 or as --set optim.backbone_lr_mult=0.5, the runs are the same
            if isinstance(both["config"].get("optim"), dict):
                both["config"]["optim"].pop("backbone_lr_mult", None)
        if isinstance(both, dict) and isinstance(both.get("data"), dict):
            both["data"] = {**json.loads(json.dumps(asdict(DataConfig()))), **both["data"]}
    if recorded is None or recorded == given:
        return
    # Where the runs train and what they log may change between calls (a ladder started on a GPU continues on
    # the CPU), as a search's workers may: not what the runs compute.
    given, recorded = flatten_config(given), flatten_config(recorded)
    differing = {key: (given.get(key), recorded.get(key)) for key in sorted(given.keys() | recorded.keys())
                 if given.get(key) != recorded.get(key)
                 and not key.removeprefix("config.").startswith(RESUME_FREE_KEYS)}
    if differing:
        raise CnnlabError(f"'{out}' holds a transfer ladder run with other settings ({differences_text(differing)}), "
                          "so its runs cannot be continued with these. Repeat that command (more --per-class sizes or "
                          "--seeds are fine, and so are another train.device, train.threads and log.*), or choose "
                          "another --out.")


def _loaded_source_head(folder: RunFolder) -> bool:
    """Whether the run in ``folder`` may have started from the source's classifier, as its init.json (what
    model.init_from loaded and kept fresh) records: the classifier kept fresh is listed as skipped. A record
    that is missing or cannot be read cannot rule it out."""
    import json

    try:
        record = json.loads(folder.init.read_text(encoding="utf-8"))
        return not record.get("skipped")
    except (OSError, ValueError, AttributeError):
        return True


def check_old_heads(out: Path, configs: dict[tuple[int, int, str], RunConfig]) -> None:
    """Refuse to continue a ladder in ``out`` that holds 'top' or 'all' runs trained before the rungs set
    model.new_head, where such a run started from the source's classifier (its init.json shows it loaded).

    Those runs, finished (read back) or half-finished (resumed as their config.yaml records it), trained
    another rung than the one asked for now: mixed with new runs, a table's 'top' and 'all' would average
    two recipes without a word. They are not retrained here, as a finished run is the user's result:
    the message names them and the way out. A run that kept the classifier fresh anyway (the target has other
    classes than the source) trained what the rung trains now, and is read back as before."""
    old = []
    for (size, seed, rung), config in configs.items():
        folder = RunFolder(out / run_place(size, seed, rung))
        if not config.model.new_head or not (folder.report.is_file() or folder.last.is_file()):
            continue  # the rung keeps no head, or nothing was trained there: a new run starts
        try:
            recorded = folder.read_config()
        except CnnlabError:  # not this check's to report: train_rung reads the folder and says what is wrong
            continue
        if not recorded.model.new_head and _loaded_source_head(folder):
            old.append(folder.path)
    if not old:
        return
    shown = " ".join(shlex.quote(str(path)) for path in old)
    raise CnnlabError(
        f"'{out}' holds {counted(len(old), 'run')} of 'top' or 'all' trained before the ladder gave those rungs a new "
        f"head: their {CONFIG_FILE} has no model.new_head=true and their {INIT_FILE} shows they started from the source's "
        "classifier, while the rungs now always start from a new one (model.new_head=true), so the table would mix "
        "the two recipes. Finished runs are not retrained without being asked: delete those run folders and run the "
        f"same command again to retrain them with a new head (rm -r {shown}), or give another --out to start the "
        "ladder afresh.")


def check_old_head_rates(out: Path, configs: dict[tuple[int, int, str], RunConfig]) -> None:
    """Refuse to continue a ladder in ``out`` that holds 'all' runs trained before the head's pretrained layers
    trained at the pretrained rate: earlier versions trained the layers model.init_from loads into the head
    besides its classifier (lenet5's, alexnet's and vgg's hidden fully connected layers, googlenet's auxiliary
    heads, convnext's last norm) at optim.lr, this one at optim.backbone_lr_mult times it.

    Such a run is told by its last checkpoint: its optimiser's parameter groups have the sizes the earlier
    version built for its recorded model and config, not this version's
    (:func:`cnnlab.train.finetune.checkpoint_predates_head_rates`). A model whose head is the classifier alone
    trains the same in both versions, and its runs are read back as before. Finished runs are not retrained
    without being asked (as :func:`check_old_heads`); a half-finished one could not resume either."""
    from cnnlab.train.finetune import checkpoint_predates_head_rates

    old = []
    for (size, seed, rung), config in configs.items():
        if rung != ALL or config.optim.backbone_lr_mult == 1.0:
            continue  # 'scratch' loads no weights and 'top' trains its stage and head at optim.lr: no rate changed
        folder = RunFolder(out / run_place(size, seed, rung))
        if not folder.last.is_file():
            continue  # nothing was trained there (a finished run keeps its last checkpoint): a new run starts
        try:
            if checkpoint_predates_head_rates(folder.last):
                old.append(folder.path)
        except CnnlabError:  # not this check's to report: train_rung reads the folder and says what is wrong
            continue
    if not old:
        return
    shown = " ".join(shlex.quote(str(path)) for path in old)
    raise CnnlabError(
        f"'{out}' holds {counted(len(old), 'run')} of 'all' trained by an earlier cnnlab, which trained the head's "
        "pretrained layers (the layers model.init_from loaded into the head besides its classifier) at optim.lr: "
        "their last checkpoint's optimiser groups show it. This version trains them at the pretrained rate "
        "(optim.backbone_lr_mult times optim.lr), so the table would mix the two recipes. Finished runs are not "
        "retrained without being asked: delete those run folders and run the same command again to retrain them "
        f"(rm -r {shown}), or give another --out to start the ladder afresh.")


# ---------------------------------------------------------------------------------------------
# the ladder


@stop_between_runs()  # a Ctrl-C or SIGTERM between rungs stops before the next training rung starts
@keeps_thread_setting  # the rungs' evaluations and the probe's features tick (cnnlab.threads) outside train()
def run_transfer(source: str, data: DataConfig | str, base: RunConfig, *, per_class: list[int] | int | str,
                 seeds: int, out: Path, similarity: Optional[str], steps: int, head_first: float = HEAD_FIRST,
                 all_lr_mult: Optional[float] = None, console=None, device=None,
                 rungs: tuple[str, ...] = RUNGS, count: Optional[RunCount] = None, label: str = "",
                 width: int = 0, model_named: bool = True) -> TransferResult:
    """Run the four rungs at each size and seed into ``out``; write transfer.json and transfer.png.

    ``data`` is the target data, a DataConfig or a spec such as 'digits' (the source's image size and channels are
    filled in); ``per_class`` the sizes in images per class (a list, one number, or text such as '10,100'); ``base`` the
    training settings every training rung starts from (recipes/transfer-finetune.yaml). Seeds are
    0..seeds-1: each sets data.seed (the subset, and the validation hold-out; the test split stays the same) and
    train.seed.
    ``all_lr_mult``: the factor of the pretrained weights' rate in 'all' (1: the head's rate); None takes
    ``base``'s optim.backbone_lr_mult, or the lecture's tenth when that is left at 1.
    ``console`` (a rich Console) gets one line per finished rung; a training rung's line starts with its place
    among the ladder's training runs, "run 3 of 12" (sizes x seeds x training rungs; a run read back from an
    earlier call counts, and its line says "read back" where the time was). The probe trains no network: its line
    is not counted, and leaves that column blank. Each line names its run as its folder in ``out`` does,
    SIZE/seedK/RUNG (:func:`rung_name`). ``count``: the count to number the lines by, the ladder's own by default
    (an experiment passes its own, planned over all its runs); ``label``: the ladder's folder in an experiment's,
    put before each run's name ("similar/3/seed0/scratch"); ``width``: the least width of the names' column (an
    experiment aligns the lines of all its ladders). Ctrl-C stops after the current
    step with the run saved (KeyboardInterrupt is raised); the same call continues. Each note and warning
    on stderr is shown once (:func:`cnnlab.config.quiet_notes`), as an experiment's are: every rung loads
    the same data and would repeat its notes and the warning that names the files it skipped.
    ``rungs``: the rungs to run, all four by default (the table and the winners then read those alone); the
    from-scratch experiment runs 'scratch' and 'all' only. The runs' places and settings do not depend
    on it, so a ladder continued with more rungs reads back the ones it ran.
    ``model_named``: whether ``base``'s model.name was chosen (False: cnnlab's default, which the command line
    leaves when neither --config nor --set names a model): a torchvision weights file, which does not record its
    architecture, is then refused with a request to name it, not tried as the default model.
    """
    from cnnlab.config import quiet_notes

    with quiet_notes():
        return _run_transfer(source, data, base, per_class=per_class, seeds=seeds, out=out, similarity=similarity,
                             steps=steps, head_first=head_first, all_lr_mult=all_lr_mult, console=console,
                             device=device, rungs=rungs, count=count, label=label, width=width,
                             model_named=model_named)


def _run_transfer(source: str, data: DataConfig, base: RunConfig, *, per_class: list[int], seeds: int, out: Path,
                  similarity: Optional[str], steps: int, head_first: float, all_lr_mult: Optional[float], console,
                  device, rungs: tuple[str, ...] = RUNGS, count: Optional[RunCount] = None,
                  label: str = "", width: int = 0, model_named: bool = True) -> TransferResult:
    """:func:`run_transfer`, its notes on stderr as they come."""
    from cnnlab.io import check_out_is_named, check_output_folder

    started = time.perf_counter()
    sizes = parse_sizes(per_class)
    data = target_data(data)  # a spec such as 'digits', as probe() takes it
    check_request(data, base, similarity, seeds, steps, head_first, all_lr_mult, rungs)
    rungs = tuple(rung for rung in RUNGS if rung in rungs)  # the ladder's order, each once
    check_out_is_named(out, "the ladder's runs and results", "Name a folder for the ladder.", name="out")
    out = Path(out)
    check_output_folder(out, "--out", holds_runs=True)
    check_not_a_run(out, source)
    say: Callable[[str], None] = (lambda text: console.print(text, highlight=False, markup=False)) if console else (
        lambda text: None)
    source_net = load_probe_source(source, base.model.name if model_named else None, device or base.train.device,
                                   ema=base.model.init_ema,
                                   ema_given_as="model.init_ema=true")
    source_spec = str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists() else str(source)
    check_model_keys(base, source_net)
    check_rung_setup(base)
    freeze = top_freeze(source_net.model)
    # Each rung's run records the data's paths absolute (record_paths), and its notes and skipped-files warning
    # name them so: the ladder's own load reads the same paths, so that quiet_notes shows each text once
    classes, has_test, skipped = check_sizes(source_net, record_paths(replace(base, data=data)).data, sizes, seeds)
    split = "test" if has_test else "val"
    budgets = {size: budget_for(size * len(classes), base.train.batch_size, steps) for size in sizes}
    configs = {(size, seed, rung): rung_config(base, rung, source=source_net, source_spec=source_spec, data=data,
                                               size=size, seed=seed, budget=budgets[size], freeze=freeze,
                                               head_first=head_first, all_lr_mult=all_lr_mult)
               for size in sizes for seed in range(seeds) for rung in TRAINING_RUNGS
               if rung in rungs}  # all checked before training
    lr_mult = pretrained_lr_mult(base, all_lr_mult)
    settings = _settings(source_net, data, base, steps, similarity, head_first, lr_mult)
    _check_resume(out, settings)
    check_old_heads(out, configs)
    check_old_head_rates(out, configs)
    check_output_folder(out, "--out", create=True)
    notes = [f"equal budgets: every training rung runs about {steps} optimiser steps at every size (epochs = "
             f"ceil({steps} / steps per epoch), batch = min({base.train.batch_size}, images)), so small sizes are "
             "not starved",
             f"'top' freezes model.freeze={freeze} (everything below the top stage) and trains the top stage at "
             f"the head's rate; 'all' trains the pretrained weights at optim.backbone_lr_mult={lr_mult:g} ("
             + ("--all-lr-mult" if all_lr_mult is not None else "the config's" if base.optim.backbone_lr_mult != 1.0
                else "the lecture's tenth; --all-lr-mult sets another") + "), the only rung the multiplier acts in"
             + (f"; optim.layer_decay={base.optim.layer_decay:g} (each stage that factor of the rate of the one above "
                "it) acts in 'all' only too" if base.optim.layer_decay != 1.0 else ""),
             f"'top' and 'all' train the new head alone for the first {head_first:.0%} of their epochs (head-only "
             "epochs per size: " + ", ".join(f"{size}: {head_first_epochs(budgets[size], head_first)} of "
                                             f"{budgets[size].epochs}" for size in sizes) + ")",
             f"accuracy on the {split} split" + ("" if has_test else " (the data has no test split; the val split "
                                                 "also chose each run's checkpoint and the probe's C, so it is "
                                                 "optimistic)") +
             "; seconds: wall-clock time of each training run (its validation and checkpoints included), or the "
             "probe's feature extraction (training images) and fit"]
    if base.model.init_ema:
        notes.append("'probe', 'top' and 'all' reuse the source's EMA weights (model.init_ema), not its raw ones")
    if base.train.bn_eval != "off":
        notes.append(f"train.bn_eval={base.train.bn_eval} acts in 'top' and 'all' only: 'scratch' trains a fresh "
                     "network, whose BatchNorm statistics have nothing to keep (train.bn_eval=off there)")
    ladder_epochs = {size: budgets[size].epochs for size in sizes}
    if any(epochs != base.train.epochs for epochs in ladder_epochs.values()):
        # The template's train.epochs (recipes/transfer-finetune.yaml's placeholder, or cnnlab's default) is
        # replaced by the equal budgets: said here, so a value given on purpose is not dropped without a word.
        notes.append(f"the config's train.epochs={base.train.epochs} is not used: the equal budgets set each "
                     "training rung's epochs (per size: " + ", ".join(f"{size}: {epochs}" for size, epochs
                                                                      in ladder_epochs.items())
                     + "); --steps sets their length")
    # the note is about 'scratch' (the rungs that reuse the source never whiten again): said only when it runs
    whiten = configs[(sizes[0], 0, SCRATCH)].model.whiten if SCRATCH in rungs else "none"
    if whiten != "none":
        notes.append(f"model.whiten={whiten}: 'scratch' whitens its first conv from the target's training images; "
                     "'top' and 'all' load the source's whitened filters as weights (model.whiten=none), which 'top' "
                     "keeps frozen with the stages below its top stage and 'all' trains at the pretrained rate")
    if skipped:
        from cnnlab.data.sources import CsvRow

        # counted as the data's warning counts them (files and CSV rows apart), with the rest of the results
        rows = sum(1 for name, _ in skipped if isinstance(name, CsvRow))
        left_out = " and ".join(counted(count, noun) for count, noun in ((len(skipped) - rows, "file"),
                                                                          (rows, "CSV row")) if count)
        notes.append(f"the target data left out {left_out} (the warning names the first few, with why); --json and "
                     f"{RESULT_FILE} name each under skipped")
    if similarity is not None and len(sizes) < 2:
        notes.append("one size only: the lecture's table compares little data (the smallest size) with a lot (the "
                     "largest); give two sizes or more to compare")
    count = count if count is not None else RunCount()
    count.expect(len(configs))  # the ladder's training runs, unless the caller planned its own total (an experiment)
    # the names' column: as wide as the widest name (the widest size, seed and rung) or the caller's width
    width = max(width, *(len(rung_name(label, sizes[-1], seeds - 1, rung)) for rung in rungs))
    runs: list[RungRun] = []
    earlier = _recorded_runs(out)
    recorded = _seconds_of(earlier)
    planned = {run_place(size, seed, rung).as_posix() for size, seed, rung in configs}

    def record(stopped: Optional[RungRun] = None) -> dict:
        # the runs this call reached (and ``stopped``, the run a Ctrl-C stopped part-way, with its seconds so far),
        # then the earlier call's records of the planned runs it has not reached yet: a call stopped part-way must
        # not drop them, or the next would find no seconds for runs it reads back (an earlier call's runs outside
        # this plan, another size, are no part of this ladder's record)
        mine = [_run_record(run, out) for run in (runs if stopped is None else [*runs, stopped])]
        reached = {entry["run_dir"] for entry in mine if entry.get("run_dir")}
        later = [entry for place, entry in earlier.items()
                 if place.as_posix() in planned and place.as_posix() not in reached]
        return {"settings": settings, "runs": mine + later, RUN_DIRS_KEY: RUN_DIRS_RELATIVE}

    for size in sizes:
        for seed in range(seeds):
            for rung in rungs:
                stopping = False  # Ctrl-C in the last step of a run that finished: record and show it, then stop
                if rung == PROBE:
                    run = probe_rung(source_net, data, size, seed, split)
                else:
                    place = run_place(size, seed, rung)
                    try:
                        run = train_rung(configs[(size, seed, rung)], out / place, split, rung, budgets[size].steps,
                                         recorded.get(place))
                    except StoppedAfterRun as stop:
                        run, stopping = stop.run, True
                    except StoppedInRun as stop:
                        _write_json(out / RESULT_FILE, {**record(stop.run), "finished": False})
                        raise KeyboardInterrupt from None
                runs.append(run)
                _write_json(out / RESULT_FILE, {**record(), "finished": False})
                place = count.uncounted() if rung == PROBE else count.finished()  # the probe trains no network
                say(rung_line(place, rung_name(label, size, seed, rung), run, split, width))
                if stopping:
                    raise KeyboardInterrupt
    table = summarise(runs, sizes, rungs)
    result = TransferResult(
        source=str(source), model=source_net.model_name, data=data.spec, classes=classes, similarity=similarity,
        metric_split=split, sizes=sizes, seeds=seeds, steps=steps, budgets=budgets, freeze_top=freeze,
        all_lr_mult=lr_mult, runs=runs,
        table=table, verdicts=verdicts(table, sizes, similarity), notes=notes, seconds=time.perf_counter() - started,
        files={"json": str(out / RESULT_FILE), "plot": str(out / PLOT_FILE)}, skipped=skipped_records(skipped))
    save_transfer_plot(result, out / PLOT_FILE)
    # the result's fields, with the runs as the file records them (record(): their folders relative to out)
    # files as well: named relative to out, where the file lies, so that the record stays true when out moves
    _write_json(out / RESULT_FILE, {**result.to_dict(), **record(), "files": {"json": RESULT_FILE, "plot": PLOT_FILE},
                                    "finished": True})
    return result


def rung_name(label: str, size: int, seed: int, rung: str) -> str:
    """A rung's run as its line names it: its folder in the ladder's, SIZE/seedK/RUNG (:func:`run_place`; the
    probe has none, and is named alike), after ``label`` (an experiment's ladder folder) when there is one."""
    place = run_place(size, seed, rung).as_posix()
    return f"{label}/{place}" if label else place


def rung_line(place: str, name: str, run: RungRun, split: str, width: int = 0) -> str:
    """A finished rung's line, as an experiment's run line reads (:func:`cnnlab.experiments.training.run_line`):
    ``place`` ("run 3 of 12", blank for the probe), ``name`` (:func:`rung_name`, padded to ``width``), the
    ``split``'s accuracy ("diverged" without one) and the time; "read back" stands where the time was for a run
    an earlier call finished (the time it recorded stays in transfer.json). The widest, "run 121 of 121
    different/100/seed9/scratch  test 100.00%  59 min 59 s", is 70 columns."""
    shown = "diverged" if run.test_acc is None else f"{split} {run.test_acc:.2%}"
    ending = "read back" if run.status == "read" else duration_text(run.seconds)
    return f"{place}  {name:<{width}}  {shown}  {ending}"


def _run_record(run: RungRun, out: Path) -> dict:
    """A run as transfer.json records it: its folder relative to the ladder's folder ``out`` (RUN_DIRS_KEY)."""
    record = asdict(run)
    if run.run_dir:
        record["run_dir"] = Path(run.run_dir).relative_to(out).as_posix()
    return record


def _recorded_runs(out: Path) -> dict[Path, dict]:
    """A run's place in the ladder (:func:`run_place`) -> the record an earlier call wrote for it in
    transfer.json, its ``run_dir`` given as that place (as :func:`_run_record` writes it). Runs without a folder
    (the probe) are left out; an unreadable file reads as no records.

    A transfer.json written before run folders were recorded relative to the ladder's folder names each run
    as the call that trained it named it, relative to that call's working folder or absolute; in the ladder's
    own file that path ends in the run's place (SIZE/seedK/RUNG) wherever the folder was then, so that is
    compared (:func:`cnnlab.run.recorded_place`), and a moved or copied ladder still finds its records."""
    import json

    try:
        recorded = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
        relative = recorded.get(RUN_DIRS_KEY) == RUN_DIRS_RELATIVE
        runs = {}
        for run in recorded.get("runs") or []:
            if not run.get("run_dir"):
                continue
            path = Path(run["run_dir"])
            place = path if relative else recorded_place(path, _PLACE_PARTS)
            runs[place] = {**run, "run_dir": place.as_posix()}
        return runs
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _seconds_of(runs: dict[Path, dict]) -> dict[Path, float]:
    """A run's place -> the wall-clock seconds recorded for it (:func:`_recorded_runs`), for the runs that did
    not diverge (a diverged run trains again)."""
    seconds = {}
    for place, run in runs.items():
        try:
            if run.get("status") != "diverged":
                seconds[place] = float(run["seconds"])
        except (KeyError, TypeError, ValueError):
            continue
    return seconds


def _write_json(path: Path, data: dict) -> None:
    from cnnlab.io import write_json_atomic

    write_json_atomic(path, data, "the transfer results")


def save_transfer_plot(result: TransferResult, path: Path) -> Path:
    """Accuracy against images per class (log x), one line per rung with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from cnnlab.io import save_png

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for rung in RUNGS:
        rows = [row for row in result.table if row.rung == rung and row.test_mean is not None]
        if rows:
            axis.errorbar([row.size for row in rows], [100 * row.test_mean for row in rows],
                          yerr=[100 * (row.test_std or 0.0) for row in rows], marker="o", capsize=3,
                          label=f"{rung}: {result.rung_texts()[rung]}")
    axis.set_xscale("log")
    axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured sizes are labelled
    axis.set_xticks(result.sizes, [str(size) for size in result.sizes])
    axis.set_xlabel("training images per class")
    axis.set_ylabel(f"{result.metric_split} accuracy (%), mean ± std over {counted(result.seeds, 'seed')}")
    similarity = f", {result.similarity} data" if result.similarity else ""
    axis.set_title(f"{result.model} from {Path(result.source).name} on {result.data}{similarity}", fontsize=10,
                   parse_math=False)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_png(figure, path, "the transfer plot")
