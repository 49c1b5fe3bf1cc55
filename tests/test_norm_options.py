"""Normalisation options: the "gn:16" colon form, keyword options checked against the layer's signature
when the factory is called, and model.norm / model.norm_options reaching every norm layer of a run's model."""

import functools

import pytest
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError, UnknownNameError
from cnnlab.layers import get_norm_layer
from cnnlab.run import build_model


def test_gn_colon_number_is_the_most_groups():
    assert get_norm_layer("gn:16")(64).num_groups == 16
    assert get_norm_layer("gn:16")(24).num_groups == 12  # the largest divisor of 24 not above 16
    assert get_norm_layer("GN:4", eps=1e-3)(8).eps == 1e-3  # options by keyword still apply
    assert get_norm_layer("gn:4", groups=4)(8).num_groups == 4  # the same count twice is no conflict


@pytest.mark.parametrize("spec, message", [
    ("bn:0.1", "only gn:GROUPS takes a number after the colon"),
    ("none:1", "only gn:GROUPS takes a number after the colon"),
    ("gn:0", "whole number of at least 1"),
    ("gn:x", "whole number of at least 1"),
    ("gn:", "whole number of at least 1"),
    ("gnn:4", "Unknown normalisation 'gnn:4'"),
])
def test_bad_colon_forms_name_what_is_allowed(spec, message):
    with pytest.raises(UnknownNameError, match=message):
        get_norm_layer(spec)


def test_colon_and_keyword_giving_two_group_counts_is_an_error():
    with pytest.raises(CnnlabError, match="groups=4.*groups=8"):
        get_norm_layer("gn:4", groups=8)


def test_a_wrong_keyword_names_the_norm_the_key_and_the_keys_it_takes():
    with pytest.raises(CnnlabError) as info:
        get_norm_layer("bn", groups=16)  # raised here, before any layer is built
    text = str(info.value)
    assert "'bn'" in text and "groups" in text and "eps, momentum, affine, track_running_stats" in text
    assert "num_features" not in text.split("It takes:")[1].split(".")[0]  # the channel count is the block's
    with pytest.raises(CnnlabError, match="'in'.*momentum.*It takes: eps"):
        get_norm_layer("in", momentum=0.1)
    # Types and partials are checked the same way; a layer taking **kwargs (NoNorm) takes anything.
    with pytest.raises(CnnlabError, match="foo"):
        get_norm_layer(functools.partial(nn.BatchNorm2d, momentum=0.01), foo=1)
    assert get_norm_layer("none", eps=1e-3)(8) is not None
    assert get_norm_layer("ln2d", eps=1e-6)(8).eps == 1e-6


def test_a_wrong_keyword_in_the_model_config_fails_with_the_norm_named():
    config = ModelConfig(name="resnet8", norm="bn", norm_options={"groups": 16})
    with pytest.raises(CnnlabError, match="'bn'.*groups"):
        build_model(config, num_classes=10, in_chans=1)


def test_model_norm_colon_form_builds_groupnorm_with_that_many_groups():
    model = build_model(ModelConfig(name="resnet8", norm="gn:4"), num_classes=10, in_chans=1)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 7  # the stem and 3 blocks x 2 convs
    assert all(m.num_groups == 4 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_norm_options_reach_every_batchnorm():
    model = build_model(ModelConfig(name="resnet8", norm="bn", norm_options={"eps": 1e-3, "momentum": 0.01}),
                        num_classes=10, in_chans=1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 7 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


@pytest.mark.parametrize("name, norm, kind", [("resnet8", "bn", nn.BatchNorm2d), ("resnet8", "ln2d", None),
                                              ("mlp", "bn", nn.BatchNorm1d)])
def test_norms_without_a_shift_build_and_train_fused_or_not(name, norm, kind):
    """norm_options.bias=false (a scale, no shift) was an internal error at init, where the shift was zeroed,
    and the fused kernel took such a BatchNorm and read its missing bias."""
    import torch

    from cnnlab.layers import fused

    model = build_model(ModelConfig(name=name, norm=norm, norm_options={"bias": False}), num_classes=3, in_chans=1)
    norms = [m for m in model.modules() if hasattr(m, "bias") and m.bias is None and getattr(m, "weight", None)
             is not None and not isinstance(m, (nn.Conv2d, nn.Linear))]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    if kind is nn.BatchNorm2d:
        assert not fused.fusable(nn.BatchNorm2d(4, bias=False), nn.ReLU())
    model = model.to(memory_format=torch.channels_last) if kind is nn.BatchNorm2d else model
    x = torch.randn(4, 1, 28, 28)
    with fused.enabled():
        model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cli_reports_a_bad_norm_as_bad_input(cli):
    code, _, err = cli(["build", "resnet8", "--input", "1x28x28", "--norm", "bn:3"])
    assert code == 2 and "only gn:GROUPS takes a number" in err


@pytest.mark.parametrize("kind, options, key, allowed", [
    ("bn", {"eps": "abc"}, "eps", "positive finite number"),
    ("bn", {"eps": -1}, "eps", "positive finite number"),
    ("bn", {"eps": 0}, "eps", "positive finite number"),
    ("bn", {"eps": "nan"}, "eps", "positive finite number"),
    ("bn", {"momentum": 1.5}, "momentum", r"number in \[0, 1\]"),
    ("bn", {"momentum": "fast"}, "momentum", r"number in \[0, 1\]"),
    ("bn", {"affine": "maybe"}, "affine", "true or false"),
    ("bn", {"track_running_stats": 1}, "track_running_stats", "true or false"),
    ("ln2d", {"elementwise_affine": "no way"}, "elementwise_affine", "true or false"),
    ("gn", {"groups": "abc"}, "groups", "whole number of at least 1"),
    ("gn", {"groups": 0}, "groups", "whole number of at least 1"),
    ("gn", {"groups": 2.5}, "groups", "whole number of at least 1"),
])
def test_a_bad_option_value_names_the_key_the_value_and_what_is_allowed(kind, options, key, allowed):
    with pytest.raises(CnnlabError, match=rf"'{kind}'.*{key}=.*{allowed}"):
        get_norm_layer(kind, **options)  # refused here, not as a TypeError when the layer first runs


def test_option_values_that_read_as_numbers_reach_the_layer_as_numbers():
    # YAML 1.1 reads 1e-3 (no dot) as text: the layer must get the number, or its forward pass fails.
    layer = get_norm_layer("bn", eps="1e-3", momentum=None, affine=False)(4)
    assert layer.eps == 1e-3 and layer.momentum is None and layer.affine is False
    assert get_norm_layer("gn", groups=4, eps=1)(8).eps == 1.0


def test_a_bad_option_value_in_the_config_is_refused_before_a_run():
    from cnnlab.config import RunConfig, apply_overrides

    with pytest.raises(CnnlabError, match=r"Bad config.*eps=\"abc\".*positive finite number"):
        apply_overrides(RunConfig(), ["model.name=resnet8", "model.norm=bn", "model.norm_options.eps=abc"])
    with pytest.raises(CnnlabError, match=r"Bad config.*'gn'.*groups=\"abc\""):
        apply_overrides(RunConfig(), ["model.name=resnet8", "model.norm=gn", "model.norm_options.groups=abc"])
    config = apply_overrides(RunConfig(), ["model.norm=bn", "model.norm_options.eps=1e-3",
                                           "model.norm_options.momentum=null"])
    assert config.model.norm_options == {"eps": 1e-3, "momentum": None}  # 1e-3 reads as a number, as in YAML 1.2


def test_norm_options_in_a_model_spec_reach_the_analysis_commands_model():
    from cnnlab.cli import _model_and_input
    from cnnlab.models import create_model

    name, kwargs, size = _model_and_input("resnet8,norm=bn,norm_options.eps=0.001,norm_options.momentum=0.01", None,
                                          num_classes=10)
    norms = [m for m in create_model(name, **kwargs).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 0.001 and m.momentum == 0.01 for m in norms)
