"""``cnnlab search``: the lecture's coarse-to-fine random search, built on Optuna.

The lecture's steps 4-5: sample hyperparameters at random (log-uniform for scales such as the
learning rate and weight decay), train each trial for a few epochs, then narrow every range around
the best trials and train longer, at a constant learning rate (step 5: "without learning-rate
decay"; ``keep_schedule`` keeps the coarse search's schedule instead). Optuna provides the
samplers, the pruners (median, successive halving) and the trial store that lets several processes
or machines share one study (SQLite on one machine, any SQLAlchemy database URL across machines).
cnnlab adds the search-space file, the range narrowing, the per-trial run folders, and the results
table, best config and plots.

A search space is YAML, one entry per config key::

    optim.lr: {low: 1.0e-4, high: 1.0, log: true}      # log-uniform
    optim.weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}
    model.drop_rate: {low: 0.0, high: 0.5}              # uniform
    train.batch_size: {choices: [64, 128, 256]}         # categorical
    model.options.drop_path_rate: {low: 0.0, high: 0.2}

Integer config fields (train.batch_size, train.epochs, ...) are sampled as integers, from the whole
numbers within the range; a builder option has no declared type, so ``int: true`` asks for that. A
searched train.epochs is what each trial trains (and ``epochs``, which would set it for every trial,
is refused with it). For ``--grid``, each range becomes ``points`` values (default 3; geometric when
``log``), or give ``values: [...]``.

The command line only displays what this module decides; from Python, the same search is::

    plan = plan_search(base_config, "runs/s", space="space.yaml", trials=20, epochs=2)
    results, files = run_search(plan)
    plan = plan_search(None, "runs/s", refine=True, trials=10)   # narrowed: plan.refinement
    results, files = run_search(plan)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import multiprocessing
import multiprocessing.managers
import os
import shutil
import signal
import socket
import threading
import time
import types
import typing
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

from cnnlab.config import (RESUME_FREE_KEYS, RunConfig, TooLongNumberError, apply_overrides, clear_preset_values,
                           config_differences, config_from_dict, config_to_dict, dump_yaml, notice, quiet_notes,
                           read_error_text, record_key_problem, record_paths, require_run_config, safe_load_unique,
                           save_config, set_value, validate_config)
from cnnlab.errors import CnnlabError, counted, display_name, noun_for, repeated_values, shown_value
from cnnlab.run import SEARCH_STUDY_FILE, SEARCH_TRIALS_DIR, RunFolder
from cnnlab.text import LINE_COLUMNS, distinct_texts, duration_text, note_lines
from cnnlab.train.between_runs import stop_between_runs, stop_if_held

DEFAULT_GRID_POINTS = 3  # values per range in a grid search when the space names none
REFINE_TOP_SHARE = 0.25  # refine around the best quarter of the completed trials ...
REFINE_TOP_MIN = 3  # ... but at least this many
REFINE_MARGIN = 0.1  # widen the best trials' span by 10% of the old range (log range for log) each side
HEARTBEAT_SECONDS = 10  # a running trial says it is alive this often ...
GRACE_SECONDS = 60  # ... and one silent this long belonged to a killed process: failed and retried
MAX_RETRIES = 3  # a trial whose worker keeps dying is given up after this many retries
DEFAULT_EPOCHS = 2  # epochs per trial of a coarse search: the lecture's "a few epochs" (1-5)
EPOCHS_KEY = "train.epochs"  # set for every trial by the search's epochs, unless the space searches it
REFINE_EPOCHS_FACTOR = 2  # a refined search trains each trial this many times longer than the coarse one
REFINE_STUDY_SUFFIX = "-refine"  # the refined study of study NAME is NAME-refine (files: see study_files)
DEFAULT_STUDY = "search"  # the study `cnnlab search` runs without --study; its files have no prefix
SPACE_FILE = "space.yaml"  # the default study's space, as searched
# The lecture's step 5 trains the refined trials "without learning-rate decay": a constant rate, after
# the coarse config's warm-up (these schedule fields are the ones a constant schedule still reads).
REFINE_SCHEDULE = "constant"
WARMUP_KEYS = ("schedule.warmup_epochs", "schedule.warmup_start")
SAMPLER_SEED_MODULUS = 2**32  # numpy's RandomState, behind Optuna's samplers, takes seeds below 2**32
WORKER_SEED_STRIDE = 1000  # worker k's sampler seed is seed + 1000 k


@dataclass
class Param:
    """One searched key: a range (low, high, log, integer) or a list of choices."""

    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    choices: Optional[list] = None
    points: int = DEFAULT_GRID_POINTS  # grid search: values taken from the range
    values: Optional[list] = None  # grid search: explicit values

    def grid_values(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        if self.values is not None:
            return list(self.values)
        if self.points == 1:
            return [self.low]
        if self.log:
            ratio = (self.high / self.low) ** (1 / (self.points - 1))
            values = [self.low * ratio**i for i in range(self.points)]
        else:
            values = [self.low + (self.high - self.low) * i / (self.points - 1) for i in range(self.points)]
        if self.integer:
            return sorted({round(v) for v in values})
        # 12 significant digits: 1e-05, not the 9.999999999999999e-06 that repeated products give
        return [float(f"{v:.12g}") for v in values]

    def smallest_drawn(self, grid: bool):
        """The smallest value a trial can take: the least choice; in a grid search the least grid value (of
        ``values`` when given, else of the ``points`` from low up); in a random search ``low``, since the
        sampler draws from the whole range and a grid's ``values`` do not apply."""
        if self.choices is not None:
            return min(self.choices)
        if grid:
            return min(self.grid_values())
        return self.low

    def to_yaml(self) -> dict:
        """The entry as a space file writes it: read back by :func:`parse_space`, it gives this Param again."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        entry = {"low": self.low, "high": self.high}
        if self.log:
            entry["log"] = True
        # A builder option has no declared type to make it an integer: without int: true a file read back
        # (or Params passed to plan_search) would draw real numbers for it. A typed key says it either way.
        if self.integer != (_field_type(self.key) is int):
            entry["int"] = self.integer
        # The grid a --grid search takes from the range: without these, space.yaml would describe another grid.
        if self.points != DEFAULT_GRID_POINTS:
            entry["points"] = self.points
        if self.values is not None:
            entry["values"] = list(self.values)
        return entry


# ---------------------------------------------------------------------------------------------
# the search-space file


def _field_type(key: str):
    """The annotated type of a config key, Optional unwrapped; CnnlabError for an unknown key.

    ``model.options.NAME`` and ``model.norm_options.NAME`` keys are free-form entries (builder and norm-layer
    options): their type is None.
    """
    from cnnlab.config import OPEN_MAPPINGS, SECTIONS, _key_suggestion, _section_class, field_types

    section, _, name = key.partition(".")
    mapping, dot, entry = name.partition(".")
    if section == "model" and mapping in OPEN_MAPPINGS and dot and entry:  # model.options.NAME, norm_options.NAME
        return None
    if section not in SECTIONS:
        raise CnnlabError(f"'{key}' is not a config key: write SECTION.KEY with SECTION one of {', '.join(SECTIONS)} "
                          f"(or model.options.NAME for a builder option).{_key_suggestion(key)}")
    hints = field_types(_section_class(section))
    if name not in hints:
        raise CnnlabError(f"'{key}' is not a config key: section '{section}' has {', '.join(hints)}."
                          f"{_key_suggestion(key)}")
    kind = hints[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def apply_params(base: RunConfig, params: dict) -> RunConfig:
    """A copy of ``base`` with every searched key set (types and ranges checked)."""
    config = copy.deepcopy(base)
    for key, value in params.items():
        set_value(config, key, value)  # model.options.NAME and model.norm_options.NAME: an entry of the mapping
    validate_config(config)
    return config


def parse_space(data, base: RunConfig, source: str = "the search space",
                grid: Optional[bool] = None) -> dict[str, Param]:
    """Check a space mapping (from YAML) against the config and return its Params. ``grid`` False: the search
    draws at random, and an entry's grid fields (points, values) get a note saying they are not used."""
    if not isinstance(data, dict) or not data:
        raise CnnlabError(f"{source} must be a non-empty mapping of config keys to ranges, e.g. "
                          "'optim.lr: {low: 1.0e-4, high: 1.0, log: true}'.")
    space = {}
    for key, entry in data.items():
        key = str(key)
        where = f"{source}: '{key}'"
        problem = record_key_problem(key, f"In {source}, '{key}'")
        if problem:
            raise CnnlabError(problem)
        try:
            kind = _field_type(key)
        except CnnlabError as err:
            raise CnnlabError(f"In {source}: {err}") from None
        if not isinstance(entry, dict):
            raise CnnlabError(f"{where} needs a mapping: {{low: A, high: B[, log: true]}} or {{choices: [...]}}.")
        unknown = set(entry) - {"low", "high", "log", "choices", "points", "values", "int"}
        if unknown:
            raise CnnlabError(f"{where} has the unknown {noun_for(len(unknown), 'field')} {', '.join(sorted(unknown))}: use low, high, log, int, "
                              "choices, points or values.")
        ranged = sorted(set(entry) & {"low", "high", "log", "int", "points", "values"})
        if "choices" in entry and ranged:
            raise CnnlabError(f"{where} gives choices and also {', '.join(ranged)}: an entry is either a list of "
                              "choices or a range (low, high, log, int, and points or values for --grid). Keep one.")
        gridded = [name for name in ("points", "values") if name in entry]
        if grid is False and gridded:
            notice(f"{where}: {' and '.join(gridded)} {'is' if len(gridded) == 1 else 'are'} not used: they place a "
                   "--grid search's values, and this search draws at random; add --grid to use them.")
        if "choices" in entry:
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices:
                raise CnnlabError(f"{where}: choices must be a non-empty list.")
            _refuse_repeats(choices, "choices", where)
            param = Param(key, choices=choices)
            samples = choices
        else:
            if "low" not in entry or "high" not in entry:
                raise CnnlabError(f"{where} needs both low and high (or choices).")
            try:
                low, high = float(entry["low"]), float(entry["high"])
            except (TypeError, ValueError):
                raise CnnlabError(f"{where}: low and high must be numbers, got {entry['low']!r} and "
                                  f"{entry['high']!r}.") from None
            if not (math.isfinite(low) and math.isfinite(high)):
                raise CnnlabError(f"{where}: low and high must be finite numbers, got {entry['low']!r} and "
                                  f"{entry['high']!r}: a search draws from a range it can cover.")
            log = _flag(entry, "log", False, where)
            if not low < high:
                raise CnnlabError(f"{where}: low={low:g} must be below high={high:g} (the range is reversed or empty).")
            if log and low <= 0:
                raise CnnlabError(f"{where}: a log range needs positive bounds, got low={low:g}. Use log: false or "
                                  "a positive low.")
            integer = _flag(entry, "int", kind is int, where)
            if integer and kind is float:
                raise CnnlabError(f"{where}: int: true draws whole numbers, but '{key}' is a real-valued setting "
                                  "(int: true is for a builder option, model.options.NAME, which declares no type). "
                                  "Leave out int, or list the values to try as choices.")
            if integer:
                # Rounded inwards: every value drawn lies in the range written ([0.5, 3] epochs draws 1..3, not 0)
                whole_low, whole_high = math.ceil(low), math.floor(high)
                if not whole_low < whole_high:
                    inside = "no whole number" if whole_low > whole_high else f"only the whole number {whole_low}"
                    raise CnnlabError(f"{where}: an integer key needs at least two whole numbers from low to high, "
                                      f"and {low:g}..{high:g} holds {inside}: widen it.")
                low, high = whole_low, whole_high
            points = entry.get("points", DEFAULT_GRID_POINTS)
            if not isinstance(points, int) or isinstance(points, bool) or points < 1:
                raise CnnlabError(f"{where}: points must be a whole number of at least 1, got {points!r}.")
            values = entry.get("values")
            if values is not None and (not isinstance(values, list) or not values):
                raise CnnlabError(f"{where}: values must be a non-empty list, got {values!r}.")
            if values is not None and grid is not False:  # a random search never reads them (noted above)
                _refuse_repeats(values, "values", where)
            param = Param(key, low=low, high=high, log=log, integer=integer, points=points, values=values)
            samples = [low, high, *(values or [])]
        for sample in samples:
            try:
                apply_params(base, {key: sample})
            except CnnlabError as err:
                raise CnnlabError(f"{where}: the value {sample!r} is not valid for this key: {err}") from None
        if param.values is not None:
            # --refine narrows low..high around the best trials' values: one outside it would make low > high
            outside = [v for v in param.values
                       if isinstance(v, bool) or not isinstance(v, (int, float)) or not param.low <= v <= param.high]
            if outside:
                raise CnnlabError(f"{where}: the grid values {', '.join(repr(v) for v in outside)} lie outside "
                                  f"low..high ({param.low:g}..{param.high:g}), the range --refine narrows: give values "
                                  "within it, or widen it.")
        space[key] = param
    return space


def _flag(entry: dict, name: str, default: bool, where: str) -> bool:
    """A true/false field of a search-space entry; a quoted "false" would otherwise read as true."""
    value = entry.get(name, default)
    if not isinstance(value, bool):
        raise CnnlabError(f"{where}: {name} must be true or false (unquoted), got {value!r}.")
    return value


def load_space(path: str | Path, base: RunConfig, grid: Optional[bool] = None) -> dict[str, Param]:
    """Read and check a search-space YAML file (safe loader); ``grid`` as :func:`parse_space` takes it."""
    path = Path(path)
    shown = display_name(str(path))
    if path.is_dir():
        raise CnnlabError(f"The search-space file '{shown}' is a folder, not a file: name a YAML file of ranges, e.g. "
                          "'optim.lr: {low: 1.0e-4, high: 1.0, log: true}'.")
    if not path.exists():
        raise CnnlabError(f"The search-space file '{shown}' does not exist.")
    if not path.is_file():  # a pipe (`--space <(...)`, a FIFO) or a device, as load_config refuses it
        raise CnnlabError(f"The search-space file '{shown}' is not a regular file (a pipe, such as the shell's "
                          "<(...), or a device): a pipe gives its text only once. Write the space to a file and name "
                          "that file.")
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CnnlabError(f"Cannot read the search-space file '{display_name(str(path))}': {read_error_text(err)}.") from None
    except TooLongNumberError as err:
        raise CnnlabError(f"Cannot read the search-space file '{display_name(str(path))}': {err} "
                          f"({err.where()}).") from None
    return parse_space(data, base, source=f"'{display_name(str(path))}'", grid=grid)


def _refuse_repeats(items: list, name: str, where: str) -> None:
    """Refuse a list of choices (or a grid's values) that names one value twice: a grid search ran that point
    twice, and a random search drew it twice as often, without a word. Equal values count as one (1 and 1.0)."""
    repeated = repeated_values(items)
    if repeated:
        raise CnnlabError(f"{where}: {name} {items!r} name {', '.join(map(repr, repeated))} more than once: a grid "
                          f"search would run that point twice, and a random search draw it more often. List each "
                          "once.")


def space_dict(space: dict[str, Param]) -> dict:
    """The space as its YAML file holds it: key -> {low, high[, log, int, points, values]} or {choices}."""
    return {key: param.to_yaml() for key, param in space.items()}


def space_to_yaml(space: dict[str, Param]) -> str:
    return dump_yaml(space_dict(space), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# coarse -> fine


def narrow_space(space: dict[str, Param], best_params: list[dict]) -> dict[str, Param]:
    """The lecture's step 5: each range shrunk to the span of the best trials' values, plus a margin.

    Numeric ranges become [min, max] of the best trials' values widened by REFINE_MARGIN of the old
    range on each side (in log space for log ranges), clipped to the old range. Categorical keys keep
    only the choices the best trials used.
    """
    if not best_params:
        raise CnnlabError("Nothing to refine: the study has no completed trial. Run the coarse search first.")
    narrowed = {}
    for key, param in space.items():
        values = [p[key] for p in best_params if key in p]
        if not values:
            narrowed[key] = copy.deepcopy(param)
            continue
        if param.choices is not None:
            kept = [c for c in param.choices if c in values]
            narrowed[key] = Param(key, choices=kept)
            continue
        to_axis = math.log if param.log else (lambda v: v)
        from_axis = math.exp if param.log else (lambda v: v)
        old_low, old_high = to_axis(param.low), to_axis(param.high)
        margin = REFINE_MARGIN * (old_high - old_low)
        low, high = to_axis(min(values)) - margin, to_axis(max(values)) + margin
        # A clipped end keeps the old bound itself, and every end stays inside it: exp(log(x)) misses x by a
        # rounding error either way (exp(log(16)) < 16), which the integer rounding below would turn into 15.
        low = param.low if low <= old_low else max(param.low, from_axis(low))
        high = param.high if high >= old_high else min(param.high, from_axis(high))
        if param.integer:
            # Outward rounding; the margin (> 0) keeps low < high, since the old range had low < high.
            low, high = int(math.floor(low)), int(math.ceil(high))
        narrowed[key] = Param(key, low=low, high=high, log=param.log, integer=param.integer, points=param.points)
    return narrowed


# Optuna's trial states as a sentence counts them ("2 failed, 1 pruned")
STATE_WORDS = {"COMPLETE": "completed", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running",
               "WAITING": "waiting"}


def best_trials(study, share: float = REFINE_TOP_SHARE, minimum: int = REFINE_TOP_MIN) -> list:
    """The best completed trials: the top ``share``, at least ``minimum`` (when there are that many)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=True)
    keep = max(minimum, math.ceil(share * len(done)))
    return done[:keep]


@dataclass
class Refinement:
    """What ``--refine`` decided: the coarse study's space narrowed around its best trials."""

    space: dict[str, Param]  # the narrowed space the refined study searches
    coarse_space: dict[str, Param]  # the coarse study's space
    top: list[dict]  # the best coarse trials it narrows around: number, val_acc, params (best first)
    base: RunConfig  # the config every refined trial starts from: the coarse study's, plus the overrides
    epochs: Optional[int]  # epochs per refined trial; None when the space searches train.epochs
    coarse_study: str
    study_name: str  # the refined study: coarse name + REFINE_STUDY_SUFFIX
    prefix: str  # of the refined search's files in the search folder
    path: Path  # the narrowed space as YAML (study_files: space-refine.yaml for the default study)
    keep_schedule: bool = False  # True: the coarse study's lr schedule; False: a constant lr (step 5)
    schedule: str = ""  # what the refined trials' lr does, in words, e.g. "constant lr (step 5 of the recipe ...)"
    dropped: list[str] = field(default_factory=list)  # searched schedule keys a constant lr ignores: not searched

    def to_dict(self) -> dict:
        return {"coarse_study": self.coarse_study, "study": self.study_name, "epochs": self.epochs,
                "refined_around": [trial["number"] for trial in self.top],
                "coarse_space": space_dict(self.coarse_space), "space": space_dict(self.space),
                "space_file": str(self.path), "keep_schedule": self.keep_schedule, "schedule": self.schedule,
                "dropped": list(self.dropped)}


def check_study_name(study: str) -> None:
    """Refuse a study name that would put its files elsewhere than the search folder: its name is part of their
    names (NAME-results.csv, trials/NAME-0000), so a '/', a '..' or nothing at all would move or misname them."""
    if isinstance(study, str) and any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or ord(c) == 0x7F for c in study):
        # bytes a shell passed that are not UTF-8 (lone surrogates), a tab or another control character
        raise CnnlabError(f"--study '{display_name(study)}' cannot name a study: it holds bytes that are not UTF-8 "
                          "text, or control characters, and the study database and its files are named after it. "
                          "Give a plain name, such as 'lenet' (the default is 'search').")
    if not isinstance(study, str) or not study.strip() or study in (".", "..") or any(c in study for c in "/\\"):
        raise CnnlabError(f"--study {study!r} cannot name a study: its files are named after it inside the search "
                          "folder (NAME-results.csv, space-NAME.yaml, trials/NAME-0000), so it must be a plain name "
                          "without '/' or '\\', such as 'lenet' (the default is 'search').")


def study_files(study: str) -> tuple[str, str]:
    """The prefix of study ``study``'s result files and the name of its space file, so that each study in a
    search folder keeps its own: the default study "search" writes results.csv and space.yaml, its refined
    study "search-refine" refine-results.csv and space-refine.yaml, and refining that one again (the lecture's
    "repeat from step 5") refine-refine-results.csv and space-refine-refine.yaml. Another study NAME writes
    NAME-results.csv and space-NAME.yaml (NAME-refine-results.csv once refined)."""
    if study == DEFAULT_STUDY:
        return "", SPACE_FILE
    tag = study[len(DEFAULT_STUDY) + 1:] if study.startswith(DEFAULT_STUDY + "-") else study
    return f"{tag}-", f"space-{tag}.yaml"


def _schedule_ignored(key: str) -> bool:
    """Whether searched ``key`` is a schedule field that a constant lr does not read (all but the warm-up)."""
    return key.startswith("schedule.") and key not in WARMUP_KEYS


def _schedule_text(coarse: RunConfig, refined: RunConfig, keep_schedule: bool, earlier_wording: bool = False) -> str:
    """What the refined trials' learning rate does, in words (printed by ``search`` and in its JSON).

    A refined study records this text and a resumed refinement compares it with the recorded one.
    ``earlier_wording``: the text as cnnlab wrote it before the warm-up was counted ("after 1 warm-up
    epoch(s)"), so that a study refined then still resumes."""
    name, before = refined.schedule.name, coarse.schedule.name
    warmup = refined.schedule.warmup_epochs
    if warmup <= 0:  # one-cycle has none
        after_warmup = ""
    elif earlier_wording:
        after_warmup = f", after {warmup:g} warm-up epoch(s)"
    else:
        after_warmup = f", after {counted(warmup, 'warm-up epoch')}"
    if keep_schedule:
        if name == before:
            return f"{name} (the coarse search's schedule, kept){after_warmup}"
        return f"{name} (set by an override; the coarse search's was {before}){after_warmup}"
    if name == REFINE_SCHEDULE:
        instead = f"; the coarse search's was {before}" if before != REFINE_SCHEDULE else ""
        return f"constant lr (step 5 of the recipe: no decay{instead}){after_warmup}"
    return f"{name} (set by an override instead of step 5's constant lr){after_warmup}"


def _started_schedule(coarse, refined_name: str) -> Optional[str]:
    """The schedule (Refinement.schedule) the refined study ``refined_name``, in the coarse study's
    storage, was started with; None when it has not been started."""
    import optuna

    try:
        refined = optuna.load_study(study_name=refined_name, storage=coarse._storage)
    except KeyError:
        return None
    return refined.user_attrs.get("refinement", {}).get("schedule")


def trial_epochs(space: typing.Iterable[str], epochs: Optional[int], default: int) -> Optional[int]:
    """Epochs every trial trains: ``epochs``, else ``default``; None when ``space`` (its keys) searches
    train.epochs, where each trial trains the epochs it draws (as any searched key takes the trial's
    value) and an ``epochs`` given as well is refused: it would set what the space searches."""
    if EPOCHS_KEY not in space:
        return epochs or default
    if epochs is not None:
        raise CnnlabError(f"The search space searches {EPOCHS_KEY}, so each trial trains the epochs it draws and "
                          f"results.csv records them; --epochs {epochs} would set it for every trial instead. Leave "
                          f"out --epochs, or take {EPOCHS_KEY} out of the space.")
    return None


def refuse_epochs_override(overrides: typing.Sequence[str]) -> None:
    """A search sets train.epochs of every trial itself (its epochs, or the space's draw): an override of
    it would be replaced without a word, so it is refused, pointing at --epochs."""
    if any(text.partition("=")[0].strip() == EPOCHS_KEY for text in overrides):
        raise CnnlabError(f"A search trains every trial for --epochs epochs (default {DEFAULT_EPOCHS}; twice the "
                          f"coarse search's with --refine), not the base config's {EPOCHS_KEY}: give --epochs N "
                          f"instead of --set {EPOCHS_KEY}=N, or search {EPOCHS_KEY} in the space.")


def refine_search(storage: str, study_name: str, out: str | Path, epochs: Optional[int] = None,
                  overrides: typing.Sequence[str] = (), keep_schedule: bool = False, grid: bool = False,
                  pruner: str = "median") -> Refinement:
    """The lecture's step 5 as a decision: narrow the finished coarse study ``study_name`` around
    its best trials (:func:`best_trials`, :func:`narrow_space`) and write the narrowed space to
    ``out/space-refine.yaml`` (:func:`study_files`).

    When the refined study has been started already, refining it again must give the space, epochs,
    base config, kind of search (``grid``) and ``pruner`` it was started with (:func:`check_resume`; ``grid``
    and ``pruner`` are the ones :func:`plan_search` is given); otherwise it is refused before the file is written.

    The refined trials start from the coarse study's recorded base config with ``overrides``
    (``SECTION.KEY=VALUE`` texts, as ``--set``) applied; an override may not change the model or
    the data, whose trials are being refined. Each trains ``epochs`` epochs, by default
    REFINE_EPOCHS_FACTOR times the coarse study's (a searched train.epochs: each trial its draw from the
    narrowed range, and ``epochs`` is refused; an override of train.epochs is refused).

    Step 5 trains "without learning-rate decay": unless ``keep_schedule``, the base's
    schedule.name becomes constant (its warm-up is kept), and searched schedule keys that a constant
    lr ignores (all but schedule.warmup_epochs and schedule.warmup_start) leave the refined space,
    listed in ``Refinement.dropped``. An override of schedule.name still wins (it is applied last,
    and then no key is dropped). With ``keep_schedule`` the coarse schedule and its searched keys
    stay as they were. ``Refinement.schedule`` says which it was, in words.

    Nothing is trained here: pass the result to :func:`plan_search` (``refine=True`` does both) and
    :func:`run_search`.
    """
    refuse_epochs_override(overrides)
    coarse = load_finished_study(storage, study_name)
    attrs = coarse.user_attrs
    coarse_space = {key: Param(**fields) for key, fields in attrs["space"].items()}
    top = best_trials(coarse)
    if not top:  # the coarse search ran, and no trial of it completed: say what became of them
        states = Counter(STATE_WORDS.get(trial.state.name, trial.state.name.lower())
                         for trial in coarse.get_trials(deepcopy=False))
        held = ", ".join(f"{count} {state}" for state, count in states.items()) or "none"
        raise CnnlabError(f"Nothing to refine: no trial of the coarse search '{study_name}' in '{storage}' completed "
                          f"(its trials: {held}), so there is no best trial to narrow the ranges around. Each "
                          "failed trial's error is in its row of the coarse search's results.csv; fix what they "
                          "name (a learning rate that diverges: a lower range in the space) and run the coarse "
                          "search again in a new --out or --study.")
    narrowed = narrow_space(coarse_space, [trial.params for trial in top])
    recorded = config_from_dict(attrs["base"])
    start = recorded
    if not keep_schedule:
        start = copy.deepcopy(recorded)
        start.schedule.name = REFINE_SCHEDULE  # warmup_epochs and warmup_start stay the coarse search's
    base = apply_overrides(start, list(overrides))
    for key, before, after in (("model.name", recorded.model.name, base.model.name),
                               ("data.spec", recorded.data.spec, base.data.spec)):
        if before != after:
            raise CnnlabError(f"The coarse search '{study_name}' in '{storage}' trained {recorded.model.name} on "
                              f"{recorded.data.spec}; a refined search narrows those trials, so it cannot change "
                              f"{key} to '{after}'. Give the coarse search's --model and --data (or --config), or "
                              "start a new search with --space.")
    # At a constant lr a searched schedule.name, step_epochs, min_lr_factor, ... would change nothing,
    # or (schedule.name) bring the decay back: those keys leave the refined space.
    constant = not keep_schedule and base.schedule.name == REFINE_SCHEDULE
    dropped = [key for key in narrowed if _schedule_ignored(key)] if constant else []
    if dropped and len(dropped) == len(narrowed):
        raise CnnlabError(f"The coarse search '{study_name}' searched only {', '.join(dropped)}, which a constant "
                          "learning rate ignores: refining at a constant lr (step 5 of the recipe) leaves nothing to "
                          "search. Refine with keep_schedule=True (--keep-schedule), or search other keys first.")
    narrowed = {key: param for key, param in narrowed.items() if key not in dropped}
    # A searched train.epochs: each refined trial trains its draw from the narrowed range (and the coarse
    # study recorded no epochs to multiply).
    epochs = trial_epochs(narrowed, epochs, REFINE_EPOCHS_FACTOR * (attrs["epochs"] or 0))
    schedule = _schedule_text(recorded, base, keep_schedule)
    refined_name = study_name + REFINE_STUDY_SUFFIX
    started = _started_schedule(coarse, refined_name)
    # One study's trials must compare like with like. The same schedule recorded in the earlier wording is
    # the same schedule.
    same = (schedule, _schedule_text(recorded, base, keep_schedule, earlier_wording=True))
    if started is not None and started not in same:
        raise CnnlabError(f"The refined study '{refined_name}' in '{storage}' was started with the schedule "
                          f"'{started}', not '{schedule}'. Resume it the same way (with or without --keep-schedule, "
                          "as before). To refine the other way, run the coarse search again in another search "
                          "folder (--out) and refine it there.")
    prefix, space_name = study_files(refined_name)
    path = Path(out) / space_name
    refinement = Refinement(space=narrowed, coarse_space=coarse_space,
                            top=[{"number": t.number, "val_acc": t.value, "params": dict(t.params)} for t in top],
                            base=base, epochs=epochs, coarse_study=study_name,
                            study_name=refined_name, prefix=prefix, path=path,
                            keep_schedule=keep_schedule, schedule=schedule, dropped=dropped)
    check_trial_data(base, narrowed, grid)  # an override (--batch-size, --set) may leave no refined trial able to train
    check_trial_schedule(base, narrowed, epochs)
    # A refined study already started narrowed around the coarse trials as they were then: refused before
    # the space file it was searched with is overwritten by a narrowing it never searched
    check_study_resumable(SearchSettings(base=config_to_dict(base), space={k: asdict(p) for k, p in narrowed.items()},
                                         out=str(out), storage=storage, study_name=refined_name, trials=0,
                                         epochs=epochs, grid=grid, pruner=pruner,
                                         refinement=refinement.to_dict()))
    from cnnlab.io import write_text_atomic

    header = (f"# narrowed around the best {len(top)} trials of the coarse search '{study_name}'\n"
              f"# schedule: {schedule}\n")
    if dropped:
        header += f"# not searched (a constant lr ignores them): {', '.join(dropped)}\n"
    write_text_atomic(path, header + space_to_yaml(narrowed), "the refined space")
    return refinement


# ---------------------------------------------------------------------------------------------
# the study


@dataclass
class SearchSettings:
    """Everything one worker process needs (picklable: workers are spawned processes)."""

    base: dict  # the base RunConfig as plain dicts
    space: dict  # key -> Param fields
    out: str  # search folder: trials/, results.csv, best.yaml, scatter.png
    storage: str  # SQLAlchemy URL of the study store
    study_name: str
    trials: int  # the study's target number of trials
    epochs: Optional[int]  # epochs per trial; None when the space searches train.epochs (each trial its own)
    grid: bool = False
    pruner: str = "median"  # median | halving | none
    seed: int = 0
    threads: Optional[int] = None  # most torch CPU threads per worker (fewer while other processes take cores)
    resumed_after: int = 0  # trials the study held when this search started (a resumed search draws new points)
    refinement: Optional[dict] = None  # what --refine decided (Refinement.to_dict()), recorded in the study


def storage_url(out: str | Path, storage: Optional[str]) -> str:
    """``storage``, or the URL of OUT/study.db. In a URL's path SQLAlchemy reads '?' as the start of the options
    and '%41' as 'A' ('#' goes with the options): those three are escaped, so that a folder named 's?x' or
    'lr%41' holds its own study rather than one in another file (:func:`sqlite_file` reads it back)."""
    if storage:
        return storage
    path = str(Path(out).resolve() / SEARCH_STUDY_FILE)
    return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///PATH`` URL, as SQLAlchemy reads it (escapes decoded, options left
    out); None for another URL, or one without a file (an in-memory database)."""
    if not url.startswith("sqlite:///"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # sqlalchemy's ArgumentError and others: not a URL it reads, which opening it says
        return None
    return Path(database) if database else None


def open_storage(url: str, out: Optional[str | Path] = None):
    """An Optuna RDB storage with heartbeats (so a killed worker's trial is failed and retried); ``out``, the
    search folder, is where a trial given up finds its run folder to mark (else the path the trial recorded)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if "://" not in url:
        raise CnnlabError(f"--storage '{url}' is not a database URL: use sqlite:///PATH/study.db on one machine, or "
                          "postgresql://USER@HOST/DB or mysql://... shared by several machines.")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    database = sqlite_file(url)
    if database is not None:
        folder = database.parent
        if not folder.is_dir():
            raise CnnlabError(f"--storage '{display_name(url)}': the folder '{display_name(str(folder))}' does not exist. "
                              "Create it or choose another path.")
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they have worked since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                              grace_period=GRACE_SECONDS,
                              heartbeat_stale_trial_callback=_retry_or_give_up(RetryHeartbeatStaleTrialCallback, out))
    except Exception as err:  # sqlalchemy raises many types: unknown dialect, missing driver, refused connection
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if database is not None and database.is_file():
            # the file is there and SQLite refused it: damaged (cut short, overwritten), or not a database
            advice = ("The file is there but is not a study database SQLite can read (damaged, or another file): "
                      "restore it from a copy, or move it aside and run the search again to start a new study.")
        else:
            advice = "Check the URL, that its database driver is installed, and that the server is reachable."
        raise CnnlabError(f"Cannot open the study storage '{url}': {first}. {advice}") from None


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines (a study created, each trial told) off while a search runs: cnnlab prints its own line
    per trial. The caller's verbosity is back afterwards, so that a program's own studies log as they did."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _sampler(settings: SearchSettings, worker: int):
    import numpy as np
    import optuna

    if settings.grid:
        # The grid sampler reads the study's trials and hands out only the points not yet run, also on resume.
        grid = {key: Param(**fields).grid_values() for key, fields in settings.space.items()}
        return optuna.samplers.GridSampler(grid, seed=settings.seed % SAMPLER_SEED_MODULUS)
    # Each worker draws its own sequence: identical seeds would make the workers repeat each other.
    seed = (settings.seed + WORKER_SEED_STRIDE * worker) % SAMPLER_SEED_MODULUS
    if settings.resumed_after:
        # A resumed search seeded as before would draw the first trials' points again. It draws a sequence of
        # its own, fixed by the seed and the trials already held (a fresh search's draws stay as they were).
        seed = int(np.random.SeedSequence([seed, settings.resumed_after]).generate_state(1)[0])
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(name: str):
    import optuna

    if name == "median":
        # A trial stops when its val accuracy after an epoch is below the median of the earlier
        # trials' at the same epoch; the first 3 trials always run to the end.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CnnlabError(f"--pruner '{name}' is not known: choose median, halving or none.")


def open_study(settings: SearchSettings, worker: int = 0):
    """Create or load the study; a new study records its space, epochs and base config."""
    import optuna

    storage = open_storage(settings.storage, settings.out)
    try:
        study = optuna.create_study(storage=storage, study_name=settings.study_name, direction="maximize",
                                    sampler=_sampler(settings, worker), pruner=_pruner(settings.pruner),
                                    load_if_exists=True)
    except CnnlabError:
        raise
    except Exception as err:
        raise CnnlabError(f"Cannot open the study '{settings.study_name}' in '{settings.storage}': "
                          f"{str(err).splitlines()[0]}.") from None
    attrs = study.user_attrs
    if "space" not in attrs:
        study.set_user_attr("space", settings.space)
        study.set_user_attr("epochs", settings.epochs)
        study.set_user_attr("grid", settings.grid)
        study.set_user_attr("pruner", settings.pruner)
        study.set_user_attr("base", settings.base)
        if settings.refinement is not None:
            study.set_user_attr("refinement", settings.refinement)
    else:
        check_resume(settings, attrs)
    return study


def _param_text(fields: dict) -> str:
    """A searched key's Param fields in a message, those its defaults do not give: '{low: 0.01, high: 1.0, log: true}'."""
    default = asdict(Param(key=fields.get("key", "")))
    shown = [f"{name}: {shown_value(value)}" for name, value in fields.items()
             if name != "key" and value != default.get(name)]
    return "{" + ", ".join(shown) + "}"


def _epochs_text(epochs: Optional[int]) -> str:
    return "none (the space searches train.epochs)" if epochs is None else str(epochs)


def _kind_text(grid: bool) -> str:
    return "a grid search (--grid)" if grid else "a random search"


def resume_differences(settings: SearchSettings, attrs: dict) -> list[str]:
    """How the space, --epochs, --grid and --pruner of ``settings`` differ from those a study recorded (its user
    attributes ``attrs``): '--epochs: 3 given, 2 recorded', and for the space each key added, removed or
    changed with the value given and the one recorded. Empty when they agree."""
    texts = []
    # A grid trial suggests each range as a category, a random one as a number: Optuna refuses one key with
    # both kinds in a study, so every trial after the switch would crash. (Older studies did not record it.)
    if "grid" in attrs and attrs["grid"] != settings.grid:
        texts.append(f"--grid: {_kind_text(settings.grid)} given, {_kind_text(attrs['grid'])} recorded")
    # Another pruner stops the later trials by another rule than the earlier ones: their accuracies would not
    # compare like with like. (Older studies did not record it.)
    if "pruner" in attrs and attrs["pruner"] != settings.pruner:
        texts.append(f"--pruner: {settings.pruner} given, {attrs['pruner']} recorded")
    if attrs.get("epochs") != settings.epochs:
        texts.append(f"--epochs: {_epochs_text(settings.epochs)} given, {_epochs_text(attrs.get('epochs'))} recorded")
    given, recorded = settings.space, attrs["space"]
    for key in [*recorded, *(key for key in given if key not in recorded)]:  # the recorded order, then new keys
        if key not in recorded:
            texts.append(f"space key {key} added: {_param_text(given[key])} given, not recorded")
        elif key not in given:
            texts.append(f"space key {key} removed: not given, {_param_text(recorded[key])} recorded")
        elif given[key] != recorded[key]:
            texts.append(f"space key {key} changed: {_param_text(given[key])} given, "
                         f"{_param_text(recorded[key])} recorded")
    return texts


def check_resume(settings: SearchSettings, attrs: dict) -> None:
    """Refuse to resume a study (its user attributes ``attrs``) with another space, --epochs, --grid, --pruner or
    base config (but for :data:`RESUME_FREE_KEYS`): one study's trials must compare like with like, as a resumed
    run must continue its own config."""
    from cnnlab.train.engine import differences_text

    where = f"The study '{settings.study_name}' in '{settings.storage}'"
    changed = resume_differences(settings, attrs)
    coarse = (settings.refinement or {}).get("coarse_study")
    # A refined study's name follows from its coarse study's, and its space from that study's trials
    restart = ("or refine in another search folder: run the coarse search again there (--out) and refine it"
               if coarse else "or pick a new --study name (or another --out)")
    if changed and coarse:
        raise CnnlabError(f"{where} was started with another narrowed space, --epochs, --grid or --pruner "
                          f"({'; '.join(changed)}): it narrowed the coarse search '{coarse}' as it was then, and that "
                          "search has completed more trials since, or --epochs, --grid or --pruner differs. Resume it "
                          f"with the --epochs, --grid and --pruner it was started with (the narrowed space cannot be "
                          f"given), {restart}.")
    if changed:
        raise CnnlabError(f"{where} was started with another search space, --epochs, --grid or --pruner "
                          f"({'; '.join(changed)}). "
                          f"Resume it with the same ones, {restart}.")
    # A searched key's base value is replaced in every trial, so another one there changes no trial
    differing = {key: values for key, values in
                 config_differences(config_from_dict(settings.base), config_from_dict(attrs["base"])).items()
                 if not key.startswith(RESUME_FREE_KEYS) and key not in settings.space}
    if differing:
        raise CnnlabError(f"{where} was started from another base config, and its trials would no longer compare "
                          f"like with like ({differences_text(differing)}). Resume it with the same --config, --set "
                          "and options (--model, --data, --lr, --batch-size, --seed; where it trains and what it "
                          "logs, train.device, train.threads and log.*, and the keys the space searches may differ), "
                          f"{restart}.")


def check_study_resumable(settings: SearchSettings) -> None:
    """:func:`check_resume` against the study ``settings`` names, when it exists (nothing is created)."""
    import optuna

    try:
        study = optuna.load_study(study_name=settings.study_name, storage=open_storage(settings.storage))
    except KeyError:
        return  # a new study
    if "space" in study.user_attrs:
        check_resume(settings, study.user_attrs)


def _refuse_another_commands_folder(out: Path) -> None:
    """Refuse a search folder that is a training run's or an experiment's: the study, its trials/ and its results
    would be written among that folder's files (and `cnnlab runs` would list the run beside the trials)."""
    from cnnlab.run import MADE_BY_SEARCH, folder_made_by

    made_by = folder_made_by(out)
    if made_by is None or made_by[0] == MADE_BY_SEARCH:  # a search continues in its own folder
        return
    raise CnnlabError(f"The search folder '{display_name(str(out))}' is {made_by[1]}: the search writes its study, "
                      f"{SEARCH_TRIALS_DIR}/ and its results there, which would mix with what is there. Give the "
                      "search a folder of its own (another --out).")


def load_finished_study(url: str, study_name: str):
    """An existing study, read-only use (the coarse search that --refine narrows). Nothing is created: an SQLite
    file that is not there holds no study (opening it would create an empty database)."""
    import optuna

    database = sqlite_file(url)
    if database is not None and not database.exists():
        raise CnnlabError(f"There is no coarse search '{study_name}' in '{url}' to refine: the file does not exist. "
                          "Run it first (without --refine), or name its folder with --out or its storage with "
                          "--storage.")
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise CnnlabError(f"There is no coarse search '{study_name}' in '{url}' to refine. Run it first "
                          "(without --refine), or name it with --study.") from None
    if "space" not in study.user_attrs:
        raise CnnlabError(f"The study '{study_name}' in '{url}' was not made by cnnlab search: it records no space.")
    return study


def finished_trials(settings: SearchSettings) -> int:
    """How many trials of the study ``settings`` names finished (completed or pruned): what an interrupted
    search keeps, since a resume runs an interrupted trial again from its start. 0 when the study does not
    exist yet (nothing is created)."""
    import optuna

    state = optuna.trial.TrialState
    try:
        study = optuna.load_study(study_name=settings.study_name, storage=open_storage(settings.storage))
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))


def _retry_or_give_up(retry_class, out: Optional[str | Path]):
    """Optuna's retry of a dead worker's trial (its parameters queued again, up to MAX_RETRIES times); past that,
    the trial's run folder is marked failed with why, so that `cnnlab runs` does not promise a rerun the search
    will not make (the trial is listed as failed: :func:`given_up_error`)."""

    class RetryOrGiveUp(retry_class):
        def __call__(self, study, trial) -> None:
            if len(trial.system_attrs.get("retry_history", ())) + 1 > MAX_RETRIES:
                recorded = trial.user_attrs.get("run_dir")
                run_dir = _trial_folder(out, recorded) if out is not None else recorded
                if run_dir and RunFolder(run_dir).status.is_file():
                    from cnnlab.train.engine import mark_run_state

                    mark_run_state(RunFolder(run_dir), "failed", given_up_error(trial))
                return
            super().__call__(study, trial)

    return RetryOrGiveUp(max_retry=MAX_RETRIES)


def _given_up_numbers(trials) -> set[int]:
    """Numbers of the trials whose worker was killed once more than MAX_RETRIES allows: failed without an error
    of their own, not interrupted nor surplus, and queued again by no later trial (Optuna's retry lists the
    trials it retried in ``retry_history``). Their parameters never ran to the end: they count as failed."""
    import optuna

    retried = {number for trial in trials for number in trial.system_attrs.get("retry_history", ())}
    return {trial.number for trial in trials
            if trial.state == optuna.trial.TrialState.FAIL and not trial.user_attrs.keys() & {"error", "interrupted",
                                                                                              "surplus"}
            and trial.number not in retried and trial.system_attrs.get("retry_history")}


def given_up_error(trial) -> str:
    """The error a given-up trial (:func:`_given_up_numbers`) is listed with."""
    attempts = len(trial.system_attrs.get("retry_history", ())) + 1
    return (f"its worker process was killed {attempts} times (out of memory, or stopped by the system): given up "
            f"after {MAX_RETRIES} retries")


def counted_numbers(study) -> list[int]:
    """Numbers of the trials that count towards --trials, ascending: finished, pruned, running,
    waiting, or crashed by their own error.

    Not counted: trials failed by an interruption or a killed worker (their parameters are queued
    again as a WAITING trial, so each still runs once to the end) and surplus trials (see worker_loop).
    """
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    given_up = _given_up_numbers(trials)
    numbers = []
    for trial in trials:
        if trial.state in (state.COMPLETE, state.PRUNED, state.RUNNING, state.WAITING):
            numbers.append(trial.number)
        elif trial.state == state.FAIL and ("error" in trial.user_attrs or trial.number in given_up):
            numbers.append(trial.number)
    return sorted(numbers)


class _Heartbeat:
    """Records a running trial's heartbeat from a thread (Optuna does this only inside optimize())."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(HEARTBEAT_SECONDS)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _trial_folder(out: str | Path, recorded: Optional[str]) -> Optional[str]:
    """The run folder a trial recorded, found by its name in the search folder ``out`` (the recorded path is
    relative to the working folder of the process that ran the trial); None for a trial that never started."""
    return str(Path(out) / SEARCH_TRIALS_DIR / Path(recorded).name) if recorded else None


def _listed_folder(out: str | Path, recorded: Optional[str]) -> Optional[str]:
    """:func:`_trial_folder` where it is there; None for a trial that left none (its set-up failed: a batch
    larger than the data), so that results.csv names no folder that is not there."""
    folder = _trial_folder(out, recorded)
    return folder if folder is not None and Path(folder).is_dir() else None


def trial_run_dir(out: str | Path, study_name: str, number: int) -> Path:
    """The run folder of trial ``number`` (0-based) of the study ``study_name`` in the search folder ``out``."""
    return Path(out) / SEARCH_TRIALS_DIR / f"{study_name}-{number:04d}"


def run_trial(settings: SearchSettings, trial, base: RunConfig) -> tuple[float, bool]:
    """Train one trial for settings.epochs epochs (or its searched train.epochs); reports val accuracy per
    epoch for pruning.

    Returns (best val accuracy, whether Ctrl-C came during the trial). A Ctrl-C in the trial's last
    step lets it finish: it counts, and the caller starts no further trial.
    """
    import optuna
    from rich.console import Console

    from cnnlab.train.engine import mark_run_state, train

    params = {}
    for key, fields in settings.space.items():
        param = Param(**fields)
        if param.choices is not None:
            params[key] = trial.suggest_categorical(key, param.choices)
        elif settings.grid:  # the grid sampler hands out the grid's values as categories
            params[key] = trial.suggest_categorical(key, param.grid_values())
        elif param.integer:
            params[key] = trial.suggest_int(key, int(param.low), int(param.high), log=param.log)
        else:
            params[key] = trial.suggest_float(key, param.low, param.high, log=param.log)
    config = apply_params(base, params)
    if settings.epochs is not None:  # None: train.epochs is searched, and the trial's draw stands
        config.train.epochs = settings.epochs
    config.log.quiet = True
    run_dir = trial_run_dir(settings.out, settings.study_name, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))

    def report(row: dict) -> None:
        trial.report(row["val_acc"], row["epoch"])
        # after the last epoch there is nothing left to save: the trial is complete, and pruning it would leave a
        # fully trained trial out of the best and of --refine's quarter
        if row["epoch"] < config.train.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {row['val_acc']:.2%} after epoch {row['epoch']}")

    silent = Console(file=io.StringIO())  # one line per trial is printed by the worker instead
    try:
        result = train(config, run_dir, console=silent, on_epoch_end=report)
    except optuna.TrialPruned as err:  # the engine recorded an error from on_epoch_end: it was the pruner
        mark_run_state(RunFolder(run_dir), "pruned", str(err))
        raise
    if result.interrupted:  # Ctrl-C stopped the trial part-way: not a result; the worker re-queues it
        raise KeyboardInterrupt
    return result.best_val_acc, result.stop_requested


def _tell(study, trial, value=None, state=None) -> None:
    """study.tell; the grid sampler's "grid exhausted" stop() is for optimize() loops, not ours.

    GridSampler calls study.stop() from after_trial once every point has started, which raises
    RuntimeError outside optimize(); Optuna stores the trial's state in a ``finally`` first, so the
    result is kept and this loop's own trial count ends the search.
    """
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _fail_dead_trials(study) -> None:
    """Fail, and queue again as a killed worker's trial is, each running trial whose worker process on this
    host is gone. The heartbeat calls such a trial stale only after GRACE_SECONDS: a search killed and
    resumed at once counted it as running, and ended with it never finished when its other trials were done
    sooner. A trial of another host is left to the heartbeat."""
    import optuna

    from cnnlab.io import process_gone

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if process_gone(trial.user_attrs.get("pid"), trial.user_attrs.get("host")) is not True:
            continue  # alive, or of another host (the heartbeat's to judge)
        try:
            failed = storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        # The stale heartbeat's callback (RDB storages): its parameters queued again, up to MAX_RETRIES
        retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if failed and retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(trial._trial_id)))


def _remove_earlier_attempt(trial, settings: SearchSettings, say: Optional[Callable[[str], None]]) -> None:
    """Remove the run folder of the interrupted or killed trial whose parameters ``trial`` runs again from their
    start, and say so. A queued trial carries that folder as its ``run_dir`` (an interrupted one's, given when
    it was queued again; a killed one's, copied by Optuna's retry with the trial's other attributes), and that
    part-trained run would otherwise be listed by `cnnlab runs` and the search's page as one more trial, with a
    resume that nothing uses.

    A folder that `cnnlab train --resume` is writing at the moment (its lock is held), or that such a resume
    finished, is not the search's to remove: it is kept, and the line says so."""
    from cnnlab.io import lock_holder
    from cnnlab.run import RunFolder

    recorded = trial.user_attrs.get("run_dir")
    if not recorded:
        return  # a fresh trial
    # the folder as the earlier process wrote it, relative to its own working folder: found by its name in this
    # search's trials folder, wherever this process runs from (and after the search folder moved)
    earlier = Path(_trial_folder(settings.out, recorded))
    if earlier.resolve() == trial_run_dir(settings.out, settings.study_name, trial.number).resolve():
        return
    if not earlier.is_dir():
        return
    folder = RunFolder(earlier)
    holder = lock_holder(folder.lock)
    finished = folder.report.is_file()  # written last, by a run that trained every epoch
    if holder is None and not finished:
        shutil.rmtree(earlier, ignore_errors=True)
        kept = "its part-trained folder was removed"
    elif holder is not None:
        kept = f"its folder is kept, as {holder} is writing it"
    else:
        kept = "its folder is kept, as a resume outside the search finished it"
    if say is not None:
        say(f"trial {trial.number} runs the parameters of {earlier.name} again, from their start: {kept}")


@stop_between_runs()
@optuna_quiet()
def worker_loop(settings: SearchSettings, worker: int = 0, say: Optional[Callable[[str], None]] = None,
                shown_notes=None, columns: int = LINE_COLUMNS) -> None:
    """Ask for trials and run them until the study holds settings.trials of them. ``shown_notes``: the notes
    the search's workers have shown between them (:func:`cnnlab.config.quiet_notes`), None for one worker;
    ``columns``: the width the trial lines wrap at (less than a line where ``say`` puts a prefix before each).

    A Ctrl-C or SIGTERM between two trials (recording one, asking for the next) stops the loop before it asks
    for the next: :class:`cnnlab.train.between_runs.StoppedBetweenRuns` (:func:`stop_between_runs`)."""
    import torch

    say = say or print
    if settings.threads:
        torch.set_num_threads(settings.threads)
    study = open_study(settings, worker)
    base = config_from_dict(settings.base)
    with _heartbeat_warnings_quiet():
        _ask_and_run(study, base, settings, say, shown_notes, columns)


@contextlib.contextmanager
def _heartbeat_warnings_quiet():
    """Heartbeats are Optuna features marked experimental and meant for optimize(); the ask/tell loop records
    them itself (_Heartbeat), so the warnings about both say nothing to the user. Filtered inside the block only:
    a program that calls the search keeps its own filters afterwards."""
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def _ask_and_run(study, base: RunConfig, settings: SearchSettings, say: Callable[[str], None], shown_notes,
                 columns: int) -> None:
    """:func:`worker_loop`'s loop: ask for a trial, run it, tell its result; until the study is full."""
    import optuna

    state = optuna.trial.TrialState
    shown: set[str] = set()  # the notes this worker's trials have shown: each shown once (quiet_notes)
    while True:
        optuna.storages.fail_stale_trials(study)  # trials of killed workers: failed, then queued again
        _fail_dead_trials(study)  # ... at once where their worker on this host is known to be gone
        # A queued trial (the parameters of an interrupted or killed one) counts towards --trials but still
        # has to run: a worker stops only when none is left waiting.
        waiting = any(t.state == state.WAITING for t in study.get_trials(deepcopy=False))
        if len(counted_numbers(study)) >= settings.trials and not waiting:
            return  # a stop signal held after the last trial stops nothing: the search writes its results
        stop_if_held()  # a stop signal that came while the last trial was recorded: no further trial
        trial = study.ask()
        # Two workers can both see one slot left and both ask. Trial numbers are handed out in order
        # by the storage, so every worker agrees which trials lie beyond the target: those stand down.
        if counted_numbers(study).index(trial.number) >= settings.trials:
            trial.set_user_attr("surplus", True)
            _tell(study, trial, state=state.FAIL)
            return
        _remove_earlier_attempt(trial, settings, say)
        # Whose trial it is: a resume on this host fails it at once when that process is gone (_fail_dead_trials)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        started = time.perf_counter()
        with _Heartbeat(study._storage, trial._trial_id):  # Optuna's own heartbeat thread is private too
            try:
                # each trial loads the same data and checks the same config: their notes once, among all workers
                with quiet_notes(shown_notes, seen=shown):
                    value, stop_requested = run_trial(settings, trial, base)
            except optuna.TrialPruned as pruned:
                _tell(study, trial, state=state.PRUNED)
                say(trial_line(trial.number, f"pruned ({pruned})", _params_text(trial.params, study), columns))
                continue
            except KeyboardInterrupt:
                # Queue the same parameters again so that a resumed search runs this trial afresh.
                trial.set_user_attr("interrupted", True)
                _tell(study, trial, state=state.FAIL)
                # its folder goes with it: the trial that runs these parameters again removes it when it starts
                study.enqueue_trial(trial.params, user_attrs={"run_dir": trial.user_attrs.get("run_dir")})
                raise
            except Exception as err:  # a crashed trial is recorded with its error; the study goes on
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                trial.set_user_attr("error", f"{type(err).__name__}: {message}")
                _tell(study, trial, state=state.FAIL)
                say(trial_line(trial.number, f"FAILED ({message})", _params_text(trial.params, study), columns))
                continue
        _tell(study, trial, value)
        say(trial_line(trial.number, finished_text(value, time.perf_counter() - started),
                       _params_text(trial.params, study), columns))
        if stop_requested:  # Ctrl-C came in the trial's last step: it finished and counts; no further trial
            raise KeyboardInterrupt


def trial_line(number: int, result: str, params: str, columns: int = LINE_COLUMNS) -> str:
    """A trial's line as it ends: "trial 3: RESULT PARAMS", ``result`` as :func:`finished_text` writes it (or
    "pruned (...)", "FAILED (...)"), ``params`` its values (:func:`_params_text`). Wrapped at ``columns``
    (by default :data:`cnnlab.text.LINE_COLUMNS`) as a note is (:func:`cnnlab.text.note_lines`): values that would pass the
    edge go on the next line, under the text, each whole, so long key names lose nothing."""
    return "\n".join(note_lines(f"trial {number}", f"{result} {params}", columns))


def finished_text(value: float, seconds: float) -> str:
    """A finished trial's result on its line: "val acc 81.25% in 4 min 05 s"."""
    return f"val acc {value:.2%} in {duration_text(seconds)}"


def _worker_main(settings: SearchSettings, worker: int, quiet: bool = False, shown_notes=None,
                 parent: Optional[int] = None, stop=None) -> None:
    """Entry point of a spawned worker process; its lines go to stderr (the parent's console is not
    theirs to share), none with ``quiet``. Each line of a wrapped trial line names its worker: the workers'
    lines interleave; the trial lines wrap that much narrower, so that each line with its prefix fits a line.
    ``parent``: the search's pid; the worker stops as after a SIGTERM when that process dies. ``stop``: the
    search's event for a Ctrl-C (:func:`_join_passing_on_ctrl_c`). The worker starts with Ctrl-C ignored (as
    the search started it), moves to a process group of its own, so that a terminal's Ctrl-C reaches the search
    alone, and takes Ctrl-C again: the search passes each one on. One that came while it started ends it here."""
    import sys

    if parent is not None:
        _end_with_parent(parent)
    if stop is not None and hasattr(os, "setpgid"):
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if stop.is_set():
            return

    prefix = f"[worker {worker}] "

    def say(text: str) -> None:
        if not quiet:
            print("\n".join(prefix + line for line in text.splitlines()), file=sys.stderr, flush=True)

    try:
        worker_loop(settings, worker, say=say, shown_notes=shown_notes, columns=LINE_COLUMNS - len(prefix))
    except KeyboardInterrupt:
        pass
    finally:
        # nothing is left to stop: a second Ctrl-C the search passes on would interrupt the interpreter's exit
        # (torch's clean-up at exit printed "Exception ignored ... KeyboardInterrupt" with a traceback)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def grid_size(space: dict) -> int:
    """Points in the full grid of a space (a dict of Param fields)."""
    return math.prod(len(Param(**fields).grid_values()) for fields in space.values())


class SearchStopped(KeyboardInterrupt):
    """The search was asked to end by a signal (``signum``) that its spawned workers stopped for."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _sigterm_forwarded(processes: list):
    """While the parent waits for its spawned workers: a SIGTERM sent to it (kill PID, timeout, docker stop) is
    passed on to each live worker, whose trial then stops at a step boundary with a checkpoint as a Ctrl-C
    would stop it, instead of ending the parent alone and leaving the workers training (Ctrl-C is passed on as
    Ctrl-C: :func:`_join_passing_on_ctrl_c`). Yields a list that holds the signal once one came. Left as it is
    off the main thread, or where SIGTERM is ignored (nohup) or set outside Python."""
    received: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)
    install = (threading.current_thread() is threading.main_thread()
               and (callable(previous) or previous == signal.SIG_DFL))

    def forward(signum, frame) -> None:
        received.append(signum)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM

    if install:
        signal.signal(signal.SIGTERM, forward)
    try:
        yield received
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _ctrl_c_ignored():
    """Ignore Ctrl-C (SIGINT) in this process while the block starts the workers, which inherit it: Python then
    leaves Ctrl-C ignored in them until :func:`_worker_main` takes it. Left as it is off the main thread, where
    processes separate from the search's group (os.setpgid) are not made, and where SIGINT is not Python's."""
    previous = signal.getsignal(signal.SIGINT)
    install = (hasattr(os, "setpgid") and threading.current_thread() is threading.main_thread()
               and callable(previous))
    if install:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)


def _join_passing_on_ctrl_c(processes: list, stop) -> None:
    """Wait for the spawned workers. Each runs in a process group of its own (:func:`_worker_main`), so a Ctrl-C,
    from the terminal or `kill -INT` of the search alone, reaches the search only: each one is passed on to every
    live worker (the first stops its trial at a step boundary, a second at once), ``stop`` is set for a worker
    still starting, and KeyboardInterrupt is raised once all have ended. Where there is no os.setpgid (Windows)
    the workers share the console's Ctrl-C, and nothing is passed on."""
    interrupted = False
    while True:
        try:
            for process in processes:
                process.join()
            break
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            if not hasattr(os, "setpgid"):
                continue
            for process in processes:
                if process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGINT)
    if interrupted:
        raise KeyboardInterrupt


# Linux's prctl option that asks for a signal when the process's parent dies (<linux/prctl.h>)
PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int) -> None:
    """Ask Linux to send this spawned process SIGTERM when its parent, the search, dies (``parent``: its pid), as
    when the out-of-memory killer or ``kill -9`` ends the search alone: a worker then stops its trial at a step
    boundary, as after a SIGTERM to the search, and the notes' server ends, rather than training on with no search
    left to write the results, or serving no one for ever. Elsewhere, or where prctl cannot be called, nothing is
    asked."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the search died before the request: no signal will come for it
        os.kill(os.getpid(), signal.SIGTERM)


def _notes_server_start(parent: int) -> None:
    """Start of the process that holds the workers' shown notes: a Ctrl-C reaches the whole process group, and
    this process must outlive the workers, which finish their trial's step first; it ends with the search."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent)


def run_workers(settings: SearchSettings, workers: int, say: Optional[Callable[[str], None]] = None,
                quiet: bool = False) -> None:
    """Run the search in this process (workers=1) or in ``workers`` spawned processes sharing the study.

    One line per finished trial: to ``say`` (print when None) in this process, to stderr from spawned
    workers; with ``quiet`` none from either (``cnnlab search --json``: one behaviour for any worker count).
    """
    study = open_study(settings)  # create it once, before the workers race to
    settings = replace(settings, resumed_after=len(study.get_trials(deepcopy=False)))
    if workers <= 1:
        worker_loop(settings, 0, (lambda text: None) if quiet else say)
        return
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    # Every worker's first trial prints the same notes (bf16 autocast, the data subset): one worker shows each
    manager = multiprocessing.managers.SyncManager(ctx=context)
    manager.start(_notes_server_start, (os.getpid(),))  # it serves the workers while they stop after a Ctrl-C
    shown_notes = manager.dict()
    stop = context.Event()  # set at the search's Ctrl-C: a worker that has not taken Ctrl-C yet ends as it starts
    processes = [context.Process(target=_worker_main, args=(settings, worker, quiet, shown_notes, os.getpid(), stop))
                 for worker in range(workers)]
    with _ctrl_c_ignored():  # inherited: no worker prints a KeyboardInterrupt's traceback from its imports
        for process in processes:
            process.start()
    interrupted = False
    with _sigterm_forwarded(processes) as forwarded:
        try:
            _join_passing_on_ctrl_c(processes, stop)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            manager.shutdown()
    codes = [process.exitcode for process in processes]
    if (interrupted or forwarded) and not (all(code == 0 for code in codes) and _study_holds_all_trials(settings)):
        # the workers stopped their trials; the command stops as on Ctrl-C. A stop that came after the last trial
        # (while the workers ended) stops nothing: the search writes its results, as it does with one worker
        raise SearchStopped(signal.SIGTERM) if forwarded else KeyboardInterrupt
    _workers_ended(settings, codes)


def _workers_ended(settings: SearchSettings, codes: list[Optional[int]]) -> None:
    """After the workers ended with exit ``codes``: nothing where all ended well; where one ended early (an error,
    or killed: the out-of-memory killer, `kill -9`) a note when the others ran its unfinished trial again and
    the study holds all its trials (the search is whole), else a CnnlabError saying to run the command again."""
    failed = [(worker, code) for worker, code in enumerate(codes) if code not in (0, None)]
    if not failed:
        return
    ended = "; ".join(_worker_end_text(worker, code) for worker, code in failed)
    if _study_holds_all_trials(settings):
        # its trial, if it left one unfinished, ran again in another worker (or was given up, said with it)
        notice(f"{ended}; the study holds all {settings.trials} trials, so the search is whole")
        return
    raise CnnlabError(f"{len(failed)} of {len(codes)} worker processes ended early ({ended}). Completed trials "
                      "are kept: run the same command to go on (a trial a worker left unfinished runs again).")


def _worker_end_text(worker: int, code: int) -> str:
    """'worker 1 was killed by SIGKILL' for a negative exit code (a signal, as multiprocessing reports it),
    'worker 1 exited with code 1 (its output is above)' for any other."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {worker} was killed by {name}"
    return f"worker {worker} exited with code {code} (its output is above)"


def _study_holds_all_trials(settings: SearchSettings) -> bool:
    """Whether the study holds settings.trials counted trials, none still running or waiting to run again:
    what :func:`worker_loop` stops at."""
    import optuna

    state = optuna.trial.TrialState
    study = open_study(settings)
    with _heartbeat_warnings_quiet():
        optuna.storages.fail_stale_trials(study)
        _fail_dead_trials(study)  # a killed worker's trial: failed, its parameters queued (then it is not whole)
    unfinished = any(t.state in (state.RUNNING, state.WAITING) for t in study.get_trials(deepcopy=False))
    return not unfinished and len(counted_numbers(study)) >= settings.trials


def check_searched_options(base: RunConfig, params: dict[str, Param]) -> None:
    """Refuse a searched builder option (``model.options.NAME``) that the base config's model does not
    take: every trial would fail alike when it builds its model.

    A builder option has no declared type, so only the builder knows its names. The model is built once
    on the meta device (shapes only: no storage, no initialisation) with each searched option at a value
    the space can draw; only "does not take that option" for a searched option is refused here. A value
    the builder refuses for another reason may be one draw of many, so that is left to the trials, each
    recorded as failed with its reason.
    """
    import torch

    from cnnlab.errors import UnknownOptionError
    from cnnlab.models import create_model
    from cnnlab.run import model_kwargs

    prefix = "model.options."
    searched = {key[len(prefix):]: key for key in params if key.startswith(prefix)}
    if not searched:
        return
    draw = {key: (param.choices[0] if param.choices is not None else param.low)
            for key, param in params.items() if key.startswith(prefix)}
    try:
        config = apply_params(base, draw)
        with torch.device("meta"):
            create_model(config.model.name, **model_kwargs(config.model))
    except UnknownOptionError as err:
        if err.option not in searched:
            return  # an option of the base config itself: the trials' set-up names it as `cnnlab train` does
        key, reason = searched[err.option], str(err).rstrip(".")
        raise CnnlabError(f"The search space searches {key}, a builder option that {base.model.name} does not "
                          f"take ({reason}), so every trial would fail building its model. Take {key} out of "
                          f"the space, or search a model that takes it (cnnlab build MODEL,{err.option}=VALUE "
                          "tries one).") from None
    except Exception:  # not this check's to report: each trial builds its model and records what went wrong
        return


def check_trial_data(base: RunConfig, params: dict[str, Param], grid: bool = False) -> None:
    """Refuse, before the first trial, a set-up or data that no trial could train on. What a trial's set-up
    refuses on this machine, where its workers train, for the keys the space leaves at the base config's
    value: a ``train.device`` it lacks, a ``train.precision`` that device cannot run, a ``train.threads``
    the operating system cannot start, a ``model.init_from`` that cannot be read (nor its EMA weights, when
    ``model.init_ema`` is true or a searched choice); a searched builder option
    the model does not take (:func:`check_searched_options`); a ``data.channels`` other than the model
    spec's ``in_chans``. Then a ``num_classes``
    in the model options other than the data's class count, or fewer training images than the smallest
    batch a trial can draw (:meth:`Param.smallest_drawn`; ``grid``: the space is searched as a grid).
    Each trial would otherwise fail alike, one after another.

    The data is not checked when the space searches a ``data.*`` key: the trials' data then differs from
    the base config's, and a trial that cannot start is recorded as failed with its reason.
    """
    from cnnlab.config import check_thread_setting
    from cnnlab.devices import resolve_device
    from cnnlab.train.engine import refuse_other_channels, resolve_precision
    from cnnlab.train.init_from import read_init_source

    if "model.name" not in params:
        check_searched_options(base, params)
    if not any(key in params for key in ("model.options.in_chans", "data.channels")):
        refuse_other_channels(base)
    # Each raises the CnnlabError `cnnlab train` would, naming the key and what to do.
    device = None if "train.device" in params else resolve_device(base.train.device)
    if device is not None and "train.precision" not in params:
        resolve_precision(base.train.precision, device)
    if "train.threads" not in params:
        check_thread_setting(base.train.threads, announce=False)  # each trial notes threads above the cores
    if base.model.init_from and not any(key in params for key in ("model.init_from", "model.name")):
        read_init_source(base.model.init_from, base.model.name, ema=base.model.init_ema)
        searched_ema = params.get("model.init_ema")
        if searched_ema is not None and True in (searched_ema.choices or []):  # the trials that draw true read its EMA
            try:
                read_init_source(base.model.init_from, base.model.name, ema=True)
            except CnnlabError as err:
                raise CnnlabError(f"The space searches model.init_ema, and every trial that draws true would be "
                                  f"refused: {err} Or take true out of the space's model.init_ema choices.") from None
    if any(key.startswith("data.") for key in params):
        return
    from cnnlab.data.sources import load_source
    from cnnlab.run import check_run_classes

    dataset = load_source(base.data)  # the trials' own split: the same spec, hold-out and seed
    check_run_classes(base.model, dataset.num_classes, base.data.spec)
    searched = params.get("train.batch_size")
    if searched is None:
        smallest, where = base.train.batch_size, f"train.batch_size={base.train.batch_size}"
    else:
        smallest = searched.smallest_drawn(grid)
        where = f"the space's smallest train.batch_size, {smallest}"
    if len(dataset.train) < smallest:
        raise CnnlabError(f"The training split of '{display_name(base.data.spec)}' has {len(dataset.train)} images, fewer than one "
                          f"batch at {where}, so no trial could take a step. Lower the batch size (--set "
                          f"train.batch_size=N, or in the space), or search on more data.")


def worker_threads(workers: int, cpus: Optional[int] = None) -> Optional[int]:
    """torch CPU threads per worker: the cores shared out when several workers run side by side,
    None (torch's and cnnlab's own default) for one worker. ``cpus`` defaults to os.cpu_count()."""
    if workers <= 1:
        return None
    return max(1, (cpus or os.cpu_count() or 1) // workers)


@dataclass
class SearchPlan:
    """A search decided and ready to run: the settings every worker gets, and what they came from."""

    settings: SearchSettings
    space: dict[str, Param]  # the space searched (narrowed, with refine)
    base: RunConfig  # the config every trial starts from
    workers: int = 1  # worker processes on this machine
    prefix: str = ""  # of the result files in the search folder
    space_file: Optional[Path] = None  # the space as written to the search folder
    refinement: Optional[Refinement] = None  # what refine decided
    grid_points: Optional[int] = None  # points in the full grid (grid search only)
    requested_trials: int = 0  # trials asked for; settings.trials is capped at the grid's points


# Keys whose trial values decide whether a trial's schedule fits its epochs: with one of them searched, each
# trial is checked on its own draw (a refused draw is recorded as a failed trial with its reason).
SCHEDULE_FIT_KEYS = (EPOCHS_KEY, "train.probe_epochs", "train.minutes")


def check_trial_schedule(base: RunConfig, params: dict[str, Param], epochs: Optional[int]) -> None:
    """Refuse, before the first trial, a schedule that no trial of ``epochs`` epochs could run: the base
    config's own train.epochs never trains in a search, so a schedule.step_epochs milestone or a warm-up that
    fits it may not fit --epochs, and `cnnlab train` refuses a milestone at or beyond the run's last epoch. Each
    trial would otherwise fail alike, one after another, and the search end with exit code 0.

    Not checked where the space searches a schedule.* key or one of :data:`SCHEDULE_FIT_KEYS` (each trial's draw
    is then its own), or where train.minutes sets the trials' epochs (the budget refuses what does not fit)."""
    from cnnlab.train.schedule import unreached_milestones

    if epochs is None or base.train.minutes is not None:
        return
    if any(key.startswith("schedule.") or key in SCHEDULE_FIT_KEYS for key in params):
        return
    trial = copy.deepcopy(base)
    trial.train.epochs = epochs
    where = f"--epochs {epochs}"
    try:
        validate_config(trial)
    except CnnlabError as err:
        raise CnnlabError(f"Every trial trains {where}, and with that the base config is refused: {err}") from None
    probe = trial.train.probe_epochs
    length = f"{where}, less train.probe_epochs={probe}" if probe else where
    problem = unreached_milestones(trial.schedule, epochs - probe, length)
    if problem:
        raise CnnlabError(f"Every trial of this search would be refused before training: {problem} (A search "
                          f"trains each trial for --epochs epochs, not the base config's {EPOCHS_KEY}.)")


def plan_search(base: Optional[RunConfig], out: str | Path, *, space=None, refine: bool = False,
                overrides: typing.Sequence[str] = (), storage: Optional[str] = None, study: str = DEFAULT_STUDY,
                trials: int = 20, epochs: Optional[int] = None, grid: bool = False, pruner: str = "median",
                seed: Optional[int] = None, workers: int = 1, keep_schedule: bool = False,
                keep_aug: typing.Iterable[str] = ()) -> SearchPlan:
    """Everything ``cnnlab search`` decides before the first trial, for the search folder ``out``
    (created if missing).

    A coarse search needs ``base`` (the config every trial starts from) and ``space`` (a YAML
    path, a mapping as in the file, or Params); it writes ``out/space.yaml`` and trains each trial
    ``epochs`` epochs (default DEFAULT_EPOCHS). With ``refine=True``, :func:`refine_search` narrows
    the finished study ``study`` instead (``base`` is not used; ``overrides`` apply to the coarse
    study's config) and the new study is ``study-refine``; its trials train at a constant lr (step 5
    of the recipe) unless ``keep_schedule`` keeps the coarse study's schedule (refine only).
    ``storage`` defaults to ``sqlite:///out/study.db``. With ``grid`` the trials are capped at the
    grid's points. ``seed`` is the sampler's (worker k adds 1000 k; a resumed search draws from a
    sequence of its own, see ``_sampler``); by default the base config's train.seed. Resuming a study
    with another space, ``epochs`` or base config is refused before any file is written
    (:func:`check_resume`). A space that draws ``aug.preset`` over a base whose augmentation is recorded in full
    (a run's config.yaml) has the values the base's preset filled cleared first, so that each trial's preset fills
    them, but the dotted keys ``keep_aug`` (the command's ``--set aug.KEY``), and a note says so.
    """
    from cnnlab.errors import check_count, check_path_argument
    from cnnlab.io import check_out_is_named, check_output_folder, missing_folders, remove_if_empty

    out = check_path_argument(out, "out", "the search folder")
    check_out_is_named(out, "the study and its trials", "Name a folder for the search.", name="out")
    if base is not None:
        require_run_config(base)
    check_count(trials, "trials", 1, "how many trials the study holds when the search ends")
    check_count(workers, "workers", 1, "how many processes run trials at once")
    _pruner(pruner)  # an unknown name is refused before anything is written
    check_study_name(study)
    if keep_schedule and not refine:
        raise CnnlabError("--keep-schedule applies to --refine only (it keeps the coarse search's lr schedule "
                          "where step 5 trains at a constant lr); a coarse search always trains with the config's "
                          "schedule. Add --refine, or leave out --keep-schedule.")
    check_output_folder(out, "The search folder", holds_runs=True)  # created once the space and the data have passed their checks
    _refuse_another_commands_folder(Path(out))
    url = storage_url(out, storage)
    refinement = None
    if refine:
        if space is not None:
            raise CnnlabError("--refine searches the coarse study's space narrowed around its best trials: leave "
                              "out --space (the narrowed space is written to space-refine.yaml).")
        if storage is None and not out.is_dir():
            raise CnnlabError(f"There is no coarse search '{display_name(study)}' in '{display_name(str(out))}' to refine: "
                              "the folder does not exist. Run the coarse search first (without --refine), or name its folder with --out.")
        refinement = refine_search(url, study, out, epochs, overrides, keep_schedule=keep_schedule, grid=grid,
                                   pruner=pruner)
        params, base, epochs = refinement.space, refinement.base, refinement.epochs
        study, prefix, space_file = refinement.study_name, refinement.prefix, refinement.path
    else:
        if space is None:
            raise CnnlabError("--space is needed: a YAML file of ranges, e.g. 'optim.lr: {low: 1.0e-4, high: 1.0, "
                              "log: true}' (or --refine to narrow an earlier search).")
        if base is None:
            raise CnnlabError("A search needs a base config: the RunConfig every trial starts from.")
        # A space file's unused grid fields get a note (a person wrote it for this search); a mapping a program
        # built (an experiment's, whose random and grid studies share one space) is taken as it is
        if isinstance(space, (str, Path)):
            params = load_space(space, base, grid=grid)
        elif space and all(isinstance(value, Param) for value in space.values()):
            params = parse_space(space_dict(space), base)
        else:
            params = parse_space(space, base)
        if "aug.preset" in params:
            base = copy.deepcopy(base)
            if clear_preset_values(base.aug, keep_aug):
                kept = sorted(key for key in keep_aug if key.startswith("aug."))
                keeping = (f"; {', '.join(kept)} as set stay" if kept
                           else "; set one with --set aug.KEY=VALUE to keep it")
                notice(f"the space draws aug.preset over an augmentation the base config records in full (a run's "
                       f"config, its values filled from preset '{base.aug.preset}'): those values are left out, "
                       f"and each trial's preset fills them again{keeping}")
        epochs = trial_epochs(params, epochs, DEFAULT_EPOCHS)
        check_trial_data(base, params, grid)
        check_trial_schedule(base, params, epochs)
        prefix, space_name = study_files(study)
        space_file = out / space_name
    fields = {key: asdict(param) for key, param in params.items()}
    grid_points = grid_size(fields) if grid else None
    settings = SearchSettings(base=config_to_dict(base), space=fields, out=str(out), storage=url, study_name=study,
                              trials=min(trials, grid_points) if grid else trials, epochs=epochs, grid=grid,
                              pruner=pruner, seed=base.train.seed if seed is None else seed,
                              threads=worker_threads(workers),
                              refinement=refinement.to_dict() if refinement is not None else None)
    created = missing_folders(out)  # the folder and the parents made for it, if they are new
    out.mkdir(parents=True, exist_ok=True)  # only now: a search refused above leaves no empty folder behind
    try:
        check_study_resumable(settings)  # a resumed study's space file is not overwritten by another space
    except CnnlabError:  # a --storage that cannot be opened, or a study with other settings
        remove_if_empty(*created)
        raise
    if refinement is None:
        from cnnlab.io import write_text_atomic

        write_text_atomic(space_file, space_to_yaml(params), "the search space")
    return SearchPlan(settings=settings, space=params, base=base, workers=workers, prefix=prefix,
                      space_file=space_file, refinement=refinement, grid_points=grid_points, requested_trials=trials)


@optuna_quiet()
def run_search(plan: SearchPlan, say: Optional[Callable[[str], None]] = None,
               quiet: bool = False) -> tuple[SearchResults, dict[str, Path]]:
    """Run a planned search to its trial count (resuming a stopped one), then write its results.

    ``say`` gets a line per finished trial when one worker runs (spawned workers write theirs to stderr);
    ``quiet``: no such line from any worker (:func:`run_workers`).
    Returns the results (every trial, best first) and the files written: results.csv, and once a
    trial completed best.yaml and scatter.png (each with the plan's prefix).
    """
    run_workers(plan.settings, plan.workers, say, quiet=quiet)
    # A Ctrl-C or SIGTERM as the results are written is held: there is no next trial to skip, and they finish (a
    # second one stops at once), as docs/command-line.md says of a signal after a command's last run
    with stop_between_runs():
        results = collect_results(open_study(plan.settings), plan.settings.out)
        paths = write_results(results, plan.space, plan.base, plan.settings.epochs, plan.settings.out, plan.prefix)
    return results, paths


def _params_text(params: dict, study) -> str:
    """A trial's values on its line, each with the digits that tell it apart from every other value the
    study's trials (this one's included) drew for that key so far (:func:`cnnlab.text.distinct_texts`):
    close values do not print alike, as they do not in the results table."""
    drawn = [trial.params for trial in study.get_trials(deepcopy=False)]
    texts = []
    for key, value in params.items():
        others = [other[key] for other in drawn if other.get(key) is not None]
        texts.append(f"{key}={distinct_texts([value, *others])[0]}")
    return " ".join(texts)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class SearchResults:
    rows: list[dict]  # one per trial, best first: number, state, val_acc, params, run_dir, error
    best: Optional[dict]
    counts: dict = field(default_factory=dict)  # state -> trials


def collect_results(study, out: str | Path) -> SearchResults:
    """Every trial of ``study`` worth listing, best first. Each trial's run folder is named inside the search
    folder ``out`` as this process sees it: a worker records its folder relative to its own working folder, so
    one resumed from elsewhere (or given --out as an absolute path) would otherwise list a mix."""
    import optuna

    state = optuna.trial.TrialState
    rows = []
    trials = study.get_trials(deepcopy=False)
    given_up = _given_up_numbers(trials)
    for trial in trials:
        if trial.state == state.FAIL and "error" not in trial.user_attrs and trial.number not in given_up:
            continue  # interrupted, killed (its parameters ran again as another trial) or surplus
        value = trial.value
        if value is None and trial.intermediate_values:
            value = max(trial.intermediate_values.values())
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append({"number": trial.number, "state": trial.state.name, "val_acc": value,
                     "epochs": max(trial.intermediate_values, default=None), "seconds": seconds,
                     # a queued (WAITING) trial has no params yet: those it will run with are Optuna's fixed_params
                     "params": dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {})),
                     "run_dir": _listed_folder(out, trial.user_attrs.get("run_dir")),
                     "error": trial.user_attrs.get("error") or (given_up_error(trial) if trial.number in given_up
                                                                else None)})
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    rows.sort(key=lambda r: (order.get(r["state"], 5), -(r["val_acc"] if r["val_acc"] is not None else -1)))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return SearchResults(rows=rows, best=complete[0] if complete else None, counts=counts)


def write_results(results: SearchResults, space: dict[str, Param], base: RunConfig, epochs: Optional[int],
                  out: str | Path, prefix: str = "") -> dict[str, Path]:
    """results.csv, best.yaml (ready for `cnnlab train --config`) and scatter.png, written atomically."""
    from cnnlab.io import write_text_atomic

    out = Path(out)
    keys = list(space)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "val_acc", "epochs", "seconds", *keys, "run_dir", "error"])
    for row in results.rows:
        writer.writerow([row["number"], row["state"], "" if row["val_acc"] is None else f"{row['val_acc']:.6f}",
                         row["epochs"] or "", "" if row["seconds"] is None else f"{row['seconds']:.1f}",
                         *[row["params"].get(k, "") for k in keys], row["run_dir"] or "", row["error"] or ""])
    paths = {"results": out / f"{prefix}results.csv"}
    write_text_atomic(paths["results"], buffer.getvalue(), "the search results")
    if results.best is not None:
        # its paths as the trials recorded them (absolute, and as typed), so that it trains from any folder
        best = record_paths(apply_params(base, results.best["params"]))
        if epochs is not None:  # None: the best trial's searched train.epochs stands
            best.train.epochs = epochs
        paths["best"] = out / f"{prefix}best.yaml"
        save_config(best, paths["best"])
        paths["scatter"] = save_scatter(results, space, out / f"{prefix}scatter.png")
    return paths


def save_scatter(results: SearchResults, space: dict[str, Param], path: str | Path) -> Path:
    """Val accuracy against each searched hyperparameter (log axis for log ranges), best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.io import save_png

    keys = list(space)
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    styles = {"COMPLETE": dict(color="tab:blue", label="complete"), "PRUNED": dict(color="tab:gray", label="pruned")}
    for index, key in enumerate(keys):
        axis = axes[index // columns][index % columns]
        for state, style in styles.items():
            points = [(r["params"][key], r["val_acc"] * 100) for r in results.rows
                      if r["state"] == state and r["val_acc"] is not None and key in r["params"]]
            if points:
                xs, ys = zip(*points)
                axis.scatter([str(x) for x in xs] if space[key].choices is not None else xs, ys, s=18,
                             alpha=0.8, **style)
        if results.best is not None and key in results.best["params"]:
            x = results.best["params"][key]
            axis.scatter([str(x)] if space[key].choices is not None else [x], [results.best["val_acc"] * 100],
                         marker="*", s=160, color="tab:red", label="best", zorder=3)
        if space[key].log:
            axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.set_ylabel("val accuracy (%)")
        axis.grid(alpha=0.3)
    for index in range(len(keys), rows * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return save_png(figure, path, "the scatter plots")
