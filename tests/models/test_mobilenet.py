"""MobileNet V1 and V2: Table 1 / Table 2 structure, the published V1 parameter count, the inverted
residual's shortcut rule, width multipliers and 28x28 grayscale inputs."""

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.layers.mobile import DepthwiseSeparable, InvertedResidual, make_divisible
from cnnlab.models.mobilenet import MOBILENET_V1_LAYERS, MOBILENET_V2_BLOCKS


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def test_v1_parameter_count_equals_keras_mobilenet_1_0_224():
    # Keras applications MobileNet(alpha=1.0, 224): 4,231,976 trainable parameters (its BatchNorm
    # moving statistics are the non-trainable rest, buffers here).
    assert count_params(cnnlab.create_model("mobilenet_v1")) == 4_231_976


def test_v1_is_depthwise_then_pointwise_throughout():
    model = cnnlab.create_model("mobilenet_v1")
    layers = [m for m in model.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(layers) == sum(repeats for repeats, _, _ in MOBILENET_V1_LAYERS) == 13
    strides = [layer.depthwise.conv.stride[0] for layer in layers]
    assert strides == [s for repeats, s, _ in MOBILENET_V1_LAYERS for _ in range(repeats)]
    for layer in layers:
        dw, pw = layer.depthwise.conv, layer.pointwise.conv
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
        assert pw.groups == 1 and pw.kernel_size == (1, 1) and pw.in_channels == dw.out_channels
    # The only full (groups=1) spatial conv is the stem.
    full_3x3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (3, 3)]
    assert len(full_3x3) == 1 and full_3x3[0] is model.features[0].conv


def test_width_multiplier_scales_channels():
    half = cnnlab.create_model("mobilenet_v1", width_mult=0.5)
    assert half.features[0].conv.out_channels == 16 and half.num_features == 512
    assert count_params(half) < count_params(cnnlab.create_model("mobilenet_v1")) / 3
    v2 = cnnlab.create_model("mobilenet_v2", width_mult=0.5)
    assert v2.features[0].conv.out_channels == 16
    assert v2.num_features == 1280  # the last conv is never narrowed below 1280
    assert cnnlab.create_model("mobilenet_v2", width_mult=1.4).num_features == 1792


def test_make_divisible_rounds_to_8_and_never_loses_more_than_10_percent():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(20) == 24  # nearest multiple of 8 (ties round up)
    assert make_divisible(32 * 0.35) == 16  # 11.2 rounds to 8, more than 10% down, so up to 16
    assert make_divisible(3) == 8  # never below the divisor


def test_v2_shortcut_exactly_when_stride_1_and_same_channels():
    model = cnnlab.create_model("mobilenet_v2")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in MOBILENET_V2_BLOCKS) == 17
    for block in blocks:
        in_chs = (block.expand.conv if block.expand is not None else block.depthwise.conv).in_channels
        stride = block.depthwise.conv.stride[0]
        assert block.use_shortcut == (stride == 1 and in_chs == block.out_chs)
    # In Table 2 only the repeats after the first of each row keep the shape.
    assert sum(b.use_shortcut for b in blocks) == sum(n - 1 for _, _, n, _ in MOBILENET_V2_BLOCKS) == 10


def test_v2_shortcut_adds_the_input_and_zero_init_makes_it_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6)
    keep = InvertedResidual(16, 16, 1, 6, nn.BatchNorm2d, nn.ReLU6).eval()
    change = InvertedResidual(16, 24, 1, 6, nn.BatchNorm2d, nn.ReLU6).eval()
    keep.zero_init_last(), change.zero_init_last()
    torch.testing.assert_close(keep(x), x)  # branch zeroed, the shortcut remains
    assert change(x).shape == (2, 24, 6, 6) and change(x).abs().sum() > 0  # no shortcut: left alone
    model = cnnlab.create_model("mobilenet_v2", zero_init_residual=True)
    zeroed = [b for b in model.modules() if isinstance(b, InvertedResidual) and not b.project.norm.weight.any()]
    assert len(zeroed) == 10 and all(b.use_shortcut for b in zeroed)


def test_v2_blocks_follow_table_2():
    model = cnnlab.create_model("mobilenet_v2")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    rows = [(t, c) for t, c, n, _ in MOBILENET_V2_BLOCKS for _ in range(n)]
    for block, (t, c) in zip(blocks, rows):
        assert block.out_chs == c
        assert (block.expand is None) == (t == 1)  # no expansion conv when t = 1
        hidden = block.depthwise.conv.in_channels
        assert block.depthwise.conv.groups == hidden and hidden == block.project.conv.in_channels
    first_expanding = blocks[1]
    assert first_expanding.expand.conv.out_channels == 6 * first_expanding.expand.conv.in_channels
    # Linear bottleneck: the projection has no activation; ReLU6 is the default elsewhere.
    assert [type(m) for m in blocks[0].project] == [nn.Conv2d, nn.BatchNorm2d]
    assert isinstance(blocks[0].depthwise.act, nn.ReLU6)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_runs_at_28_and_32_grayscale(name):
    assert cnnlab.model_info(name).min_size == 28
    model = cnnlab.create_model(name, in_chans=1, num_classes=10)
    for size in (28, 32):
        out = model(torch.randn(2, 1, size, size))
        assert out.shape == (2, 10)
        assert model.forward_features(torch.randn(2, 1, size, size)).shape[2:] == (1, 1)  # 32x smaller
    out.sum().backward()
    assert model.features[0].conv.weight.grad is not None


def test_v1_takes_no_residual_option():
    with pytest.raises(CnnlabError):
        cnnlab.create_model("mobilenet_v1", zero_init_residual=True)
