"""Names that are not UTF-8 (or not printable) are shown escaped, decided once at the data source.

A class folder named with the Latin-1 byte 0xE9 reaches Python as 'caf\\udce9' (surrogateescape),
which matplotlib, strict UTF-8 output and JSON parsers refuse. The data source turns it into the
display name 'caf\\xe9' for classes, skipped files and messages, while the files keep their real
paths so the images still load. The names run through everything that shows them: data stats
(table and JSON), the augmentation grid, training and evaluation. The CLI runs in-process: pytest's
captured stdout is strict UTF-8, as a pipe is, so a surrogate that reached a print would fail here.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data import dataset_stats
from cnnlab.data.show import augmentation_grid, save_augmentation_grid
from cnnlab.data.sources import display_name, load_source, skipped_text
from cnnlab.errors import CnnlabError

CAFE, NAIVE = b"caf\xe9", b"na\xefve"  # Latin-1 bytes: not UTF-8


def _bytes_folder(root: Path, names: list[bytes], per_class: int = 4, extra: bytes | None = None) -> Path:
    """root/<name>/<k>.png for each name given as bytes (os.mkdir with a bytes path), distinct colours per class."""
    base = os.fsencode(root)
    try:
        os.makedirs(base, exist_ok=True)
        for index, name in enumerate(names):
            os.mkdir(os.path.join(base, name))
    except (OSError, UnicodeError) as err:  # a file system that only stores UTF-8 names (macOS APFS)
        pytest.skip(f"this file system refuses names that are not UTF-8: {err}")
    rng = np.random.default_rng(0)
    for index, name in enumerate(names):
        for k in range(per_class):
            pixels = np.full((12, 12, 3), (40 + 90 * index, 120, 200 - 60 * index), dtype=np.uint8)
            pixels = (pixels + rng.integers(0, 20, pixels.shape)).astype(np.uint8)
            Image.fromarray(pixels).save(os.fsdecode(os.path.join(base, name, b"%d.png" % k)))
    if extra is not None:  # a file that is skipped, its name not UTF-8 either
        with open(os.path.join(base, names[0], extra), "wb") as handle:
            handle.write(b"not an image")
    return root


def _strict_utf8(value) -> bytes:
    """The JSON of ``value`` as strict UTF-8: raises UnicodeEncodeError if a lone surrogate is left."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def test_display_name_rule():
    assert display_name("café") == "café" and display_name("猫") == "猫" and display_name("a b") == "a b"
    assert display_name(os.fsdecode(CAFE)) == "caf\\xe9"
    assert display_name(os.fsdecode(b"\xff\xfe")) == "\\xff\\xfe"
    assert display_name("tab\there\nnew\x1b[31m") == "tab\\there\\nnew\\x1b[31m"
    assert display_name("\ud800") == "\\ud800"  # a lone surrogate no file name decodes to
    for name in ("caf\udce9", "x\ty", "plain", "\u200bzero-width"):
        shown = display_name(name)
        assert shown.isprintable() and display_name(shown) == shown  # printable, and the rule is idempotent
        shown.encode("utf-8")  # strict


@pytest.mark.parametrize("in_memory", [True, False])
def test_non_utf8_class_folders_load_with_escaped_names(tmp_path, in_memory):
    root = _bytes_folder(tmp_path / "data", [CAFE, NAIVE], extra=b"notes\xff.txt")
    data = load_source(DataConfig(spec=f"folder:{root}", val_fraction=0.25, in_memory=in_memory))
    assert data.classes == ["caf\\xe9", "na\\xefve"]
    assert len(data.train) + len(data.val) == 8 and data.val.labels.bincount().tolist() == [1, 1]
    if not in_memory:  # the real paths, bytes and all: these are the files that are read per batch
        assert {os.fsencode(p.parent.name) for p in data.train.paths} == {CAFE, NAIVE}
    (name, why), = data.skipped
    assert name == f"{root}/caf\\xe9/notes\\xff.txt" and "not an image" in why
    _strict_utf8({"classes": data.classes, "skipped": data.skipped, "spec": data.spec})
    skipped_text(data.skipped).encode("utf-8")


def test_val_folders_match_by_display_name_and_collisions_are_refused(tmp_path):
    _bytes_folder(tmp_path / "split" / "train", [CAFE, NAIVE])
    _bytes_folder(tmp_path / "split" / "val", [CAFE, NAIVE], per_class=1)
    data = load_source(f"folder:{tmp_path / 'split'}")
    assert data.classes == ["caf\\xe9", "na\\xefve"] and data.val.labels.tolist() == [0, 1]
    # a folder literally named 'caf\xe9' (backslash, x, e, 9) would read like the byte 0xE9: refused
    _bytes_folder(tmp_path / "clash", [CAFE, b"caf\\xe9"], per_class=1)
    with pytest.raises(CnnlabError, match=r"two class folders that display the same, 'caf\\xe9'.*Rename one"):
        load_source(f"folder:{tmp_path / 'clash'}")


CAFE_COMPOSED, CAFE_DECOMPOSED = "caf\u00e9".encode(), "cafe\u0301".encode()  # é as one character, or e + accent


def test_a_class_spelt_with_or_without_combining_accents_is_one_class(tmp_path):
    """A test folder written on macOS (accents as combining marks) beside a training folder written on Linux:
    the same classes, shown and matched composed, in the data's splits, data.classes and against a model's
    recorded names; two such folders in one split are refused, saying why they look the same."""
    from cnnlab.data.sources import resolve_classes
    from cnnlab.evaluate.evaluate import check_classes

    _bytes_folder(tmp_path / "split" / "train", [CAFE_COMPOSED, b"tea"])
    _bytes_folder(tmp_path / "split" / "test", [CAFE_DECOMPOSED, b"tea"], per_class=2)
    data = load_source(f"folder:{tmp_path / 'split'}")
    assert data.classes == ["caf\u00e9", "tea"] and data.test.labels.tolist() == [0, 0, 1, 1]
    assert resolve_classes(["cafe\u0301", "tea"], data.classes) == [0, 1]
    # a model whose recorded names kept the folder's decomposed spelling: the same classes, in the same order
    assert check_classes(["cafe\u0301", "tea"], data.classes, "the data", "the model") is None
    _bytes_folder(tmp_path / "clash", [CAFE_COMPOSED, CAFE_DECOMPOSED], per_class=1)
    with pytest.raises(CnnlabError, match="two class folders that display the same, 'caf\u00e9'.*combining mark"):
        load_source(f"folder:{tmp_path / 'clash'}")


def test_csv_labels_that_are_not_printable_are_escaped(tmp_path):
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "data.csv").write_text('0.png,"a\tb"\n1.png,"a\tb"\n2.png,c\n3.png,c\n')
    data = load_source(DataConfig(spec=f"csv:{tmp_path / 'data.csv'}", val_fraction=0.5))
    assert data.classes == ["a\\tb", "c"]


def test_stats_grid_training_and_evaluation_show_the_escaped_names(tmp_path, cli):
    root = _bytes_folder(tmp_path / "data", [CAFE, NAIVE], extra=b"notes\xff.txt")
    spec = f"folder:{root}"
    # data stats --json: valid strict-UTF-8 JSON with the escaped names
    code, out, err = cli(["data", "stats", spec, "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == ["caf\\xe9", "na\\xefve"]
    assert report["skipped"][0]["file"].endswith("caf\\xe9/notes\\xff.txt")
    # the table: stdout is strict UTF-8 (a lone surrogate would be UnicodeEncodeError)
    code, out, err = cli(["data", "stats", spec])
    assert code == 0 and "classes: caf\\xe9, na\\xefve" in out, err
    assert "caf\\xe9/notes\\xff.txt" in out + err
    # the augmentation grid `cnnlab data show` draws: matplotlib gets printable captions
    data = load_source(spec)
    stats, _ = dataset_stats(data)
    grid = augmentation_grid(data, stats, "standard", rows=2, views=2)
    assert set(grid["labels"]) <= {"caf\\xe9", "na\\xefve"}
    png = save_augmentation_grid(grid, tmp_path / "grid.png", title=f"{data.spec}: '$\\frac$' is not TeX")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a tiny training run and its evaluation (confusion matrix and mistakes plots)
    run = tmp_path / "run"
    code, out, err = cli(["train", "--data", spec, "--model", "lenet5", "--epochs", "1", "--quiet", "--out", str(run),
                          "--set", "data.image_size=32", "--set", "train.batch_size=4", "--set", "train.threads=1"])
    assert code == 0 and "Traceback" not in err, err
    code, out, err = cli(["eval", str(run), "--split", "val", "--out", str(tmp_path / "eval")])
    assert code == 0 and "Traceback" not in err, err
    assert "caf\\xe9" in out
    written = {path.name for path in (tmp_path / "eval").iterdir()}
    assert {"confusion.png", "confusion.json"} <= written
    confusion = json.loads((tmp_path / "eval" / "confusion.json").read_text(encoding="utf-8"))
    assert confusion["classes"] == ["caf\\xe9", "na\\xefve"]


@pytest.mark.parametrize("warnings_are", ["shown", pytest.param("errors", marks=pytest.mark.filterwarnings("error"))])
def test_names_the_plots_font_cannot_draw_give_one_note_not_a_warning_per_character(tmp_path, cli, warnings_are):
    """Classes named in Chinese: each plot printed matplotlib's raw warning (with its source line) once per
    character (an internal error where warnings are errors, `python -W error`); the command now says once that they
    draw as empty boxes, and how to see them."""
    root = _bytes_folder(tmp_path / "data", ["猫".encode(), "犬".encode()])
    code, out, err = cli(["data", "show", f"folder:{root}", "--out", str(tmp_path / "grid.png")])
    assert code == 0 and (tmp_path / "grid.png").is_file(), err
    assert "Glyph" not in err and "UserWarning" not in err, err
    notes = [line for line in err.splitlines() if "no glyph for as empty boxes" in line]
    assert len(notes) == 1 and ("(猫 first" in notes[0] or "(犬 first" in notes[0]), err
    assert "DejaVu Sans" in notes[0] and "font.family" in notes[0]
