"""GoogLeNet (Szegedy et al. 2015, "Going Deeper with Convolutions", Table 1), laid out as
torchvision's ``googlenet`` so its weights load.

A stem of plain convs (7x7/2, max pool, 1x1, 3x3, max pool), nine Inception modules in three stages
separated by max pools, global average pooling and one FC. Two auxiliary classifiers read the
outputs of 4a and 4d; in training their losses are added to the main one (weight 0.3 in the paper)
to push gradient into the lower layers; at inference they are unused.

torchvision's layout, which this follows: every conv is bias-free and followed by BatchNorm with
eps 1e-3 and ReLU (the paper predates BatchNorm); all max pools use ceil mode; the pool before
stage 5 is 2x2/2 rather than the paper's 3x3/2 (both give 7x7 at a 224 input); the "5x5" branch
uses a 3x3 kernel unless ``inception_5x5_kernel=5`` (see :class:`InceptionBlock`).

torchvision builds its pretrained GoogLeNet with ``transform_input=True``, which re-normalises
ImageNet-normalised images to mean 0.5 / std 0.5 per channel before the first conv (the weights
come from a TensorFlow port). This model has no such step: to use those weights, normalise images
with mean = std = (0.5, 0.5, 0.5).

``naive=True`` builds every Inception module as the paper's naive version (Fig. 2a: no 1x1 reductions,
no pool projection) with the same branch widths, to measure what the reductions save. Its widths
grow module by module, 416 channels after 3a up to 4944 after 5b, instead of 256 and 1024.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import CnnlabError, shown_value, whole_number
from cnnlab.layers import ConvNormAct, get_act_layer, get_norm_layer
from cnnlab.layers.inception import InceptionAux, InceptionBlock, InceptionWidths
from cnnlab.models._base import AuxLogits, ClassifierModel, check_rate_option, init_weights, like_model, new_linear
from cnnlab.models._registry import register_model

# The stem, Table 1 rows "convolution 7x7/2", "max pool 3x3/2", "convolution 3x3/1" (whose depth
# 2 is a 1x1 "reduce" conv then the 3x3), "max pool 3x3/2": (B, C, 224, 224) -> (B, 192, 28, 28).
STEM_CONV1_CHS = 64
STEM_CONV2_CHS = 64  # the 1x1 reduce
STEM_CONV3_CHS = 192

# Table 1 of the paper, one row per Inception module:
#   (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
# Each stage is followed by a stride-2 max pool of the given kernel (none after stage 5).
GOOGLENET_STAGES = (
    (  # 28x28 at a 224 input
        ("inception3a", 64, 96, 128, 16, 32, 32),  # -> 256 channels
        ("inception3b", 128, 128, 192, 32, 96, 64),  # -> 480
    ),
    (  # 14x14
        ("inception4a", 192, 96, 208, 16, 48, 64),  # -> 512, read by the first auxiliary classifier
        ("inception4b", 160, 112, 224, 24, 64, 64),  # -> 512
        ("inception4c", 128, 128, 256, 24, 64, 64),  # -> 512
        ("inception4d", 112, 144, 288, 32, 64, 64),  # -> 528, read by the second auxiliary classifier
        ("inception4e", 256, 160, 320, 32, 128, 128),  # -> 832
    ),
    (  # 7x7
        ("inception5a", 256, 160, 320, 32, 128, 128),  # -> 832
        ("inception5b", 384, 192, 384, 48, 128, 128),  # -> 1024
    ),
)
STAGE_POOL_KERNELS = (3, 2, None)  # max pool after each stage, stride 2 (torchvision: 2x2 before stage 5)
AUX_TAPS = ("inception4a", "inception4d")  # modules whose output feeds an auxiliary classifier

# torchvision's BasicConv2d uses BatchNorm eps 1e-3 (from the TensorFlow port); its weights expect it.
NORM_EPS = 1e-3
DEFAULT_NORM = "bn"  # after every conv, which is then bias-free (torchvision's BasicConv2d)
DEFAULT_ACT = "relu"


def googlenet_layers(norm=DEFAULT_NORM, act=DEFAULT_ACT, norm_eps: float = NORM_EPS):
    """(norm_layer, act_layer): the layer types GoogLeNet builds every conv with, from its options.

    Also for modules built alongside the model to compare with it (the bottleneck experiment's naive
    Inception module and single convs), so that they count the parameters GoogLeNet's own layers have.
    """
    # eps is bound to named norms only: a layer type or partial the caller passes is used as given.
    norm_layer = get_norm_layer(norm, eps=norm_eps) if isinstance(norm, str) else get_norm_layer(norm)
    return norm_layer, get_act_layer(act)


class GoogLeNet(ClassifierModel):
    """GoogLeNet with optional auxiliary classifiers.

    Args:
        aux_logits: build the two auxiliary classifiers. In training mode the model then returns
            :class:`AuxLogits` (main logits, (aux after 4a, aux after 4d)); in eval mode it returns
            the main logits only.
        aux_drop_rate: dropout inside each auxiliary classifier (0.7 in the paper).
        inception_5x5_kernel: kernel of the "5x5" branch: 3 as torchvision (its weights need it), 5
            as the paper.
        norm_eps: epsilon of the norm layers when ``norm`` is a name.
        naive: build the naive Inception module (Fig. 2a) instead of the one with 1x1 reductions.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm=DEFAULT_NORM,
        act=DEFAULT_ACT,
        drop_rate: float = 0.2,
        aux_logits: bool = True,
        aux_drop_rate: float = 0.7,
        inception_5x5_kernel: int = 3,
        norm_eps: float = NORM_EPS,
        naive: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(naive, bool):
            raise CnnlabError(f"naive={naive!r} must be true or false (build the naive Inception module of Fig. 2a).")
        aux_drop_rate = check_rate_option("aux_drop_rate", aux_drop_rate,
                                          "dropout inside each auxiliary classifier; the paper's is 0.7")
        if not isinstance(aux_logits, bool):
            raise CnnlabError(f"aux_logits={aux_logits!r} must be true or false (build the two auxiliary classifiers).")
        # The branch pads kernel // 2 to keep the map's size, which only an odd kernel does: an even one would
        # give a map one pixel larger than the other branches' and fail at the concatenation.
        kernel = whole_number(inception_5x5_kernel)
        if kernel is None or kernel < 1 or kernel % 2 == 0:
            raise CnnlabError(f"inception_5x5_kernel={shown_value(inception_5x5_kernel)} must be an odd whole number: "
                              "3 (torchvision's, which its weights need) or 5 (the paper's).")
        norm_layer, act_layer = googlenet_layers(norm, act, norm_eps)

        def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> ConvNormAct:
            return ConvNormAct(c_in, c_out, kernel, stride, norm_layer=norm_layer, act_layer=act_layer)

        layers: list[tuple[str, nn.Module]] = [
            ("conv1", conv(in_chans, STEM_CONV1_CHS, 7, stride=2)),  # (B, 64, H/2, W/2)
            ("maxpool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),  # (B, 64, H/4, W/4)
            ("conv2", conv(STEM_CONV1_CHS, STEM_CONV2_CHS, 1)),
            ("conv3", conv(STEM_CONV2_CHS, STEM_CONV3_CHS, 3)),  # (B, 192, H/4, W/4)
            ("maxpool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),  # (B, 192, H/8, W/8)
        ]
        chs = STEM_CONV3_CHS
        tap_chs = {}  # channels of each tapped module's output, for its auxiliary classifier
        for stage_index, (rows, pool_kernel) in enumerate(zip(GOOGLENET_STAGES, STAGE_POOL_KERNELS), start=3):
            for name, *widths in rows:
                block = InceptionBlock(chs, InceptionWidths(*widths), norm_layer, act_layer, inception_5x5_kernel,
                                       naive=naive)
                layers.append((name, block))
                chs = block.out_chs
                if name in AUX_TAPS:
                    tap_chs[name] = chs
            if pool_kernel is not None:
                layers.append((f"maxpool{stage_index}", nn.MaxPool2d(pool_kernel, stride=2, ceil_mode=True)))
        # (B, C, H, W) -> (B, 1024, H/32, W/32); naive: (B, 4944, H/32, W/32)
        self.features = nn.Sequential(OrderedDict(layers))

        # Registered after the trunk and before fc, where torchvision keeps aux1 and aux2, so the
        # state_dicts line up by position. Keyed by the module each head reads.
        self.aux_heads = nn.ModuleDict()
        if aux_logits:
            for name in AUX_TAPS:
                self.aux_heads[name] = InceptionAux(tap_chs[name], num_classes, norm_layer, act_layer, aux_drop_rate)

        self.build_head(chs, num_classes, drop_rate=drop_rate)  # (B, F, h, w) -> (B, num_classes)
        init_weights(self, act_layer)

    @property
    def aux_logits(self) -> bool:
        return len(self.aux_heads) > 0

    def forward(self, x: torch.Tensor):
        """Eval mode (or no auxiliary heads): (B, num_classes) logits. Training mode with auxiliary
        heads: :class:`AuxLogits` with the main logits and one (B, num_classes) per head. Without a
        classifier (num_classes=0) there are no logits to weight: the pooled (B, 1024) features, in
        either mode, as every zoo model gives them."""
        if not (self.training and self.aux_logits and self.num_classes > 0):
            return super().forward(x)
        aux = []
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in self.aux_heads:
                aux.append(self.aux_heads[name](x))
        return AuxLogits(self.forward_head(x), tuple(aux))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the main classifier and the auxiliary heads' classifiers."""
        super().reset_classifier(num_classes)
        for aux in self.aux_heads.values():
            aux.fc2 = like_model(new_linear(aux.fc1.out_features, self.num_classes), self)  # an int now

    def classifier_modules(self) -> list[nn.Module]:
        return [self.fc] + [aux.fc2 for aux in self.aux_heads.values()]


@register_model(family="googlenet", min_size=32, paper="Szegedy et al. 2015", torchvision="googlenet")
def googlenet(**kwargs) -> GoogLeNet:
    return GoogLeNet(**kwargs)
