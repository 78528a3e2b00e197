"""`entrenar generate` on a tiny GGUF model: what it prints equals the library's generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_gguf import write_tiny_tokenizer_gguf

from entrenar.cli import main
from entrenar.lora import LoraConfig, PeftModel, get_peft_model
from entrenar.models.chat import apply_chat_template
from entrenar.models.generate import generate
from entrenar.models.gguf import llama_from_gguf
from entrenar.models.gguf_tokenizer import gguf_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|end|>{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    return {
        "plain": write_tiny_tokenizer_gguf(root / "plain.gguf"),
        "chat": write_tiny_tokenizer_gguf(root / "chat.gguf", chat_template=TEMPLATE),
    }


def expected(path: Path, text: str, n: int, chat: bool, model: Any = None, **kw: Any) -> str:
    """The completion the library gives: ids of the (templated) prompt, generate, decode the new tokens."""
    tok = gguf_tokenizer(path)
    model = llama_from_gguf(path) if model is None else model
    if chat:
        text = apply_chat_template([{"role": "user", "content": text}], TEMPLATE, bos_token="<|end|>")
    ids = tok.tokenizer.encode(text).ids
    out = generate(model, np.array([ids]), n, stop_tokens=[0], **kw)
    return tok.decode(out[0, len(ids) :])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["generate", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_plain_prompt_prints_the_greedy_completion(files: dict[str, Path], capsys: Any) -> None:
    rc, out, _ = run(
        capsys, "--model", str(files["plain"]), "--prompt", "hello world", "--max-new-tokens", "12"
    )
    want = expected(files["plain"], "hello world", 12, chat=False)
    assert rc == 0 and out == want + "\n" and len(want) > 0


def test_chat_template_is_used_when_the_model_has_one(files: dict[str, Path], capsys: Any) -> None:
    rc, out, _ = run(capsys, "--model", str(files["chat"]), "--prompt", "hello", "--max-new-tokens", "10")
    assert rc == 0 and out == expected(files["chat"], "hello", 10, chat=True) + "\n"
    rc, plain, _ = run(
        capsys, "--model", str(files["chat"]), "--prompt", "hello", "--max-new-tokens", "10", "--no-chat"
    )
    assert rc == 0 and plain == expected(files["chat"], "hello", 10, chat=False) + "\n"


def test_sampling_follows_the_seed(files: dict[str, Path], capsys: Any) -> None:
    args = [
        "--model",
        str(files["plain"]),
        "--prompt",
        "wor",
        "--max-new-tokens",
        "10",
        "--temperature",
        "1.5",
    ]
    a = [run(capsys, *args, "--seed", "3", "--top-k", "50", "--top-p", "0.95")[1] for _ in range(2)]
    kw = {"temperature": 1.5, "top_k": 50, "top_p": 0.95, "generator": np.random.default_rng(3)}
    assert a[0] == a[1] == expected(files["plain"], "wor", 10, chat=False, **kw) + "\n"


def test_stop_strings_cut_the_completion(files: dict[str, Path], capsys: Any) -> None:
    full = expected(files["plain"], "hello world", 12, chat=False)
    stop = full[3:5]
    cut = full[: full.find(stop)]
    rc, out, _ = run(
        capsys,
        "--model",
        str(files["plain"]),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "12",
        "--stop",
        stop,
    )
    assert rc == 0 and out == cut + "\n"


def test_prompts_file_gives_one_completion_each(files: dict[str, Path], capsys: Any, tmp_path: Path) -> None:
    f = tmp_path / "prompts.txt"
    f.write_text("hello\n\nwor 12\n", encoding="utf-8")
    rc, out, _ = run(
        capsys, "--model", str(files["plain"]), "--prompts-file", str(f), "--max-new-tokens", "6"
    )
    want = [expected(files["plain"], p, 6, chat=False) for p in ("hello", "wor 12")]
    assert rc == 0 and out == f"{want[0]}\n\n{want[1]}\n"


def test_adapter_is_applied(files: dict[str, Path], capsys: Any, tmp_path: Path) -> None:
    model = llama_from_gguf(files["plain"])
    peft = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), generator=0
    )
    rng = np.random.default_rng(5)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data[...] = rng.standard_normal(p.shape) * 0.5  # a non-trivial adapter
    peft.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(llama_from_gguf(files["plain"]), tmp_path / "adapter")
    want = expected(files["plain"], "hello", 10, chat=False, model=loaded)
    base = expected(files["plain"], "hello", 10, chat=False)
    rc, out, _ = run(
        capsys, "--model", str(files["plain"]), "--adapter", str(tmp_path / "adapter"), "--prompt", "hello",
        "--max-new-tokens", "10",
    )  # fmt: skip
    assert rc == 0 and out == want + "\n" and want != base


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--chat"], "the model has no chat template"),
        (["--max-new-tokens", "45"], "exceeds the model's context of 48 tokens"),
        (["--stop", ""], "--stop strings must not be empty"),
        (["--adapter", "/nonexistent/adapter"], "nonexistent"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    files: dict[str, Path], capsys: Any, args: list[str], match: str
) -> None:
    rc, _, err = run(capsys, "--model", str(files["plain"]), "--prompt", "hello world", *args)
    assert rc == 2 and "entrenar generate: error:" in err and match in err


def test_missing_inputs_exit_2(files: dict[str, Path], capsys: Any, tmp_path: Path) -> None:
    rc, _, err = run(capsys, "--model", str(tmp_path / "nope.gguf"), "--prompt", "x")
    assert rc == 2 and "no such GGUF file or Hugging Face model folder" in err
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    rc, _, err = run(capsys, "--model", str(files["plain"]), "--prompts-file", str(tmp_path / "empty.txt"))
    assert rc == 2 and "has no prompts" in err
    for argv in (["--prompt", "x", "--top-p", "1.5"], ["--prompt", "x", "--prompts-file", "f"], []):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--model", str(files["plain"]), *argv])
        assert exc.value.code == 2
