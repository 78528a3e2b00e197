"""Instruction-tuning data on the real SmolLM2-135M-Instruct tokenizer and chat template (from its
GGUF): pairs built from Shakespeare, the prompt masked and the response trained, the split by work,
the shipped config, and bad input."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from entrenar.assets import shakespeare_dir, smollm2_gguf
from entrenar.config import ConfigError, load_config, section_keys, validate_config
from entrenar.data import encode_chat_pairs, shakespeare_pairs
from entrenar.data.instruct import PAIR_KINDS, work_title
from entrenar.data.text import IGNORE_INDEX, read_works, split_works
from entrenar.finetune.causal import INSTRUCT_PASSAGES_PER_WORK, SHAKESPEARE_PATTERN, load_lm_data
from entrenar.finetune.data import DataError
from entrenar.models.chat import apply_chat_template
from entrenar.models.gguf import gguf_config, open_gguf
from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer

SHIPPED = Path(str(resources.files("entrenar") / "configs" / "smollm2-shakespeare-instruct-qlora.yaml"))
PLAIN = Path(str(resources.files("entrenar") / "configs" / "smollm2-shakespeare-qlora.yaml"))
SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


@pytest.fixture(scope="module")
def smol() -> dict[str, Any]:
    """SmolLM2's tokenizer, chat template and end-of-turn id, read once (opening the GGUF takes seconds)."""
    path = smollm2_gguf()
    reader = open_gguf(path)
    config = gguf_config(reader, str(path))
    return {
        "tokenizer": gguf_tokenizer(reader),
        "template": gguf_chat_template(reader),
        "eos_id": int(config.eos_token_id),
        "context": config.max_position_embeddings,
    }


@pytest.fixture(scope="module")
def works() -> dict[str, str]:
    return read_works(shakespeare_dir(), SHAKESPEARE_PATTERN)


def _render(pair: dict[str, str], template: str, generation: bool = False) -> str:
    turns = [{"role": "user", "content": pair["prompt"]}]
    if not generation:
        turns.append({"role": "assistant", "content": pair["response"]})
    return apply_chat_template(turns, template, add_generation_prompt=generation)


def test_the_pairs_are_derived_from_the_texts(works: dict[str, str]) -> None:
    sonnets = {"sonnets": works["sonnets_gut"]}
    pairs = shakespeare_pairs(sonnets, per_work=None)
    assert [p["kind"] for p in pairs[:4]] == ["continue", "identify", "continue", "identify"]
    first = pairs[0]  # the header (title, "by William Shakespeare") is left out
    assert first["prompt"] == (
        "Continue this passage from The Sonnets:\n\nI\nFrom fairest creatures we desire increase,\n"
        "That thereby beauty's rose might never die,\nBut as the riper should by time decease,"
    )
    assert first["response"] == (
        "His tender heir might bear his memory:\nBut thou contracted to thine own bright eyes,"
    )
    which = "Which of Shakespeare's works is this passage from?\n\nFeed'st thy light"
    assert pairs[1]["prompt"].startswith(which)
    assert pairs[1]["response"] == "The Sonnets"
    every = [ln for ln in works["sonnets_gut"].splitlines() if ln.strip()]
    assert len(pairs) == (len(every) - 2) // 6
    assert {p["work"] for p in pairs} == {"sonnets"} and set(PAIR_KINDS) == {p["kind"] for p in pairs}
    many = shakespeare_pairs(works, per_work=INSTRUCT_PASSAGES_PER_WORK)
    for name, text in works.items():  # at most per_work windows, fewer in a short work (a few poems)
        windows = (sum(1 for ln in text.splitlines() if ln.strip()) - 2) // 6
        assert sum(p["work"] == name for p in many) == min(windows, INSTRUCT_PASSAGES_PER_WORK), name


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("hamlet_gut", "Hamlet, Prince of Denmark"),
        ("henry_iv_part_1_gut", "King Henry IV, the First Part"),
        ("richard_iii_gut", "The Life and Death of King Richard III"),
        ("alls_well_that_ends_well_gut", "All's Well that Ends Well"),
        ("twelfth_night_gut", "Twelfth Night; or, What You Will"),
    ],
)
def test_titles_come_from_the_first_line(works: dict[str, str], name: str, title: str) -> None:
    assert work_title(name, works[name]) == title


def test_a_long_or_missing_first_line_falls_back_to_the_file_name() -> None:
    assert work_title("my_work", "\n\n" + "x" * 100 + "\n") == "my work"
    assert work_title("my_work", "A Plain Title\nbody") == "A Plain Title"


def test_pairs_are_deterministic_and_independent_of_the_dict_order(works: dict[str, str]) -> None:
    some = {k: works[k] for k in ("macbeth_gut", "tempest_gut", "sonnets_gut")}
    reordered = dict(reversed(list(some.items())))
    assert shakespeare_pairs(some, per_work=10) == shakespeare_pairs(reordered, per_work=10)


def test_prompt_tokens_are_masked_and_the_assistant_s_tokens_trained(
    smol: dict[str, Any], works: dict[str, str]
) -> None:
    tok, template, eos = smol["tokenizer"], smol["template"], smol["eos_id"]
    assert template.startswith("{% for message in messages %}") and "<|im_start|>" in template  # the GGUF's
    assert tok.tokenizer.id_to_token(eos) == "<|im_end|>"
    pairs = shakespeare_pairs({"macbeth": works["macbeth_gut"]}, per_work=6)
    rows = encode_chat_pairs(pairs, tok, template, 128, eos_id=eos)
    assert len(rows) == 6 and rows.block_size == 128 and rows.work.tolist() == list(range(6))
    for r, pair in enumerate(pairs):
        full = _render(pair, template)
        head = _render(pair, template, generation=True)
        assert full == f"{SYSTEM}<|im_start|>user\n{pair['prompt']}<|im_end|>\n<|im_start|>assistant\n" \
            f"{pair['response']}<|im_end|>\n"  # fmt: skip
        own = tok.tokenizer.encode(full, add_special_tokens=False).ids
        n_head = len(tok.tokenizer.encode(head, add_special_tokens=False).ids)
        assert own[:n_head] == tok.tokenizer.encode(head, add_special_tokens=False).ids
        ids = own[: own.index(eos, n_head) + 1]  # the conversation through the assistant's <|im_end|>
        n = len(ids) - 1
        assert rows.input_ids[r, :n].tolist() == ids[:-1]
        labels = rows.labels[r]
        assert (labels[: n_head - 1] == IGNORE_INDEX).all()  # system, user turn, assistant header
        assert labels[n_head - 1 : n].tolist() == ids[n_head:]  # every assistant token, <|im_end|> last
        trained = tok.decode(labels[n_head - 1 : n], skip_special_tokens=False)
        assert trained == pair["response"] + "<|im_end|>"
        assert (labels[n:] == IGNORE_INDEX).all() and (rows.input_ids[r, n:] == eos).all()  # right padding
    assert rows.tokens == sum(
        len(tok.tokenizer.encode(p["response"] + "<|im_end|>", add_special_tokens=False).ids) for p in pairs
    )


def test_encoding_is_deterministic_and_long_pairs_are_dropped(
    smol: dict[str, Any], works: dict[str, str]
) -> None:
    tok, template, eos = smol["tokenizer"], smol["template"], smol["eos_id"]
    pairs = shakespeare_pairs({"lear": works["lear_gut"]}, per_work=40)
    a = encode_chat_pairs(pairs, tok, template, 128, eos_id=eos)
    b = encode_chat_pairs(pairs, tok, template, 128, eos_id=eos)
    for x, y in ((a.input_ids, b.input_ids), (a.labels, b.labels), (a.work, b.work)):
        assert np.array_equal(x, y)
    # tokens through <|im_end|> (the rendering less the template's newline after it)
    rendered = [_render(p, template) for p in pairs]
    lengths = [len(e.ids) - 1 for e in tok.tokenizer.encode_batch(rendered, add_special_tokens=False)]
    short = encode_chat_pairs(pairs, tok, template, 90, eos_id=eos, pad_id=0)
    assert short.work.tolist() == [i for i, n in enumerate(lengths) if n - 1 <= 90]  # n tokens: n - 1 labels
    assert 0 < len(short) < len(pairs)
    padded = short.labels[:, -1] == IGNORE_INDEX  # a row's labels end with the response unless padded
    assert padded.any() and (short.input_ids[padded, -1] == 0).all()
    with pytest.raises(ValueError, match=r"all 40 pairs are longer than max_length 20 \+ 1 tokens"):
        encode_chat_pairs(pairs, tok, template, 20, eos_id=eos)


def test_a_template_without_an_end_of_turn_token_gets_one_appended(smol: dict[str, Any]) -> None:
    plain = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok, eos = smol["tokenizer"], smol["eos_id"]
    rows = encode_chat_pairs([{"prompt": "Say hi", "response": "hi"}], tok, plain, 16, eos_id=eos)
    trained = rows.labels[0][rows.labels[0] != IGNORE_INDEX]
    # " hi" straddles the prompt's end ("assistant: " + "hi"): a token holding response text is trained
    assert tok.decode(trained, skip_special_tokens=False) == " hi\n<|im_end|>"


@pytest.mark.parametrize(
    ("pairs", "template", "message"),
    [
        ([{"prompt": "p"}], None, "pair 0 has no response (expected a non-empty string, got None)"),
        ([{"prompt": "p", "response": "r"}, {"prompt": "", "response": "r"}], None, "pair 1 has no prompt"),
        (["p -> r"], None, "pair 0 must be a dict with 'prompt' and 'response' strings, got str"),
        ([], None, "pairs must be a non-empty list of {'prompt', 'response'} dicts"),
        (
            [{"prompt": "p", "response": "r"}],
            "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}",
            "the chat template renders no assistant turn after the prompt",
        ),
        ([{"prompt": "p", "response": "r"}], "{% for m in messages %}", "chat template: Jinja syntax error"),
        ([{"prompt": "p", "response": "r"}], "", "the template must be a non-empty Jinja string"),
    ],
)
def test_bad_pairs_and_templates_name_the_problem(
    smol: dict[str, Any], pairs: Any, template: str | None, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        encode_chat_pairs(pairs, smol["tokenizer"], smol["template"] if template is None else template, 64, 2)
    assert message in str(info.value)


def test_bad_arguments_name_the_argument(smol: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"tokenizer must be a tokenizers\.Tokenizer or a Pretrained"):
        encode_chat_pairs([{"prompt": "p", "response": "r"}], "gpt2", smol["template"], 64, 2)
    with pytest.raises(ValueError, match="max_length must be a positive int, got 0"):
        encode_chat_pairs([{"prompt": "p", "response": "r"}], smol["tokenizer"], smol["template"], 0, 2)
    with pytest.raises(ValueError, match=r"works must be a \{name: text\} dict, got list"):
        shakespeare_pairs(["text"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context must be a positive int, got 0"):
        shakespeare_pairs({"w": "t"}, context=0)
    with pytest.raises(ValueError, match="work 'w' must be a string, got bytes"):
        shakespeare_pairs({"w": b"t"})  # type: ignore[dict-item]


def test_the_config_value_validates_and_a_wrong_one_lists_the_datasets() -> None:
    raw: dict[str, Any] = {
        "task": "causal_lm",
        "model": {"path": "smollm2"},
        "causal_lm": {"dataset": "shakespeare_instruct"},
    }
    assert validate_config(raw).causal_lm.dataset == "shakespeare_instruct"
    with pytest.raises(ConfigError, match="'shakespeare' or 'shakespeare_instruct'"):
        validate_config({**raw, "causal_lm": {"dataset": "poems"}})
    with pytest.raises(ConfigError, match=r"\(the datasets: 'shakespeare', 'shakespeare_instruct'\)"):
        validate_config({**raw, "causal_lm": {"dataset": "shakespeare_instruct", "texts": "t/"}})


def test_the_shipped_instruct_config_is_the_plain_one_with_the_instruct_dataset() -> None:
    c, plain = load_config(SHIPPED), load_config(PLAIN)
    assert c.causal_lm.dataset == "shakespeare_instruct"
    assert c.output.name == "smollm2-shakespeare-instruct-qlora"
    same = c.model_copy(update={"causal_lm": plain.causal_lm, "output": plain.output})
    assert same == plain
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert set(raw) == set(section_keys()) - {"data"}
    for section in set(raw):
        if section_keys([section]):
            assert set(raw[section]) == set(section_keys([section])), section


def test_the_job_loads_pairs_split_by_work(smol: dict[str, Any], works: dict[str, str]) -> None:
    config = load_config(SHIPPED)
    tok, template, eos = smol["tokenizer"], smol["template"], smol["eos_id"]
    data = load_lm_data(config, tok, eos, smol["context"], template)
    s = config.causal_lm
    train_names, val_names = split_works(sorted(works), s.validation_works, s.split_seed)
    assert (data.train_works, data.validation_works) == (train_names, val_names)  # as the plain dataset
    assert not set(train_names) & set(val_names) and len(val_names) == 4
    summary = data.summary()
    val_pairs = shakespeare_pairs({n: works[n] for n in val_names}, per_work=INSTRUCT_PASSAGES_PER_WORK)
    train_pairs = shakespeare_pairs({n: works[n] for n in train_names}, per_work=INSTRUCT_PASSAGES_PER_WORK)
    assert (summary["train_pairs"], summary["validation_pairs"]) == (len(train_pairs), len(val_pairs))
    assert summary["train_blocks"] == summary["train_pairs"] - summary["train_pairs_dropped"]
    assert 0 < summary["train_pairs_dropped"] < summary["train_pairs"] // 20  # a few per cent at 128
    assert len(data.validation) == s.eval_blocks and data.validation.block_size == s.max_length
    assert "instruction pairs (continue, identify) in the model's chat template" in data.source
    kinds = set()
    for row, index in enumerate(data.validation.work.tolist()):  # each row: one held-out pair, response only
        pair = val_pairs[index]
        assert pair["work"] in val_names
        labels = data.validation.labels[row]
        trained = tok.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=False)
        assert trained == pair["response"] + "<|im_end|>"
        kinds.add(pair["kind"])
    assert kinds == set(PAIR_KINDS)
    first = data.train.labels[0]
    assert tok.decode(first[first != IGNORE_INDEX], skip_special_tokens=False).startswith(
        train_pairs[int(data.train.work[0])]["response"]
    )


def test_the_job_needs_a_chat_template(smol: dict[str, Any]) -> None:
    with pytest.raises(DataError, match=r"has none \(GGUF key tokenizer\.chat_template\)"):
        load_lm_data(load_config(SHIPPED), smol["tokenizer"], smol["eos_id"], smol["context"], None)

