"""The math verifier against a hand-decided table: what a careful grader says, not what a library says.

Columns: gold label (as datasets write it: raw LaTeX or plain text, no `$`), model response, verdict.
Cases marked MV are ones where plain Math-Verify (parse + verify with default settings) disagrees with
the grader; test_math_verify_gets_these_wrong keeps that claim honest.
"""

import time

import pytest

from temper.rewards.base import VerifyRequest
from temper.rewards.math_verifier import QUICK_MAX_CHARS, MathParams, MathVerifier

R, W = 1.0, 0.0  # right, wrong

TABLE = [
    # fractions vs decimals
    (r"\frac{1}{2}", r"\boxed{0.5}", R),
    (r"\frac{1}{2}", r"\boxed{\dfrac{2}{4}}", R),
    (r"\frac{1}{3}", r"\boxed{0.333333}", R),
    (r"\frac{1}{3}", r"\boxed{0.33}", W),
    ("0.75", r"\boxed{\frac{3}{4}}", R),
    ("0.75", r"\boxed{3/4}", R),
    ("2.5", r"\boxed{2.50}", R),
    (r"\frac{1}{2^{99}}", r"\boxed{0.0}", W),
    # exact values that differ by a tiny relative amount
    (r"\frac{1}{2^{99}}", r"\boxed{\frac{1}{2^{98}}}", W),  # MV
    (r"\frac{1}{2^{99}}", r"\boxed{2^{-99}}", R),
    (r"\frac{1}{2004!}", r"\boxed{\frac{1}{2006!}}", W),  # MV
    (r"\frac{1}{2004!}", r"\boxed{\frac{1}{2004!}}", R),
    (r"10^{-20}", r"\boxed{10^{-21}}", W),  # MV
    # thousands separators
    ("1,000", r"\boxed{1000}", R),
    ("1000", r"\boxed{1,000}", R),
    ("1234567", r"\boxed{1{,}234{,}567}", R),
    ("1000", "So the total is 1,000 dollars.", R),
    ("1,000", r"\boxed{100}", W),
    # percentages
    (r"50\%", r"\boxed{50\%}", R),
    (r"50\%", r"\boxed{50}", R),
    (r"50\%", r"\boxed{0.5}", R),
    (r"50\%", r"\boxed{5\%}", W),
    # intervals and inequalities
    ("[1, 2)", r"\boxed{[1,2)}", R),
    ("[1, 2)", r"\boxed{[1,2]}", W),
    (r"(2, \infty)", r"\boxed{x > 2}", R),
    (r"x > 2", r"\boxed{(2,\infty)}", R),
    (r"x \ge 2", r"\boxed{x > 2}", W),
    (r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(-\infty,0)\cup(1,\infty)}", R),
    # sets vs tuples
    (r"\{1, 2, 3\}", r"\boxed{\{3, 2, 1\}}", R),
    ("1, 2", r"\boxed{2, 1}", R),
    (r"\{1, 2\}", r"\boxed{\{1, 2, 3\}}", W),
    ("(3, 4)", r"\boxed{(3,4)}", R),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}", R),
    ("(3, 4)", r"\boxed{(4,3)}", W),
    # matrices
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{pmatrix}1&2\\3&4\end{pmatrix}}", R),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{pmatrix}1&3\\2&4\end{pmatrix}}", W),
    (r"\begin{pmatrix} \frac{1}{2} \\ 0 \end{pmatrix}", r"\boxed{\begin{pmatrix}0.5\\0\end{pmatrix}}", R),
    # equations
    ("y = 2x + 1", r"\boxed{y=2x+1}", R),
    ("y = 2x + 1", r"\boxed{2x - y + 1 = 0}", R),
    ("y = 2x + 1", r"\boxed{y = 2x - 1}", W),
    ("0", r"\boxed{x^2 - 4 = 0}", W),  # MV
    ("x^2 + 1 = 0", r"\boxed{x^2 + 4 = 0}", W),  # MV
    ("5", r"\boxed{x = 5}", R),
    ("x = 5", r"\boxed{5}", R),
    # sign errors and symbolic answers
    (r"1 - \frac{1}{e}", r"\boxed{1 + \frac{1}{e}}", W),
    (r"1 - \frac{1}{e}", r"\boxed{\frac{e-1}{e}}", R),
    (r"1 - \frac{1}{e}", r"\boxed{1}", W),  # MV (the raw label parses as 1)
    (r"1 − \frac{1}{e}", r"\boxed{1-e^{-1}}", R),  # unicode minus in the label
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt3}{2}}", R),  # MV (raw label unparsed)
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", R),
    (r"\pi - 1", r"\boxed{1 - \pi}", W),
    ("(x+1)^2", r"\boxed{x^2+2x+1}", R),
    # units and degrees
    (r"30^\circ", r"\boxed{30}", R),
    (r"30^\circ", r"\boxed{30^{\circ}}", R),
    (r"5 \text{ cm}", r"\boxed{5}", R),
    (r"5 \text{ cm}", r"\boxed{5\,\text{cm}}", R),
    (r"\$18", r"\boxed{18}", R),
    # plus-minus
    (r"\pm 2", r"\boxed{\pm 2}", R),
    (r"\pm 2", r"\boxed{2, -2}", R),
    (r"\pm 2", r"\boxed{2}", W),
    (r"1 \pm \sqrt{2}", r"\boxed{1+\sqrt{2}, 1-\sqrt{2}}", R),
    # several boxes: the last run of adjacent boxes is the answer
    ("5", r"First \boxed{3}. Rechecking, it is \boxed{5}.", R),  # MV
    ("5", r"It is \boxed{5}. Wait, no: \boxed{3}.", W),
    ("1, 2", r"$x = \boxed{1}, y = \boxed{2}$", R),
    ("(1, 2)", r"\boxed{1}, \boxed{2}", R),
    # empty, garbage, multiple choice, text
    ("5", "", W),
    ("5", r"\boxed{}", W),
    ("5", r"}{ \boxed{ \frac{ ", W),
    ("5", "I don't know.", W),
    ("B", r"\boxed{B}", R),
    ("B", r"\boxed{C}", W),
    (r"\text{Monday}", r"\boxed{\text{Monday}}", R),
    # huge numbers: exact when small enough, by written form when not, and fast either way
    ("2^{100}", r"\boxed{1267650600228229401496703205376}", R),
    ("2^{100}", r"\boxed{1267650600228229401496703205377}", W),
    ("100!", r"\boxed{100!}", R),
    ("5", r"\boxed{10^{10^{10^{10}}}}", W),
    (r"10^{10^{10^{10}}}", r"\boxed{10^{10^{10^{10}}}}", R),
    ("5", r"\boxed{1000000000!}", W),
    # GSM8K-style integer labels (given as JSON numbers)
    (85, r"\boxed{85}", R),
    (85, r"\boxed{58}", W),
    (-3, "The answer is -3", R),
    (0.5, r"\boxed{\frac12}", R),
    # ---- the classes of miss found by a public test suite (issue 12), each with near-misses ----
    # identical intervals and values with infinity (oo - oo is nan: they used to score 0)
    (r"(0, +\infty)", r"\boxed{(0, +\infty)}", R),
    (r"(0, \infty)", r"\boxed{(0, +\infty)}", R),
    (r"[2, +\infty)", r"\boxed{[2, \infty)}", R),
    (r"(-\infty, +\infty)", r"\boxed{(-\infty, \infty)}", R),
    (r"\infty", r"\boxed{\infty}", R),
    (r"-\infty", r"\boxed{-\infty}", R),
    (r"(0, +\infty)", r"\boxed{[0, +\infty)}", W),
    (r"(0, +\infty)", r"\boxed{(1, +\infty)}", W),
    (r"(-\infty, 0)", r"\boxed{(0, \infty)}", W),
    (r"\infty", r"\boxed{-\infty}", W),
    (r"(0, \infty)", r"\boxed{(0, 10^{100})}", W),
    (r"\infty", r"\boxed{10^{100}}", W),
    # text answers: a response that is nothing but a short text answer is that answer
    (r"\text{prime}", "prime", R),  # MV (no answer found)
    (r"\text{prime}", "Prime.", R),  # MV
    (r"\text{Monday}", "monday", R),  # MV
    (r"\text{New York}", "New York", R),  # MV
    (r"\text{prime}", "not prime", W),
    (r"\text{prime}", "mrpie", W),  # as a product of symbols the letters would commute
    (r"\text{prime}", "composite", W),
    (r"\text{even}", "odd", W),
    # an explicit final-answer statement after intermediate boxes is the answer
    ("12345", r"First $3 \cdot 4 = \boxed{12}$, then the rest adds up. Final Answer: The final answer is $12,345$.", R),
    ("12", r"First $3 \cdot 4 = \boxed{12}$, then the rest adds up. Final Answer: The final answer is $12,345$.", W),
    ("12345", r"So \boxed{12} is the first part. Final answer: \(12345\)", R),  # MV
    (r"\frac{1}{2}", r"\boxed{0.4} Final Answer: The final answer is $\frac{1}{2}$. I hope it is correct.", R),
    ("12345", r"The final answer is $12$. Recheck: \boxed{12345}", R),  # a later box overrides the statement
    ("12", r"The final answer is $12$. Recheck: \boxed{12345}", W),
    ("5", r"\boxed{5}. The final answer is correct.", R),  # no answer in the statement: the box stands
    ("5", r"\boxed{5}. So the final answer is 6.", W),
    # labels with \pm or several solutions
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{1, 2+\sqrt{3}, 2-\sqrt{3}}", R),  # MV (label parsed as 2)
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{x = 2 \pm \sqrt{3}, x = 1}", R),  # MV
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{x = 1, x = 2 \pm \sqrt{3}}", R),
    (r"x = 2 \pm \sqrt{3}", r"\boxed{x = 2 \pm \sqrt{3}}", R),
    (r"x = \pm 1, x = \pm 2", r"\boxed{1, -1, 2, -2}", R),  # MV
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{2}", W),  # MV
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{1, 2+\sqrt{3}}", W),
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{2 \pm \sqrt{3}}", W),
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{1, 2 \pm \sqrt{2}}", W),
    (r"x = 1, x = 2 \pm \sqrt{3}", r"\boxed{1, 2, 2+\sqrt{3}, 2-\sqrt{3}}", W),
    (r"x = 2 \pm \sqrt{3}", r"\boxed{2+\sqrt{3}}", W),
    (r"x = \pm 1, x = \pm 2", r"\boxed{1, -1, 2}", W),
    # a label written as several boxed answers (math delimiters and "or" join boxes, like `$` and "and")
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", r"$\boxed{-1,3}$", R),
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", r"\(\boxed{-1}\), \(\boxed{3}\)", R),
    (r"\boxed{3} or \boxed{-1}", r"\boxed{3, -1}", R),
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", r"\boxed{3}", W),
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", r"\boxed{-1}", W),
    (r"\(\boxed{3}\) and \(\boxed{-1}\).", r"\boxed{-1, 3, 5}", W),
    ("-1", r"\(\boxed{3}\). Wait, no: \(\boxed{-1}\).", R),  # prose between boxes: the last one answers
    ("-1", r"\(\boxed{3}\) and \(\boxed{-1}\).", W),  # two answers for one value
    # decimal commas: a comma is never a decimal point (thousands only in groups of three)
    ("2.5", r"\boxed{2,5}", W),
    ("2,5", r"\boxed{2.5}", W),
    ("2, 5", r"\boxed{2,5}", R),
    ("2.5", r"\boxed{2{,}5}", W),
    ("3.14", r"\boxed{3,14}", W),
    ("1234.5", r"\boxed{1{,}234.5}", R),
    ("2.5", r"\boxed{3}, and the final answer is 2,5.", W),
]


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier()


@pytest.mark.parametrize(("gold", "response", "expected"), TABLE)
def test_table(verifier, gold, response, expected):
    result = verifier.verify(VerifyRequest(response=response, label=gold))
    assert result.score == expected, result.breakdown
    assert result.error is None


def test_table_is_big_enough():
    assert len(TABLE) >= 135


LABELS = sorted({gold for gold, _, _ in TABLE if not (isinstance(gold, str) and "boxed" in gold)}, key=repr)


@pytest.mark.parametrize("gold", LABELS)
def test_every_label_accepts_itself_boxed(verifier, gold):
    """What `temper rewards check` asks of a dataset: a label written as the answer gets full reward."""
    result = verifier.verify(VerifyRequest(response=f"\\boxed{{{gold}}}", label=gold))
    assert result.score == 1.0, result.breakdown


QUICK = [  # (label, response, whether the shortcut decides it)
    (85, r"\boxed{85}", True), (85, r"\boxed{58}", True), ("2", r"\boxed{02}", True), ("-0", r"\boxed{0}", True),
    ("2", r"\boxed{+2}", True), ("1,000", r"\boxed{1000}", True), ("1000", r"\boxed{1{,}000}", True),
    ("7", r"\boxed 7", True), ("12", "Final Answer: The final answer is $12$.", True),
    ("12", r"\boxed{11}. So the final answer is 12.", True), ("\u22123", r"\boxed{-3}", True),
    (10**40, r"\boxed{" + str(10**40 + 1) + "}", True),
    ("3", r"\boxed{3} \boxed{4}", False), ("3", "\\boxed{\u22123}", True), ("5", r"\boxed{5.0}", False),
    ("5", r"\boxed{x = 5}", False), (5.0, r"\boxed{5}", False), ("5", "5", False), (True, r"\boxed{1}", False),
]


@pytest.mark.parametrize(("gold", "response", "decides"), QUICK)
def test_quick_path_agrees_with_the_full_path(verifier, gold, response, decides):
    """The integer shortcut (no sympy; the scoring pool runs it outside the timeout) decides exactly as
    the full path would, and stays out of the way (None) for everything else."""
    request = VerifyRequest(response=response, label=gold)
    quick = MathVerifier.quick(verifier.params, request)
    assert (quick is not None) == decides
    if quick is not None:
        full = verifier._verify(request)
        assert (quick.score, quick.breakdown, quick.error) == (full.score, full.breakdown, full.error)


def test_quick_path_is_bounded():
    """It runs outside the pool's timeout, so adversarial text must stay cheap (~0.1 s at the size cap)."""
    n = QUICK_MAX_CHARS
    hostile = ["\\boxed{" * (n // 7), "\\boxed{1} " * (n // 10), "\\boxed{" + "{" * (n // 2 - 9) + "}" * (n // 2 - 9) + "}",
               ("final answer is $" + "a" * 990) * (n // 1007), ("final answer is " + "1" * 900 + ",5 ") * (n // 920),
               "\\boxed{1}" + "and " * (n // 4 - 9) + "! \\boxed{2}"]
    for response in hostile:
        start = time.perf_counter()
        MathVerifier.quick(MathParams(), VerifyRequest(response=response, label=5))
        # a hang guard, not a speed test: linear scans take ~0.1 s here, a quadratic one minutes
        assert time.perf_counter() - start < 20, response[:40]
    assert MathVerifier.quick(MathParams(), VerifyRequest(response=" " * n + r"\boxed{5}", label=5)) is None


def test_quick_path_respects_limits():
    long = "1" * 40
    request = VerifyRequest(response=rf"\boxed{{{long}}}", label=long)
    assert MathVerifier.quick(MathParams(max_answer_chars=20), request) is None  # the full path says unparsable
    assert MathVerifier.quick(MathParams(require_boxed=True), VerifyRequest(response="Final answer: 3", label=3)) is None


def test_math_verify_gets_these_wrong():
    """The fixes above are real: plain Math-Verify accepts these wrong answers or rejects right ones."""
    from math_verify import parse, verify

    def plain(gold, response):
        return verify(parse(str(gold)), parse(response))

    assert plain(r"$\frac{1}{2^{99}}$", r"$\boxed{\frac{1}{2^{98}}}$")  # tiny difference chopped to 0
    assert plain(r"$\frac{1}{2004!}$", r"$\boxed{\frac{1}{2006!}}$")
    assert plain("$0$", r"$\boxed{x^2-4=0}$")  # equation reduced to its right-hand side
    assert plain("$x^2+1=0$", r"$\boxed{x^2+4=0}$")  # both have no real solutions
    assert plain(r"1 - \frac{1}{e}", r"$\boxed{1}$")  # raw label parsed as its first number
    assert not plain(r"\frac{\sqrt{3}}{2}", r"$\boxed{\frac{\sqrt3}{2}}$")  # raw label not parsed
    assert not plain("5", r"First \boxed{3}. Rechecking, it is \boxed{5}.")  # boxes merged into {3, 5}
    assert not plain(r"$\text{prime}$", "prime")  # a bare text answer is not found at all
    assert plain(r"$x = 1, x = 2 \pm \sqrt{3}$", r"$\boxed{2}$")  # a list of solutions with \pm parses as 2
    assert not plain("$12345$", r"So \boxed{12} is the first part. Final answer: \(12345\)")  # \(...\) missed


def test_require_boxed():
    strict = MathVerifier(MathParams(require_boxed=True))
    assert strict.verify(VerifyRequest(response="The answer is 85", label=85)).score == 0.0
    assert strict.verify(VerifyRequest(response=r"\boxed{85}", label=85)).score == 1.0
    loose = MathVerifier(MathParams(require_boxed=False, allow_plain_number=True))
    assert loose.verify(VerifyRequest(response="The answer is 85", label=85)).score == 1.0


def test_no_plain_number_fallback():
    v = MathVerifier(MathParams(allow_plain_number=False))
    result = v.verify(VerifyRequest(response="so it is 85", label=85))
    assert result.score == 0.0 and result.breakdown["verdict"] == "no_answer"
    assert v.verify(VerifyRequest(response="so it is $85$", label=85)).score == 1.0


@pytest.mark.parametrize("label", [None, {"a": 1}, "", True, float("nan")])
def test_bad_labels_are_errors_not_exceptions(verifier, label):
    result = verifier.verify(VerifyRequest(response=r"\boxed{1}", label=label))
    assert result.score == 0.0
    assert result.error is not None and "label" in result.error


def test_breakdown_names_the_answer(verifier):
    result = verifier.verify(VerifyRequest(response=r"so \boxed{\frac{1}{2}}", label="0.5"))
    assert result.breakdown == {"answer": r"\frac{1}{2}", "source": "boxed", "verdict": "correct"}
    assert result.seconds > 0


def test_never_raises_on_hostile_text(verifier):
    hostile = [
        "\\boxed{" * 200, "}" * 500, "\\frac" * 300 + "\\boxed{1}", "\x00\\boxed{\ud800}",
        "\\boxed{" + "9" * 5000 + "}", "\\boxed{\\begin{pmatrix}" + "1&" * 300 + "\\end{pmatrix}}",
        "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}", "\\boxed{(((((((((((((((((((((1)))))))))))))))))))))}",
    ]
    for response in hostile:
        start = time.perf_counter()
        result = verifier.verify(VerifyRequest(response=response, label="5"))
        assert result.score == 0.0
        assert time.perf_counter() - start < 30, response[:40]  # a hang guard (no pool timeout here)
