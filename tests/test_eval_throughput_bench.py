"""bench/eval_throughput.py end to end on the small digits set: it runs, and its two sides do the same work.

The bench prints images/s, which no test asserts. What would make its ratio meaningless is checked
here: cnnlab's eval path and the hand loop must give the same class probabilities for the same
images in the same order, and each TTA line must name the views its mode really takes.
"""

import re
import subprocess
import sys

from _bench import BENCH
from cnnlab.evaluate.tta import MODES, view_count


def test_both_sides_give_the_same_probabilities_and_every_tta_mode_is_timed():
    done = subprocess.run([sys.executable, str(BENCH / "eval_throughput.py"), "--data", "digits", "--model", "lenet5",
                           "--rounds", "1", "--batch-size", "64"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    gap = float(re.search(r"largest probability difference (\S+);", out).group(1))
    assert gap < 1e-5  # float rounding only: a normalisation or ordering slip moves probabilities by far more
    assert "labels in the split's order: yes" in out
    rates = {name: float(value.replace(",", "")) for name, value in
             re.findall(r"^  (cnnlab eval path|hand loop) +([\d,]+) images/s", out, re.MULTILINE)}
    ratio = float(re.search(r"ratio +([\d.]+)x", out).group(1))
    assert abs(ratio - rates["cnnlab eval path"] / rates["hand loop"]) < 0.01 * ratio
    timed = dict(re.findall(r"^  (\S+) +(\d+) views", out, re.MULTILINE))
    assert timed == {mode: str(view_count(mode, False)) for mode in MODES}  # digits are not flip-safe
    assert "load average at the end" in out
