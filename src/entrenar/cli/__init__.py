"""The `entrenar` command line: parse, build a config, call the library.

    entrenar demo                                   an MLP on 8x8 digits (seconds)
    entrenar finetune [KEY=VALUE ...]               QLoRA MiniLM on movie reviews (the shipped config)
    entrenar train CONFIG.yaml [KEY=VALUE ...]      any run config
    entrenar predict RUN_DIR "sentence" ...         classify with a trained run
    entrenar eval RUN_DIR [--split test]            accuracy of a trained run on a split
    entrenar merge RUN_DIR OUT_DIR                  adapter merged into the base: a plain checkpoint
    entrenar quantize CHECKPOINT_DIR OUT            a checkpoint in 4 bits (packed codes + scales)
    entrenar info PATH                              architecture, parameters, bytes by dtype
    entrenar init [PATH]                            write the default config, commented
    entrenar generate --prompt TEXT [--model F.gguf] continue a prompt (default model: SmolLM2-135M)

Bad input (a missing or malformed model folder, config or data; a run directory that exists) is a
message on stderr and exit status 2, without a traceback; an interrupted run says how to resume.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from entrenar.cli.parser import build_parser
from entrenar.runtime import keep_freed_memory

__all__ = ["build_parser", "entry", "main"]


def entry() -> None:
    """The `entrenar` script and `python -m entrenar`: the process is the command's own, so it first
    keeps freed memory for reuse (`entrenar.runtime.keep_freed_memory`: no page faults for the
    activations of every training step), then runs `main` and exits with its status."""
    keep_freed_memory()
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line on `argv` (default: sys.argv[1:]); returns the exit status. Leaves the process's
    malloc settings alone (the `entrenar` script, `entry`, sets them first)."""
    parser = build_parser()
    # KEY=VALUE overrides may come after an option (`train run.yaml --resume a.b=1`), which argparse
    # leaves over: they join the command's overrides, in order; anything else left over is an error
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = handler(args)
    except KeyboardInterrupt:  # a training run says how to resume; elsewhere nothing is half-written
        print(f"\nentrenar {args.command}: interrupted", file=sys.stderr)
        return 130
    return status
