"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks", Table 1 columns A, B, D, E).

Every conv is 3x3, stride 1, padding 1; every pool is 2x2 max, stride 2. Five stages
conv..-pool; the classifier is FC-4096, FC-4096, FC-classes.

The lecture's point about VGG is that it is built from one repeatable block, so a network is a
configuration: "low-spec" and "high-spec" networks differ only in their table. ``cfg`` takes any
such table, and ``fc_width=0`` swaps the two FC-4096 layers for NiN's global average pooling, the
head every later network in the lecture uses. ``vgg_mini`` is such a low-spec configuration for
28x28/32x32 images (the Fashion-MNIST recipe).
"""

from __future__ import annotations

from torch import nn

from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.errors import CnnlabError, shown_value, whole_number
from cnnlab.models._base import ClassifierModel, check_whole_option, init_weights
from cnnlab.models._registry import register_model

# Table 1 of the paper: per stage, (number of 3x3 convs, output channels). Each stage ends in a
# 2x2 max pool, so the feature map shrinks 32x: 224 -> 7.
VGG_CFGS = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),  # A
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),  # B
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),  # D
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),  # E
}
# A low-spec configuration for 28x28 or 32x32 images: a single cheap conv at full resolution, the
# channels doubling as the map halves, and four pools (28 -> 14 -> 7 -> 3 -> 1).
VGG_MINI_CFG = (
    (1, 24),  # 28x28 -> 14x14
    (1, 48),  # -> 7x7
    (1, 96),  # -> 3x3
    (1, 192),  # -> 1x1
)
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
        fc_width: int = FC_WIDTH,
        stem_stride: int = 1,
        pool_before_norm: bool = False,
    ) -> None:
        """``cfg``: per stage, (number of 3x3 convs, output channels), each stage ending in a 2x2
        max pool. ``fc_width``: width of the two hidden FC layers; 0 for global average pooling
        straight into the classifier (with dropout of ``drop_rate`` before it). ``stem_stride=2``:
        the first conv strides 2 in place of the first stage's pool, so that stage computes at half
        the resolution (a quarter of its conv FLOPs and activations). ``pool_before_norm=True``: each
        stage's pool runs between its last conv and that conv's norm and activation (conv -> pool ->
        norm -> act, airbench's order), so they work on a quarter of the elements; the convs, their
        FLOPs and the parameters are unchanged, and without a norm the network computes the same
        function (a max pool commutes with ReLU).
        """
        super().__init__()
        fc_width = check_whole_option("fc_width", fc_width, 0, "the hidden FC layers' width; 0: global average "
                                      "pooling straight into the classifier")
        if whole_number(stem_stride) not in (1, 2):
            raise CnnlabError(f"stem_stride={shown_value(stem_stride)} must be 1 (the paper's) or 2 (the first conv "
                              "downsamples in place of the first stage's pool).")
        if not isinstance(pool_before_norm, bool):
            raise CnnlabError(f"pool_before_norm={shown_value(pool_before_norm)} must be true or false: true runs each "
                              "stage's pool between its last conv and that conv's norm and activation.")
        cfg = _checked_cfg(cfg)
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers: list[nn.Module] = []
        chs = in_chans
        for stage, (num_convs, out_chs) in enumerate(cfg):
            pooled = not (stage == 0 and stem_stride == 2)  # a strided stem has already halved this stage's map
            for index in range(num_convs):
                stride = stem_stride if stage == index == 0 else 1
                pool = _stage_pool() if pooled and pool_before_norm and index == num_convs - 1 else None
                # The conv keeps its bias even before BatchNorm, as in torchvision's vgg*_bn, so
                # torchvision weights load and the parameter counts agree.
                layers.append(ConvNormAct(chs, out_chs, 3, stride=stride, norm_layer=norm_layer, act_layer=act_layer,
                                          bias=True, pool=pool))
                chs = out_chs
            if pooled and not pool_before_norm:
                layers.append(_stage_pool())
        self.features = nn.Sequential(*layers)  # (B, C, H, W) -> (B, chs, H/2^stages, W/2^stages)
        if fc_width == 0:
            # NiN's head: (B, chs, h, w) -> global average pool -> dropout -> fc -> (B, num_classes)
            self.build_head(chs, num_classes, drop_rate=drop_rate)
            init_weights(self, act_layer)
            return
        head = nn.Sequential(  # (B, 25088) -> (B, 4096)
            nn.Linear(chs * POOL_SIZE * POOL_SIZE, fc_width),
            act_layer(),
            nn.Dropout(drop_rate),
            nn.Linear(fc_width, fc_width),
            act_layer(),
            nn.Dropout(drop_rate),
        )
        # Adaptive pooling to the paper's conv5 map size lets smaller inputs reach the FC layers.
        self.build_head(fc_width, num_classes, head=head, pool_size=POOL_SIZE)
        init_weights(self, act_layer)


def _stage_pool() -> nn.MaxPool2d:
    """The 2x2 max pool, stride 2, that ends every stage: (B, C, H, W) -> (B, C, H/2, W/2)."""
    return nn.MaxPool2d(kernel_size=2, stride=2)


def _checked_cfg(cfg) -> tuple[tuple[int, int], ...]:
    """``cfg`` as a tuple of (convs, channels) pairs of whole numbers of at least 1, or a CnnlabError naming
    the stage that is not one (a malformed table otherwise failed deep in the loop as an unpacking error)."""
    example = "cfg=[[2, 64], [2, 128], [3, 256]] (vgg16's first three stages)"
    if isinstance(cfg, (str, bytes)) or not isinstance(cfg, (list, tuple)) or not cfg:
        raise CnnlabError(f"cfg={shown_value(cfg)} is not a VGG table: give one [convs, channels] pair per stage, "
                          f"e.g. {example}.")
    stages = []
    for index, stage in enumerate(cfg):
        pair = tuple(stage) if isinstance(stage, (list, tuple)) else None
        whole = [whole_number(value) for value in pair] if pair is not None and len(pair) == 2 else None
        if whole is None or any(value is None or value < 1 for value in whole):
            raise CnnlabError(f"cfg stage {index + 1} is {shown_value(stage)}: each stage of a VGG table is a pair "
                              f"[convs, channels] of whole numbers of at least 1 (3x3 convs, then a 2x2 max pool), "
                              f"e.g. {example}.")
        stages.append((whole[0], whole[1]))
    return tuple(stages)


def _vgg(name: str, bn: bool, **kwargs) -> VGG:
    if bn:
        kwargs.setdefault("norm", "bn")
    kwargs.setdefault("cfg", VGG_CFGS[name])
    return VGG(**kwargs)


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


@register_model(family="vgg", default_input=(3, 32, 32), min_size=28, paper="Simonyan & Zisserman 2015 (low-spec)")
def vgg_mini(**kwargs) -> VGG:
    for key, value in dict(cfg=VGG_MINI_CFG, fc_width=0, norm="bn", drop_rate=0.0).items():
        kwargs.setdefault(key, value)
    return VGG(**kwargs)
