"""Wall time of short ``cnnlab`` commands as whole processes, against ``python -c "import torch"``.

Run: .venv/bin/python bench/cli_startup.py [--repeats 7]

A command that only lists or describes should cost about what importing torch costs: every
command needs torch, and the rest (typer, rich, the model tables) should add little. Each command
runs as its own process, ``--repeats`` times after one untimed warm-up run (which fills the OS file
cache and, for ``cnnlab models``, cnnlab's parameter-count cache); the median is reported, with
its ratio to the median bare torch import measured in the same run. ``cnnlab models`` is also timed
with an empty cache directory each time ($CNNLAB_CACHE pointed at a fresh folder): the first run on
a machine, which counts parameters on the meta device and writes the cache.

Measure on a quiet machine: the load average is printed before and after (docs/speed.md says why).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import count, load_average, machine_line, run_child, run_main  # bench/ is on sys.path when a bench script runs

GOAL_MODELS = 1.5  # issue: `cnnlab models` at most 1.5x the bare torch import


def cnnlab_command() -> list[str]:
    """The installed ``cnnlab`` script beside this Python (what a user types), else ``python -m cnnlab``."""
    script = Path(sys.executable).with_name("cnnlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnnlab"]


def run_once(argv: list[str], env: dict) -> float:
    """Seconds from start to exit of one process; its output is discarded, a failure stops the bench
    (:func:`_machine.run_child`: one paragraph naming the command, exit 2 where it refused its input)."""
    start = time.perf_counter()
    run_child(argv, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(argv: list[str], repeats: int, fresh_cache: bool = False) -> float:
    """Median seconds of ``repeats`` runs after one warm-up; ``fresh_cache``: an empty $CNNLAB_CACHE per run."""
    times = []
    for attempt in range(repeats + 1):
        env = dict(os.environ)
        folder = tempfile.mkdtemp(prefix="cnnlab-bench-cache-") if fresh_cache else None
        if folder:
            env["CNNLAB_CACHE"] = folder
        try:
            elapsed = run_once(argv, env)
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        if attempt > 0:  # the first run warms the OS file cache (and cnnlab's own cache)
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=count, default=7, help="timed runs per command (after one warm-up)")
    args = parser.parse_args()

    cnnlab = cnnlab_command()
    empty = tempfile.mkdtemp(prefix="cnnlab-bench-runs-")
    cases = [
        ("cnnlab --help", cnnlab + ["--help"], False),
        ("cnnlab models", cnnlab + ["models"], False),
        ("cnnlab models (empty cache)", cnnlab + ["models"], True),
        ("cnnlab summary resnet50", cnnlab + ["summary", "resnet50"], False),
        # Statistics (cached by the warm-up) and a run listing: neither needs torchvision's second of imports
        ("cnnlab data stats (synthetic)", cnnlab + ["data", "stats", "synthetic:classes=10,train=500,val=100,test=100"],
         False),
        ("cnnlab runs (empty folder)", cnnlab + ["runs", empty], False),
    ]
    print(machine_line())
    print(f"python: {sys.version.split()[0]}  command: {' '.join(cnnlab)}  OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"load average before: {load_average()}")
    baseline = median_time([sys.executable, "-c", "import torch"], args.repeats)
    rows = [("python -c 'import torch'", baseline)]
    rows += [(label, median_time(argv, args.repeats, fresh)) for label, argv, fresh in cases]
    print(f"load average after:  {load_average()}")
    shutil.rmtree(empty, ignore_errors=True)
    print(f"\nmedian of {args.repeats} runs each (after one warm-up)")
    print(f"{'command':<32} {'seconds':>8} {'x import torch':>15}")
    for label, seconds in rows:
        print(f"{label:<32} {seconds:8.2f} {seconds / baseline:14.2f}x")
    models = dict(rows)["cnnlab models"] / baseline
    print(f"\ngoal: cnnlab models <= {GOAL_MODELS}x import torch; measured {models:.2f}x")


if __name__ == "__main__":
    run_main(main)
