"""The tiny BERT configuration the BERT, LoRA and PEFT-oracle tests share (Hugging Face's field names)."""

TINY_BERT = {
    "vocab_size": 60,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
    "num_labels": 3,
}

# Dropout off, so that train-mode forwards of entrenar and PyTorch can be compared exactly.
TINY_BERT_NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
