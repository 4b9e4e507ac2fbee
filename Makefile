# spotfill: every habit people repeat is a target here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov in a venv of its own: its pins must not meet the project's dependencies.
CHECKOV_VENV  := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV       := $(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

$(CHECKOV_STAMP): requirements-lint-iac.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-lint-iac.txt
	touch $(CHECKOV_STAMP)

## Run a whole backfill on the local cloud (emulated AWS, real Keras predictions).
demo: $(STAMP)
	$(BIN)/spotfill demo

## The whole test suite: unit, moto, Step Functions, worker and local-cloud end-to-end tests.
test: $(STAMP)
	$(BIN)/python -m pytest

## Unit tests only (no TensorFlow, no Step Functions waits).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not sfn and not worker and not e2e"

## ruff, cfn-lint, sam validate --lint, hadolint and checkov (template.yaml, then as SAM translates it:
## every finding fixed, or suppressed in the resource's Metadata with its reason).
lint: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml
	AWS_DEFAULT_REGION=us-east-1 $(BIN)/sam validate --lint --template-file template.yaml
	$(BIN)/hadolint worker/Dockerfile
	$(CHECKOV) --file template.yaml
	$(BIN)/python -m spotfill.iac_scan .aws-sam/checkov/template.json
	$(CHECKOV) --file .aws-sam/checkov/template.json

## Throughput of the worker against the model's ceiling; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .aws-sam build
