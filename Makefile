# spotfill: every habit people repeat is a target here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

## Run a whole backfill on the local cloud (emulated AWS, real Keras predictions).
demo: $(STAMP)
	$(BIN)/spotfill demo

## The whole test suite: unit, moto, Step Functions, worker and local-cloud end-to-end tests.
test: $(STAMP)
	$(BIN)/python -m pytest

## Unit tests only (no TensorFlow, no Step Functions waits).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not sfn and not worker and not e2e"

## ruff, cfn-lint, sam validate --lint and hadolint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml
	AWS_DEFAULT_REGION=us-east-1 $(BIN)/sam validate --lint --template-file template.yaml
	$(BIN)/hadolint worker/Dockerfile

## Throughput of the worker against the model's ceiling; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .aws-sam build
