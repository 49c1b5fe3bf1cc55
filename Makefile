# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Fashion-MNIST's idx files, from Debian's dataset-fashion-mnist package (the tests read the real data).
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# A real headless browser for tests/report: Debian's chromium-headless-shell, else chromium; once installed,
# the binary that exists is the target, so neither is installed again. Recommends (a desktop's worth) are
# left out; fonts-liberation is kept so the page's text renders with real glyphs.
APT_BROWSER := $(SUDO) apt-get install -y -qq --no-install-recommends fonts-liberation
BROWSER := $(firstword $(wildcard /usr/lib/chromium/chromium-headless-shell /usr/lib/chromium/chromium) \
                       /usr/lib/chromium/chromium-headless-shell)

.PHONY: demo test clean data FORCE

$(FASHION):
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

data: $(FASHION)

# A C++ compiler: cnnlab/layers/fused.py builds its BatchNorm + ReLU CPU kernel with it on first use (ninja
# comes from pip), and the tests check that kernel against torch's.
CXX_BIN := /usr/bin/g++

$(CXX_BIN):
	$(SUDO) apt-get install -y -qq g++ || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++; }

$(BROWSER):
	$(APT_BROWSER) chromium-headless-shell || \
	  { $(SUDO) apt-get update -qq && $(APT_BROWSER) chromium-headless-shell; } || $(APT_BROWSER) chromium

# --no-compile: pip would byte-compile every installed module (torch's thousands included), most of which
# nothing imports; Python compiles the ones imported on first use and caches them. Measured on 2 cores:
# the install took 79 s instead of 141 s, and the first imports of torch, torchvision, onnxruntime,
# optuna, matplotlib and cnnlab 36 s instead of 16 s.
# The .venv is made again when its Python does not run (a Python upgrade removed it) or is another version than
# $(PYTHON) (a PYTHON=python3.12 given once, which pip refused), even when its stamp is newer than pyproject.toml;
# never while $(PYTHON) itself does not run (a pyenv shim of a version not installed), which could make no new
# one. rm -rf: a .venv that links elsewhere loses only the link.
VERSION_OF = $(shell $(1) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
VENV_VERSION := $(call VERSION_OF,$(PY))
PYTHON_VERSION := $(call VERSION_OF,$(PYTHON))
REMAKE_VENV := $(if $(VENV_VERSION),$(if $(PYTHON_VERSION),$(filter-out $(VENV_VERSION),$(PYTHON_VERSION))),yes)
$(STAMP): pyproject.toml $(if $(REMAKE_VENV),FORCE)
	$(if $(REMAKE_VENV),$(PYTHON) -c pass && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq --no-compile -e '.[test]'
	touch $(STAMP)

# The main job: train LeNet-5 on the digits (seconds on 2 CPU cores) into a new runs/ folder.
demo: $(STAMP)
	$(VENV)/bin/cnnlab train --config recipes/lenet5-digits.yaml

# Two test processes (pytest-xdist), one per core of the 2-core CI machine: most tests are single-threaded
# Python, so two at once nearly halve the time (the time is in the README, Tests). Each worker gives torch its share
# of the cores (tests/conftest.py). TEST_WORKERS=0 runs them in one.
# The tests start about 200 Python processes (the CLI, bench scripts, DDP and search workers). Where the
# environment sets PYTHONDONTWRITEBYTECODE, as some machines do, each of them compiled torch, torchvision and
# sympy from source again (--no-compile above): importing torchvision took 13.7 s instead of 5.3 s, and the
# suite 11 minutes. The tests run with bytecode written on first import.
# --dist loadgroup: the tests of a module marked with one xdist_group run in one worker, so that its module-scoped
# fixture is paid once (the DDP tests' torchrun job, about 11 s, ran in both workers); the rest go to whichever
# worker is free, as with the default.
TEST_WORKERS ?= 2
test: $(STAMP) $(FASHION) $(BROWSER) $(CXX_BIN)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache

FORCE:
