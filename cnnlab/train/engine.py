"""The training loop: ``train(config, out)`` turns a RunConfig into a trained model and a run folder.

The file reads in the order a run happens:

- set-up, :func:`setup_run`: devices, precision, seed, data, statistics, model, resolved
  augmentation, loaders, optimiser and loss scaler, as a :class:`RunSetup`. The LR range test
  (``cnnlab lr-find``) and ``cnnlab check`` build their runs with it too.
- the step, :func:`train_step`: forward under autocast, loss, backward, clip, optimiser step. The one
  place that sequence is written; lr-find and check train through it as well.
- the run, :func:`train`: per step ``lr = peak * schedule(step)``, the step, EMA; per epoch evaluate,
  log, checkpoint. With train.accum_steps=k an optimiser step is k micro-batches (:func:`micro_batch_group`):
  every step count (schedule, EMA, snapshots, steps.csv) counts optimiser steps; train.early_stop_patience
  ends a run whose validation accuracy stalls (:func:`early_stop_text`). :class:`RunState` is where the run
  stands, what a checkpoint records besides the weights, optimiser, EMA and RNG state, so a resumed run ends
  exactly where an uninterrupted one would.

Ctrl-C and SIGTERM are deferred to the next step boundary (see :class:`StopRequest`): a checkpoint is only
ever written where weights, buffers, optimiser, EMA, RNG and position describe the same step.

The run folder's file names come from :mod:`cnnlab.run`; the run records its config with the
augmentation resolved (every field concrete), in config.yaml and in every checkpoint and snapshot.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import (
    READ_BY_CHOICE, RECORD_KEYS, ModelConfig, RunConfig, ScheduleConfig, TrainConfig, check_thread_setting,
    config_differences, notice, record_paths, save_config, validate_config,
)
from cnnlab.devices import resolve_device, synchronize
from cnnlab.errors import BatchOfOneError, CnnlabError, counted, display_name
from cnnlab.heap import heap_state, keep_on_cpu
from cnnlab.layers import fused
from cnnlab.run import (  # noqa: F401
    BUDGET_FILE, CHECKPOINT_BEST, CHECKPOINT_LAST, CONFIG_FILE, ENVIRONMENT_FILE, INIT_FILE, METRICS_FILE,
    SNAPSHOT_PATTERN, MetaKey,
    RunFolder, STATUS_FILE, STEPS_FILE, WRITTEN_AT_START, build_meta, checkpoint_meta, sized_for_data,
)
from cnnlab.threads import GOVERNOR, run_threads, threads_text, tick
from cnnlab.train import distributed as dist_utils
from cnnlab.train.between_runs import held_signal

if TYPE_CHECKING:
    from cnnlab.config import AugConfig
    from cnnlab.data import ChannelStats, DataSet
    from cnnlab.data.stats import Normalization
    from cnnlab.train.budget import BudgetFit
    from cnnlab.train.finetune import FineTunePlan
    from cnnlab.train.init_from import InitReport, InitSource
    from cnnlab.train.whiten import WhitenReport

# CHECKPOINT_LAST and CHECKPOINT_BEST are re-exported: cnnlab.tune.diagnose and tests import them from here.


CURVES_EVERY = 30.0  # seconds between redraws of a run's curves.png while it trains


class NonFiniteLossError(CnnlabError):
    """The loss became NaN or infinite: the learning rate is almost always too high."""


# The attribute a CnnlabError that stopped a run part-way after a checkpoint (a disk that filled up while the run
# wrote its metrics) carries: (the run folder, where last.safetensors stands, as describe_checkpoint takes it). The
# error itself is raised as it was (its type and traceback kept for callers of train()); `cnnlab train` adds how
# to resume from that checkpoint once the cause is mended.
KEPT_CHECKPOINT = "kept_checkpoint"


@dataclass
class TrainResult:
    run_dir: Path
    best_val_acc: float
    best_epoch: int
    final: dict  # the last metrics row
    interrupted: bool = False  # Ctrl-C ended the run before its last epoch
    # Interrupted: True when the run stopped cleanly at a step boundary and last.safetensors holds that
    # position; False when a second Ctrl-C stopped it at once, mid-step, and nothing new was saved.
    checkpoint_saved: bool = False
    # Where last.safetensors on disk stands, {"epoch": epochs done, "batch": batches done of the next
    # epoch, "step": optimiser steps} (describe_checkpoint words it); None when none was written.
    last_checkpoint: Optional[dict] = None
    # Ctrl-C came during the run, even when it came in the last step and the run still finished: a caller
    # running several runs (an experiment, the transfer ladder) stops after this one.
    stop_requested: bool = False
    # The signal that stopped the run (signal.SIGINT, signal.SIGTERM), or that came after its last step, when the
    # run ended complete: `cnnlab train` exits with 128 + it, as a shell reports a process that signal ended. None
    # when none came (a closed output stops a run too).
    stop_signal: Optional[int] = None
    # Why early stopping (train.early_stop_patience) ended the run before train.epochs; None when it did not.
    # Such a run is finished, not interrupted: report.txt is written and a resume trains nothing.
    stopped_early: Optional[str] = None


def describe_checkpoint(where: dict) -> str:
    """'end of epoch 2, step 12' for a checkpoint at an epoch's end, 'epoch 3, batch 4, step 16' within one."""
    if where["batch"] == 0:
        return f"end of epoch {where['epoch']}, step {where['step']}"
    return f"epoch {where['epoch'] + 1}, batch {where['batch']}, step {where['step']}"


# Why a run stops when its stdout is closed under it (cnnlab.train.logging.Progress.output_closed).
OUTPUT_CLOSED_MESSAGE = ("\nThe run's output was closed (the program reading it, such as tee or head, ended): stopping at "
                         "the end of this epoch, once its checkpoint is saved, as a Ctrl-C would.\n")
OUTPUT_CLOSED_STATUS = "its output was closed: the program reading it ended"  # status.json's message
# The same, when writing the output failed otherwise (OUTPUT_FAILED_MESSAGE.format(why="No space left on device"))
OUTPUT_FAILED_MESSAGE = ("\nThe run's output could not be written ({why}): stopping at the end of this epoch, once its "
                         "checkpoint is saved, as a Ctrl-C would.\n")
OUTPUT_FAILED_STATUS = "its output could not be written: {why}"
SIGTERM_STATUS = "SIGTERM: the process was asked to end"  # status.json's message of a run SIGTERM stopped


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: the first asks the loop to stop at the next step boundary,
    the second stops at once.

    A signal lands anywhere: inside forward (after BatchNorm has updated its running statistics and
    num_batches_tracked), inside backward, half-way through the optimiser or EMA update, in evaluation
    or in a checkpoint write. A KeyboardInterrupt raised there leaves the model part-way through a step
    while the saved position still says "before this batch", so a resumed run would count the batch
    twice. The handler therefore only records the request; the loop looks at it where the whole state
    describes one step and stops there, saving a checkpoint that resumes bit for bit.

    SIGTERM is what `kill PID`, `timeout`, `docker stop` and a cluster's pre-emption send: by default it ends
    the process at once, losing the steps since the last checkpoint, so it is taken over as Ctrl-C is.

    A second signal raises KeyboardInterrupt at once (a hung data loader, an impatient user): the state
    is then mid-step, so the loop saves nothing and the last checkpoint on disk stays the one to resume.
    So does any signal while ``at_once`` is set: in set-up, before the first step, there is no step to
    finish, and nothing of the run has been written yet.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    MESSAGES = {
        signal.SIGINT: ("\nCtrl-C: stopping at the end of this step to save a checkpoint there; press Ctrl-C again to "
                        "stop at once (then only the last checkpoint is kept).\n"),
        signal.SIGTERM: ("\nSIGTERM (the process was asked to end: kill, timeout, docker stop, a pre-emption): stopping "
                         "at the end of this step to save a checkpoint there; a second SIGTERM or Ctrl-C stops at once "
                         "(then only the last checkpoint is kept).\n"),
    }

    def __init__(self, announce: bool = True) -> None:
        global _received_signal
        _received_signal = None  # a new run: no signal has asked it to stop yet
        self.requested = False
        self.signum: Optional[int] = None  # the last signal received (it decides the exit code)
        self.at_once = False  # set-up: no step boundary to wait for
        self.stage: Optional[str] = None  # set-up: what is under way (SetupInterrupted); None once the run writes
        self._announce = announce  # DDP: only rank 0 prints, though every rank gets the signal
        self._previous: dict[int, Any] = {}
        self._previous_unraisable: Optional[Callable[[Any], None]] = None  # sys.unraisablehook before install

    def install(self) -> None:
        """Take over SIGINT and SIGTERM until :meth:`restore`. Only the main thread may set signal handlers
        (others keep Python's behaviour). A SIGINT the parent process set to be ignored or to kill (not a Python
        callable) is left as it is; SIGTERM is taken over from its default (ending the process) or a Python
        handler, and left alone when ignored (nohup) or set outside Python."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous) or (signum == signal.SIGTERM and previous == signal.SIG_DFL):
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        if self._previous_unraisable is None:
            self._previous_unraisable = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if self._previous_unraisable is not None:
            sys.unraisablehook, self._previous_unraisable = self._previous_unraisable, None

    def _unraisable(self, unraisable) -> None:
        """Python's report of an exception it had to drop: a stop's KeyboardInterrupt raised inside a weakref
        callback or a __del__ is recorded (:meth:`_handle`) and said when the run stops, so no traceback of it;
        anything else goes to the hook there was before."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.requested:
            return
        self._previous_unraisable(unraisable)

    def _handle(self, signum, frame) -> None:
        global _received_signal
        self.signum = _received_signal = signum
        if self.requested or self.at_once:
            # Recorded first: raised inside a weakref callback or a __del__ (torch runs them while it builds the
            # model and the loaders), the KeyboardInterrupt is printed and dropped by Python, and the run then
            # stops at its first step boundary instead of training to the end
            self.requested = True
            raise KeyboardInterrupt
        self.request(self.MESSAGES[signum])

    def vote(self) -> torch.Tensor:
        """This process's stop vote, to add up over the DDP ranks: (2,) float64, [asked to stop, by SIGTERM]."""
        return torch.tensor([1.0 if self.requested else 0.0, 1.0 if self.signum == signal.SIGTERM else 0.0],
                            dtype=torch.float64)

    def count_votes(self, votes: torch.Tensor) -> bool:
        """Whether any rank asked to stop, from the ranks' summed :meth:`vote`. A rank that received no signal
        itself takes SIGTERM when another rank did (a signal sent to one process, such as `kill` of one rank), so
        that rank 0 says 'stopped by SIGTERM' and exits with 143, as the rank that received it would have."""
        if self.signum is None and votes[1].item() > 0:
            self.signum = signal.SIGTERM
        return votes[0].item() > 0

    def request(self, message: str) -> None:
        """Ask the loop to stop at the next boundary, as a first Ctrl-C does, saying why on stderr."""
        self.requested = True
        if self._announce:
            try:  # os.write, not print: the handler may run while the main code is inside a print to stderr
                os.write(2, message.encode())
            except OSError:
                pass


# The last signal a StopRequest received in this process. A command that runs several trainings (search,
# experiment, transfer) ends with a KeyboardInterrupt of its own after one stops; this tells it whether a
# SIGTERM or a Ctrl-C asked, for its exit code (received_signal).
_received_signal: Optional[int] = None


def received_signal() -> Optional[int]:
    """The signal (signal.SIGINT or signal.SIGTERM) that last asked a training run in this process to stop."""
    return _received_signal


def forget_received_signal() -> None:
    """A new command starts with no signal on record (cnnlab.cli.main), as a new run does (StopRequest)."""
    global _received_signal
    _received_signal = None


class ReportsInterrupted(KeyboardInterrupt):
    """A stop signal (``signum``; None for a KeyboardInterrupt raised otherwise) while a run that trained every
    epoch wrote its reports: the weights and metrics are all saved, report.txt is not written, and
    ``cnnlab train --resume`` writes the reports, training nothing again."""

    def __init__(self, signum: Optional[int]) -> None:
        super().__init__(signum)
        self.signum = signum


class SetupInterrupted(KeyboardInterrupt):
    """A stop signal during a run's set-up, before its first step: ``stage`` says what was under way; nothing
    was written to the run folder (a folder made for the run is removed again)."""

    def __init__(self, stage: str, signum: Optional[int]) -> None:
        super().__init__(stage)
        self.stage, self.signum = stage, signum


# ---------------------------------------------------------------------------------------------
# set-up: the one place a run's pieces are built (train, lr-find, check)


# train.precision's explicit values and the autocast dtype each trains in (None: no autocast, fp32).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype, or None for fp32. auto: bf16 on CUDA GPUs that have it, else fp16 on CUDA; on the CPU,
    bf16 where it has native bf16 units (:func:`cpu_has_bf16_units`), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else None
    if name == "fp16" and device.type != "cuda":
        raise CnnlabError("train.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32.")
    return AUTOCAST_DTYPES[name]


def cpu_has_bf16_units() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX), which is when train.precision=auto
    trains in bf16 there. bench/train_throughput.py --compare measured bf16 autocast at 1.35-1.43x fp32's
    speed on a 2-core AMD EPYC with AVX512-BF16, and at 0.09-0.11x on one without it (emulated)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)  # private in torch 2.x: a torch without them counts as no units
        if check is not None and check():
            return True
    return False


def muon_ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 for Muon's Newton-Schulz products where the hardware multiplies bf16 natively (CUDA GPUs that
    have it, CPUs with :func:`cpu_has_bf16_units`), else fp32: elsewhere the CPU emulates bf16 at a tenth
    of fp32's speed. On a 2-core AMD EPYC with AVX512-BF16 the orthogonalisation of the fast recipe's three
    Muon matrices took 6.2 ms per step in bf16 and 13.0 ms in fp32 (the 5-minute recipe's five: 10.0 and
    16.4 ms)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else torch.float32


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """'bf16', 'fp16' or 'fp32' for an autocast dtype from :func:`resolve_precision`."""
    return next(name for name, autocast_dtype in AUTOCAST_DTYPES.items() if autocast_dtype == dtype)


def autocast(device_type: str, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device_type`` ('cpu', 'cuda'); for fp32 (``dtype`` None) a disabled context."""
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_compile(name: str) -> bool:
    """Whether to torch.compile the model. auto: eager on every device, because compiling lost more often
    than it won wherever it was measured (bench/train_throughput.py --compare; docs/speed.md). On the CPU
    (2-core AMD EPYCs) inductor trained the Fashion-MNIST recipe's model at 0.77-1.00x eager speed and
    resnet8 at 1.00-1.25x, after 17-46 s of compiling. On an NVIDIA H200, in the precision auto picks there
    (bf16), compiled training ran 0.64-1.01x as fast as eager for the recipe's model and resnet8, 1.11x for
    resnet18 at 64 px and 0.76x for resnet50 at 224 px, after 6-48 s of compiling. ``on`` compiles anyway."""
    if name == "auto":
        return False
    if name in ("on", "off", True, False):  # the Python API may still pass the booleans the key used to take
        return name in ("on", True)
    raise CnnlabError(f"train.compile={name!r} is not allowed: choose one of auto, on, off.")


def resolve_fused_norm_act(name: str, device: torch.device, dtype: Optional[torch.dtype], channels_last: bool,
                           model: torch.nn.Module, compiled: bool = False,
                           in_eval: frozenset[int] = frozenset()) -> tuple[bool, Optional[str]]:
    """(whether training runs BatchNorm + ReLU as one kernel, a note or None), for train.fused_norm_act.

    The kernel (cnnlab/layers/fused.py) takes fp32 and bf16 channels_last maps on the CPU, so it applies where
    the device is the CPU, the run trains in fp32 or bf16, train.channels_last is on, the model is not compiled
    (a compiled graph runs inductor's kernels) and has BatchNorm2d -> ReLU pairs. auto uses it there, and builds
    it first if this machine has not (a note gives the seconds); where it cannot be built, auto trains with
    torch's kernels and says why. ``on`` refuses a run it cannot apply to. ``in_eval``: the ids of the BatchNorm
    layers that train.bn_eval keeps in eval mode (:func:`eval_mode_norms`), whose pairs never run fused."""
    if name in ("off", False):
        return False, None
    if name not in ("auto", "on", True):
        raise CnnlabError(f"train.fused_norm_act={name!r} is not allowed: choose one of auto, on, off.")
    pairs = fused.fusable_pairs(model, in_eval)
    missing = [why for why, lacking in (
        (f"the device is the CPU (this run trains on {device})", device.type != "cpu"),
        (f"the run trains in fp32 or bf16 (it trains in {precision_name(dtype)})", dtype not in (None, torch.bfloat16)),
        ("train.channels_last is on", not channels_last),
        ("train.compile is off (a compiled model runs inductor's kernels)", compiled),
        ("the model has a BatchNorm2d with its scale and shift (affine, with a bias) followed by an nn.ReLU, in "
         "training mode (it has no such pair" + (", or train.bn_eval keeps each in eval mode" if in_eval else "")
         + ")", pairs == 0),
    ) if lacking]
    if missing:
        if name == "auto":
            return False, None
        raise CnnlabError(f"train.fused_norm_act=on needs {' and '.join(missing)}: its kernel trains fp32 and bf16 "
                          "channels_last maps on the CPU. Set train.fused_norm_act=auto to use it only where it "
                          "applies, or off.")
    try:
        _, seconds = fused.load()
    except fused.FusedKernelUnavailable as err:
        if name == "auto":
            return False, (f"train.fused_norm_act=auto: the fused BatchNorm + ReLU kernel could not be built here "
                           f"({err}); training runs torch's separate kernels. Set train.fused_norm_act=off to skip "
                           "the attempt.")
        raise CnnlabError(f"train.fused_norm_act=on: the fused BatchNorm + ReLU kernel could not be built here "
                          f"({err}). It needs a C++ compiler and ninja; set train.fused_norm_act=auto or off to "
                          "train with torch's kernels.") from None
    built = f"; built in {seconds:.0f} s, once for this machine" if seconds > 5 else ""
    return True, f"BatchNorm + ReLU run as one CPU kernel in training ({counted(pairs, 'pair')}{built})"


def choose_cudnn_algorithms(device: torch.device, deterministic: bool) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (cudnn.benchmark), as fast GPU training does. A run has few shapes (the batch size, validation's last
    shorter batch, and one per aspect bucket of folder data), so the timing is paid a few times. A
    deterministic run keeps cuDNN's fixed choice (:func:`seed_everything`); the CPU has nothing to choose."""
    if device.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True


CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"  # read by cuBLAS when torch creates its handle


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; choose deterministic kernels or not. Set both ways, so that a
    deterministic run does not leave them on for the next run in the same process; the caller's own choice is
    back when the run ends (:func:`keeps_deterministic_setting`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")  # cuBLAS's deterministic workspace (CUDA >= 10.2)


@contextmanager
def keeps_deterministic_setting() -> Iterator[None]:
    """torch's deterministic-kernels switch (with its warn_only), cudnn.benchmark and the cuBLAS workspace
    variable as the caller had them, once the block ends: a run sets them for itself (:func:`seed_everything`),
    and a program that turned deterministic kernels on found them off after ``train()`` (the variable, left set,
    reached the processes the program started later). Used as a decorator of the entry points."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    workspace = os.environ.get(CUBLAS_WORKSPACE)

    def restore() -> None:
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != (deterministic, warn_only):
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)

    try:
        yield
    except BaseException:
        # A stop signal that landed inside torch's first use_deterministic_algorithms call (it imports
        # torch._inductor, about a second) leaves that import half done, and the call fails again here: the
        # stop, not that failure, is what the caller must see.
        try:
            restore()
        except Exception:
            pass
        raise
    restore()


def check_run_folder(run_dir: Path, bytes_needed: int, resume: bool = False) -> None:
    """Fail before training when the run folder cannot be written or the disk is too full; create it."""
    from cnnlab.io import check_output_folder

    check_output_folder(run_dir, "The run folder", bytes_needed=bytes_needed, create=True,
                        instead=_resume_folder_advice(run_dir) if resume else "")


def _resume_folder_advice(run_dir: Path) -> str:
    """The way on when a resumed run's folder cannot be written: that folder (or a copy), as a resume writes there."""
    from cnnlab.errors import shell_word

    return (f"A resumed run writes in its own folder: make it writable (chmod -R u+w {shell_word(run_dir)}), or copy "
            "the run to a folder you can write to and resume the copy.")


def refuse_other_channels(config: RunConfig) -> None:
    """Refuse a data.channels other than the model spec's in_chans: the data follows the model's channels
    (:func:`build_run`), so the run would train on in_chans channels and record a data.channels it did not use."""
    given = config.model.options.get("in_chans")
    if given is not None and config.data.channels is not None and given != config.data.channels:
        raise CnnlabError(f"data.channels={config.data.channels} and the model's in_chans={given} disagree: the "
                          f"model reads {counted(given, 'channel')} a pixel, and the data is converted to what it "
                          "reads. Give one of them (the data follows in_chans when data.channels is left out), or "
                          "the same number to both.")


def build_run(config: RunConfig, device: torch.device, source: Optional[InitSource] = None):
    """Data, statistics, model (on ``device``) and resolved augmentation for a config: (dataset, stats, model, aug).

    The model's initial weights are the first random numbers drawn after the caller seeds; the
    augmentation is the preset expanded for the data's image size, channels and mirror safety. With
    the weights of a cnnlab run to start from (``source``), the images are resized to that run's
    image size unless data.image_size says otherwise: preprocessing follows the weights.
    """
    from cnnlab.data import dataset_stats, load_source, resolve_aug
    from cnnlab.data.transforms import unused_aug_settings
    from cnnlab.models import check_input_size
    from cnnlab.run import build_model, check_run_classes

    data_config = config.data
    if source is not None and data_config.image_size is None and source.image_size is not None:
        data_config = replace(data_config, image_size=source.image_size)
    dataset = load_source(data_config)
    check_run_classes(config.model, dataset.num_classes, data_config.spec)  # before the statistics' pass
    stats, _ = dataset_stats(dataset)
    in_chans = config.model.options.get("in_chans", dataset.channels)
    if in_chans != dataset.channels:  # the model asks for other channels: the data follows the model
        dataset = load_source(replace(data_config, channels=in_chans))
        stats, _ = dataset_stats(dataset)
    model = build_model(sized_for_data(config.model, dataset.image_size), num_classes=dataset.num_classes,
                        in_chans=in_chans)
    # the data's size is the one to change: train takes no --input
    check_input_size(model, (in_chans, dataset.image_size, dataset.image_size), config.model.name,
                     larger="resize the images to a larger data.image_size (--set data.image_size=N)")
    aug = resolve_aug(config.aug, dataset.image_size, dataset.channels, dataset.hflip_safe)
    # announced with the data's notes
    dataset.notices += unused_aug_settings(config.aug, aug, dataset.channels, dataset.hflip_safe, dataset.image_size)
    return dataset, stats, model.to(device), aug


@dataclass(frozen=True)
class StepSettings:
    """How :func:`train_step` computes and applies a step, besides the model, the batch and the optimiser."""

    device_type: str  # 'cpu' or 'cuda': where autocast applies
    autocast_dtype: Optional[torch.dtype]  # bf16/fp16 under autocast; None: fp32
    smoothing: float  # label smoothing of the loss: the run's resolved aug.label_smoothing
    aux_weight: float  # weight of GoogLeNet's auxiliary losses (train.aux_weight)
    grad_clip: float  # max global L2 norm of the gradients (optim.grad_clip); 0 = no clipping


@dataclass
class RunSetup:
    """The pieces of one run, built from a RunConfig by :func:`setup_run` (engine, lr-find and check)."""

    config: RunConfig  # as given, with the augmentation and preprocessing resolved: what the run records
    device: torch.device
    autocast_dtype: Optional[torch.dtype]  # None: fp32
    dataset: DataSet
    stats: ChannelStats  # the training split's per-channel mean/std (and colour PCA)
    model: torch.nn.Module  # on device, in the configured memory format (SyncBatchNorm under DDP when asked)
    optimizer: torch.optim.Optimizer  # every group has 'peak_lr'; the caller sets group['lr'] each step
    scaler: torch.amp.GradScaler  # loss scaling for fp16; does nothing otherwise
    step_settings: StepSettings
    plan: FineTunePlan  # which stages train in which epoch, BatchNorm modes (model.freeze, probe_epochs, bn_eval)
    normalization: Normalization  # the mean/std the images are normalised with, and why
    init_report: Optional[InitReport] = None  # what model.init_from loaded; None for a fresh model or a resume
    whiten_report: Optional[WhitenReport] = None  # what model.whiten set; None when it is 'none'
    train_loader: Any = None  # augmented and shuffled; None when built with loaders=False
    val_loader: Any = None  # unaugmented, in order; None when built with loaders=False or validation=False

    def train_mode(self, epoch: Optional[int] = None) -> None:
        """Put the model in training mode for 0-based ``epoch`` (default: the fine-tuning phase): the stages
        that train then get gradients, BatchNorm layers run as train.bn_eval asks, and the stages that do not
        train run their dropout and stochastic depth off (:meth:`FineTunePlan.apply`)."""
        self.plan.apply(self.model, self.plan.probe_epochs if epoch is None else epoch)

    @property
    def build(self) -> dict:
        """Which network this is (model, num_classes, in_chans): what a checkpoint to resume must match."""
        return build_meta(self.config.model.name, self.dataset.num_classes, self.model.in_chans)

    def weights_meta(self, **where) -> dict:
        """The ``meta`` of a checkpoint or snapshot of this run: the network, its preprocessing (classes,
        image size, mean, std) and the resolved config, plus ``where`` (epoch, step, batch, best, partial)."""
        return checkpoint_meta(self.build, classes=self.dataset.classes, image_size=self.dataset.image_size,
                               mean=self.stats.mean, std=self.stats.std, config=self.config, **where)


def setup_run(config: RunConfig, device=None, *, loaders: bool = True, validation: bool = True,
              deterministic: Optional[bool] = None, sync_bn: bool = False, load_init: bool = True) -> RunSetup:
    """Build a run's pieces from ``config``: the one set-up that training, lr-find and check share.

    In this order, which fixes the random numbers: check the config, pick the device (``device``: a
    name or torch.device; default ``train.device``), seed (deterministic kernels as
    ``deterministic`` says; default ``train.deterministic``; otherwise cuDNN times its algorithms on
    CUDA), pick the autocast dtype, read the weights to start from (model.init_from), load the data
    and its statistics, build the model (its initial weights: the first draws after the seed) and
    load those weights into it, resolve the normalisation and expand the augmentation preset
    (:attr:`RunSetup.config` records both), then with
    ``loaders`` the training loader and, with ``validation`` too, the validation loader, then memory
    format, SyncBatchNorm (``sync_bn``, DDP on GPUs), the fine-tuning plan (frozen stages), optimiser
    (per-stage rates) and loss scaler.

    ``load_init=False`` skips model.init_from (a resumed run: its checkpoint holds the weights, and its
    recorded config the preprocessing the source gave, so the source need not exist any more) and
    model.whiten's pass over the training images (the checkpoint holds the filters).
    """
    from cnnlab.data.loaders import make_loader
    from cnnlab.data.stats import resolve_normalization, with_normalization
    from cnnlab.models.stages import set_requires_grad
    from cnnlab.train.finetune import fine_tune_plan, parameter_lr_scales
    from cnnlab.train.init_from import architecture_notes, architecture_remedy, init_model_from, read_init_source
    from cnnlab.train.optim import build_optimizer
    from cnnlab.train.whiten import resumed_whiten_report, whiten_first_conv, whitening_images

    validate_config(config)
    t = config.train
    # the messages name what gave the device: the config's key, or the caller's argument
    device = resolve_device(t.device) if device is None else resolve_device(device, "device")
    keep_on_cpu(device)  # no fresh pages, and no page faults, at every step (cnnlab/heap.py)
    deterministic = t.deterministic if deterministic is None else deterministic
    seed_everything(t.seed, deterministic)
    choose_cudnn_algorithms(device, deterministic)
    autocast_dtype = resolve_precision(t.precision, device)
    if load_init:  # a resumed run (load_init=False) trained as recorded, before this was refused
        refuse_other_channels(config)
    source = (read_init_source(config.model.init_from, config.model.name, ema=config.model.init_ema)
              if config.model.init_from and load_init else None)
    dataset, stats, model, aug = build_run(config, device, source)
    # Class names that differ from the source's keep the classifier fresh even at the same class count, and
    # model.new_head keeps it fresh whatever the classes.
    init_report = None
    if source is not None:
        # said once the weights have loaded: "they load, but run in another network"; when they do not fit,
        # the key that builds the network they were trained in is the remedy, so the refusal names it
        notes = architecture_notes(source, config.model)
        try:
            init_report = init_model_from(model, source, config.model.name, classes=dataset.classes,
                                          new_head=config.model.new_head)
        except CnnlabError as err:
            remedy = architecture_remedy(source, config.model)
            if not remedy:
                raise
            raise CnnlabError(f"{err} {remedy}") from None
        for note in notes:
            notice(note)
    normalization = resolve_normalization(config.data, stats, dataset.channels,
                                          source_mean=source.mean if source else None,
                                          source_std=source.std if source else None,
                                          source_label=source.label if source else "")
    stats = with_normalization(stats, normalization)  # the loaders' mean/std; the colour PCA kept
    # model.whiten: the first conv's filters from the (normalised) training images, before anything trains.
    # It draws from its own seeded generator, so the random numbers after it are those of a run without it.
    whiten_report = None
    if config.model.whiten != "none":
        if load_init:
            whiten_report = whiten_first_conv(model, whitening_images(dataset, stats, t.seed), config.model.whiten,
                                               seed=t.seed)
        else:  # resumed: the checkpoint holds the filters, so no image is read
            whiten_report = resumed_whiten_report(model, config.model.whiten)
    config = replace(config, aug=aug, data=_resolved_data(config, dataset, source, normalization),
                     model=sized_for_data(config.model, dataset.image_size))
    train_loader = val_loader = None
    if loaders:
        loader_args = dict(batch_size=t.batch_size, device=device, seed=t.seed, num_workers=t.num_workers,
                           channels_last=t.channels_last)
        train_loader = make_loader(dataset, "train", stats, train=True, aug=aug, **loader_args)
        if validation:
            val_loader = make_loader(dataset, "val", stats, train=False, **loader_args)
        if len(train_loader) == 0:
            raise CnnlabError(f"The training split has {len(dataset.train)} images, fewer than one batch of "
                              f"{t.batch_size}: lower train.batch_size.")
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # model.freeze: no gradient and no optimiser state, for the whole run. The stages the head-only phase
    # (train.probe_epochs) holds back are in the optimiser; they only lack gradients until the switch.
    plan = fine_tune_plan(model, config, fixed=whiten_report.fixed_parameters if whiten_report else ())
    if train_loader is not None:
        problem = one_image_batch_norm(model, plan, train_loader, dataset.image_size, t.batch_size)
        if problem:
            raise CnnlabError(problem)
    set_requires_grad(model, plan.frozen, False)
    plan.fix_parameters(model)
    optimizer = build_optimizer(model, config.optim, t.images_per_step, parameter_lr_scales(model, plan, config),
                                ns_dtype=muon_ns_dtype(device))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    settings = StepSettings(device_type=device.type, autocast_dtype=autocast_dtype, smoothing=aug.label_smoothing,
                            aux_weight=t.aux_weight, grad_clip=config.optim.grad_clip)
    return RunSetup(config=config, device=device, autocast_dtype=autocast_dtype, dataset=dataset, stats=stats,
                    model=model, optimizer=optimizer, scaler=scaler, step_settings=settings, plan=plan,
                    normalization=normalization, init_report=init_report, whiten_report=whiten_report,
                    train_loader=train_loader, val_loader=val_loader)


def eval_mode_norms(model: torch.nn.Module, plan: FineTunePlan) -> frozenset[int]:
    """The ids of the modules that the fine-tuning phase's train.bn_eval keeps in eval mode (the modules of its
    eval-mode stages; the head-only phase keeps at least those)."""
    return frozenset(id(module) for stage in plan.eval_bn_stages(plan.probe_epochs) for name in plan.modules[stage]
                     for module in model.get_submodule(name).modules())


def one_image_batch_norm(model: torch.nn.Module, plan: FineTunePlan, train_loader, image_size: int,
                         batch_size: int) -> Optional[str]:
    """Why the run cannot train when a training batch of one image reaches a BatchNorm layer in training mode as
    one value per channel (a 1x1 map, or a flat (1, C) input); None when no batch has one image, or no such layer
    gets one.

    BatchNorm in training mode normalises with the batch's mean and variance, which one value does not have, and
    torch refuses it part-way through the first such step: train.batch_size=1 with resnet18 at 32x32, or an
    aspect-ratio bucket that holds a single training image. Found with one forward pass of a batch of one
    image in eval mode (no statistics move, no random number is drawn), and only when a batch of one image can
    occur."""
    from cnnlab.models._base import eval_mode

    if getattr(train_loader, "smallest_batch", batch_size) != 1:
        return None
    # BatchNorm layers the fine-tuning phase keeps in eval mode (train.bn_eval) take any batch; the head-only
    # phase keeps at least those.
    kept = eval_mode_norms(model, plan)
    norms = {module: name for name, module in model.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and id(module) not in kept}
    if not norms:
        return None
    found: list[tuple[str, tuple]] = []

    def hook(module, args):
        shape = tuple(args[0].shape)
        if not found and math.prod(shape) == shape[1]:  # (1, C, 1, 1) or (1, C): one value per channel
            found.append((norms[module], shape))

    handles = [module.register_forward_pre_hook(hook) for module in norms]
    tensor = next(itertools.chain(model.parameters(), model.buffers()))
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros((1, model.in_chans, image_size, image_size), device=tensor.device, dtype=tensor.dtype))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    layer, shape = found[0]
    where = "x".join(str(v) for v in shape[2:]) + " map" if len(shape) > 2 else "flat input"
    if batch_size == 1:
        why, batches = "train.batch_size=1", "train with train.batch_size=2 or more"
    else:  # a bucket smaller than a batch gives its one short batch (cnnlab.data.buckets)
        why = "The batch of the aspect-ratio bucket that holds a single training image"
        batches = "give that bucket a second image (or leave its ratio out of data.buckets)"
    return (f"{why} gives the BatchNorm layer '{layer}' one value per channel (one image's {where}), and BatchNorm "
            "in training mode normalises with the batch's mean and variance, which one value does not have: torch "
            f"refuses it in the first such step. To fix it, {batches}, keep BatchNorm in evaluation mode "
            "(train.bn_eval=all), or give the model larger images (data.image_size).")


def _resolved_data(config: RunConfig, dataset: DataSet, source: Optional[InitSource],
                   normalization: Normalization):
    """The data config a run records: what the weights it started from decided, written out.

    The image size (the source's, unless data.image_size set one) and, when the run normalises as the
    source did, the source's mean/std become explicit values, so the run repeats and resumes with the
    same preprocessing without reading the source again.
    """
    if source is None:
        return config.data
    data = replace(config.data, image_size=dataset.image_size)
    if normalization.name == "source":
        data = replace(data, normalize="source", mean=[float(v) for v in normalization.mean],
                       std=[float(v) for v in normalization.std])
    return data


# ---------------------------------------------------------------------------------------------
# the step: the one place a training step is written (train, lr-find, check)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy for hard (B,) or soft (B, K) targets, with label smoothing (Szegedy et al. 2016)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: the labels, or the dominant class of mixed soft targets (B, K)."""
    return target.argmax(dim=1) if target.dim() == 2 else target


def training_loss(output, target: torch.Tensor, smoothing: float, aux_weight: float):
    """Loss and main logits; GoogLeNet's AuxLogits add aux_weight x each auxiliary loss."""
    from cnnlab.models import AuxLogits

    if isinstance(output, AuxLogits):
        loss = soft_cross_entropy(output.logits, target, smoothing)
        for aux in output.aux:
            loss = loss + aux_weight * soft_cross_entropy(aux, target, smoothing)
        return loss, output.logits
    return soft_cross_entropy(output, target, smoothing), output


@dataclass
class StepResult:
    """What :func:`train_step` computed, for the caller to read (and for its ``before_update`` hook)."""

    loss: torch.Tensor  # () the batch's training loss (smoothing, soft targets, auxiliary heads), fp32
    logits: torch.Tensor  # (B, K) the main head's logits
    target: torch.Tensor  # (B,) class indices or (B, K) soft targets (mixup/CutMix), as given
    # whether the backward pass and the optimiser step ran (False for a micro-batch that only accumulates)
    updated: bool = False


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, settings: StepSettings, *,
               before_update: Optional[Callable[[StepResult], bool]] = None, loss_weight: float = 1.0,
               zero_grad: bool = True, update: bool = True) -> StepResult:
    """One training step on the batch x (B, C, H, W), y (B,) or (B, K): forward, loss, backward, clip, step.

    Forward and loss run under autocast when ``settings`` says so; the backward pass goes through the
    GradScaler (it scales an fp16 loss so small gradients do not underflow, and skips a step whose
    gradients overflowed); clipping sees the unscaled gradients. The learning rate is the caller's:
    it sets group['lr'] before the call.

    ``before_update(result)`` is the named point between the loss and the backward pass: the engine
    adds the step's numbers up over the DDP ranks there and takes their stop vote. When it returns
    False the step ends there, without a backward pass or an update (``result.updated`` is False).

    ``loss_weight`` multiplies the loss the backward pass starts from (``result.loss`` stays the batch's
    mean): under DDP, this rank's share of the global batch (:func:`cnnlab.train.distributed.shard_training_batch`);
    with gradient accumulation, also 1 / the micro-batches of the optimiser step.

    Gradient accumulation (train.accum_steps) calls it once per micro-batch: ``zero_grad`` on the first of an
    optimiser step's micro-batches (the gradients of the step before are cleared), ``update`` on the last
    (clipping then sees the accumulated gradient, and the scaler unscales, steps and updates once per optimiser
    step). Between them the backward passes add up in ``.grad``. The defaults make a whole step of one batch.
    """
    tick()  # torch's CPU threads follow the cores other processes leave free (cnnlab.threads)
    with autocast(settings.device_type, settings.autocast_dtype):
        output = model(x)
        loss, logits = training_loss(output, y, settings.smoothing, settings.aux_weight)
    result = StepResult(loss=loss, logits=logits, target=y)
    if before_update is not None and not before_update(result):
        return result
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * loss_weight if loss_weight != 1.0 else loss).backward()
    if not update:  # a micro-batch before the optimiser step's last: its gradient waits in .grad for the others
        return result
    if settings.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    result.updated = True
    return result


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, info: Optional[dist_utils.DistInfo] = None) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over a loader (no smoothing), summed over DDP ranks.

    In fp32 whatever precision the run trains in: the scores are those of the weights as a checkpoint
    holds them, which ``cnnlab eval``, TTA and an export then reproduce; an epoch's evaluation costs
    little beside its training."""
    info = info or dist_utils.DistInfo()
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    for x, y in loader:
        tick()
        x, y = dist_utils.shard(x, info), dist_utils.shard(y, info)
        logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
        totals[1] += (logits.argmax(dim=1) == y).sum().item()
        totals[2] += len(y)
    model.train(was_training)
    totals = dist_utils.all_reduce_sum(totals, info, "the evaluation's sums")
    images = max(totals[2].item(), 1)
    return totals[0].item() / images, totals[1].item() / images


# ---------------------------------------------------------------------------------------------
# the run


def optimizer_steps(batches: int, accum_steps: int) -> int:
    """Optimiser steps in ``batches`` batches of an epoch with train.accum_steps micro-batches a step: the last,
    partial group of micro-batches steps too (ceil)."""
    return -(-batches // accum_steps)


def micro_batch_group(batch: int, batches: int, accum_steps: int) -> tuple[bool, bool, int]:
    """(first, last, size) of the optimiser step that 0-based ``batch`` of an epoch of ``batches`` belongs to:
    whether it is the step's first micro-batch (the gradients are cleared), its last (the optimiser steps), and
    how many micro-batches the step has (each loss is scaled by 1/size).

    Groups count from the epoch's first batch, so a resume at a step boundary lands on a group's start. An
    epoch whose batches do not divide by accum_steps ends with a smaller group, which still steps, its losses
    scaled by its own size: 10 batches with accum_steps=4 step after batches 4, 8 and 10, the last step on
    2 batches' mean loss.

    >>> micro_batch_group(8, 10, 4), micro_batch_group(9, 10, 4)
    ((True, False, 2), (False, True, 2))
    """
    start = batch - batch % accum_steps
    size = min(accum_steps, batches - start)
    return batch == start, batch == start + size - 1, size


@dataclass
class RunState:
    """Where a run stands: what a checkpoint records besides the weights, optimiser, EMA and RNG state.

    It always describes the last step boundary: a Ctrl-C saves exactly this, so --resume continues
    with the next batch, the epoch's running sums included.
    """

    epoch: int = 0  # epochs finished (while an epoch runs: its 0-based index)
    batch: int = 0  # batches of the running epoch finished
    step: int = 0  # optimiser steps taken
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": -1})  # best val accuracy, its 1-based epoch
    sums: Optional[list] = None  # the running epoch's [loss sum, correct, images] so far; None at an epoch's end
    seconds: float = 0.0  # the running epoch's training seconds so far (its row's epoch_seconds, across a resume)
    # Early stopping's reference: the val accuracy of the last epoch (1-based) that gained more than
    # train.early_stop_min_delta over the previous such epoch; the epochs since it are the epochs without a gain
    improved: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})

    @classmethod
    def from_meta(cls, meta: dict) -> RunState:
        """The state a checkpoint recorded (its RESUME_KEYS, and the partial sums of an interrupted epoch)."""
        best = meta[MetaKey.BEST]
        return cls(epoch=meta[MetaKey.EPOCH], batch=meta[MetaKey.BATCH], step=meta[MetaKey.STEP],
                   best=best, sums=meta.get(MetaKey.PARTIAL),
                   seconds=meta.get(MetaKey.PARTIAL_SECONDS) or 0.0,  # absent: written before it was recorded
                   # absent: written before early stopping existed, by a run without it; the best is its reference
                   improved=meta.get(MetaKey.IMPROVED) or {"val_acc": best["val_acc"], "epoch": max(best["epoch"], 0)})

    def where(self) -> dict:
        """{"epoch", "batch", "step"}: what TrainResult.last_checkpoint and describe_checkpoint use."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}

    def step_done(self, batch: int, sums: torch.Tensor, seconds: float) -> None:
        """Step ``batch`` (0-based) of the epoch finished; ``sums`` (3,) is the epoch's running total and
        ``seconds`` its training time so far."""
        self.step += 1
        self.batch = batch + 1
        self.sums = sums.tolist()
        self.seconds = seconds

    def epoch_done(self, val_acc: float, min_delta: float) -> None:
        """The running epoch ended with validation accuracy ``val_acc``: count it, and for early stopping
        whether it gained more than ``min_delta`` (train.early_stop_min_delta) over the last epoch that did."""
        self.epoch, self.batch, self.sums, self.seconds = self.epoch + 1, 0, None, 0.0
        if val_acc > self.improved["val_acc"] + min_delta:
            self.improved = {"val_acc": val_acc, "epoch": self.epoch}

    def epochs_without_gain(self, after: int = 0) -> int:
        """Epochs finished since the last that gained more than train.early_stop_min_delta (early stopping),
        counting none of the first ``after`` epochs (train.probe_epochs: the head-only phase)."""
        return max(0, self.epoch - max(self.improved["epoch"], after))

    def checkpoint_meta(self, run: RunSetup) -> dict:
        """The ``meta`` of a checkpoint at this state: enough to continue the run and to use its weights alone."""
        return run.weights_meta(epoch=self.epoch, batch=self.batch, step=self.step, best=self.best, partial=self.sums,
                                partial_seconds=self.seconds if self.sums is not None else None,
                                improved=self.improved, train_images=len(run.dataset.train))

    def snapshot_meta(self, run: RunSetup) -> dict:
        """The ``meta`` of a snapshot taken now (weights only): epoch is the 1-based epoch it was taken in."""
        return run.weights_meta(epoch=self.epoch + 1, step=self.step)


class StepTotals:
    """The engine's ``before_update`` for :func:`train_step`: the step's one sync point, between its loss
    and its backward pass.

    [loss sum, correct, images] of the step's global batch, added over the DDP ranks (identity with
    one process), followed by the stop vote (:meth:`StopRequest.vote`: how many ranks were asked to stop so
    far, by Ctrl-C or SIGTERM, and how many by SIGTERM). Every rank gets the
    same numbers, so a non-finite loss or a stop request stops all ranks together, at the same step (a
    rank leaving alone would leave the others waiting in the next collective). A request that lands
    after this vote (backward, optimiser, EMA update) is counted at the next step's vote.
    """

    def __init__(self, stop: StopRequest, info: dist_utils.DistInfo) -> None:
        self.stop, self.info = stop, info
        # This rank's images in the coming step, set by the loop before each one (None: all of the batch's).
        # A rank that borrowed a row to take part in the step (shard_training_batch) counts none.
        self.images: Optional[int] = None
        self.sums = torch.zeros(3, dtype=torch.float64)  # the last step's global [loss sum, correct, images]
        self.loss = math.nan  # the last step's mean loss over the global batch
        self.stop_requested = False  # some rank had a stop request when the last step voted

    def __call__(self, result: StepResult) -> bool:
        images = len(result.target) if self.images is None else self.images
        if images:
            # The loss sum and the correct count come to the host in one copy: on a GPU each copy waits for the
            # step's forward pass, and a second one would wait again. Both in float64, as Python floats would be.
            correct = (result.logits.argmax(dim=1) == hard_labels(result.target)).sum()
            counts = torch.stack([result.loss.detach().double() * images, correct.double()]).cpu()  # (2,)
            local = torch.cat([counts, torch.tensor([images], dtype=torch.float64)])  # (3,) [loss sum, correct, images]
        else:
            local = torch.zeros(3, dtype=torch.float64)
        vote = self.stop.vote()
        self.sums, votes = dist_utils.all_reduce_sum(torch.cat([local, vote]), self.info,
                                                     "the step's loss sums and stop vote").split([len(local), len(vote)])
        self.stop_requested = self.stop.count_votes(votes)
        self.loss = self.sums[0].item() / self.sums[2].item()
        return math.isfinite(self.loss)  # no update from a non-finite loss: the loop stops with NonFiniteLossError


def save_run_checkpoint(path: Path, run: RunSetup, state: RunState, ema, info: dist_utils.DistInfo) -> None:
    """Everything needed to continue at ``state``, written atomically by rank 0 (the other ranks write nothing)."""
    from cnnlab.train.checkpoint import save_checkpoint

    if info.is_main:
        save_checkpoint(path, model=run.model, optimizer=run.optimizer, ema=ema, meta=state.checkpoint_meta(run),
                        rng=True, scaler=run.scaler)


def load_run_state(folder: RunFolder, run: RunSetup, ema) -> RunState:
    """--resume: weights, optimiser, EMA, RNG and loss-scaler state from the folder's last checkpoint (which
    :func:`resumed_config` found); returns where it stands."""
    from cnnlab.train.checkpoint import RESUME_KEYS, load_checkpoint
    from cnnlab.train.finetune import groups_before_head_rates

    # A run an earlier cnnlab started may have other optimiser groups (the head's pretrained layers' rate):
    # named as such when refused. Counted before train_mode changes which parameters need gradients.
    earlier = groups_before_head_rates(run.model, run.plan, run.config)
    meta = load_checkpoint(folder.last, model=run.model, optimizer=run.optimizer, ema_model=ema, restore_rng=True,
                           expect=run.build, require=RESUME_KEYS, scaler=run.scaler, earlier_group_sizes=earlier)
    state = RunState.from_meta(meta)
    # A run that trained every epoch (or that early stopping ended) only writes its reports again: its data may
    # have changed since
    finished = state.epoch >= run.config.train.epochs or early_stop_text(state, run.config.train) is not None
    problem = changed_data_text(folder, run, state, meta) if not finished else None
    if problem:
        raise CnnlabError(problem)
    return state


def changed_data_text(folder: RunFolder, run: RunSetup, state: RunState, meta: dict) -> Optional[str]:
    """Why a resume cannot continue on the training data as it is now, or None when it can.

    A resume continues the run's schedule at its step, on the images it trained on. Training images added to
    or removed from a folder (or CSV) since the last checkpoint change the steps per epoch, which bends the
    learning-rate schedule part-way and moves where the interrupted epoch stands, and they change the
    validation hold-out, so that later epochs are scored on other images than the earlier ones. Seen from the
    checkpoint alone, so that checkpoints written before this check resume the same: its steps and epochs give
    the steps per epoch it trained with (an epoch's end: steps = epochs x steps per epoch), and its mean and
    std those of the images it normalised with (the dataset's statistics, unless data.mean set them). With
    train.accum_steps, steps are optimiser steps (a run stops part-way only at a step boundary, after a whole
    group of batches)."""
    accum_steps = run.config.train.accum_steps
    steps_per_epoch = optimizer_steps(len(run.train_loader), accum_steps)
    images = f"{len(run.dataset.train):,} training images in batches of {run.config.train.batch_size:,}"
    changes = []
    recorded_images = meta.get(MetaKey.TRAIN_IMAGES)  # None in a checkpoint written before it was recorded
    if recorded_images is not None and recorded_images != len(run.dataset.train):
        changes.append(f"it has {len(run.dataset.train):,} training images now, where the run trained on "
                       f"{recorded_images:,}")
    steps_this_epoch = optimizer_steps(state.batch, accum_steps)  # of the epoch a stop interrupted
    if state.epoch > 0 and state.step - steps_this_epoch != state.epoch * steps_per_epoch:
        trained = (state.step - steps_this_epoch) / state.epoch
        changes.append(f"its {images} now make {counted(steps_per_epoch, 'step')} an epoch, where the run took "
                       f"{trained:g} (its {CHECKPOINT_LAST} is at step {state.step:,} after {counted(state.epoch, 'epoch')})")
    elif state.batch > len(run.train_loader):
        changes.append(f"its {images} now make {counted(len(run.train_loader), 'batch', 'batches')} an epoch, where "
                       f"the run had taken {state.batch:,} in its first")
    recorded = {key: [float(v) for v in meta.get(key) or []] for key in (MetaKey.MEAN, MetaKey.STD)}
    now = {MetaKey.MEAN: [float(v) for v in run.stats.mean], MetaKey.STD: [float(v) for v in run.stats.std]}
    differing = [key for key in recorded if recorded[key] and (len(recorded[key]) != len(now[key]) or any(
        abs(a - b) > 1e-6 for a, b in zip(recorded[key], now[key])))]
    if differing:
        shown = "; ".join(f"{key} {[round(v, 4) for v in now[key]]} now, {[round(v, 4) for v in recorded[key]]} in the "
                          "checkpoint" for key in differing)
        changes.append(f"its training images now normalise with another {' and '.join(differing)} ({shown})")
    if not changes:
        return None
    return (f"The run in '{display_name(str(folder.path))}' cannot resume on its data as it is now: {'; and '.join(changes)}. The "
            f"training images changed since the run started ({display_name(str(run.config.data.spec))}). A resume continues the run's "
            "schedule at its step, on the images it trained and validated on. Put the data back as it was to resume, "
            f"or train the data as it is now into a new folder (cnnlab train --config "
            f"{shlex.quote(display_name(str(folder.config)))} --out NEW).")


def overlong_accumulation(t: TrainConfig, batches_per_epoch: int) -> Optional[str]:
    """Why train.accum_steps asks for more micro-batches a step than an epoch has, as a paragraph; None when it
    does not. Groups do not cross an epoch's end, so every step would add up only the epoch's batches: fewer
    images than the k x batch_size the run says a step sees, and than optim.lr_batch scales its rate by."""
    if t.accum_steps <= batches_per_epoch:
        return None
    return (f"train.accum_steps={t.accum_steps} asks for optimiser steps of {t.accum_steps} batches of "
            f"{t.batch_size:,}, but an epoch has only {counted(batches_per_epoch, 'batch', 'batches')}: a step does "
            f"not reach into the next epoch, so each would add up {batches_per_epoch:,} batches' gradients, not the "
            f"{t.accum_steps} x {t.batch_size:,} = {t.images_per_step:,} images a step is meant to see (and "
            f"optim.lr_batch scales the rate by). Set train.accum_steps to {max(batches_per_epoch, 1)} or less (one "
            "step an epoch), or a smaller train.batch_size.")


def unreachable_patience_note(t: TrainConfig) -> Optional[str]:
    """A note when train.early_stop_patience can never end a run of train.epochs early; None when it can (or is off).

    The first epoch always counts as a gain (and the head-only epochs of train.probe_epochs are not counted), so
    the earliest stop comes after epoch max(1, probe_epochs) + patience, which must come before the last epoch."""
    if not t.early_stop_patience:
        return None
    counted_from = max(1, t.probe_epochs)
    earliest = counted_from + t.early_stop_patience
    if earliest < t.epochs:
        return None
    start = (f"the {counted(t.probe_epochs, 'head-only epoch')} (train.probe_epochs) are not counted" if t.probe_epochs > 1
             else "the first epoch always counts as a gain")
    largest = t.epochs - counted_from - 1  # the largest patience that can stop it
    fix = (f"A patience of {largest} or less can stop it, or more epochs." if largest >= 1 else
           "No patience can stop a run this short: train more epochs for early stopping to act.")
    return (f"train.early_stop_patience={t.early_stop_patience} cannot end this run early: {start}, so the earliest "
            f"stop would come after epoch {earliest}, and the run ends after its {t.epochs} (train.epochs) anyway. "
            f"{fix}")


def early_stop_text(state: RunState, t: TrainConfig, swa_span: Optional[tuple[int, int]] = None,
                    snapshots_at: Sequence[int] = ()) -> Optional[str]:
    """Why early stopping ends the run at ``state`` (at an epoch's end), or None while it goes on: when
    train.early_stop_patience epochs in a row gained no more than train.early_stop_min_delta of validation
    accuracy over the last epoch that did. None once the run reached train.epochs: it then simply ends.

    ``swa_span``: (first step, steps) of train.swa_epochs' uniform average, which the run announced for the end
    of train.epochs; the text then says how much of it the run that stops here averaged (:func:`_swa_cut_text`).
    ``snapshots_at``: the steps train.snapshots saves a snapshot after; the text says how many the run took."""
    patience = t.early_stop_patience
    # The head-only epochs (train.probe_epochs) do not count: a head that stalls on the backbone's features would
    # otherwise end the run before the backbone trained, the phase the run is for. Their best still is the
    # reference the fine-tuning epochs must beat.
    stalled = state.epochs_without_gain(after=t.probe_epochs)
    if not patience or state.epoch >= t.epochs or stalled < patience:
        return None
    gain = (f"gained more than {t.early_stop_min_delta * 100:g} points (train.early_stop_min_delta="
            f"{t.early_stop_min_delta:g})" if t.early_stop_min_delta else "improved")
    improved = state.improved
    text = (f"stopped early after epoch {state.epoch} of {t.epochs}: the validation accuracy has not {gain} for "
            f"{counted(stalled, 'epoch')}{' after the head-only ones' if t.probe_epochs else ''} "
            f"(train.early_stop_patience={patience}), since "
            f"{improved['val_acc']:.2%} at epoch {improved['epoch']}; {CHECKPOINT_BEST} holds the best epoch, "
            f"{state.best['epoch']} ({state.best['val_acc']:.2%})")
    return text + _cut_short_text(state.step, t, swa_span, snapshots_at)


def _cut_short_text(step: int, t: TrainConfig, swa_span: Optional[tuple[int, int]],
                    snapshots_at: Sequence[int]) -> str:
    """What an early stop at optimiser step ``step`` cut short, as clauses to append ('' for nothing): the
    uniform average of train.swa_epochs (``swa_span``), the snapshots of train.snapshots (``snapshots_at``)."""
    text = ""
    if swa_span is not None:
        text += f"; {_swa_cut_text(step, swa_span, t.swa_epochs)}"
    if snapshots_at:
        text += f"; {_snapshot_cut_text(step, snapshots_at)}"
    return text


def _snapshot_cut_text(step: int, snapshots_at: Sequence[int]) -> str:
    """How many of the snapshots train.snapshots planned (after ``snapshots_at``) a run ended at ``step`` took."""
    taken = sum(1 for planned in snapshots_at if planned <= step)
    return f"it saved {taken} of its {counted(len(snapshots_at), 'snapshot')} (train.snapshots, one per cycle)"


def _swa_cut_text(step: int, swa_span: tuple[int, int], swa_epochs: float) -> str:
    """What the EMA weights hold in a run early stopping ended at optimiser step ``step``, when train.swa_epochs
    planned a uniform average of ``swa_span`` = (its first step, its steps) at the end of train.epochs."""
    first, steps = swa_span
    averaged = max(0, step - first + 1)
    if averaged == 0:
        return (f"the uniform average of train.swa_epochs={swa_epochs:g} never began (it starts at step {first:,}): "
                "the EMA weights are the ordinary EMA")
    return (f"the uniform average of train.swa_epochs={swa_epochs:g} holds {averaged:,} of its {steps:,} planned "
            f"steps (from step {first:,})")


def _early_stop_report_text(state: RunState, t: TrainConfig, swa_span: Optional[tuple[int, int]] = None,
                            snapshots_at: Sequence[int] = ()) -> str:
    """report.txt's 'stopped early' line for a run early stopping ended: :func:`early_stop_text` in brief."""
    gain = f"above {t.early_stop_min_delta * 100:g} points" if t.early_stop_min_delta else ""
    text = (f"after epoch {state.epoch} of {t.epochs}: no val acc gain{' ' + gain if gain else ''} in "
            f"{counted(state.epochs_without_gain(after=t.probe_epochs), 'epoch')} "
            f"(train.early_stop_patience={t.early_stop_patience})")
    return text + _cut_short_text(state.step, t, swa_span, snapshots_at)


def restore_best(folder: RunFolder, state: RunState) -> Optional[str]:
    """--resume: make best.safetensors the epoch the last checkpoint records as the best, when a stop between
    the two writes at an epoch's end (last first, then best) left it behind, or the file is missing or damaged;
    what was wrong with it, for a note ("was behind ..."), or None when nothing was copied.

    Only the last checkpoint of that epoch's end holds its weights (``state`` at batch 0 of the next
    epoch), and at that moment the two files are the same checkpoint, so the copy is what the write would
    have been. Anything else is left as it is: best already at that epoch, or last past it."""
    from cnnlab.io import atomic_path
    from cnnlab.train.checkpoint import read_checkpoint_meta

    if state.batch != 0 or state.best.get("epoch") != state.epoch:
        return None
    why = "was missing"
    if folder.best.is_file():
        try:
            if read_checkpoint_meta(folder.best).get(MetaKey.EPOCH) == state.epoch:
                return None
            why = (f"was behind {CHECKPOINT_LAST} (the run stopped between writing the two at the end of epoch "
                   f"{state.epoch}, its best so far)")
        except CnnlabError as err:  # a damaged best: replaced by the good copy below
            why = f"could not be read ({' '.join(str(err).split())})"
    with atomic_path(folder.best, "the best checkpoint") as tmp:
        shutil.copyfile(folder.last, tmp)
    return why


def _local_time() -> str:
    """Now, as status.json records it: ISO 8601 with the UTC offset, to the second."""
    import datetime

    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class RunStatus:
    """status.json: where the run stands (cnnlab.run.RUN_STATES), rewritten atomically at its start, after every
    epoch and when it stops, so `cnnlab runs` and `cnnlab report` can tell a running run from a stopped one.

    It also keeps the seconds the run has had at each CPU thread count (``threads_seconds``), its earlier parts'
    (read back on resume) and this process's since ``meter``, so that report.txt's threads line covers the
    whole run, as its speed does."""

    def __init__(self, folder: RunFolder, epochs: int, enabled: bool, meter, resume: bool = False):
        import socket

        self.path, self.epochs, self.enabled, self.meter = folder.status, epochs, enabled, meter
        self.host, self.pid, self.started = socket.gethostname(), os.getpid(), _local_time()
        self.threads_before = _threads_seconds_recorded(folder) if resume else {}
        # the seconds status.json holds, as report.txt's threads line gives them (set by write)
        self.threads_written: dict[int, float] = {}

    def threads_used(self) -> dict[int, float]:
        """Seconds at each thread count over the run's every part, most threads first."""
        used = dict(self.threads_before)
        for count, seconds in (GOVERNOR.threads_used(self.meter).items() if self.meter else ()):
            used[count] = used.get(count, 0.0) + seconds
        return dict(sorted(used.items(), reverse=True))

    def add_nothing(self) -> None:
        """This part trains nothing (a resume of a finished run): the threads it ran with are not the run's.
        Without an earlier record they are all there is, and stay."""
        if self.threads_before:
            self.meter = None

    def write(self, state: str, epoch: int, message: Optional[str] = None) -> None:
        from cnnlab.io import write_json_atomic

        if not self.enabled:
            return
        self.threads_written = {count: round(seconds, 3) for count, seconds in self.threads_used().items()}
        threads = {str(count): seconds for count, seconds in self.threads_written.items()}
        write_json_atomic(self.path, {"state": state, "pid": self.pid, "host": self.host, "started": self.started,
                                      "updated": _local_time(), "epoch": epoch, "epochs": self.epochs,
                                      "message": message, "threads_seconds": threads}, "the run status")

    def write_on_failure(self, state: str, epoch: int, message: str) -> None:
        """:meth:`write` while the run stops on an error: a status that cannot be written (the disk that filled
        up and failed the run) is a warning on stderr, so that the error raised stays the one that stopped it."""
        try:
            self.write(state, epoch, message)
        except CnnlabError as err:
            print(f"warning: {STATUS_FILE} could not record that the run {state}: {err}", file=sys.stderr)


def _threads_seconds_recorded(folder: RunFolder) -> dict[int, float]:
    """The earlier parts' seconds at each thread count, from status.json; none from a status written before it
    kept them, or one damaged (the threads line then covers this part only)."""
    import json

    try:
        recorded = json.loads(folder.status.read_text()).get("threads_seconds")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {int(count): float(seconds) for count, seconds in recorded.items()
            if str(count).isdigit() and int(count) > 0 and isinstance(seconds, (int, float)) and seconds >= 0}


def mark_run_state(folder: RunFolder, state: str, message: Optional[str] = None) -> None:
    """Rewrite the state in a run's status.json (``cnnlab search`` marks a trial its pruner stopped)."""
    import json

    from cnnlab.io import write_json_atomic

    status = json.loads(folder.status.read_text()) if folder.status.is_file() else {}
    status.update(state=state, message=message, updated=_local_time())
    write_json_atomic(folder.status, status, "the run status")


def environment_record(device: torch.device, compiled: bool = False, precision: str = "fp32",
                       processes: int = 1, fused_norm_act: bool = False) -> dict:
    """environment.json: the machine a run trained on (a report shows it beside the run's speed), whether
    the model ran compiled there and in which precision (train.compile and train.precision resolved for
    the device: auto chooses per machine), whether BatchNorm + ReLU ran as one kernel (train.fused_norm_act
    resolved), how many processes trained it (torchrun's DDP ranks), and the C heap's setting
    (cnnlab/heap.py: "kept" on the CPU unless the environment chose otherwise)."""
    import platform
    import sys

    import cnnlab
    from cnnlab.threads import cpu_name, process_cores

    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    return {"cpu": cpu_name(), "cores": len(process_cores()), "device": where, "torch": torch.__version__,
            "cnnlab": cnnlab.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "compiled": compiled, "precision": precision, "fused_norm_act": fused_norm_act, "processes": processes,
            "heap": heap_state() or "glibc's own"}


def write_machine_record(folder: RunFolder, record: dict, first_epoch: int, resume: bool,
                         first_step: Optional[int] = None) -> None:
    """Write environment.json: ``record`` (:func:`environment_record`) for the part of the run that starts at
    ``first_epoch`` (and optimiser step ``first_step``: a run stopped mid-epoch resumes there). A resumed run
    keeps the records of its earlier parts, oldest first, under ``earlier`` (each with its own ``first_epoch``;
    a record written before they were kept has none), so that a run stopped on one machine and finished on
    another names both."""
    import json

    from cnnlab.io import write_json_atomic

    record = {**record, "first_epoch": first_epoch, **({"first_step": first_step} if first_step else {})}
    if resume:
        try:
            before = json.loads(folder.environment.read_text())
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict) and before:
            earlier = before.pop("earlier", [])
            earlier = earlier if isinstance(earlier, list) else []
            # a part that stopped before its first optimiser step starts where this one does: it trained
            # nothing the run keeps, and this record replaces it (a part stopped mid-epoch kept its steps)
            same_start = (before.get("first_step") == first_step if "first_step" in before and first_step
                          else before.get("first_epoch") == first_epoch)
            record["earlier"] = earlier if same_start else [*earlier, before]
            if not record["earlier"]:
                del record["earlier"]
            # train.precision=auto chooses per machine: a run resumed on a CPU with other bf16 units mixes both.
            # Read as the page reads it: an entry or value a hand or a damaged file made other is no precision.
            trained_in = [part.get("precision") for part in record.get("earlier", []) if isinstance(part, dict)]
            before_part, now = (trained_in or [None])[-1], record.get("precision")
            if isinstance(before_part, str) and isinstance(now, str) and before_part != now and \
                    {before_part, now} <= set(AUTOCAST_DTYPES):
                notice(f"this part of the run trains in {now}, where its part before trained in {before_part} "
                       f"(train.precision=auto chooses per machine): its numbers come from both, and "
                       f"{ENVIRONMENT_FILE} records each part's.")
    write_json_atomic(folder.environment, record, "the record of the machine")


def refuse_held_folder(folder: RunFolder) -> None:
    """A new run refuses a folder that holds one, before the data is loaded or train.minutes times steps."""
    where = display_name(str(folder.path))  # printable, whatever bytes the folder's name holds
    if folder.last.exists() and not folder.is_run():
        # --resume needs the config.yaml that is gone: sending the user there would only bring them back here
        raise CnnlabError(f"'{where}' already holds a run's {CHECKPOINT_LAST} but not its {CONFIG_FILE}, so the "
                          f"run can be neither resumed nor replaced: put its {CONFIG_FILE} back (a copy) to continue "
                          f"it with --resume, move {CHECKPOINT_LAST} away to start a new run there, or choose another "
                          "--out.")
    if folder.last.exists():
        raise CnnlabError(f"'{where}' already holds a run. Continue it with --resume, or choose another --out.")
    _refuse_another_commands_folder(folder)
    _refuse_files_of_no_run(folder)


def _refuse_another_commands_folder(folder: RunFolder) -> None:
    """Refuse a `cnnlab search` folder or an experiment's as a new run's folder: the run's files would mix with
    the study's or the experiment's, and `cnnlab runs` would list the search folder as a run beside its trials."""
    from cnnlab.run import MADE_BY_TRAIN, folder_made_by

    made_by = folder_made_by(folder.path)
    if made_by is None or made_by[0] == MADE_BY_TRAIN:  # an earlier run's folder: _refuse_files_of_no_run's
        return
    raise CnnlabError(f"'{display_name(str(folder.path))}' is {made_by[1]}: a run trained there would mix its files "
                      "with what is there. Train into a new or empty folder (another --out).")


def _refuse_files_of_no_run(folder: RunFolder) -> None:
    """Refuse a folder holding files by the names a run writes (metrics.csv, report.txt, config.yaml, ...) when
    no cnnlab run wrote them: its config.yaml is missing or is not a run config. The new run would replace
    them, or remove them as an earlier run's (:func:`remove_earlier_run`): `--out .` in a project folder
    with a metrics.csv of its own would lose it.

    Where all of them are temporary copies of the run's own writes (:meth:`RunFolder.write_leftovers`: a run
    killed while it wrote its first file left ``.config.yaml.*.tmp``), no run's files are at stake: they are
    removed, named in a note, and the folder is trained into as an empty one."""
    import yaml

    from cnnlab.config import SECTIONS

    files, _ = folder.earlier_run_files()
    at_stake = [path for path in (*(folder.path / name for name in WRITTEN_AT_START), *files)
                if path.is_symlink() or path.exists()]
    if not at_stake:
        return
    why = f"it has no {CONFIG_FILE}"
    if folder.config.is_file():
        try:
            recorded = yaml.safe_load(folder.config.read_bytes())
        except (yaml.YAMLError, OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and recorded and all(key in SECTIONS for key in recorded):
            return  # an earlier run's: remove_earlier_run replaces what it left
        why = f"its {CONFIG_FILE} is not a cnnlab run config"
    leftovers = folder.write_leftovers()
    if all(path in leftovers for path in at_stake):
        _remove_write_leftovers(folder, at_stake)
        return
    names = ", ".join(str(path.relative_to(folder.path)) for path in at_stake[:8]) + (" ..." if len(at_stake) > 8 else "")
    raise CnnlabError(f"'{display_name(str(folder.path))}' holds {names}, which no cnnlab run wrote there ({why}), "
                      "and a new run would replace or remove files by these names. Train into a new or empty folder "
                      "(another --out), or move those files away first.")


def _remove_write_leftovers(folder: RunFolder, leftovers: list[Path]) -> None:
    """Remove the temporary copies that a run killed inside its first writes left in a folder with nothing else
    of a run's, naming them in a note."""
    where = display_name(str(folder.path))
    for path in leftovers:
        _remove_for_new_run(folder, path, "(a temporary copy that a run killed while writing it left)")
    notice(f"removed {', '.join(str(path.relative_to(folder.path)) for path in leftovers)} from '{where}': "
           "what a run killed while writing its files there left (temporary copies; the folder held nothing else of "
           "a run's)")


def _remove_for_new_run(folder: RunFolder, path: Path, what: str) -> None:
    """Remove ``path`` (a file, or the temporary folder a killed checkpoint write left) that a new run in
    ``folder`` must not leave behind; one that cannot be removed is a CnnlabError, before the run writes there.
    ``what``: why it is there, for the message."""
    from cnnlab.io import remove_leftover

    try:
        remove_leftover(path)
    except OSError as err:
        raise CnnlabError(
            f"'{display_name(str(folder.path))}' holds {path.relative_to(folder.path)} {what}, which a new run there "
            f"must remove, but it cannot be removed: {err.strerror or err}. Remove it yourself, or train into "
            "another --out.") from None


def remove_earlier_run(folder: RunFolder, keep: tuple[str, ...] = ()) -> list[str]:
    """A new run's folder without last.safetensors: remove what an earlier run, and the commands run on it, left
    there that this run does not replace as it starts (:meth:`RunFolder.earlier_run_files`: its weights, logs,
    reports, evals, exports, TensorBoard events and the ensemble results saved there); returns what went, as
    names relative to the folder (``eval-test-none/`` for an eval folder removed whole).

    Readers take them as this run's: ``cnnlab eval`` reads best first, an ensemble of the snapshots every
    snapshot-K, ``cnnlab runs`` and the run's page metrics.csv, report.txt and the evals, the page init.json
    and the ensemble results (whatever their names), and this run replaces each only as it reaches it, if it
    does. ``keep``: the names this run writes at its
    start anyway (init.json with model.init_from, budget.json with train.minutes). Without last.safetensors no
    resume can continue the earlier run, and a resume needs no other file: a folder that has it is left as it
    is (:func:`refuse_held_folder` refuses it anyway). Files not named by cnnlab (a user's notes) are left,
    and so is a subfolder that still holds any. A file that cannot be removed is a CnnlabError before this
    run writes anything there."""
    if folder.last.exists():
        return []
    files, folders = folder.earlier_run_files(keep)
    for path in files:
        _remove_for_new_run(folder, path, "from an earlier run (later commands would read it as the new run's)")
    emptied = set()
    for path in folders:
        try:
            path.rmdir()
            emptied.add(path)
        except OSError:
            pass  # it holds files that are not cnnlab's: the folder stays with them
    names = [f"{path.name}/" for path in folders if path in emptied]
    names += [str(path.relative_to(folder.path)) for path in files if path.parent not in emptied]
    return names


def start_run_folder(folder: RunFolder, run: RunSetup, fit: Optional[BudgetFit] = None) -> None:
    """A new run (its folder checked by :func:`refuse_held_folder`): remove what an earlier run left there
    (:func:`remove_earlier_run`, named in a note), record the resolved config, the model summary, the weights
    the run starts from (model.init_from) and the timing of train.minutes (``fit``)."""
    from cnnlab.io import write_json_atomic

    keep = ((INIT_FILE,) if run.init_report is not None else ()) + ((BUDGET_FILE,) if fit is not None else ())
    removed = remove_earlier_run(folder, keep)
    if removed:
        notice(f"removed {', '.join(removed)} from '{display_name(str(folder.path))}': an earlier run left them there "
               f"without a {CHECKPOINT_LAST} to resume, and later commands (eval, ensemble, runs, report) would read them as "
               "this run's")
    save_config(run.config, folder.config)
    _write_summary(run.model, run.dataset, folder.summary)
    if run.init_report is not None:
        write_json_atomic(folder.init, run.init_report.to_dict(), "the record of the weights the run started from")
    if fit is not None:
        write_json_atomic(folder.budget, fit.record(), "the record of train.minutes' timing")


@keeps_deterministic_setting()
def train(config: RunConfig, out: str | Path, *, resume: bool = False, console=None,
          on_epoch_end: Optional[Callable[[dict], None]] = None,
          before_report: Optional[Callable[[Path], None]] = None) -> TrainResult:
    """Train ``config`` into the run folder ``out`` (or continue it with ``resume``). Under torchrun every rank
    trains into rank 0's ``out``, which rank 0 writes and the result's ``run_dir`` names on every rank.

    ``on_epoch_end(row)`` is called with every epoch's metrics row after its checkpoint is saved
    (``cnnlab search`` reports to Optuna and prunes there; an exception it raises ends the run).
    ``before_report(run_dir)`` is called once a run has trained its every epoch, before report.txt is
    written and printed: what it writes into the run folder is in the report's list of files (``cnnlab
    train`` writes diagnosis.txt and report.html there). Under torchrun only rank 0 calls it.

    Ctrl-C (SIGINT) or SIGTERM, on the main thread, stops the run at the next step boundary and saves a
    checkpoint there; a second one stops it at once and saves nothing. The result says which
    (``interrupted``, ``checkpoint_saved``), where ``last.safetensors`` stands (``last_checkpoint``) and
    which signal it was (``stop_signal``). One during set-up, before the run folder is written, raises
    :class:`SetupInterrupted` (a KeyboardInterrupt) naming what was under way.

    A NaN or inf training loss raises :class:`NonFiniteLossError` (why, and which checkpoint is on disk) once
    status.json says diverged and curves.png holds the epochs and steps done; no report.txt is written.

    CPU threads: ``train.threads`` fixes them for the run (a count above the cores this process may use gets
    a note on stderr; one above what the operating system can start is refused), and ``train.deterministic``
    or a compiled model (``train.compile``) keeps torch's own count; otherwise they follow the cores other
    processes leave free (:mod:`cnnlab.threads`), and report.txt says how many ran.

    With ``resume``, ``config`` must be the one the run folder's config.yaml records
    (``RunFolder(out).read_config()``, as ``cnnlab train --resume`` passes): :func:`resumed_config`.

    Global state: the run seeds Python's, numpy's and torch's global random generators from ``train.seed`` (as
    Lightning's ``seed_everything`` does) and leaves them where the run left them; torch's deterministic-kernels
    switch and its thread count are as they were when it returns.
    """
    from cnnlab.errors import check_path_argument
    from cnnlab.io import check_out_is_named, hold_folder

    out = check_path_argument(out, "out", "the run folder")
    if not resume:  # a run in the current folder is resumed there (--resume .), but not started there
        check_out_is_named(out, "the run's files", "Name a folder for the run.", name="out")
    # Checked before any field is read: the device, compile and thread settings are used below, before
    # setup_run's own check, and a config built in Python (train.threads="2", a section given as a dict)
    # would fail there as an internal error instead of naming the key.
    validate_config(config)
    # Ctrl-C and SIGTERM from here on: in set-up (stop.stage names it) they stop at once, with nothing of the
    # run written (a SetupInterrupted says what was under way); from the run folder's first write on, at the
    # next step boundary. Restored when the loop ends, or here when set-up fails.
    # torch's first use_deterministic_algorithms call (seed_everything's) imports torch._inductor, about a second:
    # done before the stop handler, so that a Ctrl-C cannot land inside that import and leave it half done
    import torch._inductor.config  # noqa: F401

    stop = StopRequest(announce=dist_utils.is_main_process())
    stop.at_once, stop.stage = True, "checking the run folder"
    stop.install()
    try:
        held = held_signal()
        if held is not None:  # it came between the runs of a command that trains several: the next one does not start
            stop.stage = "waiting for the next run to start"
            stop._handle(held, None)  # as if it came now, in set-up: SetupInterrupted, nothing written
        # One writer per run folder: a second train (or a resume) of a run that is still going is refused
        # before it reads anything there. Under torchrun rank 0 writes, and holds the folder.
        advice = _resume_folder_advice(Path(out)) if resume else ""
        with (hold_folder(RunFolder(out).lock, "a training run", "The run folder", advice)
              if dist_utils.is_main_process() else nullcontext()):
            if resume:
                config = resumed_config(config, RunFolder(out))
            else:
                # Relative paths are recorded as the absolute ones they led to here (and as typed), so that every
                # later reader of the run (eval, ensemble, report, a resume) reads these files from any folder
                config = record_paths(config)
            t = config.train
            device = resolve_device(t.device)
            compile_model = resolve_compile(t.compile)  # what train.compile (auto by default) came to here
            # Compiled code is guarded on torch's thread count: a compiled run keeps one. A train.threads above the
            # usable cores is named once, by the process that writes the run (rank 0 under torchrun).
            check_thread_setting(t.threads, announce=dist_utils.is_main_process())
            # fused.scope: the fused kernel's switch, set by _train for its run, ends with it
            with run_threads(t.threads, t.deterministic or compile_model), fused.scope():
                return _train(config, out, device, compile_model, stop, resume=resume, console=console,
                              on_epoch_end=on_epoch_end, before_report=before_report)
    except KeyboardInterrupt as err:
        if stop.stage is None or isinstance(err, SetupInterrupted):  # the run had started: its own stop
            raise
        raise SetupInterrupted(stop.stage, stop.signum) from None
    finally:
        stop.restore()


def resumed_config(config: RunConfig, folder: RunFolder) -> RunConfig:
    """The config a resumed run continues with: the one its config.yaml records, which ``config`` must equal
    but for ``log.quiet`` (what the console shows).

    The recorded config is resolved: the augmentation preset expanded, the image size and mean/std of
    the weights the run started from (model.init_from, not read again on resume) and the epochs that
    train.minutes fitted. Rebuilding the run from any other config would change it part-way: its
    image size, its normalisation or its schedule.
    """
    if not folder.last.is_file():
        raise CnnlabError(f"Nothing to resume in '{display_name(str(folder.path))}': it has no {CHECKPOINT_LAST}. Start the run without "
                          "--resume.")
    recorded = folder.read_config()
    _check_config_file_unchanged(folder, recorded)
    # log.quiet changes only what the console shows (`cnnlab train --resume RUN --quiet`)
    recorded = replace(recorded, log=replace(recorded.log, quiet=config.log.quiet))
    # Paths compared as the files they name: a config given with data.spec folder:imgs is the run's folder:/HERE/imgs
    # (a run records them absolute; one written before that keeps them relative, read from the working folder)
    differing = config_differences(record_paths(config, resume=True), record_paths(recorded, resume=True))
    for record in RECORD_KEYS:  # how a path was spelt (imgs, ./imgs) is a record, not a setting
        differing.pop(record, None)
    if differing:
        raise CnnlabError(
            f"The run in '{display_name(str(folder.path))}' can only resume as its {CONFIG_FILE} records it, and the config given "
            f"differs from that ({differences_text(differing)}). Resume with the recorded config "
            f"(RunFolder(out).read_config(); `cnnlab train --resume {shlex.quote(display_name(str(folder.path)))}` does this), or "
            "train the changed config into a new folder.")
    return recorded


def _check_config_file_unchanged(folder: RunFolder, recorded: RunConfig) -> None:
    """Refuse to resume a run whose config.yaml was edited after it started: its last checkpoint records the
    config the run has trained with. Resumed from the edited file, the change would be half applied (the
    rate, decay and momentum come back from the optimiser's state; the epochs would bend the schedule
    part-way) while config.yaml and the report said it was the run's."""
    from cnnlab.config import config_from_dict
    from cnnlab.train.checkpoint import read_checkpoint_meta

    stored = read_checkpoint_meta(folder.last).get(MetaKey.CONFIG)
    if stored is None:  # a checkpoint of an older version without its config: config.yaml is all there is
        return
    differing = config_differences(recorded, config_from_dict(stored))
    differing.pop("log.quiet", None)  # a resume may be quieter than the run (--quiet): its checkpoints record that
    if differing:
        raise CnnlabError(
            f"'{display_name(str(folder.config))}' was changed after the run started: it differs from the config the run's "
            f"{CHECKPOINT_LAST} records ({differences_text(differing, given='in the file', kept='in the checkpoint')}). "
            f"A run resumes only as it started: put the {CONFIG_FILE} values back, or train the changed config into "
            f"a new folder (cnnlab train --config {shlex.quote(display_name(str(folder.config)))} --out NEW).")


def differences_text(differing: dict[str, tuple], shown: int = 4, given: str = "given", kept: str = "recorded") -> str:
    """``config_differences(a, b)`` in a message: 'optim.lr: 0.1 given, 0.05 recorded; ...', the first
    ``shown`` keys and how many more; ``given`` and ``kept`` say where a's and b's values are. Long values are
    shortened where they differ (:func:`cnnlab.errors.shown_apart`), so two long paths do not read alike."""
    from cnnlab.errors import shown_apart

    # Values the caller set first; then those it left to the run to resolve (None: an augmentation preset)
    named = sorted(differing.items(), key=lambda item: item[1][0] is None)
    parts = []
    for key, (mine, theirs) in named[:shown]:
        mine_text, theirs_text = shown_apart(mine, theirs)
        parts.append(f"{key}: {mine_text} {given}, {theirs_text} {kept}")
    text = "; ".join(parts)
    return text + (f"; and {len(differing) - shown} more" if len(differing) > shown else "")


def _train(config: RunConfig, out: str | Path, device: torch.device, compile_model: bool, stop: StopRequest, *,
           resume: bool, console, on_epoch_end, before_report) -> TrainResult:
    """The run itself: :func:`train` in its thread setting, on ``device``, compiled when ``compile_model``."""
    from cnnlab.data.sources import announce
    from cnnlab.io import write_text_atomic
    from cnnlab.train.checkpoint import save_weights
    from cnnlab.train.ema import ModelEma, unreached_decay_note
    from cnnlab.train.logging import (MetricsLog, Progress, StepLossLog, TensorBoardWriter, final_report,
                                      require_tensorboard, save_curves)
    from cnnlab.train.optim import recorded_group, sgd_default_lr_note
    from cnnlab.train.schedule import (flat_cycles, overlong_warmup, snapshot_shortfall, snapshot_steps,
                                       unreached_milestones)

    # --- set-up: devices, data, model, optimiser (setup_run), then what only a whole run needs -------
    t = config.train
    threads_meter = GOVERNOR.meter()  # report.txt says how many CPU threads the run had, and for how long
    info = dist_utils.init_distributed(device)
    # DDP: every rank takes rank 0's folder, the one it writes (a default --out holds the second each process
    # reached it, and two ranks can see different ones)
    folder = RunFolder(dist_utils.rank_0_value(str(out), info, "the ranks' agreement on the run folder"))
    _check_distributed(config, device, info, resume=resume)
    if t.sync_bn and not info.enabled:
        notice("train.sync_bn=true synchronises BatchNorm statistics across DDP processes; this run is one process, "
               "so it changes nothing here (it takes effect under torchrun, on CUDA GPUs).")
    if config.log.tensorboard and info.is_main:
        require_tensorboard()  # refused here, before the run folder is written, rather than after status.json
    if not resume and info.is_main:
        refuse_held_folder(folder)
    # A resumed run takes its weights from its checkpoint and its preprocessing from its recorded config.
    stop.stage = "loading the data and building the model"
    run = setup_run(config, device, sync_bn=info.enabled and t.sync_bn, load_init=not resume)
    config = run.config  # the augmentation resolved: what config.yaml and every checkpoint record
    if info.is_main:
        announce(run.dataset)
        _announce_start(run)
    stop.stage = "preparing the fused BatchNorm + ReLU kernel"
    fused_on, fused_note = resolve_fused_norm_act(t.fused_norm_act, device, run.autocast_dtype, t.channels_last,
                                                  run.model, compile_model, eval_mode_norms(run.model, run.plan))
    fused.activate(fused_on)  # until the run ends (train's fused.scope)
    if fused_note and info.is_main:
        notice(fused_note)
    fit = None
    if t.minutes is not None and not resume:  # a resumed run's config records the epochs its budget fitted
        from cnnlab.train.budget import fit_to_budget

        stop.stage = "timing the steps for train.minutes"
        # Timed through what the loop calls. Compiled, the compiling falls in the budget's timing, and the
        # loop's own wrapper (below) reuses the compiled code.
        config, fit = fit_to_budget(run, train_step, _forward_model(run.model, device, info, compile_model))
        run.config, t = config, config.train
        if info.is_main:
            notice(fit.describe())
    model, optimizer = run.model, run.optimizer
    # Everything that counts steps (the schedule, its warmup, EMA, SWA, snapshots, steps.csv) counts optimiser
    # steps: with train.accum_steps, one per group of that many batches, the epoch's last group maybe smaller.
    batches_per_epoch = len(run.train_loader)
    steps_per_epoch = optimizer_steps(batches_per_epoch, t.accum_steps)
    total_steps = steps_per_epoch * t.epochs
    schedule_start, schedule_steps = run.plan.schedule_span(total_steps, steps_per_epoch)
    # A resumed run goes on as it started (one an older version began with such a warmup, too)
    problem = None if resume else overlong_accumulation(t, batches_per_epoch)
    if not resume and not problem:
        problem = overlong_warmup(config.schedule, schedule_steps, steps_per_epoch,
                                  after_probe=run.plan.probe_epochs > 0)
    if not resume and not problem:
        schedule_epochs = t.epochs - run.plan.probe_epochs  # the schedule runs after the head-only epochs
        length = f"train.epochs={t.epochs}"
        if run.plan.probe_epochs:
            length = f"train.epochs - train.probe_epochs = {schedule_epochs}"
        if fit is not None:
            length += f", the epochs train.minutes={t.minutes:g} fits"
        problem = unreached_milestones(config.schedule, schedule_epochs, length)
    if problem:
        raise CnnlabError(problem)
    if not resume and info.is_main:
        flat = flat_cycles(config.schedule, schedule_steps, steps_per_epoch)
        if flat:
            notice(flat)
    # The uniform tail of the average (train.swa_epochs) in whole steps, rounded half up as the warmup is, and at
    # least one: a tail shorter than half a step would otherwise turn SWA off without a word
    swa_steps = max(1, math.floor(t.swa_epochs * steps_per_epoch + 0.5)) if t.swa_epochs > 0 else 0
    ema = (ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup,
                    uniform_from=total_steps - swa_steps if swa_steps else None) if t.ema else None)
    # (first step, steps) of that uniform tail, for early stopping to say how much of it a run it ends averaged
    swa_span = (total_steps - swa_steps + 1, swa_steps) if swa_steps and t.ema else None
    if swa_steps and info.is_main:
        cut = (" (early stopping, train.early_stop_patience, ends the run sooner, and the average with it, when "
               "the validation accuracy stalls)" if t.early_stop_patience else "")
        notice(f"train.swa_epochs={t.swa_epochs:g}: the EMA weights (ema_val_acc, the checkpoints' EMA) become the "
               f"uniform average of the weights after each of the last {swa_steps:,} of {total_steps:,} steps, "
               f"from step {total_steps - swa_steps + 1:,} on{cut}")
    if info.is_main and not resume:
        patience_note = unreachable_patience_note(t)
        if patience_note:
            notice(patience_note)
    if info.is_main:
        lr_note = sgd_default_lr_note(config.optim)
        if lr_note:
            notice(lr_note)
    # A decay someone chose, or the default without its warm-up; a uniform tail (swa_epochs) restarts the average,
    # so without the warm-up the run's last EMA holds none of the initial weights
    chosen = t.ema_decay != TrainConfig.ema_decay or not t.ema_warmup
    # the decay acts before the uniform tail only: judged over those updates, and none is no use at all
    decayed = total_steps - swa_steps
    if ema is not None and info.is_main and decayed <= 0 and t.ema_decay != TrainConfig.ema_decay:
        notice(f"train.ema_decay={t.ema_decay:g} is not used: train.swa_epochs={t.swa_epochs:g} averages every "
               "one of the run's steps uniformly")
    elif ema is not None and info.is_main and chosen and not (swa_steps and not t.ema_warmup):
        note = unreached_decay_note(t.ema_decay, t.ema_warmup, decayed)
        if note:
            notice(note)
    # step -> snapshot number (1-based), looked up after every step; the cycles span the schedule's steps
    snapshots = ({schedule_start + step: number
                  for number, step in enumerate(snapshot_steps(config.schedule, schedule_steps, steps_per_epoch), 1)}
                 if t.snapshots else {})
    if t.snapshots and info.is_main:  # fewer steps than cycles: fewer snapshots than cycles, said before training
        shortfall = snapshot_shortfall(config.schedule, schedule_steps, steps_per_epoch)
        if shortfall:
            notice(shortfall)

    # --- run folder: a new run records its config, a resumed one restores its state ------------------
    # From its first write on, a stop signal waits for a step boundary, as in the loop: one before the first
    # step stops the run after it, with a checkpoint.
    stop.at_once, stop.stage = False, None
    if info.is_main:
        # A run killed inside one of its atomic writes (a checkpoint, metrics.csv, curves.png, status.json, ...)
        # left that write's temporary copy; the folder is this run's (held). A new run removes an earlier run's
        # with its other files, naming them (remove_earlier_run).
        if resume:
            from cnnlab.io import remove_leftover

            for leftover in folder.write_leftovers():
                remove_leftover(leftover)
        parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # last + best: weights, 2 moments, EMA
        check_run_folder(folder.path, bytes_needed=parameter_bytes * 8, resume=resume)
    metrics = MetricsLog(folder.metrics, enabled=info.is_main)
    step_log = StepLossLog(folder.steps, enabled=info.is_main)
    state = RunState()
    nothing_left = False  # a resumed run that has trained its every epoch (or early stopping ended)
    last_checkpoint: Optional[dict] = None  # where last.safetensors stands (TrainResult.last_checkpoint)
    stopped_early: Optional[str] = None  # why early stopping ended the run (train.early_stop_patience)
    if resume:
        state = load_run_state(folder, run, ema)
        stopped_early = early_stop_text(state, t, swa_span, sorted(snapshots))  # a run early stopping ended stays ended
        last_checkpoint = state.where()
        restored = restore_best(folder, state) if info.is_main else None
        if restored:
            notice(f"{CHECKPOINT_BEST} {restored}: copied {CHECKPOINT_LAST}, which holds the same epoch, to "
                   f"{CHECKPOINT_BEST}")
        # rows 1..epoch are in the checkpoint; later ones are redone. Rows the files lack (deleted, or cut by
        # hand) cannot be redone: the resumed run goes on without them, and says which.
        lost_epochs = metrics.truncate_after(state.epoch)
        lost_steps = step_log.truncate_after(state.step)
        lost = [f"{name} lacks the rows of {noun if numbers.isdigit() else noun + 's'} {numbers}"
                for name, noun, numbers in ((METRICS_FILE, "epoch", lost_epochs), (STEPS_FILE, "step", lost_steps))
                if numbers]
        if lost and info.is_main:
            print(f"warning: {' and '.join(lost)}, which the checkpoint holds (epoch {state.epoch}, step "
                  f"{state.step}): the file was deleted or cut since they were written. The run goes on without "
                  "them, so its curves, time and curve check miss those epochs or steps.", file=sys.stderr)
        nothing_left = state.epoch >= t.epochs or bool(stopped_early)
        if nothing_left and info.is_main:
            done = (f"{stopped_early}, so it is finished" if stopped_early
                    else f"already trained its {counted(t.epochs, 'epoch')}")
            notice(f"the run in '{display_name(str(folder.path))}' {done}: nothing is left to "
                   f"train, and its report follows. To train longer, start a new run (--config RUN/{CONFIG_FILE} "
                   "with more epochs or another train.early_stop_patience, or model.init_from=RUN to start from its "
                   "weights).")
            if config.log.curves:
                # The loop below has no epoch left to draw curves.png at its end: a run stopped after its last
                # checkpoint and before (or while) drawing them would end with none, or with an older epoch's
                save_curves(metrics.rows, folder.curves, smoothing=config.log.smoothing, steps=step_log.rows())
    elif info.is_main:
        start_run_folder(folder, run, fit)
    status = RunStatus(folder, t.epochs, enabled=info.is_main, meter=threads_meter, resume=resume)
    if resume and nothing_left:
        status.add_nothing()
    if info.is_main and not (resume and nothing_left):
        # a resume that trains nothing leaves the record of the machines that trained the run as it is
        write_machine_record(folder, environment_record(device, compiled=compile_model,
                                                        precision=precision_name(run.autocast_dtype),
                                                        processes=info.world, fused_norm_act=fused_on),
                             first_epoch=state.epoch + 1, first_step=state.step + 1, resume=resume)
    status.write("running", state.epoch)

    # --- the loop: from here on status.json says "running", so every failure, in the last set-up steps
    # (the DDP wrapper, compiling, the TensorBoard writer) as in training, is recorded there ---------------
    interrupted = checkpoint_saved = False
    row: dict = {}
    tensorboard: Optional[TensorBoardWriter] = None  # closed in `finally` once made
    progress: Optional[Progress] = None
    totals = StepTotals(stop, info)  # each step's global sums and stop vote (train_step's before_update)
    # When curves.png was last drawn (time.perf_counter): first after CURVES_EVERY seconds, so a short run
    # draws it once, at its end.
    curves_drawn = time.perf_counter()
    # Whether an epoch's val loss was already non-finite while its train loss was finite (a resumed run reads
    # the rows it keeps): the note names only the first such epoch.
    val_broken = any(r.get("val_loss") is not None and not math.isfinite(r["val_loss"]) for r in metrics.rows)
    try:
        run.train_mode(state.epoch)  # before DDP wraps the model: it registers the parameters that need gradients
        forward_model, wrapped_phase = _forward_model(model, device, info, compile_model), run.plan.phase(state.epoch)
        tensorboard = TensorBoardWriter(folder.path, enabled=config.log.tensorboard and info.is_main,
                                        purge_step=state.step + 1 if resume else None)
        progress = Progress(quiet=config.log.quiet, enabled=info.is_main, console=console)
        for epoch in range(state.epoch, state.epoch if stopped_early else t.epochs):
            run.train_loader.set_epoch(epoch)
            run.train_mode(epoch)  # model.train(), then the phase's trainable stages and BatchNorm modes
            if run.plan.phase(epoch) != wrapped_phase:
                # The head-only epochs are over: the backbone trains from here. DDP registers the parameters
                # that need gradients when it wraps the model, so it wraps it again.
                forward_model, wrapped_phase = _forward_model(model, device, info, compile_model), run.plan.phase(epoch)
                progress.note(f"epoch {epoch + 1}: the head-only phase is over; from here "
                              f"{', '.join(run.plan.trainable(epoch))} train")
            progress.start_epoch(epoch, t.epochs, steps_per_epoch)
            sums = torch.tensor(state.sums or [0.0, 0.0, 0.0], dtype=torch.float64)  # loss sum, correct, images
            step_sums = torch.zeros(3, dtype=torch.float64)  # the same over the optimiser step's micro-batches
            # Resumed part-way: the batches and training seconds of the epoch before the interruption.
            skip, seconds_before = state.batch, state.seconds
            started = time.perf_counter()
            stop_after_this_step = False  # set by each step's vote; stays False when a resume skips every batch
            for batch, (x, y) in enumerate(run.train_loader):
                if batch < skip:
                    started = time.perf_counter()  # reading the skipped batches is not training time
                    continue
                # This rank's rows, and the weight that makes DDP's gradient that of the global batch's mean
                # loss even when the batch (an aspect-ratio bucket's short one) does not divide over the ranks
                mine = dist_utils.shard_training_batch(x, y, info)
                totals.images = mine.images
                # train.accum_steps: this batch's place among the micro-batches of one optimiser step
                first, last, micro_batches = micro_batch_group(batch, batches_per_epoch, t.accum_steps)
                if first:
                    factor = run.plan.lr_factor(config.schedule, state.step, total_steps, steps_per_epoch)
                    for group in optimizer.param_groups:
                        group["lr"] = group["peak_lr"] * factor
                    step_sums.zero_()
                # forward; loss; sync point (totals: the step's global sums and stop vote); backward; on the
                # step's last micro-batch, clip and step. Each loss counts 1/micro_batches of the step's gradient;
                # DDP averages the gradients over the ranks only after the last (no_sync before it).
                with _gradient_sync(forward_model, info, last):
                    train_step(forward_model, mine.x, mine.y, optimizer, run.scaler, run.step_settings,
                               before_update=totals, loss_weight=mine.loss_weight / micro_batches,
                               zero_grad=first, update=last)
                lr = recorded_group(optimizer)["lr"]
                if not math.isfinite(totals.loss):
                    step_log.append(state.step + 1, totals.loss, lr)  # so `cnnlab diagnose` sees where it blew up
                    raise NonFiniteLossError(_non_finite_text(totals.loss, epoch, state.step, lr, folder.path,
                                                              last_checkpoint))
                sums += totals.sums  # global sums: what rank 0 saves on Ctrl-C is the whole epoch so far
                step_sums += totals.sums
                if not last:
                    continue  # the next micro-batch's gradient adds to this one's; the optimiser has not stepped
                if ema is not None:
                    ema.update(model)
                state.step_done(batch, sums, seconds_before + time.perf_counter() - started)
                step_loss = step_sums[0].item() / step_sums[2].item()  # the optimiser step's mean loss
                step_log.append(state.step, step_loss, lr)
                tensorboard.step(state.step, step_loss, lr)
                progress.update(batch // t.accum_steps + 1, step_loss, step_sums[1].item() / step_sums[2].item(),
                                sums[2].item() / max(state.seconds, 1e-9))
                if state.step in snapshots and info.is_main:
                    save_weights(folder.snapshot(snapshots[state.step]), model.state_dict(),
                                 state.snapshot_meta(run))
                # --- step boundary: weights, buffers, optimiser, EMA, RNG and state all describe state.step.
                stop_after_this_step = totals.stop_requested
                if stop_after_this_step:
                    break
            if stop_after_this_step:
                # Ctrl-C: save this step boundary (state, with the epoch's partial sums) and stop. DDP: the
                # other ranks wait for rank 0's write, as torchrun ends the whole job once one rank exits.
                interrupted = True
                save_run_checkpoint(folder.last, run, state, ema, info)
                last_checkpoint = state.where()
                dist_utils.barrier(info, "the wait for rank 0's checkpoint after a stop")
                checkpoint_saved = True
                # curves.png before a stop, as at an epoch's end: a run stopped in under CURVES_EVERY seconds
                # had none, and a longer one showed the curves of up to CURVES_EVERY seconds before it
                if info.is_main and config.log.curves:
                    _draw_curves_at_stop(metrics.rows, step_log.rows(), folder.curves, config.log.smoothing,
                                         "interrupted")
                break
            # The steps sync at each loss (totals), before backward: the last backward and update may still be
            # queued on a GPU, and the epoch's training time includes them
            synchronize(run.device)
            seconds = seconds_before + time.perf_counter() - started
            # DDP: every rank evaluates its shard with rank 0's buffers, the ones the checkpoint holds (see
            # _use_rank0_buffers), so a resumed run evaluates exactly as an uninterrupted one.
            _use_rank0_buffers(model, info)
            if ema is not None:
                _use_rank0_buffers(ema.module, info)
            val_loss, val_acc = evaluate(model, run.val_loader, info)
            row = {"epoch": epoch + 1, "step": state.step, "train_loss": sums[0].item() / sums[2].item(),
                   "train_acc": sums[1].item() / sums[2].item(), "val_loss": val_loss, "val_acc": val_acc,
                   "lr": recorded_group(optimizer)["lr"], "epoch_seconds": seconds,
                   "images_per_second": sums[2].item() / seconds}
            if ema is not None:
                row["ema_val_loss"], row["ema_val_acc"] = evaluate(ema.module, run.val_loader, info)
            metrics.append(row)
            tensorboard.epoch(row)
            progress.end_epoch(row)
            if not val_broken and not math.isfinite(val_loss) and math.isfinite(row["train_loss"]):
                val_broken = True  # named once, at the first such epoch; the run goes on (see _val_not_finite_text)
                progress.note(_val_not_finite_text(epoch + 1, val_loss, row["train_loss"]))
            if progress.output_closed and not stop.requested:
                # `cnnlab train ... | tee log` and a Ctrl-C that also ended tee, or `| head`: stop as a Ctrl-C
                # does, at this epoch's end once its checkpoint is saved (below), rather than lose the epoch
                stop.request(OUTPUT_CLOSED_MESSAGE if progress.output_error is None
                             else OUTPUT_FAILED_MESSAGE.format(why=progress.output_error))
            state.epoch_done(val_acc, t.early_stop_min_delta)
            new_best = val_acc > state.best["val_acc"]
            if new_best:
                state.best = {"val_acc": val_acc, "epoch": epoch + 1}
            # train.early_stop_patience: val_acc is summed over the DDP ranks, so every rank stops here together
            stopped_early = early_stop_text(state, t, swa_span, sorted(snapshots))
            # last first, then best. A stop between the two leaves last at this epoch, recording it as the best,
            # and best one write behind: a resume copies last to best (restore_best). Written the other way, best
            # would hold an epoch whose metrics row the resume drops, and the redone epoch might not replace it.
            save_run_checkpoint(folder.last, run, state, ema, info)
            last_checkpoint = state.where()  # every rank keeps track of what rank 0 has on disk
            if new_best:
                save_run_checkpoint(folder.best, run, state, ema, info)
            # curves.png: redrawn at most every CURVES_EVERY seconds (drawing takes ~0.5 s, more than a short
            # epoch), after the last epoch, and before a stop.
            stopping = epoch + 1 == t.epochs or stop.requested or stopped_early is not None
            if info.is_main and config.log.curves and (stopping or time.perf_counter() - curves_drawn >= CURVES_EVERY):
                save_curves(metrics.rows, folder.curves, smoothing=config.log.smoothing, steps=step_log.rows())
                curves_drawn = time.perf_counter()
            status.write("running", state.epoch)
            if on_epoch_end is not None:
                on_epoch_end(row)
            if stopped_early:  # the run is finished: last.safetensors above holds its end, best its best epoch
                progress.note(stopped_early)
                break
            # --- epoch boundary: a Ctrl-C since the last step's vote (in its backward, EMA update, the
            # evaluation or a checkpoint write) stops here; last.safetensors above already holds this
            # state. After the last epoch the run is complete and simply ends. The vote is a sync point under
            # DDP (once per epoch): every rank stops here if any was asked to.
            if epoch + 1 < t.epochs and stop.count_votes(
                    dist_utils.all_reduce_sum(stop.vote(), info, "the epoch's stop vote, after rank 0's checkpoints")):
                interrupted = checkpoint_saved = True
                break
    except KeyboardInterrupt:
        # A second Ctrl-C (or a KeyboardInterrupt from elsewhere) stopped the run at once, mid-step: the
        # model may hold half a step (BatchNorm statistics of a forward pass, a partial EMA update), so
        # nothing is saved and the last checkpoint on disk, written at a step boundary, stays the one to resume.
        # One that lands after the first stop's checkpoint was written (while its curves are drawn) leaves
        # checkpoint_saved as it is: that checkpoint is the one to resume.
        interrupted = True
    except NonFiniteLossError as err:
        status.write_on_failure("diverged", state.epoch, str(err))
        if info.is_main and config.log.curves:
            # A diverged run is when the curves are needed most: draw the steps and epochs done, up to the step
            # that blew up. The error stays the one raised: a failure to draw is only a warning.
            _draw_curves_at_stop(metrics.rows, step_log.rows(), folder.curves, config.log.smoothing, "diverged")
        raise
    except Exception as err:
        status.write_on_failure("failed", state.epoch, f"{type(err).__name__}: {err}")
        if isinstance(err, CnnlabError) and last_checkpoint is not None and folder.last.is_file():
            # the message of a failed write said to choose another folder, as if the run were lost
            setattr(err, KEPT_CHECKPOINT, (folder.path, last_checkpoint))
        raise
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        step_log.close()
        if tensorboard is not None:
            tensorboard.close()
        dist_utils.cleanup(info)
    # Why an interrupted run stopped, when it was not a Ctrl-C (`cnnlab runs` says Ctrl-C otherwise)
    why = None
    if interrupted and stop.signum == signal.SIGTERM:
        why = SIGTERM_STATUS
    elif interrupted and progress is not None and progress.output_closed:
        why = (OUTPUT_CLOSED_STATUS if progress.output_error is None
               else OUTPUT_FAILED_STATUS.format(why=progress.output_error))
    elif not interrupted and stopped_early:
        why = stopped_early  # finished, before train.epochs: said in status.json and report.txt
    status.write("interrupted" if interrupted else "finished", state.epoch, why)
    if info.is_main and not interrupted:
        # No step to finish: a Ctrl-C or SIGTERM while the reports are written stops at once, and report.txt,
        # written last, is left out, so that `cnnlab runs` names the run's missing reports (a resume writes them).
        stop.at_once = True
        stop.install()
        stopped = False
        try:
            try:
                if before_report is not None:
                    before_report(folder.path)
            except KeyboardInterrupt:
                stopped = True
                raise
            finally:  # the caller's files may fail; the trained run's report.txt is written all the same
                if not stopped:
                    report = final_report(metrics.rows, folder.path, state.best,
                                          threads=_threads_line(status, info),
                                          budget_minutes=t.minutes,
                                          stopped_early=_early_stop_report_text(state, t, swa_span, sorted(snapshots))
                                          if stopped_early else None)
                    write_text_atomic(folder.report, report + "\n", "the run report")
        except KeyboardInterrupt:
            raise ReportsInterrupted(stop.signum) from None
        finally:
            stop.restore()
        if console is not None:
            console.print(report)
    # A resume of a finished run trains no epoch: its last row is the one metrics.csv kept
    final = row or (metrics.rows[-1] if metrics.rows else {})
    return TrainResult(run_dir=folder.path, best_val_acc=state.best["val_acc"], best_epoch=state.best["epoch"],
                       final=final, interrupted=interrupted, checkpoint_saved=checkpoint_saved,
                       last_checkpoint=last_checkpoint, stop_requested=interrupted or stop.requested,
                       stop_signal=stop.signum if interrupted or stop.requested else None,
                       stopped_early=stopped_early if not interrupted else None)


def announce_precision(run: RunSetup) -> None:
    """On stderr, when train.precision=auto chose bf16 on this CPU: the numbers then differ from an fp32
    machine's (train, lr-find and check all step in it)."""
    if run.device.type == "cpu" and run.config.train.precision == "auto" and run.autocast_dtype is not None:
        # Muon's Newton-Schulz products follow the hardware, not train.precision (muon_ns_dtype)
        full = ("keeps the forward and backward passes in full precision; Muon's orthogonalisation stays in bf16 "
                "here" if run.config.optim.name == "muon" and muon_ns_dtype(run.device) == torch.bfloat16
                else "keeps full precision")
        notice(f"train.precision=auto trains in bf16 autocast here: this CPU multiplies bf16 natively "
               f"(train.precision=fp32 {full})")


def _announce_start(run: RunSetup) -> None:
    """On stderr: the weights the run starts from, the normalisation, what is frozen when, and each fine-tuning
    setting that does nothing here."""
    if run.init_report is not None:
        notice(run.init_report.text())
    if run.whiten_report is not None:
        notice(run.whiten_report.text())
    if run.init_report is not None or run.normalization.name != "dataset":
        notice(run.normalization.note)
    announce_precision(run)
    left_out = left_out_text(run)
    if left_out:
        notice(left_out)
    plan = run.plan
    if plan.frozen:
        notice(f"frozen for the whole run (model.freeze={run.config.model.freeze}): {', '.join(plan.frozen)}")
    if plan.probe_epochs:
        trains = "trains" if plan.probe_epochs == 1 else "train"
        notice(f"{plan.head_first} {trains} only the {plan.head}; then {', '.join(plan.trainable(plan.probe_epochs))} "
               "train")
    announce_unused_settings(run)


# The keys only a training run reads (cnnlab.train.engine.train: how long it trains, what it keeps and logs):
# cnnlab lr-find and cnnlab check build the model, data and optimiser from the same config and run loops of their own.
TRAINING_RUN_KEYS = (
    ("train", "epochs"), ("train", "minutes"), ("train", "ema"), ("train", "ema_decay"), ("train", "ema_warmup"),
    ("train", "swa_epochs"), ("train", "snapshots"), ("train", "early_stop_patience"),
    ("train", "early_stop_min_delta"), ("log", "tensorboard"),
)


def announce_unused_settings(run: RunSetup, schedule: bool = True) -> None:
    """On stderr, a note for each fine-tuning setting that does nothing in this run (train, lr-find and check
    all build the run this way, so all three say it), and for each optimiser key the chosen optimiser does not
    read; ``schedule``: also each schedule key the chosen schedule does not read, and the training keys a run
    never reads (:func:`unused_train_settings`); lr-find and check, which set the rate themselves and train no
    run, pass False (their commands name the --set keys only a run reads, :func:`training_run_keys`)."""
    from cnnlab.config import unread_choice_settings
    from cnnlab.train.finetune import unused_fine_tune_settings

    for note in unused_fine_tune_settings(run.model, run.plan, run.config, run.optimizer):
        notice(note)
    for note in unread_choice_settings(run.config, ("optim", "schedule") if schedule else ("optim",)):
        notice(note)
    for note in unused_train_settings(run.config, run.model, schedule):
        notice(note)
    if run.config.data.in_memory is False and run.dataset.train.in_memory:
        # only image files (folder:, csv:) are read one at a time; the other sources come as arrays
        notice(f"data.in_memory=false is not used: {run.dataset.spec}'s images come in one array, not files to "
               "read one at a time, so they stay in memory.")
    if run.config.train.num_workers > 0 and run.dataset.train.in_memory:
        # the in-memory loader cuts each batch from the array in this process (loaders.MemoryLoader)
        notice(f"train.num_workers={run.config.train.num_workers} is not used: the training images are held in "
               "memory, and each batch is cut from them in this process; worker processes read images from files "
               "(folder: and csv: data with data.in_memory=false).")


def training_run_keys(overrides: Sequence[str]) -> list[str]:
    """The keys among ``overrides`` (--set KEY=VALUE) that only a training run reads (:data:`TRAINING_RUN_KEYS`),
    in their order: for cnnlab lr-find and cnnlab check to name as doing nothing there."""
    keys = [text.partition("=")[0].strip() for text in overrides]
    return [key for key in dict.fromkeys(keys) if tuple(key.split(".")) in TRAINING_RUN_KEYS]


def unused_train_settings(config: RunConfig, model: torch.nn.Module, schedule: bool = True) -> list[str]:
    """A note for each training key set away from its default that this run never reads: train.aux_weight on a
    model with no auxiliary classifiers (GoogLeNet and Inception have them), model.dropout on a model without
    dropout, train.channels_last on one without convolutions (an MLP) and, with ``schedule`` (a training run),
    the EMA's decay and warm-up without train.ema and schedule.warmup_start without a warm-up."""
    t, s = config.train, config.schedule
    notes = []
    for key in ("ema_decay", "ema_warmup"):
        if schedule and not t.ema and getattr(t, key) != getattr(TrainConfig, key):
            notes.append(f"train.{key}={getattr(t, key)} does nothing here: the EMA weights are off (train.ema=false); "
                         "set train.ema=true to keep them")
    has_aux = any(getattr(module, "aux_logits", False) is True for module in model.modules())
    if t.aux_weight != TrainConfig.aux_weight and not has_aux:
        notes.append(f"train.aux_weight={t.aux_weight} does nothing here: it weighs the losses of auxiliary "
                     f"classifiers (GoogLeNet's, Inception's), and {config.model.name} has none")
    if (schedule and s.warmup_start != ScheduleConfig.warmup_start and s.warmup_epochs == 0
            and s.name in READ_BY_CHOICE[("schedule", "warmup_start")]):  # one-cycle: unread_choice_settings says so
        notes.append(f"schedule.warmup_start={s.warmup_start} does nothing here: there is no warm-up "
                     "(schedule.warmup_epochs=0); set schedule.warmup_epochs to use it")
    has_dropout = any(isinstance(module, torch.nn.Dropout) for module in model.modules())
    if config.model.dropout != ModelConfig.dropout and not has_dropout:
        notes.append(f"model.dropout={config.model.dropout} does nothing here: {config.model.name} has no dropout "
                     "layer; add one with model.drop_rate (before the classifier), model.hidden_drop_rate or "
                     "model.stage_drop_rate")
    if t.channels_last and not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        notes.append(f"train.channels_last=true does nothing here: {config.model.name} has no convolution, and the "
                     "layout only speeds up convolutions (the images are reordered for nothing)")
    return notes


def left_out_text(run: RunSetup) -> Optional[str]:
    """The note naming the training images each epoch leaves out, or None when every image is in a batch.

    Training batches are whole: the loader drops the last, short batch of each epoch (of each aspect-ratio
    bucket), which would step on a few images with the weight of a full batch and BatchNorm statistics of
    those few. Which images it leaves out changes with each epoch's shuffle; how many does not, and on a small
    training set (data.train_per_class) it can be a large share, so the run says so once, before it trains."""
    left = getattr(run.train_loader, "left_out", 0)
    if not left:
        return None
    images, batch = len(run.dataset.train), run.config.train.batch_size
    text = (f"{left:,} of the {images:,} training images ({left / images:.0%}) fill no whole batch of {batch:,}: each "
            f"epoch trains {counted(len(run.train_loader), 'batch', 'batches')} ({images - left:,} images) and leaves "
            f"{left:,} out, a different {left:,} each epoch as the shuffle orders them.")
    fits = _dividing_batch_size(images, batch) if left == images % batch else None  # not with aspect buckets
    return f"{text} train.batch_size={fits} leaves none out." if fits else text


def _dividing_batch_size(images: int, batch: int) -> Optional[int]:
    """The batch size nearest ``batch`` (from half to twice it) that divides ``images`` evenly, or None: a
    suggestion worth making only where one is that close (1,259 images, a prime, have none)."""
    sizes = [size for size in range(max(2, batch // 2), 2 * batch + 1) if images % size == 0]
    return min(sizes, key=lambda size: (abs(size - batch), size)) if sizes else None


def _threads_line(status: RunStatus, info: dist_utils.DistInfo) -> str:
    """report.txt's threads line: rank 0's CPU threads over the run's every part, and under DDP how many processes
    ran them, so that the run's images per second (all ranks together) is not read as one process's."""
    why = ("other processes were using cores, or the run was resumed with another thread count"
           if status.threads_before else "other processes were using cores")
    text = threads_text(status.threads_written or status.threads_used(), why)
    return f"{text} in each of {info.world} processes (DDP; rank 0's count)" if info.enabled else text


def _check_distributed(config: RunConfig, device: torch.device, info: dist_utils.DistInfo, *,
                       resume: bool = False) -> None:
    """Refuse DDP settings that cannot work, before anything is built. A resumed run's train.minutes is a record:
    its config.yaml holds the epochs the budget fitted, and nothing is timed again."""
    t = config.train
    if info.enabled and t.sync_bn and device.type != "cuda":
        raise CnnlabError("train.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm has no CPU kernel. On the CPU "
                          "leave it off (each process then normalises with its own shard's batch statistics).")
    if info.enabled and t.minutes is not None and not resume:
        raise CnnlabError("train.minutes times one process's steps, not a DDP job's (their gradients travel between "
                          "processes): under torchrun set train.epochs instead, and leave train.minutes null.")
    if info.enabled and t.batch_size % info.world:
        raise CnnlabError(f"train.batch_size={t.batch_size} must divide evenly over {info.world} processes (each "
                          "takes an equal share of each full batch): start torchrun with a --nproc-per-node that "
                          f"divides {t.batch_size} (a resumed run keeps its batch size), or give a new run a batch size "
                          f"that is a multiple of {info.world}.")


def _forward_model(model: torch.nn.Module, device: torch.device, info: dist_utils.DistInfo,
                   compile_model: bool) -> torch.nn.Module:
    """What the loop calls: ``model`` in DDP's wrapper (which averages the gradients over the ranks) under
    torchrun, compiled with ``compile_model``; ``model`` itself otherwise. The parameters are the same."""
    forward_model = model
    if info.enabled:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        forward_model = torch.compile(forward_model)
    return forward_model


def _gradient_sync(forward_model: torch.nn.Module, info: dist_utils.DistInfo, last: bool):
    """The context a training micro-batch runs in: under DDP, ``no_sync()`` for every micro-batch of an optimiser
    step but its ``last`` (train.accum_steps), so the gradients travel between the ranks once per optimiser step,
    summed over its micro-batches; a plain context otherwise. A compiled model passes ``no_sync`` on to the DDP
    module it wraps."""
    if not info.enabled or last:
        return nullcontext()
    return forward_model.no_sync()


def _use_rank0_buffers(module: torch.nn.Module, info: dist_utils.DistInfo) -> None:
    """DDP: copy rank 0's buffers (BatchNorm statistics) into every rank's ``module``; nothing with one process.

    Without SyncBatchNorm each rank's forward pass moves its BatchNorm statistics with its own shard,
    and the EMA copy averages them, so after a step the ranks' buffers differ slightly. DDP broadcasts
    rank 0's buffers before each training forward pass, but evaluation and the EMA would otherwise use
    each rank's own, which no checkpoint holds (rank 0 saves its own): a resumed run, every rank
    loading rank 0's, would then evaluate differently from an uninterrupted one.
    """
    if info.enabled:
        for buffer in module.buffers():  # a sync point, once per epoch
            dist_utils.broadcast_from_rank_0(buffer, info, "the broadcast of rank 0's BatchNorm statistics")


def _non_finite_text(loss: float, epoch: int, step: int, lr: float, run_dir: Path,
                     last_checkpoint: Optional[dict]) -> str:
    """Why the loop stops at a non-finite loss, at 0-based ``epoch`` with ``step`` optimiser steps taken."""
    where = f"at epoch {epoch + 1}, step {step + 1}"
    if step == 0:
        # No update has been made: the weights are the ones the run started from, so no learning rate caused it
        return (f"The training loss was {loss} {where}, before any update, so the learning rate is not the cause: "
                "the weights the run starts from (model.init, model.bias_init, model.init_from), the input (data.mean "
                "and data.std, the data itself) or a loss setting (train.aux_weight) make the first forward pass "
                "non-finite. `cnnlab check` with the same options reads the loss and each layer's statistics at "
                "initialisation. "
                f"{_on_disk_text(run_dir, last_checkpoint)}")
    return (f"The training loss became {loss} {where} (learning rate {lr:.3g}). This almost always means the learning "
            f"rate is too high: lower optim.lr (try a tenth) or add warmup. {_on_disk_text(run_dir, last_checkpoint)}")


def _draw_curves_at_stop(rows: list[dict], steps: list[dict], path: Path, smoothing: int, stopped: str) -> None:
    """curves.png of a run that stops part-way (``stopped``: 'diverged', a non-finite loss; 'interrupted', a
    Ctrl-C saved at a step); a failure to draw it is a warning on stderr, never raised (it would replace the
    NonFiniteLossError that says why the run stopped, or turn a saved stop into a failed run)."""
    from cnnlab.train.logging import save_curves

    try:
        save_curves(rows, path, smoothing=smoothing, steps=steps)
    except Exception as err:  # anything: a failure here must leave the stop as it is
        print(f"warning: no {path.name} for the {stopped} run: {type(err).__name__}: {err}", file=sys.stderr)


def _val_not_finite_text(epoch: int, val_loss: float, train_loss: float) -> str:
    """The note at the first epoch (1-based) whose validation loss is not finite while its training loss is.

    The run goes on: a non-finite training loss stops it (NonFiniteLossError), since every later update would
    be lost; here the weights still train, and what broke is what the model reads only in eval mode."""
    return (f"note: epoch {epoch}: the validation loss is {val_loss} while the training loss is finite "
            f"({train_loss:.4g}). The weights train, but the model computes non-finite outputs in eval mode, which "
            "reads BatchNorm's running mean and variance instead of the batch's: those statistics have most likely "
            "overflowed. The learning rate is not the first suspect. Training goes on; val_acc from this epoch on is "
            "not a fair score. `cnnlab diagnose` names it after the run.")


def _on_disk_text(run_dir: Path, last_checkpoint: Optional[dict]) -> str:
    """What an error can promise about the run folder: the last checkpoint, or that none was written yet."""
    if last_checkpoint is None:
        return (f"No checkpoint was written to '{run_dir}' yet (the first is saved at the end of epoch 1), "
                "so there is nothing to resume: start the run again.")
    return (f"The last checkpoint in '{run_dir}' ({describe_checkpoint(last_checkpoint)}) is intact.")


def read_metrics_rows(run_dir: Path) -> list[dict]:
    from cnnlab.train.logging import read_metrics

    return read_metrics(RunFolder(run_dir).metrics)


def _write_summary(model, dataset, path: Path) -> None:
    """The per-layer summary of the model at the data's input size, as text (the run folder's summary file)."""
    from rich.console import Console

    from cnnlab.analysis import summary
    from cnnlab.analysis.report import summary_table, totals_lines
    from cnnlab.io import write_text_atomic

    size = (model.in_chans, dataset.image_size, dataset.image_size)
    try:
        result = summary(model, size)
    except BatchOfOneError:  # norms without running statistics (the table then says batch 2)
        result = summary(model, size, batch=2)
    text_console = Console(width=160, record=True, file=io.StringIO())
    text_console.print(summary_table(result))
    for line in totals_lines(result):
        text_console.print(line)
    write_text_atomic(path, text_console.export_text(), "the model summary")
