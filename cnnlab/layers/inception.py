"""The Inception module and GoogLeNet's auxiliary classifier (Szegedy et al. 2015, "Going Deeper
with Convolutions", Fig. 2b and section 5), and the naive Inception module of Fig. 2a.

Both take ``norm_layer`` / ``act_layer`` *types* and build every conv as a :class:`ConvNormAct`.
Layers are registered in torchvision's order (branch1, branch2, branch3, branch4; the auxiliary
head's conv, fc1, fc2), so torchvision's GoogLeNet state_dict maps onto them by position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cnnlab.layers.act import ActLayer
from cnnlab.layers.blocks import ConvNormAct
from cnnlab.layers.norm import NormLayer


class InceptionWidths(NamedTuple):
    """One row of the paper's Table 1: the output channels of each conv of an Inception module."""

    ch1x1: int  # "#1x1": the 1x1 branch
    ch3x3_reduce: int  # "#3x3 reduce": 1x1 conv in front of the 3x3
    ch3x3: int  # "#3x3"
    ch5x5_reduce: int  # "#5x5 reduce": 1x1 conv in front of the 5x5
    ch5x5: int  # "#5x5"
    pool_proj: int  # "pool proj": 1x1 conv after the 3x3 max pool

    @property
    def out_chs(self) -> int:
        """The four branches are concatenated along channels."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj

    def naive_out_chs(self, in_chs: int) -> int:
        """Output channels of the naive module (Fig. 2a): the pool branch passes all ``in_chs`` through."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + in_chs


class InceptionBlock(nn.Module):
    """Four parallel branches, concatenated: (B, C_in, H, W) -> (B, widths.out_chs, H, W).

    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1. The 1x1 "reduce" convs cut the channels
    before the expensive convs, which is what keeps the network's cost low (section 4).

    ``kernel_5x5`` is the kernel of the "5x5" branch. torchvision's GoogLeNet uses 3 there (a
    known slip that its pretrained weights were trained with, so it stays the default for
    loading them); 5 builds the paper's module.

    ``naive=True`` builds the naive module of Fig. 2a instead: 1x1 | 3x3 | 5x5 convs straight on the
    input and the 3x3 max pool alone, with the table's #1x1, #3x3 and #5x5 output widths; the
    "reduce" and "pool proj" widths are unused. The pool branch then carries all C_in channels, so
    (B, C_in, H, W) -> (B, #1x1 + #3x3 + #5x5 + C_in, H, W): the output only ever grows, module by
    module, and the 3x3 and 5x5 convs read the full, growing input. That is the problem the 1x1
    reductions of Fig. 2b solve (section 4).
    """

    def __init__(
        self,
        in_chs: int,
        widths: InceptionWidths,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        kernel_5x5: int = 3,
        naive: bool = False,
    ) -> None:
        super().__init__()
        w = widths

        def conv(c_in: int, c_out: int, kernel: int) -> ConvNormAct:
            return ConvNormAct(c_in, c_out, kernel, norm_layer=norm_layer, act_layer=act_layer)

        # Stride 1 and padding 1 keep H x W, so the pooled branch can be concatenated with the others.
        pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)
        if naive:
            self.branch1 = conv(in_chs, w.ch1x1, 1)
            self.branch2 = conv(in_chs, w.ch3x3, 3)
            self.branch3 = conv(in_chs, w.ch5x5, kernel_5x5)
            self.branch4 = pool  # (B, C_in, H, W): no projection
            self.out_chs = w.naive_out_chs(in_chs)
            return
        self.branch1 = conv(in_chs, w.ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_chs, w.ch3x3_reduce, 1), conv(w.ch3x3_reduce, w.ch3x3, 3))
        self.branch3 = nn.Sequential(conv(in_chs, w.ch5x5_reduce, 1), conv(w.ch5x5_reduce, w.ch5x5, kernel_5x5))
        self.branch4 = nn.Sequential(pool, conv(in_chs, w.pool_proj, 1))
        self.out_chs = w.out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # (B, out_chs, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier on an intermediate feature map (section 5; torchvision's sizes).

    (B, C, H, W) -> average pool to 4x4 -> 1x1 conv to 128 -> flatten (B, 2048) -> FC 1024 -> act
    -> dropout -> FC to classes. The paper pools 5x5/3 (14x14 -> 4x4 at a 224 input); an adaptive
    pool gives the same 4x4 at any input size.
    """

    POOL_SIZE = 4
    CONV_CHS = 128
    HIDDEN = 1024

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        drop_rate: float = 0.7,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(self.POOL_SIZE)
        self.conv = ConvNormAct(in_chs, self.CONV_CHS, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.fc1 = nn.Linear(self.CONV_CHS * self.POOL_SIZE * self.POOL_SIZE, self.HIDDEN)
        self.act = act_layer()
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(self.HIDDEN, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x))  # (B, 128, 4, 4)
        x = torch.flatten(x, 1)  # (B, 2048)
        x = self.dropout(self.act(self.fc1(x)))  # (B, 1024)
        return self.fc2(x)  # (B, num_classes)
