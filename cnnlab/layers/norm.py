"""Normalisation layer factory.

``get_norm_layer(kind)`` returns a callable ``norm_layer(num_channels) -> nn.Module``; blocks call it
with their channel count and never name a normalisation class themselves. Options are checked
against the layer's signature when the factory is called, so a wrong key is named there, not as a
TypeError from deep inside a model builder.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError, UnknownNameError, shown_value
from cnnlab.layers.act import layer_type_problem, partial_parts

NormLayer = Callable[[int], nn.Module]
NormSpec = Union[str, NormLayer, None]


class NoNorm(nn.Identity):
    """Placeholder for 'no normalisation'. Blocks skip it and give their conv a bias instead."""

    def __init__(self, num_features: int = 0, **kwargs) -> None:
        super().__init__()


class LayerNorm2d(nn.LayerNorm):
    """Per-pixel LayerNorm over channels only (ConvNeXt): statistics over C at each (h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C): normalise the last dim
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # back to (B, C, H, W)


class LayerNormCHW(nn.GroupNorm):
    """The lecture's LayerNorm for feature maps: statistics per sample over C, H and W together.

    This is GroupNorm with a single group; the affine scale and shift are per channel.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine)


class GroupNormAuto(nn.GroupNorm):
    """GroupNorm with at most ``groups`` groups, fewer when the channel count needs it.

    The group count is the largest divisor of ``num_channels`` not above ``groups`` (32 by
    default, Wu & He 2018), so any channel count works: 24 channels get 24 groups, 48 get 24.
    """

    def __init__(self, num_channels: int, groups: int = 32, eps: float = 1e-5, affine: bool = True) -> None:
        num_groups = max(g for g in range(1, min(groups, num_channels) + 1) if num_channels % g == 0)
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)


class InstanceNormAffine(nn.InstanceNorm2d):
    """InstanceNorm2d with a learnt per-channel scale and shift."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True)


_NORMS: dict[str, type[nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "gn": GroupNormAuto,
    "ln": LayerNormCHW,
    "ln2d": LayerNorm2d,
    "in": InstanceNormAffine,
    "none": NoNorm,
}


# Names that take a number after a colon, and the option it sets: "gn:16" is GroupNorm with at most 16
# groups (the short form of {groups: 16}, as "leaky_relu:0.1" is for the activation's slope). The
# other norms have no single number that defines them, so their options go by keyword only.
_COLON_OPTIONS = {"gn": "groups"}

# Constructor arguments a norm layer has that are not options of the model: where the tensors live
# and their type are the run's choice (train.device, the model's dtype), not the normalisation's.
_NOT_OPTIONS = ("device", "dtype")


def norm_names() -> list[str]:
    """The names :func:`get_norm_layer` accepts."""
    return list(_NORMS)


def get_norm_layer(kind: NormSpec, **kwargs) -> NormLayer:
    """Resolve ``kind`` to a layer type taking the channel count.

    ``kind`` is a name (``bn``, ``gn``, ``ln``, ``ln2d``, ``in``, ``none``), a layer type, a
    ``functools.partial``, or None (no normalisation). ``kwargs`` are bound to the layer, e.g.
    ``get_norm_layer("gn", groups=16)`` or ``get_norm_layer("bn", eps=1e-3)``; a key the layer does
    not take is a :class:`CnnlabError` naming the keys it does take. ``"gn:16"`` is short for
    ``get_norm_layer("gn", groups=16)``; no other name takes a number after a colon.
    """
    if kind is None:
        return NoNorm
    if isinstance(kind, str):
        name, colon, arg = kind.lower().replace("-", "_").partition(":")
        if name not in _NORMS:
            close = difflib.get_close_matches(name, _NORMS, n=3, cutoff=0.3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"Unknown normalisation '{kind}'. Choose one of: {', '.join(_NORMS)}.{hint}"
            )
        if colon:
            kwargs = _with_colon_option(name, arg, kind, kwargs)
        layer = _NORMS[name]
        kwargs = _check_options(kind, layer, kwargs)
        return functools.partial(layer, **kwargs) if kwargs else layer
    problem = layer_type_problem(kind, "get_norm_layer('bn')")
    if problem:
        raise UnknownNameError(f"Normalisation {problem}")
    if callable(kind):
        label, bound, unbound = partial_parts(kind)
        _check_bound_options(label, bound, unbound)
        kwargs = _check_options(label, kind, kwargs)
        return functools.partial(kind, **kwargs) if kwargs else kind
    raise UnknownNameError(f"Normalisation must be a name, a layer type or None, not {type(kind).__name__}.")


def _check_bound_options(label: str, bound: dict, unbound) -> None:
    """Check the keywords a functools.partial binds (``bound``; ``unbound``: the partial without them) as options
    given with it are. A model calls each norm with its channel count as the first argument: a keyword bound to
    that parameter (BatchNorm2d's num_features, or GroupNorm's num_groups, which comes before the channels) would
    be given twice. device and dtype are the layer's own to take."""
    try:
        params = [p for p in inspect.signature(unbound).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):  # no readable signature: the layer itself checks when it is built
        return
    first = params[0].name if params else None
    if first in bound:
        raise CnnlabError(
            f"Normalisation '{label}' binds {first}={shown_value(bound[first])} by keyword, but a model calls each "
            f"norm with its channel count as the first argument, which is {first} here, so it would be given twice. "
            f"Leave it out where it is the channel count (it comes from each layer); bind it by position where it "
            f"is not (functools.partial(nn.GroupNorm, 2) for 2 groups).")
    _check_options(label, unbound, {key: value for key, value in bound.items() if key not in _NOT_OPTIONS})


def _with_colon_option(name: str, arg: str, spec: str, kwargs: dict) -> dict:
    """``kwargs`` plus the option a ``NAME:NUMBER`` spec sets ("gn:16" -> groups=16)."""
    option = _COLON_OPTIONS.get(name)
    if option is None:
        forms = ", ".join(f"{norm}:{key.upper()}" for norm, key in _COLON_OPTIONS.items())
        raise UnknownNameError(
            f"Cannot read normalisation '{spec}': only {forms} takes a number after the colon (e.g. gn:16); "
            f"write '{name}' and give its options by keyword (model.norm_options)."
        )
    try:
        value = int(arg)
    except ValueError:
        value = 0
    if value < 1:
        raise UnknownNameError(
            f"Cannot read normalisation '{spec}': the number after '{name}:' is its {option}, a whole number of at "
            f"least 1 (e.g. {name}:16)."
        )
    if option in kwargs and kwargs[option] != value:
        raise CnnlabError(
            f"Normalisation '{spec}' sets {option}={value}, but the options also give {option}={kwargs[option]!r}: "
            f"give the {option} once, either after the colon or as an option."
        )
    return {**kwargs, option: value}


def norm_option_keys(layer: NormLayer) -> list[str]:
    """The option keys ``layer`` names in its constructor: the arguments after the channel count,
    without device and dtype (a layer that also takes ``**kwargs`` accepts any other key too)."""
    try:
        params = list(inspect.signature(layer).parameters.values())
    except (TypeError, ValueError):  # a builtin without a readable signature
        return []
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in named[1:] if p.name not in _NOT_OPTIONS]  # named[0] is the channel count


def _number(value) -> float | None:
    """``value`` as a float when it is a number, or text that reads as one (YAML 1.1 reads 1e-3, without a
    dot, as text); None otherwise (a bool is not a number here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _eps(value):
    number = _number(value)
    return number if number is not None and math.isfinite(number) and number > 0 else None


def _momentum(value):
    if value is None:
        return _NULL
    number = _number(value)
    return number if number is not None and 0 <= number <= 1 else None


def _flag(value):
    return value if isinstance(value, bool) else None


def _groups(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


_NULL = object()  # a checker's "null is allowed and given" (None means refused)

# The values each norm option takes, by key: (checker returning the value to use or None when refused, what is
# allowed). The keys mean the same in every layer that names them (torch's norms and those above).
_OPTION_VALUES = {
    "eps": (_eps, "a positive finite number (e.g. eps=0.001)"),
    "momentum": (_momentum, "a number in [0, 1] (e.g. momentum=0.01), or null for a cumulative average"),
    "affine": (_flag, "true or false"),
    "track_running_stats": (_flag, "true or false"),
    "elementwise_affine": (_flag, "true or false"),
    "bias": (_flag, "true or false"),
    "groups": (_groups, "a whole number of at least 1 (e.g. groups=16)"),
}


def _check_options(label: str, layer: NormLayer, kwargs: dict) -> dict:
    """``kwargs`` with numbers given as text read as numbers (eps='1e-3' -> 0.001); CnnlabError naming the
    norm, the bad keys and the keys it takes, for any key ``layer`` refuses, or naming the key, the value and
    what is allowed, for a value it cannot take (:data:`_OPTION_VALUES`)."""
    if not kwargs:
        return kwargs
    try:
        params = inspect.signature(layer).parameters.values()
    except (TypeError, ValueError):  # no readable signature: the layer itself checks when it is built
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params):  # takes anything (NoNorm ignores them)
        return kwargs
    takes = norm_option_keys(layer)
    bad = [key for key in kwargs if key not in takes]
    if bad:
        base = layer.func if isinstance(layer, functools.partial) else layer
        base_name = getattr(base, "__name__", type(base).__name__)
        what = f"'{label}'" if label == base_name else f"'{label}' ({base_name})"
        raise CnnlabError(
            f"Normalisation {what} does not take the option{'s' if len(bad) > 1 else ''} {', '.join(bad)}. "
            f"It takes: {', '.join(takes) or 'no options'}. The channel count comes from each layer of the "
            "model, and device and dtype from the run. Fix model.norm_options (or the keywords given to "
            "get_norm_layer), or choose the norm those options belong to."
        )
    checked, bad_values = {}, []
    for key, value in kwargs.items():
        check, allowed = _OPTION_VALUES.get(key, (None, ""))
        use = check(value) if check is not None else value
        if check is not None and use is None:
            bad_values.append(f"{key}={shown_value(value)}: {key} must be {allowed}")
        checked[key] = None if use is _NULL else use
    if bad_values:
        raise CnnlabError(
            f"Normalisation '{label}' cannot take the option{'s' if len(bad_values) > 1 else ''} "
            f"{'; '.join(bad_values)}. Fix the value in model.norm_options (or the keyword given to get_norm_layer)."
        )
    return checked


def is_no_norm(norm_layer: NormLayer) -> bool:
    """True when ``norm_layer`` builds no normalisation (the conv before it then needs a bias)."""
    base = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return base is NoNorm or base is nn.Identity
