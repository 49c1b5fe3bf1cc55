"""Registry-wide checks: every model in list_models() is swept (preact_resnet1001 through preact_resnet164, the
same net with fewer blocks: tests/_zoo_sweep.py)."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError, UnknownNameError
from cnnlab.models import AuxLogits, _zoo, check_input_size, model_info
from cnnlab.models._meta import shapes_on_meta, skip_init_on_meta
from cnnlab.models._registry import _MODELS, ModelInfo, register_model
from _one_draw import one_draw_of_each_weight
from _zoo_sweep import STANDS_IN_FOR, SWEPT

ALL = cnnlab.list_models()
EXPECTED = (
    "lenet5 alexnet zfnet vgg11 vgg13 vgg16 vgg19 vgg11_bn vgg13_bn vgg16_bn vgg19_bn vgg_mini nin googlenet "
    "resnet18 resnet34 resnet50 resnet101 resnet152 preact_resnet18 preact_resnet34 preact_resnet50 "
    "resnext50_32x4d wide_resnet50_2 resnet8 resnet20 resnet32 resnet44 resnet56 resnet110 plain20 plain32 "
    "plain44 plain56 plain110 preact_resnet20 preact_resnet56 preact_resnet110 preact_resnet164 preact_resnet1001 "
    "densenet121 mobilenet_v1 mobilenet_v2 convnext_tiny mlp"
).split()


def test_the_zoo_has_every_architecture_of_the_lecture():
    assert sorted(EXPECTED) == sorted(ALL)


def test_the_sweeps_leave_out_only_models_that_a_smaller_one_of_their_builder_stands_for():
    assert sorted(SWEPT + list(STANDS_IN_FOR)) == sorted(ALL)
    for deep, stand_in in STANDS_IN_FOR.items():
        assert stand_in in SWEPT
        assert model_info(deep).family == model_info(stand_in).family
        assert model_info(deep).min_size == model_info(stand_in).min_size
        with torch.device("meta"):
            deep_types = {type(m) for m in cnnlab.create_model(deep).modules()}
            stand_in_types = {type(m) for m in cnnlab.create_model(stand_in).modules()}
        assert deep_types == stand_in_types  # the same blocks and layers, only more of them


@pytest.mark.parametrize("name", SWEPT)
def test_builds_runs_and_backpropagates_at_its_smallest_input(name):
    torch.manual_seed(0)
    size = model_info(name).min_size
    with one_draw_of_each_weight():  # init_weights draws every Linear weight itself: tests/_one_draw.py
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
    # a sum is finite only when every term is (an overflow would fail the check, never pass it): one read of each
    # gradient, where isfinite(grad).all() built a mask as large as it (0.7 s for a VGG's 103M-weight layer)
    assert all(torch.isfinite(p.grad.sum()) for p in model.parameters())


@pytest.mark.parametrize("name", SWEPT)
def test_default_input_gives_1000_logits_and_interface_is_consistent(name):
    info = model_info(name)
    # shapes only: no memory, no compute, the shape-keeping layers answered at once (tests/models/test_meta_shapes.py)
    with torch.device("meta"), shapes_on_meta():
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


@pytest.mark.parametrize("name", SWEPT)
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


@pytest.fixture(scope="module")
def vgg11():
    """vgg11 as create_model gives it, built once (3 s: its 119M-weight head) for the tests that only read it."""
    torch.manual_seed(0)
    return cnnlab.create_model("vgg11")


def test_he_init_for_relu_and_glorot_for_tanh(vgg11):
    vgg = vgg11
    conv = vgg.features[-2].conv  # 512 -> 512, 3x3: plenty of samples for a std estimate
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    torch.manual_seed(0)  # the fixture's vgg11 may have been built tests ago
    lenet = cnnlab.create_model("lenet5", act="tanh")
    conv = lenet.features[2].conv  # 6 -> 16, 5x5
    fan_in, fan_out = conv.in_channels * 25, conv.out_channels * 25
    glorot = (5.0 / 3.0) * math.sqrt(2.0 / (fan_in + fan_out))  # tanh gain 5/3
    assert conv.weight.std().item() == pytest.approx(glorot, rel=0.1)


def test_unknown_model_lists_closest_names():
    with pytest.raises(UnknownNameError, match="Closest names: .*resnet50"):
        cnnlab.create_model("resnet05")


@pytest.mark.parametrize("kwargs", [dict(num_classes=-1), dict(in_chans=0), dict(in_chans=2.5), dict(drop_rate=1.5)])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(CnnlabError):
        cnnlab.create_model("lenet5", **kwargs)


def test_unknown_option_is_refused_with_the_model_name():
    with pytest.raises(CnnlabError, match="vgg11"):
        cnnlab.create_model("vgg11", zero_init_residual=True)


def test_an_unknown_option_is_answered_with_the_options_the_model_takes():
    """torch's text named the class's __init__ and listed nothing; the options listed are the ones each
    builder passes on, not those it sets itself (resnet20's stem)."""
    with pytest.raises(CnnlabError) as err:
        cnnlab.create_model("vgg16", fc_widht=0)
    text = str(err.value)
    assert "Did you mean 'fc_width'?" in text and "__init__" not in text
    assert "cfg, fc_width, stem_stride, pool_before_norm;" in text and "drop_rate" in text
    cnnlab.create_model("vgg11", fc_width=0, num_classes=3)  # the suggestion is one it takes
    with pytest.raises(CnnlabError) as err:
        cnnlab.create_model("resnet20", widht=3)
    listed = str(err.value).split("Its options are ")[1].split(";")[0].split(", ")
    assert "stem" not in listed and "se" in listed and "drop_path_rate" in listed
    with torch.device("meta"):
        for option in listed:  # every option named is one the builder takes
            with pytest.raises(Exception) as refused:
                cnnlab.create_model("resnet20", **{option: object()})
            assert "does not take" not in str(refused.value) and "multiple values" not in str(refused.value)
        with pytest.raises(CnnlabError, match="multiple values|sets stem itself"):
            cnnlab.create_model("resnet20", stem="cifar")
    with pytest.raises(CnnlabError, match="preact_resnet18 is a model of its own"):
        cnnlab.create_model("resnet18", preact=True)
    with pytest.raises(CnnlabError, match="preact_resnet20 is a model of its own"):
        cnnlab.create_model("resnet20", preact=True)  # the CIFAR builders keep the caller's options apart too
    with pytest.raises(CnnlabError, match="It has no options of its own"):
        cnnlab.create_model("lenet5", width=3)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):

        @register_model(family="resnet")
        def resnet18(**kwargs):  # noqa: F811
            return None


def test_list_models_pattern():
    assert cnnlab.list_models("vgg1?") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert cnnlab.list_models("resnet*")[:3] == ["resnet8", "resnet18", "resnet20"]
    assert "resnext50_32x4d" in cnnlab.list_models("32x4d")


def test_too_small_input_names_the_layer(vgg11):
    model = vgg11
    with pytest.raises(cnnlab.models._base.InputTooSmallError, match=r"features\.\d+' \(MaxPool2d\)"):
        check_input_size(model, (3, 16, 16))


SMALL_IMAGE_MODELS = [n for n in ALL if model_info(n).min_size == 28]


def test_small_image_models_are_the_promised_ones():
    expected = {"lenet5", "nin", "mobilenet_v1", "mobilenet_v2", "vgg_mini", "mlp"}
    expected |= {f"{kind}{d}" for kind in ("resnet", "plain") for d in (20, 32, 44, 56, 110)}
    expected |= {f"preact_resnet{d}" for d in (20, 56, 110, 164, 1001)}
    expected.add("resnet8")
    assert set(SMALL_IMAGE_MODELS) == expected


@pytest.mark.parametrize("name", [n for n in SMALL_IMAGE_MODELS if n in SWEPT])
def test_small_image_models_run_at_28_and_32_in_grayscale(name):
    model = cnnlab.create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        for size in (28, 32):
            out = model(torch.randn(2, 1, size, size))
            assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in SWEPT if n not in SMALL_IMAGE_MODELS])
def test_imagenet_models_accept_64x64(name):
    with torch.device("meta"):
        model = cnnlab.create_model(name, num_classes=10, in_chans=1)
        assert check_input_size(model, (1, 64, 64)) == (10,)


# vgg_mini stands for the VGG family: the same blocks as vgg11 without its FC-4096 head (119M weights to draw),
# which no norm reaches.
ONE_PER_FAMILY = ["lenet5", "alexnet", "vgg_mini", "nin", "googlenet", "resnet18", "preact_resnet18", "resnext50_32x4d",
                  "resnet20", "plain20", "densenet121", "mobilenet_v1", "mobilenet_v2", "convnext_tiny"]


@pytest.mark.parametrize("norm", cnnlab.layers.norm_names())
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_norm_trains_in_every_family(name, norm):
    if name == "convnext_tiny" and norm == "in":
        with pytest.raises(CnnlabError, match="instance norm cannot normalise a single pixel"):
            cnnlab.create_model(name, norm=norm)
        return
    torch.manual_seed(0)
    with one_draw_of_each_weight():  # alexnet's 58M-weight head is built six times here
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


# ---------------------------------------------------------------------------------------------
# meta builds and the zoo table (`cnnlab models`)


FAMILIES = sorted({model_info(name).family for name in ALL})


def _smallest_of(family: str) -> str:
    """The model with the fewest parameters in ``family``: a real build of it stays cheap. Found in the test,
    not at collection, where every pytest worker would build all the zoo's models on the meta device (about 3 s
    each)."""
    members = [name for name in ALL if model_info(name).family == family]
    counts = _zoo.default_param_counts(members, cache=False)  # no cache folder of the user's
    return min(members, key=lambda name: (counts[name], name))


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_build_has_the_real_models_parameters(family):
    """Building on the meta device skips initialisation; the modules and shapes must be the real ones."""
    name = _smallest_of(family)
    real = cnnlab.create_model(name)
    meta = _zoo.build_on_meta(name)
    assert all(p.is_meta for p in meta.parameters())
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert _zoo.count_params(meta) == sum(p.numel() for p in real.parameters())
    row = next(r for r in _zoo.zoo_table(name) if r["name"] == name)
    assert row["params"] == sum(p.numel() for p in real.parameters())


def test_zoo_table_rows_come_from_the_registry():
    rows = _zoo.zoo_table("vgg1?")
    assert [r["name"] for r in rows] == ["vgg11", "vgg13", "vgg16", "vgg19"]
    vgg16 = rows[2]
    assert vgg16["params"] == 138_357_544  # Simonyan & Zisserman 2015, Table 2: 138M; torchvision's count
    assert vgg16 == {"name": "vgg16", "family": model_info("vgg16").family, "params": 138_357_544,
                     "default_input": [3, 224, 224], "min_size": model_info("vgg16").min_size, "exact_size": False,
                     "paper": model_info("vgg16").paper, "torchvision": "vgg16"}
    assert [r["name"] for r in _zoo.zoo_table()] == cnnlab.list_models()
    with pytest.raises(CnnlabError, match="No model matches 'nosuch'") as refused:
        _zoo.zoo_table("nosuch")
    assert "torchvision_table" not in str(refused.value)
    with pytest.raises(CnnlabError, match=r"No model matches 'tv:resnet18'.*torchvision_table\(\)"):
        _zoo.zoo_table("tv:resnet18")  # create_model takes it: the zoo's table is not where tv: models are listed


def test_skipping_initialisation_touches_only_meta_tensors():
    torch.manual_seed(0)
    with skip_init_on_meta():
        model = cnnlab.create_model("resnet8")  # on the CPU: initialised as usual
        weight = torch.empty(3, 3, device="meta")
        assert nn.init.normal_(weight) is weight
    conv = model.features[0].conv
    assert conv.weight.std() > 0 and torch.isfinite(conv.weight).all()


def _no_builds(monkeypatch):
    def refuse(name, **kwargs):
        raise AssertionError(f"built {name}: the cache should have answered")

    monkeypatch.setattr(_zoo, "build_on_meta", refuse)


def test_counts_are_cached_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    first = _zoo.zoo_table("resnet*")
    assert (tmp_path / _zoo.PARAMS_CACHE_FILE).is_file()
    _no_builds(monkeypatch)
    assert _zoo.zoo_table("resnet*") == first


def _valid_cache(tmp_path, monkeypatch) -> tuple[dict, dict]:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    truth = _zoo.default_param_counts(["lenet5", "resnet20"], cache=False)
    _zoo.default_param_counts(["lenet5", "resnet20"])
    return json.loads((tmp_path / _zoo.PARAMS_CACHE_FILE).read_text()), truth


def _write(tmp_path, data):
    (tmp_path / _zoo.PARAMS_CACHE_FILE).write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize("damage", ["truncated", "not json", "list", "count is text", "count is negative",
                                    "count is bool", "count edited", "params missing"])
def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path, monkeypatch, damage):
    cache, truth = _valid_cache(tmp_path, monkeypatch)
    text = json.dumps(cache)
    bad = {
        "truncated": text[: len(text) // 2],
        "not json": "\x00\xff garbage",
        "list": [1, 2, 3],
        "count is text": {**cache, "params": {**cache["params"], "lenet5": "146156"}},
        "count is negative": {**cache, "params": {**cache["params"], "lenet5": -1}},
        "count is bool": {**cache, "params": {**cache["params"], "lenet5": True}},
        "count edited": {**cache, "params": {**cache["params"], "lenet5": truth["lenet5"] + 1}},  # digest no longer fits
        "params missing": {k: v for k, v in cache.items() if k != "params"},
    }[damage]
    _write(tmp_path, bad)
    assert _zoo.default_param_counts(["lenet5", "resnet20"]) == truth
    assert json.loads((tmp_path / _zoo.PARAMS_CACHE_FILE).read_text()) == cache  # rewritten whole


@pytest.mark.parametrize("changed", ["cnnlab", "torch", "source", "format"])
def test_a_stale_cache_is_never_believed(tmp_path, monkeypatch, changed):
    """A cache written by another version of cnnlab, torch or the model code, with wrong counts and a
    digest that fits them, is ignored: the counts are built again and the file replaced."""
    cache, truth = _valid_cache(tmp_path, monkeypatch)
    old_key = {**cache["key"], changed: "something else"}
    wrong = {name: 1 for name in truth}
    _write(tmp_path, {"key": old_key, "params": wrong, "digest": _zoo._digest(old_key, wrong)})
    assert _zoo.read_params_cache(tmp_path / _zoo.PARAMS_CACHE_FILE, _zoo.params_cache_key()) == {}
    assert _zoo.default_param_counts(["lenet5", "resnet20"]) == truth
    assert json.loads((tmp_path / _zoo.PARAMS_CACHE_FILE).read_text())["key"] == _zoo.params_cache_key()


def test_the_key_follows_the_model_source_and_torch(tmp_path, monkeypatch):
    package = tmp_path / "cnnlab"
    for folder in _zoo.MODEL_SOURCE_DIRS:
        (package / folder).mkdir(parents=True)
        (package / folder / "a.py").write_text("WIDTH = 64\n")
    monkeypatch.setattr(cnnlab, "__file__", str(package / "__init__.py"))
    key = _zoo.params_cache_key()
    assert _zoo.params_cache_key() == key  # deterministic
    (package / "layers" / "a.py").write_text("WIDTH = 65\n")  # one character of a block's definition
    edited = _zoo.params_cache_key()
    assert edited["source"] != key["source"]
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert _zoo.params_cache_key()["torch"] == "0.0.0" != edited["torch"]


def test_an_unwritable_cache_folder_still_gives_the_counts(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker / "cache"))  # cannot be made: its parent is a file
    assert _zoo.default_param_counts(["lenet5"]) == _zoo.default_param_counts(["lenet5"], cache=False)


def test_models_registered_elsewhere_are_counted_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))

    def tiny_test_model(num_classes=1000, in_chans=3):
        return nn.Conv2d(in_chans, num_classes, 1)

    monkeypatch.setitem(_MODELS, "tiny_test_model", ModelInfo("tiny_test_model", "test", tiny_test_model,
                                                              (3, 8, 8), 8, "", None))
    rows = _zoo.zoo_table("tiny_test_model")
    assert rows[0]["params"] == 3 * 1000 + 1000
    cached = json.loads((tmp_path / _zoo.PARAMS_CACHE_FILE).read_text())["params"] if (
        tmp_path / _zoo.PARAMS_CACHE_FILE).exists() else {}
    assert "tiny_test_model" not in cached


def test_an_input_the_model_cannot_take_is_a_cnnlab_error_naming_the_layer():
    """Three channels for a model built for one: torch's RuntimeError used to pass through."""
    model = cnnlab.create_model("resnet8", in_chans=1)
    with pytest.raises(CnnlabError, match=r"resnet8 cannot take a 3x28x28 input.*'features\.stem\.conv' \(Conv2d\) "
                                          r"on a 3x28x28 input.*reads 1 channel and the input has 3.*in_chans=3") as err:
        check_input_size(model, (3, 28, 28))
    assert not isinstance(err.value, cnnlab.models._base.InputTooSmallError)
    assert check_input_size(model, (1, 28, 28)) == (1000,)


@pytest.mark.parametrize("size", [(28, 28), (1, 28), (1, 28, 28, 1), (0, 28, 28), (1, 28.0, 28), (True, 28, 28),
                                  "1x28x28"])
def test_an_input_size_that_is_not_c_h_w_is_refused(size):
    """(28, 28) used to run as one unbatched image of 2 channels."""
    with pytest.raises(CnnlabError, match=r"must be \(C, H, W\)"):
        check_input_size(cnnlab.create_model("resnet8", in_chans=1), size)


def test_check_input_size_takes_models_without_parameters_and_half_models():
    assert check_input_size(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), (3, 8, 8)) == (3 * 4 * 4,)  # was StopIteration
    assert check_input_size(cnnlab.create_model("resnet8", in_chans=1), (np.int64(1), 28, 28)) == (1000,)
    half = cnnlab.create_model("resnet8", num_classes=3).half()
    assert check_input_size(half, (3, 32, 32)) == (3,)


@pytest.mark.parametrize("name", [18, None, b"resnet8", ["resnet8"]])
def test_a_model_name_must_be_a_string(name):
    """difflib's TypeError used to come out of create_model(18) and create_model(None)."""
    for call in (cnnlab.create_model, model_info):
        with pytest.raises(CnnlabError, match=r"named by a string \(str\).*of type"):
            call(name)
    assert not cnnlab.models.model_exists(name)


@pytest.mark.parametrize("model", ["resnet8", None, torch.zeros(1)])
def test_functions_of_a_built_model_refuse_anything_else_by_name(model):
    """check_input_size("resnet8", ...) and load_torchvision_state_dict("resnet18", ...) used to end in
    "'str' object has no attribute 'parameters'" (or 'state_dict')."""
    with pytest.raises(CnnlabError, match=r"check_input_size takes a built model \(a torch nn.Module\)"):
        check_input_size(model, (3, 32, 32))
    with pytest.raises(CnnlabError, match=r"load_torchvision_state_dict takes a built model") as refused:
        cnnlab.load_torchvision_state_dict(model, {})
    if isinstance(model, str):  # the name: say how to build it
        assert f"cnnlab.create_model('{model}', ...)" in str(refused.value)
    with pytest.raises(CnnlabError, match=r"takes a state_dict \(a mapping of names to tensors\).*got int"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18"), 5)


def test_a_path_or_a_built_model_where_a_name_or_model_goes_is_named_as_such(tmp_path):
    """check_input_size('runs/r1', ...) advised create_model('runs/r1'), which fails; create_model(model) printed
    the model's repr over many lines; create_model('runs/r1') said only "Unknown model"."""
    run = tmp_path / "r1"
    run.mkdir()
    with pytest.raises(CnnlabError) as refused:
        check_input_size(str(run), (3, 32, 32))
    assert "It is a file or folder: a run's model loads from its folder" in str(refused.value)
    assert "create_model(NAME" in str(refused.value)
    assert f"create_model('{run}'" not in str(refused.value)
    with pytest.raises(CnnlabError, match=r"Unknown model '.*r1'\. It is a file or folder: a run's model loads"):
        cnnlab.create_model(str(run))
    with pytest.raises(CnnlabError) as refused:
        cnnlab.create_model(cnnlab.create_model("resnet8"))
    assert "got a built ResNet model (of type ResNet)" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("pattern", [18, b"resnet", ["resnet*"]])
def test_a_list_models_pattern_must_be_a_string(pattern):
    with pytest.raises(CnnlabError, match=r"name pattern \(str\)"):
        cnnlab.list_models(pattern)
    with pytest.raises(CnnlabError, match=r"name pattern \(str\)"):
        cnnlab.models.list_torchvision_models(pattern)


def test_numpy_and_torch_integers_are_whole_numbers():
    model = cnnlab.create_model("resnet8", num_classes=np.int64(4), in_chans=torch.tensor(1))
    assert (model.num_classes, model.in_chans) == (4, 1) and type(model.num_classes) is int
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    mlp = cnnlab.create_model("mlp", depth=np.int64(2), width=np.int32(16))  # the builder's own options
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 2 + 1
    model.reset_classifier(np.int64(3))
    assert model.num_classes == 3 and model.fc.out_features == 3
    googlenet = cnnlab.create_model("googlenet")
    googlenet.reset_classifier(np.int16(5))
    assert all(aux.fc2.out_features == 5 for aux in googlenet.aux_heads.values())


@pytest.mark.parametrize("value", [np.True_, torch.tensor(True), torch.tensor(2.0), torch.tensor([2]), 2.0, "2"])
def test_what_is_not_a_whole_number_stays_refused(value):
    with pytest.raises(CnnlabError, match="num_classes must be a whole number"):
        cnnlab.create_model("resnet8", num_classes=value)


@pytest.mark.parametrize("rate", ["0.5", {"p": 0.5}, float("nan"), False, [0.5]])
def test_drop_rate_that_is_not_a_probability_is_refused(rate):
    """drop_rate="0.5" used to raise a TypeError from comparing a float with a str."""
    with pytest.raises(CnnlabError, match=r"drop_rate must be a drop probability in \[0, 1\)"):
        cnnlab.create_model("resnet8", drop_rate=rate)
    assert cnnlab.create_model("resnet8", drop_rate=np.float64(0.5)).head.p == 0.5


def test_a_pattern_without_wildcards_matches_any_part_of_a_name():
    """As list_models' docstring and docs/models.md say: 'resnet' is '*resnet*', 'resnet*' starts the name."""
    assert cnnlab.list_models("resnet") == [n for n in ALL if "resnet" in n]
    assert "preact_resnet18" in cnnlab.list_models("resnet")
    assert "preact_resnet18" not in cnnlab.list_models("resnet*")
    assert cnnlab.list_models("") == cnnlab.list_models(None) == ALL


@pytest.mark.parametrize("name", SWEPT)
def test_num_classes_0_builds_the_model_without_classifier(name):
    """timm's convention, as reset_classifier(0): the forward pass returns the pooled (B, num_features) features."""
    info = model_info(name)
    with torch.device("meta"), shapes_on_meta():
        model = cnnlab.create_model(name, num_classes=0).eval()
        x = torch.zeros(2, *info.default_input)
        assert model(x).shape == (2, model.num_features)
        assert check_input_size(model, info.default_input) == (model.num_features,)
    assert model.num_classes == 0 and model.get_classifier() is model.fc
    with torch.device("meta"):
        reset = cnnlab.create_model(name, num_classes=5)
    reset.reset_classifier(0)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in reset.state_dict().items()]


def test_num_classes_0_is_refused_for_torchvision_models():
    with pytest.raises(CnnlabError, match=r"tv:resnet18 keeps its classifier.*pre_logits"):
        cnnlab.create_model("tv:resnet18", num_classes=0)


def test_an_instance_norm_too_small_at_the_minimum_size_does_not_repeat_the_minimum(cli):
    # "Input 3x32x32 is too small for resnet18 ... resnet18 is meant for inputs of at least 32x32": the two halves
    # of the message contradicted each other
    code, out, err = cli(["build", "resnet18", "--norm", "in", "--input", "3x32x32"])
    assert code == 2 and "is meant for inputs of at least 32x32" not in err
    assert "holds for norms that can take a 1x1 map" in err and "choose a norm other than 'in'" in err
