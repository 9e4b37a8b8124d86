"""Where a math answer is: the label read as the body of a box, and the answer found in a response.

Text scanning only (regular expressions and linear scans, no sympy), so the math verifier's `quick`
path can decide integer rows without loading a parser, and the full path gets the same answer text.
Each deliberate divergence from plain Math-Verify's extraction is listed here, with cases in
tests/rewards/test_math_table.py; how answers are compared is in rewards/math_verifier.py.

Reading the label
- Gold labels from MATH/GSM8K-style datasets are raw LaTeX or plain text with no `$`: Math-Verify then
  only sees "some number in the text" (`1 - \\frac{1}{e}` parses as 1). We parse the label as the body
  of a `\\boxed{}`, which goes through its LaTeX parser whole.
- A label written as several boxed answers (`\\(\\boxed{3}\\) and \\(\\boxed{-1}\\).`) is one answer,
  {3, -1}: math delimiters (`\\(`, `\\)`, `\\[`, `\\]`, like `$` already) and "or" (like "and") now join
  adjacent boxes, in labels and responses alike (rewards/format.py). Prose between boxes still does not.
- Unicode math in labels and answers (minus sign, times, less-or-equal, pi, square root, infinity...)
  is rewritten as LaTeX first.

Finding the answer in the response
- Several boxes are merged into one set by Math-Verify, so a model that boxes a wrong answer and then
  re-boxes the right one (or the reverse) is scored on both. We take the last run of adjacent boxes.
- An explicit final-answer statement after the last box ("Final Answer: The final answer is $12,345$")
  is the answer: the box before it was intermediate work. The statement must hold delimited math
  (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`) or a plain number; "the final answer is correct" is
  no statement, and a box after the statement wins over it. With `require_boxed`, only boxes count.
- A response that is nothing but a short text answer ("prime", "Monday.", "(C)": letters, spaces,
  parentheses, hyphens, apostrophes, at most 60 characters, no digits) is that answer, read as
  `\\text{...}`; Math-Verify finds no answer there. Text in prose still needs a box or a statement.
"""

from __future__ import annotations

import math
import re
from typing import Any

from temper.rewards.format import final_boxed, final_run

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": r"\times ", "\u00f7": r"\div ", "\u2264": r"\le ",
    "\u2265": r"\ge ", "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u221a": r"\sqrt ", "\u00b0": r"^\circ ",
    "\u00b7": r"\cdot ", "\u00b1": r"\pm ", "\u2260": r"\ne ",
}
# "Final Answer: The final answer is $X$", "... my final answer is 12." The answer must be delimited math
# or a plain number (never `2,5`: see rewards/math_verifier.py); bounded so the scan stays linear.
_FINAL_STATEMENT = re.compile(
    r"final\s+answer\s*(?:is|:)\s*:?\s*(?:the\s+final\s+answer\s+is\s*:?\s*)?"
    r"(?:\$\$([^$]{1,1000})\$\$|\$([^$]{1,1000})\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]"
    r"|([-+\u2212]?\d+(?:,\d{3})*(?:\.\d+)?)(?!\d|[.,]\d))",
    re.IGNORECASE | re.DOTALL,
)
_BARE_TEXT = re.compile(r"[A-Za-z() '\-]{1,60}")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:(?:,|\{,\}|\\,|\\!)\d{3})+(?:\.\d+)?")
_DELIMITED = re.compile(r"^\s*(?:\$\$?(.*?)\$\$?|\\\((.*?)\\\)|\\\[(.*?)\\\])\s*$", re.DOTALL)


def normalize_answer(text: str) -> str:
    """Unicode math to LaTeX, and `1,000`-style thousands separators dropped when that is all there is."""
    for src, dst in _UNICODE.items():
        text = text.replace(src, dst)
    text = text.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(text):
        text = re.sub(r",|\{,\}|\\,|\\!", "", text)
    return text


def final_statement(response: str, after: int) -> str | None:
    """The answer of the last "final answer is X" statement, if it starts at or after `after`."""
    last = None
    for last in _FINAL_STATEMENT.finditer(response):
        pass
    if last is None or last.start() < after:
        return None
    return next(g for g in last.groups() if g is not None)


def explicit_answer(response: str, require_boxed: bool) -> tuple[str, str] | None:
    """(answer, source) as the response states it, found by scanning alone (no parsing library): a
    final-answer statement after the last box, else the last run of boxes; None when there is neither."""
    run = final_run(response)
    if not require_boxed and (stated := final_statement(response, run[2] if run else 0)) is not None:
        return normalize_answer(stated), "final_answer"
    if run is not None:
        return ", ".join(normalize_answer(part) for part in run[0]), "boxed"
    return None


def whole_text_answer(response: str) -> str | None:
    """A response that is nothing but a short text answer ("prime", "Monday.", "(C)"), as `\\text{...}`."""
    text = response.strip()
    if m := _DELIMITED.match(text):
        text = next(g for g in m.groups() if g is not None)
    text = text.strip().rstrip(".").strip()
    if _BARE_TEXT.fullmatch(text) and any(c.isalpha() for c in text):
        return f"\\text{{{text}}}"
    return None


def label_body(label: Any) -> str:
    """The label as the body of a box; raises ValueError when it cannot be one."""
    if isinstance(label, bool) or label is None or isinstance(label, dict):
        raise ValueError(f"label must be a number or a string, got {type(label).__name__}")
    if isinstance(label, int | float):
        if isinstance(label, float) and not math.isfinite(label):
            raise ValueError(f"label is {label}")
        return repr(label)
    if isinstance(label, list):
        return ", ".join(label_body(item) for item in label)
    text = str(label).strip()
    if parts := final_boxed(text):
        return ", ".join(normalize_answer(p) for p in parts)
    if m := _DELIMITED.match(text):
        text = next(g for g in m.groups() if g is not None)
    if not text:
        raise ValueError("label is empty")
    return normalize_answer(text)
