"""Multi-process training with torch.distributed, started by ``torchrun --nproc-per-node N``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is one process. Every rank
builds the same loader with the same seed, so all ranks draw the same global batch; each then keeps
its own rows ``x[rank::world]`` (a batch of fewer than 2 rows a rank: see :func:`shard_training_batch`).
The ranks together therefore see exactly the batches a single process with the same global batch size
would, augmentations included, at the cost of each rank augmenting the whole batch (cheap next to the
model). Only rank 0 writes files and prints.

Every collective waits at most ``CNNLAB_DDP_TIMEOUT`` seconds (:data:`DEFAULT_TIMEOUT_SECONDS` unless set) for
the other ranks: a rank that hangs without dying (a deadlock, a stalled disk or data source) then ends the job
with one paragraph naming the waiting rank and the collective (:class:`CollectiveTimeout`), instead of torch's
30 minutes of silence.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the command line asks is_main_process() and launched_processes() before any
# command has imported it (`cnnlab --help` does not).


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _whole_number(name: str) -> Optional[int]:
    """The environment variable ``name`` as a whole number of at least 0; None when unset or not one."""
    text = os.environ.get(name, "").strip()
    return int(text) if text.isascii() and text.isdigit() else None  # "²" is a digit int() cannot read


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process: the one that writes the run folder. A RANK that is no
    number reads as 0 here, where an error is being reported: :func:`launch_problem` refuses it up front."""
    return (_whole_number("RANK") or 0) == 0


def launched_processes() -> int:
    """How many processes torchrun started for this command (WORLD_SIZE); 1 without torchrun, or for a WORLD_SIZE
    that is no number of processes (:func:`launch_problem` refuses it before the command runs)."""
    return max(_whole_number("WORLD_SIZE") or 1, 1)


def launch_problem() -> Optional[str]:
    """What is wrong with the variables torchrun sets for each process it starts (WORLD_SIZE, RANK, LOCAL_RANK),
    when another launcher or a shell left them set and wrong; None when they describe one process or a launch."""
    start = ("start the command with torchrun (torchrun --nproc-per-node N -m cnnlab ...), which sets WORLD_SIZE, "
             "RANK and LOCAL_RANK for each process it starts, or unset WORLD_SIZE to run one process")
    world_text = os.environ.get("WORLD_SIZE")
    if world_text is None:
        return None
    world = _whole_number("WORLD_SIZE")
    if world is None or world < 1:
        return f"WORLD_SIZE={world_text!r} is not a number of processes: {start}."
    if world == 1:
        return None
    for name, bound in (("RANK", world), ("LOCAL_RANK", world)):
        text = os.environ.get(name)
        value = _whole_number(name)
        if text is None and name == "LOCAL_RANK":
            continue  # torch's default, 0, serves a CPU launch
        if value is None or value >= bound:
            said = "is not set" if text is None else f"is {text!r}, not a process number from 0 to {bound - 1}"
            return (f"WORLD_SIZE={world_text} asks for {world} processes, but {name} {said}: cnnlab runs as several "
                    f"processes only under torchrun. To fix it, {start}.")
    return None


# The environment variable that sets how long a collective waits for the other ranks, in seconds.
TIMEOUT_ENV = "CNNLAB_DDP_TIMEOUT"
# 10 minutes (torch's own default is 30 for gloo): far above the longest wait a healthy run has (the other ranks
# wait at the epoch's end while rank 0 writes its checkpoints and curves, a few seconds on a local disk even for
# a large model), and a third of what a hung rank used to cost. torch's NCCL default is also 10 minutes.
DEFAULT_TIMEOUT_SECONDS = 600.0
# The longest timeout taken, about 31 years: torch holds the timeout in int64 nanoseconds, so 1e10 s (1e19 ns) wrapped
# and the ranks timed out at once, with a message saying they had waited 1e10 s; 1e15 s failed in Python's timedelta.
MAX_TIMEOUT_SECONDS = 1e9


def timeout_seconds() -> float:
    """How long a collective waits for the other ranks: CNNLAB_DDP_TIMEOUT (seconds), or the default."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise CnnlabError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0: it sets how long a DDP process "
                          "waits for the others in a collective before the job ends with a timeout (default "
                          f"{DEFAULT_TIMEOUT_SECONDS:g}). Set it to a number such as 1800, or unset it.")
    if seconds > MAX_TIMEOUT_SECONDS:
        raise CnnlabError(f"{TIMEOUT_ENV}={text!r} is more seconds than torch can wait: a collective's timeout must be "
                          f"at most {MAX_TIMEOUT_SECONDS:g} seconds (about 31 years), beyond which torch's clock "
                          "overflows and the ranks time out at once. Set it to a number such as 1800 (or "
                          f"{MAX_TIMEOUT_SECONDS:g} to wait as good as forever), or unset it for the default "
                          f"{DEFAULT_TIMEOUT_SECONDS:g}.")
    return seconds


_joined = False  # whether this process has joined a process group (init_distributed)


def joined_process_group() -> bool:
    """Whether this process joined a process group: then it ends without Python's shutdown (cnnlab.cli.main)."""
    return _joined


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA); one process otherwise. Its
    collectives wait at most :func:`timeout_seconds` for the other ranks."""
    problem = launch_problem()  # checked by the command line first; again for a caller of the Python API
    if problem:
        raise CnnlabError(problem)
    world = launched_processes()
    if world <= 1:
        return DistInfo()
    import datetime

    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_seconds())  # checked before any process waits for another
    info = DistInfo(rank=_whole_number("RANK") or 0, world=world, local_rank=_whole_number("LOCAL_RANK") or 0)
    if device.type == "cuda":
        # One GPU per process: "cuda" (no index) then means this rank's GPU, for tensors and for DDP.
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        # On GPUs, nccl for the model's gradients and gloo for the small CPU tensors (loss sums,
        # evaluation counts) that all_reduce_sum adds up: an nccl-only group refuses CPU tensors.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    global _joined
    _joined = True
    return info


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's rows of a global batch: (B, ...) -> (about B / world, ...)."""
    return batch[info.rank :: info.world] if info.enabled else batch


@dataclass
class TrainingShard:
    """This rank's part of a global training batch (:func:`shard_training_batch`)."""

    x: torch.Tensor  # (b, C, H, W): this rank's rows, or the batch's first rows when it has none
    y: torch.Tensor  # (b,) or (b, K): their targets
    images: int  # how many of the rows count in the step's sums (0 for borrowed rows)
    loss_weight: float  # what this rank's mean loss is multiplied by before the backward pass


def shard_training_batch(x: torch.Tensor, y: torch.Tensor, info: DistInfo) -> TrainingShard:
    """This rank's rows of a global training batch, weighted so that the ranks' gradients average to the
    gradient of the global batch's mean loss, however its rows divide over the ranks.

    DDP averages the ranks' gradients, and each rank's loss is the mean over its own rows. With B rows on W
    ranks and b of them here, a weight of W * b / B makes that average (1/W) * sum(W * b_r / B * grad of the
    mean over b_r rows) = the gradient of the mean over all B rows, as in one process. Without it a short
    batch (an aspect-ratio bucket's last, with rows that do not divide by W) would weight the rows of the
    rank with fewer of them more.

    No rank gets a single row of a batch that has more: a BatchNorm layer in training mode refuses one row
    of 1x1 maps (resnet18 at 32x32 has them in its last stage), where one process with the whole batch trains.
    A batch of B >= 2W rows is shared ``x[rank::W]``; a shorter one only over the first B // 2 ranks, each
    with 2 or more rows. A rank left without a row must still take part in the step, since DDP's backward
    pass waits for every rank: it computes on the batch's first rows (two, or the only one) with weight 0
    and counts no image (a mean over no rows would be NaN).
    """
    if not info.enabled:
        return TrainingShard(x, y, len(y), 1.0)
    rows = len(y)
    # How many ranks share the batch: all of them when each gets 2 rows or more, else as many as can
    # (a batch of one row goes to rank 0 alone, as one process would train on it).
    sharing = info.world if rows >= 2 * info.world else max(1, rows // 2)
    if info.rank >= sharing:
        borrowed = min(rows, 2)
        return TrainingShard(x[:borrowed], y[:borrowed], 0, 0.0)
    mine_x, mine_y = x[info.rank :: sharing], y[info.rank :: sharing]
    return TrainingShard(mine_x, mine_y, len(mine_y), info.world * len(mine_y) / rows)


# What a rank waits in when the collective is DDP's own rather than one of this module's (which name theirs).
DDP_COLLECTIVE = ("DDP's own exchange (the gradients' all-reduce in the backward pass, or the parameters' broadcast "
                  "when DDP wraps the model)")


class CollectiveTimeout(RuntimeError):
    """A collective of this module (``what`` names it) waited :func:`timeout_seconds` for the other ranks;
    ``str()`` is :func:`timeout_text`'s paragraph (status.json records it)."""

    def __init__(self, what: str, cause: RuntimeError) -> None:
        self.what, self.cause = what, cause
        super().__init__(timeout_text(self))


def is_timeout(err: BaseException) -> bool:
    """Whether ``err`` is torch's report of a collective that waited past the process group's timeout: gloo's
    '[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 600000ms for recv operation to complete', or
    a torch.distributed error that says it timed out. Not any error that mentions a timeout: a data loader's
    'DataLoader timed out' is no collective's."""
    if isinstance(err, CollectiveTimeout):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err)
    if "gloo" in text and "Timed out waiting" in text:
        return True
    from torch.distributed import DistError

    return isinstance(err, DistError) and "timed out" in text.lower()


def timeout_text(err: BaseException, resume: str = "") -> str:
    """One paragraph for a collective that timed out in this rank: who waited, in what, for how long, who is
    likely at fault, and what to do (``resume``: the command that continues the run from its last checkpoint)."""
    what = err.what if isinstance(err, CollectiveTimeout) else DDP_COLLECTIVE
    cause = err.cause if isinstance(err, CollectiveTimeout) else err
    rank, world = int(os.environ.get("RANK", "0")), launched_processes()
    others = f"rank {1 - rank}" if world == 2 else f"one of the other {world - 1} ranks"
    detail = (str(cause).strip().splitlines() or [""])[0][:200]
    go_on = f"continue from the last checkpoint with: {resume}" if resume else "continue the run with --resume"
    return (f"DDP timeout: rank {rank} of {world} waited {timeout_seconds():g} s in {what}, and {others} never "
            "joined it. That process is hung or far slower than this one (a deadlock, a stalled disk or data "
            "source, memory swapping, a stuck GPU; its own output above may say which). torch said: "
            f"{detail}. Fix the cause and {go_on}. If that process is only slow at times (rank 0 writing large "
            f"checkpoints to a slow disk), let the ranks wait longer: {TIMEOUT_ENV}=SECONDS before torchrun (now "
            f"{timeout_seconds():g}).")


def _named(err: RuntimeError, what: str) -> RuntimeError:
    """``err`` itself, or a :class:`CollectiveTimeout` naming ``what`` when it is a timeout."""
    return CollectiveTimeout(what, err) if is_timeout(err) else err


def rank_0_value(value: str, info: DistInfo, what: str = "the ranks' agreement on a value") -> str:
    """Rank 0's ``value`` on every rank (a sync point); ``value`` itself with one process. For what the ranks must
    agree on though each worked it out alone: the run folder, whose default name holds the time each process
    reached it, which two ranks can see a second apart."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as err:
        raise _named(err, what) from err
    return box[0]


def all_reduce_sum(values: torch.Tensor, info: DistInfo, what: str = "a sum over the ranks") -> torch.Tensor:
    """Sum a tensor over ranks (a sync point); identity with one process. ``what`` names it in a timeout."""
    if info.enabled:
        import torch.distributed as dist

        values = values.clone()
        try:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        except RuntimeError as err:
            raise _named(err, what) from err
    return values


def broadcast_from_rank_0(tensor: torch.Tensor, info: DistInfo, what: str = "a broadcast from rank 0") -> None:
    """Overwrite ``tensor`` in place with rank 0's (a sync point); nothing with one process."""
    if info.enabled:
        import torch.distributed as dist

        try:
            dist.broadcast(tensor, src=0)
        except RuntimeError as err:
            raise _named(err, what) from err


def barrier(info: DistInfo, what: str = "a barrier") -> None:
    """Wait until every rank is here (a sync point); nothing with one process."""
    if info.enabled:
        import torch.distributed as dist

        try:
            dist.barrier()
        except RuntimeError as err:
            raise _named(err, what) from err


def cleanup(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
