"""BatchNorm + ReLU (+ a residual addition) in one CPU kernel for training: fewer passes over memory.

Why. On a CPU, a small network's convolutions run near the vector units' peak, but BatchNorm, ReLU
and the residual addition are memory-bound, and torch runs each as its own pass: BatchNorm's forward
reads its input twice and writes once, the ReLU reads and writes again, and backward repeats that with
the gradient. On resnet8 (batch 128, 28 x 28) they took about 17 of a 50 ms fp32 step on a 2-core Xeon,
and held its fp32 MFU near 37%. The kernel in ``fused_norm_act.cpp`` does BatchNorm's training-mode
forward with the ReLU (and the block's residual addition before it) in two passes over memory, and the
backward in two, recomputing the ReLU's mask from what it reads anyway (docs/speed.md has the
measurements).

What. :func:`enabled` switches it on for a block of code (the engine does so for a training run when
``train.fused_norm_act`` resolves to on); :class:`~cnnlab.layers.blocks.ConvNormAct` and the residual
blocks then hand their norm and activation to :func:`batch_norm_relu`, which runs the kernel when
everything about the call is one it computes exactly as torch would:

- an ``nn.BatchNorm2d`` (exactly: no SyncBatchNorm, no subclass) with a scale and shift, in training mode,
  followed by an ``nn.ReLU``;
- an fp32 or bf16 CPU input in channels_last layout (bf16 as autocast hands it over: the kernel computes in
  float and rounds its bf16 outputs once), more than one value per channel (torch refuses one);
- no hooks on the modules it would skip and no global module hooks (analysis that observes the norm or
  the activation sees them run), no ``torch.compile`` tracing, no dispatch mode (``FlopCounterMode``,
  fake tensors: they see torch's operators).

In the same blocks, where the kernel would run, a zero-pad shortcut (option A, the CIFAR ResNets') runs as one
autograd node with its branch's input, which adds the shortcut's gradient into the branch's in place
(``residual._ZeroPadSplit``; the same numbers bit for bit where the block's input feeds only the block).

Anything else runs torch's modules as before, so the switch never changes what a model computes beyond
float rounding: the statistics are summed about the first row's value (in float within 256 rows, in double
across them, so a mean far from 0 cancels nothing), the running mean and variance updated with the
module's momentum (or the cumulative average when it is None), ``num_batches_tracked`` counted. Second
derivatives through it are refused (a CnnlabError at the backward that asks for them; torch's modules have them);
nothing in training takes them.

:func:`recording` lists the kernel's calls inside a ``with``, and :attr:`KernelCall.step_bytes` says how many
bytes each call's forward and backward passes read and write (``bench/train_throughput.py --convs`` sets that
against the machine's memory speed).

The kernel is compiled the first time :func:`load` is called on a machine (about 20 s on 2 cores; torch's
extension builder with the C++ compiler and ninja) and cached under torch's extensions folder
(``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), keyed by this CPU's instruction set.
Where it cannot be built, :func:`load` raises :class:`FusedKernelUnavailable` with the compiler's reason, and
raises it again at once on later calls in the same process (an experiment's runs do not each wait for a
failing build).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn as nn
from torch.nn.modules import module as torch_module  # its global hook registries

from cnnlab.errors import CnnlabError

SOURCE = Path(__file__).with_name("fused_norm_act.cpp")

_kernel = None  # the loaded extension module, once built
_failure: Optional[str] = None  # why the build failed, once it has
_active = False  # whether batch_norm_relu may run it (:func:`enabled`)
_recorded: Optional[list["KernelCall"]] = None  # its calls, inside :func:`recording`

# Elements a training step of the kernel reads and writes, per element of its map (fused_norm_act.cpp): forward
# reads x twice (statistics, then output) and writes y; backward reads the gradient and x twice (sums, then the
# input gradient) and writes the input gradient. A residual adds its read to forward, and to backward two reads
# of y (the ReLU's mask) and the write of its gradient.
ACCESSES = {False: 3 + 5, True: (3 + 1) + (5 + 3)}  # keyed by whether a residual is added


class FusedKernelUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded here; the message says why."""


def _cpu_tag() -> str:
    """Eight hex digits of this CPU's flags: a kernel built for one instruction set is never loaded on another
    (the build uses -march=native and the cache folder may be shared across machines)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(flags.encode()).hexdigest()[:8]


def load(verbose: bool = False) -> tuple[object, float]:
    """(the kernel module, seconds it took to build or load): compiled on first use, then from torch's cache."""
    global _kernel, _failure
    if _kernel is not None:
        return _kernel, 0.0
    if _failure is not None:
        raise FusedKernelUnavailable(_failure)
    # Importing torch's builder warns "No CUDA runtime is found" on every machine without a GPU, which says
    # nothing about a CPU kernel: it stays off the user's screen.
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load as load_extension
    finally:
        builder_log.setLevel(level)

    # torch's builder runs `ninja` from PATH; pip's ninja (a dependency) may not be on it
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    name = f"cnnlab_fused_norm_act_{_cpu_tag()}"
    start = time.perf_counter()
    try:
        # torch's builder warns that "your compiler is not compatible" whenever it cannot ask the compiler its
        # version, a missing compiler included: the build's own failure, below, says what is wrong
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            builder_log.setLevel(logging.ERROR)
            _kernel = load_extension(
                name=name,
                sources=[str(SOURCE)],
                # -fopenmp: ATen's parallel_for is OpenMP in the headers, and without it runs on one thread
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=_build_directory(name),
                verbose=verbose,
            )
    except Exception as err:  # a missing compiler or ninja, a failed build: all mean "not here"
        _failure = f"{type(err).__name__}: {build_failure(str(err))}"
        raise FusedKernelUnavailable(_failure) from err
    finally:
        builder_log.setLevel(level)
    return _kernel, time.perf_counter() - start


# The lines of a failed build that say why (torch's message starts with the compiler's whole command line, a
# thousand characters of flags before "c++: not found")
_REASON_WORDS = re.compile(r"not found|error|fatal|no space|permission denied|cannot|no such file|killed", re.I)
REASON_CHARS = 300  # of a failed build's reason, in the note the run prints


def build_failure(message: str) -> str:
    """The part of a failed build's message that says why: its lines that name an error, else its first line."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    # "Error building extension 'NAME': [1/2] c++ ...": the name, without the command line after it
    lines = [re.sub(r"^(Error building extension '[^']*'): \[\d+/\d+\] .*", r"\1", line) for line in lines]
    reasons = [line for line in lines if _REASON_WORDS.search(line) and not line.startswith("[")]
    text = "; ".join(dict.fromkeys(reasons)) if reasons else (lines[0] if lines else "")
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def _build_directory(name: str) -> Optional[str]:
    """Where the kernel is built: torch's own choice (None), but for a user with no home folder, where torch's
    default ``~/.cache/torch_extensions`` would be made as a folder named ``~`` in the current directory."""
    if os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~") != "~":
        return None
    from cnnlab import cache_root

    folder = cache_root() / "torch_extensions" / name
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def active() -> bool:
    """Whether :func:`batch_norm_relu` may run the kernel now (inside :func:`enabled`)."""
    return _active


def activate(on: bool = True) -> None:
    """Let the blocks use the fused kernel from here on (building it first if needed), or not (``on=False``);
    inside :func:`scope`, until it ends."""
    global _active
    if on:
        load()
    _active = on


@contextmanager
def scope() -> Iterator[None]:
    """Whatever :func:`activate` sets inside the ``with`` ends with it (the engine trains inside one)."""
    global _active
    previous = _active
    try:
        yield
    finally:
        _active = previous


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Let the blocks use the fused kernel inside the ``with`` (building it first if needed), or not (``on=False``)."""
    with scope():
        activate(on)
        yield


class KernelCall(NamedTuple):
    """One call of the kernel: its map's shape (B, C, H, W) and dtype, and whether it added a residual."""
    shape: torch.Size
    dtype: torch.dtype
    residual: bool

    @property
    def step_bytes(self) -> int:
        """Bytes its forward and backward read and write in memory: the map's elements times :data:`ACCESSES`."""
        return math.prod(self.shape) * self.dtype.itemsize * ACCESSES[self.residual]


@contextmanager
def recording() -> Iterator[list[KernelCall]]:
    """A list of the kernel's calls made inside the ``with`` (bench/train_throughput.py --convs weighs the memory
    they move); calls that run torch's modules are not in it."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def observed(*modules: nn.Module) -> bool:
    """Whether anything would miss these modules' calls: hooks on them, or global module hooks."""
    global_hooks = (torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks,
                    torch_module._global_backward_hooks, torch_module._global_backward_pre_hooks)
    return any(global_hooks) or any(_hooked(m) for m in modules)


def untraced() -> bool:
    """Whether torch runs operators as they are called: no ``torch.compile`` tracing and no dispatch mode
    (``FlopCounterMode``, fake tensors), which must see torch's operators rather than the kernel."""
    return not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()


def fusable(norm: Optional[nn.Module], act: Optional[nn.Module]) -> bool:
    """Whether a norm and the activation after it are a pair the kernel computes (the modules only): a
    BatchNorm2d with its scale and shift (norm_options.bias=false leaves no shift) before an nn.ReLU."""
    return (type(norm) is nn.BatchNorm2d and norm.affine and norm.bias is not None and type(act) is nn.ReLU
            and norm.weight.dtype == torch.float32)


DTYPES = (torch.float32, torch.bfloat16)  # the maps it takes: fp32, and bf16 as autocast hands them over


def takes(x: torch.Tensor) -> bool:
    """Whether the kernel takes a map like ``x``: fp32 or bf16, on the CPU, channels_last, more than one value a
    channel."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in DTYPES and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > x.shape[1])


def batch_norm_relu(x: torch.Tensor, norm: nn.Module, act: nn.Module,
                    residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``act(norm(x) + residual)`` by the kernel, or None when the call is not one it takes (the caller then
    runs the modules). ``x``, ``residual``: (B, C, H, W); the norm's running statistics are updated as torch's."""
    if not (_active and norm.training and fusable(norm, act) and takes(x) and not observed(norm, act) and untraced()):
        return None
    if residual is not None:
        if type(residual) is not torch.Tensor or residual.shape != x.shape or residual.dtype != x.dtype:
            return None
        residual = residual.contiguous(memory_format=torch.channels_last)
    if _recorded is not None:
        _recorded.append(KernelCall(x.shape, x.dtype, residual is not None))
    y, mean, unbiased_var = _BatchNormReLU.apply(x, norm.weight, norm.bias, residual, norm.eps)
    if norm.track_running_stats:
        _update_running_stats(norm, mean, unbiased_var)
    return y


@torch.no_grad()
def _update_running_stats(norm: nn.BatchNorm2d, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    """What torch's training-mode BatchNorm does to its buffers: count the batch, then move the running
    mean and (unbiased) variance towards the batch's by the momentum, or to the cumulative average."""
    momentum = 0.0 if norm.momentum is None else norm.momentum  # no count to average over: the buffers stay
    if norm.num_batches_tracked is not None:  # a module may drop it (None), as torch's BatchNorm allows
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    norm.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
    norm.running_var.mul_(1 - momentum).add_(unbiased_var, alpha=momentum)


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x) + residual) with the batch's statistics; outputs (y, mean, unbiased variance)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps):
        y, mean, invstd, unbiased_var = _kernel.forward(x, weight.detach(), bias.detach(), residual, eps)
        # With a residual the ReLU's mask is read from y; without, backward recomputes it from x
        ctx.save_for_backward(x, y if residual is not None else None, weight, bias, mean, invstd)
        ctx.has_residual = residual is not None
        ctx.mark_non_differentiable(mean, unbiased_var)
        return y, mean, unbiased_var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        # Grad mode is on here only for a backward that builds a graph (create_graph=True): second derivatives,
        # which the kernel has none of. torch's once_differentiable refuses them only where its error node is
        # reached, and a graph that never reaches it (its inputs' second derivatives) read as zero in silence.
        if torch.is_grad_enabled():
            raise CnnlabError("The fused BatchNorm + ReLU kernel has no second derivatives (a backward with "
                              "create_graph=True reached it): train with train.fused_norm_act=off, or take them "
                              "outside cnnlab.layers.fused.enabled().")
        x, y, weight, bias, mean, invstd = ctx.saved_tensors
        empty = x.new_empty(0)
        grad_x, grad_weight, grad_bias, grad_residual = _kernel.backward(
            grad_y, x, empty if y is None else y, weight.detach(), bias.detach(), mean, invstd, ctx.has_residual)
        return grad_x, grad_weight, grad_bias, grad_residual if ctx.has_residual else None, None


def fusable_pairs(model: nn.Module, in_eval: frozenset[int] = frozenset()) -> int:
    """How many norm-activation pairs of ``model`` the kernel can take: post-activation ConvNormAct blocks and
    residual blocks whose last norm meets the block's activation after the addition. ``in_eval``: the ids of
    norms that run in eval mode while the model trains (train.bn_eval), which the kernel never runs (it is a
    training kernel), left out of the count."""
    count = 0
    for module in model.modules():  # by what the blocks say of themselves: they import this module
        if getattr(module, "norm_then_act", False):  # ConvNormAct
            count += fusable(module.norm, module.act) and id(module.norm) not in in_eval
        elif callable(getattr(module, "fusable_tail", None)) and module.fusable_tail() is not None:  # residual blocks
            count += id(module.fusable_tail().norm) not in in_eval
    return count
