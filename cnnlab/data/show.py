"""A labelled grid of augmented training samples, so a person can check they still look in-distribution.

The lecture's rule: after augmenting, look at the images; if a person can no longer tell the class,
neither will the network. Each row is one training image: the original (as evaluation sees it)
followed by several augmented views. When mixup or CutMix is on, a last row shows mixed images with
their soft labels.
"""

from __future__ import annotations

import math
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
from cnnlab.text import mib_over_limit


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
    """Refuse a grid whose augmented views, rows x views float32 images (rows*views, C, size, size), would
    exceed ``memory_limit_mb``: the limit the data sources hold their images under (data.memory_limit_mb).

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
        fix = "One image alone is above it: use a smaller --image-size, or raise --memory-limit-mb."
    elif fits < rows:
        fix = (f"At most {fits:,} images fit: lower --rows to {fits} with --views 1, use a smaller --image-size, "
               "or raise --memory-limit-mb.")
    else:
        fix = (f"At most {fits:,} images fit: lower --views to {fits // rows} (with --rows {rows}) or --rows to "
               f"{fits // views} (with --views {views}), use a smaller --image-size, or raise --memory-limit-mb.")
    raise CnnlabError(
        f"--rows {shown_rows} x --views {views} = {rows * views:,} augmented images of {counted(channels, 'channel')} x "
        f"{size}x{size} pixels take {mib_over_limit(need)} as float32, above data.memory_limit_mb={memory_limit_mb} (the limit "
        f"the data is held under). {fix}"
    )


def augmentation_grid(dataset: DataSet, stats: ChannelStats, aug: AugConfig | str, *, rows: int = 6,
                      views: int = 6, seed: int = 0, memory_limit_mb: int = DataConfig.memory_limit_mb) -> dict:
    """Originals, augmented views and (when on) mixed samples, as pixel tensors with captions.

    A training split of fewer than ``rows`` images is shown whole, and "warnings" says so. A grid
    whose augmented views would take more than ``memory_limit_mb`` as float32 is refused
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
    originals, labels = _first_batch(dataset, picked, stats, train=False, batch_size=rows, seed=seed)
    # One pass over the chosen images per view, each its own epoch of draws. One batch holding every view
    # put several views of an image into one group of images that RandAugment and AutoAugment draw their
    # operations for together (cnnlab.data.memory.RANDAUGMENT_GROUP): those views came out the same.
    no_mixing = replace(resolved, mixup_alpha=0.0, cutmix_alpha=0.0)
    loader = make_loader(dataset, picked, stats, shuffle=False, drop_last=False, train=True, aug=no_mixing,
                         batch_size=rows, seed=seed)
    # Each pass is made pixels as it comes, into the grid's one tensor: the views are held once, as the size check
    # counts them, beside one pass (a list of passes, their stack and its pixels held four times as much).
    size = dataset.image_size
    shown = torch.empty((rows, views, size, size, dataset.channels))  # (rows, views, H, W, C) in [0, 1]
    for view in range(views):
        loader.set_epoch(view)
        shown[:, view] = _to_pixels(next(iter(loader))[0], stats)  # (rows, C, H, W) -> (rows, H, W, C)
    result = {
        "originals": _to_pixels(originals, stats),
        "views": shown,
        "labels": [dataset.classes[i] for i in labels.tolist()],
        "mixed": None,
        "mixed_labels": [],
        "aug": resolved,
        "warnings": warnings,
    }
    # a run whose mix_prob is 0 never mixes a batch: no row of what it never does
    if (resolved.mixup_alpha > 0 or resolved.cutmix_alpha > 0) and resolved.mix_prob > 0 and len(train) >= 2:
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


DPI = 110  # the PNG's pixels per inch
# One cell of a grid that fits: an image and its caption line, in inches (at DPI: 176 x 187 pixels)
CELL_INCHES = (1.6, 1.7)
# A larger grid's cells shrink so that the figure stays within this many inches each way (2,640 pixels): at
# 100 x 100 views a cell is then about 26 pixels, a 28 x 28 image at about its own size
MAX_FIGURE_INCHES = 24.0
TITLE_INCHES = 0.4  # the strip above the grid that holds its title
CAPTION_POINTS = 7  # caption size in a cell of CELL_INCHES; smaller cells get proportionally smaller text
GAP_FRACTION = 0.1  # the white gap beside each image, as a fraction of the image's side


def grid_mosaic(cells: list[list[torch.Tensor]], size: int, gray: bool):
    """The rows of ``cells`` ((size, size, C) images in [0, 1]) laid into one white (H, W, C) float32 array.

    Returns (mosaic, (cell width, cell height, gap)) in array pixels. One cell is ``size`` pixels plus
    a gap on its right, and is as much taller as CELL_INCHES is: its caption line sits in the strip above
    its image. The image of row r, column c starts at (r * cell_h + cell_h - size, gap + c * cell_w); a
    gap's margin is left and below.
    """
    import numpy as np

    gap = max(1, round(size * GAP_FRACTION))
    cell_w = size + gap
    cell_h = round(cell_w * CELL_INCHES[1] / CELL_INCHES[0])
    columns = max(len(row) for row in cells)
    mosaic = np.ones((len(cells) * cell_h + gap, columns * cell_w + gap, 1 if gray else 3), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            top, left = r * cell_h + cell_h - size, gap + c * cell_w
            mosaic[top:top + size, left:left + size] = image.numpy()
    return mosaic, (cell_w, cell_h, gap)


def _shrunk(images: torch.Tensor, side: int) -> torch.Tensor:
    """(N, H, W, C) images in [0, 1] resized to ``side`` x ``side`` (bilinear, antialiased: averaged, not
    decimated)."""
    x = images.permute(0, 3, 1, 2).float()  # (N, C, H, W)
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def save_augmentation_grid(grid: dict, path: str | Path, title: str = "") -> Path:
    """Draw the grid from :func:`augmentation_grid` and write it as PNG (atomically).

    The cells are laid into one image (:func:`grid_mosaic`) and drawn with one ``imshow``: a figure of
    one axes per cell took 38 s to draw 30 x 30 views, and grew with the square of the grid's side.
    Each row is captioned once, over its original (the views are of the same image); a mixed row has
    a caption per cell, its soft label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_output_file(path, "--out", (".png",))
    check_output_folder(path.parent, "--out", create=True)
    rows, views, size = grid["views"].shape[:3]  # (rows, views, H, W, C), square images: H == W == size
    gray = grid["originals"].shape[-1] == 1
    columns = views + 1
    shown_rows = rows + (grid["mixed"] is not None)
    scale = min(1.0, MAX_FIGURE_INCHES / (CELL_INCHES[0] * columns), MAX_FIGURE_INCHES / (CELL_INCHES[1] * shown_rows))
    # The images at about the pixels the figure gives them, when that is fewer than their own: a mosaic at full
    # size (11,000 pixels a side for 100 x 100 views of 96 x 96) took gigabytes to build and draw, to be shrunk.
    shown = max(1, math.ceil(scale * CELL_INCHES[0] * DPI / (1 + GAP_FRACTION)))  # a cell is an image and its gap
    originals, view_images, mixed = grid["originals"], grid["views"], grid["mixed"]
    if shown < size:
        originals, mixed = _shrunk(originals, shown), None if mixed is None else _shrunk(mixed, shown)
        view_images = _shrunk(view_images.flatten(0, 1), shown).reshape(rows, views, shown, shown, -1)
        size = shown
    # (row of cells, caption per cell or None): the images' rows, then the mixed row when there is one
    layout = [([originals[r], *view_images[r]], [f"{grid['labels'][r]} (original)", *[None] * views])
              for r in range(rows)]
    if mixed is not None:
        layout.append((list(mixed), list(grid["mixed_labels"])))

    mosaic, (cell_w, cell_h, gap) = grid_mosaic([images for images, _ in layout], size, gray)

    width, height = CELL_INCHES[0] * columns * scale, CELL_INCHES[1] * len(layout) * scale
    fig = plt.figure(figsize=(width, height + TITLE_INCHES))
    ax = fig.add_axes((0, 0, 1, height / (height + TITLE_INCHES)))
    ax.imshow(mosaic[..., 0] if gray else mosaic, cmap="gray" if gray else None, vmin=0, vmax=1,
              # enlarged images keep their pixels' edges; shrunk ones are filtered, not decimated
              interpolation="nearest" if scale * CELL_INCHES[0] * DPI >= cell_w else "antialiased")
    ax.axis("off")
    points = max(2.0, CAPTION_POINTS * scale)
    for r, (_, captions) in enumerate(layout):
        for c, caption in enumerate(captions):
            if caption is not None:  # class names are printable by display_name; '$' in a name is not TeX
                ax.text(gap + c * cell_w + size / 2, r * cell_h + cell_h - size - 1, display_name(caption), ha="center",
                        va="bottom", fontsize=points, parse_math=False, clip_on=True)
    fig.suptitle(display_name(title or f"augmentation preset '{grid['aug'].preset}'"), fontsize=9, parse_math=False,
                 y=1 - TITLE_INCHES / (height + TITLE_INCHES) / 3)
    try:
        with atomic_path(path, "the sample grid") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path
