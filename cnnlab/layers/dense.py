"""Dense blocks and transitions (Huang et al. 2017, "Densely Connected Convolutional Networks").

Inside a dense block every layer reads the concatenation of the block's input and all earlier
layers' outputs, and adds ``growth_rate`` new channels. Layers are pre-activation (norm -> act ->
conv, section 3 "Composite function"), built with :class:`ConvNormAct` ``preact=True``, in
torchvision's order (norm1, conv1, norm2, conv2), so its state_dicts map onto them by position.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers.act import ActLayer
from cnnlab.layers.blocks import ConvNormAct
from cnnlab.layers.norm import NormLayer


class DenseLayer(nn.Module):
    """norm-act-1x1 conv to ``bn_size * growth_rate``, then norm-act-3x3 conv to ``growth_rate``.

    (B, C_in, H, W) -> (B, growth_rate, H, W). The 1x1 "bottleneck" (DenseNet-B) caps the width
    the 3x3 conv reads, however many channels the block has accumulated.
    """

    def __init__(self, in_chs: int, growth_rate: int, bn_size: int, norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.conv1 = ConvNormAct(in_chs, width, 1, norm_layer=norm_layer, act_layer=act_layer, preact=True)
        self.conv2 = ConvNormAct(width, growth_rate, 3, norm_layer=norm_layer, act_layer=act_layer, preact=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers: (B, C_in, H, W) -> (B, C_in + num_layers * growth_rate, H, W)."""

    def __init__(
        self,
        num_layers: int,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        norm_layer: NormLayer,
        act_layer: ActLayer,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size, norm_layer, act_layer) for i in range(num_layers)
        )
        self.out_chs = in_chs + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            # Layer i reads everything before it: (B, C_in + i * growth_rate, H, W).
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class DenseTransition(nn.Sequential):
    """Between dense blocks: norm -> act -> 1x1 conv to ``out_chs`` -> 2x2 average pool, stride 2.

    (B, C_in, H, W) -> (B, out_chs, H/2, W/2). ``out_chs`` is ``compression * C_in`` (DenseNet-C).
    """

    def __init__(self, in_chs: int, out_chs: int, norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer, preact=True)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.out_chs = out_chs
