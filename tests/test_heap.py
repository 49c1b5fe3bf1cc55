"""cnnlab.heap: the engine keeps the memory a training step frees in the C heap, for the next step.

The speed it is worth is bench/cpu_heap.py's to measure; these check what it sets, when it leaves the
heap alone, and, in fresh processes (the thresholds hold for a process's life), that glibc then stops
handing the memory back: the page faults of a step's allocation pattern.
"""

import json
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from cnnlab import heap
from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.train import engine

TINY = ["model.name=lenet5", "data.spec=synthetic:classes=3,train=32,val=16,test=16", "data.image_size=32",
        "train.batch_size=16", "train.epochs=1", "train.device=cpu", "log.quiet=true"]


@pytest.fixture
def fresh(monkeypatch):
    """The module as in a process that has not called it yet; a recording stand-in for glibc's mallopt."""
    monkeypatch.setattr(heap, "_done", None)
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    return calls, mallopt


def test_it_sets_the_mmap_threshold_first_then_the_trim_threshold(fresh):
    calls, mallopt = fresh
    assert heap.keep_freed_memory(environ={}, mallopt=mallopt) == "kept"
    # glibc's malloc.h numbers, and its largest mmap threshold on 64 bits (4 * 1 MiB * sizeof(long))
    assert calls == [(-3, 32 * 1024 * 1024), (-1, 1024**3)]


def test_a_tunable_of_something_else_leaves_the_thresholds_to_cnnlab(fresh):
    calls, mallopt = fresh
    assert heap.keep_freed_memory(environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mallopt=mallopt) == "kept"
    assert len(calls) == 2


def test_the_first_call_decides_for_the_process(fresh):
    calls, mallopt = fresh
    heap.keep_freed_memory(environ={}, mallopt=mallopt)
    assert heap.keep_freed_memory(environ={"CNNLAB_HEAP": "glibc"}, mallopt=mallopt) == "kept"
    assert len(calls) == 2


@pytest.mark.parametrize("environ, words", [
    ({"CNNLAB_HEAP": "glibc"}, "left to glibc (CNNLAB_HEAP=glibc)"),
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "left as MALLOC_TRIM_THRESHOLD_ set it"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TOP_PAD_": "0"},
     "left as MALLOC_MMAP_THRESHOLD_ and MALLOC_TOP_PAD_ set it"),
    # glibc's tunables are the same choice in another form: they were overwritten
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"},
     "left as GLIBC_TUNABLES (glibc.malloc.mmap_threshold, glibc.malloc.trim_threshold) set it"),
])
def test_it_leaves_the_heap_alone_when_the_environment_chose(fresh, environ, words):
    calls, mallopt = fresh
    assert heap.keep_freed_memory(environ=environ, mallopt=mallopt) == words
    assert calls == []


def test_a_refused_threshold_is_said(fresh):
    assert heap.keep_freed_memory(environ={}, mallopt=lambda param, value: 0) == "left: glibc refused the thresholds"


def test_an_unknown_choice_is_refused_with_the_two_there_are(fresh):
    calls, mallopt = fresh
    with pytest.raises(CnnlabError, match=r"CNNLAB_HEAP='kept' is not a heap choice: set it to keep .* or glibc"):
        heap.keep_freed_memory(environ={"CNNLAB_HEAP": "kept"}, mallopt=mallopt)
    assert calls == []


def test_training_on_the_cpu_keeps_the_heap(monkeypatch):
    called = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: called.append(True) or "kept")
    engine.setup_run(apply_overrides(RunConfig(), TINY), loaders=False)
    assert called == [True]  # eval, predict, ensembles and probe: tests/evaluate/test_evaluate.py


def test_keep_on_cpu_leaves_a_gpu_run_s_heap_alone(monkeypatch):
    called = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: called.append(True) or "kept")
    heap.keep_on_cpu(torch.device("cuda"))  # only its type is read: no GPU needed
    heap.keep_on_cpu(torch.device("cpu"))
    assert called == [True]


def test_train_refuses_an_unknown_heap_choice_in_one_paragraph(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.setenv("CNNLAB_HEAP", "jemalloc")
    code, _, err = cli(["train", *[arg for item in TINY for arg in ("--set", item)], "--out", str(tmp_path / "run")])
    assert code == 2
    assert "CNNLAB_HEAP='jemalloc' is not a heap choice" in err and "Traceback" not in err


# A step's pattern: eight 16 MiB activations allocated, written and freed, again and again, straight through the
# C library (torch's CPU tensors come from the same malloc; without torch, no allocation of its own lands between
# them). glibc on its own maps the first round's blocks for themselves, then serves them from the heap (a freed
# one raises its mmap threshold to 16 MiB), but its trim threshold follows at twice that, so at every free it
# gives the 128 MiB back to the kernel and the next round faults the pages in again.
PATTERN = textwrap.dedent("""
    import ctypes, json, resource
    from cnnlab.heap import keep_freed_memory
    done = keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    SIZE = 16 * 2**20
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(SIZE) for _ in range(8)]
        for block in blocks:
            ctypes.memset(block, 1, SIZE)
        for block in blocks:
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"done": done, "faults": faults}))
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_kept_memory_is_not_faulted_in_again_at_every_step(monkeypatch):
    for name in heap.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    results = {}
    for choice in ("glibc", "keep"):
        monkeypatch.setenv("CNNLAB_HEAP", choice)
        out = subprocess.run([sys.executable, "-c", PATTERN], capture_output=True, text=True, check=True).stdout
        results[choice] = json.loads(out)
    pages = 8 * 16 * 2**20 // 4096  # eight 16 MiB blocks of 4 KiB pages
    assert results["glibc"]["done"].startswith("left to glibc")
    assert all(faults > pages * 0.9 for faults in results["glibc"]["faults"])  # handed back and faulted in again
    assert results["keep"]["done"] == "kept"
    first, *later = results["keep"]["faults"]
    assert first > pages * 0.9 and all(faults < pages / 100 for faults in later)  # faulted in once, then kept
