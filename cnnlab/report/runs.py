"""Reading run folders for reports and listings: one :class:`RunRecord` per run, whatever state it is in.

A report must work on every run a person points it at: one still training, one stopped by Ctrl-C,
one whose loss became NaN, one killed mid-write. :func:`read_run` therefore never gives up on a
damaged file: it keeps what it can read and names what it could not in ``RunRecord.problems``.
Only a path that is not a run folder at all raises :class:`~cnnlab.errors.CnnlabError`.

========================  =====================================================================
name                      what
========================  =====================================================================
:class:`RunRecord`        everything a page or a listing shows about one run
:class:`EvalRecord`       one ``cnnlab eval`` result inside the run (RUN/eval-SPLIT-TTA[-ema]/)
:func:`read_run`          a run folder as a RunRecord (damage noted, never raised)
:func:`expand_runs`       the run folders a list of paths names (a search folder: all its trials)
:func:`find_runs`         every run under a folder, and the folders skipped as not runs
:func:`held_runs`         the runs a folder really holds, and its searches that finished no trial
:func:`runs_rows`         one plain dict per run for ``cnnlab runs`` (sorted by a key)
:func:`data_groups`       the runs by data set (data.spec as the loader reads it)
:func:`check_comparable`  refuses runs of different data sets
:func:`differing_config`  the dotted config keys whose values differ between runs
:func:`changes_results`   whether a config key can change what a run computes (log.* and KEY_typed cannot)
:func:`same_setting`      whether two values of a key set the same (one data set or path written two ways)
:func:`compared_config`   the differing keys split: those that can change a result, those that change none
========================  =====================================================================

Where a run stands (``RunRecord.state``) comes from its status.json, checked against the process it
names: a run whose status says "running" but whose process is gone is "stopped". Runs older than
status.json are inferred from their files: "finished" when report.txt exists and metrics.csv reaches
train.epochs, "diverged" when a training loss is NaN or inf (a val loss alone is not divergence: `cnnlab
diagnose`'s val_not_finite, named in the note), "empty" when no epoch finished, else "incomplete".
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from cnnlab.config import RECORD_KEYS, TooLongNumberError, flatten_config
from cnnlab.data.sources import display_name
from cnnlab.errors import CnnlabError, counted, first_few, is_finite_number, noun_for, shell_word
from cnnlab.io import lock_holder, process_gone
from cnnlab.run import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    CONFIG_FILE,
    ENSEMBLE_PATTERN,
    ENVIRONMENT_FILE,
    EVAL_CONFUSION_PNG,
    EVAL_FOLDER_PATTERN,
    EVAL_METRICS_FILE,
    EVAL_MISTAKES_PNG,
    INIT_FILE,
    LOCK_FILE,
    MEASURED_KEY,
    METRICS_FILE,
    REPORT_FILE,
    REPORT_HTML_FILE,
    RUN_FILES,
    RUN_STATES,
    SEARCH_TRIALS_DIR,
    STATUS_FILE,
    STEPS_FILE,
    SUMMARY_FILE,
    RunFolder,
    eval_folder_name,
    is_ensemble_result,
    is_experiment_folder,
    is_search_folder,
    relative_data_path,
    same_data,
    same_path,
)
from cnnlab.train.logging import METRIC_COLUMNS, STEP_COLUMNS, missing_numbers, read_metrics, read_steps

# Beyond RUN_STATES (what status.json records), what a reader can tell about a run from outside:
# status says running but its process is gone; an old run that stopped short; no epoch finished.
RECORD_STATES = (*RUN_STATES, "stopped", "incomplete", "empty")

# A run on another host cannot be asked whether its process lives; its status.json is rewritten after
# every epoch, so a status this old (seconds) means the run stopped, unless one epoch takes longer.
STALE_SECONDS = 3600

# summary.txt's totals lines (cnnlab.analysis.report.totals_lines), e.g.
# "parameters           145,856 (trainable ...)" and "conv+linear MACs     499,680 (499.68K)".
_PARAMS_LINE = re.compile(r"^parameters\s+([\d,]+)", re.MULTILINE)
_COMPUTE_LINE = re.compile(r"^conv\+linear (MACs|FLOPs)\s+([\d,]+)", re.MULTILINE)
_BATCH_LINE = re.compile(r"^forward activations .*\(batch ([\d,]+),", re.MULTILINE)

# Whether a run holds its folder with a lock file here (cnnlab.io.hold_folder: flock, absent on Windows).
try:
    import fcntl  # noqa: F401

    _HOLDS_LOCKS = True
except ImportError:
    _HOLDS_LOCKS = False

SORT_KEYS = ("name", "best", "test", "time", "epochs", "state", "model")

# How the eval folders of the test split begin: eval-test-
_TEST_EVAL_PREFIX = eval_folder_name("test", "", False)

_POINT = "Name a folder `cnnlab train` wrote (its --out), or a `cnnlab search` folder for all its trials."


@dataclass
class EvalRecord:
    """One `cnnlab eval` result inside a run: its folder and its metrics.json."""

    name: str  # folder name, e.g. "eval-test-none"
    path: Path
    metrics: dict  # metrics.json: images, top1, top5, loss, per_class, confusion, mistakes, tta, measured, ...
    confusion_png: Optional[Path]
    mistakes_png: Optional[Path]
    # Why the eval no longer describes the weights it measured (the run resumed and rewrote the checkpoint:
    # cnnlab.evaluate.measured.stale_reason), None while it does. A stale eval is never the run's test accuracy.
    stale: Optional[str] = None
    # The checkpoint outside this run whose weights the eval measured, as its record names it (an eval folder
    # copied in from another run), None for an eval of this run's weights or one that records none (an older
    # cnnlab: its checkpoint's file name decides). Such an eval is never the run's test accuracy.
    elsewhere: Optional[str] = None

    @property
    def tta_text(self) -> str:
        """The TTA as the eval ran it: the mode with the corner shift and the scales it records ('10crop, shift 3
        px'; resnet10crop's scales are short sides: 'resnet10crop, short sides 32 37 55 69 91 px'), so that evals
        of one mode with other settings read apart."""
        from cnnlab.evaluate.tta import RESNET_MODE

        metrics = self.metrics if isinstance(self.metrics, dict) else {}
        text = str(metrics.get("tta", "?"))
        scales = metrics.get("scales")
        if isinstance(scales, list) and scales and all(is_finite_number(scale) for scale in scales):
            listed = " ".join(f"{float(scale):g}" for scale in scales)
            text += f", short sides {listed} px" if text == RESNET_MODE else f", scales {listed}"
        shift = metrics.get("shift")
        if is_finite_number(shift):
            text += f", shift {shift:g} px"
        return text


@dataclass
class RunRecord:
    """Everything a report page or the run listing shows about one run folder."""

    path: Path
    name: str  # the folder's name as shown (display_name: a byte that is not UTF-8 as \xff, a newline as \n)
    state: str  # one of RECORD_STATES
    state_note: str  # one sentence: "interrupted (Ctrl-C) after 3 of 10 epochs"
    config: Optional[dict]  # config.yaml as nested plain dicts; None when unreadable (problems says why)
    model: str  # model.name, "?" when unknown
    data: str  # data.spec as shown (display_name: a path that is not UTF-8 has its bytes escaped), "?" when unknown
    epochs_planned: Optional[int]
    rows: list[dict]  # complete metrics.csv rows (cnnlab.train.logging.read_metrics form)
    steps: list[tuple[int, float, float]]  # (step, loss, lr) per optimiser step
    best_val_acc: Optional[float]  # fraction; the highest finite val_acc
    best_epoch: Optional[int]
    final_val_acc: Optional[float]
    seconds: float  # training seconds: sum of epoch_seconds (0.0 when none is recorded: see has_training_time)
    images_per_second: Optional[float]  # training images over those seconds
    wall_seconds: list[float]  # cumulative training seconds at the end of each row (time-axis plots)
    params: Optional[int]  # from summary.txt's totals
    macs: Optional[int]  # conv+linear multiply-accumulates per image, from summary.txt
    environment: Optional[dict]  # environment.json: the machine (None for runs older than it)
    init: Optional[dict]  # init.json: the weights the run started from
    summary_text: Optional[str]  # summary.txt: the per-layer table as text
    findings: list  # cnnlab.tune.diagnose.Finding, from the curves
    evals: list[EvalRecord]
    # the ensemble results saved in the run (RUN/NAME.json), each with "members", and "file" (its path) and
    # "stale" (why it no longer describes its members' weights, else None) added
    ensembles: list[dict]
    # top1 of eval-test-none, else of another eval-test-* folder: the run's checkpoint, its data, not stale
    test_acc: Optional[float]
    problems: list[str]  # every file missing, unreadable or cut short, named
    curves_png: Optional[Path]
    status: Optional[dict] = field(default=None, repr=False)  # status.json as read (None when absent)
    stale_test: bool = False  # an eval that would give test_acc measured weights a resume has replaced since

    @property
    def epochs_done(self) -> int:
        """Epochs recorded in metrics.csv (the last row's epoch; 0 when none finished)."""
        return self.rows[-1]["epoch"] if self.rows else 0

    @property
    def has_training_time(self) -> bool:
        """metrics.csv records how long some epoch trained (``epoch_seconds``): a file without that column (it
        needs only ``epoch``), or a run with no finished epoch, has no training time, which is not 0 s. Nor has
        one whose epoch times add up past the largest float (inf: a damaged file, named in ``problems``)."""
        return any(is_finite_number(row.get("epoch_seconds")) for row in self.rows) and math.isfinite(self.seconds)

    @property
    def stale_results(self) -> list[tuple[str, str]]:
        """(name, why) of each eval folder and saved ensemble result that measured weights the run no longer
        holds (a resume rewrote the checkpoint since): evals by folder name, then ensembles by file name."""
        found = [(record.name, record.stale) for record in self.evals if record.stale]
        found += [(Path(str(result.get("file"))).name, result["stale"]) for result in self.ensembles
                  if result.get("stale")]
        return found

    @property
    def test_stale(self) -> bool:
        """The run has no current test accuracy, and an eval of its test split that gave it went stale: `cnnlab
        eval` again measures the weights it holds now (an eval of last.safetensors, which never gives it, does not
        count: evaluating it again would bring no test accuracy back)."""
        return self.test_acc is None and self.stale_test

    @property
    def test_elsewhere(self) -> bool:
        """The run has no current test accuracy, and an eval of the test split in its folder measured another
        run's weights (an eval folder copied in): the run's own weights were not evaluated."""
        return self.test_acc is None and not self.test_stale and any(
            record.elsewhere and record.name.startswith(_TEST_EVAL_PREFIX) for record in self.evals)


# ---------------------------------------------------------------------------------------------
# telling a run folder from anything else


def is_run_folder(path: str | Path) -> bool:
    """A folder `cnnlab train` wrote: it has its config.yaml."""
    return RunFolder(path).is_run()


def _search_trials(path: Path) -> list[Path]:
    """The trial run folders of a search folder, ordered by trial name (study-0000, study-0001, ...)."""
    trials = Path(path) / SEARCH_TRIALS_DIR
    try:
        children = sorted(trials.iterdir())
    except OSError:
        return []
    return [child for child in children if is_run_folder(child)]


def _not_trials(path: Path) -> list[tuple[Path, str]]:
    """(folder, why) of each folder in a search folder's trials/ that is not a run folder, by name; an empty one
    is a trial that has not started yet (its config.yaml comes first), not one left out."""
    try:
        children = sorted((Path(path) / SEARCH_TRIALS_DIR).iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if child.is_dir() and not is_run_folder(child):
            reason = _skip_reason(child)
            if reason != _EMPTY_SKIPPED:
                found.append((child, reason))
    return found


def _not_a_run(path: Path) -> CnnlabError:
    """Why ``path`` is not a run folder, and what to name instead, as one paragraph."""
    if not path.exists():
        return CnnlabError(f"'{display_name(str(path))}' does not exist, so it is not a run folder. {_POINT}")
    if not path.is_dir():
        if path.parent.is_dir() and is_run_folder(path.parent):
            return CnnlabError(f"'{display_name(str(path))}' is a file of the run "
                               f"'{display_name(str(path.parent))}', not a run folder: name the folder itself.")
        return CnnlabError(f"'{display_name(str(path))}' is a file, not a run folder. {_POINT}")
    experiment = next((folder for folder in (path, path.parent) if is_experiment_folder(folder)), None)
    if experiment is not None:  # the experiment's folder, or its runs/ folder
        return CnnlabError(f"'{display_name(str(path))}' is {'' if experiment == path else 'in '}the folder of a "
                           f"`cnnlab experiment`, not a run folder: the experiment writes its own page, "
                           f"'{display_name(str(experiment / REPORT_HTML_FILE))}'. To put some of its training runs on "
                           f"a page, name their folders (`cnnlab runs {shell_word(experiment)}` lists them).")
    holder = RunFolder(path).starting_holder()
    if holder is not None:
        return CnnlabError(f"'{display_name(str(path))}' is the folder of a run that is starting ({holder}): it has "
                           f"no {CONFIG_FILE} yet. Name it again in a moment.")
    if is_search_folder(path):
        left_out = _not_trials(path)
        # trials that ran (results.csv may call them complete) but lost their config.yaml: no run folders now
        if any(reason.startswith(LOST_CONFIG_SKIPPED) for _, reason in left_out):
            return CnnlabError(f"'{display_name(str(path))}' is a `cnnlab search` folder, but no folder in its "
                               f"{SEARCH_TRIALS_DIR}/ can be read as a run: {skipped_text(left_out)}. Then name the "
                               "search folder again, or name a run folder.")
        # trials that failed in their set-up (a bad searched value) leave no run folder, only a row in the results
        results = sorted(path.glob("*results.csv"))
        if results:
            return CnnlabError(f"'{display_name(str(path))}' is a `cnnlab search` folder whose {SEARCH_TRIALS_DIR}/ "
                               "holds no run folder: its trials failed before making one. Their errors are in "
                               f"{', '.join(display_name(r.name) for r in results)}; fix what they name and run the "
                               "search again, or name a run folder.")
        return CnnlabError(f"'{display_name(str(path))}' is a `cnnlab search` folder whose {SEARCH_TRIALS_DIR}/ "
                           "holds no run folder yet (no trial has started). Run the search first, or name a run folder.")
    try:
        next(path.iterdir(), None)
    except OSError as err:
        return CnnlabError(f"'{display_name(str(path))}' cannot be read ({err.strerror or err}), so it is not a run folder. {_POINT}")
    # the runs inside, as `cnnlab runs` finds them, a few levels down: a transfer ladder keeps its runs at
    # SIZE/seedK/RUNG, an experiment at runs/SETTING/seedK (not the whole tree: the home folder named by mistake)
    found: list[Path] = []
    _walk(path, found.append, max_depth=HELD_RUNS_DEPTH)
    runs = [run.relative_to(path) for run in found if run != path]
    if runs:
        shown = first_few((display_name(str(run)) for run in runs), 3)
        # counted within HELD_RUNS_DEPTH levels: `cnnlab runs` may find more further down
        return CnnlabError(f"'{display_name(str(path))}' is not a run folder (it has no {CONFIG_FILE}) but it holds "
                           f"{counted(len(runs), 'run folder')} in its first {HELD_RUNS_DEPTH} levels: {shown}. "
                           "Name the runs themselves "
                           f"(e.g. '{display_name(str(path / runs[0]))}'), or list them "
                           f"with `cnnlab runs {shell_word(path)}`.")
    lost = _lost_config(path)
    if lost:
        return CnnlabError(f"'{display_name(str(path))}' has {lost}, and a run folder is told by its {CONFIG_FILE}, so it is not read "
                           f"as one. Restore its {CONFIG_FILE} from a copy, or name another run folder.")
    return CnnlabError(f"'{display_name(str(path))}' is not a run folder: it has no {CONFIG_FILE}. {_POINT}")


# ---------------------------------------------------------------------------------------------
# reading files without giving up


def _read_bytes(path: Path, problems: list[str], required: bool) -> Optional[bytes]:
    """The file's bytes; None (and a problem when ``required`` or when it exists but cannot be read)."""
    if not path.exists():
        if required:
            problems.append(f"{path.name} is missing.")
        return None
    if not path.is_file():
        problems.append(f"{path.name} is not a file, so it was not read.")
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        problems.append(f"{path.name} cannot be read: {err.strerror or err}.")
        return None


def _read_json(path: Path, problems: list[str], required: bool = False) -> Optional[dict]:
    """A JSON object from ``path``; None when absent (a problem if ``required``) or not a JSON object."""
    data = _read_bytes(path, problems, required)
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        problems.append(f"{path.name} is not JSON ({err}), so it was not used.")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path.name} holds a JSON {type(value).__name__}, not an object, so it was not used.")
        return None
    return value


def _salvage(text: str, columns: tuple[str, ...], integers: tuple[str, ...], header_needed: tuple[str, ...]
             ) -> tuple[list[dict], Optional[int]]:
    """The rows of a damaged CSV of numbers up to its first bad line, and that line's number (None: none bad).

    For files the strict readers refused: the rows before the damage are still the run's own numbers.
    Cells are plain numbers (the writers never quote), so a line splits on commas.
    """
    lines = text.split("\n")
    header = [name.strip() for name in lines[0].lstrip("\ufeff").rstrip("\r").split(",")]
    if set(header) - set(columns) or not set(header_needed) <= set(header):
        return [], 1
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != len(header):
            return rows, number
        row = {}
        try:
            for name, cell in zip(header, cells):
                value = float(cell) if cell.strip() else None
                if name in integers:
                    if value is None or not math.isfinite(value) or value != int(value):
                        raise ValueError(cell)
                    value = int(value)
                row[name] = value
        except ValueError:
            return rows, number
        rows.append(row)
    return rows, None


def _split_cut(data: bytes) -> tuple[bytes, Optional[int]]:
    """(the bytes up to the last newline, the 1-based number of the line after it when that line was cut short).

    The run's CSV writers end every line with a newline, so bytes after the last one are a line a
    crash (or a full disk) left unfinished: left out even when they parse, as a number may have lost digits.
    """
    if not data or data.endswith(b"\n"):
        return data, None
    end = data.rfind(b"\n") + 1
    return data[:end], data[:end].count(b"\n") + 1


def _read_metrics_rows(path: Path, problems: list[str], required: bool = True) -> list[dict]:
    """The complete rows of metrics.csv; a cut-short last line or a damaged line is noted and left out, and a
    missing file too when ``required``."""
    data = _read_bytes(path, problems, required)
    if not data:
        if data is not None:
            problems.append(f"{METRICS_FILE} is empty: no epoch was recorded.")
        return []
    # The strict reader's reading first, as `cnnlab diagnose` reads the file: bytes that are not text (a NUL
    # byte, not UTF-8) are damage whatever the file ends with, not a line the run stopped writing.
    skipped: list[tuple[str, str]] = []
    try:
        rows = read_metrics(path, skipped)
    except CnnlabError as err:
        reason = str(err)
        complete, _ = _split_cut(data)
        text = complete.decode("utf-8", errors="replace")
        # the rows before the damage (none when no line is complete)
        rows, _ = _salvage(text, METRIC_COLUMNS, ("epoch", "step"), ("epoch",)) if complete else ([], None)
    else:
        if not skipped:
            return rows
        _, cut = _split_cut(data)
        reason = f"{METRICS_FILE} line {cut} is cut short (the run stopped while writing it) and was left out."
    problems.append(f"{reason} Read {counted(len(rows), 'complete epoch row')} before the damage.")
    return rows


def _read_step_rows(path: Path, problems: list[str], required: bool = True) -> list[tuple[int, float, float]]:
    """(step, loss, lr) of steps.csv; a cut-short last line or a damaged line is noted and left out, and a
    missing file too when ``required``."""
    data = _read_bytes(path, problems, required)
    if not data:
        if data is not None:
            problems.append(f"{STEPS_FILE} is empty: no step was recorded.")
        return []
    skipped: list[tuple[str, str]] = []
    try:
        rows = read_steps(path, skipped)
        for where, why in skipped:
            problems.append(f"{STEPS_FILE}: {where} {why}; left out.")
    except CnnlabError as err:
        complete, cut = _split_cut(data)
        rows, _ = _salvage(complete.decode("utf-8", errors="replace"), STEP_COLUMNS, ("step",), STEP_COLUMNS)
        rows = [row for row in rows if row["loss"] is not None and row["lr"] is not None]
        problems.append(f"{err} Read {counted(len(rows), 'step row')} before the damage.")
    return [(row["step"], row["loss"], row["lr"]) for row in rows]


def _read_config(folder: RunFolder, problems: list[str]) -> Optional[dict]:
    """config.yaml as nested plain dicts: checked by cnnlab.config; raw YAML when it does not pass, read as
    cnnlab reads a config (1e-3 a number, :func:`cnnlab.config.safe_load_shown`), so that a value shows as the
    run would have taken it."""
    import yaml

    from cnnlab.config import SECTIONS, config_to_dict, safe_load_shown, safe_load_unique

    try:
        config = config_to_dict(folder.read_config())
    except CnnlabError as err:
        problems.append(str(err))
    else:
        # A run writes every section; one that is absent (a file cut short, or edited) would be shown with
        # cnnlab's defaults as if the run had used them.
        raw = safe_load_unique(folder.config.read_text(encoding="utf-8"))  # read as read_config read it
        missing = [name for name in SECTIONS if not isinstance(raw, dict) or name not in raw]
        if missing:
            problems.append(f"{CONFIG_FILE} lacks the {noun_for(len(missing), 'section')} {', '.join(missing)} that every run writes (cut "
                            "short, or edited): they are shown with cnnlab's defaults, which may not be what the "
                            "run used.")
        return config
    try:  # the values this cnnlab refused may still name the model and data
        raw = safe_load_shown(folder.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TooLongNumberError):
        return None
    return raw if isinstance(raw, dict) else None


def _config_value(config: Optional[dict], section: str, key: str):
    part = config.get(section) if isinstance(config, dict) else None
    return part.get(key) if isinstance(part, dict) else None


def _summary_totals(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(parameters, conv+linear MACs per image) from summary.txt's totals lines; None for each one absent. The
    totals are the batch's: a run writes them at batch 1, or 2 for norms that need two images (forward activations'
    line says which)."""
    if not text:
        return None, None
    params = _PARAMS_LINE.search(text)
    compute = _COMPUTE_LINE.search(text)
    batch = _BATCH_LINE.search(text)
    macs = None
    if compute is not None:
        value = int(compute.group(2).replace(",", ""))
        macs = value // 2 if compute.group(1) == "FLOPs" else value  # FLOPs = 2 x MACs
        macs //= max(int(batch.group(1).replace(",", "")), 1) if batch else 1
    return (int(params.group(1).replace(",", "")) if params else None), macs


def _read_evals(folder: RunFolder, problems: list[str], identities: dict,
                steps: list[tuple[int, float, float]]) -> list[EvalRecord]:
    """Every eval folder of the run that holds its metrics.json, by folder name, each marked stale when the
    checkpoint it measured has been written again since (``identities``: the checkpoints' identities, shared;
    ``steps``: the run's steps.csv rows, which tell a copy of a whole run from an eval folder copied in)."""
    from cnnlab.evaluate.measured import stale_reason

    evals = []
    for path in sorted(folder.path.glob(EVAL_FOLDER_PATTERN)):
        if not path.is_dir():
            continue
        own: list[str] = []
        metrics = _read_json(path / EVAL_METRICS_FILE, own, required=True)
        problems.extend(f"{path.name}/{problem}" for problem in own)
        if metrics is None:
            continue
        confusion, mistakes = path / EVAL_CONFUSION_PNG, path / EVAL_MISTAKES_PNG
        # An eval from before evals recorded their weights names its checkpoint (as typed then: its name is
        # what still holds), else it read the run's own one.
        checkpoint = metrics.get("checkpoint")
        legacy = folder.path / Path(checkpoint).name if isinstance(checkpoint, str) and checkpoint else _own(folder)
        elsewhere, copied = _measured_elsewhere(metrics, path, folder.path, identities, steps)
        stale = None
        if not copied:  # a copied eval's record leads to this run's file, which never held the weights it measured
            stale = stale_reason(metrics.get(MEASURED_KEY), path, path / EVAL_METRICS_FILE, legacy, identities)
        evals.append(EvalRecord(path.name, path, metrics, confusion if confusion.is_file() else None,
                                mistakes if mistakes.is_file() else None, stale, elsewhere))
    return evals


def _measured_elsewhere(metrics: dict, path: Path, run: Path, identities: dict,
                        steps: list[tuple[int, float, float]]) -> tuple[Optional[str], bool]:
    """(the checkpoint outside ``run`` whose weights the eval in ``path`` measured, as shown; whether the eval
    folder was copied here from that checkpoint's run), or (None, False) for weights of this run, and for an eval
    that records no weights (an older cnnlab: the caller goes by its checkpoint's file name, as before).

    The record's path is relative to the eval folder: an eval written outside the run (--out) and placed in it
    leads out of the run. An eval folder copied from another run (``cp -r A/eval-test-none B/``) has
    '../best.safetensors', which leads to this run's file too: its absolute ``checkpoint`` tells, when that is
    another file that holds the measured weights and this run's file does not.

    A whole run copied (``cp -r A B``) and trained on since looks the same from the eval's record: its file no
    longer holds the weights, A's still does. But B held them once: its ``steps`` up to the step the eval measured
    are A's (:func:`_shares_history`), so the eval measured B's own weights and is stale, not another run's."""
    from cnnlab.evaluate.measured import holds_measured

    recorded = metrics.get(MEASURED_KEY)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("file"), str) or not recorded["file"]:
        return None, False
    checkpoint = metrics.get("checkpoint")
    absolute = Path(checkpoint) if isinstance(checkpoint, str) and Path(checkpoint).is_absolute() else None
    measured = Path(os.path.normpath(path / recorded["file"]))
    if not _in_folder(measured, run):
        if absolute is not None and _in_folder(absolute, run) and absolute.is_file():
            return None, False  # written elsewhere, then moved into the run it measured
        return display_name(str(measured)), False
    if absolute is None or _in_folder(absolute, run):
        return None, False
    # copied: this run's file does not hold the weights measured (a resume would leave the absolute path in the run),
    # the file the eval read still does
    if holds_measured(recorded, measured, identities) is False and holds_measured(recorded, absolute, identities):
        if _shares_history(steps, absolute.parent, recorded.get("step")):
            return None, False  # the whole run was copied, then trained on: its own weights, replaced since
        return display_name(str(absolute)), True
    return None, False


def _shares_history(steps: list[tuple[int, float, float]], other: Path, step: object) -> bool:
    """Whether a run whose steps.csv rows are ``steps`` trained through the same steps as the run in the folder
    ``other``, up to and including ``step`` (the step of a checkpoint of ``other``): every (step, loss, lr) row
    1..step in both and equal, so the run once held that checkpoint's weights (a copy of ``other``, trained on
    since; or the same seed and config, trained step for step alike). False when that cannot be told: no step
    recorded (a checkpoint before any step), ``other`` has no steps.csv, or either lacks a row of the stretch.

    A run's losses and rates are written with every digit of the float, so two runs trained apart differ within
    their first steps (another seed: the first loss; another rate or schedule: the lr column); a copy's rows are
    the original's. Runs whose rows agree that far trained the same weights through them."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return False
    ours = _history(steps, step)
    if ours is None:
        return False
    theirs = _history(_read_step_rows(RunFolder(other).steps, [], required=False), step)
    return theirs is not None and theirs == ours


def _history(steps: list[tuple[int, float, float]], upto: int) -> Optional[list[tuple[int, str, str]]]:
    """The rows of steps 1..``upto`` as (step, loss, lr) with the floats as text (a NaN loss equals itself), None
    when one of those steps has no row (a damaged line left out, a run that stopped earlier)."""
    rows = [(number, repr(loss), repr(lr)) for number, loss, lr in steps if number <= upto]
    return rows if [number for number, _, _ in rows] == list(range(1, upto + 1)) else None


def _in_folder(file: Path, folder: Path) -> bool:
    """Whether ``file`` lies directly in ``folder``, links followed (where a run keeps its checkpoints)."""
    try:
        return file.resolve().parent == folder.resolve()
    except (OSError, RuntimeError):  # a link loop
        return False


def _own(folder: RunFolder) -> Optional[Path]:
    """The run's own checkpoint (best, else last), None when it has neither."""
    try:
        return folder.checkpoint()
    except CnnlabError:
        return None


def _read_ensembles(folder: RunFolder, problems: list[str], identities: dict) -> list[dict]:
    """Every `cnnlab ensemble --out RUN/NAME.json` result saved in the run folder (RUN/NAME.json: any name), by name, each
    with "file" set to its path (as run_ensemble returns it) and "stale" to why it no longer describes the
    weights of its members (a member's checkpoint written again since; for a result from before members
    recorded their weights, one of this run's written after it), else None. A file is one when it has an
    ensemble result's keys (:func:`cnnlab.run.is_ensemble_result`; a new run in the folder removes them).

    Every JSON file of the folder is read to find them, so each one that cannot be read or parsed is named in
    ``problems``, whatever its name: it may be a damaged result (an ensemble saved as RUN/pair.json and cut short
    was left out without a word). A RUN/ensemble*.json that holds JSON but no object is named too; another file
    that holds valid JSON but no ensemble result is left alone. status.json, environment.json and init.json are
    read (and their damage named) by :func:`read_run` itself."""
    from cnnlab.evaluate.measured import legacy_member_file, stale_reason

    found = []
    for path in sorted(folder.path.glob("*.json")):
        if path.name in _READ_ON_THEIR_OWN:
            continue
        own: list[str] = []
        if fnmatch.fnmatch(path.name, ENSEMBLE_PATTERN):
            result = _read_json(path, own)
        else:
            result = _read_any_json(path, own)
        problems.extend(own)
        if not is_ensemble_result(result):
            continue
        result.setdefault("file", str(path))
        reasons = []
        for member in result.get("members") or []:
            if not isinstance(member, dict):
                continue
            checkpoint = member.get("checkpoint")
            why = stale_reason(member.get(MEASURED_KEY), folder.path, path,
                               legacy_member_file(checkpoint, folder.path), identities)
            if why is not None:
                reasons.append(f"member {checkpoint}: {why}")
        result["stale"] = "; ".join(reasons) or None
        found.append(result)
    return found


# The run's JSON files read_run reads for what they are, naming their own damage (not read again for ensembles)
_READ_ON_THEIR_OWN = (STATUS_FILE, ENVIRONMENT_FILE, INIT_FILE)


def _read_any_json(path: Path, problems: list[str]) -> object:
    """The JSON value in ``path``, a file of any name in a run folder; None, and a problem naming it, when it cannot
    be read or is not JSON (it may be a `cnnlab ensemble` result cut short). None without a problem when ``path``
    is not a file (a folder named NAME.json holds no result)."""
    if not path.is_file():
        return None
    data = _read_bytes(path, problems, required=False)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        problems.append(f"{path.name} is not JSON ({err}): if it is a saved `cnnlab ensemble` result, it is not "
                        "shown.")
        return None


def _test_acc(evals: list[EvalRecord], folder: RunFolder, data: object) -> tuple[Optional[float], bool]:
    """(top1 of eval-test-none, else of the first other eval-test-* folder (by name, the raw weights' before the
    EMA's), counting only the evals of the run's own checkpoint (best, else last) on its own data's test split: an
    eval of last.safetensors, a snapshot, another split (eval --out) or other data (written to eval-...-last,
    eval-...-on-DATA; by older versions to eval-test-none too) is not the run's test accuracy, and neither is a
    stale one (weights a resume has replaced since) nor one that measured another run's weights (EvalRecord.elsewhere,
    from the weights it records); whether an eval that would have counted went stale: evaluating again gives the
    test accuracy back, which an eval of last does not)."""
    own_path = _own(folder)  # None: no checkpoint left (a damaged run): the evals it had still name theirs
    own = own_path.name if own_path is not None else None
    preferred = eval_folder_name("test", "none", False)
    others = [e for e in evals if e.name != preferred and e.name.startswith(_TEST_EVAL_PREFIX)]
    # The raw weights' evals before the EMA's: the run's best val accuracy beside it is the raw weights' too.
    others.sort(key=lambda e: e.metrics.get("weights") == "ema")  # stable: by name within each
    tests = [e for e in evals if e.name == preferred] + others
    stale = False
    for record in tests:
        if record.elsewhere:
            continue
        checkpoint, evaluated_on = record.metrics.get("checkpoint"), record.metrics.get("data")
        if isinstance(checkpoint, str) and own is not None and Path(checkpoint).name != own:
            continue
        split = record.metrics.get("split")
        if isinstance(split, str) and split != "test":  # another split's eval written there (eval --out)
            continue
        # how --data was given: matched only with a run older than the absolute record of its data, which kept its
        # path as typed (a relative path read from the working folder, as the eval's was)
        typed = record.metrics.get("data_typed") if isinstance(data, str) and relative_data_path(data) else None
        if (isinstance(evaluated_on, str) and isinstance(data, str) and not same_data(evaluated_on, data)
                and not (isinstance(typed, str) and same_data(typed, data))):
            continue
        if record.stale:
            stale = True
            continue
        top1 = record.metrics.get("top1")
        if is_finite_number(top1):
            return float(top1), stale
    return None, stale


# ---------------------------------------------------------------------------------------------
# where the run stands


def _pid(status: dict) -> Optional[int]:
    """The process id status.json names, None when it names none that can be one (a hand-edited "abc", 0, 12.5,
    true, or no pid at all)."""
    pid = status.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def _unknown_pid(status: dict) -> str:
    """Why status.json's process cannot be asked for lack of a process id, as a clause ('' when it names one)."""
    if _pid(status) is not None:
        return ""
    if "pid" not in status:
        return f"{STATUS_FILE} names no pid"
    return f"{STATUS_FILE}'s pid {display_name(repr(status['pid']))} is no process id"


def _process_gone(status: dict, folder: RunFolder) -> Optional[str]:
    """Why a status saying "running" cannot be true (its process is gone), or None when it may be."""
    pid, host, updated = status.get("pid"), status.get("host") or "its host", status.get("updated")
    gone = process_gone(pid, host)
    if gone is not None:  # a process of this host: asked
        if gone:
            return f"its process {pid} on {host} is gone"
        # The pid lives, but a pid is reused (a restarted container numbers its processes from 1 again, and so
        # does a rebooted machine): a running run holds its folder's lock file from before its status says
        # running until after it says how it ended (cnnlab.io.hold_folder), so without that file the process
        # with this pid is another one. Where there is no flock (Windows) no run writes the file.
        if _HOLDS_LOCKS and not folder.lock.exists():
            return f"no process holds the run ({folder.lock.name} is gone; process {pid} on {host} is another one now)"
        return None
    # Not asked: a process of another host, or no process id to ask with (then the note says so, as the age of the
    # last update alone decides)
    unknown = _unknown_pid(status)
    unasked = f" ({unknown}, so its process could not be asked)" if unknown else ""
    try:
        when = datetime.datetime.fromisoformat(str(updated))
        if when.tzinfo is None:
            when = when.astimezone()  # a naive time is this machine's local time
    except ValueError:
        return (f"its last update time {updated!r} cannot be read, and its process on {host} cannot be asked"
                + (f" ({unknown})" if unknown else ""))
    age = (datetime.datetime.now().astimezone() - when).total_seconds()
    if age > STALE_SECONDS:
        return f"{host} has not updated it since {updated} ({age / 3600:.1f} h ago){unasked}"
    return None


def _epochs_text(done: int, planned: Optional[int]) -> str:
    return f"{done} of {planned} epochs" if planned else counted(done, 'epoch')


def _non_finite(rows: list[dict], steps: list[tuple[int, float, float]]):
    """``cnnlab.tune.diagnose.non_finite_losses`` of the run: (where a training loss first became NaN or inf,
    where a val loss alone did while the train loss stayed finite), each None when there is none."""
    from cnnlab.tune.diagnose import non_finite_losses

    return non_finite_losses(rows, [{"step": step, "loss": loss, "lr": lr} for step, loss, lr in steps])


def _how_to_continue(folder: RunFolder) -> str:
    """How to carry on with a run that stopped part-way: --resume needs its last checkpoint, which a run
    stopped in its first epoch before any was saved does not have (a second Ctrl-C, a killed process)."""
    path = shell_word(folder.path)
    if folder.path.parent.name == SEARCH_TRIALS_DIR and is_search_folder(folder.path.parent.parent):
        # A search that runs again queues a stopped trial's parameters afresh, in a new trial, and removes the
        # stopped one's folder: a resume of it would be work the search throws away.
        return (f"the `cnnlab search` that made it continues with the same command (--out "
                f"{shell_word(folder.path.parent.parent)}), which runs this trial's parameters again")
    if folder.last.is_file():
        return f"`cnnlab train --resume {path}` continues it"
    return (f"no checkpoint was saved ({folder.last.name}), so there is nothing to resume: "
            f"`cnnlab train --config {shell_word(folder.config)} --out {path}` starts it again")


def _state(folder: RunFolder, status: Optional[dict], rows: list[dict], steps: list, planned: Optional[int],
           problems: list[str]) -> tuple[str, str]:
    """(state, one-sentence note) from status.json, checked against the process, else from the files."""
    done = rows[-1]["epoch"] if rows else 0
    recorded = _epochs_text(done, planned)
    state = status.get("state") if status is not None else None
    if status is not None and state not in RUN_STATES:
        problems.append(f"{STATUS_FILE} says state {state!r}, which is none of {', '.join(RUN_STATES)}; "
                        "the state was read from the other files instead.")
        state = None
    if state is not None:
        epoch = status.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            recorded = _epochs_text(epoch, planned)  # the engine's count: right even when metrics.csv is damaged
        message = status.get("message")
        why = f": {' '.join(str(message).split())}" if message else "."  # an exception's text on one line
        if state == "running":
            unknown = _unknown_pid(status)
            if unknown:  # a hand-edited status.json: the age of its last update alone can tell
                problems.append(f"{unknown} (a whole number above 0), so whether the run's process still lives "
                                f"cannot be asked: the run's state is judged by how long ago {STATUS_FILE} was updated "
                                f"(stopped after {STALE_SECONDS // 3600} h without an update).")
            gone = _process_gone(status, folder)
            if gone is not None:
                return "stopped", (f"stopped after {recorded}: {STATUS_FILE} says running, but {gone}; "
                                   f"{_how_to_continue(folder)}.")
            if unknown:
                return "running", (f"running on {status.get('host', '?')} (pid unknown: {unknown}): {recorded} done, "
                                   f"last update {status.get('updated', '?')}; judged by the update's age alone.")
            return "running", (f"running on {status.get('host', '?')} (pid {status.get('pid', '?')}): {recorded} done, "
                               f"last update {status.get('updated', '?')}.")
        if state == "finished":
            # The engine records "finished" before it writes the reports, report.txt last: a run stopped in
            # between (a kill, a full disk) trained every epoch and lacks them, and a resume writes them. While
            # the run's process still holds the folder it is writing them (its own page is read then).
            if not folder.report.is_file() and lock_holder(folder.lock) is None:
                problems.append(f"{REPORT_FILE} is missing although {STATUS_FILE} says the run finished: it was stopped "
                                f"while writing its reports at the end. `cnnlab train --resume "
                                f"{shell_word(folder.path)}` writes them, training nothing again.")
            return "finished", f"finished {recorded}{why}"  # a message: why it ended early (early stopping)
        if state == "interrupted":
            how = f"interrupted ({' '.join(str(message).split())})" if message else "interrupted (Ctrl-C)"
            return "interrupted", f"{how} after {recorded}; {_how_to_continue(folder)}."
        return state, f"{state} after {recorded}{why}"  # diverged, failed: the message says why
    # no usable status.json: a run older than it, or one whose status was damaged. Diverged as `cnnlab diagnose`
    # reads it: a training loss NaN or inf. A val loss alone is not (its val_not_finite rule): such a run trains
    # on to its end, as the engine's own status would record, and the note names it.
    blown, val_only = _non_finite(rows, steps)
    if blown is not None:
        return "diverged", f"diverged after {recorded}: {blown.text()}."
    if not rows:
        return "empty", f"no epoch finished ({METRICS_FILE} holds no complete row)."
    val_note = ""
    if val_only is not None:
        val_note = (f" {val_only.text()} while train_loss stayed finite: evaluation-mode statistics, not divergence "
                    "(`cnnlab diagnose`: val_not_finite).")
    if folder.report.is_file() and (planned is None or done >= planned):
        return "finished", f"finished {recorded}.{val_note}"
    ending = (f"no {REPORT_FILE}" if not folder.report.is_file() else f"{REPORT_FILE} present")
    return "incomplete", (f"{recorded} recorded and {ending}: the run stopped early or is still running "
                          f"(no {STATUS_FILE} says which).{val_note}")


def _check_checkpoints(folder: RunFolder, rows: list[dict], problems: list[str]) -> None:
    """Name a checkpoint that is damaged, or a run with finished epochs and neither checkpoint (the engine
    writes last.safetensors after every epoch): eval, export and --resume need one."""
    from cnnlab.train.checkpoint import read_checkpoint_meta

    present = [path for path in (folder.best, folder.last) if path.exists() or path.is_symlink()]
    for path in present:
        try:
            read_checkpoint_meta(path)  # the header only: a file cut short or garbled is caught there
        except CnnlabError as err:
            problems.append(str(err))
    if rows and not present:
        problems.append(f"Neither {folder.best.name} nor {folder.last.name} is in the run folder, although "
                        f"{counted(len(rows), 'epoch')} finished: the weights are gone, so eval, export and --resume "
                        "cannot use this run.")


def _findings(folder: RunFolder, rows: list[dict], steps: list[tuple[int, float, float]], problems: list[str]) -> list:
    """The diagnose rules on the rows read here (so a damaged file still gets its curves read)."""
    from cnnlab.tune.diagnose import diagnose, run_num_classes

    if not rows and not steps:
        return []
    num_classes = run_num_classes(folder.path)  # the ln(C) comparisons, as `cnnlab diagnose` reads them
    step_rows = [{"step": step, "loss": loss, "lr": lr} for step, loss, lr in steps]
    try:
        return diagnose(rows, step_rows, num_classes)
    except (CnnlabError, ValueError, ArithmeticError) as err:
        problems.append(f"The curves could not be diagnosed: {err}")
        return []


# ---------------------------------------------------------------------------------------------
# public API


def _check_epoch_rows(rows: list[dict], recorded: object, problems: list[str]) -> None:
    """A problem when metrics.csv lacks the rows of epochs the run finished: below its last row, or up to the
    epochs done that status.json records (``recorded``). The file was deleted or cut since: the run's time, curves
    and curve check miss those epochs, which a resume cannot redo (its checkpoint is past them)."""
    last = max((row["epoch"] for row in rows if isinstance(row.get("epoch"), int)), default=0)
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        last = max(last, recorded)
    missing = missing_numbers((row.get("epoch") for row in rows), last)
    if missing:
        what = "epoch" if missing.isdigit() else "epochs"
        problems.append(f"{METRICS_FILE} lacks the rows of {what} {missing}, which the run finished: the file was "
                        "deleted or cut since, so the time, the curves and the curve check miss them.")


def read_run(path: str | Path, *, diagnose: bool = True) -> RunRecord:
    """Everything about the run folder ``path``, for a report or a listing.

    Never raises on a damaged run: a missing, unreadable, cut-short or garbled file becomes a line of
    ``problems`` and the rest is read. Raises CnnlabError (naming the path, saying what to name
    instead) only when ``path`` is not a run folder (missing, a file, no config.yaml).
    ``diagnose=False`` skips the curve rules (``findings`` stays empty): a listing does not show them.
    """
    path = Path(path)
    if not is_run_folder(path):
        raise _not_a_run(path)
    folder = RunFolder(path)
    problems: list[str] = []
    config = _read_config(folder, problems)
    model, data = _config_value(config, "model", "name"), _config_value(config, "data", "spec")
    status_problems: list[str] = []
    status = _read_json(folder.status, status_problems)  # absent in runs older than status.json: not a problem
    # The engine writes status.json before the first step, steps.csv at the first step and metrics.csv at the
    # end of the first epoch: while its status counts no finished epoch (a run in its first epoch, or one that
    # stopped, diverged or failed there), their absence is where the run stands, not damage.
    epoch = status.get("epoch") if status is not None else None
    before_first_epoch = (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch == 0
                          and status.get("state") in RUN_STATES)
    noted = len(problems)
    rows = _read_metrics_rows(folder.metrics, problems, required=not before_first_epoch)
    if len(problems) == noted:  # read whole (a missing or damaged file is noted as such)
        _check_epoch_rows(rows, epoch, problems)
    steps = _read_step_rows(folder.steps, problems, required=not before_first_epoch)
    problems.extend(status_problems)
    planned = status.get("epochs") if status is not None else None
    if not isinstance(planned, int) or isinstance(planned, bool) or planned < 1:
        planned = _config_value(config, "train", "epochs")
        planned = planned if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0 else None
    state, note = _state(folder, status, rows, steps, planned, problems)
    _check_checkpoints(folder, rows, problems)

    scored = [row for row in rows if is_finite_number(row.get("val_acc"))]
    best = max(scored, key=lambda row: row["val_acc"]) if scored else None  # max keeps the first of equals
    seconds, images, wall = 0.0, 0.0, []
    for row in rows:
        epoch_seconds = row.get("epoch_seconds")
        if is_finite_number(epoch_seconds):
            seconds += epoch_seconds
            if is_finite_number(row.get("images_per_second")):
                images += row["images_per_second"] * epoch_seconds  # images trained in the epoch
        wall.append(seconds)
    if not math.isfinite(seconds):  # finite epoch times whose sum overflows: no time a run took, so unknown
        problems.append(f"{METRICS_FILE}'s epoch_seconds add up to more than a number can hold (inf), so the run's "
                        "training time is unknown: the file was damaged or edited.")
    images_per_second = images / seconds if seconds > 0 and images > 0 else None
    if images_per_second is not None and not math.isfinite(images_per_second):  # inf / inf, or images overflowed
        images_per_second = None

    summary_bytes = _read_bytes(folder.summary, problems, required=True)
    summary_text = summary_bytes.decode("utf-8", errors="replace") if summary_bytes is not None else None
    params, macs = _summary_totals(summary_text)
    if summary_text and (params is None or macs is None):
        problems.append(f"{SUMMARY_FILE} has no totals lines (parameters, conv+linear MACs), so they are not shown.")
    identities: dict = {}  # each checkpoint's identity, read once for all the results that name it
    evals = _read_evals(folder, problems, identities, steps)
    test_acc, stale_test = _test_acc(evals, folder, data)
    return RunRecord(
        path=path, name=display_name(path.name or path.resolve().name),  # "." is named by the folder it is
        state=state, state_note=note, config=config,
        model=model if isinstance(model, str) else "?", data=display_name(data) if isinstance(data, str) else "?",
        epochs_planned=planned, rows=rows, steps=steps,
        best_val_acc=best["val_acc"] if best else None, best_epoch=best["epoch"] if best else None,
        final_val_acc=rows[-1].get("val_acc") if rows else None,
        seconds=seconds, images_per_second=images_per_second,
        wall_seconds=wall, params=params, macs=macs,
        environment=_read_json(folder.environment, problems), init=_read_json(folder.init, problems),
        summary_text=summary_text, findings=_findings(folder, rows, steps, problems) if diagnose else [],
        evals=evals, ensembles=_read_ensembles(folder, problems, identities), test_acc=test_acc, problems=problems,
        curves_png=folder.curves if folder.curves.is_file() else None, status=status, stale_test=stale_test,
    )


def expand_runs(paths, say: Optional[Callable[[str], None]] = None) -> list[Path]:
    """The run folders ``paths`` name, in order: a run folder as itself, a `cnnlab search` folder as all
    its trials (by trial name). A folder that merely holds runs is not expanded (a report compares the
    runs it is given): that, and anything else, raises CnnlabError naming it. A run named twice (the same
    folder, or a trial of a search also named) is kept once, and ``say`` is told which. ``say`` also hears of
    the folders in a search's trials/ that are not runs (a trial that lost its config.yaml), counted and named
    as `cnnlab runs` names them: the page cannot show them."""
    # resolved path -> the run as first named; the runs named again, each once however often and however
    # written (a1, ./a1 and /abs/a1 are one run named three times), by the name it is shown under
    seen: dict[Path, Path] = {}
    repeated: dict[Path, Path] = {}
    for path in map(Path, paths):
        if is_run_folder(path):
            runs = [path]
        elif path.is_dir() and is_search_folder(path) and _search_trials(path):
            runs = _search_trials(path)
            left_out = _not_trials(path)
            if left_out and say is not None:
                say(f"{display_name(str(path))}: {skipped_text(left_out)}")
        else:
            raise _not_a_run(path)
        for run in runs:
            key = run.resolve()
            if key not in seen:
                seen[key] = run
            else:
                repeated.setdefault(key, seen[key])
    if not seen:
        raise CnnlabError(f"No run folder was named. {_POINT}")
    if repeated and say is not None:
        say(f"{counted(len(repeated), 'run')} named more than once, shown once: "
            f"{', '.join(display_name(str(path)) for path in repeated.values())}")
    return list(seen.values())


def name_apart(records: Sequence[RunRecord]) -> None:
    """Name each run by the fewest trailing parts of its path that no other run of ``records`` shares:
    its folder name when that is unique, else e.g. ``10/seed0/top`` and ``30/seed0/top`` (runs nested in
    size and seed folders, as experiments and transfer ladders write them, all end in a few names)."""
    parts = [Path(os.path.abspath(record.path)).parts for record in records]  # abspath: links kept as named
    depth = [1] * len(records)
    while True:
        names: dict[str, list[int]] = {}
        for i, run_parts in enumerate(parts):
            names.setdefault("/".join(run_parts[-depth[i]:]), []).append(i)
        grew = False
        for group in (group for group in names.values() if len(group) > 1):
            for i in group:
                if depth[i] < len(parts[i]):
                    depth[i] += 1
                    grew = True
        if not grew:
            break
    for record, run_parts, k in zip(records, parts, depth):
        record.name = display_name("/".join(run_parts[-k:]))  # a name is text to read: a byte not UTF-8 as \xff


def _walk(root: Path, on_run: Callable[[Path], None], *, on_search: Optional[Callable[[Path], int]] = None,
          follow_links: bool = False, skipped: Optional[list[tuple[Path, str]]] = None, into_runs: bool = False,
          max_depth: Optional[int] = None) -> int:
    """The one walk of a folder tree for runs, shared by :func:`find_runs` and :func:`held_runs`; returns
    how many runs it found.

    Depth first, children by name. ``root`` itself, or any folder below it, that is a run folder goes to
    ``on_run`` and is not searched inside (its eval-* and tensorboard folders are its own). With
    ``on_search``, a `cnnlab search` folder is handed to it instead of being walked, and it returns how many
    runs it counted there. ``follow_links``: a link to a folder is walked (each folder once: a link back up
    the tree, or to a folder already walked, is skipped); else links are not followed. ``skipped``, when
    given, gets ``(folder, reason)`` for a folder that cannot be read, a link already walked, and each
    topmost folder under ``root`` with no run anywhere inside it. ``into_runs``: a run folder is searched inside
    as well, for runs trained into a folder of another run (``--out runs/base/finetune``); its own folders
    that hold no run (eval-*, tensorboard) are not counted as skipped. ``max_depth``: only the folders at most this
    many levels below ``root`` are looked at (its children are 1), None for the whole tree.
    """
    visited = {root.resolve()}
    # The folders the walk reaches by their own path, not through a link: a link to one of them is skipped
    # wherever it sorts, so that a run is listed under its own name (a link sorting first took its place).
    reached_directly = set()
    if follow_links:
        for folder, _, _ in os.walk(root):  # links not followed
            reached_directly.add(Path(folder).resolve())

    def skip(folder: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((folder, reason))

    def take(folder: Path, depth: int) -> Optional[int]:
        """The runs ``folder`` (``depth`` levels below ``root``) counts as a run or a search folder; None when it is
        neither (walk it)."""
        if is_run_folder(folder):
            on_run(folder)
            if not into_runs:
                return 1
            mark = len(skipped) if skipped is not None else 0
            inside = visit(folder, depth)
            if skipped is not None:
                del skipped[mark:]  # the run's own eval-* and tensorboard folders are no skipped folders
            return 1 + inside
        if on_search is not None and is_search_folder(folder):
            return on_search(folder)
        return None

    def visit(folder: Path, depth: int) -> int:
        """Runs found under ``folder`` (``depth`` levels below ``root``); its subfolders holding none are skipped
        (as one entry each)."""
        found = 0
        if max_depth is not None and depth >= max_depth:
            return 0
        try:
            entries = sorted(folder.iterdir())
            for entry in entries[:1]:  # a folder that can be listed but not entered (mode 600) fails here
                entry.lstat()
        except OSError as err:
            skip(folder, f"{UNREADABLE_SKIPPED} ({err.strerror or err})")
            return 0
        children, broken = [], []
        for entry in entries:
            try:
                if entry.is_symlink() and not entry.exists():
                    broken.append(entry)
                elif entry.is_dir() and (follow_links or not entry.is_symlink()):
                    children.append(entry)
            except OSError as err:  # a link into a folder this user may not enter: its stat is refused (EACCES)
                skip(entry, f"{UNREADABLE_SKIPPED} ({err.strerror or err})")
        for entry in broken:
            skip(entry, f"{BROKEN_LINK_SKIPPED} (what it names does not exist)")
        for child in children:
            if follow_links:
                try:
                    key = child.resolve()
                except OSError as err:
                    skip(child, f"{UNREADABLE_SKIPPED} ({err.strerror or err})")
                    continue
                if key in visited or (child.is_symlink() and key in reached_directly):
                    # a link back up the tree, or to a folder searched (or to be searched) under its own name
                    skip(child, f"{LINK_SKIPPED} '{display_name(str(key))}', already searched")
                    continue
                visited.add(key)
            taken = take(child, depth + 1)
            if taken is not None:
                found += taken
                continue
            mark = len(skipped) if skipped is not None else 0
            inside = visit(child, depth + 1)
            found += inside
            if not inside and skipped is not None:
                # Report the folder itself, not every empty folder below it; but where a run below it lost its
                # config.yaml, what lies below is named as it is (the folder's own reason would hide that run)
                lost_below = any(reason.startswith(LOST_CONFIG_SKIPPED) for _, reason in skipped[mark:])
                if _lost_config(child) or not lost_below:
                    del skipped[mark:]
                    skipped.append((child, _skip_reason(child)))
        return found

    taken = take(root, 0)
    return taken if taken is not None else visit(root, 0)


def find_runs(root: str | Path) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Every run folder under ``root`` (depth first, by name; search trials included) read without
    diagnosis, and ``(folder, reason)`` for each folder skipped because neither it nor anything in it is
    a run. A run trained into a folder of another run (``--out runs/base/finetune``) is found too; the run's own
    folders (eval-*, tensorboard) are not counted as skipped. A folder holding a run's files
    but no config.yaml (``root`` too) is skipped as itself, the reason naming what it has and lacks, rather
    than as its eval folders. CnnlabError when ``root`` is missing or a file."""
    root = Path(root)
    if not root.exists():
        raise CnnlabError(f"'{display_name(str(root))}' does not exist, so there are no runs to list. "
                          "Name the folder your runs are in (the folder above each run's --out).")
    if not root.is_dir():
        raise CnnlabError(f"'{display_name(str(root))}' is a file, not a folder of runs. Name the folder your runs are in.")
    records: list[RunRecord] = []
    skipped: list[tuple[Path, str]] = []
    # A search folder is walked as any folder: its trials are run folders in trials/
    _walk(root, lambda run: records.append(read_run(run, diagnose=False)), follow_links=True, skipped=skipped,
          into_runs=True)
    lost = _lost_config(root)
    if not records and lost:  # the folder named is a run that lost its config: it, not its eval folders, is skipped
        skipped = [(root, lost)]
    name_apart(records)
    return records, skipped


def held_runs(root: str | Path) -> tuple[list[Path], list[Path]]:
    """What ``root`` really holds of runs: (the run folders under it that count, the `cnnlab search` folders
    under it that finished no trial), each by path, depth first by name.

    A run folder outside a search counts as it is: training resumes it. A search never resumes an
    interrupted trial (it runs the trial's point again as a new trial), so of a search folder only the
    trials that finished an epoch count; one with none, such as a grid stopped before its first trial
    ended, holds no run. Run folders are not searched inside; links are not followed."""
    runs: list[Path] = []
    empty_searches: list[Path] = []

    def search(folder: Path) -> int:
        finished = [trial for trial in _search_trials(folder)
                    if _read_metrics_rows(RunFolder(trial).metrics, [], required=False)]
        runs.extend(finished)
        if not finished:
            empty_searches.append(folder)
        return len(finished)

    _walk(Path(root), runs.append, on_search=search)
    return runs, empty_searches


# How far below a folder that is no run the refusal to report it looks for the runs it holds (_not_a_run): a
# transfer ladder's runs are 3 levels down (SIZE/seedK/RUNG), as are an experiment's (runs/SETTING/seedK), and a
# search's trials inside a folder of searches (SEARCH/trials/TRIAL).
HELD_RUNS_DEPTH = 4

# How the reasons find_runs gives for a skipped path begin, for skipped_text's groups.
LINK_SKIPPED = "a link to"
BROKEN_LINK_SKIPPED = "a broken link"
UNREADABLE_SKIPPED = "cannot be read"
# A folder a run holds (its lock) before it has written its config.yaml: the first moment of `cnnlab train`
STARTING_SKIPPED = "a run is starting in it"
LOST_CONFIG_SKIPPED = "a run's files"
_EMPTY_SKIPPED = "empty folder"


def skipped_text(skipped: list[tuple[Path, str]], shown: int = 10) -> str:
    """The paths :func:`find_runs` skipped, in groups by why: folders with no run in them; links to a folder
    already searched (the run a link leads to is listed under its own name: it is not "not a run");
    broken links (no folder at all); folders that cannot be read. '' when none; each group names up to ``shown``
    paths."""
    groups: dict[str, list[Path]] = {}
    for path, reason in skipped:
        if reason.startswith(LINK_SKIPPED):
            kind = "link"
        elif reason.startswith(BROKEN_LINK_SKIPPED):
            kind = "broken link"
        elif reason.startswith(UNREADABLE_SKIPPED):
            kind = "unreadable"
        elif reason.startswith(LOST_CONFIG_SKIPPED):
            kind = "lost config"
        elif reason.startswith(STARTING_SKIPPED):
            kind = "starting"
        else:
            kind = "not a run"
        groups.setdefault(kind, []).append(path)
    labels = {"not a run": ("folder", "no run in them"), "link": ("link", "to a folder searched already"),
              "broken link": ("broken link", "what it names does not exist"),
              "unreadable": ("folder", "cannot be read"),
              "lost config": ("folder", f"a run's files but no {CONFIG_FILE}, so not read as a run; restore its "
                                        f"{CONFIG_FILE} from a copy to list it"),
              "starting": ("folder", f"{STARTING_SKIPPED}, with no {CONFIG_FILE} yet; list them again in a moment")}
    parts = []
    for kind, paths in groups.items():
        noun, why = labels[kind]
        if kind == "not a run" and len(paths) == 1:
            why = "no run in it"
        names = ", ".join(display_name(str(path)) for path in paths[:shown]) + (" ..." if len(paths) > shown else "")
        parts.append(f"{counted(len(paths), noun)} skipped ({why}): {names}")
    return "; ".join(parts)


# The files of a run folder (beside its eval folders) that only a training run writes
_RUN_MARKS = (METRICS_FILE, STEPS_FILE, CHECKPOINT_LAST, CHECKPOINT_BEST, STATUS_FILE)


def _lost_config(folder: Path) -> str:
    """Why ``folder`` looks like a run folder that lost its config.yaml (the files a run writes are there, and
    its eval folders; a run is told by its config.yaml), or '' when it does not."""
    if os.path.exists(folder / CONFIG_FILE):  # False in a folder that cannot be entered: tried below
        return ""
    try:
        found = [name for name in RUN_FILES if name != LOCK_FILE and (folder / name).is_file()]
        found += [f"{path.name}/" for path in sorted(folder.glob(EVAL_FOLDER_PATTERN)) if path.is_dir()]
    except OSError:
        return ""
    # Only the files no other command writes tell a run: an experiment's or `cnnlab report --out`'s folder may
    # hold a report.html
    if not any(name in found for name in _RUN_MARKS) and not any(name.endswith("/") for name in found):
        return ""
    shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
    return f"{LOST_CONFIG_SKIPPED} ({shown}) but no {CONFIG_FILE}"


def _skip_reason(folder: Path) -> str:
    try:  # first: a folder that cannot be read (or entered) tells nothing else
        empty = not any(folder.iterdir())
        config_there = (folder / CONFIG_FILE).exists()
    except OSError as err:
        return f"{UNREADABLE_SKIPPED} ({err.strerror or err})"
    if config_there:
        return f"its {CONFIG_FILE} is not a file"
    holder = RunFolder(folder).starting_holder()
    if holder is not None:
        return f"{STARTING_SKIPPED} ({holder})"
    lost = _lost_config(folder)
    if lost:
        return lost
    if empty:
        return _EMPTY_SKIPPED
    if is_search_folder(folder):
        return f"a search folder whose {SEARCH_TRIALS_DIR}/ holds no run yet"
    return f"no {CONFIG_FILE}, and no run folder inside"


def _descending(value: Optional[float]) -> tuple:
    """Sort key: highest first, missing last."""
    return (0, -value) if is_finite_number(value) else (1, 0.0)


def runs_rows(records: list[RunRecord], sort: str = "name") -> list[dict]:
    """One plain dict per run (name, path, model, data, epochs "3/10", best_val, test, seconds, state,
    note, problems: the run's files that were missing or damaged, stale: ``{"result", "why"}`` of each eval
    folder or saved ensemble result that measured weights the run no longer holds, test_stale: whether test is
    None because the test evals are stale, elsewhere: ``{"result", "weights"}`` of each eval folder that measured
    a checkpoint outside the run, never its test accuracy), sorted by ``sort``: name, model,
    state (in RECORD_STATES order), epochs and time ascending; best and test descending; missing
    values last (a run without a finished epoch, or whose metrics.csv records no epoch_seconds, has no time:
    seconds is None). Ties keep name order."""
    if sort not in SORT_KEYS:
        raise CnnlabError(f"Runs cannot be sorted by {sort!r}: the sort keys are {', '.join(SORT_KEYS)}.")
    keys = {
        "name": lambda r: (),
        "best": lambda r: _descending(r.best_val_acc),
        "test": lambda r: _descending(r.test_acc),
        "time": lambda r: (0, r.seconds) if r.has_training_time else (1, 0.0),  # no time recorded: last
        "epochs": lambda r: (r.epochs_done,),
        "state": lambda r: (RECORD_STATES.index(r.state),),
        "model": lambda r: (r.model,),
    }
    ordered = sorted(records, key=lambda r: (*keys[sort](r), r.name, str(r.path)))
    rows = []
    for record in ordered:
        planned = f"/{record.epochs_planned}" if record.epochs_planned else ""
        rows.append({"name": record.name, "path": display_name(str(record.path)), "model": record.model,
                     "data": record.data,
                     "epochs": f"{record.epochs_done}{planned}", "best_val": record.best_val_acc,
                     "test": record.test_acc, "seconds": record.seconds if record.has_training_time else None,
                     "state": record.state,
                     "note": record.state_note, "problems": list(record.problems),
                     "stale": [{"result": name, "why": why} for name, why in record.stale_results],
                     "stale_remedy": stale_remedy(record),
                     "test_stale": record.test_stale,
                     "elsewhere": [{"result": item.name, "weights": item.elsewhere} for item in record.evals
                                   if item.elsewhere]})
    return rows


def _measured_target(record: RunRecord, item: EvalRecord) -> Path:
    """What `cnnlab eval` takes to measure again what ``item`` measured: the run folder for its best checkpoint
    (or when the eval records no file), else the checkpoint file in the run."""
    recorded = item.metrics.get(MEASURED_KEY)
    file = recorded.get("file") if isinstance(recorded, dict) else None
    if not isinstance(file, str) or not file:
        return record.path
    measured = Path(os.path.normpath(item.path / file))  # runs/c/eval-test-none-last/../last.safetensors
    return record.path if measured == Path(os.path.normpath(record.path / CHECKPOINT_BEST)) else measured


def stale_remedy(record: RunRecord) -> str:
    """How to measure again what :attr:`RunRecord.stale_results` names, as commands that run as shown: `cnnlab eval
    RUN` for an eval folder; for a saved ensemble result (a member's weights replaced, perhaps another run's), the
    ensemble of its members again with the same --out. "" when nothing is stale."""
    steps = []
    # each stale eval again on the file it measured: `cnnlab eval RUN` reads best.safetensors, so an eval of
    # last.safetensors or a snapshot names that file
    commands = list(dict.fromkeys(f"`cnnlab eval {shell_word(_measured_target(record, item))}`"
                                  for item in record.evals if item.stale))
    if commands:
        steps.append(f"evaluate again ({', '.join(commands)}, with the same options)")
    for result in record.ensembles:
        if result.get("stale"):
            members = " ".join(shell_word(Path(str(member.get("checkpoint")))) for member in result.get("members") or []
                               if isinstance(member, dict))
            steps.append(f"run the ensemble again (`cnnlab ensemble {members} --out "
                         f"{shell_word(Path(str(result.get('file'))))}`, with the same options)")
    return "; ".join(steps)


def data_groups(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """The runs by the data set they trained on, in the order each first appears: the first run's spec of each
    data set (``RunRecord.data``, as that run recorded it) -> its runs.

    Specs are compared as the loader reads them (:func:`cnnlab.run.same_data`): a run records a folder or CSV
    path made absolute, an older run as typed, and the two name the same data. A run whose config cannot be
    read ("?") is in no group: its problems say why."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.data == "?":
            continue
        spec = next((known for known in groups if same_data(known, record.data)), record.data)
        groups.setdefault(spec, []).append(record)
    return groups


def check_comparable(records: list[RunRecord]) -> None:
    """CnnlabError when the runs were trained on different data sets (:func:`data_groups`: data.spec as the loader
    reads it), naming each group. A run whose config cannot be read is left out of the check."""
    groups = data_groups(records)
    if len(groups) < 2:
        return
    parts = [f"'{spec}' ({', '.join(record.name for record in group)})" for spec, group in groups.items()]
    raise CnnlabError(f"These runs were trained on different data sets, so their curves and accuracies do not "
                      f"compare: {'; '.join(parts)}. Compare runs of one data set, or report each run on its own.")


# The config sections whose keys change no result: what a run shows and records beside its results (the progress
# bar, TensorBoard files, curves.png and the smoothing drawn over it), not what it learns.
RESULT_FREE_SECTIONS = ("log",)


def changes_results(key: str) -> bool:
    """Whether the dotted config key ``key`` can change what a run computes, and so belongs in a comparison of
    runs: not a key of :data:`RESULT_FREE_SECTIONS` (log.quiet, ...), nor one of a run's records of how a path was
    typed (:data:`cnnlab.config.RECORD_KEYS`: data.spec_typed, ...; the path itself, which the run read, is a
    key of its own)."""
    return key.split(".", 1)[0] not in RESULT_FREE_SECTIONS and key not in RECORD_KEYS


def same_setting(key: str, one: object, other: object) -> bool:
    """Whether two runs' values of the dotted config key ``key`` set the same thing as the runs read it. data.spec
    names one data set as :func:`data_groups` (and so :func:`check_comparable`) groups runs: an older run's
    ``folder:imgs`` is the newer run's ``folder:/HERE/imgs``. Another key that names a path (data.data_dir,
    model.init_from: :data:`cnnlab.config.PATH_KEYS`) names one file or folder when the paths lead to one
    place (:func:`cnnlab.run.same_path`). Any other value is compared as it is."""
    from cnnlab.config import PATH_KEYS, path_in

    if one == other:
        return True
    if not isinstance(one, str) or not isinstance(other, str):
        return False
    if key == "data.spec":
        return same_data(one, other)
    section, _, name = key.partition(".")
    if (section, name) not in PATH_KEYS:
        return False
    paths = path_in(section, name, one), path_in(section, name, other)
    if paths[0] is None or paths[1] is None:
        return False
    return paths[0][0] == paths[1][0] and same_path(paths[0][1], paths[1][1])


def compared_config(records: list[RunRecord]) -> tuple[list[str], list[str]]:
    """(the dotted config keys whose values differ between the runs and can change a result, the keys whose
    values differ but change none), each sorted, from :func:`differing_config`. Those that change none are the
    keys of :func:`changes_results`'s kinds (log.*, data.spec_typed, ...), and a key whose values differ as text
    only: :func:`same_setting` for every run (an older run's typed ``folder:imgs`` beside a newer run's absolute
    path to it is how a path was written, not other data)."""
    flats = [flatten_config(record.config) for record in records if isinstance(record.config, dict)]
    changing, free = [], []
    for key in differing_config(records):
        present = [flat for flat in flats if key in flat]
        written_apart = len(present) == len(flats) and all(
            same_setting(key, flat[key], present[0][key]) for flat in present)
        (changing if changes_results(key) and not written_apart else free).append(key)
    return changing, free


def differing_config(records: list[RunRecord]) -> list[str]:
    """The dotted config keys (``optim.lr``) whose values differ between the runs, sorted; runs
    whose config could not be read are left out. A key one run lacks counts as differing. Those that change
    no result (:func:`changes_results`) are among them: a page sets them apart."""
    flats = [flatten_config(record.config) for record in records if isinstance(record.config, dict)]
    if len(flats) < 2:
        return []
    missing = object()
    keys = set().union(*flats)
    return sorted(key for key in keys if any(flat.get(key, missing) != flats[0].get(key, missing) for flat in flats))
