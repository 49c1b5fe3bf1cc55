"""Evaluation of runs on image folders: aspect-ratio buckets, whose loaders batch bucket by bucket, and
seeded hold-outs, whose images depend on data.seed."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model, predict_probabilities, run_eval
from cnnlab.train.engine import train

# (width, height) by image number: landscape, portrait and square interleaved, so that a loader batching
# bucket by bucket yields the test images in another order than the split lists them.
SHAPES = [(40, 30), (30, 40), (32, 32)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder source with train/val/test, three classes told apart by colour, mixed aspect ratios."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 9), ("val", 3), ("test", 6)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SHAPES[(i + label) % len(SHAPES)]
                pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
                # A third of the test images wear the next class's colour: mistakes for a model that learnt the colours.
                colour = (label + 1) % 3 if split == "test" and i % 3 == 0 else label
                pixels[..., colour] += 100
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _train(photos: Path, folder: Path, *extra: str) -> Path:
    config = apply_overrides(RunConfig(), ["model.name=resnet8", f"data.spec=folder:{photos}", "data.image_size=32",
                                           "train.batch_size=8", "train.epochs=1", "train.threads=1",
                                           "log.quiet=true", *extra])
    threads = torch.get_num_threads()
    try:
        train(config, folder)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def runs(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"bucketed": _train(photos, root / "bucketed", "data.buckets=4:3,1:1,3:4"),
            "square": _train(photos, root / "square"),
            "data-seed-1": _train(photos, root / "data-seed-1", "data.seed=1", "train.seed=1"),
            # The train folder alone: no val folder, so the val split is a hold-out drawn with data.seed.
            "held-out-0": _train(photos / "train", root / "held-out-0"),
            "held-out-1": _train(photos / "train", root / "held-out-1", "data.seed=1")}


def test_eval_rows_and_mistakes_follow_the_split_of_a_bucketed_run(runs, tmp_path):
    loaded = load_model(runs["bucketed"])
    dataset, loader = eval_loader(loaded)
    part = dataset.splits()["test"]
    batched = torch.cat([y for _, y in loader])
    assert not torch.equal(batched, part.labels)  # the loader's order is not the split's: the case under test
    probs, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    assert torch.equal(labels, part.labels)  # row i is the split's image i
    # Independent of the batching: each test file on its own, fitted to its bucket by the loader's dataset.
    pipeline = loader.dataset
    for i in (0, 1, 2, len(part) - 1):
        x, _ = pipeline[i]
        with torch.no_grad():
            expected = torch.softmax(loaded.model(x.unsqueeze(0)).float(), dim=1)[0]
        assert torch.allclose(probs[i], expected, atol=1e-5)

    report = run_eval(runs["bucketed"], out=tmp_path / "eval", mistakes=len(part))
    assert report["mistakes"], "the test images in another class's colour are mistakes"
    for mistake in report["mistakes"]:  # each one names the class folder of the file its index points at
        assert Path(part.paths[mistake["index"]]).parent.name == mistake["true"]
    saved = json.loads(Path(report["files"]["metrics"]).read_text())
    assert saved["mistakes"] == report["mistakes"]


def test_mistakes_png_of_a_bucketed_run_shows_each_image_fitted_to_its_bucket(runs, tmp_path, monkeypatch):
    """The grid used to square-crop every image, though the model saw it fitted to its bucket's (H, W)."""
    from cnnlab.data.buckets import fit_to_shape
    from cnnlab.data.images import read_image
    from cnnlab.evaluate import evaluate

    drawn = {}
    real = evaluate.save_mistakes_png

    def record(images, mistakes, classes, path):
        drawn["images"] = [images[m["index"]] for m in mistakes]
        return real(images, mistakes, classes, path)  # still drawn: shapes that differ must plot

    monkeypatch.setattr(evaluate, "save_mistakes_png", record)
    loaded = load_model(runs["bucketed"])
    part = eval_loader(loaded)[0].splits()["test"]
    report = run_eval(runs["bucketed"], out=tmp_path / "eval", mistakes=len(part))
    # (H, W) of the buckets 4:3, 1:1 and 3:4 at about 32x32 pixels (sides multiples of 8), by (width, height)
    bucket = {(40, 30): (24, 32), (32, 32): (32, 32), (30, 40): (32, 24)}
    shapes = []
    for mistake, image in zip(report["mistakes"], drawn["images"], strict=True):
        path = part.paths[mistake["index"]]
        with Image.open(path) as file:
            shape = bucket[file.size]
        assert tuple(image.shape) == (3, *shape)
        assert torch.equal(image, fit_to_shape(read_image(path, 3), shape))  # the pixels the model was given
        shapes.append(shape)
    assert {(24, 32), (32, 24)} & set(shapes), "the case under test: mistakes that are not square"
    assert Path(report["files"]["mistakes_png"]).stat().st_size > 0


def test_ensemble_lines_up_a_bucketed_and_a_square_member(runs, cli):
    code, out, err = cli(["ensemble", str(runs["bucketed"]), str(runs["square"]), "--json"])
    assert code == 0, err
    result = json.loads(out)
    members = []
    for run in (runs["bucketed"], runs["square"]):  # each member's probabilities, in the split's order
        loaded = load_model(run)
        dataset, loader = eval_loader(loaded)
        probs, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
        members.append(probs)
    expected = ((members[0] + members[1]) / 2).argmax(1)
    assert result["ensemble"]["top1"] == pytest.approx((expected == labels).double().mean().item())


def test_predict_fits_each_image_to_its_bucket_as_eval_does(runs, cli):
    loaded = load_model(runs["bucketed"])
    dataset, loader = eval_loader(loaded)
    part = dataset.splits()["test"]
    probs, _, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    code, out, err = cli(["predict", str(runs["bucketed"]), *map(str, part.paths), "--topk", "3", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert [row["path"] for row in result["predictions"]] == [str(path) for path in part.paths]  # the files' order
    for row, expected in zip(result["predictions"], probs):
        got = {top["class"]: top["probability"] for top in row["top"]}
        assert [got[name] for name in loaded.classes] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result["buckets"] == "4:3,1:1,3:4"
    code, out, err = cli(["predict", str(runs["bucketed"]), str(part.paths[0])])
    assert code == 0 and "aspect-ratio buckets 4:3,1:1,3:4 of about 32x32 pixels" in out.splitlines()[0], out


def test_ensemble_refuses_members_whose_data_seed_holds_out_other_images(runs, cli):
    first, second = runs["held-out-0"], runs["held-out-1"]
    parts = [eval_loader(load_model(run), split="val")[0].splits()["val"] for run in (first, second)]
    assert torch.equal(parts[0].labels, parts[1].labels)  # in class order both: the labels cannot tell
    assert parts[0].in_memory and not torch.equal(parts[0].images, parts[1].images)  # but the images differ
    code, out, err = cli(["ensemble", str(first), str(second), "--split", "val"])
    assert code == 2 and "Traceback" not in err, out
    assert "other images in the val split" in err and "data.seed=1 against 0" in err
    # The test folder is the same whatever data.seed holds out: members may differ in it there.
    code, out, err = cli(["ensemble", str(runs["square"]), str(runs["data-seed-1"]), "--json"])
    assert code == 0, err
    assert json.loads(out)["ensemble"]["images"] == 18


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_bucketed_run_takes_every_bucket_shape(runs, tmp_path, cli, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    loaded = load_model(runs["bucketed"])
    out = tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    code, stdout, err = cli(["export", str(runs["bucketed"]), "--format", fmt, "--out", str(out), "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    shapes = [[24, 32], [32, 32], [32, 24]]  # (H, W) of 4:3, 1:1 and 3:4 at about 32x32 pixels, sides multiples of 8
    for height, width in shapes:  # the exported file on each bucket's shape, against the model
        x = torch.randn(2, 3, height, width)
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated
                got = torch.jit.load(str(out))(x)
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            assert torch.allclose(got, loaded.model(x), atol=1e-4)
    info = result["preprocessing"]
    assert info["buckets"] == "4:3,1:1,3:4" and info["shapes"] == shapes
    assert sorted(map(tuple, result["checked_shapes"][1:])) == sorted(map(tuple, shapes))  # each one checked


def test_a_shift_as_long_as_a_bucket_s_short_side_is_refused(runs, tmp_path, cli):
    """--shift was checked against the square training size only, so a shift that emptied the corner views of
    the 4:3 bucket's 24x32 images (below 32, not below 24) ran."""
    from cnnlab.evaluate.evaluate import input_shapes

    shortest = min(min(shape) for shape in input_shapes(load_model(runs["bucketed"])))
    assert shortest < 32  # the case under test: a bucket side shorter than the training size
    code, out, err = cli(["eval", str(runs["bucketed"]), "--tta", "5crop", "--shift", str(shortest),
                          "--out", str(tmp_path / "eval")])
    assert code == 2 and f"shortest side ({shortest} px)" in err and "Traceback" not in err, err
    assert not (tmp_path / "eval").exists()
    code, out, err = cli(["eval", str(runs["bucketed"]), "--tta", "5crop", "--shift", str(shortest - 1),
                          "--out", str(tmp_path / "eval"), "--json"])
    assert code == 0 and json.loads(out)["shift"] == shortest - 1, err


def test_a_class_without_test_images_is_named_and_left_out_of_the_macro_f1(runs, photos, tmp_path, cli):
    import shutil

    from sklearn.metrics import f1_score

    lacking = tmp_path / "photos"
    shutil.copytree(photos, lacking)
    shutil.rmtree(lacking / "test" / "c2")  # the classes come from train: c2 stays a class, without test images
    code, out, err = cli(["eval", str(runs["square"]), "--data", f"folder:{lacking}", "--out", str(tmp_path / "e"),
                          "--json"])
    assert code == 0, err
    report = json.loads(out)
    labels = np.repeat(np.arange(3), [row["support"] for row in report["per_class"]])
    predicted = np.concatenate([np.repeat(np.arange(3), row) for row in report["confusion"]])
    assert report["per_class"][2]["support"] == 0
    assert report["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert any("no images in this split (c2)" in note for note in report["notes"])
    code, out, err = cli(["ensemble", str(runs["square"]), str(runs["bucketed"]), "--data", f"folder:{lacking}"])
    assert code == 0, err
    assert "no images in this split (c2)" in out
