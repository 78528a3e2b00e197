"""Basic layers, named, shaped and initialised as PyTorch's: Linear, Embedding, LayerNorm, RMSNorm, Dropout.

Layers that draw random numbers take a required keyword `generator: np.random.Generator` (for
initial weights, or for Dropout's masks, which it keeps drawing from); there is no hidden default
generator, so two layers never silently start from the same numbers. Parameters are float32 unless
`dtype` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.nn import init
from entrenar.nn.module import Module, Parameter
from entrenar.tensor import Tensor, TensorLike

__all__ = ["Dropout", "Embedding", "LayerNorm", "Linear", "RMSNorm"]


def _float_dtype(layer: str, dtype: Any) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{layer}: dtype must be a floating-point dtype, got {dt}")
    return dt


def _non_negative_int(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{layer}: {name} must be a non-negative int, got {value!r}")
    return int(value)


def _generator(layer: str, generator: Any) -> np.random.Generator:
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"{layer}: generator must be an np.random.Generator (e.g. np.random.default_rng(seed)), "
            f"got {type(generator).__name__}"
        )
    return generator


def _normalized_shape(layer: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        shape: tuple[int, ...] = (int(normalized_shape),)
    elif isinstance(normalized_shape, Sequence) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in normalized_shape
    ):
        shape = tuple(int(n) for n in normalized_shape)
    else:
        raise TypeError(
            f"{layer}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        )
    if any(n < 0 for n in shape):
        raise ValueError(f"{layer}: normalized_shape must not have negative sizes, got {shape}")
    return shape


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features), as `torch.nn.Linear`.

    Initialised as PyTorch's: weight by kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)),
    and bias from the same U(-1/sqrt(in), 1/sqrt(in)); both drawn from the required `generator`
    (weight first, then bias).
    """

    weight: Parameter
    bias: Parameter | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        self.in_features = _non_negative_int("Linear", "in_features", in_features)
        self.out_features = _non_negative_int("Linear", "out_features", out_features)
        dt = _float_dtype("Linear", dtype)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=dt))
        self.bias = Parameter(np.empty((self.out_features,), dtype=dt)) if bias else None
        self.reset_parameters(generator=generator)

    def reset_parameters(self, *, generator: np.random.Generator) -> None:
        """Redraw weight and bias as PyTorch's `Linear.reset_parameters` does."""
        rng = _generator("Linear", generator)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=rng)
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, generator=rng)

    def forward(self, input: TensorLike) -> Tensor:
        # (*, in) -> (*, out)
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"


class Embedding(Module):
    """A lookup table: integer indices (any shape) -> rows of weight (num_embeddings, embedding_dim).

    Initialised as `torch.nn.Embedding`: weight ~ N(0, 1) from the required `generator`, with the
    padding_idx row (negative counts from the end) set to zero; that row gets no gradient.
    """

    weight: Parameter

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        self.num_embeddings = _non_negative_int("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _non_negative_int("Embedding", "embedding_dim", embedding_dim)
        self.padding_idx = self._check_padding_idx(padding_idx, self.num_embeddings)
        dt = _float_dtype("Embedding", dtype)
        self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim), dtype=dt))
        self.reset_parameters(generator=generator)

    @staticmethod
    def _check_padding_idx(padding_idx: int | None, n: int) -> int | None:
        if padding_idx is None:
            return None
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
            raise TypeError(f"Embedding: padding_idx must be an int or None, got {padding_idx!r}")
        if not -n <= padding_idx < n:
            raise ValueError(f"Embedding: padding_idx {padding_idx} must be within [-{n}, {n})")
        return int(padding_idx) % n

    def reset_parameters(self, *, generator: np.random.Generator) -> None:
        """Redraw weight from N(0, 1) and zero the padding row."""
        init.normal_(self.weight, generator=_generator("Embedding", generator))
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(
        cls, embeddings: TensorLike, freeze: bool = True, padding_idx: int | None = None
    ) -> Embedding:
        """An Embedding holding a copy of the 2-D `embeddings` array; frozen (no grad) unless freeze=False."""
        arr = np.array(embeddings.data if isinstance(embeddings, Tensor) else embeddings)
        if arr.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape {arr.shape}")
        _float_dtype("Embedding.from_pretrained", arr.dtype)
        emb = cls.__new__(cls)
        Module.__init__(emb)
        emb.num_embeddings, emb.embedding_dim = int(arr.shape[0]), int(arr.shape[1])
        emb.padding_idx = cls._check_padding_idx(padding_idx, emb.num_embeddings)
        emb.weight = Parameter(arr, requires_grad=not freeze)
        return emb

    def forward(self, input: TensorLike) -> Tensor:
        # (*) integer indices -> (*, embedding_dim)
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s


class LayerNorm(Module):
    """Layer normalisation over the trailing `normalized_shape` dims, as `torch.nn.LayerNorm`.

    weight starts at ones and bias at zeros; elementwise_affine=False keeps neither, bias=False
    keeps only weight.
    """

    weight: Parameter | None
    bias: Parameter | None

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape("LayerNorm", normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        dt = _float_dtype("LayerNorm", dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt)) if elementwise_affine else None
        has_bias = elementwise_affine and bias
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dt)) if has_bias else None

    def reset_parameters(self) -> None:
        """Set weight to ones and bias to zeros."""
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input: TensorLike) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the trailing `normalized_shape` dims, as `torch.nn.RMSNorm`.

    eps None means the machine epsilon of the input's dtype; weight starts at ones.
    """

    weight: Parameter | None

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape("RMSNorm", normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        dt = _float_dtype("RMSNorm", dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt)) if elementwise_affine else None

    def reset_parameters(self) -> None:
        """Set weight to ones."""
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, input: TensorLike) -> Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class Dropout(Module):
    """Inverted dropout while training (zero with probability p, scale the rest by 1 / (1 - p));
    the identity in eval mode. As `torch.nn.Dropout`, but never in place.

    The layer owns `generator` (required) and draws every mask from it, so a run is reproducible
    from the seed; several layers may share one generator.
    """

    def __init__(self, p: float = 0.5, *, generator: np.random.Generator) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)
        self.generator = _generator("Dropout", generator)

    def forward(self, input: TensorLike) -> Tensor:
        return F.dropout(input, self.p, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=False"
