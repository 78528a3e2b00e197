"""LoRA and QLoRA: measured memory (the original entrenar table, in real bytes) and layer speed.

Three parts, all measured in this run:

1. Memory table. Transformer stacks of pre-LN blocks (q/k/v/o projections and a 4x GELU MLP per
   layer) with LoRA r = 64 on every linear layer: float32 base (LoRA) against NF4 + double-quantized
   base (QLoRA). Small (256-dim, 6 layers) and Medium (768-dim, 12 layers, BERT-base shapes) are built
   whole and their stored bytes summed; Large (4096-dim, 32 layers) is one block measured and
   multiplied by 32 (a float32 copy of it would take 25.8 GB). Goal: QLoRA base bytes <= 0.14x LoRA's.
2. Peak process memory (VmHWM, reset after the model is built) of one forward + backward on Medium,
   batches of 1 and 4 x 128 tokens, each variant in its own subprocess. Goal: QLoRA <= 0.35x LoRA
   float32.
3. Speed of one LoRA linear 4096 x 4096, r 16, 512 tokens, forward + backward (the input requires
   grad, as inside a network), against PyTorch + PEFT on the same layer. Goals: LoRA <= 0.6x PyTorch;
   the QLoRA layer (NF4 + double quant) <= 1.3x entrenar's LoRA float32 layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, require_torch, write_results

GOAL_BYTES = 0.14
GOAL_PEAK = 0.35
GOAL_LORA = 0.6
GOAL_QLORA = 1.3
RANK_TABLE = 64
SIZES = {"Small": (256, 6), "Medium": (768, 12), "Large": (4096, 32)}
PER_LAYER_ONLY = {"Large"}


def build_stack(d: int, layers: int, *, quantize: bool, seed: int = 0, checkpointing: bool = False) -> Any:
    """A stack of pre-LN blocks; with `quantize`, each block's Linears become NF4 + double quant as it
    is built, so a float32 copy of more than one block never exists. With `checkpointing` each block
    runs under `entrenar.nn.checkpoint` (its activations recomputed in backward)."""
    from entrenar import nn
    from entrenar.nn.checkpoint import checkpoint
    from entrenar.quant import quantize_linears

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(seed)
            self.layers: list[nn.Module] = []
            for _ in range(layers):
                block = nn.TransformerBlock(d, max(1, d // 64), 4 * d, generator=rng)
                if quantize:
                    quantize_linears(block, kind="nf4", double_quant=True)
                self.layers.append(block)

        def forward(self, x: Any) -> Any:
            for block in self.layers:
                x = checkpoint(block, x) if checkpointing else block(x)
            return x

    return Blocks()


def lora_config(r: int) -> Any:
    from entrenar.lora import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear")


def stored_bytes(peft_model: Any) -> dict[str, int]:
    """Bytes of the wrapped layers' frozen base weights, of the adapters, and of everything else
    (biases, norms): float32 arrays counted by .nbytes, 4-bit bases by QuantizedTensor.nbytes (codes,
    scales and their scales)."""
    from entrenar.lora import LoraLinear
    from entrenar.quant import QuantLinear

    base = 0
    base_ids = set()
    for _, module in peft_model.named_modules():
        if isinstance(module, LoraLinear):
            layer = module.base_layer
            if isinstance(layer, QuantLinear):
                base += layer.qweight.nbytes
            else:
                base += layer.weight.data.nbytes
                base_ids.add(id(layer.weight))
    adapters = other = 0
    for name, p in peft_model.named_parameters():
        if id(p) in base_ids:
            continue
        if ".lora_" in name:
            adapters += p.data.nbytes
        else:
            other += p.data.nbytes
    return {"base": base, "adapters": adapters, "other": other}


def memory_table() -> dict[str, Any]:
    from entrenar.lora import get_peft_model

    rows: dict[str, Any] = {}
    print(f"-- stored bytes, LoRA r={RANK_TABLE} on every linear layer (q, k, v, o, fc1, fc2)")
    print(f"   {'model':<8} {'layers':>6} {'LoRA base':>12} {'QLoRA base':>12} {'ratio':>7} {'saved':>7} "
          f"{'adapters':>11} {'LoRA total':>12} {'QLoRA total':>12} {'saved':>7}")
    for name, (d, layers) in SIZES.items():
        built = 1 if name in PER_LAYER_ONLY else layers
        per: dict[str, dict[str, int]] = {}
        for variant in ("lora", "qlora"):
            model = build_stack(d, built, quantize=variant == "qlora")
            pm = get_peft_model(model, lora_config(RANK_TABLE))
            b = stored_bytes(pm)
            per[variant] = {k: v * layers // built for k, v in b.items()}
            del pm, model
        lo, ql = per["lora"], per["qlora"]
        lo_total = lo["base"] + lo["adapters"] + lo["other"]
        ql_total = ql["base"] + ql["adapters"] + ql["other"]
        ratio = ql["base"] / lo["base"]
        rows[name] = {"d_model": d, "layers": layers, "measured_layers": built, "lora": lo, "qlora": ql,
                      "base_ratio": ratio, "total_ratio": ql_total / lo_total}
        print(f"   {name:<8} {layers:>6} {_mb(lo['base']):>12} {_mb(ql['base']):>12} {ratio:>6.3f}x "
              f"{1 - ratio:>6.1%} {_mb(lo['adapters']):>11} {_mb(lo_total):>12} {_mb(ql_total):>12} "
              f"{1 - ql_total / lo_total:>6.1%}" + ("  (one layer measured, x32)" if built != layers else ""))
    return rows


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _read_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_child(variant: str, batch: int, checkpointing: bool) -> None:
    """Subprocess body: warm the kernels on a tiny model, build Medium, reset the high-water mark, run
    one forward + backward, print JSON. The warm-up loads numba and compiles (or loads from its cache)
    the kernels the variant uses, so `runtime` is the interpreter with everything loaded but no model."""
    import entrenar
    from entrenar.lora import get_peft_model

    def step(model: Any, b: int, d: int) -> None:
        x = entrenar.tensor(np.random.default_rng(1).standard_normal((b, 128, d), dtype=np.float32))
        out = model(x)
        (out * out).mean().backward()
        model.zero_grad()

    q = variant == "qlora"
    step(get_peft_model(build_stack(64, 1, quantize=q, checkpointing=checkpointing), lora_config(8)), 1, 64)
    runtime = _read_status("VmRSS")
    d, layers = SIZES["Medium"]
    stack = build_stack(d, layers, quantize=q, checkpointing=checkpointing)
    pm = get_peft_model(stack, lora_config(RANK_TABLE))
    built = _read_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(pm, batch, d)
    peak = _read_status("VmHWM")
    print(json.dumps({"variant": variant, "batch": batch, "runtime": runtime, "built": built, "peak": peak}))


def peak_memory(batches: list[int]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    print(f"-- peak process memory (VmHWM) of one forward + backward, Medium, LoRA r={RANK_TABLE} on every "
          "linear layer; runtime = interpreter with numpy and the kernels loaded, before the model")
    for batch in batches:
        for ckpt in (False, True):
            row: dict[str, Any] = {"checkpointing": ckpt}
            for variant in ("lora", "qlora"):
                cmd = [sys.executable, __file__, "--peak-child", variant, "--batch", str(batch)]
                cmd += ["--checkpointing"] if ckpt else []
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
                row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            lo, ql = row["lora"], row["qlora"]
            row["ratio"] = ql["peak"] / lo["peak"]
            row["ratio_above_runtime"] = (ql["peak"] - ql["runtime"]) / (lo["peak"] - lo["runtime"])
            tag = f"batch {batch} x 128{', checkpointed' if ckpt else ''}"
            for v in ("lora", "qlora"):
                r = row[v]
                print(f"   {tag}  {v:<6} runtime {_mb(r['runtime']):>10}, model built "
                      f"{_mb(r['built']):>10}, peak {_mb(r['peak']):>12}")
            print(f"   {tag}  QLoRA / LoRA peak {row['ratio']:.3f}x; above the runtime "
                  f"{row['ratio_above_runtime']:.3f}x (goal <= {GOAL_PEAK}x)")
            res[f"batch{batch}{'_checkpointed' if ckpt else ''}"] = row
    return res


def layer_speed(torch: Any, repeats: int) -> dict[str, Any]:
    import entrenar
    from entrenar import nn
    from entrenar.lora import LoraConfig, get_peft_model

    n_in = n_out = 4096
    tokens, r = 512, 16
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((tokens, n_in), dtype=np.float32)
    g_np = rng.standard_normal((tokens, n_out), dtype=np.float32)

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(n_in, n_out, generator=np.random.default_rng(0))

        def forward(self, x: Any) -> Any:
            return self.proj(x)

    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], init_lora_weights=False)
    ent_lora = get_peft_model(One(), cfg)
    ent_qlora = get_peft_model(One(), cfg, quantize="nf4", double_quant=True)
    ent_qlora_plain = get_peft_model(One(), cfg, quantize="nf4")
    g_t = entrenar.tensor(g_np)

    def ent_step(model: Any) -> Any:
        def step() -> None:
            x = entrenar.tensor(x_np, requires_grad=True)
            (model(x) * g_t).sum().backward()
            model.zero_grad()

        return step

    import peft

    class TOne(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(n_in, n_out)

        def forward(self, x: Any) -> Any:
            return self.proj(x)

    tcfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], init_lora_weights=False)
    t_model = peft.get_peft_model(TOne(), tcfg)
    xt_np, gt = torch.from_numpy(x_np), torch.from_numpy(g_np)

    def torch_step() -> None:
        x = xt_np.clone().requires_grad_(True)
        (t_model(x) * gt).sum().backward()
        t_model.zero_grad(set_to_none=True)

    steps = {"entrenar LoRA": ent_step(ent_lora), "entrenar QLoRA nf4+dq": ent_step(ent_qlora),
             "entrenar QLoRA nf4": ent_step(ent_qlora_plain), "torch + peft LoRA": torch_step}
    rounds = 3
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            samples[k].append(measure(fn, repeats=repeats, warmup=2).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"-- LoRA linear {n_in}x{n_out}, r {r}, {tokens} tokens, forward + backward "
          f"(median of {rounds} rounds)")
    for k in steps:
        print(f"   {k:<22} {ms[k]:9.2f} ms  ({ms[k] / ms['torch + peft LoRA']:5.2f}x torch)")
    res = {
        "ms": ms,
        "round_medians_ms": samples,
        "lora_vs_torch": ms["entrenar LoRA"] / ms["torch + peft LoRA"],
        "qlora_vs_lora": ms["entrenar QLoRA nf4+dq"] / ms["entrenar LoRA"],
        "qlora_plain_vs_lora": ms["entrenar QLoRA nf4"] / ms["entrenar LoRA"],
    }
    print(f"   LoRA / torch {res['lora_vs_torch']:.2f}x (goal <= {GOAL_LORA}x); QLoRA nf4+dq / LoRA "
          f"{res['qlora_vs_lora']:.2f}x, nf4 / LoRA {res['qlora_plain_vs_lora']:.2f}x "
          f"(goal <= {GOAL_QLORA}x)")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per round of the speed part")
    parser.add_argument("--parts", default="memory,peak,speed", help="comma-separated subset")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    parser.add_argument("--peak-batches", default="1,4", help="batch sizes (x 128 tokens) of the peak part")
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child, args.batch, args.checkpointing)
        return
    torch = require_torch()
    torch.set_num_threads(numpy_blas_threads())
    info = print_header("LoRA / QLoRA memory and speed")
    parts = set(args.parts.split(","))
    payload: dict[str, Any] = {"benchmark": "lora", "blas": info, "torch_version": torch.__version__,
                               "torch_threads": torch.get_num_threads()}
    if "memory" in parts:
        payload["memory_table"] = memory_table()
    if "peak" in parts:
        payload["peak_memory"] = peak_memory([int(b) for b in args.peak_batches.split(",")])
    if "speed" in parts:
        speed = layer_speed(torch, args.repeats)
        payload["speed"] = speed
        payload |= {"entrenar_ms": speed["ms"]["entrenar LoRA"], "torch_ms": speed["ms"]["torch + peft LoRA"],
                    "ratio": speed["lora_vs_torch"], "goal_ratio": GOAL_LORA}
    write_results(f"lora.{args.label or label()}", payload)


if __name__ == "__main__":
    main()
