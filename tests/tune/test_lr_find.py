"""The LR range test: the rule on synthetic curves (clean, spiked, noisy, flat) and a real sweep on digits."""

import json
import math

import numpy as np
import pytest
import torch

from cnnlab.config import RunConfig
from cnnlab.data.loaders import make_loader
from cnnlab.errors import CnnlabError
from cnnlab.train.engine import build_run, seed_everything, training_loss
from cnnlab.train.optim import build_optimizer
from cnnlab.tune.lr_find import (LrSweep, filter_losses, lr_sweep, save_lr_plot, short_sweep_warning, suggest_lr,
                                 sweep_json)

LRS = np.geomspace(1e-7, 10.0, 100)  # the default sweep: 100 steps over 8 decades
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lecture_curve(lrs):
    """Flat at 2.3 up to lr 1e-4, falling linearly in log10(lr) to 0.3 at lr 0.1, exploding after."""
    x = np.log10(lrs)
    falling = 2.3 - 2.0 * np.clip((x + 4) / 3, 0, 1)
    exploding = np.where(x > -1, 0.3 * (np.exp(3.0 * (x + 1)) - 1), 0.0)
    return falling + exploding


def nearest(lr):
    return int(np.argmin(np.abs(np.log(LRS / lr))))


def naive_rule(lrs, losses):
    """fastai's 'minimum' rule on the raw curve: the lr at the lowest loss / 10."""
    return lrs[int(np.argmin(losses))] / 10


# ---------------------------------------------------------------------------------------------
# the rule


def test_clean_curve_suggests_a_tenth_of_the_minimum():
    suggestion, min_loss_lr, smoothed, rule = suggest_lr(LRS, lecture_curve(LRS))
    assert 1e-2 / 1.5 < suggestion < 1e-2 * 1.5  # the true minimum is at lr 0.1
    assert 0.1 / 1.5 < min_loss_lr < 0.1 * 1.5
    assert len(smoothed) == len(LRS)
    assert "median" in rule and "divided by 10" in rule


def test_one_spike_either_way_does_not_move_the_suggestion():
    clean = lecture_curve(LRS)
    reference, _, _, _ = suggest_lr(LRS, clean)

    high_early = clean.copy()
    high_early[nearest(1e-4)] = 1000.0  # one batch with a huge loss before anything trains
    low_late = clean.copy()
    low_late[nearest(3.0)] = 0.01  # one lucky batch deep in the explosion

    for spiked in (high_early, low_late):
        suggestion, _, _, _ = suggest_lr(LRS, spiked)
        assert suggestion == pytest.approx(reference, rel=0.1)
    # the raw minimum rule falls for the low spike: it suggests 30x the right rate
    assert naive_rule(LRS, clean) == pytest.approx(1e-2, rel=0.5)
    assert naive_rule(LRS, low_late) > 10 * reference


def test_noisy_curves_still_suggest_about_a_tenth_of_the_minimum():
    generator = np.random.default_rng(0)
    for _ in range(5):
        noisy = lecture_curve(LRS) * (1 + 0.1 * generator.standard_normal(len(LRS)))  # 10% batch noise
        suggestion, _, _, _ = suggest_lr(LRS, noisy)
        assert 1e-2 / 1.5 < suggestion < 1e-2 * 1.5


def test_a_flat_curve_has_no_suggestion_and_says_why():
    flat = 2.3 * (1 + 0.002 * np.random.default_rng(1).standard_normal(len(LRS)))
    suggestion, min_loss_lr, _, rule = suggest_lr(LRS, flat)
    assert suggestion is None and min_loss_lr is None
    assert "never fell" in rule
    # and what to do (it stopped at the reason): the sweep ended below the rates that move the loss
    assert "Sweep to a higher end_lr (--end-lr; 10 is usual)" in rule
    # ... unless it stopped before its end, where the loss diverged: higher rates only break it
    diverged = suggest_lr(LRS, flat, reached_end=False)[3]
    assert "higher end_lr" not in diverged and "stayed flat until it diverged" in diverged
    # one huge first-batch loss must not become the 'start' that everything after falls below
    spiked = flat.copy()
    spiked[1] = 1000.0
    assert suggest_lr(LRS, spiked)[0] is None
    assert suggest_lr(LRS, spiked, median_window=1)[0] is not None  # without the median it is fooled


def test_the_suggestion_never_lies_where_the_loss_had_not_started_falling():
    # flat up to lr 1e-2, a short fall to the minimum at 3e-2, then the explosion: min / 10 is 3e-3,
    # where nothing trains, so the rule moves up to where the filtered loss first fell 1%
    x = np.log10(LRS)
    top = math.log10(3e-2)
    short_fall = np.where(x < -2, 2.3, 2.3 - 1.5 * np.clip((x + 2) / (top + 2), 0, 1))
    short_fall += np.where(x > top, 0.8 * (np.exp(3.0 * (x - top)) - 1), 0.0)
    suggestion, min_loss_lr, smoothed, _ = suggest_lr(LRS, short_fall)
    first_fall = LRS[int(np.argmax(np.asarray(smoothed) <= 0.99 * smoothed[0]))]
    assert suggestion == first_fall
    assert suggestion > min_loss_lr / 10
    assert 5e-3 < suggestion < min_loss_lr


def test_a_curve_still_falling_at_the_end_says_so():
    falling = 2.3 - 0.2 * np.log10(LRS / LRS[0])  # no minimum inside the range
    suggestion, min_loss_lr, _, rule = suggest_lr(LRS, falling)
    assert min_loss_lr == LRS[-1] and suggestion == pytest.approx(LRS[-1] / 10)
    assert "still falling" in rule


def test_a_curve_still_falling_when_high_last_batches_lift_its_end_says_so():
    # The filters' windows are clipped at the end: two slightly high last batches lift the last filtered value
    # above the one before, so the minimum sits a step short of the end though the loss was still falling there.
    steps = np.arange(len(LRS))
    levelling = 0.5 + 1.8 * np.exp(-steps / 20)  # still falling, ever more slowly, at the last lr
    lifted = levelling.copy()
    lifted[-2:] += 0.005
    suggestion, min_loss_lr, smoothed, rule = suggest_lr(LRS, lifted)
    assert int(np.argmin(smoothed)) == len(LRS) - 2 and min_loss_lr == LRS[-2]
    assert "still falling at the last lr (the filtered minimum lies 1 step before the end" in rule
    assert "raise end_lr (--end-lr)" in rule  # the option's name too, as the module's other messages give it
    # a curve that turned up before the end, or whose filtered loss clearly rose after the minimum, gets no such line
    assert "still falling" not in suggest_lr(LRS, lecture_curve(LRS))[3]
    turned = levelling.copy()
    turned[-2:] += 0.05
    assert "still falling" not in suggest_lr(LRS, turned)[3]


def test_a_non_finite_last_loss_is_left_out():
    clean = lecture_curve(LRS)
    reference, _, _, _ = suggest_lr(LRS, clean)
    broken = clean.copy()
    broken[-1] = math.nan
    suggestion, _, smoothed, _ = suggest_lr(LRS, broken)
    assert suggestion == pytest.approx(reference, rel=0.1)
    assert math.isnan(smoothed[-1]) and all(math.isfinite(value) for value in smoothed[:-1])


def test_the_stop_filter_ignores_one_high_batch_but_not_two():
    # the sweep stops when filter_losses(...)[-1] passes 4 x its minimum
    one_spike = filter_losses([2.3] * 20 + [100.0])
    assert one_spike[-1] < 4 * one_spike.min()
    two_spikes = filter_losses([2.3] * 20 + [100.0, 100.0])
    assert two_spikes[-1] > 4 * two_spikes.min()


# ---------------------------------------------------------------------------------------------
# a real sweep


@pytest.fixture(scope="module")
def one_thread():
    # LeNet on 32 x 32 digits is tiny: on 2 busy cores one thread is several times faster than two
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_config(one_thread, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse cache fixture is per test
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cnnlab-cache")))
        config = RunConfig()
        config.data.spec = "digits"
        config.model.name = "lenet5"
        config.train.batch_size = 32
        config.train.device = "cpu"
        yield config


@pytest.fixture(scope="module")
def sweep(digits_config):
    calls = []
    result = lr_sweep(digits_config, start_lr=1e-7, end_lr=1e3, num_steps=60,
                      progress=lambda *args: calls.append(args))
    assert calls == [(step + 1, 60, lr, loss) for step, (lr, loss) in enumerate(zip(result.lrs, result.losses))]
    return result


def mean_loss_after_training(config, lr, steps=30, last=10):
    """Mean training loss of the last ``last`` of ``steps`` steps at a constant lr, from the sweep's initial weights."""
    seed_everything(config.train.seed, False)
    dataset, stats, model, aug = build_run(config, torch.device("cpu"))
    loader = make_loader(dataset, "train", stats, train=True, aug=aug, batch_size=config.train.batch_size)
    optimizer = build_optimizer(model, config.optim, config.train.batch_size)
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for _, (x, y) in zip(range(steps), loader):  # 30 steps: fewer than the 39 batches of one epoch
        loss, _ = training_loss(model(x), y, 0.0, config.train.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses[-last:]))


def test_sweep_lrs_are_geometric_and_it_stops_when_the_loss_explodes(sweep):
    steps = len(sweep.lrs)
    assert steps < 60 and sweep.stopped.startswith("diverged at lr")
    expected = 1e-7 * (1e3 / 1e-7) ** (np.arange(steps) / 59)
    np.testing.assert_allclose(sweep.lrs, expected, rtol=1e-12)
    assert len(sweep.losses) == len(sweep.smoothed) == steps
    assert max(sweep.losses[-3:]) > 3 * min(sweep.losses)  # it really exploded


def test_sweep_suggests_a_rate_that_trains(sweep, digits_config):
    assert sweep.suggestion is not None
    assert 1e-7 < sweep.suggestion < sweep.min_loss_lr < sweep.lrs[-1]
    assert min(sweep.smoothed) < 0.95 * sweep.smoothed[0]  # the loss went down along the sweep
    at_suggestion = mean_loss_after_training(digits_config, sweep.suggestion)
    at_start = mean_loss_after_training(digits_config, 1e-7)
    assert at_suggestion < at_start - 0.05


def test_sweep_json_and_plot(sweep, tmp_path):
    data = sweep_json(sweep)
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity
    assert json.loads(text)["suggestion"] == sweep.suggestion and data["steps"] == len(sweep.lrs)
    path = save_lr_plot(sweep, tmp_path / "lr.png")
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 1000
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_plot_without_suggestion_and_with_a_nan(tmp_path):
    losses = [2.3] * 30 + [math.nan]
    suggestion, min_loss_lr, smoothed, rule = suggest_lr(LRS[:31], losses)
    flat = LrSweep(lrs=list(LRS[:31]), losses=losses, smoothed=smoothed, suggestion=suggestion,
                   min_loss_lr=min_loss_lr, rule=rule, stopped="non-finite loss at lr 1e-4 (step 31)")
    assert json.loads(json.dumps(sweep_json(flat), allow_nan=False))["losses"][-1] is None
    assert save_lr_plot(flat, tmp_path / "flat.png").read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(CnnlabError, match="png"):
        save_lr_plot(flat, tmp_path / "flat.jpg")


@pytest.mark.parametrize("losses, reason", [([2.3] * 30, "no suggestion: the filtered loss never fell 1% below its start"),
                                            ([2.3] + [math.nan] * 29, "no suggestion: fewer than 2 finite losses were recorded")])
def test_the_plot_says_why_there_is_no_suggestion_as_the_rule_does(tmp_path, monkeypatch, losses, reason):
    import matplotlib.axes

    labels = []
    legend = matplotlib.axes.Axes.legend

    def recording(ax, *args, **kwargs):
        labels.extend(ax.get_legend_handles_labels()[1])
        return legend(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", recording)
    suggestion, min_loss_lr, smoothed, rule = suggest_lr(LRS[:30], losses)
    sweep = LrSweep(lrs=list(LRS[:30]), losses=losses, smoothed=smoothed, suggestion=suggestion,
                    min_loss_lr=min_loss_lr, rule=rule, stopped="reached end_lr")
    save_lr_plot(sweep, tmp_path / "lr.png")
    assert suggestion is None and [label for label in labels if label.startswith("no suggestion")] == [reason]


@pytest.mark.parametrize("arguments", [{"start_lr": 1.0, "end_lr": 1e-3}, {"num_steps": 3}, {"diverge_factor": 1.0}])
def test_bad_arguments_are_refused_before_any_work(arguments):
    with pytest.raises(CnnlabError):
        lr_sweep(RunConfig(), **arguments)


def test_sweep_trains_through_the_engine_step_with_the_run_loss(digits_config, monkeypatch):
    import copy

    from cnnlab.train import engine

    seen, original = [], engine.training_loss

    def recording(output, target, smoothing, aux_weight):
        seen.append((smoothing, aux_weight))
        return original(output, target, smoothing, aux_weight)

    monkeypatch.setattr(engine, "training_loss", recording)
    config = copy.deepcopy(digits_config)
    config.aug.label_smoothing, config.train.aux_weight = 0.2, 0.5
    result = lr_sweep(config, num_steps=12)
    assert len(seen) == len(result.lrs) and set(seen) == {(0.2, 0.5)}


def recorded_groups(monkeypatch, key: str) -> list:
    """Every training step's [(lr, group[key]) per optimiser group], recorded as the sweep runs them."""
    from cnnlab.train import engine

    seen, original = [], engine.train_step

    def recording(model, x, y, optimizer, *args, **kwargs):
        seen.append([(group["lr"], group[key]) for group in optimizer.param_groups])
        return original(model, x, y, optimizer, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording)
    return seen


def test_every_group_sweeps_at_its_own_ratio_to_the_first(digits_config, monkeypatch):
    """With Muon the hidden weights' group peaks at muon_lr, the others at lr: the sweep moves them together,
    each at its peak's ratio to the first group's, and records the first group's rate."""
    import copy

    config = copy.deepcopy(digits_config)
    config.optim.name, config.optim.lr, config.optim.muon_lr = "muon", 0.1, 0.02
    seen = recorded_groups(monkeypatch, "peak_lr")
    result = lr_sweep(config, num_steps=12)
    peaks = {peak for step in seen for _, peak in step}
    assert peaks == {0.1, 0.02}  # two rates to keep apart
    for lr, groups in zip(result.lrs, seen):
        assert groups[0][0] == pytest.approx(lr, rel=1e-12)
        for rate, peak in groups:
            assert rate == pytest.approx(lr * peak / 0.1, rel=1e-12)


def test_the_sweep_lr_is_optim_lrs_when_the_backbone_learns_faster(digits_config, monkeypatch, tmp_path):
    """From a trained run with optim.backbone_lr_mult=4 the backbone's groups come first (fastest first): the
    recorded lr, and so the suggestion that --lr takes, must still be the rate of optim.lr's parameters (the
    head's), with the backbone at 4x it."""
    import copy

    from cnnlab.train import engine

    source = copy.deepcopy(digits_config)
    source.train.epochs, source.log.quiet = 1, True
    source_run = engine.train(source, tmp_path / "source").run_dir
    config = copy.deepcopy(digits_config)
    config.model.init_from, config.optim.backbone_lr_mult = str(source_run), 4.0
    seen = recorded_groups(monkeypatch, "lr_scale")
    result = lr_sweep(config, num_steps=12)
    assert {scale for step in seen for _, scale in step} == {1.0, 4.0}
    assert seen[0][0][1] == 4.0  # the backbone's group is first, as build_optimizer orders them
    for lr, groups in zip(result.lrs, seen):
        for rate, scale in groups:
            assert rate == pytest.approx(lr * scale, rel=1e-12)


def test_a_sweep_too_short_for_the_filters_is_warned_about():
    """The filters read 11 steps for each filtered loss: over 15 steps a fall of 19% and a 7.7x blow-up (LeNet-5 on
    the digits) are smoothed into "never fell", which the warning says may not be what the loss did."""
    losses = [2.30] * 10 + [2.26, 2.13, 1.87, 3.49, 17.71]
    lrs = np.geomspace(1e-7, 10.0, len(losses))
    suggestion, _, _, rule = suggest_lr(lrs, losses)
    assert suggestion is None and "never fell" in rule and min(losses) < 0.85 * losses[0]
    warning = short_sweep_warning(1e-7, 10.0, 15)
    reach = 5 + 7 - 1  # the running median's and the running mean's steps, less the one they share
    assert warning is not None and f"reads {reach} steps" in warning
    assert f"{8 * reach / 14:.1f} decades" in warning and f"{4 * reach} steps or more" in warning
    assert short_sweep_warning(1e-7, 10.0, 4 * reach - 1) is not None
    assert short_sweep_warning(1e-7, 10.0, 4 * reach) is None and short_sweep_warning(1e-7, 10.0, 100) is None


@pytest.mark.parametrize("arguments, named", [(dict(start_lr="a"), 'start_lr must be a number, got "a"'),
                                              (dict(end_lr=None), "end_lr must be a number, got null"),
                                              (dict(num_steps="100"), "whole number of at least 12 steps"),
                                              # past float32: torch's SGD step overflowed (RuntimeError)
                                              (dict(end_lr=1e300), r"end_lr <= 1e\+30, got .*end_lr=1e\+300"),
                                              (dict(device="tpu"), "^device='tpu' is not a device")])
def test_a_range_test_argument_of_the_wrong_type_is_refused_in_words(arguments, named):
    """Text or None used to fail the sweep's comparisons with a TypeError, before any training."""
    from cnnlab.config import RunConfig
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match=named):
        lr_sweep(RunConfig(), **arguments)


def _falling_to(lrs):
    """A range test's loss: 2.3 at the smallest lr, falling to 0.8 by lr 1e-2 and still falling a little."""
    return list(2.3 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 2.5) * 3)))


def test_a_blow_up_in_the_last_step_is_no_loss_still_falling():
    """The centred filters read the last steps in part: one exploded last loss (20 at lr 1) hid behind the median,
    and the rule said the loss was still falling there and to raise end_lr. It blew up: the minimum is read
    before it, and the text says so."""
    lrs = np.geomspace(1e-5, 1, 100)
    calm = _falling_to(lrs)
    exploded = [*calm[:-1], 20.0]
    _, calm_min, _, calm_rule = suggest_lr(lrs, calm)
    assert "still falling at the last lr" in calm_rule and calm_min == lrs[-1]  # a curve that does still fall
    suggestion, min_loss_lr, smoothed, rule = suggest_lr(lrs, exploded)
    smoothed = np.asarray(smoothed)
    assert "still falling" not in rule and "raise end_lr" not in rule
    assert "The raw loss blew up at the end (20 at lr 1" in rule
    assert min_loss_lr < lrs[-1] and suggestion == pytest.approx(min_loss_lr / 10)
    # the minimum the suggestion reads is the one the text names, not the filtered lowest at the blow-up
    assert rule.endswith(f"so the minimum is read before that lr: {smoothed[lrs == min_loss_lr][0]:.4g} at lr "
                         f"{min_loss_lr:.2g}.")


def test_a_loss_that_rises_from_the_first_lr_says_so_and_quotes_the_first_loss():
    """A sweep that starts past divergence: the filtered start already reads later, larger losses (26.5 for a
    first loss of 2.31), and 'never fell below its start' alone hid that the loss rose from the first step."""
    lrs = np.geomspace(5, 1000, 30)
    losses = [2.31 * 1.8 ** k for k in range(30)]
    suggestion, min_loss_lr, _, rule = suggest_lr(lrs, losses)
    assert suggestion is None and min_loss_lr is None
    assert "the first step's own loss 2.31" in rule
    assert "The loss rose from the first lr on" in rule and "--start-lr" in rule
    assert "higher end_lr" not in rule  # sweeping further would not help a loss that rose from the start
    flat = suggest_lr(lrs, [2.31] * 30)[3]  # a flat sweep is not called rising
    assert "never fell" in flat and "rose from the first lr" not in flat
    for seed in range(20):  # nor one whose first batch happened to be a little low
        noisy = 2.3 * np.exp(np.random.default_rng(seed).normal(0, 0.02, 30))
        assert "rose from the first lr" not in suggest_lr(lrs, noisy)[3]


def test_a_loss_that_rose_at_its_first_update_is_told_to_start_lower():
    """The first steps' median already reads the risen losses (402929 among [2.33, 402929, 8.6e19]; 20 among
    [2.3, 20, 20]): against it the curve looked flat. The loss before any update (step 1's) is the reference."""
    lrs = np.geomspace(1e-7, 10, 100)
    rule = suggest_lr(lrs, [2.3] + [20.0] * 99)[3]
    assert "The loss rose from the first lr on" in rule and "higher end_lr" not in rule
    lrs = np.geomspace(50, 1e3, 44)[:4]
    rule = suggest_lr(lrs, [2.331, 402929.0, 8.6e19, float("nan")], reached_end=False)[3]
    assert "The loss rose from the first lr on" in rule and "stayed flat until it diverged" not in rule


def test_one_high_batch_at_the_end_that_the_next_step_undoes_is_no_blow_up():
    """The clipped filters hide a last spike; one the loss came back down from at the next step is batch noise,
    which the rule promises to ignore: not a blow-up that moves the minimum."""
    lrs = np.logspace(-4, -1, 100)
    # a loss still falling, with batch noise: its last raw losses are 0.049 0.066 0.065 0.068 0.16 0.061
    losses = 2.3 * np.exp(-np.linspace(0, 3.5, 100)) * np.exp(np.random.default_rng(17).normal(0, 0.35, 100))
    assert losses[-2] > 2 * losses[-1]
    _, min_loss_lr, _, rule = suggest_lr(lrs, losses)
    assert "blew up" not in rule and "still falling at the last lr" in rule and min_loss_lr >= lrs[-10]
