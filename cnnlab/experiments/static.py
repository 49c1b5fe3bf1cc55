"""Four deterministic experiments that need no training: receptive-field, padding-stride, complexity, bottleneck.

Every number comes from cnnlab's modules and :func:`cnnlab.analysis.summary` (meta device: shapes
only, so even ResNet-152 takes a fraction of a second) or from torch's own output shapes, but for one of
complexity's: note 002's count of dropout masks, 2^4096, computed as Python's exact integer. MACs follow the summary's conventions:
conv = C_out*H'*W'*(C_in/groups)*K*K, linear = in*out, biases not counted; FLOPs = 2 x MACs.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from cnnlab.analysis import Summary, summary
from cnnlab.errors import counted, noun_for
from cnnlab.experiments.base import (
    INCONCLUSIVE,
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    bar_plot,
    verdict_of,
)
from cnnlab.io import save_png
from cnnlab.layers.blocks import ConvNormAct
from cnnlab.layers.inception import InceptionBlock, InceptionWidths
from cnnlab.layers.residual import BasicBlock, Bottleneck
from cnnlab.models import create_model


def _n(value: float) -> str:
    """A count with thousands separators."""
    return f"{int(value):,}"


def _m(value: float) -> str:
    """A count in millions or billions, for margins."""
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def _check_over(claim: str, compared: dict[str, Sequence], holds: Callable[[], bool], margin: Callable[[], str]) -> Check:
    """A check over lists of cases, ``compared`` = {what one case is: the cases}: INCONCLUSIVE, its margin naming
    the lists that are empty, when any is; else ``holds()`` decides and ``margin()`` gives the numbers. Over zero
    cases all() is True and bool() False, so a check written inline would say HOLDS or DOES NOT HOLD about
    nothing; the margin is only made when there are cases (it may take the first, or a min over them)."""
    empty = [what for what, cases in compared.items() if not cases]
    if empty:
        return Check(claim, INCONCLUSIVE, f"nothing compared: no {' and no '.join(empty)}")
    return Check(claim, verdict_of(holds()), margin())


# ---------------------------------------------------------------------------------------------
# receptive-field: a stack of 3x3 convs vs one larger conv (notes 004, 002, 000)

RF_SETTINGS = {  # size -> (channels C in and out of every conv, input side H = W)
    "tiny": ((8,), 16),
    "quick": ((64,), 56),
    "full": ((64, 128, 256), 56),
}
RF_PAIRS = ((2, 5), (3, 7))  # (number of stacked 3x3 convs, kernel of the single conv they replace)


def conv_stack(channels: int, kernel: int, layers: int, bias: bool = True) -> nn.Sequential:
    """``layers`` convs of ``kernel`` with 'same' padding, ReLU between: (B, C, H, W) -> (B, C, H, W)."""
    modules: list[nn.Module] = []
    for i in range(layers):
        if i:
            modules.append(nn.ReLU())
        modules.append(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=bias))
    return nn.Sequential(*modules)


def _measure_stack(channels: int, kernel: int, layers: int, side: int) -> dict:
    with torch.device("meta"):
        model = conv_stack(channels, kernel, layers)
    result = summary(model, (channels, side, side))
    field = result.root.receptive_field  # of the stack's output
    return {
        "channels": channels,
        "side": side,
        "network": f"{layers} x {kernel}x{kernel}",
        "layers": layers,
        "kernel": kernel,
        "receptive_field": field.size[0],
        "params": result.total_params,
        "weights": sum(m.weight.numel() for m in model if isinstance(m, nn.Conv2d)),
        "macs": result.macs,
        "activation_memory_bytes": result.activation_memory,
    }


def run_receptive_field(ctx: RunContext) -> ExperimentResult:
    size, out = ctx.size, ctx.out
    channel_list, side = RF_SETTINGS[size]
    rows, checks = [], []
    for channels in channel_list:
        for stacked, big in RF_PAIRS:
            small = _measure_stack(channels, 3, stacked, side)
            large = _measure_stack(channels, big, 1, side)
            rows += [small, large]
            what = f"C={channels}: {small['network']} vs 1 x {big}x{big}"
            checks.append(Check(f"{what}: same receptive field", verdict_of(small["receptive_field"] == large["receptive_field"]),
                                f"{small['receptive_field']} vs {large['receptive_field']}"))
            for key in ("params", "macs"):
                checks.append(Check(
                    f"{what}: fewer {key}", verdict_of(small[key] < large[key]),
                    f"{_n(small[key])} vs {_n(large[key])} (ratio {small[key] / large[key]:.2f})"))
    # Note 004's hand count "5*5*1 = 25, 2*3*3*1 = 18": one channel in and out, biases left out.
    with torch.device("meta"):
        five = sum(p.numel() for p in conv_stack(1, 5, 1, bias=False).parameters())
        two_threes = sum(p.numel() for p in conv_stack(1, 3, 2, bias=False).parameters())
    checks.append(Check(
        "note 004's hand count 25 vs 18 (C=1, no biases)", verdict_of((five, two_threes) == (25, 18)),
        f"{five} vs {two_threes}; it omits the biases and the C_in*C_out factor: with C channels the weights "
        f"are 25C^2 vs 18C^2 and the biases C vs 2C"))
    labels = [f"C={r['channels']}\n{r['network']}" for r in rows]
    plot = bar_plot(
        out / "receptive_field.png",
        "Stacked 3x3 convs see as far as one 5x5 / 7x7 conv, with fewer parameters and MACs",
        labels,
        {"receptive field (pixels)": {"field": [r["receptive_field"] for r in rows]},
         "parameters": {"params": [r["params"] for r in rows]},
         f"MACs at {side}x{side}": {"MACs": [r["macs"] for r in rows]}},
    )
    return ExperimentResult(rows, checks, [plot])


RECEPTIVE_FIELD = Experiment(
    name="receptive-field",
    claim="Two stacked 3x3 convs have the receptive field of one 5x5 conv, and three that of one 7x7, "
          "with fewer parameters.",
    source=("004", "3x3的卷积堆叠两层也是5x5的感受野(这个很好理解),但是用了更少的参数。1551 = 25 ... 331 = 18"),
    notes=("004", "002", "000"),  # two 3x3 = one 5x5 is note 004's; three = one 7x7 the count notes 002 and 000 give
    rule="For each width C: HOLDS if the stack's receptive field (cnnlab.analysis) equals the single conv's, "
         "and its parameters and its MACs are both strictly lower; the note's hand count holds if a 1-channel "
         "bias-free 5x5 conv has 25 weights and two 3x3 convs 18.",
    runs="2 x 3x3 vs 5x5 and 3 x 3x3 vs 7x7 conv stacks, C channels in and out, analysed on the meta device",
    sizes={
        "tiny": SizeInfo("C = 8 at 16x16", 1.0),
        "quick": SizeInfo("C = 64 at 56x56", 1.0),
        "full": SizeInfo("C = 64, 128, 256 at 56x56", 2.0),
    },
    run=run_receptive_field,
)


# ---------------------------------------------------------------------------------------------
# padding-stride: how padding and stride set a conv's output side (note 003)

# Note 003 summarises d2l's section on padding and stride (填充和步幅); its formulas and numbers were lost
# when the notes were extracted to text. These are d2l's example, the claim checked: a 224x224 input and
# 5x5 kernels without padding need 55 layers to reach 4x4.
D2L_INPUT_SIDE = 224
D2L_KERNEL = 5
D2L_TARGET_SIDE = 4
D2L_LAYERS = 55  # d2l's count: compared with the layers counted, never used to build a stack
SHRINK_STRIDE = 2  # the strided stacks' stride: the smallest that shrinks the side multiplicatively
MUCH_MORE = 10  # "a lot of computation": at least 10x the MACs of a strided stack reaching the same side
PS_SETTINGS = {  # size -> (C in and out of every stacked conv, the grid's largest n, k, total padding p, s)
    "tiny": (8, (12, 4, 7, 3)),
    "quick": (64, (16, 6, 11, 4)),
    "full": (64, (32, 7, 13, 4)),
}


def _ps_description(size: str) -> str:
    """A size's line in `cnnlab experiment list`, from PS_SETTINGS (the grid it runs, never typed twice)."""
    channels, (side, kernel, padding, stride) = PS_SETTINGS[size]
    return f"grid n <= {side}, k <= {kernel}, p <= {padding}, s <= {stride}; stacks at C = {channels}"


def output_side(side: int, kernel: int, padding: int, stride: int) -> int:
    """d2l's output side: floor((n - k + p + s) / s), p the padding rows on both sides together."""
    return (side - kernel + padding + stride) // stride


def _zero_pad(padding: int) -> nn.ZeroPad2d:
    """``padding`` zero rows and columns in all: (B, C, n, n) -> (B, C, n + p, n + p). An odd total puts the
    extra row on top (and the extra column left), as note 003 says for even kernels: ceil(p/2) above,
    floor(p/2) below."""
    before, after = (padding + 1) // 2, padding // 2
    return nn.ZeroPad2d((before, after, before, after))


def _formula_grid(largest: tuple[int, int, int, int]) -> list[dict]:
    """Every side n, kernel k, total padding p and stride s with 1 <= n, k, s and 0 <= p up to the largest
    given, where n + p >= k (the padded input holds the kernel), with torch's output side of a real conv on
    the zero-padded (1, 1, n, n) input. On the CPU: the meta device's zero padding takes 0.9 ms a call, the
    CPU's 0.1 ms; each padded input serves every stride."""
    max_side, max_kernel, max_padding, max_stride = largest
    cases = []
    with torch.no_grad():
        for kernel in range(1, max_kernel + 1):
            convs = {stride: nn.Conv2d(1, 1, kernel, stride=stride) for stride in range(1, max_stride + 1)}
            for padding in range(max_padding + 1):
                pad = _zero_pad(padding)
                for side in range(max(1, kernel - padding), max_side + 1):
                    padded = pad(torch.zeros(1, 1, side, side))  # (1, 1, n + p, n + p)
                    for stride, conv in convs.items():
                        out_h, out_w = conv(padded).shape[-2:]
                        cases.append({"n": side, "k": kernel, "p": padding, "s": stride,
                                      "torch": int(out_h) if out_h == out_w else None,  # None: not square
                                      "formula": output_side(side, kernel, padding, stride)})
    return cases


def _same_padding_cases(largest: tuple[int, int, int, int]) -> list[dict]:
    """torch's own padding='same' (stride 1, the extra row of an even kernel placed by torch) against the
    input side, for every n and k of the grid."""
    max_side, max_kernel, _, _ = largest
    cases = []
    with torch.no_grad(), warnings.catch_warnings():
        # torch warns that an even kernel's 'same' may copy the input to pad it: a cost, not a shape
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        for kernel in range(1, max_kernel + 1):
            conv = nn.Conv2d(1, 1, kernel, padding="same")
            for side in range(1, max_side + 1):
                cases.append({"n": side, "k": kernel, "same": int(conv(torch.zeros(1, 1, side, side)).shape[-1])})
    return cases


def same_extra_row() -> str:
    """Where torch's padding='same' puts an even kernel's extra row (and column): "above" as note 003's
    ceil(p/2) above, or "below". Found from values, not shapes: a 2x2 all-ones kernel over a 3x3 input of
    distinct numbers, compared with the two explicit paddings."""
    image = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # (1, 1, 3, 3), every pixel different
    weight = torch.ones(1, 1, 2, 2)  # k = 2: p = k - 1 = 1 row in all
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        same = nn.functional.conv2d(image, weight, padding="same")
    above = nn.functional.conv2d(_zero_pad(1)(image), weight)
    below = nn.functional.conv2d(nn.ZeroPad2d((0, 1, 0, 1))(image), weight)
    return "above" if torch.equal(same, above) else "below" if torch.equal(same, below) else "neither"


def grow_stack(channels: int, kernel: int, stride: int, padding: int, side: int, target: int) -> nn.Sequential:
    """Convs (C in and out, ``padding`` on each side) added one at a time until torch's output side is at most
    ``target``: (B, C, side, side) -> (B, C, s', s') with s' <= target. Raises ValueError if a conv can no
    longer be applied or the side stops shrinking before the target."""
    convs: list[nn.Module] = []
    with torch.device("meta"):
        x = torch.empty(1, channels, side, side)  # (B, C, H, W)
        while x.shape[-1] > target:
            if x.shape[-1] + 2 * padding < kernel:
                raise ValueError(f"a {kernel}x{kernel} conv does not fit a {x.shape[-1]}-pixel side")
            conv = nn.Conv2d(channels, channels, kernel, stride=stride, padding=padding)
            before, x = x.shape[-1], conv(x)
            if x.shape[-1] >= before:
                raise ValueError(f"a {kernel}x{kernel} conv with stride {stride} and padding {padding} does not "
                                 f"shrink a {before}-pixel side")
            convs.append(conv)
    return nn.Sequential(*convs)  # no activations between: they change neither a shape nor a MAC count


def _measure_shrink(label: str, channels: int, stride: int, padding: int) -> dict:
    stack = grow_stack(channels, D2L_KERNEL, stride, padding, D2L_INPUT_SIDE, D2L_TARGET_SIDE)
    result = summary(stack, (channels, D2L_INPUT_SIDE, D2L_INPUT_SIDE))
    sides = [r.output_shape[-1] for r in result.rows() if r.type == "Conv2d"]  # each conv's output side
    return {
        "stack": label,
        "channels": channels,
        "input": D2L_INPUT_SIDE,
        "kernel": D2L_KERNEL,
        "stride": stride,
        "padding": 2 * padding,  # rows in all, as the formula counts them
        "layers": len(sides),
        "final_side": sides[-1],
        "params": result.total_params,
        "macs": result.macs,
        "sides": " ".join(map(str, sides)),
    }


def _sides(row: dict) -> list[int]:
    return [int(side) for side in row["sides"].split()]


def _formula_check(claim: str, cases: list[dict], key: str = "formula") -> Check:
    """HOLDS when the formula (``key``) equals torch's output side in every case; no case decides nothing."""
    wrong = [c for c in cases if c["torch"] != c[key]]
    first = f"; first: n {wrong[0]['n']}, k {wrong[0]['k']}, p {wrong[0]['p']}, s {wrong[0]['s']}: torch " \
            f"{wrong[0]['torch']}, formula {wrong[0][key]}" if wrong else ""
    return _check_over(claim, {"case of the grid to compare with torch's output side": cases}, lambda: not wrong,
                       lambda: f"{len(cases) - len(wrong):,} of {len(cases):,} {noun_for(len(cases), 'case')} equal "
                               f"torch's output side (n <= {max(c['n'] for c in cases)}, k <= "
                               f"{max(c['k'] for c in cases)}, odd and even){first}")


def run_padding_stride(ctx: RunContext) -> ExperimentResult:
    channels, largest = PS_SETTINGS[ctx.size]
    grid = _formula_grid(largest)
    same = _same_padding_cases(largest)
    unit_stride = [dict(c, stride_one=c["n"] - c["k"] + c["p"] + 1) for c in grid if c["s"] == 1]
    keeps = [c for c in unit_stride if c["p"] == c["k"] - 1]
    divides = [dict(c, divided=c["n"] // c["s"]) for c in grid
               if c["p"] == c["k"] - 1 and c["n"] % c["s"] == 0]
    half_pad = (D2L_KERNEL - 1) // 2  # p = k - 1 in all: half on each side (k odd)
    plain = _measure_shrink("stride 1, no padding", channels, 1, 0)
    strided = _measure_shrink(f"stride {SHRINK_STRIDE}, no padding", channels, SHRINK_STRIDE, 0)
    padded = _measure_shrink(f"stride {SHRINK_STRIDE}, padding k - 1", channels, SHRINK_STRIDE, half_pad)
    stacks = [plain, strided, padded]

    plain_sides = _sides(plain)
    linear = [D2L_INPUT_SIDE - layer * (D2L_KERNEL - 1) for layer in range(1, len(plain_sides) + 1)]
    padded_sides = _sides(padded)
    exact = [layer for layer in range(1, len(padded_sides) + 1) if D2L_INPUT_SIDE % SHRINK_STRIDE ** layer == 0]
    multiplicative = [padded_sides[layer - 1] == D2L_INPUT_SIDE // SHRINK_STRIDE ** layer for layer in exact]
    ratios = [plain["macs"] / other["macs"] for other in (strided, padded)]
    same_ok = [c for c in same if c["same"] == c["n"]]
    keeps_ok = [c for c in keeps if c["torch"] == c["n"]]
    checks = [
        _formula_check("'with p rows of padding in all the output is n - k + p + 1' (stride 1)", unit_stride,
                       key="stride_one"),
        _check_over("'p = k - 1 gives the output the input's shape'",
                    {"case of the grid with p = k - 1": keeps, "side and kernel for torch's padding='same'": same},
                    lambda: len(keeps_ok) == len(keeps) and len(same_ok) == len(same),
                    lambda: f"{len(keeps_ok):,} of {len(keeps):,} {noun_for(len(keeps), 'case')} keep n (odd k: (k-1)/2 "
                            f"on each side; even k: ceil above, floor below); torch's padding='same' keeps n in "
                            f"{len(same_ok):,} of {len(same):,}, with an even kernel's extra row {same_extra_row()} "
                            "(same shape either way)"),
        _formula_check("'with stride s the output is floor((n - k + p + s) / s)'", grid),
        _formula_check("'p = k - 1 and s divides n give n / s'", divides, key="divided"),
        _check_over("'without padding the output shrinks linearly with the number of layers' (填充减小的输出大小与层数线性相关)",
                    {"layer in the stride-1 stack": plain_sides}, lambda: plain_sides == linear,
                    lambda: f"{D2L_KERNEL}x{D2L_KERNEL} convs from {D2L_INPUT_SIDE}: side after L layers = "
                            f"{D2L_INPUT_SIDE} - {D2L_KERNEL - 1}L for {sum(a == b for a, b in zip(plain_sides, linear))} "
                            f"of {len(linear)} layers ({', '.join(map(str, plain_sides[:3]))}, ..., {plain_sides[-1]})"),
        Check(f"d2l's '{D2L_INPUT_SIDE}x{D2L_INPUT_SIDE} with {D2L_KERNEL}x{D2L_KERNEL} kernels needs {D2L_LAYERS} "
              f"layers to reach {D2L_TARGET_SIDE}x{D2L_TARGET_SIDE}'",
              verdict_of(plain["layers"] == D2L_LAYERS and plain["final_side"] == D2L_TARGET_SIDE),
              f"{plain['layers']} layers counted, the last output {plain['final_side']}x{plain['final_side']}"),
        Check("'a lot of computation to reach a small output' (需要大量计算才能得到较小输出)",
              verdict_of(all(r >= MUCH_MORE for r in ratios)),
              f"C={channels}: {plain['layers']} stride-1 layers {_m(plain['macs'])} MACs vs {strided['layers']} "
              f"stride-{SHRINK_STRIDE} layers without padding {_m(strided['macs'])} (x{ratios[0]:.0f}) and "
              f"{padded['layers']} with padding k - 1 {_m(padded['macs'])} (x{ratios[1]:.0f}), each to "
              f"{D2L_TARGET_SIDE}x{D2L_TARGET_SIDE} or less"),
        _check_over("'stride cuts the output shape multiplicatively' (步幅...可以成倍的减少输出形状)",
                    {f"layer L where {SHRINK_STRIDE}^L divides {D2L_INPUT_SIDE}": exact}, lambda: all(multiplicative),
                    lambda: f"stride {SHRINK_STRIDE}, padding k - 1: side = {D2L_INPUT_SIDE} / {SHRINK_STRIDE}^L for "
                            f"{sum(multiplicative)} of the {len(exact)} layers where {SHRINK_STRIDE}^L divides "
                            f"{D2L_INPUT_SIDE} ({', '.join(map(str, padded_sides))})"),
    ]
    formula_rows = [
        {"formula": "n - k + p + 1 (s = 1)", "cases": len(unit_stride),
         "agree": sum(c["torch"] == c["stride_one"] for c in unit_stride)},
        {"formula": "n (s = 1, p = k - 1)", "cases": len(keeps), "agree": len(keeps_ok)},
        {"formula": "n (s = 1, torch padding='same')", "cases": len(same), "agree": len(same_ok)},
        {"formula": "floor((n - k + p + s) / s)", "cases": len(grid),
         "agree": sum(c["torch"] == c["formula"] for c in grid)},
        {"formula": "n / s (p = k - 1, s divides n)", "cases": len(divides),
         "agree": sum(c["torch"] == c["divided"] for c in divides)},
    ]
    plot = _shrink_plot(ctx.out / "padding_stride.png", stacks)
    return ExperimentResult(stacks + formula_rows, checks, [plot])


def _shrink_plot(path, stacks: list[dict]):
    """The side after each layer (linear without stride, geometric with it) and each stack's MACs."""
    if not stacks:  # the MACs panel's title names the stacks' channels
        raise ValueError("the padding-stride shrink plot needs at least one stack of convs (_measure_shrink's "
                         "rows); it was given none")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (sides_ax, macs_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in stacks:
        sides = [row["input"]] + _sides(row)
        sides_ax.plot(range(len(sides)), sides, marker=".", label=f"{row['stack']} ({row['layers']} layers)")
    sides_ax.axhline(D2L_TARGET_SIDE, color="gray", linewidth=0.8, linestyle=":")
    sides_ax.set_xlabel("layers")
    sides_ax.set_ylabel("output side (pixels)")
    sides_ax.set_title(f"{D2L_KERNEL}x{D2L_KERNEL} convs from {D2L_INPUT_SIDE}x{D2L_INPUT_SIDE}", fontsize=10)
    sides_ax.legend(fontsize=8)
    sides_ax.grid(alpha=0.3)
    macs_ax.bar(range(len(stacks)), [row["macs"] / 1e9 for row in stacks])
    macs_ax.set_xticks(range(len(stacks)))
    macs_ax.set_xticklabels([row["stack"] for row in stacks], rotation=15, ha="right", fontsize=8)
    macs_ax.set_title(f"GMACs to reach {D2L_TARGET_SIDE}x{D2L_TARGET_SIDE} (C = {stacks[0]['channels']})", fontsize=10)
    macs_ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Without padding the side shrinks linearly with depth, at a high cost; a stride divides it", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


PADDING_STRIDE = Experiment(
    name="padding-stride",
    claim="Padding adds rows and columns around the input to control how much the output shrinks; without it "
          "the output shrinks linearly with the number of layers (d2l: 55 layers of 5x5 take 224x224 to 4x4), "
          "which costs a lot of computation; a stride cuts the output shape multiplicatively. With p rows of "
          "padding in all the output side is n - k + p + 1, p = k - 1 keeps the input's shape, and with stride s "
          "it is floor((n - k + p + s) / s), n / s when p = k - 1 and s divides n.",
    source=("003", "填充在输入周围添加额外的行 / 列, 来控制输出形状的减少量 / 步幅...可以成倍的减少输出形状 / "
                   "填充减小的输出大小与层数线性相关 / 需要大量计算才能得到较小输出 (the formulas and numbers "
                   "were lost from the note's text; they are d2l's)"),
    rule="Each formula HOLDS if it equals the output side of a real torch conv (zero padding, ceil(p/2) rows "
         "above and floor(p/2) below) in every case of a grid of n, k (odd and even), total padding p and "
         "stride s where the padded input holds the kernel; 'p = k - 1 keeps the shape' also needs torch's "
         f"padding='same' to keep n. Stacks of {D2L_KERNEL}x{D2L_KERNEL} convs (C channels in and out) are grown "
         f"from {D2L_INPUT_SIDE} one layer at a time until torch's output side is at most {D2L_TARGET_SIDE}: "
         f"'linear' HOLDS if the side after L layers is {D2L_INPUT_SIDE} - {D2L_KERNEL - 1}L at every layer; "
         f"d2l's count HOLDS if {D2L_LAYERS} layers end at exactly {D2L_TARGET_SIDE}; 'a lot of computation' "
         f"HOLDS if the stride-1 stack's MACs (cnnlab.analysis) are at least {MUCH_MORE}x those of each "
         f"stride-{SHRINK_STRIDE} stack (no padding; padding k - 1) reaching {D2L_TARGET_SIDE} or less; "
         f"'multiplicatively' HOLDS if the stride-{SHRINK_STRIDE} stack with padding k - 1 has side "
         f"{D2L_INPUT_SIDE} / {SHRINK_STRIDE}^L after every layer L where {SHRINK_STRIDE}^L divides {D2L_INPUT_SIDE}.",
    runs="padded 1-channel convs on small CPU tensors over a grid of n, k, p, s; torch's padding='same'; stacks "
         "of 5x5 convs from 224x224 at stride 1 and 2, grown until the side is at most 4, analysed on the meta device",
    sizes={
        # alone on 2 cores: tiny 0.5 s, quick 0.7 s, full 1.2 s
        "tiny": SizeInfo(_ps_description("tiny"), 0.5),
        "quick": SizeInfo(_ps_description("quick"), 0.7),
        "full": SizeInfo(_ps_description("full"), 1.2),
    },
    run=run_padding_stride,
)


# ---------------------------------------------------------------------------------------------
# complexity: the notes' sentences about the classic architectures (note 002)

COMPLEXITY_MODELS = {
    "tiny": ("alexnet", "googlenet", "resnet50"),
    "quick": ("alexnet", "vgg16", "googlenet", "resnet50", "resnet101", "resnet152"),
}
COMPLEXITY_MODELS["full"] = COMPLEXITY_MODELS["quick"]  # deterministic: full is quick, nothing to add
NOTES_ALEXNET_INPUT = (3, 227, 227)  # note 002's worked AlexNet example: 227x227, conv1 of 64 11x11 filters


def _analyse(name: str, input_size=None) -> Summary:
    # GoogLeNet's auxiliary classifiers are dropped at inference; the paper's 6.8M excludes them.
    options = {"aux_logits": False} if name == "googlenet" else {}
    return summary(name, input_size, **options)


def _model_row(name: str, result: Summary) -> dict:
    rows = result.rows()
    fc_params = sum(r.params for r in rows if r.type == "Linear")
    conv_macs = sum(r.macs for r in rows if r.type == "Conv2d")
    return {
        "model": name,
        "input": "x".join(map(str, result.input_size)),
        "params": result.total_params,
        "macs": result.macs,
        "flops": 2 * result.macs,
        "activation_memory_bytes": result.activation_memory,
        "weight_memory_bytes": 4 * result.total_params,  # fp32
        "fc_params_share": round(fc_params / result.total_params, 4),
        "conv_macs_share": round(conv_macs / result.macs, 4),
    }


def _row_named(result: Summary, name: str):
    return next(r for r in result.rows() if r.name == name)


def _alexnet_worked_checks() -> list[Check]:
    """Note 002's worked numbers for AlexNet at 227x227, each against cnnlab's summary."""
    result = _analyse("alexnet", NOTES_ALEXNET_INPUT)
    conv1, pool1, fc6 = _row_named(result, "features.0.conv"), _row_named(result, "features.1"), _row_named(result, "head.1")
    checks = [
        Check("AlexNet conv1 'weights = 23,296'", verdict_of(conv1.params == 23_296), f"cnnlab: {_n(conv1.params)}"),
        Check("AlexNet conv1 'flop (multiply + add) = (C_out*H'*W')*(C_in*K*K) = 72,855,552'",
              verdict_of(conv1.macs == 72_855_552),
              f"cnnlab MACs: {_n(conv1.macs)}; the formula counts a multiply-add once (MACs): as FLOPs it is "
              f"{_n(2 * conv1.macs)}, and the bias add is not counted"),
        Check("AlexNet conv1 'memory = 200,704 * 4 / 1024 = 784 B'", verdict_of(conv1.memory == 784),
              f"cnnlab: {_n(conv1.memory)} bytes = {conv1.memory / 1024:g} KB: the number is right, the unit is KB, not B"),
        Check("AlexNet pool1 'flop = 419,904 = 0.4 MFLOP'", verdict_of(pool1.pool_ops == 419_904),
              f"cnnlab pooling ops: {_n(pool1.pool_ops)}"),
        Check("AlexNet fc6 'parameters = C_in*C_out + C_out = 37,725,832'", verdict_of(fc6.params == 37_725_832),
              f"cnnlab: {_n(fc6.params)} (9216*4096 + 4096): the formula is right, the note's number has two digits swapped"),
        Check("AlexNet fc6 'flop = C_in*C_out = 37,748,736'", verdict_of(fc6.macs == 37_748_736),
              f"cnnlab MACs: {_n(fc6.macs)}"),
    ]
    return checks


def _alexnet_layer_inputs() -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    """AlexNet on the meta device and each conv's input shape (C, H, W) at the notes' 227x227."""
    with torch.device("meta"):
        model = create_model("alexnet")
    inputs: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args) -> None:  # None: the input passes on unchanged
            inputs[name] = tuple(args[0].shape[1:])  # (C, H, W), without the batch
        return hook

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, *NOTES_ALEXNET_INPUT, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return model, inputs


def _note004_formula_checks() -> list[Check]:
    """Note 004's counting formulas, applied by hand to every AlexNet layer at 227x227 and compared with
    cnnlab's summary: conv parameters = kernels x kernel size x input channels + biases, pooling 0, FC
    inputs x outputs + biases, and the conv computation C = (W - K + 2P)^2 / S x N x K^2."""
    model, conv_inputs = _alexnet_layer_inputs()
    rows = {r.name: r for r in summary(model, NOTES_ALEXNET_INPUT).rows()}
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    pools = [name for name, m in model.named_modules()
             if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]

    def conv_params(m: nn.Conv2d) -> int:  # N * K*K * C_in + N (a grouped conv sees C_in / groups)
        return m.out_channels * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups) + (
            m.out_channels if m.bias is not None else 0)

    def note_macs(name: str, m: nn.Conv2d) -> float:  # the note's C = (W - K + 2P)^2 / S * N * K^2
        side, k, p, s = conv_inputs[name][1], m.kernel_size[0], m.padding[0], m.stride[0]
        return (side - k + 2 * p) ** 2 / s * m.out_channels * k * k

    def right_macs(name: str, m: nn.Conv2d) -> int:  # ((W - K + 2P) / S + 1)^2 * N * K^2 * C_in
        side, k, p, s = conv_inputs[name][1], m.kernel_size[0], m.padding[0], m.stride[0]
        return ((side - k + 2 * p) // s + 1) ** 2 * m.out_channels * k * k * (m.in_channels // m.groups)

    conv_ok = [conv_params(m) == rows[name].params for name, m in convs]
    fc_ok = [m.in_features * m.out_features + (m.out_features if m.bias is not None else 0) == rows[name].params
             for name, m in linears]
    pool_params = [rows[name].params for name in pools if name in rows]
    note_ok = [note_macs(name, m) == rows[name].macs for name, m in convs]
    right_ok = [right_macs(name, m) == rows[name].macs for name, m in convs]
    first_name, first = convs[0]
    side = conv_inputs[first_name][1]
    k, p, s, n, c_in = first.kernel_size[0], first.padding[0], first.stride[0], first.out_channels, first.in_channels
    return [
        Check("note 004 'conv parameters = kernels x kernel size x input channels + biases'", verdict_of(all(conv_ok)),
              f"{sum(conv_ok)} of {len(convs)} AlexNet conv layers equal cnnlab's count (conv1: {n}*{k}*{k}*{c_in} + {n} "
              f"= {_n(conv_params(first))})"),
        _check_over("note 004 'pooling parameters = 0'", {"AlexNet pooling layer": pool_params},
                    lambda: not any(pool_params),
                    lambda: f"{len(pool_params)} AlexNet pooling layers, {_n(sum(pool_params))} parameters"),
        _check_over("note 004 'FC parameters = inputs x outputs + biases'", {"AlexNet FC layer": fc_ok},
                    lambda: all(fc_ok), lambda: f"{sum(fc_ok)} of {len(linears)} AlexNet FC layers equal cnnlab's count"),
        Check("note 004 'conv computation C = (W - K + 2P)^2 / S x N x K^2'", verdict_of(all(note_ok)),
              f"AlexNet conv1 (W {side}, K {k}, P {p}, S {s}, N {n}, C_in {c_in}): the formula gives "
              f"{_n(note_macs(first_name, first))}, cnnlab {_n(rows[first_name].macs)} MACs; it matches {sum(note_ok)} "
              f"of {len(convs)} conv layers. The output side is (W - K + 2P)/S + 1, squared after the division; the note "
              f"divides the squared span by S once, drops the +1 and leaves out C_in. Corrected, "
              f"((W - K + 2P)/S + 1)^2 x N x K^2 x C_in equals cnnlab's MACs for {sum(right_ok)} of {len(convs)}"),
    ]


# Note 002's dropout-as-ensemble sentence: "一个有 4096 个神经元的 FC 层就有 2^4096 ~ 10^1023 个可能的任务".
NOTES_DROPOUT_UNITS = 4096  # the FC layer's units (AlexNet's and VGG's hidden FC width)
NOTES_DROPOUT_EXPONENT = 1023  # the note's power of ten for the number of masks, 2^4096


def _dropout_masks_check() -> Check:
    """Note 002's count of dropout masks: 2^units written as a power of ten, from the exact integer (Python's
    integers are unbounded), so the exponent is its number of digits minus one, with no float rounding."""
    masks = 2 ** NOTES_DROPOUT_UNITS
    digits = str(masks)
    exponent = len(digits) - 1  # masks = m x 10^exponent with 1 <= m < 10
    mantissa = f"{digits[0]}.{digits[1:3]}"
    noted_power_of_two = NOTES_DROPOUT_EXPONENT / math.log10(2)  # 10^1023 = 2^(1023 / log10 2)
    return Check(
        f"note 002 'a {NOTES_DROPOUT_UNITS}-unit FC layer has 2^{NOTES_DROPOUT_UNITS} ~ 10^{NOTES_DROPOUT_EXPONENT} "
        "dropout masks'",
        verdict_of(exponent == NOTES_DROPOUT_EXPONENT),
        f"2^{NOTES_DROPOUT_UNITS} = {mantissa} x 10^{exponent} ({len(digits):,} digits; {NOTES_DROPOUT_UNITS} x log10 2 "
        f"= {NOTES_DROPOUT_UNITS * math.log10(2):.2f}): the power of ten is {exponent}, not {NOTES_DROPOUT_EXPONENT} "
        f"(10^{NOTES_DROPOUT_EXPONENT} is about 2^{noted_power_of_two:.0f}); the note's point, far more masks than "
        "the ~10^82 atoms of the universe, stands")


def _early_memory_check(label: str, name: str, input_size=None) -> Check:
    """Notes 002 and 000: most of the activation memory is in the early conv layers. Early = every layer up to
    the second max pool (AlexNet conv1-conv2, VGG-16's first two stages)."""
    result = _analyse(name, input_size)
    rows = result.rows()
    second_pool = [i for i, r in enumerate(rows) if r.type == "MaxPool2d"][1]
    early = sum(r.memory for r in rows[:second_pool + 1])
    convs = [r for r in rows[:second_pool + 1] if r.type == "Conv2d"]
    share = early / result.activation_memory
    return Check(f"'{label}: most memory is used in the early conv layers'", verdict_of(share > 0.5),
                 f"{share:.1%} of the activation memory at batch 1 in the layers up to the second max pool "
                 f"({len(convs)} of {sum(r.type == 'Conv2d' for r in rows)} conv layers)")


def _complexity_checks(by_name: dict[str, dict]) -> list[Check]:
    checks: list[Check] = []
    names = list(by_name)
    alex = by_name["alexnet"]
    others = [by_name[n] for n in names if n != "alexnet"]
    lowest = min(by_name.values(), key=lambda r: r["macs"])
    checks.append(Check("'AlexNet: little computation'", verdict_of(lowest["model"] == "alexnet"),
                        f"AlexNet {_m(alex['macs'])} MACs; lowest of the others: "
                        f"{min(others, key=lambda r: r['macs'])['model']} {_m(min(r['macs'] for r in others))}"))
    median = statistics.median(r["params"] for r in by_name.values())
    fewer = [r for r in others if r["params"] < alex["params"]]
    checks.append(Check("'AlexNet: few parameters'", verdict_of(alex["params"] < median),
                        f"AlexNet {_m(alex['params'])} params, median of the {len(names)} models {_m(median)}; "
                        f"fewer than AlexNet: " + (", ".join(f"{r['model']} {_m(r['params'])}" for r in fewer) or "none")))
    checks.append(Check("'AlexNet: almost all parameters are in the fully connected layers'",
                        verdict_of(alex["fc_params_share"] >= 0.9), f"{alex['fc_params_share']:.1%} in Linear layers"))
    checks.append(Check("'AlexNet: most computation happens in the conv layers'",
                        verdict_of(alex["conv_macs_share"] > 0.5), f"{alex['conv_macs_share']:.1%} of MACs in Conv2d layers"))
    checks.append(_early_memory_check("AlexNet", "alexnet", NOTES_ALEXNET_INPUT))
    checks += _alexnet_worked_checks()
    checks += _note004_formula_checks()
    checks.append(_dropout_masks_check())
    if "vgg16" in by_name:
        vgg = by_name["vgg16"]
        checks.append(Check("'VGG-16: most parameters are in the fully connected layers'",
                            verdict_of(vgg["fc_params_share"] > 0.5), f"{vgg['fc_params_share']:.1%} in Linear layers"))
        checks.append(_early_memory_check("VGG-16", "vgg16"))
        top_macs = max(by_name.values(), key=lambda r: r["macs"])
        checks.append(Check("'VGG: the most computation'", verdict_of(top_macs["model"] == "vgg16"),
                            f"VGG-16 {_m(vgg['macs'])} MACs; most of the others: "
                            f"{max((r for r in others if r is not vgg), key=lambda r: r['macs'])['model']} "
                            f"{_m(max(r['macs'] for r in others if r is not vgg))}"))
        most_weights = max(by_name.values(), key=lambda r: r["weight_memory_bytes"])["model"] == "vgg16"
        most_acts = max(by_name.values(), key=lambda r: r["activation_memory_bytes"])
        holds: Optional[bool] = True if most_weights and most_acts["model"] == "vgg16" else (
            False if not most_weights and most_acts["model"] != "vgg16" else None)
        checks.append(Check("'VGG: uses the most memory'", verdict_of(holds),
                            f"weights: VGG-16 {vgg['weight_memory_bytes'] / 2**20:.0f} MB "
                            f"({'the most' if most_weights else 'not the most'}); activations at batch 1: VGG-16 "
                            f"{vgg['activation_memory_bytes'] / 2**20:.0f} MB, the most is {most_acts['model']} "
                            f"{most_acts['activation_memory_bytes'] / 2**20:.0f} MB"))
    if "googlenet" in by_name:
        g = by_name["googlenet"]
        rivals = [r for r in others if r is not g and r["model"] != "alexnet"]
        fewest = min(by_name.values(), key=lambda r: r["params"])["model"] == "googlenet"
        cheaper = all(g["macs"] < r["macs"] for r in rivals)
        checks.append(_check_over("'GoogLeNet: very efficient'", {"model but AlexNet to compare with": rivals},
                                  lambda: fewest and cheaper,
                                  lambda: f"GoogLeNet {_m(g['params'])} params ({'fewest' if fewest else 'not the fewest'}), "
                                          f"{_m(g['macs'])} MACs vs "
                                          + ", ".join(f"{r['model']} {_m(r['macs'])}" for r in rivals)))
    resnets = [n for n in ("resnet50", "resnet101", "resnet152") if n in by_name]
    if len(resnets) == 3:
        macs = [by_name[n]["macs"] for n in resnets]
        checks.append(Check("'ResNet-101 and ResNet-152 are more accurate but need more computation'",
                            verdict_of(macs[0] < macs[1] < macs[2]),
                            " < ".join(f"{n} {_m(v)}" for n, v in zip(resnets, macs)) + " MACs (accuracy not measured here)"))
    if {"googlenet", "vgg16", "resnet50"} <= set(by_name):
        r50 = by_name["resnet50"]["macs"]
        checks.append(Check("'ResNet: moderate efficiency'",
                            verdict_of(by_name["googlenet"]["macs"] < r50 < by_name["vgg16"]["macs"]),
                            f"ResNet-50 {_m(r50)} MACs, between GoogLeNet {_m(by_name['googlenet']['macs'])} "
                            f"and VGG-16 {_m(by_name['vgg16']['macs'])}"))
    return checks


def run_complexity(ctx: RunContext) -> ExperimentResult:
    size, out = ctx.size, ctx.out
    rows = [_model_row(name, _analyse(name)) for name in COMPLEXITY_MODELS[size]]
    by_name = {r["model"]: r for r in rows}
    checks = _complexity_checks(by_name)
    labels = [r["model"] for r in rows]
    plot = bar_plot(
        out / "complexity.png",
        "Notes 002: AlexNet 'few parameters', VGG 'most computation and memory', GoogLeNet 'very efficient'",
        labels,
        {"parameters (M)": {"params": [r["params"] / 1e6 for r in rows]},
         "GMACs (conv + linear)": {"MACs": [r["macs"] / 1e9 for r in rows]},
         "memory at batch 1 (MB, fp32)": {"weights": [r["weight_memory_bytes"] / 2**20 for r in rows],
                                           "activations": [r["activation_memory_bytes"] / 2**20 for r in rows]}},
    )
    return ExperimentResult(rows, checks, [plot])


COMPLEXITY = Experiment(
    name="complexity",
    claim="The notes' architecture comparison: AlexNet has little computation and few parameters, almost all "
          "in its FC layers, most memory in its early conv layers; VGG uses the most memory and computation, most "
          "parameters in FC, most memory in the early conv layers; GoogLeNet is very efficient; ResNet is "
          "moderately efficient, deeper ResNets compute more; the worked AlexNet numbers; note 004's formulas "
          "for parameters and conv computation; and the worked number of dropout masks of a 4096-unit layer.",
    source=("002", "AlexNet：计算量少，参数量也少 / VGG：内存用的最多，计算量最大 / GoogLeNet：非常高效 / "
                   "大多数内存用在前面的卷积层上 / 几乎所有的参数都在全连接层上 / "
                   "一个有 4096 个神经元的 FC 层就有 2^4096 ~ 10^1023 个可能的任务"),
    rule="One check per sentence, each on cnnlab.analysis numbers at each paper's input (meta device, batch 1, "
         "GoogLeNet without auxiliary classifiers). 'little computation' = fewest MACs of the models compared; "
         "'few parameters' = below their median; 'almost all' = at least 90%, 'most' = over 50%; 'most "
         "memory' holds if VGG-16 has the most weight memory and the most activation memory, fails if "
         "neither, is INCONCLUSIVE if only one; 'very efficient' = fewest parameters and fewer MACs than "
         "VGG-16 and every ResNet; 'moderate efficiency' = ResNet-50's MACs between GoogLeNet's and VGG-16's; "
         "'most memory in the early conv layers' = over 50% of the activation memory in the layers up to the "
         "second max pool; a worked number holds if cnnlab's count equals it exactly, and a formula of note 004 "
         "if, applied by hand to every AlexNet layer it covers at 227x227, it equals cnnlab's count for each; "
         "the dropout-mask count holds if 2^4096, computed as an exact integer, has the note's power of ten. "
         "A check needing a model not run at this size is left out.",
    runs="cnnlab summary of alexnet, vgg16, googlenet, resnet50/101/152 (meta device); AlexNet at 227x227 for "
         "the worked numbers; 2^4096 as an exact integer",
    sizes={
        "tiny": SizeInfo("alexnet, googlenet, resnet50", 3.0),
        "quick": SizeInfo("alexnet, vgg16, googlenet, resnet50, resnet101, resnet152", 4.0),
        "full": SizeInfo("same as quick (deterministic)", 4.0),
    },
    run=run_complexity,
    # note 004: the parameter and conv-computation formulas; note 000 says VGG's memory is in its early convs too
    notes=("002", "004", "000"),
)


# ---------------------------------------------------------------------------------------------
# bottleneck: 1x1 reductions in Inception modules and residual blocks (notes 000, 004, 003)

GOOGLENET_SIDES = (28, 14, 7)  # feature-map side of each Inception stage at a 224 input
BOTTLENECK_SETTINGS = {  # size -> (Inception modules, side of the residual blocks)
    "tiny": (("inception3a",), 14),
    "quick": (None, 56),  # None: all nine modules of GoogLeNet's Table 1
    "full": (None, 56),
}
RESIDUAL_CHS = 256  # He et al. 2016 Fig. 5: a 256-d bottleneck block (planes 64) vs two 3x3 convs at 256
PAPER_5X5_KERNEL = 5  # the paper's "5x5" branch (cnnlab's googlenet defaults to torchvision's 3x3)


def _inception_modules(names: Optional[tuple[str, ...]]) -> list[tuple[str, int, InceptionWidths, int]]:
    """(name, C_in, widths, side) for GoogLeNet's Inception modules, from the model's own table."""
    from cnnlab.models.googlenet import GOOGLENET_STAGES, STEM_CONV3_CHS

    modules, chs = [], STEM_CONV3_CHS
    for stage, side in zip(GOOGLENET_STAGES, GOOGLENET_SIDES):
        for name, *row in stage:
            widths = InceptionWidths(*row)
            if names is None or name in names:
                modules.append((name, chs, widths, side))
            chs = widths.out_chs
    return modules


def _block_row(comparison: str, name: str, variant: str, block: nn.Module, in_chs: int, side: int) -> dict:
    result = summary(block, (in_chs, side, side))
    return {
        "comparison": comparison,
        "module": name,
        "variant": variant,
        "in_chs": in_chs,
        "out_chs": result.root.output_shape[0],  # the whole block's output (B, C_out, H, W)
        "side": side,
        "params": result.total_params,
        "macs": result.macs,
    }


def _fewer_check(what: str, pairs: list[tuple[dict, dict]], key: str) -> Check:
    """HOLDS if the first of every pair has fewer ``key`` than the second; INCONCLUSIVE without a pair."""
    ratios = [a[key] / b[key] for a, b in pairs]
    return _check_over(f"{what}: fewer {key}", {"module to compare": pairs}, lambda: all(r < 1 for r in ratios),
                       lambda: f"ratio {min(ratios):.2f} to {max(ratios):.2f} over {counted(len(pairs), 'module')}"
                               f" ({_n(pairs[0][0][key])} vs {_n(pairs[0][1][key])} for {pairs[0][0]['module']})")


def run_bottleneck(ctx: RunContext) -> ExperimentResult:
    from cnnlab.models.googlenet import GoogLeNet, googlenet_layers

    size, out = ctx.size, ctx.out
    names, res_side = BOTTLENECK_SETTINGS[size]
    rows: list[dict] = []
    naive_pairs, single3, single5 = [], [], []
    # Every module is counted as GoogLeNet has it: the Inception modules are the model's own (with the
    # paper's 5x5), and the naive module and the single convs are built from its layers, a bias-free conv
    # followed by its norm and activation, so each side of a comparison counts the same kind of layer.
    norm_layer, act_layer = googlenet_layers()

    def single_conv(in_chs: int, out_chs: int, kernel: int) -> nn.Module:
        return ConvNormAct(in_chs, out_chs, kernel, norm_layer=norm_layer, act_layer=act_layer)

    with torch.device("meta"):
        paper = GoogLeNet(aux_logits=False, inception_5x5_kernel=PAPER_5X5_KERNEL)
        for name, in_chs, widths, side in _inception_modules(names):
            reduced = _block_row("inception", name, "1x1 reductions", paper.features.get_submodule(name), in_chs, side)
            naive = _block_row("inception", name, "naive", InceptionBlock(
                in_chs, widths, norm_layer, act_layer, kernel_5x5=PAPER_5X5_KERNEL, naive=True), in_chs, side)
            out_chs = widths.out_chs
            conv3 = _block_row("inception", name, "single 3x3 conv", single_conv(in_chs, out_chs, 3), in_chs, side)
            conv5 = _block_row("inception", name, "single 5x5 conv", single_conv(in_chs, out_chs, 5), in_chs, side)
            rows += [naive, reduced, conv3, conv5]
            naive_pairs.append((reduced, naive))
            single3.append((reduced, conv3))
            single5.append((reduced, conv5))
        basic = _block_row("residual", f"{RESIDUAL_CHS}-d block", "basic: two 3x3",
                           BasicBlock(RESIDUAL_CHS, RESIDUAL_CHS), RESIDUAL_CHS, res_side)
        bottleneck = _block_row("residual", f"{RESIDUAL_CHS}-d block", "bottleneck: 1x1-3x3-1x1",
                                Bottleneck(RESIDUAL_CHS, RESIDUAL_CHS // Bottleneck.expansion), RESIDUAL_CHS, res_side)
    rows += [basic, bottleneck]
    checks = [
        _fewer_check("Inception with 1x1 reductions vs naive", naive_pairs, "params"),
        _fewer_check("Inception with 1x1 reductions vs naive", naive_pairs, "macs"),
        _fewer_check(f"bottleneck vs basic residual block at {RESIDUAL_CHS} channels", [(bottleneck, basic)], "params"),
        _fewer_check(f"bottleneck vs basic residual block at {RESIDUAL_CHS} channels", [(bottleneck, basic)], "macs"),
        _fewer_check("Inception block vs a single 3x3 conv (same C_in, C_out)", single3, "params"),
        _fewer_check("Inception block vs a single 3x3 conv (same C_in, C_out)", single3, "macs"),
        _fewer_check("Inception block vs a single 5x5 conv (same C_in, C_out)", single5, "params"),
        _fewer_check("Inception block vs a single 5x5 conv (same C_in, C_out)", single5, "macs"),
    ]
    inception_rows = [r for r in rows if r["comparison"] == "inception"]
    modules = list(dict.fromkeys(r["module"] for r in inception_rows))
    variants = list(dict.fromkeys(r["variant"] for r in inception_rows))

    def series(key: str) -> dict[str, list[float]]:
        return {v: [next(r[key] for r in inception_rows if r["module"] == m and r["variant"] == v) / 1e6
                    for m in modules] for v in variants}

    plots = [
        bar_plot(out / "inception.png", "1x1 reductions make an Inception module cheaper than the naive one",
                 modules, {"parameters (M)": series("params"), "MMACs": series("macs")}),
        bar_plot(out / "residual.png",
                 f"The bottleneck block costs less than two 3x3 convs at {RESIDUAL_CHS} channels ({res_side}x{res_side})",
                 [basic["variant"], bottleneck["variant"]],
                 {"parameters (M)": {"params": [basic["params"] / 1e6, bottleneck["params"] / 1e6]},
                  "MMACs": {"MACs": [basic["macs"] / 1e6, bottleneck["macs"] / 1e6]}}),
    ]
    return ExperimentResult(rows, checks, plots)


BOTTLENECK = Experiment(
    name="bottleneck",
    claim="1x1 'bottleneck' convs project the feature map to fewer channels and greatly reduce computation: "
          "in GoogLeNet's Inception module and in ResNet's bottleneck block; an Inception block has fewer "
          "parameters and less computation than a single 3x3 or 5x5 conv layer.",
    source=("000", "bottleneck能将feature map投影到一个相同大小但是更浅的feature map中,在这里使得计算量大量减少 "
                   "(004: 其实就是减少了计算量; 003: 和单 3x3 或 5x5 卷积层比,Inception 块有更少的参数个数和计算复杂度)"),
    rule="Each check HOLDS if the cheaper design has strictly fewer parameters (or MACs) than the other in "
         "every module compared: Inception with 1x1 reductions vs the naive module (same C_in, Table 1 widths, "
         "real 5x5 kernels); the 256-d bottleneck block vs a basic block of two 3x3 convs at 256 channels; the "
         "Inception module vs a single 3x3 / 5x5 conv with the same C_in and C_out; every conv counted as "
         "GoogLeNet's (bias-free, with BatchNorm).",
    runs="GoogLeNet's Inception modules, the naive module and single convs built from its layers, BasicBlock and "
         "Bottleneck, analysed on the meta device",
    sizes={
        "tiny": SizeInfo("inception3a at 28x28; residual blocks at 14x14", 1.0),
        "quick": SizeInfo("all nine Inception modules of GoogLeNet; residual blocks at 56x56", 2.0),
        "full": SizeInfo("same as quick (deterministic)", 2.0),
    },
    run=run_bottleneck,
    notes=("000", "004", "003"),
)
EXPERIMENTS = [PADDING_STRIDE, RECEPTIVE_FIELD, COMPLEXITY, BOTTLENECK]
