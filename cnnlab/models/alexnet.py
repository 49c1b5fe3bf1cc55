"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2014).

AlexNet follows the lecture's layer table (the single-GPU "one weird trick" variant that
torchvision also builds: 64-192-384-256-256 filters) at the lecture's 227x227 input, where conv1
gives 64x56x56. ZFNet is "a bigger AlexNet": conv1 7x7 stride 2 instead of 11x11 stride 4, and
conv3-5 with 512, 1024, 512 filters.

``lrn=True`` adds the papers' normalisation across channels after conv1 and conv2: AlexNet's local
response normalisation after the ReLU and before the max pool (Krizhevsky et al. 2012, section 3.3
and 3.5), ZFNet's "contrast normalization across feature maps" after the ReLU and the max pool
(Zeiler & Fergus 2014, Fig. 3). The lecture notes call it obsolete; it is here to compare.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.models._base import ClassifierModel, init_weights
from cnnlab.models._registry import register_model

# Where a row's normalisation across channels goes (with lrn=True), relative to its max pool.
LRN_BEFORE_POOL = "before_pool"  # AlexNet: conv -> ReLU -> LRN -> max pool
LRN_AFTER_POOL = "after_pool"  # ZFNet: conv -> ReLU -> max pool -> contrast normalisation

# One row per conv layer: (out_channels, kernel, stride, padding, max pool after as
# (kernel, stride, padding) or None, where the LRN goes or None).
ALEXNET_CFG = (
    (64, 11, 4, 2, (3, 2, 0), LRN_BEFORE_POOL),  # conv1: 227 -> 56, pool1 -> 27
    (192, 5, 1, 2, (3, 2, 0), LRN_BEFORE_POOL),  # conv2: 27 -> 27, pool2 -> 13
    (384, 3, 1, 1, None, None),  # conv3: 13
    (256, 3, 1, 1, None, None),  # conv4: 13
    (256, 3, 1, 1, (3, 2, 0), None),  # conv5: 13, pool3 -> 6
)
ZFNET_CFG = (
    (96, 7, 2, 1, (3, 2, 1), LRN_AFTER_POOL),  # conv1: 224 -> 110, pool1 -> 55
    (256, 5, 2, 0, (3, 2, 1), LRN_AFTER_POOL),  # conv2: 55 -> 26, pool2 -> 13
    (512, 3, 1, 1, None, None),  # conv3: 13
    (1024, 3, 1, 1, None, None),  # conv4: 13
    (512, 3, 1, 1, (3, 2, 0), None),  # conv5: 13, pool3 -> 6
)
FC_WIDTH = 4096  # fc6 and fc7
POOL_SIZE = 6  # conv5's pooled map at the paper's input; other inputs are pooled adaptively to it

# Local response normalisation, AlexNet section 3.3: b_i = a_i / (k + alpha * sum_j a_j^2)^beta, the sum over
# the n channels j centred on i (clipped at the first and last channel), constants set on a validation set.
# Zeiler & Fergus give no constants for their contrast normalisation; ZFNet uses AlexNet's.
LRN_SIZE = 5  # n: channels in the window
LRN_ALPHA = 1e-4  # alpha
LRN_BETA = 0.75  # beta
LRN_K = 2.0  # k
# torch's LocalResponseNorm computes k + (alpha / n) * sum (F.local_response_norm: an average pool over the
# zero-padded window, always divided by n, also at the edges), so the paper's alpha is passed as n * alpha.
# (Caffe's LRN has the same alpha / n form: an alpha copied from a Caffe model file is already divided by n.)
LRN_TORCH_ALPHA = LRN_SIZE * LRN_ALPHA


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's LRN, (B, C, H, W) -> (B, C, H, W)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_TORCH_ALPHA, beta=LRN_BETA, k=LRN_K)


class AlexNet(ClassifierModel):
    """Five convs and three fully connected layers; also builds ZFNet from its table.

    Args:
        lrn: add the paper's local response normalisation where the table places it (conv1, conv2).
    """

    def __init__(
        self,
        cfg=ALEXNET_CFG,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="none",
        act="relu",
        drop_rate: float = 0.5,
        lrn: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(lrn, bool):
            raise CnnlabError(f"lrn={lrn!r} must be true or false (add the paper's local response normalisation).")
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers: list[nn.Module] = []
        chs = in_chans
        for out_chs, kernel, stride, padding, pool, lrn_place in cfg:
            conv = ConvNormAct(chs, out_chs, kernel, stride, padding, norm_layer=norm_layer, act_layer=act_layer)
            layers.append(conv)
            after_conv = [] if pool is None else [nn.MaxPool2d(*pool)]
            if lrn and lrn_place is not None:
                position = 0 if lrn_place == LRN_BEFORE_POOL else len(after_conv)
                after_conv.insert(position, local_response_norm())
            layers.extend(after_conv)
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
