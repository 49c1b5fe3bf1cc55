"""Per-channel statistics against numpy's formulas (the lecture's np.mean / np.std per channel)."""

import json

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig
from cnnlab.data import compute_stats, dataset_stats, load_source, stats_path
from cnnlab.data import stats as stats_module
from cnnlab.data.sources import Split
from cnnlab.errors import CnnlabError


def test_mean_std_and_pca_match_numpy():
    data = load_source("synthetic:train=300,val=4,test=4")
    stats = compute_stats(data.train, 3, data.image_size)
    pixels = data.train.images.numpy().astype(np.float64) / 255  # (N, 3, S, S)
    per_channel = pixels.transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(stats.mean, per_channel.mean(axis=1), atol=1e-10)
    assert np.allclose(stats.std, per_channel.std(axis=1), atol=1e-10)
    covariance = np.cov(per_channel, bias=True)
    vectors = np.array(stats.pca_eigvecs)
    for i, value in enumerate(stats.pca_eigvals):
        assert np.allclose(covariance @ vectors[:, i], value * vectors[:, i], atol=1e-10)
    assert list(stats.pca_eigvals) == sorted(stats.pca_eigvals, reverse=True)
    assert stats.pixels == 300 * 32 * 32


def test_stats_stream_in_chunks_of_a_pixel_budget_and_cover_the_whole_split(monkeypatch):
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    split = Split(labels=torch.zeros(10, dtype=torch.long), images=images)
    whole = compute_stats(split, 1, 4)
    monkeypatch.setattr(stats_module, "CHUNK_PIXELS", 3 * 16)  # 3 images of 4x4 per chunk
    assert [len(chunk) for chunk in stats_module._chunks(split, 1, 4)] == [3, 3, 3, 1]
    chunked = compute_stats(split, 1, 4)
    assert chunked.mean == pytest.approx(whole.mean) and chunked.std == pytest.approx(whole.std)
    assert whole.mean[0] == pytest.approx(images.double().mean().item() / 255)
    assert whole.pca_eigvals is None
    # at 224 px the budget holds far fewer images than at 28 px: memory is bounded, not the image count
    monkeypatch.undo()
    big = Split(labels=torch.zeros(200, dtype=torch.long), images=torch.zeros(200, 3, 224, 224, dtype=torch.uint8))
    assert max(len(chunk) for chunk in stats_module._chunks(big, 3, 224)) * 224 * 224 <= stats_module.CHUNK_PIXELS


def test_stats_of_an_empty_split_or_a_constant_channel():
    from cnnlab.errors import CnnlabError

    empty = Split(labels=torch.zeros(0, dtype=torch.long), images=torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(CnnlabError, match="no images"):
        compute_stats(empty, 3, 4)
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    images[:, 1] = 100  # the green channel never varies
    stats = compute_stats(Split(labels=torch.zeros(6, dtype=torch.long), images=images), 3, 4)
    assert stats.std[1] == pytest.approx(1 / 255) and stats.std[0] > 0.1
    # float images in [0, 1] were divided by 255 again: a mean of 0.002 and a std at the floor, without a word
    with pytest.raises(CnnlabError, match=r"needs the split's images as one uint8 tensor.*got torch.float32"):
        compute_stats(Split(labels=torch.zeros(6, dtype=torch.long), images=images.float() / 255), 3, 4)


def test_file_backed_stats_equal_in_memory_stats(tmp_path):
    from PIL import Image

    generator = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.fromarray(generator.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    memory = load_source(DataConfig(spec=f"folder:{tmp_path}", in_memory=True))
    files = load_source(DataConfig(spec=f"folder:{tmp_path}", in_memory=False))
    a = compute_stats(memory.train, 3, memory.image_size)
    b = compute_stats(files.train, 3, files.image_size)
    assert a.mean == pytest.approx(b.mean, abs=1e-12) and a.std == pytest.approx(b.std, abs=1e-12)


def test_cache_is_used_and_invalidated_by_fingerprint(monkeypatch, tmp_path):
    data = load_source("synthetic:train=50,val=4,test=4")
    first, cached = dataset_stats(data)
    assert not cached and stats_path(data).is_file()
    record = json.loads(stats_path(data).read_text())
    assert record["fingerprint"] == data.fingerprint

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed despite a valid cache")

    monkeypatch.setattr(stats_module, "compute_stats", must_not_run)
    second, cached = dataset_stats(data)
    assert cached and second == first
    other = load_source("synthetic:train=60,val=4,test=4")
    assert other.fingerprint != data.fingerprint
    with pytest.raises(AssertionError, match="recomputed"):
        dataset_stats(other)
    monkeypatch.undo()
    run_stats, cached = dataset_stats(data, run_dir=tmp_path)
    assert not cached and (tmp_path / "data-stats.json").is_file() and run_stats == first


def test_folder_stats_are_cached_next_to_the_data(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("L", (5, 5), 40 * i).save(tmp_path / label / f"{i}.png")
    data = load_source(f"folder:{tmp_path}")
    dataset_stats(data)
    assert stats_path(data).parent == tmp_path
    again = load_source(f"folder:{tmp_path}")  # the cache file is ours: not reported as skipped
    assert again.skipped == []


def test_a_file_rewritten_at_its_size_and_time_invalidates_the_cached_statistics(tmp_path):
    import os

    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (4, 4), (40 * i, 10, 10)).save(tmp_path / label / f"{i}.bmp")
    first, _ = dataset_stats(load_source(f"folder:{tmp_path}"))
    # Same size (BMP), and the old modification time put back, as cp -p or rsync -a would
    changed = tmp_path / "a" / "0.bmp"
    before = changed.stat()
    Image.new("RGB", (4, 4), (250, 250, 250)).save(changed)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert changed.stat().st_size == before.st_size
    data = load_source(f"folder:{tmp_path}")
    second, cached = dataset_stats(data)
    assert not cached
    assert second.mean == pytest.approx(compute_stats(data.train, 3, data.image_size).mean)
    assert second.mean != pytest.approx(first.mean)


def test_the_probe_feature_cache_key_changes_with_a_file_rewritten_at_its_size_and_time(tmp_path):
    """The probe's features were read back for pixels rewritten at the same size with the old mtime put back: its
    key held each file's path, size and mtime; the statistics' (above) holds the change time too."""
    import os

    from PIL import Image

    from cnnlab.transfer.probe import split_digest

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (4, 4), (40 * i, 10, 10)).save(tmp_path / label / f"{i}.bmp")
    config = DataConfig(spec=f"folder:{tmp_path}", in_memory=False, val_fraction=0.34)
    first = split_digest(load_source(config).train, 4)
    assert split_digest(load_source(config).train, 4) == first  # nothing changed: the same key
    changed = tmp_path / "a" / "0.bmp"
    before = changed.stat()
    Image.new("RGB", (4, 4), (250, 250, 250)).save(changed)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert changed.stat().st_size == before.st_size and changed.stat().st_mtime_ns == before.st_mtime_ns
    assert split_digest(load_source(config).train, 4) != first


def test_eigenvectors_past_one_by_rounding_are_kept_in_range_and_read_back():
    """eigh gives unit vectors whose entries may pass 1 by a rounding step: the cache's own check refused them,
    so every command recomputed the statistics with a note calling the file damaged. A constant green channel
    beside noise in red and blue (these 20 images) gives 1.0000000000000002."""
    from cnnlab.data.stats import ChannelStats

    generator = np.random.default_rng(9)
    images = np.stack([generator.integers(234, 244, (20, 9, 9)), np.full((20, 9, 9), 161),
                       generator.integers(249, 252, (20, 9, 9))], axis=1).astype(np.uint8)
    split = Split(labels=torch.zeros(20, dtype=torch.long), images=torch.from_numpy(images))
    stats = compute_stats(split, 3, 9)
    assert all(-1.0 <= value <= 1.0 for row in stats.pca_eigvecs for value in row)
    assert ChannelStats.from_dict(json.loads(json.dumps(stats.to_dict())), 3).pca_eigvecs == stats.pca_eigvecs


def test_a_statistics_cache_that_cannot_be_written_is_said_so(tmp_path, cli, monkeypatch):
    """A folder standing at the cache file's name: the statistics were skipped without the promised note, and
    `data stats` said they were "written to" it."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (4, 4), (40 * i, 10, 10)).save(tmp_path / label / f"{i}.png")
    stats_path(load_source(f"folder:{tmp_path}")).mkdir()
    code, out, err = cli(["data", "stats", f"folder:{tmp_path}"])
    said = " ".join(out.split())
    assert code == 0 and "statistics not kept" in said and "written to" not in said, out
    assert "it is not a file" in " ".join(err.split()), err
    # a damaged file that cannot be rewritten: the note said so, and the next line "written to" it
    stats_path(load_source(f"folder:{tmp_path}")).rmdir()
    stats_path(load_source(f"folder:{tmp_path}")).write_text("{not json")
    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(stats_module, "write_json_atomic", refused)
    code, out, err = cli(["data", "stats", f"folder:{tmp_path}", "--json"])
    result = json.loads(out)
    assert code == 0 and result["stats_from_cache"] is False and result["stats_written"] is False


def test_atomic_writes_leave_no_temporary_file_and_normal_permissions(tmp_path):
    import os

    from cnnlab.errors import CnnlabError
    from cnnlab.io import write_json_atomic

    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_json_atomic(tmp_path / "new" / "deeper" / "out.json", {"b": 2})  # missing folders are created
    assert json.loads((tmp_path / "new" / "deeper" / "out.json").read_text()) == {"b": 2}
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CnnlabError, match="Cannot write"):  # a file where a folder should be
        write_json_atomic(tmp_path / "a-file" / "out.json", {})


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# One damaged cache entry per kind: (name, change to the cached record's "stats", words the note must hold)
BAD_CACHE_ENTRIES = [
    ("zero std", lambda s: s.update(std=[0.0, 0.0, 0.0]), "std"),
    ("negative std", lambda s: s.update(std=[-0.1, 0.2, 0.2]), "std"),
    ("nan std", lambda s: s.update(std=[float("nan"), 0.2, 0.2]), "std"),
    ("infinite mean", lambda s: s.update(mean=[float("inf"), 0.5, 0.5]), "mean"),
    ("mean above 1", lambda s: s.update(mean=[1.5, 0.5, 0.5]), "mean"),
    ("one channel of three", lambda s: s.update(mean=[0.5]), "mean"),
    ("text for numbers", lambda s: s.update(mean="abc"), "mean"),
    ("no pixel count", lambda s: s.pop("pixels"), "pixels"),
    ("nan in the colour PCA", lambda s: s.update(pca_eigvals=[float("nan"), 0.1, 0.1]), "pca_eigvals"),
    ("stats null", None, "stats"),
]


@pytest.mark.parametrize("name, damage, word", BAD_CACHE_ENTRIES, ids=[entry[0] for entry in BAD_CACHE_ENTRIES])
def test_a_damaged_cache_entry_is_recomputed_and_rewritten_with_a_note(capsys, name, damage, word):
    data = load_source("synthetic:classes=3,train=30,val=3,test=3")
    path = stats_path(data)
    path.unlink(missing_ok=True)
    fresh, cached = dataset_stats(data)
    assert not cached
    record = json.loads(path.read_text())
    if damage is None:
        record["stats"] = None
    else:
        damage(record["stats"])
    path.write_text(json.dumps(record))
    capsys.readouterr()
    again, cached = dataset_stats(data)
    assert not cached and again == fresh  # not the damaged values: a fresh computation's
    note = capsys.readouterr().err
    assert note.startswith("note: ") and str(path) in note and word in note and "recomputed" in note
    rewritten = json.loads(path.read_text())["stats"]
    assert stats_module.ChannelStats.from_dict(rewritten, 3) == fresh
    assert dataset_stats(data) == (fresh, True) and capsys.readouterr().err == ""  # read back without a note



def test_a_cache_file_that_is_not_json_is_recomputed_with_a_note(capsys):
    data = load_source("synthetic:classes=3,train=30,val=3,test=3")
    fresh, _ = dataset_stats(data, refresh=True)
    stats_path(data).write_text('{"version": 1, "stats": {"mean": [0.5')  # cut short
    capsys.readouterr()
    assert dataset_stats(data) == (fresh, False)
    assert str(stats_path(data)) in capsys.readouterr().err
    assert dataset_stats(data) == (fresh, True)


def test_dataset_stats_refuses_a_spec_and_says_how_to_load_it():
    """A spec used to fail with AttributeError: 'str' object has no attribute 'fingerprint'."""
    for function in (dataset_stats, stats_path):
        with pytest.raises(CnnlabError) as err:
            function("digits")
        message = str(err.value)
        assert f"{function.__name__} takes a loaded data set" in message
        assert "cnnlab.data.load_source('digits')" in message  # how to load the one it was given
    with pytest.raises(CnnlabError, match="load_source\\(SPEC\\)"):
        dataset_stats(5)


@pytest.mark.parametrize("args, named", [
    ((None, 1, 8), "takes one split of a loaded data set"),  # used to be a TypeError from len(None)
    (("train", 1, 8), "takes one split of a loaded data set"),
    ((Split(labels=torch.zeros(1, dtype=torch.long), images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), 2, 8),
     "channels=2"),
    ((Split(labels=torch.zeros(1, dtype=torch.long), images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), 1, 0),
     "image_size=0"),
])
def test_compute_stats_names_the_argument_it_cannot_take(args, named):
    with pytest.raises(CnnlabError) as err:
        compute_stats(*args)
    assert named in str(err.value) and str(err.value).startswith("compute_stats")


def test_data_stats_says_which_std_is_floored(tmp_path, cli):
    # numpy's std of a constant channel is 0; the 1/255 reported in its place is named, not left to be found
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(3):
            pixels = np.zeros((6, 6, 3), dtype=np.uint8)
            pixels[..., 0] = np.arange(36).reshape(6, 6) * 5 + index  # red varies; green constant, blue black
            pixels[..., 1] = 9
            Image.fromarray(pixels).save(tmp_path / name / f"{index}.png")
    code, out, _ = cli(["data", "stats", f"folder:{tmp_path}", "--json"])
    report = json.loads(out)
    assert code == 0 and report["std_at_floor"] == [1, 2]
    assert report["std"][1] == pytest.approx(1 / 255) and report["std"][0] > 0.1
    code, out, _ = cli(["data", "stats", f"folder:{tmp_path}"])
    assert code == 0 and "G, B: std set to the floor of one grey level" in out
    assert "floor" not in cli(["data", "stats", "digits"])[1]
    assert json.loads(cli(["data", "stats", "digits", "--json"])[1])["std_at_floor"] == []
