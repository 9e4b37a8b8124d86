"""The math verifier: Math-Verify for parsing and matching, plus the checks it gets wrong.

Math-Verify (HF) parses LaTeX answers into sympy and compares them many ways; we keep all of that and
decide by what a careful human grader would say. Every deliberate divergence from plain Math-Verify
(`verify(parse(gold), parse(response))`) is listed here or in rewards/math_answers.py; each has cases,
with near-misses that must still score 0, in the hand-decided table tests/rewards/test_math_table.py.

Reading the label and finding the answer in the response: rewards/math_answers.py (text scanning
only, no sympy), which lists its divergences the same way.

Parsing the answer
- A label that lists solutions, one of them with `\\pm` (`x = 1, x = 2 \\pm \\sqrt{3}`), does not parse
  whole (Math-Verify reads that one as 2). When the whole fails and every top-level comma-separated part
  parses, the answer is the set of all the parts' solutions ({1, 2 + sqrt(3), 2 - sqrt(3)}); missing,
  extra or wrong roots score 0. Responses get the same rule. `x = 2 \\pm \\sqrt{3}` (an equation with a
  set on one side, which cannot be compared) is read as {x = 2 + sqrt(3), x = 2 - sqrt(3)}.

Deciding equality
- Its numeric comparison evaluates `gold - pred` to 15 digits and chops small results to zero, so exact
  values that differ by a tiny amount match (1/2^99 vs 1/2^98, 1/2004! vs 1/2006!). We re-check every
  match: exactly when both sides are exact, with a relative tolerance only when one side is a decimal;
  an infinity matches only the same infinity (`(0, +\\infty)` against itself used to fail on oo - oo).
- An equation prediction against a plain gold value is reduced to its right-hand side, so any `... = 0`
  matches a gold 0; two equations with no real solutions match because both solution lists are empty.
  We accept an equation prediction for a value only as an assignment (`x = 5`), and two equations only
  when one is a nonzero constant multiple of the other.
- A comma is never a decimal point: `2,5` is the list 2, 5 (as Math-Verify reads it too), so it does not
  match 2.5, and neither does `2{,}5`. Accepting a decimal comma would make the same `\\boxed{2,5}` right
  for gold 2.5 and for gold {2, 5}: a false positive in one of them, for a convention the English
  datasets we train on do not use. A comma between groups of exactly three digits, when that is the
  whole number (`1,000`, `1{,}234.5`), is a thousands separator.
- Answers longer than `max_answer_chars` and brackets nested deeper than 8 are not parsed (score 0): the
  LaTeX parser backtracks exponentially on them.

Running it
- Math-Verify times out with SIGALRM, which fails off the main thread and cannot interrupt C code. We
  disable it: the rubric kills its scoring process instead (rewards/verifier_process.py). Numbers too big to evaluate
  (towers of powers, huge factorials) are detected before any evaluation and compared structurally.
- `quick` decides an integer label against an integer answer stated explicitly without sympy, with
  exactly the full path's verdict (a test checks); the rubric runs it before sending a sample to a process.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.math_answers import explicit_answer, label_body, normalize_answer, whole_text_answer

# sympy and Math-Verify take ~1.5 s of CPU to import: they load in MathVerifier.__init__ (once per scoring
# process), so that `temper rewards list`, config validation and `quick` (the rubric's caller)
# stay fast.
sympy: Any = None
mv: Any = None


def _load_libraries() -> None:
    global sympy, mv
    if mv is None:
        import math_verify
        import math_verify.grader
        import sympy as _sympy

        # Math-Verify warns once that its signal timeout is off; that is deliberate (see the docstring).
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        sympy, mv = _sympy, math_verify


class MathParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    require_boxed: bool = False
    """Only a `\\boxed{...}` answer counts; a response without one scores 0."""
    allow_plain_number: bool = True
    """With no box (and require_boxed off), fall back to the last number in the response."""
    rel_tol: float = Field(1e-6, gt=0, lt=1)
    """Relative tolerance when one side is a decimal (0.333333 vs 1/3); exact values compare exactly."""
    max_digits: int = Field(20_000, ge=10)
    """Numbers whose exact value would need more digits are compared by their written form only."""
    max_answer_chars: int = Field(1_000, ge=1)
    """Longer extracted answers are not parsed (scored 0): a guard against pathological parses."""


QUICK_MAX_CHARS = 100_000  # `quick` runs outside the timeout: at most ~0.1 s of linear scans on this much
_INTEGER = re.compile(r"[-+]?\d{1,300}")


def _too_nested(text: str, limit: int = 8) -> bool:
    """Deeply nested brackets make the LaTeX parser backtrack exponentially (21 levels of `(`: 3 s)."""
    depth = deepest = 0
    for c in text:
        if c in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]":
            depth = max(0, depth - 1)
    return deepest > limit or "{{{{" in text.replace(" ", "")


def _parse_one(body: str) -> Any:
    """Math-Verify's parse of one answer body: a sympy object, else the string it fell back to, else None."""
    if _too_nested(body):
        return None
    found = mv.parse(f"$\\boxed{{{body}}}$", [mv.LatexExtractionConfig()], parsing_timeout=None)
    for item in found:
        if not isinstance(item, str):
            return _solutions(item)
    return found[0] if found else None


def _solutions(expr: Any) -> Any:
    """`x = 2 \\pm \\sqrt{3}` parses as x = {2 - sqrt(3), 2 + sqrt(3)}: make it {x = 2 - sqrt(3), x = 2 + sqrt(3)},
    the form `x = 1, x = 2` already has, so the two compare (an equation with a set side cannot)."""
    if isinstance(expr, sympy.Eq) and isinstance(expr.rhs, sympy.FiniteSet) and isinstance(expr.lhs, sympy.Symbol):
        return sympy.FiniteSet(*(sympy.Eq(expr.lhs, v, evaluate=False) for v in expr.rhs.args))
    return expr


def _top_level_parts(body: str) -> list[str]:
    """`body` split at the commas that are outside every bracket and brace."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts]


def _parse_body(body: str) -> Any:
    """Parse the body of one answer; a sympy object, else the string Math-Verify fell back to, else None.

    When the whole does not parse but each comma-separated part does (`x = 1, x = 2 \\pm \\sqrt{3}`: a list
    of solutions, one with a `\\pm`), the answer is the set of the parts' solutions.
    """
    whole = _parse_one(body)
    if whole is not None and not isinstance(whole, str):
        return whole
    parts = _top_level_parts(body)
    if len(parts) < 2:
        return whole
    items: list[Any] = []
    for part in parts:
        parsed = _parse_one(part) if part else None
        if parsed is None or isinstance(parsed, str | sympy.Interval | sympy.Tuple):  # no guessing at pairs
            return whole
        items.extend(parsed.args if isinstance(parsed, sympy.FiniteSet) else [parsed])
    return sympy.FiniteSet(*items)


def _digits(expr: Any) -> float:
    """An upper bound on the decimal digits that evaluating `expr` exactly would produce."""
    if isinstance(expr, sympy.MatrixBase):
        return sum(_digits(e) for e in expr)
    if not isinstance(expr, sympy.Basic):
        return 0.0
    if isinstance(expr, sympy.Integer):
        return int(expr).bit_length() * 0.30103 + 1
    if isinstance(expr, sympy.Rational):
        return _digits(sympy.Integer(expr.p)) + _digits(sympy.Integer(expr.q))
    if isinstance(expr, sympy.Pow):
        base, exp = expr.args
        if exp.is_number and not exp.free_symbols:
            if _digits(exp) > 9:
                return math.inf
            try:
                e = abs(float(exp))
            except (TypeError, ValueError):
                return math.inf
            return max(1.0, _digits(base)) * max(1.0, e)
    if isinstance(expr, sympy.factorial | sympy.factorial2 | sympy.gamma | sympy.subfactorial):
        (n,) = expr.args[:1]
        if n.is_number and not n.free_symbols:
            if _digits(n) > 8:
                return math.inf
            nv = abs(float(n))
            return nv * math.log10(max(nv, 2.0)) + 1
    return sum(_digits(a) for a in expr.args)


def _has_float(expr: Any) -> bool:
    if isinstance(expr, sympy.MatrixBase):
        return any(_has_float(e) for e in expr)
    return isinstance(expr, sympy.Basic) and bool(expr.atoms(sympy.Float))


def _has_infinity(expr: Any) -> bool:
    return bool(expr.has(sympy.oo, sympy.S.NegativeInfinity, sympy.zoo))


def _norm_str(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}|\\mathrm\{([^}]*)\}", lambda m: m.group(1) or m.group(2) or "", text)
    return re.sub(r"[\s$]", "", text).lower()


class MathVerifier(Verifier):
    """Score 1 when the response's final answer equals the label mathematically, else 0."""

    Params = MathParams

    def __init__(self, params: MathParams | None = None) -> None:
        super().__init__(params)
        _load_libraries()

    @classmethod
    def quick(cls, params: BaseModel, request: VerifyRequest) -> VerifyResult | None:
        """An integer label against an integer answer stated explicitly (a box or a final-answer
        statement), as most GSM8K-style rows are: the verdict is integer equality, exactly what the full
        path concludes (tests/rewards/test_math_table.py checks that), with no sympy. Linear scans only."""
        assert isinstance(params, MathParams)
        label, response = request.label, request.response
        if isinstance(label, bool) or not isinstance(label, int | str) or not isinstance(response, str):
            return None
        if len(response) > QUICK_MAX_CHARS or (isinstance(label, str) and len(label) > QUICK_MAX_CHARS):
            return None  # bounded time: longer texts go to a worker, under the timeout
        try:
            gold = label_body(label)
        except ValueError:
            return None  # a bad label: the full path reports it
        found = explicit_answer(response, params.require_boxed)
        if found is None:
            return None
        answer, source = found
        limit = params.max_answer_chars
        if not (_INTEGER.fullmatch(gold) and _INTEGER.fullmatch(answer)) or max(len(gold), len(answer)) > limit:
            return None
        ok = int(answer) == int(gold)
        return VerifyResult(float(ok), {"answer": answer[:200], "source": source,
                                        "verdict": "correct" if ok else "wrong"})

    def verify(self, request: VerifyRequest) -> VerifyResult:
        start = time.perf_counter()
        result = self.quick(self.params, request) or self._verify(request)
        return VerifyResult(result.score, result.breakdown, result.error, time.perf_counter() - start)

    def _verify(self, request: VerifyRequest) -> VerifyResult:
        p = self.params
        try:
            gold_text = label_body(request.label)
            gold = _parse_body(gold_text) if len(gold_text) <= p.max_answer_chars else None
        except Exception as e:  # noqa: BLE001 -- a bad label is the dataset's fault: report it, never raise
            return VerifyResult(0.0, {"verdict": "bad_label"}, f"unparsable label: {e}")
        if gold is None or isinstance(gold, str):  # only a sympy value can be compared soundly
            return VerifyResult(0.0, {"verdict": "bad_label"}, f"unparsable label: {gold_text[:200]!r}")

        response = request.response if isinstance(request.response, str) else ""
        answer, source = self._extract(response)
        breakdown: dict[str, Any] = {"answer": None if answer is None else answer[:200], "source": source}
        if answer is None:
            return VerifyResult(0.0, {**breakdown, "verdict": "no_answer"})
        try:
            pred = _parse_body(answer) if len(answer) <= p.max_answer_chars else None
            if pred is None:
                return VerifyResult(0.0, {**breakdown, "verdict": "unparsable_answer"})
            ok = self.equal(gold, pred)
        except Exception as e:  # noqa: BLE001 -- malformed LaTeX is a wrong answer, not a training-loop failure
            return VerifyResult(0.0, {**breakdown, "verdict": "unparsable_answer", "detail": repr(e)[:200]})
        return VerifyResult(float(ok), {**breakdown, "verdict": "correct" if ok else "wrong"})

    def _extract(self, response: str) -> tuple[str | None, str]:
        """(answer text, how it was found): a final-answer statement after the last box, else the last run
        of boxes, else Math-Verify's extraction, else the whole response when it is a short text answer."""
        if found := explicit_answer(response, self.params.require_boxed):
            return found
        if self.params.require_boxed or not response.strip():
            return None, "none"
        configs: list[Any] = [mv.LatexExtractionConfig()]
        if self.params.allow_plain_number:
            configs.append(mv.ExprExtractionConfig())
        tail = response[-4 * self.params.max_answer_chars:]
        found = mv.parse(tail, configs, parsing_timeout=None, fallback_mode="no_fallback")
        if not found:
            whole = whole_text_answer(response)
            return (whole, "whole") if whole is not None else (None, "none")
        item = found[0]
        text = sympy.latex(item) if isinstance(item, sympy.Basic | sympy.MatrixBase) else str(item)
        return normalize_answer(text), "text"

    # ---- equality --------------------------------------------------------------------------------

    def equal(self, gold: Any, pred: Any) -> bool:
        """Math-Verify's verdict, vetoed where it is too lenient."""
        if isinstance(gold, str) or isinstance(pred, str):
            return isinstance(gold, str) and isinstance(pred, str) and _norm_str(gold) == _norm_str(pred)
        limit = self.params.max_digits
        if _digits(gold) > limit or _digits(pred) > limit:
            return gold == pred  # too big to evaluate: only the same written value counts
        if not mv.verify(gold, pred, allow_set_relation_comp=True, timeout_seconds=None):
            return False
        return self._confirm(gold, pred)

    def _element_equal(self, gold: Any, pred: Any) -> bool:
        return bool(mv.verify(gold, pred, allow_set_relation_comp=True, timeout_seconds=None)) and self._confirm(gold, pred)

    def _confirm(self, gold: Any, pred: Any) -> bool:
        """Re-check a Math-Verify match; True where we have no stricter opinion."""
        if mv.grader.is_relation(gold) or mv.grader.is_relation(pred):
            return self._confirm_relations(gold, pred)
        if isinstance(gold, sympy.MatrixBase) and isinstance(pred, sympy.MatrixBase):
            if gold.shape != pred.shape:
                return False
            return all(self._scalar_ok(g, p) for g, p in zip(gold, pred, strict=True))
        if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
            return (
                gold.left_open == pred.left_open
                and gold.right_open == pred.right_open
                and self._scalar_ok(gold.start, pred.start)
                and self._scalar_ok(gold.end, pred.end)
            )
        if isinstance(gold, sympy.FiniteSet | sympy.Tuple) and isinstance(pred, sympy.FiniteSet | sympy.Tuple):
            g_items, p_items = list(gold.args), list(pred.args)
            if len(g_items) != len(p_items):
                return True
            if isinstance(gold, sympy.Tuple) and isinstance(pred, sympy.Tuple):
                return all(self._element_equal(g, p) for g, p in zip(g_items, p_items, strict=True))
            unused = list(p_items)
            for g in g_items:  # a matching between the two sets, element by element
                hit = next((i for i, p in enumerate(unused) if self._element_equal(g, p)), None)
                if hit is None:
                    return False
                unused.pop(hit)
            return True
        if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
            return self._scalar_ok(gold, pred)
        return True

    def _confirm_relations(self, gold: Any, pred: Any) -> bool:
        if not mv.grader.is_relation(pred):
            return True  # gold relation vs pred set/value: Math-Verify's set logic is exact enough
        if isinstance(gold, sympy.Set):
            return True  # `x > 2` for (2, oo): Math-Verify compared the relation's solution set
        if not mv.grader.is_relation(gold):
            return bool(mv.grader.is_assignment_relation(pred))  # `x = 5` answers 5; `x^2 - 25 = 0` does not
        g_rels = list(gold.args) if isinstance(gold, sympy.And) else [gold]
        p_rels = list(pred.args) if isinstance(pred, sympy.And) else [pred]
        if len(g_rels) != len(p_rels):
            return True
        for g, p in zip(g_rels, p_rels, strict=True):
            if isinstance(g, sympy.Eq) and isinstance(p, sympy.Eq) and not self._proportional(g, p):
                return False
        return True

    @staticmethod
    def _proportional(g: Any, p: Any) -> bool:
        """Same equation: lhs-rhs of one is a nonzero constant multiple of the other's."""
        dg, dp = g.lhs - g.rhs, p.lhs - p.rhs
        if dp == 0 or dg == 0:
            return dg == dp
        ratio = sympy.simplify(dg / dp)
        return bool(ratio.is_number and not ratio.free_symbols and ratio.is_finite and ratio != 0)

    def _scalar_ok(self, gold: Any, pred: Any) -> bool:
        if isinstance(gold, sympy.Symbol) or isinstance(pred, sympy.Symbol):
            return True  # text answers (`\text{Monday}`): Math-Verify's symbol rules decide
        if not isinstance(gold, sympy.Expr) or not isinstance(pred, sympy.Expr):
            return True
        for side in (gold, pred):  # `50\%` answers 50 and 0.5 alike, as Math-Verify intends
            if (bare := mv.grader.get_pct_val(side)) is not None:
                other = pred if side is gold else gold
                return self._scalar_ok(bare, other) or self._scalar_ok(side.doit(), other)
        gold, pred = gold.doit(), pred.doit()
        if _has_infinity(gold) or _has_infinity(pred):
            return gold == pred  # oo - oo is nan: only the same infinity (or the same expression) matches
        if gold.free_symbols or pred.free_symbols:
            diff = sympy.simplify(gold - pred)
            return bool(diff == 0 or diff.is_zero)
        if _has_float(gold) or _has_float(pred):
            g, p = complex(sympy.N(gold, 30)), complex(sympy.N(pred, 30))
            scale = max(abs(g), abs(p))
            return abs(g - p) <= self.params.rel_tol * scale if scale else g == p
        if gold.is_Rational and pred.is_Rational:
            return gold == pred
        if sympy.simplify(gold - pred) == 0:
            return True
        g, p = sympy.N(gold, 60), sympy.N(pred, 60)
        scale = max(abs(g), abs(p))
        return bool(abs(g - p) <= sympy.Float(10) ** -45 * scale) if scale else bool(g == p)
