# make finetune - the main job: QLoRA-fine-tune all-MiniLM-L6-v2 on movie-review sentiment (runs/)
# make demo   - train the demo MLP on 8x8 digits (creates .venv on first use)
# make test   - ruff, mypy and the whole test suite on 2 cores
# make bench  - benchmarks against PyTorch, with the OpenBLAS variables as set and unset
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: finetune demo test lint typecheck unit bench clean

# --overwrite: running it again replaces runs/minilm-sentiment-qlora/ (entrenar finetune alone refuses)
finetune: $(STAMP)
	$(BIN)/entrenar finetune --overwrite

demo: $(STAMP)
	$(BIN)/entrenar demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	PYTHON=$(BIN)/python bash bench/run.sh

# The stamp depends on pyproject.toml, so changed dependencies are installed on the next run.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist src/*.egg-info
