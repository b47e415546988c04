# causalmeta: the two promises of the README are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	# CPU build of torch, pinned: a plain `torch` pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: install
	$(BIN)/causalmeta benchmark --preset quick

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

# performance benchmarks (results in benchmarks/results/, logged to MLflow); the longer ones:
# benchmarks/mace_tnp.py, benchmarks/baselines.py, `causalmeta benchmark --preset cpu-3node`
bench: install
	$(BIN)/python benchmarks/prior_generation.py
	$(BIN)/python benchmarks/exact_posterior.py

clean:
	rm -rf $(VENV) .causalmeta
