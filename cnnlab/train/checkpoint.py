"""Checkpoints that never unpickle: one ``.safetensors`` file per checkpoint, written atomically.

A checkpoint holds everything a run needs to continue exactly where it stopped:

=================================  =============================================================
tensor key                         what
=================================  =============================================================
``model/<key>``                    the model's state dict (weights and buffers)
``ema/<path>``                     the EMA state (``ema/module/<key>`` for a ``{'module': ...}``)
``optim/state/<index>/<name>``     optimiser state per parameter (momentum_buffer, exp_avg, step)
``rng/torch``, ``rng/cuda/<i>``    torch's CPU generator state and each CUDA device's
=================================  =============================================================

Everything that is not a tensor lives in the safetensors header metadata (``dict[str, str]``) as
JSON: ``meta`` (the caller's dict: epoch, step, config, model name, classes...), ``optim`` (the
optimiser state dict with every tensor replaced by a reference to its key), ``ema`` (the same for
the EMA state), ``rng`` (numpy's and python's ``random`` states), plus ``format``, ``version`` and a
CRC-32 of all tensor bytes, so a file damaged after it was written is refused instead of loaded.

Why not ``torch.save``: unpickling a file runs whatever code it names, so a checkpoint someone sent
you could do anything. Here the loader only parses JSON and raw tensor bytes; a pickle is refused
with a message saying how to convert it.

Snapshot files (:func:`save_weights`) hold only a state dict under its plain keys plus ``meta``, so
other tools (timm, ``safetensors.torch.load_file``) read them as they are.

The ``meta`` dict's keys are :class:`cnnlab.run.MetaKey` (the run folder contract). It is read back
only through :func:`validate_meta` (via :func:`read_checkpoint_meta`, :func:`read_checkpoint`,
:func:`load_weights` and :func:`load_checkpoint`), which checks every key it knows against
:data:`META_SCHEMA`: a file someone edited or another program wrote is refused with a message naming
the key, its value and what it must be, instead of a TypeError somewhere later.

:func:`load_run_model` turns a run folder or checkpoint file into the trained model with its
preprocessing (:class:`LoadedModel`), built by :func:`cnnlab.run.build_model`; eval, predict, export
and ensemble use it. Runs whose snapshots lack their preprocessing go :func:`legacy_run_meta`.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import safetensors
import safetensors.torch
import torch

from cnnlab.devices import resolve_device
from cnnlab.errors import (CnnlabError, InputTooSmallError, display_class, display_name, is_finite_number, is_utf8,
                           not_utf8_text, shown_value)
from cnnlab.io import atomic_path
from cnnlab.limits import MAX_CLASSES, MAX_IMAGE_SIDE
from cnnlab.models._base import load_state
from cnnlab.models.torchvision_compat import CHECKPOINT_MODEL_PREFIX
# The metadata keys and the run's checkpoint names are the run folder's contract (cnnlab/run.py); this
# module checks the values. BUILD_KEYS, PREPROCESSING_KEYS and RESUME_KEYS are re-exported for callers.
from cnnlab.run import (  # noqa: F401  (BUILD_KEYS, PREPROCESSING_KEYS, RESUME_KEYS re-exported)
    BUILD_KEYS,
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    CHECKPOINT_PREFERENCE,
    PREPROCESSING_KEYS,
    RESUME_KEYS,
    MetaKey,
    RunFolder,
    build_model,
    checkpoint_path,
    refuse_exported_model,
)

if TYPE_CHECKING:
    from cnnlab.config import RunConfig

CHECKPOINT_FORMAT = "cnnlab-checkpoint"
WEIGHTS_FORMAT = "cnnlab-weights"
FORMAT_VERSION = 1

# Tags that mark JSON values standing for something JSON has no type for (see _encode).
_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"

# How many names an error message lists before it says "and N more".
_NAMES_SHOWN = 5


@dataclass
class Checkpoint:
    """The decoded contents of a checkpoint file (tensors on ``map_location``, RNG tensors on CPU)."""

    path: Path
    model: dict[str, torch.Tensor]
    meta: dict
    optimizer: dict | None = None  # a torch optimizer state dict, ready for load_state_dict
    optimizer_class: str | None = None  # e.g. 'SGD', 'AdamW'
    ema: Any = None  # whatever the EMA object's state_dict() returned
    rng: dict | None = None  # {'torch': Tensor, 'cuda': [Tensor], 'numpy': {...}, 'python': [...]}
    scaler: dict | None = None  # GradScaler.state_dict() of an fp16 run: its loss scale and growth tracker


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(path: str | Path, *, model, optimizer=None, ema=None, meta: dict, rng: bool = True,
                    scaler=None) -> Path:
    """Write a resumable checkpoint to ``path`` atomically and return the path.

    ``model`` is a module or a state dict of tensors. ``ema`` is an object with ``state_dict()``
    (whose state may nest dicts, lists, tensors and numbers, e.g. ``{'module': {...}, 'updates': 3}``)
    or such a state dict itself. ``meta`` must be JSON-able (tuples come back as lists). With ``rng``
    the torch (CPU and CUDA), numpy and python ``random`` generator states are saved as well. An
    enabled ``scaler`` (a GradScaler: fp16 training) saves its loss scale and growth tracker, so that a
    resumed run goes on with the scale it had reached rather than skipping steps to find it again.
    """
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(FORMAT_VERSION), "meta": _dump_meta(meta)}

    for key, tensor in _state_dict_of(model, "model").items():
        tensors[f"{CHECKPOINT_MODEL_PREFIX}{key}"] = tensor
    if optimizer is not None:
        metadata["optim"] = json.dumps(_encode(optimizer.state_dict(), "optim", tensors))
        metadata["optim_class"] = type(optimizer).__name__
    if ema is not None:
        ema_state = ema if isinstance(ema, Mapping) else ema.state_dict()
        metadata["ema"] = json.dumps(_encode(ema_state, "ema", tensors))
    if rng:
        metadata["rng"] = json.dumps(_rng_state(tensors))
    if scaler is not None and scaler.is_enabled():
        metadata["scaler"] = json.dumps(scaler.state_dict())  # five numbers: scale, factors, interval, tracker

    return _write(path, tensors, metadata, what="the checkpoint")


def save_weights(path: str | Path, state_dict, meta: dict) -> Path:
    """Write weights only (a snapshot) to ``path`` atomically: the state dict under its own keys."""
    tensors = dict(_state_dict_of(state_dict, "state_dict"))
    metadata = {"format": WEIGHTS_FORMAT, "version": str(FORMAT_VERSION), "meta": _dump_meta(meta)}
    return _write(path, tensors, metadata, what="the weights")


def _write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], what: str) -> Path:
    path = Path(path)
    tensors = _prepare_for_saving(tensors)
    metadata["checksum"] = tensors_checksum(tensors)
    # own_folder: safetensors writes through a temporary file of its own beside the one it is given
    with atomic_path(path, what, own_folder=True) as tmp:
        # Looked up on the module at call time (not imported by name) so a test can make it fail.
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)  # atomic_path flushes and renames
    return path


def _state_dict_of(source, name: str) -> Mapping[str, torch.Tensor]:
    state = source.state_dict() if isinstance(source, torch.nn.Module) else source
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a torch.nn.Module or a state dict, not {type(source).__name__}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} entry '{key}' is a {type(value).__name__}; a state dict to save holds only tensors")
    return state


def _dump_meta(meta: dict) -> str:
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    try:
        return json.dumps(dict(meta))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint meta must be JSON-able (numbers, strings, lists, dicts): {err}") from None


def _prepare_for_saving(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached, and no two tensors sharing memory (safetensors refuses shared storage)."""
    prepared = {}
    seen_storages = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.numel() > 0:
            storage = tensor.untyped_storage().data_ptr()
            if storage in seen_storages:  # a view of a tensor already saved (tied weights, state aliases)
                tensor = tensor.clone()
                storage = tensor.untyped_storage().data_ptr()
            seen_storages.add(storage)
        prepared[key] = tensor
    return prepared


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """CRC-32 over every tensor's key, dtype, shape and bytes, in key order (about 2 GB/s)."""
    crc = 0
    for key in sorted(tensors):
        tensor = tensors[key]
        crc = zlib.crc32(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        if tensor.numel() > 0:
            # Raw bytes whatever the dtype (numpy has no bfloat16, so view as uint8 first).
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            crc = zlib.crc32(raw, crc)
    return f"crc32:{crc:08x}"


# ---------------------------------------------------------------------------------------------
# nested state (optimiser, EMA) <-> JSON skeleton + flat tensors


def _encode(value, path: str, tensors: dict[str, torch.Tensor]):
    """Turn nested state into JSON, moving each tensor into ``tensors`` under its path.

    ``{'state': {0: {'exp_avg': T}}}`` at path 'optim' puts T at 'optim/state/0/exp_avg' and returns
    ``{'state': {'__dict__': [[0, {'exp_avg': {'__tensor__': 'optim/state/0/exp_avg'}}]]}}``. Dicts
    with non-string keys (an optimiser's parameter indices) and tuples are tagged so they come back
    as they were; torch's Optimizer.load_state_dict silently ignores state under '0' instead of 0.
    """
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two entries of the state map to the same key '{path}' (a '/' inside a key?)")
        tensors[path] = value
        return {_TENSOR: path}
    if isinstance(value, Mapping):
        plain = all(isinstance(key, str) and not key.startswith("__") for key in value)
        if plain:
            return {key: _encode(item, f"{path}/{key}", tensors) for key, item in value.items()}
        for key in value:
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"state key {key!r} at '{path}' is a {type(key).__name__}; keys must be str, int, float or bool")
        return {_DICT: [[key, _encode(item, f"{path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at '{path}' in a checkpoint: "
                    "only tensors, numbers, strings, None, lists, tuples and dicts")


def _decode(value, tensors: Mapping[str, torch.Tensor]):
    """Inverse of :func:`_encode`."""
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == _TENSOR:
                return tensors[inner]
            if tag == _TUPLE:
                return tuple(_decode(item, tensors) for item in inner)
            if tag == _DICT:
                return {key: _decode(item, tensors) for key, item in inner}
        return {key: _decode(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# random number generators


def _rng_state(tensors: dict[str, torch.Tensor]) -> dict:
    """Put torch's generator states into ``tensors``; return numpy's and python's as JSON-able data."""
    tensors["rng/torch"] = torch.get_rng_state()  # uint8 (5056,) for the CPU Mersenne Twister
    # Only once CUDA is in use: saving must not start a CUDA context in a CPU run. Before first use
    # the CUDA generators hold just the seed, which the resumed process sets again itself.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # legacy tuple, keys uint32 (624,)
    version, internal, gauss_next = random.getstate()  # (3, 625 ints, None or a float)
    return {
        "numpy": {"bit_generator": name, "keys": keys.tolist(), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    cuda_states = rng["cuda"]
    if cuda_states and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the ones it has; it cannot be bit-identical anyway.
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)
    state = rng["numpy"]
    np.random.set_state((state["bit_generator"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))
    state = rng["python"]
    random.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


# ---------------------------------------------------------------------------------------------
# the meta dict: one schema, checked on every read

# What the data layer delivers (cnnlab.data converts every source to gray or RGB).
CHANNEL_COUNTS = (1, 3)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(minimum: int, maximum: Optional[int] = None) -> Callable[[Any, Mapping], Optional[str]]:
    def check(value, meta):
        if maximum is not None:  # a size past cnnlab's limits would only fail later, allocating memory
            ok = _is_whole(value) and minimum <= value <= maximum
            return None if ok else f"a whole number from {minimum} to {maximum:,}"
        return None if _is_whole(value) and value >= minimum else f"a whole number of at least {minimum}"
    return check


def _channel_count(value, meta) -> Optional[str]:
    return None if _is_whole(value) and value in CHANNEL_COUNTS else "1 (gray) or 3 (RGB)"


def _model_name(value, meta) -> Optional[str]:
    return None if isinstance(value, str) and value.strip() else "the name of a model (text)"


def _known_count(meta: Mapping, key: str, allowed) -> Optional[int]:
    """meta[key] when it is itself valid, so a list can be checked against it; else None."""
    value = meta.get(key)
    return value if _is_whole(value) and value in allowed else None


def _class_names(value, meta) -> Optional[str]:
    count = _known_count(meta, MetaKey.NUM_CLASSES, range(1, 2**31))
    wanted = (f"a list of {count} distinct class names (one per class, as num_classes says)" if count is not None
              else "a list of distinct class names")
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return wanted
    if len(set(value)) != len(value) or (count is not None and len(value) != count):
        return wanted
    return None


def _per_channel(positive: bool) -> Callable[[Any, Mapping], Optional[str]]:
    def check(value, meta):
        count = _known_count(meta, MetaKey.IN_CHANS, CHANNEL_COUNTS)
        wanted = (f"a list of {count} finite numbers (one per input channel, as in_chans says)" if count is not None
                  else "a list of finite numbers, one per input channel")
        if positive:
            wanted += ", each above 0"
        if not isinstance(value, list) or not value or not all(is_finite_number(v) for v in value):
            return wanted
        if (count is not None and len(value) != count) or (positive and not all(v > 0 for v in value)):
            return wanted
        return None
    return check


def _best(value, meta) -> Optional[str]:
    wanted = "a mapping with the best val_acc (a number) and its epoch (a whole number)"
    if not isinstance(value, dict):
        return wanted
    if "val_acc" in value and not is_finite_number(value["val_acc"]):
        return wanted
    if "epoch" in value and not _is_whole(value["epoch"]):
        return wanted
    return None


def _running_sums(value, meta) -> Optional[str]:
    ok = isinstance(value, list) and len(value) == 3 and all(is_finite_number(v) and v >= 0 for v in value)
    return None if ok else "null or the epoch's running [loss sum, correct, images] (3 numbers, none negative)"


def _seconds(value, meta) -> Optional[str]:
    return None if is_finite_number(value) and value >= 0 else "null or a number of seconds, not negative"


def _mapping(value, meta) -> Optional[str]:
    return None if isinstance(value, dict) else "a mapping of config sections (model, data, optim, ...)"


@dataclass(frozen=True)
class MetaField:
    """One key of a checkpoint's ``meta``: ``check(value, meta)`` returns what the value must be when
    it is not that (the message says it), or None when it is fine."""

    check: Callable[[Any, Mapping], Optional[str]]
    what: str  # what the key records


# Every key a run writes (cnnlab.run.checkpoint_meta, for checkpoints and snapshots): one entry per
# MetaKey. A key that is absent or null is not checked here: callers name the keys they need in
# ``require`` (BUILD_KEYS, PREPROCESSING_KEYS, RESUME_KEYS). Keys not listed (written by a newer
# cnnlab, or by a caller of save_checkpoint) pass through unchecked.
META_SCHEMA: dict[str, MetaField] = {
    MetaKey.MODEL: MetaField(_model_name, "the registered architecture name"),
    MetaKey.NUM_CLASSES: MetaField(_whole(1, MAX_CLASSES), "the classifier's output count"),
    MetaKey.IN_CHANS: MetaField(_channel_count, "the input channels"),
    MetaKey.CLASSES: MetaField(_class_names, "the class names, in output order"),
    MetaKey.IMAGE_SIZE: MetaField(_whole(1, MAX_IMAGE_SIDE), "the square input side in pixels"),
    MetaKey.MEAN: MetaField(_per_channel(positive=False), "the per-channel mean of pixels/255"),
    MetaKey.STD: MetaField(_per_channel(positive=True), "the per-channel standard deviation of pixels/255"),
    MetaKey.EPOCH: MetaField(_whole(0), "epochs finished"),
    MetaKey.BATCH: MetaField(_whole(0), "batches of the next epoch finished"),
    MetaKey.STEP: MetaField(_whole(0), "optimiser steps taken"),
    MetaKey.BEST: MetaField(_best, "the best validation accuracy so far"),
    MetaKey.IMPROVED: MetaField(_best, "the last validation accuracy early stopping counted as a gain"),
    MetaKey.PARTIAL: MetaField(_running_sums, "the running sums of an epoch interrupted part-way"),
    MetaKey.PARTIAL_SECONDS: MetaField(_seconds, "the training seconds of an epoch interrupted part-way"),
    MetaKey.TRAIN_IMAGES: MetaField(_whole(0), "the training images the run trained on"),
    MetaKey.CONFIG: MetaField(_mapping, "the training run's resolved config"),
}



def validate_meta(path: str | Path, meta, *, require: Iterable[str] = ()) -> dict:
    """Check a checkpoint's ``meta`` against :data:`META_SCHEMA` and return it (a dict).

    Every schema key present and not null must have the declared type and range, and the lists must
    agree with the counts (len(classes) == num_classes, len(mean) == len(std) == in_chans). Keys in
    ``require`` must be present and not null; a required ``model`` must also be a registered name,
    since the caller is about to build it. Any problem is a CnnlabError naming ``path``, each bad
    key, its value and what it must be.
    """
    path = Path(path)
    if not isinstance(meta, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
                type(None): "null"}.get(type(meta), type(meta).__name__)
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' has unusable metadata: its 'meta' header is "
                          f"a JSON {kind} ({shown_value(meta)}), where cnnlab writes an object of named values (model, "
                          "num_classes, classes, ...). The file was edited or written by another program; use a "
                          "checkpoint written by `cnnlab train`.")
    problems = [f"{key} ({META_SCHEMA[key].what}) is missing" if key in META_SCHEMA else f"{key} is missing"
                for key in require if meta.get(key) is None]
    for key, field in META_SCHEMA.items():
        value = meta.get(key)
        if value is None:
            continue
        wanted = field.check(value, meta)
        if wanted is not None:
            problems.append(f"{key} is {shown_value(value)}, but it must be {wanted}")
    name = meta.get(MetaKey.MODEL)
    if MetaKey.MODEL in require and isinstance(name, str) and name.strip():
        from cnnlab.models import model_exists

        if not model_exists(name):  # a zoo name or tv:NAME of a torchvision classifier
            problems.append(f"{MetaKey.MODEL} is {shown_value(name)}, which is not a registered model (`cnnlab models` "
                            "lists them; a model from a newer cnnlab needs that version)")
    if problems:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' has unusable metadata: "
                          f"{'; '.join(problems)}. The file was edited "
                          "or written by another program or version; use a checkpoint written by `cnnlab train` "
                          f"({CHECKPOINT_BEST} or {CHECKPOINT_LAST} of a run folder).")
    return meta


# ---------------------------------------------------------------------------------------------
# reading


def read_checkpoint_meta(path: str | Path, *, require: Iterable[str] = ()) -> dict:
    """The checked ``meta`` dict of a checkpoint or weights file, read from the header without loading tensors.

    The file must exist, be a file, be safetensors with a whole header, and its ``meta`` must pass
    :func:`validate_meta` (with the keys in ``require`` present). A plain safetensors file from
    another tool has ``{}``. Anything else is a CnnlabError naming the file and the problem.
    """
    path = Path(path)
    metadata = _read_header(path)
    return _meta_of(path, metadata, require)


def _read_header(path: Path) -> dict[str, str]:
    """The header metadata of a checkpoint or weights file (no tensor is read), its format checked."""
    _refuse_non_safetensors(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    _check_format(path, metadata, {CHECKPOINT_FORMAT, WEIGHTS_FORMAT}, allow_plain=True)
    return metadata


read_meta = read_checkpoint_meta  # the older name, kept for code written against it


def file_format(path: str | Path) -> Optional[str]:
    """What kind of cnnlab file ``path`` is, from its header (no tensor is read): :data:`CHECKPOINT_FORMAT` (a
    run's best or last, which holds the EMA weights of a run with train.ema), :data:`WEIGHTS_FORMAT` (a
    snapshot: the raw weights alone), or None for a plain safetensors file of another tool."""
    return _check_format(Path(path), _read_header(Path(path)), {CHECKPOINT_FORMAT, WEIGHTS_FORMAT}, allow_plain=True)


# What tells one state of a checkpoint file from another, read from its header: the checksum written with its
# tensors, and where the run stood (epochs finished, batches of the next, optimiser steps).
IDENTITY_KEYS = ("checksum", MetaKey.EPOCH, MetaKey.BATCH, MetaKey.STEP)


def checkpoint_identity(path: str | Path) -> dict:
    """Which weights a checkpoint or weights file holds, from its header (no tensor is read): the CRC-32 written
    with its tensors (``checksum``) and the ``epoch``, ``batch`` and ``step`` its meta records, each left out when
    the file has none. The dict stays the same until the file is written again (a resumed run writes last after
    every epoch, best at each new best), so a result that records it can tell whether it still describes the
    file. A file that cannot be read as a checkpoint is a CnnlabError, as in :func:`read_checkpoint_meta`."""
    path = Path(path)
    metadata = _read_header(path)
    meta = _meta_of(path, metadata)
    found = {"checksum": metadata.get("checksum"), **{key: meta.get(key) for key in IDENTITY_KEYS[1:]}}
    return {key: value for key, value in found.items() if value is not None}


def optimizer_group_sizes(path: str | Path) -> Optional[list[int]]:
    """How many parameters each of the optimiser's parameter groups holds in the checkpoint at ``path``, read
    from its header (no tensor is read: the groups' parameter indices are JSON there); None for a file without
    optimiser state. A file that cannot be read as a checkpoint is a CnnlabError."""
    path = Path(path)
    metadata = _read_header(path)
    if "optim" not in metadata:
        return None
    state = _json_field(path, metadata, "optim", {})
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not all(isinstance(group, dict) and isinstance(group.get("params"), list)
                                               for group in groups):
        raise _corrupt(path, "its optimiser state has no list of parameter groups")
    return [len(group["params"]) for group in groups]


def read_checkpoint(path: str | Path, map_location="cpu", *, require: Iterable[str] = ()) -> Checkpoint:
    """Read and verify a whole checkpoint file without applying it to anything (``require``: meta keys
    that must be present, see :func:`validate_meta`)."""
    path = Path(path)
    metadata, tensors = _read_verified(path)
    _check_format(path, metadata, {CHECKPOINT_FORMAT}, allow_plain=False)
    device = torch.device(map_location)
    checkpoint = Checkpoint(path=path, model={}, meta=_meta_of(path, metadata, require))
    grouped: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "ema": {}, "rng": {}}
    for key, tensor in tensors.items():
        group, _, rest = key.partition("/")
        if group not in grouped:
            raise _corrupt(path, f"unexpected tensor '{key}'")
        if group == "rng":
            grouped[group][rest] = tensor  # stays on the CPU: torch.set_rng_state takes a CPU uint8 tensor
        elif group == "model":
            grouped[group][rest] = tensor.to(device)
        else:
            grouped[group][key] = tensor.to(device)  # the JSON skeleton names optim/EMA tensors by full key
    checkpoint.model = grouped["model"]
    try:
        if "optim" in metadata:
            checkpoint.optimizer = _decode(json.loads(metadata["optim"]), grouped["optim"])
            checkpoint.optimizer_class = metadata.get("optim_class")
        if "ema" in metadata:
            checkpoint.ema = _decode(json.loads(metadata["ema"]), grouped["ema"])
        if "rng" in metadata:
            rng = json.loads(metadata["rng"])
            cuda_keys = sorted((key for key in grouped["rng"] if key.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))
            checkpoint.rng = {"torch": grouped["rng"]["torch"], "cuda": [grouped["rng"][key] for key in cuda_keys],
                              "numpy": rng["numpy"], "python": rng["python"]}
    except (ValueError, KeyError, TypeError) as err:  # JSON broken, or it names a tensor the file lacks
        raise _corrupt(path, f"its header does not match its tensors ({err!r})") from None
    if "scaler" in metadata:
        checkpoint.scaler = _scaler_state(path, _json_field(path, metadata, "scaler", default=None))
    return checkpoint


SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")  # GradScaler.state_dict()


def _scaler_state(path: Path, state) -> dict:
    """A checkpoint's loss-scaler state, checked here so that nothing is loaded from a bad one: the header is not
    under the checksum, and GradScaler takes a scale of 0 or a string without a word (every later step skipped,
    or a TypeError at the first)."""
    problem = None
    if not isinstance(state, dict) or sorted(state) != sorted(SCALER_KEYS):
        problem = f"its keys are not GradScaler's {', '.join(SCALER_KEYS)}"
    elif not all(is_finite_number(state[key]) for key in SCALER_KEYS):
        problem = "a value is not a finite number"
    elif state["scale"] <= 0 or state["growth_factor"] <= 1 or not 0 < state["backoff_factor"] < 1:
        problem = "the scale must be above 0, the growth factor above 1 and the backoff factor between 0 and 1"
    elif not (_is_whole(state["growth_interval"]) and state["growth_interval"] >= 1
              and _is_whole(state["_growth_tracker"]) and state["_growth_tracker"] >= 0):
        problem = "the growth interval must be a whole number of at least 1 and the growth tracker one of at least 0"
    if problem:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' has unusable metadata: its 'scaler' header "
                          f"(the fp16 loss scaler: {shown_value(state)}) is not a GradScaler state: {problem}. The file "
                          "was edited or written by another program; use a checkpoint written by `cnnlab train`.")
    return state


def load_checkpoint(path: str | Path, *, model=None, optimizer=None, ema_model=None, restore_rng: bool = False,
                    expect: dict | None = None, require: Iterable[str] = (), map_location="cpu",
                    scaler=None, earlier_group_sizes: Optional[list[int]] = None) -> dict:
    """Load a checkpoint into the given objects and return its ``meta`` dict.

    An enabled ``scaler`` takes the checkpoint's loss-scaler state when it holds one (an fp16 run's);
    otherwise it keeps its fresh state, with a note on stderr (a checkpoint of an fp16 run written
    before cnnlab saved the scaler holds none).

    Everything is checked before anything is changed: the file (exists, is safetensors, checksum),
    the meta (:func:`validate_meta`, with the keys in ``require`` present, e.g. :data:`RESUME_KEYS`),
    ``expect`` (e.g. ``{'model': 'resnet20', 'num_classes': 10, 'in_chans': 3}`` against the saved
    meta), the model's keys and shapes (strict), the optimiser's class and parameter groups, and that
    the EMA and RNG states asked for are there. Any mismatch is a CnnlabError saying what differs.

    ``earlier_group_sizes``: the sizes of the optimiser's parameter groups as an earlier cnnlab built them
    for this run (:func:`cnnlab.train.finetune.groups_before_head_rates`); a checkpoint whose groups have
    those sizes is refused with a message naming that change rather than a different model or config.
    """
    checkpoint = read_checkpoint(path, map_location, require=require)
    path = checkpoint.path
    if expect:
        _check_expected(path, checkpoint.meta, expect)
    if model is not None:
        check_model_fits(path, model, checkpoint.model)
    if optimizer is not None:
        _check_optimizer_fits(path, optimizer, checkpoint, earlier_group_sizes)
    if ema_model is not None and checkpoint.ema is None:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' holds no EMA weights, but this run keeps an "
                          "EMA (train.ema=true): the checkpoint was not written by this run, or was edited. Start a "
                          "new run.")
    if ema_model is not None:
        check_ema_fits(path, ema_model.module, checkpoint.ema, "this run's EMA model", "Start a new run.")
    if restore_rng and checkpoint.rng is None:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' holds no random number generator states, so "
                          "the run cannot continue exactly. Start a new run, or load it without restoring the RNG.")

    if model is not None:
        load_state(model, checkpoint.model)
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint.optimizer)
    if ema_model is not None:
        ema_model.load_state_dict(checkpoint.ema)  # checked by check_ema_fits above
    if restore_rng:
        _restore_rng(checkpoint.rng)
    if scaler is not None and scaler.is_enabled():
        if checkpoint.scaler is not None:
            scaler.load_state_dict(checkpoint.scaler)  # checked by read_checkpoint
        else:
            from cnnlab.config import notice

            notice(f"the checkpoint '{display_name(str(path))}' holds no fp16 loss-scaler state (it was not trained "
                   "in fp16, or was written before checkpoints kept it): the loss scale starts again at "
                   f"{scaler.get_scale():g}, and the first steps may be skipped while it finds its level.")
    return checkpoint.meta


def load_weights(path: str | Path, map_location="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file (or the model weights of a checkpoint): returns ``(state_dict, meta)``.

    Plain safetensors files from other tools are accepted too; their meta is ``{}``.
    """
    path = Path(path)
    metadata, tensors = _read_verified(path)
    kind = _check_format(path, metadata, {CHECKPOINT_FORMAT, WEIGHTS_FORMAT}, allow_plain=True)
    meta = _meta_of(path, metadata)
    device = torch.device(map_location)
    if kind == CHECKPOINT_FORMAT:
        state = {key[len(CHECKPOINT_MODEL_PREFIX):]: tensor.to(device) for key, tensor in tensors.items()
                 if key.startswith(CHECKPOINT_MODEL_PREFIX)}
    else:
        state = {key: tensor.to(device) for key, tensor in tensors.items()}
    return state, meta


def _read_verified(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and every tensor (on the CPU), after checking the file is whole."""
    _refuse_non_safetensors(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupt(path, err) from None
    expected = metadata.get("checksum")
    if expected is not None and tensors_checksum(tensors) != expected:
        raise _corrupt(path, "its tensor data does not match the checksum written with it")
    return metadata, tensors


def _refuse_non_safetensors(path: Path) -> None:
    """Missing files and pickles get their own messages before safetensors sees them."""
    if not path.exists():
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' does not exist. Check the path (a run folder "
                          f"keeps {CHECKPOINT_LAST} and {CHECKPOINT_BEST}).")
    if path.is_dir():
        raise CnnlabError(f"'{display_name(str(path))}' is a folder, not a checkpoint file. Name the .safetensors "
                          "file inside it.")
    if not path.is_file():  # never opened: reading a pipe would wait forever
        raise CnnlabError(f"'{display_name(str(path))}' is not a regular file (a pipe, socket or device), "
                          "so it is not a checkpoint. Name a .safetensors file.")
    if not is_utf8(str(path)):
        # safetensors opens a path given as UTF-8 text only; its refusal would read as a damaged file
        reason, advice = not_utf8_text()
        raise CnnlabError(f"The checkpoint path '{display_name(str(path))}' is {reason}, and the safetensors library "
                          f"opens UTF-8 paths only: the file was not read. {advice}")
    try:
        with open(path, "rb") as handle:
            start = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError as err:
        raise CnnlabError(f"Cannot read the checkpoint '{display_name(str(path))}': {err.strerror or err}.") from None
    if size == 0:
        raise _corrupt(path, "it is empty: 0 bytes")
    # A safetensors file starts with its JSON header's length (little-endian u64) and then '{'.
    header_length = int.from_bytes(start[:8], "little") if len(start) == 9 else -1
    if 0 < header_length <= size - 8 and start[8:9] == b"{":
        return
    refuse_exported_model(path)  # the deployment files `cnnlab export` writes: TorchScript and ONNX
    # torch.save writes a zip archive ('PK\x03\x04') since torch 1.6, a bare pickle (protocol 2+
    # starts with 0x80) before. A safetensors file cut short starts with its header's length, whose first byte
    # may be 0x80 too (a header of 0x5280 bytes), and then '{': no pickle. Anything else is left to safetensors to
    # call damaged.
    if start.startswith(b"PK\x03\x04") or (start[:1] == b"\x80" and start[8:9] != b"{"):
        raise CnnlabError(
            f"'{display_name(str(path))}' is a PyTorch pickle file (torch.save, .pt/.pth), not a safetensors "
            "checkpoint. cnnlab never unpickles files, because unpickling runs whatever code the file names. If you "
            "trust it, convert its weights once: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{path}', weights_only=True), 'weights.safetensors')\" "
            "(for a plain state dict of tensors) and load weights.safetensors instead.")
    if path.suffix != ".safetensors" and start[8:9] != b"{":
        # Neither named nor shaped like one (a file cut short keeps its first bytes, its header's length and '{'):
        # not a checkpoint damaged by a full disk, as the message below would have it, but another file named by
        # mistake (a run's metrics.csv)
        raise CnnlabError(f"'{display_name(str(path))}' is not a checkpoint: it neither starts as a safetensors "
                          f"file nor is named .safetensors. Name a run folder, or its {CHECKPOINT_BEST} or "
                          f"{CHECKPOINT_LAST}.")


def _check_format(path: Path, metadata: dict[str, str], accepted: set[str], allow_plain: bool) -> str | None:
    kind = metadata.get("format")
    if kind is None or kind not in (CHECKPOINT_FORMAT, WEIGHTS_FORMAT):
        if allow_plain:
            return None
        raise CnnlabError(f"'{display_name(str(path))}' is a safetensors file but not a cnnlab checkpoint (it has "
                          "no cnnlab header), so it cannot resume a run. Load it as weights instead (load_weights).")
    if kind not in accepted:
        raise CnnlabError(f"'{display_name(str(path))}' holds weights only (a snapshot), not a resumable checkpoint "
                          "with optimiser and RNG state. Load it as weights instead (load_weights), or resume from "
                          f"{CHECKPOINT_LAST}.")
    try:
        version = int(metadata.get("version", "0"))
    except ValueError:
        raise _corrupt(path, f"its format version {metadata.get('version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CnnlabError(f"'{display_name(str(path))}' was written in checkpoint format {version} by a newer "
                          f"cnnlab; this one reads up to format {FORMAT_VERSION}. Upgrade cnnlab to load it.")
    return kind


def _meta_of(path: Path, metadata: dict[str, str], require: Iterable[str] = ()) -> dict:
    """The header's ``meta`` field, parsed and checked ({} when the file has none)."""
    return validate_meta(path, _json_field(path, metadata, "meta", default={}), require=require)


def _json_field(path: Path, metadata: dict[str, str], name: str, default):
    if name not in metadata:
        return default
    try:
        return json.loads(metadata[name])
    except ValueError as err:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' has unusable metadata: its '{name}' header "
                          f"is not valid JSON ({err}). The file was edited or written by another program; use a "
                          "checkpoint written by `cnnlab train`.") from None


def _corrupt(path: Path, reason) -> CnnlabError:
    # The other checkpoint of its run folder, when there is one: the damaged file may be best.safetensors itself
    others = [path.parent / name for name in (CHECKPOINT_BEST, CHECKPOINT_LAST)
              if name != path.name and (path.parent / name).is_file()]
    instead = f"the run's other checkpoint ('{others[0]}') or an earlier copy" if others else "an earlier copy of it"
    return CnnlabError(f"The checkpoint '{display_name(str(path))}' is damaged or not a safetensors file "
                       f"({reason}). It may have been cut short by a full disk or a copy that did not finish; use "
                       f"{instead}, or start a new run.")


# ---------------------------------------------------------------------------------------------
# checks before loading


def _describe(values: Mapping) -> str:
    """'resnet18 with 100 classes and 3 input channels' from whichever of the keys are given."""
    name = values.get(MetaKey.MODEL, "an unnamed model")
    details = []
    if MetaKey.NUM_CLASSES in values:
        details.append(f"{values[MetaKey.NUM_CLASSES]} classes")
    if MetaKey.IN_CHANS in values:
        details.append(f"{values[MetaKey.IN_CHANS]} input channels")
    for key, value in values.items():
        if key not in BUILD_KEYS:
            details.append(f"{key}={value!r}")
    return f"{name} with {' and '.join(details)}" if details else str(name)


def _check_expected(path: Path, meta: dict, expect: dict) -> None:
    missing = object()
    differing = [key for key in expect if meta.get(key, missing) != expect[key]]
    if not differing:
        return
    saved = {key: meta.get(key, "(not recorded)") for key in expect}
    raise CnnlabError(f"The checkpoint '{display_name(str(path))}' is for {_describe(saved)}; this run builds "
                      f"{_describe(expect)} (they differ in {', '.join(differing)}). Use a checkpoint made for this "
                      "model and data, or start a new run.")


def _names(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_NAMES_SHOWN])
    return shown + (f" and {len(keys) - _NAMES_SHOWN} more" if len(keys) > _NAMES_SHOWN else "")


def check_ema_fits(path: str | Path, model: torch.nn.Module, ema_state: Any, what: str, remedy: str) -> None:
    """What :meth:`cnnlab.train.ema.ModelEma.load_state_dict` needs, checked before anything is loaded: a
    dict whose ``module`` weights fit ``model`` strictly (:func:`check_model_fits`) and whose ``updates``
    is a whole number. ``remedy`` ends the message (what the user can do instead)."""
    path = Path(path)
    state = ema_state.get("module") if isinstance(ema_state, dict) else None
    if not isinstance(state, dict):
        raise CnnlabError(f"The EMA state in '{display_name(str(path))}' holds no model weights ('module'): the "
                          f"file was edited or written by another program. {remedy}")
    check_model_fits(path, model, state, what=what)
    updates, decay = ema_state.get("updates"), ema_state.get("decay")  # decay is absent from older files
    if not (_is_whole(updates) and updates >= 0):
        raise CnnlabError(f"The EMA state in '{display_name(str(path))}' gives {shown_value(updates)} as its count "
                          "of updates, where a whole number of at least 0 belongs: the file was edited or written by "
                          f"another program. {remedy}")
    if decay is not None and not (is_finite_number(decay) and 0 <= decay <= 1):
        raise CnnlabError(f"The EMA state in '{display_name(str(path))}' gives {shown_value(decay)} as its decay, "
                          "where a number in [0, 1] belongs: the file was edited or written by another program. "
                          f"{remedy}")


def check_model_fits(path: str | Path, model: torch.nn.Module, saved: Mapping[str, torch.Tensor],
                     what: str = "this model") -> None:
    """Strict loading checked beforehand: a CnnlabError naming the first tensor that does not fit.

    The first is in the model's own order (its state dict), then any tensor only the file has; the
    message gives its shapes in the model and in the file, then counts and lists what is missing,
    unexpected or shaped differently. ``what`` describes the model in the message.
    """
    path = Path(path)
    own = model.state_dict()
    odd = [key for key, value in saved.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise _corrupt(path, f"its weights hold {len(odd)} entries that are not tensors ({_names(map(str, odd))})")
    missing = [key for key in own if key not in saved]
    unexpected = [key for key in saved if key not in own]
    reshaped = [key for key in own if key in saved and saved[key].shape != own[key].shape]
    if not (missing or unexpected or reshaped):
        return
    misfits = set(missing) | set(reshaped)
    first = next((key for key in own if key in misfits), None)  # in the model's order: the layer that breaks first
    if first is None:
        first_text = f"'{unexpected[0]}' {tuple(saved[unexpected[0]].shape)}, which the model does not have"
    elif first not in saved:
        first_text = f"'{first}' {tuple(own[first].shape)}, which the model has and the checkpoint is missing"
    else:
        first_text = (f"'{first}', shape {tuple(own[first].shape)} in the model but {tuple(saved[first].shape)} "
                      "in the checkpoint")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the checkpoint ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} the model does not have ({_names(unexpected)})")
    if reshaped:
        shapes = [f"{key} {tuple(saved[key].shape)} vs {tuple(own[key].shape)}" for key in reshaped]
        problems.append(f"{len(reshaped)} with another shape, checkpoint vs model ({_names(shapes)})")
    raise CnnlabError(f"The checkpoint '{display_name(str(path))}' does not fit {what}: the first tensor that does "
                      f"not fit is {first_text}. Of its weights, {'; '.join(problems)}. It was saved from a different "
                      "architecture or configuration, or its metadata was changed.")


def _check_optimizer_fits(path: Path, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint,
                          earlier_sizes: Optional[list[int]] = None) -> None:
    if checkpoint.optimizer is None:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' holds no optimiser state (weights only), so "
                          "training cannot continue exactly from it. Start a new run, or load only the weights.")
    own_class = type(optimizer).__name__
    if checkpoint.optimizer_class is not None and checkpoint.optimizer_class != own_class:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' was trained with "
                          f"{checkpoint.optimizer_class}; this run builds "
                          f"{own_class}. Set optim.name to match it, or start a new run.")
    saved_sizes = [len(group["params"]) for group in checkpoint.optimizer["param_groups"]]
    own_sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != own_sizes and saved_sizes == earlier_sizes:
        # The run's model and config are this run's (a resume checks them); only the groups' rates changed.
        raise CnnlabError(
            f"The optimiser state in '{display_name(str(path))}' has parameter groups of sizes {saved_sizes}; this "
            f"run's optimiser has {own_sizes}. The run was started by an earlier cnnlab, which trained the head's "
            "pretrained layers (the layers model.init_from loaded into the head besides its classifier: hidden fully "
            "connected layers, auxiliary heads, a last norm) at optim.lr; this version trains them at the pretrained "
            "rate (optim.backbone_lr_mult times optim.lr), so the optimiser's parameter groups changed and its state "
            "cannot continue in them. Start the run again in a new folder (--out), or "
            "finish it with the cnnlab version that started it.")
    if saved_sizes != own_sizes:
        raise CnnlabError(f"The optimiser state in '{display_name(str(path))}' has parameter groups of sizes "
                          f"{saved_sizes}; this run's optimiser has {own_sizes}. The model or optim.no_decay_norm_bias "
                          "differs from the run that saved it.")


# ---------------------------------------------------------------------------------------------
# a trained model with its preprocessing, from a run folder or a checkpoint file


@dataclass
class LoadedModel:
    """A trained model ready to use, with what its inputs must look like (all from its checkpoint)."""

    model: torch.nn.Module  # in eval mode
    config: RunConfig  # the training run's config
    meta: dict  # the checkpoint's checked metadata (see MetaKey): build and preprocessing keys present
    path: Path  # the file the weights came from
    weights: str  # "raw" or "ema"
    # which state of that file the weights came from (checkpoint_identity): what a result records as measured, so
    # that a run replacing the file after the load does not make the result claim the new weights
    identity: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.meta[MetaKey.MODEL]

    @property
    def num_classes(self) -> int:
        return int(self.meta[MetaKey.NUM_CLASSES])

    @property
    def in_chans(self) -> int:
        return int(self.meta[MetaKey.IN_CHANS])

    @property
    def image_size(self) -> int:
        return int(self.meta[MetaKey.IMAGE_SIZE])

    @property
    def mean(self) -> list[float]:
        return list(self.meta[MetaKey.MEAN])

    @property
    def std(self) -> list[float]:
        return list(self.meta[MetaKey.STD])

    @property
    def classes(self) -> list[str]:
        """The class names as the checkpoint records them (an older cnnlab kept undecodable bytes in them)."""
        return list(self.meta[MetaKey.CLASSES])

    @property
    def class_labels(self) -> list[str]:
        """The class names as shown: printable, valid UTF-8 for plots and JSON, accents composed (display_class: a
        checkpoint of an older cnnlab kept them as the class folders spelt them)."""
        return [display_class(str(name)) for name in self.meta[MetaKey.CLASSES]]


def _config_of(path: Path, data: dict) -> RunConfig:
    """The training config a checkpoint records, checked like a config file."""
    from cnnlab.config import config_from_dict

    try:
        return config_from_dict(data)
    except (CnnlabError, TypeError, ValueError) as err:
        raise CnnlabError(f"The checkpoint '{display_name(str(path))}' records a training config that this cnnlab "
                          f"cannot use: {err} The file was edited or written by another version; use a checkpoint "
                          "written by this version's `cnnlab train`.") from None


def legacy_run_meta(path: Path, meta: dict) -> tuple[dict, Optional[RunConfig], list[str], Optional[Path]]:
    """The legacy path: what a checkpoint file lacks, completed from the run folder it sits in.

    Needed only by runs written before snapshots carried the whole :func:`cnnlab.run.checkpoint_meta`:
    their ``snapshot-K.safetensors`` record model, num_classes, in_chans, step and epoch, not the
    classes, image size, mean/std or config (and checkpoints older still may lack the config). The
    missing preprocessing keys are taken from the run's best checkpoint (else its last), the config,
    when the file has none, from the run's config file (:meth:`RunFolder.read_config`). Returns the
    completed meta (not yet checked), the config read here (None when the file has its own or the
    folder has none), and which keys were filled in from which file (for messages).
    """
    folder = RunFolder(path.parent)
    meta = dict(meta)
    config = folder.read_config() if meta.get(MetaKey.CONFIG) is None and folder.config.is_file() else None
    filled, source = [], None
    if any(meta.get(key) is None for key in PREPROCESSING_KEYS):
        for sibling in (folder.path / name for name in CHECKPOINT_PREFERENCE):
            if not sibling.is_file() or sibling == path:
                continue
            try:
                sibling_meta = read_checkpoint_meta(sibling)
            except CnnlabError as err:
                raise CnnlabError(f"{err} (It was read because '{display_name(str(path))}' does not record the "
                                  "preprocessing, as snapshots of older runs do not.)") from None
            filled = [key for key in PREPROCESSING_KEYS if meta.get(key) is None and sibling_meta.get(key) is not None]
            for key in filled:
                meta[key] = sibling_meta[key]
            source = sibling
            break
    return meta, config, filled, source


def read_model_meta(path: str | Path) -> tuple[dict, RunConfig]:
    """The checked metadata and training config of a checkpoint file: all it takes to rebuild its model
    and preprocess its inputs (:data:`BUILD_KEYS`, :data:`PREPROCESSING_KEYS` and the config).

    A file :func:`cnnlab.run.checkpoint_meta` wrote holds them all and is read alone. A file that
    lacks some (a snapshot of an older run) goes the legacy path, :func:`legacy_run_meta`, through
    the files beside it. Whatever is still missing, or does not pass the schema, is a CnnlabError
    naming the file (and the file a value was taken from).
    """
    path = Path(path)
    needed = (*BUILD_KEYS, *PREPROCESSING_KEYS)
    meta = dict(read_checkpoint_meta(path))
    config = _config_of(path, meta[MetaKey.CONFIG]) if meta.get(MetaKey.CONFIG) is not None else None
    filled, source = [], None
    if config is None or any(meta.get(key) is None for key in needed):
        meta, folder_config, filled, source = legacy_run_meta(path, meta)
        config = config or folder_config
    missing = [key for key in needed if meta.get(key) is None]
    if missing or config is None:
        what = ", ".join(missing) if missing else "the training config"
        raise CnnlabError(f"'{display_name(str(path))}' does not record {what}, and no run folder beside it does "
                          "either. Use a checkpoint written by `cnnlab train` (or keep the file in its run folder).")
    try:
        validate_meta(path, meta, require=needed)
    except CnnlabError as err:
        if not filled:
            raise
        raise CnnlabError(f"{err} (Its {', '.join(filled)} came from '{source}' beside it.)") from None
    return meta, config


def _check_image_size(path: Path, meta: dict, build: Callable[[], torch.nn.Module]) -> None:
    """Refuse a checkpoint whose recorded image size its own network cannot take (the metadata was edited:
    training checks the size before it starts), before eval, predict or export fail in their first batch.

    The forward pass runs on a copy built on the meta device: shapes only, no memory, no compute.
    """
    from cnnlab.models import check_input_size

    size, in_chans = meta[MetaKey.IMAGE_SIZE], meta[MetaKey.IN_CHANS]
    with torch.device("meta"):
        shapes_only = build()
    remedy = ("use a checkpoint written by `cnnlab train` (its image_size is the size the model trained at): this "
              "metadata was edited or written by another program")
    try:
        check_input_size(shapes_only, (in_chans, size, size), meta[MetaKey.MODEL], remedy=remedy)
    except InputTooSmallError as err:
        raise InputTooSmallError(f"The checkpoint '{display_name(str(path))}' records image_size {size}, which its "
                                 f"network cannot take: {err}") from None


def _refuse_ema_of_weights_file(path: Path) -> None:
    """Refuse --ema for a file that holds one set of weights (a snapshot, a plain safetensors file): only a
    full checkpoint (best, last) carries the EMA. read_checkpoint would refuse it too, but in words about
    resuming a run, which is not what was asked."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            kind = (handle.metadata() or {}).get("format")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    if kind == CHECKPOINT_FORMAT:
        return
    held = ("is a snapshot: it holds the raw weights only (snapshots are taken without the EMA)"
            if kind == WEIGHTS_FORMAT else "is a weights file without an EMA")
    raise CnnlabError(f"'{display_name(str(path))}' {held}, so it has no EMA weights for --ema. Leave out --ema, or "
                      f"give the run's {CHECKPOINT_BEST} or {CHECKPOINT_LAST} (a run trained with train.ema=true keeps "
                      "its EMA there).")


# How many times a checkpoint that a run replaced while it was being read is read again before giving up
LOAD_TRIES = 5


def read_unreplaced(path: Path, read: Callable[[], Any],
                    state: Optional[Callable[[Path], Any]] = None) -> tuple[Any, Any]:
    """(what ``read()`` returned, the file's state it was read in): ``read`` reads ``path`` more than once (its
    metadata, then its weights), which a run still training replaces (by a rename) at each new best and every
    epoch. ``state(path)`` (default :func:`checkpoint_identity`) is taken before and after, and the file is read
    again while the two differ, up to :data:`LOAD_TRIES` times, so that everything read is of one version of it."""
    state = state or checkpoint_identity
    for _ in range(LOAD_TRIES):
        before = state(path)
        result = read()
        if state(path) == before:
            return result, before
    raise CnnlabError(f"'{display_name(str(path))}' was replaced {LOAD_TRIES} times while it was being read: a run "
                      "is writing it at every step or epoch. Read it once the run has finished, or copy the file and "
                      "read the copy.")


def load_run_model(path: str | Path, *, ema: bool = False, device="cpu") -> LoadedModel:
    """A trained model with its preprocessing, from a run folder (best, else last checkpoint) or a
    checkpoint/weights file: the network :func:`cnnlab.run.build_model` makes from the recorded
    config and metadata, its weights loaded (the EMA weights with ``ema``), in eval mode on ``device``
    (auto, cpu, cuda or cuda:N).

    The metadata is checked first (:func:`read_model_meta`), and its image size against the network
    (:func:`_check_image_size`); weights that do not fit the model it describes are refused naming
    the first tensor that differs. Nothing is unpickled.

    The metadata and the weights are two reads of the file, which a run still training may replace between
    them: they are read again until both are of one state of it (:func:`read_unreplaced`), the state
    ``LoadedModel.identity`` records (:func:`checkpoint_identity`).
    """
    device = resolve_device(device, "device")  # auto, cpu, cuda or cuda:N: before any file is read
    path = checkpoint_path(path)
    loaded, identity = read_unreplaced(path, lambda: _load_run_model(path, ema, device))
    loaded.identity = identity
    return loaded


def _load_run_model(path: Path, ema: bool, device: torch.device) -> LoadedModel:
    """:func:`load_run_model`'s one read of the file."""
    from cnnlab.train.ema import ModelEma

    meta, config = read_model_meta(path)
    in_chans = meta[MetaKey.IN_CHANS]
    described = (f"a {meta[MetaKey.MODEL]} with {meta[MetaKey.NUM_CLASSES]} classes and {in_chans} input channel"
                 f"{'s' if in_chans != 1 else ''}, as its metadata says")

    def build():
        return build_model(config.model, num_classes=meta[MetaKey.NUM_CLASSES], in_chans=in_chans,
                           name=meta[MetaKey.MODEL])

    try:
        model = build()
    except (CnnlabError, TypeError, ValueError) as err:  # the config's options come from the file too
        raise CnnlabError(f"Cannot build the model the checkpoint '{path}' records ({described}, with the options "
                          f"{dict(config.model.options)}): {err} Use a checkpoint written by `cnnlab train`.") from None
    _check_image_size(path, meta, build)
    if ema:
        _refuse_ema_of_weights_file(path)
        checkpoint = read_checkpoint(path)
        if checkpoint.ema is None:
            raise CnnlabError(f"'{path}' holds no EMA weights (the run had train.ema=false): leave out --ema.")
        check_ema_fits(path, model, checkpoint.ema, f"{described} (its EMA weights)",
                       "Leave out --ema to use the raw weights.")
        holder = ModelEma(model)
        holder.load_state_dict(checkpoint.ema)
        model = holder.module
    else:
        state, _ = load_weights(path)
        check_model_fits(path, model, state, what=described)
        load_state(model, state)
    model = model.to(device).eval()
    return LoadedModel(model=model, config=config, meta=meta, path=path, weights="ema" if ema else "raw")
