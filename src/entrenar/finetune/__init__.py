"""Fine-tuning jobs: a run config in, a run directory out (adapter, head, metrics, plot, checkpoints).

    from entrenar.config import load_config
    from entrenar.finetune import load_run, run_job

    result = run_job(load_config(None))           # `entrenar finetune`: QLoRA MiniLM on movie reviews
    run = load_run(result.run_dir)                # the trained classifier, back from its files
    run.predict(["an utterly charming film"])     # class probabilities

Layout: model (the pooled classifier and its head file), data (splits, checks, length-bucketed
batches), probe (accuracy before fine-tuning; evaluation), rundir (the run directory and loading
it), job (the run itself), tools (merge, 4-bit export, info).
"""

from entrenar.finetune.data import BucketedLoader, DataError, Splits, load_splits
from entrenar.finetune.job import (
    JobResult,
    PreparedJob,
    build_optimizer,
    build_scheduler,
    execute_job,
    prepare_job,
    resolve_paths,
    run_job,
)
from entrenar.finetune.model import SequenceClassifier, build_classifier
from entrenar.finetune.probe import ProbeResult, evaluate
from entrenar.finetune.rundir import FinishedRun, RunError, load_run, resolve_model_dir

__all__ = [
    "BucketedLoader",
    "DataError",
    "FinishedRun",
    "JobResult",
    "PreparedJob",
    "ProbeResult",
    "RunError",
    "SequenceClassifier",
    "Splits",
    "build_classifier",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "execute_job",
    "load_run",
    "load_splits",
    "prepare_job",
    "resolve_model_dir",
    "resolve_paths",
    "run_job",
]
