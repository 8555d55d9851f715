# Two entry points, as in the README: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/synthetic
STAMP := $(VENV)/.sgstudy-installed

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

# torch/torchvision are pinned in pyproject.toml: those wheels install from local disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(DATA)/VG-SGG-with-attri.h5: | $(STAMP)
	$(BIN)/sgstudy data synth --out $(DATA)

# A second `make demo` finishes (or just re-reads) the launch already in ray_results.
demo: $(STAMP) $(DATA)/VG-SGG-with-attri.h5
	$(BIN)/sgstudy data check $(DATA)
	$(BIN)/sgstudy baseline --data $(DATA) --split val
	$(BIN)/sgstudy run align-motifs-p --data $(DATA) --preset tiny \
		$(if $(wildcard ray_results/align-motifs-p),--resume)
	$(BIN)/sgstudy report align-motifs-p --out reports_out
	@echo "Compare the runs in the MLflow UI: $(BIN)/sgstudy ui align-motifs-p   (then open the URL it prints)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not slow"

# Every test, the slow end-to-end ones too (24-run grid, SIGINT resume); CI runs `make test`.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP) $(DATA)/VG-SGG-with-attri.h5
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_train.py --data $(DATA)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_study.py
	$(BIN)/python benchmarks/bench_study.py --demo

clean:
	rm -rf $(VENV) $(DATA) mlflow.db optuna.db ray_results reports_out mlartifacts runs
