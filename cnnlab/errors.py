"""User-facing errors.

Every error a person can cause with bad input derives from :class:`CnnlabError`. The CLI prints
its message as one paragraph on stderr and exits with code 2; anything else is a bug and keeps its
traceback.
"""


import codecs
import json
import math
import numbers
import os
import re
import sys
import unicodedata

# How much of a bad value a message shows.
_VALUE_SHOWN = 60


def _value_text(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        return repr(value)


def _shortened(text: str, start: int = 0, room: int = _VALUE_SHOWN) -> str:
    """``text`` (a value as :func:`_value_text` writes it) from character ``start`` on, in at most ``room``
    characters, with "..." where it is cut. A quoted value keeps both its quotes around what is shown,
    "...runs/a" and "/home/someone/...", so a cut text still reads as text cut, not as a malformed string."""
    quoted = len(text) >= 2 and text[0] == text[-1] == '"'
    inner, room = (text[1:-1], room - 2) if quoted else (text, room)
    start = max(start - 1, 0) if quoted else start  # the same character of the value, past the opening quote
    head = "..." if start > 0 else ""
    rest = inner[start:]
    if len(head) + len(rest) > room:
        rest = rest[:room - len(head) - 3] + "..."
    return f'"{head}{rest}"' if quoted else head + rest


def _items(value) -> "list[str] | None":
    """The texts of a list's elements as :func:`_value_text` writes them within the list (a tuple is written as a
    list), or None for any other value, and for a list that is not written as its elements joined (one holding
    a value JSON cannot write is shown as Python writes it)."""
    if not isinstance(value, (list, tuple)):
        return None
    items = [_value_text(item) for item in value]
    return items if "[" + ", ".join(items) + "]" == _value_text(value) else None


_LIST_CUT = "..."  # stands for the elements a cut list leaves out, as one element: [..., "x", 1], ["a", "b", ...]
# The room of one element cut inside a list cut at both ends, [..., "...x...", ...]
_LIST_ELEMENT_ROOM = _VALUE_SHOWN - len(f"[{_LIST_CUT}, ") - len(f", {_LIST_CUT}]")


def _list_shortened(items: list[str], start: int = 0, differ_at: int = 0) -> tuple[str, int]:
    """A list (its elements' texts, :func:`_items`) in at most _VALUE_SHOWN characters, cut between elements so
    that what is shown reads as a list: from element ``start`` on ("[..., " in front when ``start`` > 0), as many
    whole elements as fit, and ", ...]" where more follow. Where the first of them does not fit whole it is cut
    itself (:func:`_shortened`), from its character ``differ_at`` on. Returns the text and how many elements it
    shows whole."""
    head = f"[{_LIST_CUT}, " if start > 0 else "["
    tail = f", {_LIST_CUT}"  # before the closing bracket when elements are left out at the end
    shown: list[str] = []
    used = len(head) + len("]")
    for index in range(start, len(items)):
        separator = ", " if shown else ""
        after = "" if index == len(items) - 1 else tail  # the room ", ..." takes should the next not fit
        if used + len(separator) + len(items[index]) + len(after) > _VALUE_SHOWN:
            break
        shown.append(items[index])
        used += len(separator) + len(items[index])
    whole = len(shown)
    if not shown and start < len(items):  # one element longer than the room: cut inside it
        last = start == len(items) - 1
        shown = [_shortened(items[start], differ_at, _VALUE_SHOWN - used - (0 if last else len(tail)))]
    more = start + len(shown) < len(items)
    return head + ", ".join(shown) + (tail if more else "") + "]", whole


def shown_value(value) -> str:
    """A value in a message, as JSON (or YAML) spells it (null, "text"), shortened; a long list is cut between
    its elements, ["a", "b", ...]."""
    text = _value_text(value)
    items = _items(value)
    if len(text) > _VALUE_SHOWN and items is not None:
        return _list_shortened(items)[0]
    return _shortened(text)


# How much of the common start shown_apart keeps before the first differing character.
_APART_CONTEXT = 16


def _first_difference(one: list | str, other: list | str) -> int:
    """The first index where two texts (or two lists of texts) differ; the shorter's length when one is
    the start of the other."""
    return next((i for i, (a, b) in enumerate(zip(one, other)) if a != b), min(len(one), len(other)))


def shown_apart(one, other) -> tuple[str, str]:
    """Two values that differ, each as :func:`shown_value` writes it, except where the shortening would make
    them read alike (two long paths that differ only in their tail): then both are cut around the first
    character where they differ, "...runs/a" and "...runs/b" (in their quotes), so the message shows how
    they differ. Two lists are cut between their elements, from the first element that differs on
    ([..., "x", 1] and [..., "y", 1]), so that both still read as lists."""
    one_text, other_text = _value_text(one), _value_text(other)
    shown = shown_value(one), shown_value(other)
    if one_text == other_text or len(one_text) <= _VALUE_SHOWN and len(other_text) <= _VALUE_SHOWN:
        return shown
    one_items, other_items = _items(one), _items(other)
    if one_items is not None and other_items is not None:
        return _lists_apart(one_items, other_items) or shown
    first = _first_difference(one_text, other_text)
    # shown_value keeps the first 57 characters of a long value, or of a quoted one its quote and 55 of its own
    if first < _VALUE_SHOWN - 4:  # the difference is within what shown_value keeps of both
        return shown
    start = first - _APART_CONTEXT
    return _shortened(one_text, start), _shortened(other_text, start)


def _lists_apart(one: list[str], other: list[str]) -> "tuple[str, str] | None":
    """:func:`shown_apart` of two lists (their elements' texts): None where shown_value already shows both
    whole up to the first element that differs."""
    differ = _first_difference(one, other)
    if all(_list_shortened(items)[1] > differ for items in (one, other) if differ < len(items)):
        return None
    # Where one list is the start of the other, both are shown from its last element: "[..., e9]" ends there
    # while "[..., e9, e10]" goes on.
    start = differ if differ < min(len(one), len(other)) else max(differ - 1, 0)
    # A long element that differs is cut around its own first differing character (as two long texts are).
    inside = 0
    if start < min(len(one), len(other)):
        first = _first_difference(one[start], other[start])
        # as in shown_apart: kept from the start, a quoted element shows its quote and room - 5 of its own
        inside = first - _APART_CONTEXT if first >= _LIST_ELEMENT_ROOM - 4 else 0
    return _list_shortened(one, start, inside)[0], _list_shortened(other, start, inside)[0]


def is_number(value) -> bool:
    """An int or a float as read from JSON or YAML: ``True`` is not 1 here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """:func:`is_number`, and neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def whole_number(value):
    """``value`` as an int when it is an integer: Python's, numpy's (np.int64) or a 0-d integer torch
    tensor; None for anything else (a bool, a float, text). For the integer arguments of the Python API,
    which a caller may compute with numpy or torch."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):  # int, np.int64, ... (np.bool_ is not Integral)
        return int(value)
    torch = sys.modules.get("torch")  # a torch tensor means torch is imported: no import for other values
    if (torch is not None and isinstance(value, torch.Tensor) and value.ndim == 0
            and not value.dtype.is_floating_point and not value.dtype.is_complex and value.dtype != torch.bool):
        return int(value)
    return None


# A whole number written as text: an optional sign, then decimal digits. str.isdigit() is not this test: it
# is true for superscripts ('²') and, after lstrip('-'), for '--1', both of which int() refuses; and int()
# itself takes more than a person writes as a number ('1_000', ' 7 ').
_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def repeated_values(items) -> list:
    """The values ``items`` names more than once (equal values count as one: 1 and 1.0), each as first listed,
    in order: what a message refusing a list whose entries must differ names."""
    items, repeated = list(items), []
    for number, item in enumerate(items):
        firsts = [earlier for earlier in items[:number] if earlier == item]
        if firsts and not any(item == seen for seen in repeated):
            repeated.append(firsts[0])
    return repeated


def check_count(value, name: str, least: int, meaning: str) -> None:
    """Refuse a count argument that is not a whole number of at least ``least`` (``True`` is not 1 here).

    A negative count would not fail on its own: ``[:count]`` with ``count=-1`` drops the last item.
    ``meaning`` says what the count counts, for the message.
    """
    if whole_number(value) is None or value < least:
        raise CnnlabError(f"{name}={shown_value(value)} must be a whole number of at least {least}: {meaning}.")


def check_path_argument(value, name: str, meaning: str):
    """``value`` as a Path, refusing what names no path: None, another type, or empty text (``Path("")`` is the
    current folder, so an unset shell variable or a forgotten argument would write there). ``meaning`` says
    what the path is for, for the message."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        shown = "None" if value is None else shown_value(value)
        raise CnnlabError(f"{name}={shown} must name {meaning} (a str or Path, not empty).")
    return Path(value)


def check_type(value, kind: type, name: str, meaning: str) -> None:
    """Refuse an argument that is not a ``kind`` (a RunConfig, a torch module), naming it and what it should be,
    before an attribute lookup deep inside fails on it."""
    if not isinstance(value, kind):
        got = "None" if value is None else f"a {type(value).__name__} ({shown_value(value)})"
        raise CnnlabError(f"{name} must be {meaning}, got {got}.")


def integer_text(text: str):
    """The int that ``text`` writes ('12', '-3', '+4'), or None when it is not a whole number in digits
    (for names, labels and options read from text: a CSV label, a bucket's side, a key's value)."""
    if not isinstance(text, str) or not _INTEGER_TEXT.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python reads (4,300): no count or side, so text, as other names are
        return None


def counted(number: int | float, noun: str, plural: str = "") -> str:
    """A count and its noun in a message: "1 image", "6 images"; ``plural`` for nouns that take more than
    a plain s ("1 batch", "3 batches"). A float count is written as :g writes it ("1 epoch", "0.5 epochs")."""
    shown = f"{number:g}" if isinstance(number, float) else number
    return f"{shown} {noun_for(number, noun, plural)}"


def first_few(names, shown: int) -> str:
    """The first ``shown`` of ``names`` in a message, joined by commas, and how many more there are:
    "a, b, c and 4 more"."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def noun_for(number: int | float, noun: str, plural: str = "") -> str:
    """The noun alone, as :func:`counted` would write it after ``number``: "the unknown field" for one,
    "the unknown fields" for two."""
    return noun if number == 1 else (plural or noun + "s")


CPU_ALLOCATION_REFUSED = "can't allocate memory"  # in the RuntimeError of torch's CPU allocator


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is memory the machine or the GPU could not give: torch's CUDA allocator raises
    OutOfMemoryError, its CPU allocator a RuntimeError saying it "can't allocate memory", Python itself
    MemoryError. Code that reads a torch error as a sign of bad input passes these on."""
    torch = sys.modules.get("torch")  # imported by then if torch raised it
    return (isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError))
            or (isinstance(err, RuntimeError) and CPU_ALLOCATION_REFUSED in str(err)))


class CnnlabError(Exception):
    """Bad input from the user: the message names what is wrong and what to do."""


class UnknownNameError(CnnlabError, KeyError):
    """A name (model, norm, activation) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message; print it as written
        return str(self.args[0])


class UnknownOptionError(CnnlabError):
    """A builder option the model does not take (``option``: its name, None when the message names none)."""

    def __init__(self, message: str, option: "str | None" = None) -> None:
        super().__init__(message)
        self.option = option


class InputTooSmallError(CnnlabError, ValueError):
    """The input is too small: a feature map would vanish inside the network."""


class BatchOfOneError(CnnlabError, ValueError):
    """A batch of one image is too few: a norm that uses the batch's own statistics also in eval mode (no running
    statistics) gets one value per channel."""


SURROGATE_OFFSET = 0xDC00  # surrogateescape keeps byte b (0x80..0xff) as the code point 0xDC00 + b
SURROGATE_BYTES = (0xDC80, 0xDCFF)  # the code points that range covers


def is_utf8(text: str) -> bool:
    """Whether ``text`` (a path or name) names the same file as UTF-8 text as Python names it: the libraries that
    take a path as UTF-8 text (safetensors, TorchScript, ONNX) then open the file Python's own calls do. A name
    written in another encoding reaches Python as lone surrogates (PEP 383), which UTF-8 cannot encode; under a
    locale that is not UTF-8 (ISO-8859-1, C without Python's UTF-8 mode) a non-ASCII name has other bytes on
    disk than its UTF-8 text, and such a library wrote a second file, by another name. The one test of it, for
    every check that refuses such a path (cnnlab.io.check_utf8_path, the checkpoint reader)."""
    try:
        return text.encode("utf-8") == os.fsencode(text)
    except UnicodeEncodeError:
        return False


def not_utf8_text() -> tuple[str, str]:
    """(why :func:`is_utf8` refused a path, to follow "'NAME' is ", and what to do), for the refusals' messages."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name != "utf-8":
        return (f"a non-ASCII name, and this process reads file names as {encoding} (its locale, LC_ALL or LANG, is "
                "not UTF-8), while the libraries that write and read models take them as UTF-8 and would reach "
                "another file", "Run cnnlab in a UTF-8 locale (LC_ALL=C.UTF-8, or PYTHONUTF8=1), or use an ASCII name.")
    return ("not valid UTF-8 (a name written in another encoding)",
            "Choose a UTF-8 name (or rename the folder, or give a link to it that has a UTF-8 name).")


def display_class(name: str) -> str:
    """How a class name is shown and matched: :func:`display_name` in Unicode's composed form (NFC).

    One name can be stored as two different strings: 'café' with a composed é (as Linux and Windows tools
    write it) or with an e and a combining accent (as macOS's file systems and zip files made there do). Both
    show the same, so a class folder named either way is one class: in train and test, and against the
    classes a model was trained on.
    """
    return unicodedata.normalize("NFC", display_name(name))


def shell_word(path) -> str:
    """``path`` as a command in a message names it: quoted for the shell, so that the command runs as shown
    whatever the folder is named (a space, a quote), with './' before a relative name that starts with '-' (the
    command would read it as an option), and shown as every name is (:func:`display_name`: a byte that is not UTF-8
    as \\xff, never the raw byte)."""
    import shlex

    text = display_name(str(path))
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def display_name(name: str) -> str:
    """How a class, file or folder name is shown everywhere: tables, plots, JSON, reports, messages.

    Names are read from disk as str; bytes that are not UTF-8 arrive as lone surrogates (Python's
    surrogateescape, PEP 383), which matplotlib, JSON parsers and terminals refuse. Each such byte is
    shown as its escape ``\\xNN`` (a folder named b'caf\\xe9' shows as ``caf\\xe9``), and a character
    that is not printable (a tab, newline or escape code in a name) as its Python escape (``\\t``,
    ``\\n``, ``\\x1b``); every other character, accented and non-Latin letters included, is kept.
    The result is printable text, and applying the rule again changes nothing. Files are still opened
    through their real paths: only what a person reads changes.
    """
    if name.isprintable():
        return name
    shown = []
    for char in name:
        code = ord(char)
        if SURROGATE_BYTES[0] <= code <= SURROGATE_BYTES[1]:
            shown.append(f"\\x{code - SURROGATE_OFFSET:02x}")  # the undecodable byte itself
        elif char.isprintable():
            shown.append(char)
        else:
            shown.append(repr(char)[1:-1])  # '\n', '\t', '\x1b', '\u200b'
    return "".join(shown)
