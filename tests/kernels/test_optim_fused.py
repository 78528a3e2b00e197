"""The fused optimizer kernels equal the plain-NumPy reference bit for bit, in place, for every option.

The kernels are compiled without fastmath and do every operation in the reference's order and dtype,
so the comparisons below are exact (`assert_array_equal`, NaN in the same places), not tolerances.
Each case runs on both paths of a kernel: one thread for small updates, and the split over threads
(each array cut into one part per thread; forced on small arrays by lowering `PARALLEL_MIN_SIZE`).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from entrenar.kernels import optim_fused, optim_reference

DTYPES = [np.float32, np.float64]
STEPS = 12
PATHS = ["serial", "parallel"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on one thread, then split over threads (whatever the array size)."""
    monkeypatch.setattr(optim_fused, "PARALLEL_MIN_SIZE", 1 << 62 if request.param == "serial" else 0)
    return str(request.param)


def test_available() -> None:
    # numba is a runtime dependency: the fused path must be usable wherever entrenar is installed.
    assert optim_fused.available(), optim_fused.unavailable_reason()
    assert optim_fused.unavailable_reason() is None


def _sgd_run(step_fn: Callable[..., None], p0: np.ndarray, grads: list[np.ndarray],
             **opts: Any) -> tuple[np.ndarray, np.ndarray]:
    p = p0.copy()
    buf = np.zeros_like(p0)
    for i, g in enumerate(grads):
        step_fn(p, g, buf if opts["momentum"] != 0 else None, first_step=i == 0, **opts)
    return p, buf


def _adam_run(step_fn: Callable[..., None], p0: np.ndarray, grads: list[np.ndarray],
              vmax0: np.ndarray | None = None, **opts: Any) -> tuple[np.ndarray, ...]:
    p = p0.copy()
    m, v, vmax = (np.zeros_like(p0) for _ in range(3))
    if vmax0 is not None:
        vmax[...] = vmax0
    for i, g in enumerate(grads):
        step_fn(p, g, m, v, vmax if opts["amsgrad"] else None, step=i + 1, **opts)
    return p, m, v, vmax


def _data(dtype: type, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    p0 = np.asarray(rng.standard_normal(shape), dtype=dtype)
    # Gradients of varied scale, so that v and max(v) move both ways and amsgrad's max matters.
    grads = [np.asarray(rng.standard_normal(shape) * rng.choice([0.01, 1.0, 30.0]), dtype=dtype)
             for _ in range(STEPS)]
    return p0, grads


SGD_OPTIONS = list(itertools.product([0.0, 0.9], [0.0, 0.25], [False, True], [0.0, 0.1], [False, True]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("momentum", "dampening", "nesterov", "weight_decay", "maximize"), SGD_OPTIONS)
def test_sgd_equals_reference(dtype: type, momentum: float, dampening: float, nesterov: bool,
                              weight_decay: float, maximize: bool, path: str) -> None:
    p0, grads = _data(dtype, (5, 67))
    opts = {"lr": 0.05, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
            "weight_decay": weight_decay, "maximize": maximize}
    want = _sgd_run(optim_reference.sgd_step, p0, grads, **opts)
    got = _sgd_run(optim_fused.sgd_step, p0, grads, **opts)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert not np.array_equal(got[0], p0)  # the comparison is of updated parameters
    assert got[0].dtype == dtype


ADAM_OPTIONS = list(itertools.product([False, True], [0.0, 0.1], [False, True], [False, True], [0.9, 0.3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("decoupled", "weight_decay", "amsgrad", "maximize", "beta1"), ADAM_OPTIONS)
def test_adam_equals_reference(dtype: type, decoupled: bool, weight_decay: float, amsgrad: bool,
                               maximize: bool, beta1: float, path: str) -> None:
    # beta1 = 0.3 takes the other branch of torch's lerp (weight 1 - beta1 >= 0.5).
    p0, grads = _data(dtype, (5, 67))
    opts = {"lr": 0.01, "beta1": beta1, "beta2": 0.95, "eps": 1e-8, "weight_decay": weight_decay,
            "decoupled": decoupled, "amsgrad": amsgrad, "maximize": maximize}
    want = _adam_run(optim_reference.adam_step, p0, grads, **opts)
    got = _adam_run(optim_fused.adam_step, p0, grads, **opts)
    for name, g, w in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), got, want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert not np.array_equal(got[0], p0)
    if amsgrad:  # the max really differs from v somewhere, so the kernel's max is exercised
        assert np.any(got[3] > got[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_threshold_large_array(dtype: type) -> None:
    """Without the fixture: an odd size above PARALLEL_MIN_SIZE takes the split over threads as shipped."""
    p0, grads = _data(dtype, (optim_fused.PARALLEL_MIN_SIZE + 13,), seed=1)
    opts = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2,
            "decoupled": True, "amsgrad": True, "maximize": False}
    want = _adam_run(optim_reference.adam_step, p0, grads[:3], **opts)
    got = _adam_run(optim_fused.adam_step, p0, grads[:3], **opts)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0,
           "maximize": False}
    np.testing.assert_array_equal(_sgd_run(optim_fused.sgd_step, p0, grads[:3], **sgd)[0],
                                  _sgd_run(optim_reference.sgd_step, p0, grads[:3], **sgd)[0])


def test_update_size_picks_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below PARALLEL_MIN_SIZE elements in all, one loop call per array on this thread; from it on, each
    array in one contiguous part per numba thread, on as many threads (a group counts as a whole)."""
    import threading

    import numba

    calls: list[tuple[str, int, int]] = []
    for name in ("_sgd_loop", "_adam_loop"):
        loop = getattr(optim_fused, name)

        def record(*args: Any, _name: str = name, _loop: Any = loop) -> None:
            lo = 4 if _name == "_sgd_loop" else 6  # the loop's [lo, hi) follows its arrays and scalars
            calls.append((_name, args[lo + 1] - args[lo], threading.get_ident()))
            _loop(*args)

        monkeypatch.setattr(optim_fused, name, record)
    monkeypatch.setattr(optim_fused, "PARALLEL_MIN_SIZE", 10)
    me = threading.get_ident()
    for n in (9, 10):
        p, g, m, v = (np.ones(n, np.float32) for _ in range(4))
        optim_fused.sgd_step(p, g, m, lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                             weight_decay=0.0, maximize=False, first_step=True)
        optim_fused.adam_step(**_adam_args(p, g, m, v))
    t = numba.get_num_threads()
    assert calls[:2] == [("_sgd_loop", 9, me), ("_adam_loop", 9, me)]
    split = calls[2:]
    assert sorted(c[1] for c in split if c[0] == "_sgd_loop") == sorted(10 * (i + 1) // t - 10 * i // t
                                                                       for i in range(t))
    assert len({c[2] for c in split}) == t  # every part on its own thread
    # a group of arrays each below the threshold, above it together: split as one update
    calls.clear()
    arrays = [[np.ones(n, np.float32) for _ in range(4)] for n in (4, 7)]
    optim_fused.adam_steps([(p, g, m, v, None, 1) for p, g, m, v in arrays], **_hyper())
    assert len(calls) == 2 * t and len({c[2] for c in calls}) == t


def _hyper() -> dict[str, Any]:
    return {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "decoupled": True,
            "amsgrad": False, "maximize": False}  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_steps_equal_one_by_one_reference(dtype: type, path: str) -> None:
    """adam_steps / sgd_steps over a group of odd sizes (an empty one too) equal the reference applied
    to each array, bit for bit, on one thread and split over threads."""
    shapes = [(0,), (1,), (7, 3), (1023,), (5, 5, 5)]
    data = [_data(dtype, s, seed=i) for i, s in enumerate(shapes)]
    hyper = _hyper() | {"amsgrad": True}
    ours = [[p0.copy(), np.zeros_like(p0), np.zeros_like(p0), np.zeros_like(p0)] for p0, _ in data]
    ref = [[a.copy() for a in st] for st in ours]
    for step in range(1, 4):
        optim_fused.adam_steps([(p, grads[step], m, v, vm, step) for (p, m, v, vm), (_, grads) in
                                zip(ours, data, strict=True)], **hyper)  # fmt: skip
        for (p, m, v, vm), (_, grads) in zip(ref, data, strict=True):
            optim_reference.adam_step(p, grads[step], m, v, vm, step=step, **hyper)
    for got, want in zip(ours, ref, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": False, "weight_decay": 0.01,
           "maximize": True}  # fmt: skip
    ours_s = [[p0.copy(), np.zeros_like(p0)] for p0, _ in data]
    ref_s = [[a.copy() for a in st] for st in ours_s]
    for step in range(3):
        optim_fused.sgd_steps([(p, grads[step], b, step == 0) for (p, b), (_, grads) in
                               zip(ours_s, data, strict=True)], **sgd)  # fmt: skip
        for (p, b), (_, grads) in zip(ref_s, data, strict=True):
            optim_reference.sgd_step(p, grads[step], b, first_step=step == 0, **sgd)
    for got, want in zip(ours_s, ref_s, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_group_steps_check_every_array_before_writing() -> None:
    good = [np.ones(5, np.float32) for _ in range(4)]
    bad = [np.ones(5, np.float32), np.ones(4, np.float32), np.ones(5, np.float32), np.ones(5, np.float32)]
    before = good[0].copy()
    with pytest.raises(ValueError, match="grad has shape"):
        optim_fused.adam_steps([(*good, None, 1), (*bad, None, 1)], **_hyper())
    np.testing.assert_array_equal(good[0], before)  # the first array was not updated


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (2,), (3,), (7,), (31,), (33,), (1023,), (3, 5, 7)])
def test_tiny_and_odd_sizes(dtype: type, shape: tuple[int, ...], path: str) -> None:
    p0, grads = _data(dtype, shape, seed=2)
    opts = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
            "decoupled": False, "amsgrad": True, "maximize": False}
    for g, w in zip(_adam_run(optim_fused.adam_step, p0, grads, **opts),
                    _adam_run(optim_reference.adam_step, p0, grads, **opts), strict=True):
        assert g.shape == shape
        np.testing.assert_array_equal(g, w)
    sgd = {"lr": 0.1, "momentum": 0.5, "dampening": 0.1, "nesterov": False, "weight_decay": 0.01,
           "maximize": True}
    for g, w in zip(_sgd_run(optim_fused.sgd_step, p0, grads, **sgd),
                    _sgd_run(optim_reference.sgd_step, p0, grads, **sgd), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
def test_zero_size_arrays(dtype: type, shape: tuple[int, ...]) -> None:
    p = np.zeros(shape, dtype=dtype)
    m, v, vmax, buf = (np.zeros(shape, dtype=dtype) for _ in range(4))
    optim_fused.adam_step(p, p.copy(), m, v, vmax, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
                          weight_decay=0.1, decoupled=True, amsgrad=True, maximize=False)
    optim_fused.sgd_step(p, p.copy(), buf, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True,
                         weight_decay=0.1, maximize=False, first_step=True)
    assert p.shape == shape
    with pytest.raises(ValueError, match="shape"):  # still checked, as the reference does
        optim_fused.sgd_step(p, np.zeros((1,), dtype=dtype), None, lr=0.1, momentum=0.0, dampening=0.0,
                             nesterov=False, weight_decay=0.0, maximize=False, first_step=True)


def test_special_values_propagate_as_in_the_reference(path: str) -> None:
    """inf, NaN, signed zeros and subnormals: NaN lands where NumPy puts it (np.maximum included)."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3e38, 1.0, -2.0], np.float32)
    rng = np.random.default_rng(3)
    p0 = rng.permutation(special)
    grads = [rng.permutation(special) for _ in range(4)] + [np.ones_like(special)]
    # a max_exp_avg_sq that starts with NaN where v is finite (a state loaded from a checkpoint, say)
    vmax0 = np.where(rng.random(special.shape) < 0.5, np.nan, 0.0).astype(np.float32)
    for amsgrad, decoupled in itertools.product([False, True], [False, True]):
        opts = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
                "decoupled": decoupled, "amsgrad": amsgrad, "maximize": False}
        with np.errstate(all="ignore"):
            want = _adam_run(optim_reference.adam_step, p0, grads, vmax0, **opts)
        got = _adam_run(optim_fused.adam_step, p0, grads, vmax0, **opts)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.1,
           "maximize": False}
    with np.errstate(all="ignore"):
        want_sgd = _sgd_run(optim_reference.sgd_step, p0, grads, **sgd)
    for g, w in zip(_sgd_run(optim_fused.sgd_step, p0, grads, **sgd), want_sgd, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_and_grad_untouched(dtype: type, path: str) -> None:
    p0, grads = _data(dtype, (4, 9), seed=4)
    p, g = p0.copy(), grads[0].copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    unused = np.full_like(p, 7.0)  # max_exp_avg_sq without amsgrad: not read, not written
    out = optim_fused.adam_step(p, g, m, v, unused, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
                                weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False)
    assert out is None
    np.testing.assert_array_equal(g, grads[0])
    np.testing.assert_array_equal(unused, 7.0)
    assert not np.array_equal(p, p0) and np.any(m != 0) and np.any(v != 0)

    view = p0.copy()
    base = view.reshape(-1)  # another view of the same memory sees the update
    buf = np.full_like(view, 7.0)  # momentum buffer without momentum: not read, not written
    optim_fused.sgd_step(view, g, buf, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                         weight_decay=0.0, maximize=False, first_step=True)
    np.testing.assert_array_equal(base, (p0 + dtype(-0.1) * g).reshape(-1))
    np.testing.assert_array_equal(buf, 7.0)
    np.testing.assert_array_equal(g, grads[0])


def _adam_args(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> dict[str, Any]:
    return {"param": p, "grad": g, "exp_avg": m, "exp_avg_sq": v, "max_exp_avg_sq": None, "step": 1,
            "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "decoupled": True,
            "amsgrad": False, "maximize": False}


@pytest.mark.parametrize("which", ["param", "grad", "exp_avg", "exp_avg_sq"])
@pytest.mark.parametrize("layout", ["strided", "fortran"])
def test_non_contiguous_rejected_and_reference_handles_it(which: str, layout: str) -> None:
    rng = np.random.default_rng(5)
    arrays = {k: rng.standard_normal((6, 4)).astype(np.float32) for k in ("param", "grad")}
    arrays |= {k: np.zeros((6, 4), np.float32) for k in ("exp_avg", "exp_avg_sq")}
    if layout == "strided":  # every other column of a wider array
        wide = np.zeros((6, 8), np.float32)
        wide[:, ::2] = arrays[which]
        arrays[which] = wide[:, ::2]
    else:  # F order: the same values, another memory layout
        arrays[which] = np.asfortranarray(arrays[which])
    assert not arrays[which].flags.c_contiguous
    before = {k: a.copy() for k, a in arrays.items()}
    args = [arrays[k] for k in ("param", "grad", "exp_avg", "exp_avg_sq")]
    assert not optim_fused.supports(*args)
    with pytest.raises(ValueError, match=f"{which} is not C-contiguous"):
        optim_fused.adam_step(**_adam_args(*args))
    for k, a in arrays.items():  # a rejected call writes nothing
        np.testing.assert_array_equal(a, before[k])
    # what a caller falls back to: the reference takes any layout (and gives the contiguous result)
    contiguous = [np.array(a, order="C") for a in args]  # copies, also of the already contiguous ones
    optim_reference.adam_step(**_adam_args(*args))
    optim_fused.adam_step(**_adam_args(*contiguous))
    for a, c in zip(args, contiguous, strict=True):
        np.testing.assert_array_equal(a, c)


def test_unsupported_arrays_rejected() -> None:
    f32 = np.zeros(3, np.float32)
    for p, g, match in [
        (np.zeros(3, np.float16), np.zeros(3, np.float16), "float32 or float64"),
        (np.zeros(3, np.int64), np.zeros(3, np.int64), "float32 or float64"),
        (f32.copy(), np.zeros(3, np.float64), "grad is float64"),
    ]:
        assert not optim_fused.supports(p, g)
        with pytest.raises(TypeError, match=match):
            optim_fused.sgd_step(p, g, None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                                 weight_decay=0.0, maximize=False, first_step=True)
    frozen = f32.copy()
    frozen.flags.writeable = False
    assert not optim_fused.supports(f32.copy(), f32, frozen)
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        optim_fused.adam_step(**_adam_args(f32.copy(), f32, frozen, f32.copy()))
    # a read-only gradient is fine: it is only read
    assert optim_fused.supports(f32.copy(), frozen, f32.copy(), f32.copy(), None)
    optim_fused.adam_step(**_adam_args(f32.copy(), frozen, f32.copy(), f32.copy()))


@pytest.mark.parametrize("impl", [optim_reference, optim_fused], ids=["reference", "fused"])
def test_same_errors_as_reference(impl: Any) -> None:
    p = np.zeros((2, 3))
    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0,
           "maximize": False, "first_step": True}
    with pytest.raises(ValueError, match="momentum_buffer"):
        impl.sgd_step(p, p.copy(), None, **sgd)
    with pytest.raises(ValueError, match="grad has shape"):
        impl.sgd_step(p, np.zeros((3, 2)), np.zeros_like(p), **sgd)
    with pytest.raises(TypeError, match="grad must be an ndarray"):
        impl.sgd_step(p, [[0.0] * 3] * 2, np.zeros_like(p), **sgd)
    adam = _adam_args(p, p.copy(), np.zeros_like(p), np.zeros_like(p))
    with pytest.raises(ValueError, match="step must be"):
        impl.adam_step(**(adam | {"step": 0}))
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        impl.adam_step(**(adam | {"amsgrad": True}))
    with pytest.raises(ValueError, match="exp_avg_sq has shape"):
        impl.adam_step(**(adam | {"exp_avg_sq": np.zeros(6)}))


def _fresh_module() -> Any:
    """A new, unloaded copy of optim_fused (the real one has already imported numba)."""
    spec = importlib.util.spec_from_file_location("optim_fused_copy", optim_fused.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jit_disabled_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba

    monkeypatch.setattr(numba.config, "DISABLE_JIT", 1)  # what NUMBA_DISABLE_JIT=1 sets at import
    module = _fresh_module()
    assert not module.available()
    assert "NUMBA_DISABLE_JIT" in module.unavailable_reason()


def test_without_numba_unavailable_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the module where `import numba` fails: it imports, says why, refuses to run."""
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` raise ImportError
    module = _fresh_module()
    assert not module.available()
    assert "numba cannot be imported" in module.unavailable_reason()
    p = np.zeros(3, np.float32)
    assert not module.supports(p, p.copy())
    with pytest.raises(RuntimeError, match="optim_reference"):
        module.sgd_step(p, p.copy(), None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                        weight_decay=0.0, maximize=False, first_step=True)
    with pytest.raises(RuntimeError, match="unavailable"):
        module.adam_step(**_adam_args(p, p.copy(), p.copy(), p.copy()))
