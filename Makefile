# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Fashion-MNIST's idx files, from Debian's dataset-fashion-mnist package (the tests read the real data).
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test clean data

$(FASHION):
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

data: $(FASHION)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $(STAMP)

# The main job: train LeNet-5 on the digits (seconds on 2 CPU cores) into a new runs/ folder.
demo: $(STAMP)
	$(VENV)/bin/cnnlab train --config recipes/lenet5-digits.yaml

test: $(STAMP) $(FASHION)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
