"""Mutant enumeration for scripts/mutate.py: small, typed edits of a module's syntax tree.

A *site* is an AST node where one of these edits applies; a *mutant* is (file, site index, edit).
Sites are numbered in a fixed traversal order, so the same source always yields the same mutants and
a mutant is re-created by parsing the file again and editing the site with that number.

Edits (the classic operator set):
  arith    a + b <-> a - b, a * b <-> a / b, a // b -> a / b, a ** b -> a * b, a % b -> a // b
  aug      x += y <-> x -= y, x *= y <-> x /= y
  compare  < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
  const    0 <-> 1, other ints n -> n + 1, floats f -> 2 f (0.0 -> 1.0), True <-> False
  unary    -x -> x, not x -> x
  boolop   and <-> or
  negate   if c / while c / a if c else b  ->  not c
  return   return x -> return None

Left alone: docstrings, annotations, decorators and `case(...)` calls (the @public test specs are
test data), the bodies of `raise` and `assert` (messages), f-strings, `if TYPE_CHECKING:`, `__all__`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Edit = Callable[[ast.AST], ast.AST | None]  # edits the node in place, or returns a replacement

_ARITH: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
}
_AUG: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
}
_CMP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}


@dataclass(frozen=True)
class Mutant:
    """One edit of one site: `file` (relative to the repo root), site number, a readable label."""

    file: str
    site: int
    line: int
    kind: str
    label: str

    @property
    def id(self) -> str:
        """Stable while the file is unchanged: '<file>:<line>:<site>:<kind>'."""
        return f"{self.file}:{self.line}:{self.site}:{self.kind}"


def _set_op(new: type[ast.AST]) -> Edit:
    def edit(node: ast.AST) -> None:
        node.op = new()  # type: ignore[attr-defined]

    return edit


def _set_cmp(i: int, new: type[ast.cmpop]) -> Edit:
    def edit(node: ast.AST) -> None:
        assert isinstance(node, ast.Compare)
        node.ops[i] = new()

    return edit


def _const(value: bool | int | float) -> Edit:
    def edit(node: ast.AST) -> None:
        assert isinstance(node, ast.Constant)
        node.value = value

    return edit


def _negate(node: ast.AST) -> None:
    assert isinstance(node, ast.If | ast.While | ast.IfExp)
    node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)


def _unwrap(node: ast.AST) -> ast.AST:
    assert isinstance(node, ast.UnaryOp)
    return node.operand


def _return_none(node: ast.AST) -> None:
    assert isinstance(node, ast.Return)
    node.value = ast.Constant(value=None)


def _flip_boolop(node: ast.AST) -> None:
    assert isinstance(node, ast.BoolOp)
    node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()


def _edits(node: ast.AST) -> list[tuple[str, str, Edit]]:
    """(kind, label, edit) for every mutation this node admits."""
    out: list[tuple[str, str, Edit]] = []
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        new = _ARITH[type(node.op)]
        out.append(("arith", f"{type(node.op).__name__} -> {new.__name__}", _set_op(new)))
    elif isinstance(node, ast.AugAssign) and type(node.op) in _AUG:
        new = _AUG[type(node.op)]
        out.append(("aug", f"{type(node.op).__name__}= -> {new.__name__}=", _set_op(new)))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _CMP:
                new_cmp = _CMP[type(op)]
                out.append(("compare", f"{type(op).__name__} -> {new_cmp.__name__}", _set_cmp(i, new_cmp)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(("const", f"{node.value} -> {not node.value}", _const(not node.value)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        v = node.value
        new_v: int | float = (1 if v == 0 else 0 if v == 1 else v + 1) if isinstance(v, int) else (
            1.0 if v == 0 else 2.0 * v)
        out.append(("const", f"{v!r} -> {new_v!r}", _const(new_v)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        out.append(("unary", f"drop {type(node.op).__name__}", _unwrap))
    elif isinstance(node, ast.BoolOp):
        flipped = "Or" if isinstance(node.op, ast.And) else "And"
        out.append(("boolop", f"{type(node.op).__name__} -> {flipped}", _flip_boolop))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return", "return None", _return_none))
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        out.append(("negate", f"negate {type(node).__name__} condition", _negate))
    return out


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(
        node.value.value, str)


def _skipped(node: ast.AST) -> bool:
    if isinstance(node, ast.Raise | ast.Assert | ast.JoinedStr) or _is_docstring(node):
        return True
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "case":
        return True  # a registry test spec (shapes, args): test data, not library behaviour
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def _children(node: ast.AST) -> Iterator[ast.AST]:
    """Child nodes, without annotations, decorators and argument defaults' annotations."""
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "decorator_list", "type_comment", "type_params"):
            continue
        if isinstance(node, ast.AnnAssign) and field == "target":
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, ast.AST):
                yield item


def sites(tree: ast.AST) -> Iterator[tuple[ast.AST, list[tuple[str, str, Edit]], ast.AST | None]]:
    """(node, edits, parent) for every mutable node, depth-first in source order."""
    stack: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        if _skipped(node):
            continue
        edits = _edits(node)
        if edits:
            yield node, edits, parent
        stack.extend((child, node) for child in reversed(list(_children(node))))


def enumerate_mutants(path: Path, rel: str) -> list[Mutant]:
    """Every mutant of the module at `path` (named `rel` in ids and reports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    n = 0
    for node, edits, _ in sites(tree):
        for kind, label, _edit in edits:
            out.append(Mutant(rel, n, getattr(node, "lineno", 0), kind, label))
            n += 1
    return out


def apply(source: str, mutant: Mutant) -> str:
    """The module's source with `mutant` applied (regenerated by ast.unparse: comments are lost)."""
    tree = ast.parse(source)
    n = 0
    for node, edits, parent in sites(tree):
        for _kind, _label, edit in edits:
            if n == mutant.site:
                replacement = edit(node)
                if replacement is not None:
                    assert parent is not None
                    _replace_child(parent, node, replacement)
                return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
            n += 1
    raise ValueError(f"{mutant.file}: no site {mutant.site} (the file changed since the mutant was listed)")


def _replace_child(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
    raise ValueError("node not found under its parent")
