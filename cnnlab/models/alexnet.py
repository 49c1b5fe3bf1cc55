"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2014).

AlexNet follows the lecture's layer table (the single-GPU "one weird trick" variant that
torchvision also builds: 64-192-384-256-256 filters) at the lecture's 227x227 input, where conv1
gives 64x56x56. ZFNet is "a bigger AlexNet": conv1 7x7 stride 2 instead of 11x11 stride 4, and
conv3-5 with 512, 1024, 512 filters.
"""

from __future__ import annotations

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.models._base import ClassifierModel, init_weights
from cnnlab.models._registry import register_model

# One row per conv layer: (out_channels, kernel, stride, padding, max pool after as
# (kernel, stride, padding) or None).
ALEXNET_CFG = (
    (64, 11, 4, 2, (3, 2, 0)),  # conv1: 227 -> 56, pool1 -> 27
    (192, 5, 1, 2, (3, 2, 0)),  # conv2: 27 -> 27, pool2 -> 13
    (384, 3, 1, 1, None),  # conv3: 13
    (256, 3, 1, 1, None),  # conv4: 13
    (256, 3, 1, 1, (3, 2, 0)),  # conv5: 13, pool3 -> 6
)
ZFNET_CFG = (
    (96, 7, 2, 1, (3, 2, 1)),  # conv1: 224 -> 110, pool1 -> 55
    (256, 5, 2, 0, (3, 2, 1)),  # conv2: 55 -> 26, pool2 -> 13
    (512, 3, 1, 1, None),  # conv3: 13
    (1024, 3, 1, 1, None),  # conv4: 13
    (512, 3, 1, 1, (3, 2, 0)),  # conv5: 13, pool3 -> 6
)
FC_WIDTH = 4096  # fc6 and fc7
POOL_SIZE = 6  # conv5's pooled map at the paper's input; other inputs are pooled adaptively to it


class AlexNet(ClassifierModel):
    """Five convs and three fully connected layers; also builds ZFNet from its table."""

    def __init__(
        self,
        cfg=ALEXNET_CFG,
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
        for out_chs, kernel, stride, padding, pool in cfg:
            conv = ConvNormAct(chs, out_chs, kernel, stride, padding, norm_layer=norm_layer, act_layer=act_layer)
            layers.append(conv)
            if pool is not None:
                layers.append(nn.MaxPool2d(*pool))
            chs = out_chs
        self.features = nn.Sequential(*layers)  # (B, C, 227, 227) -> (B, 256, 6, 6)
        head = nn.Sequential(  # fc6, fc7 with dropout before each: (B, 9216) -> (B, 4096)
            nn.Dropout(drop_rate),
            nn.Linear(chs * POOL_SIZE * POOL_SIZE, FC_WIDTH),
            act_layer(),
            nn.Dropout(drop_rate),
            nn.Linear(FC_WIDTH, FC_WIDTH),
            act_layer(),
        )
        # Adaptive pooling to the paper's conv5 map size lets smaller inputs reach the FC layers.
        self.build_head(FC_WIDTH, num_classes, head=head, pool_size=POOL_SIZE)
        init_weights(self, act_layer)


@register_model(
    family="alexnet", default_input=(3, 227, 227), min_size=64, paper="Krizhevsky et al. 2012", torchvision="alexnet"
)
def alexnet(**kwargs) -> AlexNet:
    return AlexNet(ALEXNET_CFG, **kwargs)


@register_model(family="alexnet", default_input=(3, 224, 224), min_size=64, paper="Zeiler & Fergus 2014")
def zfnet(**kwargs) -> AlexNet:
    return AlexNet(ZFNET_CFG, **kwargs)
