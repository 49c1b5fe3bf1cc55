"""DDP on the CPU: `torchrun --nproc-per-node 2 -m cnnlab train` (two gloo processes) matches one process.

Every rank draws the same global batch and keeps rows ``x[rank::world]``; each rank's loss is the mean
over its equal shard and DDP averages the gradients over ranks, so each step's gradient is the mean
over the global batch, as in one process with the same batch size. The model has no BatchNorm and
no dropout (lenet5), so the runs differ only by float summation order. The distributed run costs
one torchrun start (two processes importing torch on two cores), so it runs once for the module.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from cnnlab.cli import main
from cnnlab.train.checkpoint import load_weights
from cnnlab.train.logging import read_metrics

# One worker runs this module (make test: --dist loadgroup): split over two, each worker ran its module-scoped
# torchrun jobs
pytestmark = pytest.mark.xdist_group("ddp")

DATA = "synthetic:classes=4,train=128,val=32,test=32"
BATCH, EPOCHS, STEPS = 32, 2, 2 * 128 // 32
RUN = ["train", "--model", "lenet5", "--data", DATA, "--epochs", str(EPOCHS), "--set", f"train.batch_size={BATCH}",
       "--set", "train.deterministic=true", "--set", "train.precision=fp32", "--quiet",  # exact: fp32 on any CPU
       "--set", "log.curves=false"]  # no test here reads curves.png (drawing it took rank 0 about a second a run)
WEIGHT_TOLERANCE = 1e-5  # measured: about 2e-8 (weights are of order 0.5)


def torchrun(args: list[str], env: dict, scratch: Path, nproc: int = 2, timeout: float = 180,
             program: tuple[str, ...] = ("-m", "cnnlab"), cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m cnnlab ARGS`` with this venv's Python, one thread a rank
    (``program``: a script that runs cnnlab's main instead of ``-m cnnlab``), in the folder ``cwd``.

    torchrun keeps its per-run log folder (``torchelastic_*``) in the temporary directory: TMPDIR points it at
    ``scratch``, a pytest folder, so that no run leaves one in /tmp.
    """
    env = {key: value for key, value in env.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                    "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TMPDIR=str(scratch))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               *program, *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def run_in_process(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as done:
        return done.code or 0
    return 0


# The module's DDP run carries three probes, each asserted by its own test below:
# - rank 1 reaches the default run folder's name a second after rank 0 (its clock says 1 s later), and each rank
#   says where it trained;
# - an atexit handler marks whether Python's shutdown ran in a rank: atexit handlers run there, and not after
#   os._exit;
# - rank 1 alone receives a SIGTERM after the run's last step (while the last epoch is evaluated and saved), where
#   no vote follows: the run is complete.
RUN_PROBES = """
import atexit, os, signal, sys, time
import cnnlab.cli as cli
import cnnlab.train.engine as engine

rank = os.environ["RANK"]
if rank == "1":
    original_strftime = time.strftime
    time.strftime = lambda form, *rest: original_strftime(form, time.localtime(time.time() + 1))

atexit.register(lambda: print(f"rank {rank}: interpreter shutdown", file=sys.stderr, flush=True))

original_train = engine.train

def train(config, *args, **kwargs):
    def press(row):
        if row["epoch"] == config.train.epochs and rank == "1":
            print("rank 1: SIGTERM after the last step", file=sys.stderr, flush=True)
            signal.raise_signal(signal.SIGTERM)
    result = original_train(config, *args, **{**kwargs, "on_epoch_end": press})
    print(f"rank {rank} trained into {result.run_dir}", file=sys.stderr)
    return result

engine.train = train
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process DDP run and one single-process run of the same config (same global batch).

    The DDP run names its folder itself (no --out, in the folder ``ddp_cwd``), with rank 1's clock a second ahead
    of rank 0's, marks a Python shutdown and sends rank 1 a SIGTERM after the last step (RUN_PROBES): the run the
    tests below compare with one process is the one that tests the name, the ranks' ending and the late signal.
    Each of those probes is asserted by its own test; a torchrun job is three processes importing torch."""
    root = tmp_path_factory.mktemp("ddp")
    cache = str(tmp_path_factory.getbasetemp() / "cnnlab-cache")
    driver, ddp_cwd = root / "driver.py", root / "ddp_cwd"
    driver.write_text(RUN_PROBES)
    ddp_cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", cache)
        patch.delenv("CNNLAB_DATA", raising=False)
        started = time.perf_counter()
        ddp = torchrun(RUN, dict(os.environ), root, program=(str(driver),), cwd=ddp_cwd)  # no --out
        ddp_seconds = time.perf_counter() - started
        # Its exit code is not asserted here but by the tests of the probes that could change it (a SIGTERM to rank 1
        # after the last step must not fail the run, test_a_signal_to_one_rank_after_...): a probe's regression fails
        # those tests, not every test that reads the run.
        started = time.perf_counter()
        assert run_in_process([*RUN, "--out", str(root / "single")]) == 0
        single_seconds = time.perf_counter() - started
    print(f"\ntorchrun x2: {ddp_seconds:.1f} s, one process (in-process): {single_seconds:.1f} s")
    # the folder rank 0 wrote (test_ranks_that_name_the_default_run_folder_... asserts that it is the only one)
    ddp_dir = next((folder for folder in sorted((ddp_cwd / "runs").iterdir() if (ddp_cwd / "runs").is_dir() else [])
                    if (folder / "last.safetensors").is_file()), None)
    if ddp_dir is None:
        pytest.fail(f"the module's DDP run (exit code {ddp.returncode}) saved no checkpoint:\n"
                    + ddp.stdout[-3000:] + ddp.stderr[-3000:])
    return {"ddp": ddp_dir, "single": root / "single", "ddp_output": ddp.stdout + ddp.stderr,
            "ddp_cwd": ddp_cwd, "ddp_stderr": ddp.stderr, "ddp_returncode": ddp.returncode}


def test_two_processes_match_one_with_the_same_global_batch(runs):
    single, _ = load_weights(runs["single"] / "last.safetensors")
    ddp, meta = load_weights(runs["ddp"] / "last.safetensors")
    assert sorted(single) == sorted(ddp) and meta["epoch"] == EPOCHS and meta["step"] == STEPS
    worst = max((single[key].double() - ddp[key].double()).abs().max().item() for key in single)
    print(f"\nlargest weight difference, 2 processes vs 1: {worst:.3g}")
    assert worst < WEIGHT_TOLERANCE, f"final weights differ by up to {worst:.3g}"

    one, two = read_metrics(runs["single"] / "metrics.csv"), read_metrics(runs["ddp"] / "metrics.csv")
    assert [row["epoch"] for row in two] == [1, 2] and [row["step"] for row in two] == [STEPS // 2, STEPS]
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)  # all-reduced over both ranks
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-9)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)  # each rank scores half of val
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1e-9)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)


def test_only_rank_0_writes_and_prints(runs):
    ddp = runs["ddp"]
    assert sorted(path.name for path in ddp.iterdir()) == sorted(path.name for path in runs["single"].iterdir())
    with open(ddp / "metrics.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]  # no row written twice
    with open(ddp / "steps.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, STEPS + 1))
    output = runs["ddp_output"]
    assert output.count("epoch 1/2") == 1 and output.count("best val acc") == 1
    assert output.count("run folder:") == 1  # the CLI's closing line too, not once per rank


def test_the_run_records_how_many_processes_trained_it(runs):
    """images/s is all ranks' images over rank 0's time: environment.json and report.txt say the run was DDP, so
    that it is not read as one process's speed."""
    for run, processes in (("ddp", 2), ("single", 1)):
        assert json.loads((runs[run] / "environment.json").read_text())["processes"] == processes
    threads = [line for line in (runs["ddp"] / "report.txt").read_text().splitlines() if line.startswith("threads")]
    assert len(threads) == 1 and threads[0].endswith("in each of 2 processes (DDP; rank 0's count)"), threads
    assert "processes" not in (runs["single"] / "report.txt").read_text()


def test_step_losses_are_the_global_batch_loss(runs):
    """steps.csv (and the progress bar) show each step's loss over the global batch, not rank 0's half."""
    def steps(run):
        with open(run / "steps.csv", newline="") as handle:
            return [(int(row["step"]), float(row["loss"]), float(row["lr"])) for row in csv.DictReader(handle)]

    one, two = steps(runs["single"]), steps(runs["ddp"])
    assert [s for s, _, _ in two] == [s for s, _, _ in one]
    assert [lr for _, _, lr in two] == pytest.approx([lr for _, _, lr in one], rel=1e-12)
    assert [loss for _, loss, _ in two] == pytest.approx([loss for _, loss, _ in one], rel=1e-5)


def test_the_head_only_phase_switches_under_ddp_as_in_one_process(runs, tmp_path):
    """train.probe_epochs under torchrun: DDP wraps the model again at the switch (it registers the parameters
    that need gradients when it wraps), so the backbone trains from epoch 2 exactly as in one process."""
    fine_tune = [*RUN, "--set", f"model.init_from={runs['single']}", "--set", "train.probe_epochs=1",
                 "--set", "optim.backbone_lr_mult=0.1"]
    ddp = torchrun([*fine_tune, "--out", str(tmp_path / "ddp")], dict(os.environ), tmp_path)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert run_in_process([*fine_tune, "--out", str(tmp_path / "single")]) == 0
    single, _ = load_weights(tmp_path / "single" / "last.safetensors")
    two, _ = load_weights(tmp_path / "ddp" / "last.safetensors")
    source, _ = load_weights(runs["single"] / "last.safetensors")
    assert max((single[k].double() - two[k].double()).abs().max().item() for k in single) < WEIGHT_TOLERANCE
    backbone = [k for k in single if k.startswith("features.")]
    assert max((two[k] - source[k]).abs().max().item() for k in backbone) > 0  # unfrozen after epoch 1


def _bucketed_folder(root: Path) -> Path:
    """PATH/train and PATH/val PNG folders whose aspect-ratio buckets give short training batches: with a batch
    of 8, the 5 portrait images make one batch of 5 (3 rows on rank 0, 2 on rank 1) and the one square image a
    batch of 1 (no row for rank 1)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    counts = {"train": {(32, 24): (9, 9), (24, 32): (3, 2), (24, 24): (1, 0)}, "val": {(24, 24): (3, 3)}}
    for split, sizes in counts.items():
        for (width, height), per_class in sizes.items():
            for label, count in enumerate(per_class):
                folder = root / split / f"c{label}"
                folder.mkdir(parents=True, exist_ok=True)
                for number in range(count):
                    # each class its own brightness, so that the run learns something
                    noise = torch.randint(0, 100, (height, width, 3), dtype=torch.uint8, generator=generator)
                    pixels = noise + 120 * label
                    Image.fromarray(pixels.numpy()).save(folder / f"{width}x{height}-{number}.png")
    return root


def test_short_batches_that_do_not_divide_over_the_ranks_train_as_in_one_process(tmp_path):
    """Aspect-ratio buckets give short batches: one of 5 images splits 3 and 2 over two ranks, one of 1 leaves
    rank 1 without a row. Each rank's loss is weighted by its share of the batch, so DDP's average of the ranks'
    gradients is still the gradient of the global batch's mean loss (unweighted, the 2-row half would count as
    much as the 3-row half), and the rank without a row takes part with weight 0 (unhandled, its mean over no
    rows was NaN and the run stopped with a non-finite loss)."""
    data = _bucketed_folder(tmp_path / "photos")
    bucketed = ["train", "--model", "resnet8", "--data", f"folder:{data}", "--set", "data.buckets=4:3,1:1,3:4",
                "--set", "data.image_size=32", "--set", "model.norm=none",  # no BatchNorm: one process's numbers
                "--epochs", "2", "--set", "train.batch_size=8", "--lr", "0.01", "--set", "train.deterministic=true",
                "--set", "train.precision=fp32", "--set", "log.curves=false", "--quiet"]
    ddp = torchrun([*bucketed, "--out", str(tmp_path / "ddp")], dict(os.environ), tmp_path)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert run_in_process([*bucketed, "--out", str(tmp_path / "single")]) == 0
    single, meta = load_weights(tmp_path / "single" / "last.safetensors")
    two, _ = load_weights(tmp_path / "ddp" / "last.safetensors")
    assert meta["step"] == 2 * 4  # 2 full landscape batches, the portrait batch of 5, the square batch of 1
    worst = max((single[key].double() - two[key].double()).abs().max().item() for key in single)
    assert worst < WEIGHT_TOLERANCE, f"final weights differ by up to {worst:.3g}"
    one, both = read_metrics(tmp_path / "single" / "metrics.csv"), read_metrics(tmp_path / "ddp" / "metrics.csv")
    for a, b in zip(one, both, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)  # every image counted once
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-9)


def test_no_rank_gets_a_single_row_of_a_batch_that_has_more():
    """A BatchNorm layer in training mode refuses one row of 1x1 maps (resnet18's last stage at 32x32), where
    one process with the whole batch trains: a batch of 3 on 2 ranks gave rank 1 a single row. Every batch of
    2 or more rows now gives each rank 0 or 2+ rows of its own (one without any computes on 2 borrowed rows that
    count for nothing); the rows counted cover the batch once, each rank's weight is its share of them."""
    from cnnlab.train.distributed import DistInfo, shard_training_batch

    # 1x1 maps into BatchNorm, as in the last stage of a network that divides its input by 32
    last_stage = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    for world in (2, 3):
        for rows in range(2, 3 * world):
            x, y = torch.randn(rows, 3, 1, 1), torch.arange(rows)
            shares = [shard_training_batch(x, y, DistInfo(rank=rank, world=world)) for rank in range(world)]
            counted = sorted(label for share in shares if share.images for label in share.y.tolist())
            assert counted == list(range(rows)), (world, rows)  # every row counted once
            for share in shares:  # DDP's mean of weight * (mean over a rank's rows) is then the global mean
                assert share.loss_weight == pytest.approx(world * share.images / rows)
                assert len(share.y) >= 2, (world, rows, share)
                last_stage(share.x)  # one row would raise "Expected more than 1 value per channel"


def test_a_budgeted_run_resumes_under_torchrun(tmp_path):
    """train.minutes is refused for a new DDP run (one process's steps do not time a DDP job), but a run that
    fitted its epochs to a budget in one process records them in config.yaml and times nothing when it resumes:
    torchrun continues it (it was refused, with advice to leave train.minutes null that a resume cannot take)."""
    from cnnlab.config import apply_overrides, RunConfig
    from cnnlab.run import RunFolder
    from cnnlab.train.engine import train

    out = tmp_path / "budgeted"
    config = apply_overrides(RunConfig(), ["model.name=lenet5", f"data.spec={DATA}", f"train.batch_size={BATCH}",
                                           "train.epochs=3", "train.minutes=1", "train.precision=fp32",
                                           "train.threads=1", "log.quiet=true", "log.curves=false"])

    def stop_after_epoch_1(row):
        raise KeyboardInterrupt  # as a second Ctrl-C: the run stops, its epoch-1 checkpoint on disk

    assert train(config, out, on_epoch_end=stop_after_epoch_1).interrupted
    recorded = RunFolder(out).read_config().train
    assert recorded.minutes == 1 and recorded.epochs == 3  # a minute fits the 3 short epochs
    resumed = torchrun(["train", "--resume", str(out), "--quiet"], dict(os.environ), tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1, 2, 3]


def test_sync_bn_on_the_cpu_is_refused_in_one_sentence():
    """torch's SyncBatchNorm has no CPU kernel: a DDP run stops with cnnlab's message before anything is built,
    not with DDP's ValueError. (The check runs on every rank before set-up; the torchrun tests above go
    through it, so it is called here directly, as rank 0 of 2.)"""
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.errors import CnnlabError
    from cnnlab.train.distributed import DistInfo
    from cnnlab.train.engine import _check_distributed

    config = apply_overrides(RunConfig(), ["model.name=resnet8", "train.batch_size=32", "train.sync_bn=true"])
    with pytest.raises(CnnlabError, match="train.sync_bn=true needs CUDA GPUs") as err:
        _check_distributed(config, torch.device("cpu"), DistInfo(rank=0, world=2))
    assert "SyncBatchNorm layers only work with GPU modules" not in str(err.value)
    _check_distributed(config, torch.device("cpu"), DistInfo())  # one process: sync_bn has nothing to sync
    odd = apply_overrides(RunConfig(), ["train.batch_size=33"])
    with pytest.raises(CnnlabError, match="must divide evenly over 2 processes") as err:
        _check_distributed(odd, torch.device("cpu"), DistInfo(rank=0, world=2))
    assert "a --nproc-per-node that divides 33" in str(err.value)  # what to do, for a resumed run too


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_match_one(tmp_path):  # pragma: no cover - run where two GPUs exist
    gpu = ["--set", "train.device=cuda", "--set", "train.precision=fp32"]
    ddp = torchrun([*RUN, *gpu, "--out", str(tmp_path / "ddp")], dict(os.environ), tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert run_in_process([*RUN, *gpu, "--out", str(tmp_path / "single")]) == 0
    single, _ = load_weights(tmp_path / "single" / "last.safetensors")
    two, _ = load_weights(tmp_path / "ddp" / "last.safetensors")
    assert max((single[k].double() - two[k].double()).abs().max().item() for k in single) < 1e-4


def test_sync_bn_in_one_process_is_named_once(tmp_path, capsys):
    """A single-process run has no other process to synchronise BatchNorm with: train.sync_bn=true changes
    nothing there, and a note says so once rather than ignoring the key without a word."""
    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.train.engine import train

    config = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=synthetic:classes=3,train=32,val=16,test=16",
                                           "train.epochs=2", "train.batch_size=16", "train.threads=1",
                                           "log.quiet=true", "train.sync_bn=true"])
    train(config, tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("note: train.sync_bn=true") == 1 and "changes nothing here" in err


# Runs cnnlab's main() with a SIGTERM sent to rank 1 alone (`kill` of one process) after its 3rd step, and with rank
# 0's report.html written slowly.
STOP_RANK_1 = """
import os, signal, sys, time
import cnnlab.cli as cli
import cnnlab.train.engine as engine

original_step, done = engine.train_step, []

def train_step(*args, **kwargs):
    result = original_step(*args, **kwargs)
    done.append(1)
    if len(done) == 3 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return result

write_page = cli._write_run_report

def slow_page(*args, **kwargs):
    time.sleep(1)  # a slow disk: torchrun ends the other ranks within 0.1 s (--monitor-interval) of a failure
    return write_page(*args, **kwargs)

engine.train_step, cli._write_run_report = train_step, slow_page
cli.main(sys.argv[1:])
"""


def test_a_sigterm_to_one_rank_stops_every_rank_and_rank_0_names_it_writes_and_says_it(tmp_path):
    """The ranks' vote stops them all at the same step; rank 0, which received no signal itself, still says it
    was a SIGTERM and exits with 143 (it said 'interrupted', as for a Ctrl-C, and exited with 130).

    Rank 0 then writes report.html and prints how to resume. The other ranks, the signalled one included, end
    with 0 and leave the exit code to rank 0: one ending first with 143 had torchrun end rank 0 at once, and the
    run was left without its page and without the line that says how to resume. A stop signal sent to every
    rank (a scheduler that signals each process, not through torchrun) meets the same ending there: each rank
    other than 0 has received the signal, as rank 1 has here. (Rank 0's own signal under torchrun:
    test_sigterm_to_torchrun_stops_every_rank_at_the_same_step in tests/train/test_signals.py.)"""
    driver, out = tmp_path / "driver.py", tmp_path / "run"
    driver.write_text(STOP_RANK_1)
    stopped = torchrun([*RUN, "--out", str(out)], dict(os.environ), tmp_path, program=(str(driver),))
    output = stopped.stdout + stopped.stderr
    # the signal lands after step 3's vote: every rank stops after step 4, where rank 0 saves
    assert stopped.returncode != 0, output  # torchrun reports rank 0's 143 as the job's failure
    assert output.count("stopped by SIGTERM: a checkpoint was saved (epoch 1, batch 4, step 4)") == 1, output
    assert f"torchrun --nproc-per-node 2 -m cnnlab train --resume {out}" in output, output
    assert "exitcode: 143" in output and "local_rank: 0" in output, output
    assert (out / "report.html").is_file(), "rank 0 was ended before it wrote report.html"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["message"], status


# Marks whether Python's shutdown ran in a rank, as RUN_PROBES does, for a command that fails.
AT_EXIT_MARK = """
import atexit, os, sys
import cnnlab.cli as cli

atexit.register(lambda: print(f"rank {os.environ['RANK']}: interpreter shutdown", file=sys.stderr, flush=True))
cli.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory):
    """One torchrun job whose bad input every rank meets after joining the process group: a batch larger than
    the training split (its set-up's check). Read by the bad-input test and by the test of how a rank ends."""
    root = tmp_path_factory.mktemp("bad_batch")
    driver, out = root / "driver.py", root / "bad"
    driver.write_text(AT_EXIT_MARK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        patch.delenv("CNNLAB_DATA", raising=False)
        done = torchrun([*RUN, "--out", str(out), "--set", "train.batch_size=1000"], dict(os.environ), root,
                        program=(str(driver),))
    return done, out


def test_bad_input_is_said_once_and_other_commands_are_refused(bad_batch, tmp_path):
    """Every rank meets the same bad input: rank 0 says it, and torchrun ends the others while they give it the
    first word (each rank printed the paragraph before). A command other than train would run whole in every
    process, writing the same files: it is refused, once. (The parser's usage errors take the same wait on rank 1:
    test_a_rank_other_than_0_still_says_its_error_after_the_wait.)"""
    bad, out = bad_batch  # met after the ranks joined the process group
    assert bad.returncode != 0, bad.stderr
    assert bad.stderr.count("error: The training split has 128 images, fewer than one batch of 1000") == 1, bad.stderr
    assert "exitcode: 2" in bad.stderr and not out.exists(), bad.stderr
    # met before any rank joins: a command other than train
    sweep = torchrun(["lr-find", "--model", "lenet5", "--data", DATA, "--out", str(tmp_path / "sweep.png")],
                     dict(os.environ), tmp_path)
    assert sweep.stderr.count("error: cnnlab lr-find runs in one process, and torchrun started 2") == 1, sweep.stderr
    assert "exitcode: 2" in sweep.stderr, sweep.stderr  # bad input before the join: 2 as well
    assert not (tmp_path / "sweep.png").exists()


def test_a_rank_other_than_0_still_says_its_error_after_the_wait(monkeypatch, capsys):
    """Rank 1 of 2 whose error rank 0 did not meet (torchrun did not end it during the wait): its paragraph and
    the parser's usage error still show, with their exit code."""
    import cnnlab.cli as cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)  # the wait, without waiting
    assert run_in_process(["train", "--resume", "no/such/run"]) == 2
    assert "error: --resume 'no/such/run' does not exist" in capsys.readouterr().err
    assert run_in_process(["train", "--model", "lenet5", "--epochs", "0"]) == 2
    assert "Invalid value for '--epochs'" in capsys.readouterr().err
    assert waits == [cli.RANK_0_FIRST_SECONDS] * 2  # each after giving rank 0 the first word


def test_other_commands_name_torchrun_in_one_paragraph(monkeypatch, capsys):
    """The refusal as each process meets it (here rank 0 of 2): exit code 2 and one paragraph that says what to
    run instead, before the command does any work. train itself goes on."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for command in (["check", "--model", "lenet5", "--data", DATA], ["search", "--model", "lenet5", "--data", DATA],
                    ["eval", "runs/none"], ["models"]):
        assert run_in_process(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cnnlab {command[0]} runs in one process") and "Traceback" not in err
        assert f"Run it without torchrun (python -m cnnlab {command[0]} ..." in err
    assert run_in_process(["train", "--resume", "no/such/run"]) == 2  # train's own checks
    err = capsys.readouterr().err
    assert "does not exist" in err and "runs in one process" not in err


# Rank 1 ends at once (kill -9, as the out-of-memory killer does) before its 3rd step, while rank 0 goes on into
# that step's all-reduce.
KILL_RANK_1 = """
import os, signal, sys
import cnnlab.cli as cli
import cnnlab.train.engine as engine

original_step, started = engine.train_step, []

def train_step(*args, **kwargs):
    started.append(1)
    if len(started) == 3 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return original_step(*args, **kwargs)

engine.train_step = train_step
cli.main(sys.argv[1:])
"""


def test_a_rank_that_dies_leaves_rank_0_to_record_the_failure(tmp_path):
    """The collective rank 0 waits in raises once the dead rank's connection closes, so rank 0 records 'failed'
    with the reason before torchrun ends it. Were it left waiting, torchrun would kill it 30 s after its SIGTERM
    (a SIGTERM only asks for a stop at the next step boundary, which a blocked collective never reaches) and
    status.json would still say 'running'."""
    driver, out = tmp_path / "driver.py", tmp_path / "run"
    driver.write_text(KILL_RANK_1)
    started = time.perf_counter()
    killed = torchrun([*RUN, "--out", str(out)], dict(os.environ), tmp_path, program=(str(driver),))
    output = killed.stdout + killed.stderr
    assert killed.returncode != 0 and "exitcode  : -9" in output, output  # rank 1 was killed
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "Connection" in status["message"], status
    assert output.count("exitcode  : -9") == 1, output  # rank 0 ended by itself, not by torchrun's SIGKILL
    print(f"\nrank 1 killed: the job ended after {time.perf_counter() - started:.1f} s")


# Rank 1 hangs at the start of its 3rd step, as a deadlock or a stalled disk would, and dies when torchrun ends it.
HANG_RANK_1 = """
import os, signal, sys, time
import cnnlab.cli as cli
import cnnlab.train.engine as engine

original_step, started = engine.train_step, []

def train_step(*args, **kwargs):
    started.append(1)
    if len(started) == 3 and os.environ["RANK"] == "1":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # hung: torchrun's SIGTERM ends it, as a process that is stuck
        time.sleep(120)
    return original_step(*args, **kwargs)

engine.train_step = train_step
cli.main(sys.argv[1:])
"""


def test_a_hung_rank_ends_the_job_after_the_timeout_with_one_paragraph(tmp_path):
    """A rank that hangs without dying closes no connection: the others waited in their collective for torch's
    30-minute default. CNNLAB_DDP_TIMEOUT sets the wait; when it runs out, rank 0 names itself, the collective it
    waited in and the rank that never came, says how to resume, records it in status.json and exits with 1."""
    driver, out = tmp_path / "driver.py", tmp_path / "run"
    driver.write_text(HANG_RANK_1)
    started = time.perf_counter()
    hung = torchrun([*RUN, "--out", str(out)], dict(os.environ, CNNLAB_DDP_TIMEOUT="2"), tmp_path,
                    program=(str(driver),))
    seconds = time.perf_counter() - started
    output = hung.stdout + hung.stderr
    assert hung.returncode != 0, output  # before: rank 0 waited for rank 1 (here 120 s), then trained on
    said = [line for line in hung.stderr.splitlines() if line.startswith("error: DDP timeout")]
    assert len(said) == 1, output
    assert said[0].startswith("error: DDP timeout: rank 0 of 2 waited 2 s in the step's loss sums and stop vote, and "
                              "rank 1 never joined it."), said[0]
    assert f"torchrun --nproc-per-node 2 -m cnnlab train --resume {out}" in said[0]
    assert "CNNLAB_DDP_TIMEOUT=SECONDS" in said[0] and "internal error" not in output, output
    assert "exitcode: 1) local_rank: 0" in output, output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "DDP timeout: rank 0 of 2" in status["message"], status
    print(f"\nrank 1 hung: the job ended after {seconds:.1f} s")
    assert seconds < 60, seconds


def test_only_a_collective_that_timed_out_reads_as_a_ddp_timeout():
    """The paragraph is for torch's timeouts of a collective (gloo's message, torch.distributed's errors that say
    so); another error that mentions a timeout, such as a data loader's, keeps its own report."""
    import torch.distributed as dist

    from cnnlab.train.distributed import is_timeout

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                        "2000ms for recv operation to complete")
    assert is_timeout(gloo) and is_timeout(dist.DistBackendError("allreduce timed out"))
    assert not is_timeout(RuntimeError("DataLoader timed out after 5 seconds"))
    assert not is_timeout(dist.DistBackendError("Connection closed by peer"))


def test_a_ddp_timeout_that_is_not_a_number_of_seconds_is_refused(monkeypatch, capsys, tmp_path):
    """CNNLAB_DDP_TIMEOUT is read when the process group is joined, before any rank waits for another: a value that
    is not a positive number of seconds is bad input (exit 2, one paragraph), checked here as rank 0 of 2."""
    from cnnlab.train.distributed import DEFAULT_TIMEOUT_SECONDS, timeout_seconds

    monkeypatch.delenv("CNNLAB_DDP_TIMEOUT", raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT_SECONDS
    monkeypatch.setenv("CNNLAB_DDP_TIMEOUT", "90.5")
    assert timeout_seconds() == 90.5
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for value in ("ten", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("CNNLAB_DDP_TIMEOUT", value)
        assert run_in_process([*RUN, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"error: CNNLAB_DDP_TIMEOUT='{value}' is not a number of seconds above 0" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 + err.count("note:"), err
    # Beyond torch's clock (int64 nanoseconds), 1e10 s made the ranks time out at once and 1e15 s an internal error
    for value in ("1e10", "1e15"):
        monkeypatch.setenv("CNNLAB_DDP_TIMEOUT", value)
        assert run_in_process([*RUN, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"error: CNNLAB_DDP_TIMEOUT='{value}' is more seconds than torch can wait" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 + err.count("note:"), err
    monkeypatch.setenv("CNNLAB_DDP_TIMEOUT", "1e9")  # the longest taken
    assert timeout_seconds() == 1e9


def test_ranks_that_name_the_default_run_folder_a_second_apart_train_into_rank_0s(runs):
    """Without --out each rank names the run folder runs/MODEL-DATA-TIME from its own clock: two ranks a second
    apart named two folders. Every rank now takes rank 0's, the one it writes (the module's DDP run, RUN_PROBES)."""
    folders = list((runs["ddp_cwd"] / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "last.safetensors").is_file(), folders
    trained = sorted(line for line in runs["ddp_stderr"].splitlines() if " trained into " in line)
    assert trained == [f"rank {rank} trained into runs/{folders[0].name}" for rank in (0, 1)], runs["ddp_stderr"]


def test_ranks_end_without_the_interpreter_shutdown_that_gloo_threads_can_abort(runs, bad_batch):
    """DDP keeps gloo's worker threads alive until the interpreter shuts down, and a worker that frees a finished
    collective's tensor then has to take the GIL, which aborts the rank (SIGABRT) about one run in ten on busy
    cores. A rank that joined the process group ends with its command's exit code and no Python shutdown (the
    module's DDP run marks a shutdown in each rank, RUN_PROBES)."""
    output = runs["ddp_output"]
    assert runs["ddp_returncode"] == 0, output
    assert "interpreter shutdown" not in output, output
    assert (runs["ddp"] / "report.txt").is_file(), "the DDP run wrote no report.txt"
    # a failing command keeps its exit code: bad input is 2 on every rank (the module's bad_batch job, AT_EXIT_MARK)
    bad, _ = bad_batch
    assert bad.returncode != 0 and "exitcode: 2" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def test_a_signal_to_one_rank_after_the_last_step_leaves_the_complete_run_to_rank_0(runs):
    """Rank 1 exited 143 as its train() returned, while rank 0 still saved the last checkpoint: torchrun then
    stopped rank 0 part-way and failed the whole run, which had trained every epoch. (The module's DDP run sends
    rank 1 alone a SIGTERM after its last step, RUN_PROBES.)"""
    output = runs["ddp_output"]
    assert "rank 1: SIGTERM after the last step" in output, "the probe sent no signal: " + output
    assert runs["ddp_returncode"] == 0, output  # no rank signalled past the vote fails torchrun's run
    assert "ChildFailedError" not in output and "closing signal" not in output, output
    status = json.loads((runs["ddp"] / "status.json").read_text())
    assert status["state"] == "finished", status
    assert (runs["ddp"] / "report.txt").is_file(), "the run signalled after its last step wrote no report.txt"
