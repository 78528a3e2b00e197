"""Tensor construction and API: dtypes and copies as `torch.tensor`, attributes, operators, indexing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from entrenar import Tensor, tensor

torch.set_num_threads(1)

_TORCH_TO_NP = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.bool: np.bool_,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.int16: np.int16,
}


# ---------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "data",
    [
        1.5,
        3,
        True,
        [1.0, 2.0],
        [1, 2, 3],
        [[1, 2], [3, 4]],
        [1, 2.5],
        [True, False],
        [[0.5], [1.5]],
        np.float64(2.0),
        np.float32(2.0),
        np.int32(7),
        np.array([1.0, 2.0]),
        np.array([1.0, 2.0], dtype=np.float32),
        np.array([1, 2], dtype=np.int32),
        np.array([1, 2], dtype=np.uint8),
        np.array([True, False]),
        np.array(3.0),
    ],
    ids=repr,
)
def test_tensor_dtype_matches_torch_tensor(data: Any) -> None:
    t = tensor(data)
    ref = torch.tensor(data)
    assert t.dtype == _TORCH_TO_NP[ref.dtype]
    assert t.shape == tuple(ref.shape)
    np.testing.assert_array_equal(t.data, ref.numpy())


def test_tensor_python_scalar_kinds() -> None:
    assert tensor(1.5).dtype == np.float32
    assert tensor(1).dtype == np.int64
    assert tensor(True).dtype == np.bool_
    assert tensor(1.5).shape == ()
    assert tensor([]).dtype == np.float32
    assert tensor([]).shape == (0,)


@pytest.mark.parametrize(
    ("data", "dtype"),
    [
        ([1, 2], np.float64),
        ([1.5, 2.5], np.float64),
        ([1.0], np.float16),
        (np.arange(3.0), np.float32),
        ([1.7, -2.2], np.int64),
        ([0, 1], np.bool_),
        (2, "float64"),
    ],
)
def test_explicit_dtype_is_honoured(data: Any, dtype: Any) -> None:
    t = tensor(data, dtype=dtype)
    assert t.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(t.data, np.array(data).astype(dtype))


def test_tensor_copies_its_input() -> None:
    a = np.array([1.0, 2.0, 3.0])
    t = tensor(a)
    assert not np.shares_memory(t.data, a)
    a[0] = 100.0
    assert t.data[0] == 1.0
    t2 = tensor(t)
    assert not np.shares_memory(t2.data, t.data)
    assert t2.dtype == t.dtype
    t3 = tensor(a, dtype=np.float64)
    assert not np.shares_memory(t3.data, a)


def test_tensor_requires_grad_flag() -> None:
    t = tensor([1.0, 2.0], requires_grad=True)
    assert t.requires_grad
    assert t.is_leaf
    assert t.grad is None
    assert not tensor([1.0, 2.0]).requires_grad
    with pytest.raises(TypeError):
        tensor([1, 2], requires_grad=True)


def test_tensor_rejects_non_numeric_data() -> None:
    with pytest.raises(TypeError, match="dtype"):
        tensor(["a", "b"])


def test_Tensor_wraps_an_ndarray_without_copying() -> None:
    a = np.array([1.0, 2.0], dtype=np.float64)
    t = Tensor(a)
    assert t.data is a
    a[0] = 5.0
    assert t.data[0] == 5.0
    assert t.dtype == np.float64
    assert not t.requires_grad
    assert Tensor(a, requires_grad=True).requires_grad
    assert Tensor([1.0, 2.0]).dtype == np.float32  # non-arrays are converted as tensor() does


# ------------------------------------------------------------------------------------ attributes
def test_basic_attributes() -> None:
    a = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(a, requires_grad=True)
    assert t.shape == (2, 3, 4)
    assert isinstance(t.shape, tuple)
    assert t.ndim == 3
    assert t.dim() == 3
    assert t.dtype == np.float64
    assert t.size() == (2, 3, 4)
    assert t.size(1) == 3
    assert t.size(-1) == 4
    assert t.numel() == 24
    assert len(t) == 2
    assert t.data is a
    assert t.numpy() is a
    assert t.tolist() == a.tolist()
    with pytest.raises(TypeError):
        len(tensor(1.0))


def test_T_reverses_dimensions() -> None:
    a = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(a, requires_grad=True)
    assert t.T.shape == (4, 3, 2)
    np.testing.assert_array_equal(t.T.data, a.T)
    g = np.random.default_rng(0).standard_normal((4, 3, 2))
    t.T.backward(g)
    np.testing.assert_array_equal(t.grad, g.T)
    m = tensor([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(m.T.data, [[1.0], [2.0], [3.0]])


def test_item_and_scalar_conversions() -> None:
    t = tensor([[2.5]])
    assert t.item() == 2.5
    assert isinstance(t.item(), float)
    assert isinstance(tensor(3).item(), int)
    assert float(t) == 2.5
    assert int(tensor(7)) == 7
    assert bool(tensor([1.0]))
    assert not bool(tensor(0.0))
    with pytest.raises(ValueError, match="3 elements"):
        tensor([1.0, 2.0, 3.0]).item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(tensor([1.0, 2.0]))


def test_numpy_shares_memory_and_array_protocol() -> None:
    t = tensor([1.0, 2.0])
    n = t.numpy()
    n[0] = 9.0
    assert t.data[0] == 9.0
    assert np.asarray(t) is t.data
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(np.array(t), [9.0, 2.0])


def test_detach_returns_a_leaf_sharing_data() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2.0).detach()
    assert not y.requires_grad
    assert y.is_leaf
    assert y.grad_fn is None
    d = x.detach()
    assert d.data is x.data


def test_backward_method_fills_grad() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    (x * x).backward(np.ones(2, dtype=np.float32))
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_tensors_are_hashable_by_identity() -> None:
    a, b = tensor([1.0]), tensor([1.0])
    assert len({a, b}) == 2
    assert {a: 1}[a] == 1


def test_repr() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    assert repr(x) == "tensor([1., 2.], requires_grad=True)"
    assert repr(x * 2.0) == "tensor([2., 4.], grad_fn=<mul>)"
    assert repr(tensor([1, 2])) == "tensor([1, 2])"
    assert repr(tensor([1.5], dtype=np.float64)) == "tensor([1.5], dtype=float64)"
    r = repr(tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert r.startswith("tensor([[1., 2.],")
    assert "3., 4." in r


# ------------------------------------------------------------------------------------- operators
_A = np.array([[0.5, -1.5, 2.0], [1.2, 0.7, -0.3]])
_B = np.array([[1.5, 0.8, 0.6], [0.9, 2.2, 1.1]])


def _pair() -> tuple[Tensor, Tensor, torch.Tensor, torch.Tensor]:
    return (
        Tensor(_A.copy(), requires_grad=True),
        Tensor(_B.copy(), requires_grad=True),
        torch.tensor(_A, requires_grad=True),
        torch.tensor(_B, requires_grad=True),
    )


_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: b**a,
    "radd": lambda a, b: 2.0 + a,
    "rsub": lambda a, b: 2.0 - a,
    "rmul": lambda a, b: 3.0 * a,
    "rdiv": lambda a, b: 2.0 / b,
    "rpow": lambda a, b: 2.0**a,
    "neg": lambda a, b: -a,
    "chain": lambda a, b: -(a - b) * (2 - b) / (b + 1) ** 2,
}


@pytest.mark.parametrize("name", list(_BINARY))
def test_operators_match_torch_in_value_and_gradient(name: str) -> None:
    fn = _BINARY[name]
    a, b, ta, tb = _pair()
    out = fn(a, b)
    ref = fn(ta, tb)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-13)
    g = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(g)
    ref.backward(torch.from_numpy(g))
    for ours, theirs in ((a, ta), (b, tb)):
        if theirs.grad is None:
            assert ours.grad is None
        else:
            np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12)


def test_reflected_ops_are_not_swapped() -> None:
    t = tensor([4.0])
    assert (2 - t).item() == -2.0
    assert (t - 2).item() == 2.0
    assert (2 / t).item() == 0.5
    assert (t / 2).item() == 2.0
    assert (2**t).item() == 16.0
    assert (t**2).item() == 16.0
    assert (-t).item() == -4.0


def test_ndarray_on_the_left_returns_a_tensor() -> None:
    x = tensor([1.0, 2.0], requires_grad=True)
    a = np.array([3.0, 4.0], dtype=np.float32)
    for out, expect in (
        (a + x, [4.0, 6.0]),
        (a - x, [2.0, 2.0]),
        (a * x, [3.0, 8.0]),
        (a / x, [3.0, 2.0]),
    ):
        assert isinstance(out, Tensor)
        assert out.requires_grad
        np.testing.assert_array_equal(out.data, expect)
    (a - x).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [-1.0, -1.0])


def test_operators_with_nested_lists() -> None:
    x = tensor([1.0, 2.0])
    other = [10.0, 20.0]
    out = x + other
    assert isinstance(out, Tensor)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, [11.0, 22.0])


def test_matmul_operator() -> None:
    a, b = _A.copy(), _B.T.copy()
    x = Tensor(a, requires_grad=True)
    y = Tensor(b, requires_grad=True)
    out = x @ y
    np.testing.assert_allclose(out.data, a @ b, rtol=1e-13)
    g = np.random.default_rng(1).standard_normal((2, 2))
    out.backward(g)
    np.testing.assert_allclose(x.grad, g @ b.T, rtol=1e-13)
    np.testing.assert_allclose(y.grad, a.T @ g, rtol=1e-13)
    left = a @ y  # ndarray @ Tensor
    assert isinstance(left, Tensor)
    np.testing.assert_allclose(left.data, a @ b, rtol=1e-13)


@pytest.mark.parametrize(
    "fn", [lambda t: t + 2.5, lambda t: 2.5 * t, lambda t: t / 2, lambda t: t / t, lambda t: 1 / t]
)
def test_integer_tensor_promotes_to_default_float_like_torch(fn: Any) -> None:
    ours = fn(tensor([1, 2]))
    theirs = fn(torch.tensor([1, 2]))
    assert ours.dtype == _TORCH_TO_NP[theirs.dtype]


def test_integer_arithmetic_stays_integer() -> None:
    t = tensor([1, 2, 3])
    for out in (t + 1, t * 2, 3 - t, t + t):
        assert out.dtype == np.int64
        assert not out.requires_grad
    np.testing.assert_array_equal((3 - t).data, [2, 1, 0])


# ----------------------------------------------------------------------------------- comparisons
@pytest.mark.parametrize(
    ("op", "ufunc"),
    [
        ("__lt__", np.less),
        ("__le__", np.less_equal),
        ("__gt__", np.greater),
        ("__ge__", np.greater_equal),
        ("__eq__", np.equal),
        ("__ne__", np.not_equal),
        ("lt", np.less),
        ("eq", np.equal),
        ("ge", np.greater_equal),
    ],
)
def test_comparisons_return_bool_tensors_without_grad(op: str, ufunc: Any) -> None:
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([3.0, 2.0, 1.0])
    x = Tensor(a.copy(), requires_grad=True)
    for other, o in ((Tensor(b.copy(), requires_grad=True), b), (2.0, 2.0), (b, b)):
        out = getattr(x, op)(other)
        assert isinstance(out, Tensor)
        assert out.dtype == np.bool_
        assert not out.requires_grad
        assert out.is_leaf
        np.testing.assert_array_equal(out.data, ufunc(a, o))


def test_comparison_operators_and_reflection() -> None:
    x = tensor([1.0, 2.0, 3.0])
    np.testing.assert_array_equal((x > 2).data, [False, False, True])
    np.testing.assert_array_equal((2 < x).data, [False, False, True])  # noqa: SIM300 - reflected
    np.testing.assert_array_equal((x == 2).data, [False, True, False])
    np.testing.assert_array_equal((x != 2).data, [True, False, True])
    left = np.array([3.0, 2.0, 1.0]) <= x
    assert isinstance(left, Tensor)
    np.testing.assert_array_equal(left.data, [False, True, True])


# -------------------------------------------------------------------------------------- indexing
_IDX: list[Any] = [
    1,
    -1,
    (0, 2),
    slice(1, None),
    (slice(None), slice(0, 4, 2)),
    (Ellipsis, 1),
    (None, 1),
    np.array([2, 0, 2]),
    (np.array([0, 1]), np.array([3, 3])),
    (slice(None), np.array([1, 1, 0])),
    np.array([True, False, True]),
]


@pytest.mark.parametrize("index", _IDX, ids=repr)
def test_indexing_matches_torch(index: Any) -> None:
    a = np.arange(12.0).reshape(3, 4) / 7.0
    x = Tensor(a.copy(), requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    tidx = (
        tuple(torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in index)
        if isinstance(index, tuple)
        else (torch.from_numpy(index) if isinstance(index, np.ndarray) else index)
    )
    out = x[index]
    ref = tx[tidx]
    assert out.shape == tuple(ref.shape)
    np.testing.assert_array_equal(out.data, ref.detach().numpy())
    g = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(g)
    ref.backward(torch.from_numpy(g))
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-13)


def test_index_with_tensors() -> None:
    x = tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    rows = x[tensor([2, 0, 2])]
    np.testing.assert_array_equal(rows.data, [[5.0, 6.0], [1.0, 2.0], [5.0, 6.0]])
    rows.backward(np.ones((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(x.grad, [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    masked = x[x > 3.5]
    np.testing.assert_array_equal(masked.data, [4.0, 5.0, 6.0])


def test_indexing_result_is_not_a_view_of_data_for_gradients() -> None:
    x = tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x[1:]
    y.backward(np.ones(2, dtype=np.float32))
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 1.0])
    assert x.grad.shape == (3,)


def test_out_of_range_index_raises() -> None:
    x = tensor([1.0, 2.0, 3.0])
    with pytest.raises(IndexError):
        x[5]
    with pytest.raises(IndexError):
        x[np.array([0, 3])]


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8])
def test_a_python_scalar_takes_an_integer_tensors_dtype_as_in_torch(dtype: Any) -> None:
    """With no floating tensor among the arguments, a scalar takes the first tensor's dtype (a mutant
    that dropped this rule promoted int32 + 3 to int64)."""
    x = tensor(np.array([1, 2], dtype=dtype))
    t = torch.from_numpy(np.array([1, 2], dtype=dtype))
    for ours, theirs in ((x + 3, t + 3), (x * 2, t * 2), (3 - x, 3 - t)):
        assert ours.dtype == dtype
        assert str(theirs.dtype) == f"torch.{np.dtype(dtype).name}"
        np.testing.assert_array_equal(ours.data, theirs.numpy())
