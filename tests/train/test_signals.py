"""Real signals to a real `cnnlab train` process: SIGTERM (kill, timeout, docker stop, a pre-emption) stops a
run as Ctrl-C does, at a step boundary with a checkpoint, and exits 143 (128 + 15); a stop during set-up
says what it interrupted and that nothing was written.

The process runs cnnlab's own main() with one function wrapped to tell the test where the run stands (a
file appears) and to give the signal time to land there: set-up, the train.minutes timing, or a step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.run import MetaKey, RunFolder

DATA = "synthetic:classes=4,train=128,val=32,test=32"
RUN = ["train", "--model", "lenet5", "--data", DATA, "--epochs", "2", "--set", "train.batch_size=16", "--quiet",
       "--set", "train.threads=1", "--set", "log.curves=false"]  # no test here reads curves.png

# Runs `python -m cnnlab ARGS` with a pause at PAUSE (setup, minutes or step), announced by creating FLAG.
DRIVER = """
import os, sys, time
import cnnlab.train.budget as budget
import cnnlab.train.engine as engine
from cnnlab.cli import main

flag, where = os.environ["SIGNAL_TEST_FLAG"], os.environ["SIGNAL_TEST_PAUSE"]

def announce():
    open(flag, "w").close()

def paused(original):
    def wrapper(*args, **kwargs):
        announce()
        time.sleep(60)  # the signal lands in here
        return original(*args, **kwargs)
    return wrapper

if where == "setup":
    engine.setup_run = paused(engine.setup_run)
elif where == "minutes":
    budget.fit_to_budget = paused(budget.fit_to_budget)
elif where == "step":
    original_step, done = engine.train_step, []

    def train_step(*args, **kwargs):
        result = original_step(*args, **kwargs)  # its stop vote is taken in here
        done.append(1)
        if len(done) == 3:
            announce()
        if len(done) >= 3:
            time.sleep(0.5)  # slow steps from the third on: the signals land between two votes
        return result

    engine.train_step = train_step
main(sys.argv[1:])
"""


def _no_sigint_inherited_ignored() -> None:
    """A test run started in the background inherits SIGINT ignored, which Python and cnnlab then leave alone,
    and a runner may start it with SIGINT blocked (a mask outlives exec): the child gets the default, unblocked,
    as a terminal's process has."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], pause: str, scratch: Path) -> tuple[subprocess.Popen, Path]:
    flag = scratch / f"flag-{pause}-{time.monotonic_ns()}"
    env = dict(os.environ, SIGNAL_TEST_FLAG=str(flag), SIGNAL_TEST_PAUSE=pause, OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, preexec_fn=_no_sigint_inherited_ignored)
    return process, flag


def wait_for(flag: Path, process: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not flag.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (exit code {process.returncode}) before the point the test waits for:\n{err}")
        assert time.monotonic() < deadline, "the run did not reach the point the test waits for"
        time.sleep(0.05)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint_then_resumes(tmp_path, cli):
    out = tmp_path / "run"
    process, flag = start([*RUN, "--out", str(out)], "step", tmp_path)
    wait_for(flag, process)
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "stopping at the end of this step" in err
    # The signal landed after step 3's vote: step 4's vote stops the run after step 4, saved there.
    assert "stopped by SIGTERM: a checkpoint was saved (epoch 1, batch 4, step 4)" in err
    assert f"cnnlab train --resume {out}" in err
    folder = RunFolder(out)
    status = json.loads(folder.status.read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["message"]
    assert folder.last.is_file()

    # the resume is not about signals: it runs in the test's process (a process start is most of a tiny run)
    code, _, err = cli(["train", "--resume", str(out), "--quiet"])
    assert code == 0, err
    assert json.loads(folder.status.read_text())["state"] == "finished"


def test_a_second_sigterm_stops_at_once_and_saves_nothing(tmp_path):
    out = tmp_path / "run"
    process, flag = start([*RUN, "--out", str(out)], "step", tmp_path)
    wait_for(flag, process)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.1)  # inside the same slow step: the first is only a request
    process.send_signal(signal.SIGTERM)
    code, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM: stopped at once before the first checkpoint" in err
    assert not RunFolder(out).last.exists()


# Each signal at one of the two stages: train() takes both signals over once, before set-up, and a stage only names
# what is under way (engine.StopRequest.stage), so each stage and each signal is met without the four pairs
@pytest.mark.parametrize("pause, extra, stage, signum, word", [
    ("setup", [], "loading the data and building the model", signal.SIGTERM, "stopped by SIGTERM"),
    ("minutes", ["--set", "train.minutes=0.5"], "timing the steps for train.minutes", signal.SIGINT, "interrupted"),
])
def test_a_stop_in_set_up_says_what_it_interrupted_and_that_nothing_was_written(tmp_path, pause, extra, stage,
                                                                                 signum, word):
    out = tmp_path / "run"
    process, flag = start([*RUN, *extra, "--out", str(out)], pause, tmp_path)
    wait_for(flag, process)
    process.send_signal(signum)
    code, err = finish(process)
    assert code == 128 + signum, err
    lines = [line for line in err.splitlines() if line.startswith(word)]
    assert len(lines) == 1 and stage in lines[0] and f"nothing was written to {out}" in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()  # the folder made for the run is gone again: nothing of it was written


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step(tmp_path):
    """torchrun passes a SIGTERM on to every rank; the ranks' per-step stop vote makes them stop after the same
    step, where rank 0 saves (the others wait for its write). A rank that left alone would leave the others
    waiting in the next collective until torchrun killed them (it waits 30 s, then SIGKILL)."""
    from cnnlab.train.checkpoint import read_checkpoint_meta

    out, driver = tmp_path / "run", tmp_path / "driver.py"
    driver.write_text(DRIVER)
    flag = tmp_path / "flag"
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SIGNAL_TEST_FLAG=str(flag), SIGNAL_TEST_PAUSE="step", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TMPDIR=str(tmp_path))  # torchrun's log folder goes there
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                str(driver), *RUN, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(flag, process, limit=240)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert time.monotonic() - signalled < 25, err  # every rank ended on its own, before torchrun's SIGKILL
    assert err.count("stopped by SIGTERM: a checkpoint was saved") == 1, err  # rank 0 speaks
    # ... with the command that continues the run as it ran (it said `cnnlab train --resume`, one process)
    assert f"continue with: torchrun --nproc-per-node 2 -m cnnlab train --resume {out}" in err, err
    # torchrun's own ending, which docs/command-line.md describes: exit code 1 and its traceback's last line. Its
    # launcher (torch's code, not cnnlab's) now and then aborts as it shuts down after that traceback ("terminate
    # called without an active exception", SIGABRT): seen once in about a dozen runs on busy cores. The ranks'
    # own ending is checked below either way.
    launcher_aborted = process.returncode == -signal.SIGABRT and "terminate called without an active exception" in err
    assert process.returncode == 1 or launcher_aborted, err
    assert "SignalException: Process" in err and "got signal: 15" in err, err
    meta = read_checkpoint_meta(RunFolder(out).last)
    assert meta[MetaKey.STEP] == 4, meta  # the step after the one the signal landed in, on every rank
    assert json.loads(RunFolder(out).status.read_text())["state"] == "interrupted"


def test_commands_that_stop_through_a_run_name_the_signal_the_run_received(monkeypatch):
    """search, experiment and transfer stop with a KeyboardInterrupt of their own after a run stops: their last
    line and exit code follow the signal that run received (a SIGTERM is not called a Ctrl-C)."""
    from cnnlab import cli
    from cnnlab.train import engine

    monkeypatch.setattr(engine, "_received_signal", signal.SIGTERM)
    assert (cli._stopped_word(), cli._interrupted_exit_code()) == ("stopped by SIGTERM", 143)
    monkeypatch.setattr(engine, "_received_signal", None)  # no run received one: Python's own Ctrl-C
    assert (cli._stopped_word(), cli._interrupted_exit_code()) == ("interrupted", 130)
    assert cli._stopped_word(signal.SIGTERM) == "stopped by SIGTERM"
