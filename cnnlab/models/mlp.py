"""A multilayer perceptron on flattened pixels: the lecture's fully connected network.

The image (B, C, H, W) is flattened to (B, C * s * s) and goes through ``depth`` hidden layers of
``width`` units (Linear -> norm -> act), then dropout and the classifier. The first layer's width is
computed from ``in_chans`` and ``input_size`` (s), so the parameter count is known before any data is
seen. An input of another size is first average-pooled (adaptively) to s x s, as LeNet and AlexNet
pool their last map to the paper's size: the network runs at any input, and at s x s the pooling is
the identity.

The lecture's weight-initialisation demonstration (six 4096x4096 tanh layers) is
``create_model("mlp", depth=6, width=4096, act="tanh", init="normal:0.01")``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Optional

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import LayerNorm2d, get_act_layer, get_norm_layer
from cnnlab.layers.act import ActLayer
from cnnlab.layers.norm import NormLayer, NormSpec, is_no_norm
from cnnlab.models._base import ClassifierModel, init_weights
from cnnlab.models._registry import register_model

DEFAULT_DEPTH = 3  # hidden layers
DEFAULT_WIDTH = 256  # units in each hidden layer
DEFAULT_INPUT_SIZE = 32  # side the first layer reads: CIFAR-10 and cnnlab's digits at their default size


class LinearNormAct(nn.Sequential):
    """linear -> norm -> act on (B, in_features) vectors; the Linear has a bias exactly when no norm follows
    (a norm's shift would cancel it), as :class:`cnnlab.layers.ConvNormAct` does for convs."""

    def __init__(self, in_features: int, out_features: int, norm_layer: Optional[NormLayer],
                 act_layer: ActLayer) -> None:
        super().__init__()
        self.add_module("linear", nn.Linear(in_features, out_features, bias=norm_layer is None))
        if norm_layer is not None:
            self.add_module("norm", norm_layer(out_features))
        self.add_module("act", act_layer())


class MLP(ClassifierModel):
    """``stem`` (resample to s x s, flatten) -> ``layer1`` .. ``layerN`` -> (B, width, 1, 1) -> head."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm: NormSpec = "none",
        act="relu",
        drop_rate: float = 0.0,
        depth: int = DEFAULT_DEPTH,
        width: int = DEFAULT_WIDTH,
        input_size: int = DEFAULT_INPUT_SIZE,
    ) -> None:
        super().__init__()
        for label, value in (("depth", depth), ("width", width), ("input_size", input_size)):
            _check_count(label, value)
        norm_layer, act_layer = vector_norm_layer(norm), get_act_layer(act)
        self.input_size = input_size
        stem = nn.Sequential(OrderedDict(
            resample=nn.AdaptiveAvgPool2d(input_size),  # (B, C, H, W) -> (B, C, s, s); identity at s x s
            flatten=nn.Flatten(1),  # -> (B, C * s * s)
        ))
        layers: list[tuple[str, nn.Module]] = [("stem", stem)]
        features = in_chans * input_size * input_size
        for index in range(1, depth + 1):
            layers.append((f"layer{index}", LinearNormAct(features, width, norm_layer, act_layer)))  # -> (B, width)
            features = width
        # The zoo's trunk gives a feature map: (B, width) -> (B, width, 1, 1), which global pooling passes.
        layers.append(("to_map", nn.Unflatten(1, (width, 1, 1))))
        self.features = nn.Sequential(OrderedDict(layers))
        self.build_head(width, num_classes, drop_rate=drop_rate)  # (B, width, 1, 1) -> (B, num_classes)
        init_weights(self, act_layer)


def vector_norm_layer(norm: NormSpec) -> Optional[NormLayer]:
    """The norm factory's layer for (B, features) vectors, or None for no norm.

    The factory builds norms for (B, C, H, W) maps. On a vector, ``bn`` becomes BatchNorm1d (the same
    statistics: per unit over the batch), ``ln2d`` (per-pixel LayerNorm over channels) becomes
    nn.LayerNorm over the units, and ``gn``/``ln`` (GroupNorm, which reads (B, C, *)) normalise groups of
    units (one group for ``ln``: LayerNorm). Instance norm has one value per unit to normalise and is
    refused. A layer type of your own is given (B, features) as it is.
    """
    norm_layer = get_norm_layer(norm)
    if is_no_norm(norm_layer):
        return None
    base = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    options = dict(norm_layer.keywords) if isinstance(norm_layer, functools.partial) else {}
    if not isinstance(base, type):
        return norm_layer
    if issubclass(base, nn.modules.instancenorm._InstanceNorm):
        raise CnnlabError(
            f"The mlp cannot use instance normalisation ({base.__name__}): a hidden layer gives one value per unit "
            "and sample, and instance statistics of a single value mean nothing. Choose bn, gn, ln, ln2d or none."
        )
    if issubclass(base, nn.BatchNorm2d):
        return functools.partial(nn.BatchNorm1d, **options)
    if issubclass(base, LayerNorm2d):
        return functools.partial(nn.LayerNorm, **options)
    return norm_layer


def _check_count(label: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CnnlabError(
            f"The mlp's {label} must be a whole number of at least 1, got {value!r}: e.g. "
            f"--set model.options.{label}={dict(depth=DEFAULT_DEPTH, width=DEFAULT_WIDTH).get(label, 28)}."
        )


@register_model(family="mlp", default_input=(3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE), min_size=28,
                paper="Rumelhart et al. 1986", sized_input=True)
def mlp(**kwargs) -> MLP:
    return MLP(**kwargs)
