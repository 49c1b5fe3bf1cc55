"""Two deterministic experiments on weight initialisation: init, residual-init.

``init`` runs the notes' demonstration (note 002): ``dims = [4096] * 7`` (six 4096x4096 layers, no
biases) on ``x = np.random.randn(16, 4096)``, built as cnnlab's registered ``mlp`` (depth 6, width
4096, one input channel of 64x64 = 4096 values, biases set to 0) with ``model.init`` drawing the
weights. cnnlab's ``lecun`` is the notes' "Xavier" (``randn / sqrt(Din)``; for these square layers
Glorot's ``xavier`` gives the same std), ``kaiming_in`` the notes' Kaiming/MSRA
(``randn * sqrt(2 / Din)``) and ``normal:STD`` the notes' ``STD * randn``. Forward only, no grad.

``residual-init`` measures the variance of every residual block's output at initialisation, on one
random batch in training mode (batch statistics, as at the first training step), for CIFAR-style
56-layer nets with and without zero-initialised residual branches (``zero_init_residual``), with BN
and with no norm, and the plain 56-layer net (no shortcuts) beside them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from cnnlab.experiments.base import (
    Check,
    Experiment,
    ExperimentResult,
    RunContext,
    SizeInfo,
    verdict_of,
)
from cnnlab.experiments.training import line_plot
from cnnlab.io import save_png
from cnnlab.threads import tick

# ---------------------------------------------------------------------------------------------
# init: the notes' six-layer MLP (note 002)

NOTES_WIDTH = 4096  # dims = [4096] * 7
NOTES_DEPTH = 6  # seven dims: six weight matrices
NOTES_BATCH = 16  # x = np.random.randn(16, dims[0])
INIT_WIDTH = {"tiny": 256, "quick": NOTES_WIDTH, "full": NOTES_WIDTH}  # a square: the mlp reads a 1 x s x s image
INIT_SEED = 0  # torch seed of the input; net k draws its weights after torch.manual_seed(INIT_SEED + 1 + k)
ACTS = ("tanh", "relu")
# (label, cnnlab model.init scheme, the notes' fixed std or None for a fan-based scheme)
SCHEMES = (
    ("N(0, 0.01)", "normal", 0.01),  # W = 0.01 * np.random.randn(Din, Dout)
    ("N(0, 0.05)", "normal", 0.05),  # W = 0.05 * np.random.randn(Din, Dout)
    ("Xavier", "lecun", None),  # the notes' "Xavier": randn / sqrt(Din)
    ("Kaiming", "kaiming_in", None),  # randn * sqrt(2 / Din)
)
BAND = 4.0  # "stays scaled": every layer's std within [1/4, 4] x the first layer's
SATURATED_GRAD = 0.5  # tanh "saturated": mean local gradient 1 - a^2 below this at every layer
NEAR_ONE = 0.9  # |a| > 0.9: a tanh unit whose local gradient is below 0.19 (counted in the table)
HE_TOLERANCE = 0.10  # ReLU nets: per-layer rms factor within 10% of sqrt(Din * sigma^2 / 2)
HIST_BINS = 40


def notes_std(std: float, width: int) -> float:
    """The notes' fixed std at another width: Din * sigma^2 (the per-layer gain) kept as at 4096."""
    return std * math.sqrt(NOTES_WIDTH / width)


def weight_std(scheme: str, fixed: Optional[float], width: int) -> float:
    """The std every weight is drawn with (the formulas of cnnlab.layers.init for a square layer)."""
    from cnnlab.layers.init import RELU_GAIN, scheme_std

    if fixed is not None:
        return notes_std(fixed, width)
    # kaiming_in's gain is sqrt(2) for ReLU and for activations outside the ReLU family alike
    # (cnnlab.layers.init.kaiming_gain): the notes' randn * sqrt(2 / Din).
    gain = RELU_GAIN if scheme == "kaiming_in" else 1.0
    return scheme_std(scheme, width, width, gain)


def init_spec(scheme: str, fixed: Optional[float], width: int) -> str:
    """The model.init value that draws the scheme at ``width``."""
    return f"normal:{notes_std(fixed, width):.6g}" if fixed is not None else scheme


def notes_input(width: int, batch: int = NOTES_BATCH) -> torch.Tensor:
    """x = randn(batch, width) as a (batch, 1, s, s) image, s*s = width: the mlp flattens it back."""
    side = math.isqrt(width)
    if side * side != width:
        raise ValueError(f"the width {width} must be a square (the mlp reads a 1 x s x s image)")
    generator = torch.Generator().manual_seed(INIT_SEED)
    return torch.randn(batch, 1, side, side, generator=generator)


def mlp_activations(act: str, spec: str, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """The six hidden layers' activations (B, width) of the notes' net, built as cnnlab's mlp."""
    from cnnlab.models import create_model

    width = x.shape[-1] * x.shape[-2]
    torch.manual_seed(seed)
    model = create_model("mlp", num_classes=10, in_chans=1, input_size=x.shape[-1], depth=NOTES_DEPTH,
                         width=width, act=act, init=spec, bias_init=0.0)  # bias 0: the notes' x.dot(W)
    model.eval()
    outputs = []
    tick()  # torch's threads: as many as the cores other processes leave free (cnnlab.threads)
    with torch.no_grad():
        h = model.features.stem(x)  # (B, 1, s, s) -> (B, width): the resampling is the identity at s x s
        for index in range(1, NOTES_DEPTH + 1):
            h = getattr(model.features, f"layer{index}")(h)  # linear -> act, (B, width)
            outputs.append(h.clone())
    return outputs


def layer_row(act: str, label: str, spec: str, sigma: float, layer: int, a: torch.Tensor) -> dict:
    a = a.double()
    row = {
        "act": act,
        "scheme": label,
        "model_init": spec,
        "weight_std": sigma,
        "layer": layer,
        "mean": float(a.mean()),
        "std": float(a.std(correction=0)),
        "rms": float(a.pow(2).mean().sqrt()),
    }
    if act == "tanh":
        row["near_one_share"] = float((a.abs() > NEAR_ONE).double().mean())  # |a| > 0.9
        row["local_grad"] = float((1 - a * a).mean())  # tanh'(z) = 1 - tanh(z)^2
    else:
        row["zero_share"] = float((a == 0).double().mean())
        row["local_grad"] = float((a > 0).double().mean())  # relu'(z): 1 where the unit is on
    return row


def _ratios(rows: Sequence[dict]) -> list[float]:
    return [r["std"] / rows[0]["std"] for r in rows]


def _stds(rows: Sequence[dict]) -> str:
    return ", ".join(f"{r['std']:.3g}" for r in rows)


def collapse_check(claim: str, rows: Sequence[dict]) -> Check:
    falling = all(b["std"] < a["std"] for a, b in zip(rows, rows[1:]))
    last = _ratios(rows)[-1]
    return Check(claim, verdict_of(falling and last < 1 / BAND),
                 f"std per layer {_stds(rows)}: last/first {last:.3g} (collapse: below {1 / BAND:g}, "
                 f"falling at every layer: {'yes' if falling else 'no'})")


def growth_check(claim: str, rows: Sequence[dict]) -> Check:
    rising = all(b["std"] > a["std"] for a, b in zip(rows, rows[1:]))
    last = _ratios(rows)[-1]
    return Check(claim, verdict_of(rising and last > BAND),
                 f"std per layer {_stds(rows)}: last/first {last:.3g} (grows: above {BAND:g}, "
                 f"rising at every layer: {'yes' if rising else 'no'})")


def scaled_check(claim: str, rows: Sequence[dict], tanh: bool = False) -> Check:
    ratios = _ratios(rows)
    inside = all(1 / BAND <= r <= BAND for r in ratios)
    text = f"std per layer {_stds(rows)}: layer/first {min(ratios):.3g} to {max(ratios):.3g} (band [1/{BAND:g}, {BAND:g}])"
    if tanh:
        lowest = min(r["local_grad"] for r in rows)
        inside = inside and lowest >= SATURATED_GRAD
        text += f"; lowest mean local gradient 1-a^2 {lowest:.3f} (not saturated: at least {SATURATED_GRAD:g})"
    return Check(claim, verdict_of(inside), text)


def saturated_check(claim: str, rows: Sequence[dict]) -> Check:
    highest = max(r["local_grad"] for r in rows)
    return Check(claim, verdict_of(highest < SATURATED_GRAD),
                 f"mean local gradient 1-a^2 per layer {', '.join(format(r['local_grad'], '.3f') for r in rows)} "
                 f"(saturated: below {SATURATED_GRAD:g} at every layer); share with |a| > {NEAR_ONE:g}: "
                 f"{', '.join(format(r['near_one_share'], '.0%') for r in rows)}")


def he_factor(rows: Sequence[dict], input_rms: float) -> float:
    """The per-layer factor of the root mean square: (rms(layer L) / rms(x))^(1/L)."""
    return (rows[-1]["rms"] / input_rms) ** (1 / len(rows))


def he_check(nets: dict[str, Sequence[dict]], input_rms: float, width: int) -> Check:
    """He et al. 2015: through a ReLU layer E[a^2] is multiplied by Din * sigma^2 / 2."""
    parts, holds = [], True
    for label, rows in nets.items():
        measured = he_factor(rows, input_rms)
        expected = math.sqrt(width * rows[0]["weight_std"] ** 2 / 2)
        holds = holds and abs(measured / expected - 1) <= HE_TOLERANCE
        parts.append(f"{label} {measured:.3f} vs {expected:.3f}")
    return Check("ReLU: the rms changes by sqrt(Din * sigma^2 / 2) per layer (He et al. 2015)", verdict_of(holds),
                 "; ".join(parts) + f" (within {HE_TOLERANCE:.0%})")


def histogram_plot(path: Path, title: str, act: str, nets: dict[str, list[torch.Tensor]],
                   rows: dict[str, list[dict]]) -> Path:
    """The notes' figure: one row per scheme, one column per layer, a histogram of the activations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(nets)
    fig, axes = plt.subplots(len(labels), NOTES_DEPTH, figsize=(2.3 * NOTES_DEPTH, 1.9 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        for j, (a, row) in enumerate(zip(nets[label], rows[label])):
            ax = axes[i][j]
            values = a.flatten().double().numpy()
            span = (-1.0, 1.0) if act == "tanh" else (0.0, max(float(values.max()), 1e-12))
            counts, edges = np.histogram(values, bins=HIST_BINS, range=span)
            ax.stairs(counts, edges, fill=True, color="tab:blue")  # one artist, not a bar per bin
            ax.set_title(f"layer {j + 1}: mean {row['mean']:.2g}\nstd {row['std']:.2g}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.locator_params(axis="x", nbins=3)
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{act}\n{label}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.04, top=1 - 0.75 / fig.get_figheight(), hspace=0.75,
                        wspace=0.12)
    return save_png(fig, path, "the histogram plot")


def run_init(ctx: RunContext) -> ExperimentResult:
    width = INIT_WIDTH[ctx.size]
    x = notes_input(width)
    input_rms = float(x.double().pow(2).mean().sqrt())
    rows: list[dict] = []
    by_net: dict[tuple[str, str], list[dict]] = {}
    activations: dict[tuple[str, str], list[torch.Tensor]] = {}
    index = 0
    for act in ACTS:
        for label, scheme, fixed in SCHEMES:
            index += 1
            spec = init_spec(scheme, fixed, width)
            sigma = weight_std(scheme, fixed, width)
            outputs = mlp_activations(act, spec, x, seed=INIT_SEED + index)
            net_rows = [layer_row(act, label, spec, sigma, layer, a) for layer, a in enumerate(outputs, start=1)]
            rows += net_rows
            by_net[act, label] = net_rows
            activations[act, label] = outputs
    checks = [
        collapse_check("tanh, N(0, 0.01): activations collapse toward zero", by_net["tanh", "N(0, 0.01)"]),
        saturated_check("tanh, N(0, 0.05): activations saturate at +-1, local gradients vanish",
                        by_net["tanh", "N(0, 0.05)"]),
        scaled_check("tanh, Xavier: activations stay scaled at every layer", by_net["tanh", "Xavier"], tanh=True),
        collapse_check("ReLU, N(0, 0.01) (the notes' code): activations tend to zero", by_net["relu", "N(0, 0.01)"]),
        growth_check("ReLU, N(0, 0.05) (the notes' code): activations grow quickly", by_net["relu", "N(0, 0.05)"]),
        collapse_check("ReLU, Xavier: activations collapse toward zero", by_net["relu", "Xavier"]),
        scaled_check("ReLU, Kaiming: activations stay scaled at every layer", by_net["relu", "Kaiming"]),
        he_check({label: by_net["relu", label] for label, _, _ in SCHEMES}, input_rms, width),
    ]
    shown = f"{NOTES_DEPTH} layers of {width}" + ("" if width == NOTES_WIDTH else
                                                  f", fixed stds x {math.sqrt(NOTES_WIDTH / width):g} to keep Din*sigma^2")
    plots = [
        histogram_plot(ctx.out / f"init_histograms_{act}.png",
                       f"{act}: N(0, 0.01) collapses, N(0, 0.05) "
                       f"{'saturates' if act == 'tanh' else 'grows'}, Xavier "
                       f"{'stays scaled' if act == 'tanh' else 'shrinks'}, Kaiming "
                       f"{'(not claimed)' if act == 'tanh' else 'stays scaled'} ({shown})",
                       act, {label: activations[act, label] for label, _, _ in SCHEMES},
                       {label: by_net[act, label] for label, _, _ in SCHEMES})
        for act in ACTS
    ]
    layers = list(range(1, NOTES_DEPTH + 1))
    panels, log_panels = {}, []
    for act in ACTS:
        for key in ("mean", "std"):
            panel = f"{act}: {key} per layer"
            panels[panel] = {label: (layers, [r[key] for r in by_net[act, label]]) for label, _, _ in SCHEMES}
            if key == "std" or act == "relu":  # a ReLU's mean is positive: a log axis shows its collapse too
                log_panels.append(panel)
    plots.append(line_plot(
        ctx.out / "init_mean_std.png",
        f"Mean and std per layer: Xavier keeps tanh scaled, Kaiming keeps ReLU scaled (width {width})",
        panels, x_label="layer", log_y=log_panels))
    return ExperimentResult(rows, checks, plots)


INIT = Experiment(
    name="init",
    claim="In the notes' six-layer, 4096-wide net, weights too small (0.01 * randn) make the activations tend to "
          "zero in deeper layers; too large (0.05 * randn) make them grow quickly (ReLU, the notes' code) or "
          "saturate at +-1 (tanh, the lecture's slides); 'Xavier' (randn / sqrt(Din)) keeps tanh activations "
          "scaled but shrinks ReLU's; Kaiming (randn * sqrt(2 / Din)) keeps ReLU activations well scaled in every "
          "layer.",
    source=("002", "如果值设的太小…所有的激活值趋近于 0 / 如果值设的太大，激活值会迅速增加 / Kaiming / MSRA 初始化"
                   "…激活值在每一层都得到很好的缩放"),
    rule="Activations after each of the six layers on x = randn(16, Din), no biases; r_l = std(layer l) / "
         "std(layer 1). 'Collapses toward zero': the std falls at every layer and r_6 < 1/4. 'Grows': the std "
         "rises at every layer and r_6 > 4. 'Stays scaled': every r_l lies in [1/4, 4] (for tanh also not "
         "saturated). 'Saturated' (tanh): the mean local gradient mean(1 - a^2) is below 0.5 at every layer. "
         "Checks: tanh N(0, 0.01) collapses; tanh N(0, 0.05) is saturated; tanh Xavier stays scaled; ReLU "
         "N(0, 0.01) collapses and ReLU N(0, 0.05) grows (the notes' code); ReLU Xavier collapses; ReLU Kaiming "
         "stays scaled; and for every ReLU net the per-layer factor of the root mean square, "
         "(rms(layer 6) / rms(x))^(1/6), is within 10% of He et al.'s sqrt(Din * sigma^2 / 2). Each check HOLDS "
         "or DOES NOT HOLD (deterministic: fixed seeds). tanh with Kaiming is shown, not checked (no claim). At "
         "a width other than 4096 the fixed stds are scaled by sqrt(4096 / width), keeping Din * sigma^2.",
    runs="cnnlab's mlp (depth 6, width 4096 = a 1x64x64 input, biases 0) with model.init normal:0.01, "
         "normal:0.05, lecun (the notes' Xavier) and kaiming_in, tanh and ReLU, forward only on one "
         "randn(16, 4096) batch; per-layer histograms, mean and std",
    sizes={
        "tiny": SizeInfo("width 256 (input 1x16x16), batch 16, fixed stds scaled x4 (0.04, 0.2)", 5.0),
        "quick": SizeInfo("the notes' net: width 4096, batch 16, six layers, 8 nets (about 1.2 GB of memory)", 25.0),
        "full": SizeInfo("same as quick (deterministic)", 25.0),
    },
    run=run_init,
    notes=("002", "000"),  # note 000: with ReLU, Kaiming keeps every layer's mean and std about the same
)


# ---------------------------------------------------------------------------------------------
# residual-init: the variance through residual blocks at initialisation (note 002)

RESIDUAL_SETTINGS = {  # size -> (batch, input side)
    "tiny": (8, 16),
    "quick": (32, 32),
    "full": (128, 32),
}
RESIDUAL_SEED = 0
KEPT_BAND = 1.5  # "kept": per-block variance factor (geometric mean) within [1/1.5, 1.5]
GROWS_FAST = 1.5  # no norm: the variance roughly doubles, a geometric-mean factor of at least 1.5
# (net name, what it is, whether the zero-init variant exists: a plain block has no branch to zero)
RESIDUAL_NETS = (
    ("resnet56", "post-activation ResNet-56 (cnnlab's resnet56: out = relu(bn2(conv2(...)) + x))", True),
    ("preact_resnet56", "pre-activation ResNet-56 (cnnlab's preact_resnet56: out = x + conv2(relu(bn2(conv1("
                        "relu(bn1(x))))))", True),
    ("plain56", "plain-56 (cnnlab's plain56: the same convs, no shortcuts)", False),
)
NORMS = ("bn", "none")


def residual_net(name: str, norm: str, zero_init: bool) -> nn.Module:
    """One of RESIDUAL_NETS with cnnlab's default (He) initialisation, optionally zero-init residual."""
    from cnnlab.models import create_model

    return create_model(name, num_classes=10, norm=norm, zero_init_residual=zero_init)


def block_records(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Per residual block, in order: its input, branch output F(x) and output (forward hooks), train mode."""
    from cnnlab.layers.residual import _ResidualBlock

    blocks = [m for m in model.modules() if isinstance(m, _ResidualBlock)]
    records: list[dict] = [{} for _ in blocks]
    handles = []
    for record, block in zip(records, blocks):
        def on_block(module, args, output, record=record):
            record["input"], record["output"] = args[0], output

        def on_branch(module, args, output, record=record):
            record["branch"] = output  # the branch's last layer: F(x) before the addition

        handles.append(block.register_forward_hook(on_block))
        handles.append(block.conv2.register_forward_hook(on_branch))
        record["identity"] = block.residual and block.shortcut is None  # a shortcut that passes x unchanged
        record["residual"] = block.residual
    model.train()  # batch statistics, as at the first training step
    tick()  # torch's threads: as many as the cores other processes leave free (cnnlab.threads)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _var(t: torch.Tensor) -> float:
    """The variance of every number of a (B, C, H, W) tensor (population: divided by the count)."""
    return float(t.double().var(correction=0))


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def measure_residual(name: str, norm: str, zero_init: bool, x: torch.Tensor) -> list[dict]:
    torch.manual_seed(RESIDUAL_SEED)
    model = residual_net(name, norm, zero_init)
    rows = []
    for index, record in enumerate(block_records(model, x), start=1):
        var_in, var_out, var_branch = _var(record["input"]), _var(record["output"]), _var(record["branch"])
        same_shape = record["input"].shape == record["output"].shape
        rows.append({
            "net": name,
            "norm": norm,
            "zero_init": zero_init,
            "block": index,
            "shape": "x".join(map(str, record["output"].shape[1:])),
            "identity_shortcut": record["identity"],
            "var_in": var_in,
            "var_branch": var_branch,  # Var(F(x)), before the addition
            "var_out": var_out,
            "out_over_in": var_out / var_in if same_shape else None,  # blocks that change the shape: not compared
            "branch_over_in": var_branch / var_in if same_shape else None,
            "out_equals_in": bool(same_shape and torch.equal(record["input"], record["output"])),
        })
    return rows


def _variant(zero_init: bool, norm: str) -> str:
    return f"{'BN' if norm == 'bn' else 'no norm'}{' + zero-init' if zero_init else ''}"


def _compared(rows: Sequence[dict]) -> list[dict]:
    """The blocks whose shortcut is the identity (or, in a plain net, whose shape is kept)."""
    return [r for r in rows if r["out_over_in"] is not None]


def identity_check(net: str, rows: Sequence[dict]) -> Check:
    compared = [r for r in rows if r["identity_shortcut"]]
    exact = [r for r in compared if r["out_equals_in"]]
    return Check(f"{net}, {_variant(True, rows[0]['norm'])}: every block is the identity at init",
                 verdict_of(bool(compared) and len(exact) == len(compared)),
                 f"output == input bit for bit at {len(exact)} of {len(compared)} identity-shortcut blocks "
                 f"(variance ratio {min(r['out_over_in'] for r in compared):.6g} to "
                 f"{max(r['out_over_in'] for r in compared):.6g}); the {len(rows) - len(compared)} "
                 "downsampling blocks subsample and zero-pad, so they are not compared")


def _factors(rows: Sequence[dict], key: str = "out_over_in") -> tuple[float, float, float]:
    values = [r[key] for r in _compared(rows)]
    return geometric_mean(values), min(values), max(values)


def grows_fast_check(net: str, rows: Sequence[dict]) -> Check:
    mean, low, high = _factors(rows)
    return Check(f"{net}, no norm: the variance grows in every block (Var(F(x) + x) > Var(x))",
                 verdict_of(low > 1 and mean >= GROWS_FAST),
                 f"Var(out)/Var(in) per block {low:.3g} to {high:.3g}, geometric mean {mean:.3g} (needed: every "
                 f"block above 1 and the mean at least {GROWS_FAST:g}); variance {rows[0]['var_in']:.3g} into the "
                 f"first block, {rows[-1]['var_out']:.3g} out of the last")


def grows_slowly_check(net: str, rows: Sequence[dict], fast: Sequence[dict]) -> Check:
    mean, low, high = _factors(rows)
    fast_mean = _factors(fast)[0]
    return Check(f"{net}, BN (train mode): the variance grows, but slowly",
                 verdict_of(1 < mean < GROWS_FAST),
                 f"Var(out)/Var(in) per block {low:.3g} to {high:.3g}, geometric mean {mean:.3g} (needed: between "
                 f"1 and {GROWS_FAST:g}; no norm: {fast_mean:.3g}); variance {rows[0]['var_in']:.3g} into the first "
                 f"block, {rows[-1]['var_out']:.3g} out of the last")


def kept_check(claim: str, rows: Sequence[dict], key: str, what: str) -> Check:
    mean, low, high = _factors(rows, key)
    compared = _compared(rows)
    return Check(claim, verdict_of(1 / KEPT_BAND <= mean <= KEPT_BAND),
                 f"{what} per block {low:.3g} to {high:.3g}, geometric mean {mean:.3g} "
                 f"(kept: within [1/{KEPT_BAND:g}, {KEPT_BAND:g}]); compounded over the {len(compared)} blocks "
                 f"compared: x{mean ** len(compared):.3g}")


def run_residual_init(ctx: RunContext) -> ExperimentResult:
    batch, side = RESIDUAL_SETTINGS[ctx.size]
    generator = torch.Generator().manual_seed(RESIDUAL_SEED)
    x = torch.randn(batch, 3, side, side, generator=generator)  # (B, 3, H, W), N(0, 1)
    rows: list[dict] = []
    runs: dict[tuple[str, str, bool], list[dict]] = {}
    for name, _, has_zero in RESIDUAL_NETS:
        for zero_init in ((False, True) if has_zero else (False,)):
            for norm in NORMS:
                runs[name, norm, zero_init] = measure_residual(name, norm, zero_init, x)
                rows += runs[name, norm, zero_init]
    checks = [identity_check(name, runs[name, norm, True])
              for name, _, has_zero in RESIDUAL_NETS if has_zero for norm in NORMS]
    checks.append(kept_check("preact_resnet56, no norm, MSRA: the branch keeps the variance, Var(F(x)) = Var(x)",
                             runs["preact_resnet56", "none", False], "branch_over_in", "Var(F(x))/Var(x)"))
    for name in ("resnet56", "preact_resnet56"):
        checks.append(grows_fast_check(name, runs[name, "none", False]))
    for name in ("resnet56", "preact_resnet56"):
        checks.append(grows_slowly_check(name, runs[name, "bn", False], runs[name, "none", False]))
    checks.append(kept_check("plain56, no norm, MSRA: without the residual sum the variance is kept",
                             runs["plain56", "none", False], "out_over_in", "Var(out)/Var(in)"))
    panels = {}
    for name, _, has_zero in RESIDUAL_NETS:
        series = {}
        for zero_init in ((False, True) if has_zero else (False,)):
            for norm in NORMS:
                net_rows = runs[name, norm, zero_init]
                series[_variant(zero_init, norm)] = ([r["block"] for r in net_rows], [r["var_out"] for r in net_rows])
        panels[name] = series
    plot = line_plot(ctx.out / "residual_variance.png",
                     f"Residual blocks at init: the variance doubles per block without norm, grows slowly with BN, "
                     f"is unchanged with zero-init (batch {batch}, {side}x{side}, train mode)",
                     panels, x_label="residual block", y_labels={name: "variance of the block output"
                                                                 for name, _, _ in RESIDUAL_NETS},
                     log_y=[name for name, _, _ in RESIDUAL_NETS])
    return ExperimentResult(rows, checks, [plot])


RESIDUAL_INIT = Experiment(
    name="residual-init",
    claim="In a residual block with MSRA initialisation Var(F(x)) = Var(x), but then Var(F(x) + x) > Var(x): the "
          "variance grows in every block. The fix: MSRA for the first conv, zero for the second (the branch's "
          "last layer), so that Var(F(x) + x) = Var(x).",
    source=("002", "在残差块中，如果用 MSRA 初始化，那么 Var(F(x)) = Var(x)，但随后 Var(F(x) + x) > Var(x)，"
                   "方差会在每个块中增长。解决方案是仅对第一个卷积层用 MSRA 初始化，第二个卷积层使用零初始化"),
    rule="Variance = the variance of every number of a block's output on one N(0, 1) batch, train mode (batch "
         "statistics), cnnlab's default He init; blocks that downsample (subsample + zero channels) are not "
         "compared. Zero-init (BN: last BN scale 0; no norm: last conv 0) HOLDS if every identity-shortcut block's "
         "output equals its input bit for bit. 'Var(F(x)) = Var(x)' (pre-activation, no norm, where the notes' "
         "argument applies) HOLDS if the geometric mean of Var(F(x))/Var(x) is within [1/1.5, 1.5]. 'Grows in "
         "every block' (no norm, post- and pre-activation) HOLDS if Var(out)/Var(in) > 1 at every block and its "
         "geometric mean is at least 1.5 (the notes' argument gives 2). 'Grows slowly with BN' HOLDS if that "
         "geometric mean lies between 1 and 1.5. The plain net without norm (no residual sum) HOLDS 'kept' if "
         "the geometric mean of Var(out)/Var(in) is within [1/1.5, 1.5]. Each check HOLDS or DOES NOT HOLD "
         "(deterministic: fixed seeds).",
    runs="resnet56 (post-activation), preact_resnet56 (pre-activation) and plain56, each with BN and with no norm "
         "(model.norm=none), the residual ones also with zero_init_residual; per-block variance by forward hooks",
    sizes={
        "tiny": SizeInfo("batch 8 at 16x16, 10 nets", 5.0),
        "quick": SizeInfo("batch 32 at 32x32 (CIFAR size), 10 nets", 5.0),
        "full": SizeInfo("batch 128 at 32x32, 10 nets", 10.0),
    },
    run=run_residual_init,
)

EXPERIMENTS = [INIT, RESIDUAL_INIT]
