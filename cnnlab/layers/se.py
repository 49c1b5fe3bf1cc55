"""Squeeze-and-Excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks", Fig. 1 and Fig. 3).

A block reweights its C channels by a gate computed from their global averages:

    squeeze: s = mean over H, W of x                      (B, C, 1, 1)
    excite:  g = gate(W2 act(W1 s + b1) + b2)              W1: C -> C/r, W2: C/r -> C, g in (0, 1)
    scale:   out = x * g                                   (B, C, H, W), the input's shape

The two fully connected layers are 1x1 convs on the (B, C, 1, 1) map (the same weights as linear
layers, without a flatten), with biases, as in the paper's released models. The paper's parameter
count, 2/r * sum_s N_s C_s^2 (section 4), counts the weights only: each block here has
2 * C * (C // r) weights plus (C // r) + C biases. The reduced width is ``max(1, C // r)``: C / r when r
divides C (every SE-ResNet and MobileNetV2 width at r = 16), never zero channels when r > C.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError, shown_value, whole_number
from cnnlab.layers.act import ActSpec, get_act_layer

SE_REDUCTION = 16  # r of the paper (section 6.1: the best trade-off between accuracy and parameters)


def se_width(channels: int, reduction: int) -> int:
    """Channels of the excitation's bottleneck: C // r, at least 1. ``reduction`` r is a whole number of at
    least 1 (r = 1 keeps every channel)."""
    if whole_number(reduction) is None or reduction < 1:
        raise CnnlabError(f"The squeeze-and-excitation reduction must be a whole number of at least 1 (C -> C/r), "
                          f"got {shown_value(reduction)}; the paper's is {SE_REDUCTION}.")
    return max(1, channels // reduction)


class SqueezeExcite(nn.Module):
    """Channel gating: global average pool -> 1x1 conv C -> C/r -> act -> 1x1 conv C/r -> C -> gate -> x * gate.

    (B, C, H, W) -> (B, C, H, W). ``act_layer`` and ``gate_layer`` are activation names or types
    (:func:`cnnlab.layers.get_act_layer`): ReLU and sigmoid in the paper.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = SE_REDUCTION,
        act_layer: ActSpec = "relu",
        gate_layer: ActSpec = "sigmoid",
    ) -> None:
        super().__init__()
        reduced = se_width(channels, reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)  # squeeze: (B, C, H, W) -> (B, C, 1, 1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)  # (B, C, 1, 1) -> (B, C/r, 1, 1)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(reduced, channels, 1)  # (B, C/r, 1, 1) -> (B, C, 1, 1)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (B, C, 1, 1), one weight per channel
        return x * scale  # broadcast over H, W


SELayer = Callable[[int], nn.Module]  # se_layer(channels) -> module, like a norm_layer


def check_se_reduction(se: object) -> int:
    """The reduction ratio an ``se`` option gives: a whole number r >= 1, or 0 when SE is off (0 or None)."""
    if se is None:
        return 0
    if isinstance(se, bool) or not isinstance(se, int) or se < 0:
        raise CnnlabError(
            f"se={se!r} is not a reduction ratio: give a whole number r >= 1 (the paper's is {SE_REDUCTION}: "
            "each block's excitation narrows C channels to C // r), or 0 / null for no Squeeze-and-Excitation."
        )
    return se


def make_se_layer(se: object, act_layer: ActSpec = "relu") -> Optional[SELayer]:
    """``se_layer(channels)`` building a :class:`SqueezeExcite` of reduction ``se``, or None when ``se`` is 0/None.

    Models resolve their ``se`` option with this once and hand the result to their blocks, as they
    do ``norm_layer``.
    """
    reduction = check_se_reduction(se)
    if reduction == 0:
        return None
    return functools.partial(SqueezeExcite, reduction=reduction, act_layer=act_layer)
