"""The training loop: ``train(config, out)`` turns a RunConfig into a trained model and a run folder.

Read it top to bottom: set up (devices, data, model, optimiser), then per step
``lr = peak * schedule(step); forward; loss; backward; clip; step; EMA``, then per epoch
evaluate, log, checkpoint. Resume restores every piece of state (weights, optimiser, EMA, RNG,
position inside the epoch), so a resumed run ends exactly where an uninterrupted one would.

Ctrl-C is deferred to the next step boundary (see :class:`StopRequest`): a checkpoint is only ever
written where weights, buffers, optimiser, EMA, RNG and position describe the same step.
"""

from __future__ import annotations

import io
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig, config_to_dict, save_config
from cnnlab.errors import CnnlabError
from cnnlab.train import distributed as dist_utils

CHECKPOINT_LAST = "last.safetensors"
CHECKPOINT_BEST = "best.safetensors"


class NonFiniteLossError(CnnlabError):
    """The loss became NaN or infinite: the learning rate is almost always too high."""


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


def describe_checkpoint(where: dict) -> str:
    """'end of epoch 2, step 12' for a checkpoint at an epoch's end, 'epoch 3, batch 4, step 16' within one."""
    if where["batch"] == 0:
        return f"end of epoch {where['epoch']}, step {where['step']}"
    return f"epoch {where['epoch'] + 1}, batch {where['batch']}, step {where['step']}"


class StopRequest:
    """Ctrl-C during training: the first asks the loop to stop at the next step boundary, the second stops at once.

    A SIGINT lands anywhere: inside forward (after BatchNorm has updated its running statistics and
    num_batches_tracked), inside backward, half-way through the optimiser or EMA update, in evaluation
    or in a checkpoint write. A KeyboardInterrupt raised there leaves the model part-way through a step
    while the saved position still says "before this batch", so a resumed run would count the batch
    twice. The handler therefore only records the request; the loop looks at it where the whole state
    describes one step and stops there, saving a checkpoint that resumes bit for bit.

    A second Ctrl-C raises KeyboardInterrupt at once (a hung data loader, an impatient user): the state
    is then mid-step, so the loop saves nothing and the last checkpoint on disk stays the one to resume.
    """

    MESSAGE = ("\nCtrl-C: stopping at the end of this step to save a checkpoint there; press Ctrl-C again to stop "
               "at once (then only the last checkpoint is kept).\n")

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self._announce = announce  # DDP: only rank 0 prints, though every rank gets the signal
        self._previous = None
        self._installed = False

    def install(self) -> None:
        """Take over SIGINT until :meth:`restore`. Only the main thread may set signal handlers (others keep
        Python's behaviour); a SIGINT the parent process set to be ignored or to kill (not a Python callable)
        is left as it is."""
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and callable(previous):
            self._previous = previous
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._announce:
            try:  # os.write, not print: the handler may run while the main code is inside a print to stderr
                os.write(2, self.MESSAGE.encode())
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# set-up helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"train.device='{name}' but no CUDA GPU is available here. Use device=cpu or auto.")
    return device


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype, or None for fp32. auto: bf16 on CUDA GPUs that have it, else fp16 on CUDA; fp32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise CnnlabError("train.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32.")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def check_run_folder(run_dir: Path, bytes_needed: int) -> None:
    """Fail before training when the run folder cannot be written or the disk is too full; create it."""
    from cnnlab.io import check_output_folder

    check_output_folder(run_dir, "The run folder", bytes_needed=bytes_needed, create=True)


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


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, autocast_dtype=None,
             info: Optional[dist_utils.DistInfo] = None) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over a loader (no smoothing), summed over DDP ranks."""
    info = info or dist_utils.DistInfo()
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    for x, y in loader:
        x, y = dist_utils.shard(x, info), dist_utils.shard(y, info)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
        totals[1] += (logits.argmax(dim=1) == y).sum().item()
        totals[2] += len(y)
    model.train(was_training)
    totals = dist_utils.all_reduce_sum(totals, info)
    images = max(totals[2].item(), 1)
    return totals[0].item() / images, totals[1].item() / images


# ---------------------------------------------------------------------------------------------
# the run


def build_run(config: RunConfig, device: torch.device):
    """Data, statistics, model and resolved augmentation for a config (shared by train, check, lr-find)."""
    from cnnlab.data import dataset_stats, load_source, resolve_aug
    from cnnlab.models import check_input_size, create_model

    dataset = load_source(config.data)
    stats, _ = dataset_stats(dataset)
    options = dict(config.model.options)
    in_chans = options.pop("in_chans", dataset.channels)
    if in_chans != dataset.channels:  # the model asks for other channels: the data follows the model
        dataset = load_source(replace(config.data, channels=in_chans))
        stats, _ = dataset_stats(dataset)
    model = create_model(config.model.name, num_classes=dataset.num_classes, in_chans=in_chans,
                         norm=config.model.norm, act=config.model.act, drop_rate=config.model.drop_rate, **options)
    check_input_size(model, (in_chans, dataset.image_size, dataset.image_size), config.model.name)
    aug = resolve_aug(config.aug, dataset.image_size, dataset.channels, dataset.hflip_safe)
    return dataset, stats, model.to(device), aug


def train(config: RunConfig, out: str | Path, *, resume: bool = False, console=None,
          on_epoch_end: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train ``config`` into the run folder ``out`` (or continue it with ``resume``).

    ``on_epoch_end(row)`` is called with every epoch's metrics row after its checkpoint is saved
    (``cnnlab search`` reports to Optuna and prunes there; an exception it raises ends the run).

    Ctrl-C (SIGINT, on the main thread) stops the run at the next step boundary and saves a checkpoint
    there; a second Ctrl-C stops it at once and saves nothing. The result says which
    (``interrupted``, ``checkpoint_saved``) and where ``last.safetensors`` stands (``last_checkpoint``).
    """
    from cnnlab.data.loaders import make_loader
    from cnnlab.data.sources import announce
    from cnnlab.train.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint, save_weights
    from cnnlab.train.ema import ModelEma
    from cnnlab.train.logging import MetricsLog, Progress, StepLossLog, TensorBoardWriter, final_report, save_curves
    from cnnlab.io import write_text_atomic
    from cnnlab.train.optim import build_optimizer
    from cnnlab.train.schedule import lr_factor, snapshot_steps, validate_schedule

    run_dir = Path(out)
    t, o = config.train, config.optim
    device = resolve_device(t.device)
    info = dist_utils.init_distributed(device)
    if info.enabled and t.sync_bn and device.type != "cuda":
        raise CnnlabError("train.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm has no CPU kernel. On the CPU "
                          "leave it off (each process then normalises with its own shard's batch statistics).")
    if info.enabled and t.batch_size % info.world:
        raise CnnlabError(f"train.batch_size={t.batch_size} must divide evenly over {info.world} processes.")
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed, t.deterministic)
    autocast_dtype = resolve_precision(t.precision, device)
    validate_schedule(config.schedule, t.epochs)

    # --- data, model, optimiser --------------------------------------------------------------
    dataset, stats, model, aug = build_run(config, device)
    if info.is_main:
        announce(dataset)
    smoothing = t.label_smoothing if t.label_smoothing is not None else aug.label_smoothing
    loader_args = dict(batch_size=t.batch_size, device=device, seed=t.seed, num_workers=t.num_workers,
                       channels_last=t.channels_last)
    train_loader = make_loader(dataset, "train", stats, train=True, aug=aug, **loader_args)
    val_loader = make_loader(dataset, "val", stats, train=False, **loader_args)
    if len(train_loader) == 0:
        raise CnnlabError(f"The training split has {len(dataset.train)} images, fewer than one batch of "
                          f"{t.batch_size}: lower train.batch_size.")
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.enabled and t.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, o, t.batch_size)
    ema = ModelEma(model, decay=t.ema_decay, warmup=t.ema_warmup) if t.ema else None
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * t.epochs
    snapshots = set(snapshot_steps(config.schedule, total_steps, steps_per_epoch)) if t.snapshots else set()
    forward_model = model
    if info.enabled:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        forward_model = torch.compile(forward_model)

    # --- run folder, resume ------------------------------------------------------------------
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    expect = {"model": config.model.name, "num_classes": dataset.num_classes, "in_chans": model.in_chans}
    start_epoch, start_batch, step, best = 0, 0, 0, {"val_acc": -1.0, "epoch": -1}
    partial = None  # running sums of an epoch interrupted part-way
    last_checkpoint: Optional[dict] = None  # where last.safetensors stands (TrainResult.last_checkpoint)
    if info.is_main:
        check_run_folder(run_dir, bytes_needed=parameter_bytes * 8)  # last + best: weights, 2 moments, EMA
    metrics = MetricsLog(run_dir / "metrics.csv", enabled=info.is_main)
    step_log = StepLossLog(run_dir / "steps.csv", enabled=info.is_main)
    if resume:
        last = run_dir / CHECKPOINT_LAST
        if not last.is_file():
            raise CnnlabError(f"Nothing to resume in '{run_dir}': it has no {CHECKPOINT_LAST}. Start the run without --resume.")
        meta = load_checkpoint(last, model=model, optimizer=optimizer, ema_model=ema, restore_rng=True, expect=expect,
                               require=RESUME_KEYS)
        start_epoch, start_batch, step = meta["epoch"], meta["batch"], meta["step"]
        best = meta["best"]
        partial = meta.get("partial")
        last_checkpoint = {"epoch": start_epoch, "batch": start_batch, "step": step}
        metrics.truncate_after(start_epoch)  # rows 1..start_epoch are in the checkpoint; later ones are redone
        step_log.truncate_after(step)
    elif info.is_main:
        if (run_dir / CHECKPOINT_LAST).exists():
            raise CnnlabError(f"'{run_dir}' already holds a run. Continue it with --resume, or choose another --out.")
        save_config(config, run_dir / "config.yaml")
        _write_summary(model, dataset, run_dir)
    tensorboard = TensorBoardWriter(run_dir, enabled=config.log.tensorboard and info.is_main)
    progress = Progress(quiet=config.log.quiet, enabled=info.is_main, console=console)

    def checkpoint(path: Path, epoch: int, batch: int, running=None) -> None:
        """Everything needed to continue at (epoch, batch): written atomically by rank 0."""
        nonlocal last_checkpoint
        if info.is_main:
            meta = {**expect, "epoch": epoch, "batch": batch, "step": step, "best": best, "partial": running,
                    "classes": dataset.classes, "image_size": dataset.image_size, "mean": list(stats.mean),
                    "std": list(stats.std), "config": config_to_dict(config)}
            save_checkpoint(path, model=model, optimizer=optimizer, ema=ema, meta=meta, rng=True)
        if path.name == CHECKPOINT_LAST:  # every rank keeps track of what rank 0 has on disk
            last_checkpoint = {"epoch": epoch, "batch": batch, "step": step}

    # --- the loop ----------------------------------------------------------------------------
    interrupted = checkpoint_saved = False
    row: dict = {}
    # Where the run stands: (epoch, batches of it done, running sums [loss, correct, images]).
    # A Ctrl-C saves exactly this at the next step boundary, so --resume continues with the next batch.
    position = {"epoch": start_epoch, "batch": start_batch, "sums": partial}
    stop = StopRequest(announce=info.is_main)
    stop.install()  # restored in `finally`
    try:
        for epoch in range(start_epoch, t.epochs):
            train_loader.set_epoch(epoch)
            model.train()
            progress.start_epoch(epoch, t.epochs, steps_per_epoch)
            sums = torch.tensor(position["sums"] or [0.0, 0.0, 0.0], dtype=torch.float64)  # loss, correct, images
            skip, started = position["batch"], time.perf_counter()
            position.update(epoch=epoch, sums=sums.tolist())
            stop_after_this_step = False  # set by each step's vote; stays False when a resume skips every batch
            for batch, (x, y) in enumerate(train_loader):
                if batch < skip:
                    continue  # resumed part-way: these batches were trained before the interruption
                x, y = dist_utils.shard(x, info), dist_utils.shard(y, info)
                factor = lr_factor(config.schedule, step, total_steps, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = group["peak_lr"] * factor
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    output = forward_model(x)
                    loss, logits = training_loss(output, y, smoothing, t.aux_weight)
                # This step over the whole global batch: [loss sum, correct, images] added over the ranks
                # (identity with one process), followed by the number of ranks asked to stop (Ctrl-C) so
                # far. A sync point, as the loss is checked every step; every rank gets the same numbers,
                # so a non-finite loss or a stop request stops all ranks together, at the same step (a
                # rank leaving alone would leave the others waiting in the next collective).
                local_sums = torch.tensor(
                    [loss.item() * len(x), (logits.argmax(dim=1) == hard_labels(y)).sum().item(), len(x)],
                    dtype=torch.float64)
                stop_vote = torch.tensor([1.0 if stop.requested else 0.0], dtype=torch.float64)
                batch_sums, stop_votes = dist_utils.all_reduce_sum(torch.cat([local_sums, stop_vote]), info).split(
                    [len(local_sums), len(stop_vote)])
                stop_after_this_step = stop_votes.item() > 0
                loss_value = batch_sums[0].item() / batch_sums[2].item()
                if not math.isfinite(loss_value):
                    # Recorded so `cnnlab diagnose` sees where the loss blew up.
                    step_log.append(step + 1, loss_value, optimizer.param_groups[0]["lr"])
                    raise NonFiniteLossError(
                        f"The training loss became {loss_value} at epoch {epoch + 1}, step {step + 1} (learning rate "
                        f"{optimizer.param_groups[0]['lr']:.3g}). This almost always means the learning rate is too "
                        f"high: lower optim.lr (try a tenth) or add warmup. {_on_disk_text(run_dir, last_checkpoint)}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if o.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                step += 1
                sums += batch_sums  # global sums: what rank 0 saves on Ctrl-C is the whole epoch so far
                position.update(batch=batch + 1, sums=sums.tolist())
                step_log.append(step, loss_value, optimizer.param_groups[0]["lr"])
                tensorboard.step(step, loss_value, optimizer.param_groups[0]["lr"])
                progress.update(batch + 1, loss_value, batch_sums[1].item() / batch_sums[2].item(),
                                sums[2].item() / max(time.perf_counter() - started, 1e-9))
                if step in snapshots and info.is_main:
                    number = sorted(snapshots).index(step) + 1
                    save_weights(run_dir / f"snapshot-{number}.safetensors", model.state_dict(),
                                 {**expect, "step": step, "epoch": epoch + 1})
                # --- step boundary: weights, buffers, optimiser, EMA, RNG and position all describe `step`.
                if stop_after_this_step:
                    break
            if stop_after_this_step:
                # Ctrl-C: save this step boundary (position and the epoch's partial sums) and stop. DDP: the
                # other ranks wait for rank 0's write, as torchrun ends the whole job once one rank exits.
                interrupted = True
                checkpoint(run_dir / CHECKPOINT_LAST, position["epoch"], position["batch"], running=position["sums"])
                dist_utils.barrier(info)
                checkpoint_saved = True
                break
            seconds = time.perf_counter() - started
            # DDP: every rank evaluates its shard with rank 0's buffers, the ones the checkpoint holds (see
            # _use_rank0_buffers), so a resumed run evaluates exactly as an uninterrupted one.
            _use_rank0_buffers(model, info)
            if ema is not None:
                _use_rank0_buffers(ema.module, info)
            val_loss, val_acc = evaluate(model, val_loader, device, autocast_dtype, info)
            row = {"epoch": epoch + 1, "step": step, "train_loss": sums[0].item() / sums[2].item(),
                   "train_acc": sums[1].item() / sums[2].item(), "val_loss": val_loss, "val_acc": val_acc,
                   "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                   "images_per_second": sums[2].item() / seconds}
            if ema is not None:
                row["ema_val_loss"], row["ema_val_acc"] = evaluate(ema.module, val_loader, device, autocast_dtype, info)
            metrics.append(row)
            tensorboard.epoch(row)
            progress.end_epoch(row)
            position = {"epoch": epoch + 1, "batch": 0, "sums": None}
            if val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "epoch": epoch + 1}
                checkpoint(run_dir / CHECKPOINT_BEST, epoch + 1, 0)
            checkpoint(run_dir / CHECKPOINT_LAST, epoch + 1, 0)
            if info.is_main:
                save_curves(run_dir, run_dir / "curves.png", smoothing=config.log.smoothing)
            if on_epoch_end is not None:
                on_epoch_end(row)
            # --- epoch boundary: a Ctrl-C since the last step's vote (in its backward, EMA update, the
            # evaluation or a checkpoint write) stops here; last.safetensors above already holds this
            # position. After the last epoch the run is complete and simply ends.
            if epoch + 1 < t.epochs and _any_rank(stop.requested, info):
                interrupted = checkpoint_saved = True
                break
    except KeyboardInterrupt:
        # A second Ctrl-C (or a KeyboardInterrupt from elsewhere) stopped the run at once, mid-step: the
        # model may hold half a step (BatchNorm statistics of a forward pass, a partial EMA update), so
        # nothing is saved and the last checkpoint on disk, written at a step boundary, stays the one to resume.
        interrupted = True
        checkpoint_saved = False
    finally:
        stop.restore()
        progress.close()
        step_log.close()
        tensorboard.close()
        dist_utils.cleanup(info)
    if info.is_main and not interrupted:
        report = final_report(read_metrics_rows(run_dir), run_dir, best)
        write_text_atomic(run_dir / "report.txt", report + "\n", "the run report")
        if console is not None:
            console.print(report)
    return TrainResult(run_dir=run_dir, best_val_acc=best["val_acc"], best_epoch=best["epoch"], final=row,
                       interrupted=interrupted, checkpoint_saved=checkpoint_saved, last_checkpoint=last_checkpoint)


def _any_rank(flag: bool, info: dist_utils.DistInfo) -> bool:
    """Whether ``flag`` is set on any rank: a sync point under DDP (once per epoch), the flag itself otherwise."""
    votes = dist_utils.all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64), info)
    return votes.item() > 0


def _use_rank0_buffers(module: torch.nn.Module, info: dist_utils.DistInfo) -> None:
    """DDP: copy rank 0's buffers (BatchNorm statistics) into every rank's ``module``; nothing with one process.

    Without SyncBatchNorm each rank's forward pass moves its BatchNorm statistics with its own shard,
    and the EMA copy averages them, so after a step the ranks' buffers differ slightly. DDP broadcasts
    rank 0's buffers before each training forward pass, but evaluation and the EMA would otherwise use
    each rank's own, which no checkpoint holds (rank 0 saves its own): a resumed run, every rank
    loading rank 0's, would then evaluate differently from an uninterrupted one.
    """
    if info.enabled:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)  # a sync point, once per epoch


def _on_disk_text(run_dir: Path, last_checkpoint: Optional[dict]) -> str:
    """What an error can promise about the run folder: the last checkpoint, or that none was written yet."""
    if last_checkpoint is None:
        return (f"No checkpoint was written to '{run_dir}' yet (the first is saved at the end of epoch 1), "
                "so there is nothing to resume: start the run again.")
    return (f"The last checkpoint in '{run_dir}' ({describe_checkpoint(last_checkpoint)}) is intact.")


def read_metrics_rows(run_dir: Path) -> list[dict]:
    from cnnlab.train.logging import read_metrics

    return read_metrics(run_dir / "metrics.csv")


def _write_summary(model, dataset, run_dir: Path) -> None:
    """The per-layer summary of the model at the data's input size, as text in the run folder."""
    from rich.console import Console

    from cnnlab.analysis import summary
    from cnnlab.analysis.report import summary_table, totals_lines
    from cnnlab.io import write_text_atomic

    result = summary(model, (model.in_chans, dataset.image_size, dataset.image_size))
    text_console = Console(width=160, record=True, file=io.StringIO())
    text_console.print(summary_table(result))
    for line in totals_lines(result):
        text_console.print(line)
    write_text_atomic(run_dir / "summary.txt", text_console.export_text(), "the model summary")
