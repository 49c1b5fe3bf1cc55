"""model.init_from: reading a source (cnnlab run, torchvision file, torchvision's cache), loading what fits,
and rebuilding the source network; every bad source is a CnnlabError, never training from scratch."""

import copy
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

import cnnlab
from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.models.torchvision_compat import TRANSFORM_INPUT_MODELS, torchvision_preprocessing
from cnnlab.run import RunFolder
from cnnlab.train import engine
from cnnlab.train.checkpoint import load_run_model
from cnnlab.train.init_from import RUN, TORCHVISION, build_source_model, init_model_from, read_init_source

SOURCE_CLASSES = 5
SOURCE_RUN = [
    "model.name=resnet8", f"data.spec=synthetic:classes={SOURCE_CLASSES},train=64,val=32,test=32",
    "data.image_size=16", "train.batch_size=32", "train.epochs=1", "train.deterministic=true", "log.quiet=true",
]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A one-epoch resnet8 run on 5 synthetic RGB classes (its BN statistics moved off 0/1 by training)."""
    folder = tmp_path_factory.mktemp("source") / "run"
    with pytest.MonkeyPatch.context() as patch:  # statistics go to a private cache, as in every test
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        engine.train(apply_overrides(RunConfig(), SOURCE_RUN), folder)
    return folder


def randomise_running_stats(model):
    """Fresh BN statistics are 0/1 and would hide a mis-mapped buffer."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="module")
def torchvision_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    randomise_running_stats(model)
    return model.eval()


@pytest.fixture
def resnet18_pth(tmp_path, torchvision_resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18.state_dict(), path)
    return path


def test_a_run_source_records_the_runs_preprocessing(source_run):
    source = read_init_source(str(source_run), "resnet8")
    loaded = load_run_model(source_run)  # the independent reader of the same run
    assert source.kind == RUN and source.path == loaded.path and source.model_name == "resnet8"
    assert (source.mean, source.std, source.image_size) == (loaded.mean, loaded.std, loaded.image_size)
    assert source.classes == loaded.classes and source.num_classes == SOURCE_CLASSES and source.in_chans == 3
    assert source.config.model.name == "resnet8"
    # The checkpoint file itself reads the same as its folder.
    assert read_init_source(str(loaded.path), "resnet8").state_dict.keys() == source.state_dict.keys()


@pytest.fixture(scope="module")
def ema_source_run(tmp_path_factory):
    """The source run again with train.ema (no warm-up, so the average stays near the initialisation and
    differs from the raw weights everywhere)."""
    folder = tmp_path_factory.mktemp("ema-source") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        engine.train(apply_overrides(RunConfig(), [*SOURCE_RUN, "train.ema=true", "train.ema_warmup=false"]), folder)
    return folder


def test_a_source_trained_with_ema_gives_its_raw_weights_and_the_note_says_so(source_run, ema_source_run):
    folder = ema_source_run
    raw, ema = load_run_model(folder).model.state_dict(), load_run_model(folder, ema=True).model.state_dict()
    assert any(not torch.equal(raw[key], ema[key]) for key in raw)  # the two differ, so the test can tell them apart
    model = cnnlab.create_model("resnet8", num_classes=3)
    report = init_model_from(model, read_init_source(str(folder), "resnet8"), "resnet8")
    for key in report.loaded:
        assert torch.equal(model.state_dict()[key], raw[key]), key
    assert report.source_ema and "(resnet8; its raw weights, not the EMA weights it also kept)" in report.text()
    # a source run without EMA weights: nothing said of them
    plain = init_model_from(cnnlab.create_model("resnet8", num_classes=3), read_init_source(str(source_run), "resnet8"),
                            "resnet8")
    assert not plain.source_ema and "EMA" not in plain.text()


def _file_tensors(folder) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(raw, EMA) weights of a run's checkpoint, read from the safetensors file itself: its 'model/KEY' and
    'ema/module/KEY' tensors (cnnlab.train.checkpoint's layout), without cnnlab's readers."""
    tensors = safetensors.torch.load_file(str(RunFolder(folder).checkpoint()))
    raw = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    ema = {key[len("ema/module/"):]: value for key, value in tensors.items() if key.startswith("ema/module/")}
    return raw, ema


def test_model_init_ema_starts_from_the_sources_ema_weights_and_init_json_records_it(ema_source_run, tmp_path):
    raw, ema = _file_tensors(ema_source_run)
    assert raw.keys() == ema.keys()
    target = [*SOURCE_RUN[:1], "data.spec=synthetic:classes=3,train=32,val=16,test=16", *SOURCE_RUN[2:],
              f"model.init_from={ema_source_run}", "model.init_ema=true"]
    run = engine.setup_run(apply_overrides(RunConfig(), target), loaders=False)
    state = run.model.state_dict()
    assert sorted(run.init_report.skipped) == ["fc.bias", "fc.weight"]  # 5 -> 3 classes
    differ = 0
    for key in run.init_report.loaded:
        assert torch.equal(state[key], ema[key]), key
        differ += not torch.equal(state[key], raw[key])
    assert differ > len(run.init_report.loaded) // 2  # the EMA tensors, not the raw ones that happen to be equal
    assert run.init_report.source_weights == "ema" and "(resnet8; its EMA weights)" in run.init_report.text()
    # The source network the probe and the ladder rebuild holds the same EMA weights.
    source = build_source_model(read_init_source(str(ema_source_run), "resnet8", ema=True))
    assert all(torch.equal(value, ema[key]) for key, value in source.state_dict().items())

    engine.train(apply_overrides(RunConfig(), target), tmp_path / "run")
    record = json.loads(RunFolder(tmp_path / "run").init.read_text())
    assert record["source_weights"] == "ema" and record["source_ema"] is True


def test_model_init_ema_is_refused_for_a_source_without_ema_weights(source_run, ema_source_run, resnet18_pth,
                                                                    tmp_path, cli):
    from cnnlab.train.checkpoint import load_weights, save_weights

    with pytest.raises(CnnlabError, match="trained with train.ema=false, so it kept none.*Leave out model.init_ema"):
        read_init_source(str(source_run), "resnet8", ema=True)
    state, meta = load_weights(RunFolder(ema_source_run).checkpoint())
    snapshot = save_weights(tmp_path / "snapshot.safetensors", state, meta)  # a snapshot: raw weights alone
    with pytest.raises(CnnlabError, match="is a snapshot, which holds the raw weights only"):
        read_init_source(str(snapshot), "resnet8", ema=True)
    with pytest.raises(CnnlabError, match="a weights file of another tool.*no EMA"):
        read_init_source(str(resnet18_pth), "resnet18", ema=True)
    with pytest.raises(CnnlabError, match="is 'torchvision'.*no EMA"):
        read_init_source("torchvision", "resnet18", ema=True)
    with pytest.raises(CnnlabError, match="model.init_ema=true .* model.init_from is not set"):
        apply_overrides(RunConfig(), ["model.init_ema=true"])
    # On the command line: one paragraph, exit code 2, before anything trains.
    code, out, err = cli(["train", "--model", "resnet8", "--data", "synthetic:classes=3,train=32,val=16,test=16",
                          "--epochs", "1", "--out", str(tmp_path / "refused"), "--set", f"model.init_from={source_run}",
                          "--set", "model.init_ema=true"])
    assert code == 2 and "train.ema=false" in err and "Traceback" not in err + out
    assert not (tmp_path / "refused" / "last.safetensors").exists()


def test_a_run_loads_exactly_with_a_fresh_head_and_an_adapted_gray_conv(source_run):
    source = read_init_source(str(source_run), "resnet8")
    torch.manual_seed(1)
    model = cnnlab.create_model("resnet8", num_classes=3, in_chans=1)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    report = init_model_from(model, source, "resnet8")
    state = model.state_dict()

    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    assert report.adapted == [first_conv]
    assert sorted(report.loaded + report.skipped + report.adapted) == sorted(state)  # every tensor accounted for
    for key in report.loaded:
        assert torch.equal(state[key], source.state_dict[key]), key
    for key in report.skipped:  # the new 3-class head keeps its own init
        assert torch.equal(state[key], fresh[key]), key
    # 3 -> 1 channels: the RGB filters summed, so a gray image gives the response of its colour copy.
    assert torch.equal(state[first_conv], source.state_dict[first_conv].sum(dim=1, keepdim=True))

    assert report.text() == (f"loaded {len(report.loaded)} tensors from {source_run} (resnet8), kept 2 classifier "
                             f"tensors fresh ({SOURCE_CLASSES} -> 3 classes), adapted 1 ({first_conv}: 3 -> 1 "
                             "channels)")
    record = json.loads(json.dumps(report.to_dict()))
    assert record["kind"] == RUN and record["loaded"] == report.loaded and record["text"] == report.text()


def test_same_class_count_loads_the_head_unless_the_classes_differ(source_run):
    source = read_init_source(str(source_run), "resnet8")
    model = cnnlab.create_model("resnet8", num_classes=SOURCE_CLASSES)
    report = init_model_from(model, source, "resnet8")
    assert not report.skipped and not report.adapted and torch.equal(model.fc.weight, source.state_dict["fc.weight"])

    torch.manual_seed(2)
    model = cnnlab.create_model("resnet8", num_classes=SOURCE_CLASSES)
    fresh = model.fc.weight.detach().clone()
    other = [f"new{index}" for index in range(SOURCE_CLASSES)]
    report = init_model_from(model, source, "resnet8", classes=other)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and torch.equal(model.fc.weight, fresh)
    assert f"other classes, {SOURCE_CLASSES} of them" in report.text() and not report.reordered
    # the source's own classes in another order (a CSV beside the folder it came from): the head follows the order
    model = cnnlab.create_model("resnet8", num_classes=SOURCE_CLASSES)
    report = init_model_from(model, source, "resnet8", classes=list(reversed(source.classes)))
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and report.reordered
    assert f"(the same {SOURCE_CLASSES} classes in another order)" in report.text()
    assert "other classes" not in report.text()


def test_a_source_whose_class_names_spell_accents_apart_has_the_same_classes(source_run):
    """A run of an older cnnlab kept a macOS folder's 'cafe' + combining accent; the data now names the class
    with a composed 'é' (display_class): the same classes, so the head is loaded, not started afresh. Its checkpoint
    shows the names composed too."""
    from dataclasses import replace
    import unicodedata

    from cnnlab.run import MetaKey
    from cnnlab.train.checkpoint import load_run_model

    source = read_init_source(str(source_run), "resnet8")
    spelt = [unicodedata.normalize("NFD", f"caf\u00e9{index}") for index in range(SOURCE_CLASSES)]
    composed = [unicodedata.normalize("NFC", name) for name in spelt]
    assert spelt != composed
    model = cnnlab.create_model("resnet8", num_classes=SOURCE_CLASSES)
    report = init_model_from(model, replace(source, classes=spelt), "resnet8", classes=composed)
    assert not report.skipped and torch.equal(model.fc.weight, source.state_dict["fc.weight"])
    loaded = load_run_model(source_run)
    loaded.meta = {**loaded.meta, MetaKey.CLASSES: spelt}
    assert loaded.class_labels == composed


def test_new_head_keeps_the_classifier_fresh_even_with_the_same_classes(source_run, resnet18_pth,
                                                                        torchvision_resnet18):
    """model.new_head (the transfer ladder's 'top' and 'all'): a new head whatever the classes, the rest loaded,
    from a cnnlab run (same names, same count) and from a torchvision file into its zoo twin (same count)."""
    source = read_init_source(str(source_run), "resnet8")
    torch.manual_seed(3)
    model = cnnlab.create_model("resnet8", num_classes=SOURCE_CLASSES)
    fresh = model.fc.weight.detach().clone()
    report = init_model_from(model, source, "resnet8", classes=source.classes, new_head=True)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and torch.equal(model.fc.weight, fresh)
    assert not torch.equal(model.fc.weight, source.state_dict["fc.weight"])
    assert all(torch.equal(value, source.state_dict[key]) for key, value in model.state_dict().items()
               if key not in report.skipped)
    assert "a new head: model.new_head" in report.text()

    source = read_init_source(str(resnet18_pth), "resnet18")
    model = cnnlab.create_model("resnet18", num_classes=10)
    fresh = model.fc.weight.detach().clone()
    report = init_model_from(model, source, "resnet18", new_head=True)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and torch.equal(model.fc.weight, fresh)
    assert len(report.loaded) == len(model.state_dict()) - 2
    for (key, mine), theirs in zip(model.state_dict().items(), torchvision_resnet18.state_dict().values()):
        assert torch.equal(mine, theirs) == (key in report.loaded), key


def test_new_head_without_weights_to_load_is_refused():
    with pytest.raises(CnnlabError, match="model.new_head=true .* model.init_from is not set"):
        apply_overrides(RunConfig(), ["model.new_head=true"])


def test_the_source_model_reproduces_the_run_exactly(source_run):
    source = read_init_source(str(source_run), "resnet8")
    ours = build_source_model(source)
    reference = load_run_model(source_run).model
    assert not ours.training
    x = torch.randn(4, 3, source.image_size, source.image_size)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))
        assert torch.equal(ours.forward_features(x), reference.forward_features(x))


def test_a_torchvision_file_loads_into_its_zoo_twin(resnet18_pth, torchvision_resnet18):
    source = read_init_source(str(resnet18_pth), "resnet18")
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert source.kind == TORCHVISION and source.image_size is None
    assert (source.num_classes, source.in_chans) == (10, 3)
    assert (source.mean, source.std) == (list(preset.mean), list(preset.std))

    model = cnnlab.create_model("resnet18", num_classes=4, in_chans=1)
    fresh_fc = model.fc.weight.detach().clone()
    report = init_model_from(model, source, "resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and torch.equal(model.fc.weight, fresh_fc)
    assert len(report.adapted) == 1 and len(report.loaded) == len(model.state_dict()) - 3
    assert "(torchvision resnet18)" in report.text() and "10 -> 4 classes" in report.text()
    # Positions map torchvision's names to ours: the loaded tensors equal theirs one for one.
    for (key, mine), theirs in zip(model.state_dict().items(), torchvision_resnet18.state_dict().values()):
        if key in report.loaded:
            assert torch.equal(mine, theirs), key
    # A gray image through the adapted network equals torchvision's network on its colour copy.
    headless = copy.deepcopy(torchvision_resnet18)
    headless.fc, model = nn.Identity(), model.eval()
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(gray), pre_logits=True)
        torch.testing.assert_close(features, headless(gray.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_the_torchvision_source_model_gives_torchvision_logits(tmp_path, torchvision_resnet18):
    # A plain .safetensors file sorts its keys; the class count and channels still come out right.
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(torchvision_resnet18.state_dict(), str(path))
    source = read_init_source(str(path), "resnet18")
    assert (source.kind, source.num_classes, source.in_chans) == (TORCHVISION, 10, 3)
    model = build_source_model(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_resnet18(x), atol=1e-4, rtol=1e-4)


def test_a_state_dict_with_our_names_matches_by_key(tmp_path):
    """A model without a torchvision twin (lenet5) loads a .pth of its own state_dict by name."""
    torch.manual_seed(3)
    saved = cnnlab.create_model("lenet5", num_classes=10)
    path = tmp_path / "lenet5.pth"
    torch.save(saved.state_dict(), path)
    model = cnnlab.create_model("lenet5", num_classes=10)
    report = init_model_from(model, read_init_source(str(path), "lenet5"), "lenet5")
    assert report.loaded == list(saved.state_dict()) and not report.skipped
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_the_torchvision_word_reads_torchvisions_cache(tmp_path, monkeypatch, torchvision_resnet18):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    with pytest.raises(CnnlabError) as error:
        read_init_source("torchvision", "resnet18")
    message = str(error.value)
    assert str(expected) in message and url in message and "never downloads" in message
    assert "give the file's path as model.init_from instead" in message
    assert not expected.exists()  # nothing was fetched
    # probe and transfer take the weights as their SOURCE argument, and refuse model.init_from: the remedy says so
    with pytest.raises(CnnlabError, match="give the file's path as the source instead"):
        read_init_source("torchvision", "resnet18", given_as="The source")

    expected.parent.mkdir(parents=True)
    torch.save(torchvision_resnet18.state_dict(), expected)
    source = read_init_source("torchvision", "resnet18")
    assert source.path == expected and source.kind == TORCHVISION and source.num_classes == 10
    # The note names the file read, as it does for a path (the word names none)
    report = init_model_from(cnnlab.create_model("resnet18", num_classes=4), source, "resnet18")
    assert report.text().startswith(f"loaded {len(report.loaded)} tensors from {expected} (torchvision resnet18)")


def test_torchvision_preprocessing_follows_the_weights():
    resnet = torchvision.models.ResNet50_Weights.DEFAULT.transforms()
    assert torchvision_preprocessing("resnet50") == (list(resnet.mean), list(resnet.std))
    # GoogLeNet's and Inception v3's weights expect transform_input: (x - 0.5) / 0.5 per channel.
    for name in TRANSFORM_INPUT_MODELS:
        assert torchvision_preprocessing(name) == ([0.5] * 3, [0.5] * 3)


def test_a_torchvision_model_matches_torchvisions_names(resnet18_pth, torchvision_resnet18):
    model = cnnlab.create_model("tv:resnet18", num_classes=3, in_chans=1)
    report = init_model_from(model, read_init_source(str(resnet18_pth), "tv:resnet18"), "tv:resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and report.adapted == ["conv1.weight"]
    theirs = torchvision_resnet18.state_dict()
    for key in report.loaded:
        assert torch.equal(model.state_dict()[key], theirs[key]), key
    assert torch.equal(model.conv1.weight, theirs["conv1.weight"].sum(dim=1, keepdim=True))


def test_regnet_weights_load_into_a_tv_regnet(tmp_path):
    """Reading a torchvision file puts its tensors in the builder's order, from a model built without
    memory; RegNet's builder computes its widths from tensor values, which such a build must still give."""
    torch.manual_seed(0)
    theirs = torchvision.models.regnet_x_400mf(num_classes=4).eval()
    randomise_running_stats(theirs)
    path = tmp_path / "regnet.safetensors"  # sorted by name: the order has to come from the builder
    safetensors.torch.save_file(theirs.state_dict(), str(path))
    source = read_init_source(str(path), "tv:regnet_x_400mf")
    assert list(source.state_dict) == list(theirs.state_dict())
    model = cnnlab.create_model("tv:regnet_x_400mf", num_classes=4).eval()
    report = init_model_from(model, source, "tv:regnet_x_400mf")
    assert not report.skipped and not report.adapted and len(report.loaded) == len(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x))


def test_mnasnet_weights_load_though_the_file_keeps_no_module_versions(tmp_path):
    """torchvision's MNASNet reads its version while loading and refuses none; the tensors read from a file
    (a plain dict) keep no versions, and they are matched to the model, so they load with its own."""
    torch.manual_seed(0)
    theirs = torchvision.models.mnasnet0_5(num_classes=4).eval()
    randomise_running_stats(theirs)
    path = tmp_path / "mnasnet.pth"
    torch.save(theirs.state_dict(), path)
    model = cnnlab.create_model("tv:mnasnet0_5", num_classes=4).eval()
    report = init_model_from(model, read_init_source(str(path), "tv:mnasnet0_5"), "tv:mnasnet0_5")
    assert len(report.loaded) == len(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x))

# ---------------------------------------------------------------------------------------------
# bad sources: one CnnlabError naming the problem, and the model left as it was


def test_a_run_of_another_architecture_names_both_and_the_first_misfit(source_run):
    source = read_init_source(str(source_run), "resnet20")
    model = cnnlab.create_model("resnet20", num_classes=SOURCE_CLASSES)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CnnlabError) as error:
        init_model_from(model, source, "resnet20")
    message = str(error.value)
    assert "resnet8" in message and "resnet20" in message and "first tensor that does not fit is" in message
    first = message.split("first tensor that does not fit is")[1]
    assert "'" in first and "(" in first  # a tensor name and a shape
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_torchvision_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    with torch.device("meta"):
        shapes = torchvision.models.resnet34().state_dict()
    torch.save({key: torch.zeros(value.shape, dtype=value.dtype) for key, value in shapes.items()}, path)
    # Positions pair layer1.2 (resnet34's third block) with resnet18's first block of stage 2.
    with pytest.raises(CnnlabError, match=r"first tensor that does not fit is #\d+: torchvision's "
                                          r"'layer1\.2\.conv1\.weight' \(64, 64, 3, 3\) against resnet18's '.*' "
                                          r"\(128, 64, 3, 3\)"):
        init_model_from(cnnlab.create_model("resnet18"), read_init_source(str(path), "resnet18"), "resnet18")
    # By name (a tv: model): the first tensor resnet18 lacks.
    with pytest.raises(CnnlabError, match=r"first tensor that does not fit is the source's 'layer1\.2\.conv1\.weight'"):
        init_model_from(cnnlab.create_model("tv:resnet18"), read_init_source(str(path), "tv:resnet18"), "tv:resnet18")


def test_a_weights_file_that_does_not_fit_names_model_name_as_the_way_out(tmp_path):
    """A bare weights file records no architecture: the message says which model.name was built and that it
    is model.name that names the weights' architecture (transfer and train default to lenet5)."""
    path = tmp_path / "resnet8.safetensors"
    safetensors.torch.save_file(cnnlab.create_model("resnet8", num_classes=10).state_dict(), str(path))
    with pytest.raises(CnnlabError, match=r"set model\.name \(now lenet5\) to the architecture the weights"):
        init_model_from(cnnlab.create_model("lenet5", num_classes=10), read_init_source(str(path), "lenet5"),
                        "lenet5")


def test_a_plain_weights_file_of_gray_images_records_no_mean_and_the_run_normalises_with_its_data(tmp_path):
    """torchvision's weights all take RGB: a 1-channel network's file (another tool's LeNet-5) was trained on
    other images, and ImageNet's values averaged to one channel were a guess the note called the source's."""
    from cnnlab.config import DataConfig
    from cnnlab.data.stats import ChannelStats, resolve_normalization

    path = tmp_path / "lenet5.safetensors"
    safetensors.torch.save_file(cnnlab.create_model("lenet5", num_classes=10, in_chans=1).state_dict(), str(path))
    source = read_init_source(str(path), "lenet5")
    assert (source.kind, source.in_chans, source.mean, source.std) == (TORCHVISION, 1, None, None)
    stats = ChannelStats(mean=(0.3,), std=(0.2,), pixels=100)
    used = resolve_normalization(DataConfig(), stats, 1, source_mean=source.mean, source_std=source.std,
                                 source_label=source.label)
    assert (used.name, used.mean, used.std) == ("dataset", [0.3], [0.2])
    assert f"the weights from {source.label} record no mean/std" in used.note
    with pytest.raises(CnnlabError, match="data.normalize=source needs model.init_from"):
        resolve_normalization(DataConfig(normalize="source"), stats, 1, source_mean=source.mean,
                              source_std=source.std, source_label=source.label)
    # a 3-channel file of the same network keeps torchvision's preset, as before
    safetensors.torch.save_file(cnnlab.create_model("lenet5", num_classes=10, in_chans=3).state_dict(), str(path))
    assert read_init_source(str(path), "lenet5").mean == torchvision_preprocessing(None)[0]


def test_googlenet_weights_expect_half_and_leave_out_the_auxiliary_heads(tmp_path):
    """torchvision's GoogLeNet files hold the auxiliary heads; models built without them leave them out, said so."""
    torch.manual_seed(4)
    path = tmp_path / "googlenet.pth"
    theirs = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False).state_dict()
    torch.save(theirs, path)
    aux = [key for key in theirs if key.startswith(("aux1.", "aux2."))]
    for name in ("googlenet", "tv:googlenet"):
        source = read_init_source(str(path), name)
        assert (source.mean, source.std, source.num_classes) == ([0.5] * 3, [0.5] * 3, 10)
        model = cnnlab.create_model(name, num_classes=10, **({"aux_logits": False} if name == "googlenet" else {}))
        report = init_model_from(model, source, name)
        assert sorted(report.unused) == sorted(aux) and not report.skipped
        assert len(report.loaded) == len(theirs) - len(aux) == len(model.state_dict())
        assert f"left out {len(aux)} auxiliary-head tensors" in report.text()


@pytest.mark.parametrize("case", ["missing", "not a run", "corrupt run", "truncated pth", "pickled object",
                                  "not a state_dict", "no twin"])
def test_bad_sources_are_refused_with_a_message(tmp_path, source_run, resnet18_pth, case):
    path = tmp_path / "source"
    model_name, expected = "resnet18", str(path)
    if case == "missing":
        expected = "does not exist"
    elif case == "not a run":
        path.mkdir()
        expected = "holds no"
    elif case == "corrupt run":
        data = RunFolder(source_run).checkpoint().read_bytes()
        path = tmp_path / "cut.safetensors"
        path.write_bytes(data[: len(data) // 2])
        model_name, expected = "resnet8", "damaged"
    elif case == "truncated pth":
        data = resnet18_pth.read_bytes()
        path = tmp_path / "cut.pth"
        path.write_bytes(data[: len(data) // 2])
        expected = "Cannot read"
    elif case == "pickled object":
        path = tmp_path / "model.pth"
        torch.save(nn.Linear(2, 2), path)  # a whole module: weights_only refuses to rebuild it
        expected = "never unpickled"
    elif case == "not a state_dict":
        path = tmp_path / "checkpoint.pth"
        torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, path)
        expected = "not tensors"
    elif case == "no twin":
        path, model_name, expected = Path("torchvision"), "lenet5", "lenet5"
    with pytest.raises(CnnlabError) as error:
        read_init_source(str(path), model_name)
    message = str(error.value)
    assert expected in message and "Traceback" not in message
    assert "\n" not in message  # one paragraph


class _RunsCode:
    """Unpickling this calls os.system: a file that would run code when read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("saver", ["torch.save", "pickle.dump"])
def test_a_file_that_would_run_code_is_refused_as_such_and_never_run(tmp_path, recwarn, saver):
    """torch blocks os/sys globals with a message of its own: the refusal still names the pickled callable,
    not 'damaged', and a plain pickle.dump file adds no torch warning to the one-paragraph error."""
    import pickle

    marker, path = tmp_path / "ran", tmp_path / "weights.pth"
    payload = {"conv.weight": torch.zeros(4, 3, 3, 3), "x": _RunsCode(marker)}
    if saver == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CnnlabError) as error:
        read_init_source(str(path), "resnet18")
    message = str(error.value)
    assert not marker.exists()
    assert "\n" not in message and "Traceback" not in message
    if saver == "torch.save":
        assert f"pickled {os.system.__module__}.system" in message and "never unpickled" in message
        assert "damaged" not in message
    assert not [str(w.message) for w in recwarn.list], [str(w.message) for w in recwarn.list]


def test_a_source_whose_path_is_not_utf8_is_named_escaped(source_run, tmp_path):
    """The message names the path as every message shows a name that is not UTF-8 ('caf\\xe9'), not with the
    lone surrogate Python keeps for the byte (which a strict UTF-8 log or terminal cannot write)."""
    import shutil

    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # as an older system names a folder
    shutil.copytree(os.fsencode(source_run), latin1)
    cases = ((os.fsdecode(latin1), "cannot be used: The checkpoint path"),  # a run safetensors cannot open
             (os.fsdecode(os.path.join(latin1, b"gone")), "does not exist"))
    for spec, expected in cases:
        with pytest.raises(CnnlabError) as error:
            read_init_source(spec, "resnet8")
        message = str(error.value)
        assert message.startswith(f"model.init_from '{tmp_path}/caf\\xe9") and expected in message, message
        message.encode("utf-8")  # strict: no lone surrogate left anywhere in it


def test_a_source_built_with_another_activation_is_noted_not_silently_rebuilt(tmp_path, capsys):
    """model.act leaves every tensor's shape as it was, so SiLU weights load into a ReLU network without a misfit:
    the run says which key differs and how to build the network they were trained in."""
    silu = tmp_path / "silu"
    engine.train(apply_overrides(RunConfig(), [*SOURCE_RUN, "model.act=silu"]), silu)
    capsys.readouterr()
    target = [*SOURCE_RUN, f"model.init_from={silu}"]
    engine.train(apply_overrides(RunConfig(), target), tmp_path / "relu")
    err = capsys.readouterr().err
    assert ("was trained with model.act='silu', and this run builds resnet8 with model.act=null (the paper's)" in err
            and "Set model.act='silu' to build that one." in err)
    # the same network: no note; dropout rates and starting values (zero_init_residual, which the loaded weights
    # replace) are the run's own choice
    engine.train(apply_overrides(RunConfig(), [*target, "model.act=silu", "model.options={drop_path_rate: 0.1, "
                                                                          "zero_init_residual: true}"]),
                 tmp_path / "same")
    assert "was trained with" not in capsys.readouterr().err


def test_a_damaged_weights_file_is_named_as_a_weights_file_with_torchs_reason_whole(tmp_path, torchvision_resnet18):
    """A .safetensors file that is not one may be any tool's: no word of 'checkpoint' or 'new run'. A cut .pth
    quotes torch's reason to its first full stop, not cut mid-word."""
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(CnnlabError) as refused:
        read_init_source(str(text), "lenet5")
    message = str(refused.value)
    assert "is damaged or not a safetensors file (" in message and "Copy it again from where it came from" in message
    assert "start a new run" not in message and "The checkpoint" not in message
    whole = tmp_path / "full.pth"
    torch.save(torchvision_resnet18.state_dict(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CnnlabError) as refused:
        read_init_source(str(cut), "resnet18")
    reason = str(refused.value).split("(RuntimeError: ", 1)[1].split(")", 1)[0]
    assert reason.startswith("PytorchStreamReader failed") and not reason.endswith((" yo", " If"))
    assert reason.endswith("failed finding central directory")  # torch's first sentence, whole


def test_a_source_of_another_norm_that_does_not_fit_is_refused_naming_its_norm_with_no_load_note(tmp_path,
                                                                                              capsys):
    """A GroupNorm source has no running statistics where BatchNorm has them: the note "the weights load, but
    run in another network" came just before the refusal saying they do not fit, and the refusal's remedy named
    model.name (already right) rather than the norm."""
    source = tmp_path / "gn"
    engine.train(apply_overrides(RunConfig(), [*SOURCE_RUN, "model.norm=gn:4"]), source)
    capsys.readouterr()
    config = apply_overrides(RunConfig(), [*SOURCE_RUN, f"model.init_from={source}"])
    with pytest.raises(CnnlabError, match=r"which the source lacks.*was trained with model.norm='gn:4': set it to "
                                          r"build that network\.$"):
        engine.train(config, tmp_path / "target")
    assert "the weights load" not in capsys.readouterr().err
    # only the norm makes tensors, and only the source's own model could take them: an act, or another model, is
    # no remedy
    from dataclasses import replace

    from cnnlab.train.init_from import architecture_remedy

    read = read_init_source(str(source), "resnet8")
    mine = config.model
    assert architecture_remedy(read, mine) == f"{read.named} was trained with model.norm='gn:4': set it to build that network."
    assert architecture_remedy(read, replace(mine, name="resnet20")) == ""
    act_only = copy.deepcopy(read.config)
    act_only.model.norm, act_only.model.act = mine.norm, "gelu"
    assert architecture_remedy(replace(read, config=act_only), mine) == ""
