"""make_loader: the in-memory and file paths agree, epochs repeat exactly, and the grid shows what training sees."""

import json
import math
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data import dataset_stats, load_source
from cnnlab.data.loaders import FileLoader, make_loader
from cnnlab.data.memory import MemoryLoader
from cnnlab.data import show
from cnnlab.data.show import augmentation_grid, save_augmentation_grid
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of random RGB images of mixed sizes."""
    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    sizes = [(20, 16), (16, 20), (24, 24), (18, 30)]
    for label in ("ant", "bee"):
        (root / label).mkdir()
        for i in range(8):
            w, h = sizes[i % len(sizes)]
            pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / label / f"{i}.png")
    return root


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_memory_and_file_paths_give_the_same_eval_batches(folder):
    config = dict(spec=f"folder:{folder}", image_size=16, val_fraction=0.25)
    memory = load_source(DataConfig(**config, in_memory=True))
    files = load_source(DataConfig(**config, in_memory=False))
    stats, _ = dataset_stats(memory)
    a = make_loader(memory, "val", stats, batch_size=3, train=False)
    b = make_loader(files, "val", stats, batch_size=3, train=False)
    assert isinstance(a, MemoryLoader) and isinstance(b, FileLoader) and len(a) == len(b) == 2
    for (xa, ya), (xb, yb) in zip(_batches(a, 0), _batches(b, 0)):
        assert torch.equal(ya, yb)
        assert torch.allclose(xa, xb, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 1])
def test_memory_and_file_paths_give_the_same_shuffled_training_batches(folder, workers):
    """The same seed gives the same batches whether the split is held in memory or read from files: switching
    data.in_memory (or crossing memory_limit_mb) does not change what a run trains on."""
    config = dict(spec=f"folder:{folder}", image_size=16, val_fraction=0.25)
    memory = load_source(DataConfig(**config, in_memory=True))
    files = load_source(DataConfig(**config, in_memory=False))
    stats, _ = dataset_stats(memory)
    a = make_loader(memory, "train", stats, batch_size=3, train=True, seed=7)
    b = make_loader(files, "train", stats, batch_size=3, train=True, seed=7, num_workers=workers)
    assert isinstance(a, MemoryLoader) and isinstance(b, FileLoader) and len(a) == len(b) == 4
    for epoch in (0, 1):
        first, second = _batches(a, epoch), _batches(b, epoch)
        assert not torch.equal(torch.cat([y for _, y in first]), memory.train.labels[:12])  # it did shuffle
        for (xa, ya), (xb, yb) in zip(first, second):
            assert torch.equal(ya, yb)
            assert torch.allclose(xa, xb, atol=1e-6)
    assert not all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(_batches(b, 0), _batches(b, 1)))
    b.set_epoch(1)  # the order it reports is the one it yields
    assert torch.equal(files.train.labels[b.yield_order()], torch.cat([y for _, y in _batches(b, 1)]))


@pytest.mark.parametrize("placement", ["memory", "files", "buckets"])
def test_batch_size_is_checked_alike_by_every_loader(folder, placement):
    options = {"memory": dict(in_memory=True), "files": dict(in_memory=False), "buckets": dict(buckets="1:1,2:1")}
    data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, val_fraction=0.25, **options[placement]))
    stats, _ = dataset_stats(data)
    # numpy's integer is a batch size (it was refused by the bucketed loader, as a Python float was accepted
    # by the in-memory one, and the file loader left both to torch's DataLoader, whose ValueError is no message)
    loader = make_loader(data, "train", stats, batch_size=np.int64(4), train=True, aug="light")
    assert [len(y) for _, y in loader][0] == 4
    for bad in (2.0, 0, True, "4"):
        with pytest.raises(CnnlabError, match=r"batch_size=.* must be a whole number of images, at least 1"):
            make_loader(data, "train", stats, batch_size=bad, train=True, aug="light")
    # a negative worker count was ignored by the in-memory loader and left to torch's ValueError by the others
    for bad in (-1, 1.5, "2"):
        with pytest.raises(CnnlabError, match=r"num_workers=.* must be a whole number of worker processes"):
            make_loader(data, "train", stats, batch_size=4, train=True, num_workers=bad)
    # no statistics: an AttributeError from inside the in-memory loader ('NoneType' has no 'mean')
    for bad in (None, (0.5, 0.25)):
        with pytest.raises(CnnlabError, match=r"normalises the images by their channel statistics.*dataset_stats"):
            make_loader(data, "train", bad, batch_size=4, train=True)


@pytest.mark.parametrize("placement", ["memory", "files", "buckets"])
def test_left_out_and_smallest_batch_count_what_an_epoch_yields(folder, bucketed, placement):
    """Training drops each epoch's last, short batch (per bucket with buckets): ``left_out`` is how many images
    an epoch never yields, counted here by iterating it; evaluation keeps every image."""
    if placement == "buckets":
        data = _bucketed_data(bucketed)
    else:
        data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, val_fraction=0.25,
                                      in_memory=placement == "memory"))
    stats, _ = dataset_stats(data)
    for batch_size in (3, 4, 5):
        loader = make_loader(data, "train", stats, batch_size=batch_size, train=True, aug="light")
        sizes = [len(y) for _, y in _batches(loader, 0)]
        assert loader.left_out == len(data.train) - sum(sizes)
        assert loader.smallest_batch == min(sizes)  # a bucket smaller than a batch gives its short one
        if placement != "buckets":  # one loader: whatever does not fill a last batch
            assert loader.left_out == len(data.train) % batch_size
    val = make_loader(data, "val", stats, batch_size=5, train=False)
    assert val.left_out == 0 and val.smallest_batch == min(len(y) for _, y in _batches(val, 0))


@pytest.mark.parametrize("workers", [0, 1])
def test_file_loader_epochs_repeat_exactly_and_differ_between_epochs(folder, workers):
    data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=False))
    stats, _ = dataset_stats(data)
    loader = make_loader(data, "train", stats, batch_size=4, train=True, aug="strong", seed=5, num_workers=workers)
    first, again, other = _batches(loader, 1), _batches(loader, 1), _batches(loader, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, other))
    assert all(x.shape == (4, 3, 16, 16) for x, _ in first)


def test_alternating_flips_need_the_images_in_memory(folder):
    from cnnlab.config import AugConfig

    data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=False))
    stats, _ = dataset_stats(data)
    aug = AugConfig(preset="none", hflip=0.5, hflip_alternate=True)
    with pytest.raises(CnnlabError, match="hflip_alternate needs the training images in memory.*data.in_memory=true"):
        make_loader(data, "train", stats, batch_size=4, train=True, aug=aug)
    make_loader(data, "val", stats, batch_size=4, train=False, aug=aug)  # evaluation never flips: no objection
    memory = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=True))
    assert isinstance(make_loader(memory, "train", stats, batch_size=4, train=True, aug=aug), MemoryLoader)


@pytest.mark.parametrize("aug", ["standard", "strong"])  # strong: mixup and CutMix on whole batches too
def test_file_loader_views_do_not_depend_on_worker_count(folder, aug):
    data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=False))
    stats, _ = dataset_stats(data)
    runs = []
    for workers in (0, 2):
        loader = make_loader(data, "train", stats, batch_size=4, train=True, aug=aug, seed=2, num_workers=workers)
        runs.append(_batches(loader, 2))
    assert len(runs[0]) > 2  # several batches, so that draws taken in another order would show
    assert all(torch.equal(x0, x1) and torch.equal(y0, y1) for (x0, y0), (x1, y1) in zip(*runs))


def test_mixing_gives_soft_targets_through_make_loader():
    data = load_source("synthetic:classes=4,train=64,val=8,test=8")
    stats, _ = dataset_stats(data)
    loader = make_loader(data, "train", stats, batch_size=16, train=True, aug="strong")
    targets = [y for _, y in _batches(loader, 0)]
    soft = [y for y in targets if y.dim() == 2]
    assert soft, "the strong preset mixes about half the batches"
    assert all(torch.allclose(y.sum(1), torch.ones(len(y))) for y in soft)


def test_grid_originals_are_eval_images_and_none_preset_changes_nothing(tmp_path):
    data = load_source("synthetic:classes=3,train=30,val=3,test=3")
    stats, _ = dataset_stats(data)
    grid = augmentation_grid(data, stats, "none", rows=3, views=2, seed=1)
    assert grid["views"].shape == (3, 2, 32, 32, 3) and grid["mixed"] is None
    for r in range(3):
        for v in range(2):
            assert torch.allclose(grid["views"][r, v], grid["originals"][r], atol=1e-6)
    # the originals are the stored pixels, un-normalised
    index = data.classes.index(grid["labels"][0])
    assert 0 <= index < 3 and grid["originals"].min() >= 0 and grid["originals"].max() <= 1
    strong = augmentation_grid(data, stats, "strong", rows=2, views=3)
    assert strong["mixed"].shape == (4, 32, 32, 3) and len(strong["mixed_labels"]) == 4
    path = save_augmentation_grid(strong, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CnnlabError, match=".png"):
        save_augmentation_grid(strong, tmp_path / "grid.jpg")


def test_cli_data_stats_json_and_show(cli, tmp_path, folder):
    code, out, err = cli(["data", "stats", "synthetic:classes=3,train=30,val=6,test=6", "--json"])
    assert code == 0
    result = json.loads(out)
    data = load_source("synthetic:classes=3,train=30,val=6,test=6")
    pixels = data.train.images.double() / 255
    assert result["mean"] == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist())
    assert result["splits"]["train"]["images"] == 30 and result["num_classes"] == 3
    out_file = tmp_path / "grid.png"
    code, out, err = cli(["data", "show", "digits", "--aug", "light", "--out", str(out_file), "--rows", "2", "--views", "2"])
    assert code == 0 and out_file.is_file() and "written to" in out
    (folder / "ant" / "readme.md").write_text("x")
    try:
        code, out, err = cli(["data", "stats", f"folder:{folder}"])
        assert code == 0 and "skipped 1 file: " in err and "readme.md (not an image file (.md))" in err
    finally:
        (folder / "ant" / "readme.md").unlink()


def test_show_with_more_rows_than_training_images_shows_them_all_and_says_so(cli, tmp_path):
    spec = "synthetic:classes=3,train=6,val=3,test=3"
    data = load_source(spec)
    grid = augmentation_grid(data, dataset_stats(data)[0], "none", rows=20, views=2)
    assert grid["views"].shape[0] == len(data.train) == 6
    assert grid["warnings"] == ["--rows 20: the training split has 6 images; the grid shows all 6"]
    assert augmentation_grid(data, dataset_stats(data)[0], "none", rows=6, views=2)["warnings"] == []
    one = load_source("synthetic:classes=2,train=2,val=2,test=2")
    one.train = one.train.subset(torch.tensor([0]))  # a split of one image (a source needs one per class)
    assert augmentation_grid(one, dataset_stats(one)[0], "none", rows=20, views=2)["warnings"] == [
        "--rows 20: the training split has 1 image; the grid shows all 1"]
    out_file = tmp_path / "grid.png"
    code, out, err = cli(["data", "show", spec, "--rows", "20", "--views", "2", "--out", str(out_file)])
    assert code == 0 and out_file.is_file() and "6 images x 2 augmented views" in out
    assert "warning: --rows 20: the training split has 6 images; the grid shows all 6" in err


def test_show_refuses_a_grid_above_the_memory_limit_before_making_it(cli, tmp_path, monkeypatch):
    data = load_source("synthetic:classes=3,train=12,val=3,test=3")
    stats = dataset_stats(data)[0]
    per_image = data.channels * data.image_size**2 * 4  # bytes of one float32 view
    limit_mb = 1
    fits = 2**20 // per_image
    made = []
    monkeypatch.setattr(show, "_first_batch", lambda *a, **k: made.append(1) or pytest.fail("a batch was made"))
    with pytest.raises(CnnlabError, match=rf"--rows 10 x --views 10 = 100 augmented images .* above "
                                          rf"data.memory_limit_mb=1.*At most {fits} images fit: lower --views to "
                                          rf"{fits // 10} \(with --rows 10\) or --rows to {fits // 10}"):
        show.augmentation_grid(data, stats, "none", rows=10, views=10, memory_limit_mb=limit_mb)
    with pytest.raises(CnnlabError, match="One image alone is above it"):
        show.check_grid_size(1, 1, 3, 1024, limit_mb)
    assert not made
    monkeypatch.undo()
    grid = show.augmentation_grid(data, stats, "none", rows=fits // 10, views=10, memory_limit_mb=limit_mb)
    assert grid["views"].shape[:2] == (fits // 10, 10)
    # the command line: the default limit (data.memory_limit_mb), refused with exit 2 and no file written
    out_file = tmp_path / "big.png"
    code, out, err = cli(["data", "show", "synthetic:classes=3,train=96,val=24,test=24", "--image-size", "256",
                          "--rows", "100", "--views", "100", "--out", str(out_file)])
    assert code == 2 and "Traceback" not in err and not out_file.exists(), err
    assert "--rows 100 (the 96 training images) x --views 100 = 9,600 augmented images" in err and f"memory_limit_mb={DataConfig().memory_limit_mb}" in err, err
    assert "or raise --memory-limit-mb" in err
    # the way out it names: 2 x 3 RGB views of 256 x 256 take 4.5 MiB as float32, above a limit of 3 (which the
    # 12 images themselves, 2.25 MiB as uint8, are under), and a limit of 5 draws the grid
    small = ["data", "show", "synthetic:classes=3,train=6,val=3,test=3", "--image-size", "256", "--rows", "2",
             "--views", "3", "--out", str(out_file), "--memory-limit-mb"]
    code, out, err = cli([*small, "3"])
    assert code == 2 and "augmented images" in err and "above data.memory_limit_mb=3 " in err, err
    assert not out_file.exists()
    code, out, err = cli([*small, "5"])
    assert code == 0 and out_file.exists(), err


def test_data_stats_takes_the_memory_limit_its_refusal_offers_to_raise(cli):
    """The refusal said "raise memory_limit_mb", which cnnlab data stats had no way to do."""
    args = ["data", "stats", "digits", "--image-size", "2000"]
    code, out, err = cli(args)
    assert code == 2 and "--memory-limit-mb N for cnnlab data stats and data show" in err, err
    code, out, err = cli([*args[:-1], "200", "--memory-limit-mb", "10"])  # 2 x 1,797 x 200 x 200 bytes: 137 MiB
    assert code == 2 and "above data.memory_limit_mb=10." in err, err
    code, out, err = cli([*args[:-1], "200", "--memory-limit-mb", "200", "--json"])
    assert code == 0 and json.loads(out)["image_size"] == [200, 200], err


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "stats", "imagenet"], "Unknown data spec"),
        (["data", "show", "digits", "--aug", "wild"], "aug.preset='wild' is not allowed: choose one of none, light, standard, strong"),
        (["data", "show", "digits", "--out", "grid.pdf"], ".png"),
        (["data", "stats", "csv:/no/such.csv"], "does not exist"),
    ],
)
def test_cli_data_bad_input_exits_2_with_one_paragraph(cli, args, message):
    code, out, err = cli(args)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("spec, in_chans", [("digits", 3), ("synthetic:train=16,val=4,test=4", 1)])
def test_data_channels_follow_the_model_without_a_shape_crash(spec, in_chans):
    from cnnlab.models import create_model

    model = create_model("lenet5", num_classes=10, in_chans=in_chans).eval()
    data = load_source(DataConfig(spec=spec, channels=model.in_chans))
    assert data.channels == in_chans and any("converted" in n for n in data.notices)
    stats, _ = dataset_stats(data)
    x, _ = next(iter(make_loader(data, "train", stats, batch_size=8, train=True, aug="standard")))
    assert x.shape[1] == in_chans and model(x).shape == (8, 10)


def test_more_workers_than_the_system_can_start_are_refused_before_any_starts(folder, monkeypatch):
    """train.num_workers=100000 started processes until fork failed, the run hung meanwhile: refused in words
    against the operating system's limit, as train.threads is. In-memory data starts none, so is not refused."""
    import cnnlab.threads

    files = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=False, val_fraction=0.25))
    stats, _ = dataset_stats(files)
    monkeypatch.setattr(cnnlab.threads, "os_thread_limit", lambda: 2)
    with pytest.raises(CnnlabError, match=r"num_workers=3 \(train.num_workers\) is more worker processes than the "
                                          r"operating system can start for this process \(2: "):
        make_loader(files, "train", stats, batch_size=2, train=True, num_workers=3)
    assert len(make_loader(files, "train", stats, batch_size=2, train=True, num_workers=2)) > 0  # at the limit
    memory = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, in_memory=True, val_fraction=0.25))
    make_loader(memory, "train", stats, batch_size=2, train=True, num_workers=3)


def test_bucketed_folder_batches_keep_one_shape_per_batch(tmp_path):
    shapes = [(40, 30), (30, 40), (32, 32), (64, 48), (20, 60)]  # (width, height)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.new("RGB", shapes[i % len(shapes)], (20 * i, 100, 50)).save(tmp_path / label / f"{i}.png")
    data = load_source(DataConfig(spec=f"folder:{tmp_path}", image_size=32, buckets="4:3,1:1,3:4"))
    assert data.buckets == [(4, 3), (1, 1), (3, 4)] and not data.train.in_memory
    stats, _ = dataset_stats(data)
    for train in (True, False):
        loader = make_loader(data, "train", stats, batch_size=4, train=train, aug="standard")
        loader.set_epoch(0)
        seen = 0
        for x, y in loader:
            height, width = x.shape[-2:]
            assert x.shape[0] == len(y) and x.shape[1] == 3
            # landscape buckets are wider than tall and the other way round: no square squashing
            assert (height, width) in {(24, 32), (32, 32), (32, 24)}
            seen += len(y)
        assert seen == len(data.train) or (train and seen <= len(data.train))
    with pytest.raises(CnnlabError, match="needs images read from files"):
        load_source(DataConfig(spec="digits", buckets="4:3,1:1"))
    # a folder asked to be held in memory as well: the message names that setting, not the folder's shapes
    with pytest.raises(CnnlabError, match="data.in_memory=true decodes every image once") as refused:
        load_source(DataConfig(spec=f"folder:{tmp_path}", buckets="4:3,1:1", in_memory=True))
    assert "one image shape already" not in str(refused.value)


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    """Landscape, square and portrait images; the portrait bucket (3 images) is smaller than a batch of 4."""
    root = tmp_path_factory.mktemp("bucketed")
    shapes = [(40, 30)] * 5 + [(32, 32)] * 4 + [(30, 40)] * 3  # (width, height)
    generator = torch.Generator().manual_seed(1)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i, (w, h) in enumerate(shapes):
            pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / label / f"{i}.png")
    return root


def _bucketed_data(root):
    return load_source(DataConfig(spec=f"folder:{root}", image_size=32, buckets="4:3,1:1,3:4", val_fraction=0.25))


def test_bucketed_training_uses_small_buckets_and_leaves_the_dataset_alone(bucketed):
    data = _bucketed_data(bucketed)
    stats, _ = dataset_stats(data)
    notices = list(data.notices)
    loader = make_loader(data, "train", stats, batch_size=4, train=True, aug="light")
    make_loader(data, "train", stats, batch_size=4, train=True, aug="light")
    assert data.notices == notices  # making a loader reports nothing by changing the data set
    shapes = {tuple(x.shape[-2:]) for x, _ in _batches(loader, 0)}
    assert (32, 24) in shapes  # the portrait bucket, smaller than a batch, is trained on
    assert loader.batch_sampler.left_out < 4 * 3  # at most a partial batch per bucket


def test_bucketed_epoch_leaves_torch_global_random_state_alone(bucketed):
    data = _bucketed_data(bucketed)
    stats, _ = dataset_stats(data)
    loader = make_loader(data, "train", stats, batch_size=4, train=True, aug="standard", seed=3)
    before = torch.get_rng_state()
    _batches(loader, 0)
    assert torch.equal(torch.get_rng_state(), before)


def test_grid_of_bucketed_data_shows_square_images(bucketed):
    data = _bucketed_data(bucketed)
    stats, _ = dataset_stats(data)
    grid = augmentation_grid(data, stats, "light", rows=4, views=2, seed=0)
    assert grid["views"].shape == (4, 2, 32, 32, 3) and grid["originals"].shape == (4, 32, 32, 3)
    assert data.buckets  # the data set keeps its buckets for training


def test_cli_show_prints_the_images_it_shows_and_small_splits_exit_2(cli, tmp_path):
    out_file = tmp_path / "grid.png"
    code, out, err = cli(["data", "show", "synthetic:classes=2,train=3,val=2,test=2", "--aug", "none",
                          "--rows", "6", "--views", "2", "--out", str(out_file)])
    assert code == 0 and "3 images x 2 augmented views" in out
    root = tmp_path / "single"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / label / "0.png")
    code, out, err = cli(["data", "stats", f"folder:{root}"])
    assert code == 2 and "at least 2 images per class" in err and "Traceback" not in err


def test_skipped_text_names_as_many_files_as_the_sources_say(monkeypatch):
    from cnnlab.data import sources
    from cnnlab.data.sources import skipped_text

    skipped = [(f"f{i}.png", "broken") for i in range(9)]
    monkeypatch.setattr(sources, "FIRST_FEW", 2)
    assert skipped_text(skipped) == "skipped 9 files: f0.png (broken); f1.png (broken); and 7 more"


def test_announce_writes_the_notes_and_one_warning_naming_the_first_few_skipped_files(capsys):
    from types import SimpleNamespace

    from cnnlab.data.sources import FIRST_FEW, announce

    skipped = [(f"f{i}.png", "broken") for i in range(FIRST_FEW + 2)]
    announce(SimpleNamespace(notices=["validation: 2 images held out"], skipped=skipped))
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays the command's output
    lines = err.splitlines()
    assert lines[0] == "note: validation: 2 images held out" and len(lines) == 2
    assert lines[1].startswith(f"warning: skipped {FIRST_FEW + 2} files: f0.png (broken);")
    assert f"f{FIRST_FEW - 1}.png" in lines[1] and f"f{FIRST_FEW}.png" not in lines[1]
    assert lines[1].endswith("; and 2 more")


def test_skipped_text_counts_files_and_csv_rows_apart():
    from cnnlab.data.sources import CsvRow, skipped_text

    row = (CsvRow("data.csv line 3"), "no file 'a.png'")
    assert skipped_text([row]) == "skipped 1 row: data.csv line 3 (no file 'a.png')"
    assert skipped_text([row, row]).startswith("skipped 2 rows: ")
    assert skipped_text([("b.png", "broken")]).startswith("skipped 1 file: ")
    assert skipped_text([("b.png", "broken"), row, row]).startswith("skipped 1 file and 2 rows: ")


def test_seeded_transform_repeats_per_seed_and_index_and_restores_the_global_state():
    from cnnlab.data import buckets, loaders, memory
    from cnnlab.data.seeding import epoch_seed, seeded_transform

    assert memory.epoch_seed is loaders.epoch_seed is buckets.epoch_seed is epoch_seed  # one definition
    def noise(image):
        return image + torch.rand(image.shape)

    image = torch.zeros(2, 3)
    before = torch.get_rng_state()
    first = seeded_transform(noise, image, seed=5, index=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(seeded_transform(noise, image, 5, 1), first)
    assert not torch.equal(seeded_transform(noise, image, 5, 2), first)


def test_the_grid_lays_each_image_in_its_cell_and_a_large_grid_stays_within_the_figure_limit(tmp_path):
    import matplotlib.image

    from cnnlab.data import show

    data = load_source("synthetic:classes=3,train=30,val=3,test=3")
    grid = augmentation_grid(data, dataset_stats(data)[0], "standard", rows=3, views=2, seed=1)
    cells = [[grid["originals"][r], *grid["views"][r]] for r in range(3)]
    mosaic, (cell_w, cell_h, gap) = show.grid_mosaic(cells, 32, gray=False)
    assert mosaic.shape == (3 * cell_h + gap, 3 * cell_w + gap, 3) and cell_w == 32 + gap and cell_h > 32
    for r in range(3):
        for c in range(3):
            top, left = r * cell_h + cell_h - 32, gap + c * cell_w
            assert (mosaic[top:top + 32, left:left + 32] == cells[r][c].numpy()).all()  # each image, whole, in place
    blank = mosaic.copy()
    for r in range(3):
        for c in range(3):
            blank[r * cell_h + cell_h - 32:(r + 1) * cell_h, gap + c * cell_w:gap + c * cell_w + 32] = 1
    assert (blank == 1).all()  # and nothing else: the rest is white
    # the PNG is the figure the cells ask for, at DPI; a 40 x 40 grid is shrunk to MAX_FIGURE_INCHES
    path = show.save_augmentation_grid(grid, tmp_path / "small.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == (round(3 * show.CELL_INCHES[0] * show.DPI),
                               round((3 * show.CELL_INCHES[1] + show.TITLE_INCHES) * show.DPI))
    big_data = load_source(DataConfig(spec="synthetic:classes=2,train=40,val=2,test=2", image_size=8))
    big = augmentation_grid(big_data, dataset_stats(big_data)[0], "none", rows=40, views=40)
    height, width = matplotlib.image.imread(show.save_augmentation_grid(big, tmp_path / "big.png")).shape[:2]
    limit = show.MAX_FIGURE_INCHES * show.DPI
    assert max(width, height) <= limit + show.TITLE_INCHES * show.DPI and width >= 0.9 * limit


def test_a_split_the_data_lacks_and_a_device_cnnlab_does_not_run_on_are_named(folder, monkeypatch):
    """make_loader(data, "validation") and device="gpu" are refused with the names to use, as run_eval and
    train.device refuse them, not with a KeyError or torch's list of every device type."""
    data = load_source(DataConfig(spec=f"folder:{folder}", image_size=16, val_fraction=0.25))
    stats, _ = dataset_stats(data)
    assert "test" not in data.splits()  # a folder without a test folder: the message lists what it has
    for split in ("validation", "test"):
        with pytest.raises(CnnlabError, match=f"has no split \"{split}\": it has train, val\\.") as err:
            make_loader(data, split, stats, batch_size=4, train=False)
        assert not isinstance(err.value, KeyError)
    with pytest.raises(CnnlabError, match="device='gpu' is not a device cnnlab runs on: use auto, cpu, cuda or cuda:N"):
        make_loader(data, "val", stats, batch_size=4, train=False, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CnnlabError, match="no CUDA GPU is available"):
        make_loader(data, "val", stats, batch_size=4, train=False, device="cuda")
    loader = make_loader(data, "val", stats, batch_size=4, train=False, device="auto")  # auto: the CPU here
    assert next(iter(loader))[0].device.type == "cpu"
    assert len(make_loader(data, data.val, stats, batch_size=4, train=False)) == len(loader)  # a Split as it is


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_gone_mid_training_is_one_message_without_a_worker_traceback(tmp_path, workers):
    for label in ("ant", "bee"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / label / f"{i}.png")
    data = load_source(DataConfig(spec=f"folder:{tmp_path}", in_memory=False, val_fraction=0.34))
    stats, _ = dataset_stats(data)
    gone = data.train.paths[0]
    gone.unlink()
    children = set(multiprocessing.active_children())  # another test's, in this worker: not this loader's
    loader = make_loader(data, "train", stats, batch_size=2, train=True, aug="light", num_workers=workers,
                         shuffle=False)
    with pytest.raises(CnnlabError) as raised:
        list(loader)
    assert str(raised.value) == f"The image '{gone}' does not exist: check the path."
    # the epoch's worker is stopped as the error leaves the loader: left to the garbage collector (the traceback
    # holds torch's iterator), its stop waited torch's full 5 s worker timeout
    assert set(multiprocessing.active_children()) <= children


def test_show_draws_the_aug_fields_set_over_the_preset(cli, tmp_path, monkeypatch):
    # a run's custom augmentation (a recipe sets fields over preset none) must be what the grid shows
    grids = []

    def recording(*args, **kwargs):
        grids.append(augmentation_grid(*args, **kwargs))
        return grids[-1]

    monkeypatch.setattr(show, "augmentation_grid", recording)
    out_file = tmp_path / "grid.png"
    spec = "synthetic:classes=2,train=4,val=2,test=2"
    base = ["data", "show", spec, "--aug", "none", "--rows", "2", "--views", "2", "--out", str(out_file)]
    code, out, err = cli(base)
    assert code == 0 and torch.equal(grids[-1]["views"][:, 0], grids[-1]["originals"])  # none: views are originals
    code, out, err = cli(base + ["--set", "aug.erasing=1.0", "--set", "aug.erasing_scale=[0.2,0.2]"])
    assert code == 0, err
    grid = grids[-1]
    assert grid["aug"].preset == "none" and grid["aug"].erasing == 1.0
    for row in range(2):
        for view in range(2):  # every view has its box erased, so none equals its original
            assert not torch.equal(grid["views"][row, view], grid["originals"][row])
    for wrong, message in ((["--set", "data.seed=3"], "takes only aug.KEY=VALUE"), (["--set", "aug.preset=strong"], "--aug"),
                           (["--set", "aug.erasing=2"], "erasing=2.0 is a probability")):
        code, out, err = cli(base + wrong)
        assert code == 2 and message in err and "Traceback" not in err



def test_show_notes_the_aug_fields_the_pipeline_leaves_unused_as_train_does(cli, tmp_path):
    """A flip asked for on digits is drawn with train's note; a field no crop reads is named; the preset alone,
    or a field that is used, says nothing."""
    base = ["data", "show", "digits", "--rows", "2", "--views", "2", "--out", str(tmp_path / "grid.png")]
    code, out, err = cli(base + ["--aug", "light", "--set", "aug.hflip=0.5"])
    assert code == 0 and "note: aug.hflip=0.5 mirrors" in err, err
    code, out, err = cli(base + ["--aug", "light", "--set", "aug.crop=translate", "--set", "aug.crop_scale=[0.5,1]"])
    assert code == 0 and "aug.crop_scale=" in err and "is not used" in err, err
    for quiet in (["--aug", "light"], ["--aug", "light", "--set", "aug.erasing=0.5"]):
        code, out, err = cli(base + quiet)
        assert code == 0 and "note: aug." not in err, (quiet, err)


def test_show_fills_erased_boxes_with_the_mean_of_the_normalisation_given(cli, tmp_path, monkeypatch):
    # erasing writes 0 after normalisation, the normalisation's mean: with data.normalize=none a run's
    # boxes are black, with imagenet ImageNet's mean; the grid must draw the same pixels
    from cnnlab.data.stats import imagenet_mean_std

    imagenet_mean = imagenet_mean_std()[0]

    grids = []

    def recording(*args, **kwargs):
        grids.append(augmentation_grid(*args, **kwargs))
        return grids[-1]

    monkeypatch.setattr(show, "augmentation_grid", recording)
    spec = "synthetic:classes=2,train=4,val=2,test=2"
    base = ["data", "show", spec, "--aug", "none", "--rows", "2", "--views", "2", "--out", str(tmp_path / "grid.png"),
            "--set", "aug.erasing=1.0", "--set", "aug.erasing_scale=[0.2,0.2]"]

    def boxes(grid):  # the pixels of each view that differ from its original: the erased box
        views, originals = grid["views"], grid["originals"].unsqueeze(1).expand_as(grid["views"])
        changed = (views - originals).abs().amax(dim=-1) > 1e-4
        return views[changed]  # (pixels, C)

    for normalize, fill in (("none", [0.0, 0.0, 0.0]), ("imagenet", list(imagenet_mean))):
        code, out, err = cli(base + ["--set", f"data.normalize={normalize}"])
        assert code == 0, err
        erased = boxes(grids[-1])
        assert len(erased) > 0
        torch.testing.assert_close(erased, torch.tensor([fill]).expand_as(erased), rtol=0, atol=1e-5)
    code, out, err = cli(base)  # no data.normalize: the training split's mean, as a run without init_from
    assert code == 0, err
    assert (boxes(grids[-1]) - torch.tensor([list(imagenet_mean)])).abs().amax() > 1e-3
    code, out, err = cli(base + ["--set", "data.normalize=source"])  # no weights to take it from
    assert code == 2 and "model.init_from" in err and "Traceback" not in err


@pytest.mark.parametrize("policy", [{"randaugment_n": 2}, {"autoaugment": "cifar10"}])
def test_each_view_of_a_grid_is_its_own_draw_of_a_group_policy(policy):
    """RandAugment and AutoAugment draw their operations once per group of 16 images: one batch of every view put
    views of one image in a group, and a grid of 6 views showed 2 different ones."""
    from cnnlab.config import AugConfig

    data = load_source("digits")
    stats = dataset_stats(data)[0]
    grid = augmentation_grid(data, stats, AugConfig(preset="none", **policy), rows=6, views=6, seed=0)
    views = grid["views"]  # (rows, views, H, W, C)
    for row in views:
        distinct = {tuple(view.flatten().tolist()) for view in row}
        assert len(distinct) >= 5, len(distinct)  # an identity draw may repeat the original once


def test_a_grid_shows_no_mixed_row_for_a_run_that_never_mixes():
    from cnnlab.config import AugConfig

    data = load_source("digits")
    grid = augmentation_grid(data, dataset_stats(data)[0], AugConfig(preset="strong", mix_prob=0.0), rows=2, views=2)
    assert grid["mixed"] is None and grid["mixed_labels"] == []
    assert augmentation_grid(data, dataset_stats(data)[0], "strong", rows=2, views=2)["mixed"] is not None


def test_a_large_grid_is_laid_out_at_the_pixels_the_figure_gives_each_image(tmp_path, monkeypatch):
    """The mosaic was built at the images' own size (11,000 pixels a side for 100 x 100 views of 96 x 96:
    gigabytes), then shrunk by the drawing; its images are now shrunk first to the figure's cell."""
    # 30 gray images of 96 x 96, one a row: made at that side, where digits' 1,797 were each enlarged to it
    data = load_source(DataConfig(spec="synthetic:classes=3,train=30,val=3,test=3,channels=1", image_size=96))
    assert len(data.train) == 30 and data.train.images.shape[1:] == (1, 96, 96)
    grid = augmentation_grid(data, dataset_stats(data)[0], "none", rows=30, views=30)
    sizes = []
    mosaic = show.grid_mosaic
    monkeypatch.setattr(show, "grid_mosaic", lambda cells, size, gray: (sizes.append(size), mosaic(cells, size, gray))[1])
    path = save_augmentation_grid(grid, tmp_path / "grid.png")
    # 31 columns (the original and 30 views) and 30 rows, each cell shrunk alike to keep the figure within bounds
    scale = min(show.MAX_FIGURE_INCHES / (show.CELL_INCHES[0] * 31), show.MAX_FIGURE_INCHES / (show.CELL_INCHES[1] * 30))
    assert sizes == [math.ceil(scale * show.CELL_INCHES[0] * show.DPI / 1.1)] and sizes[0] < 96
    assert Image.open(path).size[1] == round((show.MAX_FIGURE_INCHES + show.TITLE_INCHES) * show.DPI)
