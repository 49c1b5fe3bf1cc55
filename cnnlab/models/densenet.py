"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks", Table 1), laid out
as torchvision's ``densenet121`` so its weights load.

A 7x7/2 conv and 3x3/2 max pool stem, four dense blocks joined by transitions (which halve the
channels and the resolution), a final norm + act, global average pooling and one FC.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.layers.dense import DenseBlock, DenseTransition
from cnnlab.layers.norm import is_no_norm
from cnnlab.models._base import ClassifierModel, check_positive_option, check_whole_option, init_weights
from cnnlab.models._registry import register_model

# Table 1 of the paper: the number of dense layers (1x1 conv + 3x3 conv) in each block. A
# transition follows every block but the last. The name counts weighted layers: the stem conv,
# two convs per dense layer, one conv per transition and the FC (121 = 1 + 2 * 58 + 3 + 1).
DENSENET_CFGS = {
    "densenet121": (
        6,  # dense block 1: 56x56 at a 224 input
        12,  # dense block 2: 28x28
        24,  # dense block 3: 14x14
        16,  # dense block 4: 7x7
    ),
}
GROWTH_RATE = 32  # k: channels each dense layer adds
BN_SIZE = 4  # the bottleneck 1x1 conv outputs bn_size * k channels (DenseNet-B)
COMPRESSION = 0.5  # theta: a transition keeps this fraction of the channels (DenseNet-C)
STEM_GROWTH_MULTIPLE = 2  # "the initial convolution layer comprises 2k convolutions"


class DenseNet(ClassifierModel):
    """Dense blocks of ``block_config[i]`` layers each.

    Args:
        block_config: dense layers per block.
        growth_rate, bn_size, compression: k, the bottleneck factor and theta of the paper.
    """

    def __init__(
        self,
        block_config,
        growth_rate: int = GROWTH_RATE,
        bn_size: int = BN_SIZE,
        compression: float = COMPRESSION,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="bn",
        act="relu",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        growth_rate = check_whole_option("growth_rate", growth_rate, 1, f"k, the channels each dense layer adds; "
                                         f"the paper's is {GROWTH_RATE}")
        bn_size = check_whole_option("bn_size", bn_size, 1, f"each dense layer's 1x1 conv gives bn_size * k "
                                     f"channels; the paper's is {BN_SIZE}")
        compression = check_positive_option("compression", compression, f"theta, the share of channels a "
                                            f"transition keeps; the paper's is {COMPRESSION}", maximum=1.0)
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        stem_chs = STEM_GROWTH_MULTIPLE * growth_rate
        layers: list[tuple[str, nn.Module]] = [
            # (B, C, H, W) -> (B, 2k, H/2, W/2) -> max pool -> (B, 2k, H/4, W/4)
            ("stem", ConvNormAct(in_chans, stem_chs, 7, stride=2, norm_layer=norm_layer, act_layer=act_layer)),
            ("stem_pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        chs = stem_chs
        for index, num_layers in enumerate(block_config, start=1):
            block = DenseBlock(num_layers, chs, growth_rate, bn_size, norm_layer, act_layer)
            layers.append((f"block{index}", block))
            chs = block.out_chs  # chs + num_layers * k
            if index < len(block_config):
                transition = DenseTransition(chs, int(chs * compression), norm_layer, act_layer)
                layers.append((f"transition{index}", transition))
                chs = transition.out_chs
        # The last block ends in a conv (pre-activation layers), so normalise and activate before pooling.
        if not is_no_norm(norm_layer):
            layers.append(("final_norm", norm_layer(chs)))
        layers.append(("final_act", act_layer()))

        self.features = nn.Sequential(OrderedDict(layers))  # (B, C, H, W) -> (B, chs, H/32, W/32)
        self.build_head(chs, num_classes, drop_rate=drop_rate)  # (B, F, h, w) -> (B, num_classes)
        init_weights(self, act_layer)


@register_model(family="densenet", min_size=32, paper="Huang et al. 2017", torchvision="densenet121")
def densenet121(**kwargs) -> DenseNet:
    return DenseNet(DENSENET_CFGS["densenet121"], **kwargs)
