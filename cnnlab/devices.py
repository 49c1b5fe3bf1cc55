"""The one rule for a device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Training (``train.device``), probe (``--device``) and the Python functions that take ``device=``
(evaluation, prediction, ensembles, the data loaders) all resolve a name here, so a bad one gets
the same message everywhere instead of torch's list of every device type it knows. A foundation
module: it imports nothing from cnnlab but the error type, so the data loaders may use it too.
"""

from __future__ import annotations

import torch

from cnnlab.errors import CnnlabError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name, what: str = "train.device") -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda or cuda:N, or a torch.device) names; ``what`` is the key,
    option or argument that gave it, for the messages."""
    name = str(name)  # a torch.device prints as its name: cuda:0
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None  # not a device torch knows (cuda:x, gpu, bogus)
    if device is None or device.type not in ("cpu", "cuda"):  # meta, mps, ...: cnnlab computes on neither
        raise CnnlabError(f"{what}='{name}' is not a device cnnlab runs on: use {DEVICE_CHOICES}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"{what}='{name}' but no CUDA GPU is available here. Use cpu or auto.")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so that a clock read afterwards includes them (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
