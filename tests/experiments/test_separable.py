"""The separable experiment: counts against hand formulas and torch's FlopCounterMode, the checks' verdicts on
rows that break the formulas, the listing, and a tiny run."""

import csv
import json
from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, RESULT_FILE, TABLE_CSV, get_experiment, run_experiment
from cnnlab.experiments.separable import (
    _row,
    grouped_check,
    grouped_rows,
    separable_bound_check,
    separable_bound_chs,
    separable_check,
    separable_rows,
)

# A hand-sized conv: C_in 8, C_out 16, 3x3, on a 5x5 input
C_IN, C_OUT, K, G, SIDE = 8, 16, 3, 4, 5


def _hand_grouped(stride: int) -> dict:
    with torch.device("meta"):
        conv = nn.Conv2d(C_IN, C_OUT, K, stride, K // 2, groups=G, bias=False)
        return _row("grouped", "hand", conv, SIDE, conv)


def _hand_separable(stride: int) -> dict:
    with torch.device("meta"):
        depthwise = nn.Conv2d(C_IN, C_IN, K, stride, K // 2, groups=C_IN, bias=False)
        pointwise = nn.Conv2d(C_IN, C_OUT, 1, bias=False)
        standard_shape = nn.Conv2d(C_IN, C_OUT, K, stride, K // 2, bias=False)
        row = _row("separable", "hand", standard_shape, SIDE, nn.Sequential(depthwise, pointwise))
    row["groups"] = C_IN
    return row


@pytest.mark.parametrize("stride, out_side", [(1, 5), (2, 3)])  # 'same' padding 1: (5 + 2 - 3) // s + 1
def test_a_grouped_conv_counts_one_gth_of_the_standard_conv_by_hand(stride, out_side):
    row = _hand_grouped(stride)
    assert row["params"] == 8 * 16 * 3 * 3 // 4 == 288
    assert row["macs"] == 288 * out_side * out_side
    assert row["standard_params"] == 8 * 16 * 3 * 3 == 1152
    assert row["standard_macs"] == 1152 * out_side * out_side
    assert Fraction(row["macs"], row["standard_macs"]) == Fraction(1, 4)
    assert grouped_check([row]).verdict == HOLDS


@pytest.mark.parametrize("stride, out_side", [(1, 5), (2, 3)])
def test_a_separable_pair_costs_one_over_c_out_plus_one_over_k_squared_by_hand(stride, out_side):
    row = _hand_separable(stride)
    # depthwise 9 * 8 weights, pointwise 8 * 16
    assert row["params"] == 9 * 8 + 8 * 16 == 200
    assert row["macs"] == 200 * out_side * out_side
    assert Fraction(row["macs"], row["standard_macs"]) == Fraction(1, 16) + Fraction(1, 9) == Fraction(25, 144)
    assert separable_check([row]).verdict == HOLDS
    # C_out 16 is under the 8x threshold: nothing to judge the paper's "8 to 9 times" on
    assert separable_bound_check([row]).verdict == INCONCLUSIVE


def test_the_8x_threshold_is_where_the_formula_crosses_one_eighth():
    assert separable_bound_chs(3) == 72
    assert Fraction(1, 72) + Fraction(1, 9) == Fraction(1, 8)  # at 72 exactly 1/8, not below
    assert Fraction(1, 73) + Fraction(1, 9) < Fraction(1, 8)


def _flops(module: nn.Module, in_chs: int, side: int) -> int:
    with FlopCounterMode(display=False) as counter:
        module(torch.empty(1, in_chs, side, side, device="meta"))  # (1, C_in, H, W): shapes only
    return counter.get_total_flops()


def test_the_counted_macs_are_half_of_torchs_flops_for_a_real_row():
    """torch counts FLOPs = 2 x MACs; the rows come from the zoo's models, so rebuild the convs of the shape."""
    pair = separable_rows(2)[1]  # features.2: 64 -> 128, stride 2, 112x112
    grouped = grouped_rows(4)[3]  # stage2's first grouped conv: 256, 32 groups, stride 2, 56x56
    with torch.device("meta"):
        c_in, c_out, s = pair["in_chs"], pair["out_chs"], pair["stride"]
        separable = nn.Sequential(nn.Conv2d(c_in, c_in, 3, s, 1, groups=c_in, bias=False),
                                  nn.Conv2d(c_in, c_out, 1, bias=False))
        standard = nn.Conv2d(c_in, c_out, 3, s, 1, bias=False)
        assert _flops(separable, c_in, pair["side"]) == 2 * pair["macs"]
        assert _flops(standard, c_in, pair["side"]) == 2 * pair["standard_macs"]
        c, g, s = grouped["in_chs"], grouped["groups"], grouped["stride"]
        assert g == 32 and s == 2
        assert _flops(nn.Conv2d(c, c, 3, s, 1, groups=g, bias=False), c, grouped["side"]) == 2 * grouped["macs"]
        assert _flops(nn.Conv2d(c, c, 3, s, 1, bias=False), c, grouped["side"]) == 2 * grouped["standard_macs"]


def test_rows_that_break_the_formulas_do_not_hold():
    grouped, separable = _hand_grouped(1), _hand_separable(1)
    assert grouped_check([grouped, {**grouped, "module": "made up", "params": grouped["params"] + 1}]).verdict == FAILS
    assert grouped_check([{**grouped, "macs": grouped["standard_macs"] // 2}]).verdict == FAILS  # 1/2, not 1/4
    assert "made up" in grouped_check([{**grouped, "module": "made up", "params": 1}]).margin
    assert separable_check([{**separable, "macs": separable["macs"] - 1}]).verdict == FAILS
    assert separable_check([{**separable, "standard_params": separable["standard_params"] * 2}]).verdict == FAILS
    # A made-up pair with C_out 128 that saves only 4x: above the threshold, not below 1/8
    wide = {**separable, "out_chs": 128, "macs": 100, "standard_macs": 400}
    assert separable_bound_check([wide]).verdict == FAILS
    assert separable_bound_check([{**wide, "macs": 100, "standard_macs": 850}]).verdict == HOLDS  # 8.5x holds
    assert separable_bound_check([{**wide, "macs": 100, "standard_macs": 900}]).verdict == FAILS  # 1/9: the floor


def test_it_is_listed_after_bottleneck(cli):
    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    names = [item["name"] for item in json.loads(out)]
    assert names[names.index("bottleneck") + 1] == "separable"
    assert get_experiment("separable").cited_notes == ["004"]


def test_a_tiny_run_holds_and_writes_its_table_and_plots(tmp_path):
    result = run_experiment("separable", "tiny", out=tmp_path / "separable")
    assert result.verdict == HOLDS, result.margin
    rows = result.rows
    assert [r["comparison"] for r in rows] == ["separable"] * 2 + ["grouped"] * 4
    # the zoo's first pair (Howard et al. Table 1): 32 -> 64 at 112x112, stride 1
    first = rows[0]
    assert (first["in_chs"], first["out_chs"], first["stride"], first["side"]) == (32, 64, 1, 112)
    assert first["macs"] == (9 * 32 + 32 * 64) * 112 * 112
    assert all("time_ratio" not in r for r in rows)  # tiny times nothing
    with open(tmp_path / "separable" / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert (tmp_path / "separable" / RESULT_FILE).exists()
    assert sorted(p.name for p in result.plots) == ["grouped.png", "separable.png"]
