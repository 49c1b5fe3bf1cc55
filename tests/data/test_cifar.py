"""CIFAR-10/100 sources against small archives written here, in both published versions, packed and extracted.

The writer is independent of the reader: binary records are assembled plane by plane and row by row
from HWC images, and the python version's files are Python 2 style pickles written opcode by opcode
(what cPickle.dump(obj, f, 2) wrote), so the loader's numpy reshapes and its unpickler are checked
against data built another way.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig, RunConfig, apply_overrides
from cnnlab.data import cifar
from cnnlab.data.cifar import CifarUnpickler, unpickle
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError

SIDE = 32  # pixels: CIFAR images are 32x32 RGB
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COARSE = 20  # CIFAR-100's superclasses
FINE = 100  # CIFAR-100's classes


# ---------------------------------------------------------------------------------------------
# the fixture writer

def record(labels: tuple[int, ...], hwc: np.ndarray) -> bytes:
    """One binary record: the label byte(s), then the red plane, the green plane, the blue plane, row by row."""
    out = bytearray(labels)
    for channel in range(3):
        for row in range(SIDE):
            out += bytes(hwc[row, :, channel].tolist())
    return bytes(out)


def py2_dumps(value) -> bytes:
    """A protocol-2 pickle as Python 2 wrote it: str as BINSTRING, arrays by numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")  # PROTO 2
    _py2(value, out)
    return bytes(out + b".")  # STOP


def _py2(value, out: bytearray) -> None:
    if isinstance(value, bytes):  # a Python 2 str
        out += (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))) + value
    elif value is None:
        out += b"N"
    elif value is False:
        out += b"\x89"  # NEWFALSE
    elif isinstance(value, float):
        out += b"G" + struct.pack(">d", value)  # BINFLOAT
    elif isinstance(value, int):
        out += b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)
    elif isinstance(value, tuple):
        out += b"("  # MARK
        for item in value:
            _py2(item, out)
        out += b"t"  # TUPLE
    elif isinstance(value, list):
        out += b"]("  # EMPTY_LIST, MARK
        for item in value:
            _py2(item, out)
        out += b"e"  # APPENDS
    elif isinstance(value, dict):
        out += b"}("  # EMPTY_DICT, MARK
        for key, item in value.items():
            _py2(key, out)
            _py2(item, out)
        out += b"u"  # SETITEMS
    elif isinstance(value, np.ndarray):
        assert value.dtype == np.uint8
        # _reconstruct(ndarray, (0,), 'b') then BUILD with (version, shape, dtype, fortran, raw bytes)
        out += b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        _py2((0,), out)
        _py2(b"b", out)
        out += b"\x87R("  # TUPLE3, REDUCE, MARK
        _py2(1, out)
        _py2(tuple(value.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2((b"u1", 0, 1), out)
        out += b"R"
        _py2((3, b"|", None, None, None, -1, -1, 0), out)
        out += b"b"  # BUILD the dtype
        _py2(False, out)
        _py2(value.tobytes(), out)
        out += b"tb"  # TUPLE, BUILD the array
    else:
        raise TypeError(type(value))


def _layout(name: str, version: str):
    which = cifar.CIFAR_KINDS[name]
    return which, (which.binary if version == "binary" else which.python)


def write_cifar(root: Path, name: str = "cifar10", version: str = "binary", packed: bool = False,
                per_class: int = 5, test_per_class: int = 2, seed: int = 0, drop: tuple[str, ...] = ()) -> dict:
    """Write a small archive (``packed``) or extracted folder into ``root``; returns what it holds.

    CIFAR-10: ``per_class`` training images of each class spread over the 5 batches; CIFAR-100 one
    train file (2 images per fine class; coarse = fine % 20). Random pixels, so every image is unique.
    """
    which, fmt = _layout(name, version)
    rng = np.random.default_rng(seed)
    kinds = len(which.labels)
    if name == "cifar10":
        classes = {"label": CIFAR10_NAMES}
        label_rows = lambda count: [(k % 10,) for k in range(count)]  # noqa: E731
        train_count, test_count = 10 * per_class, 10 * test_per_class
    else:
        classes = {"coarse": [f"super_{i:02d}" for i in range(COARSE)], "fine": [f"class_{i:03d}" for i in range(FINE)]}
        label_rows = lambda count: [(k % FINE % COARSE, k % FINE) for k in range(count)]  # noqa: E731
        train_count, test_count = 2 * FINE, FINE
    expected = {"classes": classes}
    files: dict[str, bytes] = {}
    batches = {"train": fmt.train, "test": (fmt.test,)}
    for split, count in (("train", train_count), ("test", test_count)):
        labels = label_rows(count)
        order = rng.permutation(count)
        labels = [labels[i] for i in order]
        hwc = rng.integers(0, 256, size=(count, SIDE, SIDE, 3), dtype=np.uint8)
        expected[split] = (hwc, np.array(labels, dtype=np.int64).reshape(count, kinds))
        for part, positions in zip(batches[split], np.array_split(np.arange(count), len(batches[split]))):
            records = [record(labels[i], hwc[i]) for i in positions]
            if version == "binary":
                files[part] = b"".join(records)
            else:
                data = np.frombuffer(b"".join(r[kinds:] for r in records), np.uint8).reshape(len(positions), -1)
                batch = {b"batch_label": part.encode(), b"data": data, b"filenames": [b"img.png"] * len(positions)}
                for column, kind in enumerate(which.labels):
                    batch[kind.labels_key] = [labels[i][column] for i in positions]
                files[part] = py2_dumps(batch)
    if version == "binary":
        for kind in which.labels:
            files[kind.names_file] = ("\n".join(classes[kind.name]) + "\n\n").encode()
    else:
        meta = {b"num_cases_per_batch": 10000, b"num_vis": 3072}
        meta.update({kind.names_key: [n.encode() for n in classes[kind.name]] for kind in which.labels})
        files[fmt.meta[0]] = py2_dumps(meta)
    root.mkdir(parents=True, exist_ok=True)
    if packed:
        with tarfile.open(root / fmt.archive, "w:gz") as tar:
            for file_name, data in files.items():
                if file_name not in drop:
                    info = tarfile.TarInfo(f"{fmt.folder}/{file_name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    else:
        (root / fmt.folder).mkdir(exist_ok=True)
        for file_name, data in files.items():
            if file_name not in drop:
                (root / fmt.folder / file_name).write_bytes(data)
    expected["files"] = files
    return expected


def as_rows(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[bytes, int]]:
    """(HWC pixel bytes, label) per image, sorted: compares splits whatever their order."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    return sorted((image.tobytes(), int(label)) for image, label in zip(hwc, labels))


def expected_rows(hwc: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted((image.tobytes(), int(label)) for image, label in zip(hwc, labels))


# ---------------------------------------------------------------------------------------------
# reading

@pytest.mark.parametrize("version", ["binary", "python"])
@pytest.mark.parametrize("packed", [False, True], ids=["extracted", "tar.gz"])
def test_cifar10_every_form_matches_what_was_written(tmp_path, version, packed):
    written = write_cifar(tmp_path, "cifar10", version, packed)
    data = load_source(DataConfig(spec="cifar10", data_dir=str(tmp_path), val_fraction=0.2))
    test_hwc, test_labels = written["test"]
    # the test split is the test batch, in its order, pixel for pixel: channel 0 is the red plane
    assert data.test.images.shape == (20, 3, SIDE, SIDE) and data.test.images.dtype == torch.uint8
    assert np.array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), test_hwc)
    assert data.test.labels.tolist() == test_labels[:, 0].tolist()
    # train + val partition the 5 training batches; val holds val_fraction of each class
    train_hwc, train_labels = written["train"]
    assert len(data.train) + len(data.val) == 50 and len(data.val) == 10
    assert data.val.labels.bincount(minlength=10).tolist() == [1] * 10
    both = as_rows(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    assert both == expected_rows(train_hwc, train_labels[:, 0])
    assert data.classes == CIFAR10_NAMES and data.channels == 3 and data.image_size == SIDE and data.hflip_safe
    assert data.spec == "cifar10" and any(f"({version} version)" in note for note in data.notices)


@pytest.mark.parametrize("version, packed", [("binary", True), ("python", False)])
def test_cifar100_fine_by_default_and_coarse_on_request(tmp_path, version, packed):
    written = write_cifar(tmp_path, "cifar100", version, packed)
    test_hwc, test_labels = written["test"]  # labels (N, 2): coarse, fine
    fine = load_source(DataConfig(spec="cifar100", data_dir=str(tmp_path)))
    assert fine.classes == written["classes"]["fine"] and fine.num_classes == FINE
    assert np.array_equal(fine.test.images.permute(0, 2, 3, 1).numpy(), test_hwc)
    assert fine.test.labels.tolist() == test_labels[:, 1].tolist()
    assert len(fine.train) + len(fine.val) == 2 * FINE and len(fine.val) == FINE  # one of each class's two
    coarse = load_source(DataConfig(spec="cifar100:coarse", data_dir=str(tmp_path)))
    assert coarse.spec == "cifar100:coarse" and coarse.classes == written["classes"]["coarse"]
    assert coarse.test.labels.tolist() == test_labels[:, 0].tolist()
    train_hwc, train_labels = written["train"]
    both = as_rows(torch.cat([coarse.train.images, coarse.val.images]),
                   torch.cat([coarse.train.labels, coarse.val.labels]))
    assert both == expected_rows(train_hwc, train_labels[:, 0])
    assert coarse.fingerprint != fine.fingerprint


def test_python_version_agrees_with_plain_pickle_of_the_files_written(tmp_path):
    written = write_cifar(tmp_path, "cifar10", "python", per_class=2)
    folder = tmp_path / "cifar-10-batches-py"
    # plain pickle is safe here: these are the files this test just wrote
    test_batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="bytes")
    data = load_source(DataConfig(spec="cifar10", data_dir=str(folder)))  # the extracted folder itself
    assert data.test.images.reshape(len(data.test), -1).numpy().tolist() == test_batch[b"data"].tolist()
    assert data.test.labels.tolist() == test_batch[b"labels"]
    assert data.classes == [name.decode() for name in meta[b"label_names"]]
    assert data.image_size == SIDE and written["test"][0].shape == (20, SIDE, SIDE, 3)


def test_unpickler_reads_python2_pickles_with_bytes_encoding():
    # numpy's own Python 2 pickle of np.array([9e123]) (numpy's test_pickle_py2_bytes_encoding)
    py2_numpy = (b"cnumpy.core.multiarray\n_reconstruct\np0\n(cnumpy\nndarray\np1\n(I0\ntp2\nS'b'\np3\ntp4\nRp5\n(I1\n(I1\n"
                 b"tp6\ncnumpy\ndtype\np7\n(S'f8'\np8\nI0\nI1\ntp9\nRp10\n(I3\nS'<'\np11\nNNNI-1\nI-1\nI0\ntp12\nbI00\n"
                 b"S'O\\x81\\xb7Z\\xaa:\\xabY'\np13\ntp14\nb.")
    assert CifarUnpickler(io.BytesIO(py2_numpy), "numpy").load().tolist() == [9e123]
    pixels = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)  # every byte value, > 127 too
    written = py2_dumps({b"data": pixels, b"labels": [3, 7]})
    loaded = unpickle(written, "batch")
    assert set(loaded) == {b"data", b"labels"} and np.array_equal(loaded[b"data"], pixels) and loaded[b"labels"] == [3, 7]
    with pytest.raises(UnicodeDecodeError):  # why bytes: the default ASCII cannot hold the raw pixel string
        pickle.loads(written)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_version_files_written_again_by_python3_are_read_at_every_protocol(tmp_path, protocol):
    """A CIFAR-layout folder re-pickled by Python 3 (str keys; protocol 2 pickles bytes through _codecs.encode,
    protocol 5 arrays through numpy's _frombuffer) reads to the same images and labels as the original."""
    expected = write_cifar(tmp_path / "src", "cifar10", "python", per_class=2, test_per_class=1)
    folder = tmp_path / "again" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in expected["files"].items():
        # plain pickle is safe here: these are the files this test just wrote
        value = pickle.loads(data, encoding="bytes")
        value = {key.decode(): item.decode() if isinstance(item, bytes) else item for key, item in value.items()}
        (folder / name).write_bytes(pickle.dumps(value, protocol=protocol))
    original = load_source(DataConfig(spec="cifar10", data_dir=str(tmp_path / "src"), val_fraction=0.5))
    again = load_source(DataConfig(spec="cifar10", data_dir=str(tmp_path / "again"), val_fraction=0.5))
    assert again.classes == original.classes == CIFAR10_NAMES
    for name, split in original.splits().items():
        assert torch.equal(again.splits()[name].images, split.images)
        assert torch.equal(again.splits()[name].labels, split.labels)


class OtherCodec:
    def __reduce__(self):
        return codecs.encode, ("text", "rot13")


def test_the_python3_helpers_take_only_what_a_cifar_file_needs():
    with pytest.raises(CnnlabError, match="Cannot unpickle 'batch'.*codec 'rot13'"):
        unpickle(pickle.dumps({"data": OtherCodec()}, protocol=2), "batch")
    objects = np.array([None, 1], dtype=object)
    reduce = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # numpy's _frombuffer
    forged = pickle.dumps({"data": Forged(reduce, (b"\0" * 16, objects.dtype, (2,), "C"))}, protocol=5)
    with pytest.raises(CnnlabError, match="Cannot unpickle 'batch'"):
        unpickle(forged, "batch")


class Forged:
    def __init__(self, call, arguments):
        self.call, self.arguments = call, arguments

    def __reduce__(self):
        return self.call, self.arguments


class Malicious:
    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("packed", [False, True], ids=["extracted", "tar.gz"])
@pytest.mark.parametrize("attack", ["system", "eval"])
def test_a_pickle_that_calls_code_is_refused_and_never_runs(tmp_path, packed, attack):
    marker = tmp_path / "pwned"
    payload = (Malicious(os.system, f"touch {marker}") if attack == "system"
               else Malicious(eval, f"open({str(marker)!r}, 'w').close()"))
    write_cifar(tmp_path / "src", "cifar10", "python", per_class=1)
    files = {name: (tmp_path / "src" / "cifar-10-batches-py" / name).read_bytes()
             for name in cifar.CIFAR10.python.files()}
    files["data_batch_3"] = pickle.dumps({"data": payload}, protocol=2)  # dumped, never loaded here
    root = tmp_path / "data"
    if packed:
        root.mkdir()
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (root / "cifar-10-batches-py").mkdir(parents=True)
        for name, data in files.items():
            (root / "cifar-10-batches-py" / name).write_bytes(data)
    reference = r"(posix|os)\.system" if attack == "system" else r"(__builtin__|builtins)\.eval"
    with pytest.raises(CnnlabError, match=rf"data_batch_3' contains a reference to {reference}, which a CIFAR archive never"):
        load_source(DataConfig(spec="cifar10", data_dir=str(root)))
    assert not marker.exists()


def test_search_order_and_where_the_data_may_lie(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    copies = {
        "bin-folder": write_cifar(folder, version="binary", packed=False, seed=1),
        "bin-archive": write_cifar(folder, version="binary", packed=True, seed=2),
        "py-folder": write_cifar(folder, version="python", packed=False, seed=3),
        "py-archive": write_cifar(folder, version="python", packed=True, seed=4),
    }
    removals = {"bin-folder": "cifar-10-batches-bin", "bin-archive": "cifar-10-binary.tar.gz",
                "py-folder": "cifar-10-batches-py", "py-archive": None}
    for name, remove in removals.items():  # best first: binary, extracted before packed
        data = load_source(DataConfig(spec="cifar10", data_dir=str(folder)))
        assert np.array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), copies[name]["test"][0]), name
        if remove and (folder / remove).is_file():
            (folder / remove).unlink()
        elif remove:
            shutil.rmtree(folder / remove)
    archive = folder / "cifar-10-python.tar.gz"
    assert len(load_source(DataConfig(spec="cifar10", data_dir=str(archive))).test) == 20  # the archive itself
    # without data_dir: $CNNLAB_DATA/cifar10 first, then the cache's cifar10 folder
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    cached = write_cifar(tmp_path / "cache" / "cifar10", packed=True, seed=5)
    data = load_source("cifar10")
    assert np.array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), cached["test"][0])
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "shelf"))
    shelved = write_cifar(tmp_path / "shelf" / "cifar10", seed=6)
    data = load_source("CIFAR-10")
    assert np.array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), shelved["test"][0])
    small = load_source(DataConfig(spec="cifar10", image_size=16))
    assert small.test.images.shape == (20, 3, 16, 16) and small.fingerprint != data.fingerprint
    with pytest.raises(CnnlabError, match="is a file, not one of CIFAR-10's archives"):
        load_source(DataConfig(spec="cifar10", data_dir=str(tmp_path / "shelf" / "cifar10" / "cifar-10-batches-bin"
                                                               / "test_batch.bin")))


# ---------------------------------------------------------------------------------------------
# missing and damaged data

def _offline(which, searched, create=True):
    raise OSError("network unreachable")


def test_missing_data_names_every_way_to_get_it(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(cifar, "download_cifar", _offline)
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "shelf"))
    with pytest.raises(CnnlabError) as info:
        load_source("cifar100")
    message = str(info.value)
    for part in ("cifar-100-binary.tar.gz", "cifar-100-python.tar.gz", "cifar-100-binary/", "cifar-100-python/",
                 str(tmp_path / "shelf" / "cifar100"), "/cnnlab-cache/cifar100", "--data-dir", "data.data_dir",
                 "CNNLAB_DATA", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "torchvision.datasets.CIFAR100(",
                 "network unreachable"):
        assert part in message, part
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli(["data", "stats", "cifar10", "--data-dir", str(empty)])
    assert code == 2 and "Traceback" not in err
    assert f"CIFAR-10 was not found in {empty}:" in err and "cifar-10-binary.tar.gz" in err
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err and "torchvision.datasets.CIFAR10(" in err


def test_a_failed_download_is_caught_and_leaves_nothing_behind(tmp_path, monkeypatch):
    # no network at all: a host that never resolves (RFC 2606 .invalid), caught before any folder is made
    monkeypatch.setattr(cifar, "DOWNLOAD_BASE", "https://cifar.invalid/~kriz/")
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CnnlabError, match=r"CIFAR-10 was not found .* the download failed \(no connection to cifar.invalid"):
        load_source("cifar10")
    assert not (tmp_path / "cache").exists()
    # a connection that breaks mid-download: the staging folder goes, the error is the message's reason
    import torchvision.datasets.utils

    def partial(url, root, filename=None, md5=None):
        Path(root).mkdir(parents=True)
        (Path(root) / filename).write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(cifar.socket, "create_connection", lambda *args, **kwargs: io.BytesIO())
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", partial)
    with pytest.raises(CnnlabError, match=r"download failed \(connection reset\)"):
        load_source("cifar10")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == ["cifar10"]


def test_a_download_lands_in_the_cache_and_is_read_from_there(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.utils

    calls = []

    def fetched(url, root, filename=None, md5=None):  # what the real downloader leaves: archive + extracted folder
        calls.append((url, filename, md5))
        write_cifar(Path(root), version="python", packed=True, seed=7)
        return write_cifar(Path(root), version="python", seed=7)

    monkeypatch.setattr(cifar.socket, "create_connection", lambda *args, **kwargs: io.BytesIO())
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fetched)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = load_source("cifar10")
    reference = torchvision.datasets.CIFAR10
    assert calls == [(reference.url, reference.filename, reference.tgz_md5)]  # torchvision's URL, name and MD5
    assert sorted(p.name for p in (tmp_path / "cache" / "cifar10").iterdir()) == ["cifar-10-batches-py"]
    assert len(data.test) == 20 and any("python version" in note for note in data.notices)


def _damaged(tmp_path: Path, folder: str, **kwargs) -> Path:
    root = tmp_path / folder
    write_cifar(root, per_class=1, test_per_class=1, **kwargs)
    return root


def test_damaged_archives_and_files_are_named(tmp_path):
    def refused(root: Path, pattern: str, spec: str = "cifar10"):
        with pytest.raises(CnnlabError, match=pattern):
            load_source(DataConfig(spec=spec, data_dir=str(root)))

    truncated = _damaged(tmp_path, "truncated", packed=True)
    archive = truncated / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused(truncated, r"Cannot read '.*truncated/cifar-10-binary.tar.gz'.*truncated or corrupt")
    refused(_damaged(tmp_path, "member", packed=True, drop=("test_batch.bin",)),
            r"cifar-10-binary.tar.gz' lacks cifar-10-batches-bin/test_batch.bin")
    refused(_damaged(tmp_path, "file", drop=("data_batch_4.bin",)), r"cifar-10-batches-bin' lacks data_batch_4.bin")
    refused(_damaged(tmp_path, "inside", drop=("test_batch.bin",)) / "cifar-10-batches-bin",  # --data-dir is the folder
            r"cifar-10-batches-bin' lacks test_batch.bin: an extracted cifar-10-binary.tar.gz holds")
    record_size = _damaged(tmp_path, "size")
    with open(record_size / "cifar-10-batches-bin" / "data_batch_2.bin", "ab") as handle:
        handle.write(bytes(5))
    refused(record_size, r"data_batch_2.bin' has 6,151 bytes, not a whole number of 3,073-byte records \(1 label byte \+ 3,072 pixels each\)")
    label = _damaged(tmp_path, "label")
    (label / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(record((10,), np.zeros((SIDE, SIDE, 3), np.uint8)))
    refused(label, r"test_batch.bin' has label 10; CIFAR-10's are 0..9")
    names = _damaged(tmp_path, "names")
    (names / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES[:9]))
    refused(names, r"batches.meta.txt' lists 9 class names where there are 10")
    garbage = _damaged(tmp_path, "garbage", version="python")
    (garbage / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x02}q\x01(U\x04data")
    refused(garbage, r"Cannot unpickle '.*data_batch_1'.*truncated or corrupt")
    shape = _damaged(tmp_path, "shape", version="python")
    (shape / "cifar-10-batches-py" / "test_batch").write_bytes(
        py2_dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    refused(shape, r"test_batch' holds an array of uint8 \(2, 1024\) as its data")
    fine = _damaged(tmp_path, "fine", name="cifar100", version="python")
    (fine / "cifar-100-python" / "test").write_bytes(
        py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1], b"fine_labels": [0]}))
    refused(fine, r"'fine_labels' is not a list of 2 whole numbers", spec="cifar100")
    negative = _damaged(tmp_path, "negative", version="python")  # a pickled label, unlike a byte, can be below 0
    (negative / "cifar-10-batches-py" / "test_batch").write_bytes(
        py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}))
    refused(negative, r"test_batch' has label -1; CIFAR-10's are 0..9")
    fractional = _damaged(tmp_path, "fractional", version="python")  # 1.5 is no label, not label 1
    (fractional / "cifar-10-batches-py" / "test_batch").write_bytes(
        py2_dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1.5]}))
    refused(fractional, r"test_batch' has 2 images but its 'labels' is not a list of 2 whole numbers")


def test_a_file_that_cannot_be_read_is_named_not_called_a_bug(tmp_path, monkeypatch):
    root = _damaged(tmp_path, "unreadable")
    locked = root / "cifar-10-batches-bin" / "data_batch_2.bin"
    read_bytes = Path.read_bytes

    def refusing(path):  # what a root-owned 0600 file gives a user (a test run as root could read it)
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refusing)
    with pytest.raises(CnnlabError, match=r"Cannot read '.*data_batch_2.bin': Permission denied\. Make the file "
                                          r"readable, or extract cifar-10-binary.tar.gz again"):
        load_source(DataConfig(spec="cifar10", data_dir=str(root)))


def test_a_stray_file_named_like_a_cifar_file_does_not_hide_the_archive(tmp_path):
    written = write_cifar(tmp_path, name="cifar100", version="python", packed=True)
    (tmp_path / "test").write_text("notes")  # CIFAR-100's python version has a file named test
    data = load_source(DataConfig(spec="cifar100", data_dir=str(tmp_path)))
    assert np.array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), written["test"][0])
    (tmp_path / "cifar-100-python.tar.gz").unlink()  # read last, the partial folder names what it lacks
    with pytest.raises(CnnlabError, match=r"lacks train, meta: an extracted cifar-100-python.tar.gz holds"):
        load_source(DataConfig(spec="cifar100", data_dir=str(tmp_path)))


def test_spec_options_are_checked():
    with pytest.raises(CnnlabError, match="Unknown data spec 'cifar10:coarse': cifar10 takes no option"):
        load_source("cifar10:coarse")
    with pytest.raises(CnnlabError, match=r"cifar100 takes :coarse or :fine \(fine is the default\)"):
        load_source("cifar100:medium")


def test_train_resnet8_on_the_fixture(tmp_path):
    from cnnlab.train.engine import train

    write_cifar(tmp_path / "data", per_class=4, test_per_class=1)
    config = apply_overrides(RunConfig(), [
        "model.name=resnet8", "data.spec=cifar10", f"data.data_dir={tmp_path / 'data'}", "train.epochs=1",
        "train.batch_size=16", "log.quiet=true"])
    threads = torch.get_num_threads()
    try:
        result = train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    metrics = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2 and (result.run_dir / "best.safetensors").is_file()
