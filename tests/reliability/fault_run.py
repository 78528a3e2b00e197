"""A small training run for the fault tests, run as a real process: `python fault_run.py OUT STEPS`.

It continues OUT's run from its latest checkpoint when there is one, and otherwise starts afresh
(removing what a run killed before its first checkpoint left), so killing it again and again and
starting it again must end exactly where one uninterrupted run ends. It prints "started" when the
training loop begins. Options: --sleep S (seconds per training micro-batch, to be caught mid-step),
--nan-at STEP (the loss of that step is NaN), --nonfinite stop|skip, --save-every N (default 1).
Ctrl-C: exit status 130.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from train_helpers import make_trainer

from entrenar.train import Trainer

SETTINGS: dict[str, Any] = {
    "grad_accumulation_steps": 2,
    "max_grad_norm": 0.5,
    "eval_every": 5,
    "save_every": 1,
    "keep_last": 2,
    "warmup": 3,
}


def build(
    out: Path,
    steps: int,
    *,
    sleep: float = 0.0,
    nan_at: int | None = None,
    nonfinite: str = "stop",
    save_every: int = 1,
) -> Trainer:
    """The run's trainer: resuming OUT's latest checkpoint, or fresh (OUT cleared) when there is none."""
    resume = (out / "checkpoints" / "latest").is_file()
    if not resume and out.exists():
        shutil.rmtree(out)
    settings = {**SETTINGS, "save_every": save_every}
    trainer = make_trainer(
        out, max_steps=steps, schedule_steps=steps, resume=resume, nonfinite=nonfinite, **settings
    )
    loss_fn = trainer.loss_fn

    def loss(model: Any, batch: Any) -> Any:
        value, sums = loss_fn(model, batch)
        if model.training:
            time.sleep(sleep)
            if nan_at is not None and trainer.step + 1 == nan_at:
                value = value * float("nan")
        return value, sums

    trainer.loss_fn = loss
    return trainer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--nan-at", type=int, default=None)
    parser.add_argument("--nonfinite", default="stop")
    parser.add_argument("--save-every", type=int, default=1)
    args = parser.parse_args()
    trainer = build(
        args.out,
        args.steps,
        sleep=args.sleep,
        nan_at=args.nan_at,
        nonfinite=args.nonfinite,
        save_every=args.save_every,
    )
    print("started", flush=True)
    try:
        trainer.train()
    except KeyboardInterrupt as exc:
        print(f"fault_run: {exc}", file=sys.stderr, flush=True)
        return 130
    except FloatingPointError as exc:
        print(f"fault_run: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
