"""The training loop: ``train(config, out)`` turns a RunConfig into a trained model and a run folder.

Read it top to bottom: set up (devices, data, model, optimiser), then per step
``lr = peak * schedule(step); forward; loss; backward; clip; step; EMA``, then per epoch
evaluate, log, checkpoint. Resume restores every piece of state (weights, optimiser, EMA, RNG,
position inside the epoch), so a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
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
    interrupted: bool = False


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
    """Fail before training when the run folder cannot be written or the disk is too full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CnnlabError(f"Cannot write to the run folder '{run_dir}': {err.strerror or err}. "
                          "Choose a writable --out.") from None
    free = shutil.disk_usage(run_dir).free
    if free < bytes_needed:
        raise CnnlabError(f"The disk holding '{run_dir}' has {free / 2**20:.0f} MiB free but checkpoints need about "
                          f"{bytes_needed / 2**20:.0f} MiB. Free some space or choose another --out.")


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
    """
    from cnnlab.data.loaders import make_loader
    from cnnlab.data.sources import announce
    from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
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
    if info.is_main:
        check_run_folder(run_dir, bytes_needed=parameter_bytes * 8)  # last + best: weights, 2 moments, EMA
    metrics = MetricsLog(run_dir / "metrics.csv", enabled=info.is_main)
    step_log = StepLossLog(run_dir / "steps.csv", enabled=info.is_main)
    if resume:
        last = run_dir / CHECKPOINT_LAST
        if not last.is_file():
            raise CnnlabError(f"Nothing to resume in '{run_dir}': it has no {CHECKPOINT_LAST}. Start the run without --resume.")
        meta = load_checkpoint(last, model=model, optimizer=optimizer, ema_model=ema, restore_rng=True, expect=expect)
        start_epoch, start_batch, step = meta["epoch"], meta["batch"], meta["step"]
        best = meta["best"]
        partial = meta.get("partial")
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
        if not info.is_main:
            return
        meta = {**expect, "epoch": epoch, "batch": batch, "step": step, "best": best, "partial": running,
                "classes": dataset.classes, "image_size": dataset.image_size, "mean": list(stats.mean),
                "std": list(stats.std), "config": config_to_dict(config)}
        save_checkpoint(path, model=model, optimizer=optimizer, ema=ema, meta=meta, rng=True)

    # --- the loop ----------------------------------------------------------------------------
    interrupted = False
    row: dict = {}
    # Where the run stands: (epoch, batches of it done, running sums [loss, correct, images]).
    # A Ctrl-C saves exactly this, so --resume continues with the next batch.
    position = {"epoch": start_epoch, "batch": start_batch, "sums": partial}
    try:
        for epoch in range(start_epoch, t.epochs):
            train_loader.set_epoch(epoch)
            model.train()
            progress.start_epoch(epoch, t.epochs, steps_per_epoch)
            sums = torch.tensor(position["sums"] or [0.0, 0.0, 0.0], dtype=torch.float64)  # loss, correct, images
            skip, started = position["batch"], time.perf_counter()
            position.update(epoch=epoch, sums=sums.tolist())
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
                # (identity with one process). A sync point, as the loss is checked every step; every rank
                # gets the same numbers, so a non-finite loss stops all ranks together.
                batch_sums = dist_utils.all_reduce_sum(torch.tensor(
                    [loss.item() * len(x), (logits.argmax(dim=1) == hard_labels(y)).sum().item(), len(x)],
                    dtype=torch.float64), info)
                loss_value = batch_sums[0].item() / batch_sums[2].item()
                if not math.isfinite(loss_value):
                    # Recorded so `cnnlab diagnose` sees where the loss blew up.
                    step_log.append(step + 1, loss_value, optimizer.param_groups[0]["lr"])
                    raise NonFiniteLossError(
                        f"The training loss became {loss_value} at epoch {epoch + 1}, step {step + 1} (learning rate "
                        f"{optimizer.param_groups[0]['lr']:.3g}). This almost always means the learning rate is too "
                        f"high: lower optim.lr (try a tenth) or add warmup. The last checkpoint in '{run_dir}' is intact.")
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
            seconds = time.perf_counter() - started
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
    except KeyboardInterrupt:
        interrupted = True
        checkpoint(run_dir / CHECKPOINT_LAST, position["epoch"], position["batch"], running=position["sums"])
    finally:
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
                       interrupted=interrupted)


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
