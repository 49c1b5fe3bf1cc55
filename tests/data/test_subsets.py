"""data.classes and data.train_per_class: checked against the full data filtered by hand."""

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import DataConfig, RunConfig, load_config, save_config, validate_config
from cnnlab.data.sources import FASHION_CLASSES, load_source, resolve_classes
from cnnlab.data.stats import dataset_stats
from cnnlab.errors import CnnlabError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SYNTHETIC = "synthetic:classes=4,train=120,val=40,test=40"


def _filtered(split, kept: list[int]):
    """Reference: the images of ``kept`` (original indices) in their order, labels mapped to kept.index."""
    mask = np.isin(split.labels.numpy(), kept)
    labels = [kept.index(int(label)) for label in split.labels.numpy()[mask]]
    return split.images.numpy()[mask], labels


def _image_counts(images) -> Counter:
    """A multiset of images (as bytes): compares selections without relying on positions."""
    return Counter(bytes(np.ascontiguousarray(image)) for image in np.asarray(images))


@pytest.mark.parametrize("spec, wanted, kept", [
    ("digits", [7, "3", 1], [1, 3, 7]),  # mixed ints and text; kept in the data's order, not the list's
    (SYNTHETIC, ["class3", "class1"], [1, 3]),  # names
    (SYNTHETIC, ["0", "class2"], [0, 2]),  # text of digits that is no class's name: an index
])
def test_classes_filter_and_relabel_every_split(spec, wanted, kept):
    full = load_source(DataConfig(spec=spec))
    data = load_source(DataConfig(spec=spec, classes=wanted))
    assert data.classes == [full.classes[k] for k in kept]
    assert data.num_classes == len(kept)
    for name, split in data.splits().items():
        images, labels = _filtered(full.splits()[name], kept)
        assert len(split) == len(labels) > 0
        assert split.labels.tolist() == labels  # relabelled 0..K-1
        assert np.array_equal(split.images.numpy(), images)  # the same images, in the same order
    assert data.fingerprint != full.fingerprint
    other = load_source(DataConfig(spec=spec, classes=[0, 2, 3]))
    assert other.fingerprint not in (data.fingerprint, full.fingerprint)
    shown = ", ".join(full.classes[k] for k in kept)
    assert f"kept {len(kept)} of {full.num_classes} classes: {shown} (relabelled 0..{len(kept) - 1} in this order)" \
        in data.notices


def test_statistics_are_those_of_the_kept_classes():
    data = load_source(DataConfig(spec=SYNTHETIC, classes=[0, 1]))
    stats, _ = dataset_stats(data)
    full = load_source(SYNTHETIC)
    pixels = full.train.images.numpy()[np.isin(full.train.labels.numpy(), [0, 1])] / 255.0  # (n, 3, S, S)
    assert np.allclose(stats.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(stats.std, pixels.std(axis=(0, 2, 3)), atol=1e-9)


def _png_folder(root: Path, names: list[str], per_class: int = 4):
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), color=20 * k + i).save(root / name / f"{i}.png")


def test_folder_names_win_over_indices(tmp_path):
    _png_folder(tmp_path, ["10", "20", "cat"])  # sorted folder order: 10, 20, cat
    spec = f"folder:{tmp_path}"
    # "20" is a class's name (index 1); "0" names no class, so it is index 0; an int is always an index
    data = load_source(DataConfig(spec=spec, classes=["20", "0"], val_fraction=0.25))
    assert data.classes == ["10", "20"]
    by_index = load_source(DataConfig(spec=spec, classes=[2, "20"], val_fraction=0.25))
    assert by_index.classes == ["20", "cat"]
    assert sorted(set(by_index.train.labels.tolist())) == [0, 1]
    # the grey level encodes the class: 20 * k + i, so "cat" (k=2) images are 40..43, now label 1
    cat = by_index.train.images[by_index.train.labels == 1]
    assert cat.min() >= 40 and cat.max() <= 43


@pytest.mark.parametrize("wanted, message", [
    (["Sandle", "Coat"], "'Sandle': no class has that name"),
    ([0, 10], "10: index outside 0..9"),
    (["12", 1], "'12': no class has that name, and index 12 is outside 0..9"),
    (["²", 1], "'²': no class has that name"),  # a digit to str.isdigit, not a number to int()
    (["Trouser", 1], r"1 names class 'Trouser' again \(already named by 'Trouser'\)"),
    ([4], "keeps 1 class"),
])
def test_bad_classes_list_the_available_names(wanted, message):
    with pytest.raises(CnnlabError, match=message) as info:
        load_source(DataConfig(spec="fashion-mnist", classes=wanted))
    assert "0='T-shirt/top'" in str(info.value) and "9='Ankle boot'" in str(info.value)


def test_classes_without_test_images_leave_no_empty_test_split(tmp_path):
    # the test folder holds only 'b': keeping 'a' and 'c' leaves no test image, and no empty test split
    for split, classes, count in (("train", "abc", 3), ("val", "ac", 1), ("test", "b", 2)):
        for name in classes:
            for i in range(count):
                path = tmp_path / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), 40 * i).save(path)
    data = load_source(DataConfig(spec=f"folder:{tmp_path}", classes=["a", "c"]))
    assert data.test is None and list(data.splits()) == ["train", "val"]
    assert (f"folder:{tmp_path}'s test split has no image (none of its images is of the kept classes), so the data "
            "has no test split") in data.notices
    assert len(load_source(DataConfig(spec=f"folder:{tmp_path}", classes=["a", "b"])).test) == 2


def test_class_indices_computed_with_numpy_or_torch_are_indices(tmp_path):
    # e.g. classes=list(np.flatnonzero(counts > 100)): np.int64 entries, which were "neither a name nor a whole number"
    for wanted in (list(np.array([3, 5])), [torch.tensor(3), torch.tensor(5)]):
        data = load_source(DataConfig(spec="digits", classes=wanted))
        assert data.classes == ["3", "5"]
    assert resolve_classes([np.int64(2), np.int32(0)], ["a", "b", "c"]) == [0, 2]
    # a run's config holds them as the ints a YAML file gives, so config.yaml can be written and read back
    config = RunConfig()
    config.data.classes = list(np.array([3, 5]))
    validate_config(config)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.classes == [3, 5]


def test_classes_given_as_text_are_read_as_a_config_file_reads_them():
    # "0,1" in Python, as in --set data.classes=0,1: the list ["0", "1"], indices here
    text = load_source(DataConfig(spec="fashion-mnist", classes="0,1"))
    assert text.classes == load_source(DataConfig(spec="fashion-mnist", classes=[0, 1])).classes == ["T-shirt/top", "Trouser"]


# Class names that YAML, written unquoted, reads as something else: a float with an exponent (as cnnlab's reader
# takes 1e3, YAML 1.2's way), a float, a bool, null and an integer with a leading zero (012 is 12, as YAML 1.2 reads it)
VALUE_NAMES = ["1e3", "1.5", "true", "null", "012"]


def _named_folder(root: Path, names: list[str]) -> str:
    """An image folder with two 8x8 images per class ``names``; returns its spec."""
    for name in names:
        for i in range(2):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 40 * i).save(path)
    return f"folder:{root}"


def test_class_names_yaml_reads_as_values_round_trip_through_config_yaml(tmp_path):
    """config.yaml quotes them (cnnlab's reader and PyYAML's safe_load both read them back as the text), and the
    data keeps exactly those classes."""
    import yaml

    spec = _named_folder(tmp_path / "data", [*VALUE_NAMES, *"abcdefgh"])
    config = RunConfig()
    config.data.spec, config.data.classes = spec, list(VALUE_NAMES)
    validate_config(config)
    save_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").data.classes == VALUE_NAMES
    assert yaml.safe_load(text)["data"]["classes"] == VALUE_NAMES  # another reader of the file: PyYAML's own
    kept = load_source(load_config(tmp_path / "config.yaml").data)
    assert sorted(kept.classes) == sorted(VALUE_NAMES)  # the data's order: the folders' names sorted


@pytest.mark.parametrize("unquoted, value, name", [
    ("012", 12, "012"),  # an integer: as an index, class 12 ('true'), which it picked in silence
    ("1e3", 1000.0, "1e3"),
    ("1.5", 1.5, "1.5"),
    ("true", True, "true"),
    ("null", None, "null"),
])
def test_a_class_name_written_unquoted_is_refused_naming_the_entry_and_the_quotes(tmp_path, unquoted, value, name):
    from cnnlab.config import safe_load_unique

    spec = _named_folder(tmp_path / "data", [*VALUE_NAMES, *"abcdefgh"])
    path = tmp_path / "config.yaml"
    path.write_text(f"data:\n  spec: '{spec}'\n  classes: [{unquoted}, a]\n")
    config = load_config(path)
    assert config.data.classes == [value, "a"] == safe_load_unique(f"[{unquoted}, a]")  # as YAML reads it
    with pytest.raises(CnnlabError) as info:
        load_source(config.data)
    message = str(info.value)
    assert f"{value!r} is what YAML reads the unquoted class name '{name}' as" in message
    assert f"quote the name in the YAML file or --set (['{name}'])" in message and "\n" not in message
    if isinstance(value, int) and not isinstance(value, bool):
        assert "which as an index is class 'true'" in message  # classes: 012, 1.5, 1e3, a, ..., h, null, true
    assert load_source(DataConfig(spec=spec, classes=[name, "a"])).classes == sorted([name, "a"])  # quoted: kept


def test_an_index_that_is_also_its_class_name_is_kept():
    # digits' class "3" is read from YAML's 3 too: the same class either way, so the index is not refused
    assert load_source(DataConfig(spec="digits", classes=[3, 5])).classes == ["3", "5"]
    assert resolve_classes([2, 0], ["0", "x", "2"]) == [0, 2]
    with pytest.raises(CnnlabError, match="1 is what YAML reads the unquoted class name '1' as, which as an index is "
                                          "class '10'"):
        resolve_classes([1, 0], ["1", "10", "2"])  # CSV labels sorted as text: 1 means '1' or index 1, '10'


def test_many_classes_are_listed_first_few():
    with pytest.raises(CnnlabError) as info:
        load_source(DataConfig(spec="synthetic:classes=30,train=60,val=30,test=30", classes=["nope", 0]))
    assert "11='class11'" in str(info.value) and "12='class12'" not in str(info.value)
    assert "and 18 more" in str(info.value)


def test_train_per_class_counts_val_test_and_notice():
    full = load_source("digits")
    data = load_source(DataConfig(spec="digits", train_per_class=7))
    assert data.train.labels.bincount().tolist() == [7] * 10
    assert _image_counts(data.train.images) <= _image_counts(full.train.images)  # drawn from the training split
    for name in ("val", "test"):  # whole, and the same images as without the option
        assert torch.equal(data.splits()[name].images, full.splits()[name].images)
        assert torch.equal(data.splits()[name].labels, full.splits()[name].labels)
    assert data.fingerprint != full.fingerprint
    assert load_source(DataConfig(spec="digits", train_per_class=8)).fingerprint != data.fingerprint
    assert (f"training subset: 7 images per class (train_per_class=7, seed=0), 70 of {len(full.train):,} training "
            "images; val and test stay whole") in data.notices


def test_train_per_class_is_seeded_nested_and_independent_of_other_classes():
    def chosen(**options):
        data = load_source(DataConfig(spec=SYNTHETIC, **options))
        return data, _image_counts(data.train.images)

    small, small_images = chosen(train_per_class=5)
    again, again_images = chosen(train_per_class=5)
    assert torch.equal(small.train.images, again.train.images) and small.fingerprint == again.fingerprint
    large, large_images = chosen(train_per_class=20)
    assert small_images <= large_images and len(large_images) > len(small_images)  # nested: a fair learning curve
    _, other_seed = chosen(train_per_class=5, seed=1)
    assert other_seed != small_images
    # the images of class 1 do not depend on which other classes are kept
    pair, _ = chosen(train_per_class=5, classes=[1, 3])
    assert _image_counts(pair.train.images[pair.train.labels == 0]) == \
        _image_counts(small.train.images[small.train.labels == 1])
    assert pair.train.labels.bincount().tolist() == [5, 5]


def test_train_per_class_above_a_class_count_names_it():
    full = load_source("digits")
    counts = full.train.labels.bincount()
    smallest = int(counts.min())
    with pytest.raises(CnnlabError) as info:
        load_source(DataConfig(spec="digits", train_per_class=smallest + 1))
    message = str(info.value)
    short = int(counts.argmin())
    assert f"'{full.classes[short]}' has {smallest}" in message
    assert f"largest train_per_class that works here is {smallest}" in message
    assert len(load_source(DataConfig(spec="digits", train_per_class=smallest)).train) == 10 * smallest
    with pytest.raises(CnnlabError, match="at least 1"):
        load_source(DataConfig(spec="digits", train_per_class=0))


def _numpy_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def test_fashion_mnist_five_classes_ten_per_class():
    assert (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), "Fashion-MNIST is expected at " + str(FASHION_DIR)
    kept = [0, 1, 2, 3, 4]
    full = load_source("fashion-mnist")
    data = load_source(DataConfig(spec="fashion-mnist", classes=kept, train_per_class=10))
    assert data.classes == FASHION_CLASSES[:5] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert data.train.labels.bincount().tolist() == [10] * 5
    # the hold-out happens before the subsets: val is the full data's val, filtered
    images, labels = _filtered(full.val, kept)
    assert data.val.labels.tolist() == labels and np.array_equal(data.val.images.numpy(), images)
    # test against an independent reader of the idx files
    test_images = _numpy_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28)
    test_labels = _numpy_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 8)
    mask = test_labels < 5
    assert data.test.labels.tolist() == test_labels[mask].tolist()
    assert np.array_equal(data.test.images[:, 0].numpy(), test_images[mask])
    # the training images come from the kept classes of the training split
    train_images, _ = _filtered(full.train, kept)
    assert _image_counts(data.train.images) <= _image_counts(train_images)
    # the hold-out counted the images held out of all ten classes; this note says how many stay
    assert ("kept 5 of 10 classes: T-shirt/top, Trouser, Pullover, Dress, Coat (relabelled 0..4 in this order); "
            f"validation keeps {len(data.val):,} of the {len(full.val):,} training images held out") in data.notices


def test_too_many_per_class_names_the_hold_out_only_where_there_was_one():
    # digits keeps fixed splits: no hold-out took its images, so the message must not say one did
    with pytest.raises(CnnlabError, match="digits has its own validation split") as fixed:
        load_source(DataConfig(spec="digits", train_per_class=500))
    assert "hold-out" not in str(fixed.value)
    with pytest.raises(CnnlabError, match="test=2 has its own validation split"):
        load_source(DataConfig(spec="synthetic:classes=2,train=10,val=2,test=2", train_per_class=50))


def test_too_many_per_class_after_a_hold_out_says_so(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index in range(5):
            Image.fromarray(np.full((4, 4), index * 40, dtype=np.uint8)).save(tmp_path / name / f"{index}.png")
    with pytest.raises(CnnlabError, match="counted after the validation hold-out"):
        load_source(DataConfig(spec=f"folder:{tmp_path}", train_per_class=5))


def test_the_kept_classes_note_says_how_many_held_out_images_stay(tmp_path):
    """A CSV's hold-out note counted the images held out of every class before data.classes kept two of four."""
    rows = ["file,label"]
    for label in range(4):
        for k in range(3):
            name = f"{label}-{k}.png"
            Image.new("L", (8, 8), color=label * 60).save(tmp_path / name)
            rows.append(f"{name},{label}")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    full = load_source(DataConfig(spec=f"csv:{tmp_path / 'l.csv'}", val_fraction=0.34))
    data = load_source(DataConfig(spec=f"csv:{tmp_path / 'l.csv'}", val_fraction=0.34, classes=["0", "2"]))
    assert any(note.startswith(f"validation: {len(full.val)} training images held out") for note in data.notices)
    (kept,) = [note for note in data.notices if note.startswith("kept 2 of 4 classes")]
    assert kept.endswith(f"; validation keeps {len(data.val)} of the {len(full.val)} training images held out")
    assert len(data.val) < len(full.val)
