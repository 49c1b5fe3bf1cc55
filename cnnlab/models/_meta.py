"""Models built on the meta device skip weight initialisation: shapes without values need none.

``with torch.device("meta"): create_model(...)`` gives every tensor a shape and no storage, which
is all that parameter counts, per-layer summaries and input-size checks read. Initialising such a
tensor does nothing, but it is not free: ``normal_`` on a meta tensor runs through torch's Python
reference implementation (``torch._refs``), whose first call imports ``torch._dynamo`` (about 1.5 s
on 2 cores) and every later call costs ~2 ms. Building the 39 zoo models took ~7 s that way, almost
all of it initialising values that do not exist. Under :func:`skip_init_on_meta` the initialisers
(every in-place function of ``torch.nn.init`` and the in-place fills of a tensor) return their meta
tensor untouched; everything else, the modules' shapes included, is built as before.
"""

from __future__ import annotations

import functools
import inspect
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

# In-place fills the initialisers (and hand-written init code) call on a tensor.
_FILLS = frozenset({
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_, torch.Tensor.copy_,
    torch.Tensor.bernoulli_, torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
    torch.Tensor.geometric_, torch.Tensor.random_,
})


def _is_initialiser(func) -> bool:
    if func in _FILLS:
        return True
    # torch.nn.init's in-place functions (normal_, kaiming_uniform_, trunc_normal_, orthogonal_, ...);
    # calculate_gain and the other helpers do not end in "_".
    return getattr(func, "__module__", None) == "torch.nn.init" and getattr(func, "__name__", "").endswith("_")


class _SkipInitOnMeta(TorchFunctionMode):
    """Return a meta tensor unchanged from any initialiser; pass every other call on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_initialiser(func):
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def building_on_meta() -> bool:
    """True inside ``with torch.device("meta")`` (or after ``torch.set_default_device("meta")``)."""
    return torch.get_default_device().type == "meta"


@contextmanager
def skip_init_on_meta() -> Iterator[None]:
    """Within the block, initialising a meta tensor is skipped; tensors with storage initialise as usual."""
    with _SkipInitOnMeta():
        yield


# Functions that allocate a tensor of a given shape: the ones a module's parameters and buffers come from.
_ALLOCATIONS = frozenset({
    torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided,
})


class _AllocateOnMeta(TorchFunctionMode):
    """Put shape-given allocations on the meta device; leave arithmetic on real tensors.

    Under ``with torch.device("meta")`` every factory makes meta tensors, and torchvision's RegNet
    computes its widths with ``torch.arange(...).tolist()``, which a meta tensor cannot answer. Only
    the parameters and buffers need to be meta, and they are allocated by these functions.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ALLOCATIONS and kwargs.get("device") is None:
            kwargs = dict(kwargs, device="meta")
        return func(*args, **kwargs)


@contextmanager
def meta_build() -> Iterator[None]:
    """Build a torchvision model inside: parameters and buffers on the meta device, no initialisation,
    and the builder's own arithmetic (RegNet's widths, Swin's relative positions) on the CPU, where its
    values can be read. Small index tensors stay on the CPU: ``.to("meta")`` moves them when needed."""
    with torch.device("cpu"), _AllocateOnMeta(), skip_init_on_meta():
        yield


# ---------------------------------------------------------------------------------------------
# shape-only forwards on the meta device

F = torch.nn.functional


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _channels_match(tensor, channels: int) -> bool:
    return tensor is None or (tensor.dim() == 1 and tensor.numel() == channels)


def _more_than_one_value_per_channel(size) -> bool:
    """torch's own condition for normalising in training (F._verify_batch_size): the batch times the spatial size,
    the values each channel's statistics come from, is not 1."""
    return math.prod([size[0], *size[2:]]) != 1


# The rules under which each function is answered at once: the arguments cnnlab's and torchvision's layers pass,
# each one torch takes. Anything else, an argument torch would refuse included, goes to torch, which computes it
# (or raises its own error) as without the mode.
def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5) -> bool:
    statistics = (running_mean, running_var, weight, bias)
    if input.dim() < 2 or not all(_channels_match(t, input.shape[1]) for t in statistics) or not _real(eps) or eps <= 0:
        return False
    if training:
        return _more_than_one_value_per_channel(input.shape)
    return running_mean is not None and running_var is not None  # eval mode normalises by the running statistics


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5) -> bool:
    if not isinstance(normalized_shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in normalized_shape) or not _real(eps):
        return False
    shape = tuple(normalized_shape)
    trailing = tuple(input.shape[input.dim() - len(shape):]) if 0 < len(shape) <= input.dim() else None
    return trailing == shape and all(t is None or tuple(t.shape) == shape for t in (weight, bias))


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5) -> bool:
    if input.dim() < 2 or not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups <= 0:
        return False
    channels = input.shape[1]
    return (channels % num_groups == 0 and all(_channels_match(t, channels) for t in (weight, bias)) and _real(eps)
            and _more_than_one_value_per_channel([input.shape[0] * channels // num_groups, num_groups,
                                                  *input.shape[2:]]))


def _plain(input, inplace=False) -> bool:
    return True


def _hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False) -> bool:
    return _real(min_val) and _real(max_val) and min_val <= max_val


def _elu(input, alpha=1.0, inplace=False) -> bool:
    return _real(alpha)


def _leaky_relu(input, negative_slope=0.01, inplace=False) -> bool:
    return _real(negative_slope)


def _gelu(input, approximate="none") -> bool:
    return approximate in ("none", "tanh")


# Functions whose output has their input's shape and dtype. On meta tensors torch runs most of them through its
# Python reference implementations: a BatchNorm 0.76 ms, a ReLU 0.32 ms, an empty_like 0.03 ms.
_KEEPS_SHAPE = {
    F.batch_norm: _batch_norm, F.layer_norm: _layer_norm, F.group_norm: _group_norm,
    F.relu: _plain, torch.relu: _plain, torch.Tensor.relu: _plain, torch.relu_: _plain, torch.Tensor.relu_: _plain,
    F.relu6: _plain, F.hardswish: _plain, F.hardsigmoid: _plain, F.hardtanh: _hardtanh, F.elu: _elu,
    F.leaky_relu: _leaky_relu, F.gelu: _gelu,
}
_IN_PLACE = frozenset({torch.relu_, torch.Tensor.relu_})
# torch's meta kernels give these their input's contiguous layout: a contiguous input's own strides (those of its
# size-1 dimensions included), else new contiguous ones; the others keep their input's layout (channels_last, or
# the strides of a permuted map), as empty_like does
_CONTIGUOUS = frozenset({F.layer_norm, F.group_norm})


@functools.lru_cache(maxsize=None)
def _signature(rule) -> inspect.Signature:
    return inspect.signature(rule)


def _answered(func, args, kwargs) -> tuple[bool, bool]:
    """(whether ``func`` is answered at once for these arguments, whether it works in place)."""
    rule = _KEEPS_SHAPE.get(func)
    if rule is None:
        return False, False
    try:
        bound = _signature(rule).bind(*args, **kwargs)
    except TypeError:  # arguments the function does not take: torch says so
        return False, False
    return bool(rule(*args, **kwargs)), func in _IN_PLACE or bound.arguments.get("inplace") is True


class _ShapesOnMeta(TorchFunctionMode):
    """Answer the shape-keeping functions of :data:`_KEEPS_SHAPE` with an empty tensor like their meta input."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        input = args[0] if args else kwargs.get("input")
        if isinstance(input, torch.Tensor) and input.is_meta and input.is_floating_point():
            answered, in_place = _answered(func, args, kwargs)
            if answered:
                if in_place:
                    return input
                if func in _CONTIGUOUS and not input.is_contiguous():
                    return torch.empty(input.shape, dtype=input.dtype, device=input.device)
                return torch.empty_like(input)
        return func(*args, **kwargs)


@contextmanager
def shapes_on_meta() -> Iterator[None]:
    """Within the block, a forward pass on meta tensors computes only what its shapes need: the norms and
    activations that keep their input's shape return an empty meta tensor of it at once, after the checks of
    their arguments that torch makes (a BatchNorm of other channels still fails, with torch's error). For shape
    probes; values, gradients and the counts of ``cnnlab.summary`` are not computed inside it."""
    with _ShapesOnMeta():
        yield
