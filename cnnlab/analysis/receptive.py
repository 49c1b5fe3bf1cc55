"""Receptive fields and effective strides ("jumps").

For a layer with kernel k, stride s and dilation d applied to a map whose units see ``r`` input
pixels and sit ``j`` input pixels apart (Araujo et al. 2019, "Computing Receptive Fields"):

    r_out = r_in + (k - 1) * d * j_in
    j_out = j_in * s

Padding shifts where a field starts but not its size. Where paths meet (a residual add, an
Inception concat) the field of the result is the largest over its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from torch import nn


@dataclass(frozen=True)
class ReceptiveField:
    """Field size and jump along height and width; ``size`` is None once a layer mixes all
    positions (global pooling, a fully connected layer): it then sees the whole input."""

    size: tuple[int, int] | None = (1, 1)
    jump: tuple[int, int] = (1, 1)

    @property
    def is_global(self) -> bool:
        return self.size is None

    def through(
        self, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1)
    ) -> "ReceptiveField":
        """The field after a conv or pool with these (h, w) settings."""
        if self.size is None:
            return self
        (r_h, r_w), (j_h, j_w) = self.size, self.jump
        size = (r_h + (kernel[0] - 1) * dilation[0] * j_h, r_w + (kernel[1] - 1) * dilation[1] * j_w)
        return ReceptiveField(size, (j_h * stride[0], j_w * stride[1]))

    def __str__(self) -> str:
        if self.size is None:
            return "all"
        return _pair_text(self.size)

    @staticmethod
    def merge(fields: Iterable["ReceptiveField"]) -> "ReceptiveField":
        """Where paths meet: the largest field and the largest jump over the inputs."""
        fields = list(fields)
        if not fields:
            return ReceptiveField()
        if len(fields) == 1:  # one input (most ops): its field passes unchanged
            return fields[0]
        if any(f.size is None for f in fields):
            return ReceptiveField(None, tuple(max(f.jump[i] for f in fields) for i in range(2)))
        size = tuple(max(f.size[i] for f in fields) for i in range(2))
        jump = tuple(max(f.jump[i] for f in fields) for i in range(2))
        return ReceptiveField(size, jump)


LayerSpec = Union[nn.Module, tuple]


def receptive_field(layers: Iterable[LayerSpec]) -> list[ReceptiveField]:
    """Receptive field after each layer of a plain stack.

    ``layers`` holds conv/pool modules (other modules, such as activations, pass the field on) or
    ``(kernel, stride)`` / ``(kernel, stride, dilation)`` tuples. The lecture's check:

        >>> [f.size for f in receptive_field([(3, 1)] * 3)][-1]
        (7, 7)
    """
    field = ReceptiveField()
    fields = []
    for layer in layers:
        kernel, stride, dilation = _layer_geometry(layer)
        if kernel is not None:
            field = field.through(kernel, stride, dilation)
        elif isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)):
            field = ReceptiveField(None, field.jump)
        fields.append(field)
    return fields


def _layer_geometry(layer: LayerSpec):
    if isinstance(layer, tuple):
        kernel, stride, *rest = layer
        dilation = rest[0] if rest else 1
        return _pair(kernel), _pair(stride), _pair(dilation)
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        return _pair(layer.kernel_size), _pair(stride), _pair(getattr(layer, "dilation", 1))
    return None, None, None


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _pair_text(pair: Sequence[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
