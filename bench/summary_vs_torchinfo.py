"""cnnlab.summary against torchinfo.summary on the same ResNet-152, over batch and input sizes.

Run: .venv/bin/python bench/summary_vs_torchinfo.py [--full | --batches 1 4 --sides 224 320]
                                                    [--repeats 5] [--fresh 3] [--threads N]
(needs torchinfo: pip install -e '.[bench]')

Sizes: batch 1, 4, 16, 64 and input side 224, 320, 384, 512. By default the batch-1 row and the
224 and 512 columns (10 cells, about 5 minutes on a 2-core machine, most of it torchinfo at batch
64 and 512); ``--full`` runs all 16 (about 10 minutes); ``--batches``/``--sides`` pick a grid.

Warm calls: both tools analyse one model object in this process, ``cnnlab.create_model("resnet152")``
with real fp32 weights on the CPU, as a user has it, at 3 x side x side and the given batch.
cnnlab traces the forward on the meta device (shapes only), so its time hardly depends on the
size; torchinfo runs a real forward, so batch 1 at 224 is its fastest case. In each cell the two
alternate and each side's best of ``--repeats`` counts; a torchinfo run that takes over
``SLOW_S`` is not repeated (at batch 64 and 512 one run is a minute; the ratio is then far beyond
any noise).

First call: a fresh process imports torch and cnnlab (or torchinfo), builds the model, then times
its first summary at batch 1 and 224: what ``cnnlab summary`` or a notebook cell waits for beyond
building the model. Best of ``--fresh`` processes.

Goals: at least 2x torchinfo at batch 1 and 224, faster in every cell, and a first call of at
most 0.5 s. The machine is shared, so the load average is printed before and after (docs/speed.md says why).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import cnnlab
from _machine import count, load_average, machine_line, run_child, run_main  # bench/ is on sys.path when a bench script runs

MODEL = "resnet152"
CHANNELS = 3
BATCHES = (1, 4, 16, 64)
SIDES = (224, 320, 384, 512)
# torchinfo's time grows with batch and side while cnnlab's stays flat, so batch 1 at 224 is the
# hardest cell; the edges of the grid show the trend.
DEFAULT_CELLS = [(1, side) for side in SIDES] + [
    (batch, side) for batch in BATCHES[1:] for side in (SIDES[0], SIDES[-1])
]
SLOW_S = 2.0  # a torchinfo run longer than this is done once
GOAL_BATCH1_RATIO = 2.0
GOAL_FIRST_CALL_S = 0.5

# One fresh process: build the model, then time the first summary call. {call} is the summary.
FIRST_CALL = """
import time, torch, cnnlab{extra_import}
if {threads}:
    torch.set_num_threads({threads})
model = cnnlab.create_model("{model}")
start = time.perf_counter()
{call}
print(time.perf_counter() - start)
"""
FIRST_CALLS = {
    "cnnlab": ("", f"cnnlab.summary(model, ({CHANNELS}, 224, 224))"),
    "torchinfo": (", torchinfo", f"torchinfo.summary(model, input_size=(1, {CHANNELS}, 224, 224), verbose=0)"),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(model, batch: int, side: int, repeats: int) -> tuple[float, float, int]:
    """Best seconds of cnnlab and torchinfo on one size, alternating; and how many torchinfo runs."""
    import torchinfo

    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed(lambda: cnnlab.summary(model, (CHANNELS, side, side), batch=batch)))
        if theirs and min(theirs) > SLOW_S:
            continue
        theirs.append(timed(lambda: torchinfo.summary(model, input_size=(batch, CHANNELS, side, side), verbose=0)))
    return min(ours), min(theirs), len(theirs)


def first_call(tool: str, processes: int, threads: int) -> float:
    """Best over fresh processes of the first summary call's seconds (model building excluded)."""
    extra_import, call = FIRST_CALLS[tool]
    code = FIRST_CALL.format(extra_import=extra_import, threads=threads, model=MODEL, call=call)
    times = []
    for _ in range(processes):
        # the program is many lines: a failure names it by what it does
        name = f"{sys.executable} -c '<the first {tool} summary call>'"
        out = run_child([sys.executable, "-c", code], name=name).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every batch and side (about 10 minutes)")
    parser.add_argument("--batches", type=count, nargs="+", help="batch sizes (with --sides: their grid)")
    parser.add_argument("--sides", type=count, nargs="+", help="input sides")
    parser.add_argument("--repeats", type=count, default=5, help="warm runs per tool and size; the best counts")
    parser.add_argument("--fresh", type=count, default=3, help="fresh processes per tool for the first call")
    parser.add_argument("--threads", type=count, help="torch threads for both tools (default: as imported)")
    args = parser.parse_args()
    try:
        import torchinfo
    except ImportError:
        parser.error("torchinfo does not import in this python, and the bench compares cnnlab.summary with it: "
                     "install it with pip install -e '.[bench]' (or pip install torchinfo) and run again.")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full or args.batches or args.sides:
        cells = [(batch, side) for batch in args.batches or BATCHES for side in args.sides or SIDES]
    else:
        cells = DEFAULT_CELLS
    threads = torch.get_num_threads()
    print(f"{machine_line()}; torch {torch.__version__}, {threads} threads")
    print(f"load average before: {load_average()}")
    torch.manual_seed(0)
    model = cnnlab.create_model(MODEL)  # real weights on the CPU
    ours = cnnlab.summary(model, (CHANNELS, 224, 224))
    theirs = torchinfo.summary(model, input_size=(1, CHANNELS, 224, 224), verbose=0)
    print(f"{MODEL} at batch 1, 224: cnnlab {ours.macs:,} MACs, torchinfo {theirs.total_mult_adds:,} mult-adds "
          f"(torchinfo adds BatchNorm parameters and biases); params {ours.total_params:,} / {theirs.total_params:,}")

    print(f"\n{'batch':>5} {'side':>5} {'cnnlab s':>9} {'torchinfo s':>12} {'ratio':>8}")
    ratios = {}
    for batch, side in cells:
        mine, other, runs = compare(model, batch, side, args.repeats)
        ratios[batch, side] = other / mine
        note = "" if runs == args.repeats else f"  (torchinfo: {runs} run{'s' if runs > 1 else ''})"
        print(f"{batch:>5} {side:>5} {mine:>9.3f} {other:>12.3f} {other / mine:>7.1f}x{note}", flush=True)
    from_name = min(timed(lambda: cnnlab.summary(MODEL, (CHANNELS, 224, 224))) for _ in range(args.repeats))
    print(f"cnnlab.summary('{MODEL}') at batch 1, 224, building the model on the meta device too: {from_name:.3f} s")

    fresh = {tool: first_call(tool, args.fresh, args.threads or 0) for tool in FIRST_CALLS}
    print(f"\nfirst call in a fresh process, after building the model (best of {args.fresh}): "
          f"cnnlab {fresh['cnnlab']:.3f} s, torchinfo {fresh['torchinfo']:.3f} s")

    if (1, 224) in ratios:
        print(f"\nbatch 1, 224: {ratios[1, 224]:.1f}x (goal >= {GOAL_BATCH1_RATIO:.0f}x)")
    print(f"slowest ratio over the table: {min(ratios.values()):.1f}x (goal > 1x)")
    print(f"first call: {fresh['cnnlab']:.3f} s (goal <= {GOAL_FIRST_CALL_S} s)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    run_main(main)
