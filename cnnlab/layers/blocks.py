"""Shared building blocks. Every block takes ``norm_layer`` / ``act_layer`` *types* (from
:func:`cnnlab.layers.get_norm_layer` / :func:`cnnlab.layers.get_act_layer`) and builds them
inside; none hard-codes a normalisation or an activation.

Module registration order inside each block follows the paper's data flow (and torchvision's
implementation), which keeps state_dicts loadable across the two.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers import fused
from cnnlab.layers.act import ActLayer, layer_type_problem
from cnnlab.layers.norm import NormLayer, is_no_norm


_FACTORIES = {"norm_layer": "get_norm_layer", "act_layer": "get_act_layer"}


def runs_children_in_order(module: nn.Module) -> bool:
    """A Sequential whose children run one after another, in order: with torch's own forward, or with one that
    computes the same (``children_in_order``: ConvNormAct, which may hand its norm and activation to one fused
    kernel). What the layer walks of the analysis and of model surgery may step into."""
    return isinstance(module, nn.Sequential) and (type(module).forward is nn.Sequential.forward
                                                  or getattr(type(module), "children_in_order", False))


def check_layer_types(block: str, **layers) -> None:
    """Refuse a ``norm_layer`` / ``act_layer`` that is not a layer type (a name such as "bn", most often), with
    the factory that resolves it; it would otherwise fail as "'str' object is not callable" inside the block."""
    for key, layer in layers.items():
        problem = layer_type_problem(layer, f"cnnlab.layers.{_FACTORIES[key]}(NAME)")
        if problem:
            raise CnnlabError(f"{block}'s {key} {problem}")
        if layer is not None and not callable(layer):
            factory = _FACTORIES[key]
            raise CnnlabError(f"{block} takes {key} as a layer type (a class or partial that builds the layer, or "
                              f"None), got {layer!r:.60}. Resolve a name with cnnlab.layers.{factory} first: "
                              f"{key}={factory}({layer!r:.40}).")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act (or norm -> act -> conv with ``preact=True``), the block every model uses.

    Without ``padding`` the output keeps the input's size at stride 1 (ceil(H / stride) otherwise), for
    odd and even kernels: an even kernel gets a ``pad`` layer before the conv with the extra row and
    column on top and left, as the lecture pads.

    A norm that is 'none' and an act that is None are left out rather than stored as identities,
    so analysis sees only real layers. The conv gets a bias exactly when no norm follows it
    (a norm's shift would cancel the bias), unless ``bias`` says otherwise. In the pre-activation
    order the norm works on the block's input (``in_chs`` channels) and the conv's output meets
    the next block's norm, so the same rule holds.

    ``pool`` (a layer, e.g. ``nn.MaxPool2d(2)``) goes between the conv and its norm: conv -> pool ->
    norm -> act, the order of airbench's conv groups. The norm and activation then work on the pooled
    map, a quarter of the elements after a 2x2 pool; on a CPU they are memory-bound, and on a small
    network's full-resolution maps they take a large share of a training step (docs/speed.md). A max
    pool commutes with a ReLU and with any per-channel increasing affine map, so without a norm (or
    with a norm in eval mode whose scale is positive) the block computes what conv -> norm -> act ->
    pool does; a training-mode norm's statistics come from the pooled map instead.
    """

    children_in_order = True  # its forward computes nn.Sequential's (runs_children_in_order)

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: Optional[int] = None,
        groups: int = 1,
        dilation: int = 1,
        bias: Optional[bool] = None,
        norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
        act_layer: Optional[ActLayer] = nn.ReLU,
        preact: bool = False,
        pool: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        check_layer_types(type(self).__name__, norm_layer=norm_layer, act_layer=act_layer)
        if pool is not None and (preact or not isinstance(pool, nn.Module)):
            raise CnnlabError(f"{type(self).__name__} takes pool as a layer (an nn.Module such as nn.MaxPool2d(2)) "
                              f"that runs between the conv and its norm, in the conv -> norm -> act order only; got "
                              f"{pool!r:.60}{' with preact=True' if preact else ''}.")
        # torch's conv takes a kernel, stride or dilation of 0 here and fails only at the first forward pass
        bad = [f"{name}={value!r:.40}" for name, value in (("kernel_size", kernel_size), ("stride", stride),
                                                           ("dilation", dilation))
               if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        if bad:
            raise CnnlabError(f"{type(self).__name__}: {', '.join(bad)}: the kernel size, stride and dilation are "
                              "whole numbers of at least 1 (pixels).")
        pad = None
        if padding is None:
            # 'same' size at stride 1 (ceil(H / stride) at any stride): p = dilation * (k - 1) rows in all, half
            # on each side. An even kernel makes p odd; the lecture's rule then puts ceil(p/2) on top (and left)
            # and floor(p/2) below (and right), which a symmetric conv padding cannot do: a pad layer does it.
            span = dilation * (kernel_size - 1)
            padding = span // 2
            if span % 2:
                pad = nn.ZeroPad2d((span - span // 2, span // 2, span - span // 2, span // 2))  # (l, r, t, b)
                padding = 0
        has_norm = norm_layer is not None and not is_no_norm(norm_layer)
        if bias is None:
            bias = not has_norm  # a following norm subtracts the mean, which would cancel a bias
        conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias)
        norm_chs = in_chs if preact else out_chs
        if preact:
            if has_norm:
                self.add_module("norm", norm_layer(norm_chs))
            if act_layer is not None:
                self.add_module("act", act_layer())
            if pad is not None:
                self.add_module("pad", pad)
            self.add_module("conv", conv)
        else:
            if pad is not None:
                self.add_module("pad", pad)
            self.add_module("conv", conv)
            if pool is not None:
                self.add_module("pool", pool)  # (B, C, H, W) -> (B, C, H', W'): the norm sees the pooled map
            if has_norm:
                self.add_module("norm", norm_layer(norm_chs))
            if act_layer is not None:
                self.add_module("act", act_layer())

    @property
    def norm_then_act(self) -> bool:
        """Whether the block ends norm -> act (conv -> norm -> act with both present), the pair that
        cnnlab.layers.fused may run in one kernel. Read from the layers, so a block edited later still says true."""
        return tuple(self._modules)[-2:] == ("norm", "act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.active() and self.norm_then_act:
            x = self.pre_norm(x)  # (B, C_out, H', W')
            out = fused.batch_norm_relu(x, self.norm, self.act)
            return out if out is not None else self.act(self.norm(x))
        return super().forward(x)

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The layers before the norm in the conv -> norm -> act order: [pad ->] conv [-> pool]."""
        for name in ("pad", "conv", "pool"):
            layer = getattr(self, name, None)
            if layer is not None:
                x = layer(x)
        return x

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def zero_conv(self) -> None:
        """Zero the conv's weights (and bias): the block then outputs act(norm(0))."""
        nn.init.zeros_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def zero_output(self) -> None:
        """Make a block without activation output zeros: zero the norm's scale, or the conv when
        there is no norm with a scale (used to start residual branches at zero)."""
        norm = getattr(self, "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)
        else:
            self.zero_conv()


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (Huang et al. 2016)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0.0 <= drop_prob <= 1.0:
            raise CnnlabError(f"DropPath's drop_prob must be a probability in [0, 1], got {drop_prob!r}: 0.1 drops "
                              "the branch for a tenth of the samples while training.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        if self.drop_prob == 1.0:  # every branch dropped: zeros, where x * 0 / 0 gave NaN
            return torch.zeros_like(x)
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_or_identity(rate: float) -> nn.Module:
    """Stochastic depth at ``rate``, or an Identity (no module to run or report) when it is 0."""
    return DropPath(rate) if rate > 0 else nn.Identity()
