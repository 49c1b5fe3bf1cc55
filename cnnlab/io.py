"""Atomic file writes: a file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnlab.errors import CnnlabError


@contextmanager
def atomic_path(path: str | Path, what: str = "the file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it and rename it over ``path`` (atomic on POSIX).

    The temporary file sits in the same folder so the rename never crosses file systems. An OSError
    (missing folder, no permission, disk full) becomes a CnnlabError naming ``what`` and the path.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # on the disk before the rename: a power cut cannot leave it empty
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as err:
        reason = err.strerror or err
        raise CnnlabError(f"Cannot write {what} to '{path}': {reason}. Choose a writable folder with free space.") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort (not every file system lets a folder be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str, what: str = "the file") -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data, what: str = "the file") -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", what)


def save_png(figure, path: str | Path, what: str = "the plot", dpi: int = 110, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG atomically, then release it.

    A figure made by pyplot is closed (pyplot keeps every open figure); one built as a plain
    ``Figure`` is cleared. Released whether or not the write succeeded.
    """
    try:
        with atomic_path(path, what) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi, **savefig_kwargs)
    finally:
        if getattr(figure.canvas, "manager", None) is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)
        else:
            figure.clear()
    return Path(path)
