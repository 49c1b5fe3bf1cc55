"""Multi-process training with torch.distributed, started by ``torchrun --nproc-per-node N``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is one process. Every rank
builds the same loader with the same seed, so all ranks draw the same global batch; each then keeps
its own rows ``x[rank::world]`` (a batch of fewer than 2 rows a rank: see :func:`shard_training_batch`).
The ranks together therefore see exactly the batches a single process with the same global batch size
would, augmentations included, at the cost of each rank augmenting the whole batch (cheap next to the
model). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process: the one that writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_processes() -> int:
    """How many processes torchrun started for this command (WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA); one process otherwise."""
    world = launched_processes()
    if world <= 1:
        return DistInfo()
    import torch
    import torch.distributed as dist

    info = DistInfo(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        # One GPU per process: "cuda" (no index) then means this rank's GPU, for tensors and for DDP.
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        # On GPUs, nccl for the model's gradients and gloo for the small CPU tensors (loss sums,
        # evaluation counts) that all_reduce_sum adds up: an nccl-only group refuses CPU tensors.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
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


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (a sync point); identity with one process."""
    if info.enabled:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def cleanup(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
