"""Options from the lecture on the zoo's models: AlexNet's local response normalisation, Squeeze-and-
Excitation on the ResNet and MobileNet families, and GoogLeNet's naive Inception module.

Every count here is computed by hand from the papers' tables, written out again in this file, not read
from the model code's own constants.
"""

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import summary
from cnnlab.errors import CnnlabError
from cnnlab.layers import get_act_layer, get_norm_layer
from cnnlab.layers.inception import InceptionBlock, InceptionWidths
from cnnlab.layers.mobile import DepthwiseSeparable, InvertedResidual
from cnnlab.layers.residual import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from cnnlab.layers.se import SqueezeExcite, make_se_layer
from cnnlab.models import build_on_meta, count_params
from cnnlab.models.alexnet import local_response_norm


def modules_of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


# ---------------------------------------------------------------------------------------------
# Local response normalisation (Krizhevsky et al. 2012, section 3.3)

PAPER_LRN = dict(n=5, k=2.0, alpha=1e-4, beta=0.75)


def lrn_by_hand(a: np.ndarray, n: int, k: float, alpha: float, beta: float) -> np.ndarray:
    """b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a[j]^2)^beta, with loops."""
    batch, channels, height, width = a.shape
    b = np.empty_like(a)
    for s in range(batch):
        for i in range(channels):
            for y in range(height):
                for x in range(width):
                    total = 0.0
                    for j in range(max(0, i - n // 2), min(channels - 1, i + n // 2) + 1):
                        total += a[s, j, y, x] ** 2
                    b[s, i, y, x] = a[s, i, y, x] / (k + alpha * total) ** beta
    return b


def test_lrn_matches_the_papers_formula_including_the_channel_edges():
    torch.manual_seed(0)
    # Large activations (as after a ReLU of an unnormalised conv): the normaliser then differs from k.
    x = torch.randn(2, 7, 2, 3, dtype=torch.float64) * 60
    expected = lrn_by_hand(x.numpy(), **PAPER_LRN)
    got = local_response_norm().double()(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # The edges: channel 0 sums channels 0..2 only, channel 6 sums 4..6 (no wrap-around, no division by 3).
    a = x.numpy()
    for i, window in ((0, [0, 1, 2]), (6, [4, 5, 6])):
        by_window = a[:, i] / (PAPER_LRN["k"] + PAPER_LRN["alpha"] * (a[:, window] ** 2).sum(1)) ** PAPER_LRN["beta"]
        np.testing.assert_allclose(got[:, i], by_window, rtol=1e-10)
    # torch's own alpha (alpha / n inside the sum) taken at face value is not the paper's normalisation.
    face_value = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0).double()(x).numpy()
    assert not np.allclose(face_value, expected, rtol=1e-3)


def test_lrn_option_follows_each_papers_placement():
    layer_kinds = lambda model: [type(m).__name__ for m in model.features]  # noqa: E731
    alexnet = build_on_meta("alexnet", lrn=True)
    zfnet = build_on_meta("zfnet", lrn=True)
    # AlexNet: conv -> ReLU -> LRN -> max pool after conv1 and conv2 (sections 3.3, 3.5).
    assert layer_kinds(alexnet)[:6] == ["ConvNormAct", "LocalResponseNorm", "MaxPool2d"] * 2
    # ZFNet: conv -> ReLU -> max pool -> contrast normalisation after layers 1 and 2 (Fig. 3).
    assert layer_kinds(zfnet)[:6] == ["ConvNormAct", "MaxPool2d", "LocalResponseNorm"] * 2
    for name, with_lrn in (("alexnet", alexnet), ("zfnet", zfnet)):
        assert len(modules_of(with_lrn, nn.LocalResponseNorm)) == 2  # none after conv3-5
        plain = build_on_meta(name)
        assert not modules_of(plain, nn.LocalResponseNorm)  # off by default
        assert count_params(with_lrn) == count_params(plain)  # LRN learns nothing
        assert all(lrn.size == 5 and lrn.k == 2.0 for lrn in modules_of(with_lrn, nn.LocalResponseNorm))
    for name, option in (("alexnet", "lrn"), ("zfnet", "lrn"), ("googlenet", "naive")):
        with pytest.raises(CnnlabError, match=f"{option}='yes' must be true or false"):
            build_on_meta(name, **{option: "yes"})


# ---------------------------------------------------------------------------------------------
# Squeeze-and-Excitation (Hu et al. 2018)


def se_params(channels: int, r: int) -> int:
    """One SE block: two 1x1 convs C -> C/r -> C with biases; C/r is C // r, at least 1."""
    reduced = max(1, channels // r)
    return 2 * channels * reduced + reduced + channels


def test_squeeze_excite_is_input_times_its_gate_by_hand():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        out = se(x)
    assert out.shape == x.shape
    a = x.numpy().astype(np.float64)
    w1, b1 = se.fc1.weight.detach().numpy()[:, :, 0, 0], se.fc1.bias.detach().numpy()  # (2, 8), (2,)
    w2, b2 = se.fc2.weight.detach().numpy()[:, :, 0, 0], se.fc2.bias.detach().numpy()  # (8, 2), (8,)
    squeezed = a.mean(axis=(2, 3))  # (B, C)
    hidden = np.maximum(squeezed @ w1.T + b1, 0.0)  # ReLU
    gate = 1.0 / (1.0 + np.exp(-(hidden @ w2.T + b2)))  # sigmoid, (B, C)
    np.testing.assert_allclose(out.numpy(), a * gate[:, :, None, None], rtol=1e-5, atol=1e-6)
    assert count_params(se) == 2 * 8 * 2 + 2 + 8


def test_squeeze_excite_takes_its_layers_from_the_act_factory_and_keeps_one_channel_at_least():
    se = SqueezeExcite(16, reduction=32, act_layer="silu", gate_layer=get_act_layer("tanh"))
    assert se.fc1.out_channels == 1  # 16 // 32 = 0 would leave no channel
    assert isinstance(se.act, nn.SiLU) and isinstance(se.gate, nn.Tanh)
    assert make_se_layer(0) is None and make_se_layer(None) is None
    for bad in (True, -1, 1.5, "16"):
        with pytest.raises(CnnlabError, match="reduction ratio"):
            build_on_meta("resnet8", se=bad)


# He et al. 2016, Table 1, and Hu et al. 2018: a bottleneck block of stage s outputs C_s = 4 x planes channels,
# and ResNet-50 has N_s = 3, 4, 6, 3 of them.
RESNET50_STAGES = ((3, 256), (4, 512), (6, 1024), (3, 2048))  # (N_s, C_s)


def test_se_resnet50_adds_the_papers_2_over_r_sum_n_c_squared():
    r = 16
    base, with_se = count_params(build_on_meta("resnet50")), count_params(build_on_meta("resnet50", se=r))
    weights = 2 * sum(n * c * c for n, c in RESNET50_STAGES) // r  # the paper's count: FC weights only
    biases = sum(n * (c // r + c) for n, c in RESNET50_STAGES)
    assert with_se - base == weights + biases == 2_514_944 + 16_048
    # The paper: ResNet-50 25.6M, SE-ResNet-50 ~28.1M parameters (its count leaves the biases out).
    assert round(base / 1e6, 1) == 25.6 and round((base + weights) / 1e6, 1) == 28.1
    # ResNeXt and wide ResNet-50 blocks output the same C_s, so SE adds exactly as much to them.
    for name in ("resnext50_32x4d", "wide_resnet50_2", "preact_resnet50"):
        assert count_params(build_on_meta(name, se=r)) - count_params(build_on_meta(name)) == weights + biases


@pytest.mark.parametrize("name, r", [("resnet20", 16), ("plain20", 16), ("resnet8", 32)])
def test_se_on_cifar_nets_adds_one_block_per_residual_block(name, r):
    n = (int(name.removeprefix("resnet").removeprefix("plain")) - 2) // 6  # 6n+2 layers
    by_hand = sum(n * se_params(c, r) for c in (16, 32, 64))  # section 4.2: 16, 32, 64 filters
    assert count_params(build_on_meta(name, se=r)) - count_params(build_on_meta(name)) == by_hand


# Sandler et al. 2018, Table 2, after the 32-channel stem: (t, c, n, s).
MOBILENET_V2_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


def test_se_on_mobilenets_reduces_the_depthwise_width():
    r = 16
    by_hand, chs = 0, 32
    for t, c, n, _ in MOBILENET_V2_TABLE:
        for _ in range(n):
            by_hand += se_params(chs * t, r)  # on the expanded width t * C_in, after the depthwise conv
            chs = c
    v2, v2_se = build_on_meta("mobilenet_v2"), build_on_meta("mobilenet_v2", se=r)
    assert count_params(v2_se) - count_params(v2) == by_hand
    for block in modules_of(v2_se, InvertedResidual):
        names = [name for name, _ in block.named_children()]
        assert names.index("depthwise") < names.index("se") < names.index("project")
        assert block.se.fc1.in_channels == block.depthwise.conv.out_channels
    v1_se = build_on_meta("mobilenet_v1", se=r)
    for block in modules_of(v1_se, DepthwiseSeparable):
        assert [name for name, _ in block.named_children()] == ["depthwise", "se", "pointwise"]
        assert block.se.fc1.in_channels == block.depthwise.conv.out_channels
    assert len(modules_of(v1_se, SqueezeExcite)) == len(modules_of(v1_se, DepthwiseSeparable)) == 13


@pytest.mark.parametrize("block_type, in_chs", [(BasicBlock, 8), (Bottleneck, 32), (PreActBasicBlock, 8),
                                                (PreActBottleneck, 32)])
@pytest.mark.parametrize("shortcut", ["projection", "none"])
def test_se_gates_the_residual_branch_before_the_addition(block_type, in_chs, shortcut):
    torch.manual_seed(0)
    block = block_type(in_chs, 8, norm_layer=get_norm_layer("bn"), act_layer=nn.ReLU, shortcut=shortcut,
                       se_layer=make_se_layer(4, nn.ReLU)).eval()
    assert isinstance(block.se, SqueezeExcite) and block.se.fc2.out_channels == block.out_chs
    with torch.no_grad():
        block.se.fc2.weight.zero_()
        block.se.fc2.bias.fill_(-1e4)  # the gate closes: the branch contributes nothing
        x = torch.randn(2, in_chs, 4, 4)
        out = block(x)
    if shortcut == "none":
        expected = torch.zeros_like(out)  # a plain block is all branch: act(0) or 0
    elif block_type.is_preact:
        expected = x  # the identity, nothing after the addition
    else:
        expected = torch.relu(x)  # act(0 + x)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_se_builds_in_every_resnet_variant_and_trains():
    for name in ("resnet18", "preact_resnet18", "resnext50_32x4d", "wide_resnet50_2", "resnet20", "plain20"):
        model = build_on_meta(name, se=16)
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, PreActBasicBlock,
                                                                PreActBottleneck))]
        assert blocks and all(isinstance(b.se, SqueezeExcite) and b.se.fc1.in_channels == b.out_chs for b in blocks)
        assert not modules_of(build_on_meta(name), SqueezeExcite)  # off by default
    torch.manual_seed(0)
    model = cnnlab.create_model("resnet8", num_classes=3, in_chans=1, se=8).train()
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The naive Inception module (Szegedy et al. 2015, Fig. 2a)

# Table 1, inception (3a), on the 28x28x192 map the stem gives at a 224 input.
IN_3A, SIDE_3A = 192, 28
ROW_3A = InceptionWidths(64, 96, 128, 16, 32, 32)  # #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj


def conv_bn(c_in, c_out, k):
    """(weights, MACs per pixel) of a bias-free conv with BatchNorm (scale and shift per channel)."""
    return c_in * c_out * k * k + 2 * c_out, c_in * c_out * k * k


def test_naive_inception_3a_costs_the_table_by_hand():
    naive_convs = [conv_bn(IN_3A, 64, 1), conv_bn(IN_3A, 128, 3), conv_bn(IN_3A, 32, 5)]
    reduced_convs = [conv_bn(IN_3A, 64, 1), conv_bn(IN_3A, 96, 1), conv_bn(96, 128, 3), conv_bn(IN_3A, 16, 1),
                     conv_bn(16, 32, 5), conv_bn(IN_3A, 32, 1)]
    bn, relu = get_norm_layer("bn"), get_act_layer("relu")
    pixels = SIDE_3A * SIDE_3A
    for naive, convs in ((True, naive_convs), (False, reduced_convs)):
        with torch.device("meta"):
            block = InceptionBlock(IN_3A, ROW_3A, bn, relu, kernel_5x5=5, naive=naive)
        result = summary(block, (IN_3A, SIDE_3A, SIDE_3A))
        assert count_params(block) == result.total_params == sum(p for p, _ in convs)
        assert result.macs == pixels * sum(m for _, m in convs)
        out_chs = 64 + 128 + 32 + (IN_3A if naive else 32)  # naive: the pool branch keeps all 192 channels
        assert block.out_chs == out_chs and result.root.output_shape == (out_chs, SIDE_3A, SIDE_3A)
    naive_macs = pixels * sum(m for _, m in naive_convs)
    reduced_macs = pixels * sum(m for _, m in reduced_convs)
    assert (naive_macs, reduced_macs) == (303_464_448, 128_049_152)  # 2.4x as many multiply-adds


def test_naive_googlenet_grows_its_width_module_by_module():
    # Table 1's (#1x1, #3x3, #5x5) per module, 3a to 5b; the naive module adds them to its input width.
    table = ((64, 128, 32), (128, 192, 96), (192, 208, 48), (160, 224, 64), (128, 256, 64), (112, 288, 64),
             (256, 320, 128), (256, 320, 128), (384, 384, 128))
    widths, chs = [], 192
    for ch1, ch3, ch5 in table:
        chs += ch1 + ch3 + ch5
        widths.append(chs)
    model = build_on_meta("googlenet", naive=True)
    blocks = modules_of(model, InceptionBlock)
    assert [b.out_chs for b in blocks] == widths and widths[0] == 416 and widths[-1] == 4944
    assert model.num_features == widths[-1] and model.fc.in_features == widths[-1]
    assert [h.conv.conv.in_channels for h in model.aux_heads.values()] == [widths[2], widths[5]]  # after 4a, 4d
    assert all(isinstance(b.branch4, nn.MaxPool2d) and b.branch2.conv.kernel_size == (3, 3) for b in blocks)
    result = summary(model, (3, 224, 224))  # a forward pass on the meta device, through cnnlab's shape rules
    assert result.root.output_shape == (1000,)
    assert [row.output_shape for row in result.rows() if row.type == "InceptionBlock"][-1] == (widths[-1], 7, 7)
    assert result.total_params > 5 * count_params(build_on_meta("googlenet"))
