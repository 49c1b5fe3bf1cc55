"""Training images/s of cnnlab's engine against a minimal hand-written PyTorch loop, the MFU of both, and where the time goes.

Run: .venv/bin/python bench/train_throughput.py [--models fast,resnet8:128] [--layout nhwc|nchw]
                                                [--precision fp32|bf16] [--steps 40] [--rounds 5]
                                                [--compare [--compare-steps 12] [--compare-rounds 3]]
                                                [--device cpu|cuda]
                                                [--whiten frozen_block] [--channels 3 --image-size 224]
                                                [--fused auto|on|off] [--convs]

For each model (NAME:BATCH, or 'fast': the Fashion-MNIST fast recipe's model with its table, at its
batch, and with its frozen whitened first layer, whose filters neither side gives a gradient, or with
--whiten's setting, which frozen_block extends to the first block's bias and norm; the
default pair is 'fast' and resnet8 at 128), both sides train the same model (cnnlab.create_model, seed 0) on the same images (the
synthetic source, gray 28x28 by default, one epoch of ``--steps`` full batches), with the same batch
size, optimiser (SGD, momentum 0.9, Nesterov, weight decay 5e-4, lr 0.1), precision (autocast bf16
or plain fp32), memory layout (channels_last, the recipes' setting, unless --layout nchw) and loss
(cross-entropy on float32 logits, label smoothing 0), and BatchNorm + ReLU as one kernel or not
(``train.fused_norm_act``, --fused: auto, as the engine resolves it, uses the kernel on the CPU in fp32 and
bf16 with channels_last; cnnlab/layers/fused.py):

(a) cnnlab: ``cnnlab.train.engine.train`` with a RunConfig (augmentation preset 'none', 1 epoch, quiet
    progress). Its images/s is the engine's own ``images_per_second`` from metrics.csv: training
    images over the epoch's training loop, MemoryLoader batches included, evaluation excluded.
(b) hand loop: ``for x, y in batches: forward; loss; zero_grad; backward; step`` over batches
    normalised in memory before the clock starts (pre-made tensors, no loader), timed over the
    same number of steps, first step included as in (a).

On the CPU both sides run with the memory a step frees kept in the C heap for the next one, as the
engine trains (cnnlab/heap.py; bench/cpu_heap.py measures what it is worth).

The machine is shared, so the runs alternate (a, b, a, b, ...) and each side's best run counts.
The goal is cnnlab >= 0.95x the hand loop. The MemoryLoader's own rate is printed too, to show
how much of any gap is the loader.

MFU (model FLOP utilisation, nanoGPT's ``estimate_mfu``): achieved training FLOP/s over the
machine's measured matmul FLOP/s. Forward FLOPs per image = 2 x the conv + linear multiply-adds
from ``cnnlab.analysis.summary`` (norms, activations and pooling left out). A training step costs
about 3x the forward: the backward computes one product for the input gradient and one for the
weight gradient, each as large as the forward's (Kaplan et al. 2020, the 6N-per-token rule; the
first layer needs no input gradient, so 3x slightly overcounts). torch's FlopCounterMode on one
step checks the ratio. Peak = best of several large ``torch.matmul`` runs on torch's threads.
On a GPU, where cuDNN runs fp32 convolutions in TF32, MFU is also given against a TF32 peak.
The machine's speed drifts, and the peak drifts with it, so the peak is measured twice over: once at
the start (MFU of each side's best run against it), and again in every round, right after that
round's two runs (paired MFU: each run against its own round's peak, the median over the rounds).

Where the time goes: ``torch.profiler`` over PROFILE_STEPS hand-loop steps, the top TOP_OPS
operators by their own time (an operator's time without the operators it calls): CPU time on the
CPU, and on a GPU the time its kernels ran on the device (there the CPU side is mostly launches).

``--convs`` (CPU) also lists each convolution of the hand loop's step as oneDNN ran it: forward, input
gradient (backward_data) and weight gradient (backward_weights) per layer shape, with oneDNN's own time for
each primitive (its verbose log, CONV_STEPS steps), the FLOP/s that makes and its share of the fp32 peak, and
how much of the step is left for everything else (norms, activations, shortcuts, optimiser, framework). It
says whether the convolutions themselves or the rest keep a model under the MFU goal. Then it calls each
convolution shape of the step on its own through torch (the same primitives: problem, passes, data type, layout,
bias), and prints what torch's convolution operators spend around oneDNN's convolution primitives (the weight
reorders oneDNN runs for them included), a call and a step. Where BatchNorm + ReLU run as one kernel, it last
weighs the memory that kernel's passes read and write in a step (cnnlab.layers.fused.ACCESSES), and the time
that takes at the machine's memory copy speed (COPY_REPS copies of a COPY_MIB MiB array), against the time
torch.profiler measured for the kernel's calls and what the MFU goal leaves besides the convolutions: whether
any norm kernel that moves as much memory could fit.

``--compare`` also times the hand loop in each setting the engine can choose between (layout,
precision, torch.compile, the fused BatchNorm + ReLU kernel) and prints each one's rate relative to fp32
channels_last with torch's own kernels: the measurements behind ``train.precision: auto``,
``train.compile: auto`` and ``train.fused_norm_act: auto``. Two rows are no choice but measures: the fused
path with a model's zero-pad shortcuts run by torch's operators (what its one-node shortcut is worth), and
the step with no BatchNorm or ReLU at all (a bound no kernel for them can beat).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from _machine import (  # bench/ is on sys.path when a bench script runs
    checked_device,
    count,
    machine_line,
    run_main,
    stop_if_interrupted,
)
from cnnlab.analysis import summary
from cnnlab.config import (
    AugConfig,
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from cnnlab.data import dataset_stats, load_source
from cnnlab.data.memory import MemoryLoader
from cnnlab.data.sources import MIN_CLASSES
from cnnlab.devices import synchronize
from cnnlab.errors import CnnlabError
from cnnlab.heap import keep_freed_memory
from cnnlab.layers import fused
from cnnlab.layers.residual import ZeroPadShortcut
from cnnlab.models import build_on_meta, check_input_size, create_model, model_info
from cnnlab.train.engine import autocast, resolve_fused_norm_act, train
from cnnlab.train.logging import METRICS_FILE, read_metrics
from cnnlab.train.whiten import fixed_parameter_names

SEED = 0
LR = 0.1  # the engine's default peak (constant in the hand loop; the engine's cosine changes only the value)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
WARMUP_STEPS = 3  # untimed hand-loop steps before the first round: oneDNN/allocator first-call costs
MATMUL_SIZE = 2048  # n for the n x n @ n x n peak probe: 2 n^3 FLOPs per product
MATMUL_REPS = 8  # timed products per dtype; the fastest counts
PROFILE_STEPS = 8  # hand-loop steps under torch.profiler (after WARMUP_STEPS untimed ones)
TOP_OPS = 5  # operators listed by their own CPU time
COMPARE_STEPS = 12  # default timed hand-loop steps per setting in --compare (after WARMUP_STEPS untimed ones)
TORCH_SHORTCUT = "fused, torch's shortcut"  # --compare: the fused path, zero-pad shortcuts by torch's operators
COMPARE_ROUNDS = 3  # default rounds of --compare's settings, taking turns; each one's best counts
FAST_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fashion-mnist-fast.yaml"
CONV_STEPS = 5  # hand-loop steps whose convolutions --convs lists (after WARMUP_STEPS untimed ones)
CALL_ITERATIONS = 20  # calls of each convolution on its own in --convs' second table, per round
CALL_ROUNDS = 3  # rounds of those calls; the fastest counts
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (input grads + weight grads) ~ 3 x forward
MFU_GOAL = 0.5  # of the fp32 matmul peak
COPY_MIB = 512  # MiB of the array --convs copies to measure the memory's speed: past the caches (L3 up to 480 MiB)
COPY_REPS = 5  # timed copies; the fastest counts


def data_config(args) -> DataConfig:
    images = args.steps * args.batch_size  # exactly --steps full batches (the engine drops the last partial one)
    spec = (f"synthetic:classes={args.classes},train={images},val={args.batch_size},test={args.batch_size},"
            f"channels={args.channels}")
    return DataConfig(spec=spec, image_size=args.image_size, seed=SEED)


# ---------------------------------------------------------------------------------------------
# (a) the engine


def run_engine(args, notes: bool = True) -> tuple[float, float]:
    """(images/s, epoch seconds) of one engine run, read from its metrics.csv; ``notes=False`` keeps the
    engine's stderr notes (the whitened layer's, for one) off the screen, for the rounds after the first."""
    config = RunConfig(
        model=ModelConfig(name=args.model, options=dict(args.options), whiten=args.whiten),
        data=data_config(args),
        aug=AugConfig(preset="none"),
        optim=OptimConfig(name="sgd", lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY),
        train=TrainConfig(epochs=1, batch_size=args.batch_size, precision=args.precision,
                          channels_last=args.channels_last, compile="off", fused_norm_act=args.fused,
                          device=args.device, seed=SEED),
        log=LogConfig(quiet=True),
    )
    from rich.console import Console

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as folder:
        run_dir = Path(folder) / "run"
        with contextlib.nullcontext() if notes else contextlib.redirect_stderr(io.StringIO()):
            # the epoch line and the report kept off the screen
            result = train(config, run_dir, console=Console(file=io.StringIO()))
        # A Ctrl-C or SIGTERM stops the engine at its next step and it returns: a rate of a run cut short is no
        # measurement, and the bench stops too (run_main: exit 130, or 143 for SIGTERM)
        stop_if_interrupted(result, f"cnnlab's engine run of {args.model}")
        row = read_metrics(run_dir / METRICS_FILE)[-1]
    return row["images_per_second"], row["epoch_seconds"]


# ---------------------------------------------------------------------------------------------
# (b) the hand-written loop


def premade_batches(args, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The engine's training images, normalised with its statistics, cut into shuffled batches on ``device``."""
    dataset = load_source(data_config(args))
    stats, _ = dataset_stats(dataset)
    mean = torch.tensor(stats.mean)[None, :, None, None]  # (1, C, 1, 1)
    std = torch.tensor(stats.std)[None, :, None, None]
    x = (dataset.train.images.float() / 255 - mean) / std  # (N, C, S, S) float32
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    x, y = x[order], dataset.train.labels[order]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    batches = []
    for start in range(0, args.steps * args.batch_size, args.batch_size):
        xb = x[start : start + args.batch_size].to(device).contiguous(memory_format=memory_format)
        batches.append((xb, y[start : start + args.batch_size].to(device)))
    return batches


def hand_model(args, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = create_model(args.model, num_classes=args.classes, in_chans=args.channels, **args.options).to(device)
    for name in fixed_parameter_names(model, args.whiten):  # fixed as the engine fixes them (the filters left random)
        model.get_parameter(name).requires_grad_(False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def hand_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype) -> None:
    """One step of the minimal loop: forward (under autocast when ``dtype``), loss, zero_grad, backward, step."""
    with autocast(device.type, dtype):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def run_hand(args, batches, device: torch.device, dtype, steps: int | None = None) -> tuple[float, float]:
    """(images/s, seconds) of the minimal loop over ``batches`` with a fresh model and optimiser."""
    model = hand_model(args, device)
    optimizer = sgd(model)
    batches = batches[:steps] if steps else batches
    synchronize(device)
    start = time.perf_counter()
    for x, y in batches:
        hand_step(model, optimizer, x, y, device, dtype)
    synchronize(device)
    seconds = time.perf_counter() - start
    return sum(len(y) for _, y in batches) / seconds, seconds


def loader_rate(args, device: torch.device) -> float:
    """Images/s of the engine's MemoryLoader alone (preset 'none': convert and normalise), best of 3 passes."""
    dataset = load_source(data_config(args))
    stats, _ = dataset_stats(dataset)
    loader = MemoryLoader(dataset.train.images, dataset.train.labels, batch_size=args.batch_size, mean=stats.mean,
                          std=stats.std, num_classes=dataset.num_classes, aug=None, train=True, device=device,
                          seed=SEED, channels_last=args.channels_last)
    best = 0.0
    for epoch in range(3):
        loader.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for x, _ in loader:
            images += len(x)
        synchronize(device)
        best = max(best, images / (time.perf_counter() - start))
    return best


# ---------------------------------------------------------------------------------------------
# FLOPs and peak


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of the fastest of MATMUL_REPS n x n products in ``dtype`` (2 n^3 FLOPs each)."""
    generator = torch.Generator().manual_seed(SEED)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device, dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device, dtype)
    torch.matmul(a, b)  # first call: allocation and kernel selection
    best = float("inf")
    for _ in range(MATMUL_REPS):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best


def tf32_matmul_peak(device: torch.device) -> float:
    """``matmul_peak`` of fp32 products with TF32 allowed: how cuDNN runs fp32 convolutions by default.

    torch leaves TF32 off for matmuls but on for cuDNN convolutions, so on a GPU the fp32 peak
    understates what an fp32 conv net can reach (resnet50 read 190% of it on an H200).
    """
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return matmul_peak(torch.float32, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def counted_step_flops(args, device: torch.device, dtype) -> tuple[float, float]:
    """torch FlopCounterMode's (forward, forward + backward) FLOPs per image on one step of batch 2. torch 2.14.1's
    counter takes a grouped convolution's weight gradient for an ungrouped one (g times its FLOPs), so for
    grouped and depthwise convolutions its backward reads high; the MFU uses cnnlab.summary's count."""
    from torch.utils.flop_counter import FlopCounterMode

    model = hand_model(args, device)
    x = torch.randn(2, args.channels, args.image_size, args.image_size, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, autocast(device.type, dtype):
        loss = F.cross_entropy(model(x).float(), y)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return forward / 2, (forward + counter.get_total_flops()) / 2


# ---------------------------------------------------------------------------------------------


def profiled_time(device: torch.device) -> tuple[str, str]:
    """(FunctionEventAvg attribute, words) of the time operators are ranked by on ``device``.

    On a GPU the CPU side of an operator is mostly its kernel launch (cudaLaunchKernel tops a CPU
    ranking), so operators are ranked by the time their kernels ran on the device instead.
    """
    if device.type == "cuda":
        return "self_device_time_total", "self device time"
    return "self_cpu_time_total", "self CPU time"


def rank_operators(events, attribute: str) -> list[tuple[str, float, int]]:
    """(operator, share of the summed ``attribute`` time, calls) of the TOP_OPS events with most of it."""
    timed = [event for event in events if getattr(event, attribute) > 0]
    total = sum(getattr(event, attribute) for event in timed)
    timed.sort(key=lambda event: getattr(event, attribute), reverse=True)
    return [(event.key, getattr(event, attribute) / total, event.count) for event in timed[:TOP_OPS]]


def warmed_up_steps(args, batches, device: torch.device, dtype, steps: int) -> Callable[[], None]:
    """A fresh hand-loop model and optimiser, trained for WARMUP_STEPS untimed steps, and a function that runs
    the next ``steps`` steps and waits for the device (the last step's kernels inside whatever watches them).
    The batches are taken in turn, from the first again after the last (--steps may be fewer than both counts)."""
    model = hand_model(args, device)
    optimizer = sgd(model)
    for step in range(WARMUP_STEPS):
        hand_step(model, optimizer, *batches[step % len(batches)], device, dtype)

    def run() -> None:
        for step in range(WARMUP_STEPS, WARMUP_STEPS + steps):
            hand_step(model, optimizer, *batches[step % len(batches)], device, dtype)
        synchronize(device)

    return run


def profiled_steps(args, batches, device: torch.device, dtype) -> tuple[list, list[fused.KernelCall]]:
    """torch.profiler's events, averaged by operator, over PROFILE_STEPS hand-loop steps (after WARMUP_STEPS
    untimed ones), and the fused BatchNorm + ReLU kernel's calls in one of those steps (none where the kernel is
    off or takes no pair of the model)."""
    from torch.profiler import ProfilerActivity, profile

    run = warmed_up_steps(args, batches, device, dtype, PROFILE_STEPS)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with fused.recording() as calls, profile(activities=activities) as profiler:
        run()
    return profiler.key_averages(), calls[: len(calls) // PROFILE_STEPS]


class ConvRun(NamedTuple):
    """One execution of a oneDNN convolution primitive, from its verbose log line."""

    kind: str  # oneDNN's propagation kind: forward_training, backward_data (input gradient), backward_weights
    shape: dict[str, int]  # oneDNN's problem descriptor: mb, g, ic, oc, ih, oh, kh, sh, ... (absent: 1)
    milliseconds: float  # oneDNN's own timing of the execution
    source_type: str = "f32"  # the input's data type as oneDNN names it: f32, bf16
    channels_last: bool = True  # the input's layout: acdb (channels_last) or abcd (NCHW)
    bias: bool = False  # whether the primitive takes a bias (a conv with one: its forward and weight-gradient passes)

    @property
    def flops(self) -> int:
        """2 x the multiply-adds, the same for each of the three passes: every output element of a grouped conv
        sums ic / g input channels over the kernel's window."""
        size = {key: self.shape.get(key, 1) for key in ("mb", "g", "ic", "oc", "od", "oh", "ow", "kd", "kh", "kw")}
        return (2 * size["mb"] * size["ic"] // size["g"] * size["oc"] * size["od"] * size["oh"] * size["ow"]
                * size["kd"] * size["kh"] * size["kw"])

    @property
    def layer(self) -> tuple:
        """What the three passes of one convolution share: its problem, data type and layout (not the bias, which
        the input-gradient pass never takes)."""
        return tuple(sorted(self.shape.items())), self.source_type, self.channels_last


def parse_conv_runs(lines: list[str]) -> list[ConvRun]:
    """The convolution executions among oneDNN verbose lines, e.g.
    ``onednn_verbose,v1,primitive,exec,cpu,convolution,IMPL,forward_training,MEMORY,ATTR,alg:...,mb128_ic16oc16_ih28oh28kh3sh1dh0ph1_iw28ow28kw3sw1dw0pw1,1.72``
    (after ``exec``: engine, primitive, implementation, propagation kind, memory descriptors, attributes, algorithm,
    problem descriptor, milliseconds; the memory descriptors begin ``src:f32::blocked:acdb`` and hold
    ``bia:undef`` for a convolution without a bias). Other primitives (reorders) and other lines are left out."""
    runs = []
    for line in lines:
        fields = line.strip().split(",")
        if "exec" not in fields:
            continue
        at = fields.index("exec")
        if len(fields) < at + 9 or fields[at + 2] != "convolution":
            continue
        shape = {key: int(value) for key, value in re.findall(r"([a-z]+)(\d+)", fields[-2])}
        memory = fields[at + 5]
        source = re.search(r"src:(\w+):\w*:blocked:(\w+)", memory)
        runs.append(ConvRun(fields[at + 4], shape, float(fields[-1]), source.group(1) if source else "f32",
                            source is None or source.group(2) == "acdb", "bia:undef" not in memory))
    return runs


def onednn_log(run: Callable[[], None]) -> list[str]:
    """The lines oneDNN's verbose mode writes while ``run`` runs. oneDNN prints them with C's stdio, so file
    descriptor 1 points at a temporary file meanwhile (Python's own output is flushed before and goes on after)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            libc.fflush(None)  # C's buffered lines into the file before the descriptor goes back
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return log.read().splitlines()


def layer_name(shape: dict[str, int]) -> str:
    """A convolution's channels, map sizes, kernel, stride and groups, as in
    ``  16 -> 32   ch,  28 -> 14  px, 3x3 stride 2``."""
    groups = f", groups {shape['g']}" if shape.get("g", 1) > 1 else ""
    return (f"{shape.get('ic', 1):>4} -> {shape.get('oc', 1):<4} ch, {shape.get('ih', 1):>3} -> "
            f"{shape.get('oh', 1):<3} px, {shape.get('kh', 1)}x{shape.get('kw', 1)} stride {shape.get('sh', 1)}{groups}")


def conv_table(runs: list[ConvRun], steps: int) -> list[tuple[str, int, float, int]]:
    """(pass and layer shape, executions per step, milliseconds per step, FLOPs per step) per distinct
    convolution, in the order they first ran."""
    rows: dict[str, list] = {}
    for conv in runs:
        row = rows.setdefault(f"{conv.kind:16s} {layer_name(conv.shape)}", [0, 0.0, 0])
        row[0] += 1
        row[1] += conv.milliseconds
        row[2] += conv.flops
    return [(name, calls // steps, ms / steps, flops // steps) for name, (calls, ms, flops) in rows.items()]


def conv_breakdown(args, batches, device: torch.device, dtype) -> list[ConvRun]:
    """The oneDNN convolution executions of CONV_STEPS hand-loop steps (after WARMUP_STEPS untimed ones)."""
    return parse_conv_runs(onednn_log(warmed_up_steps(args, batches, device, dtype, CONV_STEPS)))


class LayerCalls(NamedTuple):
    """One convolution shape of the step, called on its own as torch calls it (--convs' second table)."""

    name: str  # layer_name and its passes
    per_step: int  # layers of this shape in a step
    torch_ms: float  # one call through torch: forward and the step's backward passes, fastest round
    onednn_ms: float  # oneDNN's own time for the primitives of one such call


def layer_passes(runs: list[ConvRun], steps: int) -> list[tuple[ConvRun, set[str], int]]:
    """(its forward run, the passes it ran, layers per step) for each convolution shape, in the order they first
    ran: the step's three passes of a layer share oneDNN's problem descriptor."""
    layers: dict[tuple, tuple[list[ConvRun], set[str]]] = {}
    for conv in runs:
        forwards, kinds = layers.setdefault(conv.layer, ([], set()))
        kinds.add(conv.kind)
        if conv.kind == "forward_training":
            forwards.append(conv)
    return [(forwards[0], kinds, max(1, len(forwards) // steps)) for forwards, kinds in layers.values() if forwards]


def isolated_conv(conv: ConvRun, kinds: set[str]) -> Callable[[], None]:
    """One call of ``conv``'s convolution on its own through torch (random inputs of its shape, data type, layout
    and bias): its forward, and the input and weight gradients where ``kinds`` holds their passes."""
    s = {key: conv.shape.get(key, default) for key, default in
         (("mb", 1), ("g", 1), ("ic", 1), ("oc", 1), ("ih", 1), ("iw", 1), ("oh", 1), ("ow", 1), ("kh", 1), ("kw", 1),
          ("sh", 1), ("sw", 1), ("dh", 0), ("dw", 0), ("ph", 0), ("pw", 0))}
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[conv.source_type]
    layout = torch.channels_last if conv.channels_last else torch.contiguous_format
    x = torch.randn(s["mb"], s["ic"], s["ih"], s["iw"], dtype=dtype).to(memory_format=layout)
    weight = torch.randn(s["oc"], s["ic"] // s["g"], s["kh"], s["kw"], dtype=dtype).to(memory_format=layout)
    bias = torch.randn(s["oc"], dtype=dtype) if conv.bias else None
    grad = torch.randn(s["mb"], s["oc"], s["oh"], s["ow"], dtype=dtype).to(memory_format=layout)
    x.requires_grad_("backward_data" in kinds)
    for tensor in (weight, bias):
        if tensor is not None:
            tensor.requires_grad_("backward_weights" in kinds)
    wanted = [tensor for tensor in (x, weight, bias) if tensor is not None and tensor.requires_grad]

    def run() -> None:
        with torch.set_grad_enabled(bool(wanted)):
            # oneDNN counts dilation from 0 (no gaps), torch from 1
            out = F.conv2d(x, weight, bias, stride=(s["sh"], s["sw"]), padding=(s["ph"], s["pw"]),
                           dilation=(s["dh"] + 1, s["dw"] + 1), groups=s["g"])
            if wanted:
                torch.autograd.grad(out, wanted, grad)

    return run


def layer_calls(runs: list[ConvRun], steps: int) -> list[LayerCalls]:
    """Each convolution shape of the step called on its own, against oneDNN's time for the same calls: what
    torch's convolution operators (and autograd, for the backward passes) spend besides oneDNN's convolution
    primitives (its weight reorders for them included), shape by shape. After WARMUP_STEPS untimed calls,
    CALL_ROUNDS rounds of CALL_ITERATIONS calls are timed, each followed by as many under oneDNN's verbose log
    (which adds its printing to the calls' time but not to the primitives'); the fastest of each counts."""
    passes = {"forward_training": "forward", "backward_data": "input gradient", "backward_weights": "weight gradient"}
    rows = []
    for conv, kinds, per_step in layer_passes(runs, steps):
        run = isolated_conv(conv, kinds)

        def calls() -> None:
            for _ in range(CALL_ITERATIONS):
                run()

        for _ in range(WARMUP_STEPS):
            run()
        fastest = in_onednn = float("inf")
        for _ in range(CALL_ROUNDS):
            start = time.perf_counter()
            calls()
            fastest = min(fastest, (time.perf_counter() - start) / CALL_ITERATIONS)
            primitives = parse_conv_runs(onednn_log(calls))
            in_onednn = min(in_onednn, sum(p.milliseconds for p in primitives) / CALL_ITERATIONS)
        # the step's passes of this layer, as oneDNN ran them: the input gradient takes no bias
        in_step = {(kind, conv.layer, conv.bias and kind != "backward_data") for kind in kinds}
        alone = {(p.kind, p.layer, p.bias) for p in primitives}
        note = "" if alone == in_step else " [alone, oneDNN ran other primitives]"
        names = ", ".join(passes[kind] for kind in passes if kind in kinds)
        rows.append(LayerCalls(f"{layer_name(conv.shape)} ({names}){note}", per_step, fastest * 1e3, in_onednn))
    return rows


def conv_budget_line(conv_flops: float, conv_ms: float, peak: float) -> str:
    """The step time the MFU goal allows with these convolution FLOPs, and what that leaves for everything else; or,
    where the convolutions alone take longer, that they keep the model under the goal."""
    step_ms = conv_flops / (MFU_GOAL * peak) * 1e3
    if step_ms > conv_ms:
        return (f"  MFU {MFU_GOAL:.0%} needs the step at most {step_ms:.2f} ms with these convolution FLOPs, so "
                f"everything else at most {step_ms - conv_ms:.2f} ms")
    return (f"  MFU {MFU_GOAL:.0%} needs the step at most {step_ms:.2f} ms with these convolution FLOPs, and the "
            f"convolutions alone take {conv_ms:.2f} ms: they keep the model under the goal, whatever the rest takes")


def print_conv_breakdown(runs: list[ConvRun], steps: int, step_seconds: float,
                         peak: float) -> Optional[tuple[float, float]]:
    """--convs' table: each convolution's time and share of the fp32 peak, and what the step spends elsewhere.
    Returns (milliseconds a step the MFU goal leaves for everything but the convolutions, milliseconds the step
    spent on it), or None where oneDNN ran no convolution."""
    if not runs:
        print("convolutions (--convs): oneDNN ran none of them (torch's own kernels ran them), so there is no list")
        return None
    table = conv_table(runs, steps)
    conv_ms = sum(ms for _, _, ms, _ in table)
    conv_flops = sum(flops for _, _, _, flops in table)
    step_ms = step_seconds * 1e3
    print(f"convolutions (--convs; oneDNN's own time for each primitive, over {steps} hand-loop steps): runs and "
          f"milliseconds a step, GFLOP/s, share of the fp32 peak ({peak / 1e9:,.1f} GFLOP/s):")
    for name, calls, ms, flops in table:
        rate = flops / (ms / 1e3)
        print(f"  {name:62s} x{calls}  {ms:6.2f} ms  {rate / 1e9:6.1f} GFLOP/s  {rate / peak:5.1%}")
    rate = conv_flops / (conv_ms / 1e3)
    print(f"  all: {conv_ms:.2f} ms a step for {conv_flops / 1e9:.2f} GFLOP, {rate / 1e9:,.1f} GFLOP/s = {rate / peak:.1%} "
          f"of the peak; the hand loop's best step took {step_ms:.2f} ms, so {step_ms - conv_ms:.2f} ms "
          f"({1 - conv_ms / step_ms:.0%}) went to everything else")
    budget_ms = conv_flops / (MFU_GOAL * peak) * 1e3 - conv_ms
    print(conv_budget_line(conv_flops, conv_ms, peak))
    calls = layer_calls(runs, steps)
    print(f"  each convolution shape on its own, as torch calls it (fastest of {CALL_ROUNDS} rounds of "
          f"{CALL_ITERATIONS} calls): ms a call through torch, in oneDNN's convolution primitives, and around them:")
    for row in calls:
        print(f"    {row.name:84s} x{row.per_step}  torch {row.torch_ms:6.2f}  oneDNN {row.onednn_ms:6.2f}  "
              f"around {row.torch_ms - row.onednn_ms:5.2f}")
    around = sum((row.torch_ms - row.onednn_ms) * row.per_step for row in calls)
    print(f"  all: torch's convolution calls spend {around:.2f} ms a step around oneDNN's convolution primitives "
          f"({around / step_ms:.0%} of the hand loop's step)")
    return budget_ms, step_ms - conv_ms


def copy_bandwidth() -> float:
    """Bytes a second the memory moves: the fastest of COPY_REPS copies of a COPY_MIB MiB float32 array into
    another, each counted as its read and its write, on torch's threads."""
    source = torch.ones(COPY_MIB * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch of the target's pages, untimed
    fastest = float("inf")
    for _ in range(COPY_REPS):
        start = time.perf_counter()
        target.copy_(source)
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / fastest


def norm_kernel_ms(events) -> float:
    """Milliseconds a step the fused kernel's forward and backward calls took among :func:`profiled_steps`'
    events (their events' time, allocations of their outputs included)."""
    forward = fused._BatchNormReLU.__name__
    kernel_us = sum(event.cpu_time_total for event in events if event.key in (forward, forward + "Backward"))
    return kernel_us / 1e3 / PROFILE_STEPS


def print_norm_traffic(calls: list[fused.KernelCall], kernel_ms: float, bandwidth: float,
                       outside: Optional[tuple[float, float]]) -> None:
    """--convs' last lines: the memory the fused kernel moves in a step, the time that takes at ``bandwidth``
    (bytes/s), and the time it took; then, with ``outside`` (:func:`print_conv_breakdown`'s budget and time
    besides the convolutions, ms), what MFU_GOAL leaves for everything else once the kernel runs at that speed."""
    if not calls:
        return
    moved = sum(call.step_bytes for call in calls)
    floor_ms = moved / bandwidth * 1e3
    residuals = sum(call.residual for call in calls)
    print(f"  BatchNorm + ReLU as one kernel ({len(calls)} calls a step, {residuals} adding a residual): its passes "
          f"read and write {moved / 1e6:,.1f} MB a step; at the memory's copy speed, {bandwidth / 1e9:.1f} GB/s "
          f"({COPY_MIB} MiB arrays, fastest of {COPY_REPS}), that is {floor_ms:.2f} ms; torch.profiler measured "
          f"{kernel_ms:.2f} ms a step for its calls")
    if outside is None:
        return
    budget_ms, outside_ms = outside
    if budget_ms <= 0:  # conv_budget_line said so: the convolutions alone keep the model under the goal
        return
    if floor_ms >= budget_ms:
        print(f"  MFU {MFU_GOAL:.0%} leaves {budget_ms:.2f} ms besides the convolutions, less than the kernel needs at "
              f"the memory's speed: out of reach with these convolutions unless the norms move less memory")
    else:
        print(f"  MFU {MFU_GOAL:.0%} leaves {budget_ms:.2f} ms besides the convolutions: with the kernel at the "
              f"memory's speed, {budget_ms - floor_ms:.2f} ms for everything else, which took "
              f"{outside_ms - kernel_ms:.2f} ms here (the step besides the convolutions and the kernel)")


def compare_settings(args, device: torch.device) -> list[tuple[str, float, float]]:
    """(setting, hand-loop images/s, first-steps seconds) for each layout/precision/compile choice.

    Every setting trains a fresh model on the same images for WARMUP_STEPS untimed steps (torch.compile
    compiles there; its seconds are printed) and then ``args.compare_steps`` timed ones; the settings take
    turns for ``args.compare_rounds`` rounds, and each one's best round counts (one run each read 1.05x
    where alternating loops measured 1.16-1.37x). The first steps' seconds are the first round's.
    """
    # (name, channels_last, autocast dtype, torch.compile, BatchNorm + ReLU: "torch", "fused", TORCH_SHORTCUT or
    # "removed"). The fused kernel only where it applies; TORCH_SHORTCUT runs a model's zero-pad shortcuts through
    # torch's operators (what the fused path's one-node shortcut replaces: residual._ZeroPadSplit), only for a model
    # that has them; "removed" is no setting but a bound: the same step with every BatchNorm2d and ReLU replaced by
    # an identity, what no kernel for them can beat.
    settings = [("fp32, nchw", False, None, False, "torch"), ("fp32, nhwc (channels_last)", True, None, False, "torch"),
                ("fp32, nhwc, BatchNorm + ReLU fused", True, None, False, "fused"),
                ("fp32, nhwc, fused, torch's zero-pad shortcut", True, None, False, TORCH_SHORTCUT),
                ("fp32, nhwc, no BatchNorm or ReLU (bound)", True, None, False, "removed"),
                ("bf16 autocast, nhwc", True, torch.bfloat16, False, "torch"),
                ("bf16 autocast, nhwc, BatchNorm + ReLU fused", True, torch.bfloat16, False, "fused"),
                ("fp32, nhwc, torch.compile", True, None, True, "torch"),
                ("bf16 autocast, nhwc, torch.compile", True, torch.bfloat16, True, "torch")]
    model = hand_model(args, device)
    if not any(isinstance(module, ZeroPadShortcut) for module in model.modules()):
        settings = [setting for setting in settings if setting[4] != TORCH_SHORTCUT]
    if device.type != "cpu" or not fused.fusable_pairs(model):
        settings = [setting for setting in settings if setting[4] == "torch"]
    else:
        try:
            fused.load()
        except fused.FusedKernelUnavailable as err:
            print(f"  the fused BatchNorm + ReLU kernel could not be built here ({err}): its rows are left out")
            settings = [setting for setting in settings if not setting[4].startswith("fused")]
    batches = {layout: premade_batches(argparse.Namespace(**{**vars(args), "channels_last": layout,
                                                             "steps": WARMUP_STEPS + args.compare_steps}), device)
               for layout in {setting[1] for setting in settings}}
    best, first_steps = {}, {}
    for _ in range(args.compare_rounds):
        for name, channels_last, dtype, compiled, norm_act in settings:
            rate, first = _time_setting(args, device, batches[channels_last], channels_last, dtype, compiled, norm_act)
            best[name] = max(best.get(name, 0.0), rate)
            first_steps.setdefault(name, first)
    return [(name, best[name], first_steps[name]) for name, *_ in settings]


def _time_setting(args, device: torch.device, batches, channels_last: bool, dtype, compiled: bool,
                  norm_act: str) -> tuple[float, float]:
    """(images/s of the timed steps, seconds of the untimed first ones) of one --compare setting, fresh model."""
    setting = argparse.Namespace(**{**vars(args), "channels_last": channels_last})
    model = hand_model(setting, device)
    if norm_act == "removed":
        without_norm_act(model)
    if norm_act == TORCH_SHORTCUT:
        for module in model.modules():  # a hook on a shortcut keeps it on torch's operators (fused.observed)
            if isinstance(module, ZeroPadShortcut):
                module.register_forward_hook(lambda *args: None)
    optimizer = sgd(model)
    forward = torch.compile(model) if compiled else model
    with fused.enabled(norm_act.startswith("fused")):
        start = time.perf_counter()
        for x, y in batches[:WARMUP_STEPS]:
            hand_step(forward, optimizer, x, y, device, dtype)
        synchronize(device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for x, y in batches[WARMUP_STEPS:]:
            hand_step(forward, optimizer, x, y, device, dtype)
        synchronize(device)
    return args.compare_steps * args.batch_size / (time.perf_counter() - start), first


def without_norm_act(model: torch.nn.Module) -> None:
    """Replace every BatchNorm2d and ReLU of ``model`` by an identity, in place (--compare's bound)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, (torch.nn.BatchNorm2d, torch.nn.ReLU)):
                setattr(module, name, torch.nn.Identity())


def bench_model(args, device: torch.device, dtype, peaks: dict[str, float]) -> dict:
    """Everything printed for one model; returns its row of the closing table. The hand loop runs BatchNorm +
    ReLU as the engine does (--fused resolved as train.fused_norm_act is)."""
    fuse, note = resolve_fused_norm_act(args.fused, device, dtype, args.channels_last, hand_model(args, device))
    if note and not fuse:
        print(f"note: {note}")  # auto could not build the kernel: both sides run torch's
    with fused.enabled(fuse):
        return _bench_model(args, device, dtype, peaks, fuse)


def _bench_model(args, device: torch.device, dtype, peaks: dict[str, float], fuse: bool) -> dict:
    threads = torch.get_num_threads()
    options = "".join(f", {key}={value}" for key, value in args.options.items())
    whitened = f", whitened first layer ({args.whiten})" if args.whiten != "none" else ""
    print(f"\n== {args.model}{options}{whitened} at {args.channels}x{args.image_size}x{args.image_size}, {args.classes} classes, "
          f"batch {args.batch_size}, {args.precision}, {'nhwc (channels_last)' if args.channels_last else 'nchw'}, "
          f"{args.steps} steps ({args.steps * args.batch_size} images) per run, {args.rounds} alternating rounds, "
          f"BatchNorm + ReLU {'fused (one kernel)' if fuse else 'as torch runs them'} (--fused {args.fused})")

    # Model FLOPs: summary's MACs (conv + linear) x 2 = forward FLOPs per image.
    result = summary(hand_model(args, torch.device("cpu")), (args.channels, args.image_size, args.image_size))
    forward_flops = 2 * result.macs
    train_flops = TRAIN_FLOPS_PER_FORWARD * forward_flops
    counted_forward, counted_train = counted_step_flops(args, device, dtype)
    print(f"FLOPs per image: forward {forward_flops / 1e6:.2f} M (2 x {result.macs:,} MACs, cnnlab.summary); "
          f"training step ~ {TRAIN_FLOPS_PER_FORWARD} x forward = {train_flops / 1e6:.2f} M")
    print(f"  check, torch FlopCounterMode on one step: forward {counted_forward / 1e6:.2f} M, "
          f"forward + backward {counted_train / 1e6:.2f} M ({counted_train / counted_forward:.2f} x forward)")

    batches = premade_batches(args, device)
    run_hand(args, batches, device, dtype, steps=WARMUP_STEPS)  # untimed warm-up of the kernels for these shapes

    engine_runs, hand_runs, round_peaks = [], [], []
    for round_number in range(1, args.rounds + 1):
        engine_rate, engine_seconds = run_engine(args, notes=round_number == 1)
        # The engine lowers torch's threads while other processes take cores (cnnlab.threads); the hand
        # loop always runs at torch's default, as plain PyTorch does.
        torch.set_num_threads(threads)
        hand_rate, hand_seconds = run_hand(args, batches, device, dtype)
        round_peak = matmul_peak(torch.float32, device)  # the peak of this moment, for the paired MFU
        engine_runs.append(engine_rate)
        hand_runs.append(hand_rate)
        round_peaks.append(round_peak)
        print(f"  round {round_number}: cnnlab engine {engine_rate:8,.0f} images/s ({engine_seconds:.2f} s)   "
              f"hand loop {hand_rate:8,.0f} images/s ({hand_seconds:.2f} s)   "
              f"fp32 peak {round_peak / 1e9:,.1f} GFLOP/s")
    engine_best, hand_best = max(engine_runs), max(hand_runs)
    ratio = engine_best / hand_best
    memory_rate = loader_rate(args, device)

    print(f"(a) cnnlab engine.train (metrics.csv images_per_second, MemoryLoader aug 'none'): "
          f"{engine_best:8,.0f} images/s  best of {args.rounds} (median {statistics.median(engine_runs):,.0f})")
    print(f"(b) hand-written loop (pre-made normalised tensors, no loader):                 "
          f"{hand_best:8,.0f} images/s  best of {args.rounds} (median {statistics.median(hand_runs):,.0f})")
    print(f"ratio cnnlab / hand loop: {ratio:.3f}x  (goal >= 0.95x: {'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"MemoryLoader alone: {memory_rate:,.0f} images/s, i.e. {args.batch_size / memory_rate * 1e3:.2f} ms "
          f"of each {args.batch_size / engine_best * 1e3:.1f} ms engine step")
    mfu, paired = {}, {}
    for name, rate, runs in (("cnnlab engine", engine_best, engine_runs), ("hand loop", hand_best, hand_runs)):
        achieved = train_flops * rate
        mfu[name] = achieved / peaks["fp32"]
        paired[name] = statistics.median(train_flops * run / peak for run, peak in zip(runs, round_peaks))
        shares = ", ".join(f"MFU {achieved / flops:.1%} of the {peak} peak" for peak, flops in peaks.items())
        print(f"{name:13s}: {achieved / 1e9:,.1f} GFLOP/s achieved ({TRAIN_FLOPS_PER_FORWARD} x forward FLOPs x "
              f"images/s), {shares}; paired MFU {paired[name]:.1%} (median over the rounds of each run against "
              f"its round's fp32 peak)")

    print(f"where the time goes (torch.profiler, {PROFILE_STEPS} hand-loop steps, top {TOP_OPS} operators by "
          f"{profiled_time(device)[1]}):")
    events, kernel_calls = profiled_steps(args, batches, device, dtype)
    for name, share, calls in rank_operators(events, profiled_time(device)[0]):
        print(f"  {share:6.1%}  {name}  ({calls} calls)")

    if args.convs:
        outside = print_conv_breakdown(conv_breakdown(args, batches, device, dtype), CONV_STEPS,
                                       args.batch_size / hand_best, peaks["fp32"])
        print_norm_traffic(kernel_calls, norm_kernel_ms(events), copy_bandwidth() if kernel_calls else 0.0, outside)

    if args.compare:
        print(f"settings (hand loop, {args.compare_steps} timed steps each after {WARMUP_STEPS} untimed ones, "
              f"best of {args.compare_rounds} alternating rounds):")
        compared = compare_settings(args, device)
        reference = dict((name, rate) for name, rate, _ in compared)["fp32, nhwc (channels_last)"]
        for name, rate, first in compared:
            print(f"  {name:44s} {rate:8,.0f} images/s  {rate / reference:5.2f}x of fp32 nhwc  "
                  f"(first {WARMUP_STEPS} steps {first:5.1f} s)")
    return {"model": args.model, "batch": args.batch_size, "fused": fuse, "engine": engine_best, "hand": hand_best,
            "ratio": ratio, "mfu_engine": mfu["cnnlab engine"], "mfu_hand": mfu["hand loop"],
            "paired_engine": paired["cnnlab engine"], "paired_hand": paired["hand loop"],
            "round_peaks": (min(round_peaks), max(round_peaks))}


def goal_text(mfu: float) -> str:
    return "met" if mfu >= MFU_GOAL else "NOT met"


def parse_models(text: str, whiten: Optional[str] = None) -> list[tuple[str, dict, Optional[int], str]]:
    """'fast,resnet8:128' -> [(name, builder options, batch, model.whiten), ...]. 'fast' is the Fashion-MNIST
    fast recipe's model with its options (its table), batch and model.whiten (or ``whiten``, when given);
    NAME[:BATCH] a registered model (without :BATCH, --batch-size), not whitened."""
    models = []
    for item in text.split(","):
        name, _, batch = item.strip().partition(":")
        if name == "fast":
            recipe = load_config(FAST_RECIPE)
            models.append((recipe.model.name, dict(recipe.model.options),
                           int(batch) if batch else recipe.train.batch_size, whiten or recipe.model.whiten))
        else:
            models.append((name, {}, int(batch) if batch else None, "none"))
    return models


def check_models(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The models' names; the parser's exit-2 error for a --models item that is not NAME or NAME:BATCH, or whose
    NAME is neither 'fast' nor a model cnnlab's registry holds (checked before anything is measured: the models
    are benchmarked one after the other, and an unknown last one was found only after the others had run)."""
    names = []
    for item in text.split(","):
        name, _, batch = item.strip().partition(":")
        if not name or (batch and not (batch.isdigit() and int(batch) >= 1)):
            parser.error(f"--models item {item.strip()!r} is not NAME or NAME:BATCH with BATCH a whole number of at "
                         "least 1: write e.g. fast,resnet8:128.")
        if name != "fast":
            try:
                model_info(name)
            except CnnlabError as err:
                parser.error(f"--models item {item.strip()!r}: {err}")
        names.append(name)
    return names


def check_input_fits(parser: argparse.ArgumentParser, models: list[tuple[str, dict, Optional[int], str]],
                     channels: int, image_size: int, classes: int, larger: str) -> None:
    """The parser's exit-2 error for a model that cannot take the bench's channels x image_size x image_size
    images (vgg16 at 28 px), checked on the meta device before anything is measured, as check_models checks the
    names: it was found when its turn came, after the models before it had run. ``larger``: how to give larger
    images in the bench's words."""
    for name, options, _, _ in models:
        model = build_on_meta(name, num_classes=classes, in_chans=channels, **options)
        try:
            check_input_size(model, (channels, image_size, image_size), name, larger=larger)
        except CnnlabError as err:
            parser.error(str(err))


def check_enough_images(parser: argparse.ArgumentParser, models: list[tuple[str, dict, Optional[int], str]],
                        default_batch: int, steps: int, classes: int, steps_option: str,
                        classes_option: Optional[str] = None, untimed: int = 0) -> None:
    """The parser's exit-2 error where a model's batches hold fewer synthetic training images than ``classes``:
    the synthetic source gives every class a training image, and refused such a split only once the models
    before it were measured, in words about a data spec the user never wrote.

    ``models`` is :func:`parse_models`' list (a batch of None: ``default_batch``); the images are ``untimed``
    warm-up batches and ``steps`` timed ones; ``steps_option`` and ``classes_option`` (None where the bench has
    no option for the classes) are what the message asks to raise or lower."""
    if classes_option and classes < MIN_CLASSES:
        parser.error(f"{classes_option} {classes} is one class: the synthetic images need at least {MIN_CLASSES}, "
                     "as any classifier does.")
    classes_text = f"{classes_option} {classes}" if classes_option else f"the {classes} classes"
    for name, _, batch, _ in models:
        batch = batch or default_batch
        images = (untimed + steps) * batch
        if images < classes:
            fewest = math.ceil(classes / batch) - untimed
            counted = f"{untimed} untimed steps and {steps_option} {steps}" if untimed else f"{steps_option} {steps}"
            parser.error(f"{counted} of {name}'s batch {batch} make {images} synthetic training images, fewer than "
                         f"{classes_text}: every class needs one. Raise {steps_option} to at least {fewest}, or give "
                         f"{name} a larger batch" + (f", or lower {classes_option}." if classes_option else "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fast,resnet8:128",
                        help="NAME[:BATCH],...; 'fast' is the Fashion-MNIST fast recipe's model at its batch")
    parser.add_argument("--batch-size", type=count, default=128, help="batch for models given without :BATCH")
    parser.add_argument("--whiten", choices=("none", "frozen", "frozen_block", "trained"),
                        help="the 'fast' model's model.whiten (default: the recipe's); frozen_block fixes the whole "
                             "first block, so backward stops before it")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc",
                        help="memory layout: nhwc (channels_last, the recipes' setting) or nchw")
    parser.add_argument("--image-size", type=count, default=28, help="pixels, side of the synthetic images")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--classes", type=count, default=10)
    parser.add_argument("--steps", type=count, default=40, help="optimiser steps per timed run (one epoch)")
    parser.add_argument("--rounds", type=count, default=5, help="alternating (engine, hand loop) pairs; best counts")
    parser.add_argument("--compare", action="store_true",
                        help="also time the hand loop in each layout/precision/compile setting")
    parser.add_argument("--compare-rounds", type=count, default=COMPARE_ROUNDS,
                        help=f"--compare's rounds: the settings take turns, each one's best counts (default {COMPARE_ROUNDS})")
    parser.add_argument("--compare-steps", type=count, default=COMPARE_STEPS,
                        help=f"timed steps per --compare setting (default {COMPARE_STEPS}; a GPU takes more for a "
                             "steady rate)")
    parser.add_argument("--fused", choices=("auto", "on", "off"), default="auto",
                        help="BatchNorm + ReLU as one CPU kernel on both sides (train.fused_norm_act; auto: on the CPU "
                             "with channels_last)")
    parser.add_argument("--convs", action="store_true",
                        help="also list each convolution with oneDNN's own time, its GFLOP/s and share of the fp32 peak, "
                             "the step's time outside them, what torch's calls spend around them, and the memory the "
                             "fused BatchNorm + ReLU kernel moves (CPU only)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    names = check_models(parser, args.models)
    # The hand loop's untimed warm-up takes the first of the --steps batches; --compare's settings make their own
    # WARMUP_STEPS + --compare-steps batches of the same images.
    models = parse_models(args.models, args.whiten)
    check_enough_images(parser, models, args.batch_size, args.steps, args.classes, "--steps", "--classes")
    check_input_fits(parser, models, args.channels, args.image_size, args.classes, larger="give a larger --image-size")
    if args.compare:
        check_enough_images(parser, models, args.batch_size, args.compare_steps, args.classes, "--compare-steps",
                            "--classes", untimed=WARMUP_STEPS)
    device = checked_device(parser, args.device)
    if args.convs and device.type != "cpu":
        parser.error(f"--convs lists the convolutions as oneDNN, the CPU's library, runs them, and --device is "
                     f"{device.type}: drop --convs there, or run it with --device cpu.")
    if args.whiten and "fast" not in names:
        parser.error("--whiten sets the 'fast' model's model.whiten, and --models has no 'fast': add it, or drop --whiten.")
    if args.fused == "on" and args.layout == "nchw":  # said in the bench's options, not as train.* keys
        parser.error("--fused on runs BatchNorm + ReLU as one kernel over channels_last maps, and --layout is nchw: "
                     "give --layout nhwc with it, or --fused auto (torch's BatchNorm and ReLU in NCHW).")
    args.channels_last = args.layout == "nhwc"
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    threads = torch.get_num_threads()
    where = machine_line() if device.type == "cpu" else f"machine: {torch.cuda.get_device_name(device)}"
    print(f"{where}; torch {torch.__version__}, {threads} threads, device {device}; "
          f"1-min load average {os.getloadavg()[0]:.2f} (run with nothing else on the cores)")
    if device.type == "cpu":  # the engine keeps the heap's freed memory when it trains on the CPU: both sides get it
        print(f"C heap: freed memory {keep_freed_memory()} (cnnlab/heap.py; bench/cpu_heap.py measures it)")
    peaks = {"fp32": matmul_peak(torch.float32, device)}
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        peaks["tf32"] = tf32_matmul_peak(device)
    if dtype is not None:
        peaks["bf16"] = matmul_peak(torch.bfloat16, device)
    print(f"matmul peak ({MATMUL_SIZE}x{MATMUL_SIZE}, best of {MATMUL_REPS}, {threads} threads): "
          + ", ".join(f"{name} {flops / 1e9:,.1f} GFLOP/s" for name, flops in peaks.items()))

    rows = []
    try:
        for name, options, batch, whiten in models:
            model_args = argparse.Namespace(**{**vars(args), "model": name, "options": options,
                                               "batch_size": batch or args.batch_size, "whiten": whiten})
            rows.append(bench_model(model_args, device, dtype, peaks))
    except KeyboardInterrupt:  # Ctrl-C (or a SIGTERM an engine run took): the models measured keep their summary
        if rows:
            print_summary(args, peaks, rows, f"; interrupted: {len(rows)} of {len(models)} models measured")
        raise  # run_main says so on stderr and exits 130 (143 for SIGTERM)
    print_summary(args, peaks, rows)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def print_summary(args, peaks: dict[str, float], rows: list[dict], note: str = "") -> None:
    """The closing table: one line per measured model (``note`` is added to its heading)."""
    print(f"\nsummary ({args.precision}, {args.layout}; MFU of the fp32 matmul peak at the start, "
          f"{peaks['fp32'] / 1e9:,.1f} GFLOP/s, and paired with each round's peak; goal >= 50%{note}):")
    for row in rows:
        low, high = row["round_peaks"]
        print(f"  {row['model']:10s} batch {row['batch']:4d}{', fused' if row['fused'] else ''}: cnnlab {row['engine']:7,.0f} images/s, "
              f"MFU {row['mfu_engine']:.1%} (paired {row['paired_engine']:.1%}); hand loop {row['hand']:7,.0f} "
              f"images/s, MFU {row['mfu_hand']:.1%} (paired {row['paired_hand']:.1%}); ratio {row['ratio']:.3f}x; "
              f"rounds' peaks {low / 1e9:,.1f}-{high / 1e9:,.1f} GFLOP/s; MFU goal: "
              f"{goal_text(row['mfu_engine'])} (start peak), {goal_text(row['paired_engine'])} (paired)")


if __name__ == "__main__":
    run_main(main)
