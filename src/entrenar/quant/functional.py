"""quant_linear: y = x @ W^T + b for a 4-bit quantized W, dequantized tile by tile, never whole.

Forward, for tiles of `tile_rows` output rows (W_t = W[r0:r1], dequantized into one reused buffer)::

    y[:, r0:r1] = x @ W_t^T                     (N, in) @ (in, t) -> (N, t)

Backward: no gradient reaches W (the quantized base is frozen); the bias gets sum_n g[n]; the input
gets g @ W, computed over slabs of columns of W with the same element budget as a forward tile::

    grad_x[:, c0:c1] = g @ W[:, c0:c1]          (N, out) @ (out, c) -> (N, c)

so that each product writes its own columns of grad_x (no accumulation pass over grad_x, as summing
per-row-tile products g[:, tile] @ W_tile would need). Both directions dequantize the same codes to
the same values, in the input's dtype (float32 or float64). The float temporary is one tile,
tile_rows * in_features elements; the default aims at TILE_BYTES in float32 (8 MiB: 512 rows of a
4096-wide layer, half of a 2048 x 2048 one), large enough that each product is an efficient BLAS
call (each product packs the whole input again, so small tiles cost). bench/bench_quant.py, 4096 x
4096, 512 tokens, forward + backward against a float32 layer, on a shared 2-core VM (9 interleaved
rounds): 1.32x with tiles of 512 rows, 1.33x with 1024, 1.29x with 512 and numba's threads for
the dequantization; 256-row tiles were clearly slower (1.47x in a shorter run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, Built, as_tensor, case, defop, public
from entrenar.quant.tensor import QuantizedTensor, quantize
from entrenar.tensor import Tensor, TensorLike

__all__ = ["PARALLEL_DEQUANT", "SLAB_MIN_COLS", "TILE_BYTES", "default_tile_rows", "quant_linear"]

TILE_BYTES = 8 << 20  # the float32 tile the default tile_rows aims at
# Dequantize tiles on the calling thread: between two BLAS calls, OpenBLAS's threads still spin and
# numba's would fight them for the cores (as kernels/nn_fused.py measured for its kernels). Here
# the difference stayed within the noise of a shared machine; bench/bench_quant.py times both.
PARALLEL_DEQUANT = False
# The input gradient goes by column slabs of W (no accumulation) when a slab is at least this wide
# (or all of in_features); narrower slabs (a vocabulary-wide lm_head) take row tiles and accumulate.
SLAB_MIN_COLS = 256


def default_tile_rows(out_features: int, in_features: int) -> int:
    """Rows per tile so that a float32 tile of the (out, in) weight takes about TILE_BYTES."""
    return max(1, min(out_features, TILE_BYTES // max(1, 4 * in_features)))


@defop("quant_linear", needs_mask=True)
def _QuantLinear(x: np.ndarray, b: np.ndarray | None, *, qweight: QuantizedTensor, tile_rows: int) -> Any:
    out_f, in_f = qweight.shape
    x2 = x if x.ndim == 2 else x.reshape(-1, in_f)  # (*, in) -> (N, in)
    out = np.empty((x2.shape[0], out_f), dtype=x.dtype)
    buf = np.empty(min(tile_rows, out_f) * in_f, dtype=x.dtype)  # the only float copy of W: one tile
    for r0 in range(0, out_f, tile_rows):
        r1 = min(out_f, r0 + tile_rows)
        tile = buf[: (r1 - r0) * in_f].reshape(r1 - r0, in_f)
        w = qweight.dequantize_rows(r0, r1, x.dtype, out=tile, parallel=PARALLEL_DEQUANT)
        np.matmul(x2, w.T, out=out[:, r0:r1])  # (N, in) @ (in, t) -> (N, t); BLAS reads w.T in place
    if b is not None:
        out += b
    if x.ndim != 2:
        out = out.reshape(*x.shape[:-1], out_f)  # (N, out) -> (*, out)
    return out, (qweight, tile_rows, x.shape)


@_QuantLinear.defbackward
def _quant_linear_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    qweight, tile_rows, x_shape = saved
    out_f, in_f = qweight.shape
    g2 = g if g.ndim == 2 else g.reshape(-1, out_f)  # (*, out) -> (N, out)
    gx = gb = None
    if needs[0]:
        gx = np.empty((g2.shape[0], in_f), dtype=g.dtype)
        cols = max(1, min(in_f, tile_rows * in_f // max(1, out_f)))  # a slab as large as a forward tile
        if cols >= min(in_f, SLAB_MIN_COLS):
            # column slabs of W: gx[:, c0:c1] = g @ W[:, c0:c1] (N, out) @ (out, c), written in place
            buf = np.empty(out_f * cols, dtype=g.dtype)
            for c0 in range(0, in_f, cols):
                c1 = min(in_f, c0 + cols)
                slab = buf[: out_f * (c1 - c0)].reshape(out_f, -1)
                w = qweight.dequantize_rect(0, out_f, c0, c1, g.dtype, out=slab, parallel=PARALLEL_DEQUANT)
                np.matmul(g2, w, out=gx[:, c0:c1])
        else:
            # a wide output (an lm_head's vocabulary) would make the slabs skinny GEMMs over all of out_f:
            # row tiles as the forward's, gx = sum over tiles of g[:, r0:r1] @ W[r0:r1] (N, t) @ (t, in)
            part = np.empty_like(gx)
            buf = np.empty(min(tile_rows, out_f) * in_f, dtype=g.dtype)
            for r0 in range(0, out_f, tile_rows):
                r1 = min(out_f, r0 + tile_rows)
                tile = buf[: (r1 - r0) * in_f].reshape(r1 - r0, in_f)
                w = qweight.dequantize_rows(r0, r1, g.dtype, out=tile, parallel=PARALLEL_DEQUANT)
                np.matmul(g2[:, r0:r1], w, out=gx if r0 == 0 else part)  # (N, t) @ (t, in) -> (N, in)
                if r0:
                    gx += part
        gx = gx.reshape(x_shape)
    if needs[1]:
        gb = g2.sum(axis=0)
    return gx, gb


# ----------------------------------------------------------------------------------- public function
A = Arg


def _q(shape: tuple[int, int], kind: str = "nf4", block_size: int = 8, double_quant: bool = False) -> Built:
    """A test weight: a standard normal (out, in) matrix quantized; PyTorch gets it dequantized."""
    return Built(
        make=lambda rng: quantize(rng.standard_normal(shape), kind, block_size, double_quant),
        as_torch=lambda q, dtype: q.dequantize(dtype),
    )


@public(
    "torch.nn.functional.linear",
    [
        case(A((5, 12)), _q((4, 12)), A((4,))),
        case(A((2, 3, 12)), _q((7, 12)), A((7,)), tile_rows=3, torch_kwargs={}),  # tiles of 3, 3, 1 rows
        case(A((12,)), _q((5, 12), "int4"), A((5,)), tile_rows=2, torch_kwargs={}),
        case(A((4, 10)), _q((6, 10), "nf4", 4, double_quant=True), tile_rows=4, torch_kwargs={}),
        case(A((5, 12), kind="const"), _q((4, 12)), A((4,))),
        case(A((5, 12)), _q((4, 12), "int4", 6), bias=A((4,), kind="const")),
    ],
    module="entrenar.quant",
)
def quant_linear(
    input: TensorLike,
    qweight: QuantizedTensor,
    bias: TensorLike | None = None,
    *,
    tile_rows: int | None = None,
) -> Tensor:
    """input @ W.T + bias for input (*, in) and a 2-D QuantizedTensor W (out, in), bias (out,).

    W is dequantized `tile_rows` rows at a time (default: `default_tile_rows`), in the input's
    dtype (float32 or float64); it gets no gradient. See the module docstring.
    """
    if not isinstance(qweight, QuantizedTensor) or len(qweight.shape) != 2:
        got = f"shape {qweight.shape}" if isinstance(qweight, QuantizedTensor) else type(qweight).__name__
        raise ValueError(f"quant_linear: qweight must be a 2-D QuantizedTensor (out, in), got {got}")
    out_f, in_f = qweight.shape
    x = input if isinstance(input, Tensor) else as_tensor(input)
    if x.data.dtype not in (np.float32, np.float64):
        raise ValueError(f"quant_linear: input must be float32 or float64, got {x.data.dtype}")
    if x.data.ndim == 0 or x.data.shape[-1] != in_f:
        raise ValueError(
            f"quant_linear: input of shape {x.data.shape} does not match the weight of shape {qweight.shape} "
            "(the input's last size must be in_features)"
        )
    if tile_rows is None:
        tile_rows = default_tile_rows(out_f, in_f)
    elif isinstance(tile_rows, bool) or not isinstance(tile_rows, (int, np.integer)) or tile_rows < 1:
        raise ValueError(f"quant_linear: tile_rows must be a positive int, got {tile_rows!r}")
    b = None
    if bias is not None:
        b = bias if isinstance(bias, Tensor) else as_tensor(bias, x)
        if b.data.shape != (out_f,) or b.data.dtype != x.data.dtype:
            raise ValueError(
                f"quant_linear: bias must be ({out_f},) of the input's dtype {x.data.dtype}, got "
                f"{b.data.dtype} {b.data.shape}"
            )
    return _QuantLinear(x, b, qweight=qweight, tile_rows=int(tile_rows))
