# Two entry points: `make demo` (the tokenize job end to end on the bundled sample corpus) and
# `make test` (the test suite). Both create .venv and install everything they need.
# torch is pinned through constraints.txt to the CPU build on disk; an unpinned install would
# resolve to a newer CUDA build of several GB.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scaletok-installed
DEMO_OUT ?= demo-out
export RAY_AUTH_MODE ?= disabled

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaletok demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/encode.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
