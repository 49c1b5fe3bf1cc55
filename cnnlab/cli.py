"""The ``cnnlab`` command line: one short function per command, each calling the library.

Bad input raises :class:`cnnlab.errors.CnnlabError`; :func:`main` prints its message as one
paragraph on stderr and exits with code 2 (with the traceback only under ``--debug``).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import math
import os
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

try:  # here: a memory limit too small to load torch may be too small to import it later; absent on Windows
    import resource
except ImportError:
    resource = None

from cnnlab.config import MODEL_SPEC_HELP, DataConfig
from cnnlab.errors import (CPU_ALLOCATION_REFUSED, BatchOfOneError, CnnlabError, counted, display_name, is_out_of_memory,
                           noun_for)
from cnnlab.io import (HeldInterrupt, check_output_file, check_output_folder, claim_new_folder, missing_folders,
                       remove_if_empty)
from cnnlab.limits import MAX_BATCH, MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_SEED, MAX_STEPS
from cnnlab.run import (CHECKPOINT_LAST, CONFIG_FILE, DIAGNOSIS_FILE, EVAL_METRICS_FILE, REPORT_FILE, REPORT_HTML_FILE,
                        SEARCH_TRIALS_DIR, SNAPSHOT_SHOWN, TRAINING_MODEL_KEYS, RunFolder, refuse_a_runs_own_file)
from cnnlab.text import duration_text, note_lines
from cnnlab.train.distributed import (
    is_main_process,
    is_timeout,
    joined_process_group,
    launch_problem,
    launched_processes,
    timeout_text,
)

# The model spec help of build, summary and compare, which refuse the keys that act only while training.
TRAIN_ONLY_HELP = f" ({', '.join(TRAINING_MODEL_KEYS)}: only in `cnnlab train`)"

app = typer.Typer(
    help="cnnlab: build, analyse, train, tune, evaluate and transfer convolutional image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs are reflowed, not broken at the source's line ends
)


def _one_value_type(text: Optional[str]) -> Optional[str]:
    """The type of one value of a repeatable option or a variadic argument: typer showed `--set <list[str]>`
    and `images... <list[Path]>`, as if one use took a list; each use (each word) takes one value."""
    if text and text.startswith("<list[") and text.endswith("]>"):
        return f"<{text[len('<list['):-len(']>')].lower()}>"
    return text


def _flag_type(option, ctx) -> Optional[str]:
    """The type column of --help: none for a flag, which takes no value (typer showed `--json <bool>`)."""
    return None if option.is_bool_flag else _one_value_type(_option_type(option, ctx))


def _argument_type(argument, ctx) -> Optional[str]:
    return _one_value_type(_typer_argument_type(argument, ctx))


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type
_typer_argument_type = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = _argument_type

PIPED_WIDTH = 160  # characters: piped or logged output is not squeezed into 80 columns
TERMINAL_WIDTH = 80  # characters: a terminal whose COLUMNS says 0 (rich then printed nothing at all)


def make_console(**options) -> Console:
    """The console commands print to: at its terminal's width, :data:`PIPED_WIDTH` when not a terminal."""
    made = Console(**options)
    if not made.is_terminal:
        made.width = PIPED_WIDTH
    elif made.width <= 0:
        made.width = TERMINAL_WIDTH
    return made


console = make_console()
WIDEST_TABLE = 400  # characters: a table wider than this is fitted to it (a wide line wraps in the terminal)


def print_table(table) -> None:
    """Print a table at its natural width where the terminal is narrower: rich fitted it to the terminal, cutting
    model names to "…" and splitting numbers over lines ("118,0" / "13,95" / "2") in 80 columns. A wider line
    wraps in the terminal (or scrolls in `less -S`) with every name and number whole."""
    natural = min(console.measure(table, options=console.options.update_width(WIDEST_TABLE)).maximum, WIDEST_TABLE)
    if natural <= console.width:
        console.print(table)
        return
    # print(width=) is capped at the console's own width: the console is widened for this table alone, and its
    # own setting (None: the terminal's, read at each print) put back
    kept = console._width
    console.width = natural
    try:
        console.print(table)
    finally:
        console._width = kept
_state = {"debug": False}


# The one command that runs over several processes (DDP) when torchrun starts it.
DISTRIBUTED_COMMAND = "train"


@app.callback()
def _options(ctx: typer.Context,
             debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")) -> None:
    _state["debug"] = debug
    # WORLD_SIZE and RANK left set and wrong by a shell or another launcher, before any work
    problem = launch_problem()
    if problem:
        raise CnnlabError(problem)
    _refuse_under_torchrun(ctx.invoked_subcommand)


def _refuse_under_torchrun(command: Optional[str]) -> None:
    """Under torchrun every process runs the whole command line: each would do the whole work of any command
    but train (an LR sweep, a search's trials, an evaluation) and write the same files, so those are refused."""
    processes = launched_processes()
    if processes > 1 and command is not None and command != DISTRIBUTED_COMMAND:
        raise CnnlabError(
            f"cnnlab {command} runs in one process, and torchrun started {processes}: each would do the whole "
            f"{command} and write the same files. Run it without torchrun (python -m cnnlab {command} ... or "
            f"cnnlab {command} ...); `cnnlab {DISTRIBUTED_COMMAND}` is the command that trains over several "
            "processes.")


# An --input CxHxW whose last number is one of these and whose first two are both at least SWAPPED_SIDE was written
# HxWxC (gray, RGB, RGBA images): refused unless the model's channels are given
LIKELY_CHANNELS = (1, 3, 4)
SWAPPED_SIDE = 8
# How build and summary take a channel count; compare has no --in-chans (COMPARE_CHANNELS_GIVEN_BY)
CHANNELS_GIVEN_BY = "--in-chans {n} (or in_chans={n} in the model)"
COMPARE_CHANNELS_GIVEN_BY = "in_chans={n} in each model (NAME,in_chans={n})"


def parse_input_size(text: str, in_chans: Optional[int] = None,
                     in_chans_from: str = "--in-chans, or in_chans= in the model",
                     give_channels: str = CHANNELS_GIVEN_BY) -> tuple[int, int, int]:
    """Parse ``CxHxW``, ``HxW`` or ``S`` (square) into (C, H, W); C defaults to ``in_chans`` or 3.
    ``in_chans_from`` says where ``in_chans`` was given, for the message when C disagrees with it;
    ``give_channels`` how the command takes a channel count ({n}: the count), for an input written HxWxC."""
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
    if numbers[0] > MAX_CHANNELS or max(numbers[1:]) > MAX_IMAGE_SIDE:
        raise CnnlabError(f"Input size '{text}' is too large: at most {MAX_CHANNELS} channels and {MAX_IMAGE_SIDE} "
                          "pixels a side.")
    channels, height, width = numbers
    if in_chans is None and width in LIKELY_CHANNELS and min(channels, height) >= SWAPPED_SIDE:
        # 32x32x3: an image's height x width x channels, as numpy and PIL hold it, read as 32 channels of 32x3
        # pixels. Built as given, the summary's numbers would be those of a network nobody meant.
        raise CnnlabError(
            f"--input '{text}' reads as channels x height x width: {channels} channels of {height}x{width}-pixel "
            f"images, which looks like height x width x channels written the other way round. Write "
            f"{width}x{channels}x{height} for {width}-channel {channels}x{height} images; to mean {channels} channels, "
            f"say so with {give_channels.format(n=channels)}.")
    if in_chans is not None and numbers[0] != in_chans:
        raise CnnlabError(f"--input has {numbers[0]} channels but the model takes {in_chans} ({in_chans_from}): "
                          "make them agree.")
    return tuple(numbers)  # type: ignore[return-value]


# Above the limit the parser says so; below 1 _model_and_input (--num-classes) and the builders (--in-chans) do.
NUM_CLASSES_OPTION = typer.Option(None, "--num-classes", max=MAX_CLASSES,
                                  help="Classifier outputs; default: num_classes= in the model, else 1000.")
IN_CHANS_OPTION = typer.Option(None, "--in-chans", max=MAX_CHANNELS,
                               help="Input channels (1 = grayscale); default: in_chans= in the model, else --input's.")


@app.command("models")
def models_cmd(
    pattern: Optional[str] = typer.Argument(
        None, help="Only names matching this: a wildcard over the whole name ('resnet*'), or, without *, ? or [, "
                   "any part of it ('resnet' also lists preact_resnet18)."),
    torchvision: bool = typer.Option(False, "--torchvision", help="List torchvision's classifiers (use as tv:NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the model zoo: name, family, parameters (1000 classes, RGB), default input and smallest input side.

    With --torchvision, list every torchvision classification model instead; any of them trains,
    summarises and exports as `tv:NAME`. A model that takes one side only (a ViT) shows it as '224 exactly'.

    Example: cnnlab models 'resnet*'; cnnlab models --torchvision efficientnet
    """
    from cnnlab.models import torchvision_table, zoo_table

    # counted on the meta device once, then cached per model source (and torchvision version)
    rows = torchvision_table(pattern) if torchvision else zoo_table(pattern)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = "torchvision models" if torchvision else "cnnlab models"
    table = Table(title=f"{title} ({len(rows)})")
    for column in ("name", "family", "params", "default input", "min size", "torchvision twin"):
        table.add_column(column, justify="right" if column in ("params", "min size") else "left")
    for row in rows:
        table.add_row(
            row["name"],
            row["family"],
            f"{row['params']:,}",
            "x".join(map(str, row["default_input"])),
            # a model that takes one side only (a ViT) would read "at least" under a bare number
            f"{row['min_size']} exactly" if row["exact_size"] else str(row["min_size"]),
            row["torchvision"] or "",
        )
    print_table(table)


@app.command("build")
def build_cmd(
    model: str = typer.Argument(..., help=f"Model: {MODEL_SPEC_HELP}; names from `cnnlab models`{TRAIN_ONLY_HELP}."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW; default: the model's paper input (the mlp's: its input_size)."),
    num_classes: Optional[int] = NUM_CLASSES_OPTION,
    in_chans: Optional[int] = IN_CHANS_OPTION,
    norm: Optional[str] = typer.Option(None, "--norm", help="bn, gn (gn:GROUPS), ln, ln2d, in or none; default: the paper's."),
    act: Optional[str] = typer.Option(None, "--act", help="relu, gelu, tanh, ...; default: the paper's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Build a model with options and check one forward pass at an input size.

    Example: cnnlab build resnet20 --input 1x28x28 --num-classes 10 --norm gn

    Options: cnnlab build resnet20,se=16,norm=gn:8 --input 3x32x32 (or resnet20,num_classes=10,in_chans=1)
    """
    from cnnlab.models import build_on_meta, check_input_size, count_params, model_info

    model, model_options, size = _model_and_input(model, input_size, num_classes=num_classes, in_chans=in_chans,
                                                  norm=norm, act=act)
    info = model_info(model)
    net = build_on_meta(model, **model_options)
    out_shape = check_input_size(net, size, model)
    import torch

    from cnnlab.models._meta import shapes_on_meta
    from cnnlab.models.stages import classifier_names, forward_trunk

    net.eval()  # as check_input_size runs it: a batch of two in eval mode suits every norm
    with torch.no_grad(), shapes_on_meta():
        features = forward_trunk(net, torch.zeros((2, *size), device="meta"))
    result = {
        "name": model,
        "family": info.family,
        "paper": info.paper,
        "input": list(size),
        "features": list(features.shape[1:]),
        "output": list(out_shape),
        "params": count_params(net),
        "classifier": repr(net.get_submodule(classifier_names(net)[0])),
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


def _same_layer_name(one, other) -> bool:
    """Whether two norm or activation names (gn:4, leaky_relu:0.1) name the same layer as the factories read them:
    the name in any case, '-' for '_', and the number after the colon as a number (GN:4 is gn:4)."""
    def read(text) -> tuple:
        name, colon, arg = str(text).partition(":")
        try:
            number = float(arg)
        except ValueError:
            number = arg.strip()
        return name.strip().lower().replace("-", "_"), colon, number

    return read(one) == read(other)


def _model_and_input(text: str, input_size: Optional[str], *, num_classes: Optional[int] = None,
                     in_chans: Optional[int] = None, give_channels: str = CHANNELS_GIVEN_BY,
                     **given) -> tuple[str, dict, tuple[int, int, int]]:
    """(name, ``create_model`` keyword arguments, input (C, H, W)) of a model spec NAME[,KEY=VALUE,...]
    (MODEL_SPEC_HELP) and the --input, --num-classes and --in-chans options, for the commands that build
    a model outside a run (build, summary, compare).

    The ``given`` model keys (--norm, --act) and the spec's num_classes= and in_chans= are honoured; an
    option that disagrees with the spec's value is refused rather than either being dropped.
    The keys that act only while training (init_from, init_ema, new_head, freeze, whiten) are refused: the network built here
    would not show them. The input defaults to the paper's size with the model's channels; its channels
    and in_chans must agree.
    """
    from cnnlab.config import RunConfig, apply_overrides, model_spec_overrides
    from cnnlab.models import default_input
    from cnnlab.run import model_kwargs

    spec_sets = model_spec_overrides(text)
    for item in spec_sets:
        dotted, _, value = item.partition("=")
        key = dotted.removeprefix("model.")
        if key in TRAINING_MODEL_KEYS:
            raise CnnlabError(f"{key}={value} in the model '{text}' applies only to `cnnlab train` (whose --model "
                              f"accepts it): {', '.join(TRAINING_MODEL_KEYS)} act on the weights while training, and "
                              f"build, summary and compare build a fresh network that would not show them. Leave "
                              f"{key} out of the model here.")
    spec_config = apply_overrides(RunConfig(), spec_sets).model
    for key, value in given.items():
        # As for num_classes= below: an option that disagrees with the spec is refused, not silently preferred.
        spec_value = getattr(spec_config, key)
        if value is not None and spec_value is not None and not _same_layer_name(spec_value, value):
            raise CnnlabError(f"The model '{text}' sets {key}={spec_value} but --{key} {value} asks for another "
                              "value: give one of the two.")
    # a flag that names the spec's own layer (checked above) adds nothing: the spec's entry holds
    sets = spec_sets + [f"model.{key}={value}" for key, value in given.items()
                        if value is not None and getattr(spec_config, key) is None]
    config = apply_overrides(RunConfig(), sets).model
    kwargs = model_kwargs(config)
    if num_classes is not None and num_classes < 1:
        # create_model(num_classes=0) builds a network without classifier; the commands show classifiers.
        raise CnnlabError(f"num_classes must be a whole number from 1 to {MAX_CLASSES} for --num-classes, got "
                          f"{num_classes}.")
    for key, option, value, most in (("num_classes", "--num-classes", num_classes, MAX_CLASSES),
                                     ("in_chans", "--in-chans", in_chans, MAX_CHANNELS)):
        if key not in kwargs:
            if value is not None:
                kwargs[key] = value
            continue
        spec_value = kwargs[key]
        if not isinstance(spec_value, int) or isinstance(spec_value, bool) or not 1 <= spec_value <= most:
            raise CnnlabError(f"{key}={spec_value!r} in the model '{text}' must be a whole number from 1 to {most}.")
        if value is not None and value != spec_value:
            raise CnnlabError(f"The model '{text}' sets {key}={spec_value} but {option} {value} asks for another "
                              "value: give one of the two.")
    channels = kwargs.get("in_chans")
    if channels is not None and channels < 1:  # before the input size reads it; the builders check the rest
        raise CnnlabError(f"--in-chans must be at least 1, got {channels}.")
    if input_size is not None:
        # Name where the channels were given: compare has no --in-chans, and checks several models.
        origin = f"--in-chans {in_chans}" if in_chans is not None else f"in_chans={channels} in the model '{text}'"
        size = parse_input_size(input_size, channels, origin, give_channels)
    else:  # the paper's (C, H, W), with the channels (and the mlp's side) the model is built for
        size = default_input(config.name, kwargs)
    kwargs["in_chans"] = size[0]
    return config.name, kwargs, size


def _analyse(spec: str, input_size: Optional[str], in_chans: Optional[int], batch: int,
             num_classes: Optional[int] = None, give_channels: str = CHANNELS_GIVEN_BY):
    """Summary of a zoo model given as a spec (NAME[,KEY=VALUE,...]) at its input (:func:`_model_and_input`).
    The summary is labelled with the whole spec."""
    from cnnlab.analysis import summary

    model, model_options, size = _model_and_input(spec, input_size, num_classes=num_classes, in_chans=in_chans,
                                                  give_channels=give_channels)
    # As a dict: a model option may share a name with summary's own arguments (the mlp's input_size).
    result = summary(model, size, batch=batch, model_options=model_options)
    result.model_name = spec
    return result


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help=f"Model: {MODEL_SPEC_HELP}; names from `cnnlab models`{TRAIN_ONLY_HELP}."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW; default: the model's paper input (the mlp's: its input_size)."),
    # --batch and --units default to None, so that --stages can tell them given from left out.
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=MAX_BATCH,
                                        help="Images per batch (default 1): memory and op counts are for the batch."),
    depth: Optional[int] = typer.Option(None, "--depth", min=1, max=100, help="Collapse modules deeper than this into one row each, by module path (the blocks of an nn.ModuleList into the list's row)."),
    units: Optional[str] = typer.Option(None, "--units", help="macs (the default), or flops (= 2 x MACs) to compare "
                                        "with FLOP counters (pooling and element ops stay counts); --json then "
                                        "gives each row's and the total's FLOPs under flops (and, as before, under "
                                        "macs)."),
    num_classes: Optional[int] = NUM_CLASSES_OPTION,
    in_chans: Optional[int] = IN_CHANS_OPTION,
    stages: bool = typer.Option(False, "--stages", help="List the stages (the names model.freeze takes) and their "
                                "parameters at --input instead; --batch, --depth and --units do not apply."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-layer output shape, memory, parameters, MACs, receptive field and jump, with totals.

    With --stages: each stage (stem, stage1.., head) with its modules and parameter count.

    Example: cnnlab summary alexnet --input 3x227x227; cnnlab summary tv:resnet18 --stages

    Options: cnnlab summary alexnet,lrn=true,hidden_drop_rate=0.5 (or resnet20,num_classes=10,in_chans=1)
    """
    from cnnlab.analysis.report import summary_table, totals_lines, unit_factor

    if stages:
        # The stage table has parameters only: the options that shape the per-layer table would be dropped.
        unused = [option for option, value in (("--batch", batch), ("--depth", depth), ("--units", units))
                  if value is not None]
        if unused:
            raise CnnlabError(f"--stages lists each stage's modules and parameters, so {', '.join(unused)} "
                              f"(for the per-layer table) cannot apply: leave {'it' if len(unused) == 1 else 'them'} "
                              "out, or leave out --stages for the per-layer table.")
        _print_stages(model, input_size, num_classes, in_chans, as_json)
        return
    batch, units = batch or 1, units or "macs"
    unit_factor(units)  # validate before the work
    result = _analyse(model, input_size, in_chans, batch, num_classes=num_classes)
    if as_json:
        print(json.dumps(result.to_dict(depth, units), indent=2))
        return
    print_table(summary_table(result, depth, units))
    for line in totals_lines(result, units):
        console.print(line, highlight=False)


def _print_stages(spec: str, input_size: Optional[str], num_classes: Optional[int], in_chans: Optional[int],
                  as_json: bool) -> None:
    """The stage table of a model spec, built for its input (:func:`_model_and_input`) and checked at it."""
    from cnnlab.models import build_on_meta, check_input_size
    from cnnlab.models.stages import freeze_choices, stage_table

    model, model_options, size = _model_and_input(spec, input_size, num_classes=num_classes, in_chans=in_chans)
    net = build_on_meta(model, **model_options)
    check_input_size(net, size, model)  # an input the network cannot take is refused, as by the layer table
    rows = stage_table(net)
    if as_json:
        # Labelled with the whole spec, as the per-layer JSON and the table's title are: the options change the stages.
        print(json.dumps({"model": spec, "input_size": list(size), "stages": rows,
                          "freeze_choices": freeze_choices(net)}, indent=2))
        return
    table = Table(title=Text(f"{spec} at {'x'.join(map(str, size))}: stages"))
    for column in ("stage", "modules", "params"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        table.add_row(row["stage"], Text(", ".join(row["modules"])), f"{row['params']:,}")
    print_table(table)
    console.print(f"model.freeze takes: {', '.join(freeze_choices(net))} (or none)", highlight=False)


@app.command("compare")
def compare_cmd(
    models: list[str] = typer.Argument(..., help=f"Two or more models, each {MODEL_SPEC_HELP}{TRAIN_ONLY_HELP}."),
    input_size: Optional[str] = typer.Option(None, "--input", help="Input CxHxW for all; default: each paper's (the mlp's: its input_size)."),
    units: str = typer.Option("macs", "--units", help="macs or flops (= 2 x MACs)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Save a scatter plot (MACs vs params, bubble = memory)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compare architectures side by side: parameters, MACs, activation and training memory.

    Example: cnnlab compare alexnet vgg16 googlenet resnet50 --plot zoo.png

    Options: cnnlab compare googlenet googlenet,naive=true resnet50 resnet50,se=16
    """
    from cnnlab.analysis.report import comparison_rows, human_bytes, human_count, save_comparison_plot, unit_factor

    unit_factor(units)
    if plot is not None:
        check_output_file(plot, "--plot", (".png",))
        refuse_a_runs_own_file(plot, "--plot")
    if len(models) < 2:
        raise CnnlabError(f"compare needs two or more models, got {len(models)}; for one model use `cnnlab summary`.")
    results = []
    for name in models:
        try:
            results.append(_analyse(name, input_size, None, 1, give_channels=COMPARE_CHANNELS_GIVEN_BY))
        except BatchOfOneError as err:  # its advice names --batch, which compare has not: one batch for all rows
            advice = str(err).rpartition(" Analyse it with")[0]
            given = f" --input {input_size}" if input_size else ""
            raise CnnlabError(f"{advice} compare analyses every model at batch 1: analyse this one with `cnnlab "
                              f"summary {shlex.quote(name)}{given} --batch 2`.") from None
    rows = comparison_rows(results, units)
    if plot is not None:
        save_comparison_plot(results, plot, units)
    if as_json:
        print(json.dumps(rows, indent=2))
        if plot is not None:  # the JSON is the rows alone: where the plot went is said on stderr
            print(f"plot written to {display_name(str(plot))}", file=sys.stderr)
        return
    table = Table(title=f"{len(rows)} models, batch 1")
    for column in ("model", "input", "params", "MACs" if units == "macs" else "FLOPs", "activations",
                   "training (SGD)"):
        table.add_column(column, justify="left" if column in ("model", "input") else "right")
    for row in rows:
        table.add_row(row["model"], "x".join(map(str, row["input_size"])), human_count(row["params"]),
                      human_count(row[units]), human_bytes(row["activation_memory_bytes"]),
                      human_bytes(row["training_memory_bytes_sgd"]))
    print_table(table)
    if plot is not None:
        console.print(f"plot written to {plot}", markup=False)


data_app = typer.Typer(help="Look at a data set: statistics and augmented samples.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SPEC_HELP = "digits, fashion-mnist, cifar10, cifar100[:coarse], folder:PATH, csv:FILE or synthetic[:classes=N,train=N,...]"
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="Folder with the data's files: Fashion-MNIST's idx files or a CIFAR archive (packed or extracted).")
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", min=1, max=MAX_IMAGE_SIDE, help="Side in pixels the model sees; default: the data's.")
VAL_FRACTION_OPTION = typer.Option(DataConfig.val_fraction, "--val-fraction", help="Training share held out for validation when there is no val split (a note says when the data has one).")
SEED_OPTION = typer.Option(DataConfig.seed, "--seed", min=0, max=MAX_SEED, help="Seed of the splits; sets data.seed.")
SHOW_SEED_OPTION = typer.Option(DataConfig.seed, "--seed", min=0, max=MAX_SEED, help="Seed of the splits and of the images and augmentations shown; sets data.seed.")
CHANNELS_OPTION = typer.Option(None, "--channels", help="Deliver 1 (gray) or 3 (RGB) channels, as the model takes; default: the data's.")
MEMORY_LIMIT_OPTION = typer.Option(DataConfig.memory_limit_mb, "--memory-limit-mb", min=0, help="data.memory_limit_mb: the MiB the data's images may take in memory (the sources always held there are refused above it, folders are read per batch).")


def _load_data(spec, data_dir, image_size, val_fraction, seed, channels=None, buckets=None,
               memory_limit_mb=DataConfig.memory_limit_mb):
    """Load a data source and print its notes and its skipped files (counted, the first few named) on stderr."""
    import math

    from cnnlab.config import DataConfig
    from cnnlab.data import load_source
    from cnnlab.data.sources import announce

    if not math.isfinite(val_fraction):  # nan passes the range checks as a config's value would say
        raise CnnlabError(f"--val-fraction {val_fraction} must be a finite number: the training share held out for "
                          "validation, such as 0.1.")
    config = DataConfig(spec=spec, data_dir=data_dir, image_size=image_size, val_fraction=val_fraction,
                        seed=seed, channels=channels, buckets=buckets, memory_limit_mb=memory_limit_mb)
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
    memory_limit_mb: int = MEMORY_LIMIT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classes, images per split, image size, channels, and per-channel mean/std of the training split.

    Mean and std are on the [0, 1] pixel scale over every training pixel, cached next to the data
    (or in ~/.cache/cnnlab/stats). Example: cnnlab data stats fashion-mnist
    """
    from cnnlab.data.report import data_report
    from cnnlab.data.sources import skipped_text

    dataset = _load_data(spec, data_dir, image_size, val_fraction, seed, channels, buckets, memory_limit_mb)
    result = data_report(dataset, refresh=refresh)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    size = f"{dataset.image_size}x{dataset.image_size} pixels"
    console.print(Text.assemble((dataset.spec, "bold"), f": {dataset.num_classes} classes, "
                                f"{counted(dataset.channels, 'channel')}, {size}"))
    table = Table()
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("smallest class", justify="right")
    table.add_column("largest class", justify="right")
    table.add_column("held", justify="left")
    for name, info in result["splits"].items():
        counts = info["per_class"]
        table.add_row(name, f"{info['images']:,}", f"{min(counts):,}", f"{max(counts):,}", "memory" if info["in_memory"] else "files")
    print_table(table)
    channel_names = ["R", "G", "B"] if dataset.channels == 3 else ["gray"]
    for label in ("mean", "std"):
        console.print(f"  {label:<5}" + "  ".join(f"{c} {v:.4f}" for c, v in zip(channel_names, result[label])))
    if result["std_at_floor"]:
        # Said, as np.std of the same images gives less: a constant channel has std 0
        floored = [channel_names[c] for c in result["std_at_floor"]]
        console.print(f"  ({', '.join(floored)}: std set to the floor of one grey level, 1/255, as "
                      f"{'that channel varies' if len(floored) == 1 else 'those channels vary'} less; normalising "
                      "by less would blow the differences up)", markup=False)
    console.print(f"  classes: {', '.join(dataset.classes)}", markup=False)
    kept = result["stats_from_cache"] or result["stats_written"]
    console.print(f"  statistics {'read from' if result['stats_from_cache'] else 'written to' if kept else 'not kept'} "
                  f"{result['stats_cache']}" + ("" if kept else " (it cannot be written there: they are computed "
                                                                 "again each time)"), markup=False)
    if dataset.skipped:
        console.print(f"  {skipped_text(dataset.skipped)}", markup=False)
    for row in result["buckets"] or []:
        console.print(f"  bucket {row['ratio']:>5} -> {row['height']}x{row['width']} (HxW): {row['images']:,} training "
                      f"images, worst aspect change {row['max_distortion_percent']:.1f}%")
    if result["buckets"]:
        console.print(f"  (resizing every image to a square would change aspect ratios by up to "
                      f"{result['square_distortion_percent']:.1f}%)")


@data_app.command("show")
def data_show_cmd(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    aug: str = typer.Option("standard", "--aug", help="Augmentation preset: none, light, standard or strong."),
    out: Path = typer.Option(Path("augmentations.png"), "--out", help="PNG file to write."),
    rows: int = typer.Option(6, "--rows", min=1, max=100, help="Training images shown, one per row (a smaller training split is shown whole, with a warning)."),
    views: int = typer.Option(6, "--views", min=1, max=100, help="Augmented views per image. Refused when rows x views images at the image size would exceed data.memory_limit_mb as float32."),
    data_dir: Optional[str] = DATA_DIR_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    val_fraction: float = VAL_FRACTION_OPTION,
    seed: int = SHOW_SEED_OPTION,
    channels: Optional[int] = CHANNELS_OPTION,
    memory_limit_mb: int = MEMORY_LIMIT_OPTION,
    overrides: list[str] = typer.Option([], "--set", help="aug.KEY=VALUE, repeatable: an augmentation field over the preset, as cnnlab train takes it (--set aug.erasing=0.5), so the grid shows what such a run trains on. Also data.normalize, data.mean and data.std: the normalisation whose mean fills erased boxes (default: the training split's)."),
) -> None:
    """Save a labelled grid of augmented training samples (and mixup/CutMix results when on).

    Each row is one image: the original, then augmented views. Look at it: if you cannot tell the
    class any more, the augmentation is too strong. Example: cnnlab data show fashion-mnist --aug strong
    """
    from cnnlab.data import dataset_stats
    from cnnlab.data.show import augmentation_grid, save_augmentation_grid

    check_output_file(out, "--out", (".png",))
    refuse_a_runs_own_file(out, "--out")
    aug_config, normalizing = _show_aug(aug, overrides)
    dataset = _load_data(spec, data_dir, image_size, val_fraction, seed, channels, memory_limit_mb=memory_limit_mb)
    if not isinstance(aug_config, str):  # fields set over the preset: what the pipeline leaves unused, as train says
        from cnnlab.data.transforms import resolve_aug, unused_aug_settings

        resolved = resolve_aug(aug_config, dataset.image_size, dataset.channels, dataset.hflip_safe)
        for note in unused_aug_settings(aug_config, resolved, dataset.channels, dataset.hflip_safe,
                                        dataset.image_size):
            print(f"note: {note}", file=sys.stderr)
    stats, _ = dataset_stats(dataset)
    if normalizing is not None:  # erasing fills with the normalisation's mean: draw the one the run would use
        from cnnlab.data.stats import resolve_normalization, with_normalization

        normalization = resolve_normalization(normalizing, stats, dataset.channels)
        print(f"note: {normalization.note}", file=sys.stderr)
        stats = with_normalization(stats, normalization)
    grid = augmentation_grid(dataset, stats, aug_config, rows=rows, views=views, seed=seed,
                             memory_limit_mb=memory_limit_mb)
    for line in grid["warnings"]:  # --rows beyond the training split: all of it is shown
        print(f"warning: {line}", file=sys.stderr)
    changed = f" with {', '.join(text.strip() for text in overrides)}" if overrides else ""
    save_augmentation_grid(grid, out, title=f"{dataset.spec}: augmentation preset '{aug}'{changed}")
    shown, views = grid["views"].shape[:2]
    console.print(f"{shown} images x {views} augmented views" + (" + a row of mixed samples" if grid["mixed"] is not None else "")
                  + f" written to {out}", markup=False)


SHOW_DATA_KEYS = ("data.normalize", "data.mean", "data.std")  # the normalisation: its mean fills erased boxes


def _show_aug(preset: str, overrides: list[str]):
    """What `data show` draws: (the --aug preset with the --set aug.KEY=VALUE fields over it, the DataConfig
    holding the --set data.normalize/mean/std given, or None when none is)."""
    from cnnlab.config import AugConfig, RunConfig, apply_overrides

    for text in overrides:
        key = text.partition("=")[0].strip()
        if key == "aug.preset":
            raise CnnlabError(f"--set {text.strip()}: data show takes the preset as --aug PRESET; --set gives the "
                              "fields over it (aug.erasing=0.5, aug.crop=resized, ...).")
        if not key.startswith("aug.") and key not in SHOW_DATA_KEYS:
            raise CnnlabError(f"--set {text.strip()}: data show takes only aug.KEY=VALUE (the augmentation a run "
                              f"trains with) and {', '.join(SHOW_DATA_KEYS)} (the normalisation whose mean fills "
                              "erased boxes); the data is chosen by SPEC and the options (--image-size, "
                              "--channels, --val-fraction, --seed).")
    normalizing = [text for text in overrides if text.partition("=")[0].strip() in SHOW_DATA_KEYS]
    data = apply_overrides(RunConfig(), normalizing).data if normalizing else None
    augmenting = [text for text in overrides if text not in normalizing]
    if not augmenting:
        return preset, data  # resolve_aug checks the name
    from cnnlab.data.transforms import PRESETS

    if preset not in PRESETS:  # said as --aug, before the fields over it are read
        raise CnnlabError(f"Unknown augmentation preset '{preset}': choose one of {', '.join(PRESETS)}.")
    return apply_overrides(RunConfig(aug=AugConfig(preset=preset)), augmenting).aug, data


MODEL_OPTION = typer.Option(None, "--model", help=f"Model: {MODEL_SPEC_HELP}; sets model.name (and the keys given).")
DATA_OPTION = typer.Option(None, "--data", help=f"Data: {SPEC_HELP}; sets data.spec.")
CONFIG_OPTION = typer.Option(None, "--config", help=f"YAML config (a run's {CONFIG_FILE} repeats that run).")
SET_OPTION = typer.Option([], "--set", help="SECTION.KEY=VALUE, repeatable: --set optim.lr=0.05 --set train.epochs=20")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


@app.command("experiment")
def experiment_cmd(
    name: str = typer.Argument(..., help="An experiment's name, or `list` to see them all."),
    # named `names`, without a metavar, so that the usage line reads `{name} [names]...` as every command names
    # its arguments (`{checkpoint} {images}...`); the prose below and list's messages name it `[names]...` alike
    names: Optional[list[str]] = typer.Argument(None, help="With `list`: the experiments to show in full (claim, quote, rule, what runs, each size)."),
    size: Optional[str] = typer.Option(None, "--size", help="tiny (mechanics, seconds), quick (minutes; the default) or full (the documented results)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per setting; default: the experiment's (`list --json` shows them), and 1 at --size tiny or for deterministic ones."),
    data: Optional[str] = typer.Option(None, "--data", help=f"Data to train on, for the experiments that train: {SPEC_HELP}. Default: the experiment's for the size (see `list`). The sizes and times `list` gives are for the default data: a size that trains on all its training images (all 1,259 of digits) takes all of another data set's (about 60,000 of Fashion-MNIST)."),
    # text, not Path: Path("") is the current folder, and an empty --out must reach run_experiment as given
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the table, plots, runs and result; default runs/experiment-NAME. A rerun there resumes."),
    long: bool = typer.Option(False, "--long", help="With `list`: every experiment in full, not one line each."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Reproduce one of the lecture's claims: a table, plots and a verdict (HOLDS, DOES NOT HOLD, INCONCLUSIVE).

    Each experiment states its claim and verdict rule before it runs, and reports what it measured even
    when the claim does not reproduce. `cnnlab experiment list` shows them all, with the time of each size
    on the experiment's default data. Exit code 0 whatever the verdict: a claim that does not hold is a result, not an error. Experiments
    that train keep every run in OUT/runs/SETTING/seedK: Ctrl-C keeps the finished runs, and the same
    command continues.

    `cnnlab experiment list` gives one line per experiment; `list [names]...` or `list --long` gives each in full.

    Example: cnnlab experiment complexity --size full --out runs/exp-complexity
    """
    from cnnlab.experiments import get_experiment, run_experiment
    from cnnlab.experiments.base import RESULT_FILE, report_names

    if name == "list":
        given = [option for option, value in (("--size", size), ("--seeds", seeds), ("--data", data), ("--out", out))
                 if value is not None]
        if given:
            raise CnnlabError(f"`cnnlab experiment list` takes only [names]..., --long and --json: {' and '.join(given)} "
                              f"{'applies' if len(given) == 1 else 'apply'} when an experiment runs "
                              "(cnnlab experiment NAME --size full). The list shows the time of every size.")
        _list_experiments(names or [], long, as_json)
        return
    if names or long:
        extra = f"the extra name{'s' if len(names or []) > 1 else ''} {', '.join(map(repr, names))}" if names else "--long"
        raise CnnlabError(f"`cnnlab experiment {name}` runs one experiment: {extra} "
                          f"{'apply' if names and len(names) > 1 else 'applies'} to `cnnlab experiment list` "
                          f"(cnnlab experiment list {name} shows it in full).")
    say = _RunLines(highlight=False, markup=False)
    try:
        result = run_experiment(name, "quick" if size is None else size, seeds, out, data=data,
                                say=(lambda text: None) if as_json else say)
    except KeyboardInterrupt:
        where = out if out is not None else f"runs/experiment-{name}"
        say.say_why_it_stopped()
        if get_experiment(name).data is None:  # it trains nothing: there are no runs to keep, it starts over
            print(f"interrupted: experiment '{name}' trains nothing, so nothing was kept; run the same command to "
                  "measure it again.", file=sys.stderr)
        else:
            print(f"{_stopped_word()}: {_kept_runs_text(where)}; run the same command to continue.",
                  file=sys.stderr)
        sys.exit(_interrupted_exit_code())
    say.end_if_closed()
    summary = result.to_dict()
    if as_json:
        # kept: the result.json an earlier call finished there, read back and not measured again
        _print_json_as_written({**summary, "kept": bool(result.kept)})
        return
    # The claim, its notes and the rule were said before the first run (run_experiment's statement); the verdicts
    # follow here, at the end
    table = Table(title=f"{len(result.checks)} checks")
    for column in ("check", "verdict", "margin"):
        table.add_column(column)
    for check in result.checks:
        table.add_row(Text(check.claim), check.verdict, Text(check.margin))
    print_table(table)
    console.print(f"experiment {name} verdict: {result.verdict}", markup=False, highlight=False)
    pages = report_names(result.runs)
    console.print(f"table, plots, {counted(len(pages), 'comparison page')} and result.json in {result.meta['out']}"
                  if pages else f"table, plots and result.json in {result.meta['out']}", markup=False, highlight=False)
    if result.kept:  # nothing ran: say so, or a full-size verdict printed in a second reads as a new measurement
        kept_file = Path(result.meta["out"]) / RESULT_FILE
        # Without result.json a rerun reads the finished training runs back: only a new --out trains them again
        again = (f"Delete {kept_file} to measure it again." if get_experiment(name).data is None else
                 f"Delete {kept_file} to compute the table and verdict again from the kept runs, or choose a new "
                 "--out to train them again.")
        console.print(f"kept: the result an earlier run finished there ({_about(float(result.meta.get('seconds') or 0))}); "
                      f"nothing was run again. {again}", markup=False, highlight=False, soft_wrap=True)  # a path to copy whole



def _kept_runs_text(where) -> str:
    """What an interrupted command that writes runs under ``where`` really kept, for its `interrupted:` line:
    "2 runs are kept in OUT", or "no run was kept in OUT" (naming a search that finished no trial, which
    holds none), so that a stop before the first run does not promise runs to continue from."""
    from cnnlab.report.runs import held_runs

    runs, empty_searches = held_runs(where)
    # A search trial stopped part-way is not continued: the search runs its parameters again from their start
    # (and removes its folder then). Its status says so: stopped ("interrupted") or killed ("running").
    again = [run for run in runs if run.parent.name == SEARCH_TRIALS_DIR and _stopped_part_way(run)]
    if again:
        kept = len(runs) - len(again)
        return (f"{counted(kept, 'run')} {'is' if kept == 1 else 'are'} kept in {where}, and "
                f"{counted(len(again), 'search trial')} stopped part-way will be run again from "
                f"{'its' if len(again) == 1 else 'their'} start")
    if runs:
        return f"{counted(len(runs), 'run')} {'is' if len(runs) == 1 else 'are'} kept in {where}"
    return f"no run was kept in {where}" + (
        f" (its {noun_for(len(empty_searches), 'search folder')} "
        f"{', '.join(str(Path(search).relative_to(where)) for search in empty_searches)} finished no trial)"
        if empty_searches else "")


def _stopped_part_way(run: Path) -> bool:
    """Whether the run folder's status.json says it stopped before its last epoch (interrupted, or "running" when
    the process was killed) and no report.txt (written last) says it finished after all."""
    folder = RunFolder(run)
    return folder.recorded_state() in ("interrupted", "running") and not folder.report.is_file()


def _kept_trials_text(settings) -> str:
    """What an interrupted `cnnlab search` really kept, for its `interrupted:` line: "2 finished trials are kept
    in STORAGE", or "no trial finished, so none is kept in STORAGE", so that a stop in the first trial does not
    promise trials to continue from (an interrupted trial is run again from its start)."""
    from cnnlab.tune import search as search_lib

    try:
        finished = search_lib.finished_trials(settings)
    except Exception:  # the storage cannot be read now (a database gone away): promise nothing either way
        return f"the trials that finished, if any, are kept in {settings.storage}"
    if finished:
        return f"{counted(finished, 'finished trial')} {'is' if finished == 1 else 'are'} kept in {settings.storage}"
    return f"no trial finished, so none is kept in {settings.storage}"


def _list_experiments(names: list[str], long: bool, as_json: bool) -> None:
    """`cnnlab experiment list`: a few lines per experiment (name, notes, the claim cut to the terminal, each
    size's time); ``names`` (or ``long``: all) in full, as a run states them, with what runs and each size."""
    from cnnlab.experiments import get_experiment, list_experiments
    from cnnlab.experiments.base import SIZES, SIZES_NOTE, statement_lines

    known = [experiment.name for experiment in list_experiments()]
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if len(unknown) > 1:  # every one named at once, not the first alone (one gets get_experiment's suggestion)
        raise CnnlabError(f"Unknown experiments {', '.join(map(repr, unknown))}. Known experiments: {', '.join(known)}.")
    experiments = [get_experiment(name) for name in dict.fromkeys(names)] if names else list_experiments()
    items = [e.describe() for e in experiments]
    if as_json:
        _print_json_as_written(items)
        return

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)  # the claims' "[...]" and "(x)" as written

    if names or long:
        for experiment, item in zip(experiments, items):
            console.rule(Text(experiment.name))
            if not item["available"]:
                say(f"needs {', '.join(item['needs'])}: it does not run here")
            for line in statement_lines(experiment):  # claim, note and quote, rule: what a run says first
                say(line)
            say(f"runs: {item['runs']}")
            for size in SIZES:
                on = f" on {item['data'][size]}" if item["data"] else ""
                say(f"{size} ({_about(item['sizes'][size]['seconds'])}{on}): {item['sizes'][size]['description']}")
            seeds = item["seeds"]
            say(f"seeds: {seeds['default']} by default ({seeds['tiny']} at tiny), {seeds['min']} to {seeds['max']}"
                if seeds["min"] != seeds["max"] else "seeds: 1 (deterministic)")
    else:
        # A few lines each, as `cnnlab models` lists models: every cell but the claim whole (a name as it is
        # typed, receptive-field; the notes one a line), and the claim in the width they leave, cut with an
        # ellipsis after the row's lines; `list [names]...` has it whole.
        rows = [[item["name"] if item["available"] else f"{item['name']} (needs {', '.join(item['needs'])})",
                 "\n".join(item["notes"]), item["claim"], *[_about(item["sizes"][size]["seconds"]) for size in SIZES]]
                for item in items]
        columns = ("name", "notes", "claim", *SIZES)
        widths = [max(len(header), *(len(line) for row in rows for line in row[i].splitlines()))
                  for i, header in enumerate(columns)]
        borders = 3 * len(columns) + 1  # a space either side of each cell, a rule (or space) between and at the edges
        claim_width = max(len("claim"), console.width - borders - sum(widths) + widths[2])
        table = Table(title=f"{len(items)} experiments", box=box.SIMPLE_HEAD)
        for column in columns:
            table.add_column(column, justify="right" if column in SIZES else "left", no_wrap=True, overflow="ellipsis",
                             max_width=claim_width if column == "claim" else None)
        for row in rows:
            # as many lines as the row has notes (one a line), at least CLAIM_LINES
            row[2] = _cut_lines(row[2], claim_width, max(CLAIM_LINES, len(row[1].splitlines())))
            table.add_row(*(Text(cell) for cell in row))
        print_table(table)
        say("cnnlab experiment list [names]... (or --long: all) gives the claim in full, the notes' quote, the verdict rule, "
            "what runs and each size.")
    say(f"note: {SIZES_NOTE}")


CLAIM_LINES = 2  # the fewest lines of claim per experiment in `cnnlab experiment list` (about 55 lines at 80 columns)


def _cut_lines(text: str, width: int, lines: int) -> str:
    """``text`` wrapped to ``width`` columns and cut after ``lines`` lines, the cut marked with an ellipsis."""
    import textwrap

    wrapped = textwrap.wrap(text, width, break_on_hyphens=False)  # "six-layer" stays one word
    if len(wrapped) <= lines:
        return "\n".join(wrapped)
    kept = wrapped[:lines]
    last = textwrap.shorten(kept[-1] + " " + wrapped[lines], width, placeholder="…", break_on_hyphens=False)
    kept[-1] = last if last != "…" else kept[-1][:width - 1] + "…"  # one word longer than the line: cut in it
    return "\n".join(kept)


def _about(seconds: float) -> str:
    """An estimate as a user reads it: '<1 s', '~40 s', '~12 min' ('~0 s' would read as no time at all)."""
    if seconds < 1:
        return "<1 s"
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"


def _positive_finite(value: Optional[float]) -> Optional[float]:
    """Parse-time check of --lr: click's ranges let inf and nan through."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"the learning rate must be a positive finite number (optim.lr), got {value}.")
    return value


# Shortcuts of every command that trains (train, check, lr-find, search): each sets one config key,
# as --set KEY=VALUE would, and wins over --set and --config.
SHORTCUT_KEYS = {"epochs": "train.epochs", "lr": "optim.lr", "batch_size": "train.batch_size", "seed": "train.seed",
                 "device": "train.device"}
LR_OPTION = typer.Option(None, "--lr", callback=_positive_finite, help="Peak learning rate; shortcut for --set optim.lr=X.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", min=1, max=MAX_BATCH, help="Images per batch: per optimiser step, unless train.accum_steps adds several batches up; shortcut for --set train.batch_size=N.")
TRAIN_SEED_OPTION = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Seed of the weights, data order and augmentation; shortcut for --set train.seed=N.")


def _device_given(value: Optional[str]) -> Optional[str]:
    """Parse-time check of --device: an empty name would reach the config as --set's 'nothing after =' (null),
    and its message would name train.device and --set rather than the flag that was typed."""
    if value is not None and not value.strip():
        raise typer.BadParameter("the device is empty: give auto, cpu, cuda or cuda:N (train.device), or leave "
                                 "--device out for the config's device (auto by default).")
    return value


DEVICE_OPTION = typer.Option(None, "--device", callback=_device_given,
                             help="auto, cpu, cuda or cuda:N; shortcut for --set train.device=NAME.")


def _shortcut_sets(**values) -> list[str]:
    """--set texts for the shortcut options given (None: not given), e.g. lr=0.05 -> 'optim.lr=0.05'."""
    sets = []
    for name, value in values.items():
        if value is not None:
            sets.append(f"{SHORTCUT_KEYS[name]}={value!r}" if isinstance(value, float) else f"{SHORTCUT_KEYS[name]}={value}")
    return sets


def _named_out(out: str, writes: str) -> Path:
    """--out as a Path, refused when empty (an unset shell variable) or the current folder: ``Path("")`` is '.', and
    ``writes`` would land among whatever it holds. Leaving --out out gives the command's default folder."""
    from cnnlab.io import check_out_is_named

    check_out_is_named(out, writes, "Name a folder, or leave out --out for the default one.")
    return Path(out)


def _refuse_config_file_changes(config: Path, base, plan) -> None:
    """--refine trains from the coarse study's config with --set on top: a --config file that differs from it
    elsewhere than what the refinement sets itself (the searched keys, train.epochs, the schedule step 5 makes
    constant) would be dropped without a word, so it is refused, naming the keys."""
    from cnnlab.config import config_differences

    searched = set(plan.refinement.coarse_space) | set(plan.refinement.space)
    differences = {key: values for key, values in config_differences(base, plan.refinement.base).items()
                   if key not in searched and key != "train.epochs" and not key.startswith(("schedule.", "log."))}
    if differences:
        shown = "; ".join(f"{key}: {mine!r} in the file, {theirs!r} in the coarse study"
                          for key, (mine, theirs) in list(differences.items())[:5])
        more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
        raise CnnlabError(f"--config {display_name(str(config))} differs from the config the coarse search's trials "
                          f"trained with: {shown}{more}. --refine starts from the coarse study's config, with --set on "
                          "top: give each change you want as --set KEY=VALUE (or leave --config out).")


def _note_training_run_keys(overrides: list[str], command: str) -> None:
    """A note for each --set key that only a training run reads (train.epochs, train.ema, ...), given to a command
    that trains none (lr-find, check): each schedule.* key too, and train.accum_steps for check. A config file's
    such keys are its run's, and pass without a word."""
    from cnnlab.config import notice
    from cnnlab.train.engine import training_run_keys

    for key in training_run_keys(overrides):
        notice(f"--set {key} does nothing in cnnlab {command}: only cnnlab train reads it (how long a run trains, "
               "what it keeps and logs).")
    # Keys the command reads no more than a run's length: the schedule (lr-find sets the rate itself at each step,
    # check trains at the peak rate held constant), and check's single-batch steps accumulate nothing
    rate = {"lr-find": "the sweep sets the learning rate itself at each step",
            "check": "the overfitting check trains at the configured peak learning rate, held constant"}[command]
    keys = dict.fromkeys(text.partition("=")[0].strip() for text in overrides)
    for key in keys:
        if key == "schedule" or key.startswith("schedule."):
            notice(f"--set {key} does nothing in cnnlab {command}: {rate}; only cnnlab train follows the schedule.")
        elif command == "check" and key == "train.accum_steps":
            notice(f"--set {key} accumulates nothing in cnnlab check: each step of its overfitting check is one "
                   "batch (with optim.lr_batch set, the rate is still scaled to the accumulated step's images).")


def _refuse_empty(option: str, value: Optional[str], what: str, required: bool = False) -> None:
    """Refuse an empty (or blank) option value: read as "not given", ``--data "$DATA"`` with DATA unset trained
    the defaults in silence. ``required``: the command has no default to fall back on."""
    if value is not None and not value.strip():
        fallback = "" if required else ", or leave the option out for the config's own (or the default)"
        raise CnnlabError(f"{option} is empty (an unset shell variable?). Name {what}{fallback}.")


def _run_config(config: Optional[Path], model: Optional[str], data: Optional[str], overrides: list[str],
                shortcuts: Optional[list[str]] = None, template: bool = False):
    """The RunConfig of --config (or the defaults) with --set, --model, --data and the shortcuts applied.

    ``template``: the config is the base of runs the library completes (the transfer ladder sets each
    rung's model.init_from), so it is checked as a template (:func:`cnnlab.config.validate_config`).
    """
    from cnnlab.config import RunConfig, apply_overrides, load_config, model_spec_overrides, notice

    _refuse_empty("--model", model, "the model")
    _refuse_empty("--data", data, "the data")
    run_config = load_config(config, template=template) if config is not None else RunConfig()
    options = model_spec_overrides(model) if model else []
    named = options[0].partition("=")[2] if options else None  # options[0] is model.name=NAME
    if named is not None and named != run_config.model.name and run_config.model.options:
        # The config's builder options were written for its own model: another builder would refuse them
        # ("does not take that option") without saying where they came from.
        given = ", ".join(f"{key}={value}" for key, value in run_config.model.options.items())
        notice(f"{display_name(str(config))} sets model.options ({given}) for {run_config.model.name}; --model names another model "
               f"({named}), so they are left out. Give them in the model spec (--model {named},KEY=VALUE) to keep one.")
        run_config.model.options = {}
    options += [f"data.spec={data}"] if data else []
    options += shortcuts or []
    file_model, file_options = run_config.model.name, dict(run_config.model.options)
    run_config = apply_overrides(run_config, _options_over_set(overrides, options), template=template)
    if config is not None and named is None and run_config.model.name != file_model and file_options:
        _check_options_from_file(run_config, config, file_model, file_options, overrides)
    return run_config


def _check_options_from_file(run_config, config: Path, file_model: str, file_options: dict, overrides: list[str]) -> None:
    """--set model.name=OTHER over a config file whose model.options were written for its own model: refuse,
    naming the file and the way out, an option of the file's that OTHER does not take. The builder's own
    error ("does not take that option") would come at set-up, without saying where the option came from.

    Tried by building the model on the meta device (shapes, no storage, no initialisation): the builder
    itself decides which options it takes. Any other failure is left to the command, which reports it as
    it would have."""
    import torch

    from cnnlab.errors import UnknownOptionError, shown_value
    from cnnlab.models import create_model
    from cnnlab.run import model_kwargs

    set_keys = _set_keys(overrides)
    if "model.options" in set_keys:  # --set model.options=... replaced the file's mapping
        return
    from_file = {key: value for key, value in file_options.items()
                 if f"model.options.{key}" not in set_keys and key in run_config.model.options}
    if not from_file:
        return
    name = run_config.model.name
    try:
        with torch.device("meta"):
            create_model(name, **model_kwargs(run_config.model))
    except UnknownOptionError as err:
        if err.option not in from_file:
            return
        given = ", ".join(f"{key}={shown_value(value)}" for key, value in from_file.items())
        raise CnnlabError(
            f"--set model.name={name} replaces the model of '{display_name(str(config))}' ({file_model}), but the file's model.options "
            f"({given}), written for {file_model}, still apply, and {name} does not take the option '{err.option}'. "
            f"Drop the file's options with --set model.options={{}} (and give {name}'s own with --set "
            f"model.options.KEY=VALUE), or name the model with --model {name} instead, which leaves the file's "
            "options out.") from err
    except Exception:  # not this check's to report: the command builds the model again and says what is wrong
        return


def _set_keys(overrides: list[str]) -> set[str]:
    """The dotted keys the --set options give values to."""
    return {text.partition("=")[0].strip() for text in overrides}


def _options_over_set(overrides: list[str], options: list[str], note: bool = True) -> list[str]:
    """The --set texts, then the command's options (``KEY=VALUE`` texts), which win.

    A --set an option overrules is named in a note (unless ``note`` is False: already noted) and left
    out, so a value it would not take (--set train.epochs=abc beside --epochs 1) is not refused after
    the note said the option wins. A --set without '=' stays in, for apply_overrides to refuse.
    """
    from cnnlab.config import notice

    chosen = {text.partition("=")[0].strip(): text for text in options}
    kept = []
    for text in overrides:
        key = text.partition("=")[0].strip()
        if "=" not in text or key not in chosen:
            kept.append(text)
        elif note and chosen[key] != text.strip():
            notice(f"--set {text} is overruled by the command's option for {key} ({chosen[key]}): options win over --set.")
    return [*kept, *options]


def _transfer_default_out(source: str, spec: str) -> Path:
    """runs/transfer-SOURCE-DATA, SOURCE named by its run: a run folder by its name, a checkpoint file in one by
    both (runs/src/best.safetensors: src-best), any other file by its stem."""
    path = Path(os.path.abspath(source))  # '.', '..' and a file typed in its run's folder name the folders they are in
    name = path.name
    if path.is_file():
        name = f"{path.parent.name}-{path.stem}" if RunFolder(path.parent).is_run() else path.stem
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{name}-{spec}")[:60]
    return Path("runs") / f"transfer-{safe}"


def _default_out(kind: str, run_config, stamp: bool = True) -> Path:
    """runs/[KIND-]MODEL-DATA[-TIME]."""
    import time as _time

    safe_data = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_config.data.spec)[:40]
    name = f"{kind}-" if kind else ""
    name += f"{run_config.model.name}-{safe_data}"
    if stamp:
        name += "-" + _time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / name


@app.command("train")
def train_cmd(
    model: Optional[str] = MODEL_OPTION,
    data: Optional[str] = DATA_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    # text, not Path: Path("") is the current folder, and an empty --out must be refused, not trained into there
    out: Optional[str] = typer.Option(None, "--out", help="Run folder; default runs/MODEL-DATA-TIME (-2, -3, ... for a run started in the same second)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=MAX_STEPS, help="Shortcut for --set train.epochs=N."),
    lr: Optional[float] = LR_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    seed: Optional[int] = TRAIN_SEED_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="One plain line per epoch, no progress bar."),
) -> None:
    """Train a model on a data set and record everything in a run folder.

    The run folder gets config.yaml, metrics.csv, steps.csv, last/best checkpoints (safetensors),
    curves.png, summary.txt, report.txt, diagnosis.txt, status.json, environment.json and report.html
    (the run's page, as `cnnlab report` writes it); budget.json with train.minutes, init.json with
    model.init_from. A new run into a folder without last.safetensors (nothing to resume) first removes
    the files an earlier run left there, and one note names them; files by those names that no run wrote (no
    cnnlab config.yaml beside them) are refused instead. Ctrl-C stops at the end of the current step
    and saves a checkpoint that --resume continues exactly; a second Ctrl-C stops at once and keeps the last
    one. SIGTERM (kill, timeout, docker stop) stops the same way, with exit code 143. After training, the
    curves are read for the lecture's warning signs (`cnnlab diagnose`), then the final report is printed;
    its files line lists diagnosis.txt and report.html with the rest. A run stopped by a NaN or inf loss
    still gets curves.png, the curve check and report.html, but no report.txt (it did not
    finish), and ends with the error and exit code 2.
    Multi-process: torchrun --nproc-per-node 2 -m cnnlab train ... (DDP; rank 0 writes). A process that hangs
    ends the job after CNNLAB_DDP_TIMEOUT seconds (default 600), named in one paragraph, with exit code 1.

    The lecture's model keys: model.init (default, normal:STD, uniform:A, xavier, kaiming_in, kaiming_out,
    lecun, zeros), model.bias_init, model.dropout (inverted or vanilla), model.hidden_drop_rate,
    model.stage_drop_rate, model.norm (gn:GROUPS) with model.norm_options; builder options such as
    se=16 (ResNets, MobileNets), lrn=true (AlexNet, ZFNet), naive=true (GoogLeNet) go in the model spec.

    Example: cnnlab train --model lenet5 --data digits --epochs 5 --lr 0.05 --batch-size 64 --out runs/lenet-digits

    Options: cnnlab train --model resnet20,se=16,init=kaiming_in --data cifar10 --set model.stage_drop_rate=0.1
    """
    from cnnlab.io import WRITE_ADVICE
    from cnnlab.train.engine import (KEPT_CHECKPOINT, NonFiniteLossError, ReportsInterrupted, SetupInterrupted,
                                     describe_checkpoint, train)

    shortcuts = _shortcut_sets(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    claimed: Optional[Path] = None  # the default run folder this command created, removed if set-up leaves it empty
    made: list[Path] = []  # the parents made for it (runs/), removed with it when empty
    if resume is not None:
        if not RunFolder(resume).is_run():
            if RunFolder(resume).last.is_file():  # a run whose settings file is gone: its weights alone do not resume
                raise CnnlabError(f"--resume '{resume}' holds a run's {RunFolder(resume).last.name} but not its "
                                  f"{CONFIG_FILE}, which a resume continues from: put the {CONFIG_FILE} back (a copy) "
                                  "and resume again, or start a new run in another --out.")
            if not resume.exists():
                raise CnnlabError(f"--resume '{resume}' does not exist: name the folder of the run to continue (the "
                                  "--out it trained into).")
            if resume.is_file() and RunFolder(resume.parent).is_run():  # RUN/last.safetensors: the run is its folder
                raise CnnlabError(f"--resume '{resume}' is a file of the run '{resume.parent}': name the run folder "
                                  f"itself (--resume {shlex.quote(str(resume.parent))}).")
            raise CnnlabError(f"--resume '{resume}' is not a run folder (it has no {CONFIG_FILE}).")
        if config is not None or model or data or overrides or shortcuts or out is not None:
            raise CnnlabError("--resume continues a run exactly as configured, in its own folder: leave out --config, "
                              "--model, --data, --set, --out and the shortcuts --epochs, --lr, --batch-size, --seed "
                              "and --device.")
        run_config = RunFolder(resume).read_config()
        run_dir = resume
    else:
        run_config = _run_config(config, model, data, overrides, shortcuts)
        run_dir = _named_out(out, "the run's files") if out is not None else _default_out("", run_config)
        check_output_folder(run_dir, "--out" if out is not None else "The run folder", holds_runs=True)
        if out is None and is_main_process():
            # runs started in the same second get a folder each (runs/NAME-2, ...); under torchrun rank 0's is used
            made = missing_folders(run_dir.parent)
            run_dir = claimed = claim_new_folder(run_dir)
    if quiet:
        run_config.log.quiet = True
    written: list[Optional[Path]] = []  # the run's page, once written

    def diagnose_and_page(folder: Path) -> None:
        """Before the final report (rank 0, a run that trained every epoch): its files line then names these."""
        _print_diagnosis(folder, save=True)
        written.append(_write_run_report(folder))

    try:
        result = train(run_config, run_dir, resume=resume is not None, console=console,
                       before_report=diagnose_and_page)
    except NonFiniteLossError:
        if not is_main_process():
            _leave_the_stop_to_rank_0()  # every rank stopped at this step
        _leave_diverged_run(run_dir)
        raise  # main() prints its paragraph and exits with 2
    except SetupInterrupted as stopped:
        if is_main_process():
            print(_setup_interrupted_text(stopped, run_dir, resume is not None), file=sys.stderr)
        sys.exit(_interrupted_exit_code(stopped.signum))
    except CnnlabError as err:  # NonFiniteLossError was said above; main() prints this one, exit code 2
        kept = getattr(err, KEPT_CHECKPOINT, None)  # (the run folder, where its last checkpoint stands)
        if kept is None:
            raise
        folder, where = kept  # the engine's folder: under torchrun without --out, rank 0's, which this rank uses
        text = str(err).removesuffix(f" {WRITE_ADVICE}")  # a new folder is not the way on: the run is resumable
        raise CnnlabError(f"{text} The run's {CHECKPOINT_LAST} ({describe_checkpoint(where)}) is kept: once that is "
                          f"mended, continue the run with: {_resume_command(folder)}") from err
    except ReportsInterrupted as stopped:  # rank 0 alone writes the reports
        print(f"{_stopped_word(stopped.signum)} while writing the finished run's reports: every epoch was trained "
              f"and saved, and {REPORT_FILE} was not written; write the reports with: {_resume_command(run_dir)}",
              file=sys.stderr)
        sys.exit(_interrupted_exit_code(stopped.signum))
    except RuntimeError as err:
        if launched_processes() <= 1 or not is_timeout(err):
            raise
        # A rank that hangs without dying: the ranks that waited for it say so (rank 0 first), exit code 1
        _let_rank_0_report_first()
        # Without --out each rank named a default folder by its own clock, and the one rank 0 chose (which the
        # run uses) may not have reached this one before the hang: only rank 0 can name it for certain
        known = out is not None or resume is not None or is_main_process()
        print(f"error: {timeout_text(err, _resume_command(run_dir) if known else '')}", file=sys.stderr)
        sys.exit(1)
    finally:
        if claimed is not None:
            remove_if_empty(claimed, *made)
    if result.interrupted:
        if not is_main_process():
            _leave_the_stop_to_rank_0()  # every rank stopped at this step, after rank 0 saved it
        _write_run_report(run_dir)
        print(_interrupted_text(result, run_dir), file=sys.stderr)
        sys.exit(_interrupted_exit_code(result.stop_signal))
    if is_main_process():  # torchrun: only rank 0 speaks
        _print_run_folder(run_dir, written[0] if written else None)
    if result.stop_requested and result.stop_signal is not None:  # a signal: a closed output has none
        # A stop that came after the last step (while the last epoch was evaluated and saved): there was nothing
        # left to train, so the run ended complete. Said, and the exit code says the command was stopped, so that
        # a script running commands after this one stops too. Under torchrun only rank 0 says it and fails: no
        # vote follows the last step, and another rank failing first would have torchrun stop rank 0 part-way.
        if not is_main_process():
            _leave_the_stop_to_rank_0()
        ended = (f"early stopping had ended the run ({result.stopped_early.partition(':')[0]}), and it is saved"
                 if result.stopped_early else "every epoch is trained and saved")
        print(f"{_stopped_word(result.stop_signal)} after the run's last step: there was nothing left to train; "
              f"{ended}, and the reports are written.", file=sys.stderr)
        sys.exit(_interrupted_exit_code(result.stop_signal))


def _leave_the_stop_to_rank_0() -> None:
    """A rank other than 0 of a run that every rank stopped at the same step (their per-step vote: a stop
    signal, a non-finite loss): rank 0 writes what a stopped run leaves (report.html, the curve check), says
    why it stopped and exits with the code; this rank ends quietly, with 0. torchrun ends every other rank as
    soon as one exits with a failure code, so this one exiting first with 143 or 2 would cut rank 0 off
    part-way through those writes; ended with 0, it lets torchrun wait for rank 0."""
    sys.exit(0)


def _print_run_folder(run_dir: Path, page: Optional[Path]) -> None:
    """The last line of `cnnlab train`: the run folder, with its curves and its page where they were written."""
    curves = RunFolder(run_dir).curves
    shown = ([f"curves: {curves}"] if curves.is_file() else []) + ([f"report: {page}"] if page else [])
    console.print(f"run folder: {run_dir}" + (f"  ({', '.join(shown)})" if shown else ""), markup=False)


def _leave_diverged_run(run_dir: Path) -> None:
    """A run a non-finite loss stopped (the engine drew curves.png of it): the curve check, printed and saved as
    diagnosis.txt, and the run's page, so the folder shows why. No report.txt: it is the report of a finished run,
    and its presence is what marks one finished for `cnnlab runs` when status.json is gone.

    A failure here is a warning: the NonFiniteLossError being raised says why the run stopped, and stays the error."""
    try:
        _print_diagnosis(run_dir, save=True)
    except Exception as err:  # anything: nothing here may replace the divergence error
        print(f"warning: no {DIAGNOSIS_FILE}: {type(err).__name__}: {err}", file=sys.stderr)
    page = None
    try:
        page = _write_run_report(run_dir)
    except Exception as err:  # _write_run_report warns of a CnnlabError itself; this is anything else
        print(f"warning: no {REPORT_HTML_FILE}: {type(err).__name__}: {err}", file=sys.stderr)
    try:
        _print_run_folder(run_dir, page)
    except Exception:  # stdout closed (a pipe): the error on stderr still names the run folder
        pass


def _write_run_report(run_dir: Path) -> Optional[Path]:
    """The run's page at the end of `cnnlab train` (finished or stopped); a failure is a warning, never lost work."""
    from cnnlab.report import write_report

    try:
        return write_report([run_dir])
    except CnnlabError as err:
        print(f"warning: no {REPORT_HTML_FILE}: {err}", file=sys.stderr)
        return None


def _stop_signal(signum: Optional[int] = None) -> int:
    """The signal that stopped the command: ``signum``, else the one a training run of this process last
    received (search, experiment and transfer stop through their runs), else the one held between two of their
    runs (cnnlab.train.between_runs), else SIGINT (Python's own Ctrl-C)."""
    import signal

    from cnnlab.train.between_runs import last_signal
    from cnnlab.train.engine import received_signal

    return signum or received_signal() or last_signal() or signal.SIGINT


def _interrupted_exit_code(signum: Optional[int] = None) -> int:
    """128 + the signal that stopped the command (:func:`_stop_signal`), as a shell reports a process that
    signal ended: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + _stop_signal(signum)


def _stopped_word(signum: Optional[int] = None) -> str:
    """How an interruption line starts (:func:`_stop_signal`): 'interrupted' for Ctrl-C, 'stopped by SIGTERM'
    for a kill, timeout, docker stop or pre-emption."""
    import signal

    return "stopped by SIGTERM" if _stop_signal(signum) == signal.SIGTERM else "interrupted"


def _resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` (quoted for the shell): under torchrun, with as many
    processes as this one has (one process could continue it too, with the same global batch, but slower)."""
    command = f"cnnlab train --resume {shlex.quote(str(run_dir))}"
    processes = launched_processes()
    return f"torchrun --nproc-per-node {processes} -m {command}" if processes > 1 else command


def _interrupted_text(result, run_dir: Path) -> str:
    """What a Ctrl-C or SIGTERM left on disk, and how to go on from it (a command that runs as shown, whatever the
    folder's name: quoted for the shell)."""
    from cnnlab.train.engine import describe_checkpoint

    resume = _resume_command(run_dir)
    stopped = _stopped_word(result.stop_signal)
    if result.checkpoint_saved:
        return (f"{stopped}: a checkpoint was saved ({describe_checkpoint(result.last_checkpoint)}); "
                f"continue with: {resume}")
    if result.last_checkpoint is not None:
        return (f"{stopped}: stopped at once, mid-step, so nothing new was saved; the last checkpoint "
                f"({describe_checkpoint(result.last_checkpoint)}) is kept; continue from it with: {resume}")
    return (f"{stopped}: stopped at once before the first checkpoint (saved at the end of epoch 1); nothing to "
            f"resume in {run_dir}: run the same command again to start over.")


def _setup_interrupted_text(stopped, run_dir: Path, resume: bool) -> str:
    """A stop during set-up (engine.SetupInterrupted): what was under way, and that the run folder was left as it
    was (the engine stops there before writing anything to it)."""
    word = _stopped_word(stopped.signum)
    if resume:
        return (f"{word} while {stopped.stage}: the run was not continued and nothing was written to {run_dir}; "
                f"continue it with: {_resume_command(run_dir)}")
    return (f"{word} while {stopped.stage}, before training started: nothing was written to {run_dir}; run the "
            "same command to start the run.")


def _print_diagnosis(run_dir: Path, save: bool = False, run_state: Optional[tuple[str, str]] = None) -> list:
    """Read the run's curves for the lecture's warning signs; print them (and keep them as diagnosis.txt).
    ``run_state``: as diagnose_run takes it (:func:`_run_state`)."""
    from cnnlab.io import write_text_atomic
    from cnnlab.tune.diagnose import diagnose_run, findings_text

    findings = diagnose_run(run_dir, run_state=run_state)
    text = findings_text(findings)
    if save:  # first: a closed stdout (`| head`) ends the printing below, not the run's record
        write_text_atomic(RunFolder(run_dir).diagnosis, text + "\n", "the curve diagnosis")

    def print_lines() -> None:
        console.print("curve check (cnnlab diagnose):", highlight=False)
        for line in text.splitlines():  # soft_wrap: the terminal wraps a long line; the text stays diagnosis.txt's
            console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)

    _closing_output(print_lines)
    return findings


VERDICT_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


@app.command("check")
def check_cmd(
    model: Optional[str] = MODEL_OPTION,
    data: Optional[str] = DATA_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    batches: int = typer.Option(4, "--batches", min=1, max=MAX_STEPS, help="Training batches (no augmentation) for the initial loss (a smaller training split is used whole, with a warning); the statistics read the first of them."),
    samples: int = typer.Option(64, "--samples", min=1, max=MAX_BATCH, help="Images the overfitting check must fit 100%, taking the training split's classes in turn (a smaller training split is used whole, with a warning)."),
    steps: int = typer.Option(300, "--steps", min=1, max=MAX_STEPS, help="Step budget of the overfitting check."),
    layers: bool = typer.Option(False, "--layers", help="Also print the per-layer statistics table."),
    lr: Optional[float] = LR_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    seed: Optional[int] = TRAIN_SEED_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Sanity checks before tuning: initial loss, per-layer statistics at init, overfit a small sample.

    First the loss at initialisation against ln(classes); then activation std, dead ReLUs,
    saturated tanh/sigmoid units and gradient sizes per layer at initialisation; last, with
    augmentation, weight decay, dropout and smoothing off, the model must fit --samples images
    100% within --steps steps at the configured learning rate, one image of each class in turn (a
    sample the untrained model already fits, or one of a single class, is a WARN: fitting it proves
    nothing). Each prints PASS, WARN or FAIL with its numbers and a remedy. Exit code 0 when nothing
    FAILs, 1 otherwise.

    Example: cnnlab check --model resnet8 --data fashion-mnist --lr 0.05
    """
    from cnnlab.tune.check import check_warnings, results_json, run_checks

    run_config = _run_config(config, model, data, overrides,
                             _shortcut_sets(lr=lr, batch_size=batch_size, seed=seed, device=device))
    _note_training_run_keys(overrides, "check")
    say = None if as_json else (lambda what: console.print(f"[dim]checking: {what}[/]"))
    results = run_checks(run_config, batches=batches, samples=samples, steps=steps, progress=say)
    for line in check_warnings(results):  # on stderr, so that --json's stdout stays JSON
        print(f"warning: {line}", file=sys.stderr)
    report = results_json(results)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for number, result in enumerate(results, start=1):
            style = VERDICT_STYLE[result.verdict]
            console.print(f"{number}. [{style}]{result.verdict}[/] {result.name}: {result.summary}", highlight=False)
            if result.remedy:
                console.print(f"   remedy: {result.remedy}", highlight=False)
        if layers:
            print_table(_layer_table(results[1].details["layers"]))
        console.print(f"overall: [{VERDICT_STYLE[report['verdict']]}]{report['verdict']}[/]")
    if report["verdict"] == "FAIL":
        sys.exit(1)


def _layer_table(rows: list[dict]) -> Table:
    table = Table(title="activations and gradients at initialisation (one batch)")
    # |dW|x|W| for the layers a norm follows: the measure check 2 compares them on (LayerStats.direction_grad)
    for column in ("layer", "kind", "mean", "std", "dead", "saturated", "|dW|/|W|", "|dW|x|W| (norm follows)"):
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right")

    def share(value):
        return "" if value is None else f"{value:.0%}"

    for row in rows:
        grad = "" if row["grad_ratio"] is None else f"{row['grad_ratio']:.3g}"
        direction = (f"{row['direction_grad']:.3g}" if row.get("normalised") and row.get("direction_grad") is not None
                     else "")
        table.add_row(row["name"], row["kind"], f"{row['mean']:.3g}", f"{row['std']:.3g}", share(row["dead"]),
                      share(row["saturated"]), grad, direction)
    return table


@app.command("lr-find")
def lr_find_cmd(
    model: Optional[str] = MODEL_OPTION,
    data: Optional[str] = DATA_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    start_lr: float = typer.Option(1e-7, "--start-lr", help="Learning rate of the first step."),
    end_lr: float = typer.Option(10.0, "--end-lr", help="Learning rate of the last step, if the loss has not diverged by then."),
    steps: int = typer.Option(100, "--steps", min=1, max=MAX_STEPS, help="Steps of the sweep (one batch each), spaced geometrically; too few to filter the curve (a running median, then a mean) are refused."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG of the curve; default runs/lr-find-MODEL-DATA-TIME.png."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=_positive_finite, help="Shortcut for --set optim.lr=X. The sweep does not train at it (it runs from --start-lr to --end-lr); it is printed next to the suggestion, so a train command line works here unchanged."),
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    seed: Optional[int] = TRAIN_SEED_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """LR range test: train with a learning rate rising exponentially until the loss diverges.

    The loss curve (raw and filtered, log lr axis) is saved as a PNG with the suggestion marked.
    The rule is printed with the result: a running median removes single spikes before smoothing,
    and the suggestion is the lr at the filtered curve's minimum divided by 10, but not below the lr
    where the filtered loss first fell 1% below its start; where it never did, there is no suggestion, and a
    "why none:" line (--json: no_suggestion) says why. The model trained here is thrown away. The sweep uses the config's optimiser, augmentation and batch size.

    Example: cnnlab lr-find --model resnet8 --data fashion-mnist --steps 150 --batch-size 64
    """
    from cnnlab.tune.lr_find import (NO_SUGGESTION, lr_sweep, no_plot_reason, no_suggestion_reason, save_lr_plot,
                                     short_sweep_warning, sweep_json)

    run_config = _run_config(config, model, data, overrides,
                             _shortcut_sets(lr=lr, batch_size=batch_size, seed=seed, device=device))
    _note_training_run_keys(overrides, "lr-find")
    path = out if out is not None else Path(str(_default_out("lr-find", run_config)) + ".png")
    option = "--out" if out is not None else "The plot"
    check_output_file(path, option, (".png",))  # before the sweep, not after it
    refuse_a_runs_own_file(path, option)
    if as_json:
        sweep = lr_sweep(run_config, start_lr=start_lr, end_lr=end_lr, num_steps=steps)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from cnnlab.train.logging import loss_text

        # no bar where the output is no terminal: rich then printed an empty line as the first line of the output
        with Progress(TextColumn("lr-find"), BarColumn(), TextColumn("{task.fields[text]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("sweep", total=steps, text="")

            def progress(step, total, lr, loss):
                bar.update(task, completed=step, text=f"lr {lr:.2e}  loss {loss_text(loss, 3)}")

            sweep = lr_sweep(run_config, start_lr=start_lr, end_lr=end_lr, num_steps=steps, progress=progress)
    short = short_sweep_warning(start_lr, end_lr, steps)
    if short is not None:  # on stderr, as the data's warnings: --json keeps stdout for the JSON
        print(f"warning: {short}", file=sys.stderr)
    unplotted = no_plot_reason(sweep)
    if unplotted is None:
        check_output_folder(path.parent, option, create=True)
        save_lr_plot(sweep, path)
    else:  # the result is still worth reading (why none says what to fix): it is printed, the plot skipped
        stale = " (the file there is an earlier sweep's)" if path.exists() else ""
        print(f"warning: no plot written to '{path}'{stale}: {unplotted}.", file=sys.stderr)
    optim, batch, accum = run_config.optim, run_config.train.batch_size, run_config.train.accum_steps
    # The value for --lr (optim.lr): the step lr itself, or per lr_batch images when optim.lr_batch is set
    # (the step lr is then lr * batch / lr_batch)
    use_lr = None if sweep.suggestion is None else sweep.suggestion * (optim.lr_batch / batch if optim.lr_batch else 1)
    if as_json:
        print(json.dumps({**sweep_json(sweep), "use_lr": use_lr, "lr_batch": optim.lr_batch, "batch_size": batch,
                          "accum_steps": accum, "plot": None if unplotted else str(path)}, indent=2))
        return
    # The sweep steps on single batches; with train.accum_steps the run's optimiser steps add up `accum` of them,
    # and optim.lr_batch scales the run's rate by those steps' images: said wherever a rate is converted.
    accumulated = f"the run's steps of {accum} x {batch} images (train.accum_steps={accum})"
    # Every lr on this line is a step lr (what each optimiser step applies at this batch size), so the
    # configured optim.lr is converted the way training converts it when it is quoted per lr_batch images.
    if optim.lr_batch:
        from cnnlab.train.schedule import scaled_lr

        configured = (f"configured optim.lr {optim.lr:.3g} per {optim.lr_batch} images = step lr "
                      f"{scaled_lr(optim, batch):.3g}")
        if accum > 1:
            configured += f" at batch {batch}, {scaled_lr(optim, batch * accum):.3g} for {accumulated}"
    else:
        configured = f"configured optim.lr {optim.lr:.3g}"
    reason = no_suggestion_reason(sweep)
    if reason is not None:  # the rule line below then states the rule alone: the reason is said here
        console.print(f"suggested step lr (batch {batch}): none   ({configured})", highlight=False)
        console.print(f"why none: {reason}", highlight=False, markup=False)
    else:
        console.print(f"suggested step lr (batch {batch}): {sweep.suggestion:.3g}   (lowest filtered loss at lr "
                      f"{sweep.min_loss_lr:.3g}; {configured})", highlight=False)
    console.print(f"rule: {sweep.rule.partition(NO_SUGGESTION)[0]}", highlight=False, markup=False)
    console.print(f"sweep: {counted(len(sweep.lrs), 'step')}, {sweep.stopped}", highlight=False, markup=False)
    console.print(f"plot: none ({unplotted})" if unplotted else f"plot: {path}", markup=False)
    if use_lr is not None:
        if optim.lr_batch:
            steps = f"that steps at {sweep.suggestion:.3g} with batches of {batch}"
            if accum > 1:  # the linear scaling rule of optim.lr_batch, applied by the run to its larger steps
                steps += f", and at {sweep.suggestion * accum:.3g} with {accumulated}"
            console.print(f"use it: --lr {use_lr:.3g}  (per {optim.lr_batch} images, as optim.lr_batch="
                          f"{optim.lr_batch} quotes it: {steps})", highlight=False)
        else:
            console.print(f"use it: --lr {use_lr:.3g}", highlight=False)


@app.command("diagnose")
def diagnose_cmd(
    run: Path = typer.Argument(..., help="A run folder written by `cnnlab train`."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Read a run's loss and accuracy curves for the lecture's warning signs.

    Rules, each quoting the run's numbers: loss flat at the start (bad init or lr too low), loss
    exploding or NaN (lr too high), a NaN val loss while training is finite (eval-mode statistics such as
    BatchNorm's running ones), a big train/val gap (overfitting), train close to val and both
    poor (underfitting), val accuracy still rising at the end (train longer), a plateau that ends
    at an lr decay (decay earlier), a decay while the loss still fell fast (decay later), a loss
    plateau at a constant lr (decay it), a noisy per-step loss; a spike the loss came back from is a
    warning where no checkpoint records the class count (a recovery then reads like a collapse to a
    constant guess). `cnnlab train` prints this after every run. Exit code 1 when a rule FAILs (the run
    diverged, or its val loss is NaN), else 0.

    Example: cnnlab diagnose runs/lenet5-digits-20261124-101500
    """
    from cnnlab.tune.diagnose import diagnose_run, findings_json

    if as_json:
        findings = diagnose_run(run, run_state=_run_state(run))
        print(json.dumps({"run": display_name(str(run)), "findings": findings_json(findings)}, indent=2))
    else:
        findings = _print_diagnosis(run, run_state=_run_state(run))
    if any(finding.verdict == "FAIL" for finding in findings):
        sys.exit(1)


def _run_state(run: Path) -> Optional[tuple[str, str]]:
    """(state, one-sentence note) of the run in ``run`` as `cnnlab runs` reads them ("interrupted", "interrupted
    (Ctrl-C) after 8 of 40 epochs; ..."), for diagnose's note on a run that has not trained all its epochs; None
    for a folder that is no run `cnnlab train` wrote (diagnose then reads its curves alone, or says what is
    missing)."""
    from cnnlab.report.runs import read_run

    try:
        record = read_run(run, diagnose=False)
    except CnnlabError:
        return None
    return record.state, record.state_note


def _config_file_epochs(config: Optional[Path]) -> Optional[int]:
    """train.epochs as the --config file sets it, None when it leaves it to the default (or there is no file).
    The file was read and checked already (_run_config): here only whether it names the key matters."""
    from cnnlab.config import load_config, safe_load_unique

    if config is None:
        return None
    data = safe_load_unique(config.read_text(encoding="utf-8")) or {}
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, dict) or "epochs" not in train:
        return None
    return load_config(config).train.epochs


@app.command("search")
def search_cmd(
    model: Optional[str] = MODEL_OPTION,
    data: Optional[str] = DATA_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    space: Optional[Path] = typer.Option(None, "--space", help="Search-space YAML: KEY: {low, high, log} or {choices: [...]}; int: true draws whole numbers for a model.options key."),
    trials: int = typer.Option(20, "--trials", min=1, max=MAX_STEPS, help="Trials the study should hold (all workers together)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=MAX_STEPS, help="Epochs per trial (train.epochs of every trial); default 2, or twice the coarse search's with --refine. Refused when the space searches train.epochs (each trial trains its draw)."),
    workers: int = typer.Option(1, "--workers", min=1, max=256, help="Worker processes on this machine sharing the study."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study database URL; default sqlite:///OUT/study.db. A shared URL lets several machines cooperate."),
    study: str = typer.Option("search", "--study", help="Study name inside the storage. A study other than 'search' puts its name in its files (NAME-results.csv, space-NAME.yaml); --refine --study search-refine refines a refined study again."),
    # text, not Path: Path("") is the current folder, and an empty --out must be refused, not searched into there
    out: Optional[str] = typer.Option(None, "--out", help="Search folder; default runs/search-MODEL-DATA (the same command resumes)."),
    grid: bool = typer.Option(False, "--grid", help="Grid search: every combination of each key's values (range: 'points' values)."),
    refine: bool = typer.Option(False, "--refine", help="Narrow every range around the best trials of --study and search again, longer, at a constant lr (step 5 of the recipe: no decay; the warm-up is kept)."),
    keep_schedule: bool = typer.Option(False, "--keep-schedule", help="With --refine: train the refined trials with the coarse search's lr schedule (and search its schedule keys) instead of a constant lr."),
    pruner: str = typer.Option("median", "--pruner", help="Stop hopeless trials early: median, halving or none."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=_positive_finite, help="Shortcut for --set optim.lr=X: the base every trial starts from (a searched key takes the trial's value)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=MAX_BATCH, help="Shortcut for --set train.batch_size=N (a searched key takes the trial's value)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Shortcut for --set train.seed=N: every trial trains with this seed. It also seeds the sampler unless --sampler-seed is given."),
    sampler_seed: Optional[int] = typer.Option(None, "--sampler-seed", min=0, max=MAX_SEED, help="Seed of the sampler that draws the trials (worker k uses seed + 1000 k; a resumed search draws new points, seeded from it and the trials already held); default: train.seed, which --seed sets (0 unless set)."),
    device: Optional[str] = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Coarse-to-fine random search (Optuna): trials of a few epochs, then --refine around the best.

    Every trial is a normal training run in OUT/trials/. Results: OUT/results.csv sorted by val
    accuracy, OUT/best.yaml ready for `cnnlab train --config`, and OUT/scatter.png (val accuracy
    against each hyperparameter). A search stopped part-way continues when the same command runs
    again; a crashed trial is recorded as failed with its error and the study goes on. With
    --refine the trials start from the coarse search's config, with --set and the shortcuts
    (--lr, --batch-size, --seed, --device) applied on top, and train at a constant learning rate
    (the lecture's step 5: longer, without decay; the warm-up is kept) unless --keep-schedule.

    Example: cnnlab search --model lenet5 --data digits --space space.yaml --trials 20 --epochs 3

    Then: cnnlab search --model lenet5 --data digits --refine --trials 10
    """
    from cnnlab.config import notice
    from cnnlab.tune import search as search_lib

    search_lib.refuse_epochs_override(overrides)  # --epochs sets every trial's train.epochs
    shortcuts = _shortcut_sets(lr=lr, batch_size=batch_size, seed=seed, device=device)
    base = _run_config(config, model, data, overrides, shortcuts)
    # no time in the default: rerunning resumes
    out = _named_out(out, "the study and its trials") if out is not None else _default_out("search", base, stamp=False)
    # --refine starts from the coarse study's config: the command line's keys go on top of it, and its
    # model and data (which name the default folder) must be the coarse study's.
    refine_sets = _options_over_set(overrides, shortcuts, note=False)  # _run_config noted the overruled ones
    if config is not None or model:
        refine_sets.append(f"model.name={base.model.name}")
    if config is not None or data:
        refine_sets.append(f"data.spec={base.data.spec}")
    plan = search_lib.plan_search(base, out, space=space, refine=refine, overrides=refine_sets, storage=storage,
                                  study=study, trials=trials, epochs=epochs, grid=grid, pruner=pruner,
                                  seed=sampler_seed, workers=workers, keep_schedule=keep_schedule,
                                  keep_aug=[text.partition("=")[0].strip() for text in overrides])
    if plan.refinement is not None and config is not None:
        _refuse_config_file_changes(config, base, plan)
    # A key the space searches takes each trial's draw: a value the command line gives it sets nothing
    given = {text.partition("=")[0].strip(): text.partition("=")[2].strip() for text in [*overrides, *shortcuts]}
    for key in sorted(set(given) & set(plan.space)):
        notice(f"{key}={given[key]} (given by --set or an option) is searched by the space: each trial trains with "
               f"the value it draws, so this one sets nothing. Take {key} out of the space to train every trial with "
               "it.")
    settings = plan.settings
    file_epochs = _config_file_epochs(config)
    if file_epochs is not None and settings.epochs is not None and file_epochs != settings.epochs:
        # None: the space searches train.epochs, and each trial trains its draw
        notice(f"{display_name(str(config))} sets train.epochs={file_epochs}, but a search trains every trial for its --epochs "
               f"(default {search_lib.DEFAULT_EPOCHS}; twice the coarse search's with --refine): each trial trains "
               f"{settings.epochs} epochs. Give --epochs {file_epochs} to train each trial that long.")
    if not as_json:
        if plan.refinement is not None:
            coarse = plan.refinement.coarse_space
            top = len(plan.refinement.top)
            best = "the best trial" if top == 1 else f"the best {top} trials"
            console.print(f"refining around {best}: {plan.space_file}", markup=False)
            for key, param in plan.space.items():
                before, after = _range_texts(coarse[key], param)
                console.print(f"  {key}: {before} -> {after}", highlight=False)
            for key in plan.refinement.dropped:
                console.print(f"  {key}: not searched (a constant lr ignores it)", highlight=False)
            console.print(f"schedule: {plan.refinement.schedule}", highlight=False, markup=False)
        if plan.grid_points is not None and plan.requested_trials > plan.grid_points:
            console.print(f"the grid has {plan.grid_points} points: running {plan.grid_points} trials")
        epochs_text = "train.epochs as drawn" if settings.epochs is None else counted(settings.epochs, "epoch")
        console.print(f"study '{settings.study_name}' in {settings.storage}: {counted(settings.trials, 'trial')} of "
                      f"{epochs_text}, {counted(workers, 'worker')}", markup=False)
    say = _RunLines(highlight=False)
    try:
        # --json: no line per trial from any worker, so one worker and several behave alike
        results, paths = search_lib.run_search(plan, (lambda text: None) if as_json else say, quiet=as_json)
    except KeyboardInterrupt as stopped:  # a SearchStopped when a SIGTERM stopped the spawned workers
        signum = getattr(stopped, "signum", None)
        say.say_why_it_stopped()
        print(f"{_stopped_word(signum)}: {_kept_trials_text(settings)}; run the same command to continue.",
              file=sys.stderr)
        sys.exit(_interrupted_exit_code(signum))
    say.end_if_closed()
    if as_json:
        print(json.dumps({"study": settings.study_name, "storage": settings.storage, "epochs": settings.epochs,
                          # the trials asked for, and the grid's points that capped them (null: a random search)
                          "requested_trials": plan.requested_trials, "grid_points": plan.grid_points,
                          "space": search_lib.space_dict(plan.space),
                          "refine": plan.refinement.to_dict() if plan.refinement is not None else None,
                          "counts": results.counts, "best": results.best, "trials": results.rows,
                          "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    if not as_json:
        print_table(_search_table(results, list(plan.space)))
        console.print(f"trials: {', '.join(f'{n} {state.lower()}' for state, n in results.counts.items())}")
        for name, path in paths.items():
            console.print(f"{name:8s} {path}", markup=False)
        if "best" in paths:
            # quoted for the shell, as every suggested command: a search folder's name may hold spaces
            console.print(f"train it: cnnlab train --config {shlex.quote(str(paths['best']))}", markup=False)
    if results.best is None:  # exit 1: `search && train --config OUT/best.yaml` stops here, with the reason
        held = ", ".join(f"{n} {search_lib.STATE_WORDS.get(state, state.lower())}"
                         for state, n in results.counts.items())
        print(f"no trial completed ({held}), so the search has no best trial and wrote no best.yaml: each failed "
              f"trial's error is in {shlex.quote(str(paths['results']))} (its error column). Fix what they name (a "
              "learning rate that diverges: a lower range in the space), then search again with a new --out or "
              "--study.", file=sys.stderr)
        sys.exit(1)


def _range_texts(*params) -> list[str]:
    """Searched ranges as one line shows them: '[16, 1024]', '[0.0001, 0.3]', or the choices as listed.

    The ends follow :func:`cnnlab.text.distinct_texts` together, so every two different ends on the line
    print differently: a range's low from its high, and a narrowed range's ends from the coarse ones they
    replace.
    """
    from cnnlab.text import distinct_texts

    ends = [end for param in params if param.choices is None for end in (param.low, param.high)]
    texts = dict(zip(ends, distinct_texts(ends)))
    return [str(param.choices) if param.choices is not None else f"[{texts[param.low]}, {texts[param.high]}]"
            for param in params]


def _search_table(results, keys: list[str], limit: int = 15) -> Table:
    # "best 2 of 2" read as two trials with an accuracy where one of them had failed: the title counts rows shown
    total = len(results.rows)
    shown_text = counted(total, "trial") if total <= limit else f"the first {limit} of {total} trials"
    table = Table(title=f"{shown_text}, best val accuracy first")
    for column in ("trial", "state", "val acc", "epochs", "s", *keys):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    shown = results.rows[:limit]
    columns = _search_columns(shown, keys)
    for index, row in enumerate(shown):
        acc = "" if row["val_acc"] is None else f"{row['val_acc']:.2%}"
        # tenths under 10 s, as the trial lines show a short trial's time (a 0.4 s trial read 0 here)
        seconds = ("" if row["seconds"] is None else f"{row['seconds']:.1f}" if row["seconds"] < 10
                   else f"{row['seconds']:.0f}")
        table.add_row(str(row["number"]), row["state"].lower(), acc, str(row["epochs"] or ""), seconds,
                      *(columns[key][index] for key in keys))
    return table


def _search_columns(rows: list[dict], keys: list[str]) -> dict[str, list[str]]:
    """Each searched key's values in ``rows``, as the table shows them: every two different values in a
    column print differently (:func:`cnnlab.text.distinct_texts`); a trial without the key shows nothing."""
    from cnnlab.text import distinct_texts

    columns = {}
    for key in keys:
        values = [row["params"].get(key) for row in rows]
        texts = iter(distinct_texts([value for value in values if value is not None]))
        columns[key] = ["" if value is None else next(texts) for value in values]
    return columns


TTA_HELP = ("Test-time augmentation: none, flip (+ the mirror image), 5crop (the centre and the image shifted "
            "--shift px towards each corner, black-filled), 10crop (5crop + mirrors), multiscale (10crop at each "
            "--scales factor) or resnet10crop (the lecture's ResNet test: the original's short side resized to each "
            "--scales length, 10 real crops of the image size from each; cnnlab eval only).")
SPLIT_HELP = ("train, val or test. val is the data's own validation split, else the share of train the run "
              "held out (its data.val_fraction, per class, seeded): images it never trained on.")


def _scales_help(resnet: bool) -> str:
    """--scales' help from the constants the eval uses (cnnlab.evaluate.tta): multiscale's default factors and, for
    a command that takes resnet10crop, its default short sides, with examples at the image sizes 28 and 32."""
    from cnnlab.evaluate import tta

    def joined(values) -> str:
        return ",".join(str(value) for value in values)

    text = f"For --tta multiscale: factors, e.g. {joined(tta.DEFAULT_SCALES)} (the default). "
    if resnet:
        # examples at the image sizes of the data cnnlab loads by name: Fashion-MNIST's 28 and CIFAR's 32
        examples = "; ".join(f"{joined(tta.resnet_short_sides(size))} at {size}" for size in (28, 32))
        text += (f"For --tta {tta.RESNET_MODE}: short sides in pixels, from the image size to {tta.SHORT_SIDE_LIMIT}x "
                 f"it; default ResNet's {joined(tta.RESNET_SHORT_SIDES)} scaled to the image size ({examples}). ")
    return text + "Refused with other modes."


SCALES_OPTION = typer.Option(None, "--scales", help=_scales_help(resnet=True))
# ensemble refuses --tta resnet10crop (members may differ in image size, so in short sides): its help names multiscale
ENSEMBLE_SCALES_OPTION = typer.Option(None, "--scales", help=_scales_help(resnet=False))
# cpu by default, as before the option: a run trained on the CPU is measured with the very numbers training gave
EVAL_DEVICE_OPTION = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N: where the forward passes run.")
SHIFT_OPTION = typer.Option(None, "--shift", help="Pixels the corner views of --tta 5crop, 10crop and multiscale are "
                                                  "shifted (refused with other modes), below the image size (a bucketed run: its "
                                                  "buckets' shortest side); default: "
                                                  "the run's training shift (aug.translate), else 1/8 of the "
                                                  "image side, with a note.")


def _parse_scales(text: Optional[str], tta: str, pixel_mode: bool = True):
    """--scales as numbers; multiscale's factors are checked against their range here, resnet10crop's short sides
    (pixels) by the library, which knows the model's image size. ``pixel_mode``: the command takes resnet10crop
    (eval does, ensemble does not), so a multiscale value in pixels is pointed to it."""
    if text is None:
        return None
    from cnnlab.evaluate.tta import RESNET_MODE, SCALE_RANGE

    example = "32,37,55,69,91" if tta == RESNET_MODE else "0.9,1.0,1.1"
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise CnnlabError(f"--scales '{text}' must be comma-separated numbers, e.g. {example}.") from None
    if tta != "multiscale":
        # resnet10crop's are checked by the library; any other mode refuses --scales as such (check_tta_options),
        # which says more than a range would to someone who left out --tta resnet10crop
        return scales

    low, high = SCALE_RANGE
    if not scales or any(not low <= s <= high for s in scales):
        pixels = (" (short sides in pixels are --tta resnet10crop's)"
                  if pixel_mode and any(s > high for s in scales) else "")
        raise CnnlabError(f"--scales '{text}': each scale must lie between {low:g} and {high:g}, factors of the "
                          f"image size{pixels}.")
    return scales


def _views_text(views: int, shift: Optional[int], scales: Optional[list], tta: str = "") -> str:
    """'5 views, corners shifted 4 px' and the like: what a TTA report averaged, as its JSON records it."""
    from cnnlab.evaluate.tta import RESNET_MODE

    text = counted(views, "view")
    if scales is not None and tta == RESNET_MODE:
        text += f" at short sides {', '.join(str(side) for side in scales)} px"
    elif scales is not None:
        text += f" at scales {', '.join(f'{scale:g}' for scale in scales)}"
    if shift is not None:
        text += f", corners shifted {shift} px"
    return text


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A run folder (its best checkpoint, else last) or a checkpoint file."),
    data: Optional[str] = typer.Option(None, "--data", help=f"Data to evaluate on ({SPEC_HELP}); default: the run's."),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    tta: str = typer.Option("none", "--tta", help=TTA_HELP),
    scales: Optional[str] = SCALES_OPTION,
    shift: Optional[int] = SHIFT_OPTION,
    ema: bool = typer.Option(False, "--ema", help="Evaluate the EMA (Polyak) weights instead of the raw ones."),
    # text, not Path: Path("") is the current folder, and an empty --out must reach run_eval as given
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the reports (not the current folder, '.'); default RUN/eval-SPLIT-TTA (-shiftN and -scalesA_B_C added with a --shift or --scales other than the ones used without them; -ema with --ema; -NAME for a file other than the run's best, else last; -on-DATA for --data other than the run's)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, max=MAX_BATCH, help="Images per forward pass."),
    device: str = EVAL_DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Accuracy (top-1; top-5 with more than 5 classes), loss, per-class precision/recall/F1, confusion matrix and worst mistakes.

    Writes metrics.json, confusion.json, confusion.png and mistakes.png (the most confidently wrong
    images); metrics.json records which weights it measured, so that an eval a resumed run has outgrown
    shows as stale. The preprocessing is the training run's, read from the checkpoint. With --tta the
    softmax probabilities of the views are averaged; mirror views are left out for data whose labels
    change under a mirror (digits), and a note says so. --tta resnet10crop is the lecture's ResNet
    test: each original image's short side resized to each of 5 lengths (ResNet's, scaled to the
    image size; --scales sets others), 10 crops of the image size from each, so 10 forward passes per
    image per length (5 where mirror views are left out). It suits a model trained with
    aug.crop=scale; a note says when the model was not.

    Example: cnnlab eval runs/fast --tta flip
    """
    from cnnlab.devices import resolve_device
    from cnnlab.evaluate.evaluate import TOP_K, TOP_K_KEY, run_eval
    from cnnlab.evaluate.measured import CHECKPOINT_TYPED_KEY

    resolve_device(device, "--device")  # checked here so that a bad name is called the option typed
    try:
        report = run_eval(checkpoint, data=data, split=split, tta=tta, ema=ema, scales=_parse_scales(scales, tta),
                          shift=shift, batch_size=batch_size, out=out, device=device)
    except HeldInterrupt as stopped:  # a Ctrl-C held while the files were written: they are whole
        from signal import SIGINT

        print(f"interrupted: the evaluation was done, and {stopped.written} are all written; its results were not "
              f"printed ({EVAL_METRICS_FILE} there holds them).", file=sys.stderr)
        sys.exit(_interrupted_exit_code(SIGINT))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for note in report["notes"]:
        _print_note("note", note)  # one indented paragraph at the terminal's width
    # absent for a model with TOP_K classes or fewer, where it would always be 100%
    top_k = f"top-{TOP_K} {report[TOP_K_KEY]:.2%}, " if TOP_K_KEY in report else ""
    # which file answered, as typed: a run folder without best.safetensors is evaluated from last.safetensors
    checkpoint = display_name(report.get(CHECKPOINT_TYPED_KEY) or report["checkpoint"])
    console.print(f"{report['model']} from {checkpoint} ({report['weights']} weights) on {report['data']} {report['split']}, "
                  f"tta {report['tta']} ({_views_text(report['views'], report['shift'], report['scales'], report['tta'])}): "
                  f"top-1 {report['top1']:.2%}, {top_k}loss {report['loss']:.4f}, "
                  f"macro F1 {report['macro_f1']:.4f}",
                  highlight=False, markup=False)
    table = Table(title=f"per class ({report['images']} images, {report['images_per_second']:,.0f} images/s)")
    for column in ("class", "precision", "recall", "F1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        table.add_row(Text(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    print_table(table)
    for name, path in report["files"].items():  # a tab or a byte that is not UTF-8 shown as \t, \xff
        console.print(f"{name:13s} {display_name(str(path))}", highlight=False, markup=False)


@app.command("ensemble")
def ensemble_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Run folders or checkpoint files (2 or more), or one RUN with --snapshots."),
    snapshots: bool = typer.Option(False, "--snapshots", help=f"Use the {SNAPSHOT_SHOWN} files of one cyclic-LR run."),
    data: Optional[str] = typer.Option(None, "--data", help="Data to evaluate on; default: the first member's."),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    tta: str = typer.Option("none", "--tta", help=TTA_HELP),
    scales: Optional[str] = ENSEMBLE_SCALES_OPTION,
    shift: Optional[int] = SHIFT_OPTION,
    ema: bool = typer.Option(False, "--ema", help="Use each member's EMA weights."),
    # text, not Path: Path("") is the current folder, and an empty --out must reach run_ensemble as given
    out: Optional[str] = typer.Option(None, "--out", help="Write the report as JSON to this file; in a run's folder (RUN/NAME.json) it is shown on the run's page, until a new run there removes it."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, max=MAX_BATCH, help="Images per forward pass."),
    device: str = EVAL_DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Average the predicted probabilities of several models; each member's accuracy next to the ensemble's.

    Members may be different architectures with the same classes; each sees the data with its own
    preprocessing. Example: cnnlab ensemble runs/a runs/b runs/c --tta flip
    """
    from cnnlab.devices import resolve_device
    from cnnlab.evaluate.ensemble import run_ensemble, snapshot_paths
    from cnnlab.evaluate.measured import CHECKPOINT_TYPED_KEY

    resolve_device(device, "--device")  # checked here so that a bad name is called the option typed
    if snapshots:
        if len(checkpoints) != 1:
            raise CnnlabError("--snapshots takes one run folder: the snapshots of its cyclic learning rate are the members.")
        members = snapshot_paths(checkpoints[0])
    else:
        members = checkpoints
    result = run_ensemble(members, data=data, split=split, tta=tta, shift=shift, scales=_parse_scales(scales, tta, pixel_mode=False), ema=ema,
                          batch_size=batch_size, out=out, device=device)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for note in result["notes"]:
        _print_note("note", note)
    tta_text = result["tta"]
    if result["tta"] != "none":  # each member's views: the shift is its own training translation by default
        tta_text += f": {_views_text(result['members'][0]['views'], None, result['scales'])} per member"
    table = Table(title=f"ensemble on {result['data']} {result['split']} (tta {tta_text})")
    shifted = any(row["shift"] is not None for row in result["members"])
    columns = ("member", "model", "top-1", "loss") + (("shift",) if shifted else ())
    for column in columns:
        table.add_column(column, justify="left" if column in ("member", "model") else "right")
    for row in result["members"]:
        # each member as it was given (a relative path is recorded absolute, with this beside it)
        member = row.get(CHECKPOINT_TYPED_KEY) or row["checkpoint"]
        table.add_row(Text(display_name(member)), Text(row["model"]), f"{row['top1']:.2%}", f"{row['loss']:.4f}",
                      *((f"{row['shift']} px",) if shifted else ()))
    table.add_row("[bold]ensemble[/]", f"{len(result['members'])} members", f"[bold]{result['ensemble']['top1']:.2%}[/]",
                  f"{result['ensemble']['loss']:.4f}", *(("",) if shifted else ()))
    print_table(table)
    console.print(f"gain over the best member: {result['gain_over_best_member'] * 100:+.2f} points", highlight=False)
    if "file" in result:
        console.print(f"report written to {result['file']}", markup=False, highlight=False)


@app.command("predict")
def predict_cmd(
    checkpoint: Path = typer.Argument(..., help="A run folder or checkpoint file."),
    # text, not Path: Path("") is the current folder, and an empty name must reach predict_files as given
    images: list[str] = typer.Argument(..., help="Image files and/or folders (searched recursively); a quoted "
                                             "pattern such as 'photos/**/*.jpg' is expanded; a .csv file lists "
                                             "images, the path first on each row (relative to the CSV)."),
    topk: Optional[int] = typer.Option(None, "--topk", min=1, max=MAX_CLASSES,
                                       help="Classes to list per image, at most the model's classes; default 5 "
                                            "(all of a model with fewer)."),
    ema: bool = typer.Option(False, "--ema", help="Use the EMA weights."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Class names and probabilities per image, with the training run's preprocessing.

    Gray and RGB images are converted to the model's channels; images that cannot be decoded are
    skipped and listed; an image named more than once is predicted once.
    Example: cnnlab predict runs/fast shirt.png photos/
    """
    from cnnlab.evaluate.predict import SKIPS_LISTED, predict_files, repeated_text, skipped_count

    result = predict_files(checkpoint, images, topk=topk, ema=ema)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_predictions(result)
    # on stderr with --json too, as every command's skipped files are: a script reading only stderr hears of them
    if result["repeated"]:
        print(f"note: {repeated_text(result)}", file=sys.stderr)
    if result["skipped"]:
        print(f"warning: skipped {skipped_count(result['skipped'])}:", file=sys.stderr)
        for row in result["skipped"][:SKIPS_LISTED]:
            print(f"  {row['path']}: {row['reason']}", file=sys.stderr)
        if len(result["skipped"]) > SKIPS_LISTED:
            print(f"  and {len(result['skipped']) - SKIPS_LISTED} more (--json lists every one)", file=sys.stderr)


def _print_predictions(result: dict) -> None:
    """predict's text: which file and weights answered, then each image's top classes."""
    # which file and weights answered: a run folder without best.safetensors falls back to last.safetensors
    size = f"{result['image_size']}x{result['image_size']} pixels"
    if result["buckets"]:  # each image fitted to the aspect-ratio bucket nearest its own, as in training
        size = f"aspect-ratio buckets {result['buckets']} of about {size}"
    console.print(f"{result['model']} from {result['checkpoint']} ({result['weights']} weights), "
                  f"{size}, {counted(result['channels'], 'channel')}", highlight=False, markup=False)
    for row in result["predictions"]:
        top = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in row["top"])
        console.print(f"{row['path']}: {top}", highlight=False, markup=False)


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A run folder or checkpoint file."),
    fmt: str = typer.Option(..., "--format", help="torchscript or onnx (onnx needs: pip install 'cnnlab[onnx]')."),
    # text, not Path: Path drops the trailing '/' of a folder name, which export_model refuses as no file name
    out: Optional[str] = typer.Option(None, "--out", help="Output file; default beside the checkpoint, named after it (best.pt / best.onnx; "
                                       "best-ema.pt with --ema). "
                                       "A suffix of another format (.onnx for torchscript; .pt, .pth, .ts for onnx) "
                                       "is refused."),
    ema: bool = typer.Option(False, "--ema", help="Export the EMA weights."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Export a trained model with its preprocessing in the metadata, verified against PyTorch.

    The export runs on sample inputs (ONNX in onnxruntime) at two batch sizes; if any logit differs
    from PyTorch's by more than 1e-4 times the largest logit's size (at least 1) nothing is written and
    the exit code is 2. An existing file at --out is replaced only when it is an earlier export.
    Example: cnnlab export runs/fast --format onnx
    """
    from cnnlab.evaluate.export import export_model

    result = export_model(checkpoint, fmt, out=out, ema=ema)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    batches = str(result["checked_batches"])
    if len({tuple(shape) for shape in result["checked_shapes"]}) > 1:  # a bucketed run: a batch at each bucket's shape
        batches = ", ".join(f"{n} at {h}x{w}" for n, (h, w) in zip(result["checked_batches"], result["checked_shapes"]))
    console.print(f"{result['format']} export: {result['file']} (max logit difference vs PyTorch "
                  f"{result['max_abs_difference']:.2g} on batches of {batches}, allowed "
                  f"{result['allowed']:.2g})", highlight=False, markup=False)


SOURCE_HELP = ("The trained network: a run folder or checkpoint (`cnnlab train`), or a torchvision .pth/.safetensors "
               "weights file (name its architecture with {how}).")


def _data_only_config(data: str, overrides: list[str]):
    """The DataConfig of --data with --set data.KEY=VALUE applied; other sections are refused, not ignored.
    A --set data.spec is overruled by --data with a note, as the training commands' options overrule --set."""
    from cnnlab.config import RunConfig, apply_overrides

    _refuse_empty("--data", data, "the data", required=True)
    for text in overrides:
        if "=" not in text:  # before the section check: 'garbage' lacks its value, whatever its key
            raise CnnlabError(f"Cannot read --set '{text}': write KEY=VALUE, e.g. --set data.classes=[0,1].")
    other = [text for text in overrides if not text.strip().startswith("data.")]
    if other:
        raise CnnlabError(f"--set '{other[0]}': cnnlab probe trains nothing, so it reads only data keys (data.classes, "
                          "data.image_size, data.normalize, data.val_fraction, ...).")
    return apply_overrides(RunConfig(), _options_over_set(overrides, [f"data.spec={data}"])).data


@app.command("probe")
def probe_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP.format(how="--model")),
    data: str = typer.Option(..., "--data", help=f"Target data: {SPEC_HELP}."),
    model: Optional[str] = typer.Option(None, "--model", help="Architecture of a torchvision weights file (tv:NAME or a zoo name); a cnnlab run records its own."),
    overrides: list[str] = typer.Option([], "--set", help="data.KEY=VALUE, repeatable: --set data.classes=[5,6,7,8,9]"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, max=MAX_BATCH, help="Images per forward pass."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Extract the features again, and do not cache them."),
    ema: bool = typer.Option(False, "--ema", help="The features of the source run's EMA weights (a run trained with train.ema), not its raw ones."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Linear probe: logistic regression on a trained network's pooled features (the lecture's "linear classifier on the top layer").

    The target data is read with the source's preprocessing (image size, channels, mean/std; see
    data.normalize). The features of each split are extracted once, in eval mode without
    augmentation, and cached by source file and data content. C is chosen from 1e-3..1e3 by
    validation accuracy; the scaler and the classifier see only the training split.

    Example: cnnlab probe runs/fashion-source --data fashion-mnist --set data.classes=[5,6,7,8,9]
    """
    from cnnlab.transfer.probe import probe

    result = probe(source, _data_only_config(data, overrides), model=model, device=device, batch_size=batch_size,
                   cache=not no_cache, ema=ema)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    images = ", ".join(f"{split} {count:,}" for split, count in result.images.items())
    weights = " (its EMA weights)" if result.weights == "ema" else ""
    console.print(f"linear probe on {result.model} features ({result.feature_dim} per image) from {result.source}{weights}, "
                  f"{result.data}: {len(result.classes)} classes at {result.image_size}x{result.image_size}",
                  highlight=False, markup=False)
    console.print(f"  {result.normalization['note']}", highlight=False, markup=False)
    where = "read from the cache" if result.cached else f"extracted in {result.seconds_extract:.1f} s"
    console.print(f"  features: {where} ({images} images)", highlight=False, markup=False)
    table = Table(title="logistic regression, C by validation accuracy")
    for column in ("C", "train acc", "val acc", "iterations"):
        table.add_column(column, justify="right")
    for row in result.fit.grid:
        chosen = row["c"] == result.fit.c
        cells = [f"{row['c']:g}", f"{row['train_acc']:.2%}", f"{row['val_acc']:.2%}",
                 str(row["iterations"]) + ("" if row["converged"] else " (not converged)")]
        table.add_row(*(f"[bold]{cell}[/]" if chosen else cell for cell in cells))
    print_table(table)
    test = "no test split" if result.test_acc is None else f"test {result.test_acc:.2%}"
    console.print(f"chosen C = {result.fit.c:g}: val {result.val_acc:.2%}, {test}  (fit {result.fit.seconds:.1f} s)",
                  highlight=False)


@app.command("transfer")
def transfer_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP.format(how="--set model.name=NAME or --config's model.name")),
    data: Optional[str] = DATA_OPTION,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config each training rung starts from, e.g. recipes/transfer-finetune.yaml; default: cnnlab's defaults."),
    overrides: list[str] = SET_OPTION,
    per_class: str = typer.Option("10,100,1000", "--per-class", help="Training images per class at each size, comma-separated."),
    seeds: int = typer.Option(3, "--seeds", min=1, max=1000, help="Seeds 0..N-1 per size: each sets data.seed (the subset) and train.seed."),
    steps: int = typer.Option(150, "--steps", min=1, max=MAX_STEPS, help="Optimiser steps of every training rung at every size (equal budgets)."),
    similarity: Optional[str] = typer.Option(None, "--similarity", help="similar or different: compare the winners with the lecture's table."),
    head_first: Optional[float] = typer.Option(None, "--head-first", help="Share of the epochs of 'top' and 'all' that trains the new head alone first (0: none; default a quarter)."),
    all_lr_mult: Optional[float] = typer.Option(None, "--all-lr-mult", help="Factor of the pretrained weights' learning rate in 'all' (1: the head's rate); default: the config's optim.backbone_lr_mult, or the lecture's 0.1 when that is left at 1."),
    # text, not Path: Path("") is the current folder, and an empty --out must be refused, not written into there
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the runs and results, not a training run's folder; default runs/transfer-SOURCE-DATA, SOURCE a run folder's name (RUN-FILE for a checkpoint in one; the same command resumes)."),
    device: Optional[str] = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Transfer ladder at several data sizes: from scratch, linear probe, fine-tune the top stage, fine-tune all.

    At each size (images per class) and seed: 'scratch' trains the source's architecture from a
    fresh start, 'probe' fits a logistic regression on its pooled features, 'top' starts from the
    source with everything below the top stage frozen, 'all' fine-tunes every layer with the
    pretrained weights at a tenth of the learning rate (--all-lr-mult X, or --set
    optim.backbone_lr_mult=X, for another factor, 1 only with --all-lr-mult: 'all' is the one rung
    it acts in); both train a new head (never the source's classifier), alone first (--head-first).
    Every training rung gets about --steps optimiser steps. Prints a table (test accuracy mean ± std
    over the seeds, or val accuracy without a test split; the best val accuracy; seconds) and the
    winner at each size; with --similarity, whether it agrees with the lecture's table.
    Writes OUT/transfer.json and OUT/transfer.png; every run is kept in OUT/SIZE/seedK/RUNG, and the
    same command continues a ladder that was stopped.

    Example: cnnlab transfer runs/fashion-source --data fashion-mnist --set data.classes=[5,6,7,8,9] --config recipes/transfer-finetune.yaml --per-class 10,100,1000 --similarity similar
    """
    from cnnlab.config import notice
    from cnnlab.transfer.ladder import HEAD_FIRST, TIE, parse_sizes, run_transfer

    sizes = parse_sizes(per_class)
    # A template: each rung sets its own model.init_from (and the multiplier's use), checked rung by rung
    base = _run_config(config, None, data, overrides, _shortcut_sets(device=device), template=True)
    set_keys = _set_keys(overrides)
    if data is None and config is None and "data.spec" not in set_keys:
        # the target data is the ladder's question: cnnlab's default data set is no answer anyone gave
        notice(f"no --data: the ladder's target data is {base.data.spec}, cnnlab's default. Name yours with --data.")
    out = _named_out(out, "the ladder's runs and results") if out is not None else _transfer_default_out(
        source, base.data.spec)
    check_output_folder(out, "--out")
    try:
        # without --config or --set model.name, model.name is cnnlab's default, which names no architecture of the
        # source's: a torchvision weights file is then refused with a request to name it
        named = config is not None or "model.name" in set_keys
        result = run_transfer(source, base.data, base, per_class=sizes, seeds=seeds, out=out, similarity=similarity,
                              steps=steps, head_first=HEAD_FIRST if head_first is None else head_first,
                              all_lr_mult=all_lr_mult, console=None if as_json else console, model_named=named)
    except KeyboardInterrupt:
        print(f"{_stopped_word()}: {_kept_runs_text(out)}; run the same command to continue.", file=sys.stderr)
        sys.exit(_interrupted_exit_code())
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    for size in result.sizes:
        budget = result.budgets[size]
        table = Table(title=f"{size} images per class ({budget.images:,} images; each training rung {budget.steps} "
                            f"steps: batch {budget.batch_size}, {budget.epochs} epochs)")
        # The first accuracy is on the metric split (val when the data has no test split); the second is the val
        # accuracy that chose each run's checkpoint (or the probe's C): two columns, two headings, either way.
        for column in ("rung", "what", f"{result.metric_split} acc, mean ± std", "best val acc, mean", "seconds",
                       "seeds"):
            table.add_column(column, justify="left" if column in ("rung", "what") else "right")
        for row in (r for r in result.table if r.size == size):
            accuracy = "-" if row.test_mean is None else f"{row.test_mean:.2%} ± {row.test_std:.2%}"
            val = "-" if row.val_mean is None else f"{row.val_mean:.2%}"
            seeds_text = str(row.runs) + (f" ({row.failed} diverged)" if row.failed else "")
            table.add_row(row.rung, result.rung_texts()[row.rung], accuracy, val, f"{row.seconds_mean:.1f}", seeds_text)
        print_table(table)
    for verdict in result.verdicts:
        winner = verdict.winner if verdict.winner != TIE else f"{TIE} ({', '.join(verdict.tied)})"
        line = f"{verdict.size:>6} per class: winner {winner}"
        if verdict.verdict is not None:
            line += f"; the lecture ({verdict.row} data, {result.similarity}): {verdict.lecture} -> {verdict.verdict}"
        console.print(line, highlight=False, markup=False)
    for note in result.notes:
        _print_note("note", note)
    console.print(f"total {duration_text(result.seconds)}; results {result.files['json']}, plot {result.files['plot']}",
                  highlight=False, markup=False)


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders, or `cnnlab search` folders (all their trials)."),
    out: Optional[Path] = typer.Option(None, "--out", help=f"The HTML file; default RUN/{REPORT_HTML_FILE} for one "
                                       f"run, {REPORT_HTML_FILE} here for several (refused inside a run folder, "
                                       "whose own page it would replace)."),
    open_page: bool = typer.Option(False, "--open", help="Open the page in the default web browser."),
) -> None:
    """Write one self-contained HTML page about a run, or comparing several runs.

    One run: its model and results, the resolved config, the curves, the curve check, the
    per-layer summary, and every `cnnlab eval` of it (per-class table, confusion matrix, most
    confidently wrong images; one that measured weights the run has replaced since, by a resume, is
    marked stale and is not its test accuracy). Several runs: their curves overlaid against epochs and
    training time, and a table of the config keys that differ and can change a result (log.* and the
    records of how a path was typed are set apart), the best run starred. The page needs no network:
    images are embedded. `cnnlab train` writes RUN/report.html itself.

    Example: cnnlab report runs/r8-seed0 runs/r8-seed1 runs/r8-seed2 --out seeds.html --open
    """
    from cnnlab.report import write_report

    path = write_report(runs, out, say=lambda text: _print_note("note", text))
    console.print(f"report: {display_name(str(path))}", markup=False, highlight=False)
    if open_page:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):  # False: no browser here (a server, a container)
            print(f"warning: --open: no web browser could be started here; open {path.resolve()} yourself.",
                  file=sys.stderr)


@app.command("runs")
def runs_cmd(
    folder: Path = typer.Argument(Path("runs"), help="The folder to look in (default runs/)."),
    sort: str = typer.Option("name", "--sort", help="name, best, test, time, epochs, state or model."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List the runs under a folder: model, data, epochs, best val and test accuracy, time, state.

    State is finished, running, interrupted (Ctrl-C), diverged (a NaN or inf training loss; a NaN val loss
    alone is not, as `cnnlab diagnose` reads it), failed, pruned (by a search), stopped (its process is gone),
    empty (no epoch finished) or incomplete. Folders that are not runs are skipped, counted and named (one
    with a run's files but no config.yaml, as that); a run whose files are missing or damaged is listed with
    a warning naming them. An eval or saved ensemble result that measured weights the run has since replaced
    (it was resumed and trained on) is stale: not its test accuracy (the test column says stale), and a note
    names it; so is an eval folder that measured another run's checkpoint (copied in from that run).

    Example: cnnlab runs runs/ --sort best
    """
    from cnnlab.report import find_runs, runs_rows
    from cnnlab.report.runs import skipped_text

    records, skipped = find_runs(folder)
    rows = runs_rows(records, sort)
    if as_json:
        print(json.dumps({"runs": rows, "skipped": [{"path": display_name(str(path)), "reason": reason}
                                                    for path, reason in skipped]}, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("run", "model", "data", "epochs", "best val", "test", "time", "state"):
        # A name or data path too long for the terminal wraps within its cell: cut short with "…", two runs whose
        # names differ only at the end (...-lr0.01, ...-lr0.1) would read alike.
        table.add_column(column, justify="right" if column in ("epochs", "best val", "test", "time") else "left",
                         overflow="fold" if column in ("run", "data") else "ellipsis")
    for row in rows:
        test = "stale" if row["test_stale"] else _percent(row["test"])
        table.add_row(Text(row["name"]), Text(row["model"]), Text(row["data"]), row["epochs"],
                      _percent(row["best_val"]), test, _seconds(row["seconds"]), row["state"])
    if rows:
        print_table(table)
    for row in rows:  # results that describe weights the run no longer holds: which, and how to measure again
        if row["stale"]:
            names = ", ".join(item["result"] for item in row["stale"])
            _print_note("note", f"{row['path']}: stale (measured weights replaced since): {names}; "
                                f"{row['stale_remedy']} to measure the weights there now")
    for row in rows:  # eval folders of another run's weights (copied in): never this run's test accuracy
        for item in row["elsewhere"]:
            _print_note("note", f"{row['path']}: {item['result']} measured another run's weights ({item['weights']}), "
                                "so it is not this run's test accuracy")
    damaged = [row for row in rows if row["problems"]]
    for row in damaged:  # its numbers above may be incomplete: say which files could not be read
        _print_note("warning", f"{row['path']}: {' '.join(row['problems'])}")
    console.print(f"{len(rows)} run{'s' if len(rows) != 1 else ''} in {display_name(str(folder))}"
                  + (f" ({len(damaged)} with missing or damaged files, named above)" if damaged else "")
                  + (f"; {skipped_text(skipped)}" if skipped else ""), markup=False, highlight=False)


def _print_note(label: str, text: str) -> None:
    """A note under `cnnlab runs`' table, `cnnlab report`'s page line, or `eval`'s, `ensemble`'s and `transfer`'s
    results, wrapped to the terminal as one indented paragraph (:func:`cnnlab.text.note_lines`); soft_wrap: rich
    leaves each line as it is (a path longer than the terminal is folded by the terminal, not cut)."""
    for line in note_lines(label, text, console.width):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _percent(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2%}"


def _seconds(value: Optional[float]) -> str:
    """A run's training time as its report page writes it (cnnlab.text.duration_text); blank when unknown."""
    return "" if value is None else duration_text(value)


# Options and commands whose paths typer reads as a Path, which turns '' into '.': an unset shell variable
# ("--out $DIR") would name the current folder, which the user never typed, or read it as a folder of runs.
PATH_OPTIONS = ("--plot", "--resume", "--space", "--config", "--data-dir")
# --out is read as text (and its emptiness named by the command, with what would land where) but in these
OUT_PATH_COMMANDS = ("data", "lr-find", "report", "export")
# Commands whose positional arguments are all run folders or checkpoints, and predict, whose first one is
PATH_ARGUMENT_COMMANDS = ("diagnose", "eval", "ensemble", "export", "report", "runs")


def _flags(command: Optional[str]) -> set[str]:
    """The options of ``command`` (and cnnlab's own) that take no value: the word after one is an argument."""
    group = typer.main.get_command(app)
    commands = [group, getattr(group, "commands", {}).get(command)] if command else [group]
    return {name for cmd in commands if cmd is not None for param in cmd.params if getattr(param, "is_flag", False)
            for name in (*param.opts, *getattr(param, "secondary_opts", ()))}


def refuse_empty_paths(args: list[str]) -> None:
    """Refuse an empty value of a path option (``--out ''``, ``--out=``) or an empty path argument of a command
    that takes run folders or checkpoints (``cnnlab eval ''``, predict's CHECKPOINT), naming it as empty, before
    typer reads it as '.'."""
    if "" not in (arg.strip() for arg in args) and not any(arg.endswith("=") for arg in args):
        return  # nothing empty: the usual case costs no look at the commands
    where = next((index for index, arg in enumerate(args) if not arg.startswith("-")), None)
    command = args[where] if where is not None else None
    path_options = (*PATH_OPTIONS, "--out") if command in OUT_PATH_COMMANDS else PATH_OPTIONS
    flags = _flags(command)
    positional = -1  # the index among the command's arguments of the word read (none read yet)
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        before = args[index - 1] if index else ""
        takes_value = before.startswith("-") and "=" not in before and before not in flags
        if where is not None and index > where and not arg.startswith("-") and not takes_value:
            positional += 1
        if name in path_options and equals and not value.strip():
            given, remedy = name, "Give the path, or leave the option out for its default."
        elif not arg.strip() and before in path_options:
            given, remedy = before, "Give the path, or leave the option out for its default."
        elif not arg.strip() and not takes_value and (command in PATH_ARGUMENT_COMMANDS
                                                      or (command == "predict" and positional == 0)):
            # a positional path (an option's empty value is the option's to judge)
            given = f"A path given to cnnlab {command}"
            remedy = "Name the run folder or file (the current folder as '.')."
        else:
            continue
        raise CnnlabError(f"{given} is empty (an unset shell variable?): read as a path it would be '.', the current "
                          f"folder, which was not named. {remedy}")


def expand_home(args: list[str]) -> list[str]:
    """``args`` with a ``~`` or ``~USER`` at the start of an ``--option=`` value expanded to that home folder.

    The shell expands ``--out ~/runs/a`` but not ``--out=~/runs/a``: the ``~`` reached cnnlab as it was typed,
    and ``--out=~/runs/a`` trained into a folder named ``~`` inside the current one. Only the value of a
    ``--name=value`` word is read, as the shell reads the value of a word standing alone."""
    expanded = []
    for arg in args:
        name, equals, value = arg.partition("=")
        if name.startswith("--") and equals and value.startswith("~"):
            arg = f"{name}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script.

    Exit codes: 0 success; 1 a check failed, or an internal error; 2 bad input (click's usage errors
    too, and a training run a NaN or inf loss stopped: NonFiniteLossError is a CnnlabError); 130
    interrupted (typer turns a Ctrl-C outside training into that code, and ends quietly on a closed
    stdout pipe); 143 a SIGTERM that came while a run trained (engine.StopRequest takes it over there) or between
    the runs of search, experiment and transfer (cnnlab.train.between_runs holds it there); 130 too for a Ctrl-C
    there. No traceback reaches the user unless ``--debug`` asks for it: bad input is one paragraph naming what
    is wrong (with ``--debug``, after its traceback, and still exit 2), and anything unexpected is one line
    asking for a report.

    Under torchrun a process that joined a process group ends without Python's shutdown (:func:`_end_rank`),
    after any exit, and after ``--debug``'s unexpected error, the one exception that reaches here (typer turns
    a Ctrl-C into exit 130): its traceback is printed first, as Python would, and the exit status is 1.
    """
    try:
        _main(argv)
    except SystemExit as done:
        _end_rank(done.code)
        _ignore_late_signals(argv)
        raise
    except Exception:
        if joined_process_group():
            traceback.print_exc()
            _end_rank(1)
        raise
    _end_rank(0)
    _ignore_late_signals(argv)


def _ignore_late_signals(argv: Optional[list[str]]) -> None:
    """Once the command is done (everything it writes written, its last line printed), Ctrl-C and SIGTERM are
    ignored: the interpreter's shutdown takes about a second (torch's libraries), and a signal then printed a
    traceback from torch's exit handlers, or turned a command that had succeeded into exit code 130 or 143.
    Only for the program itself (``argv`` None, from sys.argv): a caller of main() keeps its process's handlers."""
    import signal
    import threading

    if argv is None and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _end_rank(code) -> None:
    """Under torchrun, once the command is done, end a process that joined a process group at once (os._exit,
    with ``code``), without Python's shutdown: everything the command writes is written and closed by then, and
    the two streams are flushed here.

    Why: DDP keeps torch's gloo process group, and its worker threads, alive after destroy_process_group until
    the interpreter shuts down, and a worker that then lets go of a finished collective's tensor has to take the
    GIL, which during shutdown aborts the process (SIGABRT, "terminate called without an active exception";
    torch issue 190489). On 2 busy cores about one DDP test run in ten ended that way, a rank that returned right
    after its last collective.
    """
    if not joined_process_group():
        return
    if code is not None and not isinstance(code, int):  # sys.exit("message"): Python prints it, exit status 1
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _tolerant_stdout() -> None:
    """Text the output's encoding cannot hold is written escaped (``caf\\xe9``), as Python writes it to stderr,
    instead of failing: under PYTHONIOENCODING=ascii (or a terminal in another code page) a class or folder
    named with an accent ended `eval`, `predict` and `runs` with an internal error, and a finished training run
    with exit 1 at its last line."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):  # a closed or detached stream: nothing will be written
            reconfigure(errors="backslashreplace")


def _print_json_as_written(value) -> None:
    """Print ``value`` as JSON with its text as written (the lecture's Chinese quotes readable) where standard output
    takes UTF-8, and with \\u escapes elsewhere: under PYTHONIOENCODING=ascii the escaped output of
    :func:`_tolerant_stdout` wrote a folder named café as ``caf\\xe9``, which no JSON reader takes."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    print(json.dumps(value, indent=2, ensure_ascii=codecs.lookup(encoding).name != "utf-8"))


# matplotlib's warning for a character its font cannot draw (a class name in another script): "Glyph 23454
# (\N{CJK UNIFIED IDEOGRAPH-5B9E}) missing from font(s) DejaVu Sans."
MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font\(s\) (.+?)\.?$")


@contextlib.contextmanager
def _missing_glyphs_noted_once():
    """Within the block, matplotlib's warnings about characters its font cannot draw become one note: an eval of
    classes named in Chinese printed six raw warnings with source lines, one per character and plot."""
    import warnings

    from cnnlab.config import notice

    shown = warnings.showwarning
    noted = []

    def show(message, category, filename, lineno, file=None, line=None):
        found = MISSING_GLYPH.match(str(message))
        if found is None:
            shown(message, category, filename, lineno, file, line)
        elif not noted:
            noted.append(found)
            notice(f"the plots draw characters their font ({found.group(2)}) has no glyph for as empty boxes "
                   f"({chr(int(found.group(1)))} first, in a name they show). To see them, install a font that has "
                   "them and put it first in matplotlib's font.family (a matplotlibrc file).")

    with warnings.catch_warnings():
        # shown (as the note), never raised: under `python -W error` one was an internal error mid-plot
        warnings.filterwarnings("default", message=MISSING_GLYPH.pattern, category=UserWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _agg_backend(caller: bool):
    """cnnlab draws only to files, with Agg: a backend set for other programs (a GUI one, or one matplotlib does
    not know, which it refuses when first imported: a training run failed after its last epoch) is not used here.
    ``caller``: main() was given its arguments, as a program calling it in its own process gives them; that
    program gets its setting back."""
    backend = os.environ.get("MPLBACKEND")
    if backend is not None:
        os.environ["MPLBACKEND"] = "Agg"
    try:
        yield
    finally:
        if backend is not None and caller:
            os.environ["MPLBACKEND"] = backend


def _main(argv: Optional[list[str]]) -> None:
    with _agg_backend(caller=argv is not None):
        _run(argv)


def _run(argv: Optional[list[str]]) -> None:
    _forget_earlier_signals()
    _tolerant_stdout()
    try:
        args = expand_home(sys.argv[1:] if argv is None else argv)
        refuse_empty_paths(args)
        try:
            with _missing_glyphs_noted_once():
                _run_app(args)
        except SystemExit:
            _flush_output()  # here, so that a full disk under the output is said as any error is
            raise
    except SystemExit as err:
        if _output_closed(err):  # `cnnlab diagnose RUN | head -1`: code 1 would read as a check that failed
            sys.exit(CLOSED_OUTPUT_EXIT)
        raise
    except CnnlabError as err:
        _let_rank_0_report_first()
        if _state["debug"]:  # the traceback, and still the exit code of bad input
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a bug in cnnlab, not the user's input
        _let_rank_0_report_first()
        if _state["debug"]:
            raise
        problem = (path_problem(err) or _full_disk_problem(err) or _library_memory_problem(err)
                   or _memory_problem(err, args[:1]))
        if problem:  # a path the system refused (permissions, a name too long), a full disk, memory: not a bug
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        # Under torchrun a process whose peer died meets torch's own error in the next collective ("Connection
        # closed by peer"): that is the other process's failure, shown above, and not a bug of this one.
        # A process killed outright (SIGKILL, the out-of-memory killer) says nothing: torchrun's summary names it.
        blame = ("under torchrun this often follows another process of the job ending first: its message is above, "
                 "or, for a process killed outright (SIGKILL, the out-of-memory killer), torchrun's summary below "
                 "names its exit code (-9), and the run's last checkpoint is kept (the same torchrun command with "
                 "`cnnlab train --resume RUN` continues it). If no process ended first, this is a bug in cnnlab"
                 if launched_processes() > 1 else "this is a bug in cnnlab, not a problem with your input")
        print(f"internal error: {type(err).__name__}: {first_line} -- {blame}. Run the same command with --debug "
              "(cnnlab --debug COMMAND ...) to see the traceback, and please report it with that output.",
              file=sys.stderr)
        sys.exit(1)


# A command whose output was closed before it finished writing it (`| head`) ends as the shell reports a program
# that SIGPIPE ends: 128 + 13. rich and click would end it with 1, which reads as a check that failed.
CLOSED_OUTPUT_EXIT = 141


class _RunLines:
    """The print for the lines a command that trains several runs (search, experiment) says as they finish.

    A closed output (`cnnlab search ... | head -1`) ended such a command at its next line, with exit code 141 and
    no word on what it kept; a full disk under it, as an internal error. Either now holds a stop for the next run,
    as a Ctrl-C between runs does (:func:`cnnlab.train.between_runs.hold_stop`), and :attr:`closed` says why: the
    command then says it when it stops (:meth:`say_why_it_stopped`), or, when no run was left to stop, ends as any
    command on a closed output does."""

    def __init__(self, **options) -> None:
        self.options = options
        self.closed: Optional[str] = None  # why the output failed, once it has

    def __call__(self, text: str) -> None:
        from cnnlab.train.between_runs import held_signal, hold_stop

        if self.closed is not None:
            return
        try:
            console.print(text, **self.options)
        except SystemExit as err:  # rich's answer to a closed stdout: it now points at /dev/null
            if not _output_closed(err):
                raise
            self.closed = "was closed (the program reading it, such as tee or head, ended)"
            if not hold_stop() and held_signal() is None:
                raise SystemExit(CLOSED_OUTPUT_EXIT)  # no run loop to stop: ends as any command on a closed output
        except OSError as err:  # stdout on a full disk
            self.closed = f"could not be written ({err.strerror or err})"
            if not hold_stop() and held_signal() is None:
                raise  # no run loop to stop: said as a full disk under any command's output

    def say_why_it_stopped(self) -> None:
        """The line said on stderr before the `interrupted:` line of a command this stopped; nothing when it did
        not stop it."""
        if self.closed is not None:
            print(f"The command's output {self.closed}: it stopped before its next training run (or a run's "
                  "measures), as a Ctrl-C there would.", file=sys.stderr)

    def end_if_closed(self) -> None:
        """After the last run: the command's results are written, and the lines that would show them cannot be
        (exit code 141 as on a closed output; a full disk is said by the next print's error)."""
        if self.closed is not None and self.closed.startswith("was closed"):
            sys.exit(CLOSED_OUTPUT_EXIT)


def _output_closed(err: SystemExit) -> bool:
    """Whether ``err`` is how rich (Console.on_broken_pipe) or click ended the command on a closed stdout."""
    cause = err.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EPIPE


def _closing_output(print_lines: Callable[[], None]) -> None:
    """Run ``print_lines``; on a closed stdout (`| head`) go on without the rest of them: rich has pointed stdout
    at /dev/null by then, so later lines cost nothing, and the files a finished run still has to write (its
    diagnosis and page) are written."""
    try:
        print_lines()
    except BrokenPipeError:
        pass
    except SystemExit as err:
        if not _output_closed(err):
            raise


# The system's refusals of a path that are about the path given, not about cnnlab: what to do about each
PATH_ERRORS = {
    errno.EACCES: "Check its permissions and those of the folders above it (a folder needs x to be entered), or "
                  "choose another path",
    errno.EPERM: "Check its permissions and those of the folders above it, or choose another path",
    errno.ENAMETOOLONG: "A name in it is longer than the file system takes (255 bytes a name on most): choose a "
                        "shorter one",
    errno.ELOOP: "A link in it leads round a loop: fix or remove the link",
    errno.EROFS: "That file system is read-only: choose a folder on another",
    errno.ENOSPC: "The disk is full: free some space, or choose a folder on another disk",
}


def _flush_output() -> None:
    """Write what stdout still holds before the command's exit: a disk that refuses it raises here, where it is
    said, not in Python's exit (exit code 120). A closed output (`| head`) is said by the exit's own path."""
    if sys.stdout is None:  # started with its output closed (>&-): nothing to write
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass


def _full_disk_problem(err: BaseException) -> str:
    """The message for a write the disk refused without naming a file (the command's output sent to a full disk,
    `cnnlab eval RUN --json > out.json`); '' for any other error."""
    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT) or err.filename is not None:
        return ""
    return (f"{err.strerror or os.strerror(err.errno)}: the command's output (or a file it wrote) could not be "
            f"written. {PATH_ERRORS[errno.ENOSPC]}.")


def _library_memory_problem(err: BaseException) -> str:
    """The message for a library the system could not map into memory, or memory a module's import could not get
    (torch's, under a small `ulimit -v`); '' for any other error."""
    text = str(err)
    # a module's top-level code runs as "<module>"; importlib's own frames stay only for errors raised inside it
    loading = any(frame.name == "<module>" or frame.filename.startswith("<frozen importlib")
                  for frame in traceback.extract_tb(err.__traceback__))
    if not ((isinstance(err, ImportError) and "failed to map segment" in text)
            or (isinstance(err, MemoryError) and loading)):  # a MemoryError in a module's code as it is imported
        return ""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else None
    if soft is None:
        limit = "the machine's free memory (or this process's limit on it) is short"
    elif soft == resource.RLIM_INFINITY:
        limit = "no limit is set (ulimit -v), so the machine's free memory is short"
    else:
        limit = f"this process may use at most {soft / 2 ** 30:.1f} GiB of address space (ulimit -v {soft // 1024})"
    what = " ".join(text.split())[:200] or type(err).__name__
    return (f"out of memory loading the libraries ({what}): {limit}, less than torch's libraries need to load (a "
            "few GiB of address space). Raise the limit (ulimit -v unlimited) or free memory.")


# torch's CPU allocator refusing an allocation raises a plain RuntimeError; this is its message's own wording
def _memory_problem(err: BaseException, command: Sequence[str] = ()) -> str:
    """The message for memory the machine or the GPU could not give (a batch or an image size too large for it:
    :func:`cnnlab.errors.is_out_of_memory`); '' for any other error. ``command``: the command's first word, whose
    options the advice names (`cnnlab data ...` has no batch size)."""
    if not is_out_of_memory(err):
        return ""
    if not (isinstance(err, RuntimeError) and CPU_ALLOCATION_REFUSED in str(err)):
        what = (str(err).strip().splitlines() or [type(err).__name__])[0]
    else:
        # "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried
        # to allocate 102760448 bytes. Error code 12 (...)": from the allocator's name on
        message = str(err).strip().splitlines()[0]
        what = message[message.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in message else message
    if list(command) == ["data"]:
        lower = "Lower the image size (--image-size) or the data's memory limit (--memory-limit-mb)"
    else:
        lower = ("Lower the batch size (train.batch_size, or --batch-size), the image size (data.image_size) or the "
                 "model's width")
    return (f"out of memory ({what[:300]}): the command needed more memory than is free. {lower}, or stop other "
            "programs that use memory.")


def path_problem(err: BaseException) -> str:
    """The message for an OSError the system raised about a path (:data:`PATH_ERRORS`: no permission, a name too
    long, ...), wherever in a command it was met; '' for any other error, which stays an internal one."""
    if (not isinstance(err, OSError) or err.errno not in PATH_ERRORS
            or not isinstance(err.filename, (str, bytes, os.PathLike))):  # a path, not a descriptor's number
        return ""
    path = display_name(os.fsdecode(err.filename))
    if err.filename2 is not None:
        path += f"' -> '{display_name(os.fsdecode(err.filename2))}"
    return f"{err.strerror or os.strerror(err.errno)}: '{path}'. {PATH_ERRORS[err.errno]}."


def _forget_earlier_signals() -> None:
    """A command starts with no stop signal on record. Its exit code and "interrupted" / "stopped by SIGTERM"
    line read the last signal a run or a pause between runs received (:func:`_stop_signal`); in a program or
    test that calls main more than once, an earlier command's SIGTERM would otherwise name a later Ctrl-C."""
    from cnnlab.train import between_runs

    between_runs.forget_last_signal()
    engine = sys.modules.get("cnnlab.train.engine")  # not imported yet: nothing received, and torch stays unloaded
    if engine is not None:
        engine.forget_received_signal()


def _run_app(argv: Optional[list[str]]) -> None:
    """The command line, as typer runs it; under torchrun, on a rank other than 0, a usage error (an option out
    of range, a mistyped name) waits for rank 0 to show it, as cnnlab's own errors do
    (:func:`_let_rank_0_report_first`): typer would print it at once, in every process."""
    if launched_processes() <= 1 or is_main_process():
        app(args=argv)
        return
    from typer import rich_utils

    try:
        code = app(args=argv, standalone_mode=False)  # usage errors are raised, not printed
    except typer.TyperException as err:  # the parser's usage errors derive from it
        _let_rank_0_report_first()
        rich_utils.rich_format_error(err)  # as typer shows it
        sys.exit(err.exit_code)
    except typer.Abort:  # end of input at a prompt: typer's exit code
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) and Ctrl-C (130) outside a run come back as the code
        sys.exit(code)


# Seconds a rank other than 0 waits before it reports an error (:func:`_let_rank_0_report_first`): rank 0 meets the
# same bad input at about the same moment (the same command line and files), and torchrun ends this rank within a
# tenth of a second of rank 0's exit.
RANK_0_FIRST_SECONDS = 10.0


def _let_rank_0_report_first() -> None:
    """Under torchrun, on a rank other than 0: wait before reporting an error, so that a message every rank would
    print shows once. Every rank runs the same command and meets the same bad input; rank 0 says it and exits with
    its code, and torchrun then ends the others while they wait here. A rank whose error rank 0 did not meet (rank 0
    then waits for this one in a collective) still says it after the wait. A Ctrl-C in the wait ends it quietly."""
    if launched_processes() <= 1 or is_main_process() or launch_problem():  # a broken launch has no rank 0 to wait for
        return
    import time

    try:
        time.sleep(RANK_0_FIRST_SECONDS)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
