"""Tensor: an ndarray, its gradient, whether it requires one, and the tape node that made it.

Operators and named methods (`t.exp()`, `t.sum(dim)`, `a @ b`) are attached by the op registry
(`entrenar.autograd.registry.public`), so that each op lives in one place under `entrenar.ops`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from entrenar.autograd import tape

__all__ = ["Tensor", "TensorLike", "tensor"]

TensorLike = Any  # Tensor, ndarray, Python or NumPy scalar, or nested sequence


def _default_array(data: Any, dtype: Any = None) -> np.ndarray:
    """Convert data as `torch.tensor` does: Python floats become float32, ints int64, bools bool."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.array(data, dtype=np.dtype(dtype))
    if isinstance(data, np.ndarray):
        return data.copy()
    arr = np.array(data)
    if arr.dtype == np.float64 and not isinstance(data, np.generic):
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and not isinstance(data, np.generic):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"tensor(): cannot build a tensor from data of dtype {arr.dtype}")
    return arr


def _check_requires_grad(arr: np.ndarray) -> None:
    if arr.dtype.kind != "f":
        raise TypeError(
            f"only floating point tensors can require gradients, got a tensor of dtype {arr.dtype}"
        )


class Tensor:
    """An n-dimensional array that can record the ops applied to it and be differentiated.

    `Tensor(array)` wraps an ndarray without copying it; `entrenar.tensor(data)` copies, converting
    Python floats to float32 as PyTorch does.
    """

    __slots__ = ("__weakref__", "_node", "_retains_grad", "_rg", "data", "grad")
    __array_priority__ = 1000.0  # `ndarray + Tensor` defers to Tensor.__radd__

    data: np.ndarray
    grad: np.ndarray | None

    def __init__(self, array: Any, requires_grad: bool = False) -> None:
        arr = array if isinstance(array, np.ndarray) else _default_array(array)
        if requires_grad:
            _check_requires_grad(arr)
        self.data = arr
        self.grad = None
        self._rg = bool(requires_grad)
        self._node: tape.Node | None = None
        self._retains_grad = False

    # ----------------------------------------------------------------------------- attributes
    @property
    def requires_grad(self) -> bool:
        return self._rg

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self._node is not None and not value:
            raise RuntimeError(
                "you can only change requires_grad of leaf tensors; use detach() for a non-leaf tensor"
            )
        if value:
            _check_requires_grad(self.data)
        self._rg = bool(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self) -> str | None:
        """Name of the op that produced this tensor on the tape, or None for a leaf."""
        return None if self._node is None else self._node.op.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def size(self, dim: int | None = None) -> Any:
        """The shape, or the length of one dimension, as `torch.Tensor.size`."""
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return int(self.data.shape[0])

    # ----------------------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """The underlying ndarray (shared, not copied), as `torch.Tensor.numpy`."""
        return self.data

    def item(self) -> Any:
        if self.data.size != 1:
            raise ValueError(
                f"a Tensor with {self.data.size} elements cannot be converted to a Python scalar"
            )
        return self.data.item()

    def tolist(self) -> Any:
        return self.data.tolist()

    def detach(self) -> Tensor:
        """A new leaf sharing this tensor's data, cut off from the tape."""
        return Tensor(self.data)


    def retain_grad(self) -> None:
        """Keep `.grad` for this non-leaf tensor after backward (leaves always keep it)."""
        if not self._rg:
            raise RuntimeError("can't retain_grad on a tensor that does not require grad")
        if self._node is not None:
            self._retains_grad = True
            self._node.retainer = weakref.ref(self)

    def zero_grad_(self) -> None:
        self.grad = None

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(
                f"the truth value of a Tensor with {self.data.size} elements is ambiguous"
            )
        return bool(self.data.item())

    __hash__ = object.__hash__

    # ----------------------------------------------------------------------------- autograd
    def backward(self, grad: TensorLike = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`, as `torch.Tensor.backward`.

        `grad` is the gradient of some scalar with respect to self; it may be omitted only when self
        holds one element.
        """
        if not self._rg:
            raise RuntimeError(
                "backward(): this tensor does not require grad and has no grad_fn; did you forget "
                "requires_grad=True on an input, or call it inside no_grad()?"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward(): grad can be implicitly created only for scalar outputs; this tensor "
                    f"has shape {self.data.shape}: pass a gradient of that shape"
                )
            g = np.ones(self.data.shape, dtype=self.data.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else np.asarray(grad)
            if g.shape != self.data.shape:
                raise ValueError(
                    f"backward(): gradient has shape {g.shape} but the tensor has shape {self.data.shape}"
                )
            g = g.astype(self.data.dtype, copy=True)
        tape.backward(self, g, retain_graph=retain_graph)

    # ----------------------------------------------------------------------------- display
    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = f", dtype={self.data.dtype}" if self.data.dtype not in (np.float32, np.int64) else ""
        if self._node is not None:
            extra += f", grad_fn=<{self._node.op.name}>"
        elif self._rg:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    if TYPE_CHECKING:  # pragma: no cover - these are attached by entrenar.autograd.registry.public
        def __add__(self, other: TensorLike) -> Tensor: ...
        def __radd__(self, other: TensorLike) -> Tensor: ...
        def __sub__(self, other: TensorLike) -> Tensor: ...
        def __rsub__(self, other: TensorLike) -> Tensor: ...
        def __mul__(self, other: TensorLike) -> Tensor: ...
        def __rmul__(self, other: TensorLike) -> Tensor: ...
        def __truediv__(self, other: TensorLike) -> Tensor: ...
        def __rtruediv__(self, other: TensorLike) -> Tensor: ...
        def __pow__(self, other: TensorLike) -> Tensor: ...
        def __rpow__(self, other: TensorLike) -> Tensor: ...
        def __matmul__(self, other: TensorLike) -> Tensor: ...
        def __rmatmul__(self, other: TensorLike) -> Tensor: ...
        def __neg__(self) -> Tensor: ...
        def __getitem__(self, index: Any) -> Tensor: ...
        def __lt__(self, other: TensorLike) -> Tensor: ...
        def __le__(self, other: TensorLike) -> Tensor: ...
        def __gt__(self, other: TensorLike) -> Tensor: ...
        def __ge__(self, other: TensorLike) -> Tensor: ...
        def __eq__(self, other: object) -> Tensor: ...  # type: ignore[override]
        def __ne__(self, other: object) -> Tensor: ...  # type: ignore[override]
        def __getattr__(self, name: str) -> Any: ...

    @property
    def T(self) -> Tensor:
        """Reversed dimensions (`permute(n-1, ..., 0)`)."""
        result: Tensor = self.permute(*reversed(range(self.data.ndim)))
        return result


def tensor(data: TensorLike, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of `data` (float32 for Python floats unless `dtype` is given)."""
    return Tensor(_default_array(data, dtype), requires_grad=requires_grad)
