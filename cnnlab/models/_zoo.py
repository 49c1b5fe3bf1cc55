"""The zoo as data: one row per registered model, with its parameter count, for ``cnnlab models``.

Parameter counts come from the modules themselves, built on the meta device (no memory, no
initialisation; see :mod:`cnnlab.models._meta`). Building all 45 models that way still takes about
a second on 2 cores (1.07 s measured alone, 0.45 s of it preact_resnet1001's 1001 layers), most of
the command's budget over the bare torch import, so the counts are also kept in
``<cache_root>/model-params.json``. The cache is trusted only for exactly the code that
made it: its key is cnnlab's and torch's versions plus a SHA-256 of the source of every module the
builders run (``cnnlab/models`` and ``cnnlab/layers``, all the package code the models import, which
tests/test_imports.py checks). Any change to that code, to torch, or to the file itself (unreadable,
not JSON, wrong key, a count that is not a whole number, a digest that does not match) and the
counts are built again and the file rewritten. Models registered from outside cnnlab are counted
every time, never cached: their code is not in the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError, check_type
from cnnlab.io import write_json_atomic
from cnnlab.models._registry import create_model, list_models, model_info

PARAMS_CACHE_FILE = "model-params.json"
TORCHVISION_PARAMS_CACHE_FILE = "torchvision-params.json"  # tv:NAME counts, keyed by torchvision's version
PARAMS_CACHE_FORMAT = 1  # bump when the file's layout changes
# The package folders whose source defines every zoo model's modules (the cache key hashes them).
MODEL_SOURCE_DIRS = ("models", "layers")


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once), trainable or not; buffers are not parameters."""
    check_type(model, nn.Module, "model", "a torch module (cnnlab.create_model(NAME))")
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **kwargs) -> nn.Module:
    """``create_model(name, **kwargs)`` on the meta device: modules and shapes, no memory, no initialisation.

    Enough for parameter counts, summaries and input-size checks; ``model.to_empty(device=...)``
    followed by initialisation would make it a real model.
    """
    with torch.device("meta"):
        return create_model(name, **kwargs)


def zoo_table(pattern: Optional[str] = None) -> list[dict[str, Any]]:
    """One row per model matching ``pattern`` (see :func:`list_models`), in ``list_models`` order.

    Each row: ``name``, ``family``, ``params`` (with the defaults: 1000 classes, 3 input channels),
    ``default_input`` [C, H, W], ``min_size``, ``exact_size`` (true when ``min_size`` is the only side the
    model takes, as for torchvision's ViTs), ``paper`` and ``torchvision`` (the name of
    torchvision's builder of the same network, or None). Raises CnnlabError when no model matches.
    """
    names = list_models(pattern)
    if not names:
        elsewhere = (" tv: names are torchvision's models: cnnlab.models.torchvision_table() (`cnnlab models "
                     "--torchvision`) lists them." if isinstance(pattern, str) and pattern.startswith("tv:") else "")
        raise CnnlabError(f"No model matches '{pattern}'. Run `cnnlab models` to see them all.{elsewhere}")
    counts = default_param_counts(names)
    return [_table_row(name, counts[name]) for name in names]


def _table_row(name: str, params: int) -> dict[str, Any]:
    """One row of :func:`zoo_table` / :func:`torchvision_table`: the registry's facts and the parameter count."""
    info = model_info(name)
    return {"name": name, "family": info.family, "params": params, "default_input": list(info.default_input),
            "min_size": info.min_size, "exact_size": info.exact_size, "paper": info.paper,
            "torchvision": info.torchvision}


def torchvision_table(pattern: Optional[str] = None) -> list[dict[str, Any]]:
    """:func:`zoo_table`'s rows for torchvision's classification models (``tv:NAME``).

    Counts are built on the meta device once and kept in ``<cache_root>/torchvision-params.json``,
    keyed by torch's and torchvision's versions and the source of the module that builds them.
    """
    from cnnlab.models.tv import list_torchvision_models

    names = list_torchvision_models(pattern)
    if not names:
        raise CnnlabError(f"No torchvision model matches '{pattern}'. Run `cnnlab models --torchvision` to see them all.")
    path = cnnlab.cache_root() / TORCHVISION_PARAMS_CACHE_FILE
    key = _torchvision_cache_key()
    cached = read_params_cache(path, key)
    counts = {name: cached[name] if name in cached else count_params(build_on_meta(name)) for name in names}
    if any(cached.get(name) != count for name, count in counts.items()):
        _write_params_cache(path, key, {**cached, **counts})
    return [_table_row(name, counts[name]) for name in names]


def _torchvision_cache_key() -> dict[str, Any]:
    import torchvision

    package = Path(cnnlab.__file__).parent
    digest = hashlib.sha256()
    for relative in ("models/tv.py", "models/_meta.py"):
        digest.update(relative.encode() + b"\0" + (package / relative).read_bytes() + b"\0")
    return {"format": PARAMS_CACHE_FORMAT, "cnnlab": cnnlab.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "source": digest.hexdigest()}


def default_param_counts(names: list[str], cache: bool = True) -> dict[str, int]:
    """Parameter count of each model with the default options, from the cache where it is valid.

    ``cache=False`` counts every model on the meta device and neither reads nor writes the file.
    """
    if not cache:
        return {name: count_params(build_on_meta(name)) for name in names}
    path = params_cache_path()
    key = params_cache_key()
    cached = read_params_cache(path, key)
    counts = {}
    for name in names:
        if _cacheable(name) and name in cached:
            counts[name] = cached[name]
        else:
            counts[name] = count_params(build_on_meta(name))
    fresh = {name: count for name, count in counts.items() if _cacheable(name) and cached.get(name) != count}
    if fresh:
        _write_params_cache(path, key, {**cached, **fresh})
    return counts


def params_cache_path() -> Path:
    return cnnlab.cache_root() / PARAMS_CACHE_FILE


def params_cache_key() -> dict[str, Any]:
    """What the cached counts depend on: the file format, cnnlab and torch versions, the models' source."""
    package = Path(cnnlab.__file__).parent
    digest = hashlib.sha256()
    for folder in MODEL_SOURCE_DIRS:
        for path in sorted((package / folder).rglob("*.py")):
            digest.update(path.relative_to(package).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return {"format": PARAMS_CACHE_FORMAT, "cnnlab": cnnlab.__version__, "torch": torch.__version__,
            "source": digest.hexdigest()}


def read_params_cache(path: Path, key: dict[str, Any]) -> dict[str, int]:
    """The cached counts when the file is intact and was made for ``key``; otherwise {} (rebuild)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # missing, unreadable, or not JSON
    if not isinstance(data, dict) or data.get("key") != key:
        return {}  # another version of cnnlab, torch or the model code made it
    counts = data.get("params")
    if not isinstance(counts, dict) or data.get("digest") != _digest(key, counts):
        return {}  # edited or damaged since it was written
    if not all(isinstance(n, str) and type(c) is int and c >= 0 for n, c in counts.items()):
        return {}
    return counts


def _write_params_cache(path: Path, key: dict[str, Any], counts: dict[str, int]) -> None:
    """Write the counts atomically; a cache that cannot be written (read-only home) is simply not kept."""
    counts = dict(sorted(counts.items()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"key": key, "params": counts, "digest": _digest(key, counts)},
                          "the parameter-count cache")
    except (OSError, CnnlabError):
        pass


def _digest(key: dict[str, Any], counts: dict) -> str:
    """SHA-256 of the key and the counts as written: a changed count no longer matches."""
    text = json.dumps({"key": key, "params": counts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _cacheable(name: str) -> bool:
    """Only cnnlab's own models: the key hashes their source, not that of a model registered elsewhere."""
    return model_info(name).builder.__module__.startswith("cnnlab.models.")
