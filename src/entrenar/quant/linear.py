"""QuantLinear: a Linear layer whose frozen weight is kept only as 4-bit codes; quantize_linears.

State dict. The packed weight appears as persistent buffers named `qweight_<array>` after
`QuantizedTensor.arrays()`: `qweight_data` (uint8 packed codes) and `qweight_absmax` (float32), or,
double-quantized, `qweight_data`, `qweight_absmax_codes`, `qweight_absmax_scale` and
`qweight_absmax_offset`; then `bias` (a frozen Parameter) if there is one. The buffers ARE the
arrays of `qweight` (no copies), so `load_state_dict`, which copies in place, loads the weight;
assigning a new QuantizedTensor to `qweight` re-registers them. As with a float layer's sizes,
the format (kind, block_size, double quantization, shape) is the module's configuration: a state
dict loads into a QuantLinear built the same way (load_state_dict rejects other array shapes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from entrenar.nn.layers import Linear
from entrenar.nn.module import Module, Parameter
from entrenar.quant.functional import default_tile_rows, quant_linear
from entrenar.quant.tensor import QuantizedTensor, quantize
from entrenar.tensor import Tensor, TensorLike

__all__ = ["BUFFER_PREFIX", "QuantLinear", "quantize_linears"]

BUFFER_PREFIX = "qweight_"


class QuantLinear(Module):
    """y = x @ W^T + bias with W (out_features, in_features) stored 4-bit, frozen, as `qweight`.

    No float copy of W is kept: `forward` dequantizes it tile by tile (`tile_rows` rows at a time,
    see `entrenar.quant.functional`), and no gradient reaches it. `bias` is a frozen Parameter.
    Build one from a float layer with `from_linear`, or a whole model with `quantize_linears`.
    """

    qweight: QuantizedTensor
    bias: Parameter | None
    tile_rows: int

    def __init__(self, qweight: QuantizedTensor, bias: Any = None, *, tile_rows: int | None = None) -> None:
        super().__init__()
        self.qweight = qweight  # checked and its arrays registered as buffers by __setattr__
        out_f, in_f = qweight.shape
        if bias is None:
            self.bias = None
        else:
            b = np.array(bias.data if isinstance(bias, Tensor) else bias)  # a copy: the layer owns it
            if b.shape != (out_f,) or b.dtype.kind != "f":
                raise ValueError(
                    f"QuantLinear: bias must be a float array of shape ({out_f},), got {b.dtype} {b.shape}"
                )
            self.bias = Parameter(b, requires_grad=False)
        if tile_rows is None:
            tile_rows = default_tile_rows(out_f, in_f)
        if isinstance(tile_rows, bool) or not isinstance(tile_rows, (int, np.integer)) or tile_rows < 1:
            raise ValueError(f"QuantLinear: tile_rows must be a positive int, got {tile_rows!r}")
        self.tile_rows = int(tile_rows)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "qweight":
            self._set_qweight(value)
        else:
            super().__setattr__(name, value)

    def _set_qweight(self, q: Any) -> None:
        if not isinstance(q, QuantizedTensor) or len(q.shape) != 2:
            got = f"shape {q.shape}" if isinstance(q, QuantizedTensor) else type(q).__name__
            raise ValueError(f"QuantLinear: qweight must be a 2-D QuantizedTensor (out, in), got {got}")
        old = vars(self).get("qweight")
        if old is not None and q.shape != old.shape:
            raise ValueError(f"QuantLinear: a new qweight must keep the shape {old.shape}, got {q.shape}")
        for key in [k for k in self._buffers if k.startswith(BUFFER_PREFIX)]:
            del self._buffers[key]
            object.__delattr__(self, key)
        object.__setattr__(self, "qweight", q)
        for key, arr in q.arrays().items():
            self.register_buffer(BUFFER_PREFIX + key, Tensor(arr))  # the array itself, not a copy

    # ------------------------------------------------------------------------------ attributes
    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def kind(self) -> str:
        return self.qweight.kind

    @property
    def block_size(self) -> int:
        return self.qweight.block_size

    @property
    def double_quant(self) -> bool:
        return self.qweight.double_quant

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_linear(
        cls,
        linear: Linear,
        kind: str = "nf4",
        block_size: int = 64,
        double_quant: bool = False,
        *,
        tile_rows: int | None = None,
    ) -> QuantLinear:
        """A QuantLinear holding `linear`'s weight quantized and a copy of its bias."""
        if not isinstance(linear, Linear):
            raise TypeError(f"QuantLinear.from_linear: expected a Linear, got {type(linear).__name__}")
        q = quantize(linear.weight.data, kind, block_size, double_quant)
        bias = None if linear.bias is None else linear.bias.data
        return cls(q, bias, tile_rows=tile_rows)

    # ------------------------------------------------------------------------------ use
    def forward(self, input: TensorLike) -> Tensor:
        # (*, in) -> (*, out)
        return quant_linear(input, self.qweight, self.bias, tile_rows=self.tile_rows)

    def dequantize_weight(self, dtype: Any = np.float32) -> np.ndarray:
        """The (out, in) float weight the codes stand for (a new array)."""
        return self.qweight.dequantize(dtype)

    def set_weight(self, weight: Any) -> dict[str, float]:
        """Re-quantize from a float (out, in) weight, with this layer's kind, block size and double
        quantization; `qweight` becomes a new QuantizedTensor (the old one is left as it was).

        Returns the rounding error against `weight`, W~ the new dequantized weight (float64)::

            max_abs_error = max |W~ - W|,  mean_abs_error = mean |W~ - W|,  rel_error = ||W~ - W|| / ||W||

        (rel_error is 0 when W = 0, which quantizes exactly).
        """
        w = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
        if w.shape != self.qweight.shape:
            raise ValueError(
                f"QuantLinear.set_weight: weight must have shape {self.qweight.shape}, got {w.shape}"
            )
        q = quantize(w, self.kind, self.block_size, self.double_quant)
        report = _rounding_error(q, w, self.tile_rows)
        self.qweight = q
        return report

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kind={self.kind}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}, tile_rows={self.tile_rows}"
        )


def _rounding_error(q: QuantizedTensor, w: np.ndarray, tile_rows: int) -> dict[str, float]:
    """The error of q against w, tile by tile (no full float64 copy of the weight)."""
    rows = q.shape[0]
    max_abs, sum_abs, sum_sq_err, sum_sq = 0.0, 0.0, 0.0, 0.0
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        ref = w[r0:r1].astype(np.float64)
        err = np.abs(q.dequantize_rows(r0, r1, np.float64) - ref)
        if err.size:
            max_abs = max(max_abs, float(err.max()))
        sum_abs += float(err.sum())
        sum_sq_err += float(np.square(err).sum())
        sum_sq += float(np.square(ref).sum())
    n = max(1, q.numel)
    rel = float(np.sqrt(sum_sq_err / sum_sq)) if sum_sq > 0 else 0.0
    return {"max_abs_error": max_abs, "mean_abs_error": sum_abs / n, "rel_error": rel}


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def quantize_linears(
    model: Module,
    kind: str = "nf4",
    block_size: int = 64,
    double_quant: bool = False,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Replace every `Linear` sub-module of `model` by a QuantLinear; the dotted names replaced.

    Sub-modules are found as `named_modules` finds them (attributes, and lists, tuples and dicts of
    modules); one named in `exclude`, or under one (`encoder` excludes `encoder.layer.0.query`), is
    kept. Only exact `Linear` instances are replaced: a subclass may compute something else. A
    Linear shared under two names is quantized once and both places get the same QuantLinear.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    excluded = tuple(exclude)
    if not isinstance(model, Module):
        raise TypeError(f"quantize_linears: model must be a Module, got {type(model).__name__}")
    if type(model) is Linear:
        raise ValueError("quantize_linears: model is itself a Linear; use QuantLinear.from_linear")
    done: dict[int, QuantLinear] = {}
    replaced: list[str] = []
    # every (parent, attribute, key) slot that holds a Linear, found before anything is replaced
    slots: list[tuple[str, Module, str, Any]] = []
    for parent_name, parent in list(model.named_modules()):
        for attr, value in list(vars(parent).items()):
            for key, child in _children(value):
                if type(child) is not Linear:
                    continue
                suffix = attr if key is None else f"{attr}.{key}"
                name = f"{parent_name}.{suffix}" if parent_name else suffix
                if not _under(name, excluded):
                    slots.append((name, parent, attr, key))
    for name, parent, attr, key in slots:
        holder = getattr(parent, attr)
        child = holder if key is None else holder[key]
        if id(child) not in done:
            done[id(child)] = QuantLinear.from_linear(child, kind, block_size, double_quant)
        new = done[id(child)]
        if key is None:
            setattr(parent, attr, new)
        elif isinstance(holder, tuple):
            items = list(holder)
            items[key] = new
            setattr(parent, attr, tuple(items))
        else:
            holder[key] = new
        replaced.append(name)
    return replaced


def _children(value: Any) -> list[tuple[Any, Module]]:
    """(key, module) for an attribute value as Module discovers children: key None for a module itself."""
    if isinstance(value, Module):
        return [(None, value)]
    if isinstance(value, (list, tuple)):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, Module)]
    if isinstance(value, dict):
        return [(k, v) for k, v in value.items() if isinstance(v, Module)]
    return []
