"""`cnnlab search`: the space file, coarse-to-fine narrowing, Optuna studies, workers and resume."""

import contextlib
import csv
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pytest

from cnnlab.run import RunFolder
import yaml

from cnnlab.config import AugConfig, RunConfig, apply_overrides, load_config
from cnnlab.errors import CnnlabError
from cnnlab.tune import search
from cnnlab.tune.search import Param, SearchSettings, narrow_space, parse_space

SYNTHETIC = "synthetic:classes=3,train=96,val=24,test=24"
# log.curves=false: each trial's curves.png costs about a second of drawing that no test here reads
QUICK = ["--model", "lenet5", "--data", SYNTHETIC, "--set", "train.batch_size=32", "--set", "train.threads=1",
         "--set", "log.curves=false"]
SPACE = {
    "optim.lr": {"low": 1e-3, "high": 0.3, "log": True},
    "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "train.batch_size": {"choices": [16, 32]},
}


def base_config() -> RunConfig:
    config = RunConfig()
    config.model.name, config.data.spec = "lenet5", SYNTHETIC
    config.train.batch_size, config.train.threads = 32, 1
    config.log.curves = False  # as QUICK
    return config


def write_space(folder: Path, space=None) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space or SPACE))
    return path


# --- the space file ----------------------------------------------------------------------------


def test_parse_space_types_and_grid_values():
    space = parse_space({**SPACE, "train.epochs": {"low": 1, "high": 9, "log": True}, "model.options.drop_path_rate":
                         {"low": 0.0, "high": 0.2}}, base_config())
    assert space["optim.lr"].log and not space["optim.lr"].integer
    assert space["train.epochs"].integer  # an int field is sampled as an int
    assert space["train.batch_size"].choices == [16, 32]
    assert space["optim.lr"].grid_values() == pytest.approx([1e-3, math.sqrt(1e-3 * 0.3), 0.3])  # geometric
    assert space["train.epochs"].grid_values() == [1, 3, 9]
    assert space["model.options.drop_path_rate"].grid_values() == pytest.approx([0.0, 0.1, 0.2])
    # an integer key is rounded inwards: every draw lies in the range written (round() made [0.5, 3.7] 0..4)
    inward = parse_space({"train.epochs": {"low": 0.5, "high": 3.7}}, base_config())["train.epochs"]
    assert (inward.low, inward.high) == (1, 3)
    # a random search reads no grid values (a note says so): repeated ones are no reason to refuse its space
    drawn = parse_space({"optim.lr": {"low": 0.01, "high": 0.1, "values": [0.05, 0.05]}}, base_config(), grid=False)
    assert (drawn["optim.lr"].low, drawn["optim.lr"].high) == (0.01, 0.1)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"optim.lrr": {"low": 0.1, "high": 1}}, "section 'optim' has"),
        ({"optim.lrr": {"low": 0.1, "high": 1}}, "Did you mean optim.lr?"),  # as --set optim.lrr says it
        ({"optimiser.lr": {"low": 0.1, "high": 1}}, "is not a config key"),
        ({"optim.lr": {"low": 1.0, "high": 0.1}}, "reversed or empty"),
        ({"optim.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs positive bounds"),
        ({"optim.lr": {"low": -1.0, "high": 0.1}}, "optim.lr=-1.0 must be positive"),
        ({"optim.lr": {"low": 0.1}}, "needs both low and high"),
        ({"optim.lr": 0.1}, "needs a mapping"),
        ({"optim.lr": {"low": 0.1, "high": 1, "step": 2}}, "has the unknown field step"),
        ({"optim.name": {"choices": ["sgd", "adam"]}}, "choose one of sgd, adamw"),
        ({"train.batch_size": {"choices": []}}, "non-empty list"),
        # a repeated choice ran its grid point twice, with no word; a whole number drawn for a real-valued key
        ({"optim.lr": {"choices": [0.01, 0.01, 0.02]}}, "name 0.01 more than once"),
        ({"train.batch_size": {"choices": [16, 16.0, 32]}}, "name 16 more than once"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "values": [0.05, 0.05]}}, "values [0.05, 0.05] name 0.05"),
        ({"optim.weight_decay": {"low": 0, "high": 3, "int": True}}, "is a real-valued setting"),
        ({"model.drop_rate": {"low": 0, "high": 0.9, "int": True}}, "is a real-valued setting"),
        ([], "non-empty mapping"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "points": "abc"}}, "points must be a whole number"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "points": 2.5}}, "points must be a whole number"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "log": "false"}}, "log must be true or false"),
        ({"train.batch_size": {"low": 60.2, "high": 60.4}}, "60.2..60.4 holds no whole number"),
        ({"train.batch_size": {"low": 16.4, "high": 16.6}}, "16.4..16.6 holds no whole number"),  # not 16..17
        ({"train.batch_size": {"low": 15.5, "high": 16.5}}, "holds only the whole number 16"),
        # an infinite bound of an integer key crashed with an OverflowError (exit 1), a float key's passed on
        ({"train.batch_size": {"low": 16, "high": math.inf}}, "low and high must be finite numbers"),
        ({"optim.lr": {"low": -math.inf, "high": 0.1}}, "low and high must be finite numbers"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "values": [0.05, "abc"]}}, "the value 'abc' is not valid"),
        ({"optim.lr": {"low": 0.01, "high": 0.1, "values": 0.05}}, "values must be a non-empty list"),
        # the range is what --refine narrows: a grid value beyond it narrowed 0.01..0.1 to 0.491..0.1
        ({"optim.lr": {"low": 0.01, "high": 0.1, "values": [0.05, 0.5]}}, "grid values 0.5 lie outside low..high"),
        ({"train.batch_size": {"low": 16, "high": 64, "values": [8, 32]}}, "grid values 8 lie outside"),
        # a run's record of how a path was typed: every trial would replace it
        ({"model.init_from_typed": {"choices": ["a", "b"]}}, "model.init_from_typed is not a setting"),
        ({"data.spec_typed": {"choices": ["folder:a", "folder:b"]}}, "Set data.spec itself"),
    ],
)
def test_bad_spaces_are_refused_with_the_key_named(space, message):
    with pytest.raises(CnnlabError) as err:
        parse_space(space, base_config())
    assert message in str(err.value)


def test_a_norm_option_can_be_searched_as_any_key_can(tmp_path):
    """model.norm_options.NAME is a --set key; a space that searched it was refused as "not a config key"."""
    base = base_config()
    base.model.name, base.model.norm = "resnet8", "bn"
    space = parse_space({"model.norm_options.momentum": {"low": 0.01, "high": 0.5}}, base)
    config = search.apply_params(base, {"model.norm_options.momentum": 0.2})
    assert space["model.norm_options.momentum"].high == 0.5 and config.model.norm_options == {"momentum": 0.2}
    assert search.apply_params(base, {"model.options.se": 4}).model.options == {"se": 4}


def test_a_value_given_for_a_searched_key_is_noted_as_setting_nothing(cli, tmp_path):
    """--lr over a space that searches optim.lr set nothing, without a word (--epochs over a searched
    train.epochs is refused)."""
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True}})
    code, _, err = cli(["search", *QUICK, "--space", str(space), "--trials", "1", "--epochs", "1", "--lr", "0.4",
                        "--set", "optim.weight_decay=0.001", "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert "note: optim.lr=0.4 (given by --set or an option) is searched by the space: each trial trains" in err
    assert "optim.weight_decay=0.001 (given" not in err  # not searched: it holds for every trial


def test_narrow_space_by_hand():
    space = {"optim.lr": Param("optim.lr", low=1e-4, high=1.0, log=True),
             "model.drop_rate": Param("model.drop_rate", low=0.0, high=0.5),
             "train.batch_size": Param("train.batch_size", choices=[32, 64, 128])}
    best = [{"optim.lr": 1e-2, "model.drop_rate": 0.2, "train.batch_size": 64},
            {"optim.lr": 1e-1, "model.drop_rate": 0.3, "train.batch_size": 64}]
    narrowed = narrow_space(space, best)
    # log range: 4 decades, margin 0.4 decade each side of [1e-2, 1e-1]
    assert narrowed["optim.lr"].low == pytest.approx(1e-2 / 10**0.4)
    assert narrowed["optim.lr"].high == pytest.approx(1e-1 * 10**0.4)
    # linear: margin 0.05 each side of [0.2, 0.3]
    assert (narrowed["model.drop_rate"].low, narrowed["model.drop_rate"].high) == pytest.approx((0.15, 0.35))
    assert narrowed["train.batch_size"].choices == [64]
    clipped = narrow_space(space, [{"optim.lr": 0.9, "model.drop_rate": 0.0}])
    assert clipped["optim.lr"].high == 1.0 and clipped["model.drop_rate"].low == 0.0  # never wider than before
    with pytest.raises(CnnlabError, match="no completed trial"):
        narrow_space(space, [])
    epochs = {"train.epochs": Param("train.epochs", low=1, high=9, integer=True)}
    assert (narrow_space(epochs, [{"train.epochs": 9}])["train.epochs"].low,
            narrow_space(epochs, [{"train.epochs": 9}])["train.epochs"].high) == (8, 9)  # at the top: widened down
    assert narrow_space(epochs, [{"train.epochs": 4}, {"train.epochs": 5}])["train.epochs"].low == 3


@pytest.mark.parametrize("low, high", [(16, 48), (5, 10), (0.001, 0.3)])
def test_a_narrowed_log_range_never_leaves_the_old_one(low, high):
    # exp(log(x)) misses x by a rounding error (exp(log(16)) < 16, exp(log(48)) > 48): rounded outwards, an
    # integer range whose best trials sat at its ends became [15, 49], outside the range the user allowed.
    integer = isinstance(low, int)
    key = "train.batch_size" if integer else "optim.lr"
    space = {key: Param(key, low=low, high=high, log=True, integer=integer)}
    narrowed = narrow_space(space, [{key: low}, {key: high}])[key]
    assert (narrowed.low, narrowed.high) == (low, high)
    assert narrow_space(space, [{key: low}])[key].low == low
    assert narrow_space(space, [{key: high}])[key].high == high


# --- studies -----------------------------------------------------------------------------------


def settings_for(tmp_path: Path, trials: int, space=None, **kwargs) -> SearchSettings:
    from cnnlab.config import config_to_dict
    from dataclasses import asdict

    params = parse_space(space or SPACE, base_config())
    return SearchSettings(base=config_to_dict(base_config()), space={k: asdict(p) for k, p in params.items()},
                          out=str(tmp_path), storage=search.storage_url(tmp_path, None), study_name="s",
                          trials=trials, epochs=1, pruner="none", **kwargs)


@pytest.mark.parametrize("name", ["s?x#y%41 z", "lr%41", "a@b:c+d"])
def test_the_default_study_file_is_out_slash_study_db_whatever_the_folder_is_called(tmp_path, name):
    """SQLAlchemy read '?' in the URL's path as the start of its options and '%41' as 'A': a search into
    's?x' kept its study in a file 's' of the working folder, and the next such search reported that one's
    trials as its own. The URL names OUT/study.db, as SQLAlchemy and SQLite read it."""
    out = tmp_path / name
    url = search.storage_url(out, None)
    assert search.sqlite_file(url) == out.resolve() / "study.db"
    out.mkdir()
    storage = search.open_storage(url)
    import optuna

    optuna.create_study(study_name="s", storage=storage)
    storage.engine.dispose()
    assert sorted(path.name for path in tmp_path.rglob("*")) == sorted([name, "study.db"])


def test_search_cli_writes_results_best_config_and_plots_then_refines(cli, tmp_path):
    out = tmp_path / "my search"  # a space in the name: the suggested command must quote it
    space = write_space(tmp_path)
    code, stdout, err = cli(["search", *QUICK, "--space", str(space), "--trials", "4", "--epochs", "1",
                             "--out", str(out), "--pruner", "none"])
    assert code == 0, err
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert "4 trials of 1 epoch, 1 worker" in stdout  # counted nouns, not "1 epochs" or "worker(s)"
    accs = [float(r["val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    best = load_config(out / "best.yaml")
    assert best.optim.lr == pytest.approx(float(rows[0]["optim.lr"]))
    assert best.train.batch_size == int(rows[0]["train.batch_size"])
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:  # every trial is an ordinary run folder
        assert (Path(row["run_dir"]) / "metrics.csv").is_file()
    suggested = [line for line in stdout.splitlines() if line.startswith("train it: ")]
    assert shlex.split(suggested[0].removeprefix("train it: ")) == ["cnnlab", "train", "--config", str(out / "best.yaml")]

    # one refined trial shows what every one trains: its epochs and its constant lr
    code, stdout, err = cli(["search", *QUICK, "--refine", "--trials", "1", "--out", str(out), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["study"] == "search-refine" and report["counts"] == {"COMPLETE": 1}
    refined = yaml.safe_load((out / "space-refine.yaml").read_text())
    lrs = [float(r["optim.lr"]) for r in rows[:3]]  # the best 3 of 4 (at least 3 are kept)
    assert refined["optim.lr"]["low"] <= min(lrs) and refined["optim.lr"]["high"] >= max(lrs)
    assert refined["optim.lr"]["high"] - refined["optim.lr"]["low"] < 0.3 - 1e-3
    assert all(t["epochs"] == 2 for t in report["trials"])  # twice the coarse search's epochs
    assert (out / "refine-results.csv").is_file() and (out / "refine-best.yaml").is_file()
    # step 5: the refined trials trained at a constant lr (the coarse ones ran the default cosine)
    assert report["refine"]["schedule"].startswith("constant lr (step 5 of the recipe")
    assert load_config(out / "refine-best.yaml").schedule.name == "constant"
    for trial in report["trials"]:
        lrs = [row["lr"] for row in csv.DictReader((Path(trial["run_dir"]) / "metrics.csv").open())]
        assert len(lrs) == 2 and lrs[0] == lrs[1]
    coarse_lrs = [row["lr"] for row in csv.DictReader((Path(rows[0]["run_dir"]) / "metrics.csv").open())]
    assert load_config(Path(rows[0]["run_dir"]) / "config.yaml").schedule.name == "cosine" and len(coarse_lrs) == 1


def test_crashed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    # A batch of 500 is more than the 96 training images: that trial fails with the engine's message.
    space = {"train.batch_size": {"choices": [500, 16]}, "optim.lr": {"low": 0.01, "high": 0.1}}
    settings = settings_for(tmp_path, trials=5, space=space)
    lines = []
    search.run_workers(settings, 1, lines.append)
    results = search.collect_results(search.open_study(settings), settings.out)
    states = [r["state"] for r in results.rows]
    assert len(results.rows) == 5 and "FAIL" in states and "COMPLETE" in states
    failed = [r for r in results.rows if r["state"] == "FAIL"]
    assert all(r["params"]["train.batch_size"] == 500 and "fewer than one batch" in r["error"] for r in failed)
    assert any("FAILED" in line for line in lines)
    # a trial whose set-up failed left no run folder: results.csv names none (it named one that was not there)
    assert all(r["run_dir"] is None for r in failed)
    assert all(Path(r["run_dir"]).is_dir() for r in results.rows if r["state"] == "COMPLETE")


def test_a_search_in_which_no_trial_completed_exits_1_and_refine_names_how_its_trials_ended(cli, tmp_path):
    """Every trial failed: the search ended with exit code 0 and no best.yaml (so `search && train --config
    OUT/best.yaml` went on to a missing file), and --refine then said "Run the coarse search first"."""
    space = write_space(tmp_path, {"optim.lr": {"low": 1e20, "high": 1e22, "log": True}})  # every trial diverges
    out = tmp_path / "search"
    code, stdout, err = cli(["search", *QUICK, "--space", str(space), "--trials", "2", "--epochs", "1",
                             "--out", str(out), "--pruner", "none", "--set", "train.precision=fp32"])
    assert code == 1, err
    assert "no trial completed (2 failed), so the search has no best trial and wrote no best.yaml" in err
    assert f"error is in {out / 'results.csv'}" in err and "Traceback" not in err
    assert not (out / "best.yaml").exists() and "train it:" not in stdout
    assert [row["state"] for row in csv.DictReader((out / "results.csv").open())] == ["FAIL", "FAIL"]
    code, stdout, _ = cli(["search", *QUICK, "--space", str(space), "--trials", "2", "--epochs", "1", "--out",
                           str(out), "--pruner", "none", "--set", "train.precision=fp32", "--json"])  # full: read
    assert code == 1 and json.loads(stdout)["best"] is None
    code, _, err = cli(["search", *QUICK, "--refine", "--trials", "2", "--out", str(out)])
    assert code == 2 and "no trial of the coarse search 'search'" in err and "(its trials: 2 failed)" in err
    assert "Run the coarse search first" not in err


def test_best_yaml_records_the_data_path_as_the_trials_did(cli, tmp_path, monkeypatch):
    """best.yaml kept --data folder:pics as typed, while every trial's config.yaml recorded where it led: trained
    from another folder, it read nothing ('pics' does not exist). It records the path as a run does."""
    from PIL import Image

    for label in range(2):
        (tmp_path / "pics" / f"c{label}").mkdir(parents=True)
        for number in range(6):
            Image.new("L", (8, 8), 40 + 150 * label + number).save(tmp_path / "pics" / f"c{label}" / f"{number}.png")
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    code, _, err = cli(["search", "--model", "lenet5", "--data", "folder:pics", "--set", "data.image_size=32",
                        "--set", "train.batch_size=4", "--set", "log.curves=false", "--space", str(space),
                        "--trials", "1", "--epochs", "1", "--out", "s"])
    assert code == 0, err
    best = load_config(tmp_path / "s" / "best.yaml")
    assert best.data.spec == f"folder:{tmp_path / 'pics'}" and best.data.spec_typed == "folder:pics"


def test_a_trial_queued_again_whose_folder_was_never_written_starts_without_a_word(tmp_path):
    """A trial stopped in its set-up wrote no folder, and is queued again with the folder it would have had: the
    search that continues it found nothing to remove (results.csv names no folder for it, the retry still looks)."""
    import types

    settings = settings_for(tmp_path, trials=1)
    stopped = types.SimpleNamespace(number=1, user_attrs={"run_dir": str(tmp_path / "gone" / "trials" / "s-0000")})
    said = []
    search._remove_earlier_attempt(stopped, settings, said.append)
    assert said == []


def test_the_search_leaves_the_callers_warning_filters_as_they_were(tmp_path):
    """Optuna's experimental-feature warnings are silenced while trials run, not for the program after."""
    import warnings

    with warnings.catch_warnings():
        warnings.resetwarnings()  # no filter an earlier search in this process may have left
        warnings.simplefilter("default")
        before = list(warnings.filters)
        search.run_workers(settings_for(tmp_path, trials=1), 1, lambda line: None)
        assert warnings.filters == before


def _stopped_in_trial(settings, monkeypatch, number: int):
    """Run the search with a Ctrl-C in its ``number``-th trial's training (1-based), which leaves a part-trained
    folder (a last.safetensors); the study's interrupted trial. engine.train is itself again afterwards."""
    import cnnlab.train.engine as engine

    real = engine.train
    calls = {"n": 0}

    def interrupt(config, run_dir, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            Path(run_dir).mkdir(parents=True)
            (Path(run_dir) / "last.safetensors").write_bytes(b"part-trained")
            raise KeyboardInterrupt
        return real(config, run_dir, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train", interrupt)
        with pytest.raises(KeyboardInterrupt):
            search.run_workers(settings, 1, lambda text: None)
    interrupted = [t for t in search.open_study(settings).trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].params
    return interrupted[0]


@pytest.mark.parametrize("interrupted_trial", [2, 3])  # 3: the last, whose queued copy alone is left to run
def test_interrupted_search_resumes_and_reruns_the_interrupted_trial(tmp_path, monkeypatch, interrupted_trial):
    settings = settings_for(tmp_path, trials=3)
    interrupted = [_stopped_in_trial(settings, monkeypatch, interrupted_trial)]
    part_trained = Path(interrupted[0].user_attrs["run_dir"])
    assert part_trained.is_dir()
    lines = []
    search.run_workers(settings, 1, lines.append)  # the same command again
    results = search.collect_results(search.open_study(settings), settings.out)
    assert [r["state"] for r in results.rows] == ["COMPLETE"] * 3
    assert interrupted[0].params in [r["params"] for r in results.rows]  # it ran again, to the end
    # the interrupted trial's folder went when its parameters started again: three trials, three folders
    assert not part_trained.exists() and len(list(part_trained.parent.iterdir())) == 3
    assert any(f"runs the parameters of {part_trained.name} again" in line for line in lines), lines


def test_a_search_resumed_from_another_folder_removes_the_interrupted_trials_folder(tmp_path, monkeypatch):
    """The trial's folder is recorded as the process wrote it, relative to its working folder ('s/trials/s-0001'):
    resumed from elsewhere, the part-trained folder was not found, stayed, and showed as one more run."""
    from dataclasses import replace

    search_folder = tmp_path / "search"
    search_folder.mkdir()
    monkeypatch.chdir(tmp_path)
    relative = replace(settings_for(search_folder, trials=3), out="search")
    interrupted = _stopped_in_trial(relative, monkeypatch, 2)
    assert not Path(interrupted.user_attrs["run_dir"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    lines = []
    search.run_workers(replace(relative, out=str(search_folder)), 1, lines.append)
    part_trained = search_folder / "trials" / Path(interrupted.user_attrs["run_dir"]).name
    assert not part_trained.exists() and len(list(part_trained.parent.iterdir())) == 3
    assert any(f"runs the parameters of {part_trained.name} again" in line for line in lines), lines


@pytest.mark.parametrize("interrupted_trial, kept", [
    (1, "no trial finished, so none is kept in "),  # stopped in the first trial: nothing to promise
    (3, "2 finished trials are kept in "),
])
def test_the_interrupted_line_counts_the_trials_really_kept(cli, tmp_path, monkeypatch, interrupted_trial, kept):
    """The line used to say "finished trials are kept" even when none had finished."""
    import cnnlab.train.engine as engine

    real = engine.train
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupted_trial:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train", interrupt)
    out = tmp_path / "search"
    code, _, err = cli(["search", *QUICK, "--space", str(write_space(tmp_path)), "--trials", "4", "--epochs", "1",
                        "--out", str(out), "--pruner", "none"])
    assert code == 130
    assert f"interrupted: {kept}" in err and "run the same command to continue" in err


def test_ctrl_c_in_a_trials_last_step_keeps_that_trial_and_starts_no_further_one(tmp_path, monkeypatch):
    import dataclasses

    import cnnlab.train.engine as engine

    settings = settings_for(tmp_path, trials=3)
    real = engine.train
    calls = {"n": 0}

    def stop_in_last_step_of_second(*args, **kwargs):  # the run finishes, with the stop request noted
        calls["n"] += 1
        result = real(*args, **kwargs)
        return dataclasses.replace(result, stop_requested=True) if calls["n"] == 2 else result

    monkeypatch.setattr(engine, "train", stop_in_last_step_of_second)
    with pytest.raises(KeyboardInterrupt):
        search.run_workers(settings, 1, lambda text: None)
    assert calls["n"] == 2  # no third trial started
    results = search.collect_results(search.open_study(settings), settings.out)
    assert [r["state"] for r in results.rows] == ["COMPLETE"] * 2  # the second trial finished and counts
    monkeypatch.setattr(engine, "train", real)
    search.run_workers(settings, 1, lambda text: None)  # the same command again runs the last one
    rows = search.collect_results(search.open_study(settings), settings.out).rows
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # the test's own study.ask
def test_a_killed_workers_trial_is_failed_by_heartbeat_and_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(search, "GRACE_SECONDS", 1)
    settings = settings_for(tmp_path, trials=2)  # the orphan's parameters, retried, and one new trial
    study = search.open_study(settings)
    orphan = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                        "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                        "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32])})
    study._storage.record_heartbeat(orphan._trial_id)  # then its process "dies": no more heartbeats
    time.sleep(2.5)
    search.run_workers(settings, 1, lambda text: None)
    study = search.open_study(settings)
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    results = search.collect_results(study, settings.out)
    assert len(results.rows) == 2 and all(r["state"] == "COMPLETE" for r in results.rows)
    assert orphan.params in [r["params"] for r in results.rows]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # the test's own study.ask
def test_a_trial_whose_worker_was_killed_once_too_often_is_listed_failed_not_dropped(tmp_path):
    """Past MAX_RETRIES Optuna queues a dead worker's parameters no more: they vanished from results.csv and the
    counts, and the trial's folder still said the search would run them again."""
    import socket
    import subprocess

    settings = settings_for(tmp_path, trials=2)
    study = search.open_study(settings)
    orphan = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                        "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                        "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32])})
    study._storage.record_heartbeat(orphan._trial_id)
    # its fourth attempt: the three before it were killed too (Optuna's retry records them)
    study._storage.set_trial_system_attr(orphan._trial_id, "retry_history", [100, 101, 102])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan.set_user_attr("pid", int(ended.stdout))
    orphan.set_user_attr("host", socket.gethostname())
    killed = search.trial_run_dir(settings.out, settings.study_name, orphan.number)
    killed.mkdir(parents=True)
    (killed / "status.json").write_text(json.dumps({"state": "running", "epoch": 0}))
    # as recorded by a worker started from another working folder (relative to that folder): found by its name
    orphan.set_user_attr("run_dir", str(Path("elsewhere", "search", "trials", killed.name)))
    search.run_workers(settings, 1, lambda text: None)
    results = search.collect_results(search.open_study(settings), settings.out)
    failed = [r for r in results.rows if r["state"] == "FAIL"]
    assert [r["number"] for r in failed] == [orphan.number] and orphan.params == failed[0]["params"]
    assert failed[0]["run_dir"] == str(killed)  # listed inside this search folder, as every other trial is
    assert "killed 4 times" in failed[0]["error"] and "given up after 3 retries" in failed[0]["error"]
    assert results.counts == {"COMPLETE": 1, "FAIL": 1}  # it counts towards --trials 2, as a crashed trial does
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "failed" and "given up" in status["message"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # the test's own study.ask
def test_a_trial_whose_worker_on_this_host_is_gone_is_retried_at_once(tmp_path):
    import socket
    import subprocess

    settings = settings_for(tmp_path, trials=2)  # the heartbeat's grace stays 60 s: this must not wait for it
    study = search.open_study(settings)
    orphan = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                        "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                        "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32])})
    study._storage.record_heartbeat(orphan._trial_id)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan.set_user_attr("pid", int(ended.stdout))  # the worker that ran it was killed: its process is gone
    orphan.set_user_attr("host", socket.gethostname())
    killed = search.trial_run_dir(settings.out, settings.study_name, orphan.number)
    killed.mkdir(parents=True)  # the part-trained run it left
    orphan.set_user_attr("run_dir", str(killed))
    search.run_workers(settings, 1, lambda text: None)
    study = search.open_study(settings)
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    results = search.collect_results(study, settings.out)
    assert [r["state"] for r in results.rows] == ["COMPLETE"] * 2 and orphan.params in [r["params"] for r in results.rows]
    assert not killed.exists()  # removed when its retry started: only the two trials' folders are listed


@pytest.mark.parametrize("how", ["held", "finished"])
def test_a_stopped_trial_s_folder_that_a_resume_holds_or_finished_is_kept_when_the_search_runs_again(
        tmp_path, monkeypatch, how):
    # `cnnlab runs` once advised `cnnlab train --resume` for a stopped trial; the search run again then removed the
    # folder while that resume wrote it (which then failed), or after it had finished.
    from cnnlab.io import hold_folder

    settings = settings_for(tmp_path, trials=1)  # the stopped trial's parameters, run again in a folder of their own
    earlier = RunFolder(_stopped_in_trial(settings, monkeypatch, 1).user_attrs["run_dir"])
    lines = []
    if how == "finished":
        earlier.report.write_text("finished by a resume\n")
        search.run_workers(settings, 1, lines.append)
    else:
        with hold_folder(earlier.lock, "a run"):
            search.run_workers(settings, 1, lines.append)
    assert earlier.path.is_dir() and earlier.last.read_bytes() == b"part-trained"
    kept = "is writing it" if how == "held" else "a resume outside the search finished it"
    assert any(f"runs the parameters of {earlier.path.name} again" in line and kept in line for line in lines), lines
    results = search.collect_results(search.open_study(settings), settings.out)
    assert [r["state"] for r in results.rows] == ["COMPLETE"]


def test_runs_points_a_stopped_trial_to_its_search_not_to_a_resume_the_search_throws_away(tmp_path):
    from cnnlab.report.runs import read_run

    out = tmp_path / "search"
    trial = RunFolder(out / "trials" / "search-0000")
    (out / "study.db").parent.mkdir(parents=True)
    (out / "study.db").write_bytes(b"")
    trial.path.mkdir(parents=True)
    from cnnlab.config import config_to_dict

    trial.config.write_text(yaml.safe_dump(config_to_dict(base_config())))
    trial.last.write_bytes(b"part-trained")
    (trial.path / "status.json").write_text(json.dumps({"state": "interrupted", "epoch": 1}))
    note = read_run(trial.path, diagnose=False).state_note
    assert "the `cnnlab search` that made it continues with the same command" in note and str(out) in note
    assert "train --resume" not in note


def test_a_queued_trial_shows_the_parameters_it_will_run_with():
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"optim.lr": 0.02})  # as a resume queues an interrupted trial's parameters
    (row,) = search.collect_results(study, "search").rows
    assert row["state"] == "WAITING" and row["params"] == {"optim.lr": 0.02} and row["run_dir"] is None


def test_results_name_every_trial_folder_inside_the_search_folder_given(tmp_path):
    """Workers record their trial folders relative to their own working folders (or absolute, for an absolute
    --out): results.csv listed such a mix after a resume from elsewhere."""
    study = optuna.create_study(direction="maximize")
    for recorded in ("runs/search/trials/s-0000", "/old/place/search/trials/s-0001"):
        trial = study.ask()
        trial.set_user_attr("run_dir", recorded)
        study.tell(trial, 0.5)
        (tmp_path / "search" / "trials" / Path(recorded).name).mkdir(parents=True)
    rows = search.collect_results(study, str(tmp_path / "search")).rows
    assert sorted(r["run_dir"] for r in rows) == [str(tmp_path / "search" / "trials" / "s-0000"),
                                                   str(tmp_path / "search" / "trials" / "s-0001")]


def test_two_worker_processes_share_one_sqlite_study(tmp_path, capfd):
    from cnnlab.cli import main

    out = tmp_path / "search"
    space = write_space(tmp_path)
    # train.sync_bn=true on one process: every trial's run prints the same note (as bf16 autocast's)
    args = ["search", *QUICK, "--space", str(space), "--trials", "4", "--epochs", "1", "--workers", "2",
            "--out", str(out), "--pruner", "none", "--json", "--set", "train.sync_bn=true"]
    # The command runs in this process, its two workers in processes it spawns: capfd reads what they write to the
    # file descriptors they share with it.
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    stdout, stderr = capfd.readouterr()
    assert exit_info.value.code == 0, stderr[-2000:]
    assert stderr.count("note: train.sync_bn=true") == 1, stderr[-2000:]  # once, not once per worker
    report = json.loads(stdout)
    # --json prints no line per trial, from one worker or from several (the JSON lists every trial)
    assert [line for line in stderr.splitlines() if "trial " in line and not line.startswith("note: ")] == [], \
        stderr[-2000:]
    numbers = sorted(t["number"] for t in report["trials"])
    assert numbers == list(range(4))  # a surplus trial (two workers asking for the last slot) would be 4
    assert all(t["state"] == "COMPLETE" for t in report["trials"])
    run_dirs = [t["run_dir"] for t in report["trials"]]
    assert len(set(run_dirs)) == 4 and all((Path(d) / "metrics.csv").is_file() for d in run_dirs)
    assert len({json.dumps(t["params"], sort_keys=True) for t in report["trials"]}) == 4  # no repeated draw
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out.resolve() / 'study.db'}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 4  # none lost, none run twice


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--storage", "not-a-url"], "is not a database URL"),
        (["--storage", "sqlite:////no/such/folder/study.db"], "does not exist"),
        (["--storage", "nosuchdialect://host/db"], "Cannot open the study storage"),
        (["--pruner", "sometimes"], "choose median, halving or none"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_bad_storage_and_options_exit_2(cli, tmp_path, extra, message):
    space = write_space(tmp_path)
    code, out, err = cli(["search", *QUICK, "--space", str(space), "--out", str(tmp_path / "o"), *extra])
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # a storage that cannot be opened left an empty --out folder


def test_missing_space_and_refine_without_a_study_exit_2(cli, tmp_path):
    code, out, err = cli(["search", *QUICK, "--out", str(tmp_path / "o")])
    assert code == 2 and "--space is needed" in err
    code, out, err = cli(["search", *QUICK, "--refine", "--out", str(tmp_path / "o")])
    assert code == 2 and "no coarse search 'search'" in err
    (tmp_path / "empty").mkdir()  # a folder without a study: refused, and no empty study.db is left in it
    code, out, err = cli(["search", *QUICK, "--refine", "--out", str(tmp_path / "empty")])
    assert code == 2 and "no coarse search 'search'" in err and list((tmp_path / "empty").iterdir()) == []
    space = write_space(tmp_path, {"optim.lr": {"low": 1.0, "high": 0.1}})
    code, out, err = cli(["search", *QUICK, "--space", str(space), "--out", str(tmp_path / "o")])
    assert code == 2 and "'optim.lr'" in err and "reversed" in err
    # a folder, or a pipe (the shell's <(...)), was said not to exist
    code, out, err = cli(["search", *QUICK, "--space", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "is a folder, not a file" in err
    os.mkfifo(tmp_path / "pipe")
    code, out, err = cli(["search", *QUICK, "--space", str(tmp_path / "pipe"), "--out", str(tmp_path / "o")])
    assert code == 2 and "is not a regular file (a pipe" in err


def test_grid_search_runs_every_point_once_and_the_median_pruner_stops_hopeless_trials(tmp_path):
    # lr 1e-7 cannot learn in 3 epochs: once 3 trials have finished, such a trial falls below the
    # median of the earlier trials after an epoch and is pruned there. (The grid's order is Optuna's
    # seeded shuffle; with seed 0 the first three trials include a learning one.)
    space = {"optim.lr": {"choices": [0.05, 1e-7]}, "optim.weight_decay": {"low": 1e-6, "high": 1e-4, "log": True}}
    settings = settings_for(tmp_path, trials=99, space=space, grid=True)
    settings.epochs, settings.pruner = 3, "median"
    settings.trials = search.grid_size(settings.space)
    assert settings.trials == 2 * 3  # 2 choices x 3 log-spaced points
    search.run_workers(settings, 1, lambda text: None)
    results = search.collect_results(search.open_study(settings), settings.out)
    points = {(r["params"]["optim.lr"], round(r["params"]["optim.weight_decay"], 12)) for r in results.rows}
    assert len(results.rows) == 6 and len(points) == 6  # every grid point exactly once
    pruned = [r for r in results.rows if r["state"] == "PRUNED"]
    assert pruned and all(r["params"]["optim.lr"] == 1e-7 and r["epochs"] < 3 for r in pruned)
    assert all(r["state"] == "COMPLETE" for r in results.rows if r["params"]["optim.lr"] == 0.05)
    # Each trial's run folder says how it ended: the pruner's trials as pruned (with why), the others finished.
    states = {r["state"]: set() for r in results.rows}
    for r in results.rows:
        states[r["state"]].add(json.loads(RunFolder(r["run_dir"]).status.read_text())["state"])
    assert states == {"PRUNED": {"pruned"}, "COMPLETE": {"finished"}}


def test_a_trial_that_trained_every_epoch_is_complete_never_pruned(tmp_path):
    """At --epochs 1 the pruner was asked after the only epoch: hopeless trials that had trained every epoch were
    marked pruned, and so left out of the best and of --refine's best quarter. Pruning saves epochs not yet
    trained; after the last there are none."""
    space = {"optim.lr": {"choices": [0.05, 1e-7]}, "optim.weight_decay": {"low": 1e-6, "high": 1e-4, "log": True}}
    settings = settings_for(tmp_path, trials=99, space=space, grid=True)
    settings.epochs, settings.pruner = 1, "median"
    settings.trials = search.grid_size(settings.space)
    search.run_workers(settings, 1, lambda text: None)
    results = search.collect_results(search.open_study(settings), settings.out)
    assert [r["state"] for r in results.rows] == ["COMPLETE"] * 6
    learning = [r for r in results.rows if r["params"]["optim.lr"] == 0.05]
    assert results.best["params"]["optim.lr"] == 0.05 and results.rows[:3] == sorted(
        learning, key=lambda r: -r["val_acc"])  # completed trials by val accuracy, the hopeless ones after


# --- the library decides: plan_search / refine_search / run_search ------------------------------


class Captured(Exception):
    """Raised by a stand-in for run_search once the CLI has planned the search: no trial runs."""


@pytest.fixture
def planned(monkeypatch):
    seen = {}

    def stand_in(plan, say=None, **kwargs):
        seen["plan"] = plan
        raise Captured

    monkeypatch.setattr(search, "run_search", stand_in)
    return seen


def test_a_config_files_train_epochs_that_the_search_replaces_gets_a_note(cli, tmp_path, planned):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "lenet5"}, "data": {"spec": SYNTHETIC},
                                      "train": {"epochs": 7, "batch_size": 32, "threads": 1}}))
    space = write_space(tmp_path)
    code, _, err = cli(["search", "--config", str(config), "--space", str(space), "--out", str(tmp_path / "a")])
    assert code == 1 and planned["plan"].settings.epochs == search.DEFAULT_EPOCHS  # the default replaces 7
    assert f"note: {config} sets train.epochs=7" in err and f"each trial trains {search.DEFAULT_EPOCHS} epochs" in err
    code, _, err = cli(["search", "--config", str(config), "--space", str(space), "--epochs", "3",
                        "--out", str(tmp_path / "b")])
    assert code == 1 and "each trial trains 3 epochs" in err
    # no note: the same epochs, a config that leaves train.epochs unset, or a space that searches it
    code, _, err = cli(["search", "--config", str(config), "--space", str(space), "--epochs", "7",
                        "--out", str(tmp_path / "c")])
    assert code == 1 and planned["plan"].settings.epochs == 7 and "train.epochs" not in err
    unset = tmp_path / "unset.yaml"
    unset.write_text(yaml.safe_dump({"model": {"name": "lenet5"}, "data": {"spec": SYNTHETIC}}))
    code, _, err = cli(["search", "--config", str(unset), "--space", str(space), "--out", str(tmp_path / "d")])
    assert code == 1 and "train.epochs" not in err
    drawn = write_space(tmp_path, {"train.epochs": {"choices": [1, 2]}})
    code, _, err = cli(["search", "--config", str(config), "--space", str(drawn), "--out", str(tmp_path / "e")])
    assert code == 1 and planned["plan"].settings.epochs is None and "note:" not in err


def test_search_shortcuts_set_the_base_of_every_trial(cli, tmp_path, planned):
    space = write_space(tmp_path)
    code, out, err = cli(["search", *QUICK, "--space", str(space), "--out", str(tmp_path / "o"), "--lr", "0.02",
                          "--batch-size", "24", "--seed", "11", "--device", "cpu", "--epochs", "3"])
    assert code == 1 and "Captured" in err
    plan = planned["plan"]
    base = plan.settings.base
    assert (base["optim"]["lr"], base["train"]["batch_size"], base["train"]["seed"], base["train"]["device"]) == \
        (0.02, 24, 11, "cpu")
    assert plan.base.optim.lr == 0.02 and plan.settings.epochs == 3
    assert plan.settings.seed == 11  # --seed seeds the sampler too ...
    cli(["search", *QUICK, "--space", str(space), "--out", str(tmp_path / "o"), "--seed", "11", "--sampler-seed", "5"])
    assert planned["plan"].settings.seed == 5 and planned["plan"].settings.base["train"]["seed"] == 11  # ... unless told
    cli(["search", *QUICK, "--space", str(space), "--out", str(tmp_path / "o")])
    assert planned["plan"].settings.seed == 0 and planned["plan"].settings.base["train"]["seed"] == 0  # as before


@pytest.mark.parametrize("study", ["../evil", "a/b", "a\\b", "", "..", ".", "s\udcff", "tab\tname"])
def test_a_study_name_that_would_write_outside_the_search_folder_is_refused(tmp_path, study):
    # bytes a shell passed that are not UTF-8 ('s\udcff') were an internal error, with a study.db left behind
    """The study's name is part of its files' names: '../evil' wrote evil-results.csv beside the search folder
    and its trials in OUT/evil-0000."""
    with pytest.raises(CnnlabError, match="cannot name a study"):
        search.plan_search(base_config(), tmp_path / "s", space={"optim.lr": {"low": 0.01, "high": 0.1}},
                           study=study)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("study", ["my study", "caf\u00e9", "lr\u00a0sweep", "\u5b9f\u9a13\u30001"])
def test_a_study_name_with_spaces_accents_or_other_scripts_is_a_name(tmp_path, study):
    plan = search.plan_search(base_config(), tmp_path / "s", space={"optim.lr": {"low": 0.01, "high": 0.1}},
                              study=study)
    assert plan.settings.study_name == study


def test_a_space_file_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {low: 0.001, high: 0.1}\noptim.lr: {choices: [0.5]}\n")
    with pytest.raises(CnnlabError, match=r"the key 'optim.lr' appears twice \(lines 1 and 2\)"):
        search.load_space(path, base_config())


def test_a_capped_grid_says_so_in_json_too(cli, tmp_path):
    space = write_space(tmp_path, {"optim.lr": {"choices": [0.01, 0.1]}})
    code, stdout, err = cli(["search", *QUICK, "--space", str(space), "--grid", "--trials", "5", "--epochs", "1",
                             "--pruner", "none", "--out", str(tmp_path / "s"), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert (report["requested_trials"], report["grid_points"], len(report["trials"])) == (5, 2, 2)


def test_plan_search_decides_epochs_threads_grid_and_files(tmp_path):
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=50, grid=True, workers=2)
    assert plan.settings.epochs == search.DEFAULT_EPOCHS and plan.prefix == "" and plan.refinement is None
    assert plan.grid_points == 3 * 3 * 2 and plan.settings.trials == 18 and plan.requested_trials == 50
    assert plan.settings.threads == search.worker_threads(2) and plan.settings.seed == base_config().train.seed
    assert yaml.safe_load((tmp_path / "space.yaml").read_text()) == search.space_dict(plan.space)
    assert search.plan_search(base_config(), tmp_path, space=SPACE, workers=1).settings.threads is None
    assert search.worker_threads(1) is None
    assert search.worker_threads(4, cpus=16) == 4 and search.worker_threads(3, cpus=2) == 1
    with pytest.raises(CnnlabError, match="--space is needed"):
        search.plan_search(base_config(), tmp_path)
    with pytest.raises(CnnlabError, match="choose median, halving or none"):
        search.plan_search(base_config(), tmp_path, space=SPACE, pruner="sometimes")


def test_a_huge_seed_still_seeds_the_sampler(tmp_path):
    settings = settings_for(tmp_path, trials=1, seed=2**32 - 1)
    search._sampler(settings, worker=3)  # numpy's RandomState refuses seeds of 2**32 and more
    settings.grid = True
    search._sampler(settings, worker=0)


def finished_coarse_study(tmp_path):
    """The coarse study of a real search, finished without training: three completed trials."""
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=3, epochs=1, pruner="none")
    study = search.open_study(plan.settings)
    distributions = {"optim.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                     "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                     "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32])}
    for lr, value in ((0.01, 0.9), (0.02, 0.8), (0.05, 0.7)):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr, "optim.weight_decay": 1e-4,
                                                          "train.batch_size": 32},
                                                  distributions=distributions, value=value))
    return plan


def test_refine_search_applies_overrides_to_the_coarse_config_but_keeps_model_and_data(tmp_path):
    coarse = finished_coarse_study(tmp_path)
    refinement = search.refine_search(coarse.settings.storage, "search", tmp_path,
                                      overrides=["optim.momentum=0.8", "train.seed=3"])
    assert refinement.base.optim.momentum == 0.8 and refinement.base.train.seed == 3
    assert refinement.base.train.batch_size == 32 and refinement.base.model.name == "lenet5"  # the coarse base
    assert refinement.study_name == "search-refine" and refinement.prefix == "refine-" and refinement.epochs == 2
    assert refinement.space["train.batch_size"].choices == [32]
    assert [t["number"] for t in refinement.top] == [0, 1, 2]
    with pytest.raises(CnnlabError, match="cannot change model.name to 'resnet8'"):
        search.refine_search(coarse.settings.storage, "search", tmp_path, overrides=["model.name=resnet8"])
    plan = search.plan_search(None, tmp_path, refine=True, trials=4, overrides=["train.device=cpu"], seed=9)
    assert plan.settings.study_name == "search-refine" and plan.settings.base["train"]["device"] == "cpu"
    assert plan.settings.space == {k: asdict(p) for k, p in refinement.space.items()} and plan.settings.seed == 9
    with pytest.raises(CnnlabError, match="leave out --space"):
        search.plan_search(None, tmp_path, refine=True, space=SPACE)


def add_completed_trials(plan, values) -> None:
    """Complete trials in ``plan``'s study without training: one per value, at the middle of each range."""
    study = search.open_study(plan.settings)
    distributions, params = {}, {}
    for key, param in plan.space.items():
        if param.choices is not None:
            distributions[key] = optuna.distributions.CategoricalDistribution(param.choices)
            params[key] = param.choices[0]
        else:
            distributions[key] = optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
            params[key] = math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    for value in values:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))


def test_each_study_in_a_search_folder_keeps_its_own_files(tmp_path):
    # The lecture's step 7 repeats step 5: refining the refined study wrote over the first refinement's
    # space-refine.yaml, refine-results.csv and refine-best.yaml.
    finished_coarse_study(tmp_path)
    first = search.plan_search(None, tmp_path, refine=True, trials=3)
    add_completed_trials(first, [0.9, 0.8, 0.7])
    _, first_files = search.run_search(first)  # the study holds its 3 trials: nothing trains
    kept = {path: path.read_text() for path in [first.space_file, first_files["results"], first_files["best"]]}
    assert first.space_file.name == "space-refine.yaml" and first_files["results"].name == "refine-results.csv"
    again = search.plan_search(None, tmp_path, refine=True, study="search-refine", trials=3)
    assert again.settings.study_name == "search-refine-refine"
    assert again.space_file.name == "space-refine-refine.yaml" and again.prefix == "refine-refine-"
    add_completed_trials(again, [0.95, 0.9, 0.85])
    _, again_files = search.run_search(again)
    assert again_files["best"].name == "refine-refine-best.yaml"
    assert {path: path.read_text() for path in kept} == kept
    # a second coarse study in the same folder (the advice for a changed search) leaves the first one's files
    other = search.plan_search(base_config(), tmp_path, space={"optim.lr": {"low": 0.01, "high": 0.1}},
                               study="narrow", trials=1)
    assert other.space_file.name == "space-narrow.yaml" and other.prefix == "narrow-"
    assert yaml.safe_load((tmp_path / search.SPACE_FILE).read_text()) == search.space_dict(search.parse_space(
        SPACE, base_config()))


def test_a_refine_resumed_after_the_coarse_search_changed_is_refused_before_its_space_file_is_written(cli, tmp_path):
    coarse = finished_coarse_study(tmp_path)
    first = search.plan_search(None, tmp_path, refine=True, trials=3)
    search.open_study(first.settings)  # the refined study starts: it records the narrowed space
    searched = first.space_file.read_text()
    distributions = {"optim.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                     "optim.weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                     "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32])}
    search.open_study(coarse.settings).add_trial(optuna.trial.create_trial(  # a new best coarse trial
        params={"optim.lr": 0.2, "optim.weight_decay": 1e-4, "train.batch_size": 16}, distributions=distributions,
        value=0.95))
    code, _, err = cli(["search", *QUICK, "--refine", "--trials", "3", "--out", str(tmp_path)])
    assert code == 2 and "Traceback" not in err
    assert "space key optim.lr changed" in err and "coarse search 'search' as it was then" in err
    # the advice can be followed: a refined study's name and space follow from the coarse study's
    assert "run the coarse search again there (--out)" in err and "new --study" not in err
    assert first.space_file.read_text() == searched  # still the space the refined study searched


def test_a_refine_whose_overrides_leave_no_trial_able_to_train_is_refused_before_the_first_one(tmp_path):
    coarse = search.plan_search(base_config(), tmp_path, space={"optim.lr": SPACE["optim.lr"]}, trials=3, epochs=1)
    add_completed_trials(coarse, [0.9, 0.8, 0.7])
    # 96 training images: a batch of 128 (not searched) fails every refined trial alike, one after another
    with pytest.raises(CnnlabError, match="96 images, fewer than one batch at train.batch_size=128"):
        search.plan_search(None, tmp_path, refine=True, trials=2, overrides=["train.batch_size=128"])
    assert not (tmp_path / "space-refine.yaml").exists()


def test_refine_cli_applies_shortcuts_and_refuses_another_model(cli, tmp_path, planned):
    out = tmp_path / "search"
    finished_coarse_study(out)
    code, stdout, err = cli(["search", *QUICK, "--refine", "--out", str(out), "--lr", "0.07", "--device", "cpu"])
    assert code == 1 and "Captured" in err
    plan = planned["plan"]
    assert plan.base.optim.lr == 0.07 and plan.base.train.device == "cpu" and plan.settings.epochs == 2
    assert "refining around the best 3 trials" in stdout and "optim.lr: [0.001, 0.3] ->" in stdout
    code, stdout, err = cli(["search", "--model", "resnet8", "--data", SYNTHETIC, "--refine", "--out", str(out)])
    assert code == 2 and "trained lenet5" in err and "model.name" in err
    code, stdout, err = cli(["search", "--refine", "--out", str(out)])  # the folder alone names the search
    assert code == 1 and "Captured" in err and planned["plan"].base.model.name == "lenet5"


# --- step 5: refined trials train without learning-rate decay ----------------------------------


def coarse_study(folder: Path, base: RunConfig, space: dict, trial_params: list[dict], epochs: int = 1):
    """A finished coarse study with the given trials (best first), made without training."""
    plan = search.plan_search(base, folder, space=space, trials=len(trial_params), epochs=epochs, pruner="none")
    study = search.open_study(plan.settings)
    distributions = {key: optuna.distributions.CategoricalDistribution(param.choices) if param.choices is not None
                     else optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
                     for key, param in plan.space.items()}
    for rank, params in enumerate(trial_params):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.9 - 0.1 * rank))
    return plan


def warmed_up_cosine() -> RunConfig:
    """A cosine after a 1-epoch warm-up: its coarse trials train 2 epochs (a trial of 1 is refused, the
    warm-up as long as the run)."""
    config = base_config()
    config.schedule.name, config.schedule.warmup_epochs, config.schedule.warmup_start = "cosine", 1.0, 0.1
    return config


LR_ONLY = {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True}}
LR_TRIALS = [{"optim.lr": 0.01}, {"optim.lr": 0.02}, {"optim.lr": 0.05}]


def test_refine_trains_at_a_constant_lr_after_the_coarse_warmup(tmp_path):
    from cnnlab.train.schedule import lr_factor

    coarse_study(tmp_path, warmed_up_cosine(), LR_ONLY, LR_TRIALS, epochs=2)
    plan = search.plan_search(None, tmp_path, refine=True, trials=2)
    schedule = plan.base.schedule
    assert (schedule.name, schedule.warmup_epochs, schedule.warmup_start) == ("constant", 1.0, 0.1)
    assert plan.settings.base["schedule"]["name"] == "constant"  # what every worker trains with
    # what the engine will do: a 10-step warm-up from 0.1 to 1, then no decay to the last step
    factors = [lr_factor(schedule, step, 40, 10) for step in range(40)]
    assert factors[0] == pytest.approx(0.1) and factors[10:] == [1.0] * 30
    assert [lr_factor(warmed_up_cosine().schedule, step, 40, 10) for step in range(40)][-1] < 0.01  # coarse: decays
    refinement = plan.refinement
    assert refinement.keep_schedule is False and refinement.dropped == []
    assert refinement.schedule == ("constant lr (step 5 of the recipe: no decay; the coarse search's was cosine), "
                                   "after 1 warm-up epoch")
    assert refinement.to_dict()["schedule"] == refinement.schedule
    assert f"# schedule: {refinement.schedule}" in (tmp_path / "space-refine.yaml").read_text()
    study = search.open_study(plan.settings)  # the refined study records what it trains with
    assert study.user_attrs["refinement"]["schedule"] == refinement.schedule
    assert study.user_attrs["base"]["schedule"]["name"] == "constant"
    # resuming it with the coarse schedule would mix two kinds of trials in one study: refused before
    # the refined space file is written again
    written = (tmp_path / "space-refine.yaml").read_text()
    with pytest.raises(CnnlabError, match="was started with the schedule 'constant lr.*not 'cosine"):
        search.plan_search(None, tmp_path, refine=True, trials=2, keep_schedule=True)
    assert (tmp_path / "space-refine.yaml").read_text() == written
    assert search.plan_search(None, tmp_path, refine=True, trials=2).refinement.schedule == refinement.schedule


def test_schedule_text_counts_the_warmup_epochs(tmp_path):
    config = warmed_up_cosine()
    config.schedule.warmup_epochs = 0.5
    coarse_study(tmp_path, config, LR_ONLY, LR_TRIALS)
    refinement = search.plan_search(None, tmp_path, refine=True, trials=2).refinement
    assert refinement.schedule.endswith("), after 0.5 warm-up epochs")


def test_a_study_refined_with_the_earlier_schedule_wording_still_resumes(tmp_path):
    import optuna

    coarse_study(tmp_path, warmed_up_cosine(), LR_ONLY, LR_TRIALS, epochs=2)
    plan = search.plan_search(None, tmp_path, refine=True, trials=2)
    study = search.open_study(plan.settings)
    # what cnnlab recorded before it counted the warm-up: the same schedule in other words
    earlier = plan.refinement.schedule.replace("after 1 warm-up epoch", "after 1 warm-up epoch(s)")
    assert earlier != plan.refinement.schedule
    study.set_user_attr("refinement", {**study.user_attrs["refinement"], "schedule": earlier})
    stored = optuna.load_study(study_name=plan.settings.study_name, storage=plan.settings.storage)
    assert stored.user_attrs["refinement"]["schedule"] == earlier
    resumed = search.plan_search(None, tmp_path, refine=True, trials=2)
    assert resumed.settings.study_name == plan.settings.study_name
    assert resumed.refinement.schedule == plan.refinement.schedule
    # another schedule is still refused, whichever wording the study recorded
    with pytest.raises(CnnlabError, match="was started with the schedule 'constant lr.*warm-up epoch\\(s\\)'"):
        search.plan_search(None, tmp_path, refine=True, trials=2, keep_schedule=True)


def test_keep_schedule_keeps_the_coarse_schedule(tmp_path):
    coarse_study(tmp_path, warmed_up_cosine(), LR_ONLY, LR_TRIALS, epochs=2)
    plan = search.plan_search(None, tmp_path, refine=True, trials=2, keep_schedule=True)
    assert plan.base.schedule == warmed_up_cosine().schedule
    assert plan.refinement.keep_schedule is True
    assert plan.refinement.schedule == "cosine (the coarse search's schedule, kept), after 1 warm-up epoch"
    # an override of schedule.name is applied last, either way
    plan = search.plan_search(None, tmp_path, refine=True, overrides=["schedule.name=cyclic"])
    assert plan.base.schedule.name == "cyclic" and plan.refinement.schedule.startswith(
        "cyclic (set by an override instead of step 5's constant lr)")
    with pytest.raises(CnnlabError, match="--keep-schedule applies to --refine only"):
        search.plan_search(base_config(), tmp_path / "coarse", space=SPACE, keep_schedule=True)
    assert not (tmp_path / "coarse").exists()  # refused before anything was written


def test_refine_at_a_constant_lr_drops_the_schedule_keys_it_ignores(tmp_path):
    space = {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True},
             "schedule.name": {"choices": ["cosine", "cyclic"]},
             "schedule.min_lr_factor": {"low": 0.0, "high": 0.1},
             "schedule.warmup_epochs": {"low": 0.0, "high": 2.0}}
    trials = [{"optim.lr": lr, "schedule.name": "cyclic", "schedule.min_lr_factor": 0.05,
               "schedule.warmup_epochs": 1.0} for lr in (0.01, 0.02, 0.05)]
    coarse_study(tmp_path, base_config(), space, trials)
    refinement = search.plan_search(None, tmp_path, refine=True).refinement
    assert list(refinement.space) == ["optim.lr", "schedule.warmup_epochs"]  # a constant lr still warms up
    assert refinement.dropped == ["schedule.name", "schedule.min_lr_factor"]
    written = (tmp_path / "space-refine.yaml").read_text()
    assert "# not searched (a constant lr ignores them): schedule.name, schedule.min_lr_factor" in written
    assert set(yaml.safe_load(written)) == {"optim.lr", "schedule.warmup_epochs"}
    kept = search.plan_search(None, tmp_path, refine=True, keep_schedule=True).refinement
    assert list(kept.space) == list(space) and kept.dropped == []
    assert kept.space["schedule.name"].choices == ["cyclic"]  # narrowed as any categorical key
    # a search of schedule keys alone leaves nothing to refine at a constant lr
    only = tmp_path / "only"
    coarse_study(only, base_config(), {"schedule.name": {"choices": ["cosine", "cyclic"]}},
                 [{"schedule.name": name} for name in ("cyclic", "cosine", "cyclic")])
    with pytest.raises(CnnlabError, match="searched only schedule.name.*leaves nothing to search"):
        search.plan_search(None, only, refine=True)
    assert search.plan_search(None, only, refine=True, keep_schedule=True).refinement.dropped == []


def test_refine_leaves_out_a_set_that_a_shortcut_overrules(cli, tmp_path, planned):
    out = tmp_path / "search"
    finished_coarse_study(out)
    code, _, err = cli(["search", *QUICK, "--refine", "--set", "optim.momentum=abc", "--set", "optim.lr=abc",
                        "--lr", "0.05", "--out", str(out)])
    assert code == 2 and "optim.momentum must be float" in err  # nothing overrules it: checked
    code, _, err = cli(["search", *QUICK, "--refine", "--set", "optim.lr=abc", "--lr", "0.05", "--out", str(out)])
    assert code == 1 and "Captured" in err and planned["plan"].base.optim.lr == 0.05
    assert "note: --set optim.lr=abc is overruled" in err


def test_refine_cli_says_which_schedule_and_keep_schedule_keeps_it(cli, tmp_path, planned):
    out = tmp_path / "search"
    finished_coarse_study(out)  # the default config: cosine, no warm-up
    code, stdout, err = cli(["search", *QUICK, "--refine", "--out", str(out)])
    assert code == 1 and "Captured" in err
    assert planned["plan"].base.schedule.name == "constant"
    assert "schedule: constant lr (step 5 of the recipe: no decay; the coarse search's was cosine)" in stdout
    code, stdout, err = cli(["search", *QUICK, "--refine", "--keep-schedule", "--out", str(out)])
    assert code == 1 and planned["plan"].base.schedule.name == "cosine"
    assert "schedule: cosine (the coarse search's schedule, kept)" in stdout
    code, stdout, err = cli(["search", *QUICK, "--keep-schedule", "--space", str(write_space(tmp_path)),
                             "--out", str(tmp_path / "o")])
    assert code == 2 and "--keep-schedule applies to --refine only" in err


# --- resuming ----------------------------------------------------------------------------------


def test_resuming_a_study_with_another_base_config_is_refused_naming_the_keys(cli, tmp_path):
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=1, epochs=1, pruner="none")
    search.open_study(plan.settings)  # the study exists and records the base config its trials start from
    changed = base_config()
    changed.optim.momentum, changed.train.seed = 0.5, 4
    with pytest.raises(CnnlabError, match=r"optim\.momentum: 0\.5 given, 0\.9 recorded; train\.seed: 4 given, "
                                          r"0 recorded"):
        search.plan_search(changed, tmp_path, space=SPACE, trials=2, epochs=1, pruner="none")
    elsewhere = base_config()
    elsewhere.train.device, elsewhere.train.threads, elsewhere.log.quiet = "cpu", 1, True
    search.plan_search(elsewhere, tmp_path, space=SPACE, trials=2, epochs=1, pruner="none")  # where it runs: free
    searched = base_config()
    searched.optim.lr = 0.3  # --lr on a resume of a search whose space holds optim.lr: every trial replaces it
    search.plan_search(searched, tmp_path, space=SPACE, trials=2, epochs=1, pruner="none")
    settings = search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=1, pruner="none").settings
    settings.base["optim"]["momentum"] = 0.5  # settings made by hand are checked when the study opens
    with pytest.raises(CnnlabError, match=r"optim\.momentum: 0\.5 given, 0\.9 recorded"):
        search.open_study(settings)
    # another space is refused before it overwrites the space file the study was searched with
    space_file = (tmp_path / search.SPACE_FILE).read_text()
    with pytest.raises(CnnlabError, match="another search space") as err:
        search.plan_search(base_config(), tmp_path, space={"optim.lr": {"low": 0.01, "high": 0.1},
                                                           "optim.momentum": {"choices": [0.8, 0.9]}}, trials=2, epochs=1)
    assert (tmp_path / search.SPACE_FILE).read_text() == space_file
    # each differing key with the value given and the one recorded
    assert ("space key optim.lr changed: {low: 0.01, high: 0.1} given, {low: 0.001, high: 0.3, log: true} recorded"
            in str(err.value))
    assert "space key optim.weight_decay removed: not given, {low: 1e-06, high: 0.01, log: true} recorded" in str(err.value)
    assert "space key train.batch_size removed: not given, {choices: [16, 32]} recorded" in str(err.value)
    assert "space key optim.momentum added: {choices: [0.8, 0.9]} given, not recorded" in str(err.value)
    assert "--epochs" not in str(err.value).partition("(")[2]  # the same --epochs: not named as a difference
    with pytest.raises(CnnlabError, match=r"another search space, --epochs, --grid or --pruner \(--epochs: 3 given, 1 recorded\)"):
        search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=3, pruner="none")
    code, _, err = cli(["search", *QUICK, "--set", "optim.momentum=0.5", "--space", str(write_space(tmp_path)),
                        "--trials", "2", "--epochs", "1", "--pruner", "none", "--out", str(tmp_path)])
    assert code == 2 and "optim.momentum: 0.5 given, 0.9 recorded" in err and "Traceback" not in err
    # the advice leaves --device free: where a worker trains may differ on resume
    assert "--seed;" in err and "train.device" in err and "--device)" not in err


@pytest.mark.parametrize("started_as_grid", [False, True])
def test_resuming_a_search_as_the_other_kind_is_refused(tmp_path, started_as_grid):
    # A grid trial suggests each range as a category, a random one as a number, and Optuna refuses both kinds
    # for one key in a study: every trial after the switch crashed ("Cannot set different distribution kind").
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=1, epochs=1, grid=started_as_grid)
    search.open_study(plan.settings)
    with pytest.raises(CnnlabError, match="another search space, --epochs, --grid or --pruner") as err:
        search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=1, grid=not started_as_grid)
    kinds = ("a grid search (--grid)", "a random search")
    given, recorded = kinds if not started_as_grid else kinds[::-1]
    assert f"--grid: {given} given, {recorded} recorded" in str(err.value)
    search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=1, grid=started_as_grid)  # as begun
    # a refined study too, and one resumed as it was begun goes on
    add_completed_trials(plan, [0.9, 0.8, 0.7])
    refined = search.plan_search(None, tmp_path, refine=True, trials=3, grid=started_as_grid)
    search.open_study(refined.settings)
    with pytest.raises(CnnlabError, match="--grid: "):
        search.plan_search(None, tmp_path, refine=True, trials=3, grid=not started_as_grid)
    assert search.plan_search(None, tmp_path, refine=True, trials=3, grid=started_as_grid).settings.grid is started_as_grid


def test_resuming_a_search_with_another_pruner_is_refused(cli, tmp_path):
    # Another pruner stops the later trials by another rule: their accuracies would not compare with the earlier ones
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=1, epochs=1, pruner="none")
    study = search.open_study(plan.settings)
    with pytest.raises(CnnlabError, match=r"another search space, --epochs, --grid or --pruner "
                                          r"\(--pruner: halving given, none recorded\)"):
        search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=1, pruner="halving")
    code, _, err = cli(["search", *QUICK, "--space", str(write_space(tmp_path)), "--trials", "2", "--epochs", "1",
                        "--pruner", "median", "--out", str(tmp_path)])
    assert code == 2 and "--pruner: median given, none recorded" in err and "Traceback" not in err
    search.plan_search(base_config(), tmp_path, space=SPACE, trials=2, epochs=1, pruner="none")  # as begun
    # a study from before the pruner was recorded resumes with any, as it did
    older = {key: value for key, value in study.user_attrs.items() if key != "pruner"}
    halving = search.plan_search(base_config(), tmp_path / "other", space=SPACE, trials=2, epochs=1, pruner="halving")
    assert search.resume_differences(halving.settings, older) == []
    search.check_resume(halving.settings, older)


@pytest.mark.parametrize("pruner", ["none", "halving"])
def test_a_refined_search_resumes_with_the_pruner_it_was_started_with(cli, tmp_path, pruner):
    # A refine started with a pruner other than the default was checked against 'median' before the narrowed
    # space was written: the same command was refused ("median given, none recorded") and so was --pruner median
    plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=3, epochs=1, pruner="none")
    add_completed_trials(plan, [0.9, 0.8, 0.7])
    refined = search.plan_search(None, tmp_path, refine=True, trials=2, pruner=pruner)
    search.open_study(refined.settings)
    again = search.plan_search(None, tmp_path, refine=True, trials=3, pruner=pruner)  # as begun: it goes on
    assert again.settings.pruner == pruner and again.settings.study_name == "search-refine"
    other = "median"
    with pytest.raises(CnnlabError, match=rf"--pruner: {other} given, {pruner} recorded"):
        search.plan_search(None, tmp_path, refine=True, trials=3, pruner=other)
    with pytest.raises(CnnlabError, match=rf"--pruner: {other} given, {pruner} recorded"):
        search.refine_search(refined.settings.storage, "search", tmp_path, pruner=other)


def test_a_resumed_random_search_draws_new_points(tmp_path):
    settings = settings_for(tmp_path, trials=2)
    said = []
    search.run_workers(settings, 1, said.append)
    # each trial's time as every duration reads (cnnlab.text.duration_text): "0.4 s" for a short trial, never "0 s"
    trial_lines = [line for line in said if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all(
        re.search(r" in (\d+\.\d s|\d+ min \d\d s|[\d,]+ h \d\d min) ", line) for line in trial_lines), said
    settings.trials = 4  # the same search, resumed to hold 4 trials
    search.run_workers(settings, 1, lambda text: None)
    trials = search.open_study(settings).trials
    first, resumed = [t.params for t in trials[:2]], [t.params for t in trials[2:]]
    assert len(resumed) == 2 and all(params not in first for params in resumed)
    assert resumed[0] != resumed[1]


def test_a_search_keeps_optunas_lines_to_itself_and_gives_the_callers_verbosity_back(tmp_path):
    """cnnlab prints its own line per trial, so Optuna's INFO lines (a study created, a trial finished) are off
    while a search runs; a program's own studies afterwards log at the verbosity it had set."""
    import logging

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    kept, logger, before = Kept(), logging.getLogger("optuna"), optuna.logging.get_verbosity()
    logger.addHandler(kept)
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        plan = search.plan_search(base_config(), tmp_path, space=SPACE, trials=1, epochs=1, pruner="none")
        results, _ = search.run_search(plan, lambda text: None)
        assert len(results.rows) == 1 and kept.lines == []
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        optuna.create_study()  # the program's own study: Optuna says so, as before the search
        assert any("A new study created" in line for line in kept.lines), kept.lines
    finally:
        logger.removeHandler(kept)
        optuna.logging.set_verbosity(before)


def test_a_searched_train_epochs_is_what_each_trial_trains_and_records(cli, tmp_path):
    space = {"train.epochs": {"choices": [1, 3]}, "optim.lr": {"low": 0.01, "high": 0.1}}
    plan = search.plan_search(base_config(), tmp_path, space=space, trials=2, pruner="none")
    assert plan.settings.epochs is None  # no one number of epochs for every trial
    results, paths = search.run_search(plan, lambda text: None)
    for row in results.rows:  # what results.csv records is what ran
        assert row["epochs"] == row["params"]["train.epochs"]
        assert load_config(Path(row["run_dir"]) / "config.yaml").train.epochs == row["params"]["train.epochs"]
    assert load_config(paths["best"]).train.epochs == results.best["params"]["train.epochs"]
    refinement = search.refine_search(plan.settings.storage, "search", tmp_path)  # the narrowed draw stands too
    assert refinement.epochs is None and "train.epochs" in refinement.space
    with pytest.raises(CnnlabError, match="searches train.epochs"):
        search.refine_search(plan.settings.storage, "search", tmp_path, epochs=4)
    # --epochs would set what the space searches: refused, as is --set train.epochs on any search
    with pytest.raises(CnnlabError, match="searches train.epochs"):
        search.plan_search(base_config(), tmp_path / "other", space=space, epochs=2)
    space_file = write_space(tmp_path, space)
    code, _, err = cli(["search", *QUICK, "--space", str(space_file), "--epochs", "2", "--out", str(tmp_path / "o")])
    assert code == 2 and "searches train.epochs" in err
    code, _, err = cli(["search", *QUICK, "--space", str(write_space(tmp_path)), "--set", "train.epochs=5",
                        "--out", str(tmp_path / "o")])
    assert code == 2 and "--epochs" in err and "train.epochs" in err


@pytest.mark.parametrize(
    "extra, space, message",
    [
        (["--model", "lenet5,num_classes=5"], None, "The model sets num_classes=5"),
        (["--set", "train.batch_size=128"], {"optim.lr": {"low": 0.01, "high": 0.1}},
         "has 96 images, fewer than one batch at train.batch_size=128"),
        ([], {"train.batch_size": {"choices": [512, 128]}},
         "has 96 images, fewer than one batch at the space's smallest train.batch_size, 128"),
        # what each trial's set-up refuses on this machine, refused once instead of in every trial
        (["--device", "cpu", "--set", "train.precision=fp16"], None, "train.precision=fp16 needs a CUDA GPU"),
        (["--set", "model.init_from=no-such-run"], None, "model.init_from 'no-such-run' does not exist"),
        # a builder option the model lacks: every trial would fail building it
        ([], {"model.options.drop_path_rate": {"low": 0.0, "high": 0.2}},
         "searches model.options.drop_path_rate, a builder option that lenet5 does not take"),
    ],
)
def test_data_no_trial_could_train_on_is_refused_before_the_first_trial(cli, tmp_path, extra, space, message):
    out = tmp_path / "o"
    code, _, err = cli(["search", *QUICK, *extra, "--space", str(write_space(tmp_path, space)), "--out", str(out)])
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()  # refused before the study and its first trial, and before the folder is made


def test_a_searched_builder_option_the_model_takes_passes_the_check():
    base = apply_overrides(RunConfig(), ["model.name=resnet8", "data.spec=synthetic:classes=3,train=96"])
    space = {"model.options.drop_path_rate": {"low": 0.0, "high": 0.2}, "model.options.se": {"choices": [4, 8]}}
    search.check_searched_options(base, search.parse_space(space, base))  # resnet8 takes both: no error
    # the same space over a model that lacks them names the first it refuses, with the model
    lenet = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=96",
                                          "train.batch_size=32"])
    with pytest.raises(CnnlabError, match="builder option that lenet5 does not take"):
        search.check_searched_options(lenet, search.parse_space(space, lenet))
    # a space that searches the model itself leaves the options to each trial
    search.check_trial_data(lenet, search.parse_space({**space, "model.name": {"choices": ["resnet8"]}}, lenet))


def test_a_space_that_searches_the_data_leaves_the_data_check_to_each_trial():
    base = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=96",
                                         "train.batch_size=128"])
    with pytest.raises(CnnlabError, match="fewer than one batch"):
        search.check_trial_data(base, search.parse_space({"optim.lr": {"low": 0.01, "high": 0.1}}, base))
    # the trials' split depends on the searched key, so the base config's split decides nothing
    search.check_trial_data(base, search.parse_space({"data.val_fraction": {"choices": [0.1, 0.2]}}, base))


def test_a_note_every_trial_would_print_is_shown_once(cli, tmp_path):
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True}})
    for out in ("o", "p"):  # a second search in the same process (as the Python API runs them) says it again
        code, _, err = cli(["search", *QUICK, "--set", "train.sync_bn=true", "--space", str(space), "--trials", "2",
                            "--epochs", "1", "--out", str(tmp_path / out)])
        assert code == 0, err
        assert err.count("note: train.sync_bn=true") == 1, err  # each trial's run checks it; once is enough


@pytest.mark.parametrize(
    "entry, grid, smallest",
    [
        ({"choices": [128, 48]}, False, 48),
        ({"choices": [128, 48]}, True, 48),
        ({"low": 40, "high": 128}, False, 40),
        ({"low": 40, "high": 128}, True, 40),  # the grid's points start at low
        ({"low": 40, "high": 160, "log": True, "points": 3}, True, 40),
        # a grid's own values are not what a random search draws: it draws from the whole range
        ({"low": 40, "high": 128, "values": [64, 128]}, False, 40),
        ({"low": 40, "high": 128, "values": [128, 64]}, True, 64),
    ],
)
def test_the_data_check_takes_the_smallest_batch_the_search_can_draw(tmp_path, entry, grid, smallest):
    def plan(train_images: int):
        base = base_config()
        base.data.spec = f"synthetic:classes=3,train={train_images},val=24,test=24"
        return search.plan_search(base, tmp_path / f"s{train_images}", space={"train.batch_size": entry},
                                  trials=2, epochs=1, grid=grid)

    plan(smallest)  # one batch of the smallest size fits: some trial can train
    with pytest.raises(CnnlabError, match=f"fewer than one batch at the space's smallest train.batch_size, "
                                          f"{smallest}\\b"):
        plan(smallest - 1)



def test_refine_prints_each_range_with_whole_numbers_plain_and_ends_apart(cli, tmp_path, planned):
    space = {"train.batch_size": {"low": 16, "high": 1024},
             "optim.momentum": {"low": 0.9, "high": 0.9001}}  # ends equal to 3 significant digits
    coarse = search.plan_search(base_config(), tmp_path, space=space, trials=3, epochs=1, pruner="none")
    study = search.open_study(coarse.settings)
    distributions = {"train.batch_size": optuna.distributions.IntDistribution(16, 1024),
                     "optim.momentum": optuna.distributions.FloatDistribution(0.9, 0.9001)}
    for batch, momentum, value in ((20, 0.90004, 0.9), (24, 0.90005, 0.8), (28, 0.90006, 0.7)):
        study.add_trial(optuna.trial.create_trial(params={"train.batch_size": batch, "optim.momentum": momentum},
                                                  distributions=distributions, value=value))
    code, stdout, err = cli(["search", *QUICK, "--refine", "--out", str(tmp_path)])
    assert code == 1 and "Captured" in err, err
    narrowed = planned["plan"].space
    batch = narrowed["train.batch_size"]
    assert f"train.batch_size: [16, 1024] -> [{batch.low}, {batch.high}]" in stdout
    line = next(text for text in stdout.splitlines() if "optim.momentum:" in text)
    before, _, after = line.partition(":")[2].partition("->")
    shown = [float(end) for text in (before, after) for end in text.strip(" []").split(",")]
    ends = [0.9, 0.9001, narrowed["optim.momentum"].low, narrowed["optim.momentum"].high]
    assert shown == pytest.approx(ends, rel=1e-5)
    assert len(set(shown)) == len(set(ends))  # every two different ends print differently


def test_range_texts_print_whole_numbers_plainly_and_other_numbers_compactly():
    from cnnlab.cli import _range_texts

    assert _range_texts(Param("k", low=16, high=1024, integer=True)) == ["[16, 1024]"]
    assert _range_texts(Param("k", low=1e-4, high=1.0, log=True)) == ["[0.0001, 1]"]  # 1.0 is a whole number
    assert _range_texts(Param("k", low=2.0, high=12345.6)) == ["[2, 12346]"]  # no 1.23e+04
    assert _range_texts(Param("k", low=0.001, high=0.3), Param("k", low=0.001, high=0.29999)) == \
        ["[0.001, 0.3]", "[0.001, 0.29999]"]  # a narrowed end differs from the coarse one it replaces
    assert _range_texts(Param("k", choices=[64, 128])) == ["[64, 128]"]


def test_distinct_texts_print_integers_plainly_and_tell_close_floats_apart():
    from cnnlab.text import distinct_texts

    assert distinct_texts([16, 1024, 1024.0, 1536.7]) == ["16", "1024", "1024", "1537"]  # no 1.02e+03, no 1.54e+03
    assert distinct_texts([0.012341, 0.012349, 0.5]) == ["0.01234", "0.01235", "0.5"]
    assert distinct_texts([1000.4, 1000.0]) == ["1000.4", "1000"]  # 1000.4 alone would round to 1000
    assert distinct_texts(["relu", None, True, 0.1]) == ["relu", "None", "True", "0.1"]


def _table_text(table) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_the_results_table_prints_every_two_different_trial_values_differently():
    from cnnlab.cli import _search_table

    # a float option of 1000 or more, and two learning rates that agree to 3 significant digits
    rows = [{"number": number, "state": "COMPLETE", "val_acc": 0.5, "epochs": 1, "seconds": 1.0,
             "params": {"optim.lr": lr, "model.options.width": width, "model.act": act}}
            for number, (lr, width, act) in enumerate([(0.012341, 1536.7, "relu"), (0.012349, 1024.0, "gelu"),
                                                       (0.2, 2000.25, "relu")])]
    results = search.SearchResults(rows=rows, best=rows[0])
    lines = _table_text(_search_table(results, ["optim.lr", "model.options.width", "model.act"])).splitlines()
    cells = [line.split("│")[-4:-1] for line in lines if line.startswith("│ ") and "COMPLETE".lower() in line]
    assert [[cell.strip() for cell in row] for row in cells] == [
        ["0.01234", "1537", "relu"], ["0.01235", "1024", "gelu"], ["0.2", "2000", "relu"]]


def test_the_results_table_title_counts_the_trials_it_shows_not_a_best_failed_one():
    from cnnlab.cli import _search_table

    # "best 2 of 2" over a completed trial and a failed one, which has no accuracy to be among the best
    rows = [{"number": number, "state": state, "val_acc": acc, "epochs": 1, "seconds": 1.0, "params": {"optim.lr": 0.1}}
            for number, (state, acc) in enumerate([("COMPLETE", 0.5), ("FAIL", None)])]
    title = _table_text(_search_table(search.SearchResults(rows=rows, best=rows[0]), ["optim.lr"])).splitlines()[0]
    assert title.strip() == "2 trials, best val accuracy first"
    seconds = [line.split("│")[5].strip() for line in _table_text(_search_table(search.SearchResults(
        rows=[dict(rows[0], seconds=0.4), dict(rows[0], number=1, seconds=42.4)], best=rows[0]), ["optim.lr"]))
        .splitlines() if line.startswith("│ ")]
    assert seconds == ["0.4", "42"]  # a trial under a second read 0
    many = [dict(rows[0], number=number) for number in range(17)]
    title = _table_text(_search_table(search.SearchResults(rows=many, best=many[0]), ["optim.lr"])).splitlines()[0]
    assert title.strip() == "the first 15 of 17 trials, best val accuracy first"


def test_a_trial_line_tells_its_values_from_the_other_trials_values():
    from types import SimpleNamespace

    drawn = [{"optim.lr": 0.012341, "train.batch_size": 32}, {"optim.lr": 0.012349, "train.batch_size": 64},
             {"optim.lr": 1536.7, "train.batch_size": 64}]
    study = SimpleNamespace(get_trials=lambda deepcopy: [SimpleNamespace(params=params) for params in drawn])
    assert search._params_text(drawn[0], study) == "optim.lr=0.01234 train.batch_size=32"
    assert search._params_text(drawn[1], study) == "optim.lr=0.01235 train.batch_size=64"
    assert search._params_text(drawn[2], study) == "optim.lr=1537 train.batch_size=64"  # not 1.54e+03


def test_a_device_this_machine_lacks_is_refused_before_the_first_trial(cli, tmp_path, monkeypatch):
    """Every trial of this machine's workers trains on train.device: one it lacks failed each trial alike and the
    search exited 0 with nothing trained. It is refused as `cnnlab train` refuses it; a refine checks its own."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    code, _, err = cli(["search", *QUICK, "--device", "cuda", "--space", str(write_space(tmp_path)), "--out", str(out)])
    assert code == 2 and "train.device='cuda' but no CUDA GPU is available here" in err and "Traceback" not in err
    assert not out.exists()
    damaged = tmp_path / "damaged.db"
    damaged.write_text("not a database")  # refused once the folder is made: it goes again, with the parents made
    out = tmp_path / "new" / "deeper" / "o"
    code, _, err = cli(["search", *QUICK, "--space", str(write_space(tmp_path)), "--storage", f"sqlite:///{damaged}",
                        "--out", str(out)])
    assert code == 2 and "is not a study database" in err and not (tmp_path / "new").exists(), err

    coarse = search.plan_search(base_config(), tmp_path, space={"optim.lr": SPACE["optim.lr"]}, trials=3, epochs=1)
    add_completed_trials(coarse, [0.9, 0.8, 0.7])
    with pytest.raises(CnnlabError, match="no CUDA GPU is available"):
        search.plan_search(None, tmp_path, refine=True, trials=2, overrides=["train.device=cuda"])
    assert not (tmp_path / "space-refine.yaml").exists()
    # a searched device is each trial's own
    base = apply_overrides(base_config(), ["train.device=cuda"])
    search.check_trial_data(base, search.parse_space({"train.device": {"choices": ["cpu", "cuda"]}}, base))


def _wait_for_sigterm(flag: str) -> None:
    """A stand-in worker: notes a SIGTERM in ``flag`` and ends; ends unnoted after 60 s."""
    import os
    import signal

    def noted(signum, frame):
        with open(flag, "w") as file:
            file.write(str(signum))
        os._exit(0)

    signal.signal(signal.SIGTERM, noted)
    open(flag + ".ready", "w").close()
    time.sleep(60)


def test_a_sigterm_to_the_search_is_passed_on_to_every_worker(tmp_path):
    """`kill PID` of a search with --workers above 1 ended the parent alone, and its workers went on training.
    While the parent waits for them, a SIGTERM it receives goes on to each live worker (whose trial then stops
    as on Ctrl-C); the parent's own handler is put back afterwards."""
    import multiprocessing
    import os
    import signal

    context = multiprocessing.get_context("spawn")
    flags = [str(tmp_path / f"worker{k}") for k in range(2)]
    processes = [context.Process(target=_wait_for_sigterm, args=(flag,)) for flag in flags]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 120
    while not all(Path(flag + ".ready").exists() for flag in flags):
        assert time.monotonic() < deadline, "the stand-in workers did not start"
        time.sleep(0.05)
    before = signal.getsignal(signal.SIGTERM)
    with search._sigterm_forwarded(processes) as received:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` of the search would
        for process in processes:
            process.join(timeout=60)
    assert received == [signal.SIGTERM]
    assert [Path(flag).read_text() for flag in flags] == [str(int(signal.SIGTERM))] * 2
    assert all(process.exitcode == 0 for process in processes)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_stops_a_two_worker_search_and_its_trials(tmp_path):
    """Through the command: SIGTERM to `cnnlab search --workers 2` while trials train stops both trials at a step
    boundary (their status says SIGTERM), and the search ends with `stopped by SIGTERM:` and exit code 143."""
    import signal

    out = tmp_path / "search"
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    args = [sys.executable, "-m", "cnnlab", "search", *QUICK, "--space", str(space), "--trials", "4",
            "--epochs", "400", "--workers", "2", "--out", str(out), "--pruner", "none"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _epochs_begun(out) < 2:  # both workers' first trials have finished an epoch
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert err.rstrip().splitlines()[-1].startswith("stopped by SIGTERM: "), err[-2000:]
    statuses = [json.loads(path.read_text()) for path in out.glob("**/status.json")]
    assert len(statuses) == 2 and all("SIGTERM" in json.dumps(status) for status in statuses), statuses


def _epochs_begun(out: Path) -> int:
    """How many of a running search's trials have written their metrics.csv (a finished epoch). The glob walks
    folders that come and go (a checkpoint's temporary folder, renamed or removed as it is written): a walk that
    meets one as it goes counts as none yet, and the caller looks again."""
    try:
        return len(list(out.glob("**/metrics.csv")))
    except FileNotFoundError:
        return 0


def _children(pid: int) -> set[int]:
    """The pids of ``pid``'s child processes, from /proc (Linux)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:  # after the state: the parent's pid
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc as on Linux")
def test_ctrl_c_sent_to_the_search_alone_stops_its_workers_trials(tmp_path):
    """`kill -INT PID` of `cnnlab search --workers 2` (a supervisor, subprocess's send_signal) reached the search
    alone: its workers trained every trial to the end before it said `interrupted:`. The workers run in process
    groups of their own and the search passes each Ctrl-C on: they stop their trials at a step boundary."""
    import signal

    out = tmp_path / "search"
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    args = [sys.executable, "-m", "cnnlab", "search", *QUICK, "--space", str(space), "--trials", "4",
            "--epochs", "400", "--workers", "2", "--out", str(out), "--pruner", "none"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _epochs_begun(out) < 2:  # both workers' first trials have finished an epoch
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.2)
        # the two workers lead process groups of their own, which a terminal's Ctrl-C does not reach
        assert sum(os.getpgid(pid) == pid for pid in _children(process.pid)) == 2
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert err.rstrip().splitlines()[-1].startswith("interrupted: "), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    statuses = [json.loads(path.read_text()) for path in out.glob("**/status.json")]
    assert len(statuses) == 2 and all(status["state"] == "interrupted" for status in statuses), statuses


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl's parent-death signal is Linux's")
def test_a_two_worker_search_killed_alone_leaves_no_process_training_or_serving(tmp_path):
    """`kill -9` of the search process alone (as the out-of-memory killer ends one process): its workers stopped
    their trials at a step boundary, as after a SIGTERM to the search, and the notes' server ended, rather than
    training on with no search to write the results and the server waiting for ever."""
    import signal

    out = tmp_path / "search"
    space = write_space(tmp_path, {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    args = [sys.executable, "-m", "cnnlab", "search", *QUICK, "--space", str(space), "--trials", "4",
            "--epochs", "400", "--workers", "2", "--out", str(out), "--pruner", "none"]
    # The search's processes: its children (the workers, in process groups of their own, and the notes' server),
    # found while it runs. stderr to a file, not a pipe: processes left running would hold a pipe open, and
    # reading it would wait.
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while _epochs_begun(out) < 2:  # both workers' first trials have finished an epoch
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        spawned = _children(process.pid)
        assert len(spawned) >= 3, spawned  # two workers and the notes' server (and multiprocessing's tracker)
        process.kill()  # the search alone
        process.wait(timeout=60)
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in spawned):
            assert time.monotonic() < deadline, "a worker or the notes' server outlived the search by two minutes"
            time.sleep(0.2)
    finally:  # whatever failed, nothing of the search is left running after the test
        for pid in spawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    statuses = [json.loads(path.read_text()) for path in out.glob("**/status.json")]
    assert len(statuses) == 2 and all("SIGTERM" in json.dumps(status) for status in statuses), statuses


def test_the_space_file_and_params_passed_back_keep_an_integer_option_and_the_grid(tmp_path):
    # int: true on a builder option, and a range's grid (points, values): written to space.yaml and read back,
    # or handed to plan_search as Params (a refinement's space), the search is the one planned
    base = apply_overrides(RunConfig(), ["model.name=resnet8", "data.spec=synthetic:classes=3,train=96",
                                         "train.batch_size=32"])
    space = parse_space({"model.options.se": {"low": 2, "high": 8, "int": True},
                         "optim.lr": {"low": 1e-3, "high": 0.1, "log": True, "points": 5},
                         "optim.weight_decay": {"low": 0.0, "high": 0.01, "values": [0.0, 0.001]}}, base)
    plan = search.plan_search(base, tmp_path / "a", space=space, grid=True, trials=100)
    assert plan.space == space and plan.space["model.options.se"].integer
    assert plan.grid_points == 3 * 5 * 2  # se 2, 5, 8 (3 points), 5 lrs, 2 weight decays
    assert search.load_space(plan.space_file, base) == space
    again = search.plan_search(base, tmp_path / "b", space=plan.space_file, grid=True, trials=100)
    assert again.grid_points == plan.grid_points and again.settings.space == plan.settings.space


def test_a_milestone_that_no_trial_of_the_search_can_reach_is_refused_before_the_first_trial(cli, tmp_path):
    # A trial trains --epochs, not the base config's train.epochs: a milestone at that last epoch (or beyond it)
    # refuses every trial, and the search used to record them all as failed and end with exit code 0.
    space = write_space(tmp_path, {"optim.lr": SPACE["optim.lr"]})
    schedule = ["--set", "schedule.name=step", "--space", str(space), "--trials", "2", "--epochs", "2"]
    code, out, err = cli(["search", *QUICK, *schedule, "--set", "schedule.step_epochs=[2]", "--out", str(tmp_path / "s")])
    assert code == 2 and "Traceback" not in err
    assert "schedule.step_epochs=[2] has 2" in err and "--epochs 2" in err and "1 or less" in err
    assert not (tmp_path / "s").exists()  # refused before the search folder was written
    code, _, err = cli(["search", *QUICK, *schedule, "--set", "schedule.step_epochs=[5]", "--out", str(tmp_path / "t")])
    assert code == 2 and "must not go beyond the run" in err and "--epochs 2" in err
    # A milestone the trials reach passes; searched epochs leave each trial to its own draw.
    base = base_config()
    base.schedule.name, base.schedule.step_epochs = "step", [1]
    search.check_trial_schedule(base, parse_space({"optim.lr": SPACE["optim.lr"]}, base), 2)
    base.schedule.step_epochs = [3]
    search.check_trial_schedule(base, parse_space({"train.epochs": {"low": 4, "high": 6}}, base), None)
    base.schedule.step_epochs, base.train.probe_epochs = [2], 1  # the schedule runs over the 2 epochs after it
    with pytest.raises(CnnlabError, match="less train.probe_epochs=1"):
        search.check_trial_schedule(base, parse_space({"optim.lr": SPACE["optim.lr"]}, base), 3)


def test_a_searched_init_ema_whose_source_kept_no_ema_weights_is_refused_before_the_first_trial(cli, tmp_path):
    """model.init_ema searched as [true, false] on a source trained without train.ema: every trial that draws true
    was refused on its own and recorded as failed; the search is refused instead, naming the choice."""
    source = tmp_path / "source"
    code, _, err = cli(["train", *QUICK, "--epochs", "1", "--quiet", "--out", str(source)])
    assert code == 0, err
    space = write_space(tmp_path, {"model.init_ema": {"choices": [True, False]}})
    common = ["search", *QUICK, "--set", f"model.init_from={source}", "--space", str(space), "--trials", "2",
              "--epochs", "1"]
    code, _, err = cli([*common, "--out", str(tmp_path / "s")])
    assert code == 2 and "Traceback" not in err
    assert "The space searches model.init_ema, and every trial that draws true would be refused" in err
    assert "trained with train.ema=false, so it kept none" in err and not (tmp_path / "s").exists()
    # only false searched (a one-choice space of it): nothing reads the EMA weights, and the plan passes
    base = apply_overrides(base_config(), [f"model.init_from={source}"])
    search.check_trial_data(base, parse_space({"model.init_ema": {"choices": [False]}}, base))


def test_a_worker_process_wraps_its_trial_lines_to_fit_its_prefix(tmp_path, capsys, monkeypatch):
    """Each line a search worker says starts "[worker N] "; its trial lines wrap that much narrower, so that a
    wrapped line with its prefix still fits LINE_COLUMNS (at the full width they reached about 91 columns)."""
    from cnnlab.text import LINE_COLUMNS

    values = " ".join(f"key{i}=0.{i}" for i in range(30))  # short values fill each line to its edge
    monkeypatch.setattr(search, "_params_text", lambda params, study: values)
    before = signal.getsignal(signal.SIGINT)
    try:
        search._worker_main(settings_for(tmp_path, trials=1), worker=12)
    finally:
        # a worker ignores Ctrl-C as it ends: left so, this test process ignored the Ctrl-C a later test's run
        # raises to stop itself (tests/report/test_stale_results.py's fixture then trained to the end)
        signal.signal(signal.SIGINT, before)
    lines = capsys.readouterr().err.splitlines()
    trial = [line for line in lines if line.startswith("[worker 12] trial 0: val acc ")]
    assert trial, lines
    wrapped = lines[lines.index(trial[0]):]
    assert len(wrapped) > 2 and all(line.startswith("[worker 12] ") for line in wrapped)
    assert max(map(len, wrapped)) <= LINE_COLUMNS, wrapped
    assert " ".join(" ".join(wrapped).replace("[worker 12] ", "").split()).endswith(values)  # every value, whole


def test_a_damaged_study_file_is_called_damaged_not_an_unreachable_server(tmp_path):
    damaged = tmp_path / "study.db"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)  # a header, then garbage
    with pytest.raises(CnnlabError) as refused:
        search.open_storage(f"sqlite:///{damaged}")
    message = str(refused.value)
    assert "not a study database SQLite can read" in message and "move it aside" in message
    assert "server is reachable" not in message


def test_a_space_entry_with_choices_and_a_range_is_refused_and_grid_fields_of_a_random_search_are_noted(capsys):
    # {low, high, choices} used the choices and dropped the range without a word; points and values placed nothing
    # in a random search
    with pytest.raises(CnnlabError, match=r"'optim.lr' gives choices and also high, low: an entry is either"):
        parse_space({"optim.lr": {"low": 0.01, "high": 0.1, "choices": [0.1]}}, base_config())
    entry = {"optim.lr": {"low": 0.01, "high": 0.1, "points": 4, "values": [0.05]}}
    parse_space(entry, base_config(), grid=False)
    assert "'optim.lr': points and values are not used: they place a --grid search's values" in capsys.readouterr().err
    parse_space(entry, base_config(), grid=True)
    parse_space(entry, base_config())
    assert capsys.readouterr().err == ""


def test_a_space_a_program_built_gets_no_note_for_its_grid_fields(tmp_path, capsys):
    # an experiment shares one space (with points) between its grid and random studies: its users can do nothing
    # about a note; a space file a person wrote gets it (parse_space with grid=False, above)
    space = {"optim.lr": {"low": 0.01, "high": 0.1, "points": 4}}
    search.plan_search(base_config(), tmp_path / "s", space=space, trials=1, epochs=1)
    assert "is not used" not in capsys.readouterr().err
    search.plan_search(base_config(), tmp_path / "f", space=write_space(tmp_path, space), trials=1, epochs=1)
    assert "points is not used" in capsys.readouterr().err


def test_refine_with_a_config_file_that_differs_from_the_coarse_studys_is_refused(cli, tmp_path, planned):
    """--refine starts from the coarse study's config with --set on top: a --config file's other settings were
    dropped without a word (a momentum of 0.5 trained at 0.9). The coarse search's own file still passes."""
    from cnnlab.config import save_config

    out = tmp_path / "search"
    coarse = finished_coarse_study(out)
    same, changed = tmp_path / "same.yaml", tmp_path / "changed.yaml"
    save_config(coarse.base, same)
    save_config(apply_overrides(coarse.base, ["optim.momentum=0.5"]), changed)
    code, _, err = cli(["search", "--config", str(changed), "--refine", "--out", str(out)])
    assert code == 2 and "Traceback" not in err
    assert "optim.momentum: 0.5 in the file, 0.9 in the coarse study" in err and "--set KEY=VALUE" in err
    code, _, err = cli(["search", "--config", str(same), "--refine", "--out", str(out)])
    assert code == 1 and "Captured" in err and planned["plan"].refinement.base.optim.momentum == 0.9


def test_a_searched_preset_over_a_base_recorded_in_full_fills_the_augmentation_again(tmp_path, capsys):
    """A run's config.yaml as the base records its preset's values: every trial trained with them, whatever
    aug.preset it drew. They are cleared once, when the search is planned, but the keys --set gave."""
    from cnnlab.config import config_from_dict
    from cnnlab.data.transforms import resolve_aug

    base = base_config()
    base.aug = resolve_aug(base.aug, 32, 3)  # 'standard', recorded in full
    base.aug.erasing = 0.1  # as --set aug.erasing=0.1 set it
    plan = search.plan_search(base, tmp_path / "s", space={"aug.preset": {"choices": ["strong", "light"]}},
                              trials=2, epochs=1, keep_aug=["aug.erasing", "optim.lr"])
    assert "aug.erasing as set stay" in capsys.readouterr().err
    for preset in ("strong", "light"):
        trial = search.apply_params(config_from_dict(plan.settings.base), {"aug.preset": preset})
        assert resolve_aug(trial.aug, 32, 3) == resolve_aug(AugConfig(preset=preset, erasing=0.1), 32, 3)
    assert base.aug.crop is not None  # the caller's config is left as it was


def test_a_number_too_long_in_the_space_file_is_named_with_the_file_and_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {low: 0.01, high: " + "9" * 5000 + "}\n")
    with pytest.raises(CnnlabError, match=r"search-space file '.*space.yaml': a whole number of 5,000 digits .*"
                                          r"\(line 1, column 29\)"):
        search.load_space(path, base_config())


def test_a_signal_as_the_results_are_written_lets_them_finish(tmp_path, monkeypatch):
    """A Ctrl-C that came as the search wrote its scatter plot (after its last trial) ended it with exit code 130
    and no plot, where a signal after a command's last run lets it finish its results (docs/command-line.md)."""
    import signal

    from cnnlab.train import between_runs

    real = search.save_scatter
    sent = []

    def interrupted_scatter(*args, **kwargs):
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C at this moment
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "save_scatter", interrupted_scatter)
    plan = search.plan_search(base_config(), tmp_path / "s", space={"optim.lr": {"low": 0.01, "high": 0.1}},
                              trials=1, epochs=1)
    # Ctrl-C as a terminal's command gets it (a pytest-xdist worker ignores SIGINT, which the hold leaves alone)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results, paths = search.run_search(plan, quiet=True)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sent and paths["scatter"].is_file() and paths["results"].is_file()
    assert between_runs.last_signal() == signal.SIGINT  # held, and said: the command finished its work
    between_runs.forget_last_signal()


def test_a_worker_whose_trial_stopped_ignores_the_next_ctrl_c_as_it_exits(monkeypatch):
    """The search passes each Ctrl-C on: a second one that reached a worker already stopped interrupted its
    interpreter's exit, and torch's clean-up printed 'Exception ignored ... KeyboardInterrupt' with a traceback."""
    import signal

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the trial stopped at the first Ctrl-C

    monkeypatch.setattr(search, "worker_loop", stopped)
    before = signal.getsignal(signal.SIGINT)
    try:
        search._worker_main(None, 0, quiet=True)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_worker_killed_while_the_others_finish_the_study_leaves_a_whole_search(tmp_path, capsys):
    """`kill -9` of one worker (the out-of-memory killer's way): the others ran its trial again and finished the
    study, and the search still ended with exit 2, no results, and "their output is above" of a worker that
    printed nothing. A study that is not whole yet is still an error, naming the signal."""
    from cnnlab.errors import CnnlabError

    settings = search.plan_search(base_config(), tmp_path / "s", space=SPACE, trials=2, workers=2).settings
    study = search.open_study(settings)
    with search._heartbeat_warnings_quiet():  # this test's own asks, outside the search's loop
        trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(CnnlabError) as refused:  # one of two trials: the killed worker's is still to run
        search._workers_ended(settings, [0, -9])
    message = str(refused.value)
    assert "1 of 2 worker processes ended early (worker 1 was killed by SIGKILL)" in message, message
    assert "run the same command to go on" in message and "output is above" not in message
    with search._heartbeat_warnings_quiet():
        trial = study.ask()
    study.tell(trial, 0.6)
    search._workers_ended(settings, [0, -9])  # whole: no error
    assert "worker 1 was killed by SIGKILL; the study holds all 2 trials, so the search is whole" in \
        capsys.readouterr().err
    search._workers_ended(settings, [0, 0])
    assert capsys.readouterr().err == ""
    with pytest.raises(CnnlabError, match=r"worker 0 exited with code 1 \(its output is above\)"):
        search._workers_ended(replace(settings, trials=3), [1, 0])


def test_a_ctrl_c_while_the_workers_end_after_the_last_trial_lets_the_search_finish(tmp_path, capfd, monkeypatch):
    """A Ctrl-C in the second or two the workers take to end after the study's last trial stopped nothing, yet
    `--workers 2` ended with exit 130 and no results, where one worker writes them and ends as it would have."""
    from cnnlab.cli import main

    join = search._join_passing_on_ctrl_c

    def joined_then_ctrl_c(processes, stop):
        join(processes, stop)  # every worker ended, the study full: the Ctrl-C lands now
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_join_passing_on_ctrl_c", joined_then_ctrl_c)
    out = tmp_path / "search"
    args = ["search", *QUICK, "--space", str(write_space(tmp_path)), "--trials", "2", "--epochs", "1", "--workers",
            "2", "--out", str(out), "--pruner", "none"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    _, stderr = capfd.readouterr()
    assert exit_info.value.code == 0, stderr[-2000:]
    assert (out / "results.csv").is_file() and (out / "best.yaml").is_file()


def _output_failing_at(monkeypatch, starts: str, failure: str = "closed") -> None:
    """The command's console fails to print a line starting with ``starts``: a closed stdout (as rich answers one,
    Console.on_broken_pipe: SystemExit(1) from a BrokenPipeError) or a full disk (OSError ENOSPC)."""
    import errno

    import cnnlab.cli as cli_module

    printed = cli_module.console.print

    def print_line(text, *args, **kwargs):
        if not str(text).startswith(starts):
            return printed(text, *args, **kwargs)
        if failure == "full disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        try:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        except BrokenPipeError:
            raise SystemExit(1)

    monkeypatch.setattr(cli_module.console, "print", print_line)


@pytest.mark.parametrize("failure", ["closed", "full disk"])
def test_an_output_that_closes_stops_the_search_before_its_next_trial_and_says_so(cli, tmp_path, monkeypatch, failure):
    """`cnnlab search ... | head -1`: the first trial line met a closed stdout, and the search ended with exit code
    141 and no word on the trial it had kept (a full disk under stdout: an internal error). It now stops before the
    next trial as a Ctrl-C there does, and says why."""
    _output_failing_at(monkeypatch, "trial ", failure)
    space = write_space(tmp_path, {"optim.lr": SPACE["optim.lr"]})
    args = ["search", *QUICK, "--space", str(space), "--trials", "3", "--epochs", "1", "--out", str(tmp_path / "s")]
    code, out, err = cli(args)
    why = "was closed (the program reading it" if failure == "closed" else "could not be written (No space left"
    assert code == 130 and f"The command's output {why}" in err and "it stopped before its next" in err, err
    assert err.rstrip().splitlines()[-1].startswith("interrupted: 1 finished trial is kept"), err
    assert [path.name for path in (tmp_path / "s" / "trials").iterdir()] == ["search-0000"]  # no further trial


def test_an_output_that_closes_at_the_last_trials_line_leaves_a_finished_search(cli, tmp_path, monkeypatch):
    """The last trial's line met the closed output (`| head -N`): the stop it held stopped nothing, and the search
    said `interrupted:` with exit code 130 and wrote no results. It now writes them and ends as a command whose
    output closed (141), saying nothing of a stop."""
    _output_failing_at(monkeypatch, "trial 1")  # the last of 2
    space = write_space(tmp_path, {"optim.lr": SPACE["optim.lr"]})
    out = tmp_path / "s"
    code, _, err = cli(["search", *QUICK, "--space", str(space), "--trials", "2", "--epochs", "1", "--out", str(out)])
    assert code == 141 and "interrupted" not in err and "stopped before" not in err, err
    assert (out / "results.csv").is_file() and (out / "best.yaml").is_file()
