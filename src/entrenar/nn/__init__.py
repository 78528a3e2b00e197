"""Modules: parameters discovered from attributes, PyTorch-named layers, and ready models."""

from entrenar.nn import init
from entrenar.nn.attention import MultiheadAttention
from entrenar.nn.bert import BertConfig, BertForSequenceClassification, BertModel
from entrenar.nn.gpt import GPT, GPTConfig
from entrenar.nn.layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from entrenar.nn.module import IncompatibleKeys, Module, Parameter
from entrenar.nn.transformer import FeedForward, SwiGLUFeedForward, TransformerBlock

__all__ = [
    "GPT",
    "BertConfig",
    "BertForSequenceClassification",
    "BertModel",
    "Dropout",
    "Embedding",
    "FeedForward",
    "GPTConfig",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "Module",
    "MultiheadAttention",
    "Parameter",
    "RMSNorm",
    "SwiGLUFeedForward",
    "TransformerBlock",
    "init",
]
