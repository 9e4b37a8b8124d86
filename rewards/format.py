"""The format verifier, and the `\\boxed{...}` extraction the math verifier shares with it.

Finding the final answer is a brace-matching job, not a regex one: boxes nest (`\\boxed{\\frac{1}{2}}`),
models re-box after rechecking ("... so \\boxed{3}. Wait, recheck: \\boxed{5}") and multi-part answers
come as adjacent boxes in one expression (`x = \\boxed{1}, y = \\boxed{2}`). The rule here: the last run
of adjacent boxes is the final answer; boxes in one run are the parts of one answer.
This module imports nothing heavy so that `temper rewards list` stays instant, and its scans are linear
in the text (the rubric runs the math verifier's quick check on them outside any timeout).
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field

from temper.rewards.base import Verifier, VerifyRequest, VerifyResult

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed\s+(?=[^\s{$])")  # `\boxed $x$` is no box
_TOKEN = re.compile(r"[^\s$]+")
_BRACE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escape pair (`\{`, `\\`) is never a brace
# What may stand between two boxes of one multi-part answer: separators, "and", "or", spacing commands, math
# delimiters (`$`, `\(`, `\)`, `\[`, `\]`), a variable name and "=" (as in `x = \boxed{1}, y = \boxed{2}`),
# but no prose and no paragraph break.
_JOINER = re.compile(
    r"[\s,;&~$]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad|\\,|\\;|\\\\|\\[()\[\]])[\s,;&~$]*)*"
    r"(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?"
)


def _closing_braces(text: str) -> dict[int, int]:
    """For each `{` that has a matching `}`: its position -> the position just past that `}`. One pass.

    Escape pairs are skipped from the start of the text; a box's own scan would start just after its
    `{`, which is never the second half of an escape pair, so both see the same braces from there on.
    """
    closing: dict[int, int] = {}
    open_at: list[int] = []
    for m in _BRACE.finditer(text):
        c = m.group()
        if c == "{":
            open_at.append(m.start())
        elif c == "}" and open_at:
            closing[open_at.pop()] = m.end()
    return closing


def find_boxes(text: str) -> list[tuple[int, int, str]]:
    """All top-level `\\boxed{...}` / `\\fbox{...}` (and `\\boxed 5`) as (start, end, content), in order.

    An unclosed box (a truncated completion) is not an answer and is skipped. Linear in the text: the
    braces are matched once, not rescanned from every box (10^5 unclosed boxes would be quadratic).
    """
    boxes: list[tuple[int, int, str]] = []
    closing: dict[int, int] | None = None
    pos = 0
    while m := _BOX_START.search(text, pos):
        if not m.group().endswith("{"):  # `\boxed 5`: the content is the next token
            tok = _TOKEN.match(text, m.end())
            assert tok is not None
            boxes.append((m.start(), tok.end(), tok.group()))
            pos = tok.end()
            continue
        if closing is None:
            closing = _closing_braces(text)
        end = closing.get(m.end() - 1)
        if end is None:
            pos = m.end()
            continue
        boxes.append((m.start(), end, text[m.end(): end - 1]))
        pos = end
    return boxes


def final_run(text: str) -> tuple[list[str], int, int] | None:
    """The last run of adjacent boxes: (contents, start of its first box, end of its last), or None."""
    boxes = find_boxes(text)
    if not boxes:
        return None
    run = [boxes[-1]]  # built backwards from the last box
    for prev in reversed(boxes[:-1]):
        between = text[prev[1]: run[-1][0]]
        if "\n\n" in between or not _JOINER.fullmatch(between):
            break
        run.append(prev)
    run.reverse()
    return [content.strip() for _, _, content in run], run[0][0], run[-1][1]


def final_boxed(text: str) -> list[str] | None:
    """Contents of the last run of adjacent boxes (one answer, maybe multi-part), or None if no box."""
    run = final_run(text)
    return None if run is None else run[0]


class FormatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    pattern: str | None = Field(None, min_length=1)
    """A regex the response must contain (re.search, DOTALL); None = a non-empty final \\boxed{...}."""


class FormatVerifier(Verifier):
    """Score 1 when the response is in the expected shape (a final non-empty box by default), else 0."""

    Params = FormatParams

    def __init__(self, params: FormatParams | None = None) -> None:
        super().__init__(params)
        self._regex = re.compile(self.params.pattern, re.DOTALL) if self.params.pattern else None

    def verify(self, request: VerifyRequest) -> VerifyResult:
        start = time.perf_counter()
        text = request.response if isinstance(request.response, str) else ""
        if self._regex is not None:
            ok = self._regex.search(text) is not None
        else:
            parts = final_boxed(text)
            ok = parts is not None and all(parts)
        return VerifyResult(
            score=float(ok), breakdown={"formatted": ok}, seconds=time.perf_counter() - start
        )
