# `make run` and `make test` work on a fresh machine with only Python >= 3.11 and pip:
# they create .venv and install the project (with uv when present) before running.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SLOW_STAMP := $(VENV)/.installed-llama
RUN_DIR ?= runs/demo/v1
PROFILE ?= cpu-smoke
# ray: the Ray engine (its cluster tests run in `make test-slow`, and so in CI); `make run` never needs it
DEV_EXTRAS := .[dev,ray]
SLOW_EXTRAS := .[dev,llama,ray]
# uv when present, else pip; one function so both targets install the same way (commas must
# stay inside variables: $(call) splits its arguments at commas)
pip_install = if command -v uv >/dev/null 2>&1; then uv pip install --python $(BIN)/python $(1); \
	else $(BIN)/python -m pip install --quiet $(1); fi

.PHONY: install run test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "distillery needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(call pip_install,-e '$(DEV_EXTRAS)')
	@touch $(STAMP)

# llama-cpp-python builds from source (3-14 minutes on 2 cores); pip's wheel cache keeps the build.
# Built portable (GGML_NATIVE=OFF): 0.3.36 built for a CPU with AMX and AVX-512 segfaulted on its
# first completion, where the portable build answers.
$(SLOW_STAMP): $(STAMP)
	@export CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}"; $(call pip_install,-e '$(SLOW_EXTRAS)')
	@touch $(SLOW_STAMP)

# The whole curate-and-train Prefect flow on the embedded default (a temporary local Prefect
# API unless PREFECT_API_URL names one); ends with the card paths, eval table and checkpoint.
run: $(STAMP)
	DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
		$(BIN)/distillery run --profile $(PROFILE) --run $(RUN_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(SLOW_STAMP)
	DISTILLERY_REQUIRE_SLOW=1 $(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache build
