"""The ConvNeXt block (Liu et al. 2022, "A ConvNet for the 2020s", Fig. 4) and the norm on the
pooled vector that precedes ConvNeXt's classifier.

The block registers its tensors in torchvision's order (layer_scale, depthwise conv, norm, fc1,
fc2), so torchvision's ``convnext_*`` state_dicts map onto it by position.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.layers.act import ActLayer
from cnnlab.layers.blocks import drop_path_or_identity
from cnnlab.layers.norm import NormLayer, is_no_norm

MLP_RATIO = 4  # the inverted bottleneck's hidden width, x the block's width (section 2.4)
KERNEL_SIZE = 7  # the depthwise conv's kernel (section 2.5, "large kernel sizes")


class ConvNeXtBlock(nn.Module):
    """x + drop_path(gamma * fc2(act(fc1(norm(dwconv7x7(x)))))), shape (B, C, H, W) kept.

    The 1x1 convs of the inverted bottleneck are ``nn.Linear`` layers on channels-last tensors
    (B, H, W, C), as in the reference code and torchvision (and the same parameter shapes).

    The norm is applied to the (B, C, H, W) map before the permute, so any 2-d norm can be swapped
    in; the default per-pixel LayerNorm2d equals LayerNorm over C on the permuted map.

    Args:
        layer_scale_init: initial value of gamma, a learnt per-channel scale of the branch (Touvron
            et al. 2021): 1e-6 makes every block start close to the identity. None: no scale.
        drop_path: probability of dropping the branch per sample in training (stochastic depth).
    """

    def __init__(
        self,
        dim: int,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        layer_scale_init: Optional[float] = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        # A parameter of the block itself is saved before its submodules' tensors, which puts it
        # first in the block's state_dict, where torchvision has it. (dim, 1, 1) broadcasts over H, W.
        if layer_scale_init:
            self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))
        else:
            self.layer_scale = None
        # Depthwise: one 7x7 filter per channel mixes space only. It keeps its bias before the
        # norm, as the reference code does, so torchvision's weights load.
        self.dwconv = nn.Conv2d(dim, dim, KERNEL_SIZE, padding=KERNEL_SIZE // 2, groups=dim, bias=True)
        self.norm = None if is_no_norm(norm_layer) else norm_layer(dim)
        self.fc1 = nn.Linear(dim, MLP_RATIO * dim)  # pointwise: mixes channels only
        self.act = act_layer()
        self.fc2 = nn.Linear(MLP_RATIO * dim, dim)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dwconv(x)  # (B, C, H, W)
        if self.norm is not None:
            out = self.norm(out)
        out = out.permute(0, 2, 3, 1)  # (B, H, W, C): Linear works on the last dim
        out = self.fc2(self.act(self.fc1(out)))  # (B, H, W, 4C) -> (B, H, W, C)
        out = out.permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.layer_scale is not None:
            out = self.layer_scale * out
        return x + self.drop_path(out)

    def zero_init_last(self) -> None:
        """Start the block as the identity: zero gamma, or fc2 when the block has no layer scale."""
        if self.layer_scale is not None:
            nn.init.zeros_(self.layer_scale)
        else:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)


class PooledNorm(nn.Module):
    """A 2-d norm applied to a pooled (B, C) vector, seen as a (B, C, 1, 1) map.

    With ConvNeXt's per-pixel LayerNorm2d this is LayerNorm over the C features, which is what
    torchvision's classifier (LayerNorm2d on the pooled map, then flatten) computes.
    """

    def __init__(self, num_features: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.norm = norm_layer(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :, None, None]).flatten(1)  # (B, C) -> (B, C, 1, 1) -> (B, C)
