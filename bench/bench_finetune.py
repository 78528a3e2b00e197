"""QLoRA fine-tuning throughput: `entrenar finetune`'s training step against PyTorch + PEFT, same run.

The workload is the shipped config (src/entrenar/configs/minilm-sentiment-qlora.yaml): all-MiniLM-L6-v2,
LoRA r 8 (alpha 16) on query, key, value and attention.output.dense, mean pooling + linear head, AdamW
(adapters lr, head head_lr, weight decay), gradient clipping at max_grad_norm, batch 32, max length 64,
movie-review sentences of the training split in the job's length-bucketed order (epoch 0, seed 0).
Every variant trains on the SAME list of batches:

    entrenar QLoRA     the job's model (build_classifier: NF4 + double quant base) and optimizer
                       (build_optimizer); one step = Trainer._train_step without the bookkeeping
    entrenar LoRA      the same with lora.quantize=null (float32 base)
    torch + PEFT LoRA  transformers.BertModel from the same checkpoint folder (no pooler, the
                       config's dropout), peft.get_peft_model with the same LoraConfig, the same
                       mean pooling, head (copied from entrenar's), torch.optim.AdamW param groups and
                       torch.nn.utils.clip_grad_norm_

Before timing, both sides must compute the same thing: entrenar LoRA's step-0 logits equal torch's
within 1e-4 (A matrices and head copied; B = 0), entrenar QLoRA's equal those of a torch model whose
base weights are entrenar's dequantized NF4 weights, and the warm-up losses of entrenar LoRA and torch
agree. Rounds are interleaved (the variant order rotates); each round times every timed batch once.

    tokens/s  = real (non-padding) tokens of the timed batches / seconds of the round
    samples/s = sentences of the timed batches / seconds of the round
    ratio     = entrenar ms/step / torch ms/step   (bench/table.py: lower is better, goal <= 1.0)

The medians over rounds are reported; tokens/s ratios are entrenar / torch (higher is better).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
import warnings
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from common import label, numpy_blas_threads, print_header, require_torch, write_results

GOAL = 1.0
LOGIT_TOL = 1e-4  # entrenar vs torch logits at step 0, same float32 weights
LOSS_RTOL = 1e-3  # entrenar vs torch warm-up losses (a few AdamW steps amplify float rounding)
VARIANTS = ("entrenar QLoRA", "entrenar LoRA", "torch + PEFT LoRA")


def load_batches(config: Any, count: int) -> tuple[Path, tuple[str, ...], list[dict[str, np.ndarray]]]:
    """(model folder, label names, the first `count` training batches of epoch 0) as the job makes them."""
    from entrenar.finetune import BucketedLoader, load_splits, resolve_model_dir
    from entrenar.finetune.rundir import effective_max_length
    from entrenar.models import load_tokenizer

    model_dir = resolve_model_dir(config.model.path)
    max_length, _ = effective_max_length(config, model_dir)
    splits = load_splits(config.data)
    d = config.data
    loader = BucketedLoader(
        splits.train, load_tokenizer(model_dir), batch_size=d.batch_size, max_length=max_length,
        shuffle=True, seed=d.seed, bucket_batches=d.bucket_batches,
    )  # fmt: skip
    batches = list(islice(loader.epoch_batches(0), count))
    if len(batches) < count:
        raise ValueError(f"the training split gives {len(batches)} batches; {count} were asked for")
    return model_dir, splits.label_names, batches


def real_tokens(batches: list[dict[str, np.ndarray]]) -> int:
    """Non-padding tokens (attention_mask == 1, [CLS] and [SEP] included) of `batches`."""
    return int(sum(int(b["attention_mask"].sum()) for b in batches))


class EntrenarRun:
    """The job's classifier and optimizer; `step` is the Trainer's optimizer step (one micro-batch)."""

    def __init__(self, config: Any, model_dir: Path, num_labels: int) -> None:
        from entrenar.finetune import build_classifier, build_optimizer

        self.model = build_classifier(config, model_dir, num_labels)
        self.optimizer = build_optimizer(config, self.model)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.max_grad_norm = config.training.max_grad_norm

    def step(self, batch: dict[str, np.ndarray]) -> float:
        from entrenar.optim import clip_grad_norm_
        from entrenar.train import classification_loss

        self.model.train()
        self.optimizer.zero_grad()
        loss, _ = classification_loss(self.model, batch)
        value = float(loss.item())
        loss.backward()
        if self.max_grad_norm is not None:
            clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        return value

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import entrenar

        self.model.eval()
        with entrenar.no_grad():
            out = self.model(batch["input_ids"], batch["attention_mask"])
        return np.asarray(out.data, dtype=np.float32)  # (B, K)


class TorchRun:
    """PyTorch + PEFT: the same BERT, adapters, pooling, head, AdamW groups and clipping as `ent`.

    The trainable weights (adapters' A and B, head) are copied from `ent`, so both start equal; with
    `dequantized_base`, every base Linear that `ent` holds in 4 bits (QLoRA quantizes all of them,
    adapted or not) gets `ent`'s dequantized weight: the model entrenar's QLoRA computes with.
    """

    def __init__(
        self, torch: Any, config: Any, model_dir: Path, ent: EntrenarRun, *, dequantized_base: bool = False
    ) -> None:
        import peft
        import transformers

        transformers.logging.set_verbosity_error()  # the checkpoint's unused pooler is reported
        transformers.logging.disable_progress_bar()
        if config.model.pooling != "mean":
            raise ValueError(
                f"bench_finetune compares mean pooling only; the config has {config.model.pooling!r}"
            )
        if config.optimizer.name != "adamw":
            raise ValueError(f"bench_finetune compares AdamW only; the config has {config.optimizer.name!r}")
        self.torch = torch
        drop = config.model.encoder_dropout
        extra = {} if drop is None else {"hidden_dropout_prob": drop, "attention_probs_dropout_prob": drop}
        bert = transformers.BertModel.from_pretrained(
            model_dir, add_pooling_layer=False, dtype=torch.float32, **extra
        )
        s = config.lora
        lcfg = peft.LoraConfig(
            r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules)
        )
        with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            self.encoder = peft.get_peft_model(bert, lcfg)
        hidden = bert.config.hidden_size
        num_labels = ent.model.classifier.out_features
        self.dropout = torch.nn.Dropout(config.model.classifier_dropout)
        self.head = torch.nn.Linear(hidden, num_labels)
        self._copy_from(ent, dequantized_base)
        o = config.optimizer
        adapters = [p for p in self.encoder.parameters() if p.requires_grad]
        self.params = adapters + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": adapters, "lr": o.lr},
             {"params": list(self.head.parameters()), "lr": o.head_lr if o.head_lr is not None else o.lr}],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        )  # fmt: skip
        self.max_grad_norm = config.training.max_grad_norm

    def _copy_from(self, ent: EntrenarRun, dequantized_base: bool) -> None:
        from entrenar.quant import QuantLinear

        torch = self.torch
        ours = {n: p for n, p in ent.model.encoder.named_parameters() if p.requires_grad}
        theirs = {n: p for n, p in self.encoder.named_parameters() if p.requires_grad}
        if set(ours) != set(theirs):
            raise ValueError(
                "entrenar's and PEFT's trainable parameters differ: only entrenar "
                f"{sorted(set(ours) - set(theirs))[:4]}, only PEFT {sorted(set(theirs) - set(ours))[:4]}"
            )
        with torch.no_grad():
            for name, p in ours.items():
                theirs[name].copy_(torch.from_numpy(p.data))
            self.head.weight.copy_(torch.from_numpy(ent.model.classifier.weight.data))
            self.head.bias.copy_(torch.from_numpy(ent.model.classifier.bias.data))
            if not dequantized_base:
                return
            replaced = 0
            for name, module in ent.model.encoder.named_modules():
                if isinstance(module, QuantLinear):  # every Linear of the base, adapted or not
                    w = module.dequantize_weight()  # (out, in) float32
                    base: Any = self.encoder.get_submodule(name)  # the same dotted path in PEFT
                    base.weight.copy_(torch.from_numpy(w))
                    replaced += 1
            if replaced == 0:
                raise ValueError("dequantized_base: entrenar's model has no 4-bit base layer")

    def _logits(self, batch: dict[str, np.ndarray]) -> Any:
        torch = self.torch
        ids = torch.from_numpy(batch["input_ids"])
        mask = torch.from_numpy(batch["attention_mask"])
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        m = mask.to(h.dtype)
        # (B, T, C) -> (B, C): the mean over real tokens
        pooled = (m[:, :, None] * h).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.head(self.dropout(pooled))

    def _mode(self, train: bool) -> None:
        self.encoder.train(train)
        self.dropout.train(train)

    def step(self, batch: dict[str, np.ndarray]) -> float:
        torch = self.torch
        self._mode(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self._logits(batch), torch.from_numpy(batch["labels"]))
        value = float(loss.item())
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        return value

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self._mode(False)
        with self.torch.no_grad():
            out: np.ndarray = self._logits(batch).numpy()
        return out


def check_step0(
    torch: Any, configs: dict[str, Any], model_dir: Path, runs: dict[str, Any], batch: dict[str, np.ndarray]
) -> dict[str, float]:
    """Max |logits difference| at step 0 (see the module docstring); raise when over LOGIT_TOL."""
    ent_q, ent_f, t_f = runs["entrenar QLoRA"], runs["entrenar LoRA"], runs["torch + PEFT LoRA"]
    t_dq = TorchRun(torch, configs["entrenar QLoRA"], model_dir, ent_q, dequantized_base=True)
    logits = {
        "ent_lora": ent_f.logits(batch), "torch_lora": t_f.logits(batch),
        "ent_qlora": ent_q.logits(batch), "torch_dequant": t_dq.logits(batch),
    }  # fmt: skip
    del t_dq
    diffs = {
        "lora_vs_torch": float(np.abs(logits["ent_lora"] - logits["torch_lora"]).max()),
        "qlora_vs_torch_dequantized_base": float(np.abs(logits["ent_qlora"] - logits["torch_dequant"]).max()),
        "qlora_vs_float_base": float(np.abs(logits["ent_qlora"] - logits["torch_lora"]).max()),
    }
    print(
        f"-- step 0, {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} batch, max |logit diff|: "
        f"entrenar LoRA vs torch {diffs['lora_vs_torch']:.2e}, entrenar QLoRA vs torch on the dequantized "
        f"base {diffs['qlora_vs_torch_dequantized_base']:.2e} (tolerance {LOGIT_TOL:g}); QLoRA vs float "
        f"base {diffs['qlora_vs_float_base']:.2e} (the 4-bit rounding)"
    )
    for key in ("lora_vs_torch", "qlora_vs_torch_dequantized_base"):
        if not diffs[key] <= LOGIT_TOL:
            raise AssertionError(f"step-0 logits differ: {key} max |diff| {diffs[key]:.3e} > {LOGIT_TOL:g}")
    return diffs


def warm_up(runs: dict[str, Any], batches: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Untimed steps on `batches`; entrenar LoRA's and torch's losses must agree (LOSS_RTOL)."""
    losses = {name: [run.step(b) for b in batches] for name, run in runs.items()}
    ours, theirs = np.array(losses["entrenar LoRA"]), np.array(losses["torch + PEFT LoRA"])
    rel = float(np.max(np.abs(ours - theirs) / np.abs(theirs))) if len(batches) else 0.0
    print(
        f"-- {len(batches)} warm-up steps; losses "
        + "; ".join(f"{k} {' '.join(f'{v:.4f}' for v in vals)}" for k, vals in losses.items())
    )
    print(f"   entrenar LoRA vs torch: max relative loss difference {rel:.2e} (tolerance {LOSS_RTOL:g})")
    if not rel <= LOSS_RTOL:
        raise AssertionError(f"warm-up losses differ: entrenar LoRA {ours} vs torch {theirs}")
    return losses


def time_rounds(
    runs: dict[str, Any], batches: list[dict[str, np.ndarray]], rounds: int
) -> dict[str, list[float]]:
    """Seconds of one pass over `batches` per round and variant; the variant order rotates by round."""
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    clock = time.perf_counter
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            t0 = clock()
            for b in batches:
                run.step(b)
            seconds[name].append(clock() - t0)
        print(
            f"   round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()),
            flush=True,
        )
    return seconds


def profile_top(run: EntrenarRun, batches: list[dict[str, np.ndarray]], top: int = 15) -> str:
    """cProfile of one step per batch: the `top` functions by own time (tottime)."""
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        run.step(b)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round (the same list)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (batches before the timed)"
    )
    parser.add_argument("--profile-steps", type=int, default=2, help="entrenar QLoRA steps under cProfile")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    if args.batches < 1 or args.rounds < 1 or args.warmup < 0 or args.profile_steps < 0:
        parser.error("--batches and --rounds must be >= 1, --warmup and --profile-steps >= 0")
    torch = require_torch()
    torch.set_num_threads(numpy_blas_threads())
    from entrenar.config import load_config

    base = load_config(None)
    configs = {"entrenar QLoRA": base, "entrenar LoRA": load_config(None, ["lora.quantize=null"])}
    s, d = base.lora, base.data
    info = print_header(
        f"fine-tune {base.model.path}: LoRA r {s.r} on {', '.join(s.target_modules)}, batch {d.batch_size}, "
        f"max length {d.max_length}, AdamW, clip {base.training.max_grad_norm}: one training step"
    )
    load_before = os.getloadavg()
    print(
        f"   torch {torch.__version__}, torch threads {torch.get_num_threads()}; "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    model_dir, label_names, all_batches = load_batches(base, args.warmup + args.batches)
    warm, timed = all_batches[: max(args.warmup, 1)], all_batches[args.warmup :]
    tokens, samples = real_tokens(timed), sum(int(b["labels"].shape[0]) for b in timed)
    padded = sum(int(b["input_ids"].size) for b in timed)
    print(
        f"   {len(timed)} timed batches: {samples} sentences, {tokens} real tokens "
        f"({tokens / samples:.1f} a sentence; {padded} with padding)"
    )

    runs: dict[str, Any] = {k: EntrenarRun(c, model_dir, len(label_names)) for k, c in configs.items()}
    runs["torch + PEFT LoRA"] = TorchRun(torch, configs["entrenar LoRA"], model_dir, runs["entrenar LoRA"])
    checks = check_step0(torch, configs, model_dir, runs, warm[0])
    warm_losses = warm_up(runs, all_batches[: args.warmup])

    print(f"-- {args.rounds} interleaved rounds of {len(timed)} steps")
    seconds = time_rounds(runs, timed, args.rounds)
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    ms = {k: 1e3 * v / len(timed) for k, v in med.items()}
    tok_s = {k: tokens / v for k, v in med.items()}
    smp_s = {k: samples / v for k, v in med.items()}
    torch_key = "torch + PEFT LoRA"
    speedup = {k: tok_s[k] / tok_s[torch_key] for k in runs}
    print("-- median of the rounds")
    for k in runs:
        print(
            f"   {k:<18} {ms[k]:8.1f} ms/step {tok_s[k]:9.0f} tokens/s {smp_s[k]:8.1f} samples/s  "
            f"({speedup[k]:.2f}x torch tokens/s)"
        )
    ratio = ms["entrenar QLoRA"] / ms[torch_key]
    verdict = "meets" if ratio <= GOAL else "misses"
    print(
        f"   entrenar QLoRA time / torch time {ratio:.2f}x ({verdict} the goal <= {GOAL}x); "
        f"entrenar LoRA {ms['entrenar LoRA'] / ms[torch_key]:.2f}x"
    )
    load_after = os.getloadavg()
    print(f"   load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    profile = ""
    if args.profile_steps:
        profile = profile_top(runs["entrenar QLoRA"], all_batches[args.warmup :][: args.profile_steps])
        print(f"\n   cProfile of {args.profile_steps} entrenar QLoRA steps, top 15 by tottime:")
        print(profile)
    write_results(
        f"finetune.{args.label or label()}",
        {
            "benchmark": "finetune",
            "workload": (
                f"{base.model.path} LoRA r{s.r} on {'/'.join(s.target_modules)}, {len(timed)} batches of "
                f"{d.batch_size} movie-review sentences (max length {d.max_length}, bucketed), AdamW, clip"
            ),
            "entrenar_ms": ms["entrenar QLoRA"],
            "torch_ms": ms[torch_key],
            "ratio": ratio,
            "goal_ratio": GOAL,
            "entrenar_lora_ms": ms["entrenar LoRA"],
            "lora_ratio": ms["entrenar LoRA"] / ms[torch_key],
            "ms_per_step": ms,
            "tokens_per_s": tok_s,
            "samples_per_s": smp_s,
            "tokens_per_s_vs_torch": speedup,
            "round_seconds": seconds,
            "timed_batches": len(timed),
            "real_tokens": tokens,
            "padded_tokens": padded,
            "sentences": samples,
            "step0_max_abs_logit_diff": checks,
            "warmup_losses": warm_losses,
            "load_average": {"before": list(load_before), "after": list(load_after)},
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas": info,
            "profile_top15": profile,
        },
    )


if __name__ == "__main__":
    main()
