"""bench/eval_throughput.py end to end on the small digits set: it runs, and its two sides do the same work.

The bench prints images/s, which no test asserts. What would make its ratio meaningless is checked
here: cnnlab's eval path and the hand loop must give the same class probabilities for the same
images in the same order, and each TTA line, resnet10crop's included, must name the views its mode really
takes (resnet10crop's at the short sides ResNet's test gives the digits' image size).
"""

import re
import sys

import torch

from _bench import BENCH, load_bench
from cnnlab.data import load_source
from cnnlab.evaluate.tta import ALL_MODES, DEFAULT_SCALES, RESNET_MODE, resnet_short_sides, view_count


def test_both_sides_give_the_same_probabilities_and_every_tta_mode_is_timed(monkeypatch, capsys):
    # The bench's main in this process, as its __main__ block runs it: what it prints is under test, not its process
    # (tests/test_bench_options.py runs eval_throughput.py by the interpreter), and a fresh one imported torch and
    # torchvision first, seconds each.
    bench = load_bench("eval_throughput")
    monkeypatch.setattr(sys, "argv", [str(BENCH / "eval_throughput.py"), "--data", "digits", "--model", "lenet5",
                                      "--rounds", "1", "--batch-size", "64"])
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():  # the bench seeds torch's generator: the later tests in this worker keep theirs
            bench.run_main(bench.main)  # a refusal or a stop would end in SystemExit, and fail the test
    finally:
        torch.set_num_threads(threads)  # as it was: the hand loop sets torch's threads for the rest of the process
    out = capsys.readouterr().out
    gap = float(re.search(r"largest probability difference (\S+);", out).group(1))
    assert gap < 1e-5  # float rounding only: a normalisation or ordering slip moves probabilities by far more
    assert "labels in the split's order: yes" in out
    rates = {name: float(value.replace(",", "")) for name, value in
             re.findall(r"^  (cnnlab eval path|hand loop) +([\d,]+) images/s", out, re.MULTILINE)}
    ratio = float(re.search(r"ratio +([\d.]+)x", out).group(1))
    assert abs(ratio - rates["cnnlab eval path"] / rates["hand loop"]) < 0.01 * ratio
    timed = dict(re.findall(r"^  (\S+) +(\d+) views", out, re.MULTILINE))
    sides = resnet_short_sides(load_source("digits").image_size)
    # digits are not flip-safe: resnet10crop takes FiveCrop at each short side, 5 x len(sides) views
    assert timed == {mode: str(view_count(mode, False, sides if mode == RESNET_MODE else DEFAULT_SCALES))
                     for mode in ALL_MODES}
    assert int(timed[RESNET_MODE]) == 5 * len(sides)
    assert f"short sides {', '.join(map(str, sides))} px" in out
    assert "load average at the end" in out
