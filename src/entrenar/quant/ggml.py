"""GGML block formats (Q4_0, Q4_1, Q8_0) kept packed as a frozen base: GGMLTensor and GGMLLinear.

A GGML matrix (rows, cols) is stored row by row, each row as cols / 32 blocks of 32 consecutive
elements; a block is a float16 scale d (and for Q4_1 a float16 minimum m) followed by its codes::

    Q4_0  18 bytes: d, 16 bytes of 4-bit q      x = d * (q - 8)
    Q4_1  20 bytes: d, m, 16 bytes of 4-bit q   x = d * q + m
    Q8_0  34 bytes: d, 32 int8 q                x = d * q

In a 4-bit block, byte j holds element j in its LOW nibble and element j + 16 in its HIGH nibble
(not the bitsandbytes layout of `entrenar.quant`, where pairs are adjacent and the first is high).
The products are formed in float32, as ggml and `gguf.quants.dequantize` do, then cast.
`dequantize_blocks` is the NumPy reference; `GGMLTensor` takes the equal numba kernel of
`entrenar.kernels.ggml_dequant` when numba is available (module flag FUSED).

`quantize_blocks` is the way back, llama.cpp's reference quantizers (quantize_row_*_ref), in
float32 arithmetic as they are, per block of 32 values x::

    Q8_0  d = max|x| / 127                     q = roundf(x / d)           (half away from zero)
    Q4_0  d = x[argmax |x|] / -8  (signed)      q = min(15, trunc(x / d + 8.5))
    Q4_1  d = (max x - min x) / 15, m = min x   q = min(15, trunc((x - m) / d + 0.5))

(1 / d is taken as 0 when d = 0, so a constant block stores zeros and, for Q4_1, m.) The scale is
stored as float16 while q was computed with the float32 d, exactly as llama.cpp does. A merge of
LoRA into a GGML base (`GGMLLinear.set_weight`) goes through these and reports the rounding.

`GGMLLinear` runs the same tiled primitive as `QuantLinear` (`entrenar.quant.functional`): the op
only asks its weight for `shape`, `dequantize_rows` and `dequantize_rect`, which GGMLTensor provides,
so the forward dequantizes a tile of rows at a time and no gradient reaches the packed weight.
When no gradient is wanted (no_grad, or an input that does not require one) and the input has at most
`entrenar.kernels.ggml_matvec.MAX_ROWS` rows (decoding), the forward instead takes the fused
matrix-vector kernel `ggml_matvec.matvec`, which reads the packed blocks directly (module flag MATVEC).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.tape import is_grad_enabled
from entrenar.kernels import ggml_dequant, ggml_matvec
from entrenar.nn.module import Module, Parameter
from entrenar.quant.functional import _QuantLinear, default_tile_rows
from entrenar.quant.tensor import QuantizedTensor, quantize
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "FUSED",
    "GGML_BLOCK",
    "GGML_TYPE_BYTES",
    "MATVEC",
    "GGMLEmbedding",
    "GGMLLinear",
    "GGMLTensor",
    "dequantize_blocks",
    "quantize_blocks",
    "quantize_ggml",
]

GGML_BLOCK = 32  # elements per block, for every supported kind
GGML_TYPE_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
# Take the numba kernel (entrenar.kernels.ggml_dequant) when it is available; False forces NumPy.
FUSED = True
# Take the fused matrix-vector kernel (entrenar.kernels.ggml_matvec) for a few rows without grad.
MATVEC = True


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) packed bytes -> (n, 32) codes: element j is byte j's low nibble, j + 16 its high one."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at bytes [start, start + 2) of each block, as (n, 1) float32."""
    return np.ascontiguousarray(blocks[:, start : start + 2]).view(np.float16).astype(np.float32)


def dequantize_blocks(kind: str, blocks: np.ndarray) -> np.ndarray:
    """(n, type bytes) uint8 blocks of `kind` -> (n, 32) float32 values (see the module docstring)."""
    if kind not in GGML_TYPE_BYTES:
        raise ValueError(
            f"dequantize_blocks: unsupported GGML kind {kind!r} (supported: {sorted(GGML_TYPE_BYTES)})"
        )
    if blocks.dtype != np.uint8 or blocks.ndim != 2 or blocks.shape[1] != GGML_TYPE_BYTES[kind]:
        raise ValueError(
            f"dequantize_blocks: {kind} blocks must be uint8 (n, {GGML_TYPE_BYTES[kind]}), got "
            f"{blocks.dtype} "
            f"{blocks.shape}"
        )
    d = _f16(blocks, 0)
    if kind == "Q8_0":
        return d * blocks[:, 2:].view(np.int8).astype(np.float32)
    if kind == "Q4_0":
        return d * (_nibbles(blocks[:, 2:]).astype(np.float32) - np.float32(8))
    return d * _nibbles(blocks[:, 4:]).astype(np.float32) + _f16(blocks, 2)  # Q4_1


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, halves away from zero (np.round takes halves to even)."""
    a = np.abs(x)
    floor = np.floor(a)
    return np.copysign(floor + (a - floor >= np.float32(0.5)), x)  # a - floor is exact in float32


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, and 0 where d == 0 (llama.cpp's `id = d ? 1.0f/d : 0.0f`)."""
    safe = np.where(d == 0, np.float32(1), d)
    return np.where(d == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) codes in [0, 15] -> (n, 16) bytes: element j in the low nibble, j + 16 in the high one."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) bytes of its float16."""
    return v.astype(np.float16).view(np.uint8)


def quantize_blocks(kind: str, values: np.ndarray) -> np.ndarray:
    """(n, 32) float values -> (n, type bytes) uint8 blocks of `kind` (see the module docstring)."""
    if kind not in GGML_TYPE_BYTES:
        raise ValueError(
            f"quantize_blocks: unsupported GGML kind {kind!r} (supported: {sorted(GGML_TYPE_BYTES)})"
        )
    if values.ndim != 2 or values.shape[1] != GGML_BLOCK or values.dtype.kind != "f":
        raise ValueError(
            f"quantize_blocks: values must be a float (n, {GGML_BLOCK}) array, got "
            f"{values.dtype} {values.shape}"
        )
    x = values.astype(np.float32, copy=False)
    if kind == "Q8_0":
        d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)  # (n, 1)
        q = _roundf(x * _inverse(d)).astype(np.int8).view(np.uint8)
        return np.concatenate([_f16_bytes(d), q], axis=1)
    if kind == "Q4_0":
        signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)  # first largest |x|
        d = signed_max / np.float32(-8)
        q = np.minimum(np.trunc(x * _inverse(d) + np.float32(8.5)), 15)
        return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)  # Q4_1
    d = (hi - lo) / np.float32(15)
    q = np.minimum(np.trunc((x - lo) * _inverse(d) + np.float32(0.5)), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def quantize_ggml(kind: str, weight: np.ndarray) -> GGMLTensor:
    """A float (rows, cols) matrix as a GGMLTensor of `kind`; cols must be a multiple of 32."""
    w = np.asarray(weight)
    if w.ndim != 2 or w.shape[1] % GGML_BLOCK or w.dtype.kind != "f":
        raise ValueError(
            "quantize_ggml: weight must be a float (rows, cols) matrix with cols a multiple of "
            f"{GGML_BLOCK}, got {w.dtype} {w.shape}"
        )
    rows, cols = w.shape
    blocks = quantize_blocks(kind, w.reshape(-1, GGML_BLOCK))  # (rows * cols / 32, type bytes)
    return GGMLTensor(kind, blocks.reshape(rows, -1), (rows, cols))


class GGMLTensor:
    """A 2-D (rows, cols) matrix kept in GGML blocks: `data` is uint8 (rows, cols / 32 * type bytes)."""

    def __init__(self, kind: str, data: np.ndarray, shape: tuple[int, int]) -> None:
        if kind not in GGML_TYPE_BYTES:
            raise ValueError(f"GGMLTensor: unsupported kind {kind!r} (supported: {sorted(GGML_TYPE_BYTES)})")
        rows, cols = (int(s) for s in shape)
        if cols % GGML_BLOCK:
            raise ValueError(f"GGMLTensor: cols {cols} must be a multiple of the block size {GGML_BLOCK}")
        row_bytes = cols // GGML_BLOCK * GGML_TYPE_BYTES[kind]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (rows, row_bytes):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(
                f"GGMLTensor: {kind} data of a ({rows}, {cols}) matrix must be uint8 ({rows}, {row_bytes}), "
                f"got {got}"
            )
        self.kind = kind
        self.data = data
        self.shape = (rows, cols)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def bits_per_param(self) -> float:
        return 8 * GGML_TYPE_BYTES[self.kind] / GGML_BLOCK

    def __repr__(self) -> str:
        return f"GGMLTensor(kind={self.kind}, shape={self.shape})"

    def take_rows(self, order: np.ndarray) -> GGMLTensor:
        """A new tensor whose row i is row order[i] of this one (rows are whole blocks: exact)."""
        return GGMLTensor(self.kind, np.ascontiguousarray(self.data[order]), self.shape)

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        """The float (rows, cols) matrix, in float32 or float64."""
        return self.dequantize_rows(0, self.shape[0], dtype)

    def dequantize_rows(
        self,
        start: int,
        stop: int,
        dtype: Any = np.float32,
        out: np.ndarray | None = None,
        *,
        parallel: bool | None = None,
    ) -> np.ndarray:
        """Rows [start, stop) as (stop - start, cols), into `out` if given (parallel: see dequantize_rect)."""
        return self.dequantize_rect(start, stop, 0, self.shape[1], dtype, out, parallel=parallel)

    def dequantize_rect(
        self,
        row_start: int,
        row_stop: int,
        col_start: int,
        col_stop: int,
        dtype: Any = np.float32,
        out: np.ndarray | None = None,
        *,
        parallel: bool | None = None,
    ) -> np.ndarray:
        """The sub-matrix [row_start:row_stop, col_start:col_stop], from the blocks that cover it.

        parallel: whole rows on numba's threads (`ggml_dequant.dequantize_window`); None decides by size.
        """
        rows, cols = self.shape
        if not (0 <= row_start <= row_stop <= rows and 0 <= col_start <= col_stop <= cols):
            raise ValueError(
                f"GGMLTensor.dequantize_rect: [{row_start}:{row_stop}, {col_start}:{col_stop}] is outside "
                f"the ({rows}, {cols}) matrix"
            )
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise ValueError(f"GGMLTensor: dtype must be float32 or float64, got {dt}")
        shape = (row_stop - row_start, col_stop - col_start)
        if out is None:
            out = np.empty(shape, dtype=dt)
        elif out.shape != shape or out.dtype != dt:
            raise ValueError(
                f"GGMLTensor.dequantize_rect: out must be {dt} {shape}, got {out.dtype} {out.shape}"
            )
        if out.size == 0:
            return out
        nb = GGML_TYPE_BYTES[self.kind]
        b0, b1 = col_start // GGML_BLOCK, -(-col_stop // GGML_BLOCK)
        lo = col_start - b0 * GGML_BLOCK
        if FUSED and ggml_dequant.available() and out.flags.writeable:
            # (R, nblk * nb) -> (R, nblk, nb), written straight into the window of out
            blocks3 = self.data[row_start:row_stop, b0 * nb : b1 * nb].reshape(shape[0], b1 - b0, nb)
            return ggml_dequant.dequantize_window(self.kind, blocks3, lo, out, parallel)
        blocks = self.data[row_start:row_stop, b0 * nb : b1 * nb].reshape(-1, nb)  # (R * nblk, nb)
        vals = dequantize_blocks(self.kind, blocks).reshape(shape[0], -1)  # (R, nblk * 32)
        out[...] = vals[:, lo : lo + shape[1]]
        return out

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """x @ W^T for x (M, cols), M <= ggml_matvec.MAX_ROWS, by the fused kernel -> (M, rows)."""
        return ggml_matvec.matvec(self.kind, self.data, x)

    def to_nf4(self, block_size: int = 64, double_quant: bool = False) -> QuantizedTensor:
        """Re-quantized to NF4 (bitsandbytes layout) from the dequantized float32 values."""
        return quantize(self.dequantize(np.float32), "nf4", block_size, double_quant)


class GGMLLinear(Module):
    """y = x @ W^T (+ bias) with W a frozen GGMLTensor, dequantized `tile_rows` rows at a time.

    The packed blocks are the persistent buffer `qweight_blocks` (uint8), so a state dict carries
    them as they are in the GGUF file (after the q/k row permutation of `entrenar.models.gguf`);
    `bias`, if any, is a frozen float32 Parameter (cast to the input's dtype in forward).
    """

    def __init__(self, qweight: GGMLTensor, bias: Any = None, *, tile_rows: int | None = None) -> None:
        super().__init__()
        if not isinstance(qweight, GGMLTensor):
            raise TypeError(f"GGMLLinear: qweight must be a GGMLTensor, got {type(qweight).__name__}")
        self.qweight = qweight
        self.register_buffer("qweight_blocks", Tensor(qweight.data))
        out_f, in_f = qweight.shape
        self.bias = None if bias is None else Parameter(np.array(bias, dtype=np.float32), requires_grad=False)
        if self.bias is not None and self.bias.shape != (out_f,):
            raise ValueError(f"GGMLLinear: bias must have shape ({out_f},), got {self.bias.shape}")
        self.tile_rows = default_tile_rows(out_f, in_f) if tile_rows is None else int(tile_rows)
        if self.tile_rows < 1:
            raise ValueError(f"GGMLLinear: tile_rows must be a positive int, got {tile_rows!r}")

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def forward(self, input: TensorLike) -> Tensor:
        x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
        if x.data.dtype not in (np.float32, np.float64) or x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"GGMLLinear: input must be float32/float64 (*, {self.in_features}), got {x.data.dtype} "
                f"{x.shape}"
            )
        rows = x.data.size // self.in_features
        if (
            MATVEC
            and 1 <= rows <= ggml_matvec.MAX_ROWS
            and not (x.requires_grad and is_grad_enabled())
            and ggml_matvec.available()
        ):
            y = self.qweight.matvec(x.data.reshape(rows, self.in_features))  # (*, in) -> (N, in) -> (N, out)
            if self.bias is not None:
                y += self.bias.data.astype(y.dtype, copy=False)
            return Tensor(y.reshape(*x.shape[:-1], self.out_features))  # (N, out) -> (*, out)
        b = None if self.bias is None else Tensor(self.bias.data.astype(x.data.dtype, copy=False))
        # (*, in) -> (*, out)
        return _QuantLinear(x, b, qweight=self.qweight, tile_rows=self.tile_rows)

    def dequantize_weight(self, dtype: Any = np.float32) -> np.ndarray:
        return self.qweight.dequantize(dtype)

    def set_qweight(self, qweight: GGMLTensor) -> None:
        """Swap in another GGMLTensor of the same shape (the `qweight_blocks` buffer follows it)."""
        if not isinstance(qweight, GGMLTensor) or qweight.shape != self.qweight.shape:
            got = qweight.shape if isinstance(qweight, GGMLTensor) else type(qweight).__name__
            raise ValueError(f"GGMLLinear.set_qweight: expected a GGMLTensor {self.qweight.shape}, got {got}")
        self.qweight = qweight
        self.qweight_blocks = Tensor(qweight.data)

    def set_weight(self, weight: Any) -> dict[str, float]:
        """Re-quantize from a float (out, in) weight into this layer's GGML kind (`quantize_ggml`).

        Returns the rounding error against `weight`, W~ the new dequantized weight (float64), as
        `QuantLinear.set_weight` does::

            max_abs_error = max |W~ - W|,  mean_abs_error = mean |W~ - W|,  rel_error = ||W~ - W|| / ||W||
        """
        w = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
        if w.shape != self.qweight.shape:
            raise ValueError(
                f"GGMLLinear.set_weight: weight must have shape {self.qweight.shape}, got {w.shape}"
            )
        q = quantize_ggml(self.qweight.kind, w)
        ref = w.astype(np.float64)
        err = np.abs(q.dequantize(np.float64) - ref)
        norm = float(np.sqrt(np.square(ref).sum()))
        self.set_qweight(q)
        return {
            "max_abs_error": float(err.max()) if err.size else 0.0,
            "mean_abs_error": float(err.mean()) if err.size else 0.0,
            "rel_error": float(np.sqrt(np.square(err).sum())) / norm if norm > 0 else 0.0,
        }

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.qweight.kind}"


class GGMLEmbedding(Module):
    """A frozen embedding table kept in GGML blocks: forward(ids) dequantizes only the rows looked up.

    A tied Llama embedding is both the input table and the output projection; kept packed
    (`entrenar.models.gguf.llama_from_gguf`) it is one GGMLTensor shared by this module and a
    GGMLLinear lm_head, instead of a float copy (SmolLM2-135M: 30 MiB of Q8_0 instead of 108 MiB of
    float32). The blocks are not registered as a buffer here: the lm_head that shares them carries them.
    """

    def __init__(self, qweight: GGMLTensor, *, dtype: Any = np.float32) -> None:
        super().__init__()
        if not isinstance(qweight, GGMLTensor):
            raise TypeError(f"GGMLEmbedding: qweight must be a GGMLTensor, got {type(qweight).__name__}")
        self.qweight = qweight
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"GGMLEmbedding: dtype must be float32 or float64, got {self.dtype}")

    @property
    def num_embeddings(self) -> int:
        return self.qweight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.qweight.shape[1]

    def forward(self, input: TensorLike) -> Tensor:
        ids = np.asarray(input.data if isinstance(input, Tensor) else input)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"GGMLEmbedding: ids must be integers, got {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(
                f"GGMLEmbedding: ids must lie in [0, {self.num_embeddings}), got "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        flat = ids.reshape(-1)
        picked = GGMLTensor(self.qweight.kind, self.qweight.data[flat], (flat.size, self.embedding_dim))
        rows = picked.dequantize(self.dtype)  # (N, C)
        return Tensor(rows.reshape(*ids.shape, self.embedding_dim))  # (N, C) -> (*ids, C)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kind={self.qweight.kind}"
