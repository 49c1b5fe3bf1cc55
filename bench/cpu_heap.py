"""Training and eval images/s on the CPU with the C heap as glibc leaves it, and with the memory a step frees kept.

Run: .venv/bin/python bench/cpu_heap.py [--models fast,resnet8:128] [--steps 20] [--rounds 3]
                                        [--precision fp32|bf16] [--config recipes/fashion-mnist-fast.yaml]
                                        [--epochs 2] [--no-train] [--no-hand]

cnnlab, when it trains or evaluates on the CPU, sets glibc's heap thresholds so that the memory a step
frees stays in the process for the next step (cnnlab/heap.py); glibc on its own gives much of it back
to the kernel, and the next step faults fresh zeroed pages in. This bench measures what that is worth.
The thresholds hold for a process's whole life, so each measurement is a fresh process, the two sides
alternating (glibc, kept, glibc, kept, ...) ``--rounds`` times, with the same command but for the heap
(``CNNLAB_HEAP=glibc`` on one side, unset on the other; MALLOC_* variables unset on both):

(a) the hand loop, per ``--models`` item: bench/train_throughput.py's loop (forward, loss, zero_grad,
    backward, step on pre-made synthetic batches; the same model, optimiser, precision and
    channels_last layout as that bench), WARMUP_STEPS untimed steps, then PASSES passes of ``--steps``
    timed steps; the child reports its best pass's images/s, the page faults per timed step (minor
    faults: a page the kernel had to map, and zero, on first touch) and its peak resident memory.
(b) ``cnnlab train --config CONFIG --epochs N`` (Fashion-MNIST with the fast recipe by default), in
    ``--precision``: its images/s from metrics.csv, and the page faults of the whole process.
(c) ``cnnlab eval RUN`` of the last run (b) trained with the heap kept, on its test split: the images/s it
    reports, and the page faults of the whole process.

Each side's best run counts; the ratio is kept / glibc's, and the medians' ratio is printed too. The
load average is printed at the start and the end: run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import train_throughput as throughput
from _machine import count, load_average, machine_line, run_child, run_main, run_rate  # bench/ is on sys.path when a bench script runs
from cnnlab.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("glibc", "kept")  # the heap as glibc manages it (CNNLAB_HEAP=glibc); as cnnlab keeps it (the default)
WARMUP_STEPS = 4  # untimed steps first: oneDNN's first-call costs, and the heap reaching its working size
PASSES = 3  # timed passes per hand-loop child; the best counts
CLASSES = 10  # of the hand loop's synthetic images (train_throughput's default --classes)


def environment(side: str) -> dict:
    """The user's environment with the heap of ``side``: no MALLOC_* variable, CNNLAB_HEAP=glibc or unset."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_") and key != "CNNLAB_HEAP"}
    return {**env, "CNNLAB_HEAP": "glibc"} if side == "glibc" else env


def hand_child(args) -> None:
    """Train the hand loop in this process with the heap of ``args.child``; print one JSON line."""
    from cnnlab.heap import keep_freed_memory

    done = keep_freed_memory()  # what the engine does; CNNLAB_HEAP=glibc makes it leave the heap alone
    if (done == "kept") != (args.child == "kept"):
        sys.exit(f"the {args.child} side's heap came out as {done!r}: this bench needs glibc.")
    import torch

    (name, options, batch, whiten), = throughput.parse_models(args.models)
    settings = argparse.Namespace(model=name, options=options, batch_size=batch or args.batch_size, whiten=whiten,
                                  classes=CLASSES, channels=1, image_size=28, steps=WARMUP_STEPS + args.steps,
                                  channels_last=True)
    device = torch.device("cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    batches = throughput.premade_batches(settings, device)
    model = throughput.hand_model(settings, device)
    optimizer = throughput.sgd(model)
    for x, y in batches[:WARMUP_STEPS]:
        throughput.hand_step(model, optimizer, x, y, device, dtype)
    timed = batches[WARMUP_STEPS:]
    best, faults = 0.0, []
    for _ in range(PASSES):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for x, y in timed:
            throughput.hand_step(model, optimizer, x, y, device, dtype)
        best = max(best, sum(len(y) for _, y in timed) / (time.perf_counter() - start))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(timed))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"rate": best, "faults": statistics.median(faults), "rss_mb": peak_mb}))


def hand_run(model: str, side: str, args) -> dict:
    """One hand-loop child's {"rate": best images/s, "faults": page faults per timed step, "rss_mb": peak MB}."""
    argv = [sys.executable, __file__, "--child", side, "--models", model, "--batch-size", str(args.batch_size),
            "--steps", str(args.steps), "--precision", args.precision]
    out = run_child(argv, env=environment(side)).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_run(side: str, args, out: Path) -> dict:
    """One ``cnnlab train`` child's {"rate": images/s from metrics.csv, "faults": the process's page faults}."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    run_child([sys.executable, "-m", "cnnlab", "train", "--config", args.config, "--epochs", str(args.epochs),
               "--set", f"train.precision={args.precision}", "--set", "train.device=cpu", "--out", str(out),
               "--quiet"], env=environment(side), cwd=ROOT)
    return {"rate": run_rate(out), "faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before}


def eval_run(side: str, run: Path, out: Path) -> dict:
    """One ``cnnlab eval`` child's {"rate": the images/s it reports, "faults": the process's page faults}."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    report = run_child([sys.executable, "-m", "cnnlab", "eval", str(run), "--out", str(out), "--json"],
                       env=environment(side), cwd=ROOT).stdout
    return {"rate": json.loads(report)["images_per_second"],
            "faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before}


def alternate(measure, rounds: int) -> dict[str, list[dict]]:
    """``measure(side, round)`` for each side in turn, ``rounds`` times: {side: [result, ...]}."""
    results = {side: [] for side in SIDES}
    for index in range(rounds):
        for side in SIDES:
            results[side].append(measure(side, index))
    return results


def ratios(results: dict[str, list[dict]]) -> tuple[float, float]:
    """kept / glibc images/s: (best run over best run, median over median)."""
    rates = {side: [r["rate"] for r in runs] for side, runs in results.items()}
    return (max(rates["kept"]) / max(rates["glibc"]),
            statistics.median(rates["kept"]) / statistics.median(rates["glibc"]))


def print_rows(what: str, results: dict[str, list[dict]], faults_unit: str) -> None:
    for side in SIDES:
        rates = [r["rate"] for r in results[side]]
        faults = statistics.median(r["faults"] for r in results[side])
        memory = f"{max(r['rss_mb'] for r in results[side]):,.0f} MB" if "rss_mb" in results[side][0] else "-"
        print(f"| {what} | {side} | {max(rates):,.0f} ({statistics.median(rates):,.0f}) | "
              f"{faults:,.0f} {faults_unit} | {memory} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fast,resnet8:128",
                        help="hand-loop models, NAME[:BATCH],...; 'fast' is the Fashion-MNIST fast recipe's model at "
                             "its batch")
    parser.add_argument("--batch-size", type=count, default=128, help="batch for models given without :BATCH")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--steps", type=count, default=20, help="timed hand-loop steps per pass")
    parser.add_argument("--rounds", type=count, default=3, help="runs per side, alternating")
    parser.add_argument("--config", default=str(ROOT / "recipes" / "fashion-mnist-fast.yaml"),
                        help="the recipe cnnlab train runs (default: the repository's fast recipe, from any folder)")
    parser.add_argument("--epochs", type=count, default=2, help="epochs of each cnnlab train run")
    parser.add_argument("--no-train", action="store_true", help="the hand loop only (no cnnlab train or eval runs)")
    parser.add_argument("--no-hand", action="store_true", help="cnnlab train and eval only (no hand loop)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # one hand-loop measurement
    args = parser.parse_args()
    if args.child:
        hand_child(args)
        return
    if sys.platform != "linux":
        parser.error("the heap thresholds this bench compares are glibc's: run it on Linux.")
    throughput.check_models(parser, args.models)  # the names too: an unknown one failed in its child, after others ran
    if args.no_train and args.no_hand:
        parser.error("--no-train and --no-hand leave nothing to measure: give at most one of them.")
    if not args.no_hand:  # each hand-loop child trains WARMUP_STEPS + --steps batches of synthetic 1x28x28 images
        models = throughput.parse_models(args.models)
        throughput.check_enough_images(parser, models, args.batch_size, args.steps, CLASSES, "--steps",
                                       untimed=WARMUP_STEPS)
        throughput.check_input_fits(parser, models, 1, 28, CLASSES,
                                    larger="name another model in --models (the hand loop trains on 28x28 images)")
    if not args.no_train and not Path(args.config).is_file():
        what = "a folder, not a file" if Path(args.config).is_dir() else "no such file"
        parser.error(f"--config {args.config}: {what}. Give a recipe's path (they are in recipes/), or "
                     "--no-train for the hand loop alone.")
    if not args.no_train:  # the recipe with the bench's settings, read as cnnlab train reads it: a refusal (a
        # warmup no shorter than --epochs) came from the first train child, after the hand loop had been measured
        apply_overrides(load_config(args.config), [f"train.epochs={args.epochs}",
                                                   f"train.precision={args.precision}", "train.device=cpu"])
    args.config = str(Path(args.config).resolve())  # the children run in the repository's root
    # shown as typed, or relative to the repository when it lies there (the default: recipes/fashion-mnist-fast.yaml)
    recipe = (str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config)
    print(f"{machine_line()}; {args.precision}; load average {load_average()} at the start "
          "(run with nothing else on the cores)")
    print(f"| run | heap | images/s, best of {args.rounds} (median) | page faults | peak memory |")
    print("|---|---|---|---|---|")
    compared = []
    for model in [] if args.no_hand else [item.strip() for item in args.models.split(",")]:
        results = alternate(lambda side, _: hand_run(model, side, args), args.rounds)
        print_rows(f"hand loop, {model}", results, "per step")
        compared.append((f"hand loop, {model}", *ratios(results)))
    if not args.no_train:
        with tempfile.TemporaryDirectory(prefix="cnnlab-heap-") as folder:
            results = alternate(lambda side, index: train_run(side, args, Path(folder) / f"{side}{index}"),
                                args.rounds)
            what = f"cnnlab train {recipe}, {args.epochs} epochs"
            print_rows(what, results, "per run")
            compared.append((what, *ratios(results)))
            run = Path(folder) / f"kept{args.rounds - 1}"
            results = alternate(lambda side, index: eval_run(side, run, Path(folder) / f"eval-{side}{index}"),
                                args.rounds)
            what = "cnnlab eval of that run, its test split"
            print_rows(what, results, "per run")
            compared.append((what, *ratios(results)))
    for what, best, median in compared:
        print(f"{what}: kept / glibc {best:.3f}x (best runs), {median:.3f}x (medians)")
    print(f"load average {load_average()} at the end")


if __name__ == "__main__":
    run_main(main)
