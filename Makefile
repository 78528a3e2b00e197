# make finetune - the main job: QLoRA-fine-tune all-MiniLM-L6-v2 on movie-review sentiment (runs/)
# make demo   - train the demo MLP on 8x8 digits (creates .venv on first use)
# make test   - ruff, mypy and the whole test suite on 2 cores
# make bench  - benchmarks against PyTorch, with the OpenBLAS variables as set and unset
# make mutation       - mutation testing of the numerical core, every mutant (long: hours on 2 cores);
#                       resumable: results in mutation-results/full.jsonl, a rerun skips finished mutants
# make mutation-ci    - CI's fixed seeded sample of mutants; fails under 80% killed
# make bench-compare  - rerun fast benchmarks and flag ratios more than 5% worse than bench/baseline.json
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COV_MIN ?= 90
MUTANTS ?= 60
MUTATION_SEED ?= 0
BENCH_COMPARE ?= overhead,mlp

.PHONY: finetune demo test lint typecheck unit bench clean mutation mutation-ci bench-compare

# --overwrite: running it again replaces runs/minilm-sentiment-qlora/ (entrenar finetune alone refuses)
finetune: $(STAMP)
	$(BIN)/entrenar finetune --overwrite

demo: $(STAMP)
	$(BIN)/entrenar demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 --cov --cov-report=term-missing --cov-fail-under=$(COV_MIN) tests

bench: $(STAMP)
	PYTHON=$(BIN)/python bash bench/run.sh

mutation: $(STAMP)
	$(BIN)/python scripts/mutate.py --workers 2 --check-clean --min-score 0 --results mutation-results/full.jsonl
	$(BIN)/python scripts/mutate.py --report mutation-results/full.jsonl

mutation-ci: $(STAMP)
	$(BIN)/python scripts/mutate.py --sample $(MUTANTS) --seed $(MUTATION_SEED) --workers 2

bench-compare: $(STAMP)
	$(BIN)/python bench/compare.py --run $(BENCH_COMPARE) --times 3

# The stamp depends on pyproject.toml, so changed dependencies are installed on the next run.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist src/*.egg-info
