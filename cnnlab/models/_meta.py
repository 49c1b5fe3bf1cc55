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
