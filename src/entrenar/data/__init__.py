"""Datasets, splits and batching: labelled text in, deterministic resumable batches of arrays out.

    examples = movie_reviews()                                  # 10,605 labelled sentences
    train, val, test = train_val_test_split(examples, (0.8, 0.1, 0.1), seed=0)   # 8,484 / 1,060 / 1,061
    tok = entrenar.models.load_tokenizer(folder)
    loader = ClassificationLoader(train, tok, batch_size=32, max_length=64, seed=0)

Users' data: `read_examples` (CSV, TSV, JSON Lines with a text and a label column; see its label
rules) and `read_text` (plain text for language modelling, to tokenize and give to `LMLoader`).
Instruction tuning: `shakespeare_pairs` (instruction/response pairs from the works) and
`encode_chat_pairs` (rendered with a chat template, one pair per row, prompts masked).
"""

from entrenar.data.instruct import encode_chat_pairs, shakespeare_pairs
from entrenar.data.loaders import BatchTokenizer, ClassificationLoader, EpochLoader, LMLoader
from entrenar.data.movie_reviews import MOVIE_REVIEW_LABELS, movie_reviews
from entrenar.data.readers import Example, ExampleSet, read_examples, read_text
from entrenar.data.split import split_sizes, train_val_test_split

__all__ = [
    "MOVIE_REVIEW_LABELS",
    "BatchTokenizer",
    "ClassificationLoader",
    "EpochLoader",
    "Example",
    "ExampleSet",
    "LMLoader",
    "encode_chat_pairs",
    "movie_reviews",
    "read_examples",
    "read_text",
    "shakespeare_pairs",
    "split_sizes",
    "train_val_test_split",
]
