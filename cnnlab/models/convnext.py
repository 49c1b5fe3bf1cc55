"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), laid out as torchvision's
``convnext_tiny`` so its weights load.

A ResNet modernised step by step toward a vision Transformer: a 4x4/4 "patchify" stem, stage
depths 3:3:9:3, depthwise 7x7 convs, inverted bottlenecks, GELU, a single LayerNorm per block,
separate downsampling layers (norm then 2x2/2 conv), layer scale and stochastic depth.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import CnnlabError, is_finite_number, shown_value
from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.layers.convnext import ConvNeXtBlock, PooledNorm
from cnnlab.layers.norm import is_no_norm
from cnnlab.models._base import (DROP_PATH_MEANING, ZERO_INIT_RESIDUAL_MEANING, ClassifierModel, check_bool_option,
                                 check_rate_option, init_weights, zero_init_residual_branches)
from cnnlab.models._registry import register_model

# Section 2 of the paper, per stage: (blocks B, channels C). Stages 2-4 start with a norm and a
# 2x2/2 conv that halves the resolution and changes the width.
CONVNEXT_CFGS = {
    "convnext_tiny": (
        (3, 96),  # stage 1: 56x56 at a 224 input
        (3, 192),  # stage 2: 28x28
        (9, 384),  # stage 3: 14x14
        (3, 768),  # stage 4: 7x7
    ),
}
STEM_PATCH = 4  # the stem is a 4x4 conv with stride 4: non-overlapping patches, like a ViT's
DOWNSAMPLE = 2  # each downsampling layer is a 2x2 conv with stride 2
NORM_EPS = 1e-6  # the reference code's (and torchvision's) LayerNorm epsilon


class ConvNeXt(ClassifierModel):
    """Stem, four stages of ConvNeXt blocks, global average pooling, norm, FC.

    Args:
        stages: per stage, (number of blocks, channels).
        layer_scale_init: initial per-channel scale of every block's branch (None: no scale).
        drop_path_rate: stochastic depth of the last block; block i of N gets
            rate * i / (N - 1), rising linearly from 0 (the reference code's rule).
        zero_init_residual: start every block as the identity (zero layer scale).
        norm_eps: epsilon of the norm layers when ``norm`` is a name.
    """

    def __init__(
        self,
        stages,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="ln2d",
        act="gelu",
        drop_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        drop_path_rate: float = 0.1,
        zero_init_residual: bool = False,
        norm_eps: float = NORM_EPS,
    ) -> None:
        super().__init__()
        drop_path_rate = check_rate_option("drop_path_rate", drop_path_rate, DROP_PATH_MEANING)
        if layer_scale_init is not None and not (is_finite_number(layer_scale_init) and layer_scale_init >= 0):
            raise CnnlabError(f"layer_scale_init={shown_value(layer_scale_init)} must be a number of at least 0, or "
                              "null or 0 for no layer scale (the initial per-channel scale of every block's branch; "
                              "the paper's is 1e-6).")
        # eps is bound to named norms only: a layer type or partial the caller passes is used as given.
        norm_layer = get_norm_layer(norm, eps=norm_eps) if isinstance(norm, str) else get_norm_layer(norm)
        if _builds_instance_norm(norm_layer):
            raise CnnlabError(
                "convnext normalises the pooled feature vector before its classifier, and instance norm "
                "cannot normalise a single pixel: choose norm ln2d (the paper's), ln, gn or bn."
            )
        act_layer = get_act_layer(act)

        stem_chs = stages[0][1]
        layers: list[tuple[str, nn.Module]] = [
            # (B, C, H, W) -> (B, 96, H/4, W/4). The conv keeps its bias before the norm, as torchvision.
            ("stem", ConvNormAct(in_chans, stem_chs, STEM_PATCH, STEM_PATCH, padding=0, bias=True,
                                 norm_layer=norm_layer, act_layer=None)),
        ]
        total_blocks = sum(num_blocks for num_blocks, _ in stages)
        block_index = 0
        chs = stem_chs
        for stage_index, (num_blocks, dim) in enumerate(stages, start=1):
            if stage_index > 1:
                # norm -> 2x2/2 conv: (B, chs, H, W) -> (B, dim, H/2, W/2). The pre-activation order
                # of ConvNormAct with no activation is exactly "norm then conv".
                layers.append((f"downsample{stage_index}", ConvNormAct(
                    chs, dim, DOWNSAMPLE, DOWNSAMPLE, padding=0, bias=True,
                    norm_layer=norm_layer, act_layer=None, preact=True)))
            blocks = []
            for _ in range(num_blocks):
                drop_path = drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(ConvNeXtBlock(dim, norm_layer, act_layer, layer_scale_init, drop_path))
                block_index += 1
            layers.append((f"stage{stage_index}", nn.Sequential(*blocks)))
            chs = dim

        self.features = nn.Sequential(OrderedDict(layers))  # (B, C, H, W) -> (B, 768, H/32, W/32)
        # The last block's sum is not normalised; the pooled vector is, before the classifier.
        head: list[nn.Module] = []
        if not is_no_norm(norm_layer):
            head.append(PooledNorm(chs, norm_layer))
        if drop_rate > 0:
            head.append(nn.Dropout(drop_rate))
        # (B, 768, h, w) -> pool -> (B, 768) -> norm, dropout -> fc -> (B, num_classes)
        self.build_head(chs, num_classes, head=nn.Sequential(*head))
        init_weights(self, act_layer)  # leaves layer_scale, a parameter of the block itself, as set
        if check_bool_option("zero_init_residual", zero_init_residual, ZERO_INIT_RESIDUAL_MEANING):
            zero_init_residual_branches(self)


@register_model(family="convnext", min_size=32, paper="Liu et al. 2022", torchvision="convnext_tiny")
def convnext_tiny(**kwargs) -> ConvNeXt:
    return ConvNeXt(CONVNEXT_CFGS["convnext_tiny"], **kwargs)


def _builds_instance_norm(norm_layer) -> bool:
    with torch.device("meta"):
        return isinstance(norm_layer(8), nn.modules.instancenorm._InstanceNorm)
