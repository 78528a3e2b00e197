"""Fused optimizer updates: `sgd_step` and `adam_step` as one compiled pass over memory per parameter.

Same signatures, semantics and errors as `optim_reference` (torch.optim's single-tensor arithmetic),
for C-contiguous float32 / float64 arrays, in place. Where the reference makes a NumPy temporary for
every term of the update (about ten passes over the parameter's memory for Adam), these kernels read
each element of param, grad and the state once and write param and the state once. The updates,
with g = -grad if maximize else grad::

    SGD   g = g + weight_decay * param                       (if weight_decay != 0)
          b = g  (first step)  or  b = momentum * b + (1 - dampening) * g        (if momentum != 0)
          g = g + momentum * b  if nesterov  else  b                            (if momentum != 0)
          param = param - lr * g

    Adam  param = param * (1 - lr * weight_decay)             (decoupled, AdamW, if weight_decay != 0)
          g = g + weight_decay * param                        (L2, Adam, if weight_decay != 0)
          m = m + w * (g - m),  w = 1 - beta1                 (torch's lerp; g - (g - m) * (1 - w)
                                                               when w >= 0.5, as the reference)
          v = beta2 * v + (1 - beta2) * g * g
          v_max = max(v_max, v)                               (amsgrad, NaN-propagating; replaces v below)
          param = param - (lr / (1 - beta1**step)) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

Equal to the reference bit for bit. Every operation is done in the arrays' dtype, in the reference's
order, with its scalars rounded to that dtype exactly as NumPy rounds a Python float meeting a float32
array (hyper-parameters are Python floats, as the optimizers pass them; a float64 NumPy scalar would
make the reference compute some terms in float64). The kernels are compiled WITHOUT fastmath, so
LLVM neither fuses a multiply-add nor turns a division into a reciprocal multiply. Fastmath buys
nothing here: the update is memory-bound (Adam moves 28 bytes per float32 element) and the loop
vectorizes without it; measured with it, AdamW over 10M float32 parameters took the same time and,
after 20 steps, 1.6% of the parameters differed from the reference, by up to 9e-5 relative.

Threads: an update of at least `PARALLEL_MIN_SIZE` elements in all (one array, or every array of an
optimizer's parameter group: `adam_steps` / `sgd_steps` take a group at once) is split over threads:
each array is cut into as many contiguous parts as numba has threads (its default is the CPUs this
process may run on; `NUMBA_NUM_THREADS` or `numba.set_num_threads` change it), and thread t updates
part t of every array, in one hand-off for the whole group. The loops are compiled with nogil=True
and the threads are a small pool of Python threads, so a step makes one parallel region, not one per
tensor. Smaller updates run on the calling thread. Why:

* The update follows the backward pass's GEMMs, and OpenBLAS's threads keep spinning on the cores for
  a while after each (measured with NumPy's OpenBLAS 0.3.31: after one 1024^3 GEMM its worker thread
  used about 100 ms of CPU, busy-waiting without a sched_yield call, before it slept). A parallel
  region then waits for a thread that shares its core with one of them. With numba's prange, one
  region per tensor, the GPT-style LM of bench_gpt.py (14 tensors of up to 256k elements) took 33 ms a
  step for AdamW, against 2.7 ms on one thread. Below 4M elements a step stays on one thread.
* Above it, one region for all tensors pays that wait once. AdamW over 20 tensors of 500k float32
  elements (bench_optim.py), one thread / per-tensor prange / one split over two Python threads:
  12.9 / 10.9 / 10.2 ms idle, and 15.1 / 22.7 / 15.9 ms right after a 1024^3 GEMM.

Compilation is lazy: numba is imported on the first call (not with entrenar), and each of the two
loops (SGD and Adam) is compiled once per dtype it meets, float32 or float64,
and cached on disk next to this file (numba's `cache=True`, in __pycache__), so only the first run
after an install or an edit pays for it (a few seconds per loop and dtype).

Without numba (or with `NUMBA_DISABLE_JIT` set), `available()` is False, `unavailable_reason()` says
why, and the step functions raise RuntimeError: the caller uses `optim_reference` instead. Arrays
that these kernels do not take (another dtype, mixed dtypes, not C-contiguous, read-only state) are
rejected with a TypeError or ValueError naming the argument; `supports()` asks first.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from entrenar.kernels._lazy import compile_on_first_use, import_numba, jit_group, probes

__all__ = [
    "PARALLEL_MIN_SIZE",
    "adam_step",
    "adam_steps",
    "available",
    "sgd_step",
    "sgd_steps",
    "supports",
    "unavailable_reason",
]

# Below this many elements in one call, one thread: see the module docstring (threads after GEMMs wait on
# OpenBLAS's).
PARALLEL_MIN_SIZE = 1 << 22

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_load = compile_on_first_use(  # numba imported and the loops compiled on first use
    globals(),
    jit_group("_sgd_element", "_adam_element"),
    jit_group("_sgd_loop", "_adam_loop", nogil=True),  # nogil: the pool's threads run them side by side
)

available, unavailable_reason = probes(_load)


# ---- element updates: the reference's arithmetic for one element, shared by the loops ---------------
# c: the scalars, rounded to the arrays' dtype, in the order sgd_step / adam_step put them in `cs`. The
# loops copy them from that array into a tuple first: LLVM cannot prove that the stores to the
# parameter leave the array alone, so it would reload every scalar per element and not vectorize.


def _sgd_element(
    p: Any, g: Any, b: Any, c: Any, has_momentum: bool, first: bool, nesterov: bool, maximize: bool,
    use_wd: bool,
) -> tuple[Any, Any]:  # fmt: skip
    if maximize:
        g = -g
    if use_wd:
        g = g + c[0] * p  # weight_decay
    if has_momentum:
        b = g if first else b * c[1] + c[2] * g  # momentum, 1 - dampening
        g = g + c[1] * b if nesterov else b
    return p + c[3] * g, b  # -lr


def _adam_element(
    p: Any, g: Any, m: Any, v: Any, vmax: Any, c: Any, amsgrad: bool, maximize: bool, decay: bool,
    use_l2: bool, lerp_small: bool,
) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    if maximize:
        g = -g
    if decay:
        p = p * c[0]  # 1 - lr * weight_decay
    if use_l2:
        g = g + c[1] * p  # weight_decay
    m = m + c[2] * (g - m) if lerp_small else g - (g - m) * c[3]  # w = 1 - beta1, 1 - w
    v = v * c[4] + c[5] * g * g  # beta2, 1 - beta2
    if amsgrad:
        vmax = vmax if (vmax >= v or vmax != vmax) else v  # np.maximum: a NaN on either side wins
        d = vmax
    else:
        d = v
    return p + c[6] * m / (np.sqrt(d) / c[7] + c[8]), m, v, vmax  # -step_size, sqrt(bc2), eps


# ---- loops: one pass over elements [lo, hi) of each array (all of it, or one thread's part) ----------
# Without momentum (amsgrad) the buffer argument is a stand-in that is neither read nor written.


def _sgd_loop(p: Any, g: Any, b: Any, cs: Any, lo: int, hi: int, has_momentum: bool, *flags: bool) -> None:
    c = (cs[0], cs[1], cs[2], cs[3])
    p, g, b = p[lo:hi], g[lo:hi], b[lo:hi]  # views; indices from 0 (a range from lo did not vectorize)
    for i in range(p.size):
        if has_momentum:
            p[i], b[i] = _sgd_element(p[i], g[i], b[i], c, True, *flags)
        else:
            p[i] = _sgd_element(p[i], g[i], p[i], c, False, *flags)[0]


def _adam_loop(
    p: Any, g: Any, m: Any, v: Any, vmax: Any, cs: Any, lo: int, hi: int, amsgrad: bool, *flags: bool
) -> None:
    c = (cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7], cs[8])
    p, g, m, v, vmax = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi]  # as in _sgd_loop
    for i in range(p.size):
        if amsgrad:
            p[i], m[i], v[i], vmax[i] = _adam_element(p[i], g[i], m[i], v[i], vmax[i], c, True, *flags)
        else:
            p[i], m[i], v[i] = _adam_element(p[i], g[i], m[i], v[i], v[i], c, False, *flags)[:3]


# ---- threads: one split of a whole update ------------------------------------------------------------
# A job is one array's update: (its 1-d arrays, its scalars array, the loop's flags).
_Job = tuple[tuple[np.ndarray, ...], np.ndarray, tuple[bool, ...]]
_pool_lock = threading.Lock()
_pool: dict[str, Any] = {"key": None, "executor": None}


def _threads() -> int:
    numba, _ = import_numba()
    return max(1, int(numba.get_num_threads())) if numba is not None else 1


def _executor(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads, made again after a fork (the child has none of the parent's threads)
    or when the thread count changes."""
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool["key"] != key:
            _pool["executor"] = ThreadPoolExecutor(workers, thread_name_prefix="entrenar-optim")
            _pool["key"] = key
        executor: ThreadPoolExecutor = _pool["executor"]
        return executor


def _run(loop: Callable[..., None], jobs: list[_Job]) -> None:
    """Run `loop` on every job: on this thread below PARALLEL_MIN_SIZE elements in all, else with each
    array cut into one contiguous part per thread, thread t updating part t of every array."""
    total = sum(arrays[0].size for arrays, _, _ in jobs)
    parts = _threads() if total >= PARALLEL_MIN_SIZE else 1
    if parts == 1:
        for arrays, cs, flags in jobs:
            loop(*arrays, cs, 0, arrays[0].size, *flags)
        return

    def part(t: int) -> None:
        for arrays, cs, flags in jobs:
            n = arrays[0].size
            lo, hi = n * t // parts, n * (t + 1) // parts
            if hi > lo:  # the range, not slices: no view objects made per part (Python time per tensor)
                loop(*arrays, cs, lo, hi, *flags)

    futures = [_executor(parts - 1).submit(part, t) for t in range(1, parts)]
    part(0)
    for f in futures:
        f.result()


# ---- checks and entry points ----------------------------------------------------------------------


def _require_available() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused optimizer kernels are unavailable: {reason}; "
                           "use entrenar.kernels.optim_reference")


def _check(name: str, arr: Any, param: np.ndarray, *, written: bool) -> None:
    """The reference's checks (ndarray, the parameter's shape), then what the kernels need."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be an ndarray, got {type(arr).__name__}")
    if arr.shape != param.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected the parameter's shape {param.shape}")
    if arr.dtype != param.dtype:
        raise TypeError(f"{name} is {arr.dtype}, the parameter is {param.dtype}: the fused kernels "
                        "need one dtype")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous: the fused kernels take C-contiguous arrays only")
    if written and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; the update writes it in place")


def _check_param(param: Any) -> None:
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be an ndarray, got {type(param).__name__}")
    if param.dtype not in _DTYPES:
        raise TypeError(f"param is {param.dtype}: the fused kernels take float32 or float64")
    _check("param", param, param, written=True)


def supports(param: Any, grad: Any, *state: Any) -> bool:
    """Whether the kernels take these arrays: float32/float64 ndarrays of one dtype and shape, all
    C-contiguous, param and state writeable (None entries in `state` are skipped), and numba works."""
    if _load() is not None or not isinstance(param, np.ndarray) or param.dtype not in _DTYPES:
        return False
    try:
        _check("param", param, param, written=True)
        _check("grad", grad, param, written=False)
        for i, s in enumerate(state):
            if s is not None:
                _check(f"state[{i}]", s, param, written=True)
    except (TypeError, ValueError):
        return False
    return True


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    first_step: bool,
) -> None:
    """One SGD step on `param` (and `momentum_buffer`), in place, as `optim_reference.sgd_step`.

    With g = -grad if maximize else grad::

        g = g + weight_decay * param                        (if weight_decay != 0)
        b = g                                               (if momentum != 0, first step)
        b = momentum * b + (1 - dampening) * g              (if momentum != 0, later steps)
        g = g + momentum * b  if nesterov  else  g = b      (if momentum != 0)
        param = param - lr * g

    `grad` is not modified. Raises RuntimeError when numba is unavailable; TypeError / ValueError for
    arrays the kernel does not take (see `supports`) and for what the reference rejects.
    """
    _require_available()
    _run(_sgd_loop, _sgd_jobs([(param, grad, momentum_buffer, first_step)], lr=lr, momentum=momentum,
                              dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                              maximize=maximize))  # fmt: skip


def sgd_steps(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    checked: bool = False,
) -> None:
    """`sgd_step` on each (param, grad, momentum_buffer, first_step) of one parameter group, as one
    update: every array is checked before any is written, and the threads split the group at once.
    checked=True skips the array checks: for updates each just accepted by `supports` (as
    `entrenar.kernels.sgd_steps` does), which makes the same ones."""
    _require_available()
    _run(_sgd_loop, _sgd_jobs(updates, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                              weight_decay=weight_decay, maximize=maximize, checked=checked))  # fmt: skip


def _sgd_jobs(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]], *, lr: float, momentum: float,
    dampening: float, nesterov: bool, weight_decay: float, maximize: bool, checked: bool = False,
) -> list[_Job]:  # fmt: skip
    jobs: list[_Job] = []
    has_momentum = momentum != 0
    for param, grad, momentum_buffer, first_step in updates:
        if not checked:
            _check_param(param)
            _check("grad", grad, param, written=False)
        if has_momentum:
            if momentum_buffer is None:
                raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer shaped like the parameter")
            if not checked:
                _check("momentum_buffer", momentum_buffer, param, written=True)
        if param.size == 0:
            continue
        # The scalars as the reference forms them in Python floats, rounded to the dtype once (as NumPy
        # rounds a Python float meeting a float32 array); one small array is cheaper to pass than four.
        cs = np.array((weight_decay, momentum, 1 - dampening, -lr), dtype=param.dtype)
        b = param if momentum_buffer is None or not has_momentum else momentum_buffer  # param: a stand-in
        # reshape(-1) of a C-contiguous array (0-d included) is a view: the loop writes the caller's memory
        arrays: tuple[np.ndarray, ...] = (param.reshape(-1), grad.reshape(-1), b.reshape(-1))
        jobs.append((arrays, cs, (has_momentum, bool(first_step), bool(nesterov), bool(maximize),
                                  weight_decay != 0)))  # fmt: skip
    return jobs


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """One Adam / AdamW step on `param` and the moment arrays, in place, as `optim_reference.adam_step`.

    `step` is the 1-based count of this step (already incremented). With g = -grad if maximize else
    grad::

        param = param * (1 - lr * weight_decay)           (decoupled, AdamW, if weight_decay != 0)
        g = g + weight_decay * param                      (L2, Adam, if weight_decay != 0)
        m = m + (1 - beta1) * (g - m)                     (torch's lerp: m.lerp_(g, 1 - beta1))
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                             (amsgrad; then v_max replaces v below)
        denom = sqrt(v) / sqrt(1 - beta2 ** step) + eps
        param = param - (lr / (1 - beta1 ** step)) * m / denom

    `grad` is not modified. Raises RuntimeError when numba is unavailable; TypeError / ValueError for
    arrays the kernel does not take (see `supports`) and for what the reference rejects.
    """
    _require_available()
    adam_steps([(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step)], lr=lr, beta1=beta1, beta2=beta2,
               eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize)


def adam_steps(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    checked: bool = False,
) -> None:
    """`adam_step` on each (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step) of one parameter
    group, as one update: every array is checked before any is written, and the threads split the
    group at once. checked=True skips the array checks: for updates each just accepted by `supports`
    (as `entrenar.kernels.adam_steps` does), which makes the same ones."""
    _require_available()
    _run(_adam_loop, _adam_jobs(updates, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                decoupled=decoupled, amsgrad=amsgrad, maximize=maximize, checked=checked))


def _adam_jobs(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]], *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
    maximize: bool, checked: bool = False,
) -> list[_Job]:  # fmt: skip
    jobs: list[_Job] = []
    w = 1 - beta1
    use_wd = weight_decay != 0
    flags = (bool(amsgrad), bool(maximize), use_wd and bool(decoupled), use_wd and not decoupled,
             abs(w) < 0.5)  # fmt: skip
    for param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step in updates:
        if not checked:
            _check_param(param)
            _check("grad", grad, param, written=False)
            _check("exp_avg", exp_avg, param, written=True)
            _check("exp_avg_sq", exp_avg_sq, param, written=True)
        if step < 1:
            raise ValueError(f"adam_step: step must be the 1-based count of this step, got {step}")
        if amsgrad:
            if max_exp_avg_sq is None:
                raise ValueError("adam_step: amsgrad needs a max_exp_avg_sq array shaped like the parameter")
            if not checked:
                _check("max_exp_avg_sq", max_exp_avg_sq, param, written=True)
        if param.size == 0:
            continue
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        cs = np.array((1 - lr * weight_decay, weight_decay, w, 1 - w, beta2, 1 - beta2, -step_size,
                      bias_correction2**0.5, eps), dtype=param.dtype)  # as in sgd_step
        vmax = exp_avg_sq if max_exp_avg_sq is None or not amsgrad else max_exp_avg_sq  # v: a stand-in
        arrays: tuple[np.ndarray, ...] = (param.reshape(-1), grad.reshape(-1), exp_avg.reshape(-1),
                                          exp_avg_sq.reshape(-1), vmax.reshape(-1))  # fmt: skip
        jobs.append((arrays, cs, flags))
    return jobs
