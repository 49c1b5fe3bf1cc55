"""Malformed checkpoints: every reader (eval, predict, export, ensemble, the CLI) refuses them with a
CnnlabError naming the file and the problem, never a TypeError, ValueError or torch's state-dict error.

The bad files are copies of a real checkpoint from a tiny training run, with one thing changed: a
metadata value of the wrong type or out of range, a header that is not JSON, bytes that are not
safetensors at all, a file cut short, a folder where the file should be, weights from another
architecture than the header names.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.ensemble import run_ensemble
from cnnlab.evaluate.evaluate import run_eval
from cnnlab.evaluate.export import export_model
from cnnlab.evaluate.predict import predict_files
from cnnlab.train.checkpoint import META_SCHEMA, read_checkpoint_meta
from cnnlab.train.engine import train

DATA = "synthetic:classes=3,train=32,val=16,test=16"
BASE = ["model.name=lenet5", f"data.spec={DATA}", "train.batch_size=16", "train.epochs=1", "train.threads=1",
        "log.quiet=true"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A run folder written by `cnnlab train` (lenet5, 3 classes, RGB 32x32), a PNG to predict, and another run
    (another seed) to ensemble with: a copy of the first run's checkpoint would be the same member twice."""
    root = tmp_path_factory.mktemp("good")
    threads = torch.get_num_threads()
    try:
        train(apply_overrides(RunConfig(), BASE), root / "run")
        train(apply_overrides(RunConfig(), BASE + ["train.seed=1"]), root / "partner")
    finally:
        torch.set_num_threads(threads)
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(image)
    return {"run": root / "run", "checkpoint": root / "run" / "best.safetensors", "image": image,
            "partner": root / "partner"}


def _header_and_tensors(path: Path) -> tuple[dict, dict]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata()), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def _rewritten(source: Path, target: Path, *, meta=None, raw_meta: str | None = None) -> Path:
    """A copy of ``source`` whose header 'meta' is ``meta`` (a dict edited by the caller) or ``raw_meta``."""
    metadata, tensors = _header_and_tensors(source)
    metadata["meta"] = raw_meta if raw_meta is not None else json.dumps(meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(target), metadata=metadata)  # the checksum covers the tensors only
    return target


def _edited(**changes):
    """An edit of the meta dict: set keys (a value of DROP removes the key)."""
    def edit(meta):
        for key, value in changes.items():
            if value is DROP:
                meta.pop(key)
            else:
                meta[key] = value
        return meta
    return edit


DROP = object()

# name: (how the good checkpoint is changed, a regex the message must match besides the path)
VARIANTS = {
    "meta_is_a_list": ("raw:[1, 2, 3]", r"'meta' header is a JSON array"),
    "meta_is_a_string": ('raw:"lenet5"', r"'meta' header is a JSON string"),
    "num_classes_text": (_edited(num_classes="ten"), r'num_classes is "ten".*whole number from 1 to'),
    "num_classes_zero": (_edited(num_classes=0), r"num_classes is 0.*from 1 to"),
    "num_classes_bool": (_edited(num_classes=True), r"num_classes is true"),
    "in_chans_four": (_edited(in_chans=4, mean=[0.5] * 4, std=[0.2] * 4), r"in_chans is 4.*1 \(gray\) or 3 \(RGB\)"),
    "image_size_negative": (_edited(image_size=-32), r"image_size is -32.*from 1 to 16,384"),
    # Past cnnlab's largest side: predict would resize every image to it and run out of memory.
    "image_size_huge": (_edited(image_size=100_000), r"image_size is 100000.*from 1 to 16,384"),
    "num_classes_huge": (_edited(num_classes=10**7), r"num_classes is 10000000.*from 1 to 1,000,000"),
    "image_size_float": (_edited(image_size=32.5), r"image_size is 32.5"),
    # A size the network cannot take: lenet5's 5x5 convolution would get a 4x4 image.
    "image_size_too_small": (_edited(image_size=4), r"records image_size 4,.*too small for lenet5.*features\.0\.conv"),
    "mean_wrong_length": (_edited(mean=[0.5]), r"mean is \[0.5\].*3 finite numbers"),
    "mean_not_numbers": (_edited(mean=["a", "b", "c"]), r"mean is .*finite numbers"),
    "mean_nan": ("raw-edit:mean", r"mean is \[NaN.*finite"),
    "std_zero": (_edited(std=[0.0, 0.2, 0.2]), r"std is \[0.0, 0.2, 0.2\].*above 0"),
    "classes_count": (_edited(classes=["a", "b"]), r'classes is \["a", "b"\].*3 distinct'),
    "classes_not_text": (_edited(classes=[1, 2, 3]), r"classes is \[1, 2, 3\].*names"),
    "classes_repeated": (_edited(classes=["a", "a", "b"]), r"classes .*distinct"),
    "epoch_negative": (_edited(epoch=-1), r"epoch is -1.*at least 0"),
    "step_text": (_edited(step="12"), r'step is "12"'),
    "best_list": (_edited(best=[1]), r"best is \[1\]"),
    "partial_seconds_negative": (_edited(partial_seconds=-1.5), r"partial_seconds is -1.5.*not negative"),
    "config_not_a_mapping": (_edited(config="fast"), r'config is "fast".*mapping'),
    "config_unknown_section": (_edited(config={"modle": {}}), r"training config.*modle"),
    "missing_num_classes": (_edited(num_classes=DROP), r"does not record num_classes"),
    "missing_model": (_edited(model=DROP), r"does not record model"),
    "unknown_model": (_edited(model="resnet9000"), r'model is "resnet9000".*not a registered model'),
    "model_not_text": (_edited(model=18), r"model is 18"),
    "meta_invalid_json": ('raw:{"model": "lenet5", ', r"'meta' header is not valid JSON"),
    "header_invalid_json": ("bytes:header", r"damaged or not a safetensors file"),
    "not_safetensors": ("bytes:text", r"damaged or not a safetensors file"),
    "empty_file": ("bytes:empty", r"is empty"),
    "truncated_file": ("bytes:truncated", r"damaged or not a safetensors file"),
    "folder_named_like_a_file": ("folder", r"holds no best.safetensors or last.safetensors"),
    "checkpoint_is_a_folder": ("folder-in-run", r"is a folder, not a checkpoint file"),
    "missing_file": ("missing", r"does not exist"),
    "pipe_instead_of_a_file": ("fifo", r"is not a regular file"),
    "self_referencing_link": ("self-link", r"is a broken link"),
    # The weights do not fit what the header says: the first tensor that differs is named with both shapes.
    "header_names_another_architecture": (_edited(model="resnet8"),
                                          r"first tensor that does not fit is 'features\.stem\.conv\.weight'"
                                          r".*\(16, 3, 3, 3\).*(missing|lacks)"),
    "header_names_more_classes": (_edited(num_classes=5, classes=list("abcde")),
                                  r"first tensor that does not fit is 'fc\.weight'.*\(5, 84\).*\(3, 84\)"),
    "header_names_gray_input": (_edited(in_chans=1, mean=[0.5], std=[0.25]),
                                r"first tensor that does not fit is 'features\.0\.conv\.weight'.*\(6, 1, 5, 5\)"
                                r".*\(6, 3, 5, 5\)"),
}


def make_bad(good: dict, variant: str, folder: Path) -> Path:
    """The bad checkpoint of ``variant``, alone in ``folder`` (no run folder beside it to fill gaps)."""
    how = VARIANTS[variant][0]
    source = good["checkpoint"]
    target = folder / "bad" / "model.safetensors"
    target.parent.mkdir(parents=True)
    if callable(how):
        metadata, _ = _header_and_tensors(source)
        return _rewritten(source, target, meta=how(json.loads(metadata["meta"])))
    if how.startswith("raw:"):
        return _rewritten(source, target, raw_meta=how[len("raw:"):])
    if how == "raw-edit:mean":  # JSON's NaN token, which Python's json reads as float('nan')
        metadata, _ = _header_and_tensors(source)
        meta = json.loads(metadata["meta"])
        meta["mean"] = [float("nan"), 0.5, 0.5]
        return _rewritten(source, target, raw_meta=json.dumps(meta))
    good_bytes = source.read_bytes()
    if how == "bytes:header":
        header = b'{"meta": not json at all}'
        target.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 16)
    elif how == "bytes:text":
        target.write_bytes(b"These are my notes, not a checkpoint.\n" * 8)
    elif how == "bytes:empty":
        target.write_bytes(b"")
    elif how == "bytes:truncated":
        target.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif how == "folder":
        target.mkdir()
    elif how == "folder-in-run":
        (target.parent / "best.safetensors").mkdir()
        return target.parent  # the run folder, whose best.safetensors is a folder
    elif how == "missing":
        pass
    elif how == "fifo":
        os.mkfifo(target)  # reading it would wait forever: it must be refused unopened
    elif how == "self-link":
        target.symlink_to(target)
    else:
        raise AssertionError(how)
    return target


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


READERS = {
    "eval": lambda bad, good, out: run_eval(bad, out=out),
    "predict": lambda bad, good, out: predict_files(bad, [good["image"]]),
    "export": lambda bad, good, out: export_model(bad, "torchscript", out=_folder(out) / "model.pt"),
    "ensemble": lambda bad, good, out: run_ensemble([good["partner"], bad]),
}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_good_checkpoint_works_with_every_reader(good, tmp_path):
    """The copies below are broken only by their edits: an unedited rewrite loads everywhere."""
    copy = _rewritten(good["checkpoint"], tmp_path / "copy" / "model.safetensors",
                      meta=json.loads(_header_and_tensors(good["checkpoint"])[0]["meta"]))
    for name, read in READERS.items():
        read(copy, good, tmp_path / name)
    assert read_checkpoint_meta(copy)["num_classes"] == 3


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_reader_refuses_a_bad_checkpoint_naming_file_and_problem(good, tmp_path, variant, reader):
    bad = make_bad(good, variant, tmp_path)
    with pytest.raises(CnnlabError) as error:
        READERS[reader](bad, good, tmp_path / "out")
    message = str(error.value)
    assert str(bad) in message, message
    assert re.search(VARIANTS[variant][1], message, re.DOTALL), message
    assert "Error(s) in loading state_dict" not in message
    assert "\n" not in message  # one paragraph
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cli_eval_exits_2_without_a_traceback(good, tmp_path, cli, variant):
    bad = make_bad(good, variant, tmp_path)
    code, out, err = cli(["eval", str(bad), "--out", str(tmp_path / "out")])
    assert code == 2 and str(bad) in err and "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1  # one paragraph


@pytest.mark.parametrize("variant", ["meta_is_a_list", "num_classes_text", "std_zero", "unknown_model",
                                     "empty_file", "header_names_another_architecture",
                                     "image_size_too_small"])
def test_cli_predict_export_ensemble_exit_2_without_a_traceback(good, tmp_path, cli, variant):
    """The library refuses every variant (above); here the other commands turn that into exit code 2."""
    bad = make_bad(good, variant, tmp_path)
    for args in (["predict", str(bad), str(good["image"])],
                 ["export", str(bad), "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
                 ["ensemble", str(good["run"]), str(bad)]):
        code, out, err = cli(args)
        assert code == 2 and str(bad) in err and "Traceback" not in err, (args, err)


def test_console_script_exits_2_without_a_traceback(good, tmp_path):
    """The installed `cnnlab` command in a fresh process (one run: starting Python with torch takes seconds)."""
    bad = make_bad(good, "num_classes_text", tmp_path)
    done = subprocess.run([str(Path(sys.executable).parent / "cnnlab"), "eval", str(bad)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(bad) in done.stderr and 'num_classes is "ten"' in done.stderr


def test_schema_is_declared_for_every_key_training_writes(good):
    meta = read_checkpoint_meta(good["checkpoint"], require=("model", "num_classes", "in_chans", "classes",
                                                              "image_size", "mean", "std", "epoch", "batch",
                                                              "step", "best"))
    assert set(meta) <= set(META_SCHEMA)  # a key training writes but nobody checks would be unguarded


def test_snapshot_meta_is_completed_from_its_run_folder_and_checked(good, tmp_path):
    """A snapshot records model/num_classes/in_chans only; the rest comes from best.safetensors beside it,
    and the combination is checked too (here the snapshot's class count disagrees with the run's classes)."""
    from cnnlab.train.checkpoint import save_weights
    from cnnlab.evaluate.evaluate import load_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(good["checkpoint"].read_bytes())
    (run / "config.yaml").write_bytes((good["run"] / "config.yaml").read_bytes())
    state = load_model(good["run"]).model.state_dict()
    fine = save_weights(run / "snapshot-1.safetensors", state, {"model": "lenet5", "num_classes": 3, "in_chans": 3})
    assert load_model(fine).classes == ["class0", "class1", "class2"]
    odd = save_weights(run / "snapshot-2.safetensors", state, {"model": "lenet5", "num_classes": 4, "in_chans": 3})
    with pytest.raises(CnnlabError, match=r"snapshot-2\.safetensors.*classes is .*4 distinct"):
        load_model(odd)


# --- class names that are not valid UTF-8 ----------------------------------------------------------

# A Latin-1 folder name as Python reads it (surrogateescape), and a lone surrogate typed into the JSON.
ODD_CLASSES = ["caf\udce9", "x\ud800y", "class2"]
SHOWN_CLASSES = ["caf\\xe9", "x\\ud800y", "class2"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_class_names_with_lone_surrogates_from_an_old_checkpoint_are_shown_escaped(good, tmp_path, monkeypatch):
    """An older cnnlab wrote folder names as they came; matplotlib refuses lone surrogates and a UTF-8
    file cannot hold them, so every report shows them escaped instead of crashing."""
    from cnnlab.evaluate import evaluate

    metadata, _ = _header_and_tensors(good["checkpoint"])
    meta = json.loads(metadata["meta"])
    old = _rewritten(good["checkpoint"], tmp_path / "old" / "best.safetensors", meta={**meta, "classes": ODD_CLASSES})
    # The data's own names are class0..2: this test is about the checkpoint's names, not the comparison.
    monkeypatch.setattr(evaluate, "check_classes", lambda *args: None)
    report = run_eval(old, out=tmp_path / "eval", mistakes=16)
    assert [row["class"] for row in report["per_class"]] == SHOWN_CLASSES
    assert {m["true"] for m in report["mistakes"]} <= set(SHOWN_CLASSES)
    for name in ("metrics", "confusion"):  # no surrogate in the files, even as a JSON escape
        written = json.loads(Path(report["files"][name]).read_bytes().decode("utf-8"))
        json.dumps(written, ensure_ascii=False).encode("utf-8")
    assert json.loads(Path(report["files"]["confusion"]).read_text())["classes"] == SHOWN_CLASSES
    for png in ("confusion_png", "mistakes_png"):
        assert Path(report["files"][png]).read_bytes()[:4] == b"\x89PNG"

    predicted = predict_files(old, [good["image"]], topk=3)
    assert {t["class"] for t in predicted["predictions"][0]["top"]} == set(SHOWN_CLASSES)
    exported = export_model(old, "torchscript", out=tmp_path / "model.pt")
    assert exported["preprocessing"]["classes"] == SHOWN_CLASSES
    json.dumps([report, predicted, exported], ensure_ascii=False).encode("utf-8")  # no surrogate anywhere


def test_mistakes_grid_and_confusion_plot_take_undecodable_names(tmp_path):
    from cnnlab.evaluate.evaluate import check_classes, save_confusion_png, save_mistakes_png

    # An old checkpoint's raw names match the data source's shown names.
    check_classes(ODD_CLASSES, SHOWN_CLASSES, "the data", "the checkpoint")
    with pytest.raises(CnnlabError, match=r"new: caf\\xe8"):
        check_classes(ODD_CLASSES, ["caf\\xe8", *SHOWN_CLASSES[1:]], "the data", "the checkpoint")
    save_confusion_png([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ODD_CLASSES, tmp_path / "c.png", "on caf\udce9/ data")
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    save_mistakes_png(images, [{"index": 0, "true": 0, "predicted": 1, "probability": 0.9}], ODD_CLASSES,
                      tmp_path / "m.png")
    assert (tmp_path / "c.png").is_file() and (tmp_path / "m.png").is_file()


def test_a_run_folder_whose_name_is_not_utf8_is_named_as_such_not_as_a_damaged_file(good, tmp_path, cli):
    """safetensors opens UTF-8 paths only: a run copied into a Latin-1 folder name was called damaged or cut short
    by predict, export and eval, with the advice to start a new run."""
    import shutil

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # a Latin-1 name, as an old system writes it
    shutil.copytree(os.fsencode(good["run"]), folder)
    shown = os.path.join(str(tmp_path), "caf\\xe9")
    for args in (["predict", os.fsdecode(folder), str(good["image"])],
                 ["export", os.fsdecode(folder), "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
                 ["eval", os.fsdecode(folder), "--out", str(tmp_path / "eval")]):
        code, out, err = cli(args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"'{shown}/best.safetensors' is not valid UTF-8" in err and "damaged" not in err, (args, err)
