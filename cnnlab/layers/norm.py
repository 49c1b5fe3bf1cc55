"""Normalisation layer factory.

``get_norm_layer(kind)`` returns a callable ``norm_layer(num_channels) -> nn.Module``; blocks call it
with their channel count and never name a normalisation class themselves.
"""

from __future__ import annotations

import difflib
import functools
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UnknownNameError

NormLayer = Callable[[int], nn.Module]
NormSpec = Union[str, NormLayer, None]


class NoNorm(nn.Identity):
    """Placeholder for 'no normalisation'. Blocks skip it and give their conv a bias instead."""

    def __init__(self, num_features: int = 0, **kwargs) -> None:
        super().__init__()


class LayerNorm2d(nn.LayerNorm):
    """Per-pixel LayerNorm over channels only (ConvNeXt): statistics over C at each (h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C): normalise the last dim
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # back to (B, C, H, W)


class LayerNormCHW(nn.GroupNorm):
    """The lecture's LayerNorm for feature maps: statistics per sample over C, H and W together.

    This is GroupNorm with a single group; the affine scale and shift are per channel.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine)


class GroupNormAuto(nn.GroupNorm):
    """GroupNorm with at most ``groups`` groups, fewer when the channel count needs it.

    The group count is the largest divisor of ``num_channels`` not above ``groups`` (32 by
    default, Wu & He 2018), so any channel count works: 24 channels get 24 groups, 48 get 24.
    """

    def __init__(self, num_channels: int, groups: int = 32, eps: float = 1e-5, affine: bool = True) -> None:
        num_groups = max(g for g in range(1, min(groups, num_channels) + 1) if num_channels % g == 0)
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)


class InstanceNormAffine(nn.InstanceNorm2d):
    """InstanceNorm2d with a learnt per-channel scale and shift."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True)


_NORMS: dict[str, type[nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "gn": GroupNormAuto,
    "ln": LayerNormCHW,
    "ln2d": LayerNorm2d,
    "in": InstanceNormAffine,
    "none": NoNorm,
}


def norm_names() -> list[str]:
    """The names :func:`get_norm_layer` accepts."""
    return list(_NORMS)


def get_norm_layer(kind: NormSpec, **kwargs) -> NormLayer:
    """Resolve ``kind`` to a layer type taking the channel count.

    ``kind`` is a name (``bn``, ``gn``, ``ln``, ``ln2d``, ``in``, ``none``), a layer type, a
    ``functools.partial``, or None (no normalisation). ``kwargs`` are bound to the layer, e.g.
    ``get_norm_layer("gn", groups=16)`` or ``get_norm_layer("bn", eps=1e-3)``.
    """
    if kind is None:
        return NoNorm
    if isinstance(kind, str):
        key = kind.lower().replace("-", "_")
        if key not in _NORMS:
            close = difflib.get_close_matches(key, _NORMS, n=3, cutoff=0.3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"Unknown normalisation '{kind}'. Choose one of: {', '.join(_NORMS)}.{hint}"
            )
        layer = _NORMS[key]
        return functools.partial(layer, **kwargs) if kwargs else layer
    if callable(kind):
        return functools.partial(kind, **kwargs) if kwargs else kind
    raise UnknownNameError(f"Normalisation must be a name, a layer type or None, not {type(kind).__name__}.")


def is_no_norm(norm_layer: NormLayer) -> bool:
    """True when ``norm_layer`` builds no normalisation (the conv before it then needs a bias)."""
    base = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return base is NoNorm or base is nn.Identity
