"""separable: depthwise-separable and grouped convs against the standard conv they replace (note 004).

Every count comes from :func:`cnnlab.analysis.summary` (meta device, exact) of the zoo's own conv layers:
each depthwise-separable pair of ``mobilenet_v1`` (Howard et al. 2017, Table 1) and each grouped 3x3 conv of
``resnext50_32x4d`` (Xie et al. 2017, 32 groups), at a 224x224 input, against a standard conv with the same
C_in, C_out, kernel, stride and input side. Only the conv layers are counted, on both sides of every
comparison (the zoo's convs here are bias-free, each followed by a BatchNorm that is left out), so the
ratios are those of the formulas. The checks compute each formula by hand from the layer's shape.

The third sub-claim, "and improves efficiency", is reported, not judged: the CPU wall time of one forward
pass of a few separable pairs and of their standard convs, real tensors, beside the MAC ratio.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import torch
from torch import nn

from cnnlab.analysis import summary
from cnnlab.errors import counted
from cnnlab.experiments.base import Check, Experiment, ExperimentResult, RunContext, SizeInfo, bar_plot, verdict_of
from cnnlab.layers.mobile import DepthwiseSeparable
from cnnlab.models import create_model

SEPARABLE_MODEL = "mobilenet_v1"
GROUPED_MODEL = "resnext50_32x4d"
INPUT_SIZE = (3, 224, 224)  # (C, H, W): both papers' ImageNet input
# Howard et al. 2017, section 3.1: 3x3 depthwise separable convs use "between 8 to 9 times less computation".
# With k = 3 the formula's ratio 1/C_out + 1/9 is always above 1/9; it is below 1/8 exactly when
# 1/C_out < 1/8 - 1/9, i.e. C_out > 72 (separable_bound_chs computes it from the formula).
PAPER_FEWER = 8  # "8 times less": the ratio is below 1/PAPER_FEWER
MOBILENET_KERNEL = 3  # the depthwise kernel of every MobileNet pair (Table 1)


@dataclass(frozen=True)
class SeparableSettings:
    """What one size runs."""

    separable_rows: Optional[int]  # the first N depthwise-separable pairs of mobilenet_v1; None: all 13
    grouped_rows: Optional[int]  # the first N grouped convs of resnext50_32x4d; None: all 16
    timed_rows: tuple[int, ...]  # 0-based indices of the MobileNet pairs timed on the CPU; (): none
    batch: int  # images per timed forward pass
    repeats: int  # timed forward passes per module (after one warm-up); the median is reported


SEPARABLE_SETTINGS = {
    "tiny": SeparableSettings(2, 4, (), 8, 0),  # pairs 1-2 (stride 1 and 2), stage1 and the strided stage2 conv
    # One timed pair per feature-map side at a 224 input (112, 56, 28, 14, 7)
    "quick": SeparableSettings(None, None, (0, 2, 4, 6, 12), 8, 3),
    "full": SeparableSettings(None, None, (0, 2, 4, 6, 12), 8, 7),
}


def out_side(side: int, kernel: int, stride: int) -> int:
    """The output side of a conv with the zoo's 'same' padding (k // 2 each side for an odd kernel)."""
    return (side + 2 * (kernel // 2) - kernel) // stride + 1


def separable_bound_chs(kernel: int, fewer: int = PAPER_FEWER) -> Fraction:
    """The C_out above which 1/C_out + 1/k^2 < 1/fewer (needs k^2 > fewer): C_out > 1 / (1/fewer - 1/k^2)."""
    return 1 / (Fraction(1, fewer) - Fraction(1, kernel * kernel))


def _standard_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A standard (groups=1) conv with the same C_in, C_out, kernel, stride and padding, bias-free as the zoo's."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)


def _count(module: nn.Module, in_chs: int, side: int) -> tuple[int, int]:
    """(parameters, MACs) of ``module`` on one (in_chs, side, side) image, by cnnlab's exact analysis."""
    result = summary(module, (in_chs, side, side))
    return result.total_params, result.macs


def _input_sides(model: nn.Module, modules: list[nn.Module]) -> list[int]:
    """The input side of each module when ``model`` (on the meta device) sees a 224x224 image."""
    sides: dict[int, int] = {}

    def keep_side(module: nn.Module, args: tuple) -> None:  # args[0]: (1, C_in, H, W); None keeps the input
        sides.setdefault(id(module), args[0].shape[-1])

    handles = [m.register_forward_pre_hook(keep_side) for m in modules]
    try:
        model(torch.empty(1, *INPUT_SIZE, device="meta"))  # (1, 3, 224, 224): shapes only
    finally:
        for handle in handles:
            handle.remove()
    return [sides[id(m)] for m in modules]


def _row(comparison: str, name: str, conv: nn.Conv2d, side: int, cheap: nn.Module) -> dict:
    """One comparison: the cheap design (``cheap``) against the standard conv of ``conv``'s shape."""
    in_chs = conv.in_channels
    params, macs = _count(cheap, in_chs, side)
    standard_params, standard_macs = _count(_standard_conv(conv), in_chs, side)
    return {
        "comparison": comparison,
        "module": name,
        "in_chs": in_chs,
        "out_chs": cheap[-1].out_channels if isinstance(cheap, nn.Sequential) else cheap.out_channels,
        "kernel": conv.kernel_size[0],
        "stride": conv.stride[0],
        "side": side,
        "groups": conv.groups,
        "params": params,
        "macs": macs,
        "standard_params": standard_params,
        "standard_macs": standard_macs,
        "param_ratio": params / standard_params,
        "mac_ratio": macs / standard_macs,
    }


def separable_rows(limit: Optional[int]) -> list[dict]:
    """Every depthwise-separable pair of mobilenet_v1 (the first ``limit``) against the standard 3x3 conv."""
    with torch.device("meta"):
        model = create_model(SEPARABLE_MODEL)
        pairs = [(name, m) for name, m in model.named_modules() if isinstance(m, DepthwiseSeparable)][:limit]
        sides = _input_sides(model, [m for _, m in pairs])
        rows = []
        for (name, pair), side in zip(pairs, sides):
            depthwise, pointwise = pair.depthwise.conv, pair.pointwise.conv
            # The standard conv takes the depthwise conv's kernel and stride and the pointwise conv's C_out
            standard_shape = nn.Conv2d(depthwise.in_channels, pointwise.out_channels, depthwise.kernel_size,
                                       depthwise.stride, depthwise.padding, bias=False)
            row = _row("separable", name, standard_shape, side, nn.Sequential(depthwise, pointwise))
            row["groups"] = depthwise.groups  # the depthwise conv's: one group per input channel
            row["formula_ratio"] = 1 / row["out_chs"] + 1 / row["kernel"] ** 2  # Howard et al.'s eq. 5
            rows.append(row)
    return rows


def grouped_rows(limit: Optional[int]) -> list[dict]:
    """Every grouped conv of resnext50_32x4d (the first ``limit``) against the same conv with groups=1."""
    with torch.device("meta"):
        model = create_model(GROUPED_MODEL)
        convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1][:limit]
        sides = _input_sides(model, [m for _, m in convs])
        rows = []
        for (name, conv), side in zip(convs, sides):
            row = _row("grouped", name, conv, side, conv)
            row["formula_ratio"] = 1 / conv.groups
            rows.append(row)
    return rows


def _grouped_ok(row: dict) -> bool:
    """Counted weights and MACs are C_in*C_out*k*k/g (x H_out*W_out) and exactly 1/g of the standard conv's."""
    k, g, hw = row["kernel"], row["groups"], out_side(row["side"], row["kernel"], row["stride"]) ** 2
    weights = Fraction(row["in_chs"] * row["out_chs"] * k * k, g)
    standard = row["in_chs"] * row["out_chs"] * k * k
    return (row["params"] == weights and row["macs"] == weights * hw
            and row["standard_params"] == standard and row["standard_macs"] == standard * hw
            and Fraction(row["params"], row["standard_params"]) == Fraction(1, g)
            and Fraction(row["macs"], row["standard_macs"]) == Fraction(1, g))


def grouped_check(rows: list[dict]) -> Check:
    """(a): every grouped conv costs exactly 1/g of the standard conv, as the hand formula says."""
    claim = "a grouped conv with g groups has 1/g of the standard conv's parameters and MACs"
    if not rows:
        return Check(claim, verdict_of(None), "no grouped conv compared")
    wrong = [r["module"] for r in rows if not _grouped_ok(r)]
    groups = sorted({r["groups"] for r in rows})
    first = rows[0]
    return Check(claim, verdict_of(not wrong),
                 (f"{len(rows) - len(wrong)} of {counted(len(rows), 'grouped conv')} equal C_in*C_out*k*k/g "
                  f"(x H'*W' for MACs) and 1/g of the standard conv, g = {', '.join(map(str, groups))}"
                  f" ({first['module']}: {first['params']:,} vs {first['standard_params']:,} parameters)")
                 + (f"; off: {', '.join(wrong)}" if wrong else ""))


def _separable_formula(row: dict) -> Fraction:
    """Howard et al.'s eq. 5: (k^2 C_in + C_in C_out) / (k^2 C_in C_out) = 1/C_out + 1/k^2."""
    return Fraction(1, row["out_chs"]) + Fraction(1, row["kernel"] ** 2)


def _separable_ok(row: dict) -> bool:
    """Counted weights k^2 C_in + C_in C_out (x H'*W' for MACs) and ratios exactly the formula."""
    k, c_in, c_out = row["kernel"], row["in_chs"], row["out_chs"]
    hw = out_side(row["side"], k, row["stride"]) ** 2
    weights, standard = k * k * c_in + c_in * c_out, k * k * c_in * c_out
    return (row["params"] == weights and row["macs"] == weights * hw
            and row["standard_params"] == standard and row["standard_macs"] == standard * hw
            and Fraction(row["params"], row["standard_params"]) == _separable_formula(row)
            and Fraction(row["macs"], row["standard_macs"]) == _separable_formula(row))


def separable_check(rows: list[dict]) -> Check:
    """(b): every pair's ratio to the standard conv is exactly 1/C_out + 1/k^2."""
    claim = "a depthwise-separable conv costs 1/C_out + 1/k^2 of the standard conv (Howard et al. eq. 5)"
    if not rows:
        return Check(claim, verdict_of(None), "no pair compared")
    wrong = [r["module"] for r in rows if not _separable_ok(r)]
    ratios = [r["mac_ratio"] for r in rows]
    return Check(claim, verdict_of(not wrong),
                 f"{len(rows) - len(wrong)} of {counted(len(rows), 'pair')} equal the formula exactly, in parameters "
                 f"and MACs; MAC ratio {min(ratios):.4f} to {max(ratios):.4f}"
                 + (f"; off: {', '.join(wrong)}" if wrong else ""))


def separable_bound_check(rows: list[dict]) -> Check:
    """(b), the paper's size of the saving: the MAC ratio is above 1/k^2 in every pair (the formula's floor) and
    below 1/8 in every pair whose C_out is above the formula's threshold (72 at k = 3)."""
    judged = [r for r in rows if r["out_chs"] > separable_bound_chs(r["kernel"])]
    above_floor = all(Fraction(r["macs"], r["standard_macs"]) > Fraction(1, r["kernel"] ** 2) for r in rows)
    below = all(Fraction(r["macs"], r["standard_macs"]) < Fraction(1, PAPER_FEWER) for r in judged)
    others = [r for r in rows if r not in judged]
    fewer = [r["standard_macs"] / r["macs"] for r in judged]
    return Check(f"{PAPER_FEWER} to k^2 = 9 times fewer MACs than the standard 3x3 conv (Howard et al. 3.1)",
                 # a ratio at or under 1/k^2 fails anywhere; no pair above the threshold: undecided
                 verdict_of(False if not above_floor else (below if judged else None)),
                 (f"{min(fewer):.2f}x to {max(fewer):.2f}x fewer over {counted(len(judged), 'pair')} with C_out > "
                  f"{separable_bound_chs(judged[0]['kernel'])}" if judged
                  else "no pair with C_out above the formula's threshold")
                 + "".join(f"; {r['module']} (C_out {r['out_chs']}, not above the threshold): "
                           f"{r['standard_macs'] / r['macs']:.2f}x" for r in others))


def _median_seconds(modules: list[nn.Module], x: torch.Tensor, repeats: int) -> list[float]:
    """The median wall time of a forward pass of each module, taken in turns so a load change hits all alike."""
    times: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for module in modules:
            module(x)  # warm-up: the first call allocates and picks its kernels
        for _ in range(repeats):
            for module, kept in zip(modules, times):
                start = time.perf_counter()
                module(x)
                kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def time_row(row: dict, batch: int, repeats: int) -> dict:
    """(c): the CPU time of one forward pass of the separable pair and of the standard conv, batch x C_in x side^2.

    Conv layers only, as counted; weights and input drawn with a fixed seed (the values do not change the time)."""
    k, c_in, c_out, stride = row["kernel"], row["in_chs"], row["out_chs"], row["stride"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        separable = nn.Sequential(nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in, bias=False),
                                  nn.Conv2d(c_in, c_out, 1, bias=False)).eval()
        standard = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False).eval()
        x = torch.randn(batch, c_in, row["side"], row["side"])  # (B, C_in, H, W)
    separable_s, standard_s = _median_seconds([separable, standard], x, repeats)
    return {"batch": batch, "threads": torch.get_num_threads(), "separable_ms": separable_s * 1e3,
            "standard_ms": standard_s * 1e3, "time_ratio": separable_s / standard_s}


def _label(row: dict) -> str:
    name = row["module"].removeprefix("features.").removesuffix(".conv2.conv")  # ResNeXt: the block's name
    return f"{name} ({row['in_chs']}-{row['out_chs']}, {row['side']})"


def run_separable(ctx: RunContext) -> ExperimentResult:
    settings = SEPARABLE_SETTINGS[ctx.size]
    separable = separable_rows(settings.separable_rows)
    grouped = grouped_rows(settings.grouped_rows)
    timed = [separable[i] for i in settings.timed_rows if i < len(separable)]
    for row in timed:
        row.update(time_row(row, settings.batch, settings.repeats))
    checks = [grouped_check(grouped), separable_check(separable), separable_bound_check(separable)]

    panels = {"MACs: separable / standard 3x3": {
        "counted": [r["mac_ratio"] for r in separable],
        "1/C_out + 1/k^2": [r["formula_ratio"] for r in separable]}}
    plots = [bar_plot(ctx.out / "separable.png", f"A separable pair costs 1/C_out + 1/k^2 ({SEPARABLE_MODEL})",
                      [_label(r) for r in separable], panels)]
    if timed:
        plots.append(bar_plot(
            ctx.out / "separable_time.png",
            f"Time vs MACs (CPU, batch {settings.batch}, {counted(torch.get_num_threads(), 'thread')})",
            [_label(r) for r in timed],
            {"separable / standard": {"MAC ratio": [r["mac_ratio"] for r in timed],
                                      "time ratio": [r["time_ratio"] for r in timed]}}))
    plots.append(bar_plot(
        ctx.out / "grouped.png", f"A grouped conv costs 1/g of the standard conv ({GROUPED_MODEL}, 224x224)",
        [_label(r) for r in grouped],
        {"parameters: grouped / standard": {"counted": [r["param_ratio"] for r in grouped],
                                            "1/g": [r["formula_ratio"] for r in grouped]},
         "MACs: grouped / standard": {"counted": [r["mac_ratio"] for r in grouped],
                                      "1/g": [r["formula_ratio"] for r in grouped]}}))
    return ExperimentResult(separable + grouped, checks, plots)


SEPARABLE = Experiment(
    name="separable",
    claim="Separable convolution splits a standard conv into a depthwise and a pointwise conv; grouped convolution "
          "splits the input channels into groups, each convolved with its own filters, which cuts the parameters "
          "and computation and improves the model's efficiency.",
    source=("004", "可分离卷积:卷积核分成通道组,将传统卷积分解为逐层卷积和逐点卷积; "
                   "分组卷积: 它将输入通道分为多组,每组使用一组不同的过滤器分别进行卷积。"
                   "与传统卷积法相比,这导致了计算量的减少和模型效率的提高 (卷积变为分组卷积,降低参数量)"),
    rule="(a) HOLDS if every grouped 3x3 conv of resnext50_32x4d has exactly C_in*C_out*k*k/g weights and that "
         "times H'*W' MACs, exactly 1/g of the same conv with groups=1; (b) HOLDS if every depthwise-separable pair "
         "of mobilenet_v1 costs exactly 1/C_out + 1/k^2 of the standard conv with the same C_in, C_out, stride and "
         "side, in parameters and MACs (Howard et al. eq. 5); (b, size) HOLDS if every pair's MAC ratio is above "
         f"1/k^2 and, where C_out > {separable_bound_chs(MOBILENET_KERNEL)} (the formula's bound: 1/C_out + 1/9 < "
         "1/8 there), below 1/8: the paper's "
         "'8 to 9 times less computation'. Conv layers only, both sides alike, counted by cnnlab's summary at "
         "224x224. (c) 'improves efficiency': CPU time of a forward pass, reported beside the MAC ratio, not judged.",
    runs="the zoo's mobilenet_v1 and resnext50_32x4d conv layers and standard convs of the same shapes, analysed on "
         "the meta device; a few pairs timed on the CPU",
    sizes={
        "tiny": SizeInfo("2 MobileNet pairs and 4 ResNeXt grouped convs, not timed", 1.0),
        "quick": SizeInfo("all 13 pairs and 16 grouped convs; 5 pairs timed, batch 8, median of 3", 2.3),
        "full": SizeInfo("same as quick, median of 7 timed passes", 3.3),
    },
    run=run_separable,
    notes=("004",),
)
EXPERIMENTS = [SEPARABLE]
