"""LeNet-5, AlexNet, ZFNet, VGG and NiN against numbers computed by hand from the papers and the
lecture's AlexNet table."""

import pytest
import torch
from torch import nn

import cnnlab


def conv_params(c_in, c_out, k):
    return c_out * (c_in * k * k + 1)  # weights + one bias per filter


def shapes_after_each_layer(model, x):
    shapes = []
    for layer in model.features:
        x = layer(x)
        shapes.append((type(layer).__name__, tuple(x.shape[1:])))
    return shapes


def test_lenet5_parameter_count_by_hand():
    # C1 1->6 5x5, C3 6->16 5x5, C5 400->120, F6 120->84, output 84->10
    by_hand = conv_params(1, 6, 5) + conv_params(6, 16, 5) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    assert sum(p.numel() for p in model.parameters()) == by_hand == 61706


def test_lenet5_shapes_at_32_and_28():
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    shapes = [s for _, s in shapes_after_each_layer(model, torch.zeros(1, 1, 32, 32))]
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(model.features[0].act, nn.Tanh)  # the paper's squashing function


def test_alexnet_matches_the_lecture_table_at_227():
    model = cnnlab.create_model("alexnet")
    shapes = shapes_after_each_layer(model, torch.zeros(1, 3, 227, 227, device="meta"))
    conv1, pool1 = shapes[0][1], shapes[1][1]
    assert conv1 == (64, 56, 56)  # (227 + 2*2 - 11) / 4 + 1 = 56
    assert pool1 == (64, 27, 27)  # (56 - 3) / 2 + 1 = 27
    assert shapes[-1][1] == (256, 6, 6)
    assert sum(p.numel() for p in model.features[0].parameters()) == conv_params(3, 64, 11) == 23296
    fc6 = model.head[1]
    assert (fc6.in_features, fc6.out_features) == (9216, 4096)
    # The notes print 37,725,832 for fc6; the formula gives 9216*4096 + 4096.
    assert sum(p.numel() for p in fc6.parameters()) == 9216 * 4096 + 4096 == 37752832


def test_zfnet_is_a_bigger_alexnet():
    model = cnnlab.create_model("zfnet")
    shapes = shapes_after_each_layer(model, torch.zeros(1, 3, 224, 224, device="meta"))
    convs = [m.conv for m in model.features if hasattr(m, "conv")]
    assert (convs[0].kernel_size, convs[0].stride) == ((7, 7), (2, 2))
    assert [c.out_channels for c in convs[2:]] == [512, 1024, 512]
    assert shapes[0][1] == (96, 110, 110) and shapes[-1][1] == (512, 6, 6)


def test_vgg_mini_is_a_low_spec_vgg_table_with_a_pooled_head():
    model = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1)
    # Four stages of one 3x3 conv (with bias, as in every VGG here) + BatchNorm (scale, shift), then fc.
    widths = [1, 24, 48, 96, 192]
    by_hand = sum(conv_params(a, b, 3) + 2 * b for a, b in zip(widths, widths[1:])) + (192 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == by_hand == 220954
    shapes = [s for name, s in shapes_after_each_layer(model, torch.zeros(1, 1, 28, 28)) if name == "MaxPool2d"]
    assert shapes == [(24, 14, 14), (48, 7, 7), (96, 3, 3), (192, 1, 1)]
    assert isinstance(model.head, nn.Identity) and model.fc.in_features == 192  # no FC-4096 layers

    # Any table: two convs per stage and the paper's FC head at a chosen width.
    custom = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1, cfg=[[2, 8], [2, 16]], fc_width=32)
    convs = [m.conv for m in custom.features if hasattr(m, "conv")]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    assert [m.out_features for m in custom.head if isinstance(m, nn.Linear)] == [32, 32]
    assert custom(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_strided_stem_halves_the_first_stage_in_place_of_its_pool():
    """stem_stride=2: the first conv strides 2 and the first stage has no pool; the same parameters, a quarter of
    that stage's MACs (each 3x3 conv costs out x in x 9 MACs per output pixel)."""
    from cnnlab.analysis import summary

    plain = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1)
    strided = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1, stem_stride=2)
    assert sum(p.numel() for p in strided.parameters()) == sum(p.numel() for p in plain.parameters())
    after = [(name, s) for name, s in shapes_after_each_layer(strided, torch.zeros(1, 1, 28, 28))]
    assert after[0] == ("ConvNormAct", (24, 14, 14)) and after[1] == ("ConvNormAct", (48, 14, 14))
    assert [s for name, s in after if name == "MaxPool2d"] == [(48, 7, 7), (96, 3, 3), (192, 1, 1)]
    # the stem conv (1 -> 24 channels, 3x3) now covers 14x14 output pixels instead of 28x28
    assert summary(plain, (1, 28, 28)).macs - summary(strided, (1, 28, 28)).macs == 24 * 1 * 9 * (28 * 28 - 14 * 14)
    # a stage of two convs: only its first conv strides
    two = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1, cfg=[[2, 8], [1, 16]], stem_stride=2)
    assert [m.conv.stride for m in two.features if hasattr(m, "conv")] == [(2, 2), (1, 1), (1, 1)]
    with pytest.raises(cnnlab.CnnlabError, match="stem_stride=4 must be 1"):
        cnnlab.create_model("vgg_mini", stem_stride=4)


def test_pool_before_norm_without_a_norm_is_torchvisions_vgg():
    """A max pool commutes with ReLU, so conv -> pool -> ReLU is torchvision's conv -> ReLU -> pool: the same
    weights give the same outputs and input gradients (the reference is torchvision's own vgg11)."""
    import torchvision

    from cnnlab.models.torchvision_compat import load_torchvision_state_dict

    torch.manual_seed(0)
    reference = torchvision.models.vgg11(num_classes=10).eval()
    model = cnnlab.create_model("vgg11", num_classes=10, pool_before_norm=True).eval()
    assert load_torchvision_state_dict(model, reference.state_dict()).loaded == len(reference.state_dict())
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    ours = model(x)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    theirs = reference(x)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(grad_ours, grad_theirs)
    # the pool sits inside each stage's last block, between its conv and its activation
    assert list(model.features[0]._modules) == ["conv", "pool", "act"]
    assert not any(isinstance(layer, nn.MaxPool2d) for layer in model.features)  # no pool between blocks


def test_pool_before_norm_puts_the_norm_on_the_pooled_map():
    """In eval mode a BatchNorm with a positive scale is an increasing map per channel, so pooling first changes
    nothing (torchvision's vgg11_bn as the reference); in training its statistics come from the pooled map, and
    the norms and activations produce a quarter of the elements (the summary's count, by hand)."""
    import torchvision

    from cnnlab.analysis import summary
    from cnnlab.models.torchvision_compat import load_torchvision_state_dict

    torch.manual_seed(0)
    reference = torchvision.models.vgg11_bn(num_classes=10)
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
    model = cnnlab.create_model("vgg11_bn", num_classes=10, pool_before_norm=True)
    load_torchvision_state_dict(model, reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x))

    # training: the first norm's batch mean is that of the pooled conv output, (2, 64, 32, 32)
    model.train()
    first = model.features[0]
    first.norm.reset_running_stats()
    first.norm.momentum = 1.0  # the running mean becomes this batch's mean
    model(x)
    pooled = nn.functional.max_pool2d(first.conv(x), 2)
    torch.testing.assert_close(first.norm.running_mean, pooled.mean(dim=(0, 2, 3)).detach())

    # vgg_mini at 28x28: each stage's norm and ReLU (two element ops per element) run on the pooled map
    plain = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1)
    pooled_first = cnnlab.create_model("vgg_mini", num_classes=10, in_chans=1, pool_before_norm=True)
    maps = [(24, 28), (48, 14), (96, 7), (192, 3)]  # (channels, side) of each stage's conv output
    saved = sum(2 * chs * (side * side - (side // 2) ** 2) for chs, side in maps)
    before, after = summary(plain, (1, 28, 28)), summary(pooled_first, (1, 28, 28))
    element_ops = [sum(row.element_ops for row in s.rows()) for s in (before, after)]
    assert element_ops[0] - element_ops[1] == saved
    assert before.macs == after.macs and before.total_params == after.total_params
    assert pooled_first(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("cfg, named", [
    ("A", 'cfg="A" is not a VGG table'),  # a letter of Table 1 is not the table
    ([], r"cfg=\[\] is not a VGG table"),
    ([[2, 8], [2]], r"cfg stage 2 is \[2\]"),  # used to fail deep in the loop: not enough values to unpack
    ([[2, 8], [0, 16]], r"cfg stage 2 is \[0, 16\]"),  # a stage without a conv
    ([[2, 8.5]], r"cfg stage 1 is \[2, 8.5\]"),
    ([(True, 8)], r"cfg stage 1 is \[true, 8\]"),
])
def test_a_malformed_vgg_table_names_its_stage(cfg, named):
    with pytest.raises(cnnlab.CnnlabError, match=named) as refused:
        cnnlab.create_model("vgg_mini", cfg=cfg)
    assert "[convs, channels]" in str(refused.value)


def test_vgg_stages_follow_table_1():
    for name, convs in {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}.items():
        with torch.device("meta"):
            model = cnnlab.create_model(name)
        layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(layers) == convs, name
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in layers)
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    with torch.device("meta"):
        bn = cnnlab.create_model("vgg16_bn")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 13


def test_nin_has_no_fully_connected_layer_and_class_maps():
    model = cnnlab.create_model("nin", num_classes=10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model.get_classifier(), nn.Conv2d) and model.get_classifier().out_channels == 10
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1]  # mlpconv: k x k then 1x1s
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        maps = model.fc(features)  # (B, 10, 8, 8): one map per class
        assert maps.shape == (2, 10, 8, 8)
        torch.testing.assert_close(model(x), maps.mean((2, 3)))
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
