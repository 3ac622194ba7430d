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

# The whole pipeline, offline, on a 2-core CPU in about three minutes, from an empty ./demo each time:
# two smoke sweeps (baseline and exp6: a narrow VGG13 on a few hundred synthetic images, every batch
# size of the paper, 2 epochs: a test of the machinery, not of the paper), then Table I rebuilt from
# MLflow beside the paper's numbers, then the report (Markdown + HTML + figures) in ./demo/report/.
DEMO := $(CURDIR)/demo
DEMO_URI := sqlite:///$(DEMO)/mlflow.db

demo: $(STAMP)
	rm -rf $(DEMO)
	@for exp in exp1 exp6; do \
		echo "== smoke sweep $$exp =="; \
		$(PY) -m sweeps.$$exp --smoke-test --quiet --tracking-uri $(DEMO_URI) \
			--storage-path $(DEMO)/ray_results --name demo-$$exp || exit $$?; \
	done
	@echo; echo "== Table I rebuilt from MLflow (smoke data: 2 epochs, synthetic images) =="
	$(PY) -m analysis.table --tracking-uri $(DEMO_URI) --paper
	$(PY) -m analysis.report --tracking-uri $(DEMO_URI) --out $(DEMO)/report
	@echo; echo "browse the runs with: $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_URI)"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo .pytest_cache
