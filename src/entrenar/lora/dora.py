"""DoRA (weight-decomposed LoRA, Liu et al. 2024), as PEFT's `lora/dora.py` computes it.

The adapted weight is split into a magnitude m (out,) and a direction:

    W' = m * (W0 + s B A) / ||W0 + s B A||_row

with ||.||_row the L2 norm of each output row. m starts at ||W0 + s B A||_row (so W' = W0 + s B A at
step 0). In the forward the norm is treated as a constant (DoRA paper, section 4.3: it reflects the
current B A but takes no gradient), so with g = m / ||W0 + s B A||_row, for x after dropout:

    y = base(x) + (g - 1) * (x W0^T) + g * s * B(A(x))

where x W0^T is the base output without its bias (recomputed from the dropped-out x when dropout is
active in training, as PEFT does). Merging writes W' into the base weight; unmerging divides by
g and subtracts s B A, with the norm kept from the merge.
"""

from __future__ import annotations

import numpy as np

from entrenar import functional as F
from entrenar.nn.layers import Linear
from entrenar.nn.module import Module, Parameter
from entrenar.tensor import Tensor

__all__ = ["DoraLinearLayer", "dora_delta", "dora_merge", "dora_unmerge", "weight_norm"]


def weight_norm(weight: np.ndarray, lora_weight: np.ndarray, scaling: float) -> np.ndarray:
    """||W + s L||_row: the L2 norm of each output row, (out, in) -> (out,), in the weight's dtype."""
    w = weight + scaling * lora_weight
    return np.linalg.norm(w, axis=1).astype(weight.dtype, copy=False)


class DoraLinearLayer(Module):
    """Holds the DoRA magnitude vector `weight` (out_features,), PEFT's `lora_magnitude_vector.<adapter>`."""

    weight: Parameter

    def __init__(
        self, base_weight: np.ndarray, lora_A: np.ndarray, lora_B: np.ndarray, scaling: float
    ) -> None:
        super().__init__()
        self.weight = Parameter(weight_norm(base_weight, lora_B @ lora_A, scaling))

    def extra_repr(self) -> str:
        return f"out_features={self.weight.shape[0]}"


def dora_delta(
    x: Tensor,
    *,
    magnitude: DoraLinearLayer,
    lora_A: Linear,
    lora_B: Linear,
    scaling: float,
    base_weight: np.ndarray,
    base_bias: Tensor | None,
    base_result: Tensor | None,
) -> Tensor:
    """What DoRA adds to the running output: (g - 1) * base_result + g * s * B(A(x)), g = m / ||W0 + s B A||.

    `x` is the (dropped-out) input; `base_result` the output so far (bias included), or None when
    dropout is active, in which case x W0^T is recomputed from `x`.
    """
    lora_weight = lora_B.weight.data @ lora_A.weight.data  # (out, r) @ (r, in): no gradient through the norm
    norm = weight_norm(base_weight.astype(lora_weight.dtype, copy=False), lora_weight, scaling)
    mag_norm_scale = magnitude.weight / norm  # (out,), broadcasts over the rows of (*, out)
    lora_result = lora_B(lora_A(x))
    if base_result is None:
        base_result = F.linear(x, Tensor(base_weight.astype(x.dtype, copy=False)))
    elif base_bias is not None:
        base_result = base_result - base_bias
    return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


def dora_merge(
    weight: np.ndarray, unmerged_weight: np.ndarray, delta: np.ndarray, magnitude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(merged weight, the norm to keep for unmerging): g (W + dW), g = m / ||W0 + dW||_row.

    `weight` is the current base weight (it may hold adapters merged before), `unmerged_weight` W0
    (the base with none merged), `delta` dW = s B A.
    """
    norm = weight_norm(unmerged_weight, delta, 1.0)
    factor = (magnitude / norm)[:, None]  # (out,) -> (out, 1)
    return factor * (weight + delta), norm


def dora_unmerge(
    weight: np.ndarray, delta: np.ndarray, magnitude: np.ndarray, norm: np.ndarray
) -> np.ndarray:
    """The inverse of `dora_merge`: W / g - dW with the norm kept from the merge."""
    return weight / (magnitude / norm)[:, None] - delta
