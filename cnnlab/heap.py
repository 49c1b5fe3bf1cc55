"""The C heap of a process that runs networks on the CPU: freed memory kept for the next step.

Why. torch's CPU tensors come from the C library's ``malloc``, and a training step frees what the
step before it allocated: every activation and gradient, a few MB each at the recipes' batches
(resnet8 at batch 128: 128 x 16 x 28 x 28 floats = 6.4 MB per stage-1 tensor). glibc hands freed
memory back to the kernel when enough of it lies at the top of the heap (``M_TRIM_THRESHOLD``), and
serves allocations above ``M_MMAP_THRESHOLD`` from pages mapped for them alone, which ``free``
unmaps. Either way the next step gets fresh pages, and the kernel zeroes each one on first touch.
How often depends on the process's history: on a 2-core Xeon, 4,900-8,000 page faults per fp32 step
of a hand-written loop, and 1.0-5.9 million in two epochs of the fast recipe. With the memory kept
there were next to none, and the fast recipe trained 1.09-1.14x as fast in bf16 and 1.05x in fp32
(medians; bench/cpu_heap.py, and docs/speed.md has the table).

What. :func:`keep_freed_memory` sets glibc's two thresholds once, for the whole process: blocks up
to :data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD` of free memory stays
in it (preloading jemalloc or tcmalloc, as CPU tuning guides for torch suggest, is the other way to
keep it; this needs no preload). Training, eval, predict, ensembles and probe call it (through
:func:`keep_on_cpu`) when they run on the CPU: evaluation frees and allocates its batches' activations
as a step does, and `cnnlab eval` on the 10,000 Fashion-MNIST test images ran 1.3-1.65x as fast with
the heap kept. What a step frees, the next step allocates again, so the kept memory is used, not
hoarded: bench/cpu_heap.py prints each side's peak memory beside its speed.

Where it does nothing. With ``CNNLAB_HEAP=glibc`` in the environment (the default is ``keep``),
glibc manages the heap as it would without cnnlab. Off glibc (macOS, Windows, musl) there is no
``mallopt`` to call. When ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``MALLOC_TOP_PAD_`` is set, glibc has taken the user's values, and they stay.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Callable, Mapping, Optional

from cnnlab.errors import CnnlabError

# glibc's malloc.h parameter numbers for mallopt()
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # bytes: glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); larger blocks are mapped
TRIM_THRESHOLD = 2**30  # bytes of free memory the heap keeps at its top before it gives any back

CHOICE = "CNNLAB_HEAP"  # environment variable: keep (the default) or glibc
CHOICES = ("keep", "glibc")
# The environment variables through which glibc reads the same settings at start-up: when one is set, the
# user has chosen, and cnnlab leaves the heap alone.
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

# The same three through glibc's tunables (GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536:...), the form newer
# glibc documents: any of them there is the user's choice as well.
TUNABLES = "GLIBC_TUNABLES"
TUNABLE_NAMES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad")

_done: Optional[str] = None  # what the first call did; the settings hold for the process's life


def keep_on_cpu(device) -> None:
    """:func:`keep_freed_memory` when ``device`` (a torch.device) is the CPU: what every command that runs a
    network over batches calls once its device is known (training, eval, predict, ensembles, probe)."""
    if device.type == "cpu":
        keep_freed_memory()


def heap_state() -> Optional[str]:
    """What :func:`keep_freed_memory` did in this process, in its words; None before it was first called (the
    heap as glibc manages it). environment.json records it beside the run's speed."""
    return _done


def glibc_mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt(param, value) -> 1 on success``, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory(environ: Mapping[str, str] = os.environ,
                      mallopt: Optional[Callable[[int, int], int]] = None) -> str:
    """Keep the memory a training step frees in the heap, for the next step; returns what it did, in words.

    Once per process (later calls return the first one's words): "kept" (both thresholds set), "left to
    glibc (CNNLAB_HEAP=glibc)", "left as MALLOC_..._ set it" (the environment chose), or "left: not
    glibc". ``mallopt`` stands in for glibc's in tests. A CNNLAB_HEAP other than keep or glibc is refused.
    """
    global _done
    choice = environ.get(CHOICE, "keep")
    if choice not in CHOICES:
        raise CnnlabError(f"{CHOICE}={choice!r} is not a heap choice: set it to keep (the memory a training step "
                          "frees stays in the process for the next step, the default) or glibc (glibc gives it "
                          "back as it would without cnnlab), or unset it.")
    if _done is not None:
        return _done
    chosen = [name for name in ENVIRONMENT if name in environ]
    tuned = [entry.partition("=")[0] for entry in environ.get(TUNABLES, "").split(":")]
    found = [name for name in TUNABLE_NAMES if name in tuned]
    chosen += [f"{TUNABLES} ({', '.join(found)})"] if found else []
    mallopt = mallopt or glibc_mallopt()
    if choice == "glibc":
        _done = f"left to glibc ({CHOICE}=glibc)"
    elif chosen:
        _done = f"left as {' and '.join(chosen)} set it"
    elif mallopt is None:
        _done = "left: not glibc"
    else:
        # The mmap threshold first: setting either one turns glibc's sliding thresholds off, and a trim
        # threshold alone would leave every block above 128 KiB mapped and unmapped at each step.
        ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _done = "kept" if ok else "left: glibc refused the thresholds"
    return _done
