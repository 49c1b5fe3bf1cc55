"""``cnnlab ensemble``: average the predicted probabilities of several models.

The lecture: independently trained models make partly independent mistakes, so averaging their
probabilities gains a little (about 2% on ImageNet-scale problems). Snapshot ensembles get several
members from one run, at the ends of the cycles of a cyclic learning rate. Members may be any
architectures; they must share the class list. Each member sees the data with its own preprocessing
(image size, channels, mean/std).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from cnnlab.config import missing_recorded_path
from cnnlab.errors import CnnlabError, check_count, display_name
from cnnlab.run import MEASURED_KEY, SNAPSHOT_SHOWN, RunFolder, refuse_a_runs_own_file
from cnnlab.threads import keeps_thread_setting

if TYPE_CHECKING:
    from cnnlab.train.checkpoint import LoadedModel


def _shown(path: str | Path) -> str:
    """A path as messages show it: bytes that are not UTF-8 escaped (caf\\xe9), as everywhere in cnnlab."""
    return display_name(str(path))


def snapshot_paths(run: str | Path) -> list[Path]:
    """A cyclic-LR run's snapshot files (:meth:`RunFolder.snapshots`), in cycle order: 2 or more, the members of
    an ensemble."""
    folder = RunFolder(run)
    if not folder.path.is_dir():  # "holds no snapshot" would send a typo to train a cyclic run
        what = "does not exist" if not folder.path.exists() else "is a file, not a run folder"
        raise CnnlabError(f"'{_shown(run)}' {what}: --snapshots takes the folder of a run trained with "
                          "train.snapshots=true.")
    found = folder.snapshots()
    if not found:
        raise CnnlabError(f"'{_shown(run)}' holds no {SNAPSHOT_SHOWN}: train with schedule.name=cyclic, "
                          "schedule.cycles=K and train.snapshots=true to get them.")
    if len(found) < 2:  # run_ensemble's own refusal would advise --snapshots, which was what was asked
        raise CnnlabError(f"'{_shown(run)}' holds one snapshot ({found[0].name}), and an ensemble needs 2 or more: "
                          f"{_fewer_snapshots_remedy(folder)}, or name other checkpoints or run folders as "
                          "members.")
    return found


def _fewer_snapshots_remedy(folder: RunFolder) -> str:
    """What gives a run that saved one snapshot more of them, read from its status.json: a run
    stopped part-way saves the rest when resumed; one early stopping ended before its next cycle, or one of a
    single cycle, saves more only when trained again otherwise."""
    import shlex

    status = folder.recorded_status()
    state = status.get("state")
    if state in ("interrupted", "running"):
        return f"let the run finish, which saves the rest (cnnlab train --resume {shlex.quote(_shown(folder.path))})"
    if state == "finished" and str(status.get("message") or "").startswith("stopped early"):
        return ("early stopping ended the run before its next cycle, and a resume trains no further: train it again "
                "with a longer train.early_stop_patience, or without it (0)")
    return "train with schedule.cycles=2 or more (a snapshot at the end of each cycle)"


def check_distinct(members: list[LoadedModel]) -> None:
    """Refuse a member given twice, by two names of one file or as another file with the same weights: it would
    count twice in the average, and the gain over the best member would compare the model with itself."""
    for i, member in enumerate(members):
        for earlier in members[:i]:
            if member.path.samefile(earlier.path):
                raise CnnlabError(f"The members '{_shown(earlier.path)}' and '{_shown(member.path)}' are the same "
                                  "checkpoint (a run folder stands for its best checkpoint): it would count twice in "
                                  "the average. Name each member once.")
            if _same_weights(earlier.model, member.model):
                raise CnnlabError(f"The members '{_shown(earlier.path)}' and '{_shown(member.path)}' hold the same "
                                  "weights (a copy, or a run's best and last checkpoints when its last epoch was its "
                                  "best): one model would count twice in the average. Name each member once.")


# DataConfig fields that shape or normalise a split's images but never choose which images it holds: a member's
# own values are kept for its evaluation and set to the first member's when the two splits are compared.
PREPROCESSING_FIELDS = ("image_size", "channels", "in_memory", "memory_limit_mb", "buckets", "normalize", "mean", "std")


def check_same_split(first: LoadedModel, member: LoadedModel, spec: str, split: str) -> None:
    """Refuse a member whose data settings (data.seed, val_fraction, train_per_class, classes) choose other images
    for ``split`` than the first member's. Its probabilities would be averaged with those of other images: the
    labels alone may not tell, since a seeded hold-out keeps the images in class order whatever the seed.

    Members that differ only in preprocessing (image size, channels, buckets, normalisation) see the same images;
    when other settings differ, the member's split is loaded with the first member's preprocessing and compared
    file by file, or image by image.
    """
    from dataclasses import fields, replace

    from cnnlab.data import load_source

    def with_first_preprocessing(data):
        # spec_typed belongs to the member's own spec (a missing first member's data is named by run_ensemble)
        return replace(data, spec=spec, spec_typed=None,
                       **{name: getattr(first_data, name) for name in PREPROCESSING_FIELDS})

    first_data = replace(first.config.data, image_size=first.image_size, channels=first.in_chans)
    ours, theirs = with_first_preprocessing(first.config.data), with_first_preprocessing(member.config.data)
    if ours == theirs:
        return  # the same settings load the same split
    ours_split, theirs_split = load_source(ours).splits().get(split), load_source(theirs).splits().get(split)
    if ours_split is None or theirs_split is None:
        return  # the evaluation names the missing split
    same = len(ours_split) == len(theirs_split) and torch.equal(ours_split.labels, theirs_split.labels)
    if same and ours_split.paths is not None and theirs_split.paths is not None:
        same = [str(path) for path in ours_split.paths] == [str(path) for path in theirs_split.paths]
    elif same and ours_split.images is not None and theirs_split.images is not None:
        same = torch.equal(ours_split.images, theirs_split.images)
    if not same:
        differ = ", ".join(f"data.{f.name}={getattr(theirs, f.name)!r} against {getattr(ours, f.name)!r}"
                           for f in fields(ours) if getattr(ours, f.name) != getattr(theirs, f.name))
        raise CnnlabError(f"The member '{_shown(member.path)}' sees other images in the {split} split than "
                          f"'{_shown(first.path)}' ({differ}): its probabilities would be averaged with those of "
                          "other images. Choose members trained with the same data settings.")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every parameter and buffer equal, bit for bit (models of other architectures differ in their keys)."""
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def _is_earlier_report(path: Path) -> bool:
    """Whether the JSON file at ``path`` is an earlier `cnnlab ensemble` report, the one file --out may replace."""
    from cnnlab.run import is_ensemble_result

    if path.stat().st_size > MAX_REPORT_BYTES:
        return False
    try:
        return is_ensemble_result(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


# An ensemble's report lists its members and their accuracies: far under this. A larger file is something else.
MAX_REPORT_BYTES = 64 * 2**20


@keeps_thread_setting
def run_ensemble(paths: list[str | Path], *, data: Optional[str] = None, split: str = "test", tta: str = "none",
                 ema: bool = False, shift: Optional[int] = None, scales=None, batch_size: int = 256,
                 out: Optional[str | Path] = None, device="cpu") -> dict:
    """Each member's top-1 next to the ensemble's (mean of the members' probabilities).

    ``paths``: a list of 2 or more run folders or checkpoint files (:func:`snapshot_paths` lists a cyclic
    run's snapshots). ``scales`` (``tta="multiscale"`` only: the sizes it crops at, default 0.9, 1.0, 1.1)
    and ``shift`` (the corner modes only) are checked and used as ``run_eval`` checks and uses them;
    ``batch_size`` (images per forward pass, at least 1) and ``device`` too. ``out``: a JSON file for the
    report; an empty one or the current folder ('.') is refused, as run_eval refuses it. Each member's row
    names its checkpoint as run_eval's report does (absolute, with what was typed where that was relative) and
    records which weights it measured (``measured``, relative to the folder of ``out``: see run_eval)."""
    from cnnlab.devices import resolve_device
    from cnnlab.evaluate.evaluate import (absent_classes_note, black_fill, check_classes, check_shift_fits,
                                          check_tta_options, classification_report, eval_loader,
                                          predict_probabilities, tta_scales, tta_settings)
    from cnnlab.evaluate.measured import checkpoint_fields, measured_record
    from cnnlab.evaluate.tta import CORNER_MODES, DEFAULT_SCALES, RESNET_MODE, mean_of_probabilities, view_count
    from cnnlab.heap import keep_on_cpu
    from cnnlab.io import check_names_a_file, check_out_is_named, check_output_file, write_json_atomic
    from cnnlab.train.checkpoint import load_run_model

    # An empty out, or '.', names no file: refused with the same words as run_eval's, not as "a folder"
    check_out_is_named(out, "the ensemble's report", "Name a file for it, such as 'ensemble.json', or leave "
                       "out --out to only print it.")
    if out is not None:
        check_names_a_file(out, "--out", "ensemble.json")  # 'results/' would be written as a file named results
        if Path(out).is_dir():  # named as a file inside it, as the report's name: ensemble.json
            raise CnnlabError(f"--out '{_shown(out)}' is a folder; give a file name inside it, such as "
                              f"'{_shown(Path(out) / 'ensemble.json')}'.")
        check_output_file(out, "--out")  # before the members are evaluated; its folder is made when it is written
        refuse_a_runs_own_file(out, "--out")
        if Path(out).is_file() and Path(out).suffix.lower() != ".json":
            # an earlier report (ensemble.json) may be replaced; a script, an image or a data file may not
            raise CnnlabError(f"--out '{_shown(out)}' already exists and its name does not say it is a JSON file, so "
                              f"the ensemble's report would replace it. Name the report "
                              f"'{_shown(Path(out).with_suffix('.json'))}', or move the file away first.")
        if Path(out).is_file() and not _is_earlier_report(Path(out)):
            # an eval's metrics.json, a data folder's statistics cache: replacing one would change what it records
            raise CnnlabError(f"--out '{_shown(out)}' already exists and is not an earlier ensemble report (it holds "
                              "no ensemble's accuracy and members), so the ensemble's report would replace another "
                              "tool's or command's file. Give the report a name of its own, such as "
                              f"'{_shown(Path(out).parent / 'ensemble.json')}', or move the file away first.")
    if isinstance(paths, (str, Path)):
        # One path is never an ensemble, and iterated it would be a member per character.
        raise CnnlabError(f"run_ensemble takes a list of 2 or more run folders or checkpoint files, got the single "
                          f"path '{_shown(paths)}'. Name the members in a list; for the snapshots of one cyclic-LR "
                          f"run pass snapshot_paths('{_shown(paths)}').")
    if not isinstance(paths, Iterable):
        raise CnnlabError(f"run_ensemble takes a list of 2 or more run folders or checkpoint files, got "
                          f"{type(paths).__name__} {paths!r:.60}.")
    paths = list(paths)
    if len(paths) < 2:
        raise CnnlabError(f"An ensemble needs at least 2 members, got {len(paths)}. Name more checkpoints or "
                          "run folders, or use RUN --snapshots.")
    check_tta_options(tta, scales, shift)
    if tta == RESNET_MODE:
        raise CnnlabError(f"cnnlab ensemble does not take --tta {RESNET_MODE}: it reads each member's original images "
                          "at short sides set by that member's image size, and the ensemble's one record of scales "
                          f"could not say which. Evaluate each member with `cnnlab eval --tta {RESNET_MODE}`, or "
                          "average the members with --tta flip, 10crop or multiscale.")
    check_count(batch_size, "batch_size", 1, "the images per forward pass")
    device = resolve_device(device, "device")
    keep_on_cpu(device)  # the memory a batch frees kept for the next one (cnnlab/heap.py)
    members = [load_run_model(path, ema=ema, device=device) for path in paths]
    check_distinct(members)
    first = members[0]
    # For each member, where each of the first member's classes is among its own (None: the same order). A
    # member trained on the same data read another way (a folder sorts numbered classes as text, a CSV as
    # numbers) lists the same classes in another order: its columns are matched to the first's by name.
    orders = [None] + [check_classes(first.classes, member.classes, f"The member '{_shown(member.path)}'",
                                     f"'{_shown(first.path)}'",
                                     "An ensemble averages the members' probabilities class by class: choose "
                                     "members trained on the same classes.")
                       for member in members[1:]]
    for member in members:  # members may differ in image size: every one, before any is evaluated
        check_shift_fits(member, shift)
    spec = data if data is not None else first.config.data.spec
    missing = missing_recorded_path(first.config.data, "spec") if data is None else None
    if missing:  # the first member's data, recorded absolute, is gone: named as typed and as recorded
        raise CnnlabError(f"The first member '{_shown(first.path)}': {missing}")
    for member in members[1:]:
        check_same_split(first, member, spec, split)
    rows, member_log_probs, labels, notes = [], [], None, set()
    from cnnlab.data.sources import spec_key

    others = sorted({m.config.data.spec for m in members[1:] if spec_key(m.config.data.spec) != spec_key(spec)}
                    if data is None else [])
    if others:  # the result follows the order of the members: said, not left to the header's data name
        notes.add(f"members were trained on other data ({', '.join(others)}): every member is evaluated on the "
                  f"first member's, {spec}; --data names the data to evaluate on")
    shown_notes: set[str] = set()  # the data's notes on stderr: every member loads the data, each note is shown once
    for member, order in zip(members, orders):
        # The first member's data spec for all; each member's own preprocessing.
        dataset, loader = eval_loader(member, data=spec, split=split, batch_size=batch_size, device=device,
                                      shown_notes=shown_notes)
        flips, member_shift, member_notes = tta_settings(member, dataset, tta, shift)
        notes.update(member_notes)
        probs, member_labels, log_probs = predict_probabilities(member.model, loader, tta=tta, fill=black_fill(member.meta),
                                                                flips=flips, shift=member_shift, scales=scales)
        report = classification_report(probs, member_labels, member.classes, log_probs)  # in the member's own order
        if order is not None:  # (N, K) columns and labels in the first member's class order
            log_probs = log_probs[:, order]
            to_first = torch.empty(len(order), dtype=torch.long)  # member's class index -> the first member's
            to_first[torch.tensor(order)] = torch.arange(len(order))
            member_labels = to_first[member_labels]
        if labels is None:
            labels = member_labels
        elif not torch.equal(labels, member_labels):
            raise CnnlabError(f"The member '{_shown(member.path)}' sees the {split} split in another order or with "
                              "other labels (its data settings differ): ensemble members must share the data split.")
        # Each member's own corner shift (its training translation unless shift is given) and view count.
        # Which weights: relative to the result's folder (the working folder when it is only printed), so that a
        # saved result still finds them in a moved run and a reader can tell when a resume replaced them.
        measured = measured_record(member, Path(out).parent if out is not None else Path.cwd())
        rows.append({**checkpoint_fields(member.path), MEASURED_KEY: measured, "model": member.model_name,
                     "top1": report["top1"],
                     "loss": report["loss"], "shift": member_shift if tta in CORNER_MODES else None,
                     "views": view_count(tta, flips, scales or DEFAULT_SCALES)})
        member_log_probs.append(log_probs)
    log_probs = mean_of_probabilities(torch.stack(member_log_probs))  # (N, K): log of the members' mean probability
    ensemble = classification_report(log_probs.exp(), labels, first.classes, log_probs)
    notes.update(absent_classes_note(ensemble["per_class"]))  # for the ensemble's macro F1: the members' rows have none
    result = {"data": spec, "split": split, "tta": tta, "scales": tta_scales(tta, scales),
              "weights": "ema" if ema else "raw", "notes": sorted(notes),
              "members": rows,
              "ensemble": {k: ensemble[k] for k in ("images", "top1", "loss", "macro_f1") if k in ensemble},
              "best_member_top1": max(r["top1"] for r in rows)}
    result["gain_over_best_member"] = result["ensemble"]["top1"] - result["best_member_top1"]
    if out is not None:
        write_json_atomic(Path(out), result, "the ensemble report")
        result["file"] = str(out)
    return result
