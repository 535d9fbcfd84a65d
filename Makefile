# Every target goes through `setup`, which creates .venv/ once and repairs it when broken.
VENV := .venv
PY := $(VENV)/bin/python
# torch's OpenMP threads spin-wait by default, which is 5-10x slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
LINT_PATHS := $(wildcard panoptic_ext panoptic_pq tests tools benchmarks demo train_net.py setup.py)
# Second venv: detectron2 main built with its compiled ops from a source tarball (make test-d2main).
D2MAIN_VENV := .venv-d2main
D2MAIN_TARBALL ?= ../shared/detectron2-main-02b5c4e.tar.gz

.PHONY: setup setup-d2main train test test-d2main test-slow lint format bench clean-venv gpu-bundle \
	gpu-check

setup:
	bash tools/setup_env.sh

setup-d2main:
	VENV=$(CURDIR)/$(D2MAIN_VENV) CONSTRAINTS=$(CURDIR)/constraints-d2main.txt \
		D2_SOURCE=$(D2MAIN_TARBALL) bash tools/setup_env.sh

train: setup
	$(PY) tools/main_job.py

test: setup lint
	$(PY) -m pytest tests -q

test-d2main: setup-d2main
	$(D2MAIN_VENV)/bin/python -m panoptic_ext.apps.train.collect_env
	$(D2MAIN_VENV)/bin/python -m pytest tests -q

test-slow: setup
	$(PY) -m pytest tests -q --runslow

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m black --check -q $(LINT_PATHS)
	$(PY) -m isort --check-only -q $(LINT_PATHS)

format: setup
	$(PY) -m isort -q $(LINT_PATHS)
	$(PY) -m black -q $(LINT_PATHS)

bench: setup
	$(PY) benchmarks/run_all.py

# GPU check (README): gather detectron2's source and the wheels that tools/gpu_check.sh installs on
# a GPU machine without network into gpu_bundle/; then carry gpu_bundle there and run the script.
gpu-bundle:
	bash tools/gpu_bundle.sh

gpu-check:
	bash tools/gpu_check.sh

clean-venv:
	rm -rf $(VENV) $(D2MAIN_VENV)
