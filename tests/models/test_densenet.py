"""DenseNet-121: channel growth computed from Table 1, dense connectivity, pre-activation layers."""

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.layers.dense import DenseBlock, DenseLayer, DenseTransition
from cnnlab.models.densenet import BN_SIZE, COMPRESSION, DENSENET_CFGS, GROWTH_RATE, STEM_GROWTH_MULTIPLE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cnnlab.create_model("densenet121", num_classes=10).eval()


def test_channels_grow_by_k_per_layer_and_halve_at_transitions(model):
    x = torch.randn(1, 3, 64, 64)
    chs = STEM_GROWTH_MULTIPLE * GROWTH_RATE  # 64 after the stem
    expected = {}
    for index, num_layers in enumerate(DENSENET_CFGS["densenet121"], start=1):
        chs += num_layers * GROWTH_RATE
        expected[f"block{index}"] = chs
        if index < len(DENSENET_CFGS["densenet121"]):
            chs = int(chs * COMPRESSION)
            expected[f"transition{index}"] = chs
    seen = {}
    with torch.no_grad():
        for name, layer in model.features.named_children():
            x = layer(x)
            seen[name] = x.shape[1]
    assert {name: seen[name] for name in expected} == expected
    assert expected["block4"] == 1024  # the features before the final norm
    assert model.num_features == 1024 and x.shape == (1, 1024, 2, 2)


def test_each_layer_reads_everything_before_it():
    block = DenseBlock(3, in_chs=8, growth_rate=4, bn_size=2, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    in_widths = [layer.conv1.conv.in_channels for layer in block.layers]
    assert in_widths == [8, 12, 16]
    x = torch.randn(2, 8, 5, 5)
    out = block(x)
    assert out.shape == (2, 8 + 3 * 4, 5, 5)
    torch.testing.assert_close(out[:, :8], x)  # the block's input is passed on unchanged


def test_layers_are_preactivation_with_a_4k_bottleneck(model):
    layer = next(m for m in model.modules() if isinstance(m, DenseLayer))
    assert [type(m) for m in layer.conv1] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]  # norm -> act -> conv
    assert layer.conv1.conv.out_channels == BN_SIZE * GROWTH_RATE == 128
    assert layer.conv2.conv.kernel_size == (3, 3) and layer.conv2.conv.out_channels == GROWTH_RATE
    transitions = [m for m in model.modules() if isinstance(m, DenseTransition)]
    assert len(transitions) == 3 and all(isinstance(t.pool, nn.AvgPool2d) for t in transitions)
    # The last block ends in a conv, so the trunk ends in norm + act.
    assert [type(m) for m in list(model.features.children())[-2:]] == [nn.BatchNorm2d, nn.ReLU]


def test_121_weighted_layers(model):
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert convs + linears == 121


def test_grayscale_at_min_size_and_no_residual_option():
    size = cnnlab.model_info("densenet121").min_size
    model = cnnlab.create_model("densenet121", in_chans=1, num_classes=3, drop_rate=0.1)
    out = model(torch.randn(2, 1, size, size))
    out.sum().backward()
    assert out.shape == (2, 3) and isinstance(model.head, nn.Dropout)
    with pytest.raises(CnnlabError):
        cnnlab.create_model("densenet121", zero_init_residual=True)
