# Two entry points, as in the README: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/synthetic
STAMP := $(VENV)/.sgstudy-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch/torchvision are pinned in pyproject.toml: those wheels install from local disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(DATA)/VG-SGG-with-attri.h5: | $(STAMP)
	$(BIN)/sgstudy data synth --out $(DATA)

demo: $(STAMP) $(DATA)/VG-SGG-with-attri.h5
	$(BIN)/sgstudy data check $(DATA)
	$(BIN)/sgstudy baseline --data $(DATA) --split test

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) $(DATA) mlflow.db optuna.db ray_results reports_out
