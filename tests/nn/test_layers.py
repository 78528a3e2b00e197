"""Layers against PyTorch's: same weights give the same outputs and gradients; same init distributions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from entrenar import Tensor, nn

torch.set_num_threads(1)

TOL = {np.float64: (1e-10, 1e-12), np.float32: (1e-5, 1e-6)}  # dtype -> (rtol, atol)
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torch_copy(ours: nn.Module, theirs: torch.nn.Module) -> None:
    """Load our weights into the torch layer; its state_dict keys must equal ours."""
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict()), "state_dict keys differ from PyTorch's"
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)


def _check_parity(
    ours: nn.Module,
    theirs: torch.nn.Module,
    x: np.ndarray,
    dtype: Any,
    input_grad: bool = True,
) -> None:
    """Forward output, parameter gradients and input gradient equal PyTorch's within the dtype's tolerance."""
    rtol, atol = TOL[dtype]
    _torch_copy(ours, theirs)
    xo = Tensor(x.copy(), requires_grad=input_grad)
    xt = torch.from_numpy(x.copy()).requires_grad_(input_grad)
    yo, yt = ours(xo), theirs(xt)
    assert yo.shape == tuple(yt.shape)
    assert yo.dtype == yt.detach().numpy().dtype
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")
    g = _rng(7).standard_normal(yo.shape).astype(yo.dtype)
    yo.backward(g)
    yt.backward(torch.from_numpy(g))
    tparams = dict(theirs.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert names == list(tparams)
    for name, p in ours.named_parameters():
        tp = tparams[name]
        assert p.grad is not None and tp.grad is not None, name
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"grad {name}")
    if input_grad:
        assert xo.grad is not None and xt.grad is not None
        np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=rtol, atol=atol, err_msg="input grad")


def _perturb(module: nn.Module, seed: int) -> None:
    """Move parameters off their (ones / zeros) init so the affine terms are exercised."""
    rng = _rng(seed)
    for p in module.parameters():
        p.data[...] = p.data + rng.uniform(-0.5, 0.5, p.shape)


DTYPES = [np.float64, np.float32]


# ----------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,), (2, 1, 3, 4)])
def test_linear_matches_torch(dtype: Any, bias: bool, shape: tuple[int, ...]) -> None:
    ours = nn.Linear(4, 3, bias=bias, dtype=dtype, generator=_rng(1))
    theirs = torch.nn.Linear(4, 3, bias=bias, dtype=TORCH_DTYPE[dtype])
    x = _rng(2).standard_normal(shape).astype(dtype)
    _check_parity(ours, theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 0, -2])
@pytest.mark.parametrize("shape", [(6,), (3, 5), ()])
def test_embedding_matches_torch(dtype: Any, padding_idx: int | None, shape: tuple[int, ...]) -> None:
    ours = nn.Embedding(7, 3, padding_idx=padding_idx, dtype=dtype, generator=_rng(1))
    theirs = torch.nn.Embedding(7, 3, padding_idx=padding_idx, dtype=TORCH_DTYPE[dtype])
    idx = _rng(3).integers(0, 7, shape)
    if idx.ndim:
        idx.flat[0] = 5  # the (possibly padding, for -2) row 5 is always looked up
    _check_parity(ours, theirs, idx, dtype, input_grad=False)
    if padding_idx is not None:
        assert ours.weight.grad is not None
        assert np.all(ours.weight.grad[padding_idx % 7] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("normalized_shape", "shape"),
    [(4, (5, 4)), ((4,), (2, 3, 4)), ((3, 4), (2, 3, 4)), ([4], (4,))],
)
@pytest.mark.parametrize(
    ("affine", "bias", "eps"), [(True, True, 1e-5), (True, False, 0.5), (False, True, 1e-12)]
)
def test_layer_norm_matches_torch(
    dtype: Any, normalized_shape: Any, shape: tuple[int, ...], affine: bool, bias: bool, eps: float
) -> None:
    ours = nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=affine, bias=bias, dtype=dtype)
    theirs = torch.nn.LayerNorm(
        normalized_shape, eps=eps, elementwise_affine=affine, bias=bias, dtype=TORCH_DTYPE[dtype]
    )
    _perturb(ours, 4)
    x = (_rng(5).standard_normal(shape) * 3 + 1).astype(dtype)
    _check_parity(ours, theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("normalized_shape", "shape"), [(4, (5, 4)), ((3, 4), (2, 3, 4)), ((4,), (4,))]
)
@pytest.mark.parametrize("eps", [None, 0.5])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_matches_torch(
    dtype: Any, normalized_shape: Any, shape: tuple[int, ...], eps: float | None, affine: bool
) -> None:
    ours = nn.RMSNorm(normalized_shape, eps=eps, elementwise_affine=affine, dtype=dtype)
    theirs = torch.nn.RMSNorm(normalized_shape, eps=eps, elementwise_affine=affine, dtype=TORCH_DTYPE[dtype])
    _perturb(ours, 4)
    x = (_rng(6).standard_normal(shape) * 2).astype(dtype)
    _check_parity(ours, theirs, x, dtype)


def test_rms_norm_default_eps_is_the_dtype_machine_epsilon() -> None:
    # a near-zero row makes eps visible: float32 eps (1.2e-7) and float64 eps (2.2e-16) differ
    for dtype in DTYPES:
        x = np.full((1, 3), 1e-4, dtype=dtype)
        y = nn.RMSNorm(3, dtype=dtype)(Tensor(x)).data
        expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2) + np.finfo(dtype).eps)
        np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_eval_and_p0_are_identity_like_torch(dtype: Any) -> None:
    x = _rng(0).standard_normal((4, 5)).astype(dtype)
    d = nn.Dropout(0.3, generator=_rng(1)).eval()
    td = torch.nn.Dropout(0.3).eval()
    np.testing.assert_array_equal(d(Tensor(x)).data, td(torch.from_numpy(x)).numpy())
    d0 = nn.Dropout(0.0, generator=_rng(1))
    assert d0.training
    np.testing.assert_array_equal(d0(Tensor(x)).data, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_training_scales_kept_elements_and_their_gradient(dtype: Any) -> None:
    p = 0.25
    x = _rng(0).uniform(0.5, 1.5, (200, 100)).astype(dtype)  # no zeros, so the mask can be read off
    xt = Tensor(x.copy(), requires_grad=True)
    y = nn.Dropout(p, generator=_rng(1))(xt)
    assert y.dtype == dtype
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], x[kept] / (1 - p), rtol=1e-6)
    # drop rate within 5 binomial standard errors of p
    se = math.sqrt(p * (1 - p) / x.size)
    assert abs((1 - kept.mean()) - p) < 5 * se
    g = _rng(2).standard_normal(x.shape).astype(dtype)
    y.backward(g)
    assert xt.grad is not None
    np.testing.assert_allclose(xt.grad, np.where(kept, g / (1 - p), 0), rtol=1e-6)


def test_dropout_p1_zeroes_everything() -> None:
    y = nn.Dropout(1.0, generator=_rng(0))(Tensor(np.ones((3, 3), dtype=np.float32)))
    assert np.all(y.data == 0)


def test_dropout_masks_come_from_its_generator() -> None:
    x = Tensor(np.ones((50, 50), dtype=np.float32))
    a, b = nn.Dropout(0.5, generator=_rng(3)), nn.Dropout(0.5, generator=_rng(3))
    first_a, first_b = a(x).data, b(x).data
    np.testing.assert_array_equal(first_a, first_b)  # same seed, same masks
    assert not np.array_equal(a(x).data, first_a)  # the generator advances: a new mask each call
    a.train(False)
    np.testing.assert_array_equal(a(x).data, x.data)


# ----------------------------------------------------------------------------------- init distributions
def _check_uniform(sample: np.ndarray, bound: float) -> None:
    """Within [-bound, bound], reaching near both ends, with U's mean 0 and variance bound^2 / 3."""
    n = sample.size
    assert np.all(np.abs(sample) <= bound)
    assert sample.max() > bound * (1 - 20 / n) and sample.min() < -bound * (1 - 20 / n)
    var = bound**2 / 3
    assert abs(sample.mean()) < 5 * math.sqrt(var / n)
    # var of the sample variance of U(-b, b) is (E x^4 - var^2) / n with E x^4 = b^4 / 5
    assert abs(sample.var() - var) < 5 * math.sqrt((bound**4 / 5 - var**2) / n)


@pytest.mark.parametrize(("fan_in", "fan_out"), [(300, 200), (7, 5000)])
def test_linear_init_matches_torch_formula(fan_in: int, fan_out: int) -> None:
    lin = nn.Linear(fan_in, fan_out, generator=_rng(0))
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): sqrt(3) * sqrt(2 / 6) / sqrt(fan_in)
    torch.manual_seed(0)
    tl = torch.nn.Linear(fan_in, fan_out)
    # PyTorch's own layer obeys the same bounds for weight and bias
    assert tl.weight.abs().max().item() <= bound and tl.bias.abs().max().item() <= bound
    assert lin.bias is not None
    _check_uniform(lin.weight.data.astype(np.float64), bound)
    assert np.all(np.abs(lin.bias.data) <= bound)
    # sample variances of ours and PyTorch's agree (both near bound^2 / 3)
    ratio = lin.weight.data.var() / tl.weight.detach().numpy().var()
    assert abs(ratio - 1) < 0.05
    if fan_out >= 1000:
        _check_uniform(lin.bias.data.astype(np.float64), bound)


def test_embedding_init_is_standard_normal_with_zero_padding_row() -> None:
    emb = nn.Embedding(5000, 40, padding_idx=3, generator=_rng(0))
    w = emb.weight.data.astype(np.float64)
    assert np.all(w[3] == 0)
    rest = np.delete(w, 3, axis=0)
    n = rest.size
    assert abs(rest.mean()) < 5 / math.sqrt(n)
    assert abs(rest.var() - 1) < 5 * math.sqrt(2 / n)  # var of the sample variance of N(0,1) is 2/n
    torch.manual_seed(0)
    tw = torch.nn.Embedding(5000, 40, padding_idx=3).weight.detach().numpy()
    assert np.all(tw[3] == 0)
    assert abs(np.delete(tw, 3, axis=0).std() / rest.std() - 1) < 0.02


def test_norm_init_is_ones_and_zeros_like_torch() -> None:
    ln, tln = nn.LayerNorm((2, 3)), torch.nn.LayerNorm((2, 3))
    for k, v in ln.state_dict().items():
        np.testing.assert_array_equal(v, tln.state_dict()[k].numpy())
    rms, trms = nn.RMSNorm(6), torch.nn.RMSNorm(6)
    np.testing.assert_array_equal(rms.state_dict()["weight"], trms.state_dict()["weight"].numpy())


def test_reset_parameters_redraws_from_the_generator() -> None:
    lin = nn.Linear(6, 4, generator=_rng(0))
    before = lin.weight.data.copy()
    lin.reset_parameters(generator=_rng(0))
    np.testing.assert_array_equal(lin.weight.data, before)
    lin.reset_parameters(generator=_rng(1))
    assert not np.array_equal(lin.weight.data, before)
    ln = nn.LayerNorm(3)
    assert ln.weight is not None and ln.bias is not None
    ln.weight.data[...] = 5
    ln.bias.data[...] = 5
    ln.reset_parameters()
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)


def test_generator_determinism_and_draw_order() -> None:
    a = nn.Linear(5, 3, generator=_rng(9))
    b = nn.Linear(5, 3, generator=_rng(9))
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)
    # weight is drawn first, then bias, as in PyTorch's reset_parameters
    rng = _rng(9)
    w = nn.init.kaiming_uniform_(np.empty((3, 5), dtype=np.float32), a=math.sqrt(5), generator=rng)
    bias = nn.init.uniform_(np.empty(3, dtype=np.float32), -1 / math.sqrt(5), 1 / math.sqrt(5), generator=rng)
    assert a.bias is not None
    np.testing.assert_array_equal(a.weight.data, w)
    np.testing.assert_array_equal(a.bias.data, bias)
    # one shared generator gives two layers different weights
    shared = _rng(0)
    c, d = nn.Linear(5, 3, generator=shared), nn.Linear(5, 3, generator=shared)
    assert not np.array_equal(c.weight.data, d.weight.data)


# ----------------------------------------------------------------------------------- dtype, keys, repr
@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_take_the_requested_dtype(dtype: Any) -> None:
    layers: list[nn.Module] = [
        nn.Linear(3, 2, dtype=dtype, generator=_rng(0)),
        nn.Embedding(4, 2, dtype=dtype, generator=_rng(0)),
        nn.LayerNorm(3, dtype=dtype),
        nn.RMSNorm(3, dtype=dtype),
    ]
    for layer in layers:
        for name, p in layer.named_parameters():
            assert p.dtype == dtype, f"{type(layer).__name__}.{name}"
            assert p.requires_grad


def test_default_dtype_is_float32() -> None:
    assert nn.Linear(3, 2, generator=_rng(0)).weight.dtype == np.float32
    assert nn.Embedding(3, 2, generator=_rng(0)).weight.dtype == np.float32
    assert nn.LayerNorm(3).weight.dtype == np.float32  # type: ignore[union-attr]


LAYER_PAIRS: list[tuple[str, Callable[[], nn.Module], Callable[[], torch.nn.Module]]] = [
    ("linear", lambda: nn.Linear(4, 3, generator=_rng(0)), lambda: torch.nn.Linear(4, 3)),
    (
        "linear-nobias",
        lambda: nn.Linear(4, 3, False, generator=_rng(0)),
        lambda: torch.nn.Linear(4, 3, bias=False),
    ),
    ("embedding", lambda: nn.Embedding(10, 3, generator=_rng(0)), lambda: torch.nn.Embedding(10, 3)),
    (
        "embedding-pad",
        lambda: nn.Embedding(10, 3, padding_idx=-2, generator=_rng(0)),
        lambda: torch.nn.Embedding(10, 3, padding_idx=-2),
    ),
    ("layernorm", lambda: nn.LayerNorm(4), lambda: torch.nn.LayerNorm(4)),
    ("layernorm-2d", lambda: nn.LayerNorm([2, 3], eps=1e-12), lambda: torch.nn.LayerNorm([2, 3], eps=1e-12)),
    ("layernorm-nobias", lambda: nn.LayerNorm(4, bias=False), lambda: torch.nn.LayerNorm(4, bias=False)),
    (
        "layernorm-noaffine",
        lambda: nn.LayerNorm(4, elementwise_affine=False),
        lambda: torch.nn.LayerNorm(4, elementwise_affine=False),
    ),
    ("rmsnorm", lambda: nn.RMSNorm(4), lambda: torch.nn.RMSNorm(4)),
    ("rmsnorm-eps", lambda: nn.RMSNorm((2, 4), eps=1e-6), lambda: torch.nn.RMSNorm((2, 4), eps=1e-6)),
    ("dropout", lambda: nn.Dropout(0.1, generator=_rng(0)), lambda: torch.nn.Dropout(0.1)),
    ("dropout-default", lambda: nn.Dropout(generator=_rng(0)), lambda: torch.nn.Dropout()),
]


@pytest.mark.parametrize(("ours", "theirs"), [p[1:] for p in LAYER_PAIRS], ids=[p[0] for p in LAYER_PAIRS])
def test_state_dict_keys_shapes_and_repr_equal_torch(
    ours: Callable[[], nn.Module], theirs: Callable[[], torch.nn.Module]
) -> None:
    o, t = ours(), theirs()
    assert repr(o) == repr(t)
    assert {k: v.shape for k, v in o.state_dict().items()} == {
        k: tuple(v.shape) for k, v in t.state_dict().items()
    }
    assert list(o.state_dict()) == list(t.state_dict())


def test_composite_repr_equals_torch() -> None:
    class Ours(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4, generator=_rng(0))
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 2, generator=_rng(0))

    class Theirs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.head = torch.nn.Linear(4, 2)

    Ours.__name__ = Theirs.__name__ = "Model"
    assert repr(Ours()) == repr(Theirs())


# ----------------------------------------------------------------------------------- bad input
def test_random_layers_require_a_generator() -> None:
    with pytest.raises(TypeError, match="generator"):
        nn.Linear(3, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"generator must be an np\.random\.Generator"):
        nn.Linear(3, 2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Embedding: generator"):
        nn.Embedding(3, 2, generator=np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Dropout: generator"):
        nn.Dropout(0.1, generator=None)  # type: ignore[arg-type]


def test_bad_constructor_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="Linear: in_features must be a non-negative int"):
        nn.Linear(-1, 2, generator=_rng(0))
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, 2.5, generator=_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Linear: dtype must be a floating-point dtype"):
        nn.Linear(2, 2, dtype=np.int64, generator=_rng(0))
    with pytest.raises(ValueError, match=r"padding_idx 5 must be within \[-5, 5\)"):
        nn.Embedding(5, 2, padding_idx=5, generator=_rng(0))
    with pytest.raises(ValueError, match="padding_idx -6"):
        nn.Embedding(5, 2, padding_idx=-6, generator=_rng(0))
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence of ints"):
        nn.LayerNorm("4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        nn.RMSNorm((2, -1))
    for p in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            nn.Dropout(p, generator=_rng(0))


def test_forward_shape_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="linear"):
        nn.Linear(4, 3, generator=_rng(0))(Tensor(np.zeros((2, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(4)(Tensor(np.zeros((2, 5), dtype=np.float32)))
    with pytest.raises(IndexError, match="out of range"):
        nn.Embedding(4, 2, generator=_rng(0))(np.array([4]))


def test_embedding_from_pretrained() -> None:
    w = _rng(0).standard_normal((5, 3))
    emb = nn.Embedding.from_pretrained(w, padding_idx=1)
    assert emb.weight.dtype == np.float64 and not emb.weight.requires_grad
    assert emb.weight.data is not w and np.array_equal(emb.weight.data, w)
    temb = torch.nn.Embedding.from_pretrained(torch.from_numpy(w), padding_idx=1)
    assert repr(emb) == repr(temb)
    idx = np.array([[0, 1], [4, 2]])
    np.testing.assert_array_equal(emb(idx).data, temb(torch.from_numpy(idx)).numpy())
    assert nn.Embedding.from_pretrained(w, freeze=False).weight.requires_grad
    with pytest.raises(ValueError, match="2-D"):
        nn.Embedding.from_pretrained(w[0])
