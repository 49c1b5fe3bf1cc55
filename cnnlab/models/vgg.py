"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks", Table 1 columns A, B, D, E).

Every conv is 3x3, stride 1, padding 1; every pool is 2x2 max, stride 2. Five stages
conv..-pool; the classifier is FC-4096, FC-4096, FC-classes.
"""

from __future__ import annotations

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.models._base import ClassifierModel, init_weights
from cnnlab.models._registry import register_model

# Table 1 of the paper: per stage, (number of 3x3 convs, output channels). Each stage ends in a
# 2x2 max pool, so the feature map shrinks 32x: 224 -> 7.
VGG_CFGS = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),  # A
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),  # B
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),  # D
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),  # E
}
FC_WIDTH = 4096  # both hidden fully connected layers
POOL_SIZE = 7  # the trunk's output at 224x224; smaller inputs are pooled adaptively to this


class VGG(ClassifierModel):
    def __init__(
        self,
        cfg,
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
        for num_convs, out_chs in cfg:
            for _ in range(num_convs):
                # The conv keeps its bias even before BatchNorm, as in torchvision's vgg*_bn, so
                # torchvision weights load and the parameter counts agree.
                layers.append(ConvNormAct(chs, out_chs, 3, norm_layer=norm_layer, act_layer=act_layer, bias=True))
                chs = out_chs
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)  # (B, C, H, W) -> (B, 512, H/32, W/32)
        head = nn.Sequential(  # (B, 25088) -> (B, 4096)
            nn.Linear(chs * POOL_SIZE * POOL_SIZE, FC_WIDTH),
            act_layer(),
            nn.Dropout(drop_rate),
            nn.Linear(FC_WIDTH, FC_WIDTH),
            act_layer(),
            nn.Dropout(drop_rate),
        )
        # Adaptive pooling to the paper's conv5 map size lets smaller inputs reach the FC layers.
        self.build_head(FC_WIDTH, num_classes, head=head, pool_size=POOL_SIZE)
        init_weights(self, act_layer)


def _vgg(name: str, bn: bool, **kwargs) -> VGG:
    if bn:
        kwargs.setdefault("norm", "bn")
    return VGG(VGG_CFGS[name], **kwargs)


_VGG = dict(family="vgg", min_size=32, paper="Simonyan & Zisserman 2015")


@register_model(**_VGG, torchvision="vgg11")
def vgg11(**kwargs) -> VGG:
    return _vgg("vgg11", bn=False, **kwargs)


@register_model(**_VGG, torchvision="vgg13")
def vgg13(**kwargs) -> VGG:
    return _vgg("vgg13", bn=False, **kwargs)


@register_model(**_VGG, torchvision="vgg16")
def vgg16(**kwargs) -> VGG:
    return _vgg("vgg16", bn=False, **kwargs)


@register_model(**_VGG, torchvision="vgg19")
def vgg19(**kwargs) -> VGG:
    return _vgg("vgg19", bn=False, **kwargs)


@register_model(**_VGG, torchvision="vgg11_bn")
def vgg11_bn(**kwargs) -> VGG:
    return _vgg("vgg11", bn=True, **kwargs)


@register_model(**_VGG, torchvision="vgg13_bn")
def vgg13_bn(**kwargs) -> VGG:
    return _vgg("vgg13", bn=True, **kwargs)


@register_model(**_VGG, torchvision="vgg16_bn")
def vgg16_bn(**kwargs) -> VGG:
    return _vgg("vgg16", bn=True, **kwargs)


@register_model(**_VGG, torchvision="vgg19_bn")
def vgg19_bn(**kwargs) -> VGG:
    return _vgg("vgg19", bn=True, **kwargs)
