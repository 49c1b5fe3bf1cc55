"""The ensemble and tta experiments at `tiny`: files, the runs they train, their accuracies against an
independent recomputation in plain torch, the verdict rules on made-up numbers, and refused data."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.experiments import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    REPORT_FILE,
    RESULT_FILE,
    TABLE_CSV,
    TABLE_JSON,
    get_experiment,
    run_experiment,
)
from cnnlab.data.sources import load_source
from cnnlab.experiments import evaluation
from cnnlab.experiments.training import SeedStats
from cnnlab.run import RunFolder


SAID: dict[str, list[str]] = {}  # what each experiment of `results` said as it ran, one line each


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each experiment run once at tiny (digits, one seed); shared by the tests below."""
    root = tmp_path_factory.mktemp("evaluation")
    return {name: (run_experiment(name, "tiny", out=root / name, say=SAID.setdefault(name, []).append), root / name)
            for name in ("ensemble", "tta")}


@pytest.mark.parametrize("name", ["ensemble", "tta"])
def test_each_run_says_its_place_among_all_the_experiments_runs(results, name):
    """Both train one run per call (members, the cyclic run, a model per seed), and declare their total first:
    the lines count to the number of runs the experiment made, not to one call's one."""
    result, _ = results[name]
    runs = [line for line in SAID[name] if line.startswith("run ")]
    total = len(result.runs)
    assert total == (3 if name == "ensemble" else 1)  # ensemble: 2 members and the cyclic run per replicate
    assert [line.split("  ")[0] for line in runs] == [f"run {k} of {total}" for k in range(1, total + 1)]


def _test_split(run_dir):
    """(normalised test images (N, C, H, W), labels (N,), black in normalised units (C,)) as the model sees them."""
    from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model

    loaded = load_model(run_dir)
    _, loader = eval_loader(loaded, split="test")
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys), black_fill(loaded.meta)


def _probabilities(checkpoint, x):
    from cnnlab.evaluate.evaluate import load_model

    with torch.no_grad():
        return torch.softmax(load_model(checkpoint).model(x).float(), dim=1)


def test_registered_with_training_defaults():
    for name in ("ensemble", "tta"):
        info = get_experiment(name).describe()
        assert info["seeds"] == {"min": 1, "max": 10, "default": 3, "tiny": 1}
        assert info["data"]["tiny"] == "digits" and info["data"]["full"] == "fashion-mnist"
        assert info["claim"] and info["rule"] and info["source"]["note"] == "002"
    assert "2%" in get_experiment("ensemble").describe()["source"]["quote"]


def test_ensemble_tiny_files_runs_and_accuracies(results):
    result, out = results["ensemble"]
    for name in (TABLE_CSV, TABLE_JSON, RESULT_FILE, REPORT_FILE, "ensemble.png"):
        assert (out / name).is_file(), name
    assert len(result.checks) == 3 and all(c.verdict == INCONCLUSIVE for c in result.checks)  # one replicate
    _, members, epochs = evaluation.ENSEMBLE_SIZES["tiny"]
    # Replicate 0: members with train.seed 0..N-1, the cyclic run at seed 0 with N cycles of the same epochs.
    member_dirs = [out / "runs" / "independent" / f"seed{s}" for s in range(members)]
    cyclic_dir = out / "runs" / "cyclic" / "seed0"
    assert sorted(map(str, result.runs)) == sorted(map(str, member_dirs + [cyclic_dir]))
    config = RunFolder(cyclic_dir).read_config()
    assert (config.schedule.name, config.schedule.cycles, config.train.epochs) == ("cyclic", members, members * epochs)
    assert config.train.snapshots and len(RunFolder(cyclic_dir).snapshots()) == members
    assert [RunFolder(d).read_config().train.seed for d in member_dirs] == list(range(members))

    # The table's accuracies, recomputed: each model's softmax on the test split, averaged, argmax.
    x, y, _ = _test_split(member_dirs[0])
    rows = {r["what"]: r for r in result.rows if r["replicate"] == 0}

    def accuracy(probs):
        return (probs.argmax(1) == y).double().mean().item()

    member_probs = [_probabilities(RunFolder(d).last, x) for d in member_dirs]
    snapshot_probs = [_probabilities(p, x) for p in RunFolder(cyclic_dir).snapshots()]
    member_rows = [r for r in result.rows if r["what"] == "member"]
    assert [r["seed"] for r in member_rows] == list(range(members))
    for row, probs in zip(member_rows, member_probs):
        assert row["top1"] == pytest.approx(accuracy(probs), abs=1e-9)
    assert rows["average member"]["top1"] == pytest.approx(sum(map(accuracy, member_probs)) / members, abs=1e-9)
    assert rows[f"ensemble of {members}"]["top1"] == pytest.approx(accuracy(sum(member_probs) / members), abs=1e-9)
    assert rows[f"snapshot ensemble of {members}"]["top1"] == pytest.approx(
        accuracy(sum(snapshot_probs) / members), abs=1e-9)
    gain = next(r for r in result.rows if str(r["what"]).startswith("gain"))
    assert gain["top1"] == pytest.approx(rows[f"ensemble of {members}"]["top1"] - rows["average member"]["top1"])
    written = json.loads((out / RESULT_FILE).read_text())
    assert written["verdict"] == INCONCLUSIVE and written["reports"] == [REPORT_FILE]


def test_ensemble_rerun_reads_everything_back(results):
    result, out = results["ensemble"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "ensembles").iterdir()}
    (out / RESULT_FILE).unlink()  # an unfinished experiment: its runs and ensemble reports are read back
    again = run_experiment("ensemble", "tiny", out=out)
    assert [r.get("top1") for r in again.rows] == [r.get("top1") for r in result.rows]
    assert {p: p.stat().st_mtime_ns for p in (out / "ensembles").iterdir()} == stamps


@pytest.mark.parametrize("name, kept", [("ensemble", "ensembles"), ("tta", "tta")])
def test_a_moved_experiment_reads_its_kept_scores_back(results, tmp_path, name, kept):
    """The ensemble reports and TTA scores name their runs relative to the experiment's folder: a moved copy
    reads them back instead of evaluating again, and so do those an older version wrote with the path as
    the first call named it."""
    import shutil

    result, out = results[name]
    moved = shutil.copytree(out, tmp_path / "elsewhere" / name)  # the files keep their times
    (moved / RESULT_FILE).unlink()  # an unfinished experiment: its runs and kept scores are read back
    files = sorted((moved / kept).iterdir())
    if name == "tta":  # as an older version wrote it: the run's path as the experiment's first call named it
        older = json.loads(files[0].read_text())
        assert older["run"] == f"runs/{evaluation.SETTING}/seed0"  # recorded relative to the experiment's folder
        older["run"] = str(out / older["run"])
        files[0].write_text(json.dumps(older))
    stamps = {path: path.stat().st_mtime_ns for path in files}
    again = run_experiment(name, "tiny", out=moved)
    assert {path: path.stat().st_mtime_ns for path in files} == stamps  # read back, not written again
    assert [r.get("top1") for r in again.rows] == [r.get("top1") for r in result.rows]
    if name == "ensemble":  # the table names the moved copy's checkpoints, not the original's
        checkpoints = [r["checkpoint"] for r in again.rows if r.get("checkpoint")]
        assert checkpoints and all(Path(c).is_relative_to(moved) for c in checkpoints)


def test_the_ensemble_table_names_its_checkpoints_relative_so_a_moved_copy_names_its_own(results, tmp_path):
    """The table files record each member's and snapshot's checkpoint relative to the experiment's folder, as
    they do run_dir: a copy's kept result (nothing recomputed) names the copy's files, not the original's."""
    import csv
    import shutil

    _, out = results["ensemble"]
    with open(out / TABLE_CSV, newline="") as handle:
        written = [row["checkpoint"] for row in csv.DictReader(handle) if row["checkpoint"]]
    assert written and all(not Path(path).is_absolute() and path.startswith("runs/") for path in written)
    assert written == [row["checkpoint"] for row in json.loads((out / TABLE_JSON).read_text())
                       if row.get("checkpoint")]
    moved = shutil.copytree(out, tmp_path / "copied")
    kept = run_experiment("ensemble", "tiny", out=moved)
    assert kept.kept
    checkpoints = [row["checkpoint"] for row in kept.rows if row.get("checkpoint")]
    assert checkpoints == [str(moved / path) for path in written]
    assert all(Path(path).is_file() for path in checkpoints)


def test_a_kept_ensemble_table_from_before_relative_checkpoints_is_read_where_the_folder_is_now(results, tmp_path):
    """A result written when only run_dir was recorded relative: its checkpoints are as the first call named
    them, and are read back under the folder where it is now."""
    import shutil

    _, out = results["ensemble"]
    moved = shutil.copytree(out, tmp_path / "older")
    rows = json.loads((moved / TABLE_JSON).read_text())
    for row in rows:  # as that version wrote them: the first call's path
        if row.get("checkpoint"):
            row["checkpoint"] = str(out / row["checkpoint"])
    (moved / TABLE_JSON).write_text(json.dumps(rows))
    recorded = json.loads((moved / RESULT_FILE).read_text())
    recorded["run_dirs"] = "relative to the experiment's folder"
    (moved / RESULT_FILE).write_text(json.dumps(recorded))
    kept = run_experiment("ensemble", "tiny", out=moved)
    checkpoints = [row["checkpoint"] for row in kept.rows if row.get("checkpoint")]
    assert checkpoints and all(Path(path).is_relative_to(moved) and Path(path).is_file() for path in checkpoints)


def test_tta_tiny_leaves_out_mirrors_on_digits_and_matches_torch(results):
    result, out = results["tta"]
    for name in (TABLE_CSV, TABLE_JSON, RESULT_FILE, REPORT_FILE, "tta.png"):
        assert (out / name).is_file(), name
    # Digits: a mirror changes the label, so flip and 10crop are not run and multiscale has no mirror views.
    assert [c.claim.split("'")[1] for c in result.checks] == ["5crop", "multiscale"]
    assert all(c.verdict == INCONCLUSIVE for c in result.checks)  # one seed
    seed_rows = {r["mode"]: r for r in result.rows if r["seed"] == 0}
    assert set(seed_rows) == {"none", "5crop", "multiscale"}
    assert {r["mode"] for r in result.rows if r["seed"] == "all" and "not run" in str(r.get("note"))} == {"flip", "10crop"}
    assert [seed_rows[m]["views"] for m in ("none", "5crop", "multiscale")] == [1, 5, 15]

    run_dir = out / "runs" / evaluation.SETTING / "seed0"
    x, y, fill = _test_split(run_dir)
    shift = RunFolder(run_dir).read_config().aug.translate  # the corner views shift by the training translation
    assert seed_rows["5crop"]["shift"] == shift > 0
    checkpoint = RunFolder(run_dir).checkpoint()
    probs = _probabilities(checkpoint, x)
    assert seed_rows["none"]["top1"] == pytest.approx((probs.argmax(1) == y).double().mean().item(), abs=1e-9)
    # 5crop by hand: the image and its four shifts towards the corners, the border filled with black.
    height, width = x.shape[-2:]
    padded = fill.view(1, -1, 1, 1).expand(x.shape[0], -1, height + 2 * shift, width + 2 * shift).clone()
    padded[:, :, shift:shift + height, shift:shift + width] = x
    views = [x] + [padded[:, :, t:t + height, l:l + width] for t in (0, 2 * shift) for l in (0, 2 * shift)]
    averaged = sum(_probabilities(checkpoint, v) for v in views) / len(views)
    assert seed_rows["5crop"]["top1"] == pytest.approx((averaged.argmax(1) == y).double().mean().item(), abs=1e-9)
    assert seed_rows["5crop"]["gain"] == pytest.approx(seed_rows["5crop"]["top1"] - seed_rows["none"]["top1"])


def test_gain_size_rule():
    def check(*gains):
        return evaluation._gain_size_check(SeedStats(gains), [0.0] * len(gains))

    assert check(0.02, 0.021, 0.019).verdict == HOLDS
    assert check(0.001, 0.002, 0.0).verdict == FAILS  # 0.1 points: far below 1
    assert check(0.09, 0.1, 0.11).verdict == FAILS  # 10 points: far above 4
    assert check(0.005, 0.015, 0.001).verdict == INCONCLUSIVE  # 0.7 points, spread 0.7
    assert check(0.02, 0.02).verdict == INCONCLUSIVE  # two replicates
    # 2.5 points, spread 6.8: inside the range by 1.5, which noise that wide could as well put outside
    wide = check(-0.05, 0.03, 0.095)
    assert wide.verdict == INCONCLUSIVE and "within the spread" in wide.margin, wide.margin


def test_snapshot_and_tta_rules():
    independent = SeedStats((0.90, 0.91, 0.92))  # spread 1 point
    assert evaluation._snapshot_check(SeedStats((0.895, 0.905, 0.915)), independent, 3, 4).verdict == HOLDS
    ahead = evaluation._snapshot_check(SeedStats((0.93, 0.94, 0.95)), independent, 3, 4)
    assert ahead.verdict == HOLDS and "the snapshot ensemble ahead" in ahead.margin
    behind = evaluation._snapshot_check(SeedStats((0.87, 0.88, 0.89)), independent, 3, 4)
    assert behind.verdict == FAILS and "independent models ahead" in behind.margin
    # behind by 2 points within a spread of 3: more than the tolerance of 1 point, so no "no worse" either way
    noisy = evaluation._snapshot_check(SeedStats((0.86, 0.89, 0.92)), SeedStats((0.88, 0.91, 0.94)), 3, 4)
    assert noisy.verdict == INCONCLUSIVE and "behind by more than the tolerance" in noisy.margin, noisy.margin
    none = SeedStats((0.8, 0.9, 0.85))  # a wide spread over seeds: the paired gains decide, not it
    assert evaluation._gain_check("c", "flip", SeedStats((0.003, 0.004, 0.005)), none, none).verdict == HOLDS
    assert evaluation._gain_check("c", "flip", SeedStats((-0.003, -0.004, -0.005)), none, none).verdict == FAILS
    assert evaluation._gain_check("c", "flip", SeedStats((0.003, -0.004, 0.002)), none, none).verdict == INCONCLUSIVE
    assert evaluation._gain_check("c", "flip", SeedStats((0.003,)), none, none).verdict == INCONCLUSIVE


def test_data_without_a_test_split_or_classes_is_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"  # class folders only: no test split
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k in range(4):
            Image.new("L", (28, 28), color=60 * k).save(root / name / f"{k}.png")
    for name in ("ensemble", "tta"):
        with pytest.raises(CnnlabError, match="no test split"):
            run_experiment(name, "tiny", out=tmp_path / name, data=f"folder:{root}")
        assert not (tmp_path / name).exists()  # refused before anything was written
    one_class = SimpleNamespace(num_classes=1, test=[0], spec="digits")
    assert "at least 2" in evaluation.check_ensemble_data(one_class, "tiny")
    usable = load_source("synthetic:classes=3,train=96,val=16,test=16")
    assert evaluation.check_ensemble_data(usable, "tiny") is None and evaluation.check_tta_data(usable, "tiny") is None


def test_the_cyclic_runs_first_snapshot_is_the_first_independent_member(results):
    """The cyclic run trains at the first member's seed, and its first cosine cycle is that member's whole
    schedule, so snapshot 1 is the member bit for bit: the two ensembles share one model. The rule and the docs
    say so (the seeds stay: the measured results depend on them); this pins it."""
    from safetensors.torch import load_file

    _, out = results["ensemble"]
    member = load_file(RunFolder(out / "runs" / "independent" / "seed0").last)  # model/NAME, optimiser state, rng
    snapshot = load_file(RunFolder(out / "runs" / "cyclic" / "seed0").snapshots()[0])  # the weights, NAME
    assert snapshot and sorted(f"model/{key}" for key in snapshot) == sorted(k for k in member if k.startswith("model/"))
    assert all(torch.equal(member[f"model/{key}"], value) for key, value in snapshot.items())
    assert "snapshot 1 is that member bit for bit" in get_experiment("ensemble").rule


def _made_up_run(setting, seed, val_acc):
    from cnnlab.experiments.training import TRAINED, RunOutcome

    return RunOutcome(setting=setting, seed=seed, run_dir=f"/nowhere/{setting}/seed{seed}", status=TRAINED, epochs=1,
                      val_acc=val_acc)


@pytest.mark.parametrize("val_acc, verdict", [(0.11, INCONCLUSIVE), (0.8, HOLDS)])
def test_tta_on_models_that_learned_nothing_decides_nothing(tmp_path, monkeypatch, val_acc, verdict):
    """A flip that 'gains' a point on three models at chance is noise: the shared rule makes it INCONCLUSIVE."""
    from cnnlab.experiments import RunContext

    monkeypatch.setattr(evaluation, "_train", lambda ctx, setting, config, seed: _made_up_run(setting, seed, val_acc))
    monkeypatch.setattr(evaluation, "chance_level", lambda outcomes: 0.1)
    monkeypatch.setattr(evaluation, "_tta_plot", lambda path, summary, notes: path)

    def scores(run_dir, path, out):
        seed = int(run_dir.name[-1])
        return {"modes": [{"mode": mode, "top1": 0.1 + (0.01 + 0.001 * seed if mode == "flip" else 0.0),
                           "views": 2, "shift": 0, "loss": 2.3, "seconds": 1.0, "images": 100, "note": ""}
                          if mode in ("none", "flip") else {"mode": mode, "note": "not run here"}
                          for mode in ("none", "flip", "5crop", "10crop", "multiscale")]}

    monkeypatch.setattr(evaluation, "_tta_scores", scores)
    result = evaluation.run_tta(RunContext(size="tiny", seeds=3, out=tmp_path, data="digits"))
    (flip,) = result.checks
    assert flip.verdict == verdict, flip.margin
    assert ("learned nothing" in flip.margin) == (verdict == INCONCLUSIVE)


@pytest.mark.parametrize("val_acc, decided", [(0.11, False), (0.8, True)])
def test_an_ensemble_of_members_that_learned_nothing_decides_nothing(tmp_path, monkeypatch, val_acc, decided):
    """Three replicates whose ensemble 'beats' its members by 2 points on models at chance: noise, INCONCLUSIVE by
    the shared rule; the same scores from members that learned are decided."""
    import cnnlab.evaluate.ensemble as ensemble_module
    from cnnlab.experiments import RunContext

    scored_on_test = []

    def train(ctx, setting, config, seed, evaluate=True):
        scored_on_test.append(evaluate)
        return _made_up_run(setting, seed, val_acc)

    monkeypatch.setattr(evaluation, "_train", train)
    monkeypatch.setattr(evaluation, "chance_level", lambda outcomes: 0.1)
    monkeypatch.setattr(ensemble_module, "snapshot_paths", lambda run_dir: [Path(run_dir) / "snapshot-1.safetensors",
                                                                           Path(run_dir) / "snapshot-2.safetensors"])
    monkeypatch.setattr(evaluation, "_ensemble_plot", lambda path, *args: path)

    def report(paths, out, experiment):
        shift = 0.001 * int(out.name[len("replicate")])
        return {"members": [{"top1": 0.10 + shift, "loss": 2.3} for _ in paths],
                "ensemble": {"top1": 0.12 + shift, "loss": 2.3}, "gain_over_best_member": 0.02}

    monkeypatch.setattr(evaluation, "_ensemble_report", report)
    result = evaluation.run_ensemble_experiment(RunContext(size="tiny", seeds=3, out=tmp_path, data="digits"))
    beats, gain, snapshots = result.checks
    assert beats.verdict == (HOLDS if decided else INCONCLUSIVE), beats.margin
    assert gain.verdict == (HOLDS if decided else INCONCLUSIVE), gain.margin
    assert all(("learned nothing" in c.margin) != decided for c in result.checks)
    # the ensembles use the members' last weights: no run's line shows its best checkpoint's test accuracy, which
    # the table has nowhere (94.42% on the line, 96.65% in the table for one member)
    assert scored_on_test and not any(scored_on_test)
