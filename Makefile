# The commands people run; README.md documents each.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CONFIG ?= configs/smoke.yaml
OUT    ?=
SET    ?=

.PHONY: install test test-slow lint train bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install  ## the fast CPU suite (about 5 minutes on 2 cores)
	$(PY) -m ruff check adprune_core tests
	$(PY) -m pytest -q

test-slow: install  ## every test, the ones marked slow included
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check adprune_core tests

train: install  ## make train [CONFIG=configs/smoke.yaml] [OUT=dir] [SET="train.epochs=3 data.name=cifar10"]
	$(VENV)/bin/adprune train --config $(CONFIG) $(if $(OUT),--out $(OUT)) $(foreach s,$(SET),--set $(s))

bench: install  ## side-by-side speed figures, written to docs/benchmarks.md
	$(PY) -m adprune_core.bench --out docs/benchmarks.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
