"""Relative paths in a run's config: recorded as the absolute paths they led to, read back from any folder."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cnnlab.config import RunConfig, apply_overrides, record_paths
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import run_eval
from cnnlab.run import RunFolder, same_data
from cnnlab.train import engine

SMALL = ["model.name=lenet5", "data.image_size=32", "train.batch_size=8", "train.epochs=1", "log.quiet=true",
         "log.curves=false"]


def _image_folder(root: Path, per_class: int, shade: int) -> None:
    for name, colour in {"cat": (shade, 20, 20), "dog": (20, 20, shade)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (colour[0], colour[1] + i, colour[2])).save(root / name / f"{i}.png")


def test_record_paths_makes_relative_paths_absolute_and_keeps_what_was_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for made in (tmp_path / "imgs", tmp_path / "runs" / "src", tmp_path.parent / "cifar"):
        made.mkdir(parents=True, exist_ok=True)
    config = apply_overrides(RunConfig(), ["data.spec=folder: imgs", "model.init_from=runs/src",
                                           "data.data_dir=../cifar", "data.normalize=dataset"], template=True)
    recorded = record_paths(config)
    assert recorded.data.spec == f"folder:{tmp_path / 'imgs'}" and recorded.data.spec_typed == "folder: imgs"
    assert recorded.model.init_from == str(tmp_path / "runs" / "src") and recorded.model.init_from_typed == "runs/src"
    assert recorded.data.data_dir == str(tmp_path.parent / "cifar") and recorded.data.data_dir_typed == "../cifar"
    assert config.data.spec == "folder: imgs"  # the caller's config is left as it was
    # nothing to record where nothing names a relative path
    kept = record_paths(apply_overrides(RunConfig(), ["data.spec=csv:/data/x.csv", "model.init_from=torchvision",
                                                      "data.normalize=dataset"]))
    assert (kept.data.spec, kept.data.spec_typed, kept.model.init_from, kept.model.init_from_typed) == (
        "csv:/data/x.csv", None, "torchvision", None)
    # a run's config.yaml trained again is a new run: its own record, not the earlier run's typing
    again = record_paths(recorded)
    assert again.data.spec == recorded.data.spec and again.data.spec_typed is None
    assert record_paths(recorded, resume=True) == recorded
    # a new run's path that names nothing here stays as typed: its reader says what is wrong with it as typed, not
    # as a run's record of a path moved since ("'nope' does not exist")
    missing = record_paths(apply_overrides(RunConfig(), ["data.spec=folder:nope"]))
    assert (missing.data.spec, missing.data.spec_typed) == ("folder:nope", None)


def test_eval_from_another_folder_reads_the_runs_data_not_a_folder_of_the_same_name_there(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _image_folder(project / "f1", per_class=10, shade=200)
    _image_folder(elsewhere / "f1", per_class=30, shade=90)  # same name and classes, 3x the images
    monkeypatch.chdir(project)
    engine.train(apply_overrides(RunConfig(), SMALL + ["data.spec=folder:f1"]), "runs/r1")
    written = yaml.safe_load((project / "runs" / "r1" / "config.yaml").read_text())["data"]
    assert written["spec"] == f"folder:{project / 'f1'}" and written["spec_typed"] == "folder:f1"
    at_home = run_eval("runs/r1", split="val", out=tmp_path / "eval-home")

    monkeypatch.chdir(elsewhere)
    away = run_eval(project / "runs" / "r1", split="val", out=tmp_path / "eval-away")
    assert away["images"] == at_home["images"] and away["top1"] == at_home["top1"]
    assert same_data("folder:../project/f1", RunFolder(project / "runs" / "r1").read_config().data.spec)

    # the run's folder gone: an error naming what was typed and where it led, never the folder here
    shutil.move(project / "f1", tmp_path / "moved")
    with pytest.raises(CnnlabError) as gone:
        run_eval(project / "runs" / "r1", split="val", out=tmp_path / "eval-gone")
    message = str(gone.value)
    assert "typed as 'folder:f1'" in message and f"read from '{project / 'f1'}'" in message
    assert "no longer exists" in message and "--data" in message
    # --data is named for the commands that take it, and a resume, which does not, is pointed at a link
    assert "a new run from the run's config (`cnnlab train --config`) also take its new place as --data" in message
    assert "make a link there" in message and "a resumed run reads only the data it started with" in message
    # named where it is now, it is read from there
    moved = run_eval(project / "runs" / "r1", data=f"folder:{tmp_path / 'moved'}", split="val",
                     out=tmp_path / "eval-moved")
    assert moved["images"] == at_home["images"]


def test_a_resume_compares_paths_as_the_files_they_name(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _image_folder(project / "f1", per_class=10, shade=200)
    monkeypatch.chdir(project)
    config = apply_overrides(RunConfig(), SMALL + ["data.spec=folder:./f1"])
    run = project / "runs" / "r1"
    engine.train(config, run)
    recorded = RunFolder(run).read_config()  # resolved: the augmentation preset expanded, the path absolute
    typed = replace(recorded, data=replace(recorded.data, spec="folder:f1", spec_typed=None))
    # the run's config with its path as typed, given again in its folder, is the run's config (./f1 is f1)
    assert engine.resumed_config(typed, RunFolder(run)) == recorded
    monkeypatch.chdir(tmp_path)
    assert engine.resumed_config(recorded, RunFolder(run)) == recorded  # `--resume` from another folder
    with pytest.raises(CnnlabError, match=r"differs from that \(data.spec: .* given, .* recorded\)"):
        engine.resumed_config(typed, RunFolder(run))  # folder:f1 here is another folder


def test_a_config_written_before_paths_were_recorded_reads_its_relative_path_from_the_working_folder(
        tmp_path, monkeypatch):
    from cnnlab.config import config_from_dict
    from cnnlab.data import load_source

    _image_folder(tmp_path / "f1", per_class=4, shade=200)
    monkeypatch.chdir(tmp_path)
    old = config_from_dict({"data": {"spec": "folder:f1", "image_size": 16}})  # no spec_typed key
    assert old.data.spec_typed is None and load_source(old.data).classes == ["cat", "dog"]


def test_data_named_on_the_command_line_is_not_taken_for_the_runs_recorded_path(tmp_path, monkeypatch):
    """eval --data names data from the working folder: a missing one is named as given, not as the run's typing."""
    project = tmp_path / "project"
    _image_folder(project / "f1", per_class=10, shade=200)
    monkeypatch.chdir(project)
    engine.train(apply_overrides(RunConfig(), SMALL + ["data.spec=folder:f1"]), "runs/r1")
    with pytest.raises(CnnlabError) as refused:
        run_eval("runs/r1", data="folder:nowhere", split="val", out=tmp_path / "eval")
    assert "nowhere" in str(refused.value) and "typed as" not in str(refused.value)


def test_an_ensemble_reads_the_first_members_recorded_data_and_names_it_when_gone(tmp_path, monkeypatch):
    from cnnlab.evaluate.ensemble import run_ensemble

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _image_folder(project / "f1", per_class=10, shade=200)
    _image_folder(elsewhere / "f1", per_class=30, shade=90)
    monkeypatch.chdir(project)
    for seed in (0, 1):
        engine.train(apply_overrides(RunConfig(), SMALL + ["data.spec=folder:f1", f"train.seed={seed}"]), f"runs/r{seed}")
    monkeypatch.chdir(elsewhere)
    runs = [project / "runs" / "r0", project / "runs" / "r1"]
    assert run_ensemble(runs, split="val", out=tmp_path / "ens.json")["ensemble"]["images"] == run_eval(
        runs[0], split="val", out=tmp_path / "eval")["images"]
    shutil.move(project / "f1", tmp_path / "moved")
    with pytest.raises(CnnlabError, match=r"The first member '.*r0/best.safetensors': data.spec was typed as 'folder:f1'"):
        run_ensemble(runs, split="val", out=tmp_path / "ens-gone.json")


def test_a_recorded_data_dir_that_is_gone_is_named_before_any_file_is_looked_for(tmp_path, monkeypatch):
    from cnnlab.data import load_source

    (tmp_path / "cifar").mkdir()
    monkeypatch.chdir(tmp_path)
    recorded = record_paths(apply_overrides(RunConfig(), ["data.spec=cifar10", "data.data_dir=cifar"]))
    (tmp_path / "cifar").rmdir()
    with pytest.raises(CnnlabError, match=r"data.data_dir was typed as 'cifar' when the run started, and read from "
                                          rf"'{tmp_path / 'cifar'}'.*no longer exists. Put it back there, or make a "
                                          r"link there"):
        load_source(recorded.data)


@pytest.mark.parametrize("dotted, recorded", [("model.init_from_typed", "model.init_from"),
                                              ("data.spec_typed", "data.spec"),
                                              ("data.data_dir_typed", "data.data_dir")])
def test_a_runs_record_of_a_typed_path_is_refused_on_the_command_line(dotted, recorded):
    """--set of a record a run writes would be replaced by the run without a word: it is refused, naming the key
    to set instead."""
    with pytest.raises(CnnlabError) as refused:
        apply_overrides(RunConfig(), [f"{dotted}=somewhere"])
    message = str(refused.value)
    assert message.startswith(f"--set {dotted}=somewhere: {dotted} is not a setting")
    assert f"Set {recorded} itself" in message


@pytest.mark.parametrize("command", ["build", "summary", "train"])
def test_init_from_typed_in_a_model_spec_is_refused(command, cli):
    code, out, err = cli([command, "resnet8,init_from_typed=x"] if command != "train" else
                         [command, "--model", "resnet8,init_from_typed=x", "--data", "digits", "--epochs", "1"])
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: 'init_from_typed=x' in the model 'resnet8,init_from_typed=x': model.init_from_typed "
                          "is not a setting") and err.count("\n") == 1, err
    assert "takes init_from=PATH" in err


def test_a_runs_config_that_records_typed_paths_still_loads_as_a_config_file(tmp_path, monkeypatch):
    """The records are refused only where a person types them: a run's config.yaml holds them, and
    `cnnlab train --config RUN/config.yaml` (with --set beside it) still reads it."""
    from cnnlab.cli import _run_config
    from cnnlab.config import load_config, save_config

    monkeypatch.chdir(tmp_path)
    for made in ("imgs", "cifar", "runs/src"):
        (tmp_path / made).mkdir(parents=True)
    recorded = record_paths(apply_overrides(RunConfig(), ["data.spec=folder:imgs", "data.data_dir=cifar",
                                                          "model.init_from=runs/src"]))
    save_config(recorded, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == recorded
    again = _run_config(tmp_path / "config.yaml", None, None, ["optim.lr=0.05"])
    assert (again.data.spec_typed, again.data.data_dir_typed, again.model.init_from_typed) == (
        "folder:imgs", "cifar", "runs/src")


def test_evals_and_ensembles_record_the_checkpoint_absolute_and_keep_what_was_typed(tmp_path, monkeypatch, cli):
    """metrics.json and an ensemble member's row named the checkpoint as typed (relative to the working folder
    then), and the run's page and `cnnlab runs` showed that path to a reader anywhere. They record it absolute,
    what was typed beside it (as data.spec_typed), and the page names the file that is there."""
    from cnnlab.evaluate.measured import CHECKPOINT_TYPED_KEY
    from cnnlab.report.page import render_run
    from cnnlab.report.runs import read_run

    project = tmp_path / "project"
    _image_folder(project / "f1", per_class=10, shade=200)
    monkeypatch.chdir(project)
    for name, seed in (("r1", 0), ("r2", 1)):
        config = apply_overrides(RunConfig(), SMALL + ["data.spec=folder:f1", f"train.seed={seed}"])
        engine.train(config, f"runs/{name}")
    run_eval("runs/r1", split="val", out="runs/r1/eval-val")
    code, out, err = cli(["ensemble", "runs/r1", "runs/r2", "--split", "val", "--out", "runs/r1/pair.json"])
    assert code == 0, err
    assert "runs/r2/best.safetensors" in out  # the printed table names the members as they were given

    monkeypatch.chdir(tmp_path)  # a reader elsewhere
    runs = project / "runs"
    metrics = json.loads((runs / "r1" / "eval-val" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(runs / "r1" / "best.safetensors") and Path(metrics["checkpoint"]).is_file()
    assert metrics[CHECKPOINT_TYPED_KEY] == "runs/r1/best.safetensors"
    saved = json.loads((runs / "r1" / "pair.json").read_text())
    names = ("r1", "r2")
    assert [m["checkpoint"] for m in saved["members"]] == [str(runs / name / "best.safetensors") for name in names]
    assert [m[CHECKPOINT_TYPED_KEY] for m in saved["members"]] == [f"runs/{name}/best.safetensors" for name in names]
    page = render_run(read_run(runs / "r1"))
    assert f"<td>{runs / 'r2' / 'best.safetensors'}</td>" in page  # the member's file, from wherever it is read
    # given absolute, the path is what was typed: nothing more to keep
    absolute = run_eval(runs / "r2", split="val", out=tmp_path / "eval-r2")
    assert absolute["checkpoint"] == str(runs / "r2" / "best.safetensors") and CHECKPOINT_TYPED_KEY not in absolute

    # a result of an older cnnlab, its members as typed only, reads as before
    for member in saved["members"]:
        member["checkpoint"] = member.pop(CHECKPOINT_TYPED_KEY)
    (runs / "r1" / "pair.json").write_text(json.dumps(saved))
    assert "<td>runs/r2/best.safetensors</td>" in render_run(read_run(runs / "r1"))


def test_a_new_run_s_missing_data_folder_is_named_as_typed_not_as_a_moved_record(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", "--model", "lenet5", "--data", "folder:nope", "--epochs", "1"])
    assert code == 2 and "'nope' does not exist" in err and "when the run started" not in err
    assert "name where the data is now with --data" in err  # what a run's config trained again needs
    code, out, err = cli(["train", "--model", "lenet5", "--data", "digits", "--set", "data.data_dir=nope"])
    assert code == 2 and "digits does not read it" in err
