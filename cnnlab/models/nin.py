"""Network in Network (Lin, Chen & Yan 2014), the CIFAR-10 model of section 4.2.

Each mlpconv block is a spatial conv followed by two 1x1 convs (a small MLP shared across
pixels). There are no fully connected layers: the last 1x1 conv outputs one map per class and
global average pooling turns each map into a logit.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.models._base import ClassifierModel, check_num_classes, init_weights, like_model
from cnnlab.models._registry import register_model

# One row per mlpconv block: (kernel, (channels of the spatial conv, 1x1, 1x1), pool after).
# The last block's final 1x1 conv is the classifier (``fc``) and outputs num_classes maps.
NIN_CFG = (
    (5, (192, 160, 96), "max"),  # 32x32 -> 16x16
    (5, (192, 192, 192), "avg"),  # 16x16 -> 8x8
    (3, (192, 192), None),  # 8x8, then the classifier 1x1 conv and global average pooling
)


class NiN(ClassifierModel):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="none",
        act="relu",
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers: list[nn.Module] = []
        chs = in_chans
        for kernel, widths, pool in NIN_CFG:
            for i, out_chs in enumerate(widths):
                k = kernel if i == 0 else 1
                layers.append(ConvNormAct(chs, out_chs, k, norm_layer=norm_layer, act_layer=act_layer))
                chs = out_chs
            if pool is not None:
                pool_layer = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
                layers.append(pool_layer(kernel_size=3, stride=2, padding=1))  # halves H and W
                layers.append(nn.Dropout(drop_rate))
        self.features = nn.Sequential(*layers)  # (B, C, 32, 32) -> (B, 192, 8, 8)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Identity()
        self.num_features = chs
        self.num_classes = num_classes
        # The classifier is linear: the paper's ReLU on the class maps only forces non-negative
        # logits.
        self.fc = _class_maps(chs, num_classes)
        init_weights(self, act_layer)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 192, h, w) -> (B, num_classes): one 1x1-conv map per class, averaged over space."""
        if pre_logits:
            return torch.flatten(self.global_pool(x), 1)  # (B, 192)
        return torch.flatten(self.global_pool(self.fc(x)), 1)

    def reset_classifier(self, num_classes: int) -> None:
        num_classes = check_num_classes(num_classes)
        self.num_classes = num_classes
        self.fc = like_model(_class_maps(self.num_features, num_classes), self)


def _class_maps(in_chs: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    conv = nn.Conv2d(in_chs, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)
    return conv


@register_model(family="nin", default_input=(3, 32, 32), min_size=28, paper="Lin et al. 2014")
def nin(**kwargs) -> NiN:
    return NiN(**kwargs)
