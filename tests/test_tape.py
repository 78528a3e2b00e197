"""The tape's contract, as PyTorch behaves: order, accumulation, graph lifetime, grad mode, dtypes."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import entrenar.functional as F
from entrenar import Tensor, enable_grad, is_grad_enabled, no_grad, set_grad_enabled, tensor
from entrenar.autograd import tape
from entrenar.autograd.registry import OpDef

torch.set_num_threads(1)


def _leaf(*shape: int, seed: int = 0, dtype: Any = np.float64) -> Tensor:
    rng = np.random.default_rng(seed)
    return Tensor(rng.uniform(-1.0, 1.0, size=shape).astype(dtype), requires_grad=True)


# ------------------------------------------------------------------------ a probe op (not registered)
class _Probe:
    """Identity with a label; its backward appends the label to a log (a spy on the tape)."""

    log: ClassVar[list[str]] = []

    @staticmethod
    def forward(x: np.ndarray, *, label: str) -> Any:
        return x.copy(), label

    @staticmethod
    def backward(g: np.ndarray, label: str) -> Any:
        _Probe.log.append(label)
        return (g,)


_PROBE = OpDef("probe", _Probe.forward, _Probe.backward, broadcasts=False, needs_mask=False)


def _probe(x: Tensor, label: str) -> Tensor:
    return _PROBE(x, label=label)


@pytest.fixture
def probe_log() -> Any:
    _Probe.log = []
    yield _Probe.log
    _Probe.log = []


def test_each_node_runs_once_in_reverse_topological_order(probe_log: list[str]) -> None:
    x = _leaf(3)
    # a -> b, a -> c, b -> d, c -> d, a -> d (skip edge), d -> e
    a = _probe(x, "a")
    b = _probe(a * 2.0, "b")
    c = _probe(a.exp(), "c")
    d = _probe(b + c + a, "d")
    e = _probe(d * d, "e")
    e.backward(np.ones(3))
    assert sorted(probe_log) == ["a", "b", "c", "d", "e"], probe_log  # every node exactly once
    pos = {name: i for i, name in enumerate(probe_log)}
    consumers = {"a": ["b", "c", "d"], "b": ["d"], "c": ["d"], "d": ["e"]}
    for node, users in consumers.items():
        for u in users:
            assert pos[u] < pos[node], f"{node} ran before its consumer {u}: {probe_log}"
    # d(e)/dx = 2 d * (2 + e^x + 1) * 1
    xv = x.data
    dv = 2 * xv + np.exp(xv) + xv
    np.testing.assert_allclose(x.grad, 2 * dv * (3 + np.exp(xv)), rtol=1e-12)


def test_every_primitive_backward_runs_once_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from entrenar.autograd.registry import OPS

    calls: dict[str, int] = {}
    for op in OPS.values():
        orig = op.backward

        def spy(*a: Any, _name: str = op.name, _orig: Any = orig) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _orig(*a)

        monkeypatch.setattr(op, "backward", spy)
    x = _leaf(4)
    y = x.exp()  # used three times below: its backward must still run once
    z = y * y + y.tanh() + y
    z.backward(np.ones(4))
    assert calls == {"exp": 1, "mul": 1, "tanh": 1, "add": 2}
    ex = np.exp(x.data)
    np.testing.assert_allclose(x.grad, (2 * ex + (1 - np.tanh(ex) ** 2) + 1) * ex, rtol=1e-12)


def test_shared_subexpression_y_plus_y() -> None:
    x = tensor([1.0, -2.0, 3.0], dtype=np.float64, requires_grad=True)
    y = x * x
    z = y + y
    z.backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, 4 * x.data)


def test_same_tensor_as_both_operands() -> None:
    x = tensor([0.5, 2.0], dtype=np.float64, requires_grad=True)
    (x * x * x).backward(np.ones(2))  # 3x^2
    np.testing.assert_allclose(x.grad, 3 * x.data**2, rtol=1e-15)
    x.grad = None
    (x / x).backward(np.ones(2))  # derivative of a constant 1
    np.testing.assert_allclose(x.grad, 0.0, atol=1e-15)


def test_diamond_graph_matches_torch() -> None:
    xv = np.array([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]])
    x = Tensor(xv.copy(), requires_grad=True)
    a = x.exp()
    b = a * 2.0
    c = a.tanh()
    d = (b * c + a) / (1.0 + c * c)
    d.backward(np.arange(6.0).reshape(2, 3))

    tx = torch.tensor(xv, requires_grad=True)
    ta = tx.exp()
    tb = ta * 2.0
    tc = ta.tanh()
    td = (tb * tc + ta) / (1.0 + tc * tc)
    td.backward(torch.arange(6.0, dtype=torch.float64).reshape(2, 3))
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)


def test_deep_chain_has_no_recursion_error() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + x
    y.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [5001.0, 5001.0])
    np.testing.assert_array_equal(y.data, x.data * 5001)


def test_deep_chain_of_unary_ops() -> None:
    x = tensor([0.5], dtype=np.float64, requires_grad=True)
    y = x
    for _ in range(10000):
        y = y * 1.0001
    y.backward(np.ones(1))
    np.testing.assert_allclose(x.grad, [1.0001**10000], rtol=1e-9)


def test_leaf_gradients_accumulate_across_backward_calls() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    (x * 3.0).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])
    (x * x).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [3.0 + 2.0, 3.0 + 4.0])
    x.zero_grad_()
    assert x.grad is None


def test_constant_inputs_get_no_gradient() -> None:
    x = _leaf(3)
    c = Tensor(np.array([1.0, 2.0, 3.0]))
    (x * c).backward(np.ones(3))
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, c.data)


def test_intermediate_grad_is_none_unless_retained() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x * 3.0
    w = y * y
    w.backward(np.ones(2))
    assert y.grad is None
    assert not y.is_leaf
    assert y.grad_fn == "mul"
    assert x.is_leaf
    assert x.grad_fn is None

    x.grad = None
    y = x * 3.0
    y.retain_grad()
    w = y * y
    w.backward(np.ones(2))
    np.testing.assert_array_equal(y.grad, 2 * y.data)
    np.testing.assert_array_equal(x.grad, 6 * y.data)


def test_retained_intermediate_grad_accumulates_like_torch() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x * 3.0
    y.retain_grad()
    z = y * y
    z.backward(np.ones(2), retain_graph=True)
    z.backward(np.ones(2))
    np.testing.assert_array_equal(y.grad, 4 * y.data)
    np.testing.assert_array_equal(x.grad, 12 * y.data)


def test_retain_grad_needs_requires_grad() -> None:
    with pytest.raises(RuntimeError, match="retain_grad"):
        Tensor(np.ones(2)).retain_grad()


def test_graph_frees_activations_no_backward_needs() -> None:
    # y feeds exp, whose backward needs only exp's output: once the user drops y, its array must go
    # (the tape links nodes, not intermediate tensors), as PyTorch frees such activations.
    x = tensor(np.linspace(-1.0, 1.0, 1000), requires_grad=True)
    y = x * 2.0
    y_data = weakref.ref(y.data)
    z = y.exp()
    del y
    gc.collect()
    assert y_data() is None
    z.sum().backward()
    np.testing.assert_allclose(x.grad, 2.0 * np.exp(2.0 * x.data), rtol=1e-12)


def test_retain_grad_after_later_ops_were_recorded() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    z = (y * y).sum()
    y.retain_grad()  # asked for after y was already used, as PyTorch allows
    z.backward()
    np.testing.assert_allclose(y.grad, 2.0 * y.data)


def test_leaf_that_stops_requiring_grad_after_the_forward_gets_none() -> None:
    # As PyTorch, whose AccumulateGrad reads requires_grad when the gradient arrives.
    w = tensor([1.0, 2.0], requires_grad=True)
    out = (w * 3.0).sum()
    w.requires_grad_(False)
    out.backward()
    assert w.grad is None
    tw = torch.tensor([1.0, 2.0], requires_grad=True)
    tout = (tw * 3.0).sum()
    tw.requires_grad_(False)
    tout.backward()
    assert tw.grad is None


def test_second_backward_raises_after_graph_is_freed() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    z = x * x
    z.backward(np.ones(2))
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        z.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, 2 * x.data)  # the failed call left the gradient alone


def test_backward_through_freed_subgraph_from_a_new_root_raises() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x.exp()
    y.backward(np.ones(2))
    with pytest.raises(RuntimeError, match="exp"):
        (y * 2.0).backward(np.ones(2))


def test_retain_graph_allows_a_second_backward_and_gradients_add() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    z = x * x
    z.backward(np.ones(2), retain_graph=True)
    z.backward(np.ones(2), retain_graph=True)
    z.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, 6 * x.data)
    with pytest.raises(RuntimeError):
        z.backward(np.ones(2))


def test_backward_on_non_scalar_without_grad_raises() -> None:
    z = _leaf(2, 3) * 2.0
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        z.backward()


def test_backward_on_one_element_tensor_defaults_to_ones() -> None:
    x = _leaf(1, 1)
    (x * 5.0).backward()
    np.testing.assert_array_equal(x.grad, [[5.0]])


def test_backward_with_gradient_of_wrong_shape_raises_value_error() -> None:
    z = _leaf(2, 3) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        z.backward(np.ones((3, 2)))
    with pytest.raises(ValueError):
        z.backward(np.ones(6))
    with pytest.raises(ValueError):
        z.backward(Tensor(np.ones((1, 3))))  # broadcastable is not enough


def test_backward_on_tensor_without_grad_raises() -> None:
    t = Tensor(np.ones(3)) * 2.0
    with pytest.raises(RuntimeError, match="does not require grad"):
        t.backward(np.ones(3))
    x = _leaf(3)
    with no_grad():
        y = x * 2.0
    with pytest.raises(RuntimeError):
        y.backward(np.ones(3))


def test_backward_on_a_leaf_sets_its_grad() -> None:
    x = _leaf(3)
    g = np.array([1.0, 2.0, 3.0])
    x.backward(g)
    np.testing.assert_array_equal(x.grad, g)
    assert not np.shares_memory(x.grad, g)


def test_backward_op_returning_wrong_shape_is_caught_by_the_tape() -> None:
    bad = OpDef(
        "bad_shape",
        lambda x: (x.copy(), None),
        lambda g, _: (g[:-1],),
        broadcasts=False,
        needs_mask=False,
    )
    x = _leaf(4)
    y = bad(x)
    with pytest.raises(RuntimeError, match=r"bad_shape.*\(3,\).*\(4,\)"):
        y.backward(np.ones(4))


def test_backward_op_returning_wrong_number_of_grads_is_caught() -> None:
    bad = OpDef(
        "bad_count",
        lambda x: (x.copy(), None),
        lambda g, _: (g, g),
        broadcasts=False,
        needs_mask=False,
    )
    y = bad(_leaf(2))
    with pytest.raises(RuntimeError, match=r"bad_count.*2 gradients for 1 inputs"):
        y.backward(np.ones(2))


@pytest.mark.parametrize(
    ("shape", "target"),
    [((2, 3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((2, 3, 4), (1, 1, 4)), ((5,), ()), ((3, 4), (3, 4))],
)
def test_unbroadcast_sums_back_to_shape(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    g = np.random.default_rng(0).standard_normal(shape)
    tg = torch.from_numpy(g).sum_to_size(target).numpy()
    out = tape.unbroadcast(g, target)
    assert out.shape == target
    np.testing.assert_allclose(out, tg, rtol=1e-12)


def test_broadcast_gradients_are_reduced_to_input_shapes() -> None:
    a = _leaf(2, 1, 3, seed=1)
    b = _leaf(4, 1, seed=2)
    (a * b).backward(np.ones((2, 4, 3)))
    assert a.grad.shape == (2, 1, 3)
    assert b.grad.shape == (4, 1)
    np.testing.assert_allclose(a.grad, np.broadcast_to(b.data.sum(), (2, 1, 3)), rtol=1e-12)
    np.testing.assert_allclose(b.grad, np.full((4, 1), a.data.sum()), rtol=1e-12)


# ------------------------------------------------------------------------------------- grad mode
def test_no_grad_records_nothing() -> None:
    x = _leaf(3)
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
    assert is_grad_enabled()
    assert not y.requires_grad
    assert y.is_leaf


def test_grad_modes_nest_and_restore() -> None:
    x = _leaf(3)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        with enable_grad():
            assert is_grad_enabled()
            y = x * 2.0
            with set_grad_enabled(False):
                assert not is_grad_enabled()
                w = x * 2.0
                with set_grad_enabled(True):
                    assert is_grad_enabled()
                assert not is_grad_enabled()
            assert is_grad_enabled()
        assert not is_grad_enabled()
        with no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert y.requires_grad
    assert not w.requires_grad


def test_grad_mode_restored_on_exception() -> None:
    with pytest.raises(KeyError), no_grad():
        raise KeyError("boom")
    assert is_grad_enabled()
    with no_grad():
        with pytest.raises(ZeroDivisionError), enable_grad():
            raise ZeroDivisionError
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_works_as_a_decorator() -> None:
    x = _leaf(2)

    @no_grad()
    def f(t: Tensor) -> Tensor:
        assert not is_grad_enabled()
        return t * 2.0

    assert not f(x).requires_grad
    assert not f(x).requires_grad  # the same decorator instance is reusable
    assert is_grad_enabled()


def test_set_grad_enabled_as_a_function_like_torch() -> None:
    try:
        set_grad_enabled(False)
        assert not is_grad_enabled()
    finally:
        with set_grad_enabled(True):
            pass
        tape._MODE.enabled = True


def test_grad_mode_is_thread_local() -> None:
    seen: dict[str, Any] = {}
    main_disabled = threading.Event()
    thread_disabled = threading.Event()
    main_checked = threading.Event()

    def worker() -> None:
        main_disabled.wait(5)
        seen["thread_sees_main_no_grad"] = is_grad_enabled()
        x = _leaf(2)
        seen["thread_records"] = (x * 2.0).requires_grad
        with no_grad():
            thread_disabled.set()
            main_checked.wait(5)
            seen["thread_inside"] = is_grad_enabled()
        seen["thread_after"] = is_grad_enabled()

    th = threading.Thread(target=worker)
    th.start()
    with no_grad():
        main_disabled.set()
        thread_disabled.wait(5)
        assert not is_grad_enabled()
    assert is_grad_enabled()  # the worker is still inside its no_grad
    main_checked.set()
    th.join(5)
    assert seen == {
        "thread_sees_main_no_grad": True,
        "thread_records": True,
        "thread_inside": False,
        "thread_after": True,
    }


# ------------------------------------------------------------------------------ requires_grad rules
@pytest.mark.parametrize(
    "data", [np.array([1, 2], dtype=np.int64), np.array([1, 2], dtype=np.int32), np.array([True, False])]
)
def test_integer_and_bool_tensors_cannot_require_grad(data: np.ndarray) -> None:
    with pytest.raises(TypeError, match="floating point"):
        Tensor(data, requires_grad=True)
    with pytest.raises(TypeError):
        tensor(data.tolist(), requires_grad=True)
    t = Tensor(data)
    with pytest.raises(TypeError):
        t.requires_grad_()
    with pytest.raises(TypeError):
        t.requires_grad = True
    assert not t.requires_grad


def test_requires_grad_of_non_leaf_cannot_be_switched_off() -> None:
    y = _leaf(2) * 2.0
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad = False


def test_requires_grad_propagates_from_any_input() -> None:
    x = _leaf(2)
    c = Tensor(np.ones(2))
    assert (c + x).requires_grad
    assert (x + c).requires_grad
    assert not (c + c).requires_grad
    assert (c + c).is_leaf


# --------------------------------------------------------------------------------------- detach
def test_detach_cuts_the_graph_and_shares_data() -> None:
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x * 3.0
    d = y.detach()
    assert not d.requires_grad
    assert d.is_leaf
    assert np.shares_memory(d.data, y.data)
    d.data[0] = 100.0
    assert y.data[0] == 100.0
    z = d * x  # only the direct path to x: dz/dx = d
    z.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, d.data)


# ------------------------------------------------------------------------------------- aliasing
def test_leaf_grads_never_alias_each_other_or_the_callers_gradient() -> None:
    x = _leaf(3, seed=1)
    y = _leaf(3, seed=2)
    g = np.array([1.0, 2.0, 3.0])
    z = x + y
    z.backward(g)
    assert not np.shares_memory(x.grad, y.grad)
    assert not np.shares_memory(x.grad, g)
    assert not np.shares_memory(y.grad, g)
    x.grad *= 10.0
    np.testing.assert_array_equal(y.grad, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])
    g[:] = 0.0
    np.testing.assert_array_equal(y.grad, [1.0, 2.0, 3.0])


def test_leaf_grads_do_not_alias_through_intermediate_identity_gradients() -> None:
    x = _leaf(3, seed=1)
    y = _leaf(3, seed=2)
    w = _leaf(3, seed=3)
    z = ((x + y) * 2.0 + w) - x.neg()
    z.backward(np.ones(3))
    grads = [x.grad, y.grad, w.grad]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.shares_memory(grads[i], grads[j])
    x.grad *= 0.0
    np.testing.assert_array_equal(y.grad, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(w.grad, [1.0, 1.0, 1.0])


def test_retained_grad_does_not_alias_leaf_grad() -> None:
    x = _leaf(3)
    y = x + 0.0
    y.retain_grad()
    (y * 2.0).backward(np.ones(3))
    assert not np.shares_memory(y.grad, x.grad)
    y.grad[:] = -1.0
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


def test_reshape_view_grads_do_not_alias() -> None:
    x = _leaf(2, 3, seed=1)
    y = _leaf(6, seed=2)
    g = np.arange(6.0)
    z = x.reshape(6) + y
    z.backward(g)
    assert x.grad.shape == (2, 3)
    assert not np.shares_memory(x.grad, y.grad)
    assert not np.shares_memory(x.grad, g)
    x.grad *= 10.0
    np.testing.assert_array_equal(y.grad, np.arange(6.0))
    np.testing.assert_array_equal(g, np.arange(6.0))

    a = _leaf(2, 3, seed=3)
    b = _leaf(3, 2, seed=4)
    (a.reshape(6) + b.reshape(6)).backward(np.arange(6.0))
    assert not np.shares_memory(a.grad, b.grad)
    a.grad *= 0.0
    np.testing.assert_array_equal(b.grad, np.arange(6.0).reshape(3, 2))


# ---------------------------------------------------------------------------------------- dtypes
_UNARY = ["exp", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus", "abs", "neg"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_through_ops_and_gradients(dtype: Any) -> None:
    x = _leaf(3, 4, dtype=dtype)
    y = x
    for name in _UNARY:
        y = getattr(F, name)(y)
        assert y.dtype == dtype, name
    y = y * 1.5 + 2.0 - 0.25
    y = y / 3.0
    y = y**2.0
    y = 2.0**y
    y = F.sqrt(F.softplus(y)) + F.log(F.softplus(y)) + F.rsqrt(F.softplus(y) + 1.0)
    y = F.maximum(y, x) + F.minimum(y, 0.5) + F.where(x.data > 0, y, 1.0) + F.clamp(y, -1.0, 1.0)
    assert y.dtype == dtype
    y.backward(np.ones((3, 4), dtype=dtype))
    assert x.grad is not None
    assert x.grad.dtype == dtype


def test_float32_times_python_or_numpy_float_stays_float32() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    assert x.dtype == np.float32
    for y in (x * 0.1, 0.1 * x, x + 1e-3, x / 3.0, 1.0 / x, x**0.5, x - np.float64(0.1), np.float64(2) * x):
        assert y.dtype == np.float32
    y = x * 0.1
    y.backward(np.ones(2))  # a float64 gradient is cast to the tensor's dtype
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [0.1, 0.1], rtol=1e-7)


def test_float32_with_float64_tensor_promotes_like_torch() -> None:
    a = tensor([1.0, 2.0], requires_grad=True)
    b = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    c = a * b
    assert c.dtype == np.float64
    c.backward(np.ones(2))
    assert a.grad.dtype == np.float32
    assert b.grad.dtype == np.float64


# -------------------------------------------------------------------------------------- nan / inf
def test_nan_and_inf_propagate_forward_and_backward() -> None:
    x = tensor([np.nan, np.inf, -np.inf, 1.0], dtype=np.float64, requires_grad=True)
    with np.errstate(all="ignore"):
        y = x * 2.0 + x.exp()
        y.backward(np.ones(4))
    assert np.isnan(y.data[0])
    assert y.data[1] == np.inf
    assert y.data[2] == -np.inf
    assert np.isfinite(y.data[3])
    assert np.isnan(x.grad[0])
    assert x.grad[1] == np.inf
    assert x.grad[2] == 2.0
    np.testing.assert_allclose(x.grad[3], 2.0 + np.e)


def test_nan_gradient_argument_propagates() -> None:
    x = _leaf(3)
    y = x * 2.0
    y.backward(np.array([np.nan, 1.0, np.inf]))
    assert np.isnan(x.grad[0])
    assert x.grad[1] == 2.0
    assert x.grad[2] == np.inf


def test_backward_runs_inside_no_grad() -> None:
    """Grad mode decides what is recorded, not whether a recorded graph can be differentiated."""
    x = tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    y = x * x
    with no_grad():
        y.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
