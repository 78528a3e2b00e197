"""entrenar.lora against the real `peft` package on PyTorch models with the same module names and weights.

Adapters saved by entrenar load in `peft.PeftModel.from_pretrained` and give the same outputs, and
PEFT's load in entrenar; the parameter names, saved keys, adapter_config.json fields, gradients
(DoRA's detached norm included) and merged weights agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_bert import TINY_BERT_NO_DROPOUT as TINY

from entrenar.lora import LoraConfig, PeftModel, get_peft_model
from entrenar.nn import BertConfig, BertForSequenceClassification, BertModel, Linear, Module
from entrenar.tensor import Tensor

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("BertModel", {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}),
    "dora": ("BertModel", {"r": 4, "lora_alpha": 16, "target_modules": ["query", "value"], "use_dora": True}),
    "rslora-patterns": (
        "BertModel",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["query", "key", "dense"],
            "use_rslora": True,
            "rank_pattern": {"layer.1.attention.self.key": 2},
            "alpha_pattern": {"dense": 3},
        },
    ),
    "seq-cls": (
        "BertForSequenceClassification",
        {"r": 2, "target_modules": "all-linear", "task_type": "SEQ_CLS", "bias": "all", "use_dora": True},
    ),
    "mlp": (
        "MLP",
        {"r": 2, "target_modules": ["up", "out"], "bias": "lora_only", "modules_to_save": ["embed"]},
    ),
}


@pytest.fixture(scope="module")
def peft() -> Any:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return pytest.importorskip("peft")


# ----------------------------------------------------------------------------------- models
class _TorchBlock(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(d, 2 * d)
        self.down = torch.nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))


class _TorchMLP(torch.nn.Module):
    """The PyTorch twin of the entrenar MLP below: embed, blocks (ModuleList), heads (ModuleDict)."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(5, d)
        self.blocks = torch.nn.ModuleList([_TorchBlock(d) for _ in range(2)])
        self.heads = torch.nn.ModuleDict({"out": torch.nn.Linear(d, 3, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.heads["out"](h)  # type: ignore[no-any-return]


class _Block(Module):
    def __init__(self, d: int, rng: np.random.Generator, dtype: Any) -> None:
        super().__init__()
        self.up = Linear(d, 2 * d, dtype=dtype, generator=rng)
        self.down = Linear(2 * d, d, dtype=dtype, generator=rng)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(self.up(x).tanh())


class _MLP(Module):
    def __init__(self, dtype: Any, d: int = 6) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.embed = Linear(5, d, dtype=dtype, generator=rng)
        self.blocks = [_Block(d, rng, dtype) for _ in range(2)]
        self.heads = {"out": Linear(d, 3, bias=False, dtype=dtype, generator=rng)}

    def forward(self, x: Any) -> Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.heads["out"](h)  # type: ignore[no-any-return]


def _theirs(kind: str, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    model = _TorchMLP() if kind == "MLP" else getattr(transformers, kind)(transformers.BertConfig(**TINY))
    return model.to(dtype).eval()


def _ours(kind: str, theirs: torch.nn.Module, dtype: Any) -> Module:
    """Our twin of a PyTorch base model, loaded with its weights by name."""
    if kind == "MLP":
        model: Module = _MLP(dtype)
    else:
        cls = BertModel if kind == "BertModel" else BertForSequenceClassification
        model = cls(BertConfig(**TINY), dtype=dtype, generator=np.random.default_rng(0))
    model.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return model.eval()


def _inputs(kind: str, dtype: Any = np.float32) -> tuple[Any, ...]:
    rng = np.random.default_rng(1)
    if kind == "MLP":
        return (rng.standard_normal((4, 5)).astype(dtype),)
    mask = (np.arange(9)[None, :] < np.array([9, 6, 2])[:, None]).astype(np.int64)
    return np.where(mask == 1, rng.integers(1, 60, (3, 9)), 0), mask


def _run_ours(kind: str, model: Module, x: tuple[Any, ...]) -> Tensor:
    out = model(*x)
    return out.last_hidden_state if kind == "BertModel" else out  # type: ignore[no-any-return]


def _run_theirs(kind: str, model: torch.nn.Module, x: tuple[Any, ...]) -> torch.Tensor:
    if kind == "MLP":
        return model(torch.from_numpy(x[0]))  # type: ignore[no-any-return]
    out = model(input_ids=torch.from_numpy(x[0]), attention_mask=torch.from_numpy(x[1]))
    return out.last_hidden_state if kind == "BertModel" else out.logits  # type: ignore[no-any-return]


def _perturb_torch(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _perturb_ours(model: Module) -> None:
    rng = np.random.default_rng(5)
    for p in model.parameters():
        if p.requires_grad:
            p.data += (0.1 * rng.standard_normal(p.shape)).astype(p.dtype)


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(CASES))
def test_entrenar_adapter_loads_in_peft(peft: Any, case: str, tmp_path: Path) -> None:
    kind, cfg = CASES[case]
    ours = get_peft_model(
        _ours(kind, _theirs(kind, torch.float32), np.float32), LoraConfig(**cfg), generator=0
    )
    _perturb_ours(ours)
    ours.eval()
    x = _inputs(kind)
    got = _run_ours(kind, ours, x).data
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(_theirs(kind, torch.float32), str(tmp_path)).eval()
    with torch.no_grad():
        want = _run_theirs(kind, theirs, x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert set(ours.state_dict()) == set(theirs.state_dict())  # PEFT's parameter names


@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapter_loads_in_entrenar(peft: Any, case: str, tmp_path: Path) -> None:
    kind, cfg = CASES[case]
    theirs = peft.get_peft_model(_theirs(kind, torch.float32), peft.LoraConfig(**cfg))
    _perturb_torch(theirs)
    theirs.eval()
    x = _inputs(kind)
    with torch.no_grad():
        want = _run_theirs(kind, theirs, x).numpy()
    theirs.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(_ours(kind, _theirs(kind, torch.float32), np.float32), tmp_path)
    np.testing.assert_allclose(_run_ours(kind, ours, x).data, want, rtol=0, atol=1e-5)
    # the same adapter saved again by entrenar holds PEFT's keys (less PEFT's unused bias="all" duplicates)
    ours.save_pretrained(tmp_path / "again")
    from safetensors.numpy import load_file

    mine = load_file(tmp_path / "again" / "adapter_model.safetensors")
    pefts = load_file(tmp_path / "adapter_model.safetensors")
    assert set(mine) == {k for k in pefts if ".modules_to_save." not in k}
    for k, v in mine.items():
        np.testing.assert_array_equal(v, pefts[k], err_msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_config_fields_agree(peft: Any, case: str, tmp_path: Path) -> None:
    kind, cfg = CASES[case]
    get_peft_model(_ours(kind, _theirs(kind, torch.float32), np.float32), LoraConfig(**cfg)).save_pretrained(
        tmp_path / "ours"
    )
    peft.get_peft_model(_theirs(kind, torch.float32), peft.LoraConfig(**cfg)).save_pretrained(
        str(tmp_path / "theirs")
    )
    mine = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    pefts = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    for key, value in mine.items():
        theirs_value = pefts[key]
        if key in ("target_modules", "modules_to_save") and isinstance(value, list):
            theirs_value = sorted(theirs_value)
            value = sorted(value)
        assert value == theirs_value, key


@pytest.mark.parametrize("case", ["lora", "dora", "seq-cls", "mlp"])
def test_gradients_match_peft(peft: Any, case: str) -> None:
    """float64, training mode without dropout: every trainable parameter's gradient equals PEFT's."""
    kind, cfg = CASES[case]
    theirs_base = _theirs(kind, torch.float64)
    ours = get_peft_model(_ours(kind, theirs_base, np.float64), LoraConfig(**cfg, init_lora_weights=False))
    _perturb_ours(ours)
    theirs = peft.get_peft_model(theirs_base, peft.LoraConfig(**cfg))
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    ours.train()
    theirs.train()
    x = _inputs(kind, np.float64)
    out = _run_ours(kind, ours, x)
    w = np.random.default_rng(9).standard_normal(out.shape)
    (out * w).sum().backward()
    (_run_theirs(kind, theirs, x) * torch.from_numpy(w)).sum().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    mine = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(mine) == set(grads)
    for name, g in mine.items():
        assert g is not None and grads[name] is not None, name
        np.testing.assert_allclose(g, grads[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", ["lora", "dora", "rslora-patterns"])
def test_merged_weights_match_peft(peft: Any, case: str) -> None:
    kind, cfg = CASES[case]
    theirs_base = _theirs(kind, torch.float64)
    ours = get_peft_model(_ours(kind, theirs_base, np.float64), LoraConfig(**cfg, init_lora_weights=False))
    theirs = peft.get_peft_model(theirs_base, peft.LoraConfig(**cfg))
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    mine = ours.merge_and_unload().state_dict()
    pefts = theirs.merge_and_unload().state_dict()
    assert set(mine) == set(pefts)
    for k, v in mine.items():
        np.testing.assert_allclose(v, pefts[k].numpy(), rtol=1e-12, atol=1e-13, err_msg=k)
