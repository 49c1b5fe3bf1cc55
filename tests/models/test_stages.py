"""Stages (stem, stage1..N, head) across the zoo and torchvision models: freezing names, classifier, pre-logits."""

import copy

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import count_params, create_model, model_info
from cnnlab.models.stages import (
    HEAD,
    STEM,
    classifier_names,
    freeze_choices,
    frozen_stage_names,
    model_stages,
    pre_logits,
    reset_classifier,
    set_requires_grad,
    stage_of_parameters,
    stage_table,
)
from _zoo_sweep import SWEPT

TV_SAMPLE = ["tv:resnet18", "tv:mobilenet_v3_small", "tv:efficientnet_b0", "tv:regnet_y_400mf", "tv:vit_b_16",
             "tv:swin_t", "tv:densenet121", "tv:googlenet", "tv:inception_v3", "tv:squeezenet1_0", "tv:mnasnet0_5",
             "tv:shufflenet_v2_x0_5", "tv:maxvit_t", "tv:convnext_tiny", "tv:vgg11_bn"]


def meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def stage_params(model):
    return {row["stage"]: row["params"] for row in stage_table(model)}


@pytest.mark.parametrize("name", SWEPT + TV_SAMPLE)  # preact_resnet1001 through preact_resnet164 (tests/_zoo_sweep.py)
def test_every_parameter_is_in_exactly_one_stage(name):
    model = meta(name, num_classes=10)
    stages = model_stages(model)
    names = [s.name for s in stages]
    assert names[0] == STEM and names[-1] == HEAD
    assert names[1:-1] == [f"stage{k}" for k in range(1, len(names) - 1)] and len(names) >= 4
    owner = stage_of_parameters(model)
    assert set(owner) == {n for n, _ in model.named_parameters()}
    # The modules of different stages are disjoint subtrees: no parameter is reachable from two stages.
    reach = {}
    for stage in stages:
        for prefix in stage.modules:
            for pname, _ in model.get_submodule(prefix).named_parameters(prefix=prefix):
                assert pname not in reach, f"{pname} in {reach.get(pname)} and {stage.name}"
                reach[pname] = stage.name
        for pname in stage.parameters:
            assert pname not in reach
            reach[pname] = stage.name
    assert reach == owner
    assert sum(stage_params(model).values()) == count_params(model)
    assert stage_params(model)[HEAD] > 0 and all(stage_params(model)[n] > 0 for n in names[1:-1])


def test_resnet18_is_a_stem_four_stages_and_a_head():
    model = meta("resnet18")
    stages = model_stages(model)
    assert [s.name for s in stages] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert stages[0].modules == ("features.stem", "features.stem_pool")
    for k in range(1, 5):
        assert stages[k].modules == (f"features.stage{k}",)
    assert stages[-1].modules == ("global_pool", "head", "fc")


def test_cifar_resnet_stem_is_its_named_stem():
    stages = model_stages(meta("resnet20"))
    assert [s.modules for s in stages[:4]] == [("features.stem",), ("features.stage1",), ("features.stage2",),
                                                ("features.stage3",)]


def test_vgg11_has_five_stages_each_ending_at_its_max_pool():
    model = meta("vgg11")
    stages = model_stages(model)
    body = stages[1:-1]
    assert len(body) == 5 and stages[0].modules == ()
    pools = [name for name, m in model.features.named_children() if isinstance(m, nn.MaxPool2d)]
    assert [s.modules[-1] for s in body] == [f"features.{p}" for p in pools]
    assert STEM not in freeze_choices(model)  # no stem parameters to freeze


@pytest.mark.parametrize("name, options", [("vgg11", {}), ("vgg_mini", {"in_chans": 1}),
                                           ("vgg_mini", {"in_chans": 1, "cfg": [[1, 16], [2, 64], [2, 128], [1, 256]]})])
def test_a_vgg_that_pools_before_its_norms_keeps_the_stages_of_its_table(name, options):
    """Each stage's last block pools inside itself (conv -> pool -> norm -> act): the block closes its stage
    rather than opening the next, and the network still opens at full resolution (no stem)."""
    plain = model_stages(meta(name, **options))
    pooled_first = meta(name, pool_before_norm=True, **options)
    assert stage_params(pooled_first) == stage_params(meta(name, **options))
    blocks = [s.modules for s in model_stages(pooled_first)[1:-1]]
    assert len(blocks) == len(plain) - 2 and model_stages(pooled_first)[0].modules == ()
    # each stage ends at the block that holds its pool
    assert all(hasattr(pooled_first.get_submodule(stage[-1]), "pool") for stage in blocks)


def test_googlenet_aux_heads_are_in_the_head():
    model = meta("googlenet")
    stages = model_stages(model)
    assert "aux_heads" in stages[-1].modules
    owner = stage_of_parameters(model)
    assert all(owner[n] == HEAD for n, _ in model.named_parameters() if n.startswith("aux_heads."))
    # the stem is the paper's: plain convs and two pools before the first Inception module
    assert stages[0].modules[-1] == "features.maxpool2" and stages[1].modules[0] == "features.inception3a"
    assert classifier_names(model) == ["fc", "aux_heads.inception4a.fc2", "aux_heads.inception4d.fc2"]


@pytest.mark.parametrize("zoo,tv", [("resnet18", "tv:resnet18"), ("densenet121", "tv:densenet121"),
                                    ("convnext_tiny", "tv:convnext_tiny"), ("googlenet", "tv:googlenet")])
def test_torchvision_twins_have_the_zoo_stage_sizes(zoo, tv):
    ours = stage_params(meta(zoo, num_classes=10, **({"aux_logits": False} if zoo == "googlenet" else {})))
    theirs = stage_params(meta(tv, num_classes=10))
    assert ours == theirs


def test_freeze_names_and_errors_list_the_choices():
    model = meta("resnet18")
    assert freeze_choices(model) == ["backbone", "stem", "stage1", "stage2", "stage3", "stage4"]
    assert frozen_stage_names(model, None) == [] and frozen_stage_names(model, "none") == []
    assert frozen_stage_names(model, "backbone") == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert frozen_stage_names(model, "stem") == ["stem"]
    assert frozen_stage_names(model, "stage2") == ["stem", "stage1", "stage2"]
    with pytest.raises(CnnlabError) as err:
        frozen_stage_names(model, "stage5")
    message = str(err.value)
    assert "stage5" in message and all(choice in message for choice in freeze_choices(model))
    with pytest.raises(CnnlabError, match="stage1"):
        frozen_stage_names(meta("tv:vgg11"), "stem")


def test_set_requires_grad_freezes_exactly_the_named_stages():
    model = create_model("resnet20", num_classes=10)
    names = frozen_stage_names(model, "stage1")
    changed = set_requires_grad(model, names, False)
    params = dict(model.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    expected = {n for n in params if n.startswith(("features.stem.", "features.stage1."))}
    assert frozen == expected and changed == sum(params[n].numel() for n in expected)
    assert set_requires_grad(model, names, False) == 0  # already frozen: nothing changes
    assert set_requires_grad(model, names, True) == changed
    with pytest.raises(CnnlabError, match="stage9"):
        set_requires_grad(model, ["stage9"], False)


def test_set_requires_grad_takes_one_stage_name_as_a_string():
    """A str is one stage, not the stages its letters would name."""
    model = create_model("resnet20", num_classes=10)
    stem = {n for n, stage in stage_of_parameters(model).items() if stage == "stem"}
    changed = set_requires_grad(model, "stem", False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == stem and changed == sum(p.numel() for n, p in model.named_parameters() if n in stem)
    with pytest.raises(CnnlabError, match="No stage named backbone: .*frozen_stage_names\\(model, 'backbone'\\)"):
        set_requires_grad(model, "backbone", False)  # a model.freeze value, not a stage


@pytest.mark.parametrize("name", ["resnet20", "nin", "googlenet", "convnext_tiny", "lenet5", "vgg_mini"])
def test_pre_logits_of_zoo_models_is_forward_head_pre_logits(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=1).eval()
    x = torch.randn(2, 1, model_info(name).min_size, model_info(name).min_size)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.equal(pre_logits(model, x), expected)


@pytest.mark.parametrize("name,last", [("tv:resnet18", "fc"), ("tv:mobilenet_v3_small", "classifier.3"),
                                       ("tv:squeezenet1_1", "classifier.1")])
def test_pre_logits_of_torchvision_models_is_the_classifier_input(name, last):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    assert classifier_names(model) == [last]
    seen = []
    handle = model.get_submodule(last).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        features = pre_logits(model, x)
    handle.remove()
    reference = seen[0].mean(dim=(2, 3)) if seen[0].ndim == 4 else seen[0]  # SqueezeNet's conv reads a map
    assert features.ndim == 2 and torch.equal(features, reference)


@pytest.mark.parametrize("name", ["resnet20", "googlenet", "tv:resnet18", "tv:mobilenet_v3_small", "tv:squeezenet1_1"])
def test_reset_classifier_gives_new_class_count(name):
    model = create_model(name, num_classes=10).eval()
    old = [model.get_submodule(n) for n in classifier_names(model)]  # kept alive: ids are not reused
    before = {n: p.clone() for n, p in model.named_parameters() if stage_of_parameters(model)[n] != HEAD}
    reset_classifier(model, 3)
    assert model.num_classes == 3
    new = [model.get_submodule(n) for n in classifier_names(model)]
    assert len(new) == len(old) and not any(a is b for a in old for b in new)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in before.items())  # the backbone is untouched


def test_stages_are_cached_per_instance_and_survive_deepcopy():
    model = create_model("resnet20", num_classes=10)
    first = model_stages(model)
    assert model_stages(model) == first
    twin = copy.deepcopy(model)
    assert model_stages(twin) == first
    owner = stage_of_parameters(twin)
    assert set(owner) == {n for n, _ in twin.named_parameters()}
    # a changed structure is noticed: the cache is keyed by the modules
    model.features.add_module("extra", nn.Conv2d(64, 64, 3, padding=1))
    assert "features.extra" in model_stages(model)[-2].modules


def test_probe_restores_each_module_training_flag():
    model = create_model("resnet20", num_classes=10).train()
    model.features.stem.eval()  # e.g. a frozen BatchNorm kept in eval mode
    flags = {n: m.training for n, m in model.named_modules()}
    model_stages(model)
    assert {n: m.training for n, m in model.named_modules()} == flags
