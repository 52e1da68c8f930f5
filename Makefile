# medres: the two commands of the README are `make demo` and `make test`.
# Override the torch build with e.g. `make demo TORCH_SPEC="torch==2.13.0 --index-url ..."`
# (torch is installed on its own first, so an --index-url applies to torch alone).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
OUT ?= demo_out

.PHONY: install dev demo demo-model test lint sample-data bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e .
	touch $@

# the tests cover the exported-network runtimes too (medres export, predict --runtime)
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,onnx,openvino]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

## run the main job on sample_data/: list the scans, then predict, report and evaluate them (medres demo)
demo: install
	$(BIN)/medres inspect sample_data
	$(BIN)/medres demo --out $(OUT)

## retrain the bundled demo model (about 2 CPU minutes) from sample_data/ct_train
demo-model: install
	rm -rf models/demo_ct_3d
	$(BIN)/medres train pipelines/demo_ct_3d.yaml --data sample_data/ct_train --out models/demo_ct_3d

## check the system packages (medres doctor), lint, type-check and run the tests
## (real-data tests skip when ../shared/data is absent)
test: dev lint
	$(BIN)/medres doctor --no-gpu
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check medres tests benchmarks scripts
	$(BIN)/ruff format --check medres tests benchmarks scripts
	$(BIN)/mypy medres

## regenerate sample_data/ (byte-identical; tests check it)
sample-data: install
	$(BIN)/python -m medres.synthetic sample_data

bench: dev
	$(BIN)/pip install --quiet SimpleITK
	$(BIN)/python benchmarks/bench_dicom_load.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_evaluate.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
