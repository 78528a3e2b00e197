"""4-bit dequantization and the quantized linear layer, torch-free (no PyTorch needed or used).

1. Dequantize a 4096 x 4096 NF4 matrix (block 64) to float32, median ms of: the fused numba kernel
   (`entrenar.kernels.dequant_fused`) on numba's threads and on one thread; the NumPy reference
   (`entrenar.quant.reference`, the spec); and a one-thread NumPy table lookup (a 256-entry
   byte -> pair-of-codes table, then a multiply by the block scales), the fastest plain-NumPy way
   we know. Every result is checked bit for bit against the reference first. Goal: fused <= 3 ms.
2. One QuantLinear 4096 x 4096 (NF4), 512 tokens, forward + backward with the input requiring grad,
   against a float32 Linear with a frozen weight (F.linear, the same BLAS), interleaved in rounds.
   Goal: QuantLinear <= 1.3x the float layer. The dequantization sits between BLAS calls, where
   numba's threads and OpenBLAS's threads may take the cores from each other: the layer dequantizes
   on one thread (`entrenar.quant.functional.PARALLEL_DEQUANT`), and is also timed with numba's
   threads. `--tiles` sweeps tile_rows.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, write_results

import entrenar.functional as F
from entrenar import Tensor
from entrenar.kernels import dequant_fused
from entrenar.quant import NF4_CODE, QuantLinear, default_tile_rows, quantize, reference
from entrenar.quant import functional as qf

GOAL_DEQUANT_MS = 3.0
GOAL_LAYER = 1.3
N = 4096
TOKENS = 512


def numpy_table_lookup(data: np.ndarray, absmax: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (blocks, 64) = pair table[byte] * absmax: NumPy's fastest NF4 decode, one thread."""
    pairs = np.empty((256, 2), dtype=np.float32)
    pairs[:, 0] = NF4_CODE[np.arange(256) >> 4]
    pairs[:, 1] = NF4_CODE[np.arange(256) & 15]
    np.take(pairs, data, axis=0, out=out.reshape(-1, 2))
    np.multiply(out, absmax[:, None], out=out)
    return out


def bench_dequant(rounds: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    q = quantize(rng.standard_normal((N, N), dtype=np.float32), "nf4", 64)
    ref = np.empty((N, N), dtype=np.float32)
    reference.dequantize_rect(q.data, q.absmax, "nf4", 64, N, (0, N), (0, N), ref)
    outs = {k: np.empty((N, N), dtype=np.float32) for k in ("fused", "fused 1 thread", "numpy lookup")}
    lut = NF4_CODE.copy()

    def fused(parallel: bool, out: np.ndarray) -> Callable[[], Any]:
        return lambda: dequant_fused.dequantize_rect(q.data, lut, 64, N, 0, 0, out, absmax=q.absmax,
                                                     divisor=1.0, parallel=parallel)  # fmt: skip

    ref_out = np.empty((N, N), dtype=np.float32)

    def numpy_reference() -> Any:
        return reference.dequantize_rect(q.data, q.absmax, "nf4", 64, N, (0, N), (0, N), ref_out)

    fns: dict[str, Callable[[], Any]] = {
        "fused": fused(True, outs["fused"]),
        "fused 1 thread": fused(False, outs["fused 1 thread"]),
        "numpy reference": numpy_reference,
        "numpy lookup": lambda: numpy_table_lookup(q.data, q.absmax, outs["numpy lookup"].reshape(-1, 64)),
    }
    # The memory bound: copying a float32 array of the output's size (np.copyto reads 64 MB and writes
    # 64 MB; the kernel reads 8 MB of codes and writes 64 MB). No dequantization can beat a bare write.
    copy_src = np.ones((N, N), dtype=np.float32)
    copy_out = np.empty((N, N), dtype=np.float32)
    bounds: dict[str, Callable[[], Any]] = {
        "copy (bound)": lambda: np.copyto(copy_out, copy_src),
        "fill (bound)": lambda: copy_out.fill(0.5),
    }
    for key, fn in fns.items():  # a fast wrong answer is no result
        fn()
        got = ref_out if key == "numpy reference" else outs[key]
        np.testing.assert_array_equal(got, ref, err_msg=key)
    fns |= bounds
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            reps = max(1, repeats // 10) if key == "numpy reference" else repeats
            samples[key].append(measure(fn, repeats=reps, warmup=1).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"-- dequantize {N}x{N} NF4 (block 64) to float32, median ms of {rounds} rounds")
    for key in fns:
        speedup = ms["numpy lookup"] / ms[key]
        print(f"   {key:<16} {ms[key]:9.3f} ms  ({speedup:5.2f}x faster than the numpy lookup)")
    verdict = "meets" if ms["fused"] <= GOAL_DEQUANT_MS else "misses"
    print(f"   fused: {ms['fused']:.3f} ms ({verdict} the goal <= {GOAL_DEQUANT_MS} ms); "
          f"{ms['fused'] / ms['copy (bound)']:.2f}x the time of a 64 MB copy, "
          f"{ms['fused'] / ms['fill (bound)']:.2f}x a 64 MB fill on this machine")
    return {"ms": ms, "round_medians_ms": samples}


def bench_layer(rounds: int, repeats: int, tiles: list[int]) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((N, N), dtype=np.float32) / np.float32(64)).astype(np.float32)
    b = np.zeros(N, dtype=np.float32)
    x = rng.standard_normal((TOKENS, N), dtype=np.float32)
    g = rng.standard_normal((TOKENS, N), dtype=np.float32)
    layers = {t: QuantLinear(quantize(w, "nf4", 64), b, tile_rows=t) for t in tiles}
    w_deq = layers[tiles[0]].dequantize_weight()
    weight, bias = Tensor(w_deq), Tensor(b)  # frozen: no weight gradient

    def float_layer() -> None:
        xt = Tensor(x, requires_grad=True)
        F.linear(xt, weight, bias).backward(g)

    def quant_layer(layer: QuantLinear, parallel: bool = False) -> Callable[[], None]:
        def run() -> None:
            saved = qf.PARALLEL_DEQUANT
            qf.PARALLEL_DEQUANT = parallel
            try:
                xt = Tensor(x, requires_grad=True)
                layer(xt).backward(g)
            finally:
                qf.PARALLEL_DEQUANT = saved

        return run

    fns: dict[str, Callable[[], None]] = {"float32 Linear": float_layer}
    for t in tiles:
        fns[f"QuantLinear tile {t}"] = quant_layer(layers[t], qf.PARALLEL_DEQUANT)
    other = "numba-threads" if not qf.PARALLEL_DEQUANT else "1-thread"
    fns[f"QuantLinear tile {tiles[0]}, {other} dequant"] = quant_layer(
        layers[tiles[0]], not qf.PARALLEL_DEQUANT
    )
    # the same numbers first: y and grad_x of the quantized layer equal the float layer's on W~
    xt = Tensor(x, requires_grad=True)
    yq = layers[tiles[0]](xt)
    yq.backward(g)
    xf = Tensor(x, requires_grad=True)
    yf = F.linear(xf, weight, bias)
    yf.backward(g)
    np.testing.assert_allclose(yq.data, yf.data, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt.grad, xf.grad, rtol=1e-4, atol=1e-4)  # type: ignore[arg-type]
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            samples[key].append(measure(fn, repeats=repeats, warmup=1).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    base = ms["float32 Linear"]
    print(f"-- {N}x{N} layer, {TOKENS} tokens, forward + backward (input grad), median ms of {rounds} rounds")
    for key in fns:
        print(f"   {key:<40} {ms[key]:9.2f} ms  ({ms[key] / base:5.2f}x the float32 layer)")
    head = f"QuantLinear tile {tiles[0]}"
    ratio = ms[head] / base
    verdict = "meets" if ratio <= GOAL_LAYER else "misses"
    print(f"   {head} / float32 Linear {ratio:.2f}x ({verdict} the goal <= {GOAL_LAYER}x)")
    return {"ms": ms, "round_medians_ms": samples, "ratio": ratio, "headline": head}


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops outside the timed region; this also picks numba's
    threading layer, so that it can be named."""
    q = quantize(np.ones((256, 256), dtype=np.float32))
    for parallel in (False, True):
        for rect in ((0, 256), (1, 255)):
            out = np.empty((256, rect[1] - rect[0]), dtype=np.float32)
            dequant_fused.dequantize_rect(q.data, NF4_CODE.copy(), 64, 256, 0, rect[0], out, absmax=q.absmax,
                                          divisor=1.0, parallel=parallel)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per implementation")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    parser.add_argument("--tiles", default="", help="comma-separated tile_rows to sweep (default: default)")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    if not dequant_fused.available():
        reason = dequant_fused.unavailable_reason()
        raise SystemExit(f"the fused dequantization kernel is unavailable: {reason}")
    import numba

    threads = numpy_blas_threads()
    numba.set_num_threads(min(threads, numba.get_num_threads()))  # at most NUMBA_NUM_THREADS
    info = print_header(f"4-bit dequantization and QuantLinear, {N}x{N}")
    warm_up()
    print(f"   numba {numba.__version__}, {numba.get_num_threads()} threads, threading layer "
          f"{numba.threading_layer()}")  # fmt: skip
    tiles = [int(t) for t in args.tiles.split(",") if t] or [default_tile_rows(N, N)]
    load_before = os.getloadavg()
    dequant = bench_dequant(args.rounds, args.repeats)
    layer = bench_layer(args.rounds, max(1, args.repeats // 3), tiles)
    load_after = os.getloadavg()
    print(f"   load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    payload: dict[str, Any] = {
        "benchmark": "quant",
        "workload": f"dequantize {N}x{N} NF4; QuantLinear {N}x{N} x {TOKENS} tokens fwd+bwd",
        "dequant": dequant,
        "layer": layer,
        "goal_dequant_ms": GOAL_DEQUANT_MS,
        # the headline, in the keys bench/table.py reads: the quantized layer against the float32 one
        "entrenar_ms": layer["ms"][layer["headline"]],
        "numpy_ms": layer["ms"]["float32 Linear"],
        "ratio": layer["ratio"],
        "goal_ratio": GOAL_LAYER,
        "numba_version": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "blas": info,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    write_results(f"quant.{args.label or label()}", payload)


if __name__ == "__main__":
    main()
