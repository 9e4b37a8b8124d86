"""The code verifier on honest programs: formats, scoring, parsing, limits, and never raising."""

from __future__ import annotations

import shutil

import pytest

from temper.rewards import assert_tests
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
    plan = assert_tests.plans(("assert add(1, 2) == 345",), "")[0]
    assert plan.holes == (("add(1, 2)", False),)
    plan = assert_tests.plans(("assert abs(area(2.0) - 12.566) < 1e-3 and sorted(f(9)) == [1, 777]",), "")[0]
    assert [h[0] for h in plan.holes] == ["area(2.0)", "f(9)"]
    assert plan.holes[1][1] is True  # sorted() consumes an iterable: materialize generators
    plan = assert_tests.plans(("assert sorted(f(x), key=lambda t: -t) == [3]",), "x = 1")[0]
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


# ---- check-style labels (HumanEval/EvalPlus `def check(candidate)`), judged outside the sandbox ----

CLOSE_PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    """
'''
CLOSE_SOLUTION = CLOSE_PROMPT + '''    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
'''
CLOSE_CHECK = '''

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

'''
CLOSE_LABEL = {"check": CLOSE_CHECK, "entry_point": "has_close_elements", "setup": CLOSE_PROMPT}


@needs_bwrap
def test_check_style_canonical_solution_and_stub(verifier):
    good = run(verifier, f"```python\n{CLOSE_SOLUTION}```", CLOSE_LABEL)
    assert (good["score"], good["verdicts"], good["calls"]) == (1.0, ["pass"], 7)
    stub = run(verifier, f"```python\n{CLOSE_PROMPT}    pass\n```", CLOSE_LABEL)
    assert (stub["score"], stub["verdicts"], stub["calls"]) == (0.0, ["fail"], 1)
    assert "check.py line 10: assert candidate([1.0, 2.0, 3.9" in stub["details"][0]  # the first assert
    nothing = run(verifier, "I cannot solve this.", CLOSE_LABEL)  # the prompt's own stub is all there is
    assert nothing["score"] == 0.0


# Like HumanEval/32: the check calls a helper of the prompt, loops over seeded random cases, and
# compares with a tolerance; the solution uses the same helper. "setup" gives both sides the prompt.
POLY_PROMPT = '''import math


def poly(xs: list, x: float):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def find_zero(xs: list):
    """A zero of the polynomial with coefficients xs (odd degree)."""
'''
POLY_SOLUTION = '''def find_zero(xs: list):
    lo, hi = -1.0, 1.0
    while poly(xs, lo) * poly(xs, hi) > 0:
        lo, hi = lo * 2.0, hi * 2.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2.0
        if poly(xs, mid) * poly(xs, lo) > 0:
            lo = mid
        else:
            hi = mid
    return lo
'''
POLY_CHECK = '''def check(candidate):
    import copy
    import random
    rng = random.Random(42)
    for _ in range(30):
        ncoeff = 2 * rng.randint(1, 4)
        coeffs = [rng.randint(-10, 10) or 1 for _ in range(ncoeff)]
        solution = candidate(copy.deepcopy(coeffs))
        assert math.fabs(poly(coeffs, solution)) < 1e-4
'''


@needs_bwrap
def test_check_style_helpers_loops_and_tolerances(verifier):
    label = {"check": POLY_CHECK, "entry_point": "find_zero", "setup": POLY_PROMPT}
    got = run(verifier, POLY_SOLUTION, label)
    assert (got["score"], got["calls"]) == (1.0, 30)
    assert run(verifier, "def find_zero(xs):\n    return 0.0", label)["score"] == 0.0


@needs_bwrap
def test_check_style_evalplus_numpy_helper(verifier):
    # EvalPlus's checks compare floats with numpy in a helper: numpy is importable in the checker only.
    check = ('import numpy as np\n\n'
             'def assertion(out, exp, atol):\n'
             '    if atol == 0 and isinstance(exp, float):\n        atol = 1e-6\n'
             '    assert out == exp or (atol != 0 and np.allclose(out, exp, rtol=1e-07, atol=atol))\n\n'
             'def check(candidate):\n'
             '    inputs = [[1.0, 2.0], [0.1, 0.2], [3, 4]]\n    results = [3.0, 0.30000000000000004, 7]\n'
             '    for inp, exp in zip(inputs, results):\n        assertion(candidate(*inp), exp, 0)\n')
    label = {"check": check, "entry_point": "add"}
    assert run(verifier, "def add(a, b):\n    return a + b", label)["score"] == 1.0
    assert run(verifier, "def add(a, b):\n    return round(a + b, 3)", label)["score"] == 1.0  # within atol
    assert run(verifier, "def add(a, b):\n    return a * b", label)["score"] == 0.0
    assert run(verifier, "import numpy\ndef add(a, b):\n    return a + b", label)["verdicts"] == ["runtime_error"]


@needs_bwrap
def test_check_style_exceptions_come_back_as_values(verifier):
    check = ("def check(candidate):\n"
             "    try:\n        candidate(-4)\n    except ValueError as e:\n        assert 'negative' in str(e)\n"
             "    else:\n        assert False, 'no ValueError'\n"
             "    assert candidate(9) == 3\n")
    label = {"check": check, "entry_point": "root"}
    honest = "import math\ndef root(x):\n    if x < 0:\n        raise ValueError('negative input')\n    return math.isqrt(x)"
    assert run(verifier, honest, label)["score"] == 1.0
    quiet = run(verifier, "import math\ndef root(x):\n    return math.isqrt(abs(x))", label)
    assert quiet["verdicts"] == ["fail"] and "no ValueError" in quiet["details"][0]
    other = run(verifier, "def root(x):\n    raise KeyError('k')", label)  # uncaught: a runtime error
    assert other["verdicts"] == ["runtime_error"] and other["details"][0].startswith("KeyError")


@needs_bwrap
def test_check_style_per_call_limits_end_the_test(verifier):
    # The check swallows every Exception, so only outcomes that end the test can make these fail.
    check = ("def check(candidate):\n"
             "    for x in (1, 2, 3):\n        try:\n            candidate(x)\n        except Exception:\n            pass\n"
             "    assert candidate(0) == 0\n")
    label = {"check": check, "entry_point": "f", "time_limit": 0.5}
    slow = "def f(x):\n    if x == 2:\n        while True:\n            pass\n    return 0"
    got = run(verifier, slow, label)
    assert got["verdicts"] == ["timeout"] and got["calls"] == 2  # the call after the timeout was never made
    hungry = "def f(x):\n    if x == 2:\n        return len(bytearray(10 ** 11))\n    return 0"
    assert run(verifier, hungry, label)["verdicts"] == ["memory"]
    exits = "import os\ndef f(x):\n    if x == 2:\n        os._exit(0)\n    return 0"
    assert run(verifier, exits, label)["verdicts"] == ["runtime_error"]
    assert run(verifier, "def f(x):\n    return 0", label)["score"] == 1.0


@needs_bwrap
def test_check_style_bad_labels_are_errors(verifier):
    check = "def check(candidate):\n    assert candidate(1) == 1\n"
    for label in [{"check": check}, {"check": check, "entry_point": "f(x)"}, {"check": "assert True", "entry_point": "f"},
                  {"check": "def check(candidate:\n", "entry_point": "f"},
                  {"check": check, "entry_point": "f", "tests": ["assert f(1) == 1"]}]:
        got = run(verifier, "def f(x):\n    return x", label)
        assert got["score"] == 0.0 and got["error"].startswith("bad label"), label
    for check_code, why in [("def check(candidate):\n    assert candidate(lambda: 1) == 1\n", "cannot enter the sandbox"),
                            ("def check(candidate):\n    assert True\n", "without calling candidate"),
                            ("import not_a_module\ndef check(candidate):\n    pass\n", "before check() is called")]:
        got = run(verifier, "def f(x):\n    return x", {"check": check_code, "entry_point": "f"})
        assert got["score"] == 0.0 and why in got["error"], got


# ---- check() sees the program's names (HumanEval runs check in the program's namespace) ----

CYCLIC_SOLUTION = '''def encode_cyclic(s: str):
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]
    return "".join(groups)


def decode_cyclic(s: str):
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(group[-1] + group[:-1]) if len(group) == 3 else group for group in groups]
    return "".join(groups)
'''
# Like HumanEval/38 with the prompt left out of "setup": the check encodes with the program's own encoder.
CYCLIC_CHECK = '''def check(candidate):
    from random import Random
    import string
    rng = Random(7)
    for _ in range(5):
        str = ''.join(rng.choice(string.ascii_lowercase) for i in range(rng.randint(10, 20)))
        encoded_str = encode_cyclic(str)
        assert candidate(encoded_str) == str
'''


@needs_bwrap
def test_check_calls_a_helper_function_of_the_program(verifier):
    label = {"check": CYCLIC_CHECK, "entry_point": "decode_cyclic"}
    got = run(verifier, CYCLIC_SOLUTION, label)
    assert (got["score"], got["verdicts"], got["calls"], got["error"]) == (1.0, ["pass"], 5, None)
    wrong = CYCLIC_SOLUTION.replace("group[-1] + group[:-1]", "group[1:] + group[0]")  # decodes by encoding
    assert run(verifier, wrong, label)["verdicts"] == ["fail"]
    # Without the helper the check fails at the helper's line: the program's fault, a verdict (not a label error).
    alone = run(verifier, CYCLIC_SOLUTION.split("\n\n\n")[1], label)
    assert (alone["score"], alone["verdicts"], alone["calls"], alone["error"]) == (0.0, ["fail"], 0, None)
    assert alone["details"][0].startswith("NameError: name 'encode_cyclic' is not defined by the check code")
    assert "check.py line 7: encoded_str = encode_cyclic(str)" in alone["details"][0]


@needs_bwrap
def test_check_reads_constants_and_the_entry_point_by_name(verifier):
    check = ("def check(candidate):\n    assert candidate(2) == 2 * FACTOR\n"
             "    assert [scale(x) for x in TABLE] == [FACTOR * x for x in TABLE]\n    TABLE.append(99)\n"
             "    assert len(TABLE) == 4\n")
    label = {"check": check, "entry_point": "scale"}
    program = "FACTOR = 3\nTABLE = [1, 2, 3]\ndef scale(x):\n    return FACTOR * x"
    got = run(verifier, program, label)
    # candidate(2), then scale() three times by its own name: the same function under test, 4 calls.
    assert (got["score"], got["calls"]) == (1.0, 4)
    assert run(verifier, program.replace("FACTOR * x", "x + x"), label)["verdicts"] == ["fail"]
    module = run(verifier, "import math as FACTOR\nTABLE = []\ndef scale(x):\n    return x", label)
    assert module["verdicts"] == ["fail"] and "'FACTOR' is a module of the program" in module["details"][0]


@needs_bwrap
def test_setup_pins_a_helper_the_program_redefines(verifier):
    label = {"check": POLY_CHECK, "entry_point": "find_zero", "setup": POLY_PROMPT}
    cheat = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"
    got = run(verifier, cheat, label)  # check's poly is setup's, so 0.0 is no root
    assert (got["score"], got["verdicts"], got["calls"]) == (0.0, ["fail"], 1)
    assert run(verifier, POLY_SOLUTION, label)["score"] == 1.0  # the program's helpers still serve the program
    # Builtins stay builtins: a program's `abs` or `len` is not what the check calls.
    check = "def check(candidate):\n    assert abs(candidate(1, 2) - 3) < 1e-9 and len([candidate(0, 0)]) == 1\n"
    shadows = "def abs(x):\n    return 0\ndef len(x):\n    return 1\ndef add(a, b):\n    return 0"
    assert run(verifier, shadows, {"check": check, "entry_point": "add"})["verdicts"] == ["fail"]


@needs_bwrap
def test_an_exception_before_the_candidate_is_called_is_reported_as_itself(verifier):
    check = "def check(candidate):\n    table = {'a': 1}\n    assert candidate(table['b']) == 1\n"
    got = run(verifier, "def f(x):\n    return x", {"check": check, "entry_point": "f"})
    # The program plays no part (no name of it was used): the label's fault, with the exception and line.
    assert got["error"] == ("bad label: the check code fails in check() before it calls candidate: "
                            "KeyError: 'b' (check.py line 3: assert candidate(table['b']) == 1)")
