"""Curve reading: each rule fires on a synthetic history built to show it, and stays quiet on a near miss."""

import json
import math

import numpy as np
import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.checkpoint import save_weights
from cnnlab.train.engine import CHECKPOINT_BEST, CHECKPOINT_LAST
from cnnlab.train.logging import MetricsLog, StepLossLog, moving_average
from cnnlab.tune.diagnose import (
    NOT_CHECKED,
    NOTE,
    SPIKE_UNRESOLVED,
    VAL_NOT_FINITE,
    Finding,
    Thresholds,
    diagnose,
    diagnose_run,
    findings_json,
    findings_text,
)

T = Thresholds()


def make_steps(losses, lr=0.1):
    """steps.csv rows (1-based step numbers) for a loss array; lr a number or an array."""
    lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), (len(losses),))
    return [{"step": i + 1, "loss": float(losses[i]), "lr": float(lrs[i])} for i in range(len(losses))]


def healthy_losses(n=400, noise=0.05, seed=0):
    """A smooth exponential decay from 2.3 towards 0.2 with small multiplicative batch noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (0.2 + 2.1 * np.exp(-t / 80)) * (1 + noise * rng.standard_normal(n))


def make_metrics(train_loss, train_acc, val_loss, val_acc, lr=0.1, steps_per_epoch=20):
    """metrics.csv rows from per-epoch sequences (lr a number or a sequence)."""
    epochs = len(train_loss)
    lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), (epochs,))
    return [{"epoch": e + 1, "step": (e + 1) * steps_per_epoch, "train_loss": float(train_loss[e]),
             "train_acc": float(train_acc[e]), "val_loss": float(val_loss[e]), "val_acc": float(val_acc[e]),
             "lr": float(lrs[e])} for e in range(epochs)]


def healthy_metrics(epochs=20):
    """Smooth decrease, a 3-point gap, val accuracy levelled off at 95%: nothing to report."""
    e = np.arange(1, epochs + 1)
    decay = np.exp(-e / 3)
    train_loss = 0.1 + 2.0 * decay
    train_acc = 0.98 - 0.5 * decay
    return make_metrics(train_loss, train_acc, train_loss + 0.05, train_acc - 0.03)


def rules(findings):
    return [finding.rule for finding in findings]


def only(findings, rule):
    """The one finding of ``rule`` (fails if there is none)."""
    matches = [finding for finding in findings if finding.rule == rule]
    assert len(matches) == 1, f"expected one {rule} finding, got {rules(findings)}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# healthy


def test_healthy_run_has_no_findings():
    assert diagnose(healthy_metrics(), make_steps(healthy_losses()), num_classes=10) == []


def test_an_empty_history_is_refused_not_called_healthy():
    """[] means a healthy run: a run with no rows at all is none (diagnose_run refuses empty files alike)."""
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="diagnose was given no rows"):
        diagnose([], [])


def not_checked(findings):
    """The evidence of the NOT_CHECKED note ('' when every rule could read the run)."""
    notes = [finding for finding in findings if finding.rule == NOT_CHECKED]
    assert all(note.verdict == NOTE for note in notes) and len(notes) <= 1
    return notes[0].evidence if notes else ""


def test_rules_a_short_run_cannot_check_are_named_not_passed_in_silence():
    # 3 epochs and 100 steps: too few for flat_start (a 10-step window), still_improving (4 epochs), a plateau
    # (4: one that fell, then 2 flat after it) and a step decay (4 epochs); enough for noisy_loss (50 steps)
    findings = diagnose(healthy_metrics(3), make_steps(healthy_losses(100)))
    evidence = not_checked(findings)
    assert findings[0].rule == NOT_CHECKED  # notes come first
    assert ("flat_start and rising_start (they read the first 10% of the steps, 10 of this run's 100, and need 20)"
            in evidence)
    # 3 epochs with a val loss: enough for the val-loss rise (a minimum 2 epochs before the last)
    assert "overfitting" not in evidence
    assert "still_improving (needs 4 epochs with a val accuracy, the run has 3)" in evidence
    assert "late_decay and early_decay (need 4 epochs, the run has 3)" in evidence
    assert "noisy_loss" not in evidence and "plateau_no_decay (needs 4 epochs, the run has 3)" in evidence
    text = findings_text([f for f in findings if f.verdict == NOTE])
    assert text.endswith("No problems found in the curves by the rules that could read them.")
    # the edges: 191 steps give flat_start its 20-step window, 49 steps are too few for noisy_loss
    assert "flat_start" not in not_checked(diagnose(healthy_metrics(), make_steps(healthy_losses(191))))
    assert "flat_start" in not_checked(diagnose(healthy_metrics(), make_steps(healthy_losses(190))))
    assert "noisy_loss (needs 50 steps, the run has 49)" in not_checked(diagnose(healthy_metrics(),
                                                                              make_steps(healthy_losses(49))))
    short = not_checked(diagnose(healthy_metrics(2), make_steps(healthy_losses(18))))
    assert all(short.count(rule) == 1 for rule in ("noisy_loss", "still_improving", "plateau_no_decay"))
    assert "flat_start, rising_start and noisy_loss" in not_checked(diagnose(healthy_metrics(), []))  # no steps.csv
    assert "plateau_no_decay (needs 4 epochs, the run has 2)" in not_checked(diagnose(healthy_metrics(2), []))
    # a plateau needs an epoch that fell before its flat ones: 3 epochs are too few to tell one
    assert "plateau_no_decay (needs 4 epochs, the run has 3)" in not_checked(diagnose(healthy_metrics(3), []))
    # 2 epochs: too few for the val loss to rise after its minimum (the recipe's 2-epoch search trials)
    assert "overfitting's val-loss rise (needs 3 epochs with a val loss, the run has 2)" in not_checked(
        diagnose(healthy_metrics(2), []))
    # a metrics.csv without accuracies (another tool's, or cut by hand): the rules that read them are named
    no_accuracy = [{key: value for key, value in row.items() if key not in ("train_acc", "val_acc")}
                   for row in healthy_metrics(10)]
    assert ("underfitting and overfitting's accuracy gap (they read train_acc and val_acc, and the last epoch has no "
            "train_acc or val_acc)") in not_checked(diagnose(no_accuracy, make_steps(healthy_losses(400))))
    # thresholds move the bar, and a diverged run reports only that
    assert "still_improving" not in not_checked(diagnose(healthy_metrics(3), [],
                                                         thresholds=Thresholds(improving_min_epochs=3)))
    assert rules(diagnose(healthy_metrics(2), make_steps([2.3, 50.0, 80.0]))) == ["diverged"]


# ---------------------------------------------------------------------------------------------
# 1. flat_start


def hockey_stick(flat_steps, n=400, start=2.302585):
    """Loss stuck at ``start`` for ``flat_steps`` steps, then an exponential decay (noise-free)."""
    t = np.arange(n)
    return np.where(t < flat_steps, start, 0.2 + (start - 0.2) * np.exp(-(t - flat_steps) / 60))


def test_flat_start_fires_with_window_numbers():
    finding = only(diagnose([], make_steps(hockey_stick(100), lr=1e-4)), "flat_start")
    assert finding.verdict == "WARN"
    # 400 steps: the start is the first 40; the means are over its first and last 10 steps
    assert "mean loss 2.303 over steps 1-10, 2.303 over steps 31-40" in finding.evidence
    assert "0.0% lower across the first 10% of steps (lr 0.0001)" in finding.evidence
    assert "ln(" not in finding.evidence  # no class count given


def test_flat_start_compares_with_ln_classes():
    near = only(diagnose([], make_steps(hockey_stick(100)), num_classes=10), "flat_start")
    assert "start loss 2.303 vs ln(10) = 2.303" in near.evidence
    assert "raise optim.lr" in near.remedy
    # a start loss 2x ln(10) is an overconfident initialisation, not a low learning rate
    far = only(diagnose([], make_steps(hockey_stick(100, start=2 * math.log(10))), num_classes=10), "flat_start")
    assert "start loss 4.605 vs ln(10) = 2.303" in far.evidence
    assert "initialisation" in far.remedy


def test_flat_start_near_misses():
    # a slow but real fall: 3% over the start window is above the 2% bar
    t = np.arange(400)
    slow = 2.3 * (1 - 0.03 * t / 30)  # mean over steps 31-40 is 3.15% below the mean over steps 1-10
    assert "flat_start" not in rules(diagnose([], make_steps(slow)))
    # flat throughout, but 190 steps give a 19-step start window: too short to judge, rule skipped
    assert "flat_start" not in rules(diagnose([], make_steps(np.full(190, 2.3))))
    assert "flat_start" in rules(diagnose([], make_steps(np.full(200, 2.3))))


def test_a_loss_rising_at_the_start_is_not_called_flat_nor_given_a_higher_rate():
    """The lecture reads a loss that goes up early as a learning rate too high: 'raise optim.lr' would make it
    worse. A rise of 20% over the start window (short of diverged's 1.5x) is rising_start, not flat_start."""
    t = np.arange(400)
    rising = np.where(t < 40, 2.3 * (1 + 0.2 * t / 39), 2.76 * np.exp(-(t - 40) / 80) + 0.2)
    findings = diagnose([], make_steps(rising), num_classes=10)
    assert "flat_start" not in rules(findings) and "diverged" not in rules(findings)
    finding = only(findings, "rising_start")
    assert finding.verdict == "WARN" and "higher across the first 10% of steps" in finding.evidence
    assert "Lower optim.lr" in finding.remedy and "raise" not in finding.remedy.lower()
    # under the 2% bar either way it is flat: a loss that neither falls nor rises
    assert "flat_start" in rules(diagnose([], make_steps(np.where(t < 40, 2.3 * (1 + 0.01 * t / 39), 2.3))))
    # a rise of 3%, past that bar but short of rising_start's 5%, is neither: it was called flat, with "raise
    # optim.lr" as the remedy for a loss that goes up
    mild = diagnose([], make_steps(np.where(t < 40, 2.3 * (1 + 0.03 * t / 39), 2.3 * 1.03)), num_classes=10)
    assert "flat_start" not in rules(mild) and "rising_start" not in rules(mild)
    # a flat loss with batch noise is not rising, whichever way its two 10-step means happen to differ: a third of
    # such curves were told to lower the rate; one far above ln C is still the initialisation's
    for seed in range(40):
        noisy = 8.0 * np.exp(np.random.default_rng(seed).normal(0, 0.15, 400))
        findings = diagnose([], make_steps(noisy, lr=1e-5), num_classes=10)
        assert "rising_start" not in rules(findings)
        assert all("overconfident" in f.remedy for f in findings if f.rule == "flat_start")
    # the same rise under batch noise is still read as one
    noisy_rise = rising * np.exp(np.random.default_rng(0).normal(0, 0.05, 400))
    assert "rising_start" in rules(diagnose([], make_steps(noisy_rise), num_classes=10))


# ---------------------------------------------------------------------------------------------
# 2. diverged


def test_diverged_on_non_finite_step_loss():
    losses = np.linspace(2.31, 1.9, 37)
    losses[-1] = math.inf
    findings = diagnose(healthy_metrics(3), make_steps(losses, lr=1.2))
    assert len(findings) == 1  # the other rules are skipped
    finding = findings[0]
    assert (finding.rule, finding.verdict) == ("diverged", "FAIL")
    assert finding.evidence == "loss 2.31 at step 1 rose to inf at step 37 (lr 1.2)"


def test_a_non_finite_loss_at_the_first_step_is_not_blamed_on_the_learning_rate():
    # Step 1's loss is the starting weights' (the update comes after it): a lower rate cannot mend it
    finding = only(diagnose([], make_steps([math.nan, math.nan], lr=0.1)), "diverged")
    assert finding.verdict == "FAIL" and "before any update" in finding.title
    assert finding.evidence == "loss is nan at step 1 (lr 0.1), computed with the starting weights: the learning " \
                               "rate is not the cause"
    assert "optim.lr" not in finding.remedy and "model.init" in finding.remedy
    # a first recorded step after step 1 (a steps.csv trimmed at its start) came after updates: the rate may be it
    later = [{"step": 41, "loss": math.nan, "lr": 0.1}]
    assert "Lower optim.lr" in only(diagnose([], later), "diverged").remedy


def test_diverged_on_non_finite_epoch_loss():
    rows = healthy_metrics(4)
    rows[2]["train_loss"] = math.nan
    finding = only(diagnose(rows, []), "diverged")
    assert finding.evidence == "train_loss is nan at epoch 3 (lr 0.1)"


def test_a_non_finite_val_loss_with_finite_training_losses_is_not_called_divergence():
    # BatchNorm's running statistics overflowing in eval mode: val_loss nan from epoch 3, training fine throughout
    rows = healthy_metrics(5)
    for row in rows[2:]:
        row["val_loss"] = math.nan
    findings = diagnose(rows, make_steps(healthy_losses(100)))
    assert rules(findings) == [VAL_NOT_FINITE]  # the val curves are unreadable: the other rules are skipped
    finding = findings[0]
    assert finding.verdict == "FAIL" and "not training divergence" in finding.title
    assert finding.evidence == (f"val_loss is nan at epoch 3, the first such epoch, while train_loss is "
                                f"{rows[2]['train_loss']:.4g} there and every training loss recorded is finite")
    assert "running_var" in finding.remedy and "Lower optim.lr" not in finding.remedy
    assert findings_text(findings).startswith("FAIL val_not_finite: ")


def test_a_non_finite_val_loss_beside_a_training_loss_that_diverges_is_divergence():
    rows = healthy_metrics(5)
    rows[2]["val_loss"] = math.inf
    rows[3]["train_loss"] = math.nan  # training itself blew up later: the learning rate is the suspect
    assert only(diagnose(rows, []), "diverged").evidence == "train_loss is nan at epoch 4 (lr 0.1)"
    rows = healthy_metrics(5)
    rows[2]["val_loss"] = math.nan
    climbing = np.concatenate([np.linspace(2.0, 1.0, 100), np.linspace(1.0, 4.0, 100)])  # finite, but exploding
    finding = only(diagnose(rows, make_steps(climbing, lr=0.8)), "diverged")
    assert "Lower optim.lr" in finding.remedy and finding.evidence.endswith("; val_loss became nan at epoch 3")
    both = healthy_metrics(5)
    both[1]["train_loss"] = both[1]["val_loss"] = math.nan  # both in one epoch: the training loss names it
    assert only(diagnose(both, []), "diverged").evidence == "train_loss is nan at epoch 2 (lr 0.1)"


def test_diverged_on_rising_smoothed_loss():
    # falls from 2.0 to 1.0 over 100 steps, then climbs to 4.0 (finite): an explosion under way
    losses = np.concatenate([np.linspace(2.0, 1.0, 100), np.linspace(1.0, 4.0, 100)])
    finding = only(diagnose([], make_steps(losses, lr=0.8)), "diverged")
    assert finding.verdict == "FAIL"
    first_above = next(i for i in range(9, 200) if losses[i - 9:i + 1].mean() > 1.5 * losses[0])
    assert finding.evidence == (f"loss 2 at step 1 rose to {losses[first_above - 9:first_above + 1].mean():.4g} "
                                f"(10-step mean) at step {first_above + 1} "
                                f"({losses[first_above - 9:first_above + 1].mean() / 2:.2f}x its start; lr 0.8)")


def test_diverged_at_once_like_a_learning_rate_100x_too_high():
    # 2.3 at initialisation, then 8, 18, 63, ... and hovering near 150: never lower than the start
    losses = np.concatenate([[2.3, 8.1, 17.9, 63.4], 150 + 40 * np.sin(np.arange(100))])
    finding = only(diagnose([], make_steps(losses, lr=5.0)), "diverged")
    assert finding.evidence.startswith("loss 2.3 at step 1 rose to ") and "lr 5)" in finding.evidence


def test_a_spike_the_run_recovers_from_is_not_divergence_but_one_that_stays_is():
    """A fine-tune from a trained classifier starts at one low, noisy loss: a bump past 1.5x it that the run then
    undoes is a spike. A loss that falls, explodes and settles at ln C (a dead network) stays a FAIL, although it
    ends near its first loss."""
    rng = np.random.default_rng(0)
    fine_tune = np.concatenate([np.full(40, 0.20), np.linspace(0.20, 0.33, 30), np.linspace(0.33, 0.08, 330)])
    fine_tune = fine_tune * (1 + 0.05 * rng.standard_normal(fine_tune.size))
    fine_tune[0] = 0.19  # the first loss, on the low side of its noise
    assert moving_average(fine_tune, 10)[9:].max() > 1.5 * fine_tune[0]  # the old bar: a FAIL
    assert "diverged" not in rules(diagnose([], make_steps(fine_tune, lr=0.3)))
    dead = np.concatenate([np.linspace(2.3, 0.5, 100), [8.0, 50.0, 30.0], np.full(100, 2.3026)])
    finding = only(diagnose([], make_steps(dead, lr=0.8)), "diverged")
    assert finding.verdict == "FAIL" and finding.evidence.startswith("loss 2.3 at step 1 rose to ")



def test_an_explosion_that_collapses_to_a_constant_guess_stays_a_fail_when_the_classes_are_known():
    """A fresh 10-class network (first loss ln 10) that explodes at once and then outputs a constant guess ends
    level with its start: undone by the spike test alone, but it learned nothing. With num_classes known,
    ending within 1.5x of ln C keeps the FAIL; a fine-tune's recovered spike ends far below ln C and passes."""
    chance = math.log(10)
    collapsed = np.concatenate([[chance, 9.0, 40.0, 25.0, 6.0], np.full(200, chance)])
    finding = only(diagnose([], make_steps(collapsed, lr=5.0), num_classes=10), "diverged")
    assert finding.verdict == "FAIL" and finding.evidence.startswith("loss 2.303 at step 1 rose to ")
    recovered = np.concatenate([np.full(40, 0.20), np.linspace(0.20, 0.33, 30), np.linspace(0.33, 0.08, 330)])
    assert "diverged" not in rules(diagnose([], make_steps(recovered, lr=0.3), num_classes=10))


def test_without_the_class_count_a_spike_the_run_came_back_from_is_not_passed_when_it_ends_near_some_ln_c():
    """Read without num_classes, the collapse above ends level with its start, as a recovered spike would: the
    verdict says it cannot tell the two apart, and for which class counts the end is a constant guess's loss
    (ln C < 1.5 x 2.303 for C up to 31), instead of passing the run. Other rules still read the curves."""
    chance = math.log(10)
    collapsed = np.concatenate([[chance, 9.0, 40.0, 25.0, 6.0], np.full(200, chance)])
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.99, val_acc=0.90)  # a generalisation gap: overfitting
    findings = diagnose(rows, make_steps(collapsed, lr=5.0))
    finding = only(findings, SPIKE_UNRESOLVED)
    assert finding.verdict == "WARN" and "diverged" not in rules(findings)
    assert "class count unknown: a recovery cannot be told from a collapse to a constant guess" in finding.title
    assert finding.evidence.startswith("loss 2.303 at step 1 rose to ")
    assert finding.evidence.endswith("then came back to 2.303 (10-step mean) at step 205; that is within 1.5x of "
                                     "ln C, a constant guess's loss, for up to 31 classes, and the class count is "
                                     "not known here"), finding.evidence
    assert "num_classes=C" in finding.remedy
    assert rules(findings) == [SPIKE_UNRESOLVED, "overfitting"]  # not alone, as a FAIL is: the other rules read on
    assert "WARN spike_unresolved: " in findings_text(findings)
    # with the class count, it is one or the other
    assert rules(diagnose([], make_steps(collapsed, lr=5.0), num_classes=10)) == ["diverged"]
    assert SPIKE_UNRESOLVED not in rules(diagnose([], make_steps(collapsed, lr=5.0), num_classes=1000))
    # a spike that ends below ln(2) / 1.5 ends below every class count's constant guess: a recovery, said as before
    recovered = np.concatenate([np.full(40, 0.20), np.linspace(0.20, 0.33, 30), np.linspace(0.33, 0.08, 330)])
    assert not {"diverged", SPIKE_UNRESOLVED} & set(rules(diagnose([], make_steps(recovered, lr=0.3))))
    # a val loss that broke is the FAIL, not the spike's WARN
    rows = healthy_metrics()
    rows[3]["val_loss"] = math.nan
    assert rules(diagnose(rows, make_steps(collapsed, lr=5.0))) == [VAL_NOT_FINITE]


def test_diagnose_run_reads_the_class_count_from_the_best_checkpoint_when_the_last_is_gone(tmp_path):
    chance = math.log(10)
    write_run(tmp_path, [], np.concatenate([[chance, 9.0, 40.0, 25.0, 6.0], np.full(200, chance)]), lr=5.0)
    assert SPIKE_UNRESOLVED in rules(diagnose_run(tmp_path))  # no checkpoint: the class count is not known
    save_weights(tmp_path / CHECKPOINT_BEST, {"w": torch.zeros(1)}, meta={"num_classes": 10})
    assert "diverged" in rules(diagnose_run(tmp_path))


def test_an_explosion_far_past_its_start_reads_with_an_exponent():
    losses = np.concatenate([[2.0], np.full(30, 1.1e19)])
    evidence = only(diagnose([], make_steps(losses, lr=5.0)), "diverged").evidence
    ratio = losses[:10].mean() / 2.0  # the first full 10-step window over the first loss
    assert f"({ratio:.2e}x its start" in evidence, evidence  # 4.95e+18x, not 4950000000000000000.00x

def test_diverged_near_misses():
    # climbs back only to 1.4x the start: bad, but not an explosion
    losses = np.concatenate([np.linspace(2.0, 1.0, 100), np.linspace(1.0, 2.75, 100)])
    assert "diverged" not in rules(diagnose([], make_steps(losses)))
    # per-epoch losses (no steps.csv) that rise 1.4x after falling: also below the bar
    rows = healthy_metrics(6)
    rows[-1]["train_loss"] = 1.4 * rows[0]["train_loss"]
    assert "diverged" not in rules(diagnose(rows, []))
    rows[-1]["train_loss"] = 1.6 * rows[0]["train_loss"]
    assert "diverged" in rules(diagnose(rows, []))


# ---------------------------------------------------------------------------------------------
# 3. overfitting


def test_overfitting_on_accuracy_gap():
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.99, val_acc=0.90)
    finding = only(diagnose(rows, []), "overfitting")
    assert finding.evidence == "train acc 99.0% vs val acc 90.0% at epoch 20 (gap 9.0 points)"
    assert "best.safetensors" in finding.remedy


def test_overfitting_on_rising_val_loss():
    rows = healthy_metrics()
    for row in rows:  # val loss bottoms out at 0.40 at epoch 10, then climbs to 0.48 (+20%)
        row["val_loss"] = 0.40 + 0.008 * abs(row["epoch"] - 10)
    finding = only(diagnose(rows, []), "overfitting")
    train_10, train_20 = rows[9]["train_loss"], rows[19]["train_loss"]
    assert finding.evidence == (f"val loss 0.4 at epoch 10 rose to 0.48 at epoch 20 (+20%) while train loss fell "
                                f"{train_10:.4g} -> {train_20:.4g}")


def test_overfitting_near_misses():
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.99, val_acc=0.95)  # gap 4 points, under 5
    assert "overfitting" not in rules(diagnose(rows, []))
    rows = healthy_metrics()
    for row in rows:  # rises only 8% above its minimum
        row["val_loss"] = 0.40 + 0.0032 * abs(row["epoch"] - 10)
    assert "overfitting" not in rules(diagnose(rows, []))
    rows = healthy_metrics()
    for row in rows:  # +20%, but the minimum is one epoch before the end: a blip, not a trend
        row["val_loss"] = 0.40 + (0.08 if row["epoch"] == 20 else 0.01 * (19 - row["epoch"]))
    assert "overfitting" not in rules(diagnose(rows, []))
    rows = healthy_metrics()
    for row in rows:  # +20% as above, but the train loss rose too (from epoch 10): both losses worsen, which
        row["val_loss"] = 0.40 + 0.008 * abs(row["epoch"] - 10)  # is training going wrong, not overfitting
        if row["epoch"] > 10:
            row["train_loss"] = rows[9]["train_loss"] * (1 + 0.01 * (row["epoch"] - 10))
    assert "overfitting" not in rules(diagnose(rows, []))


# ---------------------------------------------------------------------------------------------
# 4. underfitting


def test_underfitting_fires_when_both_poor_and_close():
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.72, val_acc=0.71)
    finding = only(diagnose(rows, []), "underfitting")
    assert finding.evidence == ("train acc 72.0% vs val acc 71.0% at epoch 20 (gap 1.0 points), "
                                "train acc below 90%")


def test_underfitting_near_misses():
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.91, val_acc=0.90)  # close, but above the 90% bar
    assert "underfitting" not in rules(diagnose(rows, []))
    rows[-1].update(train_acc=0.80, val_acc=0.77)  # poor, but 3 points apart: not "close"
    assert "underfitting" not in rules(diagnose(rows, []))
    # "poor" is relative: 72% is fine for a harder task once the bar is lowered
    rows[-1].update(train_acc=0.72, val_acc=0.71)
    assert "underfitting" not in rules(diagnose(rows, [], thresholds=Thresholds(underfit_train_acc=0.70)))


# ---------------------------------------------------------------------------------------------
# 5. still_improving


def test_still_improving_on_rising_val_accuracy():
    rows = healthy_metrics()
    for row in rows:  # 2 points per epoch up to 90% at epoch 20
        row["val_acc"] = 0.50 + 0.02 * row["epoch"]
    finding = only(diagnose(rows, []), "still_improving")
    # 25% of 20 epochs: the last 5, measured from epoch 15
    assert finding.evidence == ("val acc 80.0% at epoch 15 -> 90.0% at epoch 20 (+10.0 points over the last "
                                "5 epochs), best at the last epoch")


def test_still_improving_despite_an_early_spike_as_high_as_the_last_epoch():
    """A one-off spike early on as high as the last epoch (val sets of a few hundred images move in steps) hid a
    curve that had climbed 2 points an epoch for its last 16."""
    rows = healthy_metrics()
    for row in rows:
        row["val_acc"] = 0.50 + 0.02 * (row["epoch"] - 5) if row["epoch"] > 4 else 0.50
    rows[1]["val_acc"] = rows[-1]["val_acc"]
    assert "still_improving" in rules(diagnose(rows, []))


def test_still_improving_near_misses():
    rows = healthy_metrics()
    for row in rows:  # rising, but the best was epoch 19
        row["val_acc"] = 0.50 + 0.02 * row["epoch"]
    rows[-1]["val_acc"] = 0.87
    assert "still_improving" not in rules(diagnose(rows, []))
    rows = healthy_metrics()
    for row in rows:  # best at the end, but only 0.4 points over the last 5 epochs
        row["val_acc"] = 0.90 + 0.0008 * row["epoch"]
    assert "still_improving" not in rules(diagnose(rows, []))
    rows = healthy_metrics()
    for row in rows:  # rose, then level at its best over the last 3 epochs: it has levelled off (a mixup run's)
        row["val_acc"] = min(0.50 + 0.02 * row["epoch"], 0.86)
    assert "still_improving" not in rules(diagnose(rows, []))
    rows = healthy_metrics(3)  # too few epochs to have an end
    for row in rows:
        row["val_acc"] = 0.50 + 0.1 * row["epoch"]
    assert "still_improving" not in rules(diagnose(rows, []))


# ---------------------------------------------------------------------------------------------
# 6. late_decay

STEP_LR = [0.1] * 8 + [0.01] * 4  # a step schedule: lr / 10 from epoch 9


def decay_metrics(train_loss):
    return make_metrics(train_loss, [0.95] * 12, [loss + 0.05 for loss in train_loss], [0.93] * 12, lr=STEP_LR)


def test_late_decay_on_plateau_before_the_drop():
    plateau = [2.0, 1.5, 1.1, 0.9, 0.81, 0.805, 0.802, 0.80, 0.60, 0.58, 0.575, 0.574]
    finding = only(diagnose(decay_metrics(plateau), []), "late_decay")
    assert finding.evidence == ("train loss 0.805 -> 0.8 over epochs 6-8 (under 1% per epoch), then 0.6 at "
                                "epoch 9 (-25%) when lr fell 0.1 -> 0.01")
    assert "step_epochs" in finding.remedy


def test_late_decay_near_misses():
    # still falling 2-4% per epoch before the drop: the decay was not late
    falling = [2.0, 1.5, 1.1, 0.95, 0.9, 0.85, 0.82, 0.80, 0.60, 0.58, 0.575, 0.574]
    assert "late_decay" not in rules(diagnose(decay_metrics(falling), []))
    # a plateau, but the drop only gains 4%: the decay did not unlock anything
    stuck = [2.0, 1.5, 1.1, 0.9, 0.81, 0.805, 0.802, 0.80, 0.768, 0.76, 0.755, 0.754]
    assert "late_decay" not in rules(diagnose(decay_metrics(stuck), []))


# ---------------------------------------------------------------------------------------------
# 7. noisy_loss


def trailing_mean_loop(values, window):
    """An independent trailing mean (a plain loop) to check the rule's arithmetic against."""
    return np.array([np.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))])


def test_noisy_loss_fires_with_its_ratio():
    losses = 1.0 + 0.4 * np.random.default_rng(1).standard_normal(200)
    finding = only(diagnose([], make_steps(losses)), "noisy_loss")
    smoothed = trailing_mean_loop(losses, T.smoothing_steps)
    scatter = np.std(losses[100:] - smoothed[100:])
    level = smoothed[100:].mean()
    span = smoothed.max() - smoothed.min()
    assert span < level  # a flat noisy loss: the level is the scale
    assert finding.evidence == (f"per-step loss scatters {scatter:.4g} (std) around its 10-step mean of "
                                f"{level:.4g} over steps 101-200: {scatter / level:.0%} of the larger of that "
                                f"mean and the {span:.4g} range the mean covered (limit 25%)")


def test_noisy_loss_near_misses():
    steady = 1.0 + 0.15 * np.random.default_rng(1).standard_normal(200)  # about 16% of the loss
    assert "noisy_loss" not in rules(diagnose([], make_steps(steady)))
    short = 1.0 + 0.4 * np.random.default_rng(1).standard_normal(49)  # too few steps to judge
    assert "noisy_loss" not in rules(diagnose([], make_steps(short)))
    # The end of a good small-batch run: the loss fell 2.3 -> 0.1 and scatters 0.05 there, half its
    # level but 2% of the range it fell through; the trend is plain, so this is not noise.
    t = np.arange(400)
    converged = 0.1 + 2.2 * np.exp(-t / 40) + 0.05 * np.random.default_rng(2).standard_normal(400)
    assert "noisy_loss" not in rules(diagnose([], make_steps(np.abs(converged))))


# ---------------------------------------------------------------------------------------------
# 8. plateau_no_decay

# Falls fast, then levels off: from epoch 6 on the loss moves less than 1% per epoch.
LEVELLED = [2.0, 1.4, 1.0, 0.85, 0.78, 0.775, 0.772, 0.770, 0.769, 0.7685, 0.7682, 0.768]


def plateau_metrics(train_loss, lr):
    epochs = len(train_loss)
    return make_metrics(train_loss, [0.9] * epochs, [loss + 0.05 for loss in train_loss], [0.88] * epochs, lr=lr)


def flat_epochs_at_the_end(losses, bar=0.01):
    """An independent count: epochs at the end that each lowered the best loss so far by less than ``bar``."""
    best_before = np.minimum.accumulate(losses)[:-1]  # best_before[k - 1]: the lowest of losses[:k]
    gains = (best_before - np.asarray(losses[1:])) / best_before
    flat = gains < bar
    return len(flat) if flat.all() else int(np.argmin(flat[::-1]))  # trailing True values


def test_plateau_no_decay_at_a_constant_lr():
    finding = only(diagnose(plateau_metrics(LEVELLED, lr=0.1), []), "plateau_no_decay")
    assert flat_epochs_at_the_end(LEVELLED) == 7  # epochs 6-12 each gained under 1%; epoch 5 gained 8%
    assert finding.evidence == ("train loss 0.78 at epoch 5, then under 1% below the best so far in each of the 7 "
                                "epochs since (0.768 at epoch 12, the last) while lr stayed at 0.1")
    assert "schedule.step_epochs" in finding.remedy and "epoch 5 in" in finding.remedy


def test_a_loss_that_never_fell_is_no_plateau_to_decay():
    """Flat from the first epoch on (an lr 100x too low, the loss at ln C throughout): decaying the rate 'at
    epoch 1' would make it worse; flat_start and underfitting read such a run. One epoch of fall first, and the
    flat epochs after it are a plateau again."""
    never = [2.302, 2.301, 2.300, 2.299, 2.298, 2.297, 2.296]
    assert flat_epochs_at_the_end(never) == len(never) - 1
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(never, lr=1e-5), []))
    fell_first = [2.9, *never]
    assert "epoch 2 in" in only(diagnose(plateau_metrics(fell_first, lr=1e-5), []), "plateau_no_decay").remedy


def test_plateau_no_decay_on_a_noisy_plateau():
    # the epoch loss hovers around 0.3: it falls 5% from one epoch to the next at times (7 -> 8, 10 -> 11),
    # but only back from a rise; no epoch after 6 goes below 0.29, the best
    noisy = [1.5, 0.9, 0.6, 0.45, 0.35, 0.29, 0.31, 0.295, 0.30, 0.32, 0.304, 0.31]
    assert (noisy[6] - noisy[7]) / noisy[6] > 0.04 and (noisy[9] - noisy[10]) / noisy[9] > 0.04
    assert flat_epochs_at_the_end(noisy) == 6
    finding = only(diagnose(plateau_metrics(noisy, lr=0.1), []), "plateau_no_decay")
    assert finding.evidence.startswith("train loss 0.29 at epoch 6, then under 1% below the best so far in each "
                                       "of the 6 epochs since (0.31 at epoch 12, the last)")
    # a noisy loss that still sets a new best every other epoch is still falling
    falling = [1.5, 0.9, 0.6, 0.45, 0.35, 0.29, 0.30, 0.27, 0.28, 0.25, 0.26, 0.23]
    assert flat_epochs_at_the_end(falling) == 0
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(falling, lr=0.1), []))


def test_plateau_no_decay_after_the_last_step_of_a_step_schedule():
    # a step at epoch 4 (lr 0.1 -> 0.01), then a long flat stretch at 0.01: decay again
    lr = [0.1] * 3 + [0.01] * 9
    finding = only(diagnose(plateau_metrics(LEVELLED, lr=lr), []), "plateau_no_decay")
    assert finding.evidence.endswith("each of the 7 epochs since (0.768 at epoch 12, the last) while lr stayed at 0.01")
    # the plateau stops where the lr changed: a step into it starts it later
    lr = [0.1] * 8 + [0.01] * 4  # epoch 9 is the first at 0.01: the plateau is epochs 9-12 only
    finding = only(diagnose(plateau_metrics(LEVELLED, lr=lr), []), "plateau_no_decay")
    assert finding.evidence.startswith("train loss 0.769 at epoch 9, then under 1% below the best so far in each "
                                       "of the 3 epochs since")


def test_plateau_no_decay_near_misses():
    # the same plateau under a cosine: the lr was being decayed all along
    epochs = np.arange(1, 13)
    cosine = 0.1 * (1 + np.cos(np.pi * epochs / 13)) / 2
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(LEVELLED, lr=cosine), []))
    # a step two epochs before the end: one flat epoch at the new lr is too short a plateau; two make one
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(LEVELLED, lr=[0.1] * 10 + [0.05] * 2), []))
    assert "plateau_no_decay" in rules(diagnose(plateau_metrics(LEVELLED, lr=[0.1] * 9 + [0.05] * 3), []))
    # still improving: 2% per epoch at a constant lr
    falling = 2.0 * 0.98 ** np.arange(12)
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(falling, lr=0.1), []))
    # flat for one epoch only (the last): not yet a plateau; two make one
    one = [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.78, 0.72, 0.68, 0.65, 0.63, 0.629]
    assert flat_epochs_at_the_end(one) == 1
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(one, lr=0.1), []))
    assert "plateau_no_decay" in rules(diagnose(plateau_metrics(one[:-1] + [0.625, 0.624], lr=0.1), []))


def test_plateau_no_decay_lr_tolerance():
    # an lr drifting 0.01% per epoch stays within 0.1% over the whole plateau: constant
    creep = 0.1 * (1 - 0.0001 * np.arange(12))
    finding = only(diagnose(plateau_metrics(LEVELLED, lr=creep), []), "plateau_no_decay")
    assert finding.evidence.endswith(f"7 epochs since (0.768 at epoch 12, the last) while lr stayed within "
                                     f"{creep[11]:.4g}-{creep[4]:.4g}")
    # 0.1% per epoch is a slow decay: no two epochs lie within 0.1% of each other
    slow = 0.1 * (1 - 0.001 * np.arange(12))
    assert "plateau_no_decay" not in rules(diagnose(plateau_metrics(LEVELLED, lr=slow), []))
    assert "plateau_no_decay" in rules(diagnose(plateau_metrics(LEVELLED, lr=slow), [],
                                                thresholds=Thresholds(flat_lr_tolerance=0.01)))


# ---------------------------------------------------------------------------------------------
# 9. early_decay

# lr / 10 from epoch 9 (STEP_LR) while the loss still falls about 8% per epoch
STILL_FALLING = [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.78, 0.72, 0.60, 0.58, 0.575, 0.574]


def test_early_decay_while_the_loss_still_falls():
    finding = only(diagnose(decay_metrics(STILL_FALLING), []), "early_decay")
    slowest = min((0.85 - 0.78) / 0.85, (0.78 - 0.72) / 0.78)  # epochs 7 and 8, the two before the decay
    assert f"{slowest:.1%}" == "7.7%"
    assert finding.evidence == ("train loss 0.85 -> 0.72 over epochs 6-8, still falling 7.7% per epoch or more "
                                "(over 3%), when lr fell 0.1 -> 0.01 at epoch 9")
    assert "schedule.step_epochs later" in finding.remedy
    assert "late_decay" not in rules(diagnose(decay_metrics(STILL_FALLING), []))


def test_early_and_late_decay_are_mirrors():
    plateau = [2.0, 1.5, 1.1, 0.9, 0.81, 0.805, 0.802, 0.80, 0.60, 0.58, 0.575, 0.574]
    falling = [2.0, 1.5, 1.1, 0.95, 0.9, 0.85, 0.82, 0.80, 0.60, 0.58, 0.575, 0.574]  # 3.5% then 2.4%
    decay_rules = {"late_decay", "early_decay"}
    assert decay_rules & set(rules(diagnose(decay_metrics(plateau), []))) == {"late_decay"}
    assert decay_rules & set(rules(diagnose(decay_metrics(STILL_FALLING), []))) == {"early_decay"}
    assert decay_rules & set(rules(diagnose(decay_metrics(falling), []))) == set()  # on time: neither


def test_early_decay_near_misses():
    # only the last epoch before the decay fell 3% or more: the loss was levelling off
    slowing = [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.84, 0.80, 0.60, 0.58, 0.575, 0.574]  # 1.2% then 4.8%
    assert "early_decay" not in rules(diagnose(decay_metrics(slowing), []))
    # the same falling loss under a cosine or a lr cut by less than 2x: no step decay to blame
    epochs = np.arange(1, 13)
    cosine = 0.1 * (1 + np.cos(np.pi * epochs / 13)) / 2
    rows = make_metrics(STILL_FALLING, [0.95] * 12, [x + 0.05 for x in STILL_FALLING], [0.93] * 12, lr=cosine)
    assert "early_decay" not in rules(diagnose(rows, []))
    gentle = [0.1] * 8 + [0.06] * 4
    rows = make_metrics(STILL_FALLING, [0.95] * 12, [x + 0.05 for x in STILL_FALLING], [0.93] * 12, lr=gentle)
    assert "early_decay" not in rules(diagnose(rows, []))
    # a decay too close to the start to have two epochs before it is not judged
    rows = make_metrics(STILL_FALLING, [0.95] * 12, [x + 0.05 for x in STILL_FALLING], [0.93] * 12,
                        lr=[0.1] * 2 + [0.01] * 10)
    assert "early_decay" not in rules(diagnose(rows, []))


# ---------------------------------------------------------------------------------------------
# run folders and output


def write_run(run_dir, rows, losses, lr=0.1):
    metrics, steps = MetricsLog(run_dir / "metrics.csv"), StepLossLog(run_dir / "steps.csv")
    for row in rows:
        metrics.append(row)
    for step, loss in enumerate(losses, start=1):
        steps.append(step, loss, lr)
    steps.close()


def test_diagnose_run_reads_the_files(tmp_path):
    write_run(tmp_path, healthy_metrics(), healthy_losses())
    assert diagnose_run(tmp_path) == []
    assert findings_text(diagnose_run(tmp_path)) == "No problems found in the curves."


def test_diagnose_run_with_nan_last_step_and_no_epoch(tmp_path):
    losses = np.append(np.linspace(2.3, 2.0, 11), math.nan)
    write_run(tmp_path, [], losses, lr=2.5)  # stopped in its first epoch: no metrics rows
    note, finding = diagnose_run(tmp_path)
    assert (note.rule, note.verdict) == ("no_epochs", "NOTE")  # the epoch rules had nothing to read
    assert (finding.rule, finding.verdict) == ("diverged", "FAIL")
    assert finding.evidence == "loss 2.3 at step 1 rose to nan at step 12 (lr 2.5)"


def test_diagnose_run_reads_num_classes_from_the_checkpoint(tmp_path):
    write_run(tmp_path, [], hockey_stick(100))
    save_weights(tmp_path / CHECKPOINT_LAST, {"w": torch.zeros(1)}, meta={"num_classes": 10})
    assert "vs ln(10) = 2.303" in only(diagnose_run(tmp_path), "flat_start").evidence


def test_decay_rules_from_a_run_folder_and_the_json_output(tmp_path, cli):
    write_run(tmp_path, decay_metrics(STILL_FALLING), healthy_losses())
    found = {finding.rule: finding for finding in diagnose_run(tmp_path)}
    assert {"early_decay", "plateau_no_decay"} <= set(found)  # after the early cut, flat at 0.01
    code, out, err = cli(["diagnose", str(tmp_path), "--json"])
    assert code == 0, err  # WARNs only
    reported = {f["rule"]: f for f in json.loads(out)["findings"]}
    for rule in ("early_decay", "plateau_no_decay"):
        assert reported[rule] == findings_json([found[rule]])[0]
    code, out, err = cli(["diagnose", str(tmp_path)])
    assert "WARN early_decay: Learning-rate decay came early" in out


def test_diagnose_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CnnlabError, match=r"not a run folder.*neither metrics\.csv nor steps\.csv"):
        diagnose_run(tmp_path)
    with pytest.raises(CnnlabError, match="does not exist"):
        diagnose_run(tmp_path / "missing")
    # a config.yaml alone (a recipe copied there) makes no run folder
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\n")
    with pytest.raises(CnnlabError, match=r"not a run folder.*neither metrics\.csv nor steps\.csv"):
        diagnose_run(tmp_path)
    # a run killed before its first logged step has its config.yaml and status.json: nothing to diagnose yet
    (tmp_path / "status.json").write_text('{"state": "running", "epoch": 0}')
    with pytest.raises(CnnlabError, match=r"is a run folder with neither metrics\.csv nor steps\.csv .*nothing to "
                                          r"diagnose.*train \(or resume\) the run first"):
        diagnose_run(tmp_path)
    # a run that finished epochs and lost both files since: restore them, not train
    (tmp_path / "status.json").write_text('{"state": "finished", "epoch": 2}')
    with pytest.raises(CnnlabError, match=r"whose metrics\.csv and steps\.csv are gone, though its status\.json "
                                          r"records 2 finished epochs.*Restore the two files from a copy"):
        diagnose_run(tmp_path)


def test_text_and_json_output():
    findings = [Finding("overfitting", "WARN", "Overfitting", "gap 9.0 points", "Regularise."),
                Finding("diverged", "FAIL", "Loss explodes", "inf at step 3", "Lower optim.lr.")]
    assert findings_text(findings) == (
        "WARN overfitting: Overfitting\n  evidence: gap 9.0 points\n  remedy: Regularise.\n"
        "FAIL diverged: Loss explodes\n  evidence: inf at step 3\n  remedy: Lower optim.lr.")
    data = findings_json(findings)
    assert json.loads(json.dumps(data)) == data
    assert data[1] == {"rule": "diverged", "verdict": "FAIL", "title": "Loss explodes", "evidence": "inf at step 3",
                       "remedy": "Lower optim.lr."}


def test_googlenets_auxiliary_losses_are_part_of_chance_not_an_overconfident_init(tmp_path):
    """GoogLeNet's training loss adds 0.3 x each of its two auxiliary classifiers' losses: at chance it is
    1.6 x ln C (3.68 for 10 classes), which flat_start called 'far above ln(C): overconfident initialisation'."""
    from cnnlab.config import RunConfig, apply_overrides, save_config

    chance = math.log(10) * (1 + 2 * 0.3)
    write_run(tmp_path, [], np.full(400, chance), lr=1e-6)
    save_weights(tmp_path / CHECKPOINT_BEST, {"w": torch.zeros(1)}, meta={"num_classes": 10})
    save_config(apply_overrides(RunConfig(), ["model.name=googlenet", "data.spec=digits"]), tmp_path / "config.yaml")
    finding = only(diagnose_run(tmp_path), "flat_start")
    assert "vs ln(10) x 1.6 = 3.684 (the auxiliary classifiers' losses added)" in finding.evidence
    assert "the init is fine: raise optim.lr" in finding.remedy
    # without them (aux_logits=false) the same start is far above ln C: the init's
    save_config(apply_overrides(RunConfig(), ["model.name=googlenet", "model.options={aux_logits: false}",
                                              "data.spec=digits"]), tmp_path / "config.yaml")
    assert "overconfident" in only(diagnose_run(tmp_path), "flat_start").remedy


def test_an_accuracy_gap_of_exactly_5_points_is_no_overfitting():
    """0.75 - 0.70 is 0.05000000000000004 in floats: 'gap 5.0 points' was a WARN where the rule says more than 5."""
    rows = healthy_metrics()
    rows[-1].update(train_acc=0.75, val_acc=0.70)
    assert "overfitting" not in rules(diagnose(rows, []))
    rows[-1].update(train_acc=0.751, val_acc=0.70)
    assert "overfitting" in rules(diagnose(rows, []))


def test_an_overfitting_of_val_loss_alone_is_titled_by_its_trigger():
    rows = healthy_metrics()
    for row in rows:
        row["val_loss"] = 0.40 + 0.008 * abs(row["epoch"] - 10)
    assert only(diagnose(rows, []), "overfitting").title == "Overfitting (val loss rising while train loss falls)"
    rows[-1].update(train_acc=0.99, val_acc=0.90)
    assert only(diagnose(rows, []), "overfitting").title == "Overfitting (train fits far better than val)"


def test_a_run_without_lrs_is_not_called_too_short_for_the_lr_rules():
    """A 10-epoch run whose metrics.csv lr column is empty was said to have 0 epochs."""
    rows = healthy_metrics(10)
    for row in rows:
        row["lr"] = None
    evidence = not_checked(diagnose(rows, []))
    assert "the run has 0" not in evidence
    assert "plateau_no_decay, late_decay and early_decay" in evidence and "lr column" in evidence
