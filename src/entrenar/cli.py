"""The `entrenar` command line: parse arguments, build a config, call the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from entrenar import __version__

__all__ = ["build_parser", "main"]


def _checked(
    parse: Callable[[str], float], what: str, ok: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse type: parse the text, then check it, each failure saying what was expected."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return convert


_positive_int = _checked(int, "a whole number", lambda v: v >= 1, "must be at least 1")
_positive_float = _checked(float, "a number", lambda v: 0 < v < float("inf"), "must be a positive number")
_momentum = _checked(float, "a number", lambda v: 0 <= v < 1, "must be in [0, 1)")
_seed = _checked(int, "a whole number", lambda v: v >= 0, "must be 0 or more")


def build_parser() -> argparse.ArgumentParser:
    from entrenar.demo import DemoConfig

    d = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="entrenar",
        description="entrenar: training and fine-tuning you can read and trust "
        "(tape autograd on NumPy with verified gradients).",
    )
    parser.add_argument("--version", action="version", version=f"entrenar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train an MLP on scikit-learn's 8x8 digits (a few seconds on a laptop CPU)",
        description="Train an MLP 64-HIDDEN-HIDDEN-10 with ReLU on scikit-learn's bundled 8x8 "
        "handwritten digits (80/20 stratified split), using entrenar's autograd and SGD with "
        "momentum. Prints train loss, train and test accuracy and throughput per epoch. "
        "Needs scikit-learn: pip install 'entrenar[demo]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--epochs", type=_positive_int, default=d.epochs, help="passes over the training set")
    demo.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="mini-batch size")
    demo.add_argument("--lr", type=_positive_float, default=d.lr, help="learning rate")
    demo.add_argument("--momentum", type=_momentum, default=d.momentum, help="SGD momentum")
    demo.add_argument("--hidden", type=_positive_int, default=d.hidden, help="width of both hidden layers")
    demo.add_argument("--seed", type=_seed, default=d.seed, help="seed of the split, init and batch order")
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from entrenar.demo import DemoConfig, MissingDependencyError, run_demo

    config = DemoConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        hidden=args.hidden,
        seed=args.seed,
    )
    try:
        run_demo(config, log=lambda line: print(line, flush=True))
    except MissingDependencyError as e:
        print(f"entrenar demo: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `entrenar` script and `python -m entrenar`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
