"""The `transfer` experiment: its run at tiny (files, runs, the class split), the mapping of the ladder's
verdicts to checks, and refused data."""

import json

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import transfer as experiment
from cnnlab.run import RunFolder
from cnnlab.transfer import ladder
from cnnlab.transfer.ladder import RungSummary


SAID = []  # the lines the tiny fixture's run said


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "out"
    with pytest.MonkeyPatch.context() as patch:  # tests/conftest.py's private cache, for this module's fixture too
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        return run_experiment("transfer", "tiny", out=out, say=SAID.append), out


def test_tiny_writes_its_files_and_keeps_every_run(tiny):
    result, out = tiny
    for name in (TABLE_CSV, RESULT_FILE, REPORT_FILE, experiment.PLOT_FILE,
                 f"{experiment.SIMILAR}/{ladder.RESULT_FILE}", f"{experiment.DIFFERENT}/{ladder.RESULT_FILE}"):
        assert (out / name).is_file(), name
    assert (out / experiment.PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    # one size per target at tiny: one row per rung and target, after the source's row
    assert [(r["target"], r["rung"]) for r in result.rows] == [("source", "source")] + [
        (target, rung) for target in (experiment.SIMILAR, experiment.DIFFERENT) for rung in ladder.RUNGS]
    assert all(0 <= r["test_mean"] <= 1 for r in result.rows)
    # the comparison pages: the source and the similar ladder's runs (one data set), the different ladder's
    source = out / "runs" / "source"
    assert result.runs == [source] + [out / target / "3" / "seed0" / rung for target in (
        experiment.SIMILAR, experiment.DIFFERENT) for rung in ladder.TRAINING_RUNGS]
    pages = json.loads((out / RESULT_FILE).read_text())["reports"]
    assert pages[0] == REPORT_FILE and pages[1].startswith("report-synthetic") and len(pages) == 2
    assert all((out / page).is_file() for page in pages)
    assert all(RunFolder(run).report.is_file() for run in result.runs)
    # tiny runs one size, so the notes' table is not read: each target says so, and nothing is decided
    assert [c.verdict for c in result.checks] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all("one size" in c.margin for c in result.checks)


def test_the_source_trains_on_the_first_half_and_the_targets_are_the_rest_and_other_data(tiny):
    _, out = tiny
    source = RunFolder(out / "runs" / "source").read_config()
    assert source.model.name == experiment.MODEL and source.data.spec == "digits"
    assert source.data.classes == [0, 1, 2, 3, 4] and source.data.train_per_class == 20
    similar = RunFolder(out / "similar" / "3" / "seed0" / "all").read_config()
    assert similar.data.spec == "digits" and similar.data.classes == [5, 6, 7, 8, 9]
    assert similar.model.init_from == str((out / "runs" / "source").resolve())
    different = json.loads((out / experiment.DIFFERENT / ladder.RESULT_FILE).read_text())
    assert different["data"].startswith("synthetic:classes=5") and different["similarity"] == "different"


def test_a_second_run_returns_the_kept_result(tiny):
    result, out = tiny
    stamp = (out / RESULT_FILE).stat().st_mtime_ns
    again = run_experiment("transfer", "tiny", out=out)
    assert again.verdict == result.verdict and (out / RESULT_FILE).stat().st_mtime_ns == stamp


def test_split_rule_and_the_different_target():
    assert experiment.split_classes(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert experiment.split_classes(5) == ([0, 1], [2, 3, 4])
    assert experiment.different_spec("fashion-mnist", (10, 100)) == "digits"
    assert experiment.different_spec("cifar10", (10,)) == "digits"
    assert experiment.different_spec("digits", (10, 100)).startswith("synthetic:classes=5,train=500,")


# ---------------------------------------------------------------------------------------------
# the ladder's verdicts, mapped to checks


def table(size_means: dict[int, dict[str, tuple[float, float]]]) -> list[RungSummary]:
    """A ladder summary from {size: {rung: (mean, std)}}."""
    return [RungSummary(size=size, rung=rung, test_mean=mean, test_std=std, val_mean=mean, seconds_mean=1.0, runs=3,
                        failed=0)
            for size, rungs in size_means.items() for rung, (mean, std) in rungs.items()]


def checks_for(similarity: str, size_means, seeds: int = 3):
    summary = table(size_means)
    verdicts = ladder.verdicts(summary, sorted(size_means), similarity)
    return [experiment.verdict_check(similarity, "data", v, summary, seeds).verdict for v in verdicts]


def rungs(scratch, probe, top, all_):
    return {"scratch": scratch, "probe": probe, "top": top, "all": all_}


def test_similar_cells_hold_when_the_lectures_rung_wins_alone():
    small = rungs((0.80, 0.01), (0.90, 0.01), (0.85, 0.01), (0.84, 0.01))  # probe clearly best
    large = rungs((0.90, 0.01), (0.91, 0.01), (0.92, 0.01), (0.96, 0.01))  # all clearly best
    assert checks_for("similar", {10: small, 1000: large}) == [HOLDS, HOLDS]
    # top wins the small size, probe the large one: both cells fail
    assert checks_for("similar", {10: large, 1000: small}) == [FAILS, FAILS]
    # probe ties with top at the small size (within one std): a mixed tie decides nothing
    mixed = rungs((0.80, 0.01), (0.90, 0.03), (0.89, 0.01), (0.84, 0.01))
    assert checks_for("similar", {10: mixed, 1000: large}) == [INCONCLUSIVE, HOLDS]
    # fewer than 3 seeds: nothing is decided
    assert checks_for("similar", {10: small, 1000: large}, seeds=2) == [INCONCLUSIVE, INCONCLUSIVE]


def test_a_rung_with_diverged_seeds_decides_no_cell():
    """'all' with two of three seeds diverged: its mean is one run with a spread of 0, which decides nothing."""
    small = table({10: rungs((0.80, 0.01), (0.90, 0.01), (0.85, 0.01), (0.84, 0.01))})
    large = table({1000: rungs((0.90, 0.01), (0.91, 0.01), (0.92, 0.01), (0.96, 0.0))})
    large[-1].runs, large[-1].failed = 1, 2
    summary = small + large
    verdicts = ladder.verdicts(summary, [10, 1000], "similar")
    checks = [experiment.verdict_check("similar", "data", v, summary, 3) for v in verdicts]
    assert [check.verdict for check in checks] == [HOLDS, INCONCLUSIVE]
    assert "all finished fewer than 3 seeds" in checks[1].margin

def test_different_cells():
    # little data: scratch tying for the best means the source brings no clear gain (holds) ...
    no_gain = rungs((0.85, 0.03), (0.86, 0.02), (0.83, 0.02), (0.70, 0.02))
    # ... a rung reusing the source winning clearly contradicts "use another model or collect more data"
    gain = rungs((0.80, 0.01), (0.90, 0.01), (0.85, 0.01), (0.70, 0.01))
    # a lot of data: all or scratch recommended; a tie of the two holds
    large_ok = rungs((0.95, 0.01), (0.90, 0.01), (0.91, 0.01), (0.95, 0.01))
    large_bad = rungs((0.90, 0.01), (0.95, 0.01), (0.91, 0.01), (0.88, 0.01))
    assert checks_for("different", {10: no_gain, 100: large_ok}) == [HOLDS, HOLDS]
    assert checks_for("different", {10: gain, 100: large_bad}) == [FAILS, FAILS]


def test_scratch_tied_far_behind_within_a_wide_spread_does_not_hold_the_different_little_cell():
    # scratch 88% +- 9 against top 95% +- 1: "tied" by the ladder's one-std rule, 7 points behind
    noisy = rungs((0.88, 0.09), (0.86, 0.02), (0.95, 0.01), (0.70, 0.02))
    summary = table({10: noisy, 100: rungs((0.95, 0.01), (0.90, 0.01), (0.91, 0.01), (0.95, 0.01))})
    little = ladder.verdicts(summary, [10, 100], "different")[0]
    assert "scratch" in little.tied
    check = experiment.verdict_check("different", "data", little, summary, 3)
    assert check.verdict == INCONCLUSIVE and "7.0 points behind the best" in check.margin, check.margin
    # within a point of the best it ties for it
    close = rungs((0.945, 0.02), (0.86, 0.02), (0.95, 0.01), (0.70, 0.02))
    assert checks_for("different", {10: close, 100: rungs((0.95, 0.01), (0.9, 0.01), (0.91, 0.01), (0.95, 0.01))}
                      )[0] == HOLDS


# ---------------------------------------------------------------------------------------------
# refused data


def test_data_with_fewer_than_four_classes_is_refused(cli, tmp_path):
    code, _, err = cli(["experiment", "transfer", "--size", "tiny", "--data", "synthetic:classes=3",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "3 classes" in err and "source half" in err
    assert not (tmp_path / "x").exists()


def test_data_too_small_for_the_source_run_is_refused_before_anything_trains(tmp_path, cli):
    # 4 classes of 10 training images each: the tiny source trains on 20 per class of classes 0-1
    data = "synthetic:classes=4,train=40,val=20,test=20"
    with pytest.raises(CnnlabError, match="class-balanced subset of 20 per class"):
        run_experiment("transfer", "tiny", out=tmp_path / "x", data=data)
    assert not (tmp_path / "x").exists()
    code, _, err = cli(["experiment", "transfer", "--size", "tiny", "--data", data, "--out", str(tmp_path / "x")])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "data.train_per_class" not in err  # a setting the experiment's user cannot give


def test_a_target_too_small_for_the_size_is_refused():
    # Run before the source trains. 4 classes of 2 training images each: a target cannot give 3 per class.
    from cnnlab.config import DataConfig

    with pytest.raises(CnnlabError, match="needs 3 training images per class"):
        experiment._check_counts(DataConfig(spec="synthetic:classes=4,train=8,val=8,test=8"), 3, "similar")


def test_a_target_too_small_for_the_size_is_refused_with_the_data_and_no_size_that_would_refuse_it_too(tmp_path):
    # digits has about 125 training images per class: the similar target's 1,000 per class fit neither quick
    # (200) nor full (1,000), so full is refused with --data (before the lock and settings.json), and quick's
    # refusal, whose source run wants 1,000 per class, advises tiny only.
    with pytest.raises(CnnlabError, match="cannot use --data digits: .*subset of 1000 per class") as refused:
        run_experiment("transfer", "full", out=tmp_path / "full", data="digits")
    assert "--size tiny," in str(refused.value) and not (tmp_path / "full").exists()
    with pytest.raises(CnnlabError, match="cannot use --data digits") as refused:
        run_experiment("transfer", "quick", out=tmp_path / "quick", data="digits")
    assert "--size tiny," in str(refused.value) and "full" not in str(refused.value).split("Its default data")[0]


def test_data_without_a_test_split_is_refused(cli, tmp_path):
    """The rungs are scored on the test split; without one the ladder would score them on the validation images
    their checkpoints were chosen on, and the table would call that test accuracy."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(4):
        (tmp_path / "data" / f"c{label}").mkdir(parents=True)
        for index in range(30):
            pixels = (rng.random((32, 32)) * 60 + 50 * label).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "data" / f"c{label}" / f"{index}.png")
    code, _, err = cli(["experiment", "transfer", "--size", "tiny", "--data", f"folder:{tmp_path / 'data'}",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "no test split" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_every_training_run_of_the_source_and_the_ladders_is_counted_on_its_line(tiny):
    """The source and each training rung of every ladder say their place among the experiment's training runs
    (the runs it keeps); the probes train no network and are not counted."""
    result, _ = tiny
    planned = len(result.runs)
    counted = [line for line in SAID if line.startswith("run ")]
    assert [line.split("  ")[0] for line in counted] == [f"run {k:>{len(str(planned))}} of {planned}"
                                                         for k in range(1, planned + 1)]
    assert counted[0].split("  ")[1].strip() == "source"
    assert all("/probe " in line for line in SAID if line.startswith(" "))  # LADDER/SIZE/seedK/probe


@pytest.mark.parametrize("purpose", ["transfer", "fine-tune"])
def test_a_diverged_source_is_refused_in_one_paragraph(tmp_path, monkeypatch, purpose):
    """transfer and from-scratch both start from the source run: a source whose loss blew up leaves nothing to
    start from, and the message says where it is and how to train it again."""
    from types import SimpleNamespace

    from cnnlab.errors import CnnlabError
    from cnnlab.experiments import transfer
    from cnnlab.experiments.training import DIVERGED, RunOutcome

    monkeypatch.setattr(transfer, "train_or_read", lambda config, run_dir, setting: RunOutcome(
        setting, 0, str(run_dir), DIVERGED))
    said = []
    ctx = SimpleNamespace(out=tmp_path, data="digits", size="tiny", say=said.append)
    with pytest.raises(CnnlabError, match=f"diverged .* so there is nothing to {purpose}. Delete that folder"):
        transfer.train_source(ctx, 10, 6, purpose)
    assert said == ["source: lenet5 on digits classes 0-4"]  # what was to train; no run line for a refused source


def test_the_plot_s_panel_titles_fit_the_figure(tmp_path, monkeypatch):
    """The different target's two cells on one title line ran past the panel: "... or train from s"."""
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    seen = {}

    def keep(figure, path, what):
        seen["figure"] = figure
        return path

    monkeypatch.setattr("cnnlab.io.save_png", keep)
    summary = table({10: rungs((0.85, 0.03), (0.86, 0.02), (0.83, 0.02), (0.70, 0.02)),
                     100: rungs((0.95, 0.01), (0.90, 0.01), (0.91, 0.01), (0.95, 0.01))})
    ladders = {target: SimpleNamespace(table=summary, sizes=[10, 100], metric_split="test",
                                       verdicts=ladder.verdicts(summary, [10, 100], target))
               for target in ("similar", "different")}
    experiment._plot(tmp_path / "t.png", ladders, {"similar": "fashion-mnist classes 5-9", "different": "digits"}, 3)
    figure: Figure = seen["figure"]
    renderer = figure.canvas.get_renderer()
    width = figure.bbox.width
    for axis in figure.axes:
        box = axis.title.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, (axis.get_title(), box, width)
    assert "or train from scratch" in figure.axes[1].get_title()
