"""`entrenar demo`, `entrenar finetune` and `entrenar train`: the commands that train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from entrenar.cli.common import INPUT_ERRORS, fail, say

__all__ = ["run_demo_command", "run_finetune", "run_train"]


def run_demo_command(args: argparse.Namespace) -> int:
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


def _run(command: str, config_path: Path | None, args: argparse.Namespace) -> int:
    """Load the config, check every input, then train; bad input exits 2 before anything is written.
    With --nproc N (not yet an MPI rank) start N ranks of this command; as an MPI rank, train on its
    shard of each batch (rank 0 alone prints and writes)."""
    from entrenar.config import load_config
    from entrenar.distributed import MissingMPIError, launched_by_mpi, world
    from entrenar.finetune import execute_job, prepare_job
    from entrenar.finetune.rundir import CONFIG_FILE
    from entrenar.train.checkpoint import CHECKPOINTS_DIR, LATEST

    nproc = getattr(args, "nproc", None)
    try:
        if nproc is not None and nproc > 1 and not launched_by_mpi():
            from entrenar.distributed.launch import launch

            again = [command, *([str(config_path)] if config_path is not None else []), *args.overrides]
            again += ["--resume"] * args.resume + ["--overwrite"] * args.overwrite + ["--nproc", str(nproc)]
            return launch(nproc, again)
        comm = world()
    except MissingMPIError as exc:
        return fail(command, exc)
    if nproc is not None and launched_by_mpi() and nproc != comm.size:
        return fail(command, ValueError(f"--nproc {nproc}, but MPI started {comm.size} ranks: drop --nproc"))
    log = say if comm.rank == 0 else _quiet
    try:
        config = load_config(config_path, args.overrides)
        prepared = prepare_job(config, overwrite=args.overwrite, resume=args.resume, log=log)
    except INPUT_ERRORS as exc:
        return fail(command, exc)
    try:
        execute_job(prepared, log=log, comm=comm)
    except KeyboardInterrupt:
        run_dir = prepared.run_dir
        if (run_dir / CHECKPOINTS_DIR / LATEST).is_file():
            hint = f"continue it with\n  entrenar train {run_dir / CONFIG_FILE} --resume"
        else:
            hint = "no checkpoint was written yet: start it again with --overwrite"
        print(f"\nentrenar {command}: interrupted ({run_dir}); {hint}", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        print(f"entrenar {command}: training stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _quiet(line: str) -> None:
    """The log of ranks other than 0: they compute what rank 0 prints."""


def run_finetune(args: argparse.Namespace) -> int:
    return _run("finetune", None, args)


def run_train(args: argparse.Namespace) -> int:
    return _run("train", Path(args.config), args)
