"""Learning-rate schedules against torch's own schedulers, step by step, as the independent reference."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
from torch.optim import lr_scheduler

from cnnlab.config import OptimConfig, ScheduleConfig
from cnnlab.errors import CnnlabError
from cnnlab.train.schedule import (
    SCHEDULES,
    _cycle_bounds,
    _longest_warmup_epochs,
    _half_cosine,
    flat_cycles,
    lr_factor,
    overlong_warmup,
    scaled_lr,
    snapshot_shortfall,
    snapshot_steps,
    steps_to_fall,
    unreached_milestones,
    validate_schedule,
    warmup_steps,
)

PEAK = 0.4  # any peak lr: the torch schedulers run on it, cnnlab's factor is compared after dividing
STEPS_PER_EPOCH = 8
EPOCHS = 10
TOTAL = STEPS_PER_EPOCH * EPOCHS  # 80 steps


def torch_factors(make_scheduler, total: int = TOTAL) -> list[float]:
    """The lr a torch scheduler gives at each of ``total`` steps, divided by the peak."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=PEAK)
    scheduler = make_scheduler(optimizer)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"] / PEAK)  # the lr this step trains with
        optimizer.step()
        scheduler.step()
    return factors


def cnnlab_factors(config: ScheduleConfig, total: int = TOTAL, steps_per_epoch: int = STEPS_PER_EPOCH) -> list[float]:
    return [lr_factor(config, step, total, steps_per_epoch) for step in range(total)]


def assert_same(ours: list[float], reference: list[float]) -> None:
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference)):
        assert a == pytest.approx(b, abs=1e-9, rel=0), f"step {step}: cnnlab {a!r}, torch {b!r}"


def with_warmup(first_steps: int, start: float, after):
    """torch's LinearLR warmup chained before ``after`` (SequentialLR switches at first_steps)."""

    def make(optimizer):
        warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=first_steps)
        return lr_scheduler.SequentialLR(optimizer, [warm, after(optimizer)], milestones=[first_steps])

    return make


# --- each schedule against torch, no warmup ---------------------------------------------------


def test_constant_is_one_throughout():
    assert cnnlab_factors(ScheduleConfig(name="constant")) == [1.0] * TOTAL


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_cosine_matches_cosine_annealing_lr(floor):
    ours = cnnlab_factors(ScheduleConfig(name="cosine", min_lr_factor=floor))
    reference = torch_factors(lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL, eta_min=floor * PEAK))
    assert_same(ours, reference)
    assert ours[0] == 1.0 and ours[-1] > floor  # the floor is reached after the last step (torch's T_max)


def test_step_matches_multistep_lr():
    config = ScheduleConfig(name="step", step_epochs=[3, 7, 9], step_gamma=0.2)
    milestones = [epoch * STEPS_PER_EPOCH for epoch in config.step_epochs]
    reference = torch_factors(lambda opt: lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.2))
    ours = cnnlab_factors(config)
    assert_same(ours, reference)
    assert ours[3 * STEPS_PER_EPOCH - 1] == 1.0 and ours[3 * STEPS_PER_EPOCH] == pytest.approx(0.2)


@pytest.mark.parametrize("cycles, floor", [(1, 0.0), (4, 0.0), (5, 0.1)])
def test_cyclic_matches_cosine_annealing_warm_restarts(cycles, floor):
    config = ScheduleConfig(name="cyclic", cycles=cycles, min_lr_factor=floor)
    per_cycle = TOTAL // cycles
    reference = torch_factors(lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=per_cycle, eta_min=floor * PEAK))
    assert_same(cnnlab_factors(config), reference)


@pytest.mark.parametrize("pct, div, final_div, total", [(0.25, 25.0, 1e4, TOTAL), (0.3, 10.0, 100.0, 97), (0.5, 1.0, 1.0, 10)])
def test_onecycle_matches_one_cycle_lr(pct, div, final_div, total):
    config = ScheduleConfig(name="onecycle", onecycle_pct=pct, onecycle_div=div, onecycle_final_div=final_div)
    reference = torch_factors(
        lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=PEAK, total_steps=total, pct_start=pct, div_factor=div,
                                            final_div_factor=final_div, anneal_strategy="cos", three_phase=False,
                                            cycle_momentum=False),
        total)
    ours = cnnlab_factors(config, total)
    assert_same(ours, reference)
    assert ours[0] == pytest.approx(1 / div)
    # The peak falls on a whole step only when pct * total is whole (29.1 steps for 97 at 0.3).
    assert 0.9999 < max(ours) <= 1.0


# --- warmup before each schedule ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # SequentialLR passes an epoch to step(): deprecated, harmless
@pytest.mark.parametrize("start", [0.1, 0.01])
def test_warmup_then_cosine_matches_sequential_linear_and_cosine(start):
    config = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start=start, min_lr_factor=0.02)
    warm = 2 * STEPS_PER_EPOCH
    reference = torch_factors(with_warmup(warm, start, lambda opt: lr_scheduler.CosineAnnealingLR(
        opt, T_max=TOTAL - warm, eta_min=0.02 * PEAK)))
    ours = cnnlab_factors(config)
    assert_same(ours, reference)
    assert ours[0] == pytest.approx(start) and ours[warm] == 1.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_warmup_then_cyclic_matches_sequential_linear_and_warm_restarts():
    config = ScheduleConfig(name="cyclic", warmup_epochs=2, warmup_start=0.1, cycles=4)
    warm = 2 * STEPS_PER_EPOCH
    reference = torch_factors(with_warmup(warm, 0.1, lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=(TOTAL - warm) // 4)))
    assert_same(cnnlab_factors(config), reference)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_warmup_then_step_matches_sequential_linear_and_multistep():
    # step_epochs count from the start of the run; torch's MultiStepLR after SequentialLR counts
    # from the switch, so its milestones are shifted by the warmup.
    config = ScheduleConfig(name="step", warmup_epochs=1.5, warmup_start=0.1, step_epochs=[4, 8], step_gamma=0.1)
    warm = 12  # 1.5 epochs of 8 steps
    milestones = [epoch * STEPS_PER_EPOCH - warm for epoch in config.step_epochs]
    reference = torch_factors(with_warmup(warm, 0.1, lambda opt: lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)))
    assert_same(cnnlab_factors(config), reference)


def test_warmup_then_constant_matches_linear_lr():
    config = ScheduleConfig(name="constant", warmup_epochs=3, warmup_start=0.25)
    reference = torch_factors(lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=24))
    assert_same(cnnlab_factors(config), reference)


def test_warmup_from_zero_is_linear_by_hand():
    # LinearLR refuses start_factor 0; the ramp is 0, 1/W, 2/W, ... by definition.
    config = ScheduleConfig(name="cosine", warmup_epochs=0.5, warmup_start=0.0)
    assert warmup_steps(config, STEPS_PER_EPOCH) == 4
    assert cnnlab_factors(config)[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_fractional_warmup_rounds_half_up_to_whole_steps():
    assert warmup_steps(ScheduleConfig(warmup_epochs=0.25), 10) == 3  # 2.5 steps -> 3
    assert warmup_steps(ScheduleConfig(warmup_epochs=1 / 3), 9) == 3


@pytest.mark.parametrize("name", [n for n in SCHEDULES if n != "onecycle"])
def test_every_factor_lies_in_zero_one_with_warmup(name):
    config = ScheduleConfig(name=name, warmup_epochs=1, warmup_start=0.0, step_epochs=[3, 6], cycles=3, min_lr_factor=0.1)
    factors = cnnlab_factors(config, total=77, steps_per_epoch=7)
    assert all(0.0 <= f <= 1.0 for f in factors)
    assert max(factors) == 1.0


def test_step_outside_the_run_is_a_programming_error():
    config = ScheduleConfig(name="cosine")
    with pytest.raises(ValueError, match="outside"):
        lr_factor(config, TOTAL, TOTAL, STEPS_PER_EPOCH)
    with pytest.raises(ValueError, match="outside"):
        lr_factor(config, -1, TOTAL, STEPS_PER_EPOCH)


def test_onecycle_refuses_warmup_in_lr_factor_too():
    with pytest.raises(CnnlabError, match="warmup_epochs must be 0"):
        lr_factor(ScheduleConfig(name="onecycle", warmup_epochs=1), 0, TOTAL, STEPS_PER_EPOCH)


# --- cycles that do not divide the steps, snapshots -------------------------------------------------


def test_uneven_cycles_differ_by_at_most_one_step_and_each_restarts_at_one():
    config = ScheduleConfig(name="cyclic", cycles=3, warmup_epochs=1)
    total, per_epoch = 48, 5  # 43 steps after the 5 warmup steps: cycles of 14, 14 and 15
    ends = snapshot_steps(config, total, per_epoch)
    starts = [warmup_steps(config, per_epoch)] + ends[:-1]
    lengths = [end - start for start, end in zip(starts, ends)]
    assert ends[-1] == total and sum(lengths) == total - 5
    assert lengths == [14, 14, 15]
    for start in starts:
        assert lr_factor(config, start, total, per_epoch) == 1.0
    for start, end in zip(starts, ends):  # within a cycle the lr only falls
        cycle = [lr_factor(config, s, total, per_epoch) for s in range(start, end)]
        assert cycle == sorted(cycle, reverse=True)


def test_snapshot_steps_end_each_cycle():
    config = ScheduleConfig(name="cyclic", cycles=4, warmup_epochs=2)
    assert snapshot_steps(config, TOTAL, STEPS_PER_EPOCH) == [32, 48, 64, 80]
    assert snapshot_steps(ScheduleConfig(name="cyclic", cycles=5), TOTAL, STEPS_PER_EPOCH) == [16, 32, 48, 64, 80]
    # The snapshot after s steps is taken at the bottom of a cosine: step s - 1 is the lowest lr of
    # its cycle and step s restarts at the peak.
    for count in snapshot_steps(config, TOTAL, STEPS_PER_EPOCH)[:-1]:
        assert lr_factor(config, count - 1, TOTAL, STEPS_PER_EPOCH) < 0.01
        assert lr_factor(config, count, TOTAL, STEPS_PER_EPOCH) == 1.0


@pytest.mark.parametrize("cycles, warmup_epochs, total, per_epoch", [
    (8, 0, 6, 6),  # more cycles than steps
    (4, 0.5, 4, 2),  # the warmup leaves 3 steps for 4 cycles
    (3, 0.9, 1, 1),  # the warmup rounds up to the run's only step: no cycle has a step
    (2, 0.5, 2, 2),  # one step left after the warmup
])
def test_fewer_steps_than_cycles_are_named_with_the_snapshots_that_will_be_saved(cycles, warmup_epochs, total,
                                                                                 per_epoch):
    config = ScheduleConfig(name="cyclic", cycles=cycles, warmup_epochs=warmup_epochs)
    saved = len(snapshot_steps(config, total, per_epoch))
    assert saved < cycles
    text = snapshot_shortfall(config, total, per_epoch)
    assert f"schedule.cycles={cycles} asks for {cycles} snapshots" in text
    if saved:
        assert f"only {saved} snapshot" in text and f"snapshot-{saved}.safetensors" in text
        assert f"schedule.cycles to {saved} or fewer" in text  # a cycle count that saves them all
    else:
        assert "no snapshot will be saved" in text


def test_a_cycle_is_found_by_arithmetic_as_the_bounds_place_it_however_many_cycles():
    """lr_factor built the list of every cycle's bounds at each step: schedule.cycles=1e9 ran out of memory, and
    a long run with many cycles took steps x cycles."""
    def by_bounds(config, step, total, per_epoch):
        bounds = _cycle_bounds(total, warmup_steps(config, per_epoch), config.cycles)
        start, end = next((a, b) for a, b in zip(bounds, bounds[1:]) if a <= step < b)
        return _half_cosine(step - start, end - start, config.min_lr_factor)

    for total in (7, 20, 43):
        for cycles in (1, 2, 3, 6, 7, 19, 20, 50):
            config = ScheduleConfig(name="cyclic", cycles=cycles, warmup_epochs=0.4, min_lr_factor=0.1)
            for step in range(warmup_steps(config, 5), total):
                assert lr_factor(config, step, total, 5) == by_bounds(config, step, total, 5), (total, cycles, step)
    many = ScheduleConfig(name="cyclic", cycles=10**9)  # each of the 9 steps a cycle of its own, at the peak
    assert [lr_factor(many, step, 9, 9) for step in range(9)] == [1.0] * 9


def test_cycles_as_many_as_the_steps_are_named_as_a_rate_that_never_falls():
    for cycles, warmup in ((9, 0), (100, 0), (8, 1 / 9)):  # 9 steps, or 8 after a warmup step, for as many cycles
        config = ScheduleConfig(name="cyclic", cycles=cycles, warmup_epochs=warmup)
        assert max(lr_factor(config, step, 9, 9) for step in range(warmup_steps(config, 9), 9)) == 1.0
        assert min(lr_factor(config, step, 9, 9) for step in range(warmup_steps(config, 9), 9)) == 1.0
        after = 9 - warmup_steps(config, 9)
        assert f"set schedule.cycles to {after - 1} or fewer" in flat_cycles(config, 9, 9)
        fewer = replace(config, cycles=after - 1)
        assert flat_cycles(fewer, 9, 9) is None
        assert min(lr_factor(fewer, step, 9, 9) for step in range(warmup_steps(fewer, 9), 9)) < 1.0
    assert flat_cycles(ScheduleConfig(name="cyclic", cycles=3), 1, 1) is None  # one step: nowhere to fall
    assert flat_cycles(ScheduleConfig(name="cyclic", cycles=9, min_lr_factor=1.0), 9, 9) is None  # by design
    assert flat_cycles(ScheduleConfig(name="cosine", cycles=9), 9, 9) is None


def test_a_schedule_with_a_step_for_every_cycle_has_no_shortfall():
    for cycles in range(1, 7):
        config = ScheduleConfig(name="cyclic", cycles=cycles)
        assert len(snapshot_steps(config, 6, 3)) == cycles and snapshot_shortfall(config, 6, 3) is None
    assert snapshot_shortfall(ScheduleConfig(name="cosine", cycles=9), 6, 3) is None  # no cycles, no snapshots


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "onecycle"])
def test_only_cyclic_has_snapshots(name):
    assert snapshot_steps(ScheduleConfig(name=name, cycles=4), TOTAL, STEPS_PER_EPOCH) == []


# --- linear scaling rule ---------------------------------------------------------------------------


def test_scaled_lr_follows_the_linear_scaling_rule():
    assert scaled_lr(OptimConfig(lr=0.1, lr_batch=256), 128) == pytest.approx(0.05)
    assert scaled_lr(OptimConfig(lr=0.1, lr_batch=256), 1024) == pytest.approx(0.4)
    assert scaled_lr(OptimConfig(lr=0.1, lr_batch=None), 1024) == 0.1


# --- validation --------------------------------------------------------------------------------------


def test_defaults_are_valid_for_every_schedule_but_step_on_a_short_run():
    for name in SCHEDULES:
        config = ScheduleConfig(name=name)
        if name == "step":  # default milestones 30/60/90 suit a 90-epoch run
            validate_schedule(config, 90)
            with pytest.raises(CnnlabError, match=r"schedule.step_epochs=\[30, 60, 90\] must not go beyond"):
                validate_schedule(config, EPOCHS)
        else:
            validate_schedule(config, EPOCHS)


@pytest.mark.parametrize("changes, message", [
    ({"name": "linear"}, "schedule.name='linear' is not allowed: choose one of constant, step, cosine, cyclic, onecycle"),
    ({"warmup_epochs": -1.0}, "schedule.warmup_epochs=-1.0 must not be negative"),
    ({"warmup_epochs": 10.0}, "schedule.warmup_epochs=10.0 must be shorter than the run (train.epochs=10)"),
    ({"warmup_start": 1.5}, "schedule.warmup_start=1.5 must lie in [0, 1]"),
    ({"name": "step", "step_epochs": [5, 3]}, "schedule.step_epochs=[5, 3] must be strictly increasing"),
    ({"name": "step", "step_epochs": [5, 20]}, "schedule.step_epochs=[5, 20] must not go beyond the run (train.epochs=10)"),
    ({"name": "step", "step_epochs": [0, 5]}, "schedule.step_epochs=[0, 5] must all be at least 1"),
    ({"name": "step", "step_epochs": [2, 5], "warmup_epochs": 3.0}, "must all come after the warmup"),
    ({"name": "step", "step_epochs": []}, "schedule.step_epochs must list at least one epoch"),
    ({"step_gamma": -0.1}, "schedule.step_gamma=-0.1 must lie in (0, 1]"),
    ({"min_lr_factor": -0.1}, "schedule.min_lr_factor=-0.1 must lie in [0, 1]"),
    ({"cycles": 0}, "schedule.cycles=0 must lie in 1..10000000"),
    ({"cycles": 10**9}, "schedule.cycles=1000000000 must lie in 1..10000000"),
    ({"onecycle_pct": 1.5}, "schedule.onecycle_pct=1.5 must lie in (0, 1)"),
    ({"onecycle_div": 0.5}, "schedule.onecycle_div=0.5 must be at least 1"),
    ({"onecycle_final_div": -1.0}, "schedule.onecycle_final_div=-1.0 must be at least 1"),
    ({"name": "onecycle", "warmup_epochs": 1.0}, "schedule.warmup_epochs=1.0 must be 0 for schedule.name='onecycle'"),
])
def test_validation_names_the_field(changes, message):
    config = ScheduleConfig(**changes)
    with pytest.raises(CnnlabError) as caught:
        validate_schedule(config, EPOCHS)
    assert message in str(caught.value)


def test_validation_lists_every_problem_at_once():
    with pytest.raises(CnnlabError) as caught:
        validate_schedule(ScheduleConfig(cycles=0, min_lr_factor=2.0), EPOCHS)
    assert "schedule.cycles=0" in str(caught.value) and "schedule.min_lr_factor=2.0" in str(caught.value)


def test_cosine_factor_is_the_closed_form_by_hand():
    # The mid-point of a cosine to floor 0.2 is (1 + 0.2) / 2.
    config = ScheduleConfig(name="cosine", min_lr_factor=0.2)
    assert lr_factor(config, 40, TOTAL, STEPS_PER_EPOCH) == pytest.approx(0.6, abs=1e-12)
    assert lr_factor(config, 20, TOTAL, STEPS_PER_EPOCH) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)



@pytest.mark.parametrize("name", [n for n in SCHEDULES if n != "onecycle"])
def test_a_warmup_shorter_than_half_a_step_is_one_step_not_none(name):
    # 0.04 epochs of 9 steps is 0.36 of a step: rounded half up it was none, and the run started at the peak rate.
    config = ScheduleConfig(name=name, warmup_epochs=0.04, warmup_start=0.0, step_epochs=[2], cycles=2)
    assert warmup_steps(config, 9) == 1
    assert cnnlab_factors(config, total=27, steps_per_epoch=9)[0] == 0.0  # step 0 at warmup_start
    no_warmup = replace(config, warmup_epochs=0.0)
    assert warmup_steps(no_warmup, 9) == 0 and cnnlab_factors(no_warmup, total=27, steps_per_epoch=9)[0] == 1.0


def test_a_one_step_warmup_then_cosine_matches_sequential_linear_and_cosine():
    config = ScheduleConfig(name="cosine", warmup_epochs=0.04, warmup_start=0.1)
    reference = torch_factors(with_warmup(1, 0.1, lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=26)), total=27)
    assert_same(cnnlab_factors(config, total=27, steps_per_epoch=9), reference)


def _suggested_warmup(problem: str) -> float | None:
    """The warmup_epochs the refusal suggests, or None where it says to set it to 0."""
    found = re.search(r"shorten schedule.warmup_epochs to ([0-9.e-]+) or less", problem)
    if found:
        return float(found.group(1))
    assert "set schedule.warmup_epochs to 0" in problem, problem
    return None


@pytest.mark.parametrize("steps_per_epoch, epochs", [(1, 2), (9, 2), (7, 3), (422, 2), (3, 40), (2000, 1)])
def test_a_warmup_of_the_whole_run_is_named_with_a_length_that_leaves_the_schedule_room(steps_per_epoch, epochs):
    total = steps_per_epoch * epochs
    warmup_epochs = epochs - 0.49 / steps_per_epoch  # below train.epochs, as the config's check asks, but rounds to all
    for name in ("cosine", "constant"):
        config = ScheduleConfig(name=name, warmup_epochs=warmup_epochs)
        assert warmup_steps(config, steps_per_epoch) == total
        problem = overlong_warmup(config, total, steps_per_epoch)
        assert problem and f"all of this run's {total} steps" in problem
        suggested = _suggested_warmup(problem)
        # what the schedule needs after the warmup; a run with no room for a warmup step besides needs only one
        needed = steps_to_fall(config) if total > steps_to_fall(config) else 1
        assert suggested is not None  # every run here has room for a warmup step
        shortened = ScheduleConfig(name=name, warmup_epochs=suggested)
        assert 0 < warmup_steps(shortened, steps_per_epoch) < total
        assert overlong_warmup(shortened, total, steps_per_epoch) is None
        # the longest such warmup to a thousandth of an epoch: a thousandth more is a step too many
        room = total - needed
        assert room - steps_per_epoch / 1000 <= warmup_steps(shortened, steps_per_epoch) <= room
        longer = ScheduleConfig(name=name, warmup_epochs=round(suggested + 0.001, 3))
        assert warmup_steps(longer, steps_per_epoch) > room and overlong_warmup(longer, total, steps_per_epoch)
        assert "after train.probe_epochs" in overlong_warmup(config, total, steps_per_epoch, after_probe=True)


def test_the_suggested_warmup_fits_wherever_float_rounding_lands_it_on_the_half_step():
    """(steps + 0.5) / steps_per_epoch * 1000 a hair above a whole number made the suggestion the bound itself:
    33 epochs of 5 steps was told "32.7 or less", and 32.7 (164 steps) was refused again. Every suggestion over a
    grid of runs rounds to the steps it leaves room for, and a thousandth more to one step too many."""
    checked = 0
    for steps_per_epoch in (1, 3, 5, 7, 9, 100, 391):
        for epochs in range(1, 70):
            total = steps_per_epoch * epochs
            for room in range(max(1, total - 3), total):
                suggested = _longest_warmup_epochs(room, steps_per_epoch)
                assert warmup_steps(ScheduleConfig(warmup_epochs=suggested), steps_per_epoch) <= room, (
                    steps_per_epoch, epochs, room, suggested)
                longer = ScheduleConfig(warmup_epochs=round(suggested + 0.001, 3))
                assert warmup_steps(longer, steps_per_epoch) > room, (steps_per_epoch, epochs, room, suggested)
                checked += 1
    assert checked > 1000
    problem = overlong_warmup(ScheduleConfig(name="cosine", warmup_epochs=33), 165, 5)
    assert overlong_warmup(ScheduleConfig(name="cosine", warmup_epochs=_suggested_warmup(problem)), 165, 5) is None


def factors_after_warmup(config: ScheduleConfig, total: int, steps_per_epoch: int) -> list[float]:
    return [lr_factor(config, step, total, steps_per_epoch)
            for step in range(warmup_steps(config, steps_per_epoch), total)]


def test_a_warmup_that_leaves_a_cosine_one_step_is_refused_because_the_rate_never_falls():
    # 1.9 of 2 epochs of 9 steps is 17 of 18 steps: the cosine's one step is its top, and the run ends at the peak
    refused = ScheduleConfig(name="cosine", warmup_epochs=1.9)
    assert factors_after_warmup(refused, 18, 9) == [1.0]
    problem = overlong_warmup(refused, 18, 9)
    assert "leaves the cosine schedule after it 1 step" in problem and "never fall below the peak" in problem
    suggested = ScheduleConfig(name="cosine", warmup_epochs=_suggested_warmup(problem))
    assert overlong_warmup(suggested, 18, 9) is None and min(factors_after_warmup(suggested, 18, 9)) < 1.0
    # a long warmup with room for the rate to fall runs as asked: the rule is the schedule's need, not a share
    assert overlong_warmup(ScheduleConfig(name="cosine", warmup_epochs=1.8), 18, 9) is None  # 16 of 18 steps
    # a floor of 1 never falls by design, so one step after the warmup is enough
    assert overlong_warmup(ScheduleConfig(name="cosine", warmup_epochs=1.9, min_lr_factor=1.0), 18, 9) is None


def test_a_cyclic_schedule_needs_a_step_more_than_its_cycles_after_the_warmup():
    refused = ScheduleConfig(name="cyclic", cycles=3, warmup_epochs=1.7)  # 15 of 18 steps: 3 cycles of one step
    assert factors_after_warmup(refused, 18, 9) == [1.0, 1.0, 1.0]
    problem = overlong_warmup(refused, 18, 9)
    assert "each of its 3 cycles starts at the peak" in problem and "set schedule.cycles to 2 or fewer" in problem
    fewer = replace(refused, cycles=2)
    assert overlong_warmup(fewer, 18, 9) is None and min(factors_after_warmup(fewer, 18, 9)) < 1.0
    allowed = ScheduleConfig(name="cyclic", cycles=3, warmup_epochs=_suggested_warmup(problem))
    assert overlong_warmup(allowed, 18, 9) is None and min(factors_after_warmup(allowed, 18, 9)) < 1.0


def test_schedules_that_need_one_step_and_runs_too_short_for_any_warmup_keep_the_old_rule():
    # constant never falls and step falls at its milestones: a warmup leaving one step is theirs to choose
    assert overlong_warmup(ScheduleConfig(name="constant", warmup_epochs=1.9), 18, 9) is None
    assert overlong_warmup(ScheduleConfig(name="step", warmup_epochs=1.9, step_epochs=[2]), 18, 9) is None
    assert overlong_warmup(ScheduleConfig(name="onecycle"), 18, 9) is None
    assert "set schedule.warmup_epochs to 0" in overlong_warmup(ScheduleConfig(name="step", warmup_epochs=0.1), 1, 1)
    # no room for a warmup step and the schedule's fall both: a 2-step smoke test of a cosine, 4 steps for 4 cycles
    assert overlong_warmup(ScheduleConfig(name="cosine", warmup_epochs=0.5), 2, 2) is None
    assert overlong_warmup(ScheduleConfig(name="cyclic", cycles=4, warmup_epochs=0.3), 4, 4) is None
    assert overlong_warmup(ScheduleConfig(name="cyclic", cycles=3, warmup_epochs=0.3), 3, 3) is None
    # one step more gives that room, and the warmup must then leave the fall its steps
    assert "leaves the cosine schedule after it 1 step" in overlong_warmup(
        ScheduleConfig(name="cosine", warmup_epochs=2 / 3), 3, 3)


# --- step milestones that never take effect ---------------------------------------------------------------


@pytest.mark.parametrize("milestones", [[3, 7], [5, 10], [9], [10], [1, 9, 10]])
def test_the_milestones_named_as_unreached_are_those_torch_never_applies(milestones):
    """torch's MultiStepLR over the 10 epochs (8 steps each) lowers the rate at a milestone only when a step of
    the run lies at or after it: a milestone at the run's last epoch, 10, never does."""
    factors = torch_factors(lambda opt: lr_scheduler.MultiStepLR(
        opt, milestones=[m * STEPS_PER_EPOCH for m in milestones], gamma=0.1))
    applied = round(-math.log10(min(factors)))  # how many milestones lowered the rate in the run
    problem = unreached_milestones(ScheduleConfig(name="step", step_epochs=milestones), EPOCHS)
    unreached = milestones[applied:]
    assert (problem is None) == (not unreached)
    if unreached:
        assert f"has {', '.join(map(str, unreached))}, the end of the run (train.epochs=10)" in problem
        assert "Set the milestone to 9 or less (the largest that takes effect)" in problem
    # and cnnlab's own factor agrees with torch's at every step
    ours = [lr_factor(ScheduleConfig(name="step", step_epochs=milestones), step, TOTAL, STEPS_PER_EPOCH)
            for step in range(TOTAL)]
    assert ours == pytest.approx(factors, rel=1e-9)


def test_a_one_epoch_run_has_no_milestone_that_works():
    problem = unreached_milestones(ScheduleConfig(name="step", step_epochs=[1]), 1)
    assert "A run of one epoch has no epoch after a milestone" in problem
    assert unreached_milestones(ScheduleConfig(name="cosine", step_epochs=[1]), 1) is None  # ignored there


def test_a_new_run_with_a_milestone_at_its_end_is_refused_before_its_folder_is_written(tmp_path, monkeypatch):
    from cnnlab.config import RunConfig, apply_overrides, load_config
    from cnnlab.train import engine, schedule

    config = apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=4,train=64,val=32,test=32", "train.batch_size=16",
        "train.epochs=3", "schedule.name=step", "schedule.step_epochs=[1, 3]", "train.deterministic=true",
        "log.quiet=true", "log.curves=false"])
    with pytest.raises(CnnlabError, match=r"schedule.step_epochs=\[1, 3\] has 3, the end of the run "
                                          r"\(train.epochs=3\).*Set the milestone to 2 or less"):
        engine.train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()
    # A run started before the check (here: with it turned off) still resumes, as it started
    monkeypatch.setattr(schedule, "unreached_milestones", lambda *args, **kwargs: None)

    def stop_after_epoch_1(row):
        raise KeyboardInterrupt

    assert engine.train(config, tmp_path / "run", on_epoch_end=stop_after_epoch_1).interrupted
    monkeypatch.undo()
    result = engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    assert not result.interrupted and result.final["epoch"] == 3
