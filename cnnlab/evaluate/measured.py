"""Which weights a saved result measured, and whether the checkpoint it read still holds them.

`cnnlab eval` and `cnnlab ensemble --out` save results (RUN/eval-*/metrics.json, RUN/NAME.json) that outlive
the weights they measured: `cnnlab train --resume RUN` trains on and writes last.safetensors after every epoch
and best.safetensors at each new best, and the results stay in the folder. Each result therefore records,
under :data:`cnnlab.run.MEASURED_KEY`, the checkpoint file it read (relative to the result's own folder) and
that file's identity (:func:`cnnlab.train.checkpoint.checkpoint_identity`: the checksum written with its
tensors, and the epoch, batch and step it records). :func:`stale_reason` compares that record with the file as
it is now; the run's listing and page (cnnlab.report.runs) show a stale result as stale, never as the run's
current test accuracy. :func:`holds_measured` tells whether a given file holds the weights a record measured:
the listing uses it to tell an eval folder copied in from another run, whose '../best.safetensors' leads to
this run's file, from an eval of this run's own weights.

A result written before results recorded their weights has only the checkpoint's path. It counts as stale
when that checkpoint was written after the result, by the files' modification times: a resume rewrites the
checkpoint after the eval that measured it. A copy that did not keep the times (``cp -r`` without ``-p``)
may be judged either way; `cnnlab eval` again records the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.train.checkpoint import LoadedModel

# The identity keys that say where the run stood, as a reason names them (the checksum tells files apart but
# means nothing to a reader).
_WHERE_KEYS = ("epoch", "batch", "step")
# Where an eval's metrics.json and an ensemble member's row keep the checkpoint's path as it was given, when that
# was relative (to the working folder then); their "checkpoint" is the absolute path (checkpoint_fields).
CHECKPOINT_TYPED_KEY = "checkpoint_typed"


def checkpoint_fields(checkpoint: str | Path) -> dict:
    """How a result names the checkpoint it read: ``checkpoint``, its absolute path, so that the path leads to
    the file from any working folder (`cnnlab runs`, a run's page), and where it was given relative, what was
    typed under :data:`CHECKPOINT_TYPED_KEY` (as a run's config.yaml keeps data.spec_typed). The result's
    :data:`cnnlab.run.MEASURED_KEY` record names it relative to the result's folder, for a moved run. A result
    from an older cnnlab has only ``checkpoint``, as typed: readers take its file name, which still holds."""
    typed = str(checkpoint)
    if Path(typed).is_absolute():
        return {"checkpoint": typed}
    return {"checkpoint": os.path.abspath(typed), CHECKPOINT_TYPED_KEY: typed}


def measured_record(loaded: LoadedModel, folder: str | Path) -> dict:
    """What a result saved in ``folder`` records of the checkpoint file it measured (``loaded``'s): ``file``, the
    checkpoint's path relative to ``folder`` ('../best.safetensors' for an eval folder in the run), so that the
    record holds when the run is moved or copied (absolute where no relative path leads there: another drive), and
    the identity of the file's state the weights were read from (``checksum``, ``epoch``, ``batch``, ``step``; each
    only when the file records it). That is ``loaded.identity``, not the file's identity now: a run still training
    may have replaced the file since, and the result must not claim the new weights."""
    target, base = os.path.abspath(loaded.path), os.path.abspath(folder)
    try:
        file = Path(os.path.relpath(target, base)).as_posix()
    except ValueError:  # Windows: the checkpoint is on another drive than the result
        file = target
    return {"file": file, **loaded.identity}


def stale_reason(recorded: object, folder: Path, written: Path, legacy_checkpoint: Optional[Path] = None,
                 identities: Optional[dict] = None) -> Optional[str]:
    """Why a result saved in ``folder`` (its file ``written``) no longer describes the weights it measured, as a
    clause ("it measured best.safetensors at epoch 2 (step 12), and best.safetensors now holds epoch 5 (step
    30)"), or None while it does, or when that cannot be told: the checkpoint is gone or cannot be read (the
    run's problems name a damaged one), or the result records neither its weights nor its checkpoint.

    ``recorded``: the result's :data:`cnnlab.run.MEASURED_KEY` value. A result without one (an older cnnlab)
    is judged by ``legacy_checkpoint``, the file it read as the caller makes it out: stale when that file was
    modified after ``written``. ``identities``: a cache of checkpoint identities by path, shared by the results
    of one run so that each checkpoint's header is read once.
    """
    if isinstance(recorded, dict) and isinstance(recorded.get("file"), str) and recorded["file"]:
        return _identity_changed(recorded, folder / recorded["file"], identities)
    if legacy_checkpoint is None:
        return None
    try:
        newer = legacy_checkpoint.stat().st_mtime_ns > written.stat().st_mtime_ns
    except OSError:  # the checkpoint, or the result, is gone
        return None
    if newer:
        return (f"it was saved before {legacy_checkpoint.name} was last written (it records no weights, being "
                "from an older cnnlab, so the files' times tell)")
    return None


def legacy_member_file(checkpoint: object, run: Path) -> Optional[Path]:
    """The file of ``run`` that an ensemble member without a weights record read, or None when the member is
    another run's: its recorded path leads into ``run``, or (the run moved since) names a file there from a
    folder of the run's name."""
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    path = Path(checkpoint)
    mine = run / path.name
    if not mine.is_file():
        return None
    try:
        if path.is_file() and path.resolve().parent == run.resolve():
            return mine
    except OSError:
        return None
    return mine if path.parent.name and path.parent.name == run.resolve().name else None


def holds_measured(recorded: object, path: Path, identities: Optional[dict] = None) -> Optional[bool]:
    """Whether the checkpoint at ``path`` holds the weights a :data:`cnnlab.run.MEASURED_KEY` record measured:
    None when that cannot be told (no record, the file is gone or damaged, neither records where it stood)."""
    if not isinstance(recorded, dict):
        return None
    current = _current_identity(path, identities)
    if current is None:
        return None
    changed = _differs(recorded, current)
    return None if changed is None else not changed


def _current_identity(path: Path, identities: Optional[dict]) -> Optional[dict]:
    """The identity of the checkpoint at ``path`` now, read once per path into ``identities``; None when it is
    gone or damaged (the run's problems name a damaged one)."""
    from cnnlab.train.checkpoint import checkpoint_identity

    key = os.path.normpath(os.path.abspath(path))
    cache = identities if identities is not None else {}
    if key not in cache:
        try:
            cache[key] = checkpoint_identity(path) if path.is_file() else None
        except CnnlabError:
            cache[key] = None
    return cache[key]


def _differs(recorded: dict, current: dict) -> Optional[bool]:
    """Whether two identities name different weights; None when neither says where its run stood."""
    if "checksum" in recorded and "checksum" in current:
        return recorded["checksum"] != current["checksum"]
    # a file from before checkpoints carried a checksum: where the run stood is what tells
    compared = [name for name in _WHERE_KEYS if name in recorded or name in current]
    if not compared:
        return None
    return any(recorded.get(name) != current.get(name) for name in compared)


def _identity_changed(recorded: dict, path: Path, identities: Optional[dict]) -> Optional[str]:
    current = _current_identity(path, identities)
    if current is None:
        return None
    if not _differs(recorded, current):
        return None
    then, now = _where(recorded), _where(current)
    if then and now and then != now:
        return f"it measured {path.name} at {then}, and {path.name} now holds {now}"
    return f"it measured {path.name} as it was before the file was written again"


def _where(identity: dict) -> str:
    """'epoch 3 (step 24)', 'epoch 3 and 5 batches (step 29)'; '' when the identity records no epoch."""
    epoch, batch, step = (identity.get(name) for name in _WHERE_KEYS)
    if epoch is None:
        return ""
    text = f"epoch {epoch}" + (f" and {batch} batches" if batch else "")
    return text + (f" (step {step})" if step is not None else "")
