"""What safety costs: sandboxed executions/s vs the same programs in a plain subprocess, in one run.

Both sides score the same rows with the same CodeVerifier code path and the same harness (one process
per row, one forked child per test), in parallel up to os.cpu_count(); the only difference is
bubblewrap (namespaces, mounts, a dedicated uid) around it.

Then, both sandboxed, the same problem written as a check-style label (HumanEval's `def check(candidate)`,
judged by a trusted checker process outside the sandbox, one round trip per call) against the
assert-list label: rows/s of each. Usage: python bench/bench_sandbox.py [ROWS]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from temper.rewards.base import VerifyRequest
from temper.rewards.code import CodeVerifier
from temper.rewards.sandbox import Sandbox

FIB = ("```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
       "    return a\n```")
ASSERT_ROW = (FIB, {"tests": ["assert fib(10) == 55", "assert fib(20) == 6765", "assert fib(1) == 1"]})
CHECK_ROW = (FIB, {"check": "def check(candidate):\n    assert candidate(10) == 55\n"
                          "    assert candidate(20) == 6765\n    assert candidate(1) == 1\n", "entry_point": "fib"})
STDIO_ROW = ("import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums), max(nums))",
             {"io": [{"stdin": "1 2 3\n", "stdout": "6 3\n"}, {"stdin": "5 -1\n", "stdout": "4 5\n"},
                     {"stdin": "7\n", "stdout": "7 7\n"}]})


def measure(verifier: CodeVerifier, requests: list[VerifyRequest]) -> tuple[float, float]:
    verifier.verify_many(requests[:4])  # warm-up
    start = time.perf_counter()
    results = verifier.verify_many(requests)
    seconds = time.perf_counter() - start
    assert all(r.score == 1.0 for r in results), [r for r in results if r.score != 1.0][:1]
    return seconds, sum(r.breakdown["total"] for r in results) / seconds


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    requests = [VerifyRequest(response=r, label=label) for r, label in [ASSERT_ROW, STDIO_ROW] * (rows // 2)]
    sandboxed = CodeVerifier()
    plain = CodeVerifier()
    plain.sandbox = Sandbox("unsafe-subprocess")  # same harness, no bubblewrap
    s_seconds, s_tests = measure(sandboxed, requests)
    p_seconds, p_tests = measure(plain, requests)
    n = len(requests)
    print(f"{n} programs x 3 tests, {os.cpu_count()} workers")
    print(f"sandboxed (bwrap): {n / s_seconds:7.1f} programs/s  {s_tests:7.1f} test executions/s")
    print(f"plain subprocess:  {n / p_seconds:7.1f} programs/s  {p_tests:7.1f} test executions/s")
    print(f"cost of safety: sandboxed runs at {s_tests / p_tests:.2f}x the plain rate "
          f"({p_tests / s_tests:.2f}x slower)")

    asserts = [VerifyRequest(response=ASSERT_ROW[0], label=ASSERT_ROW[1])] * (rows // 2)
    checks = [VerifyRequest(response=CHECK_ROW[0], label=CHECK_ROW[1])] * (rows // 2)
    a_seconds, _ = measure(sandboxed, asserts)
    c_seconds, _ = measure(sandboxed, checks)
    a_rows, c_rows = len(asserts) / a_seconds, len(checks) / c_seconds
    print(f"{len(asserts)} rows x 3 calls of fib, both sandboxed")
    print(f"assert-list labels: {a_rows:7.1f} rows/s")
    print(f"check() labels:     {c_rows:7.1f} rows/s (trusted checker process + a round trip per call)")
    print(f"check-style runs at {c_rows / a_rows:.2f}x the assert-list rate")


if __name__ == "__main__":
    main()
