"""`cnnlab predict` inputs: nothing to predict is an error (exit 2) that says what was skipped, and every
input that is not used (broken or self-referencing links, other files, hidden files, pipes) is listed."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import RunConfig, apply_overrides, config_to_dict
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.predict import collect_images, predict_files
from cnnlab.models import create_model
from cnnlab.train.checkpoint import save_checkpoint

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A lenet5 checkpoint with the meta training writes (untrained weights: only the inputs matter here)."""
    torch.manual_seed(0)
    config = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3"])
    model = create_model("lenet5", num_classes=3, in_chans=3)
    meta = {"model": "lenet5", "num_classes": 3, "in_chans": 3, "epoch": 1, "batch": 0, "step": 2,
            "best": {"val_acc": 0.5, "epoch": 1}, "partial": None, "classes": CLASSES, "image_size": 32,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "config": config_to_dict(config)}
    return save_checkpoint(tmp_path_factory.mktemp("run") / "best.safetensors", model=model, meta=meta, rng=False)


def _image(path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _skipped(result_or_err) -> dict:
    return {os.path.basename(row["path"]): row["reason"] for row in result_or_err["skipped"]}


def test_empty_folder_exits_2_saying_no_images_were_found(checkpoint, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli(["predict", str(checkpoint), str(empty)])
    assert code == 2 and "Traceback" not in err, err
    assert str(empty) in err and "no image files were found" in err
    assert out == ""


def test_folder_of_text_files_exits_2_counting_what_was_skipped(checkpoint, tmp_path, cli):
    notes = tmp_path / "notes"
    notes.mkdir()
    for name in ("a.txt", "b.txt", "c.csv"):
        (notes / name).write_text("not an image")
    code, out, err = cli(["predict", str(checkpoint), str(notes)])
    assert code == 2 and "Traceback" not in err, err
    assert "no image files were found" in err and "skipped 3 files: " in err
    assert "a.txt (not an image file (.txt))" in err and "c.csv" in err


def test_self_referencing_link_is_listed_and_the_good_image_predicted(checkpoint, tmp_path, cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "good.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")  # a link to itself
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # a link to nothing
    alone = tmp_path / "alone.jpg"
    alone.symlink_to(alone)  # named directly
    code, out, err = cli(["predict", str(checkpoint), str(folder), str(alone), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert [os.path.basename(p["path"]) for p in result["predictions"]] == ["good.png"]
    assert result["predictions"][0]["top"][0]["class"] in CLASSES
    # The data loader's wording (cnnlab.data.sources words a dangling link 'broken link').
    assert _skipped(result) == {"loop.png": "broken link", "gone.png": "broken link", "alone.jpg": "broken link"}
    code, out, err = cli(["predict", str(checkpoint), str(folder), str(alone)])  # as a table: the skips on stderr
    assert code == 0 and "warning: skipped 3 files:" in err


def test_only_a_self_referencing_link_exits_2_and_names_it(checkpoint, tmp_path, cli):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    code, out, err = cli(["predict", str(checkpoint), str(loop)])
    assert code == 2 and "Traceback" not in err, err
    assert f"{loop} (broken link)" in err


def test_only_undecodable_images_exit_2(checkpoint, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "half.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CnnlabError, match=r"none of the 1 file read could be decoded as an image.*half\.png.*Cannot"):
        predict_files(checkpoint, [folder])
    notes = tmp_path / "notes.txt"  # named on purpose, so tried: it was called "1 image file"
    notes.write_text("hello")
    with pytest.raises(CnnlabError) as refused:
        predict_files(checkpoint, [notes])
    assert "image file could" not in str(refused.value) and "1 file read could be decoded as" in str(refused.value)


def test_nonexistent_input_is_a_clear_error(checkpoint, tmp_path, cli):
    missing = tmp_path / "no-such-photo.png"
    code, out, err = cli(["predict", str(checkpoint), str(missing)])
    assert code == 2 and "Traceback" not in err and f"'{missing}' does not exist" in err


def test_hidden_files_pipes_and_linked_folders_are_listed_not_dropped(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / ".cache").mkdir()
    _image(folder / "sub" / "a.png")
    _image(folder / ".cache" / "b.png")
    _image(folder / ".thumb.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "elsewhere").symlink_to(folder / "sub", target_is_directory=True)
    files, skipped = collect_images([folder])
    assert [p.name for p in files] == ["a.png"]
    assert {os.path.relpath(row["path"], folder): row["reason"] for row in skipped} == {
        ".cache": "hidden folder, not read",  # one entry, not walked: a .git holds thousands of files
        ".thumb.png": "hidden file",
        "pipe.png": "not a regular file",
        "elsewhere": "link to a folder, not followed",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its permissions")
def test_unreadable_file_and_folder_are_listed(checkpoint, tmp_path):
    folder = tmp_path / "locked"
    (folder / "private").mkdir(parents=True)
    good = _image(folder / "good.png")
    secret = _image(folder / "secret.png")
    secret.chmod(0)
    (folder / "private").chmod(0)
    try:
        result = predict_files(checkpoint, [folder])
    finally:
        secret.chmod(0o644)
        (folder / "private").chmod(0o755)
    assert [p["path"] for p in result["predictions"]] == [str(good)]
    skipped = _skipped(result)
    assert "Permission denied" in skipped["secret.png"] and "cannot be read" in skipped["private"]


def test_file_names_that_are_not_utf8_are_read_and_shown_escaped(checkpoint, tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # a Latin-1 name, as an old camera writes it
    _image(os.fsdecode(raw))
    with open(os.path.join(os.fsencode(folder), b"r\xe9sum\xe9.txt"), "w") as handle:
        handle.write("not an image")
    result = predict_files(checkpoint, [folder])
    assert [os.path.basename(p["path"]) for p in result["predictions"]] == ["caf\\xe9.png"]
    assert [os.path.basename(s["path"]) for s in result["skipped"]] == ["r\\xe9sum\\xe9.txt"]
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # no lone surrogate left to break a UTF-8 reader


def test_one_path_is_one_input_not_one_per_character(checkpoint, tmp_path, monkeypatch):
    """predict_files(run, "photo.png") predicts the photo; iterated, the name was the inputs 'p', 'h', ... (and
    an absolute one started with '/', a walk of the whole file system)."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "one.png")
    (tmp_path / "more").mkdir()
    _image(tmp_path / "more" / "two.png")
    listed = predict_files(checkpoint, ["one.png"])
    for given in ("one.png", Path("one.png")):
        result = predict_files(checkpoint, given)
        assert [row["path"] for row in result["predictions"]] == ["one.png"]
        assert result["predictions"] == listed["predictions"]
    assert collect_images("more") == collect_images(["more"]) == ([Path("more/two.png")], [])
    for wrong in (42, b"one.png"):
        with pytest.raises(CnnlabError, match="str or Path, or a list of them"):
            predict_files(checkpoint, wrong)


def test_a_folder_is_decoded_one_batch_at_a_time(checkpoint, tmp_path, monkeypatch):
    """Decoding every file before the first forward pass would hold a whole folder of photos in memory."""
    from cnnlab.evaluate import predict

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(7):
        _image(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not a png")  # skipped; the other rows keep the files' order
    decoded, held = [], []
    read_image = predict.read_image

    def counting_read(path, channels):
        image = read_image(path, channels)
        decoded.append(path)
        return image

    monkeypatch.setattr(predict, "read_image", counting_read)
    # tick() runs once before each forward pass: what had been decoded by then
    monkeypatch.setattr(predict, "tick", lambda: held.append(len(decoded)))
    result = predict_files(checkpoint, [folder], batch_size=3)
    assert [row["path"].rsplit("/", 1)[1] for row in result["predictions"]] == ["0.png", "1.png", "2.png", "4.png",
                                                                                "5.png", "6.png"]
    assert list(_skipped(result)) == ["3.png"] and "Cannot decode" in _skipped(result)["3.png"]
    assert held == [3, 5, 6]  # each batch of 3 files decoded just before its forward pass (3.png failed)


def test_an_empty_image_path_is_refused_not_read_as_the_current_folder(checkpoint, tmp_path, monkeypatch, cli):
    """Path('') is '.': `cnnlab predict RUN "$PHOTO"` with the variable unset predicted every image under the
    current folder (exit 0) instead of saying that the path was empty."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "elsewhere.png")
    _image(tmp_path / "photo.png")
    for inputs in ("", ["photo.png", ""]):
        with pytest.raises(CnnlabError, match=r"image path is empty.*current folder as '\.'"):
            predict_files(checkpoint, inputs)
    code, out, err = cli(["predict", str(checkpoint), "photo.png", ""])
    assert code == 2 and out == "" and "Traceback" not in err and "image path is empty" in err, err
    # the current folder named as such is still a folder of images
    assert [row["path"] for row in predict_files(checkpoint, ".")["predictions"]] == ["elsewhere.png", "photo.png"]


def test_a_quoted_pattern_is_expanded_and_one_that_matches_nothing_is_an_error(checkpoint, tmp_path, monkeypatch, cli):
    """A pattern quoted in a shell (or typed where no shell expands it) was 'does not exist'."""
    monkeypatch.chdir(tmp_path)
    for name in ("a/one.jpg", "a/deep/two.jpg", "a/three.png", "b/four.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _image(tmp_path / name)
    result = predict_files(checkpoint, ["a/**/*.jpg", "b/f?ur.jpg"])
    assert [row["path"] for row in result["predictions"]] == ["a/deep/two.jpg", "a/one.jpg", "b/four.jpg"]
    code, out, err = cli(["predict", str(checkpoint), "a/*.png", "--json"])
    assert code == 0 and [row["path"] for row in json.loads(out)["predictions"]] == ["a/three.png"], err
    code, out, err = cli(["predict", str(checkpoint), "a/*.webp"])
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert "'a/*.webp' matches no file or folder" in err


def test_a_csv_file_lists_the_images_to_predict_and_its_missing_rows_are_named(checkpoint, tmp_path, cli):
    """A CSV of images (as csv:FILE data has them: path first, relative to the CSV) was tried as one image,
    and refused as undecodable with the advice to replace the file."""
    (tmp_path / "photos" / "more").mkdir(parents=True)
    for name in ("a.png", "b.png", "more/c.png"):
        _image(tmp_path / "photos" / name)
    listing = tmp_path / "lists" / "todo.csv"
    listing.parent.mkdir()
    listing.write_text("path,label\n../photos/b.png,cat\n\n../photos/more,dog\n../photos/gone.png,fox\n,cat\n"
                       "../photos/a.png\n", encoding="utf-8-sig")  # Excel's byte order mark
    result = predict_files(checkpoint, listing)
    shown = [os.path.relpath(row["path"], tmp_path / "lists") for row in result["predictions"]]
    assert shown == [os.path.join("..", "photos", name) for name in ("b.png", os.path.join("more", "c.png"), "a.png")]
    assert [(row["path"], row["reason"]) for row in result["skipped"]] == [
        (f"{listing} line 5", "no file '../photos/gone.png'"),
        (f"{listing} line 6", "no image path in the first field")]
    direct = predict_files(checkpoint, [tmp_path / "lists" / "../photos/b.png"])
    assert result["predictions"][0] == direct["predictions"][0]
    code, out, err = cli(["predict", str(checkpoint), str(listing)])
    assert code == 0 and "warning: skipped 2 rows:" in err and f"{listing} line 5: no file" in err, err
    assert len([line for line in out.splitlines() if ".png: " in line]) == 3


def test_an_image_named_more_than_once_is_predicted_once_and_the_repeats_are_counted(checkpoint, tmp_path,
                                                                                      monkeypatch, cli):
    """An image named twice, in a folder and its own subfolder, or by a pattern and by name was predicted and
    counted once per name. Each file is predicted once, where it first appears; the names left out are counted
    (--json: repeated) and the first named in one note."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("photos/a.png", "photos/sub/b.png", "photos/sub/c.png"):
        _image(tmp_path / name)
    (tmp_path / "link.png").symlink_to(tmp_path / "photos" / "a.png")
    inputs = ["photos/sub/b.png", "photos", "photos/sub", "photos/sub/*.png", str(tmp_path / "photos" / "a.png"),
              "./photos/a.png", "link.png"]
    result = predict_files(checkpoint, inputs)
    assert [row["path"] for row in result["predictions"]] == ["photos/sub/b.png", "photos/a.png", "photos/sub/c.png"]
    # photos: sub/b again; photos/sub: b, c; the pattern: b, c; a by its absolute name, by ./ and through a link
    assert result["repeated"] == 8 and len(result["repeated_names"]) == 8
    assert result["repeated_names"][:3] == ["photos/sub/b.png", "photos/sub/b.png", "photos/sub/c.png"]
    assert collect_images(inputs)[0] == [Path("photos/sub/b.png"), Path("photos/a.png"), Path("photos/sub/c.png")]
    once = predict_files(checkpoint, ["photos"])
    assert once["repeated"] == 0 and once["repeated_names"] == []
    code, out, err = cli(["predict", str(checkpoint), *inputs])
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == ["photos/sub/b.png", "photos/a.png",
                                                                    "photos/sub/c.png"]
    notes = [line for line in err.splitlines() if "repeated" in line]
    assert notes == ["note: skipped 8 repeated names of images named before (photos/sub/b.png, photos/sub/c.png, "
                     "...): each image is predicted once"], err
    code, out, err = cli(["predict", str(checkpoint), *inputs, "--json"])
    assert code == 0 and json.loads(out)["repeated"] == 8, err
    code, out, err = cli(["predict", str(checkpoint), "photos"])
    assert code == 0 and "repeated" not in err, err


def test_predict_json_still_warns_of_skipped_files_on_stderr(checkpoint, tmp_path, cli):
    """With --json the skipped files and repeated names were in the JSON only: stderr, which every command uses for
    them (data stats and probe with --json too), said nothing."""
    _image(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = cli(["predict", str(checkpoint), str(tmp_path), str(tmp_path / "a.png"), "--json"])
    result = json.loads(out)
    assert code == 0 and len(result["skipped"]) == 1 and result["repeated"]
    assert "warning: skipped 1 file" in err and "note: skipped 1 repeated name" in err, err


def test_a_skipped_file_reached_twice_is_listed_and_counted_once(checkpoint, tmp_path, monkeypatch, cli):
    """A folder and its own subfolder reached the subfolder's non-image file twice: it was listed twice in skipped
    and counted twice in the warning. Like an image (taken once by its resolved path), it is listed once; two
    broken links to one missing file are still two entries."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    _image(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "sub" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "sub" / "gone1.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "photos" / "sub" / "gone2.png").symlink_to(tmp_path / "missing.png")
    inputs = ["photos", "photos/sub", "./photos/sub/"]
    files, skipped = collect_images(inputs)
    assert files == [Path("photos/a.png")]
    assert sorted(os.path.basename(row["path"]) for row in skipped) == ["gone1.png", "gone2.png", "notes.txt"]
    result = predict_files(checkpoint, inputs)
    assert [row["path"] for row in result["skipped"]] == [row["path"] for row in skipped]
    code, out, err = cli(["predict", str(checkpoint), *inputs])
    assert code == 0 and "warning: skipped 3 files:" in err, err
    assert err.count("notes.txt") == 1, err
    # named as well: the folder walk skips it, the name is tried and fails to decode; still one file
    code, out, err = cli(["predict", str(checkpoint), "photos", "photos/sub/notes.txt"])
    assert code == 0 and "warning: skipped 3 files:" in err and err.count("notes.txt") == 1, err


def test_an_empty_list_of_inputs_is_refused_as_no_input(tmp_path):
    """It used to be called "Nothing to predict in : no image files were found", naming an empty list."""
    with pytest.raises(CnnlabError, match="was given no input"):
        predict_files(tmp_path / "no-run", [])


def test_a_hidden_folder_is_one_entry_and_a_long_skip_list_is_cut_short(checkpoint, tmp_path, cli):
    # A project folder with a .git of thousands of objects and a few dozen stray files: the predictions come
    # first, the .git is one skipped entry (not walked), and the warning lists 20 entries then counts the rest.
    from cnnlab.evaluate.predict import SKIPS_LISTED

    folder = tmp_path / "project"
    (folder / "photos").mkdir(parents=True)
    _image(folder / "photos" / "a.png")
    (folder / ".git" / "objects").mkdir(parents=True)
    for k in range(50):
        (folder / ".git" / "objects" / f"o{k}").write_bytes(b"x")
        (folder / "notes" / f"n{k:02d}.txt").parent.mkdir(exist_ok=True)
        (folder / "notes" / f"n{k:02d}.txt").write_text("x")
    files, skipped = collect_images([folder])
    assert [p.name for p in files] == ["a.png"] and len(skipped) == 51
    assert skipped[0] == {"path": str(folder / ".git"), "reason": "hidden folder, not read"}
    code, out, err = cli(["predict", str(checkpoint), str(folder)])
    lines = err.strip().splitlines()
    assert code == 0 and "a.png" in out and lines[0] == "warning: skipped 51 files:"
    assert len(lines) == 1 + SKIPS_LISTED + 1 and lines[-1] == f"  and {51 - SKIPS_LISTED} more (--json lists every one)"
    code, out, err = cli(["predict", str(checkpoint), str(folder), "--json"])
    assert len(json.loads(out)["skipped"]) == 51


def test_cnnlab_s_own_statistics_file_beside_the_images_is_not_a_skipped_file(checkpoint, tmp_path):
    from cnnlab.config import DataConfig
    from cnnlab.data import dataset_stats, load_source

    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for k in range(2):
            _image(tmp_path / "imgs" / name / f"{k}.png")
    dataset_stats(load_source(DataConfig(spec=f"folder:{tmp_path / 'imgs'}", image_size=8)))  # writes its cache
    assert list((tmp_path / "imgs").glob(".cnnlab-stats-*.json"))
    files, skipped = collect_images([tmp_path / "imgs"])
    assert len(files) == 4 and skipped == []
