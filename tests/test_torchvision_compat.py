"""Every model torchvision also builds: same parameter count, and torchvision weights load so that
eval-mode logits match torchvision's."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.models import model_info
from _one_draw import one_draw_of_each_weight

TWINS = [name for name in cnnlab.list_models() if model_info(name).torchvision]


def test_every_torchvision_architecture_has_a_twin():
    expected = {"alexnet", "googlenet", "densenet121", "mobilenet_v2", "convnext_tiny", "resnext50_32x4d",
                "wide_resnet50_2"} | {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")} | {
                f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    assert expected == {model_info(n).torchvision for n in TWINS}


def torchvision_model(name):
    builder = getattr(torchvision.models, model_info(name).torchvision)
    if name == "googlenet":
        return builder(aux_logits=True, init_weights=True, transform_input=False)
    if name.startswith("vgg"):
        with one_draw_of_each_weight():  # torchvision's VGG draws every Linear weight again itself
            return builder()
    return builder()


def randomise_running_stats(model):
    """Fresh BN statistics are 0/1 and would hide a mis-mapped buffer."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name", TWINS)
def test_parameter_count_and_logits_match_torchvision(name):
    torch.manual_seed(0)
    theirs = torchvision_model(name)
    with torch.device("meta"):  # every value of ours comes from theirs: drawing an initialisation first is waste
        ours = cnnlab.create_model(name)
    ours = ours.to_empty(device="cpu")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    randomise_running_stats(theirs)
    report = cnnlab.load_torchvision_state_dict(ours, theirs.state_dict())
    assert report.loaded == len(theirs.state_dict()) and not report.skipped and not report.adapted
    assert len(ours.state_dict()) == len(theirs.state_dict())  # nothing of ours left unloaded (uninitialised)
    size = max(model_info(name).min_size, 64)
    x = torch.randn(2, 3, size, size)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.abs().max() > 1e-3  # a non-trivial output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_transfer_to_grayscale_and_new_classes(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    randomise_running_stats(theirs)
    path = tmp_path / "resnet18.pth"
    torch.save(theirs.state_dict(), path)
    ours = cnnlab.create_model("resnet18", num_classes=10, in_chans=1)
    fresh_fc = ours.fc.weight.detach().clone()
    report = cnnlab.load_torchvision_state_dict(ours, path)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert len(report.adapted) == 1 and report.adapted[0].endswith("weight")
    assert torch.equal(ours.fc.weight, fresh_fc)  # the new head keeps its own init
    # A gray image through the adapted model equals the RGB network on the gray image in colour.
    theirs.fc = nn.Identity()
    ours.eval(), theirs.eval()
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_head(ours.forward_features(gray), pre_logits=True), theirs(gray.expand(-1, 3, -1, -1)),
            atol=1e-4, rtol=1e-4,
        )


def test_weights_of_another_architecture_are_refused():
    ours = cnnlab.create_model("resnet34")
    with pytest.raises(CnnlabError, match="not the state_dict"):
        cnnlab.load_torchvision_state_dict(ours, torchvision.models.resnet18().state_dict())
    ours = cnnlab.create_model("resnet50")
    with pytest.raises(CnnlabError, match="Shape mismatch|line up"):
        cnnlab.load_torchvision_state_dict(ours, torchvision.models.wide_resnet50_2().state_dict())


def test_what_is_not_torchvision_s_weights_for_a_model_with_memory_is_refused_in_words(tmp_path):
    """A model built on the meta device reported 122 tensors loaded while torch copied none (a no-op warning
    each); a cnnlab run's checkpoint was blamed as "not the state_dict of the torchvision model that lenet5 mirrors",
    a model that mirrors none."""
    from cnnlab.models import build_on_meta
    from cnnlab.train.checkpoint import save_checkpoint

    theirs = torchvision.models.resnet18().state_dict()
    with pytest.raises(CnnlabError, match="resnet18 is built on the meta device .*nothing to copy the weights into"):
        cnnlab.load_torchvision_state_dict(build_on_meta("resnet18"), theirs)
    meta = {key: value.to("meta") for key, value in theirs.items()}
    with pytest.raises(CnnlabError, match="The state_dict's tensors are on the meta device"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18"), meta)
    lenet = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    save_checkpoint(tmp_path / "best.safetensors", model=lenet, meta={}, rng=False)
    with pytest.raises(CnnlabError, match=r"a cnnlab run's checkpoint \(its tensors are named 'model/\.\.\.'\).*"
                                          r"model\.init_from=RUN"):
        cnnlab.load_torchvision_state_dict(lenet, tmp_path / "best.safetensors")
    # a model with no torchvision twin is not said to mirror one
    with pytest.raises(CnnlabError, match=r"not the state_dict of a model laid out as lenet5 \(lenet5 mirrors no "
                                          r"torchvision model\)"):
        cnnlab.load_torchvision_state_dict(lenet, theirs)


class Payload:
    def __reduce__(self):
        return (print, ("this code must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"w": Payload()}, handle)
    with pytest.raises(CnnlabError, match="Cannot read"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("lenet5"), path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("lenet5"), tmp_path / "nope.pth")


def test_safetensors_files_load_whatever_their_tensor_order(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    theirs = torchvision.models.resnet18().eval()
    randomise_running_stats(theirs)
    path = tmp_path / "resnet18.safetensors"
    save_file(theirs.state_dict(), str(path))  # stored sorted by name, not in layer order
    ours = cnnlab.create_model("resnet18").eval()
    assert cnnlab.load_torchvision_state_dict(ours, path).loaded == len(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CnnlabError, match="as a safetensors file"):
        cnnlab.load_torchvision_state_dict(ours, tmp_path / "bad.safetensors")


def test_googlenet_without_aux_heads_loads_a_file_with_them():
    theirs = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    ours = cnnlab.create_model("googlenet", aux_logits=False)
    report = cnnlab.load_torchvision_state_dict(ours, theirs.state_dict())
    assert report.loaded == sum(not k.startswith("aux") for k in theirs.state_dict())


def test_only_the_classifier_may_differ_in_size():
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.bn1.weight"] = torch.ones(10)  # a mis-sized BN weight, as long as the class count
    with pytest.raises(CnnlabError, match="Shape mismatch.*layer1.0.bn1.weight"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18", num_classes=10), state)
    state["layer1.0.bn1.weight"] = 3
    with pytest.raises(CnnlabError, match="not tensors"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18"), state)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # width_per_group=0, unchecked
@pytest.mark.parametrize("spec, words, checked", [
    ("tv:resnet50,width_per_group=0", "has a layer with no units", "width_per_group=0 must be above 0"),
    ("tv:efficientnet_b0,stochastic_depth_prob=2", "an option it was built with may be out of its range",
     "stochastic_depth_prob=2 must lie between 0 and 1"),
    ("tv:vit_b_16,image_size=0", "It was built for 0x0 images, which no image is", "image_size=0 must be above 0"),
])
def test_a_builder_option_out_of_range_is_not_blamed_on_the_input_size(spec, words, checked, cli, monkeypatch):
    # the message ended "Use an input size the model supports: at least 32x32" for a 224x224 input. The options
    # cnnlab range-checks are refused before the build now; one it does not check still fails at the first pass.
    code, out, err = cli(["build", spec])
    assert code == 2 and checked in err and "Use an input size" not in err and "Traceback" not in err
    from cnnlab.models import tv

    monkeypatch.setattr(tv, "PROBABILITY_OPTIONS", ())
    monkeypatch.setattr(tv, "POSITIVE_OPTIONS", ())
    code, out, err = cli(["build", spec])
    assert code == 2 and words in err and "Use an input size" not in err and "Traceback" not in err


def _legacy_densenet_state(theirs):
    """theirs.state_dict() as torchvision's densenet121-a639ec97.pth has it: 'norm.1' for 'norm1' (the names
    torchvision's densenet._load_state_dict renames) and no num_batches_tracked (saved before torch 0.4.1)."""
    import re

    renamed = {}
    for key, value in theirs.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        renamed[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)] = value
    assert any(".norm.1." in key for key in renamed)
    return renamed


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_s_own_densenet_file_layout_loads_into_both_twins(tmp_path, suffix):
    """torchvision's DenseNet files keep 2017's names and lack num_batches_tracked: torchvision renames the one
    and torch's BatchNorm fills the other at load; cnnlab refused them (606 tensors against 727)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    theirs = torchvision.models.densenet121()
    randomise_running_stats(theirs)
    legacy = _legacy_densenet_state(theirs)
    path = tmp_path / f"densenet121{suffix}"
    if suffix == ".pth":
        torch.save(legacy, path)
    else:
        save_file({key: value.contiguous() for key, value in legacy.items()}, str(path))
    x = torch.randn(2, 3, 64, 64)
    theirs.eval()
    with torch.no_grad():
        expected = theirs(x)
    for name in ("densenet121", "tv:densenet121"):
        ours = cnnlab.create_model(name)
        if name.startswith("tv:"):  # torchvision's names: loaded by name, as a tv: model takes a state_dict
            from cnnlab.models.torchvision_compat import read_weights_file, torchvision_order

            ours.load_state_dict(torchvision_order("densenet121", read_weights_file(path)))
        else:
            cnnlab.load_torchvision_state_dict(ours, path)
        ours.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_prefix_on_every_name_is_dropped_and_extra_names_are_named(tmp_path, suffix):
    """A DataParallel file ('module.' before every name) loaded from .pth (by position) but not from .safetensors
    (sorted by name, then paired by position); an extra tensor was blamed on tensor #0."""
    from safetensors.torch import save_file

    def saved(state, stem):
        path = tmp_path / f"{stem}{suffix}"
        if suffix == ".pth":
            torch.save(state, path)
        else:
            save_file({key: value.contiguous() for key, value in state.items()}, str(path))
        return path

    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    randomise_running_stats(theirs)
    prefixed = saved({f"module.{key}": value for key, value in theirs.state_dict().items()}, "prefixed")
    ours = cnnlab.create_model("resnet18")
    report = cnnlab.load_torchvision_state_dict(ours, prefixed)
    assert report.loaded == len(theirs.state_dict()) and report.unused == []  # none unused: read without the prefix
    assert torch.equal(ours.state_dict()["features.stem.norm.running_mean"], theirs.bn1.running_mean)
    extra = saved({**theirs.state_dict(), "extra.weight": torch.zeros(3)}, "extra")
    total = len(theirs.state_dict()) + 1
    # a .safetensors file is out of the model's order: the names are the clue; a .pth file keeps it: the position
    named = (rf"holds 1 of {total} tensors whose names are not torchvision's resnet18's \('extra.weight'\)"
             if suffix == ".safetensors" else r"the first tensor that does not fit is torchvision's 'extra.weight'")
    with pytest.raises(CnnlabError, match=named):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18"), extra)


def test_a_file_saved_in_its_model_s_order_is_paired_by_position_whatever_its_names(tmp_path):
    """The refusal of names that are not the twin's is for a file sorted by name: a torch.save file of a fine-tuned
    head (fc.1.weight) loads as before, and a deeper twin's weights are named by their first misfit."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    theirs.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))
    path = tmp_path / "fine_tuned.pth"
    torch.save(theirs.state_dict(), path)
    report = cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18", num_classes=3), path)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]  # another class count: the head is kept fresh
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CnnlabError, match=r"is not the state_dict of the torchvision model that resnet18 mirrors "
                                          r"\(the first tensor that does not fit is #"):
        cnnlab.load_torchvision_state_dict(cnnlab.create_model("resnet18"), tmp_path / "r34.pth")


def test_a_fine_tuned_googlenet_file_with_aux_heads_loads_into_one_without(tmp_path):
    """A torch.save file in its model's order with a changed head is paired by position; its aux heads were
    dropped only for a file put in torchvision's order, so a model without them was refused."""
    torch.manual_seed(0)
    theirs = torchvision_model("googlenet")
    theirs.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(1024, 10))
    torch.save(theirs.state_dict(), tmp_path / "googlenet.pth")
    report = cnnlab.load_torchvision_state_dict(cnnlab.create_model("googlenet", num_classes=10, aux_logits=False),
                                                tmp_path / "googlenet.pth")
    assert report.unused and all(key.startswith("aux") for key in report.unused)
    assert report.loaded == len(theirs.state_dict()) - len(report.unused)
