"""One run on a CUDA machine: do cnnlab's CUDA paths work, and do they match the CPU within tolerance?

Run: bash bench/gpu_check.sh [--data-dir DIR] [--checks LIST] [--best-epochs N] [--budget 450] [--work DIR]
[--device cuda|cuda:N|cpu]
(the shell script runs this file under ``timeout --kill-after=10 470``: 8 minutes, a hard stop).

On a machine without a usable CUDA device it prints one paragraph starting "no CUDA device" and exits
with status 2 (cnnlab's "cannot do this here") before it imports anything of cnnlab.

The checks, in the order they run (``--checks`` names them). Small runs train ``vgg_mini`` (the
recipes' network) through cnnlab's own engine (``cnnlab.train.engine.train`` with a RunConfig) on the
synthetic source, gray 28x28, 10 classes, 1,024 training images, batch 128, 2 epochs (16 steps),
eager (``compile="off"``, whatever train.compile's default, auto, comes to; the compile check alone
trains compiled):

bf16, fp16     TrainConfig(precision=bf16|fp16, device=cuda): the run's losses are finite (fp16 with
               the engine's GradScaler, checked enabled), and the trained weights' logits under CUDA
               autocast match the fp32 CPU logits of the same weights on the run's test images:
               max|logits - CPU| / max|CPU| <= 4e-2 (bf16) and <= 5e-3 (fp16). That is ten unit
               roundoffs of each format (bf16 2^-8, fp16 2^-11); CPU autocast measured 0.6-0.8% (bf16)
               and 0.07-0.1% (fp16) on vgg_mini and resnet8, so the bars leave about 5x room.
channels_last  TrainConfig(channels_last=True, precision=fp32): the weights' logits with model and
               input in channels_last on the GPU match the contiguous model's on the GPU: relative
               error (as above) <= 1e-4.
compile        TrainConfig(compile="on", precision=auto) trains with finite losses, and the compiled
               forward (torch.compile) matches the eager forward on the GPU: relative error <= 1e-4.
tta            cnnlab.evaluate's predict_probabilities on the GPU against the CPU, same fp32-trained
               weights and test images, TTA modes 'flip' and '10crop': max |p_GPU - p_CPU| <= 1e-4
               (probabilities, absolute); the share of agreeing predicted classes is printed beside.
export         cnnlab.evaluate.export.export_model on the GPU-trained weights, TorchScript and ONNX (ONNX
               skipped, with the reason, when onnx, onnxruntime or onnxscript do not import): the export
               module's own parity check against PyTorch (on the CPU, where export_model loads the
               weights), max abs logit difference <= export.TOLERANCE (1e-4); then the TorchScript file
               loaded onto the GPU, as a deployment there loads it, against PyTorch on the GPU (fp32, no
               TF32): relative logit error <= 1e-4.
fast, 5min,    recipes/fashion-mnist-fast.yaml, -5min.yaml and -best.yaml trained on the GPU (device cuda, precision
best
               auto, eager: compile off, so that no compile time counts as training; the compile check
               measures compiled speed): test accuracy (last weights; EMA weights beside), training seconds (the sum of
               metrics.csv's epoch_seconds: the training loops, evaluation excluded) and the first epoch
               whose validation accuracy (the recipe's held-out training images) reached the goal. Goals: 94% in at
               most 10 s (fast, and 5min: the recipe that passed 94% on 2 CPU cores, a second try at that
               goal), 96% in at most 120 s (best). A goal met or NOT met is a measurement, not
               the check's verdict: the check fails only when the run breaks or its test accuracy is under
               80% (training broken, not slow). The best recipe's 45 epochs are capped by --best-epochs
               and by the time budget: after 2 epochs the run is timed, and when its planned epochs would
               not fit, it starts again with as many as fit (the line says exactly what ran).

fp32 comparisons run with TF32 off (``strict_fp32``): cuDNN uses TF32 (a 10-bit mantissa, unit
roundoff 2^-11 ~ 5e-4) for fp32 convolutions by default on Ampere and later GPUs, which alone would
move the numbers by more than the 1e-4 bars; with it off, the bars test fp32 itself. The bf16/fp16
checks cover reduced precision.

Each check prints one line: PASS/FAIL/SKIP, what it measured, the number and the tolerance. A check
is skipped, with a line saying so, when the time left in ``--budget`` is under its rough cost. The
summary follows; exit status 0 when no check failed, 1 when one did (skips do not fail the run:
the summary lists them), 2 without CUDA, on an option it refuses (before any check: a --work that is a file or
cannot be written, a --best-epochs shorter than the best recipe's warmup) or when this python cannot import
cnnlab's modules (a missing package: one paragraph naming it, before any check). A Ctrl-C or SIGTERM stops the
script in the check under way (a training run stops at its next step, as in ``cnnlab train``, or at once on a
second signal, which gpu_check.sh's ``timeout`` may send with a Ctrl-C): a FAIL line "interrupted" names that
check, the summary follows, and the exit status is 130 (143 for SIGTERM).

``--device cpu`` is a rehearsal for a machine without a GPU: every check runs on the CPU against the
CPU (fp16 is skipped: the engine trains fp16 only on CUDA; the compile check's speed line is CUDA's
only), so that the script's own code paths (the engine runs, the comparisons, export, the recipe runs
and their time planning) are known to work before a GPU is at hand. Its lines test the script, not
CUDA, and it says so at the start and the end.

Run on a GPU once, on an NVIDIA H200 (2026-12-04, torch 2.11.0+cu130): all 11 checks passed in 294 s,
and none of the three speed goals was met. docs/speed.md ("The GPU check") has its lines.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent  # the repository: recipes/ and the cnnlab package
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # cnnlab importable when run with a python3 that has not installed it

try:
    import torch
except ImportError as err:  # the shell script falls back to python3, which may lack torch: said after --help
    torch = None
    TORCH_MISSING = (f"cannot run here: {sys.executable} cannot import torch ({err}). Run bench/gpu_check.sh from a "
                     "checkout with its .venv (make test creates it), or install torch 2.14.1 with CUDA for this "
                     "python.")

EXIT_FAILED = 1  # a check failed
EXIT_CANNOT = 2  # cnnlab's "cannot do this here": no CUDA device
# set by gpu_check.sh: the directory it was called from, before it moved to the repository root
CALLER_DIR_ENV = "GPU_CHECK_CALLER_DIR"
# set by gpu_check.sh: the seconds to its stop signal (GPU_CHECK_LIMIT), which --budget must leave room before
LIMIT_ENV = "GPU_CHECK_STOP_AFTER"
STOP_MARGIN = 20.0  # seconds the stop signal leaves after the budget: start-up (torch) and the summary

DEFAULT_BUDGET = 450.0  # seconds; the shell script's stop signal at 470 s leaves 20 s for start-up (torch) and exit

# Tolerances (see the module docstring for the reasoning).
BF16_TOLERANCE = 4e-2  # relative logit error, ten bf16 unit roundoffs (2^-8 each)
FP16_TOLERANCE = 5e-3  # relative logit error, ten fp16 unit roundoffs (2^-11 each)
FP32_TOLERANCE = 1e-4  # relative logit error between two fp32 paths (TF32 off): ~1,000 fp32 roundoffs
PROBABILITY_TOLERANCE = 1e-4  # absolute, on softmax probabilities in [0, 1], fp32 (TF32 off)
SANITY_ACCURACY = 0.80  # a recipe run under this test accuracy is broken, not slow (CPU fp32 runs reach 93-95%)

# The small runs: the recipes' network on generated images, a few steps through the engine.
SMALL_MODEL = "vgg_mini"
SMALL_CLASSES = 10
SMALL_IMAGE_SIZE = 28  # pixels, Fashion-MNIST's side
SMALL_TRAIN_IMAGES = 1024
SMALL_EVAL_IMAGES = 256  # val and test each
SMALL_BATCH = 128  # 8 steps per epoch
SMALL_EPOCHS = 2  # 16 steps: the weights move away from their initialisation
SMALL_LR = 0.05
TTA_MODES = ("flip", "10crop")  # 2 and 10 views: the mirror path and the shifted-corner path
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # pyproject's onnx extra: what export --format onnx needs

# Rough cost of each check in seconds on a GPU with cold caches: a check is skipped when less time than
# this is left in the budget. Written as guesses before the first GPU run, and left above what the H200
# took (bf16 6, fp16 3, channels_last 5, compile 56, tta 3, export 3, fast 13, 5min 24 s) as a margin for
# slower GPUs; best replans its epochs to the time left, so 60 s is the least worth starting it with.
CHECK_SECONDS = {"bf16": 20, "fp16": 15, "channels_last": 15, "compile": 120, "tta": 20, "export": 40,
                 "fast": 60, "5min": 60, "best": 60}
CHECKS = tuple(CHECK_SECONDS)
EVAL_RESERVE = 20.0  # seconds a recipe keeps back for its test evaluation and the summary
REPLAN_EPOCHS = 2  # a recipe run is timed over this many epochs before it may be started again shorter
REHEARSAL_NOTE = ("rehearsal: --device cpu ran the checks on the CPU against the CPU, so these lines test this "
                  "script's code paths, not CUDA; run it on a GPU with --device cuda")


@dataclass(frozen=True)
class RecipeGoal:
    """A recipe and its goal on a GPU."""

    path: str  # relative to the repository
    accuracy: float  # test accuracy to reach (fraction)
    seconds: float  # within this many seconds of training (sum of metrics.csv's epoch_seconds)


RECIPES = {"fast": RecipeGoal("recipes/fashion-mnist-fast.yaml", 0.94, 10.0),
           "5min": RecipeGoal("recipes/fashion-mnist-5min.yaml", 0.94, 10.0),  # 94.01-94.19% on 2 CPU cores with bf16
           "best": RecipeGoal("recipes/fashion-mnist-best.yaml", 0.96, 120.0)}


# ---------------------------------------------------------------------------------------------
# results and comparisons (plain torch: importable and testable without CUDA or cnnlab)


@dataclass
class Result:
    """One printed line: status PASS, FAIL or SKIP, the check's name, what was measured and the bar."""

    status: str
    name: str
    detail: str
    goal: str = ""  # a recipe's goal verdict, repeated in the summary

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Comparison:
    """A measured difference and its tolerance; NaN or infinity never passes."""

    what: str  # how the number was measured
    measured: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return math.isfinite(self.measured) and self.measured <= self.tolerance

    def text(self) -> str:
        return f"{self.what} = {self.measured:.3g} (tolerance {self.tolerance:g})"


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max |got - reference| / max |reference|: the worst difference relative to the logits' scale.

    Relative, not absolute: after a few steps the logits are small (the classifier starts at
    N(0, 0.01)), so an absolute bar would let a wrong result of the same small size pass.
    """
    got, reference = got.detach().float().cpu(), reference.detach().float().cpu()
    if got.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(got.shape)} against the reference's {tuple(reference.shape)}")
    difference = (got - reference).abs().max().item()
    scale = reference.abs().max().item()
    if scale == 0:
        return 0.0 if difference == 0 else math.inf
    return difference / scale


def compare_logits(got: torch.Tensor, reference: torch.Tensor, tolerance: float, against: str) -> Comparison:
    """Relative logit error of ``got`` against ``reference`` (``against`` names it in the line)."""
    return Comparison(f"max|logits - {against}| / max|{against}|", relative_error(got, reference), tolerance)


def compare_probabilities(got: torch.Tensor, reference: torch.Tensor, tolerance: float = PROBABILITY_TOLERANCE,
                          against: str = "CPU") -> Comparison:
    """Largest absolute difference of two (N, K) probability tensors."""
    got, reference = got.detach().float().cpu(), reference.detach().float().cpu()
    if got.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(got.shape)} against the reference's {tuple(reference.shape)}")
    return Comparison(f"max|p - p_{against}|", (got - reference).abs().max().item(), tolerance)


def result_of(name: str, comparison: Comparison, extra: str = "") -> Result:
    return Result("PASS" if comparison.passed else "FAIL", name, comparison.text() + (f"; {extra}" if extra else ""))


def failure(name: str, err: BaseException) -> Result:
    """A FAIL line for an exception; its traceback goes to stderr, for whoever reads the run's log."""
    traceback.print_exception(err, file=sys.stderr)
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return Result("FAIL", name, f"{type(err).__name__}: {message} (traceback above, on stderr)")


@contextlib.contextmanager
def strict_fp32():
    """fp32 convolutions and matmuls without TF32 on CUDA, restored afterwards (no effect on the CPU).

    The legacy flags only: torch refuses to read its TF32 state when they are mixed with the newer
    ``fp32_precision`` settings, and cnnlab sets neither.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cuda_problem() -> Optional[str]:
    """Why this machine cannot run the checks, as one paragraph starting "no CUDA device"; None when it can."""
    with warnings.catch_warnings(record=True) as caught:  # a broken driver warns instead of raising
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    if torch.version.cuda is None:
        why = (f"this torch ({torch.__version__}) was built without CUDA (torch.version.cuda is None), so "
               "torch.cuda.is_available() is False")
    else:
        why = (f"torch.cuda.is_available() is False: torch {torch.__version__} is built with CUDA "
               f"{torch.version.cuda}, but it found no usable NVIDIA GPU")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            why += f" (CUDA_VISIBLE_DEVICES={visible!r} limits which GPUs it may see)"
        said = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
        if said:
            why += f"; torch said: {said[0]}"
    return (f"no CUDA device: {why}. This script compares cnnlab's CUDA paths (bf16/fp16 autocast, channels_last, "
            "torch.compile, TTA evaluation, export) with the CPU and times the Fashion-MNIST recipes on the GPU, so "
            "there is nothing it can check here. Run `bash bench/gpu_check.sh` on a machine with an NVIDIA GPU "
            "(`nvidia-smi` lists it) and a CUDA build of torch; pass --data-dir with Fashion-MNIST's four idx .gz files "
            "if that machine lacks /usr/share/datasets/fashion-mnist. `--device cpu` rehearses the checks here, on the "
            "CPU against the CPU: that tests the script, not CUDA.")


# What the checks call: cnnlab's engine, evaluation and export, and rich (train_run's quiet console).
CNNLAB_MODULES = ("cnnlab.train.engine", "cnnlab.evaluate.evaluate", "cnnlab.evaluate.export", "rich.console")


def cnnlab_problem() -> Optional[str]:
    """Why this python cannot import the cnnlab modules the checks call, as one paragraph; None when it can.
    Asked before the first check, so that a missing package is one message rather than every check's FAIL."""
    for module in CNNLAB_MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a torchvision built for another torch (RuntimeError)
            return (f"cannot run here: {sys.executable} cannot import {module} ({type(err).__name__}: {err}). The "
                    "checks train and evaluate through cnnlab, which needs torchvision (the one built for this torch), "
                    "safetensors, rich, pyyaml, numpy, scikit-learn and matplotlib beside torch: install them for this "
                    "python, or run from a checkout whose .venv has them (make test creates it).")
    return None


# ---------------------------------------------------------------------------------------------
# time


class Budget:
    """The wall-clock seconds the script may use, counted from its start."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.used()


class OutOfTime(Exception):
    """Raised at an epoch's end by :class:`EpochClock`: the epochs still planned would not fit the budget."""

    def __init__(self, epochs_done: int, seconds_per_epoch: float, setup_seconds: float):
        super().__init__(f"stopped after {epochs_done} epochs ({seconds_per_epoch:.1f} s each)")
        self.epochs_done = epochs_done
        self.seconds_per_epoch = seconds_per_epoch
        self.setup_seconds = setup_seconds


class EpochClock:
    """The engine's ``on_epoch_end`` for a recipe run: times whole epochs (training, evaluation and
    checkpoints) and raises :class:`OutOfTime` when the epochs still planned would not fit in the budget
    less ``reserve``. The engine saves the epoch's checkpoint before it calls this, so a stopped run's
    last.safetensors holds the epochs it finished.

    After one epoch only its time is known, and it includes the set-up, so the run is stopped then
    only when not even one more epoch fits; from the second on the planned rest must fit.
    """

    def __init__(self, budget: Budget, planned_epochs: int, reserve: float = EVAL_RESERVE):
        self.budget = budget
        self.planned_epochs = planned_epochs
        self.reserve = reserve
        self.started = time.perf_counter()
        self.ends: list[float] = []  # time.perf_counter() at each epoch's end

    def seconds_per_epoch(self) -> float:
        if len(self.ends) >= 2:
            return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
        return self.ends[0] - self.started  # the first epoch also carries the set-up: an overestimate

    def setup_seconds(self) -> float:
        """Seconds before the first epoch: the first epoch's time less a later epoch's (0 until known)."""
        if len(self.ends) < 2:
            return 0.0
        return max(0.0, self.ends[0] - self.started - self.seconds_per_epoch())

    def __call__(self, row: dict) -> None:
        self.ends.append(time.perf_counter())
        epochs_left = self.planned_epochs - row["epoch"]
        if epochs_left <= 0:
            return
        needed = self.seconds_per_epoch() * (epochs_left if len(self.ends) >= 2 else 1)
        if needed > self.budget.left() - self.reserve:
            raise OutOfTime(row["epoch"], self.seconds_per_epoch(), self.setup_seconds())


def epochs_that_fit(seconds_left: float, seconds_per_epoch: float, setup_seconds: float,
                    reserve: float = EVAL_RESERVE) -> int:
    """Whole epochs a fresh run can train in ``seconds_left``, after its set-up and the reserve."""
    if seconds_per_epoch <= 0:
        return 0
    return max(0, math.floor((seconds_left - reserve - setup_seconds) / seconds_per_epoch))


def time_to_accuracy(rows: list[dict], goal: float, key: str = "val_acc") -> Optional[tuple[int, float]]:
    """(1-based epoch, training seconds up to its end) of the first metrics row whose ``key`` reached ``goal``."""
    seconds = 0.0
    for row in rows:
        seconds += row["epoch_seconds"]
        if row.get(key) is not None and row[key] >= goal:
            return row["epoch"], seconds
    return None


# ---------------------------------------------------------------------------------------------
# the small runs: a few steps of cnnlab's engine (cnnlab is imported here, not at the top, so the
# no-CUDA exit and --help never load it)


def small_config(device: str, *, train_images: int = SMALL_TRAIN_IMAGES, eval_images: int = SMALL_EVAL_IMAGES,
                 batch_size: int = SMALL_BATCH, epochs: int = SMALL_EPOCHS, **train_options):
    """The RunConfig of a small run on ``device``; ``train_options`` set TrainConfig fields (precision, ...).
    Eager (compile off, whatever auto comes to) unless ``compile`` is given: a compiled small run would
    spend the budget on inductor and test compiled training in every check."""
    from cnnlab.config import AugConfig, DataConfig, LogConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

    train_options.setdefault("compile", "off")
    spec = (f"synthetic:classes={SMALL_CLASSES},train={train_images},val={eval_images},test={eval_images},"
            "channels=1")
    return RunConfig(
        model=ModelConfig(name=SMALL_MODEL),
        data=DataConfig(spec=spec, image_size=SMALL_IMAGE_SIZE, seed=0),
        aug=AugConfig(preset="none"),  # the numbers, not the accuracy, are under test
        optim=OptimConfig(name="sgd", lr=SMALL_LR),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, device=device, seed=0, **train_options),
        log=LogConfig(quiet=True, curves=False),  # curves.png costs ~0.5 s of matplotlib per run
    )


def train_run(config, run_dir: Path, on_epoch_end: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train ``config`` into ``run_dir`` through cnnlab's engine, its console output kept off the screen;
    returns the metrics.csv rows.

    A Ctrl-C or SIGTERM during the run makes the engine stop at the next step and return (or finish, when it
    came in the last step): that raises :class:`Interrupted`, so that a run cut short is never measured as a
    finished one and the checks after it do not start."""
    from rich.console import Console

    from cnnlab.train.engine import train

    result = train(config, run_dir, console=Console(file=io.StringIO()), on_epoch_end=on_epoch_end)
    if result.interrupted or result.stop_requested:
        raise Interrupted(result.stop_signal)
    return metrics_rows(run_dir)


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.csv (those of the epochs it finished)."""
    from cnnlab.run import RunFolder
    from cnnlab.train.logging import read_metrics

    return read_metrics(RunFolder(run_dir).metrics)


def finite_losses(rows: list[dict]) -> bool:
    """Whether every epoch's training and validation loss is a finite number."""
    return bool(rows) and all(row[key] is not None and math.isfinite(row[key])
                              for row in rows for key in ("train_loss", "val_loss"))


def losses_text(rows: list[dict]) -> str:
    from cnnlab.errors import counted

    if not rows:
        return "no epoch finished"
    return f"{counted(len(rows), 'epoch')}, last train loss {rows[-1]['train_loss']:.4g}, val loss {rows[-1]['val_loss']:.4g}"


def last_checkpoint(run_dir: Path) -> Path:
    from cnnlab.run import RunFolder

    return RunFolder(run_dir).last


def held_out_images(run_dir: Path) -> torch.Tensor:
    """(N, C, S, S) float32 on the CPU: the run's test split, normalised as in training, channels first."""
    from cnnlab.evaluate.evaluate import eval_loader, load_model

    loaded = load_model(last_checkpoint(run_dir))
    _, loader = eval_loader(loaded, split="test", batch_size=SMALL_EVAL_IMAGES, device="cpu")
    x, _ = next(iter(loader))
    return x.contiguous()


def cpu_logits(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the run's last weights on the CPU, contiguous format: the reference."""
    from cnnlab.evaluate.evaluate import load_model

    model = load_model(last_checkpoint(run_dir), device="cpu").model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return model(x.contiguous()).float()


def trained_small_run(work: Path, name: str, device: str, runs: dict, **train_options) -> tuple[Path, list[dict]]:
    """A small run trained once per name (``runs`` keeps them): (run folder, metrics rows)."""
    if name not in runs:
        run_dir = work / f"small-{name}"
        runs[name] = run_dir, train_run(small_config(device, **train_options), run_dir)
    return runs[name]


# ---------------------------------------------------------------------------------------------
# the checks


def check_autocast(precision: str, device: str, work: Path, runs: dict, **sizes) -> Result:
    """bf16 or fp16 training through the engine; autocast logits against fp32 CPU logits. ``sizes`` override
    the small run's (train_images, eval_images, batch_size, epochs)."""
    from cnnlab.evaluate.evaluate import load_model
    from cnnlab.train.engine import resolve_precision, setup_run

    name = f"{precision} autocast"
    tolerance = {"bf16": BF16_TOLERANCE, "fp16": FP16_TOLERANCE}[precision]
    if precision == "fp16" and torch.device(device).type != "cuda":
        return Result("SKIP", name, f"the engine trains fp16 only on CUDA (it refuses train.precision=fp16 on {device}): "
                                    "a rehearsal cannot run this check")
    if precision == "bf16" and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return Result("SKIP", name, f"{torch.cuda.get_device_name(device)} has no bf16 (before Ampere); precision auto "
                                    "uses fp16 there, which the fp16 check covers")
    run_dir, rows = trained_small_run(work, precision, device, runs, precision=precision, **sizes)
    if not finite_losses(rows):
        return Result("FAIL", name, f"a loss is not finite ({losses_text(rows)})")
    extra = losses_text(rows) + " (finite)"
    if precision == "fp16":
        # The engine must scale fp16 losses, or small gradients underflow to zero.
        scaler_on = setup_run(small_config(device, precision=precision, **sizes), loaders=False).scaler.is_enabled()
        if not scaler_on:
            return Result("FAIL", name, "the engine's GradScaler is disabled for fp16 training")
        extra += ", GradScaler enabled"
    x = held_out_images(run_dir)
    reference = cpu_logits(run_dir, x)
    model = load_model(last_checkpoint(run_dir), device=device).model
    dtype = resolve_precision(precision, torch.device(device))
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype):
        got = model(x.to(device)).float()
    return result_of(f"{name} ({len(x)} test images)", compare_logits(got, reference, tolerance, "fp32 CPU"), extra)


def check_channels_last(device: str, work: Path, runs: dict, **sizes) -> Result:
    """A channels_last fp32 run; its weights' logits in channels_last against contiguous, both on ``device``."""
    from cnnlab.evaluate.evaluate import load_model

    name = "channels_last"
    run_dir, rows = trained_small_run(work, "channels_last", device, runs, precision="fp32", channels_last=True,
                                      **sizes)
    if not finite_losses(rows):
        return Result("FAIL", name, f"a loss is not finite ({losses_text(rows)})")
    x = held_out_images(run_dir).to(device)
    model = load_model(last_checkpoint(run_dir), device=device).model
    with torch.no_grad(), strict_fp32():
        contiguous = model.to(memory_format=torch.contiguous_format)(x.contiguous()).float()
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last)).float()
    comparison = compare_logits(nhwc, contiguous, FP32_TOLERANCE, "contiguous")
    return result_of(f"{name} on {device} (trained channels_last, fp32)", comparison, losses_text(rows) + " (finite)")


SPEED_BATCH = 256  # the fast recipe's batch
SPEED_STEPS = 200  # timed training steps per side in the compile speed comparison (after SPEED_WARMUP)
SPEED_WARMUP = 5  # untimed steps: compilation, cuDNN's algorithm choice


def training_rate(device: str, compiled: bool) -> float:
    """Training images/s of the small model on random 28x28 images (precision auto, channels_last as the recipes
    train), eager or compiled.

    One of the measurements behind train.compile=auto (eager: compiling lost more often than it won): the
    line prints both rates. Each step is train_throughput's hand-loop step (forward under autocast, loss,
    zero_grad, backward, step).
    """
    from train_throughput import hand_step, synchronize  # bench/ is on sys.path when a bench script runs

    from cnnlab.models import create_model
    from cnnlab.train.engine import resolve_precision

    torch.manual_seed(0)
    model = create_model(SMALL_MODEL, num_classes=SMALL_CLASSES, in_chans=1).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    # dynamic=False: the same forward was compiled before for other batch sizes (the compiled run, its evaluation),
    # after which torch would compile this batch size as a symbolic one, slower than the graph a run trains with
    forward = torch.compile(model, dynamic=False) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=SMALL_LR, momentum=0.9)
    where = torch.device(device)
    dtype = resolve_precision("auto", where)
    x = torch.randn(SPEED_BATCH, 1, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, SMALL_CLASSES, (SPEED_BATCH,), device=device)
    for _ in range(SPEED_WARMUP):
        hand_step(forward, optimizer, x, y, where, dtype)
    synchronize(where)
    started = time.perf_counter()
    for _ in range(SPEED_STEPS):
        hand_step(forward, optimizer, x, y, where, dtype)
    synchronize(where)
    return SPEED_STEPS * SPEED_BATCH / (time.perf_counter() - started)


def check_compile(device: str, work: Path, runs: dict, **sizes) -> Result:
    """A run trained with torch.compile; compiled forward against eager on ``device``. ``sizes`` as for
    :func:`check_autocast`."""
    from cnnlab.evaluate.evaluate import load_model

    name = "torch.compile"
    started = time.perf_counter()
    run_dir, rows = trained_small_run(work, "compile", device, runs, precision="auto", compile="on", **sizes)
    train_seconds = time.perf_counter() - started
    if not finite_losses(rows):
        return Result("FAIL", name, f"a loss is not finite ({losses_text(rows)})")
    x = held_out_images(run_dir).to(device)
    model = load_model(last_checkpoint(run_dir), device=device).model
    with torch.no_grad(), strict_fp32():
        eager = model(x).float()
        compiled = torch.compile(model)(x).float()
    extra = f"compiled training (precision auto) {losses_text(rows)} (finite) in {train_seconds:.0f} s with compilation"
    if torch.device(device).type == "cuda":
        eager_rate, compiled_rate = training_rate(device, compiled=False), training_rate(device, compiled=True)
        extra += (f"; training speed, batch {SPEED_BATCH}: compiled {compiled_rate:,.0f} images/s against eager "
                  f"{eager_rate:,.0f} ({compiled_rate / eager_rate:.2f}x; train.compile=auto runs eager, =on compiles)")
    return result_of(f"{name} on {device} (fp32 forward)", compare_logits(compiled, eager, FP32_TOLERANCE, "eager"), extra)


def tta_probabilities_on(run_dir: Path, device: str, modes=TTA_MODES) -> dict:
    """{mode: (probabilities (N, K), labels (N,))} of the run's last weights on ``device``, through
    cnnlab.evaluate's predict_probabilities with the run's preprocessing (fp32, TF32 off)."""
    from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model, predict_probabilities, tta_settings

    loaded = load_model(last_checkpoint(run_dir), device=device)
    dataset, loader = eval_loader(loaded, split="test", device=device)
    _, shift, _ = tta_settings(loaded, dataset, "10crop")  # the corner shift `cnnlab eval` would use
    out = {}
    for mode in modes:
        with strict_fp32():
            # flips=True whatever the data: the numbers are under test, not whether a mirror keeps the label.
            probs, labels, _ = predict_probabilities(loaded.model, loader, tta=mode, fill=black_fill(loaded.meta),
                                                     flips=True, shift=shift)
        out[mode] = probs, labels
    return out


def check_tta(run_dir: Path, device: str, reference_device: str = "cpu", modes=TTA_MODES) -> list[Result]:
    """TTA probabilities on ``device`` against ``reference_device``, one line per mode."""
    reference = tta_probabilities_on(run_dir, reference_device, modes)
    got = tta_probabilities_on(run_dir, device, modes)
    results = []
    for mode in modes:
        (probs, labels), (ref_probs, ref_labels) = got[mode], reference[mode]
        name = f"eval TTA '{mode}' {device} vs {reference_device} ({len(labels)} test images)"
        if not torch.equal(labels, ref_labels):
            results.append(Result("FAIL", name, "the two loaders gave different labels: not the same images"))
            continue
        agree = (probs.argmax(1) == ref_probs.argmax(1)).double().mean().item()
        comparison = compare_probabilities(probs, ref_probs, against=reference_device)
        result = result_of(name, comparison, f"predicted classes agree on {agree:.2%}")
        if agree < 1.0 and result.status == "PASS":  # within tolerance, a flipped argmax is a near-tie; say so
            result.detail += " (a near-tie flipped)"
        results.append(result)
    return results


def check_export(run_dir: Path, work: Path, trained_on: str) -> list[Result]:
    """export_model (its own parity check) on the run's last weights, per format."""
    from cnnlab.errors import CnnlabError
    from cnnlab.evaluate.export import FORMATS, SUFFIX, export_model

    results = []
    for fmt in FORMATS:
        name = f"export {fmt}"
        if fmt == "onnx":
            try:  # cnnlab's onnx extra; imported here only to name the reason for a skip
                for module in ONNX_MODULES:
                    importlib.import_module(module)
            except ImportError as err:
                results.append(Result("SKIP", name, f"{', '.join(ONNX_MODULES)} do not all import ({err}): "
                                                    "pip install 'cnnlab[onnx]' to check it"))
                continue
        try:
            report = export_model(last_checkpoint(run_dir), fmt, out=work / f"export{SUFFIX[fmt]}")
        except CnnlabError as err:  # the parity check failed, or the export did with a message
            results.append(Result("FAIL", name, str(err)))
            continue
        except Exception as err:  # the exporter broke: this format fails, the other still reports
            results.append(failure(name, err))
            continue
        comparison = Comparison("max|exported - PyTorch logits| (export_model's parity check, batches "
                                f"{'+'.join(map(str, report['checked_batches']))})",
                                report["max_abs_difference"], report["tolerance"])
        results.append(result_of(f"{name} of weights trained on {trained_on}", comparison))
        if fmt == "torchscript":
            try:
                results.append(check_torchscript_on(trained_on, Path(report["file"]), run_dir))
            except Exception as err:
                results.append(failure(f"export torchscript run on {trained_on}", err))
    return results


def check_torchscript_on(device: str, path: Path, run_dir: Path) -> Result:
    """The exported TorchScript file loaded onto ``device``, as a deployment there loads it, against the PyTorch
    model on ``device`` (fp32): export_model's own check runs both on the CPU, so a trace that recorded a CPU
    tensor as a constant would pass it and fail here."""
    from cnnlab.evaluate.evaluate import load_model
    from cnnlab.evaluate.export import _run_torchscript

    x = held_out_images(run_dir).to(device)
    model = load_model(last_checkpoint(run_dir), device=device).model.to(memory_format=torch.contiguous_format)
    with torch.no_grad(), strict_fp32():
        reference = model(x).float()
        got = _run_torchscript(path, x).float()
    comparison = compare_logits(got, reference, FP32_TOLERANCE, f"PyTorch on {device}")
    return result_of(f"export torchscript run on {device} ({len(x)} test images)", comparison)


# ---------------------------------------------------------------------------------------------
# the recipes


def fashion_folder(data_dir: Optional[str]) -> Optional[Path]:
    """The first folder cnnlab would read Fashion-MNIST from, or None: looked up here so that a machine
    without the files skips the recipes instead of trying a download (the GPU machine may be offline)."""
    from cnnlab.data.sources import locate_fashion_mnist

    return locate_fashion_mnist(data_dir)


def split_accuracy(checkpoint: Path, device: str, ema: bool, split: str = "test") -> float:
    """Top-1 accuracy of a checkpoint's raw or EMA weights on a split of its data, on ``device``."""
    from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model, predict_probabilities

    loaded = load_model(checkpoint, ema=ema, device=device)
    _, loader = eval_loader(loaded, split=split, batch_size=1000, device=device)
    probs, labels, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    return (probs.argmax(1) == labels).double().mean().item()


def check_recipe(key: str, device: str, data_dir: Optional[str], work: Path, budget: Budget,
                 epochs_cap: Optional[int] = None) -> Result:
    """Train a Fashion-MNIST recipe on the GPU and report test accuracy, training seconds and the goal."""
    from cnnlab.config import load_config
    from cnnlab.errors import counted

    goal = RECIPES[key]
    name = f"recipe {Path(goal.path).name}"
    folder = fashion_folder(data_dir)
    if folder is None:
        where = (f"--data-dir {data_dir}" if data_dir
                 else "$CNNLAB_DATA/fashion-mnist, cnnlab's cache or /usr/share/datasets/fashion-mnist")
        return Result("SKIP", name, f"Fashion-MNIST's four idx files are not in {where}: copy them to this machine "
                                    "and pass --data-dir DIR")
    recipe_epochs = load_config(ROOT / goal.path).train.epochs
    planned = min(recipe_epochs, epochs_cap) if epochs_cap else recipe_epochs
    notes = [] if planned == recipe_epochs else [f"capped by --best-epochs to {planned} of the recipe's {recipe_epochs}"]
    run = recipe_run(key, device, data_dir, work, budget, planned, folder)
    if run.replanned_from is not None:
        first = run.replanned_from
        notes.append(f"{planned} epochs would not fit the time budget ({first.seconds_per_epoch:.1f} s per epoch over "
                     f"the first {first.epochs_done}), so the run started again with {run.planned} epochs (the first "
                     "start discarded)")
    if run.stopped is not None:
        notes.append(f"stopped by the time budget after {run.stopped.epochs_done} of {run.planned} epochs "
                     "(schedule unfinished)")
    rows = run.rows
    if not finite_losses(rows):
        return Result("FAIL", name, f"a loss is not finite ({losses_text(rows)})")
    checkpoint = last_checkpoint(run.run_dir)
    accuracy = split_accuracy(checkpoint, device, ema=False)
    ema_text = f" (EMA weights {split_accuracy(checkpoint, device, ema=True):.2%})" if run.config.train.ema else ""
    train_seconds = sum(row["epoch_seconds"] for row in rows)
    met = accuracy >= goal.accuracy and train_seconds <= goal.seconds
    reached = time_to_accuracy(rows, goal.accuracy)
    reached_text = (f"val reached {goal.accuracy:.0%} at epoch {reached[0]} after {reached[1]:.1f} s of training"
                    if reached else f"val never reached {goal.accuracy:.0%} (best {max(r['val_acc'] for r in rows):.2%})")
    detail = (f"{counted(len(rows), 'epoch')} on {device}, precision auto: test {accuracy:.2%} with the last weights{ema_text} "
              f"after {train_seconds:.1f} s of training ({run.wall_seconds:.0f} s wall with set-up and evaluation); "
              f"{reached_text}; goal {goal.accuracy:.0%} in <= {goal.seconds:g} s: {'met' if met else 'NOT met'}")
    if notes:
        detail += "; " + "; ".join(notes)
    verdict = (f"{goal.accuracy:.0%} in <= {goal.seconds:g} s of training: {'met' if met else 'NOT met'} (test "
               f"{accuracy:.2%} after {train_seconds:.1f} s, {counted(len(rows), 'epoch')})")
    if accuracy < SANITY_ACCURACY:
        return Result("FAIL", name, detail + f"; test accuracy under {SANITY_ACCURACY:.0%}: training is broken, not slow",
                      verdict)
    return Result("PASS", name, detail, verdict)


@dataclass
class RecipeRun:
    """What :func:`recipe_run` trained."""

    run_dir: Path
    config: object  # the RunConfig trained
    planned: int  # epochs the run was configured for
    rows: list  # its metrics.csv rows
    wall_seconds: float  # the train() call, set-up and evaluation included
    replanned_from: Optional[OutOfTime] = None  # the first start's stop, when the run was started again shorter
    stopped: Optional[OutOfTime] = None  # the stop of a run the budget cut short (its schedule unfinished)


def recipe_run(key: str, device: str, data_dir: Optional[str], work: Path, budget: Budget, planned: int,
               folder: Path) -> RecipeRun:
    """Train recipe ``key`` for ``planned`` epochs, or as many as the budget holds.

    When the first :data:`REPLAN_EPOCHS` epochs show that the planned ones would not fit, the run starts
    again with as many epochs as fit: a schedule cut off part-way never anneals, so it would understate
    what the recipe reaches. A run stopped later keeps what it trained.
    """
    replanned_from = None
    while True:
        # A fresh folder per start: the engine refuses a folder that already holds a run.
        run_dir = work / (f"recipe-{key}" if replanned_from is None else f"recipe-{key}-started-again")
        config = recipe_config(key, device, data_dir, planned)
        print(f"      ... training {RECIPES[key].path} on {device}: {planned} epochs, data from {folder}",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            rows = train_run(config, run_dir, on_epoch_end=EpochClock(budget, planned))
            return RecipeRun(run_dir, config, planned, rows, time.perf_counter() - started, replanned_from)
        except OutOfTime as stop:
            wall = time.perf_counter() - started
            fit = min(planned, epochs_that_fit(budget.left(), stop.seconds_per_epoch, stop.setup_seconds))
            if replanned_from is None and stop.epochs_done <= REPLAN_EPOCHS and fit > stop.epochs_done:
                replanned_from, planned = stop, fit
                continue
            return RecipeRun(run_dir, config, planned, metrics_rows(run_dir), wall, replanned_from, stopped=stop)


def least_epochs(key: str) -> int:
    """The fewest epochs recipe ``key`` can train: its schedule must fit in the run (a warmup of 2 epochs needs
    3 at least). cnnlab.config's own schedule check decides, so the rule is written once."""
    from cnnlab.config import load_config, schedule_problems

    recipe = load_config(ROOT / RECIPES[key].path)
    for epochs in range(1, recipe.train.epochs + 1):
        if not schedule_problems(recipe.schedule, epochs):
            return epochs
    return recipe.train.epochs


def recipe_config(key: str, device: str, data_dir: Optional[str], epochs: int):
    """The recipe's RunConfig on ``device`` with precision auto, eager (compile off: the goals time training,
    not compiling), ``epochs`` epochs and quiet logging."""
    from cnnlab.config import load_config

    config = load_config(ROOT / RECIPES[key].path)
    data = replace(config.data, data_dir=data_dir) if data_dir else config.data
    return replace(config, data=data, train=replace(config.train, device=device, precision="auto", compile="off",
                                                          epochs=epochs),
                   log=replace(config.log, quiet=True, curves=False))


# ---------------------------------------------------------------------------------------------


class WallClockLimit(BaseException):
    """The shell script's `timeout` (SIGUSR1): stop, print what was measured, exit 1."""


class Interrupted(BaseException):
    """A Ctrl-C (SIGINT) or SIGTERM: stop, print what was measured with a FAIL line saying so, exit 128 + the
    signal (130, 143). Inside a training run the engine takes both signals over and stops at its next step
    (:func:`train_run` raises this then); outside one, SIGTERM reaches :func:`_on_stop_signal` and Ctrl-C is
    Python's KeyboardInterrupt. A BaseException, as KeyboardInterrupt is: the guard that turns a check's
    exception into its FAIL line must not take it for a broken check and go on to the next."""

    def __init__(self, signum: Optional[int] = None, check: Optional[str] = None):
        super().__init__(signum)
        self.signum = signum or signal.SIGINT  # not known: Ctrl-C, as Python's own KeyboardInterrupt
        self.check = check  # the check under way, once run_checks knows it

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def text(self) -> str:
        how = "SIGTERM (the process was asked to end)" if self.signum == signal.SIGTERM else "Ctrl-C (SIGINT)"
        during = f" during the {self.check} check" if self.check else ""
        return f"stopped by {how}{during}; the checks above finished, the rest did not run"


# SIGUSR1 is the shell script's stop signal: a training run takes SIGTERM over (it stops at the next step and
# returns, which train_run turns into Interrupted), and leaves SIGUSR1 to this script.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def _on_stop_signal(signum, frame) -> None:
    if signum == signal.SIGTERM:
        raise Interrupted(signum)
    raise WallClockLimit


def budget_room() -> float:
    """The most seconds --budget may take: gpu_check.sh's wall-clock limit less :data:`STOP_MARGIN` (infinite when
    run without the script)."""
    return float(os.environ.get(LIMIT_ENV, "inf")) - STOP_MARGIN


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.sh",
        description="Check cnnlab's CUDA paths against the CPU and time the Fashion-MNIST recipes on the GPU, in "
                    "one run of at most 8 minutes. Exit 0: no check failed; 1: a check failed; 2: no CUDA device, "
                    "an option refused, or a package cnnlab needs is missing; 130 (143): stopped by Ctrl-C (SIGTERM).",
        epilog="example: bash bench/gpu_check.sh --data-dir ~/fashion-mnist   (the four idx .gz files)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with Fashion-MNIST's four idx files (default: cnnlab's search path: "
                             "$CNNLAB_DATA/fashion-mnist, its cache, /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--checks", default=",".join(CHECKS),
                        help=f"comma-separated checks to run, of {','.join(CHECKS)} (default: all)")
    parser.add_argument("--best-epochs", type=int, default=None,
                        help="cap on the best recipe's epochs, more than its warmup's (default: the recipe's 45, fewer "
                             "if they would not fit)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds the checks may take; slow parts are skipped when it runs short "
                             f"(default {DEFAULT_BUDGET:g})")
    parser.add_argument("--device", default="cuda",
                        help="CUDA device (default cuda; cuda:1 for the second GPU), or cpu for a rehearsal: every check "
                             "runs on the CPU against the CPU (fp16 skipped), which tests this script, not CUDA")
    parser.add_argument("--work", default=None, help="keep the run folders in a new gpu-check-TIME folder in this one "
                                                     "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    # gpu_check.sh runs this from the repository root: a relative folder was typed in the caller's directory
    caller = os.environ.get(CALLER_DIR_ENV)
    for name in ("data_dir", "work"):
        value = getattr(args, name)
        if caller and value and not Path(value).expanduser().is_absolute():
            setattr(args, name, str(Path(caller) / value))
    args.checks = [name.strip() for name in args.checks.split(",") if name.strip()]
    unknown = [name for name in args.checks if name not in CHECKS]
    if unknown:
        parser.error(f"unknown {'check' if len(unknown) == 1 else 'checks'} {', '.join(unknown)}: choose from {', '.join(CHECKS)}")
    if not args.checks:
        parser.error(f"--checks names no check, so there is nothing to run: give one or more of {', '.join(CHECKS)} "
                     "(or leave --checks out for all)")
    budget_given = args.budget is not None
    if not budget_given:  # the default, within the wall-clock limit below
        args.budget = DEFAULT_BUDGET
    if not (math.isfinite(args.budget) and args.budget > 0):
        parser.error(f"--budget {args.budget:g} is not a number of seconds above 0: with no time every check would "
                     f"be skipped (the default is {DEFAULT_BUDGET:g})")
    room = budget_room()
    if budget_given and args.budget > room:
        # the checks would plan for time the stop signal never gives them: killed, not shortened
        fit = f"give --budget {room:g} or less, or raise GPU_CHECK_LIMIT" if room > 0 else "raise GPU_CHECK_LIMIT"
        parser.error(f"--budget {args.budget:g} s does not fit the script's wall-clock limit of {room + STOP_MARGIN:g} "
                     f"s (GPU_CHECK_LIMIT), which leaves {STOP_MARGIN:g} s for start-up and the summary: {fit}")
    args.budget = min(args.budget, max(room, 1.0))  # the default, within a lower limit
    if args.best_epochs is not None and args.best_epochs < 1:
        parser.error("--best-epochs must be at least 1")
    if args.best_epochs is not None and "best" in args.checks:
        least = least_epochs_or_none("best")
        if least is not None and args.best_epochs < least[0]:
            parser.error(f"--best-epochs {args.best_epochs} is too few for {RECIPES['best'].path}: its learning rate "
                         f"warms up for {least[1]:g} epochs (schedule.warmup_epochs), and the run must be longer than "
                         f"that, so it needs at least {least[0]} epochs. Give --best-epochs {least[0]} or more, or "
                         "leave it out for the recipe's own.")
    if args.work is not None:
        problem = work_problem(args.work)
        if problem:
            parser.error(problem)
    recipes = [name for name in args.checks if name in RECIPES]
    if args.data_dir is not None and recipes and not Path(args.data_dir).expanduser().is_dir():
        # found only at the recipe checks, after the others have taken their minutes of the GPU, as a SKIP
        parser.error(f"--data-dir {args.data_dir} is not a folder, so the {', '.join(recipes)} recipe "
                     f"{'check' if len(recipes) == 1 else 'checks'} would find no Fashion-MNIST: name the folder "
                     "that holds its four idx .gz files")
    if torch is None:  # main says so, naming the python: nothing can run without torch
        return args
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device!r} is not a CUDA device: write cuda or cuda:N (or cpu for a rehearsal)")
    return args


def least_epochs_or_none(key: str) -> Optional[tuple[int, float]]:
    """(:func:`least_epochs` of recipe ``key``, its schedule.warmup_epochs), or None where this python cannot read
    the recipe (a package cnnlab needs is missing: main's :func:`cnnlab_problem` names it, as one paragraph, after
    the options)."""
    try:
        from cnnlab.config import load_config

        return least_epochs(key), load_config(ROOT / RECIPES[key].path).schedule.warmup_epochs
    except ImportError:
        return None


def work_problem(work: str) -> str:
    """Why --work cannot hold the run folders (a file, a folder this process cannot write, a full disk), as the
    parser's message; '' when it can. The folder is not created here: main makes gpu-check-TIME inside it."""
    try:
        from cnnlab.io import check_output_folder
    except ImportError:  # main's cnnlab_problem names what is missing
        return ""
    from cnnlab.errors import CnnlabError

    try:
        check_output_folder(Path(work).expanduser(), "--work", holds_runs=True)
    except CnnlabError as err:
        return str(err)
    return ""


def machine_line(device: torch.device) -> str:
    if device.type == "cpu":
        from _machine import cpu_name  # bench/ is on sys.path when a bench script runs

        return (f"machine: {cpu_name()} ({os.cpu_count()} CPUs), torch {torch.__version__}, no GPU in use; 1-min load "
                f"average {os.getloadavg()[0]:.2f}")
    properties = torch.cuda.get_device_properties(device)
    return (f"machine: {properties.name} ({properties.total_memory / 2**30:.0f} GiB, compute capability "
            f"{properties.major}.{properties.minor}), torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}; 1-min load "
            f"average {os.getloadavg()[0]:.2f}")


def run_checks(args, budget: Budget, work: Path, report: Callable[[Result], None]) -> None:
    """Run the chosen checks in order, each guarded: an exception is that check's FAIL (traceback on stderr)."""
    device = args.device
    runs: dict = {}  # small runs trained once and shared (tta and export use the fp32 one)

    def fp32_run() -> Path:
        return trained_small_run(work, "fp32", device, runs, precision="fp32")[0]

    steps = {
        "bf16": lambda: [check_autocast("bf16", device, work, runs)],
        "fp16": lambda: [check_autocast("fp16", device, work, runs)],
        "channels_last": lambda: [check_channels_last(device, work, runs)],
        "compile": lambda: [check_compile(device, work, runs)],
        "tta": lambda: check_tta(fp32_run(), device),
        "export": lambda: check_export(fp32_run(), work, trained_on=device),
        "fast": lambda: [check_recipe("fast", device, args.data_dir, work, budget)],
        "5min": lambda: [check_recipe("5min", device, args.data_dir, work, budget)],
        "best": lambda: [check_recipe("best", device, args.data_dir, work, budget, args.best_epochs)],
    }
    for name in CHECKS:
        if name not in args.checks:
            continue
        if budget.left() < CHECK_SECONDS[name]:
            # the other checks spent the budget: alone it would get the whole; or the budget is too small for it
            needed = CHECK_SECONDS[name]
            rerun = f"--checks {name}" if budget.seconds >= needed else f"--budget {needed} or more"
            if budget.seconds < needed and budget_room() < needed:  # a budget the script's limit would refuse
                rerun += f" and GPU_CHECK_LIMIT={needed + STOP_MARGIN:g} or more"
            report(Result("SKIP", name, f"time budget: {budget.left():.0f} s of {budget.seconds:g} s left, this check "
                                        f"needs about {CHECK_SECONDS[name]} s (rerun with {rerun})"))
            continue
        print(f"      ... {name} ({budget.left():.0f} s left)", file=sys.stderr, flush=True)
        try:
            results = steps[name]()
        except Exception as err:  # one broken path must not hide the others' results
            results = [failure(name, err)]
        except Interrupted as stop:
            stop.check = name
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C outside a training run (or the engine's own, in its set-up)
            raise Interrupted(getattr(stop, "signum", None), name) from None
        for result in results:
            report(result)


def main(argv=None) -> int:
    args = parse_args(argv)  # --help and the options' refusals need no torch
    if torch is None:
        print(TORCH_MISSING, file=sys.stderr)
        return EXIT_CANNOT
    budget = Budget(args.budget)
    device = torch.device(args.device)
    rehearsal = device.type == "cpu"  # the script's own code paths, on a machine without a GPU
    if not rehearsal:
        problem = cuda_problem()
        if problem is not None:
            print(problem, file=sys.stderr)
            return EXIT_CANNOT
        if (device.index or 0) >= torch.cuda.device_count():
            print(f"error: --device {args.device} is not one of this machine's {torch.cuda.device_count()} CUDA "
                  "devices (cuda:0 to cuda:N-1).", file=sys.stderr)
            return EXIT_CANNOT
    problem = cnnlab_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_CANNOT
    previous_handlers = {signum: signal.signal(signum, _on_stop_signal) for signum in STOP_SIGNALS}
    print(machine_line(device), flush=True)
    print(f"checks: {', '.join(args.checks)}; budget {args.budget:g} s; fp32 comparisons with TF32 off", flush=True)
    if rehearsal:
        print(REHEARSAL_NOTE, flush=True)

    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    keep = args.work is not None
    if keep:  # a new folder per run: the engine refuses to train into a folder that holds a run
        work = Path(args.work).expanduser() / time.strftime("gpu-check-%Y%m%d-%H%M%S")
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))
    stopped: Optional[Interrupted] = None
    try:
        run_checks(args, budget, work, report)
    except WallClockLimit:
        report(Result("FAIL", "wall-clock limit", f"stopped by the shell script's time limit (SIGUSR1) after "
                                                  f"{budget.used():.0f} s; the checks above finished"))
    except Interrupted as stop:
        stopped = stop
    except KeyboardInterrupt as stop:  # between two checks
        stopped = Interrupted(getattr(stop, "signum", None))
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if stopped is not None:
        report(Result("FAIL", "interrupted", f"{stopped.text()} ({budget.used():.0f} s)"))
    counts = {status: sum(r.status == status for r in results) for status in ("PASS", "FAIL", "SKIP")}
    print(f"summary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{budget.used():.0f} s (budget {args.budget:g} s); 1-min load average {os.getloadavg()[0]:.2f} at the end"
          + (f"; run folders kept in {work}" if keep else ""))
    for result in results:
        if result.goal:
            print(f"  goal, {result.name}: {result.goal}")
    for status in ("FAIL", "SKIP"):
        for result in results:
            if result.status == status:
                print(f"  {status.lower()}: {result.name}")
    if rehearsal:
        print(REHEARSAL_NOTE)
    if stopped is not None:
        return stopped.exit_code
    return EXIT_FAILED if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
