"""The experiment framework: a claim from the notes, a verdict rule written before the numbers,
the runs, a table, plots and a verdict.

Verdicts. An experiment checks one or more sub-claims, each with its own verdict (HOLDS, DOES NOT
HOLD or INCONCLUSIVE). The overall verdict is combined by one rule (:func:`combine_verdicts`):

* HOLDS when every check holds;
* DOES NOT HOLD when any check clearly fails;
* INCONCLUSIVE otherwise (no check failed, but at least one could not decide, or none ran).

Files. ``run_experiment`` writes into the output folder ``table.csv``, ``table.json``, the PNG
plots and, last, ``result.json``; every write is atomic. The tables name a run's folder
(``run_dir``) relative to the output folder, so that they stay true when it is moved or copied.
``result.json`` is written only when everything else is on disk, so its presence marks a finished
experiment: a rerun with the same settings returns it without recomputing, and an interrupted run
(Ctrl-C) leaves no result.json and is simply run again.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cnnlab.config import quiet_notes
from cnnlab.errors import CnnlabError, UnknownNameError, counted, first_few, noun_for
from cnnlab.io import atomic_path, hold_folder, save_png
from cnnlab.run import (EXPERIMENT_RESULT_FILE, EXPERIMENT_SETTINGS_FILE, LOCK_FILE, REPORT_HTML_FILE, recorded_place,
                        slug)
from cnnlab.text import RunCount
from cnnlab.threads import keeps_thread_setting
from cnnlab.train.between_runs import NEXT_RUN_OR_MEASURE, stop_between_runs

HOLDS = "HOLDS"
FAILS = "DOES NOT HOLD"
INCONCLUSIVE = "INCONCLUSIVE"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
VERDICT_RULE = (
    "The overall verdict is HOLDS only if every check holds, DOES NOT HOLD if any check clearly "
    "fails, and INCONCLUSIVE otherwise."
)

SIZES = ("tiny", "quick", "full")
TABLE_CSV = "table.csv"
TABLE_JSON = "table.json"
# The table column naming a training run's folder. The table files record it (and a checkpoint, PATH_COLUMNS)
# relative to the experiment's folder (runs/SETTING/seedK), so that they stay true when the folder is moved or
# copied, and so does result.json's list of runs; result.json says so with RUN_DIRS_KEY (files written before have
# the path as the first call named it).
RUN_DIR_COLUMN = "run_dir"
CHECKPOINT_COLUMN = "checkpoint"  # a weights file of a run in the experiment's folder (ensemble's members, snapshots)
PATH_COLUMNS = (RUN_DIR_COLUMN, CHECKPOINT_COLUMN)  # the table columns that name files: recorded as run_dir is
RUN_DIRS_KEY = "run_dirs"
RUN_DIRS_RELATIVE = "run_dir, checkpoint and runs relative to the experiment's folder"
# What RUN_DIRS_KEY said when the table's run_dir and checkpoint were recorded relative, but result.json's runs as
# the first call named them
RUN_DIR_CHECKPOINT_RELATIVE = "run_dir and checkpoint relative to the experiment's folder"
# What RUN_DIRS_KEY said when only run_dir was recorded relative (a checkpoint as the first call named it)
RUN_DIR_ONLY_RELATIVE = "relative to the experiment's folder"
RESULT_FILE = EXPERIMENT_RESULT_FILE
SETTINGS_FILE = EXPERIMENT_SETTINGS_FILE  # written before the first run: once runs follow, other settings are refused
# settings.json's and result.json's key for torch's CPU thread count the call ran with (torch.get_num_threads() as
# it started: the ceiling cnnlab.threads keeps the runs under). A CPU result can depend on it (a sum's order, a
# time), so a verdict is read with it; it is recorded, never compared: a rerun with other threads continues.
THREADS_KEY = "threads"
# settings.json's and result.json's key for the thread counts of the earlier calls whose finished runs a continued
# experiment keeps, where they differ from this call's (sorted; absent or [] when every run had this call's count)
EARLIER_THREADS_KEY = "threads_earlier"
REPORT_FILE = REPORT_HTML_FILE  # the comparison page of the training runs (cnnlab report)
DEFAULT_OUT_ROOT = Path("runs")  # run_experiment's default out: runs/experiment-NAME


@dataclass(frozen=True)
class Check:
    """One sub-claim: what it checks, its verdict, and the numbers that decided it."""

    claim: str
    verdict: str
    margin: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")


def verdict_of(holds: Optional[bool]) -> str:
    """True -> HOLDS, False -> DOES NOT HOLD, None (could not decide) -> INCONCLUSIVE."""
    return INCONCLUSIVE if holds is None else (HOLDS if holds else FAILS)


def combine_verdicts(checks: Sequence[Check]) -> str:
    """The overall verdict, by :data:`VERDICT_RULE`."""
    if any(c.verdict == FAILS for c in checks):
        return FAILS
    if checks and all(c.verdict == HOLDS for c in checks):
        return HOLDS
    return INCONCLUSIVE


# The sizes' descriptions and times are for an experiment's default data at each size. A size that trains on all
# of its default data's training images (digits' 1,259, say) takes all of another --data's (Fashion-MNIST's 60,000,
# a different run and time): the budgets are of images per class, or of the whole split, not a cap for any data.
SIZES_NOTE = ("Each size's description and time are for the experiment's default data at that size (list --json: "
              "data). With "
              "another --data a size takes the same images per class, or, where it takes all the training images "
              "(\"all 1,259\" on digits), all of that data's, which can take far longer.")


@dataclass(frozen=True)
class SizeInfo:
    """What one size runs on the experiment's default data, and roughly how long it takes there on 2 CPU cores
    (:data:`SIZES_NOTE`)."""

    description: str
    seconds: float  # estimate, 2 CPU cores, nothing else running


@dataclass
class ExperimentResult:
    """What an experiment measured: the table, each check, the overall verdict and the plots."""

    rows: list[dict[str, Any]]
    checks: list[Check]
    plots: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)  # training run folders: the comparison page shows them side by side
    meta: dict[str, Any] = field(default_factory=dict)  # filled by run_experiment: settings, machine, time
    kept: bool = False  # read back from a finished experiment's result.json, not measured by this call

    @property
    def verdict(self) -> str:
        return combine_verdicts(self.checks)

    @property
    def margin(self) -> str:
        """The numbers that decided the verdict: the failing checks' margins when any fail, else all."""
        deciding = [c for c in self.checks if c.verdict == self.verdict] or self.checks
        return "; ".join(f"{c.claim}: {c.margin}" for c in deciding)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.meta,
            "verdict": self.verdict,
            "verdict_rule": VERDICT_RULE,
            "margin": self.margin,
            "checks": [asdict(c) for c in self.checks],
            "plots": [p.name for p in self.plots],
            "runs": [self._recorded(p) for p in self.runs],
            "reports": report_names(self.runs),
            "table": TABLE_CSV,
            RUN_DIRS_KEY: RUN_DIRS_RELATIVE,  # "runs", and the table's run_dir and checkpoint columns (_write_table)
        }

    def _recorded(self, run: Path) -> str:
        """A run folder as result.json records it: relative to the experiment's folder (meta "out";
        :func:`in_experiment`), as the table's run_dir; as given while the meta is not filled in."""
        out = self.meta.get("out")
        return in_experiment(run, Path(out)) if isinstance(out, str) else str(run)


@dataclass(frozen=True)
class RunContext:
    """What one call of an experiment's run function is given."""

    size: str  # tiny | quick | full
    seeds: int  # seeds per setting (1 for deterministic experiments)
    out: Path  # the experiment's folder; training runs go in out/runs/SETTING/seedK
    data: Optional[str] = None  # the data spec to train on (the --data option or the size's default); None: no data
    say: Callable[[str], None] = field(default=lambda text: None, repr=False, compare=False)  # one line per finished run
    # The training runs finished of those planned (its own object: frozen fields, counted in place)
    runs: RunCount = field(default_factory=RunCount, repr=False, compare=False)


RunFunction = Callable[[RunContext], ExperimentResult]


@dataclass(frozen=True)
class Experiment:
    """A claim of the notes and how to test it. ``rule`` is written before any number is seen."""

    name: str
    claim: str  # the notes' sentence, in English
    source: tuple[str, str]  # (note file, short quote in the notes' language)
    rule: str  # the verdict rule in words
    runs: str  # what it runs
    sizes: dict[str, SizeInfo]  # size -> what it runs and its time estimate
    run: RunFunction = field(repr=False, compare=False)  # RunContext -> ExperimentResult
    needs: tuple[str, ...] = ()  # features or data it needs; empty: always available
    # (fewest, most, default) seeds per setting; deterministic: exactly 1. tiny runs the fewest by default.
    seeds: tuple[int, int, int] = (1, 1, 1)
    data: Optional[dict[str, str]] = None  # size -> the data spec it trains on by default; None: it uses no data
    # What makes a loaded data set (cnnlab.data.sources.DataSet) unusable for it at a size, in words; None:
    # usable. Called as check_data(dataset, size) on --data before anything runs.
    check_data: Optional[Callable[[Any, str], Optional[str]]] = field(default=None, repr=False, compare=False)
    # Every lecture note whose claims its checks test, in the order the claim cites them ("004", "003"); the
    # source's note is always first (:attr:`cited_notes`). Empty: the source's note alone.
    notes: tuple[str, ...] = ()

    def default_seeds(self, size: str) -> int:
        return self.seeds[0] if size == "tiny" else self.seeds[2]

    @property
    def cited_notes(self) -> list[str]:
        """Every note the experiment checks claims of: the source's note first, then the others it lists, each once."""
        return list(dict.fromkeys((self.source[0], *self.notes)))

    def describe(self) -> dict[str, Any]:
        """What ``cnnlab experiment list`` shows, as plain JSON-ready values."""
        return {
            "name": self.name,
            "claim": self.claim,
            "source": {"note": self.source[0], "quote": self.source[1]},  # the claim's main note, kept as it was
            "notes": self.cited_notes,  # every note it checks claims of, source's first
            "rule": self.rule,
            "runs": self.runs,
            "needs": list(self.needs),
            "data": dict(self.data) if self.data else None,
            "available": not self.needs,
            "seeds": {"min": self.seeds[0], "max": self.seeds[1], "default": self.seeds[2],
                      "tiny": self.default_seeds("tiny")},
            "sizes": {k: {"description": v.description, "seconds": v.seconds} for k, v in self.sizes.items()},
            "sizes_note": SIZES_NOTE if self.data else None,  # the sizes are for the default data
        }


class Registry:
    """A small strict registry of experiments, in the order they were added."""

    def __init__(self) -> None:
        self._items: dict[str, Experiment] = {}

    def add(self, experiment: Experiment) -> Experiment:
        if experiment.name == "list":  # `cnnlab experiment list` lists the experiments
            raise ValueError("'list' cannot be an experiment's name")
        if experiment.name in self._items:
            raise ValueError(f"experiment '{experiment.name}' is already registered")
        if set(experiment.sizes) != set(SIZES):
            raise ValueError(f"experiment '{experiment.name}' must describe the sizes {SIZES}")
        self._items[experiment.name] = experiment
        return experiment

    def get(self, name: str) -> Experiment:
        if name not in self._items:
            from cnnlab.models._registry import closest_names

            close = closest_names(name, self._items)  # compared without case: Complexity finds complexity
            hint = f" Did you mean {' or '.join(close[:3])}?" if close else ""
            raise UnknownNameError(
                f"Unknown experiment '{name}'.{hint} Known experiments: {', '.join(self._items)}. "
                "Run `cnnlab experiment list` to see what each one tests."
            )
        return self._items[name]

    def all(self) -> list[Experiment]:
        return list(self._items.values())


REGISTRY = Registry()


def list_experiments() -> list[Experiment]:
    """The registered experiments, in order."""
    return REGISTRY.all()


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name raises an error listing the known ones."""
    return REGISTRY.get(name)


@keeps_thread_setting  # its runs' own loops tick (cnnlab.threads) outside train(), which puts the count back
def run_experiment(
    name: str,
    size: str = "quick",
    seeds: Optional[int] = None,
    out: Optional[str | Path] = None,
    command: Optional[str] = None,
    data: Optional[str] = None,
    say: Optional[Callable[[str], None]] = None,
) -> ExperimentResult:
    """Run experiment ``name`` at ``size`` with ``seeds`` seeds (default: the experiment's; the fewest at
    tiny) on ``data`` (a data spec; default: the experiment's for the size), writing its files to ``out``
    (default runs/experiment-NAME).

    A finished experiment in ``out`` with the same settings is returned as kept; finished training runs
    of an unfinished one are read back, not retrained; other settings are refused where it holds runs
    (a folder that holds none, only the settings and perhaps searches that finished no trial, starts
    afresh, with a note: :func:`_check_settings`). ``say`` gets the experiment's statement first
    (:func:`statement_lines`: claim, notes, rules; a kept result's too), then torch's thread count
    (:data:`THREADS_KEY`, recorded in settings.json and result.json; a kept result's as it recorded it), then one
    line per finished training run. Ctrl-C raises KeyboardInterrupt with the finished runs kept.
    """
    experiment = get_experiment(name)
    say = say or (lambda text: None)
    if experiment.needs:
        raise CnnlabError(f"Experiment '{name}' is unavailable: it needs {', '.join(experiment.needs)}. "
                          "`cnnlab experiment list` shows which experiments run here.")
    if size not in SIZES:
        raise CnnlabError(f"Unknown size '{size}' for experiment '{name}'. Sizes: {', '.join(SIZES)} "
                          "(tiny checks the mechanics in seconds, quick takes minutes, full gives the documented results).")
    low, high, _ = experiment.seeds
    if seeds is None:
        seeds = experiment.default_seeds(size)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not low <= seeds <= high:
        allowed = str(low) if low == high else f"{low} to {high}"
        why = " (it is deterministic: more seeds would repeat the same numbers)" if low == high else ""
        takes = counted(low, "seed") if low == high else f"{allowed} seeds"
        raise CnnlabError(f"Experiment '{name}' takes {takes}{why}, not {seeds!r}. "
                          f"Give --seeds {allowed if low == high else experiment.default_seeds(size)} (the "
                          f"default at --size {size}).")
    data = _experiment_data(experiment, size, data)
    if out is not None and not str(out).strip():  # Path("") is the current folder: an empty --out is a slip
        raise CnnlabError("--out is empty: name the folder for the experiment's files, or leave --out out for "
                          f"{DEFAULT_OUT_ROOT / f'experiment-{name}'}.")
    out = Path(out) if out is not None else DEFAULT_OUT_ROOT / f"experiment-{name}"
    settings = {"experiment": name, "size": size, "seeds": seeds, "data": data}
    kept = _kept_result(out, settings)
    if kept is not None:
        for line in statement_lines(experiment, kept.meta):  # as a run says them: the claim before its verdict
            say(line)
        threads = _thread_count(kept.meta.get(THREADS_KEY))
        say(threads_line(threads, _thread_counts(kept.meta.get(EARLIER_THREADS_KEY))) if threads is not None
            else "torch threads: not recorded (a result written before they were)")
        return kept
    if command is None:  # quoted, so that it runs as recorded whatever the folder or data path holds (a space)
        command = f"cnnlab experiment {name} --size {size} --seeds {seeds}" + (
            f" --data {shlex.quote(data)}" if data is not None and data != (experiment.data or {}).get(size) else ""
        ) + f" --out {shlex.quote(str(out))}"
    # One experiment writes a folder at a time; hold_folder first checks that --out can be written
    with hold_folder(out / LOCK_FILE, "an experiment"):
        return _run_held(experiment, out, settings, command, say)


def _run_held(experiment: Experiment, out: Path, settings: dict[str, Any], command: str,
              say: Callable[[str], None]) -> ExperimentResult:
    """:func:`run_experiment` in the folder ``out`` it holds: check the kept settings, run, write the result."""
    # Runs held there are an interrupted call's runs of these settings, which this call continues: its seconds
    # leave out the earlier calls' time, and result.json says so. A search that finished no trial is no run.
    import torch

    resumed = bool(_check_settings(out, settings))
    threads = torch.get_num_threads()
    # every earlier call's count whose runs this one continues (the interrupted calls', kept in settings.json)
    earlier = [count for count in _recorded_threads(out) if count != threads] if resumed else []
    write_json(out / SETTINGS_FILE, {**settings, THREADS_KEY: threads, EARLIER_THREADS_KEY: earlier},
               "the experiment's settings")
    # The claim, its notes and the rules first: they were fixed before any number, and a reader should have them
    # in mind before the first run's line (result.json and the docs give them first too); then the thread count
    for line in statement_lines(experiment):
        say(line)
    say(threads_line(threads, earlier))
    size, seeds, data = settings["size"], settings["seeds"], settings["data"]
    start = time.perf_counter()
    # An experiment that trains: a Ctrl-C or SIGTERM between its runs stops before the next one starts (one that
    # trains nothing keeps Python's Ctrl-C, which stops it at once: it has no run to finish)
    between_runs = stop_between_runs(NEXT_RUN_OR_MEASURE) if experiment.data is not None else nullcontext()
    with between_runs:  # until result.json is written: a signal after the last run lets the results be written
        with quiet_notes():
            result = experiment.run(RunContext(size=size, seeds=seeds, out=out, data=data, say=say))
        _write_results(experiment, result, out, settings, command, threads, earlier, resumed,
                       seconds=time.perf_counter() - start)
    return result


def _write_results(experiment: Experiment, result: ExperimentResult, out: Path, settings: dict[str, Any],
                   command: str, threads: int, earlier: list[int], resumed: bool, seconds: float) -> None:
    """The table, the report pages and result.json (last: it marks the experiment finished)."""
    from cnnlab.threads import cpu_name

    result.meta = {
        **settings,
        THREADS_KEY: threads,
        EARLIER_THREADS_KEY: earlier,
        "claim": experiment.claim,
        "source": {"note": experiment.source[0], "quote": experiment.source[1]},
        "notes": experiment.cited_notes,
        "rule": experiment.rule,
        "command": command,
        "out": str(out),
        "machine": cpu_name(),
        "seconds": round(seconds, 3),  # this call's: see "resumed"
        "resumed": resumed,
    }
    _write_table(result.rows, out)
    for page, runs in _report_groups(result.runs).items():
        from cnnlab.report import write_report

        # the page lies in out: runs named from there
        context = f"experiment {experiment.name} at --size {settings['size']}; {threads_line(threads, earlier)}"
        write_report(runs, out / page, relative_to=out, context=context, experiment_page=True)
    write_json(out / RESULT_FILE, result.to_dict(), "the experiment's result")  # last: marks it finished


def statement_lines(experiment: Experiment, recorded: Optional[dict[str, Any]] = None) -> list[str]:
    """What an experiment states before it runs, one line each: the claim, the note it comes from (with its
    quote) and any other notes it checks, its verdict rule, and how the checks combine into the overall verdict.
    run_experiment says them (``say``) before the first run's line.

    ``recorded``: a kept result's meta (result.json). Its verdicts were decided by the claim and rule it recorded,
    which an older cnnlab may have worded otherwise, so those are stated; a field it lacks is the experiment's.
    """
    recorded = recorded or {}
    source = recorded.get("source")
    if isinstance(source, dict) and isinstance(source.get("note"), str) and isinstance(source.get("quote"), str):
        source_note, quote = source["note"], source["quote"]
    else:
        source_note, quote = experiment.source
    notes = recorded.get("notes")
    if not (isinstance(notes, list) and all(isinstance(note, str) for note in notes)):
        notes = experiment.cited_notes
    claim, rule = recorded.get("claim"), recorded.get("rule")
    others = [note for note in notes if note != source_note]
    also = f" (also checks {noun_for(len(others), 'note')} {', '.join(others)})" if others else ""
    return [
        f"{experiment.name}: {claim if isinstance(claim, str) else experiment.claim}",
        f"from note {source_note}: {quote}{also}",
        f"rule: {rule if isinstance(rule, str) else experiment.rule}",
        VERDICT_RULE,
    ]


def threads_line(threads: int, earlier: Sequence[int] = ()) -> str:
    """The line that states the torch thread count an experiment ran with, "torch threads: 2", and the other counts
    of the earlier calls whose finished runs it kept: "torch threads: 2 (an earlier call here, whose finished runs
    are kept, ran with 1)"."""
    if not earlier:
        return f"torch threads: {threads}"
    calls = "an earlier call here, whose finished runs are kept, ran" if len(earlier) == 1 else (
        "earlier calls here, whose finished runs are kept, ran")
    return f"torch threads: {threads} ({calls} with {' and '.join(map(str, earlier))})"


def _recorded_threads(out: Path) -> list[int]:
    """Every thread count the settings.json in ``out`` recorded (:data:`THREADS_KEY` and
    :data:`EARLIER_THREADS_KEY`), sorted; [] when it records none (written before threads were recorded) or cannot
    be read."""
    try:
        recorded = json.loads((out / SETTINGS_FILE).read_text())
        counts = [recorded.get(THREADS_KEY), *_thread_counts(recorded.get(EARLIER_THREADS_KEY))]
    except (OSError, ValueError, AttributeError):
        return []
    return sorted({count for count in map(_thread_count, counts) if count is not None})


def _thread_counts(value: Any) -> list[int]:
    """A recorded list of thread counts (:data:`EARLIER_THREADS_KEY`) as ints; [] for anything else."""
    return [count for count in value if _thread_count(count) is not None] if isinstance(value, list) else []


def _thread_count(value: Any) -> Optional[int]:
    """A recorded thread count as the int it was written as; None for anything else (JSON's true is no count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _experiment_data(experiment: Experiment, size: str, data: Optional[str]) -> Optional[str]:
    """The data spec the experiment trains on: ``data`` when given and usable, else the size's default."""
    if experiment.data is None:
        if data is not None:
            raise CnnlabError(f"Experiment '{experiment.name}' uses no data (it measures networks, not training "
                              f"runs), so --data does not apply. Run it without --data.")
        return None
    if data is None:
        return experiment.data[size]
    from cnnlab.data.sources import display_name, load_source

    dataset = load_source(data)  # an unknown spec or missing files are refused here, before any run
    problem = experiment.check_data(dataset, size) if experiment.check_data is not None else None
    if problem:
        raise CnnlabError(f"Experiment '{experiment.name}' at --size {size} cannot use --data {data}: {problem}. "
                          f"Its default data are {', '.join(f'{k}: {v}' for k, v in experiment.data.items())}.")
    # The spec as the loader spells it ('Digits', ' digits' and 'digits' are one data set; 'folder:./x/' is
    # 'folder:x'), so that the settings kept for a rerun, and the runs, name the same data the same way. A spec
    # the loader shows escaped (a name with a control character) stays as given: the escaped text names no file.
    return dataset.spec if display_name(data) == data else data


def _difference_text(key: str, there, now) -> str:
    """"size 'tiny' there, 'quick' now": a setting's value in a folder and in this call; a missing one (None: an
    experiment that trains nothing has no data) as "no KEY", not Python's None: "data 'digits' there, no data now"."""
    if there is None:
        return f"no {key} there, {key} {now!r} now"
    return f"{key} {there!r} there, {'no ' + key if now is None else repr(now)} now"


def _check_settings(out: Path, settings: dict[str, Any]) -> list[Path]:
    """Refuse to mix runs of other settings into ``out`` (an unfinished experiment's runs are kept there);
    return the runs it holds (:func:`cnnlab.report.runs.held_runs`).

    A folder that holds no run keeps nothing to mix: only the settings (the experiment stopped before its
    first run wrote anything, e.g. a run the engine refused), perhaps with searches that finished no trial
    (a grid stopped before its first trial ended). Other settings start afresh there, with a note, and
    those searches are removed: their studies would go on with the new settings' trials, or refuse them.
    With the same settings they are kept and continue.
    """
    from cnnlab.config import notice
    from cnnlab.report.runs import held_runs

    path = out / SETTINGS_FILE
    entries = sorted(entry.name for entry in out.iterdir() if entry.name != LOCK_FILE)  # the lock is this run's
    if not path.is_file():
        if entries:  # a training run, a search or other files: the experiment's would be mixed in among them
            raise CnnlabError(f"'{out}' is not empty ({first_few(entries, 5)}) and holds no experiment (no "
                              f"{SETTINGS_FILE}): its files would be mixed with the experiment's. Choose a new or "
                              "empty --out.")
        return []
    runs, empty_searches = held_runs(out)
    if not runs and all(_holds_only(out / name, empty_searches) for name in entries if name != SETTINGS_FILE):
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = None
        searches = (f"{noun_for(len(empty_searches), 'search folder')} "
                    f"{', '.join(str(search.relative_to(out)) for search in empty_searches)}")
        if not isinstance(kept, dict) or any(kept.get(key) != value for key, value in settings.items()):
            for search in empty_searches:
                shutil.rmtree(search)
            removed = f"; its {searches}, which finished no trial, removed" if empty_searches else ""
            notice(f"'{out}' holds only the settings of an earlier experiment that stopped before its first run "
                   f"(no runs to keep{removed}): starting afresh there with these settings.")
        elif empty_searches:
            notice(f"'{out}' holds no finished run yet: its {searches} finished no trial. Continuing there.")
        return []
    try:
        kept = json.loads(path.read_text())
        if not isinstance(kept, dict):
            raise ValueError(f"it holds a JSON {type(kept).__name__}, not the settings' object")
    except (OSError, ValueError) as err:
        # Deleting it would not do: a folder with files and no settings is refused (its runs' settings unknown)
        raise CnnlabError(f"'{path}' cannot be read ({err}), so which experiment's runs '{out}' holds is not "
                          f"known. Choose another --out; or, if they are this command's runs, write "
                          f"{json.dumps(settings)} into {SETTINGS_FILE} and run the command again to continue "
                          "them.") from None
    differences = [_difference_text(key, kept.get(key), value) for key, value in settings.items()
                   if kept.get(key) != value]
    if differences:
        held = "an unfinished experiment run" if runs else "the files of an unfinished experiment"
        raise CnnlabError(f"'{out}' holds {held} with other settings ({'; '.join(differences)}). "
                          "Rerun with the kept settings to continue it, or choose another --out.")
    return runs


def _holds_only(path: Path, searches: list[Path]) -> bool:
    """Whether ``path`` is one of ``searches`` or a folder holding nothing else (folders of them, empty ones)."""
    if path in searches:
        return True
    if path.is_symlink() or not path.is_dir():
        return False
    return all(_holds_only(child, searches) for child in path.iterdir())


def _report_groups(runs: Sequence[Path]) -> dict[str, list[Path]]:
    """{page file: its runs}: one comparison page per data set the runs trained on (runs of different
    data sets do not compare). The first data set's page is REPORT_FILE, the others report-DATA.html."""
    from cnnlab.run import RunFolder

    groups: dict[str, list[Path]] = {}
    for run in runs:
        try:
            spec = RunFolder(run).read_config().data.spec
        except Exception:  # an unreadable config: cnnlab report names the problem on the page  # noqa: BLE001
            spec = "?"
        groups.setdefault(spec, []).append(Path(run))
    names = {}
    for i, (spec, members) in enumerate(groups.items()):
        names[REPORT_FILE if i == 0 else f"report-{slug(spec, empty='data')}.html"] = members
    return names


def report_names(runs: Sequence[Path]) -> list[str]:
    """The comparison pages run_experiment writes for ``runs`` (see _report_groups)."""
    return list(_report_groups(runs)) if runs else []


def _kept_result(out: Path, settings: dict[str, Any]) -> Optional[ExperimentResult]:
    """The finished result kept in ``out`` when its settings match; None when there is none."""
    path = out / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        rows = json.loads((out / TABLE_JSON).read_text())
        if not isinstance(data, dict) or not isinstance(rows, list):
            raise ValueError("result.json must hold an object and table.json a list")
    except (OSError, ValueError) as err:
        raise CnnlabError(f"The kept result in '{out}' cannot be read ({err}). Delete '{path}' to run the "
                          "experiment again, or choose another --out.") from None
    differences = [_difference_text(key, data.get(key), value) for key, value in settings.items()
                   if data.get(key) != value]
    if differences:
        raise CnnlabError(f"'{out}' holds a finished experiment run with other settings ({'; '.join(differences)}). "
                          "Choose another --out, or rerun with the kept settings to see that result.")
    try:
        checks = [Check(**c) for c in data["checks"]]
        plots = [out / p for p in data["plots"]]
    except (KeyError, TypeError) as err:  # another version's result, or an edited one
        raise CnnlabError(f"The kept result '{path}' does not hold this cnnlab's checks and plots ({err}). Delete "
                          "it to run the experiment again, or choose another --out.") from None
    meta = {k: v for k, v in data.items() if k not in ("verdict", "verdict_rule", "margin", "checks", "plots", "runs",
                                                     "reports", "table", RUN_DIRS_KEY)}
    kept_out = data.get("out")
    meta["out"] = str(out)  # where the folder is now: a rerun from another folder, or of a moved one, names it
    recorded = data.get(RUN_DIRS_KEY)
    relative = {RUN_DIR_COLUMN: recorded in (RUN_DIRS_RELATIVE, RUN_DIR_CHECKPOINT_RELATIVE, RUN_DIR_ONLY_RELATIVE),
                CHECKPOINT_COLUMN: recorded in (RUN_DIRS_RELATIVE, RUN_DIR_CHECKPOINT_RELATIVE)}
    rows = [_row_read(row, out, kept_out, relative) for row in rows]
    # runs recorded relative are under out (an absolute one, outside it, stays itself: out / "/x" is "/x")
    runs = [out / p if recorded == RUN_DIRS_RELATIVE else _moved(Path(p), kept_out, out) for p in data.get("runs", [])]
    return ExperimentResult(rows=rows, checks=checks, plots=plots, runs=runs, meta=meta, kept=True)


def _row_read(row: Any, out: Path, kept_out: Any, relative: dict[str, bool]) -> Any:
    """A table row as table.json keeps it, with its run folder and checkpoint named where they are now (see
    _row_written).

    ``relative``: per path column, whether the table records it relative to the experiment's folder (an
    absolute path: a file outside it). A table written before that records the path as the first call named
    it, which :func:`_moved` re-roots when it lies in the folder that call wrote.
    """
    if not isinstance(row, dict):
        return row
    read = dict(row)
    for column in PATH_COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value:
            continue
        # an absolute value stays itself: out / "/x" is "/x"
        read[column] = str(out / value) if relative[column] else str(_moved(Path(value), kept_out, out))
    return read


def _moved(run: Path, kept_out: Any, out: Path) -> Path:
    """A run path as result.json recorded it, where it is now.

    The paths were written as the first call named them (relative to that call's working folder), so a
    rerun from another folder, or with the experiment's folder moved, finds the runs under ``out`` instead.
    A run that was not inside the experiment's folder keeps its path.
    """
    if not isinstance(kept_out, str):
        return run
    try:
        return out / run.relative_to(kept_out)
    except ValueError:
        return run


def write_json(path: Path, value: Any, what: str) -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def in_experiment(path: str | Path, out: Path) -> str:
    """``path`` as the experiment's own files record it: relative to the experiment's folder ``out``
    (runs/SETTING/seedK), so that they name the right file wherever ``out`` is moved or copied; a path
    outside ``out`` as an absolute path."""
    run, folder = Path(os.path.abspath(path)), Path(os.path.abspath(out))
    return str(run.relative_to(folder)) if run.is_relative_to(folder) else str(run)


def names_same_path(recorded: Any, path: str | Path, out: Path) -> bool:
    """Whether a path that a file kept in the experiment's folder ``out`` recorded names ``path``, compared
    relative to ``out`` (:func:`in_experiment`), so that the match survives moving or copying the folder.

    A file written before such paths were recorded relative has the path as the experiment's first call named
    it (relative to that call's working folder, or absolute): it matches when it ends with the same parts
    (runs/SETTING/seedK/...: :func:`cnnlab.run.recorded_place`). Such a file lies in the experiment's own folder,
    so it named that folder's file wherever the folder was then. A path outside ``out`` is compared whole.
    """
    if not isinstance(recorded, str) or not recorded:
        return False
    wanted = Path(in_experiment(path, out))
    if wanted.is_absolute():
        return Path(os.path.abspath(recorded)) == wanted
    return recorded_place(recorded, len(wanted.parts)) == wanted


def _row_written(row: dict[str, Any], out: Path) -> dict[str, Any]:
    """A table row as the table files keep it: its run folder and checkpoint (:data:`PATH_COLUMNS`) relative to
    the experiment's folder ``out`` (:func:`in_experiment`), so that the files name the right files wherever
    ``out`` is moved or copied; a file outside ``out`` as an absolute path."""
    written = dict(row)
    for column in PATH_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            written[column] = in_experiment(value, out)
    return written


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    rows = [_row_written(row, out) for row in rows]
    columns: list[str] = []
    for row in rows:  # the union of the rows' keys, in first-seen order
        columns += [k for k in row if k not in columns]
    with atomic_path(out / TABLE_CSV, "the experiment's table") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    write_json(out / TABLE_JSON, rows, "the experiment's table")


def bar_plot(path: Path, title: str, labels: Sequence[str], panels: dict[str, dict[str, Sequence[float]]],
             log: bool = False) -> Path:
    """Grouped bars, one panel per measure: ``panels`` = {panel title: {series name: values per label}}.

    The title states the claim, as the lecture's figures do. Written atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            positions = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
            ax.bar(positions, values, width, label=name)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(panel, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)
