"""Property tests (hypothesis): broadcasting binary ops and random expression graphs against PyTorch,
and algebraic laws that hold for any input."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import entrenar.functional as F
from entrenar import Tensor

torch.set_num_threads(1)
TF = torch.nn.functional

_SEEDS = st.integers(0, 2**32 - 1)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, requires_grad=True)


def _assert_close(ours: Any, theirs: Any, rtol: float = 1e-9, what: str = "") -> None:
    """|a - b| <= rtol * |b| + atol, atol = max(1e-3 rtol max|b|, 1e-13): values near 0 are roundoff.

    The inputs are O(1), so a wrong gradient is off by far more than 1e-13 anywhere.
    """
    ours = np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    scale = np.max(np.abs(theirs), initial=0.0)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=max(rtol * 1e-3 * scale, 1e-13), err_msg=what)


# ------------------------------------------------------------------------------ broadcasting ops
def _uniform(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=shape)


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


# name: (entrenar op, torch op, sample a, sample b)
_BINARY: dict[str, tuple[Callable[..., Any], Callable[..., Any], Any, Any]] = {
    "add": (F.add, torch.add, None, None),
    "sub": (F.sub, torch.sub, None, None),
    "mul": (F.mul, torch.mul, None, None),
    "div": (F.div, torch.div, None, _away_from_zero),
    "maximum": (F.maximum, torch.maximum, None, None),
    "minimum": (F.minimum, torch.minimum, None, None),
    "pow": (F.pow, torch.pow, lambda r, s: _uniform(r, s, 0.5, 2.0), None),
}


@settings(deadline=None, max_examples=60)
@given(
    name=st.sampled_from(sorted(_BINARY)),
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
    seed=_SEEDS,
    ties=st.booleans(),
)
def test_broadcasting_binary_ops_match_torch(name: str, shapes: Any, seed: int, ties: bool) -> None:
    ours_fn, torch_fn, sample_a, sample_b = _BINARY[name]
    sa, sb = shapes.input_shapes
    rng = np.random.default_rng(seed)
    a = (sample_a or (lambda r, s: _uniform(r, s, -2.0, 2.0)))(rng, sa)
    b = (sample_b or (lambda r, s: _uniform(r, s, -2.0, 2.0)))(rng, sb)
    if ties and sample_a is None and sample_b is None:  # equal values: maximum/minimum split the gradient
        a = rng.integers(-1, 2, size=sa).astype(np.float64)
        b = rng.integers(-1, 2, size=sb).astype(np.float64)
    x, y = Tensor(a.copy(), requires_grad=True), Tensor(b.copy(), requires_grad=True)
    tx, ty = _t(a), _t(b)
    out, ref = ours_fn(x, y), torch_fn(tx, ty)
    assert out.shape == shapes.result_shape
    _assert_close(out.data, ref.detach().numpy(), 1e-12, f"{name} forward")
    w = rng.standard_normal(out.shape)
    out.backward(w)
    ref.backward(torch.from_numpy(w))
    assert x.grad.shape == sa
    assert y.grad.shape == sb
    _assert_close(x.grad, tx.grad.numpy(), 1e-9, f"{name} grad a")
    _assert_close(y.grad, ty.grad.numpy(), 1e-9, f"{name} grad b")


@settings(deadline=None, max_examples=30)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, max_side=4), seed=_SEEDS)
def test_broadcasting_where_matches_torch(shapes: Any, seed: int) -> None:
    sc, sa, sb = shapes.input_shapes
    rng = np.random.default_rng(seed)
    cond = rng.random(sc) < 0.5
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    x, y = Tensor(a.copy(), requires_grad=True), Tensor(b.copy(), requires_grad=True)
    tx, ty = _t(a), _t(b)
    out = F.where(Tensor(np.asarray(cond)), x, y)
    ref = torch.where(torch.from_numpy(np.asarray(cond)), tx, ty)
    assert out.shape == shapes.result_shape
    np.testing.assert_array_equal(out.data, ref.detach().numpy())
    w = rng.standard_normal(out.shape)
    out.backward(w)
    ref.backward(torch.from_numpy(w))
    _assert_close(x.grad, tx.grad.numpy(), 1e-12, "where grad a")
    _assert_close(y.grad, ty.grad.numpy(), 1e-12, "where grad b")


@settings(deadline=None, max_examples=30)
@given(
    name=st.sampled_from(["add", "sub", "mul", "div", "pow", "maximum", "minimum"]),
    shape=st.lists(st.integers(1, 4), max_size=3).map(tuple),
    scalar=st.floats(0.5, 2.0),
    left=st.booleans(),
    seed=_SEEDS,
)
def test_binary_ops_with_a_python_scalar_match_torch(
    name: str, shape: tuple[int, ...], scalar: float, left: bool, seed: int
) -> None:
    ours_fn, torch_fn, _, _ = _BINARY[name]
    a = np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)
    x, tx = Tensor(a.copy(), requires_grad=True), _t(a)
    # torch.maximum takes tensors only: a 0-d tensor is the same operand
    ts: Any = torch.tensor(scalar, dtype=torch.float64) if name in ("maximum", "minimum") else scalar
    out = ours_fn(scalar, x) if left else ours_fn(x, scalar)
    ref = torch_fn(ts, tx) if left else torch_fn(tx, ts)
    assert out.dtype == np.float64
    _assert_close(out.data, ref.detach().numpy(), 1e-12, name)
    w = np.random.default_rng(seed + 1).standard_normal(out.shape)
    out.backward(w)
    ref.backward(torch.from_numpy(w))
    _assert_close(x.grad, tx.grad.numpy(), 1e-9, f"{name} grad")


# ------------------------------------------------------------------------ random expression graphs
_E = SimpleNamespace(
    F=F,
    where=F.where,
    softplus=F.softplus,
    idx=lambda values: np.asarray(values, dtype=np.int64),
)
_T = SimpleNamespace(
    F=SimpleNamespace(
        **{n: getattr(torch, n) for n in ("exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "neg")},
        **{n: getattr(TF, n) for n in ("relu", "gelu", "silu", "softplus", "leaky_relu", "softmax")},
        **{n: getattr(torch, n) for n in ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "clamp")},
        **{n: getattr(torch, n) for n in ("sum", "mean", "amax", "amin", "logsumexp", "var", "cat", "stack")},
        log_softmax=TF.log_softmax,
        layer_norm=TF.layer_norm,
        rms_norm=TF.rms_norm,
        matmul=torch.matmul,
        transpose=torch.transpose,
        reshape=torch.reshape,
    ),
    where=torch.where,
    softplus=TF.softplus,
    idx=lambda values: torch.tensor(values, dtype=torch.int64),
)

# each entry works on entrenar's namespace and on torch's alike; inputs are kept in each op's domain
_UNARY: dict[str, Callable[[Any, Any], Any]] = {
    "neg": lambda m, a: m.F.neg(a),
    "exp(tanh)": lambda m, a: m.F.exp(m.F.tanh(a)),
    "log(softplus)": lambda m, a: m.F.log(m.F.softplus(a) + 0.01),
    "sqrt(softplus)": lambda m, a: m.F.sqrt(m.F.softplus(a) + 0.01),
    "rsqrt(softplus)": lambda m, a: m.F.rsqrt(m.F.softplus(a) + 0.1),
    "tanh": lambda m, a: m.F.tanh(a),
    "sigmoid": lambda m, a: m.F.sigmoid(a),
    "relu": lambda m, a: m.F.relu(a),
    "gelu": lambda m, a: m.F.gelu(a),
    "gelu-tanh": lambda m, a: m.F.gelu(a, approximate="tanh"),
    "silu": lambda m, a: m.F.silu(a),
    "softplus": lambda m, a: m.F.softplus(a),
    "abs": lambda m, a: m.F.abs(a),
    "leaky_relu": lambda m, a: m.F.leaky_relu(a, 0.1),
    "clamp": lambda m, a: m.F.clamp(a, -0.7, 0.9),
    "square": lambda m, a: a**2,
    "cube": lambda m, a: m.F.pow(a, 3.0),
    "scale": lambda m, a: 0.5 * a - 1.0,
    "reciprocal": lambda m, a: 1.0 / (1.0 + a * a),
    "sum-last": lambda m, a: m.F.sum(a, dim=-1, keepdim=True),
    "mean-first": lambda m, a: m.F.mean(a, dim=0, keepdim=True),
    "amax-last": lambda m, a: m.F.amax(a, dim=-1, keepdim=True),
    "amin-first": lambda m, a: m.F.amin(a, dim=0, keepdim=True),
    "logsumexp-last": lambda m, a: m.F.logsumexp(a, dim=-1, keepdim=True),
    "var-last": lambda m, a: m.F.var(a, dim=-1, keepdim=True, correction=0),
    "softmax-last": lambda m, a: m.F.softmax(a, dim=-1),
    "log_softmax-first": lambda m, a: m.F.log_softmax(a, dim=0),
    "layer_norm": lambda m, a: m.F.layer_norm(a, (a.shape[-1],), eps=0.1),
    "rms_norm": lambda m, a: m.F.rms_norm(a, (a.shape[-1],), eps=0.1),
    "index": lambda m, a: a[..., m.idx([a.shape[-1] - 1] + [0] * (a.shape[-1] - 1))],
    "slice-cat": lambda m, a: m.F.cat([a[1:], a[:1]], dim=0),
    "transpose-matmul": lambda m, a: m.F.matmul(m.F.transpose(a, 0, 1), a)[:1, :] * 0.1 + a[:1, :],
    "reshape": lambda m, a: m.F.reshape(m.F.reshape(a, (-1,)) * 2.0, tuple(a.shape)),
}

_BINARY_GRAPH: dict[str, Callable[[Any, Any, Any], Any]] = {
    "add": lambda m, a, b: a + b,
    "sub": lambda m, a, b: a - b,
    "mul": lambda m, a, b: a * b,
    "div": lambda m, a, b: a / (1.0 + b * b),
    "pow": lambda m, a, b: m.F.pow(m.F.softplus(a) + 0.1, m.F.tanh(b)),
    "maximum": lambda m, a, b: m.F.maximum(a, b),
    "minimum": lambda m, a, b: m.F.minimum(a, b),
    "where": lambda m, a, b: m.where(a > b, a, b * 0.5),
    "stack-sum": lambda m, a, b: (
        m.F.sum(m.F.stack([a * 1.0, b * 1.0]), dim=0) if a.shape == b.shape else a + b
    ),
}

_LEAF_SHAPES = [(3, 4), (3, 4), (1, 4), (3, 1)]


@st.composite
def _graphs(draw: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """A program: each step applies a unary or binary op to earlier nodes (shared ones included)."""
    n_leaves = len(_LEAF_SHAPES)
    steps = []
    for k in range(draw(st.integers(3, 8))):
        avail = n_leaves + k
        if draw(st.booleans()):
            steps.append(("u", draw(st.sampled_from(sorted(_UNARY))), (draw(st.integers(0, avail - 1)),)))
        else:
            i = draw(st.integers(0, avail - 1))
            j = draw(st.integers(0, avail - 1))  # i == j happens: x op x
            steps.append(("b", draw(st.sampled_from(sorted(_BINARY_GRAPH))), (i, j)))
    return steps


def _run(m: Any, leaves: list[Any], steps: list[tuple[str, str, tuple[int, ...]]]) -> Any:
    nodes = list(leaves)
    for kind, name, args in steps:
        if kind == "u":
            nodes.append(_UNARY[name](m, nodes[args[0]]))
        else:
            nodes.append(_BINARY_GRAPH[name](m, nodes[args[0]], nodes[args[1]]))
    return nodes[-1]


@settings(deadline=None, max_examples=120)
@given(steps=_graphs(), seed=_SEEDS)
def test_random_expression_graphs_match_torch(steps: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.5, 1.5, size=s) for s in _LEAF_SHAPES]
    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [_t(a) for a in arrays]
    out = _run(_E, ours, steps)
    ref = _run(_T, theirs, steps)
    _assert_close(out.data, ref.detach().numpy(), 1e-9, "forward")
    w = rng.standard_normal(out.shape)
    F.sum(out * Tensor(w)).backward()
    torch.sum(ref * torch.from_numpy(w)).backward()
    for k, (x, tx) in enumerate(zip(ours, theirs, strict=True)):
        if tx.grad is None:
            assert x.grad is None, f"leaf {k} is not in the graph but got a gradient"
        else:
            assert x.grad is not None, f"leaf {k} got no gradient"
            _assert_close(x.grad, tx.grad.numpy(), 1e-9, f"grad of leaf {k}")


@settings(deadline=None, max_examples=40)
@given(steps=_graphs(), seed=_SEEDS, a=st.floats(-3.0, 3.0).filter(lambda v: abs(v) > 1e-3))
def test_backward_is_linear_in_the_output_gradient(steps: Any, seed: int, a: float) -> None:
    """grad(a * f) == a * grad(f), and grad(f + f) == 2 grad(f), for any graph f."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.5, 1.5, size=s) for s in _LEAF_SHAPES]

    def grads(scale: float, twice: bool) -> list[np.ndarray | None]:
        leaves = [Tensor(x.copy(), requires_grad=True) for x in arrays]
        f = _run(_E, leaves, steps)
        loss = F.sum(f) * scale if not twice else F.sum(f) + F.sum(f)
        loss.backward()
        return [t.grad for t in leaves]

    base = grads(1.0, False)
    scaled = grads(a, False)
    doubled = grads(1.0, True)
    for g0, ga, g2 in zip(base, scaled, doubled, strict=True):
        assert (g0 is None) == (ga is None) == (g2 is None)
        if g0 is not None:
            _assert_close(ga, a * g0, 1e-12, "scaled")
            _assert_close(g2, 2 * g0, 1e-12, "doubled")


# ------------------------------------------------------------------------------------------- laws
_ARRAY_SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


def _array(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


@settings(deadline=None, max_examples=40)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS, scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]), data=st.data())
def test_softmax_rows_sum_to_one_and_are_nonnegative(shape: Any, seed: int, scale: float, data: Any) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = Tensor(_array(seed, shape, scale))
    p = F.softmax(x, dim=dim).data
    assert np.all(p >= 0.0)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=dim), 1.0, rtol=1e-12)
    if scale <= 30.0:
        assert np.all(p > 0.0)
        logp = F.log_softmax(x, dim=dim).data
        np.testing.assert_allclose(logp, np.log(p), rtol=1e-10, atol=1e-12)
    else:
        logp = F.log_softmax(x, dim=dim).data
        assert np.all(np.isfinite(logp))  # even where softmax underflows to 0
        assert np.all(logp <= 0.0)


@settings(deadline=None, max_examples=40)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS, scale=st.sampled_from([1e-3, 1.0, 1e3, 1e300]), data=st.data())
def test_logsumexp_is_at_least_the_max(shape: Any, seed: int, scale: float, data: Any) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = _array(seed, shape, scale)
    lse = F.logsumexp(Tensor(a), dim=dim).data
    mx = F.amax(Tensor(a), dim=dim).data
    assert np.all(np.isfinite(lse))
    assert np.all(lse >= mx)
    n = a.shape[dim]
    assert np.all(lse <= mx + np.log(n) + 1e-9 * np.maximum(1.0, np.abs(mx)))


@settings(deadline=None, max_examples=40)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS, offset=st.sampled_from([0.0, 1e4, -1e8]), data=st.data())
def test_var_is_nonnegative_and_shift_invariant(shape: Any, seed: int, offset: float, data: Any) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = _array(seed, shape)
    v0 = F.var(Tensor(a), dim=dim, correction=0).data
    v = F.var(Tensor(a + offset), dim=dim, correction=0).data
    assert np.all(v >= 0.0)
    np.testing.assert_allclose(v, v0, rtol=1e-6, atol=1e-6 * max(1.0, abs(offset)) ** 2 * 1e-10)
    np.testing.assert_allclose(F.std(Tensor(a), dim=dim, correction=0).data ** 2, v0, rtol=1e-12, atol=1e-300)


@settings(deadline=None, max_examples=30)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS)
def test_double_transpose_is_identity(shape: Any, seed: int) -> None:
    a = _array(seed, shape)
    x = Tensor(a.copy(), requires_grad=True)
    y = x.T.T
    np.testing.assert_array_equal(y.data, a)
    assert x.T.shape == shape[::-1]
    w = _array(seed + 1, shape)
    y.backward(w)
    np.testing.assert_array_equal(x.grad, w)


@settings(deadline=None, max_examples=30)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS, data=st.data())
def test_reshape_round_trip(shape: Any, seed: int, data: Any) -> None:
    a = _array(seed, shape)
    n = a.size
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    d = data.draw(st.sampled_from(divisors))
    x = Tensor(a.copy(), requires_grad=True)
    mid = x.reshape(d, -1)
    assert mid.shape == (d, n // d)
    back = mid.reshape(shape)
    np.testing.assert_array_equal(back.data, a)
    w = _array(seed + 1, shape)
    (back * Tensor(w)).backward(np.ones(shape))
    np.testing.assert_array_equal(x.grad, w)


@settings(deadline=None, max_examples=30)
@given(
    sizes=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    rest=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    seed=_SEEDS,
    data=st.data(),
)
def test_cat_then_split_gives_back_the_inputs(
    sizes: list[int], rest: list[int], seed: int, data: Any
) -> None:
    ndim = len(rest) + 1
    dim = data.draw(st.integers(-ndim, ndim - 1))
    d = dim % ndim
    shapes = [(*rest[:d], s, *rest[d:]) for s in sizes]
    arrays = [_array(seed + i, s) for i, s in enumerate(shapes)]
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    whole = F.cat(xs, dim=dim)
    assert whole.shape[d] == sum(sizes)
    parts = F.split(whole, sizes, dim=dim)
    assert len(parts) == len(xs)
    loss: Any = None
    for i, (p, a) in enumerate(zip(parts, arrays, strict=True)):
        assert p.shape == a.shape
        np.testing.assert_array_equal(p.data, a)
        term = F.sum(p) * float(i + 1)
        loss = term if loss is None else loss + term
    loss.backward()
    for i, x in enumerate(xs):  # each input's gradient is exactly its own piece's weight
        np.testing.assert_array_equal(x.grad, np.full(x.shape, float(i + 1)))


@settings(deadline=None, max_examples=30)
@given(shape=_ARRAY_SHAPES, seed=_SEEDS, data=st.data())
def test_gradient_of_sum_is_ones(shape: Any, seed: int, data: Any) -> None:
    dims = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    x = Tensor(_array(seed, shape), requires_grad=True)
    s = F.sum(x, dim=dims)
    if s.ndim:
        s = F.sum(s)
    s.backward()
    np.testing.assert_array_equal(x.grad, np.ones(shape))
    assert x.grad.dtype == np.float64
