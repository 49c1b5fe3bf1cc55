"""`cnnlab probe`: the linear probe equals a hand-written scikit-learn fit, and its feature cache is exact."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cnnlab.config import DataConfig
from cnnlab.data import load_source
from cnnlab.train.checkpoint import load_run_model
from cnnlab.transfer import probe as probe_lib

# The target: other classes and images than the source run's (tests/transfer/conftest.py), read at its 28x28.
TARGET_DATA = "synthetic:classes=3,train=48,val=24,test=24,channels=1"


def hand_features(run, data: DataConfig) -> dict:
    """(features, labels) per split, extracted without cnnlab.transfer: the model's own forward_features and
    forward_head(pre_logits=True) on pixels normalised with the run's recorded mean/std."""
    loaded = load_run_model(run)
    dataset = load_source(DataConfig(spec=data.spec, image_size=loaded.image_size, channels=loaded.in_chans))
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    out = {}
    with torch.no_grad():
        for name, split in dataset.splits().items():
            x = (split.images.float() / 255 - mean) / std  # (N, 1, 28, 28): one batch, as the probe's 256
            out[name] = (loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True), split.labels)
    return out


def hand_probe(features: dict) -> tuple[float, dict, float]:
    """C from 1e-3..1e3 by validation accuracy (first best wins), scaler fitted on train: (C, val acc per C, test acc)."""
    x = {name: f.double().numpy() for name, (f, _) in features.items()}
    y = {name: labels.numpy() for name, (_, labels) in features.items()}
    scaler = StandardScaler().fit(x["train"])
    scaled = {name: scaler.transform(values) for name, values in x.items()}
    per_c, best_c, best_val, best_model = {}, None, -1.0, None
    for exponent in range(-3, 4):
        c = 10.0**exponent
        model = LogisticRegression(C=c, max_iter=2000).fit(scaled["train"], y["train"])
        per_c[c] = float(np.mean(model.predict(scaled["val"]) == y["val"]))
        if per_c[c] > best_val:
            best_c, best_val, best_model = c, per_c[c], model
    return best_c, per_c, float(np.mean(best_model.predict(scaled["test"]) == y["test"]))


def test_the_probe_equals_a_hand_written_scikit_learn_fit(source_run):
    data = DataConfig(spec=TARGET_DATA)
    result = probe_lib.probe(str(source_run), data)
    features = hand_features(source_run, data)
    best_c, per_c, test_acc = hand_probe(features)
    assert result.fit.c == best_c
    assert {row["c"]: row["val_acc"] for row in result.fit.grid} == per_c
    assert result.val_acc == per_c[best_c] and result.test_acc == test_acc
    assert result.feature_dim == features["train"][0].shape[1] == 64  # resnet8's last stage width
    assert result.images == {name: len(labels) for name, (_, labels) in features.items()} == {
        "train": 48, "val": 24, "test": 24}
    assert result.normalization["name"] == "source"  # the source run's mean/std, as the hand extraction used
    assert result.kind == "run" and result.model == "resnet8" and result.image_size == 28 and result.channels == 1
    # the cached features are the hand-extracted ones
    source = probe_lib.load_probe_source(str(source_run))
    target = probe_lib.load_target(data, source, announce=False)
    for name, (hand, labels) in features.items():
        part = probe_lib.split_features(source, target, name)
        assert part.cached and torch.equal(part.labels, labels)
        torch.testing.assert_close(part.features, hand, rtol=1e-5, atol=1e-5)


def test_fit_probe_breaks_ties_towards_the_smaller_c_and_reports_every_c():
    generator = np.random.default_rng(0)
    centres = generator.normal(size=(3, 5)) * 4  # three well separated classes: every C scores 100%
    labels = {name: np.arange(n) % 3 for name, n in (("train", 60), ("val", 30))}
    features = {name: centres[y] + generator.normal(size=(len(y), 5)) * 0.1 for name, y in labels.items()}
    fit = probe_lib.fit_probe(features, labels)
    assert [row["c"] for row in fit.grid] == list(probe_lib.C_GRID)
    assert all(row["val_acc"] == 1.0 for row in fit.grid) and fit.c == min(probe_lib.C_GRID)
    assert fit.test_acc is None  # no test split given


def test_a_cache_hit_gives_identical_numbers_and_skips_extraction(source_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = DataConfig(spec=TARGET_DATA)
    first = probe_lib.probe(str(source_run), data)
    assert not first.cached and first.seconds_extract > 0
    assert sorted(os.listdir(tmp_path / "cache" / probe_lib.FEATURES_FOLDER)) == sorted(
        os.path.basename(path) for path in first.cache_files.values())

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted although they are cached")

    monkeypatch.setattr(probe_lib, "extract_features", no_extraction)
    second = probe_lib.probe(str(source_run), data)
    assert second.cached and second.seconds_extract == 0
    strip = ("seconds", "cached")
    assert ({k: v for k, v in second.to_dict().items() if k not in strip}
            == {k: v for k, v in first.to_dict().items() if k not in strip})
    # Another normalisation is other features: a miss, never the cached ones.
    with pytest.raises(AssertionError, match="extracted although"):
        probe_lib.probe(str(source_run), DataConfig(spec=TARGET_DATA, normalize="none"))
    # So is a source file that changed (its mtime), and the cache off.
    checkpoint = probe_lib.load_probe_source(str(source_run)).init.path
    stat = os.stat(checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(AssertionError, match="extracted although"):
            probe_lib.probe(str(source_run), data)
    finally:
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(AssertionError, match="extracted although"):
        probe_lib.probe(str(source_run), data, cache=False)


def test_features_that_are_not_finite_are_refused_naming_the_source_network():
    """A source whose eval-mode features overflowed: a CnnlabError, not scikit-learn's ValueError."""
    rng = np.random.default_rng(0)
    features = {split: rng.normal(size=(12, 4)) for split in ("train", "val")}
    labels = {split: np.arange(12) % 3 for split in ("train", "val")}
    features["val"][5, 2] = np.nan
    with pytest.raises(probe_lib.CnnlabError, match="not finite .* for 1 of the 12 val images"):
        probe_lib.fit_probe(features, labels)

def test_the_cli_json_is_the_librarys_result(source_run, cli):
    code, out, err = cli(["probe", str(source_run), "--data", TARGET_DATA, "--set", "data.val_fraction=0.2", "--json"])
    assert code == 0, err
    library = probe_lib.probe(str(source_run), DataConfig(spec=TARGET_DATA, val_fraction=0.2)).to_dict()
    printed = json.loads(out)
    assert printed.pop("seconds").keys() == library.pop("seconds").keys()
    printed.pop("cached"), library.pop("cached")
    assert printed == library
    code, out, err = cli(["probe", str(source_run), "--data", TARGET_DATA])
    assert code == 0 and "chosen C" in out and "features: read from the cache" in out, err


@pytest.mark.parametrize("args, pattern", [
    (["probe", "{root}/no-such-run", "--data", TARGET_DATA], "no-such-run' does not exist"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "optim.lr=0.1"], "reads only data keys"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "data.classes=[0,7]"], "index outside"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "data.classes=[0,1"], "the value starts a list ([)"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "garbage"], "Cannot read --set 'garbage': write KEY=VALUE"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "data.image_size=0"], "image_size=0 must be a positive"),
    (["probe", "{run}", "--data", TARGET_DATA, "--device", "bogus"], "--device='bogus' is not a device cnnlab runs on"),
    (["probe", "{run}", "--data", TARGET_DATA, "--device", "cuda:x"], "--device='cuda:x' is not a device"),
    (["probe", "{run}", "--data", TARGET_DATA, "--device", "meta", "--no-cache"], "--device='meta' is not a device"),
    (["probe", "{run}", "--data", TARGET_DATA, "--model", "lenet5"], "--model lenet5: '{run}' is a cnnlab run of resnet8"),
    (["probe", "{run}", "--data", TARGET_DATA, "--set", "data.channels=3"],
     "data.channels=3, but the source network takes 1-channel images"),
    (["probe", "{run}", "--data", TARGET_DATA, "--ema"],
     "--ema asks for its EMA weights, but the run was trained with train.ema=false, so it kept none. Leave out --ema"),
])
def test_bad_input_exits_2_with_one_paragraph(source_run, cli, tmp_path, args, pattern):
    args = [a.format(root=tmp_path, run=source_run) for a in args]
    code, out, err = cli(args)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert pattern.format(run=source_run) in err, err


def test_a_set_data_spec_is_overruled_by_data_with_a_note(source_run, cli):
    code, out, err = cli(["probe", str(source_run), "--data", TARGET_DATA, "--set", "data.spec=cifar10", "--json"])
    assert code == 0, err
    assert json.loads(out)["data"] == TARGET_DATA  # the --data source was probed
    assert (f"note: --set data.spec=cifar10 is overruled by the command's option for data.spec "
            f"(data.spec={TARGET_DATA})") in err


@pytest.mark.parametrize("source, model", [("weights", "tv:resnet18"), ("weights", "resnet18"),
                                           ("torchvision", "lenet5")])
def test_a_source_that_does_not_fit_is_named_as_the_probe_was_given_it(cli, tmp_path, source, model):
    """The probe takes its weights as SOURCE, not as model.init_from: its messages say so."""
    import safetensors.torch

    if source == "weights":  # a state_dict of another, tiny network
        source = str(tmp_path / "other.safetensors")
        safetensors.torch.save_file({"conv.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4),
                                     "fc.bias": torch.zeros(2)}, source)
    code, out, err = cli(["probe", source, "--model", model, "--data", TARGET_DATA])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "model.init_from" not in err and f"source '{source}'" in err, err


def test_transfer_asks_for_the_architecture_of_a_torchvision_file_rather_than_trying_the_default_model(cli, tmp_path):
    """Without --config or --set model.name the ladder tried the file as lenet5, cnnlab's default model, and said
    the weights did not fit lenet5, a model the person never named."""
    import safetensors.torch

    source = str(tmp_path / "theirs.safetensors")
    safetensors.torch.save_file({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4),
                                 "fc.bias": torch.zeros(2)}, source)
    code, out, err = cli(["transfer", source, "--data", TARGET_DATA, "--out", str(tmp_path / "ladder")])
    assert code == 2 and err.count("\n") == 1, err
    assert "does not record its architecture" in err and "--set model.name=" in err and "lenet5" not in err, err
    # torchvision's own weights of no model named: "None is not a torchvision architecture" (probe and transfer)
    for command in (["probe", "torchvision"], ["transfer", "torchvision", "--out", str(tmp_path / "tv-ladder")]):
        code, out, err = cli([*command, "--data", TARGET_DATA])
        assert code == 2 and "'torchvision' takes torchvision's weights of the model it trains, and no model is " \
                             "named: name it with --model" in err and "None" not in err, err
    # named, the file is tried as that model, and the mismatch is said of it
    code, out, err = cli(["transfer", source, "--data", TARGET_DATA, "--set", "model.name=resnet8",
                          "--out", str(tmp_path / "ladder")])
    assert code == 2 and "do not fit resnet8" in err, err


def test_transfer_without_data_says_it_takes_the_default_data_set(source_run, cli, tmp_path):
    """It ran the ladder on digits, DataConfig's default, without a word (probe requires --data)."""
    (tmp_path / "a-file").write_text("")  # an --out refused after the data is settled: nothing trains
    code, out, err = cli(["transfer", str(source_run), "--out", str(tmp_path / "a-file")])
    assert code == 2 and "note: no --data: the ladder's target data is digits, cnnlab's default" in err, err
    code, out, err = cli(["transfer", str(source_run), "--data", TARGET_DATA, "--out", str(tmp_path / "a-file")])
    assert code == 2 and "no --data" not in err, err


def test_an_image_size_the_source_cannot_take_names_data_image_size(cli, tmp_path):
    """LeNet-5 vanishes below 28x28: the remedy names the key that set the size (probe has no --input)."""
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.train.engine import train

    config = apply_overrides(RunConfig(), ["model.name=lenet5", f"data.spec={TARGET_DATA}", "data.image_size=28",
                                           "train.epochs=1", "train.batch_size=16", "log.quiet=true"])
    source = train(config, tmp_path / "lenet").run_dir
    code, out, err = cli(["probe", str(source), "--data", TARGET_DATA, "--set", "data.image_size=8"])
    assert code == 2 and err.startswith("error: Input 1x8x8 is too small for lenet5") and err.count("\n") == 1, err
    assert "give a larger data.image_size, or leave it out to read the images at the source's 28x28" in err, err
    assert "--input" not in err


def test_features_read_with_aspect_ratio_buckets_are_not_the_cached_square_ones(source_run, tmp_path, monkeypatch):
    """The same files at the same image size give other features with data.buckets (each image fitted to its
    bucket's shape, not centre-cropped to a square): the square run's cache was read for the bucketed one."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for label in ("wide", "tall"):
        for i in range(10):
            size = (56, 28) if i % 2 else (28, 56)  # (width, height): both ratios in both classes
            pixels = rng.integers(0, 256, size[::-1], dtype=np.uint8)
            (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    spec = f"folder:{tmp_path / 'images'}"
    # read from the files, as a bucketed set always is (a small square set would be decoded into memory)
    square = probe_lib.probe(str(source_run), DataConfig(spec=spec, val_fraction=0.3, in_memory=False))
    bucketed = probe_lib.probe(str(source_run), DataConfig(spec=spec, val_fraction=0.3, buckets="1:2,2:1"))
    assert not square.cached and not bucketed.cached
    assert set(bucketed.cache_files.values()).isdisjoint(square.cache_files.values())
    fresh = probe_lib.probe(str(source_run), DataConfig(spec=spec, val_fraction=0.3, buckets="1:2,2:1"), cache=False)
    strip = ("seconds", "cached", "cache_files")
    assert ({k: v for k, v in bucketed.to_dict().items() if k not in strip}
            == {k: v for k, v in fresh.to_dict().items() if k not in strip})


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated; exports still make it
def test_an_exported_model_as_the_source_is_named_for_what_it_is(source_run, cli, tmp_path):
    """`cnnlab export` writes best.pt beside best.safetensors: given as the source (or model.init_from), it was
    read as a torchvision weights file, called damaged, and torch's TorchScript warning was printed."""
    from cnnlab.evaluate.export import export_model

    scripted = export_model(source_run, "torchscript", out=tmp_path / "best.pt")["file"]
    graph = tmp_path / "best.onnx"
    graph.write_bytes(b"\x08\x08\x12\x07pytorch")  # how an ONNX ModelProto starts: ir_version, producer_name
    for path, kind in ((scripted, "a TorchScript module"), (graph, "an ONNX graph")):
        code, out, err = cli(["probe", str(path), "--data", TARGET_DATA])
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert f"'{path}' is {kind}" in err and "cnnlab export" in err and "best.safetensors" in err, err
        assert "damaged" not in err


def test_the_python_api_takes_a_data_spec_and_refuses_a_batch_size_that_is_not_a_count(source_run):
    """probe(source, "digits") failed with an AttributeError ('str' object has no attribute 'channels'), and
    batch_size="8" with a TypeError from inside a comparison."""
    by_spec = probe_lib.probe(str(source_run), TARGET_DATA)
    by_config = probe_lib.probe(str(source_run), DataConfig(spec=TARGET_DATA))
    assert by_spec.data == TARGET_DATA and by_spec.fit.grid == by_config.fit.grid
    for wrong in (7, None):
        with pytest.raises(probe_lib.CnnlabError, match="name the target data as a spec"):
            probe_lib.probe(str(source_run), wrong)
    for wrong in ("8", 2.5, True, 0):
        with pytest.raises(probe_lib.CnnlabError,
                           match=r"batch_size \(--batch-size\) must be a whole number of at least 1"):
            probe_lib.probe(str(source_run), TARGET_DATA, batch_size=wrong)


def test_every_file_the_target_data_left_out_is_named_in_the_json(source_run, tmp_path, cli):
    """The warning names the first few skipped files and counts the rest ('and 3 more'); --json, the record a
    script keeps, named none of them."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
        for i in range(4):
            (tmp_path / "images" / label / f"notes{i}.txt").write_text("not an image")
    (tmp_path / "images" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, out, err = cli(["probe", str(source_run), "--data", f"folder:{tmp_path / 'images'}", "--no-cache", "--json",
                          "--set", "data.val_fraction=0.34"])
    assert code == 0, err
    assert "and 4 more" in err  # the warning's few
    skipped = {os.path.relpath(row["path"], tmp_path / "images"): row["reason"] for row in json.loads(out)["skipped"]}
    expected = {os.path.join(label, f"notes{i}.txt") for label in ("a", "b") for i in range(4)}
    assert set(skipped) == expected | {os.path.join("a", "broken.png")}
    assert "cannot be decoded" in skipped[os.path.join("a", "broken.png")]


def test_ema_probes_the_sources_ema_weights_and_caches_their_features_apart(ema_source_run, cli):
    """--ema: the features of the EMA weights (the network `cnnlab eval --ema` scores), cached apart from the raw
    weights' features of the same file."""
    source = probe_lib.load_probe_source(str(ema_source_run), None, "cpu", ema=True)
    reference = load_run_model(ema_source_run, ema=True).model.state_dict()  # the evaluator's EMA reader
    assert all(torch.equal(value, reference[key]) for key, value in source.model.state_dict().items())
    code, out, err = cli(["probe", str(ema_source_run), "--data", TARGET_DATA, "--ema", "--json"])
    assert code == 0, err
    ema = json.loads(out)
    code, out, err = cli(["probe", str(ema_source_run), "--data", TARGET_DATA, "--json"])
    raw = json.loads(out)
    assert (ema["weights"], raw["weights"]) == ("ema", "raw") and not raw["cached"] and not ema["cached"]
    assert set(ema["cache_files"].values()).isdisjoint(raw["cache_files"].values())
    code, out, err = cli(["probe", str(ema_source_run), "--data", TARGET_DATA, "--ema"])
    assert code == 0 and "(its EMA weights)" in out and "read from the cache" in out


def test_a_checkpoint_replaced_while_it_is_read_gives_the_weights_and_state_of_one_version(source_run, tmp_path,
                                                                                          monkeypatch):
    """A run renames a new best.safetensors into place between the probe's read of the weights and its look at
    the file: the features of the old weights were cached under the new file's state, and every later probe
    reported the old weights' accuracy for the new ones. The read starts again when the file changed under it."""
    import shutil

    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.train import init_from
    from cnnlab.train.checkpoint import load_weights
    from cnnlab.train.engine import train

    newer_run = train(apply_overrides(RunConfig(), [
        "model.name=resnet8", "data.spec=synthetic:classes=4,train=64,val=16,test=16,channels=1",
        "data.image_size=28", "aug.preset=none", "train.epochs=1", "train.batch_size=16", "optim.lr=0.05",
        "train.seed=1", "log.quiet=true", "log.curves=false"]), tmp_path / "newer").run_dir
    source = tmp_path / "best.safetensors"
    shutil.copy(source_run / "best.safetensors", source)
    newer = tmp_path / "newer.safetensors"
    shutil.copy(newer_run / "best.safetensors", newer)
    reads = []

    def read_then_replaced(path, *args, **kwargs):  # the training run's rename, right after the first read
        result = load_weights(path, *args, **kwargs)
        reads.append(path)
        if len(reads) == 1:
            os.replace(newer, source)
        return result

    monkeypatch.setattr(init_from, "load_weights", read_then_replaced)
    loaded = probe_lib.load_probe_source(str(source))
    assert len(reads) == 2  # read again: the file had changed under the first read
    expected, _ = load_weights(source)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert (loaded.identity["size"], loaded.identity["mtime_ns"]) == (source.stat().st_size, source.stat().st_mtime_ns)
