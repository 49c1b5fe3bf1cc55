"""status.json and environment.json: where a run stands and what it trained on, whatever way it ended."""

from __future__ import annotations

import json
import os
import sys

import pytest

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.heap import heap_state
from cnnlab.run import RUN_STATES, RunFolder
from cnnlab.threads import process_cores
from cnnlab.train.engine import NonFiniteLossError, train

SYNTHETIC = "synthetic:classes=3,train=64,val=32,test=32,channels=1"


def _config(*overrides: str) -> RunConfig:
    return apply_overrides(RunConfig(), ["model.name=lenet5", f"data.spec={SYNTHETIC}", "train.epochs=2",
                                         "train.batch_size=16", "log.quiet=true", "train.threads=1", *overrides])


def _status(run) -> dict:
    status = json.loads(RunFolder(run).status.read_text())
    assert status["state"] in RUN_STATES
    return status


def test_a_finished_run_says_so_and_records_its_machine(tmp_path):
    states = []
    train(_config(), tmp_path / "run", on_epoch_end=lambda row: states.append(_status(tmp_path / "run")))
    assert [(s["state"], s["epoch"]) for s in states] == [("running", 1), ("running", 2)]
    status = _status(tmp_path / "run")
    assert (status["state"], status["epoch"], status["epochs"], status["message"]) == ("finished", 2, 2, None)
    assert status["pid"] == os.getpid() and status["started"] <= status["updated"]
    environment = json.loads(RunFolder(tmp_path / "run").environment.read_text())
    assert environment["cores"] == len(process_cores()) and environment["device"] == "cpu"
    assert environment["torch"] and environment["cpu"]
    assert environment["heap"] == heap_state() != "glibc's own"  # a CPU run sets the heap, and says how


def test_interrupted_diverged_and_failed_runs_say_which(tmp_path):
    def ctrl_c(row):
        raise KeyboardInterrupt

    result = train(_config("train.epochs=3"), tmp_path / "stopped", on_epoch_end=ctrl_c)
    assert result.interrupted
    assert (_status(tmp_path / "stopped")["state"], _status(tmp_path / "stopped")["epoch"]) == ("interrupted", 1)

    with pytest.raises(NonFiniteLossError) as err:
        train(_config("optim.lr=1e12"), tmp_path / "nan")
    status = _status(tmp_path / "nan")
    assert status["state"] == "diverged" and status["message"] == str(err.value)

    def broken(row):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        train(_config(), tmp_path / "failed", on_epoch_end=broken)
    assert _status(tmp_path / "failed")["message"] == "RuntimeError: disk on fire"
    assert _status(tmp_path / "failed")["state"] == "failed"


def test_a_failure_in_the_last_set_up_steps_is_recorded(tmp_path, monkeypatch):
    # status.json says "running" before the DDP wrapper, the compiler and the TensorBoard writer are made:
    # a failure there must not leave a "running" run with a dead pid.
    from cnnlab.train import engine

    def broken_wrapper(*args, **kwargs):
        raise RuntimeError("compiler on fire")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_forward_model", broken_wrapper)
        with pytest.raises(RuntimeError):
            train(_config(), tmp_path / "wrapper")
    status = _status(tmp_path / "wrapper")
    assert (status["state"], status["message"]) == ("failed", "RuntimeError: compiler on fire")

    class BrokenWriter:  # the tensorboard package is there, but its writer cannot write
        def __init__(self, log_dir, purge_step=None):
            raise OSError("no space left for events")

    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = BrokenWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with pytest.raises(OSError):
        train(_config("log.tensorboard=true"), tmp_path / "writer")
    status = _status(tmp_path / "writer")
    assert (status["state"], status["message"]) == ("failed", "OSError: no space left for events")


def test_tensorboard_without_its_package_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(CnnlabError, match="pip install tensorboard"):
        train(_config("log.tensorboard=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _edit_json(path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_a_resume_keeps_the_earlier_parts_machine_and_threads(tmp_path):
    """A run stopped on one machine and finished on another names both, each from the epoch it took over, and
    report.txt's threads line adds up the seconds of every part (the earlier part's read from status.json)."""
    from cnnlab.report.page import _machine

    run = RunFolder(tmp_path / "run")

    def ctrl_c(row):
        raise KeyboardInterrupt

    train(_config("train.epochs=3"), run.path, on_epoch_end=ctrl_c)  # stops after epoch 1
    first = json.loads(run.environment.read_text())
    assert first["first_epoch"] == 1 and "earlier" not in first
    recorded = _status(run.path)["threads_seconds"]
    assert list(recorded) == ["1"] and recorded["1"] > 0  # train.threads=1
    # stand-ins for another machine: 64 cores, and 7 threads for 100 s before the stop
    _edit_json(run.environment, cores=64, cpu="Earlier CPU")
    _edit_json(run.status, threads_seconds={"7": 100.0, **recorded})

    train(run.read_config(), run.path, resume=True)
    environment = json.loads(run.environment.read_text())
    assert environment["first_epoch"] == 2 and environment["cores"] == len(process_cores())
    assert [(e["cores"], e["first_epoch"]) for e in environment["earlier"]] == [(64, 1)]
    machine = _machine(environment)
    assert "from epoch 1: cpu · Earlier CPU, 64 cores" in machine and "from epoch 2: cpu" in machine
    seconds = _status(run.path)["threads_seconds"]
    assert seconds["7"] == 100.0 and seconds["1"] > recorded["1"]
    threads_line = next(line for line in run.report.read_text().splitlines() if line.startswith("threads"))
    assert "7 for 100.0 s, 1 for" in threads_line and "resumed with another thread count" in threads_line

    # a resume with nothing left to train leaves both records as they are
    before_environment, before_threads = run.environment.read_text(), _status(run.path)["threads_seconds"]
    train(run.read_config(), run.path, resume=True)
    assert run.environment.read_text() == before_environment
    assert _status(run.path)["threads_seconds"] == before_threads
    assert threads_line in run.report.read_text().splitlines()


def test_a_part_that_took_no_step_leaves_no_record_of_its_own_and_one_stopped_mid_epoch_does(tmp_path):
    """A resume stopped before its first optimiser step starts where the next one does: the next one's record
    replaces it, so the run's parts are the ones that trained its steps. One stopped mid-epoch kept its steps
    (a resume continues from them), so its machine stays on record."""
    run = RunFolder(tmp_path / "run")

    def ctrl_c(row):
        raise KeyboardInterrupt

    train(_config("train.epochs=3"), run.path, on_epoch_end=ctrl_c)
    _edit_json(run.environment, cores=64)
    train(run.read_config(), run.path, resume=True, on_epoch_end=ctrl_c)  # trains epoch 2, then stops
    second = json.loads(run.environment.read_text())
    per_epoch = second["first_step"] - 1  # the first part trained epoch 1's steps
    assert second["first_epoch"] == 2 and per_epoch > 1
    # as if the second part had been resumed once more and stopped before its first step of epoch 3
    _edit_json(run.environment, first_epoch=3, first_step=2 * per_epoch + 1, cores=32)
    kept = json.loads(run.environment.read_text())
    train(run.read_config(), run.path, resume=True)
    environment = json.loads(run.environment.read_text())
    assert (environment["first_epoch"], environment["first_step"]) == (3, 2 * per_epoch + 1)
    assert [(e["cores"], e["first_epoch"]) for e in environment["earlier"]] == [(64, 1)]
    # a part that began mid-epoch 3 (it trained steps the run kept) is kept beside the one after it
    run.environment.write_text(json.dumps({**kept, "first_step": 2 * per_epoch}))
    from cnnlab.train.engine import write_machine_record

    write_machine_record(run, {"cores": 1}, first_epoch=3, first_step=2 * per_epoch + 1, resume=True)
    assert [e["cores"] for e in json.loads(run.environment.read_text())["earlier"]] == [64, 32]


def test_a_resume_on_a_machine_where_auto_picks_another_precision_says_so(tmp_path, capsys):
    """train.precision=auto chooses per machine: a run stopped on a CPU with bf16 units and resumed on one
    without trained its parts in bf16 and fp32, said nowhere but in environment.json's earlier parts."""
    from cnnlab.train.engine import write_machine_record

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    write_machine_record(run, {"precision": "bf16"}, first_epoch=1, first_step=1, resume=False)
    write_machine_record(run, {"precision": "bf16"}, first_epoch=2, first_step=9, resume=True)
    assert "trains in" not in capsys.readouterr().err  # the same precision: nothing to say
    write_machine_record(run, {"precision": "fp32"}, first_epoch=3, first_step=17, resume=True)
    err = capsys.readouterr().err
    assert "this part of the run trains in fp32, where its part before trained in bf16" in err, err
    assert [part["precision"] for part in json.loads(run.environment.read_text())["earlier"]] == ["bf16", "bf16"]
    # a damaged record (an earlier part that is not a mapping, a precision that is not a name) resumes all the same
    for damaged in ("damaged", None, {"precision": ["bf16"]}):
        _edit_json(run.environment, earlier=[damaged])
        write_machine_record(run, {"precision": "fp32"}, first_epoch=5, first_step=33, resume=True)
    assert "trains in" not in capsys.readouterr().err


def test_the_bf16_note_does_not_promise_full_precision_to_muon(monkeypatch, capsys):
    """Muon's orthogonalisation runs in bf16 on a CPU with bf16 units whatever train.precision says: the note said
    train.precision=fp32 keeps full precision, which it does not with Muon."""
    from types import SimpleNamespace

    import torch

    from cnnlab.config import RunConfig, apply_overrides
    from cnnlab.train import engine

    monkeypatch.setattr(engine, "cpu_has_bf16_units", lambda: True)
    for optimiser, said in (("sgd", "(train.precision=fp32 keeps full precision)"),
                            ("muon", "(train.precision=fp32 keeps the forward and backward passes in full precision; "
                                     "Muon's orthogonalisation stays in bf16 here)")):
        config = apply_overrides(RunConfig(), [f"optim.name={optimiser}"])
        engine.announce_precision(SimpleNamespace(device=torch.device("cpu"), config=config,
                                                  autocast_dtype=torch.bfloat16))
        assert said in capsys.readouterr().err
