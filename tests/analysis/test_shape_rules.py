"""summary's shape rules against torch's own meta kernels: same shapes, strides and dtypes."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis.shapes import SHAPE_RULES
from cnnlab.analysis.summary import summary

aten = torch.ops.aten


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def conv_args(n, c_in, h, w, c_out, k, stride=1, padding=0, dilation=1, groups=1, bias=True):
    weight = meta(c_out, c_in // groups, k, k)
    return (meta(n, c_in, h, w), weight, meta(c_out) if bias else None, [stride] * 2, [padding] * 2,
            [dilation] * 2, False, [0, 0], groups)


# (op, args, kwargs): cases a CNN runs, including the ambiguous layouts (C = 1, H*W = 1, batch 1)
CASES = [
    (aten.convolution.default, conv_args(1, 3, 224, 224, 64, 7, stride=2, padding=3), {}),
    (aten.convolution.default, conv_args(2, 64, 56, 56, 64, 3, padding=1, bias=False), {}),
    (aten.convolution.default, conv_args(2, 32, 15, 17, 32, 3, stride=2, groups=32), {}),  # depthwise
    (aten.convolution.default, conv_args(4, 16, 9, 9, 8, 3, padding=2, dilation=2), {}),
    (aten.convolution.default, conv_args(1, 1, 28, 28, 6, 5), {}),  # grayscale: C = 1
    (aten.convolution.default, conv_args(3, 512, 1, 1, 10, 1), {}),  # 1x1 map
    (aten.convolution.default, (meta(2, 3, 50), meta(4, 3, 5), None, [2], [1], [1], False, [0], 1), {}),  # 1-d
    (aten.native_batch_norm.default, (meta(2, 8, 5, 5), meta(8), meta(8), meta(8), meta(8), False, 0.1, 1e-5), {}),
    (aten.native_batch_norm.default, (meta(1, 8, 1, 1), None, None, meta(8), meta(8), False, 0.1, 1e-5), {}),
    (aten.relu.default, (meta(2, 8, 1, 1),), {}),  # after a global pool (squeeze-excitation)
    (aten.relu.default, (meta(2, 1, 5, 5),), {}),
    (aten.native_batch_norm.default, (meta(4, 6), meta(6), meta(6), meta(6), meta(6), False, 0.1, 1e-5), {}),
    (aten.native_batch_norm.default,
     (meta(2, 8, 4, 4, dtype=torch.half), meta(8, dtype=torch.half), meta(8, dtype=torch.half),
      meta(8, dtype=torch.half), meta(8, dtype=torch.half), False, 0.1, 1e-5), {}),
    (aten.relu.default, (meta(2, 8, 5, 5),), {}),
    (aten.relu.default, (meta(1, 1000),), {}),
    (aten.relu.default, (meta(3, 7),), {}),
    (aten.hardtanh.default, (meta(2, 8, 5, 5), 0.0, 6.0), {}),
    (aten.sigmoid.default, (meta(2, 8, 1, 3),), {}),
    (aten.tanh.default, (meta(5, 84),), {}),
    (aten.silu.default, (meta(2, 8, 5, 5, dtype=torch.half),), {}),
    (aten.hardswish.default, (meta(2, 16, 7, 7),), {}),
    (aten.hardsigmoid.default, (meta(2, 16, 3, 3),), {}),
    (aten.gelu.default, (meta(2, 16, 3, 3),), {"approximate": "tanh"}),
    (aten.add.Tensor, (meta(2, 8, 5, 5), meta(2, 8, 5, 5)), {}),
    (aten.add.Tensor, (meta(1, 8, 5, 5), meta(1, 8, 5, 5)), {"alpha": 2}),
    (aten.add.Tensor, (meta(3, 10), meta(3, 10)), {}),
    (aten.mul.Tensor, (meta(2, 8, 5, 5), meta(2, 8, 5, 5)), {}),
    (aten.add_.Tensor, (meta(2, 8, 5, 5), meta(2, 8, 5, 5)), {}),
    # a local response norm (AlexNet's lrn): number operands, a division, a power and a 3-d window average
    (aten.mul.Tensor, (meta(1, 64, 56, 56), 0.0005), {}),
    (aten.add.Tensor, (meta(1, 64, 56, 56), 2), {}),
    (aten.mul.Tensor, (meta(2, 8, 5, 5, dtype=torch.half), 0.5), {}),
    (aten.div.Tensor, (meta(1, 64, 56, 56), meta(1, 64, 56, 56)), {}),
    (aten.pow.Tensor_Scalar, (meta(1, 64, 56, 56), 0.75), {}),
    (aten.avg_pool3d.default, (meta(1, 1, 68, 56, 56), [5, 1, 1], [1, 1, 1]), {}),
    (aten.avg_pool3d.default, (meta(2, 3, 8, 9, 9), [2, 3, 3], [2, 2, 2], [1, 1, 1], True), {}),
    (aten.max_pool2d_with_indices.default, (meta(1, 64, 112, 112), [3, 3], [2, 2], [1, 1]), {}),
    (aten.max_pool2d_with_indices.default, (meta(2, 96, 55, 55), [3, 3], [2, 2]), {}),
    (aten.max_pool2d_with_indices.default, (meta(2, 64, 112, 112), [3, 3], [2, 2], [0, 0], [1, 1], True), {}),
    (aten.max_pool2d_with_indices.default, (meta(2, 64, 14, 14), [3, 3], [1, 1], [1, 1], [1, 1], True), {}),
    (aten.max_pool2d_with_indices.default, (meta(2, 8, 9, 8), [2, 2], [], [0, 0], [2, 2]), {}),
    (aten.max_pool2d_with_indices.default, (meta(8, 9, 9), [2], [2]), {}),  # unbatched
    (aten.avg_pool2d.default, (meta(2, 6, 28, 28), [2, 2], [2, 2]), {}),
    (aten.avg_pool2d.default, (meta(2, 6, 13, 13), [3, 3], [2, 2], [1, 1], True, False), {}),
    (aten._adaptive_avg_pool2d.default, (meta(2, 256, 13, 13), [6, 6]), {}),
    (aten._adaptive_avg_pool2d.default, (meta(2, 256, 3, 3), [7, 7]), {}),
    (aten.mean.dim, (meta(2, 512, 7, 7), [-1, -2], True), {}),
    (aten.mean.dim, (meta(2, 512, 7, 7), [2, 3]), {}),
    (aten.mean.dim, (meta(1, 512, 7, 7), [-1, -2], True), {}),
    (aten.mean.dim, (meta(4, 10, 3), [1]), {}),
    (aten.addmm.default, (meta(1000), meta(2, 2048), meta(1000, 2048).t()), {}),
    (aten.addmm.default, (meta(1, 10), meta(1, 84), meta(84, 10)), {}),
    (aten.cat.default, ([meta(2, 64, 7, 7), meta(2, 32, 7, 7), meta(2, 32, 7, 7)], 1), {}),
    (aten.cat.default, ([meta(2, 3), meta(5, 3)],), {}),
    (aten.cat.default, ([meta(1, 16, 1, 1), meta(1, 16, 1, 1)], -3), {}),
]


@pytest.mark.parametrize("op, args, kwargs", CASES, ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_shape_rules_give_what_torch_meta_kernels_give(op, args, kwargs):
    expected = op(*args, **kwargs)
    got = SHAPE_RULES[op](*args, **kwargs)
    assert got is not None, f"the {op} rule passed a plain case to torch"
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert (mine.shape, mine.stride(), mine.dtype, mine.device) == (
            theirs.shape, theirs.stride(), theirs.dtype, theirs.device)


@pytest.mark.parametrize(
    "op, args",
    [
        (aten.convolution.default, conv_args(1, 3, 4, 4, 8, 7)),  # input smaller than the kernel
        (aten.convolution.default, (meta(1, 4, 8, 8), *conv_args(1, 3, 8, 8, 8, 3)[1:])),  # 4 channels for 3
        (aten.max_pool2d_with_indices.default, (meta(1, 8, 2, 2), [3, 3], [2, 2])),
        (aten.max_pool2d_with_indices.default, (meta(1, 8, 9, 9), [3, 3], [2, 2], [2, 2])),  # pad > kernel / 2
        (aten.addmm.default, (meta(10), meta(2, 84), meta(80, 10))),
        (aten.cat.default, ([meta(2, 3, 4), meta(2, 3, 5)], 1)),
        (aten.add.Tensor, (meta(2, 8, 5, 5), meta(8, 1, 1))),  # broadcasting: torch's kernel decides
        # channels-last with C = 1 or a 1x1 map also passes is_contiguous(), but torch keeps its strides
        (aten.relu.default, (meta(2, 1, 5, 5).to(memory_format=torch.channels_last),)),
        (aten.add.Tensor, (meta(2, 8, 1, 1).to(memory_format=torch.channels_last),) * 2),
        (aten.max_pool2d_with_indices.default, (meta(2, 1, 8, 8).to(memory_format=torch.channels_last), [2, 2])),
        (aten.relu.default, (meta(2, 8, 5, 5).permute(0, 2, 3, 1),)),
    ],
)
def test_shape_rules_leave_other_cases_to_torch(op, args):
    assert SHAPE_RULES[op](*args) is None


def test_a_model_with_real_weights_is_left_as_it_was():
    torch.manual_seed(0)
    model = cnnlab.create_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = summary(model, (3, 32, 32), batch=4)
    assert result.macs == summary("resnet20", (3, 32, 32), batch=4).macs
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_ops_without_a_rule_run_on_meta_copies_of_real_tensors():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("scale", torch.full((1, 4, 1, 1), 2.0))

        def forward(self, x):
            y = self.conv(x) * self.scale  # broadcasting mul: torch's kernel with a meta copy of the buffer
            return torch.cat([y, y.flip(-1)], 1)  # flip has no rule either

    result = summary(Scaled(), (3, 8, 8))
    assert result.root.output_shape == (8, 6, 6)
    assert result.element_ops == 4 * 6 * 6  # the mul; the flip moves data, so it counts memory only
    assert result.activation_memory == 4 * (4 * 6 * 6 * 3 + 8 * 6 * 6)  # conv, mul, flip; the cat
    assert result.macs == 4 * 6 * 6 * 3 * 3 * 3


def test_a_resnet_needs_none_of_torchs_python_meta_kernels():
    # torch's Python meta kernels import sympy and torch._dynamo the first time they run (over a
    # second); the shape rules cover every op of a ResNet, so a first summary does without them.
    code = (
        "import sys, cnnlab; model = cnnlab.create_model('resnet50'); cnnlab.summary(model, (3, 64, 64)); "
        "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
