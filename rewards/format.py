"""The format verifier, and the `\\boxed{...}` extraction the math verifier shares with it.

Finding the final answer is a brace-matching job, not a regex one: boxes nest (`\\boxed{\\frac{1}{2}}`),
models re-box after rechecking ("... so \\boxed{3}. Wait, recheck: \\boxed{5}") and multi-part answers
come as adjacent boxes in one expression (`x = \\boxed{1}, y = \\boxed{2}`). The rule here: the last run
of adjacent boxes is the final answer; boxes in one run are the parts of one answer.
This module imports nothing heavy so that `temper rewards list` stays instant.
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field

from temper.rewards.base import Verifier, VerifyRequest, VerifyResult

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed\s+(?=[^\s{])")
# What may stand between two boxes of one multi-part answer: separators, "and", spacing commands,
# a variable name and "=" (as in `x = \boxed{1}, y = \boxed{2}`), but no prose and no paragraph break.
_JOINER = re.compile(
    r"[\s,;&~$]*(?:(?:and|\\text\{\s*and\s*\}|\\quad|\\qquad|\\,|\\;|\\\\)[\s,;&~$]*)*"
    r"(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?"
)


def find_boxes(text: str) -> list[tuple[int, int, str]]:
    """All top-level `\\boxed{...}` / `\\fbox{...}` (and `\\boxed 5`) as (start, end, content), in order.

    An unclosed box (a truncated completion) is not an answer and is skipped.
    """
    boxes: list[tuple[int, int, str]] = []
    pos = 0
    while m := _BOX_START.search(text, pos):
        if not m.group().endswith("{"):  # `\boxed 5`: the content is the next token
            tok = re.match(r"[^\s$]+", text[m.end():])
            assert tok is not None
            boxes.append((m.start(), m.end() + tok.end(), tok.group()))
            pos = m.end() + tok.end()
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            depth += c == "{"
            depth -= c == "}"
            i += 1
        if depth:
            pos = m.end()
            continue
        boxes.append((m.start(), i, text[m.end(): i - 1]))
        pos = i
    return boxes


def final_boxed(text: str) -> list[str] | None:
    """Contents of the last run of adjacent boxes (one answer, maybe multi-part), or None if no box."""
    boxes = find_boxes(text)
    if not boxes:
        return None
    run = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        between = text[prev[1]: run[0][0]]
        if "\n\n" in between or not _JOINER.fullmatch(between):
            break
        run.insert(0, prev)
    return [content.strip() for _, _, content in run]


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
