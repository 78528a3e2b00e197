"""apply_chat_template against transformers' tokenizer.apply_chat_template(tokenize=False), and its errors."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from entrenar.models.chat import apply_chat_template, chat_messages

# SmolLM2-135M-Instruct's template, as its GGUF stores it (test_smollm2.py checks the file has it)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2 style: bos/eos, a system prompt folded into the first user turn, raise_exception on bad order
LLAMA2 = """{% if messages[0]['role'] == 'system' %}
    {% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}
{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.index0 == 0 and system_message != false %}
        {% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}
    {% else %}{% set content = message['content'] %}{% endif %}
    {% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}
{% endfor %}"""
# namespace, loop controls, tojson (no HTML escaping), dict(), the generation tag, tools
FANCY = """{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
  {%- if m.role == 'system' %}{% continue %}{% endif -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- if ns.n > 3 %}{% break %}{% endif -%}
  <{{ m.role }} n={{ ns.n }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}
  {%- else %}{{ m.content | tojson }}{% endif %}</{{ m.role }}>
{% endfor -%}
{%- if tools %}TOOLS {{ tools | tojson(indent=2) }} {{ dict(a=1) | tojson }}{% endif -%}
{%- if add_generation_prompt %}<assistant>{% endif %}"""
TEMPLATES = {"smollm2": SMOLLM2, "llama2": LLAMA2, "fancy": FANCY}


@functools.lru_cache(maxsize=8)
def hf_tokenizer(template: str) -> PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template
    )


def both(template: str, messages: list[dict[str, Any]], gen: bool, **kw: Any) -> tuple[str, str]:
    want = hf_tokenizer(template).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=gen, **kw
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    got = apply_chat_template(messages, template, add_generation_prompt=gen, **special, **kw)
    return got, want


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": '  Hi <b>&</b> "quotes" é 😀 '},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Again\nwith lines"},
    ],
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("gen", [True, False])
def test_equals_transformers(name: str, chat: int, gen: bool) -> None:
    got, want = both(TEMPLATES[name], CHATS[chat], gen)
    assert got == want
    assert got  # every template renders something for these chats


def test_tools_are_visible_like_transformers() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": "<int>"}}}]
    got, want = both(FANCY, CHATS[0], True, tools=tools)
    assert got == want and "TOOLS" in got and '"<int>"' in got


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(TEMPLATES)),
    system=st.none() | text,
    turns=st.lists(text, min_size=1, max_size=5),
    gen=st.booleans(),
)
def test_any_text_renders_as_transformers(name: str, system: str | None, turns: list[str], gen: bool) -> None:
    chat = [] if system is None else [{"role": "system", "content": system}]
    chat += [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    got, want = both(TEMPLATES[name], chat, gen)
    assert got == want


def test_none_values_are_dropped_as_in_transformers() -> None:
    chat = [{"role": "user", "content": "x", "name": None}]
    t = "{% for m in messages %}{{ m.keys() | list | join(',') }}{% endfor %}"
    assert both(t, chat, False) == ("role,content", "role,content")


def test_raise_exception_becomes_a_value_error() -> None:
    bad = [{"role": "assistant", "content": "first"}]
    with pytest.raises(ValueError, match="chat template: Conversation roles must alternate"):
        apply_chat_template(bad, LLAMA2, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "messages must be a list of"),
        ([("user", "hi")], "message 0 must be a dict with 'role' and 'content', got tuple"),
        ([{"content": "hi"}], "message 0 has role None; expected one of 'system', 'user'"),
        ([{"role": "usr", "content": "hi"}], "message 0 has role 'usr'; expected one of"),
        ([{"role": "user"}], r"message 0 \(user\) has no 'content'"),
        ([{"role": "user", "content": 3}], r"content must be a string or a list of content blocks, got int"),
    ],
)
def test_bad_messages_name_what_is_expected(messages: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_chat_template(messages, SMOLLM2)


def test_roles_none_accepts_any_role_and_tool_calls_need_no_content() -> None:
    msgs = chat_messages([{"role": "ipython", "content": "1"}, {"role": "assistant", "tool_calls": []}], None)
    assert [m["role"] for m in msgs] == ["ipython", "assistant"]


def test_bad_templates_are_refused() -> None:
    with pytest.raises(ValueError, match="Jinja syntax error on line 1"):
        apply_chat_template(CHATS[0], "{% for m in messages %}")
    with pytest.raises(ValueError, match="non-empty Jinja string"):
        apply_chat_template(CHATS[0], "")
    # the sandbox: no reaching into Python internals
    with pytest.raises(ValueError, match=r"chat template: .*(unsafe|not safely)"):
        apply_chat_template(CHATS[0], "{{ messages.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="namespace attributes may not start with '_'"):
        apply_chat_template(CHATS[0], "{% set ns = namespace(_x=1) %}")
