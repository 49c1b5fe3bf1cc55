"""``cnnlab export``: a trained model as TorchScript or ONNX, checked against PyTorch before it is kept.

The preprocessing travels with the file: class names, input channels and size, the per-channel
mean/std (inputs are ``(pixels / 255 - mean) / std``), how pixels are read and how an image is resized
and cropped to the input shape (predict's steps, so a deployment can repeat them), as JSON in
TorchScript's extra file ``cnnlab.json`` or ONNX's metadata property ``cnnlab``. The export is written
to a temporary file, run on sample inputs (ONNX with onnxruntime) and compared with the PyTorch model;
only when every output agrees within the tolerance is it renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from cnnlab.errors import CnnlabError, display_name, is_finite_number, shown_value, whole_number
from cnnlab.run import EXPORT_SUFFIXES, export_name, refuse_a_runs_own_file

if TYPE_CHECKING:
    from cnnlab.train.checkpoint import LoadedModel

FORMATS = ("torchscript", "onnx")
SUFFIX = EXPORT_SUFFIXES  # the default file's (cnnlab.run.export_name)
# File names that say what a file holds: an export named for another format is refused, since the name would
# send it to the wrong loader (.safetensors: cnnlab's own checkpoints, which hold no program).
NAMED_FORMATS = {".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".onnx": "onnx",
                 ".safetensors": "safetensors"}
# The parity bar: the largest difference allowed between the export's logits and PyTorch's, relative to the size of
# the largest logit (at least 1): float32 rounding differs by a few parts in 1e7 of the values summed, and a barely
# trained network's logits reach hundreds (densenet121 after one epoch: 422, its float-exact ONNX export 2.4e-4 off)
TOLERANCE = 1e-4
# the resize predict and evaluation run (cnnlab.data.images.resize_uint8), as the export's metadata names it
RESIZE_FUNCTION = "torchvision.transforms.v2.functional.resize(image, [height, width], antialias=True)"


def preprocessing(loaded: LoadedModel) -> dict:
    """The JSON that travels with an export: what the model is and how to prepare its inputs."""
    from cnnlab.evaluate.evaluate import input_shapes

    buckets = loaded.config.data.buckets
    if buckets:
        shape = ("shape (B, channels, H, W) with (H, W) one of shapes: the image scaled to cover the shape of the "
                 "aspect-ratio bucket (buckets, width:height) nearest its own ratio in log ratio (|log(w/h) - "
                 "log(W/H)| smallest; a tie to the bucket listed first), and centre-cropped to it")
        resize = ("scaled (bilinear, antialiased) by max(H / h, W / w) to cover the (H, W) of the bucket nearest the "
                  "image's width:height in log ratio, each side rounded to whole pixels (never below H or W), then "
                  "centre-cropped to it")
    else:
        shape = "shape (B, channels, image_size, image_size)"
        resize = ("the short side resized to image_size (bilinear, antialiased; the long side keeps the aspect ratio, "
                  "truncated to whole pixels), then centre-cropped to image_size x image_size")
    # Which resize, by name: PIL's Image.resize(BILINEAR) antialiases with other weights, and its probabilities
    # differed from predict's by up to 1.6e-3 (13 test images)
    resize += (f"; the resize is {RESIZE_FUNCTION} on the uint8 image tensor (C, H, W), whose pixels predict's "
               "equal (but for an image enlarged to it that is more than twice as long as it is wide, which "
               "predict crops before it enlarges it: within 1 grey level); PIL's Image.resize gives other pixels")
    # How predict and evaluation read an image (cnnlab.data.images.read_image), so that a deployment
    # reproduces their numbers: a squashed resize or another gray formula gives other probabilities.
    pixels = ("uint8 after the EXIF orientation, 16-bit gray images scaled to 8 bits (value * 255 / 65535, rounded), "
              "converted to "
              + ("gray (L = 0.299 R + 0.587 G + 0.114 B, PIL's convert('L'))" if loaded.in_chans == 1
                 else "RGB (channel order R, G, B; alpha dropped)"))
    # Shown names: a name that is not valid UTF-8 (a lone surrogate) makes the JSON unreadable to strict parsers.
    return {"model": loaded.model_name, "classes": loaded.class_labels, "channels": loaded.in_chans,
            "image_size": loaded.image_size, "buckets": buckets, "shapes": [list(hw) for hw in input_shapes(loaded)],
            "mean": loaded.mean, "std": loaded.std, "weights": loaded.weights,
            "pixels": pixels, "resize": resize, "input": f"(pixels / 255 - mean) / std, {shape}"}


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  torch.onnx.export(dynamo=True) builds the graph with it
    except ImportError:
        raise CnnlabError("ONNX export needs the onnx, onnxruntime and onnxscript packages: pip install "
                          "'cnnlab[onnx]'. TorchScript needs nothing extra: --format torchscript.") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _exporter_quietly():
    """torch.export logs warnings and tracebacks of its shape reasoning (hundreds of lines for a model it cannot
    export) and the exporter prints its progress, on stdout, which may be --json: the outcome is said once, by
    cnnlab, as the file kept or a CnnlabError."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its errors too: the exception that follows them is what is said
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _torchscript_quietly():
    """torch 2.14 marks TorchScript deprecated in favour of torch.export. The format still loads in
    C++ (libtorch) and in every torch release, which is why it is offered; the warning is not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _export_torchscript(model, sample: torch.Tensor, path: Path, info: dict) -> None:
    # No size switch, unlike ONNX's: a trace records operations, not the sample's size (a bucketed run's file takes
    # every bucket's shape), and the parity check runs it at every shape the metadata names.
    with _torchscript_quietly():
        traced = torch.jit.trace(model, sample, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"cnnlab.json": json.dumps(info)})


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    """The TorchScript file's logits for ``x``, loaded onto x's device (the parity check's CPU, or a GPU)."""
    with torch.no_grad(), _torchscript_quietly():
        return torch.jit.load(str(path), map_location=x.device)(x)  # a file cnnlab wrote


def _export_onnx(model, sample: torch.Tensor, path: Path, info: dict) -> None:
    onnx, _ = _onnx_modules()
    dims = {0: torch.export.Dim("batch", min=1)}
    heights, widths = zip(*info["shapes"])
    if len(info["shapes"]) > 1:
        # A bucketed run takes one (H, W) per bucket: the graph must not fix the sample's. Its sides range over the
        # buckets' and no further: below them a net's size arithmetic may not hold (GoogLeNet needs 15 pixels),
        # which torch.export refuses to leave open.
        dims.update({axis: torch.export.Dim(name, min=min(sides), max=max(sides))
                     for axis, name, sides in ((2, "height", heights), (3, "width", widths)) if len(set(sides)) > 1})
    with _exporter_quietly():
        program = torch.onnx.export(model, (sample,), dynamic_shapes=(dims,), dynamo=True,
                                    input_names=["image"], output_names=["logits"])
    program.save(str(path))
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cnnlab", json.dumps(info)
    onnx.save(proto, str(path))


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    _, onnxruntime = _onnx_modules()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failed run raises, and export_model says it in its own words
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(logits)


def _failed(fmt: str, model_name: str, what: str, err: Exception) -> CnnlabError:
    """The message for an export that could not be made or run: the exporter's or runtime's first line, and the
    other format, which traces operations rather than reasoning over sizes."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = re.sub(r"\x1b\[[0-9;]*m", "", detail)  # the exporter colours its text for a terminal
    other = "onnx" if fmt == "torchscript" else "torchscript"
    return CnnlabError(f"The {fmt} export of {model_name} {what} ({type(err).__name__}: {display_name(detail)}): "
                       f"nothing was written. Try --format {other}.")


def _check_suffix(path: Path, fmt: str) -> None:
    """Refuse an --out name whose suffix says another format than --format writes (any other suffix is taken),
    and an existing file whose name does not say it is a ``fmt`` file: the export would replace it."""
    named = NAMED_FORMATS.get(path.suffix.lower(), fmt)
    if named != fmt:
        other = f", or choose --format {named}" if named in FORMATS else ""
        raise CnnlabError(f"--out '{path}' ends in {path.suffix}, the suffix of {named} files, but --format {fmt} "
                          f"writes {fmt}: the file would not be what its name says. Name it "
                          f"'{path.with_suffix(SUFFIX[fmt]).name}'{other}.")
    if path.is_file() and path.suffix.lower() not in [s for s, f in NAMED_FORMATS.items() if f == fmt]:
        # e.g. --out RUN/config.yaml: an earlier export (model.pt) may be replaced, another file may not
        raise CnnlabError(f"--out '{path}' already exists and its name does not say it is a {fmt} file, so the "
                          f"export would replace it. Name the export '{path.with_suffix(SUFFIX[fmt]).name}', or "
                          "move the file away first.")


def _refuse_replacing(path: Path, option: str) -> None:
    """Refuse an existing file (a link's target, where ``path`` is a link) that is no export, by its content: a
    torch.save file named model.pt, or a link named like an export to another run's checkpoint, was replaced."""
    from cnnlab.run import exported_format

    if not path.exists() or exported_format(path) is not None:
        return  # nothing there, or an earlier export: replaced
    through = f" (a link to '{display_name(os.path.realpath(path))}')" if path.is_symlink() else ""
    raise CnnlabError(f"{option} '{display_name(str(path))}'{through} already holds a file that is no export (not a "
                      "TorchScript module or an ONNX graph), and the export would replace it: weights saved there "
                      "would be lost. Name another file, or move that one away first.")


def export_model(checkpoint: str | Path, fmt: str, *, out: Optional[str | Path] = None, ema: bool = False,
                 samples: int = 8, tolerance: float = TOLERANCE, seed: int = 0) -> dict:
    """Export, verify on ``samples`` (1 or more) random inputs and a batch of a different size, then keep the file.
    ``tolerance``: the largest difference allowed between the export's logits and PyTorch's, times the largest
    logit's size (at least 1)."""
    from cnnlab.errors import check_count
    from cnnlab.io import atomic_path, check_names_a_file, check_output_file, check_utf8_path
    from cnnlab.train.checkpoint import load_run_model

    if fmt not in FORMATS:
        raise CnnlabError(f"--format '{fmt}' is not known: choose torchscript or onnx.")
    check_count(samples, "samples", 1, "the random inputs of the first batch the export is checked on")
    # A negative or NaN tolerance failed every export as a parity failure ("report the model"); text failed inside.
    if not is_finite_number(tolerance) or tolerance < 0:
        raise CnnlabError(f"tolerance={shown_value(tolerance)} must be a number of at least 0: the largest "
                          "difference allowed between the export's logits and PyTorch's, as a share of the largest "
                          f"logit's size (at least 1; default {TOLERANCE:g}).")
    if whole_number(seed) is None:
        raise CnnlabError(f"seed={shown_value(seed)} must be a whole number: it seeds the random inputs the export "
                          "is checked on.")
    if out is not None:
        check_names_a_file(out, "--out", export_name("best", False, fmt))  # 'models/' would be written as a file
        _check_suffix(Path(out), fmt)
    loaded = load_run_model(checkpoint, ema=ema)
    model = loaded.model.float().eval()
    info = preprocessing(loaded)
    # By default beside the checkpoint: best.pt, or best-ema.pt for the EMA weights (never over the other's file).
    default_name = export_name(loaded.path.stem, loaded.weights == "ema", fmt)
    path = Path(out) if out is not None else loaded.path.with_name(default_name)
    option = "--out" if out is not None else "The export"
    # torch.jit.save and ONNX Runtime take the path as UTF-8 text: another encoding failed inside them
    check_utf8_path(path, option, "TorchScript and ONNX files are written and checked through UTF-8 paths only")
    if path.is_dir():  # the example keeps the format's suffix: a file without one is not known by its name later
        raise CnnlabError(f"{option} '{path}' is a folder; give a file name inside it, such as "
                          f"'{path / default_name}'.")
    # before the export; a missing folder is made when the file is kept. By default beside the checkpoint, whose
    # folder may be read-only
    check_output_file(path, option, instead="" if out is not None else
                      "Give --out a file in a folder you can write to (by default the export goes beside the "
                      "checkpoint).")
    refuse_a_runs_own_file(path, option)
    _refuse_replacing(path, option)
    generator = torch.Generator().manual_seed(whole_number(seed))
    channels, (first, *others) = info["channels"], info["shapes"]
    # Normalised inputs are roughly unit Gaussian; two batch sizes check the batch axis is not fixed, and a batch
    # at each other bucket shape that the spatial axes are not.
    other_batch = 3 if samples != 3 else 2
    checks = [torch.randn((samples, channels, *first), generator=generator),
              torch.randn((other_batch, channels, *first), generator=generator)]
    checks += [torch.randn((other_batch, channels, *shape), generator=generator) for shape in others]
    with torch.no_grad():
        expected = [model(x) for x in checks]
    run = {"torchscript": _run_torchscript, "onnx": _run_onnx}[fmt]
    if fmt == "onnx":
        _onnx_modules()  # fail before any work when the extra is missing
    with atomic_path(path, f"the {fmt} export") as temporary:
        try:
            if fmt == "onnx":
                _export_onnx(model, checks[0], temporary, info)
            else:
                _export_torchscript(model, checks[0], temporary, info)
        except CnnlabError:
            raise
        except Exception as err:  # the exporter's many error types: the model holds what it cannot express
            raise _failed(fmt, loaded.model_name, "cannot be exported", err) from None
        worst = scale = 0.0
        for x, reference in zip(checks, expected):
            try:
                got = run(temporary, x)
            except Exception as err:  # e.g. an ONNX graph whose size arithmetic holds at one bucket shape only
                raise _failed(fmt, loaded.model_name, f"fails on a batch of shape {tuple(x.shape)}", err) from None
            if got.shape != reference.shape:
                raise CnnlabError(f"The {fmt} export returns shape {tuple(got.shape)} for a batch of {tuple(x.shape)}, PyTorch "
                                  f"{tuple(reference.shape)}: nothing was written.")
            worst = max(worst, (got.float() - reference.float()).abs().max().item())
            scale = max(scale, reference.float().abs().max().item())
        allowed = tolerance * max(1.0, scale)  # relative to the largest logit: float32 rounding scales with it
        if not worst <= allowed:
            raise CnnlabError(f"The {fmt} export differs from PyTorch by up to {worst:.3g} in the logits (allowed "
                              f"{allowed:.3g}: {tolerance:g} times the largest logit's size, {max(1.0, scale):.3g}): "
                              "nothing was written. Try the other --format, or report the model.")
    return {"file": str(path), "format": fmt, "checkpoint": str(loaded.path), "weights": loaded.weights,
            "max_abs_difference": worst, "tolerance": tolerance, "allowed": allowed, "checked_batches": [len(x) for x in checks],
            "checked_shapes": [list(x.shape[-2:]) for x in checks],
            "preprocessing": info}
