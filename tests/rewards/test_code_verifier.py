"""The code verifier on honest programs: formats, scoring, parsing, limits, and never raising."""

from __future__ import annotations

import shutil

import pytest

from temper.rewards import code as code_module
from temper.rewards.base import VerifyRequest
from temper.rewards.code import CodeVerifier, Params, extract_code
from temper.rewards.sandbox import SandboxUnavailable

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    return CodeVerifier()


def run(verifier: CodeVerifier, response: str, label) -> dict:
    result = verifier.verify(VerifyRequest(response=response, label=label))
    return {"score": result.score, "error": result.error, **result.breakdown}


ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def test_extract_code():
    assert extract_code("text\n```python\nx = 1\n```\nmore\n```py\nx = 2\n```\n") == "x = 2\n"
    assert extract_code("```python\nx = 1\n```\n```text\nnot code\n```") == "x = 1\n"
    assert extract_code("```\ny = 3\n```") == "y = 3\n"
    assert extract_code("print(1)") == "print(1)"
    assert extract_code("```python\nunterminated = 1\n") == "unterminated = 1\n"


def test_holes_keep_expected_values_out_of_the_sandbox():
    plan = code_module._plans(("assert add(1, 2) == 345",), "")[0]
    assert plan.holes == (("add(1, 2)", False),)
    plan = code_module._plans(("assert abs(area(2.0) - 12.566) < 1e-3 and sorted(f(9)) == [1, 777]",), "")[0]
    assert [h[0] for h in plan.holes] == ["area(2.0)", "f(9)"]
    assert plan.holes[1][1] is True  # sorted() consumes an iterable: materialize generators
    plan = code_module._plans(("assert sorted(f(x), key=lambda t: -t) == [3]",), "x = 1")[0]
    assert plan.holes == (("sorted(f(x), key=lambda t: -t)", False),)


@needs_bwrap
def test_assert_style_honest_solution(verifier):
    label = {"tests": ["assert add(1, 2) == 3", "assert add('a', 'b') == 'ab'", "assert add([1], [2]) == [1, 2]",
                       "assert add((1,), (2,)) == (1, 2)", "assert math.isclose(add(0.1, 0.2), 0.3)",
                       "assert abs(add(0.1, 0.2) - 0.3) < 1e-9", "assert isinstance(add(1, 1), int)",
                       "assert add(True, 1) != 3", "assert add(1, 2) in {3, 4} and not add(0, 0)"],
             "setup": "import math"}
    got = run(verifier, ADD, label)
    assert got["score"] == 1.0, got
    assert got["verdicts"] == ["pass"] * 9


@needs_bwrap
def test_assert_style_types_are_compared_exactly(verifier):
    code = "def f():\n    return [1, 2]\ndef g(n):\n    yield from range(n)\ndef h():\n    return {1: (2, 3)}"
    label = {"tests": ["assert f() == (1, 2)", "assert list(g(3)) == [0, 1, 2]", "assert h() == {1: (2, 3)}",
                       "assert h()[1][0] == 2", "assert g(2) == [0, 1]"]}
    got = run(verifier, code, label)
    assert got["verdicts"] == ["fail", "pass", "pass", "pass", "fail"]
    assert got["score"] == pytest.approx(3 / 5)


@needs_bwrap
def test_fraction_and_all_or_nothing(verifier):
    label = {"tests": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]}
    assert run(verifier, ADD, label)["score"] == 0.5
    strict = CodeVerifier(Params(all_or_nothing=True))
    assert run(strict, ADD, label)["score"] == 0.0


@needs_bwrap
def test_stdio_style(verifier):
    label = {"io": [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "10 20\n", "stdout": "30"},
                    {"stdin": "0 0\n", "stdout": "1\n"}]}
    program = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)"
    got = run(verifier, program, label)
    assert got["verdicts"] == ["pass", "pass", "fail"]
    assert run(verifier, "a, b = map(int, input().split())\nprint(a + b)\nexit()",
               {"io": label["io"][:2]})["score"] == 1.0


@needs_bwrap
def test_stdio_runtime_error_and_main_guard(verifier):
    label = {"io": [{"stdin": "", "stdout": "ok\n"}]}
    assert run(verifier, "if __name__ == '__main__':\n    print('ok')", label)["score"] == 1.0
    got = run(verifier, "print('ok')\nraise ValueError('late')", label)
    assert got["verdicts"] == ["runtime_error"] and "ValueError" in got["details"][0]


@needs_bwrap
def test_output_matching_modes():
    label = {"io": [{"stdin": "", "stdout": "1 2\n3\n"}]}
    program = "print('1  2   ')\nprint(3)\nprint()"
    assert run(CodeVerifier(Params(output_match="lines")), program, label)["score"] == 0.0
    assert run(CodeVerifier(Params(output_match="tokens")), program, label)["score"] == 1.0
    assert run(CodeVerifier(Params(output_match="exact")), "print('1 2')\nprint(3)", label)["score"] == 1.0


@needs_bwrap
def test_per_row_limits(verifier):
    slow = "def f():\n    x = 0\n    for i in range(10 ** 9):\n        x += i\n    return x"
    got = run(verifier, slow, {"tests": ["assert f() == 0"], "time_limit": 0.3})
    assert got["verdicts"] == ["timeout"]
    hungry = "def f():\n    return len(bytearray(300 * 2 ** 20))"
    assert run(verifier, hungry, {"tests": ["assert f() == 300 * 2 ** 20"], "memory_limit": 256}
               )["verdicts"] == ["memory"]
    assert run(verifier, hungry, {"tests": ["assert f() == 300 * 2 ** 20"], "memory_limit": 1024}
               )["verdicts"] == ["pass"]


@needs_bwrap
def test_bad_labels_are_errors_not_exceptions(verifier):
    for label in [None, 3, "not json", {"tests": []}, {"tests": ["x = 1"]}, {"tests": ["assert ("]},
                  {"io": [{"stdin": "1"}]}, {"tests": ["assert f() == 1"], "time_limit": "soon"}]:
        got = run(verifier, ADD, label)
        assert got["score"] == 0.0 and got["error"].startswith("bad label"), label


@needs_bwrap
def test_any_response_text_is_judged_never_raised(verifier):
    label = {"tests": ["assert add(1, 2) == 3"], "time_limit": 0.5}
    for response in ["", "\x00\x00", "\ud800 surrogate", "```python\n", "def add(a, b):\n  return (" * 50,
                     "((((" * 10000, "x" * 300_000, "```python\ndef add(a, b): return a + b"]:
        result = verifier.verify(VerifyRequest(response=response, label=label))
        assert 0.0 <= result.score <= 1.0
    assert verifier.verify(VerifyRequest(response="```python\ndef add(a, b): return a + b", label=label)
                           ).score == 1.0


@needs_bwrap
def test_verify_many_keeps_order(verifier):
    label = {"tests": ["assert add(1, 2) == 3"]}
    requests = [VerifyRequest(response=ADD if i % 2 == 0 else "def add(a, b):\n    return 0", label=label)
                for i in range(8)]
    assert [r.score for r in verifier.verify_many(requests)] == [1.0, 0.0] * 4


def test_refuses_without_bwrap_unless_opted_in(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(SandboxUnavailable, match="allow_unsandboxed='unsafe-subprocess'"):
        CodeVerifier()
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        unsafe = CodeVerifier(Params(allow_unsandboxed="unsafe-subprocess"))
    assert unsafe.sandbox.isolation == "unsafe-subprocess"
    assert run(unsafe, ADD, {"tests": ["assert add(1, 2) == 3", "assert add(1, 2) == 4"]})["score"] == 0.5
