"""ResNet and its family.

* ImageNet ResNet-18/34/50/101/152 (He et al. 2016, "Deep Residual Learning", Table 1), with the
  bottleneck's stride on its 3x3 conv as in torchvision ("ResNet v1.5").
* ResNeXt-50 32x4d (Xie et al. 2017) and Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): the
  same bottleneck net with a grouped or a wider 3x3 conv.
* Pre-activation ResNets (He et al. 2016, "Identity Mappings"): norm-act-conv blocks, a bare conv
  stem, and a final norm + act after the last stage.
* The CIFAR nets of section 4.2: 6n+2 layers, option-A (zero-padding) shortcuts, and the "plain"
  nets of the same depth without shortcuts, for the paper's plain-vs-residual comparison.
* The same CIFAR table with pre-activation blocks ("Identity Mappings", section 4, which
  reports ResNet-110 at 1.7M parameters): the 6n+2 nets "as presented in" the first paper, so with
  the same option-A shortcuts, plus the pre-activation stem and final norm + act of the ImageNet form.
* The bottleneck CIFAR nets of "Identity Mappings" (ResNet-164 and ResNet-1001, 1.7M and 10.2M
  parameters in the paper, figures that match a count without the norms' scales and shifts: 10.33M
  with them): 9n+2 layers, the same three stages with pre-activation bottlenecks whose 3x3 convs are
  16, 32 and 64 wide (outputs 64, 128, 256), and projection shortcuts where the shape changes, as in
  the paper's code (KaimingHe/resnet-1k-layers).

Every one of them takes ``se=r``: Squeeze-and-Excitation with reduction ratio r on each block's
residual branch (SE-ResNet, Hu et al. 2018; SE-ResNet-50 at r = 16 has 28.1M parameters).

Layer order matches torchvision's resnets tensor for tensor (stem conv, stem bn, layer1..layer4
blocks, fc), so torchvision weights load by position.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

from torch import nn

from cnnlab.errors import CnnlabError, shown_value
from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.layers.norm import is_no_norm
from cnnlab.layers.se import make_se_layer
from cnnlab.layers.residual import (
    BasicBlock,
    Bottleneck,
    NormAct,
    PreActBasicBlock,
    PreActBottleneck,
    SHORTCUTS,
)
from cnnlab.models._base import (DROP_PATH_MEANING, ClassifierModel, check_rate_option, check_whole_option,
                                 check_zero_init_residual, init_weights, zero_init_residual_branches)
from cnnlab.models._registry import register_model

# Table 1 of He et al. 2016: per stage, (width 'planes' of its 3x3 convs, stride of its first
# block). A basic block outputs `planes` channels, a bottleneck 4 x planes.
IMAGENET_STAGES = (
    (64, 1),  # conv2_x: 56x56 at a 224 input (the stem's conv and max pool already divided by 4)
    (128, 2),  # conv3_x: 28x28
    (256, 2),  # conv4_x: 14x14
    (512, 2),  # conv5_x: 7x7
)
# Table 1, blocks per stage (conv2_x, conv3_x, conv4_x, conv5_x) for each depth. The depth counts
# weighted layers: the stem conv, the convs of every block (2 basic, 3 bottleneck) and the fc.
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# Section 4.2: a 3x3 conv with 16 filters, then three stages of n basic blocks on 32x32, 16x16 and
# 8x8 maps, then global average pooling and the fc. "Identity Mappings" keeps the table for its
# bottleneck nets: the planes are then the width of each bottleneck's 3x3 conv, and a stage outputs
# 4 x planes channels (64, 128, 256).
CIFAR_STAGES = (
    (16, 1),  # 32x32
    (32, 2),  # 16x16
    (64, 2),  # 8x8
)
# Weighted layers of one block: its convs (a projection shortcut is not counted, as in the papers'
# depths). A CIFAR net of n blocks per stage has 3 x n x convs + 2 layers: 6n+2 (basic), 9n+2 (bottleneck).
CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}

BLOCKS = {  # (block kind, pre-activation) -> block type
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


def cifar_blocks_per_stage(depth: int, kind: str = "basic") -> tuple[int, ...]:
    """n blocks in each of the three stages of a CIFAR net of ``depth`` weighted layers.

    Those layers are the stem conv, 3 stages x n blocks x the block's convs, and the fc: 6n+2 for
    basic blocks (section 4.2), 9n+2 for bottlenecks ("Identity Mappings": 164 is n = 18, 1001 is n = 111).
    """
    convs_per_block = CONVS_PER_BLOCK[kind]
    convs_in_stages = depth - 2
    layers_per_n = convs_per_block * len(CIFAR_STAGES)
    if convs_in_stages <= 0 or convs_in_stages % layers_per_n:
        raise ValueError(f"a CIFAR ResNet of {kind} blocks has {layers_per_n}n+2 layers; {depth} is not of that form")
    n = convs_in_stages // layers_per_n
    return (n,) * len(CIFAR_STAGES)


class ResNet(ClassifierModel):
    """A stem, stages of residual blocks, global average pooling and a linear classifier.

    Args:
        block: block type (BasicBlock, Bottleneck or their pre-activation versions).
        stages: per stage, (number of blocks, planes, stride of the first block).
        stem: "imagenet" (7x7/2 conv + 3x3/2 max pool: H/4) or "cifar" (one 3x3 conv: H/1).
        shortcut: "projection" (option B), "zero_pad" (option A, parameter-free) or "none" (plain net).
        groups, base_width: the bottleneck's 3x3 conv is groups x (planes * base_width / 64) wide.
        drop_rate: dropout before the fc.
        drop_path_rate: stochastic depth of the last block; earlier blocks get a linearly smaller
            rate, block l of L gets rate * l / L (Huang et al. 2016).
        zero_init_residual: start every residual branch at zero, each block as the identity
            (Goyal et al. 2017).
        se: Squeeze-and-Excitation reduction ratio r (16 in the paper) on every block's branch, before
            the addition; 0 or None: none.
    """

    def __init__(
        self,
        block: type,
        stages: Sequence[tuple[int, int, int]],
        *,
        stem: str = "imagenet",
        shortcut: str = "projection",
        groups: int = 1,
        base_width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm="bn",
        act="relu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_residual: bool = False,
        se: Optional[int] = None,
    ) -> None:
        super().__init__()
        drop_path_rate = check_rate_option("drop_path_rate", drop_path_rate, DROP_PATH_MEANING)
        if shortcut == "none" and drop_path_rate > 0:
            raise CnnlabError("drop_path_rate drops residual branches; a plain net (no shortcuts) has none.")
        if shortcut not in SHORTCUTS:
            raise CnnlabError(f"shortcut={shown_value(shortcut)} is not a shortcut: choose projection (option B), "
                              "zero_pad (option A, parameter-free) or none (a plain net).")
        zero_init_residual = check_zero_init_residual(
            zero_init_residual, shortcut != "none", "A plain net (shortcut=none, as plain20 to plain110 build it)",
            instead="build the residual net of the same depth (resnet20 for plain20)")
        groups = check_whole_option("groups", groups, 1, "groups of the bottleneck's 3x3 conv, 32 in ResNeXt-50")
        base_width = check_whole_option("base_width", base_width, 1, "channels per group of the bottleneck's 3x3 "
                                        "conv at the first stage: 64 in ResNet, 4 in ResNeXt-50 32x4d, 128 in Wide ResNet-50-2")
        if block.expansion == 1 and (groups, base_width) != (1, 64):
            raise CnnlabError(f"groups={groups}, base_width={base_width}: a network of basic blocks has no grouped "
                              "or widened form (ResNeXt and Wide ResNet widen the bottleneck's 3x3 conv); build "
                              "a bottleneck net such as resnet50, resnext50_32x4d or wide_resnet50_2.")
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        se_layer = make_se_layer(se, act_layer)  # None when se is 0 / None
        stem_chs = stages[0][1]  # the stem outputs as many channels as the first stage's planes

        if block.is_preact:
            # A bare conv: the first block normalises and activates it before splitting into branch
            # and shortcut ("Identity Mappings", section 4), so a norm here would be doubled. That
            # norm also cancels a bias, so the conv has one only when there is no norm.
            stem_kwargs = dict(bias=is_no_norm(norm_layer), norm_layer=None, act_layer=None)
        else:
            stem_kwargs = dict(norm_layer=norm_layer, act_layer=act_layer)
        layers: list[tuple[str, nn.Module]] = []
        if stem == "imagenet":
            # (B, C, H, W) -> 7x7/2 conv -> (B, 64, H/2, W/2) -> 3x3/2 max pool -> (B, 64, H/4, W/4)
            layers.append(("stem", ConvNormAct(in_chans, stem_chs, 7, stride=2, **stem_kwargs)))
            layers.append(("stem_pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
        elif stem == "cifar":
            # (B, C, H, W) -> 3x3 conv -> (B, 16, H, W)
            layers.append(("stem", ConvNormAct(in_chans, stem_chs, 3, **stem_kwargs)))
        else:
            raise ValueError(f"unknown stem '{stem}', choose imagenet or cifar")

        total_blocks = sum(num_blocks for num_blocks, _, _ in stages)
        block_index = 0
        chs = stem_chs
        for stage_index, (num_blocks, planes, stride) in enumerate(stages, start=1):
            blocks = []
            for i in range(num_blocks):
                block_index += 1
                blocks.append(block(
                    chs,
                    planes,
                    stride if i == 0 else 1,  # only the first block of a stage changes the size
                    groups=groups,
                    base_width=base_width,
                    shortcut=shortcut,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    drop_path=drop_path_rate * block_index / total_blocks,
                    se_layer=se_layer,
                ))
                chs = planes * block.expansion
            layers.append((f"stage{stage_index}", nn.Sequential(*blocks)))
        if block.is_preact:
            # The last block's sum is not normalised or activated; the paper adds both before pooling.
            layers.append(("final_norm", NormAct(chs, norm_layer, act_layer)))

        self.features = nn.Sequential(OrderedDict(layers))  # (B, C, H, W) -> (B, chs, H/s, W/s)
        self.build_head(chs, num_classes, drop_rate=drop_rate)  # (B, F, h, w) -> (B, num_classes)
        init_weights(self, act_layer)
        if zero_init_residual:
            zero_init_residual_branches(self)


def _imagenet_resnet(depth: int, options: dict, preact: bool = False, **fixed) -> ResNet:
    """``options``: the caller's, kept apart from ``preact`` and ``fixed`` (what makes the named variant) so
    that ``resnet18(preact=True)`` is refused as an unknown option rather than building another network, and
    an option the variant fixes (resnext50_32x4d's groups) is refused as given twice."""
    kind, blocks_per_stage = IMAGENET_DEPTHS[depth]
    stages = [(n, planes, stride) for n, (planes, stride) in zip(blocks_per_stage, IMAGENET_STAGES)]
    return ResNet(BLOCKS[kind, preact], stages, stem="imagenet", **fixed, **options)


def cifar_stages(depth: int, kind: str = "basic") -> list[tuple[int, int, int]]:
    """The (blocks, planes, stride) rows of the CIFAR net of ``depth`` layers of ``kind`` blocks
    (6n+2 basic, 9n+2 bottleneck)."""
    blocks_per_stage = cifar_blocks_per_stage(depth, kind)
    return [(n, planes, stride) for n, (planes, stride) in zip(blocks_per_stage, CIFAR_STAGES)]


def _cifar_resnet(depth: int, options: dict, shortcut: str, preact: bool = False, kind: str = "basic") -> ResNet:
    """``options``: the caller's, kept apart as in :func:`_imagenet_resnet`, so that ``resnet20(preact=True)``
    is refused (preact_resnet20 is a model of its own). ``preact``: the pre-activation block ("Identity
    Mappings") on the same table and shortcuts. ``kind``: "bottleneck" for the 9n+2 nets of "Identity Mappings"."""
    return ResNet(BLOCKS[kind, preact], cifar_stages(depth, kind), stem="cifar", shortcut=shortcut, **options)


_RESNET = dict(family="resnet", min_size=32, paper="He et al. 2016")
_PREACT = dict(family="preact_resnet", min_size=32, paper="He et al. 2016 (Identity Mappings)")
_CIFAR = dict(family="resnet_cifar", default_input=(3, 32, 32), min_size=28, paper="He et al. 2016 (sec. 4.2)")
_PLAIN = dict(family="plain_cifar", default_input=(3, 32, 32), min_size=28, paper="He et al. 2016 (sec. 4.2)")
_PREACT_CIFAR = dict(family="preact_resnet_cifar", default_input=(3, 32, 32), min_size=28,
                     paper="He et al. 2016 (Identity Mappings, sec. 4)")


@register_model(**_RESNET, torchvision="resnet18")
def resnet18(**kwargs) -> ResNet:
    return _imagenet_resnet(18, kwargs)


@register_model(**_RESNET, torchvision="resnet34")
def resnet34(**kwargs) -> ResNet:
    return _imagenet_resnet(34, kwargs)


@register_model(**_RESNET, torchvision="resnet50")
def resnet50(**kwargs) -> ResNet:
    return _imagenet_resnet(50, kwargs)


@register_model(**_RESNET, torchvision="resnet101")
def resnet101(**kwargs) -> ResNet:
    return _imagenet_resnet(101, kwargs)


@register_model(**_RESNET, torchvision="resnet152")
def resnet152(**kwargs) -> ResNet:
    return _imagenet_resnet(152, kwargs)


@register_model(family="resnet", min_size=32, paper="Xie et al. 2017", torchvision="resnext50_32x4d")
def resnext50_32x4d(**kwargs) -> ResNet:
    return _imagenet_resnet(50, kwargs, groups=32, base_width=4)  # 32 groups of 4 channels


@register_model(family="resnet", min_size=32, paper="Zagoruyko & Komodakis 2016", torchvision="wide_resnet50_2")
def wide_resnet50_2(**kwargs) -> ResNet:
    return _imagenet_resnet(50, kwargs, base_width=2 * 64)  # bottlenecks twice as wide


@register_model(**_PREACT)
def preact_resnet18(**kwargs) -> ResNet:
    return _imagenet_resnet(18, kwargs, preact=True)


@register_model(**_PREACT)
def preact_resnet34(**kwargs) -> ResNet:
    return _imagenet_resnet(34, kwargs, preact=True)


@register_model(**_PREACT)
def preact_resnet50(**kwargs) -> ResNet:
    return _imagenet_resnet(50, kwargs, preact=True)


@register_model(**_CIFAR)
def resnet8(**kwargs) -> ResNet:
    """n = 1: the smallest member of section 4.2's 6n+2 family, for fast runs on small data."""
    return _cifar_resnet(8, kwargs, shortcut="zero_pad")


@register_model(**_CIFAR)
def resnet20(**kwargs) -> ResNet:
    return _cifar_resnet(20, kwargs, shortcut="zero_pad")


@register_model(**_CIFAR)
def resnet32(**kwargs) -> ResNet:
    return _cifar_resnet(32, kwargs, shortcut="zero_pad")


@register_model(**_CIFAR)
def resnet44(**kwargs) -> ResNet:
    return _cifar_resnet(44, kwargs, shortcut="zero_pad")


@register_model(**_CIFAR)
def resnet56(**kwargs) -> ResNet:
    return _cifar_resnet(56, kwargs, shortcut="zero_pad")


@register_model(**_CIFAR)
def resnet110(**kwargs) -> ResNet:
    return _cifar_resnet(110, kwargs, shortcut="zero_pad")


@register_model(**_PLAIN)
def plain20(**kwargs) -> ResNet:
    return _cifar_resnet(20, kwargs, shortcut="none")


@register_model(**_PLAIN)
def plain32(**kwargs) -> ResNet:
    return _cifar_resnet(32, kwargs, shortcut="none")


@register_model(**_PLAIN)
def plain44(**kwargs) -> ResNet:
    return _cifar_resnet(44, kwargs, shortcut="none")


@register_model(**_PLAIN)
def plain56(**kwargs) -> ResNet:
    return _cifar_resnet(56, kwargs, shortcut="none")


@register_model(**_PLAIN)
def plain110(**kwargs) -> ResNet:
    return _cifar_resnet(110, kwargs, shortcut="none")


# "Identity Mappings" trains the pre-activation unit on CIFAR with ResNet-110 (1.7M parameters);
# 20 is the smallest for fast runs and 56 the depth of the residual-init experiment.
@register_model(**_PREACT_CIFAR)
def preact_resnet20(**kwargs) -> ResNet:
    return _cifar_resnet(20, kwargs, shortcut="zero_pad", preact=True)


@register_model(**_PREACT_CIFAR)
def preact_resnet56(**kwargs) -> ResNet:
    return _cifar_resnet(56, kwargs, shortcut="zero_pad", preact=True)


@register_model(**_PREACT_CIFAR)
def preact_resnet110(**kwargs) -> ResNet:
    return _cifar_resnet(110, kwargs, shortcut="zero_pad", preact=True)


# "Identity Mappings", section 4: the bottleneck nets it trains to 1001 layers (1.7M and 10.2M parameters
# in the paper). Its code (KaimingHe/resnet-1k-layers) gives each stage's first block a bare 1x1 projection
# shortcut (16 -> 64 channels at stride 1 in stage 1, then 64 -> 128 and 128 -> 256 at stride 2) that reads
# the block's pre-activated input, and keeps the identity elsewhere: the "projection" shortcut of the
# ImageNet nets, not option A. One choice differs from that code: it strides the first 1x1 conv, and
# PreActBottleneck strides the 3x3, as the zoo's other bottlenecks do (the same parameters; 3.1M more
# MACs at 32x32, docs/models.md).
@register_model(**_PREACT_CIFAR)
def preact_resnet164(**kwargs) -> ResNet:
    """n = 18 bottlenecks per stage."""
    return _cifar_resnet(164, kwargs, shortcut="projection", preact=True, kind="bottleneck")


@register_model(**_PREACT_CIFAR)
def preact_resnet1001(**kwargs) -> ResNet:
    """n = 111 bottlenecks per stage."""
    return _cifar_resnet(1001, kwargs, shortcut="projection", preact=True, kind="bottleneck")
