"""cnnlab: build, analyse, train, tune, evaluate and transfer convolutional image classifiers.

The names below are imported on first use (PEP 562), not by ``import cnnlab``: every
``cnnlab.<module>`` import runs this file first, and importing torch here would make
``cnnlab --help`` (and anything else that needs only a small module such as ``cnnlab.config``)
pay the ~2-4 s torch import. ``cnnlab.create_model(...)`` and ``from cnnlab import summary``
work as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"


def cache_root() -> Path:
    """Where cnnlab keeps downloads, statistics and parameter counts: $CNNLAB_CACHE, else ~/.cache/cnnlab, else
    (a user with no home: HOME unset and no passwd entry, as in `docker run --user 12345`) a folder of this
    user's in the temporary folder.

    Defined here, at the root every module already imports, so that the data sources and the model
    zoo share one rule without either importing the other.
    """
    given = os.environ.get("CNNLAB_CACHE")
    if given:
        return Path(given)
    try:
        return Path.home() / ".cache" / "cnnlab"
    except (RuntimeError, KeyError):  # Path.home(): "Could not determine home directory."
        import tempfile

        return Path(tempfile.gettempdir()) / f"cnnlab-cache-{os.getuid()}"


# public name -> the module that defines it
_EXPORTS = {
    "AuxLogits": "cnnlab.models",
    "CnnlabError": "cnnlab.errors",
    "check_input_size": "cnnlab.models",
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "load_torchvision_state_dict": "cnnlab.models",
    "model_info": "cnnlab.models",
    "receptive_field": "cnnlab.analysis",
    "summary": "cnnlab.analysis",
    "zoo_table": "cnnlab.models",
}
# modules listed by dir() (those the docs point Python users to); any submodule is reachable as an attribute
# (cnnlab.models after `import cnnlab`)
_SUBPACKAGES = ("analysis", "config", "data", "evaluate", "experiments", "layers", "models", "report", "train",
                "transfer", "tune")

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from cnnlab.analysis import receptive_field, summary
    from cnnlab.errors import CnnlabError
    from cnnlab.models import (
        AuxLogits,
        check_input_size,
        create_model,
        list_models,
        load_torchvision_state_dict,
        model_info,
        zoo_table,
    )


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next access is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})
