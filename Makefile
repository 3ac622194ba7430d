# Two entry points: `make demo` (the main job, on embedded defaults) and `make test`.
# Each does its own set-up: a virtual environment in .venv with the project installed; idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The whole pipeline on real Fashion-MNIST in a few minutes (the demo preset of sweeps.table1: the machinery,
# not the paper's effects; its time: bench/RESULTS.md): the baseline and exp6 at every batch size, then Table I
# beside the paper's numbers and the report in ./demo/report/. Offline without the files it falls back to
# synthetic data and says so. `python -m sweeps.table1 --preset mini` is the real run.
DEMO := $(CURDIR)/demo
DEMO_URI := sqlite:///$(DEMO)/mlflow.db

demo: $(STAMP)
	rm -rf $(DEMO)
	$(PY) -m sweeps.table1 --preset demo --experiments exp1 exp6 --out $(DEMO) --quiet
	@echo; echo "browse the runs with: $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_URI)"

# Two pytest-xdist workers, each module whole on one of them (its module fixtures run once), the modules with the
# most slow tests first (tests/conftest.py); TEST_WORKERS=0 runs everything in this process. The 15 slowest
# tests are listed at the end. Wall time on 2 cores: bench/RESULTS.md, "make test".
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

clean:
	rm -rf $(VENV) demo .pytest_cache
