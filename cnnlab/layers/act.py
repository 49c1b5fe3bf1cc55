"""Activation layer factory.

``get_act_layer(kind)`` returns a callable ``act_layer() -> nn.Module``; blocks call it and never
name an activation class themselves.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Callable, Union

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UnknownNameError

ActLayer = Callable[[], nn.Module]
ActSpec = Union[str, ActLayer, None]


class QuickGELU(nn.Module):
    """GELU's sigmoid approximation, ``x * sigmoid(1.702 * x)``: the lecture's "gelu(x) ≈ xσ(1.702x)"
    (Hendrycks & Gimpel 2016, section 2; CLIP and timm call it QuickGELU).

    Exact GELU is ``x * Phi(x)``, Phi the standard normal CDF (torch's ``nn.GELU``, ``gelu``). A logistic
    sigmoid with slope 1.702 follows Phi to within 0.01, so the two activations differ by at most about
    0.02 (near |x| = 2.3). Use it to match a network trained with it; otherwise ``gelu`` is the function.
    """

    SLOPE = 1.702  # the sigmoid's slope that best matches Phi (Hendrycks & Gimpel 2016)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.SLOPE * x)


_ACTS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}

# Activations for which He (Kaiming) initialisation is the right scale: they pass roughly half of
# a zero-mean input, which is what the factor 2 in Var(w) = 2 / fan accounts for.
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, QuickGELU, nn.SiLU)


def act_names() -> list[str]:
    """The names :func:`get_act_layer` accepts."""
    return list(_ACTS)


def get_act_layer(kind: ActSpec, **kwargs) -> ActLayer:
    """Resolve ``kind`` to a layer type called with no arguments.

    ``kind`` is a name (``sigmoid``, ``tanh``, ``relu``, ``relu6``, ``leaky_relu``, ``prelu``,
    ``elu``, ``selu``, ``gelu``, ``quick_gelu``, ``silu``, ``identity``), a layer type, a
    ``functools.partial`` or None (identity). ``kwargs`` are bound, e.g.
    ``get_act_layer("leaky_relu", negative_slope=0.1)``. A name may carry its one parameter after a
    colon: ``"leaky_relu:0.1"``. ``leaky_relu`` alone has torch's slope 0.01; the lecture's usual
    alpha is 0.1 (``"leaky_relu:0.1"``).
    """
    if kind is None:
        return nn.Identity
    if isinstance(kind, str):
        name, _, arg = kind.partition(":")
        name = name.lower().replace("-", "_")  # the name only: the number keeps its sign and exponent (1e-3, -0.1)
        if name not in _ACTS:
            close = difflib.get_close_matches(name, _ACTS, n=3, cutoff=0.3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"Unknown activation '{kind}'. Choose one of: {', '.join(_ACTS)}.{hint}"
            )
        if arg:
            kwargs = {**kwargs, **_parse_act_arg(name, arg, kind)}
        layer = _ACTS[name]
        _check_options(kind, layer, kwargs)
        return functools.partial(layer, **kwargs) if kwargs else layer
    problem = layer_type_problem(kind, "get_act_layer('relu')")
    if problem:
        raise UnknownNameError(f"Activation {problem}")
    if callable(kind):
        label, bound, unbound = partial_parts(kind)
        _check_options(label, unbound, bound)  # a partial's own keywords, as those given here
        _check_options(label, kind, kwargs)
        return functools.partial(kind, **kwargs) if kwargs else kind
    raise UnknownNameError(f"Activation must be a name, a layer type or None, not {type(kind).__name__}.")


def partial_parts(kind) -> tuple[str, dict, object]:
    """A layer type's (name, the keywords a functools.partial binds, the same partial without its keywords): the
    bound keywords are checked as the options given with it are. ``kind`` itself, and no keywords, when it is not
    a partial."""
    base = kind.func if isinstance(kind, functools.partial) else kind
    label = getattr(base, "__name__", type(base).__name__)
    if not isinstance(kind, functools.partial):
        return label, {}, kind
    return label, dict(kind.keywords), functools.partial(base, *kind.args)


def layer_type_problem(kind, example: str):
    """Why ``kind`` is not a layer type that a model can call once for each layer it builds, in words (to follow
    "Activation " or "Normalisation "); None when it may be one. A layer (``nn.GELU()``) and a builtin function
    (``torch.relu``) are callable too, and would fail only inside the model's first block, in torch.
    ``example``: the factory call that resolves a name (``get_act_layer('relu')``)."""
    if isinstance(kind, nn.Module):
        return (f"must be a layer type, not a layer: got an instance of {type(kind).__name__}. A model builds a "
                f"layer of its own at each place, so give the class ({type(kind).__name__}, without the brackets), "
                f"a functools.partial of it with its options, or a name resolved by {example}.")
    if inspect.isbuiltin(kind):  # torch.relu and its kin: no layer to put in a model
        return (f"must be a layer type, not a function: got the function {getattr(kind, '__name__', '?')}. A model "
                f"builds a layer at each place, so give an nn.Module class, a functools.partial of one, or a name "
                f"resolved by {example}.")
    return None


def _check_options(kind: str, layer: ActLayer, kwargs: dict) -> None:
    """Refuse an option the activation does not take here, with the ones it does, rather than where a
    model builds its first activation (torch's "unexpected keyword argument")."""
    if not kwargs:
        return
    try:
        params = inspect.signature(layer).parameters.values()
    except (TypeError, ValueError):  # no readable signature: the layer itself checks when it is built
        return
    # A layer without an __init__ of its own (nn.Tanh) shows nn.Module's (*args, **kwargs), which refuses any key;
    # one whose own __init__ takes **kwargs takes anything
    base = layer.func if isinstance(layer, functools.partial) else layer
    if any(p.kind is p.VAR_KEYWORD for p in params) and getattr(base, "__init__", None) is not nn.Module.__init__:
        return
    takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        options = ", ".join(takes) if takes else "no options"
        raise CnnlabError(f"Activation '{kind}' does not take {', '.join(unknown)}: it takes {options}.")


def _parse_act_arg(name: str, arg: str, spec: str) -> dict:
    param = {"leaky_relu": "negative_slope", "elu": "alpha", "prelu": "init"}.get(name)
    try:
        value = float(arg)
    except ValueError:
        value = None
    if param is None:
        raise UnknownNameError(
            f"Cannot read activation '{spec}': only leaky_relu:SLOPE, elu:ALPHA and prelu:INIT take a "
            "number after the colon (e.g. leaky_relu:0.1)."
        )
    if value is None:  # the activation takes a number, and this is not one
        raise UnknownNameError(f"Cannot read activation '{spec}': '{arg}' after '{name}:' is not a number "
                               f"(e.g. {name}:0.1).")
    if not math.isfinite(value):  # its own message: leaky_relu takes a number, just not this one
        raise UnknownNameError(f"Cannot read activation '{spec}': the number after '{name}:' must be finite "
                               f"(e.g. {name}:0.1).")
    return {param: value}


def act_base(act_layer: ActLayer) -> type:
    """The class an activation factory builds (unwrapping partials)."""
    return act_layer.func if isinstance(act_layer, functools.partial) else act_layer
