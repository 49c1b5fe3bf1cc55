"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official archives, packed or extracted.

Both published versions of each archive are read:

- binary (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``): fixed-size records of label
  byte(s) (CIFAR-100: coarse, then fine) and 3,072 pixel bytes, the red, green and blue 32x32
  planes, each row-major. Parsed with numpy in one pass, no Python loop per image.
- python (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``): Python 2 pickles of dicts. They
  are read only through :class:`CifarUnpickler`, which knows the three numpy names an array needs
  (and, for files pickled again by Python 3, local stand-ins for numpy's _frombuffer and _codecs.encode)
  and refuses every other reference: unpickling a file runs whatever code the file names.

A ``.tar.gz`` is read where it lies, in one pass with :mod:`tarfile`; nothing is extracted to disk.
This module finds, reads and checks the files and returns numpy arrays (:class:`CifarData`);
:mod:`cnnlab.data.sources` turns them into a DataSet: the official test batch is the test split,
and val is held out of the training images (data.val_fraction), as for every source without one.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import posixpath
import shutil
import socket
import tarfile
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cnnlab.errors import CnnlabError, counted, display_name

IMAGE_SHAPE = (3, 32, 32)  # (C, H, W): every CIFAR image is 32x32 RGB
PIXEL_BYTES = math.prod(IMAGE_SHAPE)  # 3,072 bytes per image: the R, G and B planes, each 32x32 row-major
DOWNLOAD_BASE = "https://www.cs.toronto.edu/~kriz/"  # the archives' home page; + the archive's file name
PROBE_TIMEOUT_S = 3.0  # seconds a first connection may take before the network is taken as absent
STALL_TIMEOUT_S = 60.0  # seconds a started download may wait for data before it fails (urllib waits forever)


@dataclass(frozen=True)
class LabelKind:
    """One kind of label a CIFAR record carries: CIFAR-10 has one, CIFAR-100 a coarse and a fine one."""

    name: str  # "label" (CIFAR-10), "coarse" or "fine" (CIFAR-100): the spec's option
    classes: int  # how many classes this kind has
    names_file: str  # binary version: the text file with its class names, one a line
    labels_key: bytes  # python version: the batch dict's key of the labels (a list of ints)
    names_key: bytes  # python version: the meta dict's key of the class names (a list of bytes)


@dataclass(frozen=True)
class CifarFormat:
    """One published version of an archive: its name, the folder it unpacks to and that folder's files."""

    kind: str  # "binary" | "python"
    archive: str  # the .tar.gz file name, as published
    folder: str  # the folder every member lies in, and that extracting it makes
    train: tuple[str, ...]  # the training batches, in order
    test: str  # the test batch
    meta: tuple[str, ...]  # the files with the class names

    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, *self.meta)


@dataclass(frozen=True)
class CifarSet:
    """CIFAR-10 or CIFAR-100: names, label kinds and both versions of its archive."""

    spec: str  # the --data name, also the folder searched under $CNNLAB_DATA and the cache
    title: str  # as people write it
    labels: tuple[LabelKind, ...]  # in a binary record's order
    default: str  # the label kind used when the spec names none
    binary: CifarFormat
    python: CifarFormat
    official: tuple[int, int]  # (train, test) images in the published archive
    torchvision: str  # torchvision.datasets class whose downloader fetches the python version

    def kind(self, name: str) -> LabelKind:
        return next(kind for kind in self.labels if kind.name == name)


CIFAR10 = CifarSet(
    spec="cifar10", title="CIFAR-10",
    labels=(LabelKind("label", 10, "batches.meta.txt", b"labels", b"label_names"),),
    default="label",
    binary=CifarFormat("binary", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                       train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)), test="test_batch.bin",
                       meta=("batches.meta.txt",)),
    python=CifarFormat("python", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                       train=tuple(f"data_batch_{i}" for i in range(1, 6)), test="test_batch", meta=("batches.meta",)),
    official=(50000, 10000), torchvision="CIFAR10",
)
CIFAR100 = CifarSet(
    spec="cifar100", title="CIFAR-100",
    labels=(LabelKind("coarse", 20, "coarse_label_names.txt", b"coarse_labels", b"coarse_label_names"),
            LabelKind("fine", 100, "fine_label_names.txt", b"fine_labels", b"fine_label_names")),
    default="fine",
    binary=CifarFormat("binary", "cifar-100-binary.tar.gz", "cifar-100-binary", train=("train.bin",), test="test.bin",
                       meta=("coarse_label_names.txt", "fine_label_names.txt")),
    python=CifarFormat("python", "cifar-100-python.tar.gz", "cifar-100-python", train=("train",), test="test",
                       meta=("meta",)),
    official=(50000, 10000), torchvision="CIFAR100",
)
# --data names (lower case) -> the set; load_source dispatches on these
CIFAR_KINDS = {"cifar10": CIFAR10, "cifar-10": CIFAR10, "cifar100": CIFAR100, "cifar-100": CIFAR100}


def download_url(fmt: CifarFormat) -> str:
    return DOWNLOAD_BASE + fmt.archive


# ---------------------------------------------------------------------------------------------
# the restricted unpickler (python version)

@functools.lru_cache(maxsize=None)
def _allowed_globals() -> dict:
    """(module, name) -> object, for the only globals a CIFAR pickle names: numpy's array rebuilding.

    The Python 2 files name numpy.core.multiarray._reconstruct; numpy 2 keeps it in numpy._core. Both
    map to the function this numpy's arrays pickle with, so nothing is imported by name from a file.
    """
    reconstruct = np.zeros(0, np.uint8).__reduce__()[0]  # numpy's own array rebuilder, wherever it lives
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Files written again by Python 3 (a subset, a copy of one's own data in CIFAR's layout): protocol 5
        # pickles an array through numpy's _frombuffer, protocol 2 a bytes value through _codecs.encode.
        # Both stand for the local functions below, which only build bytes and arrays.
        ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
        ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
        ("_codecs", "encode"): _latin1_bytes,
    }


def _array_from_buffer(buffer, dtype, shape, order="C") -> np.ndarray:
    """numpy's _frombuffer (how protocol 5 pickles an array): the array ``buffer``'s bytes hold. np.frombuffer
    refuses an object dtype, so no object can come out of it."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
        raise ValueError(f"an array from {type(buffer).__name__} with dtype {dtype!r}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_bytes(text, encoding="utf-8") -> bytes:
    """_codecs.encode as Python 3 pickles bytes at protocol 2: encode(text, 'latin1'). No other codec is taken:
    a codec is looked up by name, and a CIFAR file has no reason to name another."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"_codecs.encode of {type(text).__name__} with codec {encoding!r}")
    return text.encode("latin1")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles the python version's files and refuses any other code reference (a CnnlabError).

    A pickle can name any importable function and have it called with its arguments (os.system,
    builtins.eval), so plain pickle.load on a downloaded file runs whatever the file asks. CIFAR's
    files need numpy's array reconstruction and nothing else: dicts, lists, ints and strings are
    built by opcodes, never looked up. The files are Python 2 pickles; encoding="bytes" keeps their
    str fields as bytes, which numpy's __setstate__ needs for an array's raw data (the default
    "ASCII" fails on the first pixel above 127).
    """

    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise CnnlabError(
                f"'{self.where}' contains a reference to {module}.{name}, which a CIFAR archive never has: the file is "
                "not the official CIFAR data, and unpickling it could run code, so cnnlab refuses to read it. Delete "
                "it and use the official archive (the binary version holds no pickles at all)."
            )
        return allowed

    def persistent_load(self, pid):
        raise CnnlabError(f"'{self.where}' holds a persistent reference, which a CIFAR archive never has: the file is "
                          "not the official CIFAR data. Delete it and use the official archive.")


def unpickle(data: bytes, where: str) -> dict:
    """One python-version file, through :class:`CifarUnpickler`; ``where`` names it in messages."""
    try:
        loaded = CifarUnpickler(io.BytesIO(data), where).load()
    except CnnlabError:
        raise
    except Exception as err:  # a damaged pickle raises anything: EOFError, UnpicklingError, ValueError, ...
        raise CnnlabError(f"Cannot unpickle '{where}' ({type(err).__name__}: {err}): the file is truncated or "
                          "corrupt. Delete it and download the archive again.") from None
    if not isinstance(loaded, dict):
        raise CnnlabError(f"'{where}' holds a {type(loaded).__name__} where a CIFAR file holds a dict: it is not "
                          "CIFAR data. Delete it and download the archive again.")
    return loaded


def _entry(batch: dict, key: bytes, where: str):
    """batch[key]; files pickled again by Python 3 have str keys, so b"data" and "data" both count."""
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise CnnlabError(f"'{where}' has no '{key.decode()}' entry (it has {', '.join(repr(k) for k in batch)}): it is "
                      "not a complete CIFAR file. Delete it and download the archive again.")


# ---------------------------------------------------------------------------------------------
# decoding

def decode_records(data: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary version: (images (N, 3, 32, 32) uint8 view, labels (N, label_bytes) int64) from one file."""
    record = label_bytes + PIXEL_BYTES
    if not data or len(data) % record:
        raise CnnlabError(
            f"'{where}' has {len(data):,} bytes, not a whole number of {record:,}-byte records ({counted(label_bytes, 'label byte')} "
            f"+ {PIXEL_BYTES:,} pixels each): the file is truncated or corrupt. Delete it and download the "
            "archive again."
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)  # (N, label_bytes + 3072)
    labels = rows[:, :label_bytes].astype(np.int64)  # (N, label_bytes)
    images = rows[:, label_bytes:].reshape(-1, *IMAGE_SHAPE)  # (N, 3, 32, 32): R, G, B planes are channels
    return images, labels


def decode_batch(batch: dict, kinds: tuple[LabelKind, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Python version: (images (N, 3, 32, 32) uint8, labels (N, kinds) int64) from one unpickled batch."""
    data = _entry(batch, b"data", where)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXEL_BYTES):
        shown = f"an array of {data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise CnnlabError(f"'{where}' holds {shown} as its data where CIFAR has uint8 rows of {PIXEL_BYTES:,} pixels: "
                          "the file is corrupt. Delete it and download the archive again.")
    columns = []
    for kind in kinds:
        values = _entry(batch, kind.labels_key, where)
        try:
            # read as they are, then checked whole: a dtype given here would truncate 1.5 to 1 in silence
            column = np.asarray(values)
        except (TypeError, ValueError, OverflowError):
            column = None
        if column is not None and column.dtype.kind in "iu" and np.can_cast(column.dtype, np.int64):
            column = column.astype(np.int64)
        else:
            column = None
        if column is None or column.shape != (len(data),):
            raise CnnlabError(f"'{where}' has {len(data):,} images but its '{kind.labels_key.decode()}' is not a list of "
                              f"{len(data):,} whole numbers: the file is corrupt. Delete it and download the archive again.")
        columns.append(column)
    return data.reshape(-1, *IMAGE_SHAPE), np.stack(columns, axis=1)


def _text_names(data: bytes, kind: LabelKind, where: str) -> list[str]:
    """Binary version: class names, one a line (the files end in blank lines)."""
    return _check_names([line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()],
                        kind, where)


def _check_names(names: list[str], kind: LabelKind, where: str) -> list[str]:
    if len(names) != kind.classes:
        raise CnnlabError(f"'{where}' lists {len(names)} class names where there are {kind.classes}: the file is "
                          "corrupt. Delete it and download the archive again.")
    return names


def _pickled_names(meta: dict, kind: LabelKind, where: str) -> list[str]:
    names = _entry(meta, kind.names_key, where)
    if not isinstance(names, list) or not all(isinstance(name, (bytes, str)) for name in names):
        raise CnnlabError(f"'{where}' has no list of class names under '{kind.names_key.decode()}': the file is corrupt. "
                          "Delete it and download the archive again.")
    decoded = [name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in names]
    return _check_names(decoded, kind, where)


# ---------------------------------------------------------------------------------------------
# reading: an extracted folder or the .tar.gz itself

def _read_folder(folder: Path, fmt: CifarFormat) -> tuple[dict[str, bytes], list[Path]]:
    """The format's files from an extracted folder: (name -> bytes, the files read)."""
    missing = [name for name in fmt.files() if not (folder / name).is_file()]
    if missing:
        raise CnnlabError(
            f"'{display_name(str(folder))}' lacks {', '.join(missing)}: an extracted {fmt.archive} holds "
            f"{', '.join(fmt.files())}. "
            f"Extract the archive again, or delete the folder and leave {fmt.archive} itself there (it is read "
            "without extracting)."
        )
    paths = [folder / name for name in fmt.files()]
    files = {}
    for path in paths:
        try:
            files[path.name] = path.read_bytes()
        except OSError as err:  # a file extracted with other permissions, a disk error
            raise CnnlabError(
                f"Cannot read '{display_name(str(path))}': {display_name(err.strerror or str(err))}. Make the file "
                f"readable, or extract {fmt.archive} again."
            ) from None
    return files, paths


def _read_archive(archive: Path, fmt: CifarFormat) -> tuple[dict[str, bytes], list[Path]]:
    """The format's files straight out of the .tar.gz, in one pass over the stream, nothing written to disk."""
    wanted = {f"{fmt.folder}/{name}": name for name in fmt.files()}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # in stream order: the archive is decompressed once
                name = wanted.get(posixpath.normpath(member.name))
                if name is not None and member.isfile():
                    found[name] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise CnnlabError(
            f"Cannot read '{display_name(str(archive))}': {display_name(str(err)) or type(err).__name__}. The archive "
            f"is truncated or corrupt; delete it and download {download_url(fmt)} again."
        ) from None
    missing = [member for member, name in wanted.items() if name not in found]
    if missing:
        raise CnnlabError(
            f"'{display_name(str(archive))}' lacks {', '.join(missing)}: it is not a complete {fmt.archive}. Delete it "
            f"and download {download_url(fmt)} again."
        )
    return found, [archive]


def read_cifar(source: Path, fmt: CifarFormat, which: CifarSet) -> dict:
    """Decode one copy of the data: {"train"/"test": (images (N, 3, 32, 32) uint8, labels (N, kinds) int64),
    "classes": {kind name: class names}, "files": the files read}."""
    files, read = _read_folder(source, fmt) if source.is_dir() else _read_archive(source, fmt)

    def where(name: str) -> str:  # a file as the messages name it
        return display_name(str(source / name) if source.is_dir() else f"{source}:{fmt.folder}/{name}")

    if fmt.kind == "binary":
        decoded = {name: decode_records(files[name], len(which.labels), where(name)) for name in (*fmt.train, fmt.test)}
        classes = {kind.name: _text_names(files[kind.names_file], kind, where(kind.names_file)) for kind in which.labels}
    else:
        decoded = {name: decode_batch(unpickle(files[name], where(name)), which.labels, where(name))
                   for name in (*fmt.train, fmt.test)}
        meta = unpickle(files[fmt.meta[0]], where(fmt.meta[0]))
        classes = {kind.name: _pickled_names(meta, kind, where(fmt.meta[0])) for kind in which.labels}
    for name, (_, labels) in decoded.items():
        for column, kind in enumerate(which.labels if len(labels) else ()):
            # a pickled label may be negative as well as too large (the binary version's are bytes, never negative)
            low, top = int(labels[:, column].min()), int(labels[:, column].max())
            if low < 0 or top >= kind.classes:
                what = "label" if len(which.labels) == 1 else f"{kind.name} label"
                bad = low if low < 0 else top
                raise CnnlabError(f"'{where(name)}' has {what} {bad}; {which.title}'s are 0..{kind.classes - 1}. "
                                  "The file is corrupt: delete it and download the archive again.")
    train = [decoded[name] for name in fmt.train]
    return {
        # one contiguous, writable copy per split (the decoded arrays are views of read-only bytes):
        # (N, 3, 32, 32) uint8 and (N, kinds) int64
        "train": (np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train])),
        "test": (np.array(decoded[fmt.test][0]), decoded[fmt.test][1]),
        "classes": classes,
        "files": read,
    }


# ---------------------------------------------------------------------------------------------
# finding (and, with a network, downloading) the data

def _copies_in(folder: Path, which: CifarSet) -> list[tuple[Path, CifarFormat]]:
    """Copies of the data ``folder`` holds, best first: binary before python (no pickles, and
    faster), and within a version the extracted folder before the archive (nothing to decompress).
    ``folder`` may itself be an extracted folder (--data-dir .../cifar-10-batches-bin). Holding all of a
    version's files, it is a copy; holding only some, it comes last, after every other copy: a stray
    file named 'test' beside an archive must not hide the archive. Read last, it names what is missing."""
    copies, partial = [], []
    for fmt in (which.binary, which.python):
        held = [(folder / name).is_file() for name in fmt.files()]
        if all(held):
            copies.append((folder, fmt))
        elif any(held):
            partial.append((folder, fmt))
        if (folder / fmt.folder).is_dir():
            copies.append((folder / fmt.folder, fmt))
        if (folder / fmt.archive).is_file():
            copies.append((folder / fmt.archive, fmt))
    return copies + partial


def find_cifar(which: CifarSet, searched: list[Path], given: Optional[Path] = None) -> tuple[Path, CifarFormat]:
    """The copy to read: the first of the ``searched`` folders holding one wins (see :func:`_copies_in`
    for the order within a folder); with none, a download when the network works, else a CnnlabError
    naming every way to get the data. ``given`` is data.data_dir (--data-dir), which may also name an
    archive itself; ``searched`` is then [given], else the search path (:func:`cnnlab.data.sources.data_dirs`)."""
    if given is not None and given.is_file():
        for fmt in (which.binary, which.python):
            if given.name == fmt.archive:
                return given, fmt
        raise CnnlabError(f"data.data_dir='{display_name(str(given))}' (--data-dir) is a file, not one of "
                          f"{which.title}'s archives ({which.binary.archive}, {which.python.archive}). Name the archive "
                          "or the folder holding it.")
    for folder in searched:
        copies = _copies_in(folder, which)
        if copies:
            return copies[0]
    try:
        target = download_cifar(which, searched, create=given is None)
        return target / which.python.folder, which.python
    except Exception as err:  # any download failure: no network, proxy, checksum, full disk
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise CnnlabError(missing_message(which, searched, reason))


def missing_message(which: CifarSet, searched: list[Path], reason: str) -> str:
    """Where cnnlab looked, why the download failed, and every way to get the data."""
    looked = ", ".join(f"{display_name(str(folder))}{'' if folder.is_dir() else ' (does not exist)'}"
                       for folder in searched)
    reason = display_name(reason)  # an OSError's text can hold a path
    binary, python = which.binary, which.python
    return (
        f"{which.title} was not found in {looked}: none holds {binary.archive} or {python.archive}, packed or "
        f"extracted ({binary.folder}/ or {python.folder}/), and the download failed ({reason}). Get it one of these "
        f"ways: download {download_url(binary)} (or {download_url(python)}) into one of those folders, no need to "
        "extract it; or put it in any folder and name that folder with --data-dir FOLDER (data.data_dir in a config, "
        f"--set data.data_dir=FOLDER); or set CNNLAB_DATA=DIR and put it in DIR/{which.spec} (read by every command, "
        "`cnnlab experiment` too, which takes no --data-dir); or fetch it with "
        f"torchvision's downloader, `python -c \"import torchvision; torchvision.datasets.{which.torchvision}('FOLDER', "
        "download=True)\"`, and pass --data-dir FOLDER; or run once with internet access and cnnlab downloads it "
        "itself."
    )


def download_cifar(which: CifarSet, searched: list[Path], create: bool = True) -> Path:
    """Fetch the python version into the first writable search folder and return that folder.

    The connection is tried first with a :data:`PROBE_TIMEOUT_S` timeout, so a machine without a
    network fails in seconds. torchvision's downloader fetches and checks the archive against the
    MD5 torchvision records; torchvision.datasets.CIFAR10(root, download=True) would then read the
    batches with plain pickle, so only its downloader is called and reading stays with
    :class:`CifarUnpickler`. A failed download leaves no staging folder behind.
    """
    url = download_url(which.python)
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise OSError(f"no connection to {parts.hostname}: {err}") from None
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    target = next((folder for folder in searched if _writable(folder, create)), None)
    if target is None:
        raise OSError("no search folder is writable: " + ", ".join(map(str, searched)))
    md5 = getattr(torchvision.datasets, which.torchvision).tgz_md5
    staging = target / f".{which.python.folder}-download"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(STALL_TIMEOUT_S)  # urllib reads with the default, which is no timeout at all
    try:
        download_and_extract_archive(url, staging, filename=which.python.archive, md5=md5)
        os.replace(staging / which.python.folder, target / which.python.folder)
    finally:
        socket.setdefaulttimeout(previous)
        shutil.rmtree(staging, ignore_errors=True)  # the archive and any partial extraction
    return target


def _writable(folder: Path, create: bool) -> bool:
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
    return folder.is_dir() and os.access(folder, os.W_OK)


# ---------------------------------------------------------------------------------------------
# the source

@dataclass
class CifarData:
    """One CIFAR source read and checked, as numpy arrays; sources.py makes the DataSet."""

    spec: str  # as the DataSet names it: cifar10, cifar100 or cifar100:coarse
    title: str
    classes: list[str]
    train: tuple[np.ndarray, np.ndarray]  # images (N, 3, 32, 32) uint8, labels (N,) int64
    test: tuple[np.ndarray, np.ndarray]
    files: list[Path]  # what was read, for the fingerprint
    notices: list[str]


def resolve_spec(name: str, option: str, spec: str) -> tuple[CifarSet, LabelKind]:
    """The set and label kind a spec names (``cifar100:coarse``); the set's default kind when it names none."""
    which = CIFAR_KINDS[name]
    kind = option.strip().lower() or which.default
    choices = [label.name for label in which.labels]
    if kind not in choices:
        allowed = (f"{which.spec} takes no option" if len(choices) == 1 else
                   f"{which.spec} takes :{' or :'.join(choices)} ({which.default} is the default)")
        raise CnnlabError(f"Unknown data spec '{spec}': {allowed}. CIFAR-100's coarse labels are its 20 superclasses, "
                          "its fine labels the 100 classes.")
    return which, which.kind(kind)


def read_source(which: CifarSet, kind: LabelKind, searched: list[Path], given: Optional[Path] = None) -> CifarData:
    """Find, read and check one CIFAR source, with the labels of ``kind`` (see :func:`find_cifar`)."""
    source, fmt = find_cifar(which, searched, given)
    data = read_cifar(source, fmt, which)
    column = which.labels.index(kind)
    counts = (len(data["train"][1]), len(data["test"][1]))
    shown = display_name(str(source))
    notices = [f"{which.title} from {shown} ({fmt.kind} version)"]
    if counts != which.official:
        notices.append(f"{shown} holds {counts[0]:,} training and {counts[1]:,} test images; the published "
                       f"{which.title} has {which.official[0]:,} and {which.official[1]:,}")
    return CifarData(
        spec=which.spec if kind.name == which.default else f"{which.spec}:{kind.name}", title=which.title,
        classes=data["classes"][kind.name],
        train=(data["train"][0], np.ascontiguousarray(data["train"][1][:, column])),
        test=(data["test"][0], np.ascontiguousarray(data["test"][1][:, column])),
        files=data["files"], notices=notices,
    )
