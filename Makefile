# spotfill: every habit people repeat is a target here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov in a venv of its own: its pins must not meet the project's dependencies.
CHECKOV_VENV  := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV       := $(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation
# The worker image's CPU dependency set in a venv of its own: worker/requirements.txt and the TensorFlow, Keras,
# OpenVINO, ONNX Runtime, tf2onnx and onnx versions worker/Dockerfile pins (read from its ARG lines), plus the
# worker tests' tools. Its Python is $(PYTHON), this machine's (the CPU image's is python:3.12-slim's).
IMAGE_VENV  := .venv-image
IMAGE_STAMP := $(IMAGE_VENV)/.installed
dockerfile_arg = $(shell sed -n 's/^ARG $(1)=//p' worker/Dockerfile)
# As the image: tensorflow-cpu on x86_64, tensorflow (CPU-only there) on arm64.
IMAGE_TENSORFLOW := $(if $(filter x86_64 amd64 AMD64,$(shell uname -m)),tensorflow-cpu,tensorflow)

# The report page's browser test drives Debian's chromium through chromedriver; apt installs them when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-fast test-image-env browser lint bench bench-scale clean

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

$(IMAGE_STAMP): worker/requirements.txt worker/Dockerfile requirements-test-image.txt
	rm -rf $(IMAGE_VENV)
	$(PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/python -m pip install --quiet -r worker/requirements.txt \
		"$(IMAGE_TENSORFLOW)==$(call dockerfile_arg,TF_VERSION)" \
		"keras==$(call dockerfile_arg,KERAS_VERSION)" \
		"openvino==$(call dockerfile_arg,OPENVINO_VERSION)" \
		"onnxruntime==$(call dockerfile_arg,ONNXRUNTIME_VERSION)" \
		"tf2onnx==$(call dockerfile_arg,TF2ONNX_VERSION)" \
		"onnx==$(call dockerfile_arg,ONNX_VERSION)" \
		-r requirements-test-image.txt
	touch $(IMAGE_STAMP)

## Run a whole backfill on the local cloud (emulated AWS, real Keras predictions).
demo: $(STAMP)
	$(BIN)/spotfill demo

## The whole test suite: unit, moto, Step Functions and local-cloud end-to-end tests in .venv, and the worker
## tests once, in the image's dependency set (as test-image-env). The image's pins are also checked against .venv,
## whose worker the end-to-end tests run. The two venvs and the browser are built side by side, then .ci/test runs
## both tiers side by side (the worker tier one test at a time, the rest over three xdist workers; TEST_WORKERS and
## TEST_IMAGE_WORKERS set them), under a deep TMPDIR, and fails if a process the tests started outlives them.
test:
	$(MAKE) --no-print-directory -j3 $(STAMP) $(IMAGE_STAMP) browser
	VENV=$(VENV) IMAGE_VENV=$(IMAGE_VENV) .ci/test

## Headless chromium and chromedriver for the report page's browser test (Debian packages).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

## The worker tests in a clean venv holding exactly the worker image's CPU dependencies (no Docker needed).
test-image-env: $(IMAGE_STAMP)
	PYTHONPATH=worker:src:functions $(IMAGE_VENV)/bin/python -m pytest -n 2 --dist loadfile tests/worker

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

## The scale rehearsal: one run through the real handlers and boto3 against a local endpoint, 1,000 emulated
## instances, per-stage CPU, memory and AWS calls projected to Lambda; writes bench/scale_results.json.
## SCALE_ARGS picks the size (e.g. SCALE_ARGS="--shards 100000" where a million takes too long here).
SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) $(IMAGE_VENV) .pytest_cache .ruff_cache .aws-sam build
