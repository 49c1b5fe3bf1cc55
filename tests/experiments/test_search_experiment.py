"""`search` at tiny: the known objective's verdict against a hand computation, the real part's studies
through cnnlab's search library (grid and random), files, resume and refused data."""

import contextlib
import csv
import io
import json
import math
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from cnnlab.experiments import HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments.search import (
    LR_RANGE,
    METHODS,
    TOY_REPEATS,
    TOY_SEED,
    check_search_data,
    run_toy,
    search_folder,
    sign_test,
    toy_check,
    toy_grid,
    toy_objective,
)

# One worker runs this module (make test: --dist loadgroup): split over two, each worker ran its module-scoped
# experiment of 8 trainings
pytestmark = pytest.mark.xdist_group("search-experiment")


SAID: list[str] = []  # what the tiny run said, one line each
STOPS: dict[str, object] = {}  # what the tiny run's folder held, and its calls said on stderr, before it trained


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny run. Its folder first goes through the stops that test_a_search_that_finished_no_trial_holds_no_run
    reads from STOPS: a call at 2 seeds, then one at tiny's own settings, each stopped before its first trial ended.
    Nothing of them is kept (no trial finished), so the third call trains every trial as a run in a new folder
    would: one tiny run, 8 trainings, serves both."""
    out = tmp_path_factory.mktemp("search") / "search"
    with pytest.MonkeyPatch.context() as patch:
        _stop_before_the_first_trial_ends(patch)
        with pytest.raises(KeyboardInterrupt):
            run_experiment("search", "tiny", seeds=2, out=out)
    study = search_folder(out, "grid", 0)
    STOPS["the first stop's study files"] = {name: (study / name).is_file() for name in ("study.db", "space.yaml")}
    # and a trial stopped before its first epoch ended: a run folder that a search never resumes
    dead = study / "trials" / "search-0000"
    dead.mkdir(parents=True)
    (dead / "config.yaml").write_text("model: {name: lenet5}\n")
    said = io.StringIO()  # the notes go to stderr
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(said):
        _stop_before_the_first_trial_ends(patch)
        with pytest.raises(KeyboardInterrupt):
            run_experiment("search", "tiny", out=out)
    STOPS["the second call's stderr"] = said.getvalue()
    STOPS["the stopped trial's folder left"] = dead.exists()
    STOPS["the settings' seeds"] = json.loads((out / "settings.json").read_text())["seeds"]
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        result = run_experiment("search", "tiny", out=out, say=SAID.append)
    STOPS["the third call's stderr"] = said.getvalue()
    STOPS["result.json's resumed"] = json.loads((out / RESULT_FILE).read_text())["resumed"]  # before a rerun here
    return result, out


def _check(result, start):
    return next(c for c in result.checks if c.claim.startswith(start))


# --- (a) the known objective ------------------------------------------------------------------


def test_toy_grid_is_cnnlabs_three_by_three_grid():
    grid = toy_grid()
    assert sorted(map(tuple, grid)) == [(x, y) for x in (0.0, 0.5, 1.0) for y in (0.0, 0.5, 1.0)]


def _hand_objective(x, y, xs, ys):
    return math.exp(-0.5 * ((x - xs) / 0.1) ** 2) + 0.1 * math.exp(-0.5 * ((y - ys) / 0.3) ** 2)


def test_toy_best_values_match_a_hand_computation(tiny):
    """Each repetition recomputed here with math.exp, drawing as the module documents it."""
    result, _ = tiny
    assert toy_objective(0.3, 0.7, 0.3, 0.7) == pytest.approx(1.1)  # the maximum, at the optimum
    best = {"grid": [], "random": []}
    for r in range(TOY_REPEATS["tiny"]):
        rng = np.random.default_rng([TOY_SEED, r])
        xs, ys = rng.uniform(size=2)
        rng.permutation(9)  # the grid's trial order: the best does not depend on it
        random = rng.uniform(size=(9, 2))
        best["grid"].append(max(_hand_objective(x, y, xs, ys) for x in (0, 0.5, 1) for y in (0, 0.5, 1)))
        best["random"].append(max(_hand_objective(x, y, xs, ys) for x, y in random))
    for method in ("grid", "random"):
        row = next(r for r in result.rows if r["part"] == "known objective" and r["method"] == method)
        assert row["best_mean"] == pytest.approx(float(np.mean(best[method])), rel=1e-12)
        assert row["distinct_important"] == (3 if method == "grid" else 9)
    assert np.mean(best["random"]) > np.mean(best["grid"])


def test_toy_verdict_holds_at_tiny_and_at_the_quick_and_full_count(tiny):
    result, _ = tiny
    assert _check(result, "known objective").verdict == HOLDS
    check = toy_check(run_toy(TOY_REPEATS["full"]))
    assert check.verdict == HOLDS and "sign test" in check.margin


def test_sign_test_values():
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 7) == sign_test(7, 3)


# --- (b) real trainings through cnnlab search ----------------------------------------------------


def test_real_part_runs_a_grid_and_a_random_study(tiny):
    result, out = tiny
    trials = [r for r in result.rows if r["part"] == "training"]
    grid = [r for r in trials if r["method"] == "grid"]
    random = [r for r in trials if r["method"] == "random"]
    assert len(grid) == len(random) == 4  # tiny: a 2x2 grid and 4 random trials, one seed
    assert {r["lr"] for r in grid} == set(LR_RANGE)  # the grid's 2 points per range are its ends
    assert len({r["lr"] for r in random}) == 4
    assert all(LR_RANGE[0] <= r["lr"] <= LR_RANGE[1] for r in random)
    assert all(r["state"] == "COMPLETE" and 0 <= r["val_acc"] <= 1 for r in trials)
    for rows in (grid, random):  # best so far, in trial order
        assert [r["best_so_far"] for r in rows] == list(np.maximum.accumulate([r["val_acc"] for r in rows]))
    for method in ("grid", "random"):
        folder = search_folder(out, method, 0)
        assert (folder / "results.csv").is_file() and (folder / "study.db").is_file()
    assert len(result.runs) == 8 and all(p.is_dir() for p in result.runs)
    assert _check(result, "training: at the same budget").verdict == HOLDS
    assert _check(result, "training: random search's best").verdict == INCONCLUSIVE  # one seed decides nothing
    premise = _check(result, "training: only the learning rate")  # a training measure too: one seed decides nothing
    assert premise.verdict == INCONCLUSIVE and "fewer than 3" in premise.margin
    assert result.verdict == INCONCLUSIVE


def _grid_rows(seeds, lr_effect, wd_effect, finished=True):
    """Made-up grid trials: 2 rates x 2 weight decays per seed, val accuracy 0.5 + the effects."""
    return [{"method": "grid", "seed": seed, "lr": lr, "weight_decay": wd,
             "val_acc": (0.5 + lr_effect * (lr == 0.1) + wd_effect * (wd == 1e-4)) if finished else None}
            for seed in range(seeds) for lr in (1e-4, 0.1) for wd in (1e-6, 1e-4)]


@pytest.mark.parametrize("seeds, lr_effect, wd_effect, finished, chance, verdict", [
    (3, 0.3, 0.01, True, 0.1, HOLDS),
    (3, 0.03, 0.01, True, 0.1, "DOES NOT HOLD"),
    (1, 0.3, 0.01, True, 0.1, INCONCLUSIVE),  # one seed: the same numbers decide nothing
    (2, 0.03, 0.01, True, 0.1, INCONCLUSIVE),
    (3, 0.3, 0.01, False, 0.1, INCONCLUSIVE),  # no grid trial finished: nothing measured, nothing against the premise
    (3, 0.03, 0.01, True, 0.5, INCONCLUSIVE),  # 2 classes: the grid's best, 54%, learned nothing
])
def test_the_premise_is_decided_over_at_least_three_seeds(seeds, lr_effect, wd_effect, finished, chance, verdict):
    from cnnlab.experiments.search import premise_check

    check = premise_check(_grid_rows(seeds, lr_effect, wd_effect, finished), chance)
    assert check.verdict == verdict, check.margin


def test_random_against_grid_on_studies_that_learned_nothing_decides_nothing():
    from cnnlab.experiments.search import real_check

    def rows(random_best, chance_grid):
        return [{"method": method, "seed": seed, "trial": 4, "val_acc": value + 0.001 * seed}
                for seed in range(3) for method, value in (("random", random_best), ("grid", chance_grid))]

    assert real_check(rows(0.13, 0.10), 0.1).verdict == INCONCLUSIVE  # 3 points apart, both at chance
    assert "learned nothing" in real_check(rows(0.13, 0.10), 0.1).margin
    assert real_check(rows(0.80, 0.10), 0.1).verdict == HOLDS  # one study learned: a real difference


def test_each_study_says_its_line_before_its_trials(tiny):
    """Seeds x methods studies, seed-major, grid first, each naming itself among all before its trials' lines;
    every trial the table keeps was said under its study."""
    result, _ = tiny
    trials = [r for r in result.rows if r["part"] == "training"]
    studies = sorted({(r["seed"], r["method"]) for r in trials}, key=lambda k: (k[0], METHODS.index(k[1])))
    starts = [i for i, line in enumerate(SAID) if line.startswith("study ")]
    assert [SAID[i] for i in starts] == [f"study {number} of {len(studies)}: {method} search, seed {seed}"
                                         for number, (seed, method) in enumerate(studies, 1)]
    for start, end, (seed, method) in zip(starts, [*starts[1:], len(SAID)], studies):
        said = [line for line in SAID[start + 1:end] if line.startswith("trial ")]
        assert len(said) == sum(1 for r in trials if (r["seed"], r["method"]) == (seed, method)), SAID


def test_every_search_line_fits_80_columns(monkeypatch, tmp_path):
    """search's lines at the most seeds it takes (20 studies; "study 20 of 20: random search, seed 9") and its
    trials' lines with the widest values: a trial numbered past the study's 9 (a resumed study numbers an
    interrupted trial anew), 100.00%, "59 min 59 s", values drawn so close that all 17 digits tell them apart,
    and a failed trial's long error message. Without training: the experiment's studies are made up, its
    trials' lines made as `cnnlab search` makes them."""
    from types import SimpleNamespace

    from cnnlab.experiments import search as experiment
    from cnnlab.experiments.base import RunContext
    from cnnlab.tune import search as tune

    lr, wd = 0.00012345678901234567, 1.2345678901234567e-05
    drawn = [{experiment.IMPORTANT: lr, experiment.UNIMPORTANT: wd},
             {experiment.IMPORTANT: math.nextafter(lr, 1.0), experiment.UNIMPORTANT: math.nextafter(wd, 1.0)}]
    study = SimpleNamespace(get_trials=lambda deepcopy=True: [SimpleNamespace(params=p) for p in drawn])
    params = tune._params_text(drawn[0], study)
    assert params == f"{experiment.IMPORTANT}={lr:.17g} {experiment.UNIMPORTANT}={wd:.17g}"  # every digit
    failed = ("FAILED (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total "
              "capacity; 1.21 GiB free))")
    trial_lines = [tune.trial_line(999, tune.finished_text(1.0, 3599.0), params),
                   tune.trial_line(999, failed, params)]

    def made_up_search(plan, say):
        for line in trial_lines:
            say(line)
        return SimpleNamespace(rows=[]), None

    monkeypatch.setattr(tune, "plan_search", lambda *args, **kwargs: SimpleNamespace())
    monkeypatch.setattr(tune, "run_search", made_up_search)
    said = []
    seeds = experiment.SEARCH.seeds[1]
    ctx = RunContext(size="tiny", seeds=seeds, out=tmp_path, data=experiment.SEARCH.data["tiny"], say=said.append)
    assert experiment.run_real(ctx) == []
    studies = [text for text in said if text.startswith("study ")]
    assert len(studies) == seeds * len(METHODS) and studies[-1] == f"study 20 of 20: random search, seed {seeds - 1}"
    lines = [line for text in said for line in text.splitlines()]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    # wrapped, not cut: every word of the trial's line is said, the values' continued under the text
    assert said[1:3] == trial_lines and len(trial_lines[0].splitlines()) == 2
    assert trial_lines[0].split() == ["trial", "999:", *tune.finished_text(1.0, 3599.0).split(), *params.split()]
    assert trial_lines[0].splitlines()[1].startswith(" " * len("trial 999: ") + experiment.UNIMPORTANT)
    # a line that fits stays one line, as `cnnlab search` always said it
    assert tune.trial_line(3, tune.finished_text(0.5, 3.0), "optim.lr=0.01") == (
        "trial 3: val acc 50.00% in 3.0 s optim.lr=0.01")


def test_files_written(tiny):
    result, out = tiny
    with open(out / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["verdict"] == INCONCLUSIVE and saved["data"] == "digits" and saved["seeds"] == 1
    assert (out / REPORT_FILE).is_file()
    assert [p.name for p in result.plots] == ["search_layout.png", "search_best_so_far.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)


def test_an_interrupted_experiment_reads_its_studies_back_and_a_copy_names_its_own_trials(tiny, tmp_path):
    """Without result.json the rerun finds both studies finished: nothing is trained again. The studies record
    each trial's folder as the first call named it: a copy (here without result.json, so that the rerun reads the
    studies back) names its own trials in its table and on its page, not the original's. One rerun, of the copy,
    checks both: a rerun names each trial's folder inside the folder it runs in, whether the record points there
    (in place) or to the original (a copy)."""
    result, out = tiny
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(RESULT_FILE))
    stamps = {copy / run.relative_to(out): (copy / run.relative_to(out) / "metrics.csv").stat().st_mtime_ns
              for run in result.runs}
    again = run_experiment("search", "tiny", out=copy)
    trials = [r for r in again.rows if r["part"] == "training"]
    before = [r for r in result.rows if r["part"] == "training"]
    # every trial read back as the first call recorded it, each in the copy's folder of the same name
    assert [{**r, "run_dir": None} for r in trials] == [{**r, "run_dir": None} for r in before], trials
    assert [Path(r["run_dir"]) for r in trials] == [copy / Path(r["run_dir"]).relative_to(out) for r in before], trials
    assert {p: (p / "metrics.csv").stat().st_mtime_ns for p in again.runs} == stamps  # nothing trained again
    assert len(trials) == 8 and all(Path(r["run_dir"]).parent.parent.parent.parent == copy for r in trials)
    assert len(again.runs) == 8 and all(run.is_dir() and run.is_relative_to(copy) for run in again.runs)
    with open(copy / TABLE_CSV) as handle:  # recorded relative to the experiment's folder
        written = [row["run_dir"] for row in csv.DictReader(handle) if row["part"] == "training"]
    assert written == [str(Path(r["run_dir"]).relative_to(copy)) for r in trials]
    assert str(out) not in (copy / REPORT_FILE).read_text()  # the page shows the copy's runs


def _stop_before_the_first_trial_ends(monkeypatch):
    """Ctrl-C after cnnlab search wrote its space and its study, before any trial finished."""
    from cnnlab.tune import search as search_lib

    def interrupted(settings, workers, say=None, quiet=False):
        search_lib.open_study(settings)  # the study database, as the first worker creates it
        raise KeyboardInterrupt

    monkeypatch.setattr(search_lib, "run_workers", interrupted)


def test_a_search_that_finished_no_trial_holds_no_run(tiny):
    """The tiny run's folder before it trained (the fixture's stops, recorded in STOPS): a first call at 2 seeds
    stopped after cnnlab search wrote its space and its study, before any trial finished; then a call at other
    settings, stopped the same way; then one at the same settings, the tiny run."""
    result, out = tiny
    assert STOPS["the first stop's study files"] == {"study.db": True, "space.yaml": True}, STOPS
    # Other settings: nothing there to keep, so they start afresh (not refused), and the stale study goes
    assert ("holds only the settings of an earlier experiment that stopped before its first run (no runs to keep; "
            "its search folder search/grid-seed0, which finished no trial, removed): starting afresh"
            ) in STOPS["the second call's stderr"], STOPS
    assert STOPS["the stopped trial's folder left"] is False and STOPS["the settings' seeds"] == 1, STOPS
    # The same settings continue there; nothing of an earlier call was kept, so it is not "resumed"
    assert ("holds no finished run yet: its search folder search/grid-seed0 finished no trial. Continuing there."
            in STOPS["the third call's stderr"]), STOPS
    assert result.meta["resumed"] is False and STOPS["result.json's resumed"] is False, (result.meta, STOPS)
    assert len(result.runs) == 8, result.runs  # every trial of both studies


def test_refused_data():
    assert "at least 2" in check_search_data(types.SimpleNamespace(num_classes=1, image_size=32))
    small = check_search_data(types.SimpleNamespace(num_classes=10, image_size=8))
    # the advice is one the experiment command can follow: it has no way to set data.image_size
    assert "LeNet-5" in small and "at least 28x28" in small and "image_size" not in small
    from cnnlab.data.sources import load_source

    assert check_search_data(load_source("synthetic:classes=3,train=40")) is None
    # fewer training images than one batch of the trials: no trial could take a step
    assert "fewer than one batch of 32" in check_search_data(load_source("synthetic:classes=2,train=4"))


def test_cli_refuses_small_images(cli, tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True)
        for k in range(4):
            Image.new("L", (8, 8), color=40 * k).save(folder / f"{k}.png")
    code, _, err = cli(["experiment", "search", "--size", "tiny", "--data", f"folder:{tmp_path / 'data'}",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "LeNet-5" in err


def test_the_claim_counts_each_study_s_trials_not_the_highest_trial_number():
    """A resumed study runs its interrupted trial again under the next number: 9 trials numbered 1, 2, 4..10
    were called 'at 10 trials'."""
    from cnnlab.experiments.search import real_check

    numbers = [1, 2, *range(4, 11)]  # 9 trials, the third given up and run again as the tenth
    rows = [{"method": method, "seed": seed, "trial": trial, "val_acc": 0.5 + 0.01 * trial}
            for seed in range(3) for method in ("random", "grid") for trial in numbers]
    assert "at 9 trials" in real_check(rows, 0.1).claim


def test_the_mechanism_check_on_no_study_decides_nothing():
    """all() of no pair of studies is True: with no finished study the mechanism check said HOLDS."""
    from cnnlab.experiments.search import mechanism_check

    assert mechanism_check([]).verdict == INCONCLUSIVE
    rows = [{"method": method, "seed": 0, "trial": trial, "lr": lr}
            for method, lrs in (("grid", (0.1, 0.1, 0.3)), ("random", (0.11, 0.2, 0.31))) for trial, lr in
            enumerate(lrs)]
    assert mechanism_check(rows).verdict == HOLDS
