"""The ops, one file per family. Importing this package registers every op and Tensor method."""

from entrenar.ops import elementwise, losses, matmul, nn, reduce, shape

__all__ = ["elementwise", "losses", "matmul", "nn", "reduce", "shape"]
