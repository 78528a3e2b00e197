"""entrenar: training and fine-tuning you can read and trust.

A tape-based autograd on NumPy whose every gradient is checked, PyTorch-named ops and modules,
and LoRA/QLoRA fine-tuning on an ordinary CPU.
"""

from entrenar import functional, nn, optim
from entrenar.autograd.gradcheck import GradcheckError, gradcheck
from entrenar.autograd.tape import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from entrenar.tensor import Tensor, tensor

__version__ = "0.1.0"

__all__ = [
    "GradcheckError",
    "Tensor",
    "enable_grad",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "nn",
    "no_grad",
    "optim",
    "set_grad_enabled",
    "tensor",
]
