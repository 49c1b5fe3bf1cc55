"""ConvNeXt-T: stage table, layer scale, stochastic depth, zero-init, the head's LayerNorm."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab
from cnnlab.layers.convnext import ConvNeXtBlock
from cnnlab.layers.norm import LayerNorm2d
from cnnlab.models.convnext import CONVNEXT_CFGS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cnnlab.create_model("convnext_tiny", num_classes=10).eval()


def blocks_of(model):
    return [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]


def test_stages_follow_the_table_with_downsampling_before_stages_2_to_4(model):
    stages = CONVNEXT_CFGS["convnext_tiny"]
    names = [name for name, _ in model.features.named_children()]
    assert names == ["stem", "stage1", "downsample2", "stage2", "downsample3", "stage3", "downsample4", "stage4"]
    for index, (depth, dim) in enumerate(stages, start=1):
        stage = getattr(model.features, f"stage{index}")
        assert len(stage) == depth and all(b.dwconv.in_channels == dim for b in stage)
    down = model.features.downsample2
    assert [type(m) for m in down] == [LayerNorm2d, nn.Conv2d]  # norm, then the 2x2/2 conv
    assert down.conv.kernel_size == down.conv.stride == (2, 2)
    stem = model.features.stem.conv
    assert stem.kernel_size == stem.stride == (4, 4) and stem.bias is not None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, stages[-1][1], 2, 2)  # 64 / 32


def test_block_is_depthwise_7x7_then_4x_mlp_with_gelu_and_ln(model):
    block = blocks_of(model)[0]
    assert block.dwconv.kernel_size == (7, 7) and block.dwconv.groups == block.dwconv.in_channels
    assert (block.fc1.in_features, block.fc1.out_features) == (96, 4 * 96)
    assert isinstance(block.act, nn.GELU) and isinstance(block.norm, LayerNorm2d)
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, nn.LayerNorm))


def test_layer_scale_starts_at_1e6_and_leads_the_block_state_dict(model):
    for block in blocks_of(model):
        dim = block.dwconv.in_channels
        assert block.layer_scale.shape == (dim, 1, 1)
        assert torch.all(block.layer_scale == 1e-6)
        assert next(iter(block.state_dict())) == "layer_scale"


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    block = ConvNeXtBlock(8, LayerNorm2d, nn.GELU, layer_scale_init=1.0, drop_path=0.5)
    x = torch.randn(64, 8, 5, 5)
    block.train()
    out = block(x)
    dropped = [torch.equal(out[i], x[i]) for i in range(len(x))]  # branch dropped: output is the input
    assert 0 < sum(dropped) < len(x)
    block.eval()
    with torch.no_grad():
        out = block(x)
        assert not any(torch.equal(out[i], x[i]) for i in range(len(x)))
        torch.testing.assert_close(block(x), out)  # deterministic


def test_drop_path_rate_rises_linearly_to_the_last_block():
    with torch.device("meta"):
        model = cnnlab.create_model("convnext_tiny", drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks_of(model)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_zero_init_residual_makes_every_block_the_identity():
    torch.manual_seed(0)
    model = cnnlab.create_model("convnext_tiny", zero_init_residual=True).eval()
    x = torch.randn(1, 96, 4, 4)
    for block in blocks_of(model):
        assert not block.layer_scale.any()
    with torch.no_grad():
        torch.testing.assert_close(model.features.stage1(x), x)
    no_scale = ConvNeXtBlock(8, LayerNorm2d, nn.GELU, layer_scale_init=None).eval()
    no_scale.zero_init_last()  # without layer scale the last linear is zeroed instead
    y = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(no_scale(y), y)


def test_head_norm_is_layernorm_over_the_pooled_features(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = features.mean((2, 3))  # (B, 768)
        norm = model.head[0].norm
        expected = F.layer_norm(pooled, (768,), norm.weight, norm.bias, eps=1e-6)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), expected)


def test_grayscale_at_min_size():
    size = cnnlab.model_info("convnext_tiny").min_size
    model = cnnlab.create_model("convnext_tiny", in_chans=1, num_classes=3)
    out = model(torch.randn(2, 1, size, size))
    out.sum().backward()
    assert out.shape == (2, 3) and model.features.stem.conv.weight.grad is not None
