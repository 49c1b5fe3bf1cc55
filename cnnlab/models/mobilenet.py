"""MobileNet V1 (Howard et al. 2017, "MobileNets", Table 1) and V2 (Sandler et al. 2018,
"MobileNetV2", Table 2; laid out as torchvision's ``mobilenet_v2`` so its weights load).

Both shrink the input 32x (a stride-2 stem conv and four stride-2 blocks), so they run at 28x28
(-> 1x1) as well as at 224x224 (-> 7x7). The width multiplier ``width_mult`` (alpha in both
papers) scales every layer's channels, rounded to a multiple of 8. ``se=r`` adds Squeeze-and-Excitation
(Hu et al. 2018) after every depthwise conv, on its channels (the expanded width in V2; see
:mod:`cnnlab.layers.mobile`).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.layers.mobile import DepthwiseSeparable, InvertedResidual, make_divisible
from cnnlab.layers.se import make_se_layer
from cnnlab.models._base import (ZERO_INIT_RESIDUAL_MEANING, ClassifierModel, check_bool_option, check_positive_option,
                                 init_weights, zero_init_residual_branches)
from cnnlab.models._registry import register_model

CHANNEL_DIVISOR = 8  # width-multiplied channel counts are rounded to multiples of this
WIDTH_MULT_MEANING = "alpha, multiplies every layer's channels: 1.0, 0.75, 0.5 or 0.25 in the paper"

# Table 1 of Howard et al. 2017 after the stem (a full 3x3/2 conv to 32 channels): per row,
# (n repeats, stride of the depthwise conv, output channels of the pointwise conv).
MOBILENET_V1_STEM_CHS = 32
MOBILENET_V1_LAYERS = (
    (1, 1, 64),  # 112x112 at a 224 input
    (1, 2, 128),  # 56x56
    (1, 1, 128),
    (1, 2, 256),  # 28x28
    (1, 1, 256),
    (1, 2, 512),  # 14x14
    (5, 1, 512),  # the "5x" row
    (1, 2, 1024),  # 7x7
    # Table 1 prints s2 here, but its own output size column stays 7x7: every implementation
    # (TF-slim, Keras) uses stride 1.
    (1, 1, 1024),
)

# Table 2 of Sandler et al. 2018 after the stem (a full 3x3/2 conv to 32 channels): per row,
# (t expansion factor, c output channels, n repeats, s stride of the first repeat).
MOBILENET_V2_STEM_CHS = 32
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),  # 112x112 at a 224 input
    (6, 24, 2, 2),  # 56x56
    (6, 32, 3, 2),  # 28x28
    (6, 64, 4, 2),  # 14x14
    (6, 96, 3, 1),  # 14x14
    (6, 160, 3, 2),  # 7x7
    (6, 320, 1, 1),  # 7x7
)
MOBILENET_V2_LAST_CHS = 1280  # the final 1x1 conv before pooling


class MobileNetV1(ClassifierModel):
    """A plain stack of depthwise-separable convs: no shortcuts, no bottlenecks.

    Args:
        width_mult: alpha, multiplies every layer's channels (1.0, 0.75, 0.5, 0.25 in the paper).
        se: Squeeze-and-Excitation reduction ratio after every depthwise conv; 0 or None: none.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="bn",
        act="relu",
        drop_rate: float = 1e-3,  # the Keras / TF-slim MobileNet default (keep probability 0.999)
        se: Optional[int] = None,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        se_layer = make_se_layer(se, act_layer)
        width_mult = check_positive_option("width_mult", width_mult, WIDTH_MULT_MEANING)
        chs = make_divisible(MOBILENET_V1_STEM_CHS * width_mult, CHANNEL_DIVISOR)
        # (B, C, H, W) -> (B, 32 alpha, H/2, W/2)
        layers: list[nn.Module] = [ConvNormAct(in_chans, chs, 3, stride=2, norm_layer=norm_layer, act_layer=act_layer)]
        for repeats, stride, out_chs in MOBILENET_V1_LAYERS:
            out_chs = make_divisible(out_chs * width_mult, CHANNEL_DIVISOR)
            for _ in range(repeats):
                layers.append(DepthwiseSeparable(chs, out_chs, stride, norm_layer, act_layer, se_layer))
                chs = out_chs
        self.features = nn.Sequential(*layers)  # -> (B, 1024 alpha, H/32, W/32)
        self.build_head(chs, num_classes, drop_rate=drop_rate)  # (B, F, h, w) -> (B, num_classes)
        init_weights(self, act_layer)


class MobileNetV2(ClassifierModel):
    """Inverted residual blocks with linear bottlenecks, then a 1x1 conv to 1280 channels.

    Args:
        width_mult: alpha, multiplies every layer's channels; the last conv is never narrowed
            below 1280 (section 5.1).
        zero_init_residual: start every block that has a shortcut as the identity.
        se: Squeeze-and-Excitation reduction ratio after every block's depthwise conv, applied to the
            expanded width; 0 or None: none.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="bn",
        act="relu6",
        drop_rate: float = 0.2,
        zero_init_residual: bool = False,
        se: Optional[int] = None,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        se_layer = make_se_layer(se, act_layer)
        width_mult = check_positive_option("width_mult", width_mult, WIDTH_MULT_MEANING)
        chs = make_divisible(MOBILENET_V2_STEM_CHS * width_mult, CHANNEL_DIVISOR)
        # (B, C, H, W) -> (B, 32 alpha, H/2, W/2)
        layers: list[nn.Module] = [ConvNormAct(in_chans, chs, 3, stride=2, norm_layer=norm_layer, act_layer=act_layer)]
        for expand_ratio, out_chs, repeats, stride in MOBILENET_V2_BLOCKS:
            out_chs = make_divisible(out_chs * width_mult, CHANNEL_DIVISOR)
            for i in range(repeats):
                block_stride = stride if i == 0 else 1  # only the first repeat changes the size
                layers.append(InvertedResidual(chs, out_chs, block_stride, expand_ratio, norm_layer, act_layer,
                                               se_layer))
                chs = out_chs
        last_chs = make_divisible(MOBILENET_V2_LAST_CHS * max(1.0, width_mult), CHANNEL_DIVISOR)
        layers.append(ConvNormAct(chs, last_chs, 1, norm_layer=norm_layer, act_layer=act_layer))
        self.features = nn.Sequential(*layers)  # -> (B, 1280, H/32, W/32)
        self.build_head(last_chs, num_classes, drop_rate=drop_rate)  # (B, F, h, w) -> (B, num_classes)
        init_weights(self, act_layer)
        if check_bool_option("zero_init_residual", zero_init_residual, ZERO_INIT_RESIDUAL_MEANING):
            zero_init_residual_branches(self)


_MOBILENET = dict(family="mobilenet", min_size=28)


@register_model(**_MOBILENET, paper="Howard et al. 2017")
def mobilenet_v1(**kwargs) -> MobileNetV1:
    return MobileNetV1(**kwargs)


@register_model(**_MOBILENET, paper="Sandler et al. 2018", torchvision="mobilenet_v2")
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)
