"""Gradient accumulation (train.accum_steps): k micro-batches make one optimiser step."""

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig, apply_overrides, load_config, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.train import engine, schedule
from cnnlab.train.checkpoint import load_checkpoint, load_weights
from cnnlab.train.logging import read_metrics

# LeNet-5 has no BatchNorm and no dropout here: its gradient over 32 images is the mean of four 8-image ones.
PLAIN = [
    "model.name=lenet5", "aug.preset=none", "train.deterministic=true", "train.precision=fp32", "log.quiet=true",
    "log.curves=false", "optim.lr=0.05",
]


def config_of(*extra, epochs=2):
    return apply_overrides(RunConfig(), PLAIN + [f"train.epochs={epochs}"] + list(extra))


def weights(run_dir):
    model = engine.build_run(load_config(run_dir / "config.yaml"), torch.device("cpu"))[2]
    load_checkpoint(run_dir / "last.safetensors", model=model)
    return model.state_dict()


def steps_rows(run_dir):
    with open(run_dir / "steps.csv") as f:
        return list(csv.DictReader(f))


def test_four_micro_batches_of_8_step_as_one_batch_of_32(tmp_path):
    """The same 64 images an epoch, as 2 batches of 32 or as 8 batches of 8 in groups of 4: the same 2 optimiser
    steps an epoch, at the same rates (a warmed-up cosine over 4 steps, optim.lr per 32 images), to the same
    weights. Counted per micro-batch, the schedule would span 16 steps and the rate scale with 8 images."""
    common = ("data.spec=synthetic:classes=4,train=64,val=32,test=32", "schedule.warmup_epochs=0.5",
              "optim.lr_batch=32")
    engine.train(config_of("train.batch_size=32", *common), tmp_path / "whole")
    engine.train(config_of("train.batch_size=8", "train.accum_steps=4", *common), tmp_path / "accum")
    whole, accum = weights(tmp_path / "whole"), weights(tmp_path / "accum")
    for name in whole:
        torch.testing.assert_close(accum[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)
    # steps.csv: one row per optimiser step, each at the schedule's rate for that step, with its whole loss
    a, b = steps_rows(tmp_path / "whole"), steps_rows(tmp_path / "accum")
    assert [row["step"] for row in b] == [row["step"] for row in a] == ["1", "2", "3", "4"]
    for row_a, row_b in zip(a, b):
        assert float(row_b["lr"]) == pytest.approx(float(row_a["lr"]), rel=1e-12)
        assert float(row_b["loss"]) == pytest.approx(float(row_a["loss"]), rel=1e-4)
    config = config_of("train.batch_size=8", "train.accum_steps=4", *common)
    rates = [0.05 * schedule.lr_factor(config.schedule, step, 4, 2) for step in range(4)]
    assert [float(row["lr"]) for row in b] == pytest.approx(rates, rel=1e-6)
    assert rates[0] < rates[1] > rates[3]  # the warmup's first step, then the cosine's fall
    # metrics.csv: optimiser steps in the step column, every image of the epoch in its train loss
    rows_a, rows_b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "accum" / "metrics.csv")
    assert [row["step"] for row in rows_b] == [row["step"] for row in rows_a] == [2, 4]
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_b["train_loss"] == pytest.approx(row_a["train_loss"], rel=1e-4)
        assert row_b["val_acc"] == row_a["val_acc"]


def test_an_epoch_of_batches_that_do_not_divide_by_k_steps_on_its_last_partial_group(tmp_path):
    """80 images in batches of 8 are 10 batches: with train.accum_steps=4 the steps take 4, 4 and 2 of them,
    the last on the mean loss of its 16 images. Checked against plain torch on the loader's own batches."""
    config = config_of("data.spec=synthetic:classes=4,train=80,val=32,test=32", "train.batch_size=8",
                       "train.accum_steps=4", "schedule.name=constant", "optim.momentum=0.9", epochs=1)
    engine.train(config, tmp_path / "run")
    assert len(steps_rows(tmp_path / "run")) == 3
    assert read_metrics(tmp_path / "run" / "metrics.csv")[0]["step"] == 3
    # the reference: the same set-up (initial weights, loader order), each group's images as one batch
    run = engine.setup_run(config)
    batches = list(run.train_loader)
    assert len(batches) == 10
    model = run.model
    model.train()
    # torch's own SGD, each parameter group with the engine's weight decay (biases have none) and Nesterov setting
    reference = torch.optim.SGD([{"params": g["params"], "weight_decay": g["weight_decay"], "nesterov": g["nesterov"]}
                                 for g in run.optimizer.param_groups], lr=0.05, momentum=0.9)
    for group in ((0, 4), (4, 8), (8, 10)):
        x = torch.cat([batches[i][0] for i in range(*group)])
        y = torch.cat([batches[i][1] for i in range(*group)])
        reference.zero_grad()
        F.cross_entropy(model(x), y).backward()
        reference.step()
    trained = weights(tmp_path / "run")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_micro_batch_groups_count_from_the_epochs_start():
    groups = [engine.micro_batch_group(batch, 10, 4) for batch in range(10)]
    assert [b for b, (first, _, _) in enumerate(groups) if first] == [0, 4, 8]
    assert [b for b, (_, last, _) in enumerate(groups) if last] == [3, 7, 9]
    assert [size for _, _, size in groups] == [4] * 8 + [2] * 2
    assert [engine.optimizer_steps(batches, 4) for batches in (1, 4, 5, 8, 10)] == [1, 1, 2, 2, 3]
    assert all(engine.micro_batch_group(batch, 7, 1) == (True, True, 1) for batch in range(7))


def test_gradient_clipping_sees_the_accumulated_gradient():
    """One clip of the summed gradient, not one per micro-batch: the step's update is at most lr x grad_clip long
    (plain SGD), and equals the clipped full-batch step."""
    config = config_of("data.spec=synthetic:classes=4,train=32,val=32,test=32", "train.batch_size=8",
                       "optim.grad_clip=0.01", "optim.momentum=0", "optim.weight_decay=0")
    run = engine.setup_run(config)
    x, y = map(torch.cat, zip(*list(run.train_loader)))
    before = [p.detach().clone() for p in run.model.parameters()]
    run.model.train()
    for i in range(4):
        engine.train_step(run.model, x[8 * i:8 * i + 8], y[8 * i:8 * i + 8], run.optimizer, run.scaler,
                          run.step_settings, loss_weight=1 / 4, zero_grad=i == 0, update=i == 3)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(run.model.parameters(), before)])
    # the reference: clip the full batch's gradient, one SGD step
    with torch.no_grad():
        for p, b in zip(run.model.parameters(), before):
            p.copy_(b)
    run.model.zero_grad()
    F.cross_entropy(run.model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 0.01)
    expected = torch.cat([(-0.05 * p.grad).flatten() for p in run.model.parameters()])
    assert moved.norm().item() == pytest.approx(0.05 * 0.01, rel=1e-4)
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-7)  # float32 rounding of w - w_before


def test_the_loss_scaler_scales_every_micro_batch_and_steps_once_per_optimiser_step():
    """fp16's GradScaler (the CPU's here, with a large scale): each micro-batch's backward is scaled, the summed
    gradient unscaled once, and the scale's growth counter moves once per optimiser step; the update is the
    unscaled one."""
    config = config_of("data.spec=synthetic:classes=4,train=32,val=32,test=32", "train.batch_size=8",
                       "optim.momentum=0", "optim.weight_decay=0")
    run = engine.setup_run(config)
    x, y = map(torch.cat, zip(*list(run.train_loader)))
    before = [p.detach().clone() for p in run.model.parameters()]
    run.model.train()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for i in range(4):
        engine.train_step(run.model, x[8 * i:8 * i + 8], y[8 * i:8 * i + 8], run.optimizer, scaler,
                          run.step_settings, loss_weight=1 / 4, zero_grad=i == 0, update=i == 3)
    assert scaler._get_growth_tracker() == 1  # one update of the scale for the optimiser step
    moved = [p.detach() - b for p, b in zip(run.model.parameters(), before)]
    with torch.no_grad():
        for p, b in zip(run.model.parameters(), before):
            p.copy_(b)
    run.model.zero_grad()
    F.cross_entropy(run.model(x), y).backward()
    for step, p in zip(moved, run.model.parameters()):
        torch.testing.assert_close(step, -0.05 * p.grad, rtol=1e-4, atol=1e-7)


def test_a_ctrl_c_mid_epoch_stops_after_the_whole_optimiser_step_and_resumes_bit_identical(tmp_path, monkeypatch):
    common = ("data.spec=synthetic:classes=4,train=96,val=32,test=32", "train.batch_size=8", "train.accum_steps=3",
              "train.ema=true", "schedule.warmup_epochs=0.5")
    engine.train(config_of(*common), tmp_path / "whole")
    original = schedule.lr_factor

    def ctrl_c_at_step_6(config, step, total, per_epoch):  # called once per optimiser step, at its first batch
        if step == 5:
            signal.raise_signal(signal.SIGINT)  # the engine's deferred Ctrl-C: the step's 3 batches finish first
        return original(config, step, total, per_epoch)

    monkeypatch.setattr(schedule, "lr_factor", ctrl_c_at_step_6)
    stopped = engine.train(config_of(*common), tmp_path / "split")
    assert stopped.interrupted and stopped.checkpoint_saved
    # 12 batches an epoch, 4 steps: step 6 is the second of epoch 2, its batches 4 to 6
    assert stopped.last_checkpoint == {"epoch": 1, "batch": 6, "step": 6}
    monkeypatch.undo()
    engine.train(load_config(tmp_path / "split" / "config.yaml"), tmp_path / "split", resume=True)
    timing = {"epoch_seconds", "images_per_second"}
    a, b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "split" / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in b]
    whole, split = weights(tmp_path / "whole"), weights(tmp_path / "split")
    for name in whole:
        assert torch.equal(whole[name], split[name]), name
    assert steps_rows(tmp_path / "whole") == steps_rows(tmp_path / "split")


@pytest.mark.parametrize("value, expected", [(0, "must lie in 1.."), (-2, "must lie in 1.."),
                                             (2.5, "must be int"), (True, "must be int"), ("4", "must be int")])
def test_accum_steps_must_be_a_whole_number_from_1(value, expected):
    config = RunConfig()
    config.train.accum_steps = value
    with pytest.raises(CnnlabError, match=rf"train.accum_steps.*{expected}"):
        validate_config(config)


def test_two_ddp_processes_accumulating_match_one_process_with_the_whole_batch(tmp_path, cli):
    """torchrun with 2 CPU processes, micro-batches of 8 (4 rows a rank) in groups of 2: DDP leaves the first
    micro-batch's gradient unsynchronised (no_sync) and averages the sum after the second, which must give one
    process's step on batches of 16 (trained here, in the test's process)."""
    common = ["train", "--model", "lenet5", "--data", "synthetic:classes=4,train=64,val=32,test=32", "--epochs", "2",
              "--set", "aug.preset=none", "--set", "train.deterministic=true", "--set", "train.precision=fp32",
              "--set", "log.curves=false", "--quiet"]
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), CNNLAB_CACHE=str(tmp_path / "cache"))
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "cnnlab", *common, "--set", "train.batch_size=8", "--set", "train.accum_steps=2",
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    code, _, err = cli([*common, "--set", "train.batch_size=16", "--out", str(tmp_path / "single")])
    assert code == 0, err[-3000:]
    one, meta_one = load_weights(tmp_path / "single" / "last.safetensors")
    two, meta_two = load_weights(tmp_path / "ddp" / "last.safetensors")
    assert meta_one["step"] == meta_two["step"] == 2 * 4
    worst = max((one[key].double() - two[key].double()).abs().max().item() for key in one)
    assert worst < 1e-5, f"final weights differ by up to {worst:.3g}"


def test_more_micro_batches_a_step_than_an_epoch_has_is_refused_before_training(cli, tmp_path):
    """64 images in batches of 16 are 4 batches an epoch. A step does not reach into the next epoch, so
    train.accum_steps=6 stepped on 4 batches (64 images) while optim.lr_batch scaled its rate for 96: refused,
    before the run folder is written. 4, one step an epoch, trains."""
    data = ["--model", "lenet5", "--data", "synthetic:classes=4,train=64,val=32,test=32", "--batch-size", "16",
            "--epochs", "1", "--quiet", "--set", "optim.lr_batch=16"]
    code, _, err = cli(["train", *data, "--set", "train.accum_steps=6", "--out", str(tmp_path / "run")])
    assert code == 2 and "Traceback" not in err
    assert "train.accum_steps=6 asks for optimiser steps of 6 batches of 16, but an epoch has only 4 batches" in err
    assert "6 x 16 = 96 images" in err and "Set train.accum_steps to 4 or less" in err
    assert not (tmp_path / "run").exists()
    code, _, err = cli(["train", *data, "--set", "train.accum_steps=4", "--out", str(tmp_path / "run")])
    assert code == 0, err
    assert [row["step"] for row in steps_rows(tmp_path / "run")] == ["1"]
