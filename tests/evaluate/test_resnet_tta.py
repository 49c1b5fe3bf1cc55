"""--tta resnet10crop, the lecture's ResNet test: the original image's short side resized to several lengths,
torchvision's TenCrop of the model's size from each, the softmax probabilities averaged."""

import itertools
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.data.images import read_image
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import tta
from cnnlab.evaluate.evaluate import load_model, run_eval
from cnnlab.train.engine import train

SIZE = 16  # the runs' image size: the short sides are ResNet's 224, 256, 384, 480, 640 at 16/224
# (width, height): landscape, portrait and square, with odd and even borders around a centre crop
SHAPES = [(41, 30), (30, 45), (36, 36), (23, 19)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder source (train/val/test, three classes told apart by colour) of images larger than SIZE."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3), ("test", 5)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SHAPES[(i + label) % len(SHAPES)]
                pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
                pixels[..., label] += 100
                # a bright corner, so that the corner views differ from the centre and from each other
                pixels[: height // 3, : width // 3] = 255
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _train(folder, *settings):
    config = apply_overrides(RunConfig(), ["model.name=lenet5", "train.batch_size=8", "train.epochs=1",
                                           "train.threads=1", "log.quiet=true", *settings])
    threads = torch.get_num_threads()
    try:
        train(config, folder)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def runs(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"photos": _train(root / "photos", f"data.spec=folder:{photos}", f"data.image_size={SIZE}"),
            "digits": _train(root / "digits", "data.spec=digits", f"data.image_size={SIZE}"),
            "bucketed": _train(root / "bucketed", f"data.spec=folder:{photos}", "data.image_size=32",
                               "data.buckets=4:3,1:1,3:4")}


def lecture_short_sides(size):
    """The lecture's {224, 256, 384, 480, 640} at the ratio size / 224, computed here from the lecture's numbers."""
    return [round(side * size / 224) for side in (224, 256, 384, 480, 640)]


def torchvision_views(path, short_side, size, flips=True):
    """The reference: the file decoded by PIL, torchvision's Resize(short side), then TenCrop (FiveCrop) of size."""
    with Image.open(path) as opened:
        image = v2.functional.pil_to_tensor(opened.convert("RGB"))  # (3, H, W) uint8
    resized = v2.Resize(short_side, antialias=True)(image)
    return torch.stack((v2.TenCrop if flips else v2.FiveCrop)(size)(resized))


def test_default_short_sides_follow_resnet_s_ratio():
    assert tta.resnet_short_sides(224) == [224, 256, 384, 480, 640]
    assert tta.resnet_short_sides(32) == [32, 37, 55, 69, 91] == lecture_short_sides(32)
    assert tta.resnet_short_sides(SIZE) == lecture_short_sides(SIZE)
    assert tta.resnet_short_sides(1) == [1, 2, 3]  # lengths a tiny size rounds alike are listed once


def test_the_scales_help_gives_the_short_sides_and_factors_the_code_uses():
    """`cnnlab eval --help` names the default short sides (and the examples at 28 and 32, the limit, multiscale's
    factors) from the constants the eval uses: with other constants, another text. Run in a fresh process, where
    the CLI builds its help, with the constants changed first."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from cnnlab.evaluate import tta\n"
            "tta.RESNET_SHORT_SIDES, tta.SHORT_SIDE_LIMIT, tta.DEFAULT_SCALES = (224, 288), 3, (0.8, 1.0)\n"
            "from cnnlab.cli import main\n"
            "sys.argv = ['cnnlab', 'eval', '--help']\n"
            "main(['eval', '--help'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    text = " ".join(done.stdout.replace("│", " ").split())
    assert done.returncode == 0, done.stderr[-2000:]
    scales = re.split(r" --[a-z-]+ <", text.split("--scales <", 1)[1])[0]  # its help, to the next option's type
    assert "default ResNet's 224,288 scaled to the image size (28,36 at 28; 32,41 at 32)" in scales, scales
    assert "to 3x it" in scales and "e.g. 0.8,1.0 (the default)" in scales, scales
    assert "224,256,384,480,640" not in scales


def test_views_are_torchvision_s_tencrop_of_the_resized_original(photos):
    paths = sorted((photos / "test").rglob("*.png"))
    shapes = {Image.open(path).size for path in paths}
    assert len(shapes) == len(SHAPES)  # every shape, odd borders included
    for path in paths:
        original = read_image(path, 3)
        for short_side in lecture_short_sides(SIZE):
            for flips in (True, False):
                views = tta.scale_crops(original, short_side, SIZE, flips)
                assert views.shape == (10 if flips else 5, 3, SIZE, SIZE)
                assert torch.equal(views, torchvision_views(path, short_side, SIZE, flips)), (path, short_side)


def test_an_elongated_image_is_cropped_from_its_source_within_a_grey_level(photos, monkeypatch):
    """Past WHOLE_RESIZE_PIXELS the crops come from the source pixels they need, not a whole enlargement."""
    path = sorted((photos / "test").rglob("*.png"))[0]
    original = read_image(path, 3)
    monkeypatch.setattr(tta, "WHOLE_RESIZE_PIXELS", 0)
    for short_side in lecture_short_sides(SIZE)[1:]:  # enlargements
        views = tta.scale_crops(original, short_side, SIZE)
        reference = torchvision_views(path, short_side, SIZE)
        assert (views.int() - reference.int()).abs().max() <= 1


@torch.no_grad()
def hand_loop(run, root, split="test"):
    """(mean NLL, accuracy, views per image) of the lecture's test written out: every file of the split, each
    short side, TenCrop, normalised with the run's mean/std, softmax averaged over the views."""
    loaded = load_model(run)
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(loaded.mean, loaded.std)])
    losses, hits, counts = [], [], set()
    for path in sorted((root / split).rglob("*.png")):
        label = loaded.classes.index(path.parent.name)
        probabilities = []
        for short_side in lecture_short_sides(loaded.image_size):
            for view in torchvision_views(path, short_side, loaded.image_size):
                probabilities.append(torch.softmax(loaded.model(normalise(view).unsqueeze(0)), dim=1)[0])
        counts.add(len(probabilities))
        mean = torch.stack(probabilities).mean(dim=0)
        losses.append(-mean[label].log().item())
        hits.append(int(mean.argmax()) == label)
    return float(np.mean(losses)), float(np.mean(hits)), counts


def test_the_averaged_prediction_equals_a_hand_loop_over_the_views(runs, photos, tmp_path, cli):
    run = runs["photos"]
    report = run_eval(run, tta="resnet10crop", out=tmp_path / "eval")
    loss, accuracy, counts = hand_loop(run, photos)
    assert counts == {50} and report["views"] == 50
    assert report["scales"] == lecture_short_sides(SIZE) and report["shift"] is None
    assert report["top1"] == pytest.approx(accuracy, abs=1e-12)
    assert report["loss"] == pytest.approx(loss, rel=1e-5)
    # the originals, though the run held its images in memory as centre squares
    assert not any("held in memory" in note for note in report["notes"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["tta"] == "resnet10crop" and saved["scales"] == report["scales"]
    # the batch size groups images, not views: the numbers do not change
    small = run_eval(run, tta="resnet10crop", batch_size=2, out=tmp_path / "small")
    assert small["loss"] == pytest.approx(report["loss"], rel=1e-6) and small["top1"] == report["top1"]
    code, out, err = cli(["eval", str(run), "--tta", "resnet10crop", "--out", str(tmp_path / "cli")])
    sides = ", ".join(map(str, lecture_short_sides(SIZE)))
    assert code == 0 and f"tta resnet10crop (50 views at short sides {sides} px)" in " ".join(out.split())


def test_a_model_trained_without_scale_changes_is_told_the_enlarged_views_may_cost_accuracy(runs, photos, tmp_path):
    """The enlarged views cost a Fashion-MNIST run trained on whole images 4.3 points: a note says so, as the
    corner modes' note does for a run trained without shifts; a run trained on ResNet's scales gets none."""
    # photos trained with the standard preset at 16 px: pad-and-crop shifts, no scale changes
    plain = run_eval(runs["photos"], tta="resnet10crop", out=tmp_path / "plain")
    assert load_model(runs["photos"]).config.aug.crop == "translate"
    assert any("trained without scale changes (aug.crop=translate)" in note for note in plain["notes"])
    scaled = _train(tmp_path / "scaled", f"data.spec=folder:{photos}", f"data.image_size={SIZE}", "aug.crop=scale")
    assert load_model(scaled).config.aug.crop == "scale"
    report = run_eval(scaled, tta="resnet10crop", out=tmp_path / "scaled-eval")
    assert not any("scale changes" in note for note in report["notes"])
    # the other modes never enlarge the image this way: no such note
    assert not any("scale changes" in note for note in run_eval(runs["photos"], tta="flip", out=tmp_path / "flip")["notes"])


def test_the_multiscale_mode_is_another_computation(runs, tmp_path):
    """multiscale scales the evaluated S x S image: not the lecture's test, which this mode is."""
    run = runs["photos"]
    resnet = run_eval(run, tta="resnet10crop", out=tmp_path / "resnet")
    multiscale = run_eval(run, tta="multiscale", out=tmp_path / "multiscale")
    assert resnet["views"] == 50 and multiscale["views"] == 30
    assert resnet["loss"] != pytest.approx(multiscale["loss"], rel=1e-6)


def test_data_a_mirror_changes_leaves_the_mirrors_out_and_says_so(runs, tmp_path):
    report = run_eval(runs["digits"], tta="resnet10crop", out=tmp_path / "eval")
    sides = lecture_short_sides(SIZE)
    assert report["views"] == 5 * len(sides)
    assert any(note.startswith("mirror views left out") for note in report["notes"])
    # digits are held in memory as SIZE x SIZE squares: the note says those are what is enlarged
    assert any("held in memory" in note and "enlarges those squares" in note for note in report["notes"])
    assert any(f"at a short side of {SIZE} the five crops are one image" in note for note in report["notes"])
    # lengths without S: no word on what S would do
    other = run_eval(runs["digits"], tta="resnet10crop", scales=[SIZE + 4, 2 * SIZE], out=tmp_path / "other")
    assert any("enlarges those squares" in note for note in other["notes"])
    assert not any(f"short side of {SIZE}" in note for note in other["notes"])
    # the five crops, without mirrors, of each stored square enlarged: computed by hand
    from cnnlab.evaluate.evaluate import eval_loader

    loaded = load_model(runs["digits"])
    dataset, _ = eval_loader(loaded, split="test")
    part = dataset.splits()["test"]
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(loaded.mean, loaded.std)])
    view_probabilities = []
    with torch.no_grad():
        for side in sides:
            crops = torch.stack([torch.stack(v2.FiveCrop(SIZE)(v2.Resize(side, antialias=True)(image)))
                                 for image in part.images], dim=1)  # (5, N, C, S, S)
            view_probabilities += [torch.softmax(loaded.model(normalise(view)), dim=1) for view in crops]
    probabilities = torch.stack(view_probabilities).mean(dim=0)  # (N, K)
    loss = -probabilities.gather(1, part.labels.view(-1, 1)).log().mean().item()
    assert report["loss"] == pytest.approx(loss, rel=1e-5)


def test_bad_scales_and_options_are_refused_in_one_paragraph(runs, tmp_path, cli):
    run = str(runs["photos"])
    out = tmp_path / "eval"
    cases = [(["--scales", "8,16"], f"from {SIZE} (the model's image size) to {4 * SIZE}"),
             (["--scales", f"{SIZE},{4 * SIZE + 1}"], f"--scales {4 * SIZE + 1}:"),
             (["--scales", f"{SIZE},20.5"], "in whole pixels"),
             (["--scales", f"{SIZE},20,{SIZE}"], f"names the short side {SIZE} more than once"),
             (["--scales", "big"], "must be comma-separated numbers, e.g. 32,37,55,69,91"),
             (["--shift", "2"], "--shift does not apply to --tta resnet10crop")]
    for extra, message in cases:
        code, _, err = cli(["eval", run, "--tta", "resnet10crop", "--out", str(out), *extra])
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) <= 3, err  # one paragraph (wrapped by the terminal width at most)
    assert not out.exists()
    code, _, err = cli(["eval", str(runs["bucketed"]), "--tta", "resnet10crop", "--out", str(out)])
    assert code == 2 and "trained with aspect-ratio buckets" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = cli(["ensemble", run, str(runs["digits"]), "--tta", "resnet10crop"])
    assert code == 2 and "cnnlab ensemble does not take --tta resnet10crop" in err and "Traceback" not in err
    with pytest.raises(CnnlabError, match="in whole pixels"):  # the library decides, not the CLI
        run_eval(run, tta="resnet10crop", scales=[SIZE, 17.5], out=tmp_path / "library")
    with pytest.raises(CnnlabError, match="non-empty list of short sides"):
        run_eval(run, tta="resnet10crop", scales="16,20", out=tmp_path / "library")


def test_the_eval_folder_names_other_short_sides_only(runs, tmp_path):
    run = runs["photos"]
    plain = run_eval(run, tta="resnet10crop", scales=list(reversed(lecture_short_sides(SIZE))))
    assert plain["files"]["metrics"].endswith("eval-test-resnet10crop/metrics.json")
    other = run_eval(run, tta="resnet10crop", scales=[SIZE, 2 * SIZE])
    assert other["files"]["metrics"].endswith(f"eval-test-resnet10crop-scales{SIZE}_{2 * SIZE}/metrics.json")
    assert other["views"] == 20 and other["scales"] == [SIZE, 2 * SIZE]
    from cnnlab.report.runs import read_run

    texts = {item.tta_text for item in read_run(run).evals}  # cnnlab runs and the run's page read them apart
    sides = " ".join(map(str, reversed(lecture_short_sides(SIZE))))  # as given: the order changes no number
    assert {f"resnet10crop, short sides {sides} px", f"resnet10crop, short sides {SIZE} {2 * SIZE} px"} <= texts
    # the same short sides in another order average the same views: the same folder, not a second one
    again = run_eval(run, tta="resnet10crop", scales=[2 * SIZE, SIZE])
    assert again["files"]["metrics"] == other["files"]["metrics"]
    assert again["top1"] == other["top1"] and again["loss"] == pytest.approx(other["loss"], rel=1e-6)


def test_the_command_prints_a_long_note_as_one_indented_paragraph(runs, tmp_path, cli, monkeypatch):
    """At 80 columns the scale-change note takes several lines, each within the width and the later ones indented
    under the text, so that it reads as one note; joined, it is the note the evaluation reports."""
    import cnnlab.cli

    monkeypatch.setattr(cnnlab.cli.console, "width", 80)
    code, out, err = cli(["eval", str(runs["photos"]), "--tta", "resnet10crop", "--out", str(tmp_path / "cli")])
    assert code == 0, err
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("note: the model was trained without scale"))
    indent = " " * len("note: ")
    rest = list(itertools.takewhile(lambda line: line.startswith(indent) and line.strip(), lines[first + 1:]))
    assert rest and all(len(line) <= 80 for line in [lines[first], *rest])
    joined = " ".join(line.strip() for line in [lines[first][len("note: "):], *rest])
    notes = run_eval(runs["photos"], tta="resnet10crop", out=tmp_path / "api")["notes"]
    assert joined in [" ".join(note.split()) for note in notes]
