"""The commands that use or convert what training made: predict, eval, merge, quantize, info, init."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from entrenar.cli.common import INPUT_ERRORS, fail, refuse_nonempty, say

__all__ = ["run_eval", "run_info", "run_init", "run_merge", "run_predict", "run_quantize"]


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
