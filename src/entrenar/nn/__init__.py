"""Modules: parameters discovered from attributes, PyTorch-named layers, and ready models."""

from entrenar.nn import init
from entrenar.nn.layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from entrenar.nn.module import IncompatibleKeys, Module, Parameter

__all__ = [
    "Dropout",
    "Embedding",
    "IncompatibleKeys",
    "LayerNorm",
    "Linear",
    "Module",
    "Parameter",
    "RMSNorm",
    "init",
]
