"""The commands that use or convert what training made: predict, eval, merge, quantize, info, init,
generate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.cli.common import INPUT_ERRORS, fail, refuse_nonempty, say

__all__ = [
    "run_eval",
    "run_generate",
    "run_info",
    "run_init",
    "run_merge",
    "run_predict",
    "run_quantize",
]


def run_predict(args: argparse.Namespace) -> int:
    from entrenar.finetune import load_run

    sentences = list(args.sentences) or [line.strip() for line in sys.stdin if line.strip()]
    if not sentences:
        return fail("predict", "no sentences: give them as arguments, or one per line on stdin")
    try:
        run = load_run(args.run_dir)
    except INPUT_ERRORS as exc:
        return fail("predict", exc)
    probabilities = run.predict(sentences)  # (N, K)
    for text, p in zip(sentences, probabilities, strict=True):
        k = int(p.argmax())
        shown = "\t".join(f"{n}={v:.4f}" for n, v in zip(run.label_names, p, strict=True))
        say(f"{run.label_names[k]}\t{p[k]:.4f}\t{text}" + (f"\t{shown}" if args.all else ""))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from entrenar.finetune import BucketedLoader, evaluate, load_run, load_splits

    try:
        run = load_run(args.run_dir)
        splits = load_splits(run.config.data)
        examples = splits.split(args.split)
        if not examples:
            return fail("eval", f"the run's data has no {args.split} split (data.{args.split} or data.split)")
        if splits.label_names != run.label_names:
            return fail(
                "eval",
                f"the data's labels {list(splits.label_names)} differ from the run's {list(run.label_names)}",
            )
        d = run.config.data
        loader = BucketedLoader(examples, run.tokenizer, d.eval_batch_size, run.max_length, shuffle=False)
    except INPUT_ERRORS as exc:
        return fail("eval", exc)
    m = evaluate(run.model, loader.epoch_batches(0))
    correct = round(m["accuracy"] * len(examples))
    say(
        f"{args.split}: accuracy {100 * m['accuracy']:.2f}% ({correct:,d} of {len(examples):,d}), "
        f"f1 {m['f1']:.4f}, f1_macro {m['f1_macro']:.4f}, loss {m['loss']:.4f}"
    )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from entrenar.finetune.merge import merge_run

    out = Path(args.out_dir)
    try:
        refuse_nonempty(out, args.overwrite, "output folder")
        model = merge_run(args.run_dir, out, onto=args.onto)
    except INPUT_ERRORS as exc:
        return fail("merge", exc)
    n = sum(p.data.size for p in model.parameters())
    say(f"merged (onto the {args.onto} base) into {out}: a BertModel of {n:,d} parameters, and the head")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from entrenar.finetune.quantized import quantize_checkpoint

    out = Path(args.out)
    try:
        refuse_nonempty(out, args.overwrite, "output folder")
        report = quantize_checkpoint(
            args.checkpoint, out, kind=args.kind, block_size=args.block_size, double_quant=args.double_quant
        )
    except INPUT_ERRORS as exc:
        return fail("quantize", exc)
    say(
        f"quantized {len(report.quantized)} weights ({args.kind}, blocks of {args.block_size}"
        f"{', double quant' if args.double_quant else ''}) into {out}: "
        f"{report.bytes_before / 2**20:,.2f} MiB -> {report.bytes_after / 2**20:,.2f} MiB"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from entrenar.finetune.info import describe, format_info

    try:
        info = describe(args.path)
    except INPUT_ERRORS as exc:
        return fail("info", exc)
    for line in format_info(info):
        say(line)
    return 0


def run_init(args: argparse.Namespace) -> int:
    from entrenar.config import default_config_text
    from entrenar.io import atomic_write_text

    path = Path(args.path)
    if path.is_dir():
        return fail("init", f"{path} is a folder: give the config file's path, e.g. {path / 'entrenar.yaml'}")
    if path.exists() and not args.force:
        return fail("init", f"{path} already exists: pass --force to replace it")
    try:
        atomic_write_text(path, default_config_text())
    except INPUT_ERRORS as exc:
        return fail("init", exc)
    say(f"wrote {path}: the default config, every field commented; run it with  entrenar train {path}")
    return 0


def _load_causal_lm(model_path: str | None, adapter: str | None) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, chat template or None) from a GGUF file, a Hugging Face Llama folder, or the
    built-in SmolLM2 GGUF; with the PEFT adapter folder applied when given."""
    from entrenar.assets import smollm2_gguf
    from entrenar.models.chat import folder_chat_template
    from entrenar.models.gguf import llama_from_gguf, open_gguf
    from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer
    from entrenar.models.llama import llama_from_pretrained
    from entrenar.models.tokenizer import load_tokenizer

    path = smollm2_gguf() if model_path is None else Path(model_path)
    model: Any
    if path.is_file():
        reader = open_gguf(path)
        model, tok, template = llama_from_gguf(reader), gguf_tokenizer(reader), gguf_chat_template(reader)
    elif path.is_dir():
        model, tok, template = llama_from_pretrained(path), load_tokenizer(path), folder_chat_template(path)
    else:
        raise FileNotFoundError(f"--model {path}: no such GGUF file or Hugging Face model folder")
    if adapter is not None:
        from entrenar.lora import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tok, template


def _stop_ids(config: Any) -> list[int]:
    eos = config.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def _prompt_ids(tok: Any, text: str, template: str | None, config: Any) -> list[int]:
    """The token ids of one prompt: as a user turn of the chat template when given, else as plain text."""
    if template is None:
        return [int(i) for i in tok.tokenizer.encode(text).ids]
    from entrenar.models.chat import apply_chat_template

    def token(i: Any) -> str | None:
        return None if i is None else tok.tokenizer.id_to_token(int(i if not isinstance(i, list) else i[0]))

    chat = apply_chat_template(
        [{"role": "user", "content": text}],
        template,
        bos_token=token(config.bos_token_id),
        eos_token=token(config.eos_token_id),
    )
    # the template writes the special tokens itself (as transformers' apply_chat_template(tokenize=True))
    return [int(i) for i in tok.tokenizer.encode(chat, add_special_tokens=False).ids]


def _stream_completion(model: Any, tok: Any, ids: list[int], args: argparse.Namespace) -> str:
    """Generate one completion, writing its text to stdout as it comes; stops at a --stop string."""
    from entrenar.models.generate import generate

    new: list[int] = []
    shown = 0
    text = ""
    hold = max((len(s) for s in args.stop), default=1) - 1  # characters that may begin a stop string

    def step(tokens: np.ndarray) -> bool:
        nonlocal shown, text
        new.append(int(tokens[0]))
        text = tok.decode(new)
        cuts = [i for i in (text.find(s) for s in args.stop) if i >= 0]
        if cuts:
            text = text[: min(cuts)]
        ready = len(text) if cuts else len(text) - hold
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            ready = min(ready, len(text) - 1)
        if ready > shown:
            sys.stdout.write(text[shown:ready])
            sys.stdout.flush()
            shown = ready
        return bool(cuts)

    generate(
        model,
        np.array([ids], dtype=np.int64),
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        stop_tokens=_stop_ids(model.config),
        generator=np.random.default_rng(args.seed),
        on_step=step,
    )
    sys.stdout.write(text[shown:] + "\n")
    sys.stdout.flush()
    return text


def run_generate(args: argparse.Namespace) -> int:
    if args.prompts_file is not None:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return fail("generate", f"--prompts-file {args.prompts_file}: cannot read it ({exc})")
        prompts = [line for line in lines if line.strip()]
        if not prompts:
            return fail("generate", f"--prompts-file {args.prompts_file} has no prompts (one per line)")
    else:
        prompts = [args.prompt]
    if any(not s for s in args.stop):
        return fail("generate", "--stop strings must not be empty")
    try:
        model, tok, template = _load_causal_lm(args.model, args.adapter)
        if args.chat and template is None:
            return fail("generate", "--chat: the model has no chat template (tokenizer.chat_template)")
        use = template if args.chat is not False else None
        encoded = [_prompt_ids(tok, p, use, model.config) for p in prompts]
        for i, ids in enumerate(encoded):
            if i:
                say("")
            _stream_completion(model, tok, ids, args)
    except INPUT_ERRORS as exc:
        return fail("generate", exc)
    return 0
