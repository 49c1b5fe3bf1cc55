"""Weight-initialisation schemes as a knob: ``create_model(..., init=SCHEME, bias_init=B)``, ``model.init``.

The lecture's demonstration: a net of six 4096x4096 layers (``dims = [4096] * 7``). With tanh,
``W = 0.01 * randn`` shrinks the activations toward 0 layer after layer, ``0.05 * randn`` saturates
them at +-1, and ``randn / sqrt(Din)`` keeps them scaled. With ReLU that last rule halves the second
moment at every layer, and Kaiming's ``randn * sqrt(2 / Din)`` keeps it.

A scheme fills the weights of every ``nn.Conv2d`` (grouped and depthwise included) and every hidden
``nn.Linear``; the classifier layers keep their own initialisation (N(0, 0.01) in the zoo, so the
untrained loss is ln(C)) and norm layers are untouched. ``fan_in`` and ``fan_out`` are torch's
(``nn.init._calculate_fan_in_and_fan_out``): a conv's fan_in is in_chs / groups * kh * kw, its
fan_out out_chs * kh * kw.

scheme        weights                                   source
------------  ----------------------------------------  ------------------------------------------------
default       the architecture's own (``init_weights``)  He for ReLU-like (fan_out in convs, fan_in in linear
                                                        layers), LeCun for SELU, Glorot with the activation's
                                                        gain otherwise
normal:STD    N(0, STD^2)                               the notes' ``0.01 * randn``
uniform:A     U(-A, A)
xavier        N(0, 2 / (fan_in + fan_out))              Glorot & Bengio 2010, gain 1
kaiming_in    N(0, g^2 / fan_in), g^2 = 2 / (1 + a^2)   He et al. 2015; the notes' ``sqrt(2 / Din)``
kaiming_out   N(0, g^2 / fan_out)                       He et al. 2015, the backward-pass form
lecun         N(0, 1 / fan_in)                          LeCun et al. 1998; the notes' "Xavier",
                                                        ``randn / sqrt(Din)``
zeros         0                                         every unit computes the same: the symmetry problem

``a`` is the negative slope of the model's leaky ReLU (LeakyReLU's slope, PReLU's initial weight),
0 for ReLU and every other activation: Kaiming's rule is derived for the ReLU family. ``xavier`` is
the paper's gain 1 whatever the activation; for a square layer (fan_in = fan_out) it equals
``lecun``, the notes' ``randn / sqrt(Din)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.layers.init import (  # noqa: F401  (parse_init, SCHEME_CHOICES: this module's public names too)
    DEFAULT,
    KAIMING_IN,
    KAIMING_OUT,
    SCHEME_CHOICES,
    check_bias_init,
    init_weight_,
    kaiming_gain,
    parse_init,
)
from cnnlab.models.stages import classifier_names


def initialised_layers(model: nn.Module) -> list[nn.Module]:
    """The layers a scheme fills: every Conv2d and every Linear that is not a classifier (the layers
    :func:`cnnlab.models.stages.classifier_names` finds, i.e. ``classifier_modules()`` of a zoo model)."""
    classifiers = {id(model.get_submodule(name)) for name in classifier_names(model)}
    return [
        module for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in classifiers
        and not nn.parameter.is_lazy(module.weight)
    ]


def apply_init(model: nn.Module, scheme="default", bias: Optional[float] = None) -> None:
    """Initialise the convs and hidden linear layers of ``model`` by ``scheme`` (see the module's table)
    and set their biases to ``bias`` (None: leave them; layers without a bias stay without).

    ``default`` with ``bias=None`` changes nothing. On the meta device there are no values to set, so
    only the arguments are checked. Classifier and norm layers are never touched.
    """
    parsed = parse_init(scheme)
    bias = check_bias_init(bias)
    if parsed.name == DEFAULT and bias is None:
        return
    if any(p.is_meta for p in model.parameters()):
        return
    gain = kaiming_gain(model) if parsed.name in (KAIMING_IN, KAIMING_OUT) else 1.0
    for layer in initialised_layers(model):
        if parsed.name != DEFAULT:
            init_weight_(layer.weight, parsed, gain)
        if bias is not None and layer.bias is not None:
            with torch.no_grad():
                layer.bias.fill_(bias)
