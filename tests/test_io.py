"""Atomic writes (cnnlab.io): permissions and symbolic links of the file written again."""

import os
import stat
import time

import pytest

from cnnlab import io
from cnnlab.errors import CnnlabError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_permissions_the_umask_allows(tmp_path):
    mask = os.umask(0o027)
    try:
        io.write_text_atomic(tmp_path / "new.txt", "text")
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "new.txt") == 0o640  # not mkstemp's 0600


def test_a_file_written_again_keeps_its_own_permissions(tmp_path):
    """A report made private with chmod 600 became world-readable (0644) when it was written again."""
    path = tmp_path / "report.html"
    path.write_text("old")
    path.chmod(0o600)
    io.write_text_atomic(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o600
    path.chmod(0o664)
    io.write_json_atomic(path, {"a": 1})
    assert _mode(path) == 0o664


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path):
    """The rename replaced the link with a plain file, and the file it pointed to kept the old contents."""
    shared = tmp_path / "shared" / "report.html"
    shared.parent.mkdir()
    shared.write_text("old")
    link = tmp_path / "run" / "report.html"
    link.parent.mkdir()
    link.symlink_to(shared)
    io.write_text_atomic(link, "new")
    assert link.is_symlink() and shared.read_text() == "new"
    assert io.atomic_leftovers(shared) == [] and io.atomic_leftovers(link) == []


def test_the_umask_is_read_without_changing_it(tmp_path, monkeypatch):
    """Reading the umask by setting it to 0 let a file another thread made at that moment be world-writable."""
    mask = os.umask(0o022)
    try:
        calls = []
        real = os.umask
        monkeypatch.setattr(os, "umask", lambda value: calls.append(value) or real(value))
        assert io._umask() == 0o022
        assert calls == []  # read from /proc (these tests run on Linux)
    finally:
        os.umask(mask)


def test_a_link_whose_target_folder_is_missing_is_refused_not_given_one(tmp_path):
    """Written through, a dangling link made its target's missing folders, where a plain write fails."""
    link = tmp_path / "b.txt"
    link.symlink_to(tmp_path / "nowhere" / "deep" / "b.txt")
    with pytest.raises(CnnlabError, match=r"is a link to .*nowhere/deep/b.txt', whose folder does not exist"):
        io.write_text_atomic(link, "x")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "nowhere" / "deep").mkdir(parents=True)  # a dangling link into a folder that exists is written
    io.write_text_atomic(link, "x")
    assert link.is_symlink() and (tmp_path / "nowhere" / "deep" / "b.txt").read_text() == "x"


def test_the_leftovers_removed_after_a_write_are_its_own_killed_copies_only(tmp_path):
    """After a command wrote a file: its temporary copies older than the command's start go; a copy written since
    (another process's, writing now), another file's copy, and a name's brackets read as a pattern do not. A
    link is followed to where its file's copies are written."""
    from cnnlab.io import remove_earlier_leftovers

    since = time.time()
    old = since - 3600
    written = tmp_path / "m[1].pt"
    written.write_text("new")
    own, live, other = (tmp_path / ".m[1].pt.aaa.tmp", tmp_path / ".m[1].pt.new.tmp", tmp_path / ".m1.pt.bbb.tmp")
    for leftover in (own, live, other):
        leftover.write_text("")
    for leftover in (own, other):
        os.utime(leftover, (old, old))
    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "real.pt").write_text("new")
    (tmp_path / "link.pt").symlink_to(folder / "real.pt")
    behind_link = folder / ".real.pt.ccc.tmp"
    behind_link.mkdir()  # a temporary folder (atomic_path's own_folder)
    (behind_link / "real.pt").write_text("half")
    os.utime(behind_link, (old, old))
    remove_earlier_leftovers([written, tmp_path / "link.pt"], since)
    assert not own.exists() and not behind_link.exists()
    assert live.exists() and other.exists()


@pytest.mark.parametrize("own_folder", [False, True], ids=["file", "folder"])
def test_a_copy_a_live_write_holds_stays_however_long_ago_it_began(tmp_path, own_folder):
    """Two commands writing one file: the one that began later and ends first removes the killed copies older than
    its start, but not the other's copy, still being written (say an export verifying for minutes)."""
    from cnnlab.io import atomic_leftovers, remove_earlier_leftovers

    written = tmp_path / "model.safetensors"
    with io.atomic_path(written, own_folder=own_folder) as tmp:
        tmp.write_text("complete")
        (live,) = atomic_leftovers(written)
        killed = tmp_path / ".model.safetensors.killed.tmp"  # no one holds it: its writer is gone
        killed.write_text("half")
        old = time.time() - 3600
        for leftover in (live, killed):
            os.utime(leftover, (old, old))
        remove_earlier_leftovers([written], time.time())
        assert live.exists() and not killed.exists()
    assert written.read_text() == "complete" and atomic_leftovers(written) == []


def test_an_output_that_is_a_pipe_or_device_is_refused_and_stays_as_it_was(tmp_path):
    """The rename that ends an atomic write replaced whatever had the name: run as root, `--out /dev/null` made
    /dev/null a plain file. Refused up front by the outputs' check, and by the write itself for any caller."""
    from cnnlab.io import check_output_file

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(CnnlabError, match="--out '.*pipe' is a pipe, not a regular file: writing the result would "
                                          "replace it"):
        check_output_file(pipe)
    with pytest.raises(CnnlabError, match="Cannot write the report to .*: it is a pipe, not a regular file"):
        io.write_text_atomic(pipe, "text", "the report")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and io.atomic_leftovers(pipe) == []
    with pytest.raises(CnnlabError, match="is a device, not a regular file"):
        check_output_file("/dev/null")
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    with pytest.raises(CnnlabError, match="is a device"):
        check_output_file(link)


def test_a_name_too_long_for_the_file_system_or_its_temporary_copy_is_refused_before_any_work(tmp_path):
    from cnnlab.io import TEMPORARY_NAME_EXTRA, check_output_file, check_output_folder

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(CnnlabError, match=f"a name of {limit + 1} bytes .* names of up to {limit} bytes"):
        check_output_folder(tmp_path / ("d" * (limit + 1)) / "inside")
    longest = "w" * (limit - TEMPORARY_NAME_EXTRA - 4) + ".png"
    check_output_file(tmp_path / longest)
    with io.atomic_path(tmp_path / longest) as tmp:  # the temporary copy's name fits, as the check assumed
        tmp.write_text("ok")
    with pytest.raises(CnnlabError, match=f"temporary copy .*Choose a name of at most {limit - TEMPORARY_NAME_EXTRA}"):
        check_output_file(tmp_path / ("w" + longest))


def test_a_broken_link_on_the_output_path_is_named_as_such(tmp_path):
    from cnnlab.io import check_output_file, check_output_folder

    (tmp_path / "dangling").symlink_to(tmp_path / "does" / "not" / "exist")
    for check, path in ((check_output_folder, tmp_path / "dangling"), (check_output_file, tmp_path / "dangling" / "lr.png")):
        with pytest.raises(CnnlabError, match="'.*dangling' is a link to '.*does/not/exist', which does not exist"):
            check(path)
    (tmp_path / "file-link").symlink_to(tmp_path / "gone" / "plot.png")
    with pytest.raises(CnnlabError, match="is a link to .*, whose folder does not exist"):
        check_output_file(tmp_path / "file-link")


def test_a_file_system_without_locks_still_takes_the_write(tmp_path, monkeypatch):
    """Some network file systems refuse flock: the temporary copy goes unlocked (only its age counts), and the
    write itself goes on."""
    import errno
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    for own_folder in (False, True):
        path = tmp_path / f"result-{own_folder}.json"
        with io.atomic_path(path, own_folder=own_folder) as tmp:
            tmp.write_text("written")
        assert path.read_text() == "written" and io.atomic_leftovers(path) == []


def test_a_loop_of_links_on_the_output_path_is_named_as_a_loop(tmp_path, monkeypatch):
    from cnnlab.io import check_out_is_named, check_output_folder

    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    with pytest.raises(CnnlabError, match="'.*one' is a link that leads round a loop of links"):
        check_output_folder(tmp_path / "one" / "run")
    check_out_is_named(tmp_path / "one", "the run", "")  # resolving it raised: left to the check above
    monkeypatch.delenv("HOME")
    monkeypatch.setattr("pwd.getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    check_out_is_named(tmp_path / "run", "the run", "")  # no home folder to compare with: no error either


def test_a_write_takes_the_copies_a_killed_earlier_write_of_its_file_left(tmp_path):
    """lr-find's plot, a report, search's and transfer's results left a killed write's temporary copy for good:
    every atomic write removes those of its own file once it is in place (not another file's, not a live one)."""
    path = tmp_path / "lr.png"
    killed, other = tmp_path / ".lr.png.abcdefgh.tmp", tmp_path / ".notes.txt.abcdefgh.tmp"
    for leftover in (killed, other):
        leftover.write_text("half")
        os.utime(leftover, (time.time() - 60, time.time() - 60))
    io.write_text_atomic(path, "whole")
    assert path.read_text() == "whole" and not killed.exists() and other.exists()


def test_a_plot_is_not_written_over_an_image_no_plot_wrote(tmp_path):
    """`cnnlab data show --out DATA/test/0/0020.png` replaced an image of the data set with its grid: a .png output
    that is there is replaced only where matplotlib wrote it (a plot of an earlier call), or where it is no image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from cnnlab.io import check_output_file, save_png

    photo = tmp_path / "0020.png"
    Image.new("L", (8, 8), 128).save(photo)
    with pytest.raises(CnnlabError, match="is an image that no plot wrote"):
        check_output_file(photo, "--out", (".png",))
    assert check_output_file(photo, "--out") == photo  # a writer of no plot (ensemble's JSON) says its own refusal
    plot = save_png(plt.figure(), tmp_path / "plot.png")
    assert check_output_file(plot, "--out", (".png",)) == plot  # an earlier plot: replaced
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n")  # no image to keep
    assert check_output_file(tmp_path / "cut.png", "--out", (".png",)).name == "cut.png"
    assert check_output_file(tmp_path / "new.png", "--out", (".png",)).name == "new.png"
