"""BERT: Hugging Face's names, config loading, and outputs and gradients equal to transformers' BertModel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tiny_bert import TINY_BERT as TINY

from entrenar.nn.bert import BertConfig, BertForSequenceClassification, BertModel

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def hf() -> Any:
    """transformers (a test oracle; the tests that need it skip without it)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def _hf_model(hf: Any, cls: str, dtype: torch.dtype, **config: Any) -> Any:
    torch.manual_seed(0)
    model = getattr(hf, cls)(hf.BertConfig(**{**TINY, **config}))
    return model.to(dtype).eval()


def _ours(cls: type, hf_model: Any, dtype: Any) -> Any:
    """Our model built from the HF model's config.json dict, loaded with its state dict by name."""
    config = BertConfig.from_dict(hf_model.config.to_dict())
    model = cls(config, dtype=dtype, generator=np.random.default_rng(0))
    theirs = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    ours = model.state_dict()
    only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    assert not only_ours and not only_theirs, f"only ours: {only_ours}; only Hugging Face's: {only_theirs}"
    for k, v in theirs.items():
        assert ours[k].shape == v.shape, f"{k}: ours {ours[k].shape}, Hugging Face's {v.shape}"
    # older checkpoints also saved the position_ids buffer: ignored on load, as Hugging Face does
    prefix = "bert." if cls is BertForSequenceClassification else ""
    position_ids = {f"{prefix}embeddings.position_ids": np.arange(TINY["max_position_embeddings"])[None]}
    model.load_state_dict({**theirs, **position_ids})
    return model.eval()


def _batch(seed: int = 1, B: int = 3, T: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask (1 = real, right padding of different lengths), token_type_ids."""
    rng = np.random.default_rng(seed)
    lengths = np.array([T, T - 3, 2])[:B]
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, TINY["vocab_size"], (B, T)), 0)  # pad id 0
    types = ((np.arange(T)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    return ids, mask, types


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def test_parameter_names_are_hugging_faces() -> None:
    c = BertConfig(**{**TINY, "num_hidden_layers": 1})
    names = list(BertForSequenceClassification(c, generator=np.random.default_rng(0)).state_dict())
    layer = [
        f"bert.encoder.layer.0.{m}.{p}"
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        )
        for p in ("weight", "bias")
    ]
    emb = ["word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"]
    assert names == [
        *(f"bert.embeddings.{n}" for n in emb),
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        *layer,
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    no_pool = BertModel(c, add_pooling_layer=False, generator=np.random.default_rng(0))
    assert not any(k.startswith("pooler") for k in no_pool.state_dict())


def test_config_from_dict() -> None:
    d = {**TINY, "model_type": "bert", "architectures": ["BertModel"], "torch_dtype": "float32"}
    assert BertConfig.from_dict(d) == BertConfig(**TINY)
    del d["num_labels"]
    d["id2label"] = {"0": "neg", "1": "neu", "2": "pos", "3": "mixed"}
    assert BertConfig.from_dict(d).num_labels == 4
    assert BertConfig().layer_norm_eps == 1e-12 and BertConfig().hidden_act == "gelu"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_size": 18}, "embed_dim 18 must be divisible by num_heads 4"),
        ({"hidden_act": "tanh"}, "hidden_act must be one of"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive int"),
        ({"hidden_dropout_prob": 1.0}, r"hidden_dropout_prob must be in \[0, 1\)"),
        ({"pad_token_id": 60}, "pad_token_id 60 must be in"),
    ],
)
def test_config_is_validated(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BertConfig(**{**TINY, **change})


def test_initialisation_is_hugging_faces() -> None:
    m = BertModel(
        BertConfig(
            vocab_size=2000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
        ),
        generator=np.random.default_rng(0),
    )
    sd = m.state_dict()
    assert np.std(sd["embeddings.word_embeddings.weight"]) == pytest.approx(0.02, rel=0.05)
    assert not sd["embeddings.word_embeddings.weight"][0].any()  # the padding row
    assert np.std(sd["encoder.layer.3.intermediate.dense.weight"]) == pytest.approx(0.02, rel=0.05)
    assert not sd["pooler.dense.bias"].any()
    assert (sd["encoder.layer.0.output.LayerNorm.weight"] == 1).all()


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_bert_model_matches_transformers(hf: Any, dtype: Any, tol: float) -> None:
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    theirs = _hf_model(hf, "BertModel", tdt)
    ours = _ours(BertModel, theirs, dtype)
    ids, mask, types = _batch()
    with torch.no_grad():
        want = theirs(input_ids=_t(ids), attention_mask=_t(mask), token_type_ids=_t(types))
    got = ours(ids, attention_mask=mask, token_type_ids=types)
    assert got.last_hidden_state.dtype == dtype and got.last_hidden_state.shape == (3, 9, 16)
    np.testing.assert_allclose(got.last_hidden_state.data, want.last_hidden_state.numpy(), rtol=0, atol=tol)
    assert got.pooler_output is not None
    np.testing.assert_allclose(got.pooler_output.data, want.pooler_output.numpy(), rtol=0, atol=tol)
    # no mask and no token types: every token real, type 0
    with torch.no_grad():
        want = theirs(input_ids=_t(ids))
    np.testing.assert_allclose(
        ours(ids).last_hidden_state.data, want.last_hidden_state.numpy(), rtol=0, atol=tol
    )


@pytest.mark.parametrize(("act", "num_labels"), [("gelu", 3), ("gelu_new", 1)])
def test_classifier_loss_and_gradients_match_transformers(hf: Any, act: str, num_labels: int) -> None:
    """float64, training mode with dropout 0: logits, loss (cross-entropy, or MSE for one label) and
    the gradient of every parameter."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    theirs = _hf_model(
        hf,
        "BertForSequenceClassification",
        torch.float64,
        hidden_act=act,
        num_labels=num_labels,
        **no_dropout,
    )
    ours = _ours(BertForSequenceClassification, theirs, np.float64)
    theirs.train()
    ours.train()
    ids, mask, types = _batch(2)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 3) if num_labels > 1 else rng.standard_normal(3)
    logits, loss = ours(ids, mask, types, labels=labels)
    out = theirs(input_ids=_t(ids), attention_mask=_t(mask), token_type_ids=_t(types), labels=_t(labels))
    np.testing.assert_allclose(logits.data, out.logits.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(loss.item(), out.loss.item(), rtol=1e-12)
    loss.backward()
    out.loss.backward()
    grads = {n: p.grad for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        g = grads[name]
        assert p.grad is not None and g is not None, name
        np.testing.assert_allclose(p.grad, g.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
    assert not ours.bert.embeddings.word_embeddings.weight.grad[0].any()  # pad row: no gradient


def test_classifier_float32_logits_match_transformers(hf: Any) -> None:
    theirs = _hf_model(hf, "BertForSequenceClassification", torch.float32)
    ours = _ours(BertForSequenceClassification, theirs, np.float32)
    ids, mask, types = _batch(4)
    with torch.no_grad():
        want = theirs(input_ids=_t(ids), attention_mask=_t(mask), token_type_ids=_t(types)).logits
    got = ours(ids, mask, types)
    assert got.shape == (3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got.data, want.numpy(), rtol=0, atol=1e-5)


def test_dropout_in_training_mode() -> None:
    c = BertConfig(**TINY)
    ids, mask, types = _batch()

    def make() -> BertForSequenceClassification:
        return BertForSequenceClassification(c, dtype=np.float64, generator=np.random.default_rng(7))

    a, b = make(), make()
    first = a(ids, mask, types).data
    np.testing.assert_array_equal(first, b(ids, mask, types).data)  # same seed, same masks
    assert not np.allclose(first, a(ids, mask, types).data)  # new masks each call
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(ids, mask, types).data, b(ids, mask, types).data)
    assert not np.allclose(a(ids, mask, types).data, first)


def test_bad_input() -> None:
    m = BertForSequenceClassification(BertConfig(**TINY), generator=np.random.default_rng(0))
    ids, mask, types = _batch()
    with pytest.raises(ValueError, match="input_ids must be integer ids"):
        m(ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"token_type_ids must be integer ids of shape \(3, 9\)"):
        m(ids, mask, types[:, :4])
    with pytest.raises(ValueError, match="sequence length 30 exceeds max_position_embeddings 24"):
        m(np.ones((1, 30), np.int64))
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(3, 9\)"):
        m(ids, mask[:2])
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        m(ids, mask, labels=np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="config must be a BertConfig"):
        BertModel(TINY, generator=np.random.default_rng(0))  # type: ignore[arg-type]
