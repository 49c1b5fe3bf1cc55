"""Images per second for one training epoch of Fashion-MNIST: cnnlab's MemoryLoader against a torch
DataLoader running the same augmentations per image with torchvision v2.

Run: .venv/bin/python bench/loader.py [--batch-size 256] [--epochs-limit 1.0] [--device cpu]
     (Fashion-MNIST from `apt-get install dataset-fashion-mnist`, or its idx files in $CNNLAB_DATA)

Both sides see the 60,000 training images (cnnlab's train and held-out val splits together) with the
'standard' preset for 28x28 gray images: random pad-and-crop shift, horizontal flip, brightness and
contrast jitter, normalisation. The DataLoader tries num_workers 0, 1 and 2 on a bounded number of
batches and then runs a whole epoch with the fastest; its worker start-up is part of that epoch, as it
is in training. The MemoryLoader epoch starts after its one-off copy of the data to the device.

Both sides run in this one process, one after the other; run it with nothing else on the machine (the
machine and the load average are printed at the start and the end).
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from cnnlab.config import DataConfig
from cnnlab.data import compute_stats, load_source, resolve_aug
from cnnlab.data.memory import MemoryLoader
from cnnlab.data.sources import Split
from cnnlab.devices import synchronize

from _machine import checked_device, count, fraction, load_average, machine_line, run_main  # bench/ is on sys.path when a bench script runs

WORKER_COUNTS = (0, 1, 2)
PROBE_BATCHES = 30  # batches timed per worker count to choose the fastest (after the first batch)
WARMUP_BATCHES = 3  # MemoryLoader batches run before timing (first-call allocations)


class AugmentedImages(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) in memory, each passed through a per-image transform on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def per_image_pipeline(aug, size: int, mean, std) -> v2.Compose:
    """The 'standard' small-image augmentations as torchvision v2 transforms, one image at a time."""
    return v2.Compose([
        v2.RandomCrop(size, padding=aug.translate, fill=0),  # pad-and-crop shift by up to aug.translate px
        v2.RandomHorizontalFlip(aug.hflip),
        v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1
        v2.ColorJitter(brightness=aug.color_jitter, contrast=aug.color_jitter),  # no saturation on gray images
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def time_batches(batches, limit: int, device: torch.device, skip_first: bool = False) -> tuple[int, float]:
    """(images, seconds) over at most ``limit`` batches, each moved to ``device``.

    With ``skip_first`` the clock starts after the first batch arrives (worker start-up excluded).
    """
    images, start = 0, time.perf_counter()
    for count, (x, _) in enumerate(batches):
        x = x.to(device, non_blocking=True)
        if skip_first and count == 0:
            synchronize(device)
            start = time.perf_counter()
            continue
        images += len(x)
        if count + 1 >= limit:
            break
    synchronize(device)
    return images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=count, default=256)
    parser.add_argument("--epochs-limit", type=fraction, default=1.0,
                        help="share of an epoch to time (1.0: the whole epoch; 0.2 for a quick look)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=count, default=None,
                        help="torch threads in this process (default: torch's). On a machine whose cores are busy "
                             "with other work, more threads than free cores slow the batched ops down sharply")
    args = parser.parse_args()
    device = checked_device(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"{machine_line()}; torch {torch.__version__}; load average before: "
          f"{load_average()} (run with nothing else on the cores)")
    data = load_source(DataConfig(spec="fashion-mnist"))
    images = torch.cat([data.train.images, data.val.images])  # (60000, 1, 28, 28) uint8
    labels = torch.cat([data.train.labels, data.val.labels])
    size, channels = data.image_size, data.channels
    stats = compute_stats(Split(labels=labels, images=images), channels, size)
    aug = resolve_aug("standard", size, channels)
    epoch_batches = len(labels) // args.batch_size  # drop_last, as in training
    limit = max(1, round(epoch_batches * args.epochs_limit))
    if min(limit, epoch_batches) < 2:  # each DataLoader probe skips its first batch: one would time nothing
        # a larger --epochs-limit helps only below its largest, 1 (a whole epoch), and with 2 batches in an epoch
        larger = " or a larger --epochs-limit" if args.epochs_limit < 1 and epoch_batches >= 2 else ""
        parser.error(f"--batch-size {args.batch_size} makes {epoch_batches} whole "
                     f"batch{'' if epoch_batches == 1 else 'es'} of the {len(labels):,} "
                     f"training images, and --epochs-limit {args.epochs_limit:g} times {min(limit, epoch_batches)} of "
                     f"them; the bench needs at least 2: give a smaller --batch-size (at most {len(labels) // 2:,})"
                     f"{larger}.")
    print(f"Fashion-MNIST train: {tuple(images.shape)} uint8, batch {args.batch_size}, {limit} of {epoch_batches} "
          f"batches timed, device {device}, torch threads {torch.get_num_threads()}")
    print(f"augmentation: translate {aug.translate} px, hflip {aug.hflip}, brightness/contrast {aug.color_jitter}")

    # (a) the fast path: whole batches on the device.
    memory = MemoryLoader(images, labels, batch_size=args.batch_size, mean=stats.mean, std=stats.std,
                          num_classes=data.num_classes, aug=aug, train=True, device=device, seed=0)
    time_batches(memory, WARMUP_BATCHES, device)
    memory.set_epoch(1)
    fast_images, fast_seconds = time_batches(memory, limit, device)
    fast_rate = fast_images / fast_seconds

    # (b) per-image torchvision v2 in a DataLoader: pick the worker count on a few batches, then time an epoch.
    dataset = AugmentedImages(images, labels, per_image_pipeline(aug, size, stats.mean, stats.std))

    def data_loader(workers: int):
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                           num_workers=workers, pin_memory=device.type == "cuda")

    probe_rates = {}
    for workers in WORKER_COUNTS:
        probed, seconds = time_batches(data_loader(workers), min(limit, PROBE_BATCHES + 1), device, skip_first=True)
        probe_rates[workers] = probed / seconds
        print(f"  DataLoader num_workers={workers}: {probe_rates[workers]:9,.0f} images/s over {probed} images")
    best = max(probe_rates, key=probe_rates.get)
    slow_images, slow_seconds = time_batches(data_loader(best), limit, device)
    slow_rate = slow_images / slow_seconds

    print(f"MemoryLoader (batched, {device}):          {fast_rate:10,.0f} images/s  ({fast_seconds:.2f} s)")
    print(f"DataLoader + torchvision v2 (workers={best}): {slow_rate:10,.0f} images/s  ({slow_seconds:.2f} s)")
    print(f"speed-up: {fast_rate / slow_rate:.1f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    run_main(main)
