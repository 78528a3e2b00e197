"""Print the results bench/run.sh wrote (bench/results/<bench>.<asis|unset>.json) as one table."""

from __future__ import annotations

import json
import sys

from common import RESULTS_DIR

COLUMNS = {
    "overhead": ("us", "entrenar_us", "torch_us", None),
    "mlp": ("ms", "entrenar_ms", "torch_ms", "numpy_ms"),
    "optim": ("ms", "entrenar_ms", "torch_ms", "numpy_ms"),
    "gpt": ("ms", "entrenar_ms", "torch_ms", None),
    # torch-free: QuantLinear against entrenar's float32 Linear (plain NumPy BLAS) in the numpy column
    "quant": ("ms", "entrenar_ms", None, "numpy_ms"),
    # the LoRA 4096 x 4096 layer against PyTorch + PEFT; the memory parts print their own tables
    "lora": ("ms", "entrenar_ms", "torch_ms", None),
    # one QLoRA fine-tuning step of MiniLM (the shipped config) against PyTorch + PEFT LoRA
    "finetune": ("ms", "entrenar_ms", "torch_ms", None),
    # Medium QLoRA step with checkpointing (entrenar) and without (numpy column); ratio: QLoRA / LoRA
    # peak RSS with checkpointing on both (issue 4's goal)
    "checkpoint": ("ms", "entrenar_ms", None, "numpy_ms"),
    # all-reduce of the largest buffer (64 MB) on 2 ranks: MPIComm (entrenar), raw mpi4py (numpy column);
    # ratio: the worst size's MPIComm / mpi4py
    "dist": ("ms", "entrenar_ms", None, "numpy_ms"),
    # SmolLM2-135M greedy decoding from its Q4_1 GGUF, ms per new token, against transformers' generate
    "generate": ("ms", "entrenar_ms", "torch_ms", None),
}


def main(benches: list[str]) -> None:
    print(f"{'benchmark':<10} {'OpenBLAS env':<24} {'kernel':<10} {'entrenar':>12} {'torch':>12} "
          f"{'numpy':>12} {'ratio':>7} {'goal':>6}")
    for name in benches:
        unit, e_key, t_key, n_key = COLUMNS[name]
        for lab in ("asis", "unset"):
            path = RESULTS_DIR / f"{name}.{lab}.json"
            if not path.exists():
                print(f"{name:<10} {lab:<24} (no results: {path} missing)")
                continue
            r = json.loads(path.read_text())
            env = r["blas"]["env"]
            env_s = "/".join(str(env.get(k) or "-") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
            kernels = {p["architecture"] for p in r["blas"]["threadpools"] if p["internal_api"] == "openblas"}
            kernel = ",".join(sorted(k for k in kernels if k)) or "-"
            numpy_s = f"{r[n_key]:.3f} {unit}" if n_key else "-"
            torch_s = f"{r[t_key]:>9.3f} {unit}" if t_key else "-"
            verdict = "ok" if r["ratio"] <= r["goal_ratio"] else "MISS"
            print(
                f"{name:<10} {lab + ' ' + env_s:<24} {kernel:<10} {r[e_key]:>9.3f} {unit} "
                f"{torch_s:>12} {numpy_s:>12} {r['ratio']:>6.2f}x {r['goal_ratio']:>4}x {verdict}"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(COLUMNS))
