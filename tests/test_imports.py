"""The package's own import graph: no loops, and each folder imports only from the layers below it.

Read from the source with ``ast`` (nothing is imported), so a loop is found even where it is hidden
inside a function: an ``import`` in a function body runs later, but a loop dodged that way is still a
loop (two modules that each need the other are one module, or a third module is missing). Imports
under ``if TYPE_CHECKING:`` never run and are left out. Function-level imports that keep start-up
light (torch, matplotlib, optuna, onnx) are not cnnlab modules and do not appear here.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

import cnnlab

PACKAGE = "cnnlab"
ROOT = Path(cnnlab.__file__).resolve().parent  # .../cnnlab

# DESIGN.md: "A module only imports from layers below it (layers <- models <- analysis/train <-
# tune/evaluate/transfer <- cli)". Each entry: a folder (or top-level module) and what it must never import.
# data sits beside models (config -> data -> loader -> model): neither imports the other.
# report reads what every other folder writes (runs, evals, the curve check), so only the CLI is above it.
UPPER = ("cnnlab.analysis", "cnnlab.train", "cnnlab.tune", "cnnlab.evaluate", "cnnlab.transfer", "cnnlab.report",
         "cnnlab.cli")
FORBIDDEN = {
    "cnnlab.layers": ("cnnlab.models", "cnnlab.data", *UPPER),
    "cnnlab.models": ("cnnlab.data", *UPPER),
    "cnnlab.data": ("cnnlab.models", *UPPER),
    "cnnlab.analysis": ("cnnlab.tune", "cnnlab.evaluate", "cnnlab.transfer", "cnnlab.report", "cnnlab.cli"),
    "cnnlab.train": ("cnnlab.tune", "cnnlab.evaluate", "cnnlab.transfer", "cnnlab.report", "cnnlab.cli"),
    "cnnlab.tune": ("cnnlab.report", "cnnlab.cli"),
    "cnnlab.evaluate": ("cnnlab.report", "cnnlab.cli"),
    "cnnlab.transfer": ("cnnlab.report", "cnnlab.cli"),
    "cnnlab.report": ("cnnlab.cli",),
    "cnnlab.experiments": ("cnnlab.cli",),
    # the foundations every folder uses
    "cnnlab.errors": ("cnnlab.",),
    "cnnlab.limits": ("cnnlab.",),
    "cnnlab.threads": ("cnnlab.",),
    # devices: the error type only (the data loaders resolve device names with it, below config and run)
    "cnnlab.devices": ("cnnlab.config", "cnnlab.run", "cnnlab.io", "cnnlab.limits", "cnnlab.threads", "cnnlab.layers",
                       "cnnlab.models", "cnnlab.data", "cnnlab.experiments", *UPPER),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_package = modules()[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports_of(module: str) -> tuple[tuple[str, int, bool], ...]:
    """(imported cnnlab module, line, at module level?) for every import the module runs.

    ``from cnnlab.a import b`` counts as importing ``cnnlab.a.b`` when that is a module, else ``cnnlab.a``.
    """
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_only(tree)
    top_level = {id(node) for node in tree.body} | {
        id(inner) for node in tree.body if isinstance(node, (ast.Try, ast.If)) for inner in ast.walk(node)
    }
    known = modules()
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import cnnlab.a.b` binds cnnlab.a.b, a module
                target = target.rpartition(".")[0]
            if target and target != module and (target == PACKAGE or target.startswith(PACKAGE + ".")):
                found.append((target, node.lineno, id(node) in top_level))
    return tuple(sorted(set(found)))


def graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in imports_of(module)} for module in modules()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:  # recursion depth is bounded by the package's size (~100 modules)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _describe(component: list[str]) -> str:
    """Each import that keeps the modules of one loop together, with its file and line."""
    members = set(component)
    lines = []
    for module in component:
        for target, line, top in imports_of(module):
            if target in members:
                where = "module level" if top else "inside a function"
                lines.append(f"  {module} -> {target}  ({modules()[module].relative_to(ROOT.parent)}:{line}, {where})")
    return "\n".join(lines)


def test_the_graph_is_read_from_the_source():
    """The parser sees module-level, function-level and relative imports (guards against a test that finds nothing)."""
    assert "cnnlab.data.images" in graph()["cnnlab.data.buckets"]
    assert "cnnlab.data.buckets" in graph()["cnnlab.data.sources"]
    assert "cnnlab.models._registry" in graph()["cnnlab.models"]
    assert len(modules()) > 40


def test_find_cycles_reports_a_loop_hidden_in_a_function():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop():
    cycles = find_cycles(graph())
    report = "\n\n".join(f"loop of {len(c)} modules:\n{_describe(c)}" for c in cycles)
    assert not cycles, f"cnnlab has import loops (function-local imports included):\n{report}"


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_from_below(folder):
    bad = []
    for module in modules():
        if module != folder and not module.startswith(folder + "."):
            continue
        for target, line, _ in imports_of(module):
            if any(target == f or target.startswith(f if f.endswith(".") else f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{modules()[module].relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, f"{folder} must not import {', '.join(FORBIDDEN[folder])}:\n" + "\n".join(bad)


def test_nothing_imports_the_command_line():
    """cli sits on top: only ``python -m cnnlab`` (__main__) reaches it."""
    bad = [m for m in modules() if m not in ("cnnlab.cli", "cnnlab.__main__") and "cnnlab.cli" in graph()[m]]
    assert not bad, f"modules importing cnnlab.cli: {bad}"


def test_model_code_is_all_in_the_parameter_cache_key():
    """The parameter-count cache (cnnlab/models/_zoo.py) hashes cnnlab/models and cnnlab/layers: every
    cnnlab module the models import, directly or not, must be there or be one that cannot change a count."""
    from cnnlab.models._zoo import MODEL_SOURCE_DIRS

    hashed = tuple(f"cnnlab.{folder}" for folder in MODEL_SOURCE_DIRS)
    no_effect = {"cnnlab", "cnnlab.errors", "cnnlab.io"}  # the cache folder, error types, atomic writes
    edges = graph()
    seen, todo = set(), [m for m in modules() if m.startswith("cnnlab.models")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges[module]
    outside = sorted(m for m in seen if m not in no_effect and not any(m == h or m.startswith(h + ".") for h in hashed))
    assert not outside, f"the models import {outside}, which the parameter-count cache key does not hash"


HEAVY = ("torchvision", "matplotlib", "optuna", "onnx", "onnxruntime", "sklearn", "torch._dynamo", "tensorboard")


def _modules_after(code: str) -> list[str]:
    import subprocess
    import sys

    probe = f"import sys\n{code}\nprint('LOADED:', *(m for m in {HEAVY + ('torch',)!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.rpartition("LOADED:")[2].split()


def test_help_imports_no_torch():
    """`cnnlab --help` needs typer and rich only: importing torch would cost seconds."""
    loaded = _modules_after("from cnnlab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert loaded == []


# The commands below run one after another in one fresh interpreter (each interpreter cost 2 to 5 s of torch's and
# cnnlab's imports, torchvision's on top in the last), with what is loaded read before and after each. A check of
# one command is sound there only if what it looks for was not loaded before the command ran, whoever loaded it
# then: so each step's module set before it is checked too, and the steps come in the order that keeps them so
# (`cnnlab models` first, as in a fresh interpreter; the one command that brings torchvision in last).
_STEPS = """
import sys
HEAVY = {heavy!r}
from cnnlab.cli import main
for name, args, must_succeed in {steps!r}:
    before = [m for m in HEAVY if m in sys.modules]
    try:
        main(args)
    except SystemExit as end:
        assert not (must_succeed and end.code), (name, end.code)
    print("STEP", name, "BEFORE", *before, "LOADED", *(m for m in HEAVY if m in sys.modules))
"""


def test_each_command_imports_only_what_it_needs(tmp_path):
    """`cnnlab models`, `cnnlab data stats`, `cnnlab runs` and `cnnlab train` load no heavy module they do not use;
    training loads torchvision only for the augmentations that need it."""
    import subprocess
    import sys

    synthetic = "synthetic:classes=3,train=30,val=6,test=6"
    run = ["train", "--model", "lenet5", "--data", "synthetic:classes=2,train=16,val=8,test=8", "--epochs", "1",
           "--set", "train.batch_size=8", "--set", "aug.crop=translate", "--set", "aug.hflip=0.5"]
    steps = [("models", ["models", "--json"], False), ("data stats", ["data", "stats", synthetic], True),
             ("runs", ["runs", str(tmp_path)], True), ("train plain", run + ["--out", str(tmp_path / "plain")], True),
             ("train mixed", run + ["--set", "aug.mixup_alpha=0.2", "--out", str(tmp_path / "mixed")], True)]
    program = _STEPS.format(heavy=HEAVY + ("torch",), steps=steps)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, loaded = {}, {}
    for line in done.stdout.splitlines():
        if line.startswith("STEP "):
            name, _, modules = line.removeprefix("STEP ").partition(" BEFORE")
            first, _, after = modules.partition("LOADED")
            before[name], loaded[name] = first.split(), after.split()
    assert list(loaded) == [name for name, _, _ in steps], done.stdout[-2000:]

    # `cnnlab models` needs torch and the model tables: no plotting, search, export or dynamo.
    assert before["models"] == [] and loaded["models"] == ["torch"], loaded["models"]
    # Reading statistics and listing runs need no torchvision (about a second to import, half such a command).
    for name in ("data stats", "runs"):
        assert "torchvision" not in before[name] and "torchvision" not in loaded[name], (name, loaded[name])
    # Data in memory with shifts and flips trains without torchvision; mixing (v2.MixUp) brings it in.
    assert "torchvision" not in before["train plain"] and "torchvision" not in loaded["train plain"], loaded
    assert "torchvision" not in before["train mixed"] and "torchvision" in loaded["train mixed"], loaded


def test_dir_lists_every_subpackage_the_docs_point_python_users_to_and_the_config():
    # report, experiments and config were reachable but not listed, though the docs send Python users there
    import importlib
    import re
    from pathlib import Path

    import cnnlab

    docs = " ".join(path.read_text() for path in (Path(__file__).parent.parent / "docs").glob("*.md"))
    named = set(re.findall(r"\bcnnlab\.([a-z_]+)", docs))
    packages = {name for name in named if (spec := importlib.util.find_spec(f"cnnlab.{name}")) is not None
                and spec.submodule_search_locations is not None}
    assert {"report", "experiments"} <= packages
    assert packages | {"config"} <= set(dir(cnnlab))
