"""MobileNet blocks: the depthwise-separable conv (Howard et al. 2017, "MobileNets", Fig. 3) and
the inverted residual with linear bottleneck (Sandler et al. 2018, "MobileNetV2", Table 1).

Both take ``norm_layer`` / ``act_layer`` *types*. The inverted residual registers its layers in
torchvision's order (expand, depthwise, project conv, project norm), so torchvision's
``mobilenet_v2`` state_dict maps onto it by position.

Both take an optional ``se_layer`` (:func:`cnnlab.layers.se.make_se_layer`): Squeeze-and-Excitation
right after the depthwise conv, on its channels, where MnasNet (Tan et al. 2019) and MobileNetV3
(Howard et al. 2019, Fig. 4) put it. In the inverted residual those are the expanded channels, so
the reduction applies to the expanded width (t * C_in), as in MobileNetV3: the gate sits where the
block is wide and has the most channels to choose between, before the linear projection narrows
them again.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.layers.act import ActLayer
from cnnlab.layers.blocks import ConvNormAct
from cnnlab.layers.norm import NormLayer
from cnnlab.layers.se import SELayer


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% down.

    The rule of the TensorFlow MobileNet code (and torchvision): width-multiplied channel counts
    stay multiples of 8, which hardware kernels prefer.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class DepthwiseSeparable(nn.Sequential):
    """A 3x3 depthwise conv (one filter per channel, carries the stride) then a 1x1 pointwise conv
    that mixes channels; each followed by norm and act.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). Cost per pixel 9 * C_in + C_in * C_out multiply-adds
    instead of a full 3x3 conv's 9 * C_in * C_out (section 3.1).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, norm_layer: NormLayer, act_layer: ActLayer,
                 se_layer: Optional[SELayer] = None) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs,
                                     norm_layer=norm_layer, act_layer=act_layer)
        if se_layer is not None:
            self.se = se_layer(in_chs)  # gates the depthwise output's C_in channels
        self.pointwise = ConvNormAct(in_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer)


class InvertedResidual(nn.Module):
    """1x1 expand by ``expand_ratio`` -> 3x3 depthwise (stride) -> 1x1 linear projection.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). The block is thin at its ends and wide in the middle,
    the reverse of a ResNet bottleneck. The projection has no activation: on the thin,
    low-dimensional output a ReLU would destroy information (section 3.2, "linear bottlenecks").
    The shortcut joins the thin ends and exists exactly when the shape is kept (stride 1 and
    C_in == C_out). With ``expand_ratio == 1`` there is no expansion conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        expand_ratio: float,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        se_layer: Optional[SELayer] = None,
    ) -> None:
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.use_shortcut = stride == 1 and in_chs == out_chs
        self.expand: Optional[ConvNormAct] = None  # left out, not an Identity, so analysis sees real layers
        if expand_ratio != 1:
            self.expand = ConvNormAct(in_chs, hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride, groups=hidden,
                                     norm_layer=norm_layer, act_layer=act_layer)
        self.se = None if se_layer is None else se_layer(hidden)  # on the expanded width; left out when off
        self.project = ConvNormAct(hidden, out_chs, 1, norm_layer=norm_layer, act_layer=None)
        self.out_chs = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)  # (B, hidden, H, W)
        out = self.depthwise(out)  # (B, hidden, H/s, W/s)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)  # (B, C_out, H/s, W/s)
        return x + out if self.use_shortcut else out

    def zero_init_last(self) -> None:
        """Zero the projection's norm scale (or its conv when there is no norm), so a block with a
        shortcut starts as the identity. A block without shortcut is left alone: zeroing it would
        cut the network's signal."""
        if self.use_shortcut:
            self.project.zero_output()
