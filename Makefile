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

.PHONY: setup setup-test system-deps lint quickstart test test-all clean lmms-eval-venv

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	touch $@

$(VENV)/.setup: $(VENV)/.created pyproject.toml
	@echo "== installing torch and the project with its extras into $(VENV) (about 2 GB the first time: minutes)"
	$(if $(strip $(TORCH)),$(PIP) install --progress-bar on "$(TORCH)",@$(PY) -c "import torch" 2>/dev/null || \
		{ echo "TORCH= keeps the torch already in $(VENV), but it has none: install your CUDA build there first \
		($(PIP) install torch --index-url ...), or use VENV_FLAGS=--system-site-packages"; exit 1; })
	$(PIP) install --progress-bar on -e ".[sample,demo,eval,serve]"
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup pyproject.toml
	$(PIP) install --progress-bar on -e ".[test]"
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

quickstart: setup
	$(PY) -m video_chatgpt.quickstart --workdir runs/quickstart

# lmms-eval in a virtualenv of its own (it pins av<16): `make lmms-eval-venv`; docs/lmms-eval.md. The slow test
# tests/serve/test_lmms_eval.py makes it when LMMS_EVAL_PYTHON does not name another one. filelock<4: lmms-eval 0.7.3
# imports filelock._api, which filelock 4 removed ("No module named 'filelock._api'" and no results). No TORCH pin
# here: pip takes torch and torchvision as a matching pair (torch 2.13.0+cpu with PyPI's torchvision 0.28 fails with
# "operator torchvision::nms does not exist").
LMMS_VENV ?= .venv-lmms-eval
LMMS_EVAL ?= lmms-eval
$(LMMS_VENV)/.setup:
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q "$(LMMS_EVAL)" "filelock<4"
	touch $@

lmms-eval-venv: $(LMMS_VENV)/.setup

# What the tests need from Debian: a real browser (the demo's browser test) and strace (kill-at-write tests).
# Installed when missing and running as root; otherwise one line says what to run.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v strace >/dev/null; then \
		if [ "$$(id -u)" -eq 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver strace; \
		else echo "the tests need Debian's chromium, chromium-driver and strace: sudo apt-get install -y chromium chromium-driver strace"; exit 1; fi; \
	fi

lint: setup-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: system-deps lint
	$(PY) -m pytest -q

# Also the slow end-to-end tests (marked `slow`).
test-all: system-deps lint
	$(PY) -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) $(LMMS_VENV) runs
