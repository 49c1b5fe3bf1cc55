"""bench/train_throughput.py's hand loop trains the same parameters as the engine's run does.

The bench prints speeds, which no test asserts; this checks that its two sides compare like with like
when the 'fast' model's first layer is whitened and fixed.
"""

import argparse

import pytest
import torch

from _bench import load_bench
from cnnlab.config import apply_overrides, load_config
from cnnlab.train import engine

bench = load_bench("train_throughput")


@pytest.mark.parametrize("whiten", ["frozen", "frozen_block"])
def test_the_hand_loop_fixes_the_parameters_the_engine_fixes(whiten):
    (name, options, batch, chosen), = bench.parse_models("fast", whiten)
    assert chosen == whiten
    args = argparse.Namespace(model=name, options=options, classes=10, channels=1, whiten=whiten, channels_last=True)
    hand = bench.hand_model(args, torch.device("cpu"))
    hand_fixed = {name for name, p in hand.named_parameters() if not p.requires_grad}
    config = apply_overrides(load_config(bench.FAST_RECIPE), [
        f"model.whiten={whiten}", "data.spec=synthetic:classes=10,train=64,val=32,test=32,channels=1",
        "data.image_size=28", "train.batch_size=32"])
    assert hand_fixed == set(engine.setup_run(config).whiten_report.fixed_parameters)
    assert len(hand_fixed) == (1 if whiten == "frozen" else 4)  # the filters; with their bias and norm scale, shift


def test_the_fast_model_takes_the_recipes_whitening_unless_told():
    (_, _, _, whiten), (_, _, _, plain) = bench.parse_models("fast,resnet8:128")
    assert whiten == "frozen" and plain == "none"
