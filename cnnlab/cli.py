"""The ``cnnlab`` command line: one short function per command, each calling the library.

Bad input raises :class:`cnnlab.errors.CnnlabError`; :func:`main` prints its message as one
paragraph on stderr and exits with code 2 (with the traceback only under ``--debug``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cnnlab.errors import CnnlabError

app = typer.Typer(
    help="cnnlab: build, analyse, train, tune, evaluate and transfer convolutional image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
if not console.is_terminal:
    console.width = 160  # piped or logged output: do not squeeze tables into 80 columns
_state = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")) -> None:
    _state["debug"] = debug


def parse_input_size(text: str, in_chans: Optional[int] = None) -> tuple[int, int, int]:
    """Parse ``CxHxW``, ``HxW`` or ``S`` (square) into (C, H, W); C defaults to ``in_chans`` or 3."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2, 3) or any(n < 1 for n in numbers):
        raise CnnlabError(
            f"Cannot read input size '{text}': write CxHxW (3x224x224), HxW (224x224) or one side (224), "
            "all positive whole numbers."
        )
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) == 2:
        numbers = [in_chans or 3, *numbers]
    if in_chans is not None and numbers[0] != in_chans:
        raise CnnlabError(f"--input has {numbers[0]} channels but --in-chans is {in_chans}: make them agree.")
    return tuple(numbers)  # type: ignore[return-value]


def _count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _build_on_meta(name: str, **kwargs):
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    import torch

    from cnnlab.models import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)


@app.command("models")
def models_cmd(
    pattern: Optional[str] = typer.Argument(None, help="Only names matching this (wildcards allowed: 'resnet*')."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the model zoo: name, family, parameters (1000 classes, RGB) and default input.

    Example: cnnlab models 'resnet*'
    """
    from cnnlab.models import list_models, model_info

    names = list_models(pattern)
    if not names:
        raise CnnlabError(f"No model matches '{pattern}'. Run `cnnlab models` to see them all.")
    rows = []
    for name in names:
        info = model_info(name)
        rows.append(
            {
                "name": name,
                "family": info.family,
                "params": _count_params(_build_on_meta(name)),
                "default_input": list(info.default_input),
                "min_size": info.min_size,
                "paper": info.paper,
                "torchvision": info.torchvision,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"cnnlab models ({len(rows)})")
    for column in ("name", "family", "params", "default input", "min size", "torchvision twin"):
        table.add_column(column, justify="right" if column in ("params", "min size") else "left")
    for row in rows:
        table.add_row(
            row["name"],
            row["family"],
            f"{row['params']:,}",
            "x".join(map(str, row["default_input"])),
            str(row["min_size"]),
            row["torchvision"] or "",
        )
    console.print(table)


@app.command("build")
def build_cmd(
    model: str = typer.Argument(..., help="Model name, see `cnnlab models`."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW; default: the model's paper input."),
    num_classes: int = typer.Option(1000, "--num-classes", help="Classifier outputs."),
    in_chans: Optional[int] = typer.Option(None, "--in-chans", help="Input channels (1 = grayscale)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="bn, gn, ln, ln2d, in or none; default: the paper's."),
    act: Optional[str] = typer.Option(None, "--act", help="relu, gelu, tanh, ...; default: the paper's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Build a model with options and check one forward pass at an input size.

    Example: cnnlab build resnet20 --input 1x28x28 --num-classes 10 --norm gn
    """
    from cnnlab.models import check_input_size, model_info

    info = model_info(model)
    if in_chans is None and input_size is not None:
        size = parse_input_size(input_size)
        in_chans = size[0]
    else:
        in_chans = in_chans if in_chans is not None else info.default_input[0]
        size = parse_input_size(input_size, in_chans) if input_size else (in_chans, *info.default_input[1:])
    net = _build_on_meta(model, num_classes=num_classes, in_chans=in_chans, norm=norm, act=act)
    out_shape = check_input_size(net, size, model)
    import torch

    net.eval()  # as check_input_size runs it: a batch of two in eval mode suits every norm
    with torch.no_grad():
        features = net.forward_features(torch.zeros((2, *size), device="meta"))
    result = {
        "name": model,
        "family": info.family,
        "paper": info.paper,
        "input": list(size),
        "features": list(features.shape[1:]),
        "output": list(out_shape),
        "params": _count_params(net),
        "classifier": repr(net.get_classifier()),
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"[bold]{model}[/bold] ({info.family}, {info.paper})")
    console.print(f"  input       {'x'.join(map(str, size))}")
    console.print(f"  features    {'x'.join(map(str, result['features']))}")
    console.print(f"  output      {'x'.join(map(str, out_shape))}")
    console.print(f"  parameters  {result['params']:,}")
    console.print(f"  classifier  {result['classifier']}")


def _analyse(model: str, input_size: Optional[str], in_chans: Optional[int], batch: int, **kwargs):
    """Summary of a zoo model; the input defaults to the paper's size with ``in_chans`` channels."""
    from cnnlab.analysis import summary
    from cnnlab.models import model_info

    info = model_info(model)
    if in_chans is not None and in_chans < 1:
        raise CnnlabError(f"--in-chans must be at least 1, got {in_chans}.")
    if input_size is not None:
        size = parse_input_size(input_size, in_chans)
    else:
        size = ((in_chans or info.default_input[0]), *info.default_input[1:])
    return summary(model, size, batch=batch, in_chans=size[0], **kwargs)


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help="Model name, see `cnnlab models`."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW; default: the model's paper input."),
    batch: int = typer.Option(1, "--batch", help="Images per batch: memory and op counts are for the batch."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Collapse modules deeper than this into one row."),
    units: str = typer.Option("macs", "--units", help="macs, or flops (= 2 x MACs) to compare with FLOP counters."),
    num_classes: int = typer.Option(1000, "--num-classes", help="Classifier outputs."),
    in_chans: Optional[int] = typer.Option(None, "--in-chans", help="Input channels (1 = grayscale)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-layer output shape, memory, parameters, MACs, receptive field and jump, with totals.

    Example: cnnlab summary alexnet --input 3x227x227
    """
    from cnnlab.analysis.report import summary_table, totals_lines, unit_factor

    unit_factor(units)  # validate before the work
    if depth is not None and depth < 1:
        raise CnnlabError(f"--depth must be at least 1, got {depth}.")
    result = _analyse(model, input_size, in_chans, batch, num_classes=num_classes)
    if as_json:
        data = result.to_dict(depth)
        data["units"] = units
        if units == "flops":
            for row in data["rows"]:
                row["macs"], row["pool_ops"] = 2 * row["macs"], 2 * row["pool_ops"]
            for key in ("macs", "pool_ops"):
                data["totals"][key] *= 2
            totals = data["totals"]
            totals["all_ops"] = totals["macs"] + totals["pool_ops"] + totals["element_ops"]
        print(json.dumps(data, indent=2))
        return
    console.print(summary_table(result, depth, units))
    for line in totals_lines(result, units):
        console.print(line, highlight=False)


@app.command("compare")
def compare_cmd(
    models: list[str] = typer.Argument(..., help="Two or more model names."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW for all; default: each paper's."),
    units: str = typer.Option("macs", "--units", help="macs or flops (= 2 x MACs)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Save a scatter plot (MACs vs params, bubble = memory)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compare architectures side by side: parameters, MACs, activation and training memory.

    Example: cnnlab compare alexnet vgg16 googlenet resnet50 --plot zoo.png
    """
    from cnnlab.analysis.report import comparison_rows, human_bytes, human_count, save_comparison_plot, unit_factor

    unit_factor(units)
    if len(models) < 2:
        raise CnnlabError(f"compare needs two or more models, got {len(models)}; for one model use `cnnlab summary`.")
    results = [_analyse(name, input_size, None, 1) for name in models]
    rows = comparison_rows(results, units)
    if plot is not None:
        save_comparison_plot(results, plot, units)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} models, batch 1")
    for column in ("model", "input", "params", "MACs" if units == "macs" else "FLOPs", "activations",
                   "training (SGD)"):
        table.add_column(column, justify="left" if column in ("model", "input") else "right")
    for row in rows:
        table.add_row(row["model"], "x".join(map(str, row["input_size"])), human_count(row["params"]),
                      human_count(row[units]), human_bytes(row["activation_memory_bytes"]),
                      human_bytes(row["training_memory_bytes_sgd"]))
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


data_app = typer.Typer(help="Look at a data set: statistics and augmented samples.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SPEC_HELP = "digits, fashion-mnist, folder:PATH, csv:FILE or synthetic[:classes=N,train=N,...]"
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="Folder with Fashion-MNIST's idx files.")
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", help="Side in pixels the model sees; default: the data's.")
VAL_FRACTION_OPTION = typer.Option(0.1, "--val-fraction", help="Training share held out for validation when there is no val split.")
SEED_OPTION = typer.Option(0, "--seed", help="Seed of the splits (and of the samples shown).")
CHANNELS_OPTION = typer.Option(None, "--channels", help="Deliver 1 (gray) or 3 (RGB) channels, as the model takes; default: the data's.")


def _load_data(spec, data_dir, image_size, val_fraction, seed, channels=None, buckets=None):
    """Load a data source and warn, on stderr, about every file it skipped and every conversion."""
    from cnnlab.config import DataConfig
    from cnnlab.data import load_source
    from cnnlab.data.sources import announce

    config = DataConfig(spec=spec, data_dir=data_dir, image_size=image_size, val_fraction=val_fraction,
                        seed=seed, channels=channels, buckets=buckets)
    dataset = load_source(config)
    announce(dataset)
    return dataset


@data_app.command("stats")
def data_stats_cmd(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    data_dir: Optional[str] = DATA_DIR_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    val_fraction: float = VAL_FRACTION_OPTION,
    seed: int = SEED_OPTION,
    channels: Optional[int] = CHANNELS_OPTION,
    buckets: Optional[str] = typer.Option(None, "--buckets", help="Aspect-ratio buckets W:H,... (e.g. 4:3,1:1,3:4): report each bucket's shape, images and worst distortion."),
    refresh: bool = typer.Option(False, "--refresh", help="Recompute the statistics instead of reading the cache."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classes, images per split, image size, channels, and per-channel mean/std of the training split.

    Mean and std are on the [0, 1] pixel scale over every training pixel, cached next to the data
    (or in ~/.cache/cnnlab/stats). Example: cnnlab data stats fashion-mnist
    """
    from cnnlab.data import dataset_stats, stats_path
    from cnnlab.data.sources import skipped_text

    dataset = _load_data(spec, data_dir, image_size, val_fraction, seed, channels, buckets)
    stats, cached = dataset_stats(dataset, refresh=refresh)
    result = {
        "spec": dataset.spec,
        "classes": dataset.classes,
        "num_classes": dataset.num_classes,
        "channels": dataset.channels,
        "image_size": [dataset.image_size, dataset.image_size],
        "splits": {name: {"images": len(split), "per_class": split.labels.bincount(minlength=dataset.num_classes).tolist(),
                          "in_memory": split.in_memory}
                   for name, split in dataset.splits().items()},
        "mean": list(stats.mean),
        "std": list(stats.std),
        "pca_eigvals": list(stats.pca_eigvals) if stats.pca_eigvals else None,
        "stats_cache": str(stats_path(dataset)),
        "stats_from_cache": cached,
        "skipped": [{"file": name, "reason": why} for name, why in dataset.skipped],
        "notices": dataset.notices,
        "buckets": _bucket_report(dataset) if dataset.buckets else None,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(f"[bold]{dataset.spec}[/bold]: {dataset.num_classes} classes, {dataset.channels} channel(s), "
                  f"{dataset.image_size}x{dataset.image_size} pixels")
    table = Table()
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("smallest class", justify="right")
    table.add_column("largest class", justify="right")
    table.add_column("held", justify="left")
    for name, info in result["splits"].items():
        counts = info["per_class"]
        table.add_row(name, f"{info['images']:,}", f"{min(counts):,}", f"{max(counts):,}", "memory" if info["in_memory"] else "files")
    console.print(table)
    channel_names = ["R", "G", "B"] if dataset.channels == 3 else ["gray"]
    for label, values in (("mean", stats.mean), ("std", stats.std)):
        console.print(f"  {label:<5}" + "  ".join(f"{c} {v:.4f}" for c, v in zip(channel_names, values)))
    console.print(f"  classes: {', '.join(dataset.classes)}")
    console.print(f"  statistics {'read from' if cached else 'written to'} {result['stats_cache']}")
    if dataset.skipped:
        console.print(f"  {skipped_text(dataset.skipped)}")
    for row in result["buckets"] or []:
        console.print(f"  bucket {row['ratio']:>5} -> {row['height']}x{row['width']} (HxW): {row['images']:,} training "
                      f"images, worst aspect change {row['max_distortion_percent']:.1f}%")
    if result["buckets"]:
        from cnnlab.data.buckets import max_distortion

        square = max_distortion(dataset.train.sizes, [(1, 1)])
        console.print(f"  (resizing every image to a square would change aspect ratios by up to {square:.1f}%)")


def _bucket_report(dataset) -> list[dict]:
    """Per bucket of the training split: ratio, (H, W), image count and worst aspect-ratio change."""
    from cnnlab.data.buckets import assign_buckets, bucket_shapes, max_distortion

    sizes = dataset.train.sizes
    assigned = assign_buckets(sizes, dataset.buckets)
    rows = []
    for index, (ratio, (height, width)) in enumerate(zip(dataset.buckets, bucket_shapes(dataset.buckets, dataset.image_size))):
        members = [size for size, bucket in zip(sizes, assigned) if bucket == index]
        rows.append({"ratio": f"{ratio[0]}:{ratio[1]}", "height": height, "width": width, "images": len(members),
                     "max_distortion_percent": max_distortion(members, [ratio]) if members else 0.0})
    return rows


@data_app.command("show")
def data_show_cmd(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    aug: str = typer.Option("standard", "--aug", help="Augmentation preset: none, light, standard or strong."),
    out: Path = typer.Option(Path("augmentations.png"), "--out", help="PNG file to write."),
    rows: int = typer.Option(6, "--rows", min=1, help="Training images shown, one per row."),
    views: int = typer.Option(6, "--views", min=1, help="Augmented views per image."),
    data_dir: Optional[str] = DATA_DIR_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    val_fraction: float = VAL_FRACTION_OPTION,
    seed: int = SEED_OPTION,
    channels: Optional[int] = CHANNELS_OPTION,
) -> None:
    """Save a labelled grid of augmented training samples (and mixup/CutMix results when on).

    Each row is one image: the original, then augmented views. Look at it: if you cannot tell the
    class any more, the augmentation is too strong. Example: cnnlab data show fashion-mnist --aug strong
    """
    from cnnlab.data import dataset_stats
    from cnnlab.data.show import augmentation_grid, save_augmentation_grid

    dataset = _load_data(spec, data_dir, image_size, val_fraction, seed, channels)
    stats, _ = dataset_stats(dataset)
    grid = augmentation_grid(dataset, stats, aug, rows=rows, views=views, seed=seed)
    save_augmentation_grid(grid, out, title=f"{dataset.spec}: augmentation preset '{aug}'")
    shown, views = grid["views"].shape[:2]  # --rows is capped at the training images there are
    console.print(f"{shown} images x {views} augmented views" + (" + a row of mixed samples" if grid["mixed"] is not None else "")
                  + f" written to {out}")


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Model name (`cnnlab models`); sets model.name."),
    data: Optional[str] = typer.Option(None, "--data", help=f"Data: {SPEC_HELP}; sets data.spec."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (a run's config.yaml repeats that run)."),
    overrides: list[str] = typer.Option([], "--set", help="SECTION.KEY=VALUE, repeatable: --set optim.lr=0.05 --set train.epochs=20"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder; default runs/MODEL-DATA-TIME."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Shortcut for --set train.epochs=N."),
    quiet: bool = typer.Option(False, "--quiet", help="One plain line per epoch, no progress bar."),
) -> None:
    """Train a model on a data set and record everything in a run folder.

    The run folder gets config.yaml, metrics.csv, steps.csv, last/best checkpoints (safetensors),
    curves.png, summary.txt and report.txt. Ctrl-C saves a checkpoint that --resume continues.
    Multi-process: torchrun --nproc-per-node 2 -m cnnlab train ... (DDP; rank 0 writes).

    Example: cnnlab train --model lenet5 --data digits --epochs 5 --out runs/lenet-digits
    """
    import time as _time

    from cnnlab.config import RunConfig, apply_overrides, load_config
    from cnnlab.train.engine import train

    if resume is not None:
        if not (resume / "config.yaml").is_file():
            raise CnnlabError(f"--resume '{resume}' is not a run folder (it has no config.yaml).")
        if config is not None or model or data or overrides or epochs:
            raise CnnlabError("--resume continues a run exactly as configured: leave out --config, --model, --data, --set and --epochs.")
        run_config = load_config(resume / "config.yaml")
        run_dir = resume
    else:
        run_config = load_config(config) if config is not None else RunConfig()
        sets = list(overrides)
        if model:
            sets.append(f"model.name={model}")
        if data:
            sets.append(f"data.spec={data}")
        if epochs is not None:
            sets.append(f"train.epochs={epochs}")
        run_config = apply_overrides(run_config, sets)
        if out is None:
            stamp = _time.strftime("%Y%m%d-%H%M%S")
            safe_data = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_config.data.spec)[:40]
            out = Path("runs") / f"{run_config.model.name}-{safe_data}-{stamp}"
        run_dir = out
    if quiet:
        run_config.log.quiet = True
    result = train(run_config, run_dir, resume=resume is not None, console=console)
    if result.interrupted:
        print(f"interrupted: a checkpoint was saved; continue with: cnnlab train --resume {run_dir}", file=sys.stderr)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # torchrun: only rank 0 speaks
        console.print(f"run folder: {run_dir}  (curves: {run_dir / 'curves.png'})")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script. Usage errors exit 2 (click's own convention)."""
    try:
        app(args=argv)
    except CnnlabError as err:
        if _state["debug"]:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
