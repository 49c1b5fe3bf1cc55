"""What the training experiments share: run folders per (setting, seed), seed statistics, verdict
helpers that weigh a difference against the spread over seeds, and line plots.

Runs. :func:`train_settings` trains every setting at every seed as an ordinary run of
:func:`cnnlab.train.engine.train` in ``OUT/runs/SETTING/seedK`` (seed-major: all settings of seed 0
first, so an interrupted experiment has comparable runs early). A finished run (its report.txt
written) is read back, not retrained; a half-finished one resumes from its last checkpoint. Ctrl-C
stops the current run at the next step with its checkpoint saved and raises KeyboardInterrupt: the
same command continues.

Verdicts on training claims. Runs are noisy, so a training claim is decided on the mean over seeds
and its spread (the sample standard deviation), with at least :data:`MIN_SEEDS` seeds:

* "A beats B" (:func:`better`) HOLDS when A's mean is ahead by more than the larger of the two
  spreads and more than the experiment's minimum margin; DOES NOT HOLD when B is ahead by as much;
  INCONCLUSIVE in between, or with fewer than 3 seeds (tiny runs one).
* "A and B are alike" (:func:`alike`) HOLDS when the means differ by at most the tolerance plus the
  larger spread and that spread is at most the tolerance; DOES NOT HOLD when they differ by more;
  INCONCLUSIVE when the runs vary by more than the tolerance, or with fewer than 3 seeds. Two measurements
  of the same nets (``differences``) are judged by their per-net differences, whose spread the nets' cancels.
* "A is no worse than B" (:func:`no_worse`) HOLDS when A is ahead, level, or behind by at most the larger
  spread and at most the tolerance; DOES NOT HOLD when behind by more than the spread; INCONCLUSIVE in
  between, or with fewer than 3 seeds.
* A best setting by validation accuracy is picked among those none of whose seeds diverged
  (:func:`diverged_anywhere`).
* Nothing learned (:func:`unless_learned`): a comparison of settings that learned nothing compares two
  chance-level scores, whose difference is noise however it falls. A setting *learned* when its mean final
  validation accuracy is at least chance (1 / classes) plus :data:`LEARNED_MARGIN`; a HOLDS or DOES NOT
  HOLD becomes INCONCLUSIVE, with the reason, when no setting of a difference the check compares learned
  (for "A beats B", neither A nor B; for "A's drop is smaller than B's", the two settings of either drop).
  One setting that learned against one that did not is a real difference and is decided as usual.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from cnnlab.config import RunConfig, config_from_dict, quiet_notes
from cnnlab.errors import CnnlabError, counted
from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, SIZES, Check, RunContext
from cnnlab.io import save_png
from cnnlab.run import RunFolder
from cnnlab.text import LINE_COLUMNS, duration_text
from cnnlab.train.between_runs import stop_if_held

MIN_SEEDS = 3  # training claims are decided on at least this many seeds
# A setting "learned" when its mean final validation accuracy beats chance (1 / classes) by at least this. A
# chance-level score moves by sqrt(p (1 - p) / n) with n validation images, p = 1 / classes: 1.8 points on
# digits' 269 (p = 0.1), 1.2 on the 600 held out of Fashion-MNIST, and still 6 points at p = 0.5 on 70 images,
# so 20 points is beyond any chance-level score (and any one-class guess on balanced data), while every
# recipe of the experiments that trains at all clears it by far. bn-lr's "a rate trains" is the same rule.
LEARNED_MARGIN = 0.20
ROUNDING = 1e-9  # how far below the line a mean may lie by floating-point rounding alone (_learned)
LEARNED_RULE = (f"Nothing learned: a setting learned when its mean final validation accuracy is at least chance "
                f"(1 / classes) + {LEARNED_MARGIN * 100:g} points; a comparison in which no setting learned (in a "
                "comparison of two drops or gaps, no setting of either one) is INCONCLUSIVE, never HOLDS or DOES NOT "
                "HOLD.")  # each training experiment's rule ends with it (unless_learned)
RUNS_FOLDER = "runs"  # OUT/runs/SETTING/seedK
TRAINED, READ, DIVERGED = "trained", "read", "diverged"


@dataclass
class RunOutcome:
    """One training run of one setting at one seed, as the experiment's table shows it."""

    setting: str
    seed: int
    run_dir: str
    status: str  # trained | read (finished earlier, read back) | diverged (non-finite loss)
    epochs: int = 0
    train_loss: Optional[float] = None  # the last epoch's mean training loss (training mode: augmentation, dropout)
    train_acc: Optional[float] = None  # the last epoch's training accuracy, same conditions
    val_loss: Optional[float] = None  # the last epoch's validation loss
    val_acc: Optional[float] = None  # the last epoch's validation accuracy
    best_val_acc: Optional[float] = None
    test_acc: Optional[float] = None  # the best checkpoint (by val accuracy) on the test split; None: not scored
    seconds: Optional[float] = None  # training time: the sum of the epochs' times
    curve: list[dict] = field(default_factory=list, repr=False)  # metrics.csv rows, one per epoch
    # diverged in an earlier call: read back, not trained again (it would diverge again)
    diverged_before: bool = field(default=False, repr=False)

    def row(self, **extra) -> dict[str, Any]:
        """The table row: everything but the curve and ``diverged_before``, with ``extra`` columns (the setting's
        values) first."""
        values = {k: v for k, v in asdict(self).items() if k not in ("curve", "diverged_before")}
        return {"setting": self.setting, **extra, **{k: v for k, v in values.items() if k != "setting"}}


def data_problem(dataset, *, per_class: Optional[int] = None, model: Optional[str] = None,
                 test_split: bool = False, runs: Sequence[RunConfig] = (), size: Optional[str] = None,
                 runs_at: Optional[Callable[[str], Sequence[RunConfig]]] = None) -> Optional[str]:
    """Why a training experiment cannot use ``dataset`` (a loaded cnnlab DataSet), in words; None when it can.

    Checks: at least 2 classes; ``per_class`` training images in every class (the smallest subset the
    experiment trains on); images at least ``model``'s smallest input; a test split when ``test_split``;
    and for each of ``runs`` (the configs the experiment trains at the chosen size, on this data) that
    its training split, after the validation hold-out and data.train_per_class, as the engine counts
    it, fills at least one batch of train.batch_size (the engine drops the last partial batch).

    ``runs_at`` (a size -> the configs the experiment trains at that size on this data) with ``size``
    stands for ``runs``: the configs at ``size`` are checked, and when they do not fill a batch the
    advice names the other sizes whose configs do (``--size tiny``). Without it, or when no other
    size fits (on data other than its default, an experiment often trains every size on all the
    training images at one batch size), the advice is about the data alone.
    """
    import torch

    if dataset.num_classes < 2:
        return f"it has {dataset.num_classes} class, and a classifier needs at least 2"
    if per_class is not None:
        counts = torch.bincount(torch.as_tensor(dataset.train.labels), minlength=dataset.num_classes)
        smallest = int(counts.min())
        if smallest < per_class:
            return (f"its class '{dataset.classes[int(counts.argmin())]}' has {counted(smallest, 'training image')}, "
                    f"and the experiment trains on a class-balanced subset of {per_class} per class at its smallest size")
    if model is not None:
        from cnnlab.models import model_info

        side = model_info(model).min_size
        if dataset.image_size < side:
            return (f"its images are {dataset.image_size}x{dataset.image_size} pixels, and {model} (the experiment's "
                    f"network) needs at least {side}x{side}")
    if test_split and (dataset.test is None or len(dataset.test) == 0):
        return ("it has no test split: the models are scored on test images that no run was trained or selected on "
                "(give data with a test split)")
    if runs_at is None:
        return _batch_problem(runs)
    problem = _batch_problem(runs_at(size))
    if problem is None:
        return None
    fitting = [other for other in SIZES if other != size and _batch_problem(runs_at(other)) is None]
    if fitting:
        problem += f", or choose --size {' or '.join(fitting)}, whose runs fill their batches on this data"
    return problem


def _batch_problem(runs: Sequence[RunConfig]) -> Optional[str]:
    """Why one of ``runs`` would stop before its first step (a class short of data.train_per_class, or fewer
    training images than one batch), in words, with what to give instead; None when every run has a full
    batch. Whether another --size would do is the caller's to say (:func:`data_problem`)."""
    from dataclasses import replace

    import torch

    from cnnlab.data.sources import load_source

    loaded: dict[str, Any] = {}  # repr(data config without the subset) -> its data set: each is loaded once
    for config in runs:
        whole_config = replace(config.data, train_per_class=None)  # the subset is counted here, not drawn
        key = repr(whole_config)
        if key not in loaded:
            with quiet_notes():
                loaded[key] = load_source(whole_config)  # the same split, hold-out and classes as the runs'
        whole = loaded[key]
        counts = torch.bincount(torch.as_tensor(whole.train.labels), minlength=whole.num_classes)  # (classes,)
        per_class, batch = config.data.train_per_class, config.train.batch_size
        if per_class is not None:
            smallest = int(counts.min())
            if smallest < per_class:
                return (f"its class '{whole.classes[int(counts.argmin())]}' has {counted(smallest, 'training image')} "
                        f"after the validation hold-out, and at this size the experiment trains on a class-balanced "
                        f"subset of {per_class} per class: give data with at least {per_class} training images in every "
                        "class")
            images = per_class * whole.num_classes  # _train_per_class keeps exactly per_class of each class
            if images < batch:
                return (f"it trains on {per_class} images per class of {whole.num_classes} classes, "
                        f"{images} training images, fewer than one batch of {batch} (its batch size): "
                        f"give data with at least {math.ceil(batch / per_class)} classes")
        else:
            images = len(whole.train)
            if images < batch:
                return (f"it trains on all {images} training images (after the validation hold-out), "
                        f"fewer than one batch of {batch} (its batch size): give data with at least {batch} "
                        "training images after the validation hold-out")
    return None


def experiment_config(data: str, sections: dict[str, dict[str, Any]]) -> RunConfig:
    """A RunConfig from config sections (as in a YAML file) on the data spec ``data``; checked like any config.

    Runs draw no curves.png (log.curves; about 0.5 s a run): the experiment's comparison page draws them.
    """
    merged = {section: dict(values) for section, values in sections.items()}
    merged.setdefault("data", {})["spec"] = data
    merged.setdefault("log", {}).setdefault("curves", False)
    return config_from_dict(merged)


def _evaluate(run_dir: Path) -> float:
    """The best checkpoint's accuracy on the test split. Never val in its place: a score named test_acc is a
    test score. An experiment that scores on test refuses data without a test split before it runs
    (:func:`data_problem`, ``test_split``); one that only reports it trains with ``evaluate=False`` there."""
    from cnnlab.transfer.ladder import evaluate_run

    with quiet_notes():
        return evaluate_run(run_dir, "test")[0]


def _outcome(setting: str, seed: int, run_dir: Path, status: str, evaluate: bool = True,
             diverged_before: bool = False) -> RunOutcome:
    from cnnlab.train.engine import read_metrics_rows

    rows = read_metrics_rows(run_dir)
    last = rows[-1] if rows else {}
    vals = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    return RunOutcome(
        setting=setting, seed=seed, run_dir=str(run_dir), status=status, epochs=len(rows),
        train_loss=last.get("train_loss"), train_acc=last.get("train_acc"), val_loss=last.get("val_loss"),
        val_acc=last.get("val_acc"), best_val_acc=max(vals) if vals else None,
        test_acc=_evaluate(run_dir) if evaluate and status != DIVERGED and RunFolder(run_dir).best.is_file() else None,
        seconds=float(sum(r.get("epoch_seconds") or 0.0 for r in rows)), curve=rows,
        diverged_before=diverged_before)


def _diverged_before(folder: RunFolder) -> bool:
    return folder.recorded_state() == "diverged"


def train_or_read(config: RunConfig, run_dir: Path, setting: str, evaluate: bool = True) -> RunOutcome:
    """Train ``config`` into ``run_dir`` (resuming a half-finished run) or read a finished one back.

    ``evaluate``: score the best checkpoint on the test split (a pass over it; claims about training
    alone, and data without a test split, skip it: test_acc stays None).
    """
    from rich.console import Console

    from cnnlab.train.engine import NonFiniteLossError, train

    folder = RunFolder(run_dir)
    seed = config.train.seed
    if folder.report.is_file():
        if evaluate and not folder.best.is_file():
            # Read back without it, the run would have no test accuracy, and its setting's mean and the verdict
            # would leave it out without a word
            raise CnnlabError(
                f"The experiment's run {run_name(setting, seed)} finished earlier, but its best checkpoint "
                f"'{folder.best}' is gone, and the experiment scores each run's best checkpoint on the test split. "
                f"Restore {folder.best.name} from a copy, or delete the folder '{run_dir}' and run the same command "
                "again to train that run anew.")
        return _outcome(setting, seed, run_dir, READ, evaluate)
    if _diverged_before(folder):  # the same config would diverge again
        return _outcome(setting, seed, run_dir, DIVERGED, diverged_before=True)
    quiet = Console(file=io.StringIO())  # the per-epoch lines stay in the run folder
    try:
        with quiet_notes():
            resume = folder.last.is_file()  # half-finished: it continues as its config.yaml records it
            result = train(folder.read_config() if resume else config, run_dir, resume=resume, console=quiet)
    except NonFiniteLossError:
        return _outcome(setting, seed, run_dir, DIVERGED)
    if result.stop_requested:  # Ctrl-C: this run is saved (finished or resumable); no further run starts
        raise KeyboardInterrupt
    return _outcome(setting, seed, run_dir, TRAINED, evaluate)


def train_settings(ctx: RunContext, configs: dict[str, RunConfig],
                   seeds: Optional[Sequence[int]] = None, evaluate: bool = True) -> list[RunOutcome]:
    """Every setting at each seed (train.seed; the data split stays the same), seed-major.

    ``seeds``: the train.seed values; default 0..ctx.seeds-1. ``evaluate``: see :func:`train_or_read`. Each
    finished run is said (``ctx.say``, :func:`run_line`) with its place among the experiment's runs, "run 3 of
    12": these runs are all of them unless the experiment declared its total first (:class:`cnnlab.text.RunCount`).
    """
    seeds = list(range(ctx.seeds) if seeds is None else seeds)
    ctx.runs.expect(len(seeds) * len(configs))  # the experiment's total, unless it declared one (RunCount)
    width = max((len(run_name(setting, seed)) for setting in configs for seed in seeds), default=0)  # aligned
    outcomes = []
    for seed in seeds:
        for setting, config in configs.items():
            seeded = config_from_dict({"train": {"seed": seed}}, base=config)
            run_dir = ctx.out / RUNS_FOLDER / setting / f"seed{seed}"
            started = time.perf_counter()
            outcome = train_or_read(seeded, run_dir, setting, evaluate)
            outcomes.append(outcome)
            ctx.say(run_line(ctx.runs.finished(), outcome, time.perf_counter() - started, evaluate, width))
    return outcomes


def run_name(setting: str, seed: int) -> str:
    """A run as its line names it: its folder under OUT/runs, SETTING/seedK."""
    return f"{setting}/seed{seed}"


def run_line(place: str, outcome: RunOutcome, seconds: float, evaluate: bool = True, width: int = 0) -> str:
    """A finished run's line: ``place`` ("run 3 of 12"), the run (SETTING/seedK, its folder under OUT/runs, padded
    to ``width``), its last epoch's training loss ("loss": the only loss the line shows), one accuracy: the test
    split's when the run is scored there (``evaluate``), else the validation split's, and the time it took here;
    "read back" stands in the time's place for a run an earlier call finished or saw diverge (reading it back takes
    a moment that says nothing about the run). The time ends the line unbracketed, as in the training epochs' lines.

    Made to fit 80 columns for every experiment's longest run name at the most seeds it takes, with the widest
    values (a loss with an exponent, 100.00%, "59 min 59 s"): preact's "run 20 of 20  preact_resnet18/seed9  loss
    3.4e+38, test 100.00%  59 min 59 s" is 76. With the validation accuracy as well that line was 89 columns; the
    table keeps both accuracies of every run."""
    accuracy = f"test {_pct(outcome.test_acc)}" if evaluate else f"val {_pct(outcome.val_acc)}"
    shown = "diverged" if outcome.status == DIVERGED else f"loss {_fmt(outcome.train_loss)}, {accuracy}"
    ending = "read back" if outcome.status == READ or outcome.diverged_before else duration_text(seconds)
    return f"{place}  {run_name(outcome.setting, outcome.seed):<{width}}  {shown}  {ending}"


Measured = TypeVar("Measured")
# A diverged run, or one that kept no best checkpoint. Worded to fit a measure line of 80 columns: "surface 20 of
# 20  resnet56/seed9  " and "  59 min 59 s" leave it 33 columns, which "not measured: no usable checkpoint" overran
NOT_MEASURED = "unmeasured: no usable checkpoint"


def measure_runs(ctx: RunContext, outcomes: Sequence[RunOutcome], what: str,
                 measure: Callable[[RunOutcome], Optional[Measured]],
                 shown: Callable[[Measured], str]) -> list[Measured]:
    """``measure`` on each trained run in order (its outcome -> what it measured; None for a run without a usable
    checkpoint), saying a line as each ends (:func:`measure_line`, "WHAT k of N"): measures that take tens of
    passes over a split per run are not silent for minutes. Returns the measures that are not None.

    A Ctrl-C or SIGTERM held between runs (:mod:`cnnlab.train.between_runs`) stops before the next measure, as it
    stops before the next training run: the trained runs are kept, and the same command measures them again."""
    width = max((len(run_name(o.setting, o.seed)) for o in outcomes), default=0)
    measured = []
    for i, outcome in enumerate(outcomes, start=1):
        stop_if_held()  # a measure takes minutes at full: a stop asked for during the last one waits no longer
        started = time.perf_counter()
        result = measure(outcome)
        if result is not None:
            measured.append(result)
        ctx.say(measure_line(f"{what} {i} of {len(outcomes)}", run_name(outcome.setting, outcome.seed),
                             None if result is None else shown(result), time.perf_counter() - started, width))
    return measured


def measure_line(place: str, name: str, shown: Optional[str], seconds: float, width: int = 0) -> str:
    """A run's measures in one line: ``place`` ("lesions 2 of 6"), the run (SETTING/seedK, padded to ``width``),
    ``shown`` (None: :data:`NOT_MEASURED`) and the time they took, as a run's line ends. Measures wide enough to
    push the line past :data:`LINE_COLUMNS` (a loss surface whose values all need an exponent) go on a second
    line under the run's name, with the time, rather than past the terminal's edge."""
    measures = f"{NOT_MEASURED if shown is None else shown}  {duration_text(seconds)}"
    line = f"{place}  {name:<{width}}  {measures}"
    if len(line) <= LINE_COLUMNS:
        return line
    return f"{place}  {name}\n{' ' * len(place)}  {measures}"


# ---------------------------------------------------------------------------------------------
# statistics over seeds


@dataclass(frozen=True)
class SeedStats:
    """A measure of one setting over its seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation; 0 for one value."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def text(self, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
        """'93.10% ± 0.21 (3 seeds)' with scale=100, unit='%'."""
        if not self.values:
            return "no finished run"
        return (f"{self.mean * scale:.{digits}f}{unit} ± {self.std * scale:.{digits}f} "
                f"({self.n} seed{'s' if self.n != 1 else ''})")


def seed_stats(outcomes: Sequence[RunOutcome], setting: str, key: str) -> SeedStats:
    """``key`` (a RunOutcome field) of ``setting`` over its seeds; diverged runs and missing values left out. A
    diverged run's fields hold its last finished epoch's numbers (finite, and never what it ended with), so its
    status, not the value, leaves it out."""
    return SeedStats(tuple(float(getattr(o, key)) for o in outcomes
                           if o.setting == setting and o.status != DIVERGED and getattr(o, key) is not None
                           and math.isfinite(float(getattr(o, key)))))


def summary_rows(outcomes: Sequence[RunOutcome], settings: Sequence[str], keys: Sequence[str],
                 extra: Optional[dict[str, dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """One row per setting: mean and std over seeds of each key, the seeds that finished and diverged."""
    rows = []
    for setting in settings:
        row: dict[str, Any] = {"setting": setting, **((extra or {}).get(setting, {}))}
        for key in keys:
            stats = seed_stats(outcomes, setting, key)
            row[f"{key}_mean"] = stats.mean if stats.n else None
            row[f"{key}_std"] = stats.std if stats.n else None
        row["seeds"] = sum(1 for o in outcomes if o.setting == setting and o.status != DIVERGED)
        row["diverged"] = sum(1 for o in outcomes if o.setting == setting and o.status == DIVERGED)
        rows.append(row)
    return rows


def better(claim: str, a_name: str, a: SeedStats, b_name: str, b: SeedStats, *, higher: bool = True,
           min_margin: float = 0.0, scale: float = 100.0, unit: str = " points", digits: int = 2) -> Check:
    """"A beats B": by the module's rule (the difference against the larger spread and ``min_margin``).

    ``higher``: whether a larger value is better (accuracy) or a smaller one (loss, error). ``scale``, ``unit``
    and ``digits`` (after the point) only word the margin (accuracy fractions as percentage points by default).
    """
    shown = f"{a_name} {a.text(scale, digits=digits)} vs {b_name} {b.text(scale, digits=digits)}"
    if min(a.n, b.n) < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    ahead = (a.mean - b.mean) if higher else (b.mean - a.mean)
    needed = max(a.std, b.std, min_margin)
    margin = (f"{shown}: {a_name} ahead by {ahead * scale:+.{digits}f}{unit}, needed more than "
              f"{needed * scale:.{digits}f} (the larger spread or the minimum margin {min_margin * scale:.{digits}f})")
    if ahead > needed:
        return Check(claim, HOLDS, margin)
    if -ahead > needed:
        return Check(claim, FAILS, margin)
    return Check(claim, INCONCLUSIVE, margin)


# How every "alike" rule treats noise (:func:`alike`), said in each rule that uses it
ALIKE_NOISE = ("INCONCLUSIVE when they differ by less but that spread is itself above the tolerance (the runs vary "
               "too much to call them alike)")


def alike(claim: str, a_name: str, a: SeedStats, b_name: str, b: SeedStats, *, tolerance: float,
          scale: float = 100.0, unit: str = " points", differences: Optional[SeedStats] = None) -> Check:
    """"A and B are alike": HOLDS when the means differ by at most ``tolerance`` plus the larger spread and that
    spread is at most ``tolerance``; DOES NOT HOLD when they differ by more; INCONCLUSIVE when the runs vary by
    more than the tolerance (noise that wide could hide a real difference) or with fewer than MIN_SEEDS seeds.

    ``differences``: A and B are two measurements of the same nets (a net's test pass and its sub-networks'
    average; its accuracy on shifted and unshifted images), and these are A - B per net. The nets' spread is
    shared by A and B and cancels in their difference, so the rule reads the differences instead: their mean's
    size against the tolerance plus their spread, and their spread against the tolerance."""
    shown = f"{a_name} {a.text(scale)} vs {b_name} {b.text(scale)}"
    seeds = min(a.n, b.n) if differences is None else differences.n
    if seeds < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    if differences is None:
        gap, spread, which = abs(a.mean - b.mean), max(a.std, b.std), "the larger spread"
    else:
        gap, spread, which = abs(differences.mean), differences.std, "the spread of the per-net differences"
        shown += f", per net {differences.text(scale)}"
    allowed = tolerance + spread
    margin = (f"{shown}: gap {gap * scale:.2f}{unit}, allowed {allowed * scale:.2f} "
              f"(tolerance {tolerance * scale:.2f} + {which})")
    if gap > allowed:
        return Check(claim, FAILS, margin)
    if spread > tolerance + ROUNDING:  # a spread of exactly the tolerance is within it
        return Check(claim, INCONCLUSIVE, f"{margin}; {which} is above the tolerance: the runs vary too much to "
                                          "call them alike")
    return Check(claim, HOLDS, margin)


def no_worse(claim: str, a_name: str, a: SeedStats, b_name: str, b: SeedStats, *, tolerance: float,
             higher: bool = True, scale: float = 100.0, unit: str = " points") -> Check:
    """"A is no worse than B": HOLDS when A is ahead, level, or behind by at most the larger spread and at most
    ``tolerance``; DOES NOT HOLD when A is behind by more than the larger spread; INCONCLUSIVE in between (behind
    by more than the tolerance but within the spread: the runs vary too much to tell) or with fewer than
    MIN_SEEDS seeds. ``higher``: whether a larger value is better (accuracy) or a smaller one (error)."""
    shown = f"{a_name} {a.text(scale)} vs {b_name} {b.text(scale)}"
    if min(a.n, b.n) < MIN_SEEDS:
        return Check(claim, INCONCLUSIVE, f"{shown}: fewer than {MIN_SEEDS} seeds decide nothing")
    behind = (b.mean - a.mean) if higher else (a.mean - b.mean)
    spread = max(a.std, b.std)
    leader, lead = (b_name, behind) if behind > 0 else (a_name, -behind)
    standing = f"{leader} ahead by {lead * scale:.2f}{unit}" if lead else "level"
    margin = (f"{shown}: {standing}; {a_name} may be behind by at most the larger spread {spread * scale:.2f} and "
              f"the tolerance {tolerance * scale:.2f}")
    if behind > spread:
        return Check(claim, FAILS, margin)
    if behind > tolerance + ROUNDING:  # exactly the tolerance is within it, float rounding aside
        return Check(claim, INCONCLUSIVE, f"{margin}: behind by more than the tolerance, within the spread")
    return Check(claim, HOLDS, margin)


# How every "best by validation" choice treats divergence (:func:`diverged_anywhere`), said in each rule that picks
PICK_RULE = "a setting that diverged on any seed is not picked (its finished seeds alone would flatter it)"


def diverged_anywhere(outcomes: Sequence[RunOutcome], setting: str) -> bool:
    """Whether some seed of ``setting`` diverged. A choice of the best setting by validation passes over it: a
    setting that diverged on two seeds of three has one finished seed's mean, which decides nothing and makes
    every comparison with it INCONCLUSIVE (:data:`PICK_RULE`)."""
    return any(o.setting == setting and o.status == DIVERGED for o in outcomes)


def learned(outcomes: Sequence[RunOutcome], setting: str, chance: float) -> bool:
    """Whether ``setting``'s mean final validation accuracy (finished seeds) is at least ``chance`` +
    :data:`LEARNED_MARGIN`. No finished seed, or an unknown chance (NaN), is not learning."""
    return _learned(seed_stats(outcomes, setting, "val_acc"), chance)


def _learned(val_acc: SeedStats, chance: float) -> bool:
    # "At least" up to the last bit: 0.1 + 0.2 is 0.30000000000000004 in floating point, so a mean of exactly
    # 30% on 10 classes would miss the line by a rounding error. 1e-9 is far below one image of any split.
    return val_acc.n > 0 and val_acc.mean >= chance + LEARNED_MARGIN - ROUNDING


def unless_learned(check: Check, outcomes: Sequence[RunOutcome], chance: float,
                   *differences: Sequence[str]) -> Check:
    """``check`` by the shared rule on nothing learned (module docstring): INCONCLUSIVE, with the validation
    accuracies that say why, when it decided (HOLDS or DOES NOT HOLD) and no setting of one of the
    ``differences`` it compares learned; otherwise ``check`` itself. ``differences``: the settings of each
    difference, ``("a", "b")`` for "A beats B"; ``chance``: 1 / the number of classes (:func:`chance_level`)."""
    return unless_any_learned(check, chance, *({setting: seed_stats(outcomes, setting, "val_acc")
                                                for setting in settings} for settings in differences))


def unless_any_learned(check: Check, chance: float, *differences: dict[str, SeedStats]) -> Check:
    """:func:`unless_learned` on validation accuracies given per seed: each of ``differences`` maps the names
    of its sides to their final val accuracies (for trials, a study's best), over the seeds."""
    if check.verdict == INCONCLUSIVE:
        return check
    for sides in differences:
        if not any(_learned(stats, chance) for stats in sides.values()):
            return Check(check.claim, INCONCLUSIVE,
                         f"{check.margin}; but it compares settings that learned nothing: mean final val accuracy "
                         f"{_val_text(sides)}, none at least chance {_chance_text(chance)} + "
                         f"{LEARNED_MARGIN * 100:g} points")
    return check


def unless_each_learned(check: Check, outcomes: Sequence[RunOutcome], chance: float, settings: Sequence[str]) -> Check:
    """``check``, INCONCLUSIVE when it decided and one of ``settings`` did not learn by the shared line
    (:data:`LEARNED_MARGIN`). Stricter than :func:`unless_learned`, which asks one side to have learned: for a
    measure read at each setting's trained minimum (loss-surface's slices and curvature), where a net that did not
    train has no minimum to compare yet."""
    if check.verdict == INCONCLUSIVE:
        return check
    sides = {setting: seed_stats(outcomes, setting, "val_acc") for setting in settings}
    short = [setting for setting, stats in sides.items() if not _learned(stats, chance)]
    if short:
        return Check(check.claim, INCONCLUSIVE,
                     f"{check.margin}; but it compares trained minima and {' and '.join(short)} did not learn: mean "
                     f"final val accuracy {_val_text(sides)}, each needed at least chance {_chance_text(chance)} + "
                     f"{LEARNED_MARGIN * 100:g} points")
    return check


def _val_text(sides: dict[str, SeedStats]) -> str:
    return ", ".join(f"{name} {stats.text(100, '%')}" for name, stats in sides.items())


def _chance_text(chance: float) -> str:
    return f"{chance:.1%}" if math.isfinite(chance) else "(unknown: no run kept a checkpoint)"


def chance_level(outcomes: Sequence[RunOutcome]) -> float:
    """1 / the class count of the data the runs trained on, from a run's checkpoint metadata (no weights read);
    NaN when no run has a checkpoint."""
    from cnnlab.run import MetaKey
    from cnnlab.train.checkpoint import read_checkpoint_meta

    for outcome in outcomes:
        folder = RunFolder(Path(outcome.run_dir))
        for path in (folder.last, folder.best):
            if path.is_file():
                return 1.0 / int(read_checkpoint_meta(path, require=(MetaKey.NUM_CLASSES,))[MetaKey.NUM_CLASSES])
    return math.nan


def _fmt(value: Optional[float]) -> str:
    """A loss in a run's line: 0.4123, or 7.5e+35 for a run that blew up (fixed point would print 36 digits). With
    an exponent it keeps two digits: the magnitude is what a blown-up loss tells, and the line fits 80 columns."""
    from cnnlab.train.logging import loss_text

    if value is None:
        return "-"
    text = loss_text(value, 4)
    return loss_text(value, 1) if "e" in text else text  # "e": the exponent form (inf and nan have no "e")


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2%}"


# ---------------------------------------------------------------------------------------------
# plots


def line_plot(path: Path, title: str, panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], *,
              x_label: str = "epoch", y_labels: Optional[dict[str, str]] = None, log_x: bool = False,
              log_y: Sequence[str] = (), bands: Optional[dict[str, dict[str, Sequence[float]]]] = None) -> Path:
    """Lines, one panel per measure: ``panels`` = {panel title: {series name: (xs, ys)}}.

    ``bands`` = {panel: {series: stds}} shades mean ± std around a series (the spread over seeds);
    ``log_y`` names the panels drawn on a log scale. The title states the claim. Written atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for name, (xs, ys) in series.items():
            (line,) = ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, markersize=3, label=name)
            stds = ((bands or {}).get(panel) or {}).get(name)
            if stds is not None:
                lo = [y - s for y, s in zip(ys, stds)]
                hi = [y + s for y, s in zip(ys, stds)]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(x_label)
        if y_labels and panel in y_labels:
            ax.set_ylabel(y_labels[panel])
        # A log scale needs a positive value: a panel whose every run diverged has none, and matplotlib raises
        # when it lays the figure out (empty axes keep their default 0..1 limits)
        if log_x and any(x > 0 for xs, _ in series.values() for x in xs):
            ax.set_xscale("log")
        if panel in log_y and any(y > 0 for _, ys in series.values() for y in ys):
            ax.set_yscale("log")
        if not any(len(xs) for xs, _ in series.values()):
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


def mean_curve(outcomes: Sequence[RunOutcome], setting: str, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of metrics column ``key`` over the setting's seeds, over the epochs all of them reached."""
    curves = [[row.get(key) for row in o.curve] for o in outcomes if o.setting == setting and o.status != DIVERGED]
    if not curves:
        return [], [], []
    length = min(len(c) for c in curves)
    epochs, means, stds = [], [], []
    for i in range(length):
        values = [c[i] for c in curves if c[i] is not None and math.isfinite(c[i])]
        if values:
            epochs.append(i + 1)
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return epochs, means, stds


