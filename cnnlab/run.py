"""The run folder contract: one module owns the names of everything a training run writes.

A run folder (``cnnlab train --out RUN``) holds::

    config.yaml          the resolved RunConfig (``cnnlab train --config`` repeats the run)
    metrics.csv          one row per epoch          steps.csv     one row per optimiser step
    last.safetensors     checkpoint to --resume     best.safetensors  weights of the best val epoch
    snapshot-K.safetensors  weights at the end of LR cycle K (cyclic schedule, train.snapshots)
    curves.png, summary.txt, report.txt, diagnosis.txt, tensorboard/, eval-SPLIT-TTA[-ema]/ (cnnlab eval),
    best.pt, best.onnx, ... (cnnlab export)
    init.json            what model.init_from loaded, kept fresh and adapted (runs that start from weights)
    status.json          running, finished, interrupted, diverged or failed (:data:`RUN_STATES`), and why
    environment.json     the machine the run trained on      report.html  the run's page (cnnlab report)
    budget.json          train.minutes: the timed steps and the epochs chosen from them

Every module that reads or writes a run takes these names from here, and so it does for the keys of
a checkpoint's ``meta`` dict (:class:`MetaKey`; :func:`checkpoint_meta` builds it, and
``cnnlab.train.checkpoint.META_SCHEMA`` checks each value when a file is read).

What this module defines:

============================  ================================================================
name                          what
============================  ================================================================
``*_FILE``, ``CHECKPOINT_*``  the file names above; :func:`snapshot_name`, :func:`eval_folder_name`,
                              :func:`export_name` (`cnnlab export`'s default file)
``EARLIER_RUN_FILES``         what a new run does not rewrite as it starts, so removes when an earlier
                              run left it (:meth:`RunFolder.earlier_run_files` adds the patterns and
                              the ensemble results saved in the folder)
``ENSEMBLE_KEYS``             what tells a `cnnlab ensemble` result saved in a run folder
                              (:func:`is_ensemble_result`, :meth:`RunFolder.ensemble_results`)
``MEASURED_KEY``              where an eval or ensemble member records the weights it measured
                              (cnnlab.evaluate.measured), so readers can tell a stale result
:class:`MetaKey`              the keys of a checkpoint's metadata; ``BUILD_KEYS``,
                              ``PREPROCESSING_KEYS`` and ``RESUME_KEYS`` group them by use
:func:`build_meta`,           the metadata of a run's checkpoint or snapshot (the engine writes
:func:`checkpoint_meta`       it; ``cnnlab.train.checkpoint.META_SCHEMA`` checks it on reading)
:class:`RunFolder`            the paths of one run, :meth:`RunFolder.read_config`, the
                              checkpoint a reader uses, the snapshots in cycle order
:func:`checkpoint_path`       the checkpoint file a path names (a run folder or a file)
:func:`recorded_place`        the end of a path an older record kept as it was typed, to match with a
                              place in the folder that keeps the record (ladders, experiments)
:func:`build_model`           the network a run's ``model`` config section describes: the one
                              builder for training and for loading a trained model
============================  ================================================================

A trained model with its preprocessing is loaded by ``cnnlab.train.checkpoint.load_run_model``
(from these names; it holds the legacy path for runs whose snapshots lack their preprocessing).
That reader lives with the checkpoint format, one layer up: this module sits below ``cnnlab.train``
(the checkpoint schema and the logs import its names), so it imports nothing from there. Importing
it loads only the names (the CLI imports it at start-up); :func:`checkpoint_meta`,
:meth:`RunFolder.read_config` and :func:`build_model` import the config and the model zoo when called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from cnnlab.errors import CnnlabError, counted, display_name, shell_word

if TYPE_CHECKING:  # the functions below import what they use when called: importing the names costs nothing
    import torch

    from cnnlab.config import ModelConfig, RunConfig

# ---------------------------------------------------------------------------------------------
# file names

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
STEPS_FILE = "steps.csv"
CHECKPOINT_LAST = "last.safetensors"
CHECKPOINT_BEST = "best.safetensors"
CURVES_FILE = "curves.png"
SUMMARY_FILE = "summary.txt"
REPORT_FILE = "report.txt"
DIAGNOSIS_FILE = "diagnosis.txt"
TENSORBOARD_DIR = "tensorboard"
INIT_FILE = "init.json"  # what model.init_from loaded, skipped and adapted (runs that start from weights)
# Held by the process writing a run, search or experiment folder (cnnlab.io.hold_folder): a second writer is refused
LOCK_FILE = ".lock"
STATUS_FILE = "status.json"  # where the run stands: state, pid, host, epochs done and planned, why it stopped
ENVIRONMENT_FILE = "environment.json"  # CPU, cores, device, torch and Python versions the run trained with
BUDGET_FILE = "budget.json"  # train.minutes: the timed steps, the epochs asked and chosen (cnnlab.train.budget)
REPORT_HTML_FILE = "report.html"  # the run's self-contained page (cnnlab report; cnnlab train writes it too)
# The files a run writes at its top level: another command's --out (an ensemble's RUN/NAME.json) must not take their names
RUN_FILES = (CONFIG_FILE, METRICS_FILE, STEPS_FILE, CHECKPOINT_LAST, CHECKPOINT_BEST, CURVES_FILE, SUMMARY_FILE,
             REPORT_FILE, DIAGNOSIS_FILE, INIT_FILE, LOCK_FILE, STATUS_FILE, ENVIRONMENT_FILE, BUDGET_FILE,
             REPORT_HTML_FILE)
# What a new run writes into its folder as it starts (cnnlab.train.engine.start_run_folder, then its status and
# machine records), whatever its config: an earlier run's copies are replaced before the first step.
WRITTEN_AT_START = (CONFIG_FILE, SUMMARY_FILE, STATUS_FILE, ENVIRONMENT_FILE)
# An earlier run's files that a new run in the same folder does not replace as it starts, so that later commands
# would read them as the new run's (RunFolder.earlier_run_files): written only by some runs (init.json,
# budget.json), as the run goes (metrics.csv, steps.csv, best.safetensors) or at its end (curves.png,
# report.txt), or by the commands after it (diagnosis.txt, report.html). last.safetensors is never among them
# when a new run starts (a folder that has it is refused), but a write that was killed may have left its
# temporary copy. The .lock is held by the new run itself.
EARLIER_RUN_FILES = tuple(name for name in RUN_FILES if name not in (*WRITTEN_AT_START, LOCK_FILE))
# status.json's "state": training now; ran every epoch; stopped by Ctrl-C; the loss became NaN/inf; an error;
# stopped by `cnnlab search`'s pruner (val accuracy behind the other trials')
RUN_STATES = ("running", "finished", "interrupted", "diverged", "failed", "pruned")
# What `cnnlab eval` writes in its folder (RunFolder.eval_folder), and where `cnnlab search` keeps its trials' runs.
# An experiment's folder (cnnlab.experiments): written before its first run, and what tells the folder apart
EXPERIMENT_SETTINGS_FILE = "settings.json"
EXPERIMENT_RESULT_FILE = "result.json"  # written last: a finished experiment's result, which a rerun reads back
EVAL_METRICS_FILE = "metrics.json"
EVAL_CONFUSION_FILE = "confusion.json"
EVAL_CONFUSION_PNG = "confusion.png"
EVAL_MISTAKES_PNG = "mistakes.png"
EVAL_FILES = (EVAL_METRICS_FILE, EVAL_CONFUSION_FILE, EVAL_CONFUSION_PNG, EVAL_MISTAKES_PNG)
# What an eval's metrics.json holds besides its other numbers (is_eval_folder): the accuracy, and the checkpoint read
EVAL_METRICS_KEYS = ("top1", "checkpoint")
# A transfer ladder's result (cnnlab.transfer.ladder), beside its SIZE/seedK/RUNG run folders
TRANSFER_RESULT_FILE = "transfer.json"
# The key under which an eval's metrics.json, and each member of an ensemble result, record which weights they
# measured: the checkpoint file relative to the result's folder and its identity (cnnlab.evaluate.measured). A
# resumed run keeps its evals and ensemble results, and its checkpoints move on: readers compare the two.
MEASURED_KEY = "measured"
# `cnnlab ensemble --out RUN/NAME.json` saves its result in a run folder under any name: a JSON object with these
# keys is one (is_ensemble_result). The run's page shows it, and a new run in the folder removes it with the earlier
# run's files (RunFolder.earlier_run_files): it describes the earlier weights. A JSON file of any name that cannot be
# parsed, and a file named ENSEMBLE_PATTERN that holds no JSON object, is named as a problem of the run
# (cnnlab.report.runs): it may be a damaged result.
ENSEMBLE_KEYS = ("members", "ensemble")
ENSEMBLE_PATTERN = "ensemble*.json"
SEARCH_TRIALS_DIR = "trials"
SEARCH_STUDY_FILE = "study.db"  # a search folder's default study storage (sqlite), written before its first trial
# What torch's SummaryWriter names its event files in TENSORBOARD_DIR (glob)
TENSORBOARD_EVENTS_PATTERN = "events.out.tfevents.*"
# `cnnlab export`'s default file, beside the checkpoint it exports: its stem, -ema for the EMA weights, and the
# format's suffix (best.pt, best-ema.onnx; export_name)
EXPORT_SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}

# snapshot-1.safetensors, snapshot-2.safetensors, ...: one per cycle of a cyclic learning rate.
_SNAPSHOT_PREFIX = "snapshot-"
_SNAPSHOT_SUFFIX = ".safetensors"

# The checkpoint a reader (eval, predict, export, ensemble) takes from a run folder: best, else last.
CHECKPOINT_PREFERENCE = (CHECKPOINT_BEST, CHECKPOINT_LAST)


def snapshot_name(number: int | str) -> str:
    """File of the snapshot taken at the end of LR cycle ``number`` (1-based; 'K' or '*' for text and globs)."""
    return f"{_SNAPSHOT_PREFIX}{number}{_SNAPSHOT_SUFFIX}"


SNAPSHOT_PATTERN = snapshot_name("*")  # glob
SNAPSHOT_SHOWN = snapshot_name("K")  # how messages and help name the snapshot files


def is_ensemble_result(value: object) -> bool:
    """Whether a JSON value read from a run folder is a `cnnlab ensemble` result: an object with
    :data:`ENSEMBLE_KEYS`."""
    return isinstance(value, dict) and all(key in value for key in ENSEMBLE_KEYS)


def export_name(checkpoint_stem: str, ema: bool, fmt: str) -> str:
    """The file `cnnlab export` writes beside a checkpoint by default: best.pt, best-ema.onnx, snapshot-2.pt."""
    return f"{checkpoint_stem}{'-ema' if ema else ''}{EXPORT_SUFFIXES[fmt]}"


# An ONNX file is a protobuf ModelProto, written field by field: ir_version first (field 1, a varint: tag 0x08 and a
# small number), then a length-delimited field (tag 0x12 producer_name ... 0x72), whatever its name says.
_ONNX_SECOND_TAGS = {field << 3 | 2 for field in range(2, 15)}


def _looks_like_onnx(start: bytes) -> bool:
    return len(start) >= 3 and start[0] == 0x08 and 0 < start[1] < 0x80 and start[2] in _ONNX_SECOND_TAGS


def exported_format(path: Path) -> Optional[str]:
    """"torchscript" or "onnx" when the file ``path`` is one `cnnlab export` writes, by its content (a TorchScript
    archive holds the module's code/, torch.save's archives do not; an ONNX graph starts with its ModelProto's
    fields); None for any other file, or one that cannot be read. Nothing is unpickled."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            start = handle.read(3)
    except OSError:
        return None
    if _looks_like_onnx(start):
        return "onnx"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(name.split("/")[1:2] == ["code"] for name in archive.namelist()):
                    return "torchscript"
    except (OSError, zipfile.BadZipFile):
        pass
    return None


def refuse_exported_model(path: Path) -> None:
    """A CnnlabError when ``path`` is a file `cnnlab export` writes (a TorchScript archive or an ONNX graph, by
    content: the name may be anything) or an image (a command's arguments given in the wrong order), which a reader
    of checkpoints or weights would otherwise call damaged. The TorchScript check reads the zip's listing (a
    TorchScript archive holds the module's code/, torch.save's archives do not); nothing is unpickled."""
    found = "onnx" if path.suffix.lower() == EXPORT_SUFFIXES["onnx"] else exported_format(path)
    kind = {"onnx": "an ONNX graph", "torchscript": "a TorchScript module (torch.jit.save)"}.get(found)
    if kind is not None:
        raise CnnlabError(
            f"'{display_name(str(path))}' is {kind}, a model exported for deployment (`cnnlab export`), not a checkpoint cnnlab "
            f"loads. Name the run folder it was exported from, or its {CHECKPOINT_BEST}; to run the exported file, "
            "load it with torch.jit.load or onnxruntime.")
    refuse_image(path)


def refuse_image(path: Path, hint: str = "") -> None:
    """A CnnlabError when the file ``path``, given where a checkpoint belongs, is an image: PIL reads its header
    (no pixels are decoded). ``hint``: a last sentence for the command (predict's argument order)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind = image.format or "one PIL reads"
    except Exception:  # PIL raises many types for what is not an image; any of them means "not one"
        return
    raise CnnlabError(
        f"'{display_name(str(path))}' is an image ({kind}), not a checkpoint. Name a run folder or its "
        f"{CHECKPOINT_BEST} in its place.{' ' + hint if hint else ''}")


def eval_folder_name(split: str, tta: str, ema: bool, checkpoint: Optional[str] = None,
                     data: Optional[str] = None, shift: Optional[int] = None,
                     scales: Optional[Sequence[float]] = None) -> str:
    """Folder `cnnlab eval` writes its reports to inside the run, by default: eval-SPLIT-TTA[-ema].

    ``shift``, ``scales``: the corner shift and multiscale scales when given (--shift, --scales) and other than
    the eval's own (cnnlab.evaluate.evaluate.default_eval_folder passes them only then):
    eval-test-10crop-shift3, eval-test-multiscale-scales0.8_1_1.2 (in increasing order, as given or not); an eval
    with the mode's own settings keeps
    the plain name. ``checkpoint``: the name (stem) of the file evaluated when it is not the run's own (best,
    else last): eval-test-none-last, eval-test-none-snapshot-2. ``data``: the spec evaluated on when it is not
    the run's: eval-test-none-on-cifar10. Each eval has its own folder, so none replaces another with other
    settings, nor the eval of the run's own checkpoint on its own data, the one `cnnlab runs` and the run's page
    report as its test accuracy.
    """
    name = f"eval-{split}-{tta}"
    if shift is not None:
        name += f"-shift{int(shift)}"
    if scales is not None:
        # "_" between scales: a "-" would read as the next part of the name, and "." is part of a scale. Sorted:
        # the views are averaged, so the same scales in another order measure the same and share one folder
        name += "-scales" + "_".join(f"{float(scale):g}" for scale in sorted(float(scale) for scale in scales))
    name += "-ema" if ema else ""
    if checkpoint is not None:
        name += f"-{slug(checkpoint)}"
    if data is not None:
        name += f"-on-{data_slug(data)}"
    return name


def data_slug(spec: str) -> str:
    """A --data spec as an eval folder's name part: its slug as the loader reads it (``cifar10`` for ``CIFAR-10``,
    without spaces or empty parts); for a folder or a CSV, the last name of
    its path and a digest of the absolute path (``folder-hold-1a2b3c4d``), so that two folders of one name (``--data
    folder:hold`` run in two working folders) get a folder each, and one folder named two ways (``folder:a/b``,
    ``folder:./a/b/``) one."""
    import hashlib

    kind, rest = _data_key(spec)
    if kind in ("folder", "csv") and rest:
        digest = hashlib.sha256(rest.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return f"{slug(f'{kind}-{Path(rest).name}')}-{digest}"
    return slug(f"{kind}:{rest}" if rest else kind)  # one name for one data set however it is spelt


def _path_part(spec: str) -> Optional[tuple[str, str]]:
    """(kind, path) of a folder or CSV spec (``("folder", "imgs")`` for ``folder:imgs``), as typed; None for any
    other data."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    return (kind, rest.strip()) if kind in ("folder", "csv") and rest.strip() else None


def relative_data_path(spec: str) -> bool:
    """Whether ``spec`` names a folder or a CSV by a relative path: as a run older than the absolute record of its
    data (config.record_paths) keeps it, read from the working folder."""
    part = _path_part(spec)
    return part is not None and not Path(part[1]).expanduser().is_absolute()


def absolute_spec(spec: str) -> str:
    """``spec`` with a folder's or a CSV's path made absolute from the working folder, as a run records its own
    (:func:`cnnlab.config.record_paths`): what an eval on other data records, so that `cnnlab runs`, run from
    another folder, still matches it with the data it measured. Any other spec as it is."""
    part = _path_part(spec)
    return f"{part[0]}:{_path_key(part[1])}" if part is not None else spec


EVAL_FOLDER_PATTERN = eval_folder_name("*", "*", False)  # glob, "eval-*-*": matches the -ema folders too


def slug(text: str, empty: str = "x") -> str:
    """``text`` as a file name part: letters, digits, - and _ kept, every other character a -; ``empty``
    when nothing is left."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or empty


# The names the data loader accepts for one source, and the one its data set records (DataSet.spec);
# tests/test_run_folder.py checks this against the loader's own tables (cnnlab.data.sources), which import torch.
DATA_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
                "cifar-100": "cifar100"}


def same_data(one: str, other: str) -> bool:
    """Whether two ``--data`` specs name the same data, compared as the loader reads them (nothing is read):
    the source's name in any case or alias (``Digits``, ``fashion_mnist``), a folder or CSV path as the path
    it opens, made absolute from the working folder (``folder:./imgs/`` is ``folder:imgs`` and ``folder:/HERE/imgs``).
    A run's config.yaml keeps the spec with its path made absolute (older runs: as typed) and an eval records the
    data set's own (``DataSet.spec``): this is how the two are matched."""
    return _data_key(one) == _data_key(other)


def _data_key(spec: str) -> tuple[str, str]:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    kind = DATA_ALIASES.get(kind, kind)
    if _path_part(spec) is not None:
        # as an absolute path: a run records folder:imgs as the absolute path it read (config.record_paths)
        return kind, _path_key(rest)
    # without spaces or empty parts, as the loader reads the options and records them (DataSet.spec): a run
    # trained on "synthetic: classes=3, train=60" or "synthetic:classes=3,train=60," was never matched with the
    # eval of its own data
    rest = ",".join(part for part in rest.replace(" ", "").split(",") if part)
    return kind, rest.lower() if kind.startswith("cifar") else rest


def same_path(one: str, other: str) -> bool:
    """Whether two paths name the same file or folder as a run reads them (nothing is read): each made absolute
    from the working folder, ``~`` expanded. A run's config.yaml keeps data.data_dir and model.init_from with a
    relative path made absolute (older runs: as typed); :func:`same_data` compares a data spec's path this way."""
    return _path_key(one) == _path_key(other)


def _path_key(path: str) -> str:
    return os.path.abspath(Path(path.strip()).expanduser())


def recorded_place(recorded: str | Path, parts: int) -> Path:
    """The last ``parts`` names of a path that a file kept in a folder (a ladder's transfer.json, an experiment's
    result files) recorded before such paths were kept relative to that folder.

    Such a record has the path as the call that wrote it named it: relative to that call's working folder
    (``runs/ladder/4/seed0/top``), or absolute. The file lies in the folder it describes, so the path ends in the
    place of what it named within that folder (``4/seed0/top``) wherever the folder was then: compare this with
    that place, of ``parts`` names, to find the record of a run in a folder that has since moved. A shorter path
    is kept whole; ``parts`` 0 gives '.', the folder itself."""
    names = Path(recorded).parts
    return Path(*names[max(len(names) - parts, 0):])


# ---------------------------------------------------------------------------------------------
# checkpoint metadata


class MetaKey:
    """The keys of a checkpoint's ``meta`` dict: the one place they are spelled.

    The values are checked on every read against ``cnnlab.train.checkpoint.META_SCHEMA``, which has
    one entry per key here (a test holds them together).
    """

    # to rebuild the network (BUILD_KEYS)
    MODEL = "model"  # the registered architecture name
    NUM_CLASSES = "num_classes"  # the classifier's output count
    IN_CHANS = "in_chans"  # input channels: 1 (gray) or 3 (RGB)
    # to feed it images as in training (PREPROCESSING_KEYS)
    CLASSES = "classes"  # the class names, in output order
    IMAGE_SIZE = "image_size"  # the square input side in pixels
    MEAN = "mean"  # per-channel mean of pixels/255
    STD = "std"  # per-channel standard deviation of pixels/255
    # where the run stands (RESUME_KEYS, and PARTIAL, PARTIAL_SECONDS for an epoch interrupted part-way)
    EPOCH = "epoch"  # epochs finished
    BATCH = "batch"  # batches of the next epoch finished
    STEP = "step"  # optimiser steps taken
    BEST = "best"  # {'val_acc': fraction, 'epoch': 1-based} of the best epoch so far
    # {'val_acc': fraction, 'epoch': 1-based} of the last epoch that gained more than train.early_stop_min_delta
    # over the one before it that did (early stopping counts the epochs since); absent in older checkpoints
    IMPROVED = "improved"
    PARTIAL = "partial"  # running [loss sum, correct, images] of an epoch interrupted part-way
    PARTIAL_SECONDS = "partial_seconds"  # training seconds of that epoch before the interruption
    # the training images the run trained on (after the validation hold-out): a resume on data with another count
    # is refused naming both; absent in older checkpoints
    TRAIN_IMAGES = "train_images"
    # the resolved training config (a mapping of sections): options, augmentation, memory format
    CONFIG = "config"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        """Every key, in the order above."""
        return tuple(value for name, value in vars(cls).items() if name.isupper())


BUILD_KEYS = (MetaKey.MODEL, MetaKey.NUM_CLASSES, MetaKey.IN_CHANS)  # to rebuild the network
PREPROCESSING_KEYS = (MetaKey.CLASSES, MetaKey.IMAGE_SIZE, MetaKey.MEAN, MetaKey.STD)  # to feed it images
RESUME_KEYS = (MetaKey.EPOCH, MetaKey.BATCH, MetaKey.STEP, MetaKey.BEST)  # to continue the run


def build_meta(model: str, num_classes: int, in_chans: int) -> dict:
    """The :data:`BUILD_KEYS` part of the metadata: which network to build (``load_checkpoint``'s ``expect``)."""
    return {MetaKey.MODEL: model, MetaKey.NUM_CLASSES: int(num_classes), MetaKey.IN_CHANS: int(in_chans)}


def checkpoint_meta(build: dict, *, classes, image_size: int, mean, std, config: RunConfig | dict,
                    epoch: int, step: int, batch: Optional[int] = None, best: Optional[dict] = None,
                    partial=None, partial_seconds: Optional[float] = None, improved: Optional[dict] = None,
                    train_images: Optional[int] = None) -> dict:
    """The ``meta`` of a run's checkpoint (last, best) or snapshot: everything a reader needs.

    ``build`` is :func:`build_meta`'s dict; the preprocessing (classes, image size, mean/std) and the
    resolved config make every file of a run loadable on its own, without the files beside it.
    Arguments left at None (a snapshot has no ``batch`` or ``best``) are not written.
    """
    from cnnlab.config import RunConfig, config_to_dict

    meta = {**build, MetaKey.CLASSES: list(classes), MetaKey.IMAGE_SIZE: int(image_size),
            MetaKey.MEAN: [float(v) for v in mean], MetaKey.STD: [float(v) for v in std],
            MetaKey.EPOCH: epoch, MetaKey.BATCH: batch, MetaKey.STEP: step, MetaKey.BEST: best,
            MetaKey.IMPROVED: improved,
            MetaKey.PARTIAL: partial, MetaKey.PARTIAL_SECONDS: partial_seconds, MetaKey.TRAIN_IMAGES: train_images,
            MetaKey.CONFIG: config_to_dict(config) if isinstance(config, RunConfig) else dict(config)}
    return {key: value for key, value in meta.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# the run folder


def refuse_a_runs_own_file(path: str | Path, option: str = "--out") -> None:
    """Refuse an output ``path`` that is one of a training run's own files in its folder (its curves.png,
    status.json, ...): a plot or result written there would replace what the run wrote, without a word."""
    path = Path(path)
    if path.name in RUN_FILES and RunFolder(path.parent).is_run():
        raise CnnlabError(f"{option} '{display_name(str(path))}' is the run's own {path.name}, which its training "
                          "wrote: this would replace it. Give the file a name of its own.")
    if path.name in EVAL_FILES and is_eval_folder(path.parent):
        raise CnnlabError(f"{option} '{display_name(str(path))}' is an eval's own {path.name}, which `cnnlab eval` "
                          "wrote in that folder: this would replace it. Give the file a name of its own.")


def is_search_folder(path: str | Path) -> bool:
    """A `cnnlab search` output folder: it has a trials/ folder holding the trials' run folders, or the
    study database a search writes before its first trial starts."""
    # os.path's tests: False, not an error, inside a folder that cannot be entered (its walk names it so)
    return os.path.isdir(Path(path) / SEARCH_TRIALS_DIR) or os.path.isfile(Path(path) / SEARCH_STUDY_FILE)


def is_eval_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a `cnnlab eval`'s metrics.json: a JSON object with :data:`EVAL_METRICS_KEYS`."""
    import json

    try:
        value = json.loads((Path(folder) / EVAL_METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, unreadable, or not JSON
        return False
    return isinstance(value, dict) and all(key in value for key in EVAL_METRICS_KEYS)


def is_transfer_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a transfer ladder's: its transfer.json, or (before the first one is written) a SIZE
    folder holding a seedK folder."""
    folder = Path(folder)
    if os.path.isfile(folder / TRANSFER_RESULT_FILE):
        return True
    try:
        sizes = [entry for entry in folder.iterdir() if entry.name.isdigit() and entry.is_dir()]
        return any(seed.name.startswith("seed") and seed.is_dir() for size in sizes for seed in size.iterdir())
    except OSError:  # not a folder, or one that cannot be listed
        return False


# What made a folder, as folder_made_by names it: the command whose files it holds
MADE_BY_TRAIN, MADE_BY_SEARCH, MADE_BY_EXPERIMENT = "train", "search", "experiment"
MADE_BY_TRANSFER, MADE_BY_EVAL = "transfer", "eval"


def folder_made_by(folder: str | Path) -> Optional[tuple[str, str]]:
    """(the command whose folder ``folder`` is, how a message names it), or None: a training run's (its
    config.yaml), a search's (its trials/ or study.db), an experiment's (its settings.json), a transfer ladder's
    (its transfer.json or SIZE/seedK folders) or an eval's (its metrics.json). A command that writes its own kind
    of folder refuses the others' (their files would mix)."""
    if RunFolder(folder).is_run():
        return MADE_BY_TRAIN, f"a training run's folder (it has its {CONFIG_FILE})"
    if is_search_folder(folder):
        return MADE_BY_SEARCH, f"a `cnnlab search` folder (it holds {SEARCH_TRIALS_DIR}/ or {SEARCH_STUDY_FILE})"
    if is_experiment_folder(folder):
        return MADE_BY_EXPERIMENT, f"a `cnnlab experiment` folder (its {EXPERIMENT_SETTINGS_FILE} names the experiment)"
    if is_transfer_folder(folder):
        return MADE_BY_TRANSFER, (f"a `cnnlab transfer` ladder's folder (it holds {TRANSFER_RESULT_FILE} or the "
                                  "ladder's SIZE/seedK runs)")
    if is_eval_folder(folder):
        return MADE_BY_EVAL, f"a `cnnlab eval` folder (its {EVAL_METRICS_FILE} holds an eval's measures)"
    return None


def is_experiment_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a `cnnlab experiment`'s: its settings file names the experiment."""
    import json

    try:
        return "experiment" in json.loads((Path(folder) / EXPERIMENT_SETTINGS_FILE).read_text())
    except (OSError, ValueError, TypeError):  # none, unreadable, or not a JSON object of keys
        return False


class RunFolder:
    """Paths of one run folder's files; nothing is read or created until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder('{self.path}')"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def steps(self) -> Path:
        return self.path / STEPS_FILE

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINT_LAST

    @property
    def best(self) -> Path:
        return self.path / CHECKPOINT_BEST

    @property
    def curves(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def diagnosis(self) -> Path:
        return self.path / DIAGNOSIS_FILE

    @property
    def init(self) -> Path:
        return self.path / INIT_FILE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def starting_holder(self) -> Optional[str]:
        """Who holds the folder (:func:`cnnlab.io.lock_holder`) while it is a run in its first moment, before
        its first files; None when no live process holds it, and for an experiment's folder, which its
        experiment holds for the whole experiment (its settings file names it)."""
        from cnnlab.io import lock_holder

        return None if is_experiment_folder(self.path) else lock_holder(self.lock)

    @property
    def status(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT_FILE

    @property
    def budget(self) -> Path:
        return self.path / BUDGET_FILE

    @property
    def html_report(self) -> Path:
        return self.path / REPORT_HTML_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def snapshot(self, number: int) -> Path:
        return self.path / snapshot_name(number)

    def eval_folder(self, split: str, tta: str, ema: bool, checkpoint: Optional[str] = None,
                    data: Optional[str] = None, shift: Optional[int] = None,
                    scales: Optional[Sequence[float]] = None) -> Path:
        return self.path / eval_folder_name(split, tta, ema, checkpoint, data, shift, scales)

    def is_run(self) -> bool:
        """A folder `cnnlab train` wrote: it has its config.yaml (False for a folder that cannot be entered, whose
        reader names it as such)."""
        return os.path.isfile(self.config)

    # --- reading

    def read_config(self) -> RunConfig:
        """The run's resolved config from its config.yaml; a CnnlabError naming the file when it is
        missing, not a file, not YAML, or holds values this cnnlab does not accept."""
        from cnnlab.config import load_config

        path = self.config
        if not self.path.is_dir():
            raise CnnlabError(f"'{display_name(str(self.path))}' is not a run folder: "
                              f"{'it does not exist' if not self.path.exists() else 'it is a file'}. Name the folder "
                              "`cnnlab train` wrote (its --out).")
        if not path.exists():
            raise CnnlabError(f"'{display_name(str(self.path))}' is not a run folder: it has no {CONFIG_FILE} "
                              f"('{display_name(str(path))}' does not exist). "
                              "Name the folder `cnnlab train` wrote (its --out).")
        if not path.is_file():
            raise CnnlabError(f"The run config '{display_name(str(path))}' is not a file, so the run's settings "
                              f"cannot be read from it. A run folder keeps its {CONFIG_FILE} as a file written by `cnnlab train`.")
        fix = f"{CONFIG_FILE} is written by `cnnlab train`: restore it from a copy, or fix the value it names."
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
                # An empty file would read as every default: a resume would go on as another run.
                raise CnnlabError(f"The run config '{display_name(str(path))}' is empty, so the run's settings are lost.")
            return load_config(path)
        except OSError as err:
            raise CnnlabError(f"Cannot read the run config '{display_name(str(path))}': {err.strerror}. {fix}") from None
        except CnnlabError as err:
            message = str(err)
            if display_name(str(path)) not in message:  # config_from_dict's messages name the key, not the file
                message = f"The run config '{display_name(str(path))}' cannot be used: {message}"
            raise CnnlabError(f"{message} {fix}") from None

    def snapshots(self) -> list[Path]:
        """The run's snapshot files, in cycle order (1, 2, ..., 10: by number, not by text)."""
        found = []
        for path in self.path.glob(SNAPSHOT_PATTERN):
            number = path.name[len(_SNAPSHOT_PREFIX):-len(_SNAPSHOT_SUFFIX)]
            if number.isdecimal() and path.is_file():
                found.append((int(number), path))
        return [path for _, path in sorted(found)]

    def earlier_run_files(self, keep: tuple[str, ...] = ()) -> tuple[list[Path], list[Path]]:
        """What an earlier run, and the commands run on it, left in this folder that a new run does not replace
        as it starts: ``(files, folders)``, for a new run to remove (cnnlab.train.engine.remove_earlier_run).

        ``files``: the :data:`EARLIER_RUN_FILES` present but those named in ``keep`` (what this run writes
        at its start anyway: init.json with model.init_from, budget.json with train.minutes), the snapshots,
        `cnnlab export`'s default files of the checkpoints, in each eval folder the files `cnnlab eval` writes
        and in tensorboard/ the event files, with the temporary copies a killed write of any of them, or of the
        :data:`WRITTEN_AT_START` files, left (.NAME.*.tmp), and the ensemble results saved in the folder
        (:meth:`ensemble_results`: any name, told by their content, as the run's page tells them). ``folders``: the
        eval folders and tensorboard/, to remove once those files are gone; a file of someone else's in one
        keeps it. Only cnnlab's names and results are listed: anything else in the folder is not the earlier
        run's. A link is listed as itself (removing it removes nothing it points to), a linked folder not at all."""
        from cnnlab.io import atomic_leftovers

        names = [name for name in EARLIER_RUN_FILES if name not in keep] + [SNAPSHOT_PATTERN]
        for stem in (Path(CHECKPOINT_BEST).stem, Path(CHECKPOINT_LAST).stem, Path(SNAPSHOT_PATTERN).stem):
            names += [export_name(stem, ema, fmt) for ema in (False, True) for fmt in EXPORT_SUFFIXES]
        candidates = [self.path / name for name in names]  # names and glob patterns
        folders = [path for path in sorted(self.path.glob(EVAL_FOLDER_PATTERN))
                   if path.is_dir() and not path.is_symlink()]
        candidates += [folder / name for folder in folders for name in EVAL_FILES]
        if self.tensorboard.is_dir() and not self.tensorboard.is_symlink():
            folders.append(self.tensorboard)
            candidates.append(self.tensorboard / TENSORBOARD_EVENTS_PATTERN)
        files = []
        for candidate in candidates:
            # a pattern is globbed; a plain name is taken as it is, so that a broken link by that name is found too
            if any(char in candidate.name for char in "*?["):
                found = sorted(candidate.parent.glob(candidate.name))
            else:
                found = [candidate]
            files += [path for path in found if path.is_symlink() or path.is_file()]
            files += atomic_leftovers(candidate)
        # The files a new run writes as it starts replace the earlier run's, but not the temporary copies its killed
        # writes of them left
        for name in WRITTEN_AT_START:
            files += atomic_leftovers(self.path / name)
        files += self.ensemble_results()
        return list(dict.fromkeys(files)), folders

    def write_leftovers(self) -> list[Path]:
        """The temporary copies that a process killed inside one of the run's own atomic writes
        (:func:`cnnlab.io.atomic_path`) left in the folder: ``.NAME.*.tmp`` of each of :data:`RUN_FILES` but the
        lock, and of the snapshots; a file, or a checkpoint write's temporary folder. Only these names: another
        command's temporary copy in the folder (an eval's, an ensemble result's: it may be writing it now) and
        anyone else's files are not listed. For a run that holds its folder to remove
        (:func:`cnnlab.io.remove_leftover`)."""
        from cnnlab.io import atomic_leftovers

        found = []
        for name in (*RUN_FILES, SNAPSHOT_PATTERN):
            if name != LOCK_FILE:  # the lock file is opened in place, never written through a temporary copy
                found += atomic_leftovers(self.path / name)
        return found

    def ensemble_results(self) -> list[Path]:
        """The `cnnlab ensemble --out RUN/NAME.json` results saved at the top of the folder, by name: JSON files
        of any name that hold one (:func:`is_ensemble_result`). A file that cannot be read as JSON is none."""
        import json

        found = []
        for path in sorted(self.path.glob("*.json")):
            if not path.is_file():  # a folder, or a pipe (reading one would wait forever)
                continue
            try:
                value = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            if is_ensemble_result(value):
                found.append(path)
        return found

    def finished_epochs(self) -> int:
        """How many epochs metrics.csv records (its rows after the header; 0 when it is missing, unreadable or not
        a regular file: a pipe would wait forever)."""
        if not self.metrics.is_file():
            return 0
        try:
            with open(self.metrics, encoding="utf-8", errors="replace") as lines:
                return max(sum(1 for line in lines if line.strip()) - 1, 0)
        except OSError:
            return 0

    def recorded_status(self) -> dict:
        """status.json as a dict: {} when it is missing, unreadable, not a regular file or not a JSON object."""
        import json

        if not self.status.is_file():
            return {}
        try:
            status = json.loads(self.status.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # unreadable, or not JSON
            return {}
        return status if isinstance(status, dict) else {}

    @staticmethod
    def _saved_a_checkpoint(epochs: int, status: dict) -> bool:
        """Whether a run whose metrics.csv holds ``epochs`` rows and whose status.json is ``status`` surely wrote a
        checkpoint. An epoch's row comes before its checkpoint (a full disk can stop the run in between), and
        status.json takes the epoch after it: a second row, a finished run, or an epoch status.json took without a
        failure means one was written."""
        state, epoch = status.get("state"), status.get("epoch")
        took_an_epoch = type(epoch) is int and epoch >= 1 and state not in (None, "failed")
        return epochs > 1 or (epochs == 1 and (state == "finished" or took_an_epoch))

    def recorded_state(self) -> Optional[str]:
        """status.json's "state" (one of RUN_STATES), or None when it is missing, unreadable or has none."""
        state = self.recorded_status().get("state")
        return state if isinstance(state, str) and state in RUN_STATES else None

    def checkpoint(self) -> Path:
        """The checkpoint a reader uses: best.safetensors, else last.safetensors; CnnlabError if neither."""
        for candidate in (self.path / name for name in CHECKPOINT_PREFERENCE):
            if candidate.is_file():
                return candidate
            if candidate.is_dir():
                raise CnnlabError(f"'{display_name(str(candidate))}' is a folder, not a checkpoint file: a run folder written by "
                                  "`cnnlab train` keeps its checkpoints as files. Point at a checkpoint file.")
        if self.is_run():  # a run that has saved no checkpoint yet: training now, or stopped before its first
            from cnnlab.io import lock_holder

            holder = lock_holder(self.lock)
            if holder:
                raise CnnlabError(f"'{display_name(str(self.path))}' is a run still training ({holder}) that has "
                                  "saved no checkpoint yet: its first comes with the end of its first epoch. Wait "
                                  "for it, then run this again.")
            epochs, status = self.finished_epochs(), self.recorded_status()
            if self._saved_a_checkpoint(epochs, status):
                raise CnnlabError(f"'{display_name(str(self.path))}' is a run whose {counted(epochs, 'epoch')} "
                                  f"finished, but neither {CHECKPOINT_BEST} nor {CHECKPOINT_LAST} is in its "
                                  "folder: its weights are gone (deleted, or left out of a copy). Point at a copy of "
                                  "the run that has them.")
            if self.path.parent.name == SEARCH_TRIALS_DIR and is_search_folder(self.path.parent.parent):
                search = shell_word(self.path.parent.parent)
                ending = ("it failed (its status.json names the error), and a search does not run a failed trial "
                          "again" if status.get("state") == "failed" else
                          f"it was stopped (Ctrl-C or a kill), and the same search, continued (--out {search}), "
                          "runs its parameters again in a new trial")
                raise CnnlabError(f"'{display_name(str(self.path))}' is a search trial that saved no checkpoint, so "
                                  f"it holds no weights to read: {ending}.")
            raise CnnlabError(f"'{display_name(str(self.path))}' is a run that stopped before it saved a checkpoint, "
                              "so it holds no weights to read. Train it again in its folder: cnnlab train --config "
                              f"{shell_word(self.config)} --out {shell_word(self.path)}")
        raise CnnlabError(f"'{display_name(str(self.path))}' holds no {' or '.join(CHECKPOINT_PREFERENCE)}: point at a run folder "
                          "written by `cnnlab train`, or at a checkpoint file.")


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file for a run folder (:meth:`RunFolder.checkpoint`) or a file's own path, checked."""
    if not isinstance(path, (str, os.PathLike)):  # Path(5) would fail with "expected str, bytes or os.PathLike"
        raise CnnlabError(f"A checkpoint is named by its path (a str or Path) or its run folder's, got "
                          f"{type(path).__name__} {path!r:.60}.")
    path = Path(path)
    if path.is_dir():
        return RunFolder(path).checkpoint()
    if path.is_symlink() and not path.exists():
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' is a broken link: what it points to does "
                          "not exist (or it points to itself). Point at the checkpoint file itself.")
    if path.exists() and not path.is_file():  # never opened: reading a pipe would wait forever
        raise CnnlabError(f"'{display_name(str(path))}' is not a regular file (a pipe, socket or device), so it is not a "
                          "checkpoint. Name a run folder or a .safetensors file.")
    if not path.is_file():
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' does not exist. Check the path: name a run folder written by "
                          f"`cnnlab train`, or a checkpoint file such as RUN/{CHECKPOINT_BEST}.")
    return path


# ---------------------------------------------------------------------------------------------
# rebuilding the model


# Builder arguments a run sets: num_classes from its data, in_chans from model.options.in_chans or else the
# data (the data follows the model, cnnlab.train.engine.build_run). model.options may name them; outside a run
# (build, summary, compare) they are ordinary builder options.
_SET_BY_THE_RUN = ("num_classes", "in_chans")


def build_model(model_config: ModelConfig, *, num_classes: int, in_chans: int,
                name: Optional[str] = None) -> torch.nn.Module:
    """The network a run's ``model`` config describes, for ``num_classes`` outputs and ``in_chans`` inputs.

    The one place a run's model is built, by the training engine from the data and by
    ``cnnlab.train.checkpoint.load_run_model`` from a checkpoint's metadata: the keys are applied the
    same way in both (:func:`model_kwargs`). ``name`` overrides ``model_config.name`` (a checkpoint's
    recorded name).
    """
    from cnnlab.models import create_model

    # The run's values replace copies in model.options: build_run refuses a num_classes there that disagrees
    # with the data (check_run_classes), and takes in_chans from there; runs from before that check kept an
    # unused num_classes in their config, and their metadata records the network they trained.
    kwargs = {key: value for key, value in model_kwargs(model_config).items() if key not in _SET_BY_THE_RUN}
    return create_model(name or model_config.name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def check_run_classes(model_config: ModelConfig, num_classes: int, data: str) -> None:
    """Refuse a ``model.options.num_classes`` (``--model NAME,num_classes=N``) that differs from the
    ``num_classes`` classes of the run's ``data``: a run's classifier has one output per class of its data."""
    given = model_config.options.get("num_classes", num_classes)
    if given != num_classes:
        if isinstance(given, int) and given >= 2:
            fix = f"Leave num_classes out of the model, or train on data with {given!r} classes (data.classes picks some)."
        else:  # 0 is create_model's headless model (features), which a run cannot train
            fix = "Leave num_classes out of the model: the run gives it one output per class."
        raise CnnlabError(f"The model sets num_classes={given!r} (model.options.num_classes, or num_classes= in "
                          f"--model), but the data '{data}' has {num_classes} classes, and a run's classifier has "
                          f"one output per class of its data. {fix}")


def sized_for_data(model_config: ModelConfig, image_size: int) -> ModelConfig:
    """``model_config`` with ``options.input_size`` set to the data's image side, for an architecture whose
    first layer reads a fixed side (``mlp``) when the config leaves it unset; otherwise unchanged. A run
    records the result, so its checkpoints rebuild the same network."""
    from dataclasses import replace

    from cnnlab.models import model_info

    if "input_size" in model_config.options or not model_info(model_config.name).sized_input:
        return model_config
    return replace(model_config, options={**model_config.options, "input_size": image_size})


# The model keys model_kwargs leaves out: they act on a built network's weights while training (loading them,
# freezing some, setting the first conv's filters from the data: cnnlab.train), not on how it is built.
TRAINING_MODEL_KEYS = ("init_from", "init_ema", "new_head", "freeze", "whiten")


def model_kwargs(model_config: ModelConfig) -> dict:
    """``create_model`` keyword arguments of a ``model`` config, less the name: ``norm`` (built with its
    ``norm_options``), ``act``, ``drop_rate``, the initialisation and dropout keys, and the builder
    ``options``, ``num_classes`` and ``in_chans`` among them when the config names them (a run sets
    those itself: :func:`build_model`). The :data:`TRAINING_MODEL_KEYS` are left to training."""
    from cnnlab.layers import get_norm_layer

    m = model_config
    norm = get_norm_layer(m.norm, **m.norm_options) if m.norm is not None and m.norm_options else m.norm
    return dict(m.options, norm=norm, act=m.act, drop_rate=m.drop_rate, init=m.init, bias_init=m.bias_init,
                dropout=m.dropout, hidden_drop_rate=m.hidden_drop_rate, stage_drop_rate=m.stage_drop_rate)
