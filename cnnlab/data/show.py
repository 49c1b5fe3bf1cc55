"""A labelled grid of augmented training samples, so a person can check they still look in-distribution.

The lecture's rule: after augmenting, look at the images; if a person can no longer tell the class,
neither will the network. Each row is one training image: the original (as evaluation sees it)
followed by several augmented views. When mixup or CutMix is on, a last row shows mixed images with
their soft labels.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import AugConfig, DataConfig
from cnnlab.data.loaders import make_loader
from cnnlab.data.sources import DataSet, display_name
from cnnlab.data.stats import ChannelStats
from cnnlab.data.transforms import resolve_aug
from cnnlab.errors import CnnlabError, counted
from cnnlab.io import atomic_path, check_output_file, check_output_folder


def _first_batch(dataset, split, stats, **kwargs):
    loader = make_loader(dataset, split, stats, shuffle=False, drop_last=False, **kwargs)
    return next(iter(loader))


def _to_pixels(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Undo normalisation: (B, C, H, W) normalised -> (B, H, W, C) in [0, 1] for imshow."""
    mean = torch.tensor(stats.mean).view(1, -1, 1, 1)
    std = torch.tensor(stats.std).view(1, -1, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


FLOAT_BYTES = torch.finfo(torch.float32).bits // 8  # the loaders deliver normalised float32 batches


def check_grid_size(rows: int, views: int, channels: int, size: int, memory_limit_mb: int,
                    asked_rows: int | None = None) -> None:
    """Refuse a grid whose batch of augmented views, rows x views float32 images (rows*views, C, size, size),
    would exceed ``memory_limit_mb``: the limit the data sources hold their images under (data.memory_limit_mb).

    ``asked_rows`` is --rows when a smaller training split cut it down to ``rows``, so the message names both.
    """
    per_image = channels * size * size * FLOAT_BYTES
    need = rows * views * per_image
    limit = memory_limit_mb * 2**20
    if need <= limit:
        return
    fits = limit // per_image  # images of this size the limit holds
    shown_rows = f"{asked_rows} (the {rows} training images)" if asked_rows not in (None, rows) else str(rows)
    if fits == 0:
        fix = "One image alone is above it: use a smaller --image-size."
    elif fits < rows:
        fix = (f"At most {fits:,} images fit: lower --rows to {fits} with --views 1, or use a smaller "
               "--image-size.")
    else:
        fix = (f"At most {fits:,} images fit: lower --views to {fits // rows} (with --rows {rows}) or --rows to "
               f"{fits // views} (with --views {views}), or use a smaller --image-size.")
    raise CnnlabError(
        f"--rows {shown_rows} x --views {views} = {rows * views:,} augmented images of {channels} channel(s) x "
        f"{size}x{size} pixels are one float32 batch of {need / 2**20:,.0f} MiB, above memory_limit_mb={memory_limit_mb} (the limit "
        f"the data is held under). {fix}"
    )


def augmentation_grid(dataset: DataSet, stats: ChannelStats, aug: AugConfig | str, *, rows: int = 6,
                      views: int = 6, seed: int = 0, memory_limit_mb: int = DataConfig.memory_limit_mb) -> dict:
    """Originals, augmented views and (when on) mixed samples, as pixel tensors with captions.

    A training split of fewer than ``rows`` images is shown whole, and "warnings" says so. A grid
    whose augmented views would take more than ``memory_limit_mb`` as one float32 batch is refused
    (:func:`check_grid_size`) before any of it is made.

    Returns {"originals": (rows, H, W, C), "views": (rows, views, H, W, C), "labels": [str],
    "mixed": (n, H, W, C) or None, "mixed_labels": [str], "aug": resolved AugConfig,
    "warnings": [str], what was done other than asked, one line each}.
    """
    resolved = resolve_aug(aug, dataset.image_size, dataset.channels, dataset.hflip_safe)
    # One batch of many images: aspect-ratio buckets would split it by shape, so the grid shows every
    # image as the square (image_size x image_size) per-image pipeline gives it.
    dataset = replace(dataset, buckets=None)
    train = dataset.train
    if len(train) == 0:
        raise CnnlabError(f"{dataset.spec} has no training images to show.")
    warnings = []
    asked_rows = rows
    if len(train) < rows:  # every image is shown, and the user is told rather than left to count rows
        warnings.append(f"--rows {rows}: the training split has {counted(len(train), 'image')}; "
                        f"the grid shows all {len(train)}")
        rows = len(train)
    check_grid_size(rows, views, dataset.channels, dataset.image_size, memory_limit_mb, asked_rows)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train), generator=generator)[:rows]  # (rows,)
    picked = train.subset(chosen)
    common = dict(batch_size=rows * views, seed=seed)
    originals, labels = _first_batch(dataset, picked, stats, train=False, **common)
    # every chosen image `views` times, view-major ([0, 1, .., rows-1, 0, 1, ..]) so that batch-level
    # draws (RandAugment's per-group operations) fall on different views of one image
    repeated = picked.subset(torch.arange(rows).repeat(views))
    no_mixing = replace(resolved, mixup_alpha=0.0, cutmix_alpha=0.0)
    augmented, _ = _first_batch(dataset, repeated, stats, train=True, aug=no_mixing, **common)
    result = {
        "originals": _to_pixels(originals, stats),
        "views": _to_pixels(augmented, stats).reshape(views, rows, *augmented.shape[2:], -1).transpose(0, 1),
        "labels": [dataset.classes[i] for i in labels.tolist()],
        "mixed": None,
        "mixed_labels": [],
        "aug": resolved,
        "warnings": warnings,
    }
    if (resolved.mixup_alpha > 0 or resolved.cutmix_alpha > 0) and len(train) >= 2:
        # mixup and CutMix draw one mixing weight per batch: mix pairs, one batch per shown sample,
        # so the row shows the spread of weights and both methods
        always = replace(resolved, mix_prob=1.0)
        mixed, captions = [], []
        for column in range(views + 1):
            pair = train.subset(torch.randperm(len(train), generator=generator)[:2])
            x, targets = _first_batch(dataset, pair, stats, train=True, aug=always, batch_size=2, seed=seed + 1 + column)
            mixed.append(_to_pixels(x[:1], stats))
            captions.append(_soft_caption(targets[0].float().cpu(), dataset.classes))
        result["mixed"] = torch.cat(mixed)
        result["mixed_labels"] = captions
    return result


def _soft_caption(target: torch.Tensor, classes: list[str]) -> str:
    """'Coat .62 / Bag .38' for a soft target row; the plain class for a hard one."""
    if target.dim() == 0:
        return classes[int(target)]
    weights, index = target.topk(2)
    return " / ".join(f"{classes[i]} {w:.2f}" for w, i in zip(weights.tolist(), index.tolist()) if w > 0.005)


def save_augmentation_grid(grid: dict, path: str | Path, title: str = "") -> Path:
    """Draw the grid from :func:`augmentation_grid` and write it as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_file(path, "--out", (".png",))
    check_output_folder(path.parent, "--out", create=True)
    rows, views = grid["views"].shape[:2]
    extra = 1 if grid["mixed"] is not None else 0
    columns = views + 1
    fig, axes = plt.subplots(rows + extra, columns, figsize=(1.6 * columns, 1.7 * (rows + extra)), squeeze=False)
    gray = grid["originals"].shape[-1] == 1
    show = dict(cmap="gray", vmin=0, vmax=1) if gray else {}

    def draw(ax, image, caption):
        pixels = image.numpy()  # (H, W, C) in [0, 1]
        ax.imshow(pixels[..., 0] if gray else pixels, **show)
        ax.set_title(display_name(caption), fontsize=7, parse_math=False)
        ax.axis("off")

    for r in range(rows):
        draw(axes[r, 0], grid["originals"][r], f"{grid['labels'][r]} (original)")
        for v in range(views):
            draw(axes[r, v + 1], grid["views"][r, v], grid["labels"][r])
    if extra:
        for c in range(columns):
            if c < len(grid["mixed"]):
                draw(axes[rows, c], grid["mixed"][c], grid["mixed_labels"][c])
            else:
                axes[rows, c].axis("off")
    # Captions are class names: printable by display_name already (applying it again is harmless, and
    # covers grids built by hand), and shown as written: parse_math=False, so '$' in a name is not TeX.
    fig.suptitle(display_name(title or f"augmentation preset '{grid['aug'].preset}'"), fontsize=9, parse_math=False)
    fig.tight_layout()
    try:
        with atomic_path(path, "the sample grid") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
