"""Chat templates: a conversation rendered to the prompt text an instruction-tuned model expects.

A model ships its template as a Jinja2 string (GGUF `tokenizer.chat_template`, or tokenizer_config.json's
`chat_template`). It is rendered as Hugging Face's `tokenizer.apply_chat_template(..., tokenize=False)`
renders it, so that the text is the same character for character:

- in jinja2's ImmutableSandboxedEnvironment (a template is untrusted code from a file), with
  trim_blocks and lstrip_blocks, and the loop-controls extension (`{% break %}`, `{% continue %}`);
- with the names templates rely on: `messages`, `add_generation_prompt`, `tools`, `documents`, the
  special tokens (`bos_token`, `eos_token`, ...), `raise_exception(msg)`, `strftime_now(fmt)`,
  `namespace(...)` (no underscore attributes), `dict(...)`, and a `tojson` filter that does not
  escape HTML (json.dumps, ensure_ascii off);
- `{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body unchanged;
- keys whose value is None are dropped from each message first, as HF does.

    text = apply_chat_template([{"role": "user", "content": "Hi"}], template, bos_token="<s>")
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "apply_chat_template", "chat_messages", "folder_chat_template"]

# The roles chat templates are written for; `roles=None` accepts any string.
ROLES = ("system", "user", "assistant", "tool", "developer")


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandboxed Jinja environment, built once (jinja2 is imported on first use only)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}body{% endgeneration %}` renders body (HF marks assistant text with it)."""

        tags = {"generation"}  # noqa: RUF012 - jinja2 declares it an instance variable

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        """jinja's namespace() without underscore attributes (no reaching into CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat template: namespace attributes may not start with '_', got {name!r}"
                )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=raise_exception, strftime_now=_strftime_now, dict=make_dict, namespace=Namespace
    )
    return env


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"chat template: Jinja syntax error on line {exc.lineno}: {exc.message}") from None


def chat_messages(messages: Any, roles: Collection[str] | None = ROLES) -> list[dict[str, Any]]:
    """The conversation checked and copied: a list of {"role": str, "content": str | list, ...} dicts.

    Keys whose value is None are dropped (as HF does). A message needs a role (one of `roles`, unless
    None) and a content (a string, or a list of content blocks) unless it carries `tool_calls`.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(
            "chat template: messages must be a list of {'role': ..., 'content': ...} dicts, got "
            f"{type(messages).__name__}"
        )
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(
                f"chat template: message {i} must be a dict with 'role' and 'content', got {type(m).__name__}"
            )
        msg = {str(k): v for k, v in m.items() if v is not None}
        role = msg.get("role")
        if not isinstance(role, str) or (roles is not None and role not in roles):
            allowed = "a string" if roles is None else "one of " + ", ".join(repr(r) for r in roles)
            raise ValueError(f"chat template: message {i} has role {role!r}; expected {allowed}")
        content = msg.get("content")
        if content is None and "tool_calls" not in msg:
            raise ValueError(f"chat template: message {i} ({role}) has no 'content' (a string or a list)")
        if content is not None and not isinstance(content, (str, list)):
            raise ValueError(
                f"chat template: message {i} ({role}) content must be a string or a list of content "
                f"blocks, got {type(content).__name__}"
            )
        out.append(msg)
    return out


def apply_chat_template(
    messages: Any,
    template: str,
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    roles: Collection[str] | None = ROLES,
    **variables: Any,
) -> str:
    """The conversation rendered by `template` (see the module docstring); ValueError names what is wrong.

    add_generation_prompt appends the opening of the assistant's turn, for generation; the special
    tokens and any further `variables` (e.g. tools=[...], pad_token="...") are visible to the template.
    """
    if not isinstance(template, str) or not template:
        raise ValueError(f"chat template: the template must be a non-empty Jinja string, got {template!r}")
    import jinja2

    chat = chat_messages(messages, roles)
    names = {"bos_token": bos_token, "eos_token": eos_token}
    context = {**{k: v for k, v in names.items() if v is not None}, **variables}
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    try:
        return str(
            _compile(template).render(messages=chat, add_generation_prompt=add_generation_prompt, **context)
        )
    except jinja2.exceptions.TemplateError as exc:  # raise_exception(...), undefined names, the sandbox
        raise ValueError(f"chat template: {exc}") from None


def folder_chat_template(folder: str | os.PathLike[str]) -> str | None:
    """The chat template of a Hugging Face model folder, or None: chat_template.jinja, else the
    `chat_template` of tokenizer_config.json (a string, or a list of {"name", "template"} whose
    "default" entry is taken, as transformers does)."""
    root = Path(folder)
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = root / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"{config}: not a JSON object ({exc})") from None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{config}: chat_template must be a string or a list of named templates")
    return value
