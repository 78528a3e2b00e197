"""scripts/mutants.py and scripts/mutate.py: which edits are made, what is left alone, the score."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import mutate  # noqa: E402
from mutants import Mutant, apply, enumerate_mutants  # noqa: E402

SOURCE = '''"""Module docstring 1 + 2."""
__all__ = ["f"]


@decorate(1, shape=(2, 3))
def f(x: int = 0, y: "list[int] | None" = None) -> int:
    """Docstring with 0."""
    if x < 2 and y is not None:
        raise ValueError(f"x {x + 1} bad")
    x += 3 * x
    assert x != 0, "message"
    return -x if not y else x / 2.5
'''


def _mutated(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    return {f"{m.kind}:{m.label}": apply(SOURCE, m) for m in enumerate_mutants(path, "m.py")}


def test_the_operator_set_is_applied(tmp_path: Path) -> None:
    got = _mutated(tmp_path)
    expected = {
        "compare:Lt -> LtE": "if x <= 2 and y is not None:",
        "compare:IsNot -> Is": "if x < 2 and y is None:",
        "boolop:And -> Or": "if x < 2 or y is not None:",
        "negate:negate If condition": "if not (x < 2 and y is not None):",
        "negate:negate IfExp condition": "return -x if not not y else x / 2.5",
        "const:2 -> 3": "if x < 3 and",
        "aug:Add= -> Sub=": "x -= 3 * x",
        "arith:Mult -> Div": "x += 3 / x",
        "const:3 -> 4": "x += 4 * x",
        "unary:drop USub": "return x if not y else x / 2.5",
        "unary:drop Not": "return -x if y else x / 2.5",
        "arith:Div -> Mult": "else x * 2.5",
        "const:2.5 -> 5.0": "else x / 5.0",
        "return:return None": "return None",
    }
    for key, fragment in expected.items():
        assert key in got, f"missing mutant {key}; have {sorted(got)}"
        assert fragment in got[key], f"{key}: {fragment!r} not in\n{got[key]}"
    assert "const:0 -> 1" in got and "def f(x: int=1," in got["const:0 -> 1"]


def test_docstrings_annotations_decorators_raise_assert_and_all_are_left_alone(tmp_path: Path) -> None:
    for key, text in _mutated(tmp_path).items():
        tree = ast.parse(text)
        assert ast.get_docstring(tree) == "Module docstring 1 + 2.", key
        assert "@decorate(1, shape=(2, 3))" in text, key
        assert "raise ValueError(f'x {x + 1} bad')" in text, key
        assert "assert x != 0, 'message'" in text, key
        assert "__all__ = ['f']" in text, key
        assert "-> int:" in text and "x: int" in text, key


def test_enumeration_is_deterministic_and_stale_sites_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    first, second = enumerate_mutants(path, "m.py"), enumerate_mutants(path, "m.py")
    assert first == second and len({m.id for m in first}) == len(first)
    with pytest.raises(ValueError, match="no site 999"):
        apply(SOURCE, Mutant("m.py", 999, 1, "const", "x"))


def test_every_core_mutant_applies_to_valid_changed_code() -> None:
    mutants = mutate.all_mutants()
    assert {mutate.part_of(m) for m in mutants} == set(mutate.TESTS)
    for m in mutants[::151]:  # a spread across the files, kept fast
        src = (ROOT / m.file).read_text()
        assert ast.dump(ast.parse(apply(src, m))) != ast.dump(ast.parse(src)), m.id


def test_equivalent_list_needs_a_reason_per_line(tmp_path: Path) -> None:
    good = tmp_path / "eq.txt"
    good.write_text("# header\n\nsrc/a.py:1:0:const  # 0.0 and -0.0 compare equal here\n")
    assert mutate.read_equivalent(good) == {"src/a.py:1:0:const": "0.0 and -0.0 compare equal here"}
    bad = tmp_path / "bad.txt"
    bad.write_text("src/a.py:1:0:const\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected"):
        mutate.read_equivalent(bad)
    assert mutate.read_equivalent(mutate.EQUIVALENT).keys() <= {m.id for m in mutate.all_mutants()}


def test_score_and_gate(capsys: pytest.CaptureFixture[str]) -> None:
    ms = [Mutant("src/entrenar/ops/x.py", i, 1, "const", "0 -> 1") for i in range(5)]
    outcomes = ["killed", "killed", "timeout", "killed", "survived"]
    assert mutate.report(list(zip(ms, outcomes, strict=True)), 80.0, 1.0) == 0
    assert "80.0%" in capsys.readouterr().out
    assert mutate.report(list(zip(ms, ["survived"] * 2 + ["killed"] * 3, strict=True)), 80.0, 1.0) == 1
