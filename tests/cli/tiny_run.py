"""A tiny BERT checkpoint, a WordLevel tokenizer and a small labelled CSV, all built in a test's folder,
and a config that fine-tunes on them in a second or two."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from entrenar.models import save_pretrained
from entrenar.nn.bert import BertConfig, BertModel

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
POSITIVE = ["good", "great", "fun", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor"]
NEUTRAL = ["the", "movie", "film", "plot", "was", "a", "story", "acting", "and", "very", "."]
WORDS = [*POSITIVE, *NEGATIVE, *NEUTRAL]
TINY = {
    "vocab_size": len(SPECIALS) + len(WORDS),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
}


def write_model(folder: Path, seed: int = 0) -> Path:
    """A random tiny BertModel as a Hugging Face checkpoint folder, with a WordLevel tokenizer.json."""
    model = BertModel(BertConfig(**TINY), generator=np.random.default_rng(seed)).eval()
    save_pretrained(model, folder)
    vocab = {t: i for i, t in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def sentences(n: int, seed: int = 0, max_words: int = 8) -> list[tuple[str, str]]:
    """n (text, label) rows: neutral filler around one sentiment word; the word decides the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = str(rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        filler = [str(w) for w in rng.choice(NEUTRAL, size=int(rng.integers(1, max_words)))]
        filler.insert(int(rng.integers(0, len(filler) + 1)), word)
        rows.append((" ".join(filler), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tiny_config(
    model_dir: Path, train_csv: Path, out_dir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A config dict for the tiny model and data: ~12 steps, evaluation and checkpoints included."""
    config: dict[str, Any] = {
        "model": {"path": str(model_dir), "pooling": "mean"},
        "data": {
            "dataset": None,
            "train": str(train_csv),
            "split": [0.6, 0.2, 0.2],
            "max_length": 16,
            "batch_size": 8,
            "eval_batch_size": 16,
            "bucket_batches": 2,
        },
        "lora": {
            "r": 4,
            "alpha": 8,
            "target_modules": ["query", "value"],
            "quantize": "nf4",
            "block_size": 16,
        },
        "optimizer": {"lr": 0.01, "head_lr": 0.01},
        "training": {
            "epochs": None,
            "max_steps": 12,
            "eval_every": 6,
            "save_every": 4,
            "log_every": 2,
            "probe": {"steps": 50, "lr": 0.05, "max_train": None},
            "progress": False,
        },
        "output": {"dir": str(out_dir), "name": "tiny", "plot": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class TinySetup:
    """The folders and files one test works with."""

    def __init__(self, root: Path, n: int = 80) -> None:
        self.root = root
        self.model_dir = write_model(root / "model")
        self.train_csv = write_csv(root / "reviews.csv", sentences(n))
        self.out_dir = root / "runs"
        self.config_path = root / "run.yaml"
        write_config(self.config_path, tiny_config(self.model_dir, self.train_csv, self.out_dir))

    @property
    def run_dir(self) -> Path:
        return self.out_dir / "tiny"

    def config(self, **sections: dict[str, Any]) -> Path:
        """Write a config with `sections` merged over the tiny one; its path."""
        return write_config(
            self.root / "variant.yaml", tiny_config(self.model_dir, self.train_csv, self.out_dir, **sections)
        )
