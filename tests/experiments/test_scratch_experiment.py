"""The `from-scratch` experiment: its run at tiny (files, the two rungs of each budget's ladder, the
shared source), the rule's branches on made-up gaps, and its place in the registry."""

import json
import re
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, RESULT_FILE, TABLE_CSV, list_experiments, run_experiment
from cnnlab.experiments import scratch as experiment
from cnnlab.experiments import transfer
from cnnlab.experiments.scratch import TOLERANCE, Gap, catches_up_check, small_data_check
from cnnlab.run import RunFolder
from cnnlab.transfer import ladder
from cnnlab.transfer.ladder import ALL, SCRATCH

NAME = "from-scratch"


SAID = []  # the lines the tiny fixture's run said


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("scratch") / "out"
    with pytest.MonkeyPatch.context() as patch:  # tests/conftest.py's private cache, for this module's fixture too
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        return run_experiment(NAME, "tiny", out=out, say=SAID.append), out


def test_tiny_runs_scratch_and_all_at_each_budget_from_the_transfer_experiments_source(tiny):
    result, out = tiny
    assert (out / TABLE_CSV).is_file() and (out / RESULT_FILE).is_file()
    assert (out / experiment.PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    budgets = experiment.SETTINGS["tiny"].budgets("tiny")
    assert budgets == [factor * transfer.SETTINGS["tiny"].steps for factor in experiment.SETTINGS["tiny"].factors]
    (size,) = transfer.SETTINGS["tiny"].similar
    # one ladder per budget, with only the two rungs: no probe was fitted, no 'top' trained
    for steps in budgets:
        record = json.loads((out / experiment.budget_folder(steps) / ladder.RESULT_FILE).read_text())
        assert record["finished"] and record["steps"] == steps
        assert [(run["rung"], run["size"]) for run in record["runs"]] == [(SCRATCH, size), (ALL, size)]
        assert sorted(p.name for p in (out / experiment.budget_folder(steps) / str(size) / "seed0").iterdir()) == [
            ALL, SCRATCH]
    assert [(r["budget"], r["rung"]) for r in result.rows] == [(None, "source")] + [
        (f"{factor}x", rung) for factor in experiment.SETTINGS["tiny"].factors for rung in (SCRATCH, ALL)]
    assert all(0 <= r["test_mean"] <= 1 for r in result.rows)
    # the source is the transfer experiment's at this size, and 'all' starts from it
    source = RunFolder(out / "runs" / "source").read_config()
    assert source.data.classes == [0, 1, 2, 3, 4] and source.data.train_per_class == transfer.SETTINGS["tiny"].source_per_class
    tuned = RunFolder(out / experiment.budget_folder(budgets[-1]) / str(size) / "seed0" / ALL).read_config()
    assert tuned.model.init_from == str((out / "runs" / "source").resolve()) and tuned.data.classes == [5, 6, 7, 8, 9]
    assert RunFolder(out / experiment.budget_folder(budgets[0]) / str(size) / "seed0" / SCRATCH).read_config(
    ).model.init_from is None
    assert result.runs[0] == out / "runs" / "source" and len(result.runs) == 1 + 2 * len(budgets)
    # one size at tiny: the check says so and decides nothing, with the gaps it measured in its margin
    assert [c.verdict for c in result.checks] == [INCONCLUSIVE]
    assert "one size" in result.checks[0].margin and f"{budgets[-1]} steps: all" in result.checks[0].margin


def test_a_second_run_returns_the_kept_result(tiny):
    result, out = tiny
    stamp = (out / RESULT_FILE).stat().st_mtime_ns
    again = run_experiment(NAME, "tiny", out=out)
    assert again.verdict == result.verdict and (out / RESULT_FILE).stat().st_mtime_ns == stamp


def _gaps(*budgets, size=1000, spread=0.01, runs=3):
    """Gaps at a size from (steps, scratch, all) triples; one spread for every budget."""
    return [Gap(size=size, steps=steps, scratch=scratch, finetuned=tuned, spread=spread, runs=runs)
            for steps, scratch, tuned in budgets]


def test_catching_up_holds_when_the_gap_closes_to_within_the_spread():
    # 5 points behind at 100 steps, 0.5 behind at 900 (spread 1 point)
    check = catches_up_check(_gaps((100, 0.80, 0.85), (900, 0.895, 0.90)), 3, "d")
    assert check.verdict == HOLDS and "+0.5 points" in check.margin
    # scratch overtaking counts as catching up
    assert catches_up_check(_gaps((100, 0.80, 0.85), (900, 0.93, 0.90)), 3, "d").verdict == HOLDS


def test_catching_up_fails_when_fine_tuning_still_leads_by_more_than_the_spread():
    check = catches_up_check(_gaps((100, 0.80, 0.85), (900, 0.87, 0.90)), 3, "d")
    assert check.verdict == FAILS and "still leads" in check.margin


def test_catching_up_is_inconclusive_when_there_was_no_lead_to_close():
    # scratch already ahead at the shortest budget, level at the longest: the gap grew
    check = catches_up_check(_gaps((100, 0.87, 0.84), (900, 0.90, 0.90)), 3, "d")
    assert check.verdict == INCONCLUSIVE and "no lead to close" in check.margin


@pytest.mark.parametrize("short, long, spread", [
    ((100, 0.874, 0.840), (900, 0.950, 0.900), 0.007),  # scratch ahead at both budgets, by 3.4 then 5.0 points
    ((100, 0.849, 0.850), (900, 0.901, 0.900), 0.007),  # +0.1 then -0.1 points, spread 0.7: no lead either time
])
def test_catching_up_needs_fine_tuning_to_have_led_clearly_at_the_shortest_budget(short, long, spread):
    check = catches_up_check(_gaps(short, long, spread=spread), 3, "d")
    assert check.verdict == INCONCLUSIVE and "no lead to close" in check.margin, check.margin


def test_catching_up_is_inconclusive_when_a_wide_spread_hides_a_lead_that_grew():
    gaps = _gaps((100, 0.80, 0.82), size=1000, spread=0.005) + _gaps((900, 0.85, 0.88), spread=0.04)
    check = catches_up_check(gaps, 3, "d")  # 2 points ahead, then 3 within a spread of 4
    assert check.verdict == INCONCLUSIVE and "not smaller" in check.margin, check.margin


def test_the_tolerance_stands_in_for_a_spread_of_zero():
    within, beyond = 0.9 * TOLERANCE, 1.1 * TOLERANCE
    assert catches_up_check(_gaps((1, 0.8, 0.9), (9, 0.9, 0.9 + within), spread=0.0), 3, "d").verdict == HOLDS
    assert catches_up_check(_gaps((1, 0.8, 0.9), (9, 0.9, 0.9 + beyond), spread=0.0), 3, "d").verdict == FAILS
    assert small_data_check(_gaps((1, 0.8, 0.9), (9, 0.9, 0.9 + within), size=10, spread=0.0), 3, "d").verdict == (
        INCONCLUSIVE)


def test_little_data_holds_only_when_fine_tuning_still_wins_clearly_at_the_longest_budget():
    wins = small_data_check(_gaps((100, 0.70, 0.80), (900, 0.75, 0.80), size=10), 3, "d")
    assert wins.verdict == HOLDS and "10 per class" in wins.claim
    # a lead at the short budget that closes does not count
    assert small_data_check(_gaps((100, 0.70, 0.80), (900, 0.80, 0.805), size=10), 3, "d").verdict == INCONCLUSIVE
    assert small_data_check(_gaps((100, 0.70, 0.80), (900, 0.85, 0.80), size=10), 3, "d").verdict == FAILS


def test_too_few_seeds_or_diverged_runs_decide_nothing():
    clear = ((100, 0.70, 0.80), (900, 0.70, 0.80))
    assert small_data_check(_gaps(*clear), 2, "d").verdict == INCONCLUSIVE
    assert catches_up_check(_gaps(*clear), 2, "d").verdict == INCONCLUSIVE
    assert small_data_check(_gaps(*clear, runs=2), 3, "d").verdict == INCONCLUSIVE
    diverged = _gaps((100, 0.70, 0.80)) + _gaps((900, None, 0.80))
    assert catches_up_check(diverged, 3, "d").verdict == INCONCLUSIVE and "diverged" in catches_up_check(
        diverged, 3, "d").margin


def test_registered_after_transfer_with_the_budgets_in_its_description():
    names = [e.name for e in list_experiments()]
    assert names.index(NAME) == names.index("transfer") + 1
    registered = next(e for e in list_experiments() if e.name == NAME)
    full = experiment.SETTINGS["full"].budgets("full")
    assert ", ".join(str(steps) for steps in full) in registered.sizes["full"].description


def _budgets_text(size):
    """A size's budgets as the texts say them: '1x, 3x and 9x'."""
    factors = [f"{factor}x" for factor in experiment.SETTINGS[size].factors]
    return factors[0] if len(factors) == 1 else ", ".join(factors[:-1]) + f" and {factors[-1]}"


def test_the_rule_names_the_budgets_every_size_runs():
    """The rule is one text for every size: it named 1x, 3x and 9x while tiny runs 1x and 2x."""
    registered = next(e for e in list_experiments() if e.name == NAME)
    rule = " ".join(registered.rule.split())
    general = re.search(r"at ([\dx, and]+) its optimiser steps per rung", rule)
    assert general, rule
    # each size's budgets are the rule's general ones, or named with the size
    for size in experiment.SETTINGS:
        assert _budgets_text(size) == general[1] or f"--size {size}: {_budgets_text(size)}" in rule, (size, rule)
    assert general[1] == "1x, 3x and 9x" and "--size tiny: 1x and 2x" in rule
    # the size's line says the same budgets, beside its optimiser steps
    for size, info in registered.sizes.items():
        assert f"({_budgets_text(size)} the transfer experiment's)" in info.description
    # and so does the rule in docs/experiments.md
    page = (Path(__file__).parents[2] / "docs" / "experiments.md").read_text(encoding="utf-8")
    section = " ".join(page.split("\n## from-scratch\n", 1)[1].split("\n## ", 1)[0].split())
    assert f"at budgets of {general[1]} its optimiser steps per rung" in section
    for size in experiment.SETTINGS:
        assert _budgets_text(size) == general[1] or f"`{size}`, the mechanics, runs {_budgets_text(size)}" in section


def test_the_ladder_refuses_rungs_it_does_not_have():
    from cnnlab.config import DataConfig, RunConfig

    with pytest.raises(CnnlabError, match="not a selection"):
        ladder.check_request(DataConfig(spec="digits"), RunConfig(), None, 1, 1, rungs=(SCRATCH, "everything"))
    with pytest.raises(CnnlabError, match="not a selection"):
        ladder.check_request(DataConfig(spec="digits"), RunConfig(), None, 1, 1, rungs=())


def test_an_unfinished_experiment_continues_by_reading_its_runs_back(tiny):
    # result.json is written last: without it the experiment counts as interrupted, and the same call continues,
    # reading every finished run back (the source and each ladder's rungs) instead of training it again
    result, out = tiny
    (out / RESULT_FILE).unlink()
    stamps = {run: RunFolder(run).report.stat().st_mtime_ns for run in result.runs}
    again = run_experiment(NAME, "tiny", out=out)
    assert {run: RunFolder(run).report.stat().st_mtime_ns for run in again.runs} == stamps
    assert [r["test_mean"] for r in again.rows] == [r["test_mean"] for r in result.rows]
    for steps in experiment.SETTINGS["tiny"].budgets("tiny"):
        record = json.loads((out / experiment.budget_folder(steps) / ladder.RESULT_FILE).read_text())
        assert {run["status"] for run in record["runs"]} == {"read"}


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
