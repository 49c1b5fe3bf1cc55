"""Training and evaluation speed on a busy machine: each workload idle, then beside a busy process.

Run: .venv/bin/python bench/contention.py [--repeats 2] [--skip-fashion]

The bench starts the busy process itself (``python -c "while True: pass"``, one core's worth of work
from another program) and measures every workload without it and with it, in this one run:

- ``cnnlab train --config recipes/lenet5-digits.yaml --epochs 3``: the ``make demo`` run, shortened;
- ``recipes/fashion-mnist-fast.yaml`` on 600 images per class, 2 epochs (the fast recipe's model,
  batch and settings on a tenth of the data);
- ``cnnlab eval`` of that run on the 10,000 test images (the images/s it reports);
- a plain hand-written PyTorch loop (forward, loss, zero_grad, backward, step on pre-made batches)
  for each training workload: its recipe's model (options, frozen whitened filters), batch, precision as
  ``train.precision`` resolves here, memory format and BatchNorm + ReLU kernel as ``train.fused_norm_act``
  resolves, with torch's default threads: where plain PyTorch stands on the same machine.

Each measurement is a fresh process, as a user's command is; cnnlab's images/s come from its
metrics.csv (training images over training seconds) and its eval report, the hand loop's from
its own clock. The best of ``--repeats`` counts. It prints the machine, the load average before and after
(run it with nothing else on the cores), a table of idle and busy images/s with their ratio, and
cnnlab against the hand loop on the busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _machine import count, load_average, machine_line, run_child, run_main, run_rate  # bench/ is on sys.path when a bench script runs

ROOT = Path(__file__).resolve().parent.parent
BUSY = [sys.executable, "-c", "while True: pass"]
HAND_SECONDS = 3.0  # the hand loop trains at least this long (and at least HAND_MIN_STEPS steps)
HAND_MIN_STEPS = 5
FASHION_SUBSET = ["--set", "data.train_per_class=600", "--epochs", "2"]


@dataclass
class Workload:
    name: str
    kind: str  # train | eval | hand
    args: list[str]  # the cnnlab command's arguments, or the hand loop's model settings


def cnnlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab", *args]


def environment() -> dict:
    """The user's environment without thread settings: what torch and cnnlab do by default is measured."""
    return {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def train_rate(args: list[str], out: Path) -> float:
    """Training images/s of one ``cnnlab train`` run: images over seconds, summed over its epochs."""
    run_child(cnnlab("train", *args, "--out", str(out), "--quiet"), env=environment(), cwd=ROOT)
    return run_rate(out)


def eval_rate(run: Path) -> float:
    """Test images/s that ``cnnlab eval RUN`` reports (the forward passes, on its own clock)."""
    out = run_child(cnnlab("eval", str(run), "--json"), env=environment(), cwd=ROOT).stdout
    return json.loads(out)["images_per_second"]


def hand_rate(recipe: str, channels: int, size: int) -> float:
    """Images/s of the plain PyTorch loop, in a fresh process with torch's default threads."""
    out = run_child([sys.executable, __file__, "--hand-loop", recipe, str(channels), str(size)], env=environment(),
                    cwd=ROOT).stdout
    return float(out.strip().splitlines()[-1])


def hand_loop(recipe: str, channels: int, size: int) -> float:
    """The loop a PyTorch user writes for what ``recipe`` trains: pre-made batches, SGD; images/s over at least
    HAND_SECONDS. The recipe's model with its options (the whitened filters it freezes left random and fixed),
    batch, precision and memory format, and its BatchNorm + ReLU kernel, each as cnnlab resolves it here, so that
    the two sides' ratio is the engine's cost, not another network's or precision's."""
    import torch
    import torch.nn.functional as F

    from cnnlab.config import load_config
    from cnnlab.layers import fused
    from cnnlab.models import create_model
    from cnnlab.train.engine import autocast, resolve_fused_norm_act, resolve_precision
    from cnnlab.train.whiten import fixed_parameter_names

    config = load_config(ROOT / recipe)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(config.model.name, num_classes=10, in_chans=channels, **config.model.options)
    for name in fixed_parameter_names(model, config.model.whiten):
        model.get_parameter(name).requires_grad_(False)
    batch, channels_last = config.train.batch_size, config.train.channels_last
    dtype = resolve_precision(config.train.precision, device)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()
    fuse, _ = resolve_fused_norm_act(config.train.fused_norm_act, device, dtype, channels_last, model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                weight_decay=5e-4)

    def step() -> None:
        with autocast(device.type, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with fused.enabled(fuse):
        step()  # first-call costs (oneDNN primitives, allocator) outside the clock
        steps, start = 0, time.perf_counter()
        while steps < HAND_MIN_STEPS or time.perf_counter() - start < HAND_SECONDS:
            step()
            steps += 1
        return steps * batch / (time.perf_counter() - start)


def measure(workload: Workload, folder: Path, label: str, runs: dict[str, Path]) -> float:
    if workload.kind == "train":
        out = folder / f"{workload.name}-{label}"
        rate = train_rate(workload.args, out)
        runs.setdefault(workload.name, out)
        return rate
    if workload.kind == "eval":
        return eval_rate(runs[workload.args[0]])
    recipe, channels, size = workload.args
    return hand_rate(recipe, int(channels), int(size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=count, default=2, help="runs of each measurement; the best counts")
    parser.add_argument("--skip-fashion", action="store_true", help="only the digits workloads (no Fashion-MNIST)")
    parser.add_argument("--hand-loop", nargs=3, help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args()
    if args.hand_loop:
        recipe, channels, size = args.hand_loop
        print(hand_loop(recipe, int(channels), int(size)))
        return

    workloads = [
        Workload("cnnlab train, lenet5 digits", "train", ["--config", "recipes/lenet5-digits.yaml", "--epochs", "3"]),
        Workload("hand loop, lenet5 digits recipe", "hand", ["recipes/lenet5-digits.yaml", "1", "32"]),
    ]
    if not args.skip_fashion:
        workloads += [
            Workload("cnnlab train, fast recipe (6k images)", "train",
                     ["--config", "recipes/fashion-mnist-fast.yaml", *FASHION_SUBSET]),
            Workload("cnnlab eval, fast recipe run (10k test)", "eval", ["cnnlab train, fast recipe (6k images)"]),
            Workload("hand loop, fast recipe's model", "hand", ["recipes/fashion-mnist-fast.yaml", "1", "28"]),
        ]
    print(f"{machine_line()}; load average before: {load_average()}")
    print(f"busy process: {' '.join(BUSY)}; best of {args.repeats}; OMP_NUM_THREADS unset in every child")
    results: dict[str, dict[str, float]] = {}
    runs: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="cnnlab-contention-") as tmp:
        folder = Path(tmp)
        for workload in workloads:
            for label in ("idle", "busy"):
                best = 0.0
                for repeat in range(args.repeats):
                    # its stderr discarded: a Ctrl-C at the terminal reaches it too, and its traceback would
                    # stand above the bench's own one line
                    busy = subprocess.Popen(BUSY, stderr=subprocess.DEVNULL) if label == "busy" else None
                    try:
                        if busy:
                            time.sleep(0.5)  # the busy loop running before the workload starts
                        rate = measure(workload, folder, f"{label}{repeat}", runs)
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
                    best = max(best, rate)
                results.setdefault(workload.name, {})[label] = best
                print(f"  {workload.name:<42} {label}: {best:8,.0f} img/s", flush=True)
    print()
    print(f"{'workload':<42} {'idle img/s':>11} {'busy img/s':>11} {'busy/idle':>10}")
    for name, rates in results.items():
        print(f"{name:<42} {rates['idle']:>11,.0f} {rates['busy']:>11,.0f} {rates['busy'] / rates['idle']:>9.2f}x")
    print()
    pairs = [("cnnlab train, lenet5 digits", "hand loop, lenet5 digits recipe"),
             ("cnnlab train, fast recipe (6k images)", "hand loop, fast recipe's model")]
    for ours, theirs in pairs:
        if ours in results and theirs in results:
            for label in ("idle", "busy"):
                ratio = results[ours][label] / results[theirs][label]
                print(f"{label}: {ours} / {theirs} = {ratio:.2f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    run_main(main)
