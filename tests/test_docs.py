"""README.md and docs/: every relative link and every command example still points at something that exists,
and the synopsis of docs/command-line.md names every option of every command (and no other).

The pages are read as text, and nothing they show is run. A renamed option, a moved heading or a
recipe that left recipes/ breaks a page without breaking any other test, so here:
- a relative link must name a file that exists, and its ``#anchor`` a heading of that file (GitHub's
  slugs);
- a ``cnnlab`` command in a fenced block must get past the CLI's own parser (its subcommand and
  option names, with ``--help`` added so that nothing runs); its ``--set`` keys and values must pass
  the config loader on the recipe it names; its recipe file, model names and experiment name must
  exist;
- a ``bench/`` command must name a script that exists and options that script defines;
- a ``make`` command must name a target of the Makefile.
A command followed by a ``# error: ...`` line shows a refusal: it must be refused. Synopsis lines
(with ``[--option]`` brackets or ``...``) describe a grammar, not a command, and are left out.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.config import RunConfig, apply_overrides, load_config, model_spec_overrides, parse_model_spec
from cnnlab.errors import CnnlabError
from cnnlab.experiments import REGISTRY
from cnnlab.models import model_exists

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)  # list items indent theirs
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_STOPS = {"|", "||", "&&", ";", "2>&1"}  # where one command of a shell line ends


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of every script, digits and '_'
    return text.replace(" ", "-")


@functools.cache  # a page's headings are read once, however many links point into it
def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a page's prose (fenced blocks and inline code hold none)."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z]+:", target)]


ENVIRONMENT_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")  # VAR=VALUE words before a command


def commands(page: Path) -> list[tuple[str, bool]]:
    """(command line, whether the page shows it refused) for each command of the page's fenced blocks.

    Continuation lines are joined and comments kept; a refusal is a next line starting ``# error``. A block
    fenced as ```text shows what a command printed (the final report's first line reads ``cnnlab run  RUN``),
    so it holds no command.
    """
    found = []
    for block in FENCE.findall(page.read_text()):
        if re.match(r"[ \t]*```text\s*\n", block):
            continue
        lines = [line.strip().removeprefix("$ ") for line in re.sub(r"\\\n\s*", " ", block).splitlines()[1:-1]]
        lines = [ENVIRONMENT_PREFIX.sub("", line) for line in lines]  # CNNLAB_DATA=DIR cnnlab ...: the command
        for line, after in zip(lines, [*lines[1:], ""]):
            if re.match(r"(\.venv/bin/)?cnnlab |(\.venv/bin/)?python3? bench/|make ", line):
                found.append((line, after.startswith("# error")))
    return found


def words(line: str) -> list[str]:
    """The first command of a shell line, without its comment, pipes, chains or redirections."""
    kept = []
    for word in shlex.split(line, comments=True):
        if word in SHELL_STOPS or word.startswith((">", "2>")):
            break
        kept.append(word)
    return kept


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == option]


def is_synopsis(line: str) -> bool:
    return "[--" in line or "..." in line


EXAMPLES = [(page, line, refused) for page in PAGES for line, refused in commands(page) if not is_synopsis(line)]
CNNLAB = [example for example in EXAMPLES if re.match(r"(\.venv/bin/)?cnnlab ", example[1])]
BENCH = [(page, line) for page, line, _ in EXAMPLES if "bench/" in line.split()[1]]
MAKE = [(page, line) for page, line, _ in EXAMPLES if line.startswith("make ")]


def test_the_pages_hold_examples_of_every_kind():
    """The readers below found what they look for: a broken pattern would make every later test vacuous."""
    assert len(CNNLAB) >= 100 and len(BENCH) >= 10 and len(MAKE) >= 2
    assert any(refused for _, _, refused in CNNLAB)
    assert sum(len(links(page)) for page in PAGES) >= 50


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {page_id(file)}")
    assert not broken, "\n".join(broken)


def is_template(argv: list[str]) -> bool:
    """Whether the command checks its config as a template, as the CLI does: `cnnlab transfer`'s rungs set
    model.init_from themselves."""
    return argv[0] == "transfer"


def recipe_of(argv: list[str]) -> RunConfig:
    """The config a command's --set lines apply to: the recipe it names, else the defaults."""
    recipes = [value for value in option_values(argv, "--config") if value.startswith("recipes/")]
    for recipe in recipes:
        assert (ROOT / recipe).is_file(), f"{recipe} does not exist"
    return load_config(ROOT / recipes[0], template=is_template(argv)) if recipes else RunConfig()


def model_specs(argv: list[str]) -> list[str]:
    """Model specs a cnnlab command names: --model's value and the positional models of build/summary/compare."""
    specs = option_values(argv, "--model")
    if argv[0] in ("build", "summary", "compare"):
        positional = []
        for word in argv[1:]:
            if word.startswith("--"):
                break
            positional.append(word)
        specs += positional if argv[0] == "compare" else positional[:1]
    return specs


def check_settings(argv: list[str]) -> None:
    """The config a command's --model and --set lines make, on the recipe it names; raises naming a bad key or value."""
    shortcut = [item for spec in option_values(argv, "--model") for item in model_spec_overrides(spec)]
    apply_overrides(recipe_of(argv), shortcut + option_values(argv, "--set"), template=is_template(argv))


@pytest.mark.parametrize("page, line, refused", CNNLAB, ids=[f"{page_id(p)}:{i}" for i, (p, *_) in enumerate(CNNLAB)])
def test_every_cnnlab_example_parses(page, line, refused):
    argv = words(line)[1:]  # without "cnnlab"
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"{line}\n{result.output[-600:]}"
    if refused:
        with pytest.raises(CnnlabError):
            check_settings(argv)
        return
    check_settings(argv)
    for spec in model_specs(argv):
        name = spec.split(",")[0]
        assert model_exists(name), f"{line}: no model '{name}'"
        parse_model_spec(spec)  # its KEY=VALUE options are config keys with values of the right type
    if argv[0] == "experiment" and len(argv) > 1 and argv[1] != "list" and not argv[1].startswith("--"):
        REGISTRY.get(argv[1])


@pytest.mark.parametrize("page, line", BENCH, ids=[f"{page_id(p)}:{i}" for i, (p, _) in enumerate(BENCH)])
def test_every_bench_example_names_a_script_and_its_options(page, line):
    argv = words(line)[1:]  # the script, then its arguments
    script = ROOT / argv[0]
    assert script.is_file(), f"{line}: no script {argv[0]}"
    source = script.read_text()
    for word in argv[1:]:
        option = word.split("=")[0]
        if option.startswith("--"):
            assert f'"{option}"' in source, f"{line}: {argv[0]} defines no option {option}"
    check_settings(argv)


def test_every_make_example_names_a_target():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for page, line in MAKE:
        for target in words(line)[1:]:
            assert target in targets, f"{page_id(page)}: `{line}` names no Makefile target '{target}'"


# The synopsis at the top of docs/command-line.md: the names its prose stands for
SYNOPSIS_SHORTCUTS = {"--lr", "--batch-size", "--seed", "--device"}  # [SHORTCUTS]
DATA_COMMAND_OPTIONS = {"--data-dir", "--val-fraction", "--seed"}  # "The data commands also take ..."


def _commands(command, path=()):
    """(command words, command) for every command of the app, sub-commands (data stats) included."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def test_the_command_line_synopsis_names_every_option_of_every_command():
    import typer

    block = FENCE.search((ROOT / "docs" / "command-line.md").read_text()).group(0)
    synopsis: dict[tuple[str, ...], set[str]] = {}
    positional: dict[tuple[str, ...], str] = {}  # what a command's line shows before its first option
    last = None
    for line in block.splitlines()[1:-1]:
        code = line.split("#")[0]
        if line.startswith("cnnlab "):  # a new command; an indented line continues the one before
            words_ = code.split()[1:]
            path = tuple(itertools.takewhile(lambda word: re.fullmatch(r"[a-z][a-z-]*", word), words_))
            last = synopsis.setdefault(path, set())
            before_options = itertools.takewhile(lambda word: not re.match(r"[\[(]?--", word), words_[len(path):])
            positional.setdefault(path, " ".join(before_options))
        last.update(re.findall(r"--[a-z][a-z-]*", code))
        if "[SHORTCUTS]" in code:
            last.update(SYNOPSIS_SHORTCUTS)
    for path, command in _commands(typer.main.get_command(app)):
        name = f"`cnnlab {' '.join(path)}`"
        options = {name for param in command.params if type(param).__name__.endswith("Option") and not param.hidden
                   for name in (*param.opts, *param.secondary_opts) if name.startswith("--")} - {"--help"}
        shown = synopsis.get(path)
        assert shown is not None, f"docs/command-line.md has no synopsis line for {name}"
        if path[0] == "data":
            shown = shown | DATA_COMMAND_OPTIONS
        assert options - shown == set(), f"{name}: options missing from the synopsis"
        assert shown - options == set(), f"{name}: the synopsis names options it does not take"
        # The arguments before the options: there or not, required or [optional], one or several (...)
        arguments = [param for param in command.params if type(param).__name__.endswith("Argument")]
        words_shown = positional[path]
        assert bool(words_shown) == bool(arguments), f"{name}: synopsis shows '{words_shown}' for {len(arguments)} arguments"
        if arguments:
            assert ("..." in words_shown) == any(param.nargs == -1 for param in arguments), f"{name}: '{words_shown}'"
            optional = not any(param.required for param in arguments)
            assert words_shown.startswith("[") == optional, f"{name}: '{words_shown}' (optional: {optional})"


def test_the_run_folder_table_and_train_help_name_every_file_a_run_writes():
    """docs/training.md's table of the run folder and `cnnlab train --help` list every name cnnlab/run.py gives a
    run's files (they drifted: diagnosis.txt, budget.json and init.json were missing from the help)."""
    from cnnlab.run import LOCK_FILE, RUN_FILES, TENSORBOARD_DIR

    page = (ROOT / "docs" / "training.md").read_text()
    table = page[page.index("The run folder holds"):]
    table = table[:table.index("\n\n", table.index("| file |"))]
    named = set(re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)?", table, re.MULTILINE))
    named = {name for pair in named for name in pair if name}
    assert set(RUN_FILES) | {TENSORBOARD_DIR + "/"} <= named, f"missing from the table: {set(RUN_FILES) - named}"
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=400).output.split())
    for file in set(RUN_FILES) - {LOCK_FILE}:
        stem = file.split(".")[0]  # the help speaks of last/best checkpoints
        assert file in help_text or f"{stem}/" in help_text or f"/{stem}" in help_text, f"train --help never names {file}"


def test_the_readme_names_each_schedule_and_which_take_a_warmup():
    """The README said "five schedules with warmup", but onecycle refuses schedule.warmup_epochs (it has its own
    rise): which schedules take a warmup is read from the config's checks, not typed in here."""
    from cnnlab.config import CHOICES, ScheduleConfig, schedule_problems

    names = CHOICES[("schedule", "name")]
    # a problem that a warmup of one epoch brings (step's default milestones suit 90 epochs, not these 10)
    refused = {name for name in names
               if set(schedule_problems(ScheduleConfig(name=name, warmup_epochs=1), epochs=10))
               - set(schedule_problems(ScheduleConfig(name=name), epochs=10))}
    assert refused and refused < set(names)  # else the sentence below would need other words
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    sentence = re.search(r"(\w+) schedules \(([^)]*)\)", text)
    assert sentence, "the README's list of schedules is gone"
    count = ["one", "two", "three", "four", "five", "six", "seven"].index(sentence.group(1)) + 1
    assert count == len(names), (sentence.group(0), names)
    with_warmup, _, without = sentence.group(2).partition(";")
    assert "after an optional linear warmup" in with_warmup and "own rise" in without, sentence.group(0)
    assert set(re.findall(r"`(\w+)`", with_warmup)) == set(names) - refused, sentence.group(0)
    assert set(re.findall(r"`(\w+)`", without)) == refused, sentence.group(0)
