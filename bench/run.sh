#!/usr/bin/env bash
# Run every benchmark twice: with the environment as it is, then with the OpenBLAS tuning variables
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for that one command, and print a table of both.
# Results land in bench/results/<bench>.<asis|unset>.json.
#
# Usage: bench/run.sh            (PYTHON=... picks the interpreter; default .venv/bin/python)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

benches=(overhead mlp optim gpt quant lora finetune checkpoint dist llama_train generate)
for b in "${benches[@]}"; do
    echo
    echo "### $b, environment as is (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-(unset)}, OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-(unset)})"
    "$PYTHON" "bench/bench_$b.py" --label asis
    echo
    echo "### $b, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" "bench/bench_$b.py" --label unset
done

echo
"$PYTHON" bench/table.py "${benches[@]}"
