"""The one rule for a device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Training (``train.device``), probe (``--device``) and the Python functions that take ``device=``
(evaluation, prediction, ensembles, the data loaders) all resolve a name here, so a bad one gets
the same message everywhere instead of torch's list of every device type it knows. A foundation
module: it imports nothing from cnnlab but the error type, so the data loaders may use it too, and torch
only when a name is resolved, so that checking a config's spelling (:func:`device_name_problem`) imports none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name, what: str = "train.device") -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda or cuda:N, or a torch.device) names; ``what`` is the key,
    option or argument that gave it, for the messages."""
    import torch

    name = str(name)  # a torch.device prints as its name: cuda:0
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None  # not a device torch knows (cuda:x, gpu, bogus)
    # meta, mps, ...: cnnlab computes on neither; and torch takes cpu:1, which names no other processor
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise CnnlabError(f"{what}='{name}' is not a device cnnlab runs on: use {DEVICE_CHOICES}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"{what}='{name}' but no CUDA GPU is available here. Use cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise CnnlabError(f"{what}='{name}' but this machine has {count} CUDA GPU{'s' if count > 1 else ''}, "
                          f"cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}. Use one of those, or cuda.")
    return device


def device_name_problem(name: str, what: str = "train.device") -> str | None:
    """Why ``name`` is not a device name (auto, cpu, cuda or cuda:N, N a whole number), or None: the spelling
    only, not whether this machine has the device (a config may be checked on a machine without the GPU its run
    will use)."""
    if name in ("auto", "cpu", "cuda"):
        return None
    kind, colon, index = name.partition(":")
    # a whole number as torch reads one: no sign, no leading zero (torch refuses cuda:01)
    if kind == "cuda" and colon and index.isascii() and index.isdigit() and (index == "0" or index[0] != "0"):
        return None
    return f"{what}='{name}' must be {DEVICE_CHOICES}"


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so that a clock read afterwards includes them (a no-op elsewhere)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
