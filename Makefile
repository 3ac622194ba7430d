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

# The whole pipeline in a few minutes on a 2-core CPU, from an empty ./demo each time: the baseline and
# exp6 at every batch size of the paper on real Fashion-MNIST at a tiny scale (VGG13 width 0.125, 2,048
# images, 5 epochs: 6.9 min measured on 2 busy cores; exp6 leaves chance (14-20%), the baseline at lr 0.01
# does not in so few steps: not the paper's effects, see bench/RESULTS.md), then Table I rebuilt
# from MLflow beside the paper's numbers and the report (Markdown + HTML + figures) in ./demo/report/. The
# data comes from $BIGBATCH_DATA_DIR, else ../shared/data/fashion-mnist, else a download; offline without
# the files it falls back to synthetic smoke data, says so in one line, and the table names the dataset.
# The logic lives in sweeps.table1 (the demo preset); `python -m sweeps.table1 --preset mini` is the real run.
DEMO := $(CURDIR)/demo
DEMO_URI := sqlite:///$(DEMO)/mlflow.db

demo: $(STAMP)
	rm -rf $(DEMO)
	$(PY) -m sweeps.table1 --preset demo --experiments exp1 exp6 --out $(DEMO) --quiet
	@echo; echo "browse the runs with: $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_URI)"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo .pytest_cache
