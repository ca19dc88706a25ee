# Two commands: `make quickstart` (set up + run the whole pipeline on the bundled sample) and `make test`.
# TORCH: the torch requirement installed before the project. Here torch==2.13.0 (CPU) installs from local disk.
# On a GPU machine keep your own CUDA build: `make test TORCH=` installs no torch (pip keeps what the venv has),
# and VENV_FLAGS=--system-site-packages lets .venv see a torch installed system-wide.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
VENV_FLAGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-test quickstart test test-all clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	touch $@

$(VENV)/.setup: $(VENV)/.created pyproject.toml
	$(if $(strip $(TORCH)),$(PIP) install -q "$(TORCH)")
	$(PIP) install -q -e ".[sample,demo,eval]"
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup pyproject.toml
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

quickstart: setup
	$(PY) -m video_chatgpt.quickstart --workdir runs/quickstart

test: setup-test
	$(PY) -m pytest -q

# Also the slow end-to-end tests (marked `slow`).
test-all: setup-test
	$(PY) -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) runs
