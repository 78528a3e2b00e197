"""The Module API: discovery and dotted names, tied parameters, buffers, state dicts, modes, repr.

Where PyTorch has the same notion, the structure is built twice (a list of modules here is a
ModuleList there, a dict a ModuleDict) and the names and orders are compared with PyTorch's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from entrenar import Tensor, nn
from entrenar.nn import IncompatibleKeys, Module, Parameter


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


class Block(Module):
    def __init__(self, d: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d, generator=rng)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc(x).relu())


class Net(Module):
    """Own parameter, a buffer, a list and a dict of sub-modules, and a plain child."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.scale = Parameter(np.ones(3, dtype=np.float32))
        self.register_buffer("steps", np.zeros(2, dtype=np.int64))
        self.blocks = [Block(3, rng), Block(3, rng)]
        self.heads = {"a": nn.Linear(3, 2, generator=rng), "b": nn.Linear(3, 1, bias=False, generator=rng)}
        self.out = nn.Linear(3, 4, generator=rng)

    def forward(self, x: Tensor) -> Tensor:
        h = x * self.scale
        for b in self.blocks:
            h = b(h)
        return self.out(h)


class TBlock(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)


class TNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))
        self.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
        self.blocks = torch.nn.ModuleList([TBlock(3), TBlock(3)])
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 1, bias=False)})
        self.out = torch.nn.Linear(3, 4)


# ----------------------------------------------------------------------------------- discovery
def test_named_parameters_have_torchs_dotted_names_and_order() -> None:
    net, tnet = Net(_rng()), TNet()
    names = [n for n, _ in net.named_parameters()]
    assert names == [n for n, _ in tnet.named_parameters()]
    assert names[:3] == ["scale", "blocks.0.fc.weight", "blocks.0.fc.bias"]
    assert "heads.b.weight" in names and "heads.b.bias" not in names
    assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in tnet.parameters()]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in net.parameters())
    assert next(n for n, _ in net.named_parameters(prefix="model")) == "model.scale"
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["scale"]
    assert net.num_parameters() == sum(p.numel() for p in tnet.parameters())


def test_named_modules_and_children_match_torch_up_to_container_modules() -> None:
    net, tnet = Net(_rng()), TNet()
    # PyTorch lists its ModuleList / ModuleDict containers as modules too; a plain list or dict is not one
    containers = {"blocks", "heads"}
    theirs = [n for n, _ in tnet.named_modules() if n not in containers]
    assert [n for n, _ in net.named_modules()] == theirs
    assert [n for n, _ in net.named_children()] == ["blocks.0", "blocks.1", "heads.a", "heads.b", "out"]
    assert list(net.children()) == [net.blocks[0], net.blocks[1], net.heads["a"], net.heads["b"], net.out]
    assert next(iter(net.modules())) is net
    assert [n for n, _ in net.named_modules(prefix="m")][:2] == ["m", "m.blocks.0"]


def test_a_tuple_of_modules_is_walked_and_non_modules_are_ignored() -> None:
    class M(Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = (nn.LayerNorm(2), "not a module", nn.RMSNorm(2))
            self.config = {"dim": 2, "norm": nn.LayerNorm(2, bias=False)}
            self.weights_as_list = [Parameter(np.ones(2))]  # not discovered: only attributes are

    names = [n for n, _ in M().named_parameters()]
    assert names == ["pair.0.weight", "pair.0.bias", "pair.2.weight", "config.norm.weight"]


def test_tied_parameters_appear_once_under_their_first_name() -> None:
    class Tied(Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 3, generator=_rng())
            self.head = nn.Linear(3, 5, bias=False, generator=_rng(1))
            self.head.weight = self.emb.weight  # weight tying, as GPT-2 does

    m = Tied()
    assert [n for n, _ in m.named_parameters()] == ["emb.weight"]
    assert list(m.state_dict()) == ["emb.weight"]
    assert m.num_parameters() == 15
    # loading by either name sets the one shared array
    m.load_state_dict({"emb.weight": np.full((5, 3), 2.0, dtype=np.float32)})
    assert np.all(m.head.weight.data == 2.0)
    m.load_state_dict({"head.weight": np.full((5, 3), 3.0, dtype=np.float32)})
    assert np.all(m.emb.weight.data == 3.0)
    # the gradient of both uses accumulates in the one parameter
    y = m.head(m.emb(np.array([1, 2])))
    y.sum().backward()
    assert m.emb.weight.grad is not None and np.any(m.emb.weight.grad[0] != 0)  # row 0 only via the head


def test_a_shared_submodule_is_walked_once() -> None:
    class Shared(Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.LayerNorm(2)
            self.b = self.a

    m = Shared()
    assert [n for n, _ in m.named_modules()] == ["", "a"]
    assert list(m.state_dict()) == ["a.weight", "a.bias"]


# ----------------------------------------------------------------------------------- buffers
def test_buffers_persistent_and_not() -> None:
    class M(Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = Parameter(np.zeros(2, dtype=np.float32))
            self.register_buffer("running", np.arange(3, dtype=np.float32))
            self.register_buffer("mask", Tensor(np.tril(np.ones((2, 2), dtype=bool))), persistent=False)
            self.register_buffer("empty", None)

    m = M()
    assert isinstance(m.running, Tensor) and not m.running.requires_grad
    assert [n for n, _ in m.named_buffers()] == ["running", "mask"]
    assert len(list(m.buffers())) == 2
    assert list(m.state_dict()) == ["w", "running"]  # non-persistent and None buffers are not saved
    assert [n for n, _ in m.named_parameters()] == ["w"]  # a buffer is not a parameter
    with pytest.raises(KeyError, match="unexpected keys: mask"):
        m.load_state_dict({"w": np.zeros(2), "running": np.zeros(3), "mask": np.zeros((2, 2))})
    with pytest.raises(KeyError, match=r"without '\.'"):
        m.register_buffer("a.b", np.zeros(1))


def test_assigning_to_a_buffer_keeps_it_a_tensor() -> None:
    class M(Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("b", np.zeros(2, dtype=np.float32))

    m = M()
    m.b = np.ones(2, dtype=np.float32)  # a bare ndarray is wrapped, so state_dict holds an array
    assert isinstance(m.b, Tensor)
    np.testing.assert_array_equal(m.state_dict()["b"], [1, 1])
    m.load_state_dict({"b": np.full(2, 5.0)})
    np.testing.assert_array_equal(m.b.data, [5, 5])
    m.b = None
    assert m.state_dict() == {}
    with pytest.raises(TypeError, match="cannot assign list as buffer 'b'"):
        m.b = [1.0, 2.0]


def test_register_buffer_before_init_is_a_clear_error() -> None:
    class Forgot(Module):
        def __init__(self) -> None:
            self.register_buffer("x", np.zeros(1))

    with pytest.raises(RuntimeError, match=r"Forgot.__init__ must call super\(\).__init__\(\) first"):
        Forgot()


def test_buffers_and_state_dict_keys_equal_torch() -> None:
    net, tnet = Net(_rng()), TNet()
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in tnet.named_buffers()]
    assert list(net.state_dict()) == list(tnet.state_dict())


# ----------------------------------------------------------------------------------- state dicts
def _snapshot(m: Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in m.state_dict().items()}


def test_state_dict_round_trip_into_a_fresh_model_and_into_torch() -> None:
    src, dst = Net(_rng(0)), Net(_rng(1))
    src.steps.data[...] = [3, 4]
    x = Tensor(_rng(2).standard_normal((5, 3)).astype(np.float32))
    assert not np.allclose(src(x).data, dst(x).data)
    result = dst.load_state_dict(src.state_dict())
    assert result == IncompatibleKeys([], []) and result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(src(x).data, dst(x).data)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, src.state_dict()[k])
        assert v is not src.state_dict()[k]  # copied into dst's own arrays, not shared
    # the same dict loads into the PyTorch twin, strictly
    tnet = TNet()
    tnet.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in src.state_dict().items()})
    assert torch.equal(tnet.steps, torch.tensor([3, 4]))


def test_state_dict_holds_the_live_arrays_and_load_copies_in_place() -> None:
    m = nn.Linear(3, 2, generator=_rng())
    sd = m.state_dict()
    assert sd["weight"] is m.weight.data
    weight_array = m.weight.data
    m.load_state_dict({"weight": np.ones((2, 3)), "bias": Tensor(np.zeros(2, dtype=np.float32))})
    assert m.weight.data is weight_array and m.weight.dtype == np.float32  # float64 cast into float32
    assert np.all(m.weight.data == 1) and np.all(m.bias.data == 0)  # type: ignore[union-attr]


def test_strict_load_names_every_missing_and_unexpected_key_and_changes_nothing() -> None:
    m = Net(_rng())
    before = _snapshot(m)
    sd = dict(Net(_rng(1)).state_dict())
    del sd["blocks.1.norm.bias"], sd["scale"]
    sd["blocks.2.fc.weight"] = np.zeros((3, 3), dtype=np.float32)
    sd["extra"] = np.zeros(1)
    with pytest.raises(KeyError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: scale, blocks.1.norm.bias" in msg
    assert "unexpected keys: blocks.2.fc.weight, extra" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_non_strict_load_returns_the_keys_and_loads_the_rest() -> None:
    m = Net(_rng())
    src = Net(_rng(1))
    sd = dict(src.state_dict())
    del sd["out.bias"]
    sd["nope"] = np.zeros(1)
    result = m.load_state_dict(sd, strict=False)
    assert isinstance(result, IncompatibleKeys)
    assert result.missing_keys == ["out.bias"] and result.unexpected_keys == ["nope"]
    np.testing.assert_array_equal(m.out.weight.data, src.out.weight.data)
    assert m.out.bias is not None and not np.array_equal(m.out.bias.data, src.out.bias.data)  # type: ignore[union-attr]


@pytest.mark.parametrize("strict", [True, False])
def test_shape_mismatch_names_the_key_and_both_shapes_and_changes_nothing(strict: bool) -> None:
    m = Net(_rng())
    before = _snapshot(m)
    sd = dict(Net(_rng(1)).state_dict())
    sd["out.weight"] = np.zeros((4, 5), dtype=np.float32)
    sd["blocks.0.norm.bias"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError) as e:
        m.load_state_dict(sd, strict=strict)
    msg = str(e.value)
    assert "blocks.0.norm.bias: expected shape (3,), got (2,)" in msg
    assert "out.weight: expected shape (4, 3), got (4, 5)" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_uncastable_dtype_names_the_key_and_changes_nothing() -> None:
    m = nn.Linear(2, 2, generator=_rng())
    before = _snapshot(m)
    sd: dict[str, Any] = {"weight": np.ones((2, 2), dtype=np.float32), "bias": np.array(["a", "b"])}
    with pytest.raises(TypeError, match="bias: cannot copy dtype <U1 into float32"):
        m.load_state_dict(sd)
    np.testing.assert_array_equal(m.weight.data, before["weight"])
    with pytest.raises(TypeError, match="complex128"):
        m.load_state_dict({"weight": np.ones((2, 2), dtype=complex), "bias": np.ones(2)})


# ----------------------------------------------------------------------------------- modes and grads
def test_train_and_eval_recurse_and_return_the_module() -> None:
    net = Net(_rng())
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert net.train() is net and all(m.training for m in net.modules())
    net.blocks[1].train(False)
    assert net.training and not net.blocks[1].training and not net.blocks[1].fc.training
    assert net.blocks[0].training


def test_eval_turns_dropout_off() -> None:
    class M(Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5, generator=_rng())

        def forward(self, x: Tensor) -> Tensor:
            return self.drop(x)

    m, x = M(), Tensor(np.ones((10, 10), dtype=np.float32))
    assert np.any(m(x).data == 0)
    np.testing.assert_array_equal(m.eval()(x).data, x.data)


def test_requires_grad_and_zero_grad() -> None:
    net = Net(_rng())
    assert net.requires_grad_(False) is net
    assert not any(p.requires_grad for p in net.parameters())
    assert net.num_parameters(trainable_only=True) == 0
    net.blocks[0].requires_grad_()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.0.{m}.{p}" for m in ("fc", "norm") for p in ("weight", "bias")}
    net.requires_grad_(True)
    x = Tensor(_rng(3).standard_normal((4, 3)).astype(np.float32))
    net(x).sum().backward()
    used = [p for n, p in net.named_parameters() if not n.startswith("heads")]
    assert all(p.grad is not None for p in used)
    assert all(p.grad is None for p in net.heads["a"].parameters())  # unused: no gradient at all
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not np.any(p.grad) for p in used)
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in used)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_apply_visits_children_first_in_torchs_order() -> None:
    net, tnet = Net(_rng()), TNet()
    ours: list[str] = []
    theirs: list[str] = []
    net.apply(lambda m: ours.append(type(m).__name__))
    tnet.apply(lambda m: theirs.append(type(m).__name__))
    containers = ("ModuleList", "ModuleDict")
    renamed = [{"TBlock": "Block", "TNet": "Net"}.get(n, n) for n in theirs if n not in containers]
    assert ours == renamed
    assert ours[0] == "Linear" and ours[-1] == "Net"
    assert net.apply(lambda m: None) is net


def test_apply_can_reinitialise_parameters() -> None:
    net = Net(_rng())
    rng = _rng(5)

    def init_linear(m: Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=rng)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    net.apply(init_linear)
    assert np.all(net.out.bias.data == 0)  # type: ignore[union-attr]
    assert np.abs(net.out.weight.data).max() < 0.2


# ----------------------------------------------------------------------------------- forward and repr
def test_call_runs_forward_and_base_forward_is_an_error() -> None:
    net = Net(_rng())
    y = net(Tensor(np.ones((2, 3), dtype=np.float32)))
    assert y.shape == (2, 4)
    with pytest.raises(NotImplementedError, match="Module does not define forward"):
        Module()(1)


def test_repr_equals_torchs_for_nested_modules_with_extra_repr() -> None:
    class Outer(Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 3, generator=_rng())
            self.inner = Inner()

        def extra_repr(self) -> str:
            return "k=1"

    class Inner(Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.RMSNorm(3)

        def extra_repr(self) -> str:
            return "a=1\nb=2"

    class TOuter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 3)
            self.inner = TInner()

        def extra_repr(self) -> str:
            return "k=1"

    class TInner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.RMSNorm(3)

        def extra_repr(self) -> str:
            return "a=1\nb=2"

    TOuter.__name__, TInner.__name__ = "Outer", "Inner"
    assert repr(Outer()) == repr(TOuter())
    assert repr(Module()) == "Module()"

    class Empty(Module):
        pass

    class TEmpty(torch.nn.Module):
        pass

    TEmpty.__name__ = "Empty"
    assert repr(Empty()) == repr(TEmpty())


def test_parameter_wraps_arrays_and_tensors() -> None:
    a = np.arange(3, dtype=np.float64)
    p = Parameter(a)
    assert p.data is a and p.requires_grad and p.is_leaf
    assert Parameter([1.0, 2.0]).dtype == np.float32
    t = Tensor(np.zeros(2, dtype=np.float32))
    assert Parameter(t).data is t.data
    assert not Parameter(a, requires_grad=False).requires_grad
    assert repr(p).startswith("Parameter containing:\ntensor(")
    with pytest.raises(TypeError, match="only floating point tensors can require gradients"):
        Parameter(np.arange(3))
