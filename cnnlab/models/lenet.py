"""LeNet-5 (LeCun et al. 1998): two conv/subsampling stages and three fully connected layers.

Differences from the paper, as the lecture teaches it: C3 connects to all six S2 maps (the paper
used a sparse connection table), subsampling is plain 2x2 average pooling, and the output is a
linear layer instead of RBF units.
"""

from __future__ import annotations

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.models._base import ClassifierModel, init_weights
from cnnlab.models._registry import register_model

# One row per conv stage: (out_channels, kernel); each is followed by 2x2 average pooling.
LENET5_CFG = (
    (6, 5),  # C1: 32x32 -> 6@28x28, S2 -> 6@14x14
    (16, 5),  # C3: -> 16@10x10, S4 -> 16@5x5
)
C5_SIZE = 5  # S4's map at the paper's 32x32 input; C5 is a 5x5 conv over it, i.e. a full connection
FC_WIDTHS = (120, 84)  # C5 and F6


class LeNet5(ClassifierModel):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="none",
        act="tanh",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers: list[nn.Module] = []
        chs = in_chans
        for out_chs, kernel in LENET5_CFG:
            layers.append(ConvNormAct(chs, out_chs, kernel, padding=0, norm_layer=norm_layer, act_layer=act_layer))
            layers.append(nn.AvgPool2d(2))
            chs = out_chs
        self.features = nn.Sequential(*layers)  # (B, 1, 32, 32) -> (B, 16, 5, 5)
        fully_connected: list[nn.Module] = []
        width = chs * C5_SIZE * C5_SIZE
        for out_features in FC_WIDTHS:  # C5 (a 5x5 conv over a 5x5 map = a linear layer), F6
            fully_connected += [nn.Linear(width, out_features), act_layer()]
            width = out_features
        fully_connected.append(nn.Dropout(drop_rate))
        # Pooling to 5x5 is the identity at 32x32 and lets other sizes (28x28 MNIST) reach C5 with
        # the paper's 16x5x5 input. Head: (B, 400) -> (B, 84) -> fc -> (B, num_classes).
        self.build_head(width, num_classes, head=nn.Sequential(*fully_connected), pool_size=C5_SIZE)
        init_weights(self, act_layer)


@register_model(family="lenet", default_input=(3, 32, 32), min_size=28, paper="LeCun et al. 1998")
def lenet5(**kwargs) -> LeNet5:
    return LeNet5(**kwargs)
