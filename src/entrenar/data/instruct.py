"""Instruction-tuning data: instruction/response pairs built from a corpus of works, rendered with a
model's chat template, one pair per row, the prompt masked out of the loss.

    pairs = shakespeare_pairs(works)                       # [{"work", "kind", "prompt", "response"}]
    rows = encode_chat_pairs(pairs, tokenizer, template, max_length=128, eos_id=eos)   # LMBlocks

The pairs are derived mechanically from the texts, nothing is written by hand. Each work's lines
(blank lines and its two-line header, title and "by ...", left out) are cut into windows of
`context + continuation` consecutive lines; `per_work` windows, evenly spaced over the work, alternate
between two kinds:

    "continue": "Continue this passage from <title>:\\n\\n<context lines>" -> the next lines
    "identify": "Which of Shakespeare's works is this passage from?\\n\\n<context lines>" -> <title>

The title is the work's first non-empty line, title-cased ("HAMLET, PRINCE OF DENMARK" -> "Hamlet,
Prince of Denmark"; Roman numerals kept).

Encoding (labels already shifted, as `entrenar.data.text.pack_blocks`): a pair becomes the
conversation [user: prompt, assistant: response] rendered by the template (`apply_chat_template`,
add_generation_prompt off), the prompt part being the rendering of [user: prompt] with
add_generation_prompt on (system turn, user turn, assistant header). The rendered text is tokenized
once (the template writes the special tokens itself); a token that ends inside the prompt part is a
prompt token (one that straddles its end, as " hi" after "assistant:", holds response text: it is
trained). The row ends at the assistant's first end-of-turn token (`eos_id`; what the template
writes after it is dropped), or, when the template writes none, with `eos_id` appended. Row of T =
max_length: input_ids = ids[:-1], labels = ids[1:] with IGNORE_INDEX (-100) where the label is a
prompt token, both right-padded to T (`pad_id` / -100; a causal model never looks right, so no
attention mask is needed). A pair of more than T + 1 tokens is dropped, not truncated (a cut answer
would teach the model to stop mid-sentence); `LMBlocks.work` holds each row's index in `pairs`, so
len(pairs) - len(rows) were dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from entrenar.data.loaders import _positive_int
from entrenar.data.text import IGNORE_INDEX, LMBlocks

__all__ = ["PAIR_KINDS", "encode_chat_pairs", "shakespeare_pairs", "work_title"]

PAIR_KINDS = ("continue", "identify")
_ROMAN = re.compile(r"^(X{0,3})(IX|IV|V?I{0,3})$")
_MINOR = {"a", "an", "and", "at", "for", "in", "of", "on", "or", "that", "the", "to"}
_TITLE_MAX = 80  # a longer first line is not a title: the file name is used instead


def _title_word(word: str, first: bool) -> str:
    bare = word.strip(",.;:!?'\"()")
    if bare and _ROMAN.match(bare.upper()) and bare.isupper():
        return word
    lower = word.lower()
    if not first and bare.lower() in _MINOR:
        return lower
    return lower[:1].upper() + lower[1:]


def work_title(name: str, text: str) -> str:
    """The work's title: its first non-empty line title-cased, or `name` (underscores to spaces)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line or len(line) > _TITLE_MAX:
        return name.replace("_", " ")
    if not line.isupper():
        return line
    return " ".join(_title_word(w, i == 0) for i, w in enumerate(line.split()))


def _body_lines(text: str) -> list[str]:
    """The work's non-empty lines without its header (the title line, then a "by ..." line if any)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    lines = lines[1:]
    if lines and lines[0].strip().lower().startswith("by "):
        lines = lines[1:]
    return lines


def shakespeare_pairs(
    works: Mapping[str, str], *, context: int = 4, continuation: int = 2, per_work: int | None = 100
) -> list[dict[str, str]]:
    """Instruction/response pairs from `works` ({name: text}), in sorted work order, both kinds
    alternating within each work (see the module docstring); the same works give the same pairs.

    context / continuation: lines shown / lines to continue; per_work: windows per work, evenly spaced
    (None: every non-overlapping window). A work too short for one window gives no pair.
    """
    if not isinstance(works, Mapping):
        raise ValueError(
            f"shakespeare_pairs: works must be a {{name: text}} dict, got {type(works).__name__}"
        )
    context = _positive_int("shakespeare_pairs", "context", context)
    continuation = _positive_int("shakespeare_pairs", "continuation", continuation)
    if per_work is not None:
        per_work = _positive_int("shakespeare_pairs", "per_work", per_work)
    width = context + continuation
    pairs: list[dict[str, str]] = []
    for name in sorted(works):
        text = works[name]
        if not isinstance(text, str):
            raise ValueError(f"shakespeare_pairs: work {name!r} must be a string, got {type(text).__name__}")
        title = work_title(name, text)
        lines = _body_lines(text)
        n = len(lines) // width  # non-overlapping windows
        if n == 0:
            continue
        starts = np.arange(n, dtype=np.int64) * width
        if per_work is not None and per_work < n:
            starts = starts[np.linspace(0, n - 1, per_work).round().astype(np.int64)]
        for i, s in enumerate(starts.tolist()):
            shown = "\n".join(lines[s : s + context])
            if i % 2 == 0:
                prompt = f"Continue this passage from {title}:\n\n{shown}"
                response = "\n".join(lines[s + context : s + width])
                kind = PAIR_KINDS[0]
            else:
                prompt = f"Which of Shakespeare's works is this passage from?\n\n{shown}"
                response, kind = title, PAIR_KINDS[1]
            pairs.append({"work": name, "kind": kind, "prompt": prompt, "response": response})
    return pairs


def _check_pair(i: int, pair: Any) -> tuple[str, str]:
    if not isinstance(pair, Mapping):
        raise ValueError(
            f"encode_chat_pairs: pair {i} must be a dict with 'prompt' and 'response' strings, got "
            f"{type(pair).__name__}"
        )
    out = []
    for key in ("prompt", "response"):
        value = pair.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"encode_chat_pairs: pair {i} has no {key} (expected a non-empty string, got {value!r})"
            )
        out.append(value)
    return out[0], out[1]


def encode_chat_pairs(
    pairs: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template: str,
    max_length: int,
    eos_id: int,
    pad_id: int | None = None,
    bos_token: str | None = None,
) -> LMBlocks:
    """One row per pair (see the module docstring): the conversation rendered by `template`, prompt
    tokens and padding labelled IGNORE_INDEX, the assistant's tokens (its end-of-turn `eos_id` too)
    trained; pairs longer than max_length + 1 tokens dropped. ValueError names a bad pair or template.

    tokenizer: a `tokenizers.Tokenizer`, or what holds one as `.tokenizer` (PretrainedTokenizer).
    """
    from entrenar.models.chat import apply_chat_template  # data sits below models: imported on use

    T = _positive_int("encode_chat_pairs", "max_length", max_length)
    pad = eos_id if pad_id is None else pad_id
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if not all(hasattr(tok, a) for a in ("encode_batch", "id_to_token", "no_truncation")):
        raise ValueError(
            "encode_chat_pairs: tokenizer must be a tokenizers.Tokenizer or a PretrainedTokenizer, got "
            f"{type(tokenizer).__name__}"
        )
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("encode_chat_pairs: pairs must be a non-empty list of {'prompt', 'response'} dicts")
    tok.no_truncation()
    eos_token = tok.id_to_token(int(eos_id))
    texts: list[str] = []
    bounds: list[int] = []  # characters of prompt part in each rendered conversation
    for i, pair in enumerate(pairs):
        prompt, response = _check_pair(i, pair)
        user = [{"role": "user", "content": prompt}]
        specials = {"bos_token": bos_token, "eos_token": eos_token}
        turns = [*user, {"role": "assistant", "content": response}]
        full = apply_chat_template(turns, template, add_generation_prompt=False, **specials)
        head = apply_chat_template(user, template, add_generation_prompt=True, **specials)
        if not full.startswith(head) or response not in full[len(head) :]:
            raise ValueError(
                "encode_chat_pairs: the chat template renders no assistant turn after the prompt: "
                f"[user, assistant] must render as [user] with add_generation_prompt, then the "
                f"response (pair {i}: {full[-120:]!r})"
            )
        texts.append(full)
        bounds.append(len(head))
    ids_out = np.full((len(texts), T), pad, dtype=np.int64)
    lab_out = np.full((len(texts), T), IGNORE_INDEX, dtype=np.int64)
    kept: list[int] = []
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    for i, (enc, bound) in enumerate(zip(encodings, bounds, strict=True)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        ends_at = np.asarray([end for _, end in enc.offsets], dtype=np.int64)
        n_prompt = int((ends_at <= bound).sum())  # offsets rise along the text: a prefix
        ends = np.flatnonzero(ids[n_prompt:] == eos_id)
        # through the assistant's end of turn, or with one appended when the template writes none
        ids = ids[: n_prompt + int(ends[0]) + 1] if ends.size else np.append(ids, np.int64(eos_id))
        if ids.size - 1 > T or ids.size - n_prompt < 1:
            continue
        row = len(kept)
        ids_out[row, : ids.size - 1] = ids[:-1]
        labels = ids[1:].copy()  # labels[t] = ids[t + 1]: masked while ids[t + 1] is a prompt token
        labels[: max(n_prompt - 1, 0)] = IGNORE_INDEX
        lab_out[row, : labels.size] = labels
        kept.append(i)
    if not kept:
        raise ValueError(
            f"encode_chat_pairs: all {len(texts)} pairs are longer than max_length {T} + 1 tokens"
        )
    n = len(kept)
    return LMBlocks(ids_out[:n], lab_out[:n], np.asarray(kept, dtype=np.int64))
