import os

import pytest
import torch

from cnnlab.cli import main
from cnnlab.threads import process_cores


def pytest_configure(config):
    """Under pytest-xdist, each worker takes its share of the cores for torch's threads.

    torch's default is one thread per core in every process, so two workers on two cores run four
    threads, and each of them waits on the others: measured on 2 cores, tests/test_registry.py and
    tests/train/test_interrupt.py took 228 s with two workers at torch's default and 79 s at one
    thread each; the whole suite went from 8 min 00 s to 7 min 16 s. cnnlab's thread governor takes
    this count as the ceiling it never exceeds.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, len(process_cores()) // int(workers))
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))  # the processes the tests start: the same share


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def run(args):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
            raise SystemExit(0)
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Statistics and downloads go to a per-session folder, never the user's ~/.cache."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _fp32_on_every_cpu():
    """train.precision=auto means fp32 in this test process, whatever the CPU.

    On a CPU with bf16 units (AVX512-BF16, AMX) auto trains in bf16, elsewhere in fp32. The suite's exact
    comparisons (resumes bit for bit, DDP against one process, a run that must diverge) are written for
    fp32, and CI's machine may be of either kind. Session-scoped, so that the runs module- and
    session-scoped fixtures train are fp32 too. Tests that set train.precision=bf16, or patch this check,
    cover the bf16 path; processes the tests start choose for themselves, and set train.precision=fp32
    where they compare numbers exactly.
    """
    from cnnlab.train import engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "cpu_has_bf16_units", lambda: False)
        yield
