"""cnnlab.summary against the lecture's AlexNet table, torch's FlopCounterMode, and hand counts."""


import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.analysis import receptive_field, summary
from cnnlab.errors import CnnlabError
from cnnlab.models import model_info


def row(result, name):
    return next(r for r in result.rows() if r.name == name)


def test_alexnet_reproduces_the_lecture_table():
    result = summary("alexnet", (3, 227, 227))
    conv1 = row(result, "features.0.conv")
    assert conv1.output_shape == (64, 56, 56)
    assert conv1.memory == 784 * 1024  # 64*56*56 floats * 4 bytes = 784 KB
    assert conv1.params == 23296
    assert conv1.macs == 72855552  # 64*56*56 outputs x 3*11*11 multiply-adds
    pool1 = row(result, "features.1")
    assert pool1.output_shape == (64, 27, 27) and pool1.pool_ops == 419904  # 64*27*27 x 3*3
    fc6 = row(result, "head.1")
    assert fc6.macs == 9216 * 4096
    assert fc6.params == 9216 * 4096 + 4096  # the notes' 37,725,832 is a typo
    # every other conv row by the formula C_out*H'*W'*C_in*K*K
    convs = [m for m in result.rows() if m.type == "Conv2d"]
    model = cnnlab.create_model("alexnet")
    modules = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for r, m in zip(convs, modules):
        c_out, h, w = r.output_shape
        assert r.macs == c_out * h * w * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        assert r.memory == c_out * h * w * 4
    assert [r.receptive_field.size[0] for r in convs] == [11, 51, 99, 131, 163]


@pytest.mark.parametrize("name", cnnlab.list_models())
def test_macs_equal_flop_counter_and_params_equal_numel(name):
    info = model_info(name)
    with torch.device("meta"):
        model = cnnlab.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *info.default_input, device="meta"))
    result = summary(model, info.default_input)
    assert result.macs == counter.get_total_flops() // 2
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in result.rows()) == result.total_params  # nothing counted twice or lost


def test_any_torchvision_module_and_grayscale():
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    result = summary(model, (1, 64, 64))
    assert result.macs == counter.get_total_flops() // 2
    assert result.total_params == sum(p.numel() for p in model.parameters())
    # torchvision's BasicBlock calls its one ReLU module twice: two rows, parameters once.
    assert sum(r.name == "layer1.0.relu" for r in result.rows()) == 2
    assert next(model.parameters()).device.type == "cpu"  # the user's model is left as it was


def test_frozen_parameters_and_training_memory():
    model = cnnlab.create_model("resnet20", num_classes=10)
    for p in model.features.parameters():
        p.requires_grad_(False)
    result = summary(model, (3, 32, 32), batch=8)
    head = sum(p.numel() for p in model.fc.parameters())
    assert result.trainable_params == head
    assert result.frozen_params == result.total_params - head
    total, trainable = result.total_params, result.trainable_params
    # activations + fp32 params + grads and state for trainable ones only
    assert result.training_memory("sgd") == result.activation_memory + 4 * (total + 2 * trainable)
    assert result.training_memory("adamw") == result.activation_memory + 4 * (total + 3 * trainable)
    one = summary(model, (3, 32, 32), batch=1)
    assert result.activation_memory == 8 * one.activation_memory and result.macs == 8 * one.macs


def test_residual_add_is_charged_to_the_block_and_elementwise_kept_apart():
    result = summary("resnet20", (3, 32, 32))
    block = row(result, "features.stage1.0")
    assert block.macs == 0 and block.element_ops == 16 * 32 * 32  # the residual add, 16x32x32
    bn = row(result, "features.stage1.0.conv1.norm")
    assert bn.element_ops == 16 * 32 * 32 and bn.macs == 0
    assert result.macs == sum(r.macs for r in result.rows() if r.type in ("Conv2d", "Linear"))


def test_receptive_field_takes_the_largest_path():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(3, 4, 3, padding=1)
            self.large = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.Conv2d(4, 4, 3, padding=1))

        def forward(self, x):
            return torch.cat([self.small(x), self.large(x)], 1) + 1

    result = summary(TwoPaths(), (3, 16, 16))
    assert row(result, "small").receptive_field.size == (3, 3)
    assert row(result, "large.1").receptive_field.size == (7, 7)
    assert result.root.receptive_field.size == (7, 7)  # the model's output: max over paths


def test_receptive_field_of_known_networks():
    # VGG-16's pool5 units see 212x212 pixels, 32 apart; CIFAR ResNet-20: 3 + 12 + 2 + 20 + 4 + 40 = 81
    vgg = summary("vgg16")
    pool5 = [r for r in vgg.rows() if r.type == "MaxPool2d"][-1]
    assert pool5.receptive_field.size == (212, 212) and pool5.receptive_field.jump == (32, 32)
    resnet = summary("resnet20")
    last = row(resnet, "features.stage3.2")
    assert last.receptive_field.size == (81, 81) and last.receptive_field.jump == (4, 4)
    assert row(resnet, "fc").receptive_field.is_global


def test_three_3x3_convs_see_7x7_with_fewer_weights():
    channels = 64
    stack = [nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(3)]
    assert receptive_field(stack)[-1].size == (7, 7)
    big = nn.Conv2d(channels, channels, 7, padding=3, bias=False)
    assert receptive_field([big])[-1].size == (7, 7)
    assert sum(c.weight.numel() for c in stack) == 27 * channels**2 < big.weight.numel() == 49 * channels**2


def test_depth_collapses_without_changing_totals():
    result = summary("resnet18")
    collapsed = result.rows(depth=1)
    assert [r.name for r in collapsed] == ["features", "global_pool", "head", "fc"]
    for attr in ("macs", "params", "memory", "element_ops", "pool_ops"):
        assert sum(getattr(r, attr) for r in collapsed) == sum(getattr(r, attr) for r in result.rows())


def test_modules_that_did_not_run_are_listed_not_dropped():
    result = summary("googlenet")
    missing = [r for r in result.rows() if not r.ran]
    assert missing and all(r.name.startswith("aux_heads") for r in missing)
    assert sum(r.params for r in result.rows()) == result.total_params


def test_a_bad_input_names_the_layer_and_the_shape():
    with pytest.raises(CnnlabError, match=r"layer 'features.0.conv' \(Conv2d\) failed on a tensor of shape 1x1x4x4"):
        summary("alexnet", (1, 4, 4))
    with pytest.raises(CnnlabError, match=r"layer '1' \(Linear\) failed on a tensor of shape 1x16"):
        summary(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), (1, 4, 4))


def test_a_forward_with_two_tensors_is_refused():
    class Pair(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(CnnlabError, match="single image tensor"):
        summary(Pair(), (3, 8, 8))
