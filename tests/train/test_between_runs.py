"""Ctrl-C and SIGTERM between the training runs of `cnnlab experiment` and `cnnlab search` (real signals to a real
process): the run that finished is kept and recorded, the next one does not start, one line says how to continue,
the exit code is 128 + the signal, and the same command continues. Before, a SIGTERM there ended the process at
once (exit -15, not a word).

The process runs cnnlab's main() with the engine's train() wrapped: after the first run returns it creates a file
and pauses, the work between two runs during which the test's signal lands, until the signal is held (at most 3 s).
The same command then continues in the test's own process: it reads only the folder the stopped process left.
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

DRIVER = """
import os, sys, time
import cnnlab.train.engine as engine
from cnnlab.cli import main
from cnnlab.train.between_runs import held_signal

original, done = engine.train, []

def train(*args, **kwargs):
    result = original(*args, **kwargs)
    done.append(1)
    if len(done) == 1:
        open(os.environ["SIGNAL_TEST_FLAG"], "w").close()
        # between the first run and the next: the signal lands here. The pause ends once it is held; unheld (the
        # feature broken), the process ends on it or goes on after 3 s into the next run, which the test sees
        waited = time.monotonic() + 3
        while held_signal() is None and time.monotonic() < waited:
            time.sleep(0.02)
    return result

engine.train = train
main(sys.argv[1:])
"""

DATA = "synthetic:classes=4,train=64,val=32,test=32"
# No test here reads a run's curves.png: drawing it was about half a second of each tiny run (an experiment's runs
# draw none of their own)
NO_CURVES = ["--set", "log.curves=false"]
# normalize at tiny takes 10 training images of each of at least 4 classes: synthetic ones spare the process the
# digits' loading (scikit-learn's import, the resize) that its default data costs, a few seconds of each start
NORMALIZE = ["experiment", "normalize", "--size", "tiny", "--data", "synthetic:classes=4,train=40,val=8,test=8"]
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM"}


def _default_sigint() -> None:
    """A test started in the background inherits SIGINT ignored, which Python and cnnlab leave alone, and a
    runner may start it with SIGINT blocked (a mask outlives exec): the child gets neither, as a terminal's has."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signalled_between_runs(args: list[str], signum: int, scratch: Path) -> subprocess.CompletedProcess:
    """Run ``cnnlab ARGS`` under the driver, send ``signum`` once the first run has returned, and wait for the end."""
    flag = scratch / f"flag-{time.monotonic_ns()}"
    env = dict(os.environ, SIGNAL_TEST_FLAG=str(flag), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 240
    while not flag.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (exit code {process.returncode}) before its first run did:\n{err}")
        assert time.monotonic() < deadline, "the first run did not finish"
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=240)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_experiment_stops_before_its_next_run_and_continues(tmp_path, cli, signum):
    out = tmp_path / "exp"
    args = [*NORMALIZE, "--out", str(out)]
    stopped = signalled_between_runs(args, signum, tmp_path)
    err = stopped.stderr
    assert stopped.returncode == 128 + signum, err
    assert "stopping before the next training run starts, or a run's measures" in err, err
    last = err.strip().splitlines()[-1]
    assert last == f"{WORDS[signum]}: 1 run is kept in {out}; run the same command to continue.", err
    assert "Traceback" not in err
    runs = sorted(path.parent.relative_to(out / "runs").as_posix() for path in (out / "runs").glob("*/*/report.txt"))
    assert len(runs) == 1 and len(list((out / "runs").glob("*/*"))) == 1, runs  # the finished run, no other begun
    assert "normalised" in stopped.stdout  # the finished run's line was printed before the stop
    if signum != signal.SIGTERM:
        return  # the continue reads the run folder, whichever signal stopped it: once, after the SIGTERM, suffices

    # The same command continues: it reads the folder the stopped process left, so it runs in this process
    code, again, err = cli(args)
    assert code == 0, err
    assert "read back" in again and again.count("read back") == 1, again
    assert json.loads((out / "result.json").read_text())["resumed"] is True


def test_a_search_stops_before_its_next_trial_and_continues(tmp_path, cli):
    out, space = tmp_path / "search", tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 0.01, high: 0.1, log: true}\n")
    args = ["search", "--model", "lenet5", "--data", DATA, "--space", str(space), "--trials", "2", "--epochs", "1",
            "--batch-size", "16", *NO_CURVES, "--out", str(out)]
    stopped = signalled_between_runs(args, signal.SIGTERM, tmp_path)
    err = stopped.stderr
    assert stopped.returncode == 143, err  # before: -15, the process ended at once without a word
    assert "stopping before the next training run starts (the finished runs" in err, err  # no measures
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: 1 finished trial is kept in sqlite:///") and last.endswith(
        "; run the same command to continue."), err
    assert "trial 0: val acc" in stopped.stdout  # the finished trial was recorded before the stop
    trials = sorted(path.name for path in (out / "trials").iterdir())
    assert len(trials) == 1, trials  # no second trial was begun

    code, again, err = cli(args)  # the same command continues, in this process: it reads the study the stop left
    assert code == 0, err
    assert "trials: 2 complete" in again, again


def test_a_transfer_ladder_stops_before_its_next_rung_and_continues(tmp_path, cli):
    source = tmp_path / "source"  # the source run is trained in this process: the signals go to the transfer's
    code, _, err = cli(["train", "--model", "lenet5", "--data", "synthetic:classes=4,train=64,val=16,test=16",
                        "--epochs", "1", "--batch-size", "16", "--quiet", *NO_CURVES, "--out", str(source)])
    assert code == 0, err
    out = tmp_path / "ladder"
    args = ["transfer", str(source), "--data", "synthetic:classes=3,train=30,val=12,test=12", "--per-class", "2",
            "--steps", "2", "--seeds", "1", *NO_CURVES, "--out", str(out)]
    stopped = signalled_between_runs(args, signal.SIGTERM, tmp_path)
    err = stopped.stderr
    assert stopped.returncode == 143, err
    assert "stopping before the next training run starts (the finished runs" in err, err  # no measures
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: 1 run is kept") and last.endswith("run the same command to continue."), err
    # The finished rung, scored and recorded, and the probe that follows it (it trains no network, so it ran); the
    # next training rung did not start
    recorded = json.loads((out / "transfer.json").read_text())
    assert [(row["rung"], row["status"]) for row in recorded["runs"]] == [("scratch", "done"), ("probe", "done")]
    assert recorded["runs"][0]["test_acc"] is not None and not recorded["finished"], recorded
    assert sorted(path.name for path in (out / "2" / "seed0").iterdir()) == ["scratch"]

    code, again, err = cli(args)  # the same command continues, in this process: it reads the ladder the stop left
    assert code == 0, err
    assert again.count("read back") == 1, again
    assert json.loads((out / "transfer.json").read_text())["finished"] is True


def test_a_signal_during_a_measure_stops_before_the_next_one(monkeypatch):
    """lesion and loss-surface measure their trained runs one by one after the last one trains, minutes each at
    full: a SIGTERM that lands during a measure is held, that measure ends, and the next does not start."""
    from types import SimpleNamespace

    from cnnlab.experiments.training import RunOutcome, measure_runs
    from cnnlab.train import between_runs
    from cnnlab.train.between_runs import StoppedBetweenRuns, stop_between_runs

    # The signal held here stays the process's last (it decides a stopped command's exit code): put back after, so
    # that a later test's Ctrl-C in this process exits 130, not this SIGTERM's 143
    monkeypatch.setattr(between_runs, "_last", None)

    outcomes = [RunOutcome(f"net{k}", 0, f"runs/net{k}/seed0", "trained") for k in range(3)]
    measured, said = [], []

    def measure(outcome):
        measured.append(outcome.setting)
        if outcome.setting == "net0":
            os.kill(os.getpid(), signal.SIGTERM)  # held by stop_between_runs: this measure goes on
            time.sleep(0.05)  # Python runs the handler between bytecodes
        return outcome.setting

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedBetweenRuns) as stopped, stop_between_runs():
        measure_runs(SimpleNamespace(say=said.append), outcomes, "lesions", measure, str)
    assert stopped.value.signum == signal.SIGTERM
    assert measured == ["net0"] and len(said) == 1 and said[0].startswith("lesions 1 of 3  net0/seed0  net0")
    assert signal.getsignal(signal.SIGTERM) == before  # the handler before it is back


def test_a_signal_after_the_last_run_lets_the_experiment_write_its_results(tmp_path, cli, monkeypatch):
    """The signals were held only while the runs trained: one that landed while the table, the pages or
    result.json were written ended the command there (SIGTERM without a word), and the results were lost."""
    from cnnlab.experiments import base
    from cnnlab.train import between_runs

    monkeypatch.setattr(between_runs, "_last", None)  # this test's SIGTERM must not decide a later command's exit
    write_table = base._write_table

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # held: the results are still written
        time.sleep(0.05)  # Python runs the handler between bytecodes
        return write_table(*args, **kwargs)

    monkeypatch.setattr(base, "_write_table", signalled)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "exp"
    code, stdout, err = cli([*NORMALIZE, "--out", str(out)])
    assert code == 0, err
    assert between_runs.last_signal() == signal.SIGTERM  # held, its line written straight to the stderr file
    assert json.loads((out / "result.json").read_text())["verdict"]
    assert signal.getsignal(signal.SIGTERM) == before
