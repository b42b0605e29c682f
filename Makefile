# Two entry points, each doing all set-up on a fresh machine:
#   make quickstart   create .venv, install, run the end-to-end demo on the synthetic corpus
#   make test         create .venv, install, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build on developer machines and CI; set TORCH_SPEC for a CUDA host.
TORCH_SPEC ?= torch==2.13.0
# DeepSpeed JIT-builds its CPU ops on first use; keep them across runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export OMP_NUM_THREADS ?= 1

.PHONY: install quickstart test clean

install: $(STAMP)

# torch first and pinned, so no resolver reaches for a multi-GB CUDA torch; deepspeed is an
# sdist that needs torch at build time, hence --no-build-isolation after torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-build-isolation "$(TORCH_SPEC)" "deepspeed>=0.16,<0.20"
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" -e ".[test]"
	touch $(STAMP)

# make quickstart QUICKSTART_ARGS=--keep-serving   keeps the endpoint up until Ctrl-C
quickstart: $(STAMP)
	$(BIN)/avray quickstart --workdir data/quickstart $(QUICKSTART_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf data/quickstart .cache .pytest_cache
