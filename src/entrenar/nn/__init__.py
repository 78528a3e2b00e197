"""Modules: parameters discovered from attributes, PyTorch-named layers, and ready models."""

from entrenar.nn import init
from entrenar.nn.module import IncompatibleKeys, Module, Parameter

__all__ = ["IncompatibleKeys", "Module", "Parameter", "init"]
