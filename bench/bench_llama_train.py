"""QLoRA training of SmolLM2-135M-Instruct: entrenar (base packed) against PyTorch + PEFT, same run;
and peak memory of the QLoRA fine-tune against the same fine-tune on a float32 base.

The workload is the shipped config (src/entrenar/configs/smollm2-shakespeare-qlora.yaml): LoRA r 16,
alpha 32, dropout 0.05 on q/k/v/o/gate/up/down_proj of all 30 layers, AdamW, clipping at 1.0, blocks
of max_length tokens from Shakespeare's training works, batch_size blocks a step (4 x 128 unless
--batch-size / --max-length say otherwise). Every variant trains on the SAME list of batches:

    entrenar QLoRA     the job's model (build_causal_model, lora.quantize=gguf: the Q4_1 / Q8_0
                       blocks of the GGUF file kept packed, dequantized tile by tile) and AdamW
    torch + PEFT LoRA  transformers' LlamaForCausalLM from the same GGUF file (dequantized to float32),
                       peft.get_peft_model with the same LoraConfig, A matrices copied from entrenar's,
                       torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, torch threads = NumPy's BLAS

Before timing both must compute the same loss at step 0 (B = 0: the base models' loss; within 1e-3
relative, the GGUF dequantized alike). Rounds are interleaved (the order alternates); a round times
every timed batch once per variant.

    tokens/s = predicted tokens of the timed batches / seconds of the round (median over rounds)

Memory: fresh subprocesses (`--child memory`) build the job's model with lora.quantize=gguf and with
lora.quantize=null (float32 base), run --mem-steps training steps, and report the process's peak
resident memory (VmHWM) and the resident memory after building the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from common import label, numpy_blas_threads, print_header, require_torch, write_results

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src" / "entrenar" / "configs" / "smollm2-shakespeare-qlora.yaml"
LOSS_RTOL = 1e-3
TORCH = "torch + PEFT LoRA"
OURS = "entrenar QLoRA"


def _config(overrides: list[str]) -> Any:
    from entrenar.config import load_config

    return load_config(CONFIG, overrides)


def _batches(config: Any, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` training batches of epoch 0, as the job's loader gives them."""
    from entrenar.data.text import BlockLoader
    from entrenar.finetune.causal import load_lm_data, resolve_gguf
    from entrenar.models.gguf import gguf_config, open_gguf
    from entrenar.models.gguf_tokenizer import gguf_tokenizer

    reader = open_gguf(resolve_gguf(config.model.path))
    llama = gguf_config(reader)
    eos = llama.eos_token_id
    eos_id = int(eos[0] if isinstance(eos, list) else eos)
    data = load_lm_data(config, gguf_tokenizer(reader), eos_id, llama.max_position_embeddings)
    loader = BlockLoader(data.train, config.causal_lm.batch_size, shuffle=True, seed=config.causal_lm.seed)
    return list(islice(loader.epoch_batches(0), count))


def _predicted(batches: list[dict[str, np.ndarray]]) -> int:
    return int(sum(int((b["labels"] != -100).sum()) for b in batches))


class EntrenarRun:
    """The job's model and optimizer; `step` is one Trainer optimizer step (one micro-batch)."""

    def __init__(self, config: Any) -> None:
        from entrenar.finetune.causal import build_causal_model, resolve_gguf
        from entrenar.models.gguf import open_gguf
        from entrenar.optim import AdamW

        self.config = config
        self.model = build_causal_model(config, open_gguf(resolve_gguf(config.model.path)), "bench")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optimizer
        self.opt = AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        from entrenar.optim import clip_grad_norm_
        from entrenar.train import lm_loss

        self.model.train()
        self.opt.zero_grad()
        loss, _ = lm_loss(self.model, batch)
        loss.backward()
        clip_grad_norm_(self.params, self.config.training.max_grad_norm)
        self.opt.step()
        return float(loss.item())


class TorchRun:
    """transformers + peft on the same GGUF, A matrices copied from `ours`."""

    def __init__(self, torch: Any, config: Any, ours: EntrenarRun) -> None:
        import peft
        import transformers

        from entrenar.finetune.causal import resolve_gguf

        self.torch = torch
        path = resolve_gguf(config.model.path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        s = config.lora
        lc = peft.LoraConfig(
            r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules),
            task_type="CAUSAL_LM",
        )  # fmt: skip
        self.model = peft.get_peft_model(hf, lc)
        theirs = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in ours.model.named_parameters():
                if ".lora_A." in name:
                    theirs[name].copy_(torch.from_numpy(p.data))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optimizer
        self.opt = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.clip = config.training.max_grad_norm

    def step(self, batch: dict[str, np.ndarray]) -> float:
        torch = self.torch
        self.model.train()
        self.opt.zero_grad()
        logits = self.model(input_ids=torch.from_numpy(batch["input_ids"])).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            torch.from_numpy(batch["labels"]).reshape(-1),
            ignore_index=-100,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        return float(loss.item())


def _vm(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child_memory(overrides: list[str], steps: int) -> None:
    """Build the job's model, train `steps` steps, print {"built_rss", "peak"} as JSON on the last line."""
    config = _config(overrides)
    batches = _batches(config, steps)
    run = EntrenarRun(config)
    built = _vm("VmRSS")
    for b in batches:
        run.step(b)
    print(json.dumps({"built_rss": built, "peak": _vm("VmHWM")}))


def measure_memory(overrides: list[str], steps: int) -> dict[str, dict[str, int | None]]:
    out = {}
    for name, quantize in (("QLoRA (gguf base)", "gguf"), ("LoRA (float32 base)", "null")):
        cmd = [sys.executable, __file__, "--child", "memory", "--mem-steps", str(steps), "--", *overrides]
        cmd.append(f"lora.quantize={quantize}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {name} failed:\n{done.stderr[-2000:]}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=3, help="timed batches per round (the same list)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--mem-steps", type=int, default=2, help="training steps of each memory child")
    parser.add_argument("--batch-size", type=int, default=None, help="blocks a step (default: the config's)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens a block (default: the config's)")
    parser.add_argument("--skip-memory", action="store_true", help="time only")
    parser.add_argument("--child", choices=["memory"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"causal_lm.batch_size={args.batch_size}")
    if args.max_length is not None:
        overrides.append(f"causal_lm.max_length={args.max_length}")
    if args.child == "memory":
        child_memory(overrides, args.mem_steps)
        return
    if args.batches < 1 or args.rounds < 1 or args.warmup < 0 or args.mem_steps < 1:
        parser.error("--batches, --rounds and --mem-steps must be >= 1, --warmup >= 0")
    torch = require_torch()
    torch.set_num_threads(numpy_blas_threads())
    config = _config(overrides)
    c = config.causal_lm
    info = print_header(
        f"QLoRA training of {config.model.path}: LoRA r {config.lora.r} on "
        f"{', '.join(config.lora.target_modules)}, "
        f"{c.batch_size} x {c.max_length} tokens a step, AdamW, clip {config.training.max_grad_norm}"
    )
    load_before = os.getloadavg()
    print(f"   torch {torch.__version__}, threads {torch.get_num_threads()}; load average {load_before}")
    batches = _batches(config, args.warmup + args.batches + 1)
    first, warm, timed = batches[0], batches[1 : 1 + args.warmup], batches[1 + args.warmup :]
    runs: dict[str, Any] = {OURS: EntrenarRun(config)}
    runs[TORCH] = TorchRun(torch, config, runs[OURS])
    step0 = {k: r.step(first) for k, r in runs.items()}
    rel = abs(step0[OURS] - step0[TORCH]) / abs(step0[TORCH])
    print(
        f"   step-0 loss: entrenar {step0[OURS]:.6f}, torch {step0[TORCH]:.6f} (relative difference "
        f"{rel:.1e})"
    )
    if rel > LOSS_RTOL:
        raise SystemExit(
            f"step-0 losses differ by {rel:.2e} > {LOSS_RTOL}: the variants do not compute the same"
        )
    for b in warm:
        for r in runs.values():
            r.step(b)
    tokens = _predicted(timed)
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for i in range(args.rounds):
        for k in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for b in timed:
                runs[k].step(b)
            seconds[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    tok_s = {k: tokens / v for k, v in med.items()}
    for k in runs:
        print(f"   {k:<18} {1e3 * med[k] / len(timed):9.0f} ms/step {tok_s[k]:8.1f} tokens/s")
    speedup = tok_s[OURS] / tok_s[TORCH]
    print(f"   entrenar QLoRA tokens/s / torch + PEFT tokens/s = {speedup:.2f}x (goal > 1)")
    load_after = os.getloadavg()
    print(f"   load average {load_after}")
    del runs
    memory = None
    if not args.skip_memory:
        memory = measure_memory(overrides, args.mem_steps)
        for name, m in memory.items():
            peak, built = m["peak"], m["built_rss"]
            shown = (
                "n/a"
                if peak is None or built is None
                else f"{peak / 2**20:,.0f} MiB peak, {built / 2**20:,.0f} MiB built"
            )
            print(f"   memory {name:<20} {shown}")
    write_results(
        f"llama_train.{args.label or label()}",
        {
            "benchmark": "llama_train",
            "workload": (
                f"SmolLM2-135M QLoRA r{config.lora.r} all projections, {c.batch_size}x{c.max_length} tokens"
            ),
            "ms_per_step": {k: 1e3 * v / len(timed) for k, v in med.items()},
            "tokens_per_s": tok_s,
            "speedup_vs_torch": speedup,
            "round_seconds": seconds,
            "step0_loss": step0,
            "memory": memory,
            "load_average": {"before": list(load_before), "after": list(load_after)},
            "torch_threads": torch.get_num_threads(),
            "blas": info,
        },
    )


if __name__ == "__main__":
    main()
