"""Messages that name a path or data spec show a name that is not UTF-8 as display_name does.

A folder named with the Latin-1 byte 0xE9 reaches Python as 'caf\\udce9' (surrogateescape). A message
that put that text in as it is would show 'caf\\udce9', and a strict UTF-8 terminal or log refuses it
(UnicodeEncodeError instead of the message). Each message here must show 'caf\\xe9' and be plain UTF-8.
The files themselves are still found through their real paths: only the text a person reads changes.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import _run_config
from cnnlab.config import DataConfig, RunConfig, apply_overrides, load_config
from cnnlab.data import load_source, resolve_classes
from cnnlab.data.images import read_image
from cnnlab.data.loaders import make_loader
from cnnlab.data.stats import ChannelStats
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import eval_loader, load_model
from cnnlab.models.torchvision_compat import read_weights_file
from cnnlab.report.runs import find_runs, read_run
from cnnlab.run import RunFolder, checkpoint_path
from cnnlab.train.checkpoint import read_checkpoint_meta
from cnnlab.train.init_from import read_init_source
from cnnlab.train.engine import resumed_config, train
from cnnlab.tune.diagnose import diagnose_run
from cnnlab.tune.search import load_space

CAFE = b"caf\xe9"  # Latin-1: not UTF-8
SHOWN = "caf\\xe9"  # how display_name shows it


def _shown_right(err: pytest.ExceptionInfo) -> str:
    """The message, checked: the name is shown escaped, and the text encodes as strict UTF-8."""
    message = str(err.value)
    assert SHOWN in message, message
    message.encode("utf-8")  # raises UnicodeEncodeError where a lone surrogate is left
    return message


@pytest.fixture
def bad(tmp_path) -> Path:
    """tmp_path/b'caf\\xe9' made as a folder; its str path holds the surrogate '\\udce9'."""
    path = os.path.join(os.fsencode(tmp_path), CAFE)
    try:
        os.mkdir(path)
    except (OSError, UnicodeError) as err:  # a file system that only stores UTF-8 names (macOS APFS)
        pytest.skip(f"this file system refuses names that are not UTF-8: {err}")
    folder = Path(os.fsdecode(path))
    assert "\udce9" in str(folder)
    return folder


def test_config_and_search_space_files(bad):
    with pytest.raises(CnnlabError, match="does not exist") as err:
        load_config(bad / "run.yaml")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="is a folder") as err:
        load_config(bad)
    _shown_right(err)
    with pytest.raises(CnnlabError, match="search-space file .* does not exist") as err:
        load_space(bad / "space.yaml", RunConfig())
    _shown_right(err)
    (bad / "space.yaml").write_text("optim.lr: [1\n", encoding="utf-8")  # not YAML: read through the real path
    with pytest.raises(CnnlabError, match="Cannot read the search-space file") as err:
        load_space(bad / "space.yaml", RunConfig())
    _shown_right(err)


def test_the_config_file_is_named_as_shown_when_its_model_options_are_left_out(bad, capsys):
    config = bad / "vgg.yaml"
    config.write_text("model:\n  name: vgg_mini\n  options:\n    cfg: [[1, 8], [1, 16]]\n", encoding="utf-8")
    assert _run_config(config, "lenet5", None, []).model.options == {}
    note = capsys.readouterr().err
    assert f"{SHOWN}/vgg.yaml sets model.options" in note, note
    note.encode("utf-8")
    with pytest.raises(CnnlabError, match="replaces the model of") as err:
        _run_config(config, None, None, ["model.name=lenet5"])
    _shown_right(err)


def test_run_folders_and_checkpoints(bad):
    with pytest.raises(CnnlabError, match=r"holds no best\.safetensors or last\.safetensors") as err:
        checkpoint_path(bad)
    _shown_right(err)
    with pytest.raises(CnnlabError, match="The checkpoint .* does not exist") as err:
        checkpoint_path(bad / "best.safetensors")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="is not a run folder: it has no config.yaml") as err:
        RunFolder(bad).read_config()
    _shown_right(err)
    (bad / "config.yaml").write_text("model: [\n", encoding="utf-8")
    with pytest.raises(CnnlabError, match="config.yaml is written by `cnnlab train`") as err:
        RunFolder(bad).read_config()
    message = _shown_right(err)
    assert message.count(SHOWN) == 1, message  # the file is named once, not again with its raw name


def test_resume_messages_name_the_run_folder_as_shown(bad):
    with pytest.raises(CnnlabError, match="Nothing to resume in") as err:
        resumed_config(RunConfig(), RunFolder(bad))
    _shown_right(err)


def test_ensemble_members_and_snapshots(bad, cli):
    """The ensemble's messages put the run folder or member path in as it was (caf\\udce9)."""
    from types import SimpleNamespace

    from cnnlab.evaluate.ensemble import check_distinct, run_ensemble, snapshot_paths

    with pytest.raises(CnnlabError, match="holds no snapshot") as err:
        snapshot_paths(bad)
    _shown_right(err)
    code, out, stderr = cli(["ensemble", str(bad), "--snapshots"])
    assert code == 2 and SHOWN in stderr and "holds no snapshot" in stderr and "\udce9" not in stderr, stderr
    (bad / "snapshot-1.safetensors").write_bytes(b"weights")
    with pytest.raises(CnnlabError, match=r"holds one snapshot \(snapshot-1\.safetensors\)") as err:
        snapshot_paths(bad)
    _shown_right(err)
    # one checkpoint named twice (a run folder and its best file, say): refused, both names shown
    member = SimpleNamespace(path=bad / "snapshot-1.safetensors", model=None)
    with pytest.raises(CnnlabError, match="are the same checkpoint") as err:
        check_distinct([member, member])
    assert _shown_right(err).count(SHOWN) == 2
    with pytest.raises(CnnlabError, match="got the single path") as err:
        run_ensemble(bad)
    assert _shown_right(err).count(SHOWN) == 2


def test_reading_checkpoints_reports_and_diagnoses(bad):
    with pytest.raises(CnnlabError, match="The checkpoint .* does not exist") as err:
        read_checkpoint_meta(bad / "last.safetensors")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="is a folder, not a checkpoint file") as err:
        read_checkpoint_meta(bad)
    _shown_right(err)
    with pytest.raises(CnnlabError, match="does not exist, so it is not a run folder") as err:
        read_run(bad / "run")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="is not a run folder: it has no config.yaml") as err:
        read_run(bad)
    _shown_right(err)
    with pytest.raises(CnnlabError, match="there are no runs to list") as err:
        find_runs(bad / "runs")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="does not exist, so it is not a run folder") as err:
        diagnose_run(bad / "run")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="it has neither metrics.csv nor steps.csv") as err:
        diagnose_run(bad)
    _shown_right(err)
    (bad / "metrics.csv").write_bytes(b"")
    with pytest.raises(CnnlabError, match="there is nothing to diagnose in") as err:
        diagnose_run(bad)
    _shown_right(err)


def test_weights_files_and_images(bad):
    with pytest.raises(CnnlabError, match="The weights file .* does not exist") as err:
        read_weights_file(bad / "weights.pth")
    _shown_right(err)
    (bad / "weights.pth").write_bytes(b"not a weights file")
    with pytest.raises(CnnlabError, match="Cannot read .* as a weights file") as err:
        read_weights_file(bad / "weights.pth")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="The image .* does not exist") as err:
        read_image(bad / "missing.png")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="is a folder, not an image file") as err:
        read_image(bad)
    _shown_right(err)
    (bad / "broken.png").write_bytes(b"not an image")
    with pytest.raises(CnnlabError) as err:
        read_image(bad / "broken.png")
    _shown_right(err)


def test_init_from_weights_that_do_not_fit(bad):
    torch.save({"scale": torch.ones(3)}, bad / "flat.pth")  # tensors, but no conv filters
    with pytest.raises(CnnlabError, match="holds no conv filters") as err:
        read_init_source(str(bad / "flat.pth"), "lenet5")
    _shown_right(err)
    os.mkfifo(bad / "pipe")
    with pytest.raises(CnnlabError, match="is not a regular file") as err:
        read_init_source(str(bad / "pipe"), "lenet5")
    _shown_right(err)


def test_data_specs_in_data_messages():
    spec = os.fsdecode(b"folder:/data/" + CAFE)  # a DataSet or class list named by the spec as typed
    with pytest.raises(CnnlabError, match="data.classes cannot be used with") as err:
        resolve_classes(["no such class"], ["a", "b", "c"], spec)
    _shown_right(err)
    with pytest.raises(CnnlabError, match="Cannot read") as err:
        load_source(os.fsdecode(b"synthetic:classes=" + CAFE))
    _shown_right(err)
    dataset = dataclasses.replace(load_source("synthetic:classes=2,train=8,val=4,test=4"), spec=spec)
    with pytest.raises(CnnlabError, match="has no split .extra.: it has train, val, test") as err:
        make_loader(dataset, "extra", ChannelStats(mean=(0.5,), std=(0.25,), pixels=0),
                    batch_size=4, train=False)
    _shown_right(err)


def test_the_evaluated_data_is_named_as_shown(bad, tmp_path):
    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=2,train=16,val=8,test=8", "train.batch_size=8",
        "train.epochs=1", "train.threads=1", "log.quiet=true"])
    threads = torch.get_num_threads()
    try:
        train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    loaded = load_model(tmp_path / "run")
    rng = np.random.default_rng(0)
    for name in ("x", "y", "z"):  # three classes where the run has two, and no test/ folder
        (bad / name).mkdir()
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(bad / name / f"{k}.png")
    with pytest.raises(CnnlabError, match="has no 'test' split") as err:
        eval_loader(loaded, data=f"folder:{bad}", split="test")
    _shown_right(err)
    with pytest.raises(CnnlabError, match="has classes that differ") as err:
        eval_loader(loaded, data=f"folder:{bad}", split="val")
    _shown_right(err)


def test_run_logs_and_curves(bad):
    from cnnlab.train.logging import read_metrics, read_steps, save_curves

    metrics = bad / "metrics.csv"
    metrics.write_text("epoch,train_loss\n1,0.5\n2,oops\n", encoding="utf-8")
    with pytest.raises(CnnlabError) as err:
        read_metrics(metrics)
    assert "line 3 is not a metrics row" in _shown_right(err)
    metrics.write_bytes(b"epoch,train_loss\n1,\xff\n")
    with pytest.raises(CnnlabError) as err:
        read_metrics(metrics)
    assert "not UTF-8 text" in _shown_right(err)
    steps = bad / "steps.csv"
    steps.write_text("step,loss,lr\n1,0.5\n", encoding="utf-8")
    with pytest.raises(CnnlabError) as err:
        read_steps(steps)
    assert "line 2 has 2 cells" in _shown_right(err)
    steps.write_text("step,loss,lr\n1,0.5,0.1\n2,0.4", encoding="utf-8")  # the last line cut short: noted
    skipped = []
    assert len(read_steps(steps, skipped)) == 1
    assert SHOWN in skipped[0][0] and "line 3" in skipped[0][0]
    skipped[0][0].encode("utf-8")
    with pytest.raises(CnnlabError) as err:
        save_curves([], bad / "curves.txt")
    assert "must be a .png" in _shown_right(err)
    with pytest.raises(CnnlabError) as err:
        save_curves([], bad / "curves.png")
    assert "nothing to plot" in _shown_right(err)


def test_cifar_copies(bad, capsys):
    from cnnlab.data import cifar

    fmt = cifar.CIFAR_KINDS["cifar10"].binary
    folder = bad / fmt.folder
    folder.mkdir()
    (folder / fmt.test).write_bytes(b"")
    with pytest.raises(CnnlabError) as err:  # an extracted copy missing files
        load_source(DataConfig(spec="cifar10", data_dir=str(bad)))
    assert "lacks" in _shown_right(err)
    for name in fmt.files():
        (folder / name).write_bytes(b"")
    with pytest.raises(CnnlabError) as err:  # every file there, the first empty: named as `where`
        load_source(DataConfig(spec="cifar10", data_dir=str(bad)))
    assert "has 0 bytes" in _shown_right(err)
    pixels = bytes(3 * 32 * 32)
    for name in (*fmt.train, fmt.test):  # one image of each class per file: a small but readable copy
        (folder / name).write_bytes(b"".join(bytes([label]) + pixels for label in range(10)))
    names_file = next(name for name in fmt.files() if name.endswith(".txt"))
    (folder / names_file).write_text("\n".join(f"class{i}" for i in range(10)) + "\n", encoding="utf-8")
    dataset = load_source(DataConfig(spec="cifar10", data_dir=str(bad)))
    notes = [note for note in dataset.notices if "50 training and 10 test images" in note or "CIFAR-10 from" in note]
    assert len(notes) == 2 and all(SHOWN in note for note in notes)
    "".join(notes).encode("utf-8")
    archive = bad / "notes.txt"
    archive.write_text("not an archive", encoding="utf-8")
    with pytest.raises(CnnlabError) as err:  # --data-dir naming a file that is not an archive
        load_source(DataConfig(spec="cifar10", data_dir=str(archive)))
    assert "is a file, not one of" in _shown_right(err)
    packed = bad / fmt.archive
    packed.write_bytes(b"\x1f\x8b damaged")
    with pytest.raises(CnnlabError) as err:
        load_source(DataConfig(spec="cifar10", data_dir=str(packed)))
    assert "Cannot read" in _shown_right(err)


def test_checkpoint_messages_show_a_name_with_a_newline_escaped(tmp_path):
    """A checkpoint path is valid UTF-8 but holds a newline: every checkpoint message shows it as display_name
    does ('\\n'), so that the one-paragraph message stays one paragraph."""
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    (folder / "last.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")  # a damaged header
    with pytest.raises(CnnlabError, match="is damaged or not a safetensors file") as err:
        read_checkpoint_meta(folder / "last.safetensors")
    assert "two\\nlines" in str(err.value) and "two\nlines" not in str(err.value)
