"""Atomic file writes: a file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# display_name: how every message shows a name that is not UTF-8; is_utf8: whether a path is
from cnnlab.errors import CnnlabError, display_name, is_utf8, not_utf8_text

# The advice a failed write ends with; a run that had saved a checkpoint says how to resume it instead (cnnlab.cli)
WRITE_ADVICE = "Choose a writable folder with free space."
# The advice for a place this process may not write; a command that chose the place itself gives its own instead
# (check_output_folder's ``instead``)
CHOOSE_WRITABLE = "Choose a folder you can write to."


@contextmanager
def atomic_path(path: str | Path, what: str = "the file", own_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it and rename it over ``path`` (atomic on POSIX).

    The temporary file sits in the same folder so the rename never crosses file systems. A missing
    folder is created, as :func:`check_output_file` promises. An OSError (no permission, disk full, a
    file where a folder should be) becomes a CnnlabError naming ``what`` and the path.

    ``own_folder``: the temporary path is inside a temporary folder of its own, for a writer that makes
    temporary files of its own beside the file it is given (safetensors writes ``.tmpXXXXXX`` there and
    renames it): a process killed part-way leaves them in that folder, which :func:`atomic_leftovers`
    finds, rather than under names nothing can tell apart from another program's.

    While the write lasts the temporary file (or folder) is locked (``flock``, where there is one), so that
    :func:`remove_earlier_leftovers` in another process leaves it be however long the write takes. Once the file
    is in place, the temporary copies of it that an earlier write, killed part-way, left beside it are removed
    (those older than this write and held by no one): a rerun of the command cleans up after the killed one.
    """
    path = Path(path)
    # A symbolic link is written through, as a plain write would: the file it points to gets the new contents and
    # the link stays (a rename over the link would have replaced it with a file, leaving its target stale)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target is not path and not target.parent.is_dir():  # as a plain write through the link would fail
        raise CnnlabError(f"Cannot write {what} to '{display_name(str(path))}': it is a link to "
                          f"'{display_name(str(target))}', whose folder does not exist. Create that folder, or "
                          "remove the link.")
    tmp = scratch = held = None
    started = time.time()  # a copy a killed earlier write left is older than this
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # the missing folders of a path given, not of a link's
        if own_folder:
            scratch = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            tmp = os.path.join(scratch, target.name)
            open(tmp, "xb").close()
            held = _hold(scratch)
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            held = _hold(tmp)
        yield Path(tmp)
        # mkstemp makes 0600: a new file gets the usual permissions, a file written again keeps its own (a report
        # made private with chmod 600 stays private)
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # on the disk before the rename: a power cut cannot leave it empty
        if problem := _not_a_file_problem(target):  # a caller that checked nothing before: never /dev/null
            raise CnnlabError(f"Cannot write {what} to '{display_name(str(path))}': it {problem}.")
        os.replace(tmp, target)
        tmp = None
        _fsync_folder(target.parent)
        remove_earlier_leftovers([target], started)
    except OSError as err:
        reason = err.strerror or err
        raise CnnlabError(f"Cannot write {what} to '{path}': {reason}. {WRITE_ADVICE}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if held is not None:
            os.close(held)  # the lock goes with it


def _hold(path: str) -> Optional[int]:
    """Lock the temporary file or folder ``path`` that :func:`atomic_path` has just made, for as long as the
    descriptor returned stays open: the sign :func:`_in_use` reads. Without ``fcntl`` (Windows) nothing is held
    (None), and only the time counts."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new, so no one else holds it
    except OSError:  # a file system without locks (some network ones): the write goes on, and only the time counts
        os.close(descriptor)
        return None
    return descriptor


def _in_use(leftover: Path) -> bool:
    """Whether a live :func:`atomic_path` is writing ``leftover`` now (it holds the lock :func:`_hold` took); a
    temporary copy whose writer was killed is held by no one, as the lock went with the process."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        # not blocking: a pipe under such a name would otherwise wait for a writer
        descriptor = os.open(leftover, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False  # gone, or a link: not one of atomic_path's, which are plain files and folders
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # and with it the lock, if this took it
    return False


class HeldInterrupt(KeyboardInterrupt):
    """A Ctrl-C that :func:`signals_held` held until its block was done: ``written`` names what the block wrote."""

    def __init__(self, written: str) -> None:
        super().__init__(written)
        self.written = written


@contextmanager
def signals_held(written: str = "the files") -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM while the block writes files that belong together (an eval's metrics and its
    confusion matrix): each file is atomic, the set is not, and a stop between two of them left one command's
    numbers beside another's plot. The signal takes effect once the block is done: :class:`HeldInterrupt` (with
    ``written``, what the block wrote, for the command's last line) for Ctrl-C, the SIGTERM itself (with the
    handler there was) for SIGTERM. Only on the main thread, and for a signal that Python handles (or SIGTERM's
    default), as the training's handlers take them over."""
    import signal
    import threading

    held: list[int] = []
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler) or (signum == signal.SIGTERM and handler == signal.SIG_DFL):
                previous[signum] = handler
                signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held and held[0] == signal.SIGINT:
        raise HeldInterrupt(written)
    if held:
        os.kill(os.getpid(), held[0])  # as it would have come, now that the files are whole


def atomic_leftovers(path: str | Path) -> list[Path]:
    """The temporary files :func:`atomic_path` made for ``path`` (its name may be a glob pattern) that a
    process killed while writing left behind, and its temporary folders (``own_folder``); only their
    writer's successor may remove them (:func:`remove_leftover`)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def remove_leftover(path: str | Path) -> None:
    """Remove one of :func:`atomic_leftovers`: a temporary file, or a temporary folder with what is in it.
    An OSError (no permission) is the caller's to report."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_earlier_leftovers(paths, since: float) -> None:
    """After ``paths`` were written (:func:`atomic_path` calls this for each file it writes), remove the temporary
    copies of them that an earlier write, killed part-way, left (:func:`atomic_leftovers`): only those last
    changed before ``since`` (a ``time.time()`` from the write's start) and held by no live writer
    (:func:`_in_use`), so that a copy another process is writing at this moment stays, however long ago it
    began. One that cannot be
    removed stays as it was: it is clutter beside the result, not part of it. A link is followed, as
    :func:`atomic_path` writes beside the file it points to, and the name is matched as it is, not as a pattern
    ('m[1].pt' is no pattern for 'm1.pt')."""
    for path in map(Path, paths):
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        for leftover in atomic_leftovers(target.parent / glob.escape(target.name)):
            try:
                if leftover.lstat().st_mtime < since and not _in_use(leftover):
                    remove_leftover(leftover)
            except OSError:
                pass


# Below this much free space a command that writes refuses to start: plots, reports and small
# checkpoints fit, and a disk this full would fail part-way through anything larger.
MIN_FREE_BYTES = 16 * 2**20


def check_output_folder(folder: str | Path, option: str = "--out", bytes_needed: int = 0,
                        create: bool = False, holds_runs: bool = False, instead: str = "") -> Path:
    """Check, before any work, that ``folder`` can be written (created if missing); return it.

    Refuses, with a CnnlabError naming ``option`` and the path: a file where the folder should be
    (or where one of its parents should be), a location this process cannot write, and a disk
    with less than ``max(bytes_needed, MIN_FREE_BYTES)`` free, and a path that is not UTF-8
    (:func:`check_utf8_path`; ``holds_runs``: training runs are written there, which the message says).
    Nothing is created unless ``create``; the check writes and removes one empty probe file in the
    nearest existing folder. ``instead`` takes the place of the advice to choose a folder one can write to, where
    the command chose the place itself (an eval's folder in the run's, a resumed run's own folder).
    """
    folder = Path(folder)
    check_utf8_path(folder, option, RUNS_NEED_UTF8 if holds_runs else OUTPUTS_NEED_UTF8)
    _check_name_lengths(folder, option)
    if folder.exists() and not folder.is_dir():
        raise CnnlabError(f"{option} '{folder}' is a file, not a folder. Give a folder path (it is created if "
                          "missing), or move the file away.")
    problem = _folder_problem(folder, bytes_needed)
    if problem:
        raise CnnlabError(f"{option} '{folder}' cannot be written: {_with_advice(problem + '.', instead)}")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CnnlabError(f"{option} '{folder}' cannot be created: {err.strerror or err}. "
                              "Choose a folder you can write to.") from None
    return folder


def claim_new_folder(path: str | Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... where it exists, and return the one created.

    For a default run folder named by the time to the second: commands started in the same second (a shell
    loop's ``&``) would otherwise pick the same name, and all but one would be refused as the folder is in use.
    ``mkdir`` either creates a folder or fails, so two processes never claim the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        candidate = path if number == 1 else path.with_name(f"{path.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def remove_if_empty(*folders: str | Path) -> None:
    """Remove each of ``folders``, in order, if it exists and holds nothing (a claimed run folder that a failed
    set-up left empty, then the parents made for it: :func:`missing_folders`)."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, gone, or not ours to remove: it stays
            Path(folder).rmdir()


def missing_folders(path: str | Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: what making ``path`` creates, and
    what a set-up that fails removes again (:func:`remove_if_empty`), so that it leaves no empty folder behind."""
    missing = []
    for folder in (Path(path), *Path(path).parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def check_utf8_path(path: str | Path, option: str, why: str) -> None:
    """Refuse, before anything is written, an output path that is not UTF-8 where ``why`` (a sentence
    without its full stop) says what needs UTF-8.

    A name written in another encoding reaches Python as lone surrogates (PEP 383): libraries that take
    a path as UTF-8 text (safetensors, TorchScript, ONNX) cannot open it, and a terminal or pipe that
    takes strict UTF-8 cannot print it.
    """
    text = str(path)
    if not is_utf8(text):
        reason, advice = not_utf8_text()
        raise CnnlabError(f"{option} '{display_name(text)}' is {reason}. {why}: nothing was written. {advice}")


# Why an output needs a UTF-8 path: every command prints what it wrote where, and the reports record it.
OUTPUTS_NEED_UTF8 = "cnnlab names the files it writes in its output and its reports, which are UTF-8 text"
# Why a folder that training runs are written into does (cnnlab.train.checkpoint refuses to read a checkpoint
# whose path is not UTF-8).
RUNS_NEED_UTF8 = ("A training run keeps its checkpoints as safetensors files, which are read from UTF-8 paths "
                  "only, so a run written there could not be resumed or evaluated")


def _with_advice(problem: str, instead: str) -> str:
    """``problem`` (ending in its advice) with ``instead`` in place of the general :data:`CHOOSE_WRITABLE`; a problem
    with other advice (free some space, fix a link) keeps it, as ``instead`` would not help there."""
    if not instead or not problem.endswith(CHOOSE_WRITABLE):  # a full disk, a link or a file in the way: its own
        return problem
    return f"{problem.removesuffix(CHOOSE_WRITABLE)}{instead}"


def check_output_file(path: str | Path, option: str = "--out", suffixes: tuple[str, ...] = (),
                      bytes_needed: int = 0, instead: str = "") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is created later).

    ``suffixes`` (lower case, with the dot) are the allowed endings where the name picks the format.
    The folder is checked as in :func:`check_output_folder` (``instead`` as there), and the path is refused
    unless it is UTF-8.
    (A training run's own files: :func:`cnnlab.run.refuse_a_runs_own_file`, which the commands that write
    plots and results call too.)"""
    check_names_a_file(path, option, "output" + (suffixes[0] if suffixes else ""))
    path = Path(path)
    check_utf8_path(path, option, OUTPUTS_NEED_UTF8)
    _check_name_lengths(path, option, TEMPORARY_NAME_EXTRA)
    if path.is_dir():
        example = path / ("output" + (suffixes[0] if suffixes else ""))
        raise CnnlabError(f"{option} '{path}' is a folder; give a file name inside it, such as '{example}'.")
    if problem := _not_a_file_problem(path):
        raise CnnlabError(f"{option} '{display_name(str(path))}' {problem}.")
    if path.is_symlink() and not Path(os.path.realpath(path)).parent.is_dir():
        raise CnnlabError(f"{option} '{display_name(str(path))}' is a link to '{display_name(os.readlink(path))}', "
                          "whose folder does not exist. Create that folder, or remove the link.")
    if suffixes and path.suffix.lower() not in suffixes:
        raise CnnlabError(f"{option} '{path}' must be a {' or '.join(suffixes)} file.")
    if ".png" in suffixes and path.suffix.lower() == ".png" and not replaceable_plot(path):  # a plot goes there
        raise CnnlabError(f"{option} '{display_name(str(path))}' is an image that no plot wrote (a photo, or an image "
                          "of a data set): the plot would replace it. Name another file, or move that one away first.")
    problem = _folder_problem(path.parent, bytes_needed)
    if problem:
        raise CnnlabError(f"{option} '{path}' cannot be written: {_with_advice(problem + '.', instead)}")
    return path


def replaceable_plot(path: Path) -> bool:
    """Whether a plot may be written over ``path``: nothing is there, or a PNG that matplotlib wrote (cnnlab's plots
    are matplotlib's, and say so in the file's Software entry), or a file that cannot be read as an image at all.
    A photo or a data set's image is kept: `cnnlab data show --out DATA/test/0/0020.png` replaced one."""
    if not path.is_file():
        return True
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            software = image.info.get("Software")
    except Image.DecompressionBombError:  # a photo too large for PIL's default check: an image all the same
        return False
    except (OSError, UnidentifiedImageError, ValueError):
        return True  # no image to keep (a write cut short, or another file with the suffix)
    return isinstance(software, str) and software.startswith("Matplotlib")


def check_names_a_file(path: str | Path, option: str = "--out", example: str = "output") -> None:
    """Refuse a file name typed with a trailing separator ('results/'): it names a folder, and the file would
    be written under the folder's name instead (Path('results/') is 'results'). Only text keeps the
    separator, so callers check what was typed before making a Path of it; ``example``: a file name to
    suggest inside the folder."""
    if not isinstance(path, str):
        return
    separators = ("/", os.sep) + ((os.altsep,) if os.altsep else ())
    if path.endswith(separators) and path.rstrip("".join(separators)):  # '/' alone is the root: a folder anyway
        raise CnnlabError(f"{option} '{display_name(path)}' ends with '{path[-1]}', so it names a folder, and "
                          f"{option} is a file. Give a file name, such as '{display_name(path)}{example}'.")


# What atomic_path's temporary name adds to a file's name: '.NAME.XXXXXXXX.tmp' (tempfile's 8 random characters)
TEMPORARY_NAME_EXTRA = len("..XXXXXXXX.tmp")


def _check_name_lengths(path: Path, option: str, extra: int = 0) -> None:
    """Refuse, before any work, a path with a name longer than its file system takes (the system would refuse
    it only when the result is written); the last name with ``extra`` bytes more, those of the temporary copy
    :func:`atomic_path` writes first."""
    existing = _nearest_existing(path)
    try:
        limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no such limit there
        limit = 255
    last = len(path.parts) - 1
    for index, part in enumerate(path.parts):
        size = len(os.fsencode(part))
        shown = f"{option} '{display_name(str(path))}' has a name of {size} bytes ('{display_name(part)[:40]}...')"
        if size > limit:
            raise CnnlabError(f"{shown}, and its file system takes names of up to {limit} bytes. Choose a shorter "
                              "name.")
        if index == last and size + extra > limit:
            raise CnnlabError(f"{shown}: the result is written to a temporary copy beside it first, named "
                              f"'.NAME.XXXXXXXX.tmp' ({extra} bytes more), and the file system takes names of up to "
                              f"{limit} bytes. Choose a name of at most {limit - extra} bytes.")


def _not_a_file_problem(path: Path) -> str:
    """Why the existing ``path`` (or what its link leads to) must not be written over, or '': a device such as
    /dev/null, a pipe or a socket. The rename that ends an atomic write would replace it with a plain file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (or a link to nothing): a new file
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return (f"is {kind}, not a regular file: writing the result would replace it with a file. Give the path of a "
            "regular file")


def _folder_problem(folder: Path, bytes_needed: int) -> str:
    """Why files cannot be written in ``folder`` (created first if missing), or '' when they can."""
    existing = _nearest_existing(folder)
    if existing.is_symlink() and not existing.exists():
        try:
            os.stat(existing)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"'{display_name(str(existing))}' is a link that leads round a loop of links. Fix or remove it"
        return (f"'{display_name(str(existing))}' is a link to '{display_name(os.readlink(existing))}', which does "
                "not exist. Create it, or remove the link")
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder. Choose a path whose parents are folders"
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".cnnlab-write-test-", dir=existing)
        os.close(descriptor)
        os.remove(probe)
    except OSError as err:
        return f"{err.strerror or err} in '{existing}'. {CHOOSE_WRITABLE.removesuffix('.')}"
    free = shutil.disk_usage(existing).free
    needed = max(bytes_needed, MIN_FREE_BYTES)
    if free < needed:
        return (f"the disk holding '{existing}' has {free / 2**20:.0f} MiB free and this needs about "
                f"{needed / 2**20:.0f} MiB. Free some space or choose a folder on another disk")
    return ""


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (the current folder at worst); a link
    counts as existing, whether or not what it leads to does."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


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
    """The process's umask. Linux shows it in /proc; elsewhere the only way to read it is to set it and put it
    straight back, which another thread creating a file at that moment would see."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
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


def check_out_is_named(out, writes: str, instead: str, name: str = "--out") -> None:
    """Refuse an ``out`` that is empty, the current folder however spelt ('.', './', '$PWD', 'runs/..') or the home
    folder, as run_eval, run_ensemble, train (a new run), plan_search and run_transfer do, and so their commands:
    an empty --out is a slip (an unset shell variable), and those folders would take the files among whatever
    they hold.
    ``writes``: what would be written there; ``instead``: the advice; ``name``: what the caller calls it (--out
    for a command's option, out for a function's argument)."""
    if out is None:
        return
    given = str(out)
    what = "is empty" if not given.strip() else None
    if what is None:
        # however it is spelt: '$PWD', 'runs/..'; and the home folder ('~' as the shell or the CLI expanded it)
        try:
            where, here = Path(given).resolve(), Path.cwd().resolve()
        except (OSError, RuntimeError):  # a link loop, a current folder removed under the shell: the checks after tell
            return
        try:
            home = Path.home().resolve()
        except (OSError, RuntimeError, KeyError):  # no HOME, and no home in the user database
            home = None
        if where == here:
            what = f"'{display_name(given)}' is the current folder"
        elif where == home:
            what = f"'{display_name(given)}' is your home folder"
        else:
            return
    raise CnnlabError(f"{name} {what}: {writes} would land among whatever it holds. {instead}")


def lock_holder(lock: str | Path) -> Optional[str]:
    """Who holds the lock file ``lock`` that :func:`hold_folder` takes ("process 12 on host (`cnnlab train
    ...`)"), or None when no live process holds it (no file, a file a killed process left, or no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = open(lock)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go again as the file closes
        except BlockingIOError:
            return handle.read().strip() or "another process"
    return None


@contextmanager
def hold_folder(lock: str | Path, what: str, option: str = "--out", instead: str = "") -> Iterator[None]:
    """Hold the folder of the lock file ``lock`` for this process while the block writes ``what`` there.

    A second process that asks for the same folder is refused at once with a CnnlabError naming the
    holder (its pid, host and command line, which the lock file records) rather than mixing its files
    into the first one's. The lock is the operating system's (``flock``): it goes with the process, so a
    killed run leaves no stale lock behind. The block's end removes the lock file (a process killed
    outright leaves it, held by no one, and the next takes it), and a folder created here for it is
    removed again when the block fails before writing anything else there.
    Without ``fcntl`` (Windows) nothing is held. ``instead``: as for :func:`check_output_folder`.
    """
    try:
        import fcntl
    except ImportError:  # no flock here: the folder is not held
        yield
        return
    lock = Path(lock)
    folder = lock.parent
    # A file in the way, a read-only place or a path that is not UTF-8 (every folder held here, a run's or
    # an experiment's, holds training runs), named before the lock is tried
    check_output_folder(folder, option, holds_runs=True, instead=instead)
    created = missing_folders(folder)  # the folder and the parents made for it, if they are new
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")
        except OSError as err:
            raise CnnlabError(f"{option} '{folder}' cannot be written: "
                              f"{_with_advice(f'{err.strerror or err}. {CHOOSE_WRITABLE}', instead)}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CnnlabError(f"{option} '{folder}' is in use: {holder} is writing {what} there. Wait for it to end "
                              "(`cnnlab runs` shows its state), or choose another folder.") from None
        # The holder before us removes the file as it lets go: a lock taken on that removed file holds nothing
        # (the next process makes a new one), so it is taken again on the file now there.
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (`{_command_line()}`)\n")
        handle.flush()
        try:
            yield
        except BaseException:
            if created and [entry.name for entry in folder.iterdir()] == [lock.name]:
                shutil.rmtree(folder, ignore_errors=True)  # refused before it wrote anything: no empty folder
                remove_if_empty(*created[1:])
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # before the lock is let go: a process waiting on this file sees it gone
        handle.close()


def process_gone(pid: object, host: object) -> bool | None:
    """Whether the process ``pid`` on ``host`` has ended: True or False, or None when it cannot be asked
    (another host's process, or a pid that is not one)."""
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        pass  # it exists but belongs to another user (PermissionError)
    return False


def _command_line() -> str:
    """This process's command as the person typed it: `cnnlab train ...` (also for python -m cnnlab).

    An argument that is not UTF-8 (a --config or data path named in another encoding) is shown with
    its bytes escaped, as every message shows such names: the lock file is UTF-8 text.
    """
    if sys.argv and Path(sys.argv[0]).name in ("cnnlab", "__main__.py"):
        return " ".join(display_name(word) for word in ["cnnlab", *sys.argv[1:]])
    return " ".join(display_name(word) for word in sys.argv) or "python"
