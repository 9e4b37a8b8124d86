"""Assert tests, the trusted half: which parts of an assert the sandbox computes, and the verdict from them.

An MBPP/HumanEval assert (`assert add(1, 2) == 3`) must be judged where the program cannot tamper with
it, yet it calls into the program. So each assert is parsed with `ast` into a plan: its expression,
where every sub-expression this side cannot evaluate on its own (a call into the solution, a name the
program or setup defines) is a "hole" whose source is sent into the sandbox. The sandbox returns the
holes' values as strict builtin data (rewards/sandbox/plain_data.py), and `judge_values` recomputes the
assert here with a small evaluator: literals, containers, arithmetic, comparisons, a few pure builtins
(abs, round, sorted, len, ...), math functions and str methods, nothing else. Expected values therefore
never enter the sandbox, and no `__eq__` override, exit code or print can pass a test.

The evaluator only sees node kinds `_parent_side` allowed, and refuses operations whose result could be
huge (`_guard`): the values come from untrusted code, so `2 ** big` or `"x" * big` must not stall the
scorer. A name that setup binds (e.g. `len = ...`) is sent into the sandbox instead of being read as the
builtin, exactly as Python would resolve it there.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from temper.rewards.sandbox import NotData, decode


class BadAssert(ValueError):
    """A test that is not a single parseable assert statement, or a setup that does not parse."""


_SAFE_CALLS: dict[str, Any] = {
    f.__name__: f for f in (abs, all, any, bool, float, int, len, list, max, min, round, set, frozenset,
                            sorted, str, sum, tuple, dict, isinstance, reversed, type, repr, bytes, complex)}
_ITERABLE_CONSUMERS = {"all", "any", "list", "max", "min", "set", "frozenset", "sorted", "sum", "tuple", "dict"}
_SAFE_TYPES = {t.__name__: t for t in (int, float, str, bool, list, tuple, dict, set, frozenset, bytes,
                                       complex)}
_MATH = {name: getattr(math, name) for name in (
    "isclose", "fabs", "sqrt", "floor", "ceil", "isnan", "isinf", "isfinite", "log", "log2", "log10",
    "exp", "trunc", "gcd", "pi", "e", "inf", "nan", "tau", "hypot", "copysign")}
_STR_METHODS = {"strip", "lstrip", "rstrip", "lower", "upper", "split", "splitlines", "startswith",
                "endswith", "replace", "count", "find", "join", "isdigit", "isalpha", "title"}
_ALLOWED_NODES = (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp,
                  ast.Compare, ast.IfExp, ast.Subscript, ast.Slice)


@dataclass(frozen=True)
class Plan:
    expr: ast.expr
    holes: tuple[tuple[str, bool], ...]  # (source sent into the sandbox, materialize iterables)
    hole_ids: dict[int, int]  # id(node) -> index into the values


@lru_cache(maxsize=512)
def plans(tests: tuple[str, ...], setup: str) -> list[Plan]:
    try:
        shadowed = _bound_names(ast.parse(setup)) if setup else set()
    except SyntaxError as e:
        raise BadAssert(f"setup does not parse: {e}") from None
    return [_plan(test, k, shadowed) for k, test in enumerate(tests)]


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _plan(test: str, k: int, shadowed: set[str]) -> Plan:
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as e:
        raise BadAssert(f"test {k} does not parse: {e.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise BadAssert(f"test {k} must be a single assert statement")
    holes: list[tuple[str, bool]] = []
    hole_ids: dict[int, int] = {}

    def hole(node: ast.expr, materialize: bool = False) -> None:
        hole_ids[id(node)] = len(holes)
        holes.append((ast.unparse(node), materialize))

    def visit(node: ast.expr, materialize: bool = False) -> None:
        if _parent_side(node, shadowed):
            for child, mat in _children(node, shadowed):
                visit(child, mat)
        else:
            hole(node, materialize)

    expr = tree.body[0].test
    visit(expr)
    return Plan(expr, tuple(holes), hole_ids)


def _safe_call_name(node: ast.Call, shadowed: set[str]) -> str | None:
    f = node.func
    if isinstance(f, ast.Name) and f.id in _SAFE_CALLS and f.id not in shadowed:
        return f.id
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math" \
            and f.attr in _MATH:
        return "math." + f.attr
    if isinstance(f, ast.Attribute) and f.attr in _STR_METHODS:
        return "." + f.attr
    return None


def _parent_side(node: ast.expr, shadowed: set[str]) -> bool:
    if isinstance(node, _ALLOWED_NODES):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and any(isinstance(e, ast.Starred)
                                                                     for e in node.elts):
            return False
        return not (isinstance(node, ast.Dict) and any(key is None for key in node.keys))
    if isinstance(node, ast.Name):
        return node.id in _SAFE_TYPES and node.id not in shadowed
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH
    if isinstance(node, ast.Call):
        args = [*node.args, *(kw.value for kw in node.keywords)]
        if any(isinstance(a, (ast.Starred, ast.Lambda)) for a in args) or any(kw.arg is None
                                                                              for kw in node.keywords):
            return False  # a function value cannot cross the boundary: the whole call is a hole
        return _safe_call_name(node, shadowed) is not None
    return False


def _children(node: ast.expr, shadowed: set[str]) -> list[tuple[ast.expr, bool]]:
    if isinstance(node, ast.Call):
        name = _safe_call_name(node, shadowed)
        args = [(a, i == 0 and name in _ITERABLE_CONSUMERS) for i, a in enumerate(node.args)]
        if name and name.startswith("."):
            args.insert(0, (node.func.value, False))  # type: ignore[union-attr]
        return args + [(kw.value, False) for kw in node.keywords]
    if isinstance(node, ast.Attribute):
        return []
    return [(c, False) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]


def judge_values(plan: Plan, text: Any) -> tuple[str, str]:
    try:
        doc = json.loads(text) if isinstance(text, str) and len(text) < 1 << 26 else None
    except (ValueError, RecursionError):
        return "fail", "the sandbox returned malformed values"
    if isinstance(doc, dict) and isinstance(doc.get("bad"), str):
        return "fail", doc["bad"][:200]
    if not (isinstance(doc, dict) and isinstance(doc.get("ok"), list) and len(doc["ok"]) == len(plan.holes)):
        return "fail", "the sandbox returned malformed values"
    try:
        values = [decode(v) for v in doc["ok"]]
        ok = bool(_Evaluator(plan, values).eval(plan.expr))
    except NotData as e:
        return "fail", str(e)
    except (ArithmeticError, TypeError, ValueError, AttributeError, IndexError, KeyError, RecursionError,
            MemoryError) as e:
        return "fail", f"{type(e).__name__}: {str(e)[:150]}"
    return ("pass", "") if ok else ("fail", "")


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
           ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b, ast.BitAnd: lambda a, b: a & b,
           ast.MatMult: None}
_CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
           ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
           ast.Is: lambda a, b: a is b or (a == b and type(a) is type(b) and a in (None, True, False)),
           ast.IsNot: lambda a, b: not (a is b or (a == b and type(a) is type(b) and a in (None, True, False)))}
_UNARY = {ast.Not: lambda a: not a, ast.USub: lambda a: -a, ast.UAdd: lambda a: +a, ast.Invert: lambda a: ~a}
_BIG = 10_000_000  # most elements/bits a parent-side operation may create from untrusted values


class _Evaluator:
    """Recomputes an assert from strict data: only the node kinds `_parent_side` allowed get here."""

    def __init__(self, plan: Plan, values: list[Any]) -> None:
        self.plan, self.values = plan, values

    def eval(self, node: ast.expr) -> Any:
        k = self.plan.hole_ids.get(id(node))
        if k is not None:
            return self.values[k]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
            return kind(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.eval(node.operand))
        if isinstance(node, ast.BinOp):
            a, b = self.eval(node.left), self.eval(node.right)
            _guard(node.op, a, b)
            op = _BINOPS[type(node.op)]
            if op is None:
                raise TypeError("unsupported operator")
            return op(a, b)
        if isinstance(node, ast.BoolOp):
            value: Any = None
            for v in node.values:
                value = self.eval(v)
                if isinstance(node.op, ast.And) != bool(value):
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.eval(right_node)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)
        if isinstance(node, ast.Subscript):
            return self.eval(node.value)[self.eval(node.slice)]
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self.eval(p) for p in (node.lower, node.upper, node.step)]
            return slice(*parts)
        if isinstance(node, ast.Name):
            return _SAFE_TYPES[node.id]
        if isinstance(node, ast.Attribute):
            return _MATH[node.attr]
        if isinstance(node, ast.Call):
            return self._call(node)
        raise TypeError(f"unsupported expression {type(node).__name__}")

    def _call(self, node: ast.Call) -> Any:
        f = node.func
        args = [self.eval(a) for a in node.args]
        kwargs = {kw.arg: self.eval(kw.value) for kw in node.keywords}
        if isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id == "math"):
            receiver = self.eval(f.value)
            if type(receiver) is not str:
                raise TypeError(f".{f.attr}() is only evaluated on strings here")
            sizes = [len(a) for a in args if isinstance(a, (str, list, tuple))]
            if f.attr in ("replace", "join") and (len(receiver) + 1) * (sum(sizes) + 1) > _BIG:
                raise ValueError(f".{f.attr}() result too large to evaluate")
            return getattr(receiver, f.attr)(*args, **kwargs)
        fn = _MATH[f.attr] if isinstance(f, ast.Attribute) else _SAFE_CALLS[f.id]  # type: ignore[attr-defined]
        if fn in (str, repr, int) and args and isinstance(args[0], (list, tuple, set, frozenset, dict)) \
                and len(repr(args[0])) > _BIG:
            raise ValueError("value too large")
        if fn is bytes and args and type(args[0]) is int and args[0] > _BIG:
            raise ValueError("value too large")
        return fn(*args, **kwargs)


def _guard(op: ast.operator, a: Any, b: Any) -> None:
    """Refuses operations whose result could be huge: values from the sandbox are adversarial."""
    if isinstance(op, ast.Pow) and type(a) is int and type(b) is int:
        if b > 0 and max(a.bit_length(), 1) * b > _BIG:
            raise ValueError("power too large to evaluate")
    elif isinstance(op, ast.Mod) and isinstance(a, (str, bytes)):
        raise TypeError("%-formatting is not evaluated here")
    elif isinstance(op, ast.LShift) and type(b) is int and b > _BIG:
        raise ValueError("shift too large to evaluate")
    elif isinstance(op, ast.Mult):
        for seq, count in ((a, b), (b, a)):
            if isinstance(seq, (str, bytes, list, tuple)) and type(count) is int and len(seq) * count > _BIG:
                raise ValueError("repetition too large to evaluate")
