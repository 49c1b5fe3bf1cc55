"""Weight-initialisation schemes as a knob (placeholder: filled in by the init work)."""

from __future__ import annotations

from typing import Optional

from torch import nn


def apply_init(model: nn.Module, scheme: str = "default", bias: Optional[float] = None) -> None:
    if scheme != "default" or bias is not None:
        raise NotImplementedError("init schemes")
