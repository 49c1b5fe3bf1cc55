"""Dropout options shared by every architecture (placeholder: filled in by the dropout work)."""

from __future__ import annotations

from typing import Optional

from torch import nn


def apply_dropout(model: nn.Module, *, kind: str = "inverted", hidden_rate: Optional[float] = None,
                  stage_rate: Optional[float] = None) -> None:
    if kind != "inverted" or hidden_rate or stage_rate:
        raise NotImplementedError("dropout options")
