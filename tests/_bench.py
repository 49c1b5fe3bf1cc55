"""bench/ scripts as modules for the tests that check their pieces (bench/ is not a package)."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str):
    """bench/NAME.py as module NAME; bench/ is on sys.path while it loads, as when a bench script runs."""
    sys.path.insert(0, str(BENCH))  # the scripts import their neighbour _machine
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
