"""Data sources: ``digits``, ``fashion-mnist``, ``cifar10``/``cifar100`` (:mod:`cnnlab.data.cifar`),
``folder:PATH``, ``csv:FILE`` and ``synthetic``.

:func:`load_source` turns a :class:`~cnnlab.config.DataConfig` into a :class:`DataSet` with train,
val and (when the source has one) test splits. Small data sets are decoded once into a uint8 tensor
(N, C, H, W) at the model's image size; larger folders keep file paths and are read per batch.
Decoding, probing and resizing image files is :mod:`cnnlab.data.images`'s job.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import math
import os
import re
import shutil
import struct
import unicodedata
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from cnnlab import cache_root  # one rule for the cache folder (also used by the model zoo)
from cnnlab.config import (DataConfig, check_section_types, missing_recorded_path, safe_load_unique, seed_problem,
                           shorten_long_numbers)
from cnnlab.data import cifar
from cnnlab.data.buckets import parse_buckets
from cnnlab.data.images import (
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    UnreadableImage,
    convert_channels,
    not_image_reason,
    probe_image,
    read_image,
    resize_square,
)
from cnnlab.errors import CnnlabError, counted, display_class, display_name, integer_text, whole_number
from cnnlab.text import mib_over_limit
from cnnlab.limits import MAX_IMAGE_SIDE


@dataclass
class Split:
    """One split: labels plus either decoded images in memory or the files to read."""

    labels: torch.Tensor  # (N,) int64 class indices
    images: Optional[torch.Tensor] = None  # (N, C, H, W) uint8 when held in memory
    paths: Optional[list[Path]] = None  # image files when read per batch
    sizes: Optional[list[tuple[int, int]]] = None  # (width, height) of each file, for aspect-ratio buckets

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: torch.Tensor) -> Split:
        """The images at ``index`` (a 1-d tensor of positions), in that order, as a new Split."""
        positions = index.tolist()
        return Split(
            labels=self.labels[index],
            images=self.images[index] if self.images is not None else None,
            paths=[self.paths[i] for i in positions] if self.paths is not None else None,
            sizes=[self.sizes[i] for i in positions] if self.sizes is not None else None,
        )


@dataclass
class DataSet:
    """A loaded source: class names, image geometry and its splits."""

    spec: str  # the --data text it came from
    classes: list[str]
    channels: int  # channels the images are delivered with: 1 (gray) or 3 (RGB)
    image_size: int  # pixels, side of the square the model sees
    train: Split
    val: Split
    test: Optional[Split] = None
    hflip_safe: bool = True  # False where a mirror image changes the label (digits)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for every file not used
    notices: list[str] = field(default_factory=list)  # conversions and choices a person should know about
    fingerprint: str = ""  # identifies the training split's content, keys the statistics cache
    cache_dir: Optional[Path] = None  # where statistics are cached (next to the data when writable)
    buckets: Optional[list[tuple[int, int]]] = None  # aspect-ratio buckets (width, height) for file splits
    val_held_out: bool = False  # val was held out of train by data.val_fraction (the source has no val split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> dict[str, Split]:
        named = {"train": self.train, "val": self.val}
        if self.test is not None:
            named["test"] = self.test
        return named


# ---------------------------------------------------------------------------------------------
# shared helpers

FIRST_FEW = 5  # how many skipped files a warning names before it only counts


def _display_names(names: list[str], what: str, where: str) -> list[str]:
    """:func:`display_class` of each name; refuses two different names that would show the same."""
    shown: dict[str, str] = {}
    for name in names:
        key = display_class(name)
        if key in shown and shown[key] != name:
            if display_name(shown[key]) == display_name(name):
                why = ("bytes that are not UTF-8 are shown as \\xNN, so a name with a literal backslash can read "
                       "like one")
            else:  # one spells its accents with combining characters
                why = ("one of them spells an accent as a letter followed by a combining mark, as macOS and zip "
                       "files made there write names")
            raise CnnlabError(
                f"{where} has two {what}s that display the same, '{key}': as stored they are "
                f"{os.fsencode(shown[key])!r} and {os.fsencode(name)!r} ({why}). Rename one of them."
            )
        shown[key] = name
    return [display_class(name) for name in names]


class CsvRow(str):
    """The name of a skipped row of a CSV listing, "labels.csv line 3": a skipped item that is a row, not a
    file, so that a message counts the two apart (:func:`skipped_text`). It is a str everywhere else (JSON,
    messages)."""


def _display_skipped(skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (file, why) pairs with both parts display-safe: file names and decoder messages may hold any bytes.
    A skipped CSV row stays a :class:`CsvRow`."""
    return [(CsvRow(display_name(name)) if isinstance(name, CsvRow) else display_name(name), display_name(why))
            for name, why in skipped]


MIN_CLASSES = 2  # a classifier needs two classes at least: with one, every prediction is right


def _need_classes(names: list[str], where: str, fix: str) -> None:
    """Refuse a source with fewer than :data:`MIN_CLASSES` classes; ``where`` names it, ``fix`` says what to add."""
    if len(names) >= MIN_CLASSES:
        return
    found = f"only one class ('{names[0]}')" if names else "no class"
    raise CnnlabError(
        f"{where} has {found}; classification needs at least {MIN_CLASSES} classes (with one, every prediction is "
        f"right and the accuracy says nothing). {fix}"
    )


def _fingerprint(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _file_identity(paths) -> list:
    """(name, bytes, mtime, ctime) per file: changes when a file is replaced, cheap to compute.

    Times in nanoseconds: whole seconds missed a file rewritten at the same size within the second it was
    read (a script regenerating its images, fixed-size formats such as BMP). The status-change time is there
    because copies that keep the source's modification time (cp -p, rsync -a, tar) do not keep it.
    """
    identity = []
    for path in paths:
        stat = Path(path).stat()
        identity.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return identity


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out): ``fraction`` of each class held out, chosen by a seeded permutation.

    Per class so that a small class keeps its share in both parts; at least one image of a class
    with two or more images is held out when ``fraction`` > 0, and at least one of every class is
    kept (a class of one image is never held out), so a class never vanishes from the kept part.
    """
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        if fraction > 0 and count == 0 and len(members) >= 2:
            count = 1
        count = min(count, len(members) - 1)  # keep at least one image of the class
        held.append(members[:count])
        kept.append(members[count:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


RAISE_LIMIT = "--set data.memory_limit_mb=N; --memory-limit-mb N for cnnlab data stats and data show"


def check_memory_limit(spec: str, count: int, channels: int, size: int, config: DataConfig,
                       smaller: str = "a smaller image_size", copied: int = 0) -> None:
    """Refuse a source that is always held in memory when its uint8 tensors would exceed ``memory_limit_mb``.

    ``channels`` is the source's own: its images are resized with them. Two moments hold the most. While the
    source is split, ``copied`` of its ``count`` images (those the splits are copied out of: all of the digits,
    Fashion-MNIST's and CIFAR's training sets) are held twice, as resized and as their splits. Converted to
    ``config.channels`` afterwards (:func:`load_source`), the converted copy is made while the resized images
    are still held, so that peak is both. Estimated before decoding or resizing, in uint8 bytes.
    ``smaller`` is the first remedy the message offers.
    """
    delivered = config.channels or channels
    splitting = (count + copied) * channels  # image-channels held while the splits are copied out
    converting = count * (channels + delivered) if delivered != channels else 0
    need = max(splitting, converting) * size * size
    if need > config.memory_limit_mb * 2**20:
        if converting >= splitting:
            what = (f"uint8 tensors: {count:,} images are resized with their {counted(channels, 'channel')}, then "
                    f"converted to {counted(delivered, 'channel')} while still held, {count:,} x "
                    f"{channels + delivered} channels")
        elif copied:
            what = (f"uint8 tensors: {count:,} images x {counted(channels, 'channel')}, and the copies the splits take "
                    f"of {copied:,} of them while those are held, {count + copied:,} x {counted(channels, 'channel')}")
        else:
            what = f"one uint8 tensor: {count:,} images x {counted(channels, 'channel')}"
        raise CnnlabError(
            f"{spec} is held in memory as {what} x {size}x{size} pixels = {mib_over_limit(need)} at the peak, "
            f"above data.memory_limit_mb={config.memory_limit_mb}. Use {smaller}, or raise data.memory_limit_mb "
            f"if the machine has the memory ({RAISE_LIMIT})."
        )


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn)

DIGITS_SPLIT = (0.70, 0.15, 0.15)  # train / val / test shares of the 1,797 images
# The seed of the held-out test split of digits and of synthetic data: the same images at every data.seed, so
# that runs at different seeds are scored on one test set, and a test image is never one that a run at another
# seed trained on (a transfer ladder's seeds against a source trained on the same data). data.seed draws the rest.
TEST_SPLIT_SEED = 0
# In the two sources' fingerprints (the statistics cache's key): their training splits at data.seed other than 0
# held other images while the test split followed the seed, and statistics cached then must not be read.
TEST_SPLIT_MARK = "test split fixed"


DIGITS_SIDE = 8  # pixels: the digits are 8x8, each pixel 0..16
DIGITS_MAX = 16


def _digits_table() -> Optional[np.ndarray]:
    """scikit-learn's own file of the digits (sklearn/datasets/data/digits.csv.gz), read without importing
    scikit-learn, which imports scipy (1.3 s of a training process's start): a (1797, 65) table, one row per
    image, its 64 pixels row by row and then its digit, as ``load_digits`` reads it. None where the file is not
    there or holds another layout; the caller then asks ``load_digits``."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    table = np.loadtxt(path, delimiter=",")
    return table if table.ndim == 2 and table.shape[1] == DIGITS_SIDE**2 + 1 else None


@functools.cache
def _digits_8x8() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (1797, 1, 8, 8) uint8 images 0..255 and their (1797,) labels, read once."""
    table = _digits_table()
    if table is not None:
        pixels, target = table[:, :-1].reshape(-1, DIGITS_SIDE, DIGITS_SIDE), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.images, bunch.target
    # (1797, 8, 8) floats 0..16 -> uint8 0..255, (N, 1, 8, 8)
    images = torch.from_numpy(pixels).mul(255 / DIGITS_MAX).round().to(torch.uint8).unsqueeze(1)
    return images, torch.from_numpy(target).long()


DIGITS_KEPT_BYTES = 16 * 2**20  # the most of resized digits kept for the next load (32x32: 1.8 MB, 96x96: 16 MB)
_digits_kept: dict[int, torch.Tensor] = {}  # side -> the digits resized to it (one side at a time)


def _digits_at(size: int) -> torch.Tensor:
    """The digits resized to (1797, 1, size, size). Kept for the next load at that side when small: an
    experiment loads its data again for each of its runs and checks (19 loads in a six-run one); a large
    side is resized again rather than held for the rest of the process. The splits are subsets, copies: no
    caller gets this tensor itself."""
    if size in _digits_kept:
        return _digits_kept[size]
    images = resize_square(_digits_8x8()[0], size)
    _digits_kept.clear()
    if images.numel() * images.element_size() <= DIGITS_KEPT_BYTES:
        _digits_kept[size] = images
    return images


def _load_digits(config: DataConfig) -> DataSet:
    size = config.image_size or 32
    labels = _digits_8x8()[1]
    check_memory_limit("digits", len(labels), 1, size, config, copied=len(labels))
    images = _digits_at(size)
    everything = Split(labels=labels, images=images)
    rest, test = stratified_split(labels, DIGITS_SPLIT[2], TEST_SPLIT_SEED)
    train, val = stratified_split(labels[rest], DIGITS_SPLIT[1] / (1 - DIGITS_SPLIT[2]), config.seed + 1)
    # each split one copy out of the whole (positions in it): no copy of the train-and-val rest in between
    return DataSet(
        spec="digits", classes=[str(d) for d in range(10)], channels=1, image_size=size,
        train=everything.subset(rest[train]), val=everything.subset(rest[val]), test=everything.subset(test),
        hflip_safe=False,
        fingerprint=_fingerprint("digits", size, config.seed, TEST_SPLIT_MARK),
    )


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_SHAPE = (28, 28)  # pixels (height, width) of one Fashion-MNIST image
IDX_MAGIC = {0x0801: 1, 0x0803: 3}  # idx type codes for unsigned bytes: labels (1 dim), images (3 dims)


def data_dirs(name: str, data_dir: Optional[str] = None, system_dir: Optional[Path] = None) -> list[Path]:
    """The folders searched for a named data set's files, in order.

    ``data_dir`` (data.data_dir, --data-dir) alone when given; else $CNNLAB_DATA/NAME, the cache's
    NAME folder (where downloads go) and ``system_dir``, where a system package installs the data.
    """
    if data_dir:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get("CNNLAB_DATA"):
        dirs.append(Path(os.environ["CNNLAB_DATA"]).expanduser() / name)
    dirs.append(cache_root() / name)
    if system_dir is not None:
        dirs.append(system_dir)
    return dirs


def fashion_mnist_dirs(data_dir: Optional[str] = None) -> list[Path]:
    """The folders searched for Fashion-MNIST's idx files, in order."""
    return data_dirs("fashion-mnist", data_dir, FASHION_SYSTEM_DIR)


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    """The idx file ``stem`` in ``folder``: unpacked, else packed (``stem.gz``); None when neither is there.

    Where both lie side by side the unpacked one is read, whichever is newer: torchvision's downloader
    leaves the two together (and reads the unpacked one), a person who unpacked a file did so to read it,
    and it is read without decompressing it again on every load. Modification times would choose
    differently after a plain copy, which resets them. :func:`_packed_beside` lets the loader say so.
    """
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _packed_beside(path: Path) -> bool:
    """True for an unpacked idx file with its ``.gz`` beside it (:func:`_idx_file` chose the unpacked one)."""
    return path.suffix != ".gz" and path.with_name(path.name + ".gz").is_file()


_IDX_CACHE: dict[tuple, torch.Tensor] = {}  # read_idx's files, decoded once per process
IDX_CACHE_FILES = 8  # Fashion-MNIST has 4; the cache is emptied when full


def read_idx(path: Path, expected_count: int, item_shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Read one idx file (gzip or raw): header, item count, item shape and size checked; a uint8 tensor.

    ``item_shape`` is the shape of one item: () for labels, (28, 28) for Fashion-MNIST's images, so
    a labels file saved under an images file's name is refused with a message, not reshaped.

    A file read before in this process (same path, size and modification time) is not decompressed
    again (1.5 s for Fashion-MNIST): experiments and searches load the same files for every run. The
    caller gets its own copy.
    """
    try:
        stat = path.stat()
        key: Optional[tuple] = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected_count, tuple(item_shape))
    except OSError:
        key = None  # _read_idx names the problem
    if key is not None and key in _IDX_CACHE:
        return _IDX_CACHE[key].clone()
    tensor = _read_idx(path, expected_count, item_shape)
    if key is not None:
        if len(_IDX_CACHE) >= IDX_CACHE_FILES:
            _IDX_CACHE.clear()
        _IDX_CACHE[key] = tensor
    return tensor.clone()


def _read_idx(path: Path, expected_count: int, item_shape: tuple[int, ...]) -> torch.Tensor:
    """read_idx's reading and checks, without the cache."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise CnnlabError(
            f"Cannot read '{display_name(str(path))}': {display_name(str(err))}. The file is truncated or corrupt. "
            f"{_idx_advice(path)}"
        ) from None
    problem = None
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    ndim = IDX_MAGIC.get(magic)
    header = 4 + 4 * (ndim or 0)
    if len(data) < 8:
        problem = f"only {len(data)} bytes"
    elif ndim is None:
        problem = f"its header 0x{magic:08x} is not an idx file of bytes"
    elif len(data) < header:
        problem = f"only {len(data)} bytes, shorter than its {header}-byte header"
    else:
        dims = struct.unpack(f">{ndim}I", data[4:header])  # (count, *item shape)
        if tuple(dims[1:]) != tuple(item_shape):
            problem = f"it holds {_idx_items(dims[1:])} where {_idx_items(item_shape)} are expected"
        elif dims[0] != expected_count:
            problem = f"it holds {dims[0]} items where Fashion-MNIST has {expected_count}"
        elif len(data) != header + math.prod(dims):
            problem = f"it has {len(data)} bytes where its header promises {header + math.prod(dims)}"
    if problem:
        raise CnnlabError(
            f"'{display_name(str(path))}' is not a valid Fashion-MNIST file: {problem}. {_idx_advice(path)}"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _idx_advice(path: Path) -> str:
    """What to do about a damaged idx file, by where it lies. The system package's files come back with a
    reinstall (a plain apt-get install does nothing for an installed package); a file elsewhere is replaced
    by hand: cnnlab downloads only when no folder it searches has the files, never into --data-dir. An unpacked
    file with its .gz beside it (an unpacking cut short leaves one) needs only deleting: the .gz is then read."""
    if _packed_beside(path):
        return (f"Delete it: the packed copy beside it, '{display_name(path.name + '.gz')}', is then read "
                "(cnnlab reads the unpacked file where both lie side by side).")
    if FASHION_SYSTEM_DIR in Path(os.path.abspath(path)).parents:
        return "Reinstall the package that installed it: apt-get install --reinstall dataset-fashion-mnist."
    return (f"Delete it and put the original file there: apt-get install dataset-fashion-mnist installs the four files "
            f"in {FASHION_SYSTEM_DIR}, and torchvision.datasets.FashionMNIST(FOLDER, download=True) downloads them.")


def _idx_items(item_shape) -> str:
    return "labels (one number per item)" if not item_shape else "images of " + "x".join(map(str, item_shape)) + " pixels"


# Where torchvision.datasets.FashionMNIST(root, download=True) puts the idx files under its root
TORCHVISION_FASHION_DIR = Path("FashionMNIST") / "raw"


def locate_fashion_mnist(data_dir: Optional[str] = None) -> Optional[Path]:
    """The first of ``data_dir`` or the usual places that holds Fashion-MNIST's four idx files, itself or in
    torchvision's layout below it (FOLDER/FashionMNIST/raw, where torchvision's downloader puts them, as
    the CIFAR sets are found in torchvision's folders too); None, never a download."""
    for folder in fashion_mnist_dirs(data_dir):
        for candidate in (folder, folder / TORCHVISION_FASHION_DIR):
            if all(_idx_file(candidate, stem) for files in FASHION_FILES.values() for stem in files[:2]):
                return candidate
    return None


def find_fashion_mnist(config: DataConfig) -> Path:
    """The folder holding Fashion-MNIST's four idx files: config.data_dir, the usual places, or a download."""
    found = locate_fashion_mnist(config.data_dir)
    if found is not None:
        return found
    searched = fashion_mnist_dirs(config.data_dir)
    if config.data_dir:
        given = searched[0]
        if not given.is_dir():
            state = "is a file" if given.exists() else "does not exist"
            raise CnnlabError(
                f"data.data_dir='{display_name(str(given))}' (--data-dir) {state}; for Fashion-MNIST it must be the "
                "folder holding its four idx files (train-images-idx3-ubyte.gz, ...). Name that folder, or leave it "
                "out to use the usual places."
            )
        stems = [stem for files in FASHION_FILES.values() for stem in files[:2]]

        def lacking(folder: Path) -> str:
            return ", ".join(stem + ".gz" for stem in stems if not _idx_file(folder, stem))

        below = given / TORCHVISION_FASHION_DIR
        if not any(_idx_file(below, stem) for stem in stems):
            where = (f"lacks Fashion-MNIST's files {lacking(given)} (nor does its {TORCHVISION_FASHION_DIR}, "
                     "torchvision's folder, hold any)")
        elif not any(_idx_file(given, stem) for stem in stems):  # only torchvision's folder holds some
            where = (f"holds Fashion-MNIST's files in {TORCHVISION_FASHION_DIR}, torchvision's folder, and that "
                     f"lacks {lacking(below)}")
        else:  # some in each: the four must lie in one of them
            where = (f"lacks Fashion-MNIST's files {lacking(given)}, and its {TORCHVISION_FASHION_DIR}, "
                     f"torchvision's folder, lacks {lacking(below)}: the four must lie in one folder")
        raise CnnlabError(
            f"data.data_dir='{display_name(str(given))}' (--data-dir) {where}. Point it at the folder holding the "
            "four idx files, or leave it out to use the usual places."
        )
    target = cache_root() / "fashion-mnist"
    try:
        _download_fashion(target)
        return target
    except Exception as err:  # any download failure: no network, proxy, partial file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise CnnlabError(
        "Fashion-MNIST was not found in " + ", ".join(str(d) for d in searched) + f" and the download failed ({reason}). "
        "Get it one of these ways: `apt-get install dataset-fashion-mnist` (installs to /usr/share/datasets/fashion-mnist); "
        "put the four idx .gz files in a folder and name it with --data-dir FOLDER (data.data_dir in a config); "
        "or set CNNLAB_DATA=DIR and put them in DIR/fashion-mnist (read by every command, `cnnlab experiment` "
        "too, which takes no --data-dir); or run once with internet access to download it."
    )


def _download_fashion(target: Path) -> None:
    """torchvision's downloader, then the four .gz files moved into ``target``."""
    from torchvision.datasets import FashionMNIST

    staging = target.parent / ".fashion-mnist-download"
    try:
        FashionMNIST(str(staging), train=True, download=True)
        raw = staging / "FashionMNIST" / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for files in FASHION_FILES.values():
            for stem in files[:2]:
                os.replace(raw / (stem + ".gz"), target / (stem + ".gz"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed or partial download leaves nothing behind


def _load_fashion(config: DataConfig) -> DataSet:
    folder = find_fashion_mnist(config)
    size = config.image_size or 28
    total = sum(count for _, _, count in FASHION_FILES.values())
    check_memory_limit("fashion-mnist", total, 1, size, config, copied=FASHION_FILES["train"][2])
    parts, identity, unpacked = {}, [], []
    for split_name, (image_stem, label_stem, count) in FASHION_FILES.items():
        image_path, label_path = _idx_file(folder, image_stem), _idx_file(folder, label_stem)
        unpacked += [path.name for path in (image_path, label_path) if _packed_beside(path)]
        images = read_idx(image_path, count, FASHION_SHAPE).unsqueeze(1)  # (N, 1, 28, 28)
        labels = read_idx(label_path, count).long()  # (N,)
        if int(labels.max()) >= len(FASHION_CLASSES):
            raise CnnlabError(f"'{display_name(str(label_path))}' has label {int(labels.max())}; "
                              f"Fashion-MNIST labels are 0..9. The file is corrupt. {_idx_advice(label_path)}")
        parts[split_name] = Split(labels=labels, images=resize_square(images, size))
        identity += _file_identity([image_path, label_path])
    train, val = _hold_out(parts["train"], config)
    notices = [f"Fashion-MNIST from {display_name(str(folder))}"]
    if unpacked:  # one line for all of them: which copy was read, and how to read the other
        notices.append(f"read the unpacked {', '.join(unpacked)}, not the .gz beside "
                       f"{'it' if len(unpacked) == 1 else 'each'} (the same data, without decompressing it); "
                       "delete the unpacked file to read the .gz instead")
    return DataSet(
        spec="fashion-mnist", classes=list(FASHION_CLASSES), channels=1, image_size=size,
        train=train, val=val, test=parts["test"],
        fingerprint=_fingerprint("fashion-mnist", size, config.seed, config.val_fraction, identity),
        notices=notices, val_held_out=True,
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100 (the archives are found, read and checked by cnnlab.data.cifar)

def _load_cifar(config: DataConfig, kind: str, option: str) -> DataSet:
    """``cifar10``, ``cifar100`` or ``cifar100:coarse``: RGB 32x32 images held in memory."""
    which, label = cifar.resolve_spec(kind, option, config.spec)
    given = Path(config.data_dir).expanduser() if config.data_dir else None
    data = cifar.read_source(which, label, data_dirs(which.spec, config.data_dir), given)
    size = config.image_size or cifar.IMAGE_SHAPE[-1]
    channels = cifar.IMAGE_SHAPE[0]
    check_memory_limit(data.spec, len(data.train[1]) + len(data.test[1]), channels, size, config,
                       copied=len(data.train[1]))

    def split(images, labels) -> Split:  # numpy (N, 3, 32, 32) uint8 and (N,) int64, shared with the tensors
        return Split(labels=torch.from_numpy(labels), images=resize_square(torch.from_numpy(images), size))

    train, val = _hold_out(split(*data.train), config)
    return DataSet(
        spec=data.spec, classes=data.classes, channels=channels, image_size=size, train=train, val=val,
        test=split(*data.test),
        fingerprint=_fingerprint(data.spec, size, config.seed, config.val_fraction, _file_identity(data.files)),
        notices=data.notices, val_held_out=True,
    )


def _hold_out(split: Split, config: DataConfig) -> tuple[Split, Split]:
    """Seeded, per-class hold-out of ``val_fraction`` of ``split`` as the validation split."""
    if len(split) == 0:
        raise CnnlabError("The training split is empty, so no validation images can be held out of it. "
                          "Check the data source.")
    kept, held = stratified_split(split.labels, config.val_fraction, config.seed)
    if len(held) == 0:
        raise CnnlabError(
            f"No validation images: every class has a single training image, and holding it out "
            f"(val_fraction={config.val_fraction}) would leave the class without training images. Validation "
            "needs at least 2 images per class, or a separate val folder (PATH/train + PATH/val) or val rows in the CSV."
        )
    return split.subset(kept), split.subset(held)


# ---------------------------------------------------------------------------------------------
# image files: folder:PATH and csv:FILE

VAL_FOLDER_NAMES = ("val", "valid", "validation")
SPLIT_FOLDER_NAMES = ("train", *VAL_FOLDER_NAMES, "test")  # the folders of the split layout
STATS_CACHE_PREFIX = ".cnnlab-stats-"  # statistics cached beside the data (cnnlab.data.stats): not data
FOLDER_DEFAULT_SIZE = 224  # pixels: the side used when a folder's images differ in size


@dataclass
class _Item:
    path: Path
    label: int
    size: tuple[int, int] = (0, 0)  # (width, height)
    mode: str = ""


def _class_dirs(root: Path, skipped: list, required: bool = True) -> list[Path]:
    """The class folders of ``root``; a folder without one is refused where ``required`` (the training folder),
    and has none (an empty list) otherwise: an empty val or test folder, which falls back as one without
    images does."""
    if not root.exists():  # a typo, or data that moved (a run's config trained again names where it was)
        raise CnnlabError(f"'{display_name(str(root))}' does not exist. folder:PATH expects PATH/<class>/<image> "
                          "(or PATH/train and PATH/val): check the path, or name where the data is now with --data.")
    if not root.is_dir():
        raise CnnlabError(f"'{display_name(str(root))}' is not a folder. folder:PATH expects PATH/<class>/<image> "
                          "(or PATH/train and PATH/val).")
    dirs = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if entry.name.startswith("."):
                skipped.append((str(entry), "hidden folder, not read as a class"))
            else:
                dirs.append(entry)
        elif entry.is_file():
            if not entry.name.startswith(STATS_CACHE_PREFIX):
                skipped.append((str(entry), "not inside a class folder"))
        else:
            skipped.append((str(entry), not_regular_reason(entry)))
    if not dirs and required:
        shown = display_name(str(root))
        raise CnnlabError(
            f"'{shown}' has no class folders. Arrange images as {shown}/<class name>/<image file>, one folder per class."
        )
    return dirs


def not_regular_reason(path: Path) -> str:
    """Why a path that is neither a folder nor a regular file is skipped."""
    if path.is_symlink() and not path.exists():
        return "broken link"
    return "not a regular file"


def image_files(folder: Path, skip: Callable[[Path, str], None]) -> list[Path]:
    """The image files under ``folder`` (searched recursively), sorted as their paths sort; everything else is
    passed to ``skip(path, reason)``, so that nothing is dropped without a word: a hidden folder (.git, .venv)
    as one entry, not walked, and cnnlab's own statistics cache files (:data:`STATS_CACHE_PREFIX`) left out as
    the data sources leave them out. The one walk of a class folder (training data) and of a folder given to
    ``cnnlab predict``."""
    if not os.access(folder, os.R_OK | os.X_OK):
        skip(folder, "folder cannot be read (permission denied)")
        return []
    images = []
    # Depth first, each folder's entries sorted by name: the order of sorted full paths, which the seeded
    # validation hold-out of a class folder depends on.
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            if path.is_symlink():  # a link loop would never end
                skip(path, "link to a folder, not followed")
            elif path.name.startswith("."):
                skip(path, "hidden folder, not read")
            else:
                images += image_files(path, skip)  # an unreadable one is skipped as such
        elif not path.is_file():
            skip(path, not_regular_reason(path))
        elif path.name.startswith(STATS_CACHE_PREFIX):
            continue  # written by cnnlab.data.stats beside the data
        elif path.name.startswith("."):
            skip(path, "hidden file")
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skip(path, not_image_reason(path))
        else:
            images.append(path)
    return images


def _folder_items(root: Path, classes: Optional[list[str]], skipped: list) -> tuple[list[str], list[_Item]]:
    """Items of one ImageFolder-style folder; ``classes`` from the train folder (None: this is it).

    Class names are the folders' :func:`display_name`; the items keep the real paths.
    """
    dirs = _class_dirs(root, skipped, required=classes is None)
    shown = display_name(str(root))
    names = _display_names([d.name for d in dirs], "class folder", f"'{shown}'")
    if classes is None:
        _need_classes(names, f"'{shown}'", f"Add a folder of images per class: {shown}/<class name>/<image file>.")
        classes = names
    elif unknown := sorted(set(names) - set(classes)):
        raise CnnlabError(
            f"'{shown}' has class folders the training folder lacks: {', '.join(unknown)}. "
            "Every class in val/test must also be in train."
        )
    items = []
    for folder, name in zip(dirs, names):
        before = len(skipped)
        images = image_files(folder, lambda path, reason: skipped.append((str(path), reason)))
        # An empty class folder is refused here; one whose files were all skipped (a readme, broken links) is
        # left to the check after data.classes, which may leave its class out (_need_training_images)
        if not images and classes is names and len(skipped) == before:
            raise CnnlabError(f"The class folder '{display_name(str(folder))}' holds no files. Add images or "
                              "remove the folder.")
        label = classes.index(name)
        items += [_Item(path, label) for path in images]
    return classes, items


def _unused_split_entries(root: Path, used: set[str], skipped: list) -> None:
    """Name everything beside PATH/train, PATH/val and PATH/test that is not read: a second validation
    folder, a folder such as 'testing' or 'extra', a stray file. Each is skipped as one entry, so a
    split the layout does not know is counted in the warning rather than lost."""
    val_used = next((name for name in VAL_FOLDER_NAMES if name in used), None)
    for entry in sorted(root.iterdir()):
        if entry.name in used or entry.name.startswith(STATS_CACHE_PREFIX):
            continue
        if entry.is_dir():
            if entry.name.startswith("."):
                why = "hidden folder, not read"
            elif entry.name in VAL_FOLDER_NAMES:
                why = f"a second validation folder: '{val_used}' is the one read"
            else:
                why = "not a split folder (train, val, valid, validation or test), not read"
            skipped.append((str(entry), why))
        elif entry.is_file():
            skipped.append((str(entry), "not inside a split folder"))
        else:
            skipped.append((str(entry), not_regular_reason(entry)))


def _load_folder(config: DataConfig, root: Path) -> DataSet:
    skipped: list[tuple[str, str]] = []
    with noting_skipped(skipped):
        return _load_folder_items(config, root, skipped)


def _load_folder_items(config: DataConfig, root: Path, skipped: list) -> DataSet:
    split_items: dict[str, list[_Item]] = {}
    if (root / "train").is_dir():
        classes, split_items["train"] = _folder_items(root / "train", None, skipped)
        used = {"train"}
        for name in VAL_FOLDER_NAMES:
            if (root / name).is_dir():
                _, split_items["val"] = _folder_items(root / name, classes, skipped)
                used.add(name)
                break
        if (root / "test").is_dir():
            _, split_items["test"] = _folder_items(root / "test", classes, skipped)
            used.add("test")
        _unused_split_entries(root, used, skipped)
    else:
        classes, split_items["train"] = _folder_items(root, None, skipped)
        if all(name.casefold() in SPLIT_FOLDER_NAMES for name in classes):
            # 'Train' and 'Test' (the split layout is spelt in lower case) would be read as two classes, and a
            # model trained to tell the training images from the test images
            shown = display_name(str(root))
            raise CnnlabError(
                f"The class folders of '{shown}' are {', '.join(classes)}: split names, not classes. The split "
                f"layout is {shown}/train/<class>/<image>, with val (or valid, validation) and test beside it, "
                "spelt in lower case: rename the folders so, or name one split's folder as folder:PATH."
            )
        _refuse_nested_split(root, classes)
    listed_files = {split: len(items) for split, items in split_items.items()}  # links to a file used elsewhere too
    _each_file_once(split_items, classes, skipped)
    return _from_items(config, f"folder:{root}", root, classes, split_items, skipped, listed_files=listed_files)


def _each_file_once(split_items: dict[str, list[_Item]], classes: list[str], skipped: list) -> None:
    """Use each file of a folder data set once (in place): a link to an image of another class or split, or a
    hard link to one, reaches a file already listed. The first listing counts (train, then val, then test; each
    split's classes in order, as the CSV source keeps a file's first row) and the others are skipped, saying
    where the file was first found: one in train and test would leak into the test accuracy, one in two classes
    is trained on as both."""
    first: dict[tuple[int, int], tuple[str, _Item]] = {}  # (device, inode) -> where the file was first listed
    for split, items in split_items.items():
        kept = []
        for item in items:
            try:
                status = os.stat(item.path)
            except OSError:  # gone since it was listed: the probe skips it, with its reason
                kept.append(item)
                continue
            key = (status.st_dev, status.st_ino)
            if key not in first:
                first[key] = (split, item)
                kept.append(item)
                continue
            first_split, first_item = first[key]
            differs = [f"{what} '{now}' where that has '{then}'" for what, now, then in
                       (("class", classes[item.label], classes[first_item.label]), ("split", split, first_split))
                       if now != then]
            where = f"'{display_name(str(first_item.path))}'"
            if differs:
                why = (f"the same file as {where} (a link), with {' and '.join(differs)}; used once, as there: "
                       "remove the link")
            else:
                why = f"the same file as {where} (a link); used once"
            skipped.append((str(item.path), why))
        split_items[split] = kept


CSV_HEADER_LABELS = ("label", "class", "target")  # a first row whose second column is named so is a header


def _refuse_nested_split(root: Path, classes: list[str]) -> None:
    """Refuse a class folder named as a split ('test', 'val', ...) that holds folders named like the other classes.

    PATH/cat, PATH/dog and PATH/test/{cat,dog} without PATH/train is the split layout half made: read as it
    stands, 'test' is a third class holding test images of cats and dogs, which a model would be trained on
    under the wrong label. A class really named so (CIFAR-100 has 'train') holds images, not class folders.
    """
    shown = display_name(str(root))
    for name in classes:
        if name.casefold() not in SPLIT_FOLDER_NAMES or not (root / name).is_dir():
            continue
        inner = {display_name(entry.name) for entry in (root / name).iterdir() if entry.is_dir()}
        if shared := sorted(inner & (set(classes) - {name})):
            raise CnnlabError(
                f"'{shown}/{name}' holds folders named like the classes beside it ({_first_names(shared)}): it looks "
                f"like a split folder, but '{shown}' has no train folder, so it would be read as one more class, "
                f"'{name}', holding images of all of them. For the split layout, move the class folders into "
                f"{shown}/train and spell the split folders in lower case (train, val, test); if '{name}' is a class, "
                "give its subfolders other names."
            )


def _read_csv(config: DataConfig, csv_path: Path) -> DataSet:
    """Rows ``path,label[,split]``; paths relative to the CSV; an optional header row (:data:`CSV_HEADER_LABELS`).

    Line numbers in messages are the file's own (a row whose quoted field spans lines is named by the line it
    starts on; a quote never closed is refused naming that line). A UTF-8 byte order
    mark (Excel writes one) is ignored. A file listed twice is used once; the later row is skipped.
    """
    if not csv_path.is_file():
        state = "is a folder, not a file" if csv_path.is_dir() else "does not exist"
        raise CnnlabError(f"The CSV file '{display_name(str(csv_path))}' {state}. csv:FILE expects a file of rows "
                          "'image path,label[,split]' (for a folder of class folders use folder:PATH).")
    skipped: list[tuple[str, str]] = []
    with noting_skipped(skipped):
        return _read_csv_rows(config, csv_path, skipped)


def _read_csv_rows(config: DataConfig, csv_path: Path, skipped: list) -> DataSet:
    """:func:`_read_csv`'s work; every row or file not used goes to ``skipped``."""
    rows = []  # (line, path, label name, split)
    # file (its device and inode: a hard link is the same file) -> (line, label, split, path as typed) of the row
    # that listed it first
    listed: dict[object, tuple[int, str, str, str]] = {}
    labels: set[str] = set()  # every label a well-formed row gives, its file found or not: each is a class
    # split -> files its rows name, found or not: a val or test split whose every file is missing is still said
    listed_files: dict[str, int] = {}
    shown_csv = display_name(str(csv_path))
    try:
        data = csv_path.read_bytes()
        # decoded whole, here: the decoder's error then gives the byte's offset in the file, not in a read buffer
        text = data.decode("utf-8-sig")
        records = csv_records(text, shown_csv)
    except UnicodeDecodeError as err:
        decoded = err.object  # the bytes after the byte order mark, when there is one: err.start counts in them
        line = len(re.split(rb"\r\n|\r|\n", decoded[:err.start]))  # CR-only files (old Mac CSVs) too
        raise CnnlabError(f"Cannot read the CSV file '{shown_csv}': byte 0x{decoded[err.start]:02x} on line {line:,} is "
                          "not UTF-8. Save the file as UTF-8 text (a spreadsheet's \"CSV UTF-8\").") from None
    except (OSError, csv.Error) as err:
        raise CnnlabError(f"Cannot read the CSV file '{shown_csv}': {display_name(str(err))}. It must "
                          "be UTF-8 text with comma-separated rows.") from None
    first_row = True  # the header, when there is one, is the first row that is not blank
    header = None  # the line of the header row, when there is one
    data_rows = 0  # rows that are neither blank nor the header
    for number, row in records:
        fields_ = [f.strip() for f in row]
        if not any(fields_):
            continue  # blank line
        # A first row whose path names a file is a row, whatever its label: 'cat0.png,target' is an image
        is_header = (first_row and len(fields_) >= 2 and fields_[1].lower() in CSV_HEADER_LABELS
                     and not (fields_[0] and _is_file(csv_path.parent / fields_[0])))
        # A first row that is not used may be a header under other names ('filename,category'): its reason says
        # how a header is recognised, rather than only that no file is called 'filename'
        header_names = f"{', '.join(CSV_HEADER_LABELS[:-1])} or {CSV_HEADER_LABELS[-1]}"
        hint = f"; a header row is recognised by a second column named {header_names}" if first_row else ""
        first_row = False
        if is_header:
            header = number
            continue
        data_rows += 1
        where = CsvRow(f"{csv_path.name} line {number}")
        if len(fields_) not in (2, 3) or not fields_[0] or not fields_[1]:
            skipped.append((where, "expected 'path,label' or 'path,label,split'" + hint))
            continue
        split = fields_[2].lower() if len(fields_) == 3 and fields_[2] else "train"
        if split in VAL_FOLDER_NAMES:
            split = "val"
        if split not in ("train", "val", "test"):
            skipped.append((where, f"split '{fields_[2]}' is not train, val or test" + hint))
            continue
        if "\n" in fields_[1] or "\r" in fields_[1]:  # a quote not closed on its line took the next rows in
            shown_label = display_name(fields_[1][:60]) + ("..." if len(fields_[1]) > 60 else "")
            skipped.append((where, f"its label runs over lines ('{shown_label}'): a class name holds no line break "
                                   f"(a quote not closed on line {number} takes the rows after it into the label)"))
            continue
        # labels as folder names are read: composed (NFC), so that 'café' typed on macOS is the same class
        label = unicodedata.normalize("NFC", fields_[1])
        # a first row naming no file may be a header not recognised ('filename,category'): its label is no class
        if not hint:
            labels.add(label)
        listed_files[split] = listed_files.get(split, 0) + 1
        try:
            path = (csv_path.parent / fields_[0]).resolve()
        except (OSError, ValueError, RuntimeError) as err:  # a NUL byte (ValueError), a link loop (RuntimeError)
            why = "a NUL byte in the path" if isinstance(err, ValueError) else "a link loop" if isinstance(
                err, RuntimeError) else err.strerror or str(err)
            skipped.append((where, f"no usable file '{display_name(fields_[0])}' ({why})" + hint))
            continue
        if not _is_file(path):
            skipped.append((where, f"no file '{fields_[0]}'" + hint))
            continue
        identity = _one_file(path)
        if identity in listed:
            skipped.append((where, _listed_again(fields_[0], label, split, *listed[identity])))
            continue
        listed[identity] = (number, label, split, fields_[0])
        labels.add(label)
        rows.append((number, path, label, split))
    if data_rows == 0:
        # Said as it is, rather than as "no usable training images" with nothing skipped to explain it
        held = f"holds only a header row (line {header})" if header else "holds no rows"
        raise CnnlabError(f"The CSV file '{display_name(str(csv_path))}' {held}. csv:FILE expects one row 'image "
                          "path,label[,split]' per image: add them.")
    # every label a row gives is a class, its files found or not: a class whose every file is missing is refused
    # below as any class without a training image is, rather than dropped (which shifted every later label's index)
    names = sorted(labels)
    if all(integer_text(n) is not None for n in names):
        names.sort(key=int)  # numeric labels in numeric order, so class index i is label i where possible
    index = {name: k for k, name in enumerate(names)}  # label text -> class index
    split_items: dict[str, list[_Item]] = {}
    for split in listed_files:  # a split whose files are all missing is there, empty: its fallback note says so
        split_items[split] = []
    for _, path, label, split in rows:
        split_items[split].append(_Item(path, index[label]))
    spec, shown = f"csv:{csv_path}", display_name(str(csv_path))
    if "train" not in listed_files and labels:  # rows there are, but none of them is a training row
        counts = ", ".join(f"{split} {count:,}" for split, count in listed_files.items())
        raise CnnlabError(f"'{shown}' has no training rows (its rows: {counts}): a row's third column names its "
                          "split, and a row without one is a training row. Add training rows.")
    if not split_items.get("train"):
        _no_images(spec, skipped)
    classes = _display_names(names, "label", f"'{shown}'")  # what tables, plots and reports show
    # the skipped rows may be where the other labels were: noting_skipped adds them to the message
    _need_classes(classes, f"'{shown}'", "Add rows for at least two labels (path,label).")
    trained = {label for _, _, label, split in rows if split == "train"}
    if untrained := sorted({label for _, _, label, _ in rows} - trained, key=index.get):
        raise CnnlabError(
            f"'{shown}' has labels with val or test rows but no training row: "
            f"{', '.join(classes[index[label]] for label in untrained)}. Every label in val/test must also have "
            "training images."
        )
    # The rows themselves (file, label, split) key the statistics cache, with the files' identities.
    listing = [(str(path), label, split) for _, path, label, split in rows]
    return _from_items(config, spec, csv_path.parent, classes, split_items, skipped, listing, listed_files)


_SPACE_AFTER_QUOTE = re.compile(r'"[ \t]+(?=,|\r\n|\n|\r|$)')  # a closing quote, spaces, then the field's end


def csv_records(text: str, shown_csv: str) -> list[tuple[int, list[str]]]:
    """(the physical line a record starts on, its fields) of each CSV record, read as Python's csv module reads
    them (a space after a closing quote is kept in the field, which the callers strip). A record that runs over
    several lines inside quotes is read again strictly: a quote not closed on its line takes the lines after it
    into one field, up to the next quote or the file's end. Where the quoting shows it (another row's quote
    closes it mid-field, or none does) it is refused naming the line it starts on; a field that ends in a quote
    is valid CSV, and csv:FILE skips a row whose label runs over lines, naming them."""
    lines = io.StringIO(text, newline="").readlines()  # split as the reader splits them: \n, \r\n or \r
    reader = csv.reader(io.StringIO(text, newline=""))
    records, start = [], 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:  # a field past csv's size limit: a quote never closed, as a rule
            raise CnnlabError(f"Cannot read the CSV file '{shown_csv}': the record that starts on line {start:,} "
                              f"{_csv_problem(err)}.") from None
        end = reader.line_num  # the physical line the record ended on
        if end > start or end == len(lines):  # over several lines, or the last: its quotes are checked
            # spaces after a closing quote are let pass, as the lenient reader lets them (the fields are stripped)
            raw = _SPACE_AFTER_QUOTE.sub('"', "".join(lines[start - 1:end]))
            try:
                list(csv.reader(io.StringIO(raw, newline=""), strict=True))
            except csv.Error as err:
                if end > start or "unexpected end of data" in str(err):
                    raise CnnlabError(
                        f"Cannot read the CSV file '{shown_csv}': the record that starts on line {start:,} "
                        + ("opens a quote that is never closed (the rest of the file would be read into one "
                           "field)" if "unexpected end of data" in str(err) else
                           f"runs on to line {end:,} inside quotes, its quoting irregular ({err}): a quote not "
                           "closed on its line takes the lines after it into one field")
                        + ". Close the quote on its line, or quote the field whole (\"a \"\"quoted\"\" name\").") from None
        records.append((start, row))
        start = end + 1
    return records


def _csv_problem(err: Exception) -> str:
    """What csv's error says of a record, in words."""
    text = str(err)
    if "field larger than field limit" in text:
        return (f"holds a field of more than {csv.field_size_limit():,} characters (a quote never closed takes "
                "the rest of the file into one field): close the quote, or shorten the field")
    return f"cannot be read ({text})"


def _one_file(path: Path) -> object:
    """The file ``path`` names, as the system tells files apart (device and inode: a hard link is the same file);
    the path itself where it cannot be asked."""
    try:
        status = os.stat(path)
    except OSError:
        return path
    return (status.st_dev, status.st_ino)


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the system cannot look up (too long: ENAMETOOLONG) names none."""
    try:
        return path.is_file()
    except OSError:
        return False


def _listed_again(path: str, label: str, split: str, first: int, first_label: str, first_split: str,
                  first_path: str = "") -> str:
    """Why a CSV row naming a file listed before is skipped. A row that gives the file another label or split
    says so: the listing contradicts itself (a file both train and test leaks into the test accuracy), and only
    the first row's label and split are used. A file first listed by another name (a link to it, a hard link)
    is named as that row named it."""
    again = (f"'{path}' listed again (first at line {first})" if not first_path or first_path == path else
             f"'{path}' names the file line {first} lists as '{first_path}'")
    differs = [f"{what} '{now}' where line {first} has '{then}'"
               for what, now, then in (("label", label, first_label), ("split", split, first_split)) if now != then]
    if not differs:
        return f"{again}; used once"
    return f"{again} with {' and '.join(differs)}; line {first}'s label and split are used: fix the listing"


def _no_images(spec: str, skipped: list) -> None:
    reasons = "; ".join(f"{f}: {why}" for f, why in _display_skipped(skipped[:FIRST_FEW]))
    error = CnnlabError(
        f"{display_name(spec)} gave no usable training images" + (f" ({len(skipped)} skipped: {reasons})" if skipped else "")
        + ". Check the paths and the file format."
    )
    error.names_skipped = True  # noting_skipped adds nothing: the skipped files are the message
    raise error


@contextmanager
def noting_skipped(skipped: list[tuple[str, str]]):
    """Add the files and rows skipped so far to a CnnlabError raised inside: when most rows of a CSV are
    bad, "no validation images" or "only one class" is a symptom, and the skipped rows are the cause."""
    try:
        yield
    except CnnlabError as err:
        if not skipped or getattr(err, "names_skipped", False):
            raise
        noted = CnnlabError(f"{err} Note: {skipped_text(_display_skipped(skipped))}; what is missing may be among "
                            "them.")
        noted.names_skipped = True
        raise noted from None


def _from_items(config, spec, root: Path, classes, split_items, skipped, listing=(), listed_files=None) -> DataSet:
    """Probe every file, decide memory vs files, decode or keep paths, split, fingerprint.

    ``listing`` is anything else that defines the data (a CSV's rows) and goes into the fingerprint.
    ``listed_files`` counts the files each split's listing named, where some were skipped before (a CSV's rows
    naming missing files); by default, the items given.
    """
    # before any file is skipped: says why the split may be empty
    listed_test = (listed_files or {}).get("test", len(split_items.get("test", ())))
    for name, items in split_items.items():
        good = []
        for item in items:
            try:
                item.size, item.mode = probe_image(item.path)
            except UnreadableImage as err:  # decodes, but its pixels have no 8-bit reading, or it has too many
                skipped.append((str(item.path), err.reason))
                continue
            except Exception as err:  # PIL raises many types for broken files; each one is reported
                skipped.append((str(item.path), f"cannot be decoded ({type(err).__name__}: {err})"))
                continue
            good.append(item)
        split_items[name] = good
    if not split_items["train"]:
        _no_images(spec, skipped)
    everything = [item for items in split_items.values() for item in items]
    native = 1 if all(item.mode in GRAY_MODES for item in everything) else 3
    channels = config.channels or native
    notices = []
    if channels != native:
        notices.append(f"images converted from {native} to {counted(channels, 'channel')}")
    shapes = {item.size for item in everything}
    if config.image_size:
        size = config.image_size
    elif len(shapes) == 1:
        size = min(next(iter(shapes)))
    else:
        size = FOLDER_DEFAULT_SIZE
        if config.buckets:  # each image keeps (about) its aspect ratio: no square crop, which the note would claim
            notices.append(f"images have {len(shapes)} different sizes: each is scaled to cover the nearest of the "
                           f"buckets {config.buckets} (about {size}x{size} pixels each) and centre-cropped to it "
                           "(set image_size to choose the size)")
        else:
            notices.append(f"images have {len(shapes)} different sizes: short side resized to {size} and "
                           "centre-cropped (set image_size to choose, or buckets to keep aspect ratios)")
    total = len(everything)
    # Bytes of the decoded images as uint8 tensors (N, C, H, W), and, without a val folder, of the training images
    # once more: the validation split is held out of them as copies while they are held (_hold_out)
    per_image = channels * size * size
    copied = 0 if split_items.get("val") else len(split_items["train"])
    need = (total + copied) * per_image
    fits = need <= config.memory_limit_mb * 2**20
    if config.in_memory and not fits:
        # Asked for, but past the limit that guards the machine's memory: refused before anything is decoded,
        # as the sources always held in memory are (check_memory_limit), rather than decoded anyway
        again = (f", and its {copied:,} training images once more while the validation split is held out of them"
                 if copied else "")
        raise CnnlabError(
            f"data.in_memory=true holds {display_name(spec)}'s images decoded in uint8 tensors: {total:,} images x "
            f"{counted(channels, 'channel')} x {size}x{size} pixels{again} = {mib_over_limit(need)} at the peak, above "
            f"data.memory_limit_mb={config.memory_limit_mb}. Leave data.in_memory unset (or false) to read the images "
            f"from their files per batch, use a smaller data.image_size, or raise data.memory_limit_mb to "
            f"{-(-need // 2**20)} if the machine has the memory ({RAISE_LIMIT})."
        )
    in_memory = config.in_memory if config.in_memory is not None else (fits and not config.buckets)
    splits = {}
    for name, items in split_items.items():
        labels = torch.tensor([item.label for item in items], dtype=torch.long)
        if in_memory:
            # each image decoded into the split's one tensor: the split is held once, as the limit counts it
            images, kept = torch.empty(len(items), channels, size, size, dtype=torch.uint8), []
            for index, item in enumerate(items):
                try:
                    image = read_image(item.path, channels)
                except CnnlabError as err:
                    skipped.append((str(item.path), str(err)))
                    continue
                images[len(kept)] = resize_square(image.unsqueeze(0), size)[0]
                kept.append(index)
            if len(kept) < len(items):  # the skipped files' rows are not kept (nor their memory, by a copy)
                images = images[: len(kept)].clone()
            splits[name] = Split(labels=labels[kept], images=images)
        else:
            splits[name] = Split(labels=labels, paths=[i.path for i in items], sizes=[i.size for i in items])
    train = splits["train"]
    if len(train) == 0:
        _no_images(spec, skipped)
    val = splits.get("val")
    val_held_out = val is None or len(val) == 0
    if val_held_out:
        # a val folder with no usable image is said, or the hold-out would read as if it had none
        empty_val = "" if val is None else f"; {spec}'s val split holds no image, so it is not used"
        train, val = _hold_out(train, config)
        notices.append(f"validation: {len(val)} training images held out (val_fraction={config.val_fraction}, "
                       f"seed={config.seed}){empty_val}")
    test = _drop_empty_test(splits.get("test"), notices, spec,
                            "it holds no image file" if listed_test == 0 else
                            "its only file was skipped" if listed_test == 1 else
                            f"all {listed_test:,} of its files were skipped")
    writable = os.access(root, os.W_OK)
    return DataSet(
        spec=display_name(spec), classes=list(classes), channels=channels, image_size=size,
        train=train, val=val, test=test, skipped=_display_skipped(skipped), notices=notices,
        fingerprint=_fingerprint(spec, size, channels, config.seed, config.val_fraction, in_memory, list(classes),
                                 list(listing), _file_identity(i.path for i in everything)),
        cache_dir=root if writable else None, val_held_out=val_held_out,
    )


# ---------------------------------------------------------------------------------------------
# synthetic

SYNTHETIC_DEFAULTS = {"classes": 10, "train": 1000, "val": 200, "test": 200, "channels": 3}


def _parse_options(spec: str, text: str, defaults: dict) -> dict:
    """``KEY=N,...`` read over ``defaults``. Spaces around the commas and the = are ignored, as everywhere in a
    data spec (:func:`load_source`) and in buckets."""
    options = dict(defaults)
    given: dict[str, str] = {}  # key -> the text that set it, so a key given twice is named, not overwritten
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = (piece.strip() for piece in part.partition("="))
        number = integer_text(value)
        if not eq or key not in defaults or number is None or number < 1:
            raise CnnlabError(shorten_long_numbers(
                f"Cannot read '{display_name(part)}' in --data {display_name(spec)}: write KEY=N with N a positive "
                f"whole number and KEY one of {', '.join(defaults)} (e.g. synthetic:classes=4,train=500)."
            ))
        if key in given:
            raise CnnlabError(
                f"--data {display_name(spec)}:{display_name(text)} gives {key} twice "
                f"({display_name(given[key])} and {display_name(value)}): which one is meant is not clear. "
                f"Give {key} once."
            )
        given[key] = value
        options[key] = number
    return options


def synthetic_images(count: int, classes: int, size: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images a small CNN can learn but not from colour alone.

    Class k has a colour (hue spread around the circle) and stripes at angle k*180/classes degrees;
    each image gets a random stripe phase and frequency, a random brightness and pixel noise.
    Returns uint8 (count, channels, size, size) and int64 labels (count,), balanced over classes.
    """
    generator = torch.Generator().manual_seed(seed)
    # Every image's settings first, (N,) each, then the pixels chunk by chunk: float tensors of every image at
    # once would hold about 14 times the uint8 result, which data.memory_limit_mb checks.
    labels = torch.arange(count) % classes
    labels = labels[torch.randperm(count, generator=generator)]
    angle = labels.float() * math.pi / classes  # (N,)
    hue = labels.float() * 2 * math.pi / classes
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")  # (S, S)
    frequency = 2 * math.pi / (size / 4) * (0.8 + 0.4 * torch.rand(count, generator=generator))  # radians/px
    phase = 2 * math.pi * torch.rand(count, generator=generator)
    colour = 0.5 + 0.4 * torch.stack([torch.cos(hue + shift) for shift in (0, 2.094, 4.189)], dim=1)  # (N, 3)
    colour = colour[:, :channels] if channels == 3 else colour.mean(1, keepdim=True)
    brightness = 0.7 + 0.3 * torch.rand(count, 1, 1, 1, generator=generator)
    images = torch.empty(count, channels, size, size, dtype=torch.uint8)
    for start, stop in _noise_chunks(count, channels * size * size):
        part = slice(start, stop)
        along = xs * torch.cos(angle[part])[:, None, None] + ys * torch.sin(angle[part])[:, None, None]  # (n, S, S)
        stripes = 0.5 + 0.5 * torch.sin(frequency[part, None, None] * along + phase[part, None, None])
        chunk = brightness[part] * colour[part, :, None, None] * (0.35 + 0.65 * stripes[:, None])  # (n, C, S, S)
        chunk = chunk + 0.08 * torch.randn(chunk.shape, generator=generator)
        images[part] = chunk.clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, labels.long()


SYNTHETIC_CHUNK_VALUES = 2**22  # float values per chunk of generated images (16 MiB a tensor)


def _noise_chunks(count: int, per_image: int) -> list[tuple[int, int]]:
    """(start, stop) image ranges of about :data:`SYNTHETIC_CHUNK_VALUES` values each. torch draws normal
    numbers 16 at a time, and a draw of fewer than 16 another way: with every chunk a multiple of 16 values
    long and none under 16 (a short last one joins the one before), the chunks' noise is the noise that one
    draw for all the images gives, so the images do not depend on the chunk size."""
    step = max(16, SYNTHETIC_CHUNK_VALUES // per_image // 16 * 16)  # images a chunk: a multiple of 16
    bounds = list(range(0, count, step)) + [count]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) * per_image < 16:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def _load_synthetic(config: DataConfig, options_text: str) -> DataSet:
    options = _parse_options("synthetic", options_text, SYNTHETIC_DEFAULTS)
    if options["channels"] not in (1, 3):
        raise CnnlabError(f"synthetic:channels={options['channels']} must be 1 or 3.")
    if options["classes"] < MIN_CLASSES:
        raise CnnlabError(f"synthetic:classes={options['classes']} is one class; classification needs at least "
                          f"{MIN_CLASSES} classes (with one, every prediction is right). "
                          f"Use classes={MIN_CLASSES} or more.")
    if options["train"] < options["classes"]:
        # every class needs a training image; checked before anything is generated, as a huge class count
        # would otherwise spend minutes on images of classes that could never be learnt
        raise CnnlabError(
            f"synthetic:classes={options['classes']} with train={options['train']}: fewer training images than "
            f"classes leaves {counted(options['classes'] - options['train'], 'class', 'classes')} without a "
            f"training image. Raise train to at least {options['classes']} (train={SYNTHETIC_DEFAULTS['train']} when not given), or "
            "lower classes."
        )
    size = config.image_size or 32
    channels = options["channels"]
    total = options["train"] + options["val"] + options["test"]
    check_memory_limit("synthetic", total, channels, size, config,
                       "fewer images (the spec's train, val and test counts) or a smaller image_size")
    splits = {}
    # Each split its own generator seed: train 3 * data.seed, val 3 * data.seed + 1, test 3 * TEST_SPLIT_SEED + 2
    # at every data.seed (the three never coincide).
    for offset, name in enumerate(("train", "val", "test")):
        seed = (TEST_SPLIT_SEED if name == "test" else config.seed) * 3 + offset
        images, labels = synthetic_images(options[name], options["classes"], size, channels, seed)
        splits[name] = Split(labels=labels, images=images)
    # The spec as it reads without spaces, so that 'classes = 3' and 'classes=3' name one data set
    written = ",".join(part.replace(" ", "") for part in options_text.split(",") if part.strip())
    return DataSet(
        spec="synthetic" + (f":{written}" if written else ""),
        classes=[f"class{k}" for k in range(options["classes"])], channels=channels, image_size=size,
        train=splits["train"], val=splits["val"], test=splits["test"],
        # Gray images have no hue (the three colour channels average to one grey for every class): a mirror turns
        # class k's stripe angle into class C - k's, another class's image. In colour the hue still names the class.
        hflip_safe=channels == 3,
        fingerprint=_fingerprint("synthetic", sorted(options.items()), size, config.seed, TEST_SPLIT_MARK),
    )


# ---------------------------------------------------------------------------------------------
# subsets for transfer learning: data.classes and data.train_per_class

FIRST_FEW_CLASSES = 12  # how many class names a message lists before it only counts


def _first_names(names: list[str], numbered: bool = False) -> str:
    """'a, b, c, ... and N more': the first :data:`FIRST_FEW_CLASSES` names (with their index when ``numbered``)."""
    shown = [f"{i}='{name}'" if numbered else name for i, name in enumerate(names)][:FIRST_FEW_CLASSES]
    more = f", ... and {len(names) - FIRST_FEW_CLASSES} more" if len(names) > FIRST_FEW_CLASSES else ""
    return ", ".join(shown) + more


def resolve_classes(wanted, classes: list[str], spec: str = "the data") -> list[int]:
    """The 0-based indices of the classes ``wanted`` (data.classes) names, ascending: the data's own order.

    The rule for each entry: a whole number (YAML ``3``, or numpy's or torch's integer) is a 0-based
    index into ``classes``; text is a class name exactly as the source shows it ("T-shirt/top", a
    folder's name, a CSV label), and text of digits that is no class's name is read as an index (so ``"3"`` is Fashion-MNIST's
    "Dress"). A name always wins: for digits and for a CSV with numeric labels, ``"3"`` is the class
    named 3. The kept classes are relabelled 0..K-1 in the order the data lists them, whatever the
    order of ``wanted``. Unknown names, indices out of range, a class named twice or fewer than
    :data:`MIN_CLASSES` classes raise CnnlabError listing the available classes.
    """
    available = f"The classes of {display_name(spec)} are {_first_names(classes, numbered=True)}."
    if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)):
        raise CnnlabError(f"data.classes={wanted!r} must be a list of class names or 0-based indices, e.g. "
                          f"[0, 1] or ['{classes[0]}', '{classes[-1]}']. {available}")
    by_name = {name: index for index, name in enumerate(classes)}
    chosen: dict[int, object] = {}  # class index -> the entry that named it
    problems = []
    last = len(classes) - 1
    # Entries that are not text may be a name YAML read unquoted: the names it reads so, once
    readings = _unquoted_readings(classes) if not all(isinstance(entry, str) for entry in wanted) else []
    for entry in wanted:
        # a name typed with its accents composed or not (display_class) is the same name
        text = unicodedata.normalize("NFC", entry.strip()) if isinstance(entry, str) else None
        if not isinstance(entry, str) and (misread := _unquoted_name(entry, classes, readings)) is not None:
            problems.append(misread)
            continue
        if whole_number(entry) is not None:  # an int, or one computed with numpy or torch (np.int64)
            index = whole_number(entry)
        elif text is not None and (entry in by_name or text in by_name):
            index = by_name[entry if entry in by_name else text]
        elif text is not None and integer_text(text) is not None:
            index = integer_text(text)
        else:
            what = "no class has that name" if isinstance(entry, str) else "it is neither a name nor a whole number"
            problems.append(f"{entry!r}: {what}")
            continue
        if not 0 <= index <= last:
            problems.append(f"{entry!r}: no class has that name, and index {index} is outside 0..{last}"
                            if isinstance(entry, str) else f"{entry!r}: index outside 0..{last}")
        elif index in chosen:
            problems.append(f"{entry!r} names class '{classes[index]}' again (already named by {chosen[index]!r})")
        else:
            chosen[index] = entry
    if problems:
        raise CnnlabError(f"data.classes cannot be used with {display_name(spec)}: {'; '.join(problems)}. {available} Give "
                          "each class once, by its name or its 0-based index.")
    if len(chosen) < MIN_CLASSES:
        raise CnnlabError(f"data.classes={list(wanted)!r} keeps {counted(len(chosen), 'class', 'classes')}; "
                          f"classification needs at least {MIN_CLASSES} (with one, every prediction is right). {available}")
    return sorted(chosen)


def _unquoted_readings(classes: list[str]) -> list[tuple[int, str, object]]:
    """(index, name, value) of each class whose name YAML, written unquoted, reads as something other than that
    text: 1.5, 1e3, true, null and 012 read as 1.5, 1000.0, True, None and the integer 12 (as config files and
    --set are read, :func:`cnnlab.config.safe_load_unique`)."""
    readings = []
    for index, name in enumerate(classes):
        try:
            value = safe_load_unique(name)
        except yaml.YAMLError:  # a name YAML cannot read unquoted ('a: b: c') is no value an entry can be
            continue
        if value != name:
            readings.append((index, name, value))
    return readings


def _unquoted_name(entry, classes: list[str], readings: list[tuple[int, str, object]]) -> Optional[str]:
    """Why the data.classes ``entry`` is refused when it is what YAML made of a class's name written unquoted
    (``readings``: :func:`_unquoted_readings`), else None. Such an entry named no class, or, as an index, another
    class than the name gives (012 picked class 12). An integer that is both a class's name and its index
    (digits' 3) means the same class either way and is kept."""
    index = whole_number(entry)
    for position, name, value in readings:
        if type(value) is not type(entry) or value != entry or index == position:
            continue
        as_index = (f", which as an index is class '{classes[index]}'" if index is not None and 0 <= index < len(classes)
                    else "")
        return (f"{entry!r} is what YAML reads the unquoted class name '{name}' as{as_index}; quote the name in the "
                f"YAML file or --set (['{name}']) to keep the class '{name}'")
    return None


def _drop_empty_test(test: Optional[Split], notices: list[str], spec: str, cause: str) -> Optional[Split]:
    """``test``, or None when it holds no image, with a notice naming the ``cause`` (why it is empty).

    A split without images is none: evaluation then says the data has no test split, which is so, instead of
    offering an empty one (no accuracy can be computed on it), and the notice says where it went.
    """
    if test is None or len(test) > 0:
        return test
    notices.append(f"{display_name(spec)}'s test split has no image ({cause}), so the data has no test split")
    return None


def _keep_classes(dataset: DataSet, kept: list[int], spec: str) -> None:
    """Filter every split to the classes ``kept`` (ascending indices) and relabel them 0..K-1, in place."""
    remap = torch.full((dataset.num_classes,), -1, dtype=torch.long)  # old label -> new label, -1: dropped
    remap[torch.tensor(kept)] = torch.arange(len(kept))
    held_out = len(dataset.val)
    for name, split in dataset.splits().items():
        positions = torch.nonzero(remap[split.labels] >= 0).flatten()
        subset = split.subset(positions)
        subset.labels = remap[subset.labels]
        setattr(dataset, name, subset)
    names = [dataset.classes[i] for i in kept]
    if len(dataset.val) == 0:
        raise CnnlabError(f"data.classes keeps {_first_names(names)}, and {display_name(spec)}'s validation split has no image of "
                          "them. Add validation images of these classes or choose other classes.")
    # the hold-out's note counted the images held out of every class: say how many of them stay
    still = (f"; validation keeps {len(dataset.val):,} of the {held_out:,} training images held out"
             if dataset.val_held_out and len(dataset.val) != held_out else "")
    dataset.notices.append(f"kept {len(kept)} of {dataset.num_classes} classes: {_first_names(names)} "
                           f"(relabelled 0..{len(kept) - 1} in this order){still}")
    dataset.test = _drop_empty_test(dataset.test, dataset.notices, spec, "none of its images is of the kept classes")
    dataset.classes = names
    dataset.fingerprint = _fingerprint(dataset.fingerprint, "classes", kept)


def reorder_classes(dataset: DataSet, order: list[int]) -> None:
    """List the classes in another order, in place: class i becomes the one at position ``order[i]`` (a permutation
    of 0..K-1), and every split's labels are renumbered to match. Evaluation lines a data set's classes up with a
    model's this way, by name, where the two list the same names in another order."""
    if sorted(order) != list(range(dataset.num_classes)):
        raise ValueError(f"order {order} is not a permutation of the {dataset.num_classes} class positions")
    remap = torch.empty(dataset.num_classes, dtype=torch.long)  # old label -> new label
    remap[torch.tensor(order)] = torch.arange(dataset.num_classes)
    for split in dataset.splits().values():
        split.labels = remap[split.labels]
    dataset.classes = [dataset.classes[i] for i in order]
    # The fingerprint stays: it keys the pixel statistics, which the order of the classes does not change.


def _train_per_class(dataset: DataSet, per_class: int, keys: torch.Tensor, seed: int) -> None:
    """Keep ``per_class`` training images of each class: those with the smallest ``keys`` (in place).

    ``keys`` (N_train,) is a random permutation drawn once for the whole training split, so a larger
    N at the same seed keeps the smaller N's images plus more (nested subsets: a fair learning curve),
    and a class's images do not depend on which other classes are kept. The chosen images keep their
    order in the split; val and test are not touched.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise CnnlabError(f"data.train_per_class={per_class!r} must be a whole number of images per class, at least 1.")
    labels = dataset.train.labels
    counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
    short = [(name, count) for name, count in zip(dataset.classes, counts) if count < per_class]
    if short:
        listed = "; ".join(f"'{name}' has {count}" for name, count in short[:FIRST_FEW_CLASSES])
        more = f"; and {len(short) - FIRST_FEW_CLASSES} more classes" if len(short) > FIRST_FEW_CLASSES else ""
        # "after the hold-out" only where val_fraction held images out: digits' and a val folder's splits are fixed
        counted_after = ("counted after the validation hold-out" if dataset.val_held_out else
                         f"the training split only: {dataset.spec} has its own validation split")
        raise CnnlabError(
            f"data.train_per_class={per_class} asks for more training images than some classes have ({counted_after}): "
            f"{listed}{more}. The largest train_per_class that works here is {min(counts)}; "
            "lower it, or leave it out to train on every image."
        )
    chosen = []
    for label in range(dataset.num_classes):
        members = torch.nonzero(labels == label).flatten()  # (count,) positions in the training split
        chosen.append(members[keys[members].argsort()[:per_class]])
    total = len(dataset.train)
    dataset.train = dataset.train.subset(torch.cat(chosen).sort().values)
    dataset.notices.append(f"training subset: {per_class} images per class (train_per_class={per_class}, seed={seed}), "
                           f"{len(dataset.train):,} of {total:,} training images; val and test stay whole")
    dataset.fingerprint = _fingerprint(dataset.fingerprint, "train_per_class", per_class, seed)


def apply_subsets(dataset: DataSet, config: DataConfig) -> DataSet:
    """data.classes then data.train_per_class on a loaded data set (in place; returned for chaining).

    Both act after the source has split its data, so the validation hold-out and the test split are
    the ones the full data has: the subsets only remove images from them.
    """
    keys = None
    if config.train_per_class is not None:
        # (N_train,) a random rank per training image, drawn before the class filter (see _train_per_class)
        keys = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(config.seed))
    if config.classes is not None:
        kept = resolve_classes(config.classes, dataset.classes, dataset.spec)
        if keys is not None:
            keys = keys[torch.isin(dataset.train.labels, torch.tensor(kept))]  # the ranks of the images kept
        _keep_classes(dataset, kept, dataset.spec)
    if config.train_per_class is not None:
        _train_per_class(dataset, config.train_per_class, keys, config.seed)
    return dataset


# ---------------------------------------------------------------------------------------------
# entry point

FASHION_KINDS = ("fashion-mnist", "fashion_mnist", "fashionmnist")


def spec_key(spec: str) -> tuple[str, str]:
    """(kind, rest) of a data spec as :func:`load_source` reads it, for telling whether two specs name one data
    set: the kind without case or spaces and in one spelling (``Digits``, ``fashion_mnist``, ``cifar-10``), a
    folder's or CSV's path resolved, synthetic's options without spaces."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind in FASHION_KINDS:
        kind = FASHION_KINDS[0]
    elif kind in cifar.CIFAR_KINDS:
        kind = cifar.CIFAR_KINDS[kind].spec
    if kind in ("folder", "csv") and rest.strip():
        return kind, str(Path(rest.strip()).expanduser().resolve())
    return kind, rest.replace(" ", "").lower() if kind.startswith("cifar") else rest.replace(" ", "")
DATA_DIR_KINDS = (*FASHION_KINDS, *cifar.CIFAR_KINDS)  # the sources whose files data.data_dir locates
SPEC_FORMS = "digits, fashion-mnist, cifar10, cifar100[:coarse], folder:PATH, csv:FILE or synthetic[:KEY=N,...]"


def load_source(config: DataConfig | str) -> DataSet:
    """Load the data a ``--data`` spec names, split it, keep the subsets ``config.classes`` and
    ``config.train_per_class`` ask for (:func:`apply_subsets`), and reconcile its channels with ``config.channels``."""
    if isinstance(config, str):
        config = DataConfig(spec=config)
    elif isinstance(config, DataConfig):
        config = replace(config)  # its fields are read as a config file's would be (a Path made text): a copy's
    else:
        raise CnnlabError(f"load_source takes a data spec (text: 'digits', 'folder:PATH', ...) or a DataConfig, not "
                          f"{type(config).__name__} {config!r}.")
    check_section_types("data", config)
    if config.channels not in (None, 1, 3):
        raise CnnlabError(f"data.channels={config.channels}: images can be delivered with 1 (gray) or 3 (RGB) "
                          "channels.")
    if config.image_size is not None and not 1 <= config.image_size <= MAX_IMAGE_SIDE:
        raise CnnlabError(f"data.image_size={config.image_size} must be a positive number of pixels, at most "
                          f"{MAX_IMAGE_SIDE}.")
    # Checked for every source, as config.validate_config does, so that `cnnlab data stats` refuses what
    # `cnnlab train` would refuse, not only for the sources that hold images out (_hold_out)
    problem = seed_problem("data.seed", config.seed)
    if problem:
        raise CnnlabError(f"{problem}.")
    if not 0.0 < config.val_fraction < 1.0:
        raise CnnlabError(
            f"val_fraction={config.val_fraction} must lie strictly between 0 and 1: it is the share of training "
            "images held out for validation when the data has no val split."
        )
    if config.memory_limit_mb < 0:  # as config.validate_config refuses it: no size of data is "above" it
        raise CnnlabError(f"memory_limit_mb={config.memory_limit_mb} must not be negative: it is the MiB a folder's or "
                          "CSV's images may take in memory before they are read from files per batch.")
    for key in ("spec", "data_dir"):  # a run's recorded path that is gone: named with what was typed, not read elsewhere
        problem = missing_recorded_path(config, key)
        if problem:
            raise CnnlabError(problem)
    # One rule for spaces: around the kind, the option after its colon, a path and each KEY=N, they are ignored
    # ('synthetic: classes = 3', 'folder: imgs'), as between the buckets and around their ':'.
    kind, _, rest = config.spec.partition(":")
    kind = kind.strip().lower()
    if config.data_dir and kind not in DATA_DIR_KINDS:
        raise CnnlabError(
            f"data.data_dir='{display_name(config.data_dir)}' (--data-dir) is read only for fashion-mnist and the CIFAR "
            f"sets; {display_name(config.spec)} does not read it. Leave it out, or name the files in the spec "
            "(folder:PATH or csv:FILE)."
        )
    if config.buckets and config.in_memory and kind in ("folder", "csv"):
        # Checked before any file is decoded: the two ask for opposite things of a folder or CSV
        raise CnnlabError(
            f"buckets='{config.buckets}' reads each image from its file and fits it to its bucket's shape, while "
            "data.in_memory=true decodes every image once into one square tensor. Leave in_memory unset (or "
            "false) to use buckets, or leave buckets out to hold the images in memory."
        )
    if kind == "digits" and not rest:
        dataset = _load_digits(config)
    elif kind in FASHION_KINDS and not rest:
        dataset = _load_fashion(config)
    elif kind in cifar.CIFAR_KINDS:
        dataset = _load_cifar(config, kind, rest)
    elif kind == "folder" and rest.strip():
        dataset = _load_folder(config, Path(rest.strip()).expanduser())
    elif kind == "csv" and rest.strip():
        dataset = _read_csv(config, Path(rest.strip()).expanduser())
    elif kind == "synthetic":
        dataset = _load_synthetic(config, rest)
    else:
        raise CnnlabError(f"Unknown data spec '{display_name(config.spec)}': use {SPEC_FORMS}.")
    if config.val_fraction != DataConfig.val_fraction and not dataset.val_held_out:
        # A share asked for and not used: said, rather than left to be found in the split sizes
        dataset.notices.append(
            f"val_fraction={config.val_fraction} is not used: {dataset.spec} has its own validation split "
            f"({len(dataset.val):,} images), and val_fraction holds images out only for data without one")
    # Before statistics, buckets and channel conversion: they see only the kept images.
    with noting_skipped(dataset.skipped):  # a class short of images may have lost them to skipped files
        apply_subsets(dataset, config)
        if kind in ("folder", "csv"):  # their classes are named by folders and rows, whose files may all be skipped
            _need_training_images(dataset)
    if config.buckets:
        if dataset.train.paths is None:
            raise CnnlabError(
                f"buckets='{config.buckets}' needs images read from files (folder:PATH or csv:FILE, not held in "
                f"memory); {dataset.spec} holds one image shape already. Leave buckets out for it."
            )
        dataset.buckets = parse_buckets(config.buckets)
    if config.channels and config.channels != dataset.channels:
        for split in dataset.splits().values():
            if split.images is not None:
                split.images = convert_channels(split.images, config.channels)
        dataset.notices.append(f"{dataset.channels}-channel images converted to {counted(config.channels, 'channel')}")
        dataset.channels = config.channels
        dataset.fingerprint = _fingerprint(dataset.fingerprint, config.channels)
    return dataset


def _need_training_images(dataset: DataSet) -> None:
    """Refuse a class with no training image: a folder or CSV class whose every file was skipped.

    Checked after data.classes, so leaving such a class out is one way past it. The caller's
    :func:`noting_skipped` adds the skipped files, which are where its images went.
    """
    counts = torch.bincount(dataset.train.labels, minlength=dataset.num_classes).tolist()
    empty = [name for name, count in zip(dataset.classes, counts) if count == 0]
    if empty:
        raise CnnlabError(
            f"{display_name(dataset.spec)} has {counted(len(empty), 'class', 'classes')} without a usable "
            f"training image: {_first_names(empty)}. A model could never learn them. Replace their broken files, remove the "
            "class, or leave it out with data.classes."
        )


def skipped_text(skipped: list[tuple[str, str]], first_few: Optional[int] = None) -> str:
    """'skipped 2 files and 1 row: a (why); b (why); and K more': every skip counted (the files, and the rows
    of a CSV listing, :class:`CsvRow`, each as many as there are), the first few named."""
    first_few = FIRST_FEW if first_few is None else first_few
    rows = sum(1 for name, _ in skipped if isinstance(name, CsvRow))
    files = len(skipped) - rows
    what = " and ".join(counted(count, noun) for count, noun in ((files, "file"), (rows, "row")) if count)
    named = "; ".join(f"{name} ({why})" for name, why in skipped[:first_few])
    more = f"; and {len(skipped) - first_few} more" if len(skipped) > first_few else ""
    return f"skipped {what}: {named}{more}"


def announce(dataset: DataSet, shown: Optional[set[str]] = None) -> None:
    """Print the data set's notices, and one warning that counts every skipped file and CSV row and names
    the first FIRST_FEW with their reasons (:func:`skipped_text`: "...; and N more"), on stderr (stdout stays
    the command's output). ``data stats --json`` and :func:`cnnlab.data.report.data_report` list them all.

    ``shown``: the lines already printed by a command that loads the data more than once (an ensemble, once
    per member), which prints each line once; the lines printed now are added to it.
    """
    import sys

    lines = [f"note: {notice}" for notice in dataset.notices]
    if dataset.skipped:
        lines.append(f"warning: {skipped_text(dataset.skipped)}")
    for line in lines:
        if shown is not None:
            if line in shown:
                continue
            shown.add(line)
        print(line, file=sys.stderr)
