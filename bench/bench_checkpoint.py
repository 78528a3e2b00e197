"""Gradient checkpointing: peak memory and step time of a LoRA / QLoRA forward + backward, with and
without recomputing each block in backward (`entrenar.nn.checkpoint`).

Two parts, every variant in its own subprocess (so that one's peak cannot hide in another's), the
variants of a part interleaved round by round:

1. SmolLM2-135M-Instruct from its GGUF file, base kept packed (Q4_1 / Q8_0 GGMLLinear), LoRA r 16 on
   q/k/v/o/gate/up/down: one language-modelling step (cross-entropy over the vocabulary) on
   batch x seq tokens, `gradient_checkpointing_enable()` off and on.
2. Medium of bench_lora (BERT-base shapes: 768-dim, 12 pre-LN blocks, LoRA r 64 on every linear
   layer), float32 base (LoRA) against NF4 + double quant (QLoRA), checkpointing off and on, batch
   x 128 tokens; the issue-4 goal, QLoRA peak <= 0.35x LoRA's, is read with checkpointing on for both.

Measured per variant: peak process memory (VmHWM, reset after the model is built and warmed up,
and after malloc_trim has handed the heap that loading freed back to the system, so that the step
cannot hide in it), the tracemalloc peak of Python + NumPy allocations during a second, traced
step, and the untraced step's wall time. The JSON's `ratio` is part 2's QLoRA / LoRA peak RSS with
checkpointing on both.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from common import label, print_header, write_results

GOAL_PEAK = 0.35
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _llama(ck: bool) -> tuple[Any, Any]:
    """(peft model, step(batch, seq)) for SmolLM2 with a packed base and LoRA r 16."""
    from entrenar import functional as F
    from entrenar.assets import smollm2_gguf
    from entrenar.lora import LoraConfig, get_peft_model
    from entrenar.models.gguf import llama_from_gguf

    model = llama_from_gguf(smollm2_gguf())
    if ck:
        model.gradient_checkpointing_enable()
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LLAMA_TARGETS), generator=0)
    vocab = model.config.vocab_size

    def step(batch: int, seq: int) -> None:
        ids = np.random.default_rng(1).integers(0, vocab, size=(batch, seq))
        logits = peft(ids)  # (B, T, V)
        F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)).backward()
        peft.zero_grad()

    return peft, step


def _medium(ck: bool, quantize: bool) -> tuple[Any, Any]:
    """(peft model, step(batch, seq)) for bench_lora's Medium stack, each block checkpointed if ck."""
    from bench_lora import SIZES, build_stack, lora_config

    import entrenar
    from entrenar import nn
    from entrenar.lora import get_peft_model
    from entrenar.nn.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        """bench_lora's stack with each block run under checkpoint (same parameter names)."""

        def __init__(self, layers: list[nn.Module]) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x: Any) -> Any:
            for block in self.layers:
                x = checkpoint(block, x)
            return x

    d, layers = SIZES["Medium"]
    stack = build_stack(d, layers, quantize=quantize)
    peft = get_peft_model(Checkpointed(stack.layers) if ck else stack, lora_config(64))

    def step(batch: int, seq: int) -> None:
        x = entrenar.tensor(np.random.default_rng(1).standard_normal((batch, seq, d), dtype=np.float32))
        out = peft(x)
        (out * out).mean().backward()
        peft.zero_grad()

    return peft, step


def child(part: str, variant: str, batch: int, seq: int) -> None:
    """Subprocess body: build, warm up on a short input, reset VmHWM, time one step, read the peak,
    then one traced step for the tracemalloc peak; print JSON."""
    ck = variant.endswith("+ck")
    runtime = _status("VmRSS")
    if part == "llama":
        _, step = _llama(ck)
    else:
        _, step = _medium(ck, quantize=variant.startswith("qlora"))
    step(1, 8)  # loads numba and compiles (or loads from its cache) the kernels
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: the step must fetch its own
    built = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    step(batch, seq)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    tracemalloc.start()
    tracemalloc.reset_peak()
    step(batch, seq)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {"part": part, "variant": variant, "batch": batch, "seq": seq, "runtime": runtime, "built": built}
    print(json.dumps(out | {"peak": peak, "tracemalloc_peak": traced, "step_s": seconds}))


def run_part(part: str, variants: list[str], batch: int, seq: int, rounds: int) -> dict[str, Any]:
    """Every variant once per round, in turn; the median of the rounds per number."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            cmd = [sys.executable, __file__, "--child", part, v, "--batch", str(batch), "--seq", str(seq)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
            runs[v].append(json.loads(done.stdout.strip().splitlines()[-1]))
    res: dict[str, Any] = {}
    for v, rs in runs.items():
        keys = ("built", "peak", "tracemalloc_peak", "step_s")
        res[v] = r = {k: float(np.median([x[k] for x in rs])) for k in keys}
        print(f"   {v:<9} built {_mb(r['built']):>11}  peak RSS {_mb(r['peak']):>11} "
              f"(+{_mb(r['peak'] - r['built'])})  tracemalloc peak {_mb(r['tracemalloc_peak']):>11}  "
              f"step {r['step_s']:7.2f} s")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="llama,medium", help="comma-separated subset")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (x 128 tokens) of part 2")
    parser.add_argument("--llama-batch", type=int, default=4, help="sequences per step of part 1")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence of part 1")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions per variant")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.seq)
        return
    info = print_header("gradient checkpointing: peak memory and step time")
    load = os.getloadavg()
    print(f"   load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes share the cores)")
    parts = set(args.parts.split(","))
    payload: dict[str, Any] = {"benchmark": "checkpoint", "blas": info, "loadavg": load,
                               "goal_ratio": GOAL_PEAK}
    if "llama" in parts:
        print(f"-- SmolLM2-135M GGUF, packed base, LoRA r 16 on 7 projections, {args.llama_batch} x "
              f"{args.seq} tokens")
        r = run_part("llama", ["qlora", "qlora+ck"], args.llama_batch, args.seq, args.rounds)
        plain, ck = r["qlora"], r["qlora+ck"]
        r["peak_ratio"] = (ck["peak"] - ck["built"]) / (plain["peak"] - plain["built"])
        r["tracemalloc_ratio"] = r["qlora+ck"]["tracemalloc_peak"] / r["qlora"]["tracemalloc_peak"]
        r["time_ratio"] = r["qlora+ck"]["step_s"] / r["qlora"]["step_s"]
        print(f"   checkpointing: step memory above the built model {r['peak_ratio']:.3f}x, tracemalloc peak "
              f"{r['tracemalloc_ratio']:.3f}x, step time {r['time_ratio']:.2f}x")
        payload["llama"] = r
    if "medium" in parts:
        print(f"-- Medium (BERT-base shapes), LoRA r 64 on every linear layer, {args.batch} x 128 tokens")
        r = run_part("medium", ["lora", "qlora", "lora+ck", "qlora+ck"], args.batch, 128, args.rounds)
        r["ratio_plain"] = r["qlora"]["peak"] / r["lora"]["peak"]
        r["ratio_ck"] = r["qlora+ck"]["peak"] / r["lora+ck"]["peak"]
        print(f"   QLoRA / LoRA peak RSS: {r['ratio_plain']:.3f}x without checkpointing, "
              f"{r['ratio_ck']:.3f}x with it (goal <= {GOAL_PEAK}x)")
        payload["medium"] = r
        payload |= {"entrenar_ms": 1e3 * r["qlora+ck"]["step_s"], "numpy_ms": 1e3 * r["qlora"]["step_s"],
                    "ratio": r["ratio_ck"]}
    write_results(f"checkpoint.{args.label or label()}", payload)


if __name__ == "__main__":
    main()
