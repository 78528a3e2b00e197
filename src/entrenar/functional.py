"""The `torch` / `torch.nn.functional`-style surface: every public op, by its PyTorch name."""

from entrenar.ops import elementwise as _elementwise
from entrenar.ops import losses as _losses
from entrenar.ops import matmul as _matmul
from entrenar.ops import nn as _nn
from entrenar.ops import reduce as _reduce
from entrenar.ops import shape as _shape
from entrenar.ops.elementwise import *  # noqa: F403
from entrenar.ops.losses import *  # noqa: F403
from entrenar.ops.matmul import *  # noqa: F403
from entrenar.ops.nn import *  # noqa: F403
from entrenar.ops.reduce import *  # noqa: F403
from entrenar.ops.shape import *  # noqa: F403

__all__ = [
    *_elementwise.__all__,
    *_reduce.__all__,
    *_shape.__all__,
    *_matmul.__all__,
    *_nn.__all__,
    *_losses.__all__,
]
