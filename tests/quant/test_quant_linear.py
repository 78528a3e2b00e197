"""QuantLinear, the quant_linear op and quantize_linears."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from cases import all_cases, call_entrenar, materialize, resolve_torch, torch_inputs

import entrenar.functional as F
from entrenar import Tensor, gradcheck, nn, optim
from entrenar.autograd.registry import SPECS
from entrenar.quant import QuantizedTensor, QuantLinear, quant_linear, quantize, quantize_linears
from entrenar.quant.functional import default_tile_rows

torch.set_num_threads(1)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------- the op
@pytest.mark.parametrize(("out_f", "in_f", "block", "tile"), [(7, 13, 4, 3), (10, 20, 64, 4), (5, 8, 6, 5)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_gradcheck_float64_wrt_input_and_bias(out_f: int, in_f: int, block: int, tile: int,
                                              double_quant: bool) -> None:  # fmt: skip
    rng = _rng(1)
    q = quantize(rng.standard_normal((out_f, in_f)), "nf4", block, double_quant)
    x = Tensor(rng.standard_normal((2, 3, in_f)), requires_grad=True)
    b = Tensor(rng.standard_normal(out_f), requires_grad=True)
    assert gradcheck(lambda x, b: quant_linear(x, q, b, tile_rows=tile), [x, b])


@pytest.mark.parametrize("kind", ["nf4", "int4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("out_f", "in_f", "block", "tile"),
    [
        (37, 29, 8, 5),  # out not a multiple of the tile, cols not a multiple of the block
        (64, 130, 64, 64),  # blocks straddle rows; one tile per 64 rows
        (9, 100, 10, 1),  # one row per tile; backward slabs of 11 columns
        (16, 16, 64, 100),  # a tile larger than the layer
    ],
)
def test_equals_torch_linear_on_the_dequantized_weight(
    kind: str, dtype: Any, out_f: int, in_f: int, block: int, tile: int
) -> None:
    rng = _rng(2)
    q = quantize(rng.standard_normal((out_f, in_f)), kind, block)
    x = rng.standard_normal((4, 3, in_f)).astype(dtype)
    b = rng.standard_normal(out_f).astype(dtype)
    g = rng.standard_normal((4, 3, out_f)).astype(dtype)
    tx, tb = torch.tensor(x, requires_grad=True), torch.tensor(b, requires_grad=True)
    expected = torch.nn.functional.linear(tx, torch.from_numpy(q.dequantize(dtype)), tb)
    expected.backward(torch.from_numpy(g))
    ex, eb = Tensor(x.copy(), requires_grad=True), Tensor(b.copy(), requires_grad=True)
    y = quant_linear(ex, q, eb, tile_rows=tile)
    y.backward(g)
    rtol, atol = (1e-5, 1e-5) if dtype == np.float32 else (1e-12, 1e-12)
    assert y.dtype == dtype and ex.grad is not None and ex.grad.dtype == dtype
    np.testing.assert_allclose(y.data, expected.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(ex.grad, tx.grad.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(eb.grad, tb.grad.numpy(), rtol=rtol, atol=atol)
    # and F.linear on the same dequantized weight, whatever the tiling
    ref = F.linear(Tensor(x), Tensor(q.dequantize(dtype)), Tensor(b))
    np.testing.assert_allclose(y.data, ref.data, rtol=rtol, atol=atol)


# quant_linear's @public cases (their weights built by entrenar.quant.functional._q) otherwise run only
# under tests/test_op_gradients.py and tests/oracle, outside this part's tests
QUANT_CASES = [(n, i) for n, i in all_cases() if SPECS[n].module == "entrenar.quant"]


@pytest.mark.parametrize(("name", "index"), QUANT_CASES, ids=[f"{n}-{i}" for n, i in QUANT_CASES])
def test_registered_cases_build_and_equal_torch_linear(name: str, index: int) -> None:
    m = materialize(name, index, np.float64)
    ours, _ = call_entrenar(m)
    targs, tkwargs, _ = torch_inputs(m)
    theirs = resolve_torch(m.spec.torch)(*targs, **tkwargs)
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_no_tape_node_when_nothing_requires_grad() -> None:
    q = quantize(_rng(3).standard_normal((4, 6)), "nf4", 6)
    y = quant_linear(np.ones((2, 6), np.float32), q)
    assert not y.requires_grad and y.grad_fn is None
    y = quant_linear(Tensor(np.ones((2, 6), np.float32), requires_grad=True), q)
    assert y.grad_fn == "quant_linear"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: quant_linear(np.ones((2, 5), np.float32), q), r"input of shape \(2, 5\) does not match"),
        (lambda q: quant_linear(np.ones((2, 6), np.int64), q), "input must be float32 or float64"),
        (lambda q: quant_linear(np.ones(6, np.float32), q, np.ones(3, np.float32)), r"bias must be \(4,\)"),
        (lambda q: quant_linear(np.ones(6, np.float32), q, np.ones(4)), "of the input's dtype float32"),
        (lambda q: quant_linear(np.ones(6, np.float32), q, tile_rows=0), "tile_rows must be a positive int"),
        (lambda q: quant_linear(np.ones(6, np.float32), np.ones((4, 6))), "qweight must be a 2-D Quantized"),
        (lambda q: quant_linear(np.ones(6, np.float32), quantize(np.ones(24))), r"got shape \(24,\)"),
    ],
)  # fmt: skip
def test_op_bad_input(call: Any, match: str) -> None:
    q = quantize(_rng(4).standard_normal((4, 6)), "nf4", 6)
    with pytest.raises(ValueError, match=match):
        call(q)


def test_forward_and_backward_never_hold_a_full_float_weight() -> None:
    """2048 x 2048: a float32 copy of the weight is 16 MiB; the op's temporaries must stay well under."""
    rng = _rng(5)
    q = quantize(rng.standard_normal((2048, 2048)).astype(np.float32), "nf4", 64)
    x = Tensor(rng.standard_normal((16, 2048)).astype(np.float32), requires_grad=True)
    full = 2048 * 2048 * 4
    tile = default_tile_rows(2048, 2048)
    assert tile * 2048 * 4 <= full // 2
    quant_linear(x, q).backward(np.ones((16, 2048), np.float32))  # warm up (kernel compilation)
    x.grad = None
    tracemalloc.start()
    try:
        y = quant_linear(x, q)
        y.backward(np.ones((16, 2048), np.float32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    activations = 4 * x.data.nbytes  # input, output, upstream gradient, input gradient
    assert peak <= tile * 2048 * 4 + activations + (1 << 20), f"peak {peak / 2**20:.1f} MiB"
    assert peak < 0.75 * full
    np.testing.assert_allclose(x.grad, np.ones((16, 2048)) @ q.dequantize(np.float64), rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------ the layer
def _linear(in_f: int = 24, out_f: int = 10, bias: bool = True, seed: int = 0) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias, generator=_rng(seed))


def test_from_linear_keeps_only_the_packed_weight() -> None:
    lin = _linear()
    ql = QuantLinear.from_linear(lin, "int4", 8, double_quant=True, tile_rows=3)
    assert (ql.in_features, ql.out_features, ql.kind, ql.block_size, ql.double_quant, ql.tile_rows) == (
        24, 10, "int4", 8, True, 3)  # fmt: skip
    assert isinstance(ql.qweight, QuantizedTensor)
    assert [n for n, _ in ql.named_parameters()] == ["bias"] and not ql.bias.requires_grad  # type: ignore[union-attr]
    assert ql.bias.data is not lin.bias.data  # type: ignore[union-attr]
    floats = [v for v in vars(ql).values() if isinstance(v, (np.ndarray, Tensor)) and np.size(v) == 240]
    assert not floats, "no float copy of the weight is kept"
    x = _rng(1).standard_normal((5, 24)).astype(np.float32)
    expected = x @ ql.dequantize_weight().T + lin.bias.data  # type: ignore[union-attr]
    np.testing.assert_allclose(ql(Tensor(x)).data, expected, rtol=1e-5, atol=1e-6)
    assert "kind=int4" in repr(ql)


def test_state_dict_is_complete_and_loadable() -> None:
    saved = {}
    for dq in (False, True):
        a = QuantLinear.from_linear(_linear(seed=1), "nf4", 8, dq)
        b = QuantLinear.from_linear(_linear(seed=2), "nf4", 8, dq)
        sd = {k: v.copy() for k, v in a.state_dict().items()}
        scales = ["qweight_absmax_codes", "qweight_absmax_scale", "qweight_absmax_offset"]
        assert list(sd) == ["bias", "qweight_data", *(scales if dq else ["qweight_absmax"])]
        assert sd["qweight_data"].dtype == np.uint8
        b.load_state_dict(sd)
        x = Tensor(_rng(3).standard_normal((2, 24)).astype(np.float32))
        np.testing.assert_array_equal(b(x).data, a(x).data)
        np.testing.assert_array_equal(b.dequantize_weight(), a.dequantize_weight())
        saved[dq] = sd
    with pytest.raises(ValueError, match="size mismatch for qweight_absmax"):  # another block size
        QuantLinear.from_linear(_linear(), "nf4", 4).load_state_dict(saved[False])
    with pytest.raises(KeyError, match="missing keys: qweight_absmax"):  # double-quantized vs plain
        QuantLinear.from_linear(_linear(), "nf4", 8).load_state_dict(saved[True])


def test_set_weight_requantizes_and_reports_the_rounding_error() -> None:
    lin = _linear(seed=4)
    ql = QuantLinear.from_linear(lin, "nf4", 8)
    before = ql.qweight
    before_codes = before.data.copy()
    w = lin.weight.data + np.float32(0.01)
    report = ql.set_weight(w)
    assert ql.qweight is not before, "set_weight installs a new QuantizedTensor"
    np.testing.assert_array_equal(before.data, before_codes)  # the old one is left as it was (unmerge)
    assert ql.state_dict()["qweight_data"] is ql.qweight.data  # the buffers follow qweight
    err = ql.dequantize_weight(np.float64) - w.astype(np.float64)
    assert report == pytest.approx({
        "max_abs_error": np.abs(err).max(),
        "mean_abs_error": np.abs(err).mean(),
        "rel_error": np.linalg.norm(err) / np.linalg.norm(w.astype(np.float64)),
    }, rel=1e-12)  # fmt: skip
    assert 0 < report["rel_error"] < 0.12
    assert ql.set_weight(np.zeros((10, 24), np.float32)) == {
        "max_abs_error": 0.0, "mean_abs_error": 0.0, "rel_error": 0.0}  # fmt: skip
    ql.qweight = before  # restoring a saved QuantizedTensor re-registers its arrays
    assert ql.state_dict()["qweight_data"] is before.data
    with pytest.raises(ValueError, match=r"weight must have shape \(10, 24\)"):
        ql.set_weight(np.zeros((24, 10)))
    with pytest.raises(ValueError, match=r"must keep the shape \(10, 24\)"):
        ql.qweight = quantize(np.zeros((10, 25)), "nf4", 8)


def test_the_base_never_changes_under_an_optimizer_step() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = QuantLinear.from_linear(_linear(16, 8, seed=5), "nf4", 8)
            self.head = _linear(8, 3, seed=6)

        def forward(self, x: Any) -> Tensor:
            return self.head(self.base(x))

    model = Model()
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("base.")}
    head_before = model.head.weight.data.copy()
    opt = optim.AdamW(model.parameters(), lr=0.1)
    x = Tensor(_rng(7).standard_normal((4, 16)).astype(np.float32), requires_grad=True)
    for _ in range(3):
        opt.zero_grad()
        loss = (model(x) ** 2).sum()
        loss.backward()
        opt.step()
    assert model.base.bias.grad is None  # type: ignore[union-attr]
    for k, v in frozen.items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    assert not np.array_equal(model.head.weight.data, head_before)
    assert x.grad is not None and np.abs(x.grad).sum() > 0  # the input still gets its gradient


def test_constructor_errors() -> None:
    q = quantize(np.ones((3, 4)), "nf4", 4)
    with pytest.raises(ValueError, match="qweight must be a 2-D QuantizedTensor"):
        QuantLinear(quantize(np.ones(12)))
    with pytest.raises(ValueError, match=r"bias must be a float array of shape \(3,\)"):
        QuantLinear(q, np.ones(4))
    with pytest.raises(ValueError, match="tile_rows must be a positive int"):
        QuantLinear(q, tile_rows=0)
    with pytest.raises(TypeError, match="expected a Linear"):
        QuantLinear.from_linear(QuantLinear(q))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ quantize_linears
class _Block(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.q = _linear(8, 8, seed=seed)
        self.norm = nn.LayerNorm(8)
        self.pair = [_linear(8, 8, seed=seed + 1), _linear(8, 8, seed=seed + 2)]

    def forward(self, x: Any) -> Tensor:
        return self.pair[1](self.pair[0](self.norm(self.q(x))))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = [_Block(10), _Block(20)]
        self.heads = {"a": _linear(8, 2, seed=30), "b": _linear(8, 2, seed=31)}
        self.tied = self.blocks[0].q  # one Linear under two names
        self.extra = (_linear(8, 8, seed=40),)

    def forward(self, x: Any) -> Tensor:
        h = self.extra[0](self.blocks[1](self.blocks[0](x)))
        return self.heads["a"](h) + self.heads["b"](h)


def test_quantize_linears_walks_attributes_lists_dicts_and_tuples() -> None:
    net = _Net()
    x = Tensor(_rng(8).standard_normal((3, 8)).astype(np.float32))
    names = quantize_linears(net, "nf4", 8, exclude=("heads.b", "blocks.1.pair"))
    expected = ["blocks.0.q", "blocks.0.pair.0", "blocks.0.pair.1", "blocks.1.q", "heads.a", "tied"]
    expected.append("extra.0")
    assert sorted(names) == sorted(expected)
    assert isinstance(net.tied, QuantLinear) and net.tied is net.blocks[0].q  # still shared
    assert isinstance(net.extra, tuple) and isinstance(net.extra[0], QuantLinear)
    assert type(net.heads["b"]) is nn.Linear and type(net.blocks[1].pair[0]) is nn.Linear
    kept = ("heads.b", "blocks.1.pair")
    float_weights = [k for k in net.state_dict() if k.endswith(".weight") and "norm" not in k]
    assert all(k.startswith(kept) for k in float_weights), float_weights
    # the quantized net computes what the float net computes with the dequantized weights
    ref = _Net()
    for name, m in net.named_modules():
        if isinstance(m, QuantLinear):
            target = ref
            for part in name.split("."):
                target = target[int(part)] if isinstance(target, (list, tuple)) else (
                    target[part] if isinstance(target, dict) else getattr(target, part))  # fmt: skip
            target.weight.data[...] = m.dequantize_weight()
    np.testing.assert_allclose(net(x).data, ref(x).data, rtol=1e-5, atol=1e-5)
    assert sorted(quantize_linears(net)) == ["blocks.1.pair.0", "blocks.1.pair.1", "heads.b"]  # the rest
    assert quantize_linears(net) == []


def test_quantize_linears_errors_and_subclasses() -> None:
    class MyLinear(nn.Linear):
        pass

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.custom = MyLinear(4, 4, generator=_rng())

    assert quantize_linears(Net()) == []  # a subclass may compute something else: left alone
    with pytest.raises(ValueError, match=r"use QuantLinear\.from_linear"):
        quantize_linears(_linear())
    with pytest.raises(TypeError, match="model must be a Module"):
        quantize_linears([_linear()])  # type: ignore[arg-type]
