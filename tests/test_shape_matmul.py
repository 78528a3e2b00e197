"""Shape and matmul ops beyond the spec table: method forms, views, errors, index forms vs PyTorch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import entrenar.functional as F
from entrenar import Tensor, tensor


def _leaf(*shape: int, dtype: Any = np.float64, seed: int = 0) -> Tensor:
    rng = np.random.default_rng(seed)
    return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)


# ----------------------------------------------------------------------------------- method forms
def test_reshape_and_view_method_forms() -> None:
    x = _leaf(2, 3, 4)
    assert x.reshape(6, 4).shape == (6, 4)
    assert x.reshape((6, 4)).shape == (6, 4)
    assert x.reshape([4, -1]).shape == (4, 6)
    assert x.reshape(-1).shape == (24,)
    assert F.reshape(x, shape=(3, 8)).shape == (3, 8)
    assert x.view(2, 12).shape == (2, 12)
    assert x.view((-1, 2)).shape == (12, 2)
    assert x.view_as(Tensor(np.zeros((4, 6)))).shape == (4, 6)
    assert x.reshape_as(Tensor(np.zeros((24,)))).shape == (24,)


def test_permute_transpose_and_T() -> None:
    x = _leaf(2, 3, 4)
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.permute((2, 0, 1)).shape == (4, 2, 3)
    assert x.transpose(0, -1).shape == (4, 3, 2)
    assert x.T.shape == (4, 3, 2)
    np.testing.assert_array_equal(x.T.data, x.data.T)


def test_expand_methods() -> None:
    x = _leaf(3, 1)
    assert x.expand(2, 3, 5).shape == (2, 3, 5)
    assert x.expand((2, -1, 5)).shape == (2, 3, 5)
    assert x.expand_as(Tensor(np.zeros((4, 3, 2)))).shape == (4, 3, 2)
    y = x.expand(2, 3, 5)
    y.backward(np.ones(y.shape))
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad, np.full((3, 1), 10.0))


def test_split_chunk_return_tuples_like_torch() -> None:
    x = _leaf(7, 2)
    parts = x.split(3)
    assert isinstance(parts, tuple)
    assert [p.shape[0] for p in parts] == [3, 3, 1]
    assert [p.shape[0] for p in x.chunk(3)] == [3, 3, 1]
    assert [p.shape[0] for p in F.chunk(_leaf(6, 1), 4)] == [2, 2, 2]  # fewer chunks than asked
    assert [p.shape[1] for p in x.split([1, 1], dim=1)] == [1, 1]


# ----------------------------------------------------------------------------------- view semantics
def test_reshape_transpose_and_basic_index_share_memory_like_torch_views() -> None:
    x = _leaf(3, 4)
    for y in (x.reshape(12), x.transpose(0, 1), x[1:, ::2], x.unsqueeze(0), x.narrow(1, 1, 2)):
        assert np.shares_memory(y.data, x.data)
    assert not np.shares_memory(x[[0, 2]].data, x.data)  # advanced indexing copies


def test_getitem_full_int_index_is_a_zero_d_tensor() -> None:
    x = _leaf(3, 4)
    y = x[1, 2]
    assert isinstance(y.data, np.ndarray)
    assert y.shape == ()
    y.backward()
    assert x.grad is not None
    assert x.grad[1, 2] == 1.0
    assert x.grad.sum() == 1.0


def test_repeated_advanced_index_accumulates_gradient() -> None:
    x = _leaf(4)
    idx = tensor([0, 2, 2, 2])
    x[idx].sum().backward()
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 3.0, 0.0])


def test_backward_leaves_upstream_gradient_untouched() -> None:
    x, w = _leaf(2, 3, 4), _leaf(5, 4, seed=1)
    for out in (F.linear(x, w), x.reshape(6, 4) @ w.T, x[:, [0, 0]], F.cat([x, x], 1), F.stack([x, x])):
        g = np.random.default_rng(2).standard_normal(out.shape)
        keep = g.copy()
        out.backward(g)
        np.testing.assert_array_equal(g, keep)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda x: x.reshape(5, 5), ValueError, ["reshape", "(5, 5)", "(2, 3, 4)"]),
        (lambda x: x.reshape(-1, -1), ValueError, ["reshape", "-1"]),
        (lambda x: x.transpose(0, 3), IndexError, ["transpose", "3", "(2, 3, 4)"]),
        (lambda x: x.permute(0, 1), ValueError, ["permute", "(2, 3, 4)"]),
        (lambda x: x.permute(0, 1, 1), ValueError, ["permute", "twice"]),
        (lambda x: x.squeeze(3), IndexError, ["squeeze", "(2, 3, 4)"]),
        (lambda x: x.unsqueeze(4), IndexError, ["unsqueeze", "(2, 3, 4)"]),
        (lambda x: x.flatten(2, 1), ValueError, ["flatten"]),
        (lambda x: x.expand(2, 5, 4), ValueError, ["expand", "(2, 5, 4)", "(2, 3, 4)"]),
        (lambda x: x.expand(3, 4), ValueError, ["expand", "(2, 3, 4)"]),
        (lambda x: F.cat([x, Tensor(np.zeros((2, 4, 4)))], 2), ValueError, ["cat", "(2, 3, 4)", "(2, 4, 4)"]),
        (lambda x: F.cat([x], 3), IndexError, ["cat", "(2, 3, 4)"]),
        (lambda x: F.cat([]), TypeError, ["cat"]),
        (lambda x: F.stack([x, x[:1]]), ValueError, ["stack", "(2, 3, 4)", "(1, 3, 4)"]),
        (lambda x: F.stack([x], 4), IndexError, ["stack"]),
        (lambda x: x.split([1, 1], 1), ValueError, ["split", "(2, 3, 4)"]),
        (lambda x: x.chunk(0), ValueError, ["chunk"]),
        (lambda x: x.narrow(2, 3, 2), IndexError, ["narrow", "(2, 3, 4)"]),
        (lambda x: x[5], IndexError, ["getitem", "(2, 3, 4)"]),
        (lambda x: x[:, [0, 3]], IndexError, ["getitem", "(2, 3, 4)"]),
        (lambda x: x[np.array([0.5])], IndexError, ["getitem", "float64"]),
        (lambda x: x.gather(1, tensor(np.zeros((2, 3), dtype=np.int64))), ValueError, ["gather", "(2, 3)"]),
        (lambda x: x.gather(0, tensor(np.full((2, 3, 4), 2))), IndexError, ["gather", "(2, 3, 4)"]),
        (lambda x: x.gather(0, tensor(np.full((2, 3, 4), -1))), IndexError, ["gather"]),
        (lambda x: x.gather(0, Tensor(np.zeros((2, 3, 4)))), TypeError, ["gather", "float64"]),
    ],
)
def test_errors_name_the_op_and_shapes(call: Any, error: type[Exception], words: list[str]) -> None:
    x = _leaf(2, 3, 4)
    with pytest.raises(error) as info:
        call(x)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_matmul_shape_mismatch_message() -> None:
    with pytest.raises(
        ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 6\) cannot be multiplied \(4 != 5\)"
    ):
        F.matmul(_leaf(3, 4), _leaf(5, 6))
    with pytest.raises(ValueError, match=r"matmul: batch dims \(2,\) and \(3,\)"):
        _leaf(2, 3, 4) @ _leaf(3, 4, 5)
    with pytest.raises(ValueError, match="at least 1 dim"):
        F.matmul(_leaf(), _leaf(3))
    with pytest.raises(TypeError, match="same dtype"):
        F.matmul(_leaf(3, 4, dtype=np.float32), _leaf(4, 2))


def test_linear_shape_mismatch_messages() -> None:
    with pytest.raises(ValueError, match=r"linear: input of shape \(5, 3\) and weight of shape \(4, 2\)"):
        F.linear(_leaf(5, 3), _leaf(4, 2))
    with pytest.raises(ValueError, match=r"linear: bias of shape \(3,\)"):
        F.linear(_leaf(5, 3), _leaf(4, 3), _leaf(3))


# ----------------------------------------------------------------------------------- matmul, linear
def test_rmatmul_with_an_ndarray_on_the_left() -> None:
    a = np.random.default_rng(0).standard_normal((2, 3))
    x = _leaf(3, 4)
    out = a @ x
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.data, a @ x.data)
    out.backward(np.ones((2, 4)))
    assert x.grad is not None
    np.testing.assert_allclose(x.grad, a.T @ np.ones((2, 4)))


def test_frozen_weight_gets_no_gradient() -> None:
    x, b = _leaf(5, 3), _leaf(4, seed=2)
    w = Tensor(np.random.default_rng(1).standard_normal((4, 3)))
    F.linear(x, w, b).sum().backward()
    (x @ w.T).sum().backward()
    assert w.grad is None
    assert x.grad is not None and b.grad is not None


def test_linear_float32_stays_float32_and_matches_matmul() -> None:
    x = _leaf(128, 784, dtype=np.float32)
    w, b = _leaf(512, 784, dtype=np.float32, seed=1), _leaf(512, dtype=np.float32, seed=2)
    out = F.linear(x, w, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, x.data @ w.data.T + b.data, rtol=1e-5, atol=1e-4)
    out.backward(np.ones(out.shape, dtype=np.float32))
    for t in (x, w, b):
        assert t.grad is not None and t.grad.dtype == np.float32
    assert b.grad is not None
    np.testing.assert_allclose(b.grad, np.full(512, 128.0))


# ----------------------------------------------------------------------------------- vs PyTorch
_INDICES: list[Any] = [
    (1, Ellipsis, [0, 0, 3]),
    (slice(None), [0, 2], slice(None), 1),
    ([0, 1], 2, [3, 0]),
    (None, [1, 0], Ellipsis, [1, 1]),
    ([[0, 1], [1, 0]], slice(1, None)),
    (np.array([True, False]), 2),
    (np.array([[True, False, True], [False, True, True]]),),
    (Ellipsis, None, slice(None, None, 2)),
    (slice(None), np.array([[0, 2], [1, 1]])),
    (-1, -1, -1),
    [slice(0, 1), 1],
]


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
@pytest.mark.parametrize("index", _INDICES, ids=[str(i) for i in range(len(_INDICES))])
def test_getitem_index_forms_match_torch(index: Any) -> None:
    torch = pytest.importorskip("torch")
    x = _leaf(2, 3, 4, 5)
    t = torch.from_numpy(x.data.copy()).requires_grad_(True)
    tindex = tuple(torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in index)
    if isinstance(index, list):
        tindex = list(tindex)  # type: ignore[assignment]
    ours, theirs = x[index], t[tindex]
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_array_equal(ours.data, theirs.detach().numpy())
    g = np.random.default_rng(1).standard_normal(ours.shape)
    ours.backward(g)
    theirs.backward(torch.from_numpy(g))
    assert x.grad is not None
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12)
