"""torchvision classifiers as tv:NAME: build, sizes, grayscale input, summary, a training step, export."""

import json
import re

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.analysis import summary
from cnnlab.errors import CnnlabError, UnknownOptionError
from cnnlab.models import count_params, create_model, list_torchvision_models, model_exists, model_info
from cnnlab.models.stages import classifier_names, set_requires_grad
from cnnlab.models._meta import meta_build
from cnnlab.models._registry import SHARED_OPTIONS
from cnnlab.models.tv import INCEPTION_OPTIONS
from cnnlab.train.engine import StepSettings, train_step
from _one_draw import one_draw_of_each_weight

# Small enough to build on the CPU with torchvision's own builder (the independent reference).
CPU_BUILT = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5", "regnet_y_400mf", "squeezenet1_1",
             "shufflenet_v2_x0_5", "googlenet"]
META_BUILT = ["vit_b_16", "swin_t", "convnext_tiny", "densenet121", "inception_v3", "maxvit_t"]


def reference(name, **kwargs):
    if name in ("googlenet", "inception_v3"):
        kwargs = {**INCEPTION_OPTIONS, **kwargs}
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def test_lists_every_torchvision_classifier():
    names = list_torchvision_models()
    assert names == sorted("tv:" + n for n in torchvision.models.list_models(module=torchvision.models))
    assert "tv:efficientnet_b0" in names and "tv:vit_b_16" in names
    assert list_torchvision_models("mobilenet") == ["tv:mobilenet_v2", "tv:mobilenet_v3_large", "tv:mobilenet_v3_small"]


@pytest.mark.parametrize("name", CPU_BUILT)
def test_same_modules_as_torchvisions_builder(name):
    ours = create_model(f"tv:{name}", num_classes=7)
    theirs = reference(name, num_classes=7)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert count_params(ours) == count_params(theirs)
    assert ours.model_name == f"tv:{name}" and ours.num_classes == 7 and ours.in_chans == 3


@pytest.mark.parametrize("name", META_BUILT)
def test_parameter_counts_match_torchvision_on_meta(name):
    with torch.device("meta"):
        ours = create_model(f"tv:{name}", num_classes=1000)
        theirs = reference(name)
    assert count_params(ours) == count_params(theirs)
    if name != "inception_v3":  # torchvision's recorded count includes Inception's auxiliary head
        assert count_params(ours) == torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def test_model_info_of_torchvision_models():
    info = model_info("tv:efficientnet_b0")
    assert info.family == "torchvision" and info.torchvision == "efficientnet_b0"
    assert info.default_input == (3, 224, 224) and info.min_size == 32
    assert model_info("tv:inception_v3").default_input == (3, 299, 299)
    assert model_info("tv:inception_v3").min_size == 75  # torchvision's own metadata
    vit = model_info("tv:vit_h_14")  # weights are 518 px, but the model built without them takes 224
    with torch.device("meta"):
        assert vit.min_size == vit.default_input[1] == create_model("tv:vit_h_14").image_size
    assert model_exists("tv:resnet18") and model_exists("resnet18") and not model_exists("tv:resnet19x")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(CnnlabError) as err:
        create_model("tv:resnet1")
    assert "tv:resnet18" in str(err.value) and "--torchvision" in str(err.value)
    with pytest.raises(CnnlabError, match="norm and act"):
        create_model("tv:resnet18", norm="gn")
    with pytest.raises(CnnlabError, match="does not take"):
        create_model("tv:resnet18", no_such_option=1)


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "regnet_y_400mf"])
def test_an_unknown_option_lists_the_options_the_builder_passes_on(name):
    """torchvision's builders take **kwargs: the listed options are the class's constructor parameters with a
    default, each of which the builder accepts at that default; the ones the builder sets itself (ResNet's block
    and layers) are not listed."""
    import inspect

    import torchvision.models

    with pytest.raises(CnnlabError) as err:
        create_model(f"tv:{name}", widht=3)
    text = str(err.value)
    written = text.split("Its options are ", 1)[1].split(".", 1)[0].split(", ")
    # the options that take a class or a function (norm_layer) are named apart: a spec cannot write them
    objects = re.search(r"\. ([\w, ]+) (?:takes a Python object|take Python objects)", text)
    objects = objects.group(1).split(", ") if objects else []
    listed = written + objects
    with meta_build():  # the class alone is read, not vgg11's 133M values
        cls = type(torchvision.models.get_model(name, weights=None))
    parameters = inspect.signature(cls.__init__).parameters
    # create_model's own keywords (num_classes; dropout, which chooses inverted or vanilla) never reach the builder
    with_default = {key for key, p in parameters.items() if p.default is not p.empty and key not in SHARED_OPTIONS}
    assert set(listed) == with_default
    for option in objects:  # each asks for a class or a function, by torchvision's own annotation
        assert "Callable" in str(parameters[option].annotation) or "Module" in str(parameters[option].annotation)
    if "norm_layer" in parameters:
        assert "norm_layer" in objects and "norm_layer" not in written
    builder = torchvision.models.get_model_builder(name)
    with meta_build():  # whether the builder takes the option, not the values it would draw (vgg11's 133M)
        for option in listed:
            builder(weights=None, **{option: parameters[option].default})  # accepted
        for option in set(parameters) - with_default - {"self"} - set(SHARED_OPTIONS):
            with pytest.raises(TypeError, match="multiple values"):
                builder(weights=None, **{option: None})


def test_an_unknown_option_close_to_one_is_named():
    with pytest.raises(CnnlabError, match="Did you mean 'stochastic_depth_prob'"):
        create_model("tv:efficientnet_b0", stochastic_depth_pro=0.3)


def test_torchvisions_dropout_option_is_not_offered_where_cnnlabs_dropout_takes_the_name():
    """dropout= is create_model's inverted-or-vanilla choice, so torchvision's dropout rate cannot be given: the
    message names drop_rate rather than suggesting an option that would be refused."""
    with torch.device("meta"):  # the modules without vgg11's 133M values to draw
        with pytest.raises(CnnlabError) as err:
            create_model("tv:vgg11", dropuot=0.3)
        assert "Did you mean" not in str(err.value) and "drop_rate" in str(err.value)
        with pytest.raises(CnnlabError):
            create_model("tv:vgg11", dropout=0.3)
        assert create_model("tv:vgg11", drop_rate=0.3).classifier[2].p == 0.3


@pytest.mark.parametrize("name, typo, options", [
    ("mobilenet_v3_small", dict(width_mul=0.5), dict(width_mult=0.5, reduced_tail=True, dilated=True)),
    ("convnext_tiny", dict(stochastic_depth=0.2), dict(stochastic_depth_prob=0.2, layer_scale=0.5)),
])
def test_an_option_a_constructors_kwargs_would_swallow_is_refused(name, typo, options):
    """MobileNetV3's and ConvNeXt's constructors end in **kwargs: a misspelt option built the default network
    without a word. It is refused as for the other models, and their real options still build."""
    import torchvision.models

    with torch.device("meta"):
        with pytest.raises(UnknownOptionError) as err:
            create_model(f"tv:{name}", **typo)
        assert err.value.option == next(iter(typo))
        assert f"Did you mean '{next(iter(options))}'" in str(err.value)
        built = create_model(f"tv:{name}", num_classes=10, **options)
        reference = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
        default = create_model(f"tv:{name}", num_classes=10)
    # the modules' reprs show the widths, dilations and stochastic-depth rates the options set
    assert repr(built) == repr(reference) != repr(default)


def test_grayscale_first_conv_sees_a_gray_image_as_the_rgb_network_does():
    torch.manual_seed(0)
    rgb = create_model("tv:resnet18", num_classes=5).eval()
    torch.manual_seed(0)  # the same draws: every layer but the first conv is identical
    gray = create_model("tv:resnet18", num_classes=5, in_chans=1).eval()
    assert gray.conv1.in_channels == 1 and gray.in_chans == 1
    assert torch.equal(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gray(g), rgb(g.expand(-1, 3, -1, -1)), atol=1e-5)


def test_drop_rate_sets_the_head_dropout():
    model = create_model("tv:efficientnet_b0", num_classes=3, drop_rate=0.4)
    assert [m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)] == [0.4]
    assert create_model("tv:resnet18", drop_rate=0.0) is not None
    with pytest.raises(CnnlabError, match="no dropout"):
        create_model("tv:resnet18", drop_rate=0.3)


def test_inception_family_builds_without_aux_heads_or_input_transform():
    model = create_model("tv:googlenet", num_classes=4).train()
    assert model.aux1 is None and model.transform_input is False
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)  # a plain tensor in training mode too


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small", "tv:mnasnet0_5"])
@pytest.mark.parametrize("chans", [1, 3])
def test_summary_and_a_training_step(name, chans):
    torch.manual_seed(0)
    result = summary(name, (chans, 32, 32), num_classes=10, in_chans=chans)
    model = create_model(name, num_classes=10, in_chans=chans)
    assert result.total_params == count_params(model) and result.model_name == name
    assert result.macs > 0

    set_requires_grad(model, ["stem"], False)  # a frozen stem must stay as it is
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    head = classifier_names(model)[0]
    before = model.get_submodule(head).weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    settings = StepSettings(device_type="cpu", autocast_dtype=None, smoothing=0.0, aux_weight=0.0, grad_clip=0.0)
    model.train()
    step = train_step(model, torch.randn(4, chans, 32, 32), torch.tensor([0, 1, 2, 3]), optimizer,
                      torch.amp.GradScaler("cpu", enabled=False), settings)
    assert step.updated and torch.isfinite(step.loss)
    assert not torch.equal(model.get_submodule(head).weight, before)
    assert frozen and all(torch.equal(dict(model.named_parameters())[n], p) for n, p in frozen.items())


def test_models_command_lists_torchvision(cli):
    code, out, err = cli(["models", "--torchvision", "mobilenet_v3", "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["tv:mobilenet_v3_large", "tv:mobilenet_v3_small"]
    for row in rows:
        assert row["params"] == count_params(reference(row["torchvision"]))
        assert row["default_input"] == [3, 224, 224] and row["family"] == "torchvision"


def test_models_command_says_when_a_size_is_the_only_one(cli):
    """A ViT built without weights takes its image_size and nothing else; a listing that printed the bare
    number under "min size" told the user larger inputs work too."""
    code, out, err = cli(["models", "--torchvision", "vit_b_16", "--json"])
    assert code == 0, err
    (vit,) = json.loads(out)
    with torch.device("meta"):
        side = create_model("tv:vit_b_16").image_size
    assert vit["min_size"] == side and vit["exact_size"] is True
    code, out, err = cli(["models", "--torchvision", "swin_t", "--json"])  # takes larger inputs too
    assert code == 0, err
    assert json.loads(out)[0]["exact_size"] is False
    code, out, err = cli(["models", "--torchvision", "vit_b_16"])
    assert code == 0, err
    assert f"{side} exactly" in out
    code, out, err = cli(["models", "--torchvision", "resnet18"])
    assert code == 0, err
    assert "exactly" not in out and " 32 " in out


def test_a_vit_built_for_another_side_is_shown_at_that_side(cli):
    """image_size=64 builds a ViT that takes 64x64 only: its min_size and the default input of build and
    summary follow it rather than the default build's 224, which that model refuses."""
    from cnnlab.models import default_input

    with torch.device("meta"):
        vit = create_model("tv:vit_b_32", image_size=64)
    assert vit.image_size == 64 and vit.min_size == 64
    assert default_input("tv:vit_b_32", {"image_size": 64, "in_chans": 1}) == (1, 64, 64)
    assert summary(vit).input_size[1:] == (64, 64)
    code, out, err = cli(["build", "tv:vit_b_32,image_size=64", "--json"])
    assert code == 0, err
    assert json.loads(out)["input"] == [3, 64, 64]
    assert default_input("tv:resnet18", {"image_size": 64}) == (3, 224, 224)  # a model that takes any side


def test_maxvit_takes_the_one_size_it_was_built_for(cli):
    """MaxViT's attention windows tile the grid of its input_size and no other (maxvit_t fails at 256 and
    at 448): the listing said "min size 224" and a failed input was told "at least 224x224"."""
    assert model_info("tv:maxvit_t").exact_size and model_info("tv:maxvit_t").min_size == 224
    with torch.device("meta"):
        model = create_model("tv:maxvit_t", num_classes=3)
        with pytest.raises(Exception):  # torchvision's own model refuses a larger input
            model(torch.zeros(1, 3, 448, 448))
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)
        wide = create_model("tv:maxvit_t", input_size=448)  # a whole number means a square
        assert wide.min_size == 448 and wide(torch.zeros(1, 3, 448, 448)).shape == (1, 1000)
    code, out, err = cli(["models", "--torchvision", "maxvit", "--json"])
    assert code == 0, err
    assert json.loads(out)[0]["exact_size"] is True
    code, out, err = cli(["build", "tv:maxvit_t", "--input", "256"])
    assert code == 2 and "It takes only 224x224 images" in err and "at least" not in err
    code, out, err = cli(["build", "tv:maxvit_t,input_size=448", "--json"])
    assert code == 0, err
    assert json.loads(out)["input"] == [3, 448, 448]
    code, out, err = cli(["build", "tv:maxvit_t,input_size=256"])  # a grid its windows do not tile
    assert code == 2 and "partition size" in err and "\n" not in err.strip() and "Traceback" not in err


def test_a_torchvision_option_of_the_wrong_type_is_refused_plainly(cli):
    code, out, err = cli(["build", "tv:efficientnet_b0,stochastic_depth_prob=abc"])
    assert code == 2 and "stochastic_depth_prob='abc'" in err and "internal error" not in err


@pytest.mark.parametrize("spec, words", [
    # a probability out of [0, 1] was only found at the first forward pass, and blamed on the input's size
    ("tv:efficientnet_b0,stochastic_depth_prob=5", "stochastic_depth_prob=5 must lie between 0 and 1"),
    ("tv:swin_t,attention_dropout=-0.5", "attention_dropout=-0.5 must lie between 0 and 1"),
    # a width multiplier of 0 or less built the narrowest MobileNet (8 channels a layer) in silence
    ("tv:mobilenet_v3_small,width_mult=0", "width_mult=0 must be above 0 and finite"),
    ("tv:mobilenet_v2,width_mult=-1", "width_mult=-1 must be above 0 and finite"),
    # a negative stem width ended in torch's "negative dimension" as an internal error
    ("tv:regnet_y_400mf,stem_width=-2", "stem_width=-2 must be above 0 and finite"),
])
def test_a_torchvision_option_out_of_its_range_is_refused_before_the_build(cli, spec, words):
    code, out, err = cli(["build", spec, "--input", "3x64x64"])
    assert code == 2 and words in err and "internal error" not in err and "cannot take" not in err


@pytest.mark.parametrize("spec, words", [
    # the init of a layer left with no fan-out divided by zero: an internal error
    ("tv:regnet_y_400mf,stem_width=1", "refused the option stem_width=1: float division by zero"),
    # widths rounded down to nothing built, and failed at the first pass as if the input were too small
    ("tv:swin_t,mlp_ratio=0.0001", "has a layer with no units: 'features.1.0.mlp.0.weight' is 0x96"),
    ("tv:maxvit_t,squeeze_ratio=0.0001", "has a layer with no units"),
])
def test_options_that_leave_a_layer_nothing_are_named(cli, spec, words):
    code, out, err = cli(["build", spec])
    assert code == 2 and words in err and "internal error" not in err and "cannot take" not in err
    assert "Input " not in err  # the input was never the problem ("Input 3x224x224 is too small for ...")


def test_a_layer_the_options_make_impossible_is_the_options_fault_not_an_internal_error(monkeypatch):
    """An option outside the ranges cnnlab knows can still make a layer torch refuses (a RuntimeError)."""
    from cnnlab.models import tv

    monkeypatch.setattr(tv, "POSITIVE_OPTIONS", ())  # as an option cnnlab does not range-check would
    with pytest.raises(CnnlabError, match=r"torchvision's regnet_y_400mf refused the option stem_width=-2: .*negative"):
        create_model("tv:regnet_y_400mf", stem_width=-2)


@pytest.mark.parametrize("spec, option", [("tv:resnet18,layers=1", "layers"), ("tv:resnet18,block=1", "block"),
                                          ("tv:vit_b_16,patch_size=3", "patch_size")])
def test_an_option_the_builder_sets_itself_is_refused_as_unknown(cli, spec, option):
    """torchvision's builder passes these to the class itself: giving one again is torchvision's "multiple values"
    TypeError, which is the refusal of an option the model does not take, not a wrong type."""
    code, out, err = cli(["build", spec])
    assert code == 2 and "Traceback" not in err
    assert f"does not take that option: '{option}'" in err and f"sets {option} itself" in err
    assert "Its options are " in err and "Check the type" not in err
    with pytest.raises(UnknownOptionError):
        create_model(spec.split(",")[0], **{option: 1})


def test_an_option_for_a_python_object_refuses_a_written_value(cli):
    """norm_layer asks for a class or a function: a spec's text is refused by name, while create_model passes
    a real class on to torchvision."""
    code, out, err = cli(["build", "tv:resnet18,norm_layer=x"])
    assert code == 2 and "norm_layer takes a Python object" in err and "norm_layer='x'" in err
    assert "Check the type" not in err and "Traceback" not in err
    with meta_build():
        model = create_model("tv:resnet18", norm_layer=_group_norm_8)
    assert isinstance(model.bn1, nn.GroupNorm)


def _group_norm_8(channels: int) -> nn.Module:
    return nn.GroupNorm(8, channels)


@pytest.mark.parametrize("spec, shown", [("tv:resnet18,groups=abc", "the option groups='abc'"),
                                         ("tv:vit_b_16,image_size=65", "the option image_size=65")])
def test_torchvisions_refusal_names_only_the_options_given(cli, spec, shown):
    code, out, err = cli(["build", spec])
    assert code == 2 and f"refused {shown}:" in err
    assert "num_classes" not in err and "!." not in err


def test_a_model_name_in_another_case_finds_its_closest_names(cli):
    for spec, close in [("RESNET8", "resnet8"), ("tv:Resnet18", "tv:resnet18")]:
        code, out, err = cli(["build", spec])
        assert code == 2 and re.search(rf"Closest names: {close}\b", err), err


def test_summary_stages_command(cli):
    code, out, err = cli(["summary", "tv:resnet18", "--stages", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert [r["stage"] for r in data["stages"]] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert data["stages"][1]["modules"] == ["layer1"]
    assert sum(r["params"] for r in data["stages"]) == count_params(reference("resnet18"))
    assert data["freeze_choices"][0] == "backbone"
    code, out, err = cli(["build", "tv:mobilenet_v3_small", "--input", "1x32x32", "--num-classes", "10", "--json"])
    assert code == 0, err
    assert json.loads(out)["output"] == [10]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name,chans,fmt", [("tv:mobilenet_v3_small", 1, "torchscript"), ("tv:resnet18", 3, "torchscript"),
                                            ("tv:resnet18", 3, "onnx")])
def test_train_run_checkpoint_and_export(tmp_path_factory, name, chans, fmt):
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.evaluate.export import export_model
    from cnnlab.train.checkpoint import load_run_model
    from cnnlab.train.engine import train

    folder = tmp_path_factory.getbasetemp() / f"run-{name.replace(':', '-')}"
    if not folder.exists():
        config = apply_overrides(RunConfig(), [
            f"model.name={name}", f"data.spec=synthetic:classes=3,train=32,val=16,test=16,channels={chans}",
            "data.image_size=32", "train.batch_size=16", "train.epochs=1", "train.threads=1", "log.quiet=true",
            "log.curves=false"])  # a checkpoint to load and export; the curves are tests/train's
        train(config, folder)
    loaded = load_run_model(folder)  # the checkpoint's model name validates and rebuilds the tv: model
    assert loaded.model_name == name and loaded.in_chans == chans
    result = export_model(folder, fmt, out=tmp_path_factory.mktemp("export") / f"m.{fmt}")
    assert result["max_abs_difference"] <= result["tolerance"]
    assert result["preprocessing"]["model"] == name and result["preprocessing"]["channels"] == chans


@pytest.mark.parametrize("option", [dict(weights="DEFAULT"), dict(weights=None), dict(pretrained=True)])
def test_weights_as_a_builder_option_point_to_init_from(option):
    """torchvision's 'got multiple values for keyword argument weights' used to come out."""
    with pytest.raises(CnnlabError, match=r"tv:resnet18 .*(weights|pretrained)= is not an option.*model\.init_from"):
        create_model("tv:resnet18", **option)


def test_torchvision_weights_load_into_a_tv_model_as_the_message_says(tmp_path):
    theirs = reference("resnet18", num_classes=3)
    torch.save(theirs.state_dict(), tmp_path / "weights.pth")
    ours = create_model("tv:resnet18", num_classes=3)
    ours.load_state_dict(torch.load(tmp_path / "weights.pth", weights_only=True))
    assert torch.equal(ours.conv1.weight, theirs.conv1.weight)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_a_torchvision_file_with_auxiliary_heads_loads_as_the_docs_say(tmp_path, name):
    """docs/transfer.md: torchvision's GoogLeNet and Inception v3 files hold the auxiliary heads' tensors, which
    the tv: model (built without them) does not take with load_state_dict; load_torchvision_state_dict loads the
    rest and names those as unused."""
    import cnnlab

    theirs = getattr(torchvision.models, name)(weights=None, aux_logits=True, init_weights=True)
    torch.save(theirs.state_dict(), tmp_path / "weights.pth")
    ours = create_model(f"tv:{name}")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ours.load_state_dict(torch.load(tmp_path / "weights.pth", weights_only=True))
    report = cnnlab.load_torchvision_state_dict(ours, tmp_path / "weights.pth")
    auxiliary = ("aux1.", "aux2.") if name == "googlenet" else ("AuxLogits.",)
    assert report.unused and all(key.startswith(auxiliary) for key in report.unused)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:vit_b_16", "tv:squeezenet1_1"])
def test_the_interface_the_docs_give_tv_models(name):
    """README.md and docs/models.md: a tv: model keeps torchvision's methods (not forward_features /
    forward_head / reset_classifier), and the functions of cnnlab.models cover it."""
    from cnnlab.models import pre_logits, reset_classifier

    with torch.device("meta"):
        model = create_model(name)
        x = torch.zeros(2, 3, 224, 224)
        assert not any(hasattr(model, method) for method in ("forward_features", "forward_head", "reset_classifier"))
        features = pre_logits(model, x)
        reset_classifier(model, 4)
        assert model(x).shape == (2, 4) and features.ndim == 2
    with pytest.raises(CnnlabError, match="pre_logits"):
        reset_classifier(model, 0)


@pytest.mark.parametrize("name", ["tv:vgg11", "tv:squeezenet1_1", "tv:mobilenet_v3_small"])
def test_zero_init_residual_on_tv_models_is_checked_as_on_the_zoo(name, cli):
    """false asks for nothing and is accepted by every model; true is refused with what takes it. torchvision's
    builders without the flag used to answer both with "does not take that option"."""
    with one_draw_of_each_weight():  # the values torchvision's own init draws from the seed, once (vgg11: 119M)
        torch.manual_seed(0)
        default = create_model(name, num_classes=10)
        torch.manual_seed(0)
        unflagged = create_model(name, num_classes=10, zero_init_residual=False)
    assert default.state_dict().keys() == unflagged.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), unflagged.state_dict().values()))
    code, out, err = cli(["build", f"{name},zero_init_residual=false", "--input", "3x64x64", "--json"])
    assert code == 0, err
    code, out, err = cli(["build", f"{name},zero_init_residual=true", "--input", "3x64x64"])
    assert code == 2 and "Traceback" not in err and "does not take" not in err
    assert f"{name} has no zero_init_residual option" in err and "tv:resnet18" in err and "Leave the option out" in err
    with pytest.raises(CnnlabError, match="must be true or false"):
        create_model(name, zero_init_residual=0)


def test_zero_init_residual_reaches_torchvisions_resnets():
    zeroed = create_model("tv:resnet18", num_classes=10, zero_init_residual=True)
    assert all(torch.all(block.bn2.weight == 0) for layer in (zeroed.layer1, zeroed.layer4) for block in layer)
    plain = create_model("tv:resnet18", num_classes=10, zero_init_residual=False)
    assert all(torch.all(block.bn2.weight == 1) for block in plain.layer1)
    with pytest.raises(CnnlabError, match="must be true or false"):
        create_model("tv:resnet18", zero_init_residual="yes")  # torchvision would take any non-empty value for true


@pytest.mark.parametrize("name", ["tv:googlenet", "tv:inception_v3"])
def test_torchvisions_auxiliary_classifiers_are_refused(name):
    """aux_logits=true made the model return torchvision's tuple of logits in training mode, which the training
    step cannot read (an internal error at the first step); it is refused, and false builds the plain model."""
    with pytest.raises(CnnlabError, match="aux_logits=true would make it return"):
        create_model(name, num_classes=3, aux_logits=True)
    with pytest.raises(CnnlabError, match="must be true or false"):
        create_model(name, num_classes=3, aux_logits=1)
    model = create_model(name, num_classes=3, aux_logits=False).train()
    side = 75 if name == "tv:inception_v3" else 32
    assert isinstance(model(torch.randn(2, 3, side, side)), torch.Tensor)
