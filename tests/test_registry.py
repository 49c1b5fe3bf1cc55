"""Registry-wide checks: every model in list_models() is swept."""

import math

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError, UnknownNameError
from cnnlab.models import AuxLogits, check_input_size, model_info
from cnnlab.models._registry import register_model

ALL = cnnlab.list_models()
EXPECTED = (
    "lenet5 alexnet zfnet vgg11 vgg13 vgg16 vgg19 vgg11_bn vgg13_bn vgg16_bn vgg19_bn vgg_mini nin googlenet "
    "resnet18 resnet34 resnet50 resnet101 resnet152 preact_resnet18 preact_resnet34 preact_resnet50 "
    "resnext50_32x4d wide_resnet50_2 resnet8 resnet20 resnet32 resnet44 resnet56 resnet110 plain20 plain32 "
    "plain44 plain56 plain110 densenet121 mobilenet_v1 mobilenet_v2 convnext_tiny"
).split()


def test_the_zoo_has_every_architecture_of_the_lecture():
    assert sorted(EXPECTED) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_builds_runs_and_backpropagates_at_its_smallest_input(name):
    torch.manual_seed(0)
    size = model_info(name).min_size
    model = cnnlab.create_model(name, num_classes=7, in_chans=1)
    model.train()
    x = torch.randn(2, 1, size, size)
    out = model(x)
    logits = out.logits if isinstance(out, AuxLogits) else out
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    loss = logits.logsumexp(1).mean() + sum(a.logsumexp(1).mean() for a in getattr(out, "aux", ()))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_default_input_gives_1000_logits_and_interface_is_consistent(name):
    info = model_info(name)
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = cnnlab.create_model(name)
        assert check_input_size(model, info.default_input) == (1000,)
        x = torch.zeros(1, *info.default_input)
        features = model.forward_features(x)
        assert features.ndim == 4
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (1, model.num_features)
        model.reset_classifier(5)
        assert model.forward_head(features).shape == (1, 5)
        assert model.get_classifier() is model.fc
        model.reset_classifier(0)
        assert model.forward_head(features).shape == (1, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_norm_and_act_swap_every_layer(name):
    with torch.device("meta"):
        model = cnnlab.create_model(name, norm="gn", act="silu")
    modules = list(model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in modules)
    assert any(isinstance(m, nn.SiLU) for m in modules)
    others = (nn.BatchNorm2d, nn.LayerNorm, nn.InstanceNorm2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid)
    leftovers = {type(m).__name__ for m in modules if isinstance(m, others)}
    assert not leftovers, f"{name} kept {leftovers} after norm='gn', act='silu'"


@pytest.mark.parametrize("name", ["googlenet", "nin"])  # the two that override forward / forward_head
def test_eval_forward_equals_features_then_head(name):
    model = cnnlab.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


def test_he_init_for_relu_and_glorot_for_tanh():
    torch.manual_seed(0)
    vgg = cnnlab.create_model("vgg11")
    conv = vgg.features[-2].conv  # 512 -> 512, 3x3: plenty of samples for a std estimate
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    lenet = cnnlab.create_model("lenet5", act="tanh")
    conv = lenet.features[2].conv  # 6 -> 16, 5x5
    fan_in, fan_out = conv.in_channels * 25, conv.out_channels * 25
    glorot = (5.0 / 3.0) * math.sqrt(2.0 / (fan_in + fan_out))  # tanh gain 5/3
    assert conv.weight.std().item() == pytest.approx(glorot, rel=0.1)


def test_unknown_model_lists_closest_names():
    with pytest.raises(UnknownNameError, match="Closest names: .*resnet50"):
        cnnlab.create_model("resnet05")


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(in_chans=0), dict(in_chans=2.5), dict(drop_rate=1.5)])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(CnnlabError):
        cnnlab.create_model("lenet5", **kwargs)


def test_unknown_option_is_refused_with_the_model_name():
    with pytest.raises(CnnlabError, match="vgg11"):
        cnnlab.create_model("vgg11", zero_init_residual=True)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):

        @register_model(family="resnet")
        def resnet18(**kwargs):  # noqa: F811
            return None


def test_list_models_pattern():
    assert cnnlab.list_models("vgg1?") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert cnnlab.list_models("resnet*")[:3] == ["resnet8", "resnet18", "resnet20"]
    assert "resnext50_32x4d" in cnnlab.list_models("32x4d")


def test_too_small_input_names_the_layer():
    model = cnnlab.create_model("vgg11")
    with pytest.raises(cnnlab.models._base.InputTooSmallError, match=r"features\.\d+' \(MaxPool2d\)"):
        check_input_size(model, (3, 16, 16))


SMALL_IMAGE_MODELS = [n for n in ALL if model_info(n).min_size == 28]


def test_small_image_models_are_the_promised_ones():
    expected = {"lenet5", "nin", "mobilenet_v1", "mobilenet_v2", "vgg_mini"}
    expected |= {f"{kind}{d}" for kind in ("resnet", "plain") for d in (20, 32, 44, 56, 110)}
    expected.add("resnet8")
    assert set(SMALL_IMAGE_MODELS) == expected


@pytest.mark.parametrize("name", SMALL_IMAGE_MODELS)
def test_small_image_models_run_at_28_and_32_in_grayscale(name):
    model = cnnlab.create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        for size in (28, 32):
            out = model(torch.randn(2, 1, size, size))
            assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in ALL if n not in SMALL_IMAGE_MODELS])
def test_imagenet_models_accept_64x64(name):
    with torch.device("meta"):
        model = cnnlab.create_model(name, num_classes=10, in_chans=1)
        assert check_input_size(model, (1, 64, 64)) == (10,)


ONE_PER_FAMILY = ["lenet5", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "preact_resnet18", "resnext50_32x4d",
                  "resnet20", "plain20", "densenet121", "mobilenet_v1", "mobilenet_v2", "convnext_tiny"]


@pytest.mark.parametrize("norm", cnnlab.layers.norm_names())
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_norm_trains_in_every_family(name, norm):
    if name == "convnext_tiny" and norm == "in":
        with pytest.raises(CnnlabError, match="instance norm cannot normalise a single pixel"):
            cnnlab.create_model(name, norm=norm)
        return
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=5, norm=norm, act="leaky_relu:0.1").train()
    out = model(torch.randn(2, 3, 64, 64))
    logits = out.logits if isinstance(out, AuxLogits) else out
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    (logits.sum() + sum(a.sum() for a in getattr(out, "aux", ()))).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reset_classifier_keeps_dtype_and_refuses_negative_counts():
    model = cnnlab.create_model("resnet20").double()
    model.reset_classifier(3)
    assert model.fc.weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 3)
    with pytest.raises(CnnlabError, match="at least 0"):
        model.reset_classifier(-1)
    assert model.num_classes == 3
