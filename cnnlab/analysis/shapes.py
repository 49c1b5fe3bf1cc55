"""Output shapes of the ops a CNN runs most, from input shapes alone (for :mod:`cnnlab.analysis.summary`).

torch's meta kernels for these ops are Python (references and decompositions): about a millisecond
per batch norm, and the first one used imports sympy and torch._dynamo (over a second). The rules
here give the same outputs (shape, strides, dtype: tests/analysis/test_shape_rules.py compares them
with torch's kernels) from shapes alone for the plain case: contiguous floating-point inputs, as
torch.empty makes them and most CNN layers return them. Any other case returns None and goes to
torch's own kernel, which also raises torch's error for shapes that do not fit.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cnnlab.errors import is_number

aten = torch.ops.aten


def _plain(tensor: torch.Tensor) -> bool:
    """Floating point with exactly the strides torch.empty gives its shape: every kernel below then
    returns such strides too. (is_contiguous() is not enough: a channels-last tensor with C = 1 or
    H = W = 1 passes it, and kernels keep its channels-last strides.)"""
    if not tensor.is_floating_point():
        return False
    expected = 1
    for size, stride in zip(reversed(tensor.shape), reversed(tensor.stride())):
        if stride != expected:
            return False
        expected *= max(size, 1)
    return True


def _new(shape: Sequence[int], like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device="meta")


def _two(value) -> Optional[tuple[int, int]]:
    """An aten int[2] argument as (h, w): an int or a list of one or two ints."""
    return _spatial(value, 2)


def _spatial(value, n: int) -> Optional[tuple[int, ...]]:
    """An aten int[n] argument as n ints: an int, a list of one int (repeated) or of n ints."""
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == 1:
        return (value[0],) * n
    if isinstance(value, (tuple, list)) and len(value) == n:
        return tuple(value)
    return None


def _conv_rule(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    spatial = input.dim() - 2
    if transposed or spatial < 1 or weight.dim() != input.dim() or 0 in input.shape:
        return None
    if not input.is_floating_point() or weight.dtype != input.dtype:
        return None
    if not len(stride) == len(padding) == len(dilation) == spatial:
        return None
    c_out = weight.shape[0]
    if groups < 1 or input.shape[1] != weight.shape[1] * groups or c_out % groups:
        return None
    if bias is not None and tuple(bias.shape) != (c_out,):
        return None
    sizes = []
    for size, k, s, p, d in zip(input.shape[2:], weight.shape[2:], stride, padding, dilation):
        if s < 1 or d < 1 or p < 0:
            return None
        sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)  # H' = (H + 2P - D(K-1) - 1) // S + 1
    if min(sizes) < 1:
        return None  # the input is too small: torch's kernel says so
    return _new((input.shape[0], c_out, *sizes), input)  # torch's meta conv is always contiguous


def _batch_norm_rule(input, weight, bias, running_mean, running_var, training, momentum, eps):
    if training or running_mean is None or running_var is None or input.dim() < 2 or not _plain(input):
        return None
    channels = input.shape[1]
    if any(t is not None and tuple(t.shape) != (channels,) for t in (weight, bias, running_mean, running_var)):
        return None
    # The saved statistics are the running ones in the computation dtype (fp32 for half inputs).
    stats_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    return _new(input.shape, input), _new((channels,), input, stats_dtype), _new((channels,), input, stats_dtype)


def _unary_rule(input, *args, **kwargs):
    """Activations: the output is the input's shape and dtype."""
    return _new(input.shape, input) if _plain(input) else None


def _gelu_rule(input, *, approximate="none"):
    return _unary_rule(input) if approximate in ("none", "tanh") else None


def _same_shape(a, b) -> bool:
    return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and _plain(a) and _plain(b)


def _binary_rule(input, other, **kwargs):
    """add, mul, div of two tensors of one shape (a residual sum), or of a tensor and a Python number (a float
    tensor keeps its dtype, as torch's type promotion gives); broadcasting goes to torch."""
    if is_number(other):
        return _new(input.shape, input) if _plain(input) else None
    return _new(input.shape, input) if _same_shape(input, other) else None


def _pow_scalar_rule(input, exponent):
    """x ** number (the power in a local response norm's denominator)."""
    return _new(input.shape, input) if _plain(input) and is_number(exponent) else None


def _binary_inplace_rule(input, other, **kwargs):
    """x += y with y of x's shape: the result is x itself."""
    return input if input.device.type == "meta" and _same_shape(input, other) else None


def _pool_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode,
                       n: int = 2) -> Optional[tuple[int, ...]]:
    """(.., H', W') of a 2-d window pool (n = 3: (.., D', H', W')), by torch's formula (pooling_output_shape)."""
    if input.dim() not in (n + 1, n + 2) or 0 in input.shape or not _plain(input):
        return None
    kernel = _spatial(kernel_size, n)
    stride = _spatial(stride, n) if stride else kernel
    padding, dilation = _spatial(padding, n), _spatial(dilation, n)
    if None in (kernel, stride, padding, dilation):
        return None
    sizes = []
    for size, k, s, p, d in zip(input.shape[-n:], kernel, stride, padding, dilation):
        if k < 1 or s < 1 or d < 1 or p < 0 or p > ((k - 1) * d + 1) // 2:
            return None
        out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= size + p:
            out -= 1  # the last window would start inside the right padding
        if out < 1:
            return None
        sizes.append(out)
    return (*input.shape[:-n], *sizes)


def _max_pool2d_rule(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    shape = _pool_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    if shape is None:
        return None
    return _new(shape, input), _new(shape, input, torch.int64)  # values and their indices


def _avg_pool2d_rule(input, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    if divisor_override == 0:
        return None
    shape = _pool_output_shape(input, kernel_size, stride, padding, 1, ceil_mode)
    return None if shape is None else _new(shape, input)


def _avg_pool3d_rule(input, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    """The window average over (channels, 1, 1) that torch's local response norm runs on (B, 1, C, H, W)."""
    if divisor_override == 0:
        return None
    shape = _pool_output_shape(input, kernel_size, stride, padding, 1, ceil_mode, n=3)
    return None if shape is None else _new(shape, input)


def _adaptive_avg_pool2d_rule(input, output_size):
    size = _two(output_size)
    if input.dim() not in (3, 4) or 0 in input.shape or not _plain(input) or size is None or min(size) < 1:
        return None
    return _new((*input.shape[:-2], *size), input)


def _mean_rule(input, dim, keepdim=False, *, dtype=None):
    if dtype is not None or not dim or not _plain(input):
        return None
    reduced = {d % input.dim() for d in dim} if all(-input.dim() <= d < input.dim() for d in dim) else None
    if reduced is None or len(reduced) != len(dim):
        return None
    if keepdim:
        return _new([1 if i in reduced else n for i, n in enumerate(input.shape)], input)
    return _new([n for i, n in enumerate(input.shape) if i not in reduced], input)


def _addmm_rule(bias, mat1, mat2, *, beta=1, alpha=1):
    """A linear layer: bias + (N, K) @ (K, M) -> (N, M)."""
    if mat1.dim() != 2 or mat2.dim() != 2 or mat1.shape[1] != mat2.shape[0] or not mat1.is_floating_point():
        return None
    if not mat1.dtype == mat2.dtype == bias.dtype:
        return None
    shape = (mat1.shape[0], mat2.shape[1])
    if tuple(bias.shape) not in (shape, shape[1:], (1, shape[1])):
        return None
    return _new(shape, mat1)


def _cat_rule(tensors, dim=0):
    """Concatenation of plain tensors of one dtype whose other dimensions agree (Inception, DenseNet)."""
    if not tensors or not all(isinstance(t, torch.Tensor) and _plain(t) for t in tensors):
        return None
    first = tensors[0]
    if first.dim() < 1 or not -first.dim() <= dim < first.dim():
        return None
    dim %= first.dim()
    for t in tensors[1:]:
        if t.dtype != first.dtype or t.dim() != first.dim():
            return None
        if any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != dim):
            return None
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return _new(shape, first)


SHAPE_RULES = {
    aten.convolution.default: _conv_rule,
    aten.native_batch_norm.default: _batch_norm_rule,
    aten.relu.default: _unary_rule,
    aten.hardtanh.default: _unary_rule,  # ReLU6
    aten.sigmoid.default: _unary_rule,
    aten.tanh.default: _unary_rule,
    aten.silu.default: _unary_rule,
    aten.hardswish.default: _unary_rule,
    aten.hardsigmoid.default: _unary_rule,
    aten.gelu.default: _gelu_rule,
    aten.add.Tensor: _binary_rule,
    aten.mul.Tensor: _binary_rule,
    aten.div.Tensor: _binary_rule,
    aten.pow.Tensor_Scalar: _pow_scalar_rule,
    aten.add_.Tensor: _binary_inplace_rule,
    aten.max_pool2d_with_indices.default: _max_pool2d_rule,
    aten.avg_pool2d.default: _avg_pool2d_rule,
    aten.avg_pool3d.default: _avg_pool3d_rule,  # AlexNet's LRN
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d_rule,
    aten.mean.dim: _mean_rule,
    aten.addmm.default: _addmm_rule,
    aten.cat.default: _cat_rule,
}
