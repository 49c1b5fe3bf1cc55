"""Receptive fields and effective strides ("jumps").

For a layer with kernel k, stride s and dilation d applied to a map whose units see ``r`` input
pixels and sit ``j`` input pixels apart (Araujo et al. 2019, "Computing Receptive Fields"):

    r_out = r_in + (k - 1) * d * j_in
    j_out = j_in * s

Padding shifts where a field starts but not its size. Where paths meet (a residual add, an
Inception concat) the field of the result is the largest over its inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from torch import nn

from cnnlab.errors import CnnlabError, InputTooSmallError
from cnnlab.layers.act import QuickGELU
from cnnlab.layers.blocks import DropPath, runs_children_in_order


@dataclass(frozen=True)
class ReceptiveField:
    """Field size and jump along height and width; ``size`` is None once a layer mixes all
    positions (global pooling, a fully connected layer): it then sees the whole input."""

    size: tuple[int, int] | None = (1, 1)
    jump: tuple[int, int] = (1, 1)

    @property
    def is_global(self) -> bool:
        return self.size is None

    def through(
        self, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1)
    ) -> "ReceptiveField":
        """The field after a conv or pool with these (h, w) settings. A field that already sees the whole input
        stays whole, but its jump (the effective stride between output positions) still grows with the stride:
        after a squeeze-excitation gate, the next stages' maps are as subsampled as without it."""
        (j_h, j_w) = self.jump
        jump = (j_h * stride[0], j_w * stride[1])
        if self.size is None:
            return ReceptiveField(None, jump)
        (r_h, r_w) = self.size
        size = (r_h + (kernel[0] - 1) * dilation[0] * j_h, r_w + (kernel[1] - 1) * dilation[1] * j_w)
        return ReceptiveField(size, jump)

    def __str__(self) -> str:
        if self.size is None:
            return "all"
        return _pair_text(self.size)

    @staticmethod
    def merge(fields: Iterable["ReceptiveField"]) -> "ReceptiveField":
        """Where paths meet: the largest field and the largest jump over the inputs."""
        fields = list(fields)
        if not fields:
            return ReceptiveField()
        if len(fields) == 1:  # one input (most ops): its field passes unchanged
            return fields[0]
        if any(f.size is None for f in fields):
            return ReceptiveField(None, tuple(max(f.jump[i] for f in fields) for i in range(2)))
        size = tuple(max(f.size[i] for f in fields) for i in range(2))
        jump = tuple(max(f.jump[i] for f in fields) for i in range(2))
        return ReceptiveField(size, jump)


def adaptive_window(in_size: int, out_size: int) -> tuple[int, int]:
    """(kernel, stride) of the window pool an adaptive pool from ``in_size`` to ``out_size`` is, along one side.

    Output i averages (or maxes) inputs floor(i * in / out) to ceil((i + 1) * in / out) - 1, as torch's
    adaptive pooling does. When ``out`` divides ``in`` every window has in / out inputs and starts in / out
    after the previous one; otherwise windows and steps vary, and, as where paths meet, the largest of each
    is taken: the largest field any output has and the widest spacing between neighbours (at least 1,
    also when the pool enlarges the map and neighbours share inputs).
    """
    starts = [(i * in_size) // out_size for i in range(out_size)]
    ends = [-((-(i + 1) * in_size) // out_size) for i in range(out_size)]  # ceil((i + 1) * in / out)
    kernel = max(end - start for start, end in zip(starts, ends))
    stride = max([b - a for a, b in zip(starts, starts[1:])] + [1])
    return kernel, stride


LayerSpec = Union[nn.Module, tuple, list]

# What receptive_field accepts, quoted by its messages.
ACCEPTED = (
    "a list of layers, each a (kernel, stride) or (kernel, stride, dilation) tuple of whole numbers of at "
    "least 1 (or (h, w) pairs), an nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, adaptive 2-d pool or nn.Linear, an "
    "nn.Sequential of such layers (ConvNormAct), or a layer that keeps each position's field (activation, "
    "norm, dropout, flatten, 2-d padding); an nn.Sequential or nn.ModuleList is taken as that list"
)
# Layers whose geometry the walk does not follow: a field after them would be wrong, so they are refused.
_NOT_FOLLOWED = (
    nn.modules.conv._ConvNd,  # Conv2d is handled before this check; 1-d, 3-d and transposed convs are not
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd, nn.modules.pooling._MaxUnpoolNd,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.Unfold, nn.Fold,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)
_PAD_2D = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
# Leaves that compute each position from that position alone (or its channels): the field passes unchanged.
# Any other leaf may subsample or mix positions (a blur pool, a space-to-depth), so it is refused.
_KEEPS_FIELD = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.ChannelShuffle, nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d,
    DropPath, QuickGELU,
)


def _keeps_field(layer: nn.Module) -> bool:
    """Whether a leaf layer leaves each position's field as it was: norms, dropout, flatten, and activations
    (torch's, but not attention, nor a softmax over anything but the channels)."""
    if isinstance(layer, _KEEPS_FIELD):
        return True
    if isinstance(layer, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return layer.dim in (1, -3)
    return type(layer).__module__ == nn.modules.activation.__name__ and not isinstance(layer, nn.MultiheadAttention)


def receptive_field(
    layers: Iterable[LayerSpec], *, input_size: Optional[Sequence[int]] = None
) -> list[ReceptiveField]:
    """Receptive field after each layer of a plain stack, where each layer reads the previous one's output.

    ``layers`` is a list (or tuple, or an ``nn.Sequential`` / ``nn.ModuleList``, taken as the list of its
    children) of:

    * ``(kernel, stride)`` or ``(kernel, stride, dilation)``: whole numbers of at least 1, or (h, w) pairs;
    * ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d``: their kernel, stride and dilation;
    * an adaptive 2-d pool: global (the field is ``all``) when it pools to 1x1; otherwise the window pool it
      is (:func:`adaptive_window`: kernel and stride H / H' when H' divides H), whose window depends on
      the size of its input, so ``input_size`` must be given;
    * ``nn.Linear``: every position mixed (``all``);
    * an ``nn.Sequential`` that runs its children in order (the zoo's ``ConvNormAct``): walked layer by
      layer; its entry is the field after its last layer;
    * an activation, norm, dropout or ``nn.Flatten`` layer (torch's, and the zoo's ``LayerNorm2d``,
      ``DropPath``, ...): keeps the field; a 2-d padding layer keeps it too and only grows the map. Any
      other layer without submodules is refused: it may subsample or mix positions (a blur pool).

    The result has one field per item of ``layers``, and equals the receptive-field column of
    ``cnnlab.summary`` for the same layers. Refused with a :class:`CnnlabError`: a string or any other
    item, a block with its own forward (a residual block, an Inception block: paths this walk cannot
    see; ``cnnlab.summary(model, input_size)`` follows every path), and layers whose geometry is not
    followed (1-d, 3-d and transposed convs, upsampling, pixel shuffle, unfold, ...).

    ``input_size``, (H, W) or (C, H, W): the size of the stack's input. The map's size is then followed
    through every layer (padding included), which a non-global adaptive pool needs; a map that would
    shrink below 1 pixel raises :class:`InputTooSmallError`. A ``(kernel, stride)`` tuple has no padding to go by,
    so from the first tuple on the size is no longer known and no longer checked.

    The lecture's check, three 3x3 convs of stride 1:

        >>> [f.size for f in receptive_field([(3, 1)] * 3)]
        [(3, 3), (5, 5), (7, 7)]
    """
    items = _stack_items(layers)
    walk = _Walk(_input_side(input_size))
    fields = []
    for index, item in enumerate(items):
        walk.layer(item, f"layers[{index}]")
        fields.append(walk.field)
    return fields


def _stack_items(layers) -> list:
    """The items of ``layers`` as a list; what is not a stack of layers is refused."""
    if isinstance(layers, nn.Module):
        if isinstance(layers, nn.ModuleList) or runs_children_in_order(layers):
            return list(layers)
        raise CnnlabError(
            f"receptive_field takes a stack of layers, and the {_describe(layers)} given is not one"
            + (": its forward is its own (it may branch or skip layers). Pass its plain part (a plain zoo "
               "network's .features) or use cnnlab.summary(model, input_size), whose receptive-field column "
               "follows every path." if _has_children(layers)
               else " but a single layer: wrap it in a list, [layer].")
            + f" Accepted: {ACCEPTED}."
        )
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise CnnlabError(f"receptive_field takes {ACCEPTED}; got {_describe(layers)}.")
    return list(layers)


def _input_side(input_size) -> Optional[tuple[int, int]]:
    """(H, W) of ``input_size`` = (H, W) or (C, H, W), or None when not given."""
    if input_size is None:
        return None
    if (not isinstance(input_size, (tuple, list)) or len(input_size) not in (2, 3)
            or not all(_is_whole(v) and v >= 1 for v in input_size)):
        raise CnnlabError(
            f"input_size must be (H, W) or (C, H, W), whole numbers of at least 1, got {input_size!r}."
        )
    return (int(input_size[-2]), int(input_size[-1]))


class _Walk:
    """The field, and the map's (H, W) when known, as layers are applied one after another."""

    def __init__(self, side: Optional[tuple[int, int]]):
        self.field = ReceptiveField()
        self.side = side  # None: not given, or no longer known (after a tuple, which has no padding)
        self.size_given = side is not None
        self.unknown_after: Optional[str] = None  # the tuple after which the size is no longer known

    def layer(self, layer, where: str) -> None:
        if isinstance(layer, (tuple, list)):
            kernel, stride, dilation = _tuple_geometry(layer, where)
            self.field = self.field.through(kernel, stride, dilation)
            if self.side is not None:
                self.side, self.unknown_after = None, where
        elif not isinstance(layer, nn.Module):
            raise CnnlabError(f"{where} is {_describe(layer)}; receptive_field takes {ACCEPTED}.")
        elif isinstance(layer, nn.Conv2d):
            stride, dilation = _pair(layer.stride), _pair(layer.dilation)
            self._resize(layer, where, _pair(layer.kernel_size), stride, dilation, layer.padding)
            self.field = self.field.through(_pair(layer.kernel_size), stride, dilation)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _pair(layer.kernel_size)
            stride = _pair(layer.stride) if layer.stride else kernel
            dilation = _pair(getattr(layer, "dilation", 1))  # AvgPool2d has none
            self._resize(layer, where, kernel, stride, dilation, layer.padding, ceil=layer.ceil_mode)
            self.field = self.field.through(kernel, stride, dilation)
        elif isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            self._adaptive_pool(layer, where)
        elif isinstance(layer, nn.Linear):
            self.field = ReceptiveField(None, self.field.jump)  # one vector: every position mixed
        elif isinstance(layer, _PAD_2D):
            left, right, top, bottom = layer.padding
            if self.side is not None:
                before = self.side
                self.side = (self.side[0] + top + bottom, self.side[1] + left + right)  # negative pads crop
                self._check_side(layer, where, before)
        elif isinstance(layer, _NOT_FOLLOWED):
            raise CnnlabError(
                f"{where} is {_a(_describe(layer))}, whose effect on the receptive field receptive_field does not "
                "follow (it takes 2-d convs and pools). Use cnnlab.summary(model, input_size) for the field "
                "of a network with such layers."
            )
        elif _has_children(layer):
            if not runs_children_in_order(layer):
                raise CnnlabError(
                    f"{where} is {_a(_describe(layer))}, a block with its own forward (it may branch or skip "
                    "layers), which receptive_field cannot follow. Use cnnlab.summary(model, input_size), "
                    f"whose receptive-field column follows every path. Accepted: {ACCEPTED}."
                )
            for name, child in layer.named_children():
                self.layer(child, f"{where}.{name}")
        elif not _keeps_field(layer):
            raise CnnlabError(
                f"{where} is {_a(_describe(layer))}, a layer receptive_field does not know: it may subsample or mix "
                "positions. Use cnnlab.summary(model, input_size), whose receptive-field column follows what the "
                f"layer computes. Accepted: {ACCEPTED}."
            )
        # A leaf that keeps the field (activation, norm, dropout, flatten) keeps the map's size too.

    def _adaptive_pool(self, layer, where: str) -> None:
        out = layer.output_size if isinstance(layer.output_size, (tuple, list)) else (layer.output_size,) * 2
        if all(o == 1 for o in out):
            self.field = ReceptiveField(None, self.field.jump)  # global pooling sees the whole input
            self.side = (1, 1) if self.side is not None else None
            return
        if self.field.is_global:
            return
        if self.side is None:
            if self.size_given:
                problem = (f"the map's size after {self.unknown_after} is not known: a (kernel, stride) tuple "
                           "has no padding. Give those layers as modules (nn.Conv2d with its padding)")
            else:
                problem = "input_size is not given. Give receptive_field(..., input_size=(H, W))"
            raise CnnlabError(
                f"{where} is {_a(_describe(layer))}, a window pool whose window depends on the size of its input "
                f"(H / H' pixels for an H x H input pooled to H' x H'), but {problem}."
            )
        outs = tuple(self.side[i] if out[i] is None else int(out[i]) for i in range(2))  # None keeps that side
        windows = [adaptive_window(self.side[i], outs[i]) for i in range(2)]
        self.field = self.field.through((windows[0][0], windows[1][0]), (windows[0][1], windows[1][1]))
        self.side = outs

    def _resize(self, layer, where, kernel, stride, dilation, padding, *, ceil: bool = False) -> None:
        if self.side is None:
            return
        if padding == "same":
            return  # the output keeps the input's size
        padding = (0, 0) if padding == "valid" else _pair(padding)
        before = self.side
        self.side = tuple(
            _window_output(self.side[i], kernel[i], stride[i], padding[i], dilation[i], ceil) for i in range(2)
        )
        self._check_side(layer, where, before)

    def _check_side(self, layer, where, before) -> None:
        if min(self.side) < 1:
            raise InputTooSmallError(
                f"The input is too small for these layers: {where}, {_a(_describe(layer))}, receives a "
                f"{before[0]}x{before[1]} map and would leave no pixels. Give a larger input_size."
            )


def _window_output(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> int:
    """A conv's or pool's output side, by torch's formula (with ceil_mode's rule for the last window)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start inside the right padding
    return out


def _tuple_geometry(layer, where: str):
    """(kernel, stride, dilation) as (h, w) pairs of a (kernel, stride[, dilation]) tuple; anything else is refused."""
    values = [_pair_or_none(v) for v in layer] if len(layer) in (2, 3) else [None]
    if None in values:
        raise CnnlabError(
            f"{where} is {_describe(layer)}: a layer given as numbers is (kernel, stride) or "
            "(kernel, stride, dilation), each a whole number of at least 1 or an (h, w) pair of them, "
            f"e.g. (3, 1). Accepted: {ACCEPTED}."
        )
    kernel, stride, *rest = values
    return kernel, stride, rest[0] if rest else (1, 1)


def _pair_or_none(value) -> Optional[tuple[int, int]]:
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(_is_whole(v) and v >= 1 for v in value):
            return (int(value[0]), int(value[1]))
        return None
    return (int(value), int(value)) if _is_whole(value) and value >= 1 else None


def _is_whole(value) -> bool:
    """An integer (numpy's and torch's integer scalars too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def _describe(value) -> str:
    """A value in a message: a module's class (and its settings when they fit on a line), else the
    value and its type."""
    if isinstance(value, nn.Module):
        text = repr(value)
        return type(value).__name__ + (f" ({text})" if "\n" not in text and len(text) <= 80 else "")
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} (of type {type(value).__name__})"


def _a(text: str) -> str:
    """``text`` after its indefinite article: "an AvgPool2d", "a Conv2d"."""
    return ("an " if text[:1] in "AEIOUaeiou" else "a ") + text


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _pair_text(pair: Sequence[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
