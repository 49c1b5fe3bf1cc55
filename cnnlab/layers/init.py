"""Weight-initialisation schemes, one layer at a time: parsing ``model.init`` and the formulas.

The table of schemes and their sources is in :mod:`cnnlab.models.init`, which applies a scheme to a
whole model; :func:`cnnlab.models._base.init_weights` (each architecture's own default) draws with the
same formulas, so each lives in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError

DEFAULT = "default"
NORMAL = "normal"  # normal:STD
UNIFORM = "uniform"  # uniform:A
XAVIER = "xavier"
KAIMING_IN = "kaiming_in"
KAIMING_OUT = "kaiming_out"
LECUN = "lecun"
ZEROS = "zeros"
WITH_NUMBER = {NORMAL: "STD", UNIFORM: "A"}  # schemes written NAME:NUMBER, and what the number is
SCHEME_NAMES = (DEFAULT, NORMAL, UNIFORM, XAVIER, KAIMING_IN, KAIMING_OUT, LECUN, ZEROS)
SCHEME_CHOICES = tuple(f"{name}:{WITH_NUMBER[name]}" if name in WITH_NUMBER else name for name in SCHEME_NAMES)
RELU_GAIN = math.sqrt(2.0)  # He et al. 2015: a ReLU passes half of a zero-mean signal's second moment


@dataclass(frozen=True)
class InitScheme:
    """A parsed scheme: ``name`` (one of SCHEME_NAMES) and ``value``, the std of normal / bound of uniform."""

    name: str
    value: Optional[float] = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"


def parse_init(spec) -> InitScheme:
    """Read ``default``, ``normal:STD``, ``uniform:A``, ``xavier``, ``kaiming_in``, ``kaiming_out``,
    ``lecun`` or ``zeros``; anything else raises a CnnlabError listing the choices."""
    if isinstance(spec, InitScheme):
        return spec
    if not isinstance(spec, str):
        _refuse(spec, f"it is a {type(spec).__name__}, not a name")
    name, colon, number = spec.strip().lower().partition(":")
    name = name.replace("-", "_")  # kaiming-in reads as kaiming_in; the number keeps its sign
    if name not in SCHEME_NAMES:
        _refuse(spec, "it is not a scheme")
    if name not in WITH_NUMBER:
        if colon:
            _refuse(spec, f"{name} takes no number")
        return InitScheme(name)
    label = WITH_NUMBER[name]
    if not colon or not number.strip():
        _refuse(spec, f"{name} needs its {label} after a colon ({name}:0.01)")
    try:
        value = float(number)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        _refuse(spec, f"its {label} '{number}' must be a positive finite number (for all-zero weights use zeros)")
    return InitScheme(name, value)


def _refuse(spec, reason: str):
    raise CnnlabError(
        f"Cannot use the weight initialisation {spec!r}: {reason}. Choose one of {', '.join(SCHEME_CHOICES)}, "
        "e.g. model.init=normal:0.01 in a config, --set model.init=kaiming_in, or create_model(..., init='xavier')."
    )


def check_bias_init(bias) -> Optional[float]:
    """``bias_init`` as a float, or None; a bool, text or a non-finite number raises a CnnlabError."""
    if bias is None:
        return None
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise CnnlabError(
            f"Cannot use bias_init={bias!r}: it must be a finite number (the notes' 0.01 for ReLU units) or "
            "None to keep the biases at 0, e.g. --set model.bias_init=0.01."
        )
    return float(bias)


def scheme_std(name: str, fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """The std of a fan-based normal scheme: xavier gain * sqrt(2 / (fan_in + fan_out)), kaiming_in
    gain / sqrt(fan_in), kaiming_out gain / sqrt(fan_out), lecun gain / sqrt(fan_in).

    Written as torch's ``xavier_normal_`` and ``kaiming_normal_`` compute it, so the zoo's default
    initialisation draws the same numbers through here as through them.
    """
    if name == XAVIER:
        return gain * math.sqrt(2.0 / float(fan_in + fan_out))
    if name in (KAIMING_IN, LECUN):
        return gain / math.sqrt(fan_in)
    if name == KAIMING_OUT:
        return gain / math.sqrt(fan_out)
    raise ValueError(f"'{name}' is not a fan-based scheme")


def init_weight_(weight: torch.Tensor, scheme: InitScheme, gain: float = 1.0) -> None:
    """Fill one conv or linear weight in place by ``scheme`` (not ``default``); ``gain`` scales the
    fan-based schemes (kaiming's sqrt(2), a tanh's 5/3)."""
    with torch.no_grad():
        if scheme.name == NORMAL:
            weight.normal_(0.0, scheme.value)
        elif scheme.name == UNIFORM:
            weight.uniform_(-scheme.value, scheme.value)
        elif scheme.name == ZEROS:
            weight.zero_()
        else:
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
            weight.normal_(0.0, scheme_std(scheme.name, fan_in, fan_out, gain))


def kaiming_gain(model: nn.Module) -> float:
    """Kaiming's gain sqrt(2 / (1 + a^2)) (He et al. 2015, eq. 10 for PReLU): ``a`` is the negative slope
    of the model's first ReLU-type activation when it is a LeakyReLU or PReLU, else 0 (gain sqrt(2))."""
    for module in model.modules():
        if isinstance(module, nn.LeakyReLU):
            return nn.init.calculate_gain("leaky_relu", module.negative_slope)
        if isinstance(module, nn.PReLU):
            return nn.init.calculate_gain("leaky_relu", float(module.weight.detach().mean()))
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            break
    return RELU_GAIN
