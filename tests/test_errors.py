"""The message helpers of cnnlab.errors: counted nouns, so no message says "1 channel(s)"."""

import json
import re

from cnnlab.errors import counted, noun_for


def test_counted_writes_one_and_many_apart():
    assert counted(1, "channel") == "1 channel" and counted(3, "channel") == "3 channels"
    assert counted(0, "file") == "0 files"
    assert counted(2, "batch", "batches") == "2 batches" and counted(1, "batch", "batches") == "1 batch"


def test_counted_writes_a_float_count_as_g_does():
    assert counted(1.0, "warm-up epoch") == "1 warm-up epoch"  # not "1.0 warm-up epoch"
    assert counted(0.5, "warm-up epoch") == "0.5 warm-up epochs"
    assert counted(2.0, "epoch") == "2 epochs"


def test_noun_for_is_the_noun_counted_writes():
    assert noun_for(1, "field") == "field" and noun_for(2, "field") == "fields"
    assert noun_for(3, "class", "classes") == "classes"
    for number in (1, 2, 1.0, 0.5):
        assert counted(number, "section").endswith(" " + noun_for(number, "section"))


def test_data_stats_counts_the_channels(cli):
    code, out, err = cli(["data", "stats", "digits"])
    assert code == 0, err
    assert re.search(r"digits: 10 classes, 1 channel, \d+x\d+ pixels", out), out


def test_a_refused_resume_shows_where_two_long_paths_differ():
    """differences_text cut both values at 60 characters: two paths that differ in their tail read alike."""
    from cnnlab.train.engine import differences_text

    root = "/home/someone/projects/experiments/datasets/flowers/photos-2024"
    text = differences_text({"data.spec": (f"folder:{root}/train-set-a", f"folder:{root}/train-set-b")})
    given, recorded = re.fullmatch(r"data\.spec: (.*) given, (.*) recorded", text).groups()
    assert given != recorded
    assert given.endswith('train-set-a"') and recorded.endswith('train-set-b"')  # the differing tails, kept
    assert len(given) <= 60 and len(recorded) <= 60  # still short
    # a very long tail after the difference is cut too, both at the same place
    tail = "/more" * 20
    long = differences_text({"data.spec": (f"folder:{root}/a{tail}", f"folder:{root}/b{tail}")})
    given, recorded = re.fullmatch(r"data\.spec: (.*) given, (.*) recorded", long).groups()
    assert "/a/more" in given and "/b/more" in recorded and len(given) <= 60 and len(recorded) <= 60
    # values that differ early, or short ones, are shown as before
    assert differences_text({"optim.lr": (0.1, 0.05)}) == "optim.lr: 0.1 given, 0.05 recorded"
    early = differences_text({"data.spec": ("folder:/a", f"folder:{root}")})
    assert early.startswith('data.spec: "folder:/a" given, "folder:/home/someone/')


def test_a_cut_quoted_value_keeps_both_its_quotes():
    """A long text cut for a message is shown in its quotes, with "..." inside them where it was cut: a cut that
    kept only the closing quote ('...runs/a"') or only the opening one read as a malformed string."""
    from cnnlab.errors import shown_apart, shown_value

    root = "/home/someone/projects/experiments/datasets/flowers/photos-2024"
    given, recorded = shown_apart(f"folder:{root}/train-set-a", f"folder:{root}/train-set-b")
    assert re.fullmatch(r'"\.\.\.[^"]*/train-set-a"', given) and re.fullmatch(r'"\.\.\.[^"]*/train-set-b"', recorded)
    tail = "/more" * 20  # cut at both ends: the part between the cuts, in its quotes
    given, recorded = shown_apart(f"folder:{root}/a{tail}", f"folder:{root}/b{tail}")
    for text, differing in ((given, "/a/more"), (recorded, "/b/more")):
        assert re.fullmatch(r'"\.\.\.[^"]*\.\.\."', text) and differing in text and len(text) <= 60, text
    # cut at its end only (shown_value, and shown_apart where the values differ early)
    long = shown_value(f"folder:{root}/train-set-a")
    assert re.fullmatch(r'"folder:/home/someone/[^"]*\.\.\."', long) and len(long) <= 60, long
    assert shown_value("folder:/a") == '"folder:/a"'  # a short one is shown whole
    # a difference just past what the start-cut shows of a quoted value is still shown, not cut away
    near = "x" * 55  # the JSON text differs at its 57th character (its quote, then 55 x)
    given, recorded = shown_apart(near + "a" * 20, near + "b" * 20)
    assert "a" in given and "b" in recorded


def _list_shown(text: str, whole: list) -> list:
    """The elements a cut list shows, checked to be a run of ``whole``'s elements, in order: the text with its
    "..." elements taken out must read as JSON."""
    inner = text.removeprefix("[..., ").removesuffix(", ...]")
    inner = inner if inner.startswith("[") else "[" + inner
    inner = inner if inner.endswith("]") else inner + "]"
    shown = json.loads(inner)
    assert any(whole[i:i + len(shown)] == shown for i in range(len(whole))), (text, shown)
    return shown


def test_a_long_list_is_cut_between_its_elements():
    """A long list of strings (data.classes, a list of paths) cut at a fixed character began or ended mid-element,
    '...ers/x", 1]': it is cut between elements instead, so what is shown still reads as a list."""
    from cnnlab.errors import shown_apart, shown_value
    from cnnlab.train.engine import differences_text

    classes = [f"/home/someone/datasets/flowers/class-{i}" for i in range(6)]
    text = shown_value(classes)
    assert len(text) <= 60 and text.startswith('["/home/') and text.endswith(", ...]"), text
    shown = _list_shown(text, classes)
    assert shown and shown == classes[:len(shown)]  # the first elements, whole
    # two lists that differ late: both shown from the element that differs, whole elements only
    renamed = [*classes[:4], "/home/someone/datasets/flowers/other", *classes[5:]]
    given, recorded = shown_apart([*classes, 1], [*renamed, 1])
    assert given.startswith("[..., ") and recorded.startswith("[..., "), (given, recorded)
    assert _list_shown(given, [*classes, 1])[0] == classes[4] and _list_shown(recorded, [*renamed, 1])[0] == renamed[4]
    message = differences_text({"data.classes": (classes, renamed)})
    given, recorded = re.fullmatch(r"data\.classes: (.*) given, (.*) recorded", message).groups()
    assert classes[4] in given and renamed[4] in recorded and max(len(given), len(recorded)) <= 60, message
    # one list the start of the other: both from the shorter's last element, so the longer one is seen to go on
    given, recorded = shown_apart(classes, [*classes, "new"])
    assert _list_shown(given, classes) == classes[-1:] and _list_shown(recorded, [*classes, "new"]) == [
        classes[-1], "new"]
    # a list that differs within what shown_value shows is shown as shown_value shows it
    numbers = list(range(40))
    assert shown_apart(numbers, [99, *numbers[1:]]) == (shown_value(numbers), shown_value([99, *numbers[1:]]))
    assert shown_value([1, 2]) == "[1, 2]"  # a short one is shown whole


def test_one_rule_says_whether_a_path_is_utf8_for_outputs_and_checkpoints(tmp_path):
    """cnnlab.io.check_utf8_path (outputs) and the checkpoint reader refuse the same names: those is_utf8 says are
    not UTF-8 (bytes of another encoding, kept by Python as lone surrogates); accented and non-Latin names pass."""
    import os

    import pytest

    from cnnlab.errors import CnnlabError, is_utf8
    from cnnlab.io import check_utf8_path
    from cnnlab.train.checkpoint import load_weights

    latin1 = os.fsdecode(b"caf\xe9")  # a Latin-1 name, as an old system writes it
    names = {"caf\u00e9": True, "\u65e5\u672c": True, "plain": True, latin1: False, "x\udcff": False}
    assert {name: is_utf8(name) for name in names} == names
    for name, utf8 in names.items():
        path = tmp_path / name / "best.safetensors"
        path.parent.mkdir()
        path.write_bytes(b"not a checkpoint")
        if utf8:
            check_utf8_path(path, "--out", "why")
        else:
            with pytest.raises(CnnlabError, match=r"--out '.*' is not valid UTF-8.*why: nothing was written"):
                check_utf8_path(path, "--out", "why")
        with pytest.raises(CnnlabError) as refused:
            load_weights(path)
        assert ("is not valid UTF-8" in str(refused.value)) is not utf8, (name, str(refused.value))


def test_sizes_over_a_limit_are_rounded_up_in_whole_numbers_however_large():
    from cnnlab.text import mib_over_limit
    assert mib_over_limit(int(1.25 * 2**20)) == "1.3 MiB"
    assert mib_over_limit(100 * 2**20) == "100 MiB" and mib_over_limit(100 * 2**20 + 1) == "101 MiB"
    assert mib_over_limit(2**20 * 10**17 + 1) == f"{10**17 + 1:,} MiB"  # a float ends in ...000 here


def test_a_path_the_system_refuses_is_bad_input_with_what_to_do(cli, tmp_path):
    """Python raises on a name longer than the file system takes (and on a folder that cannot be entered) from
    a mere exists(): wherever a command meets it, it is the input's problem (exit code 2, one paragraph)."""
    from cnnlab.cli import path_problem

    long_name = str(tmp_path / ("y" * 256))
    for args in (["eval", long_name], ["diagnose", long_name], ["runs", long_name]):
        code, _, err = cli(args)
        assert code == 2 and "internal error" not in err, err
        assert err.startswith("error: File name too long: '") and "choose a shorter one." in err, err
    # an output is checked before any work, with the file system's own limit
    code, _, err = cli(["train", "--model", "lenet5", "--data", "digits", "--out", long_name])
    assert code == 2 and "a name of 256 bytes" in err and "Choose a shorter name." in err, err
    denied = PermissionError(13, "Permission denied", "runs/private/config.yaml")
    assert path_problem(denied) == ("Permission denied: 'runs/private/config.yaml'. Check its permissions and those "
                                    "of the folders above it (a folder needs x to be entered), or choose another path.")
    assert path_problem(PermissionError(13, "Permission denied")) == ""  # no path: not known to be the input's
    assert path_problem(ValueError("a bug")) == ""
