"""Code-execution verifier: runs the response's program against the row's tests in a real sandbox.

What it scores. The response's last fenced python block (else its last fenced block, else the whole
text) is run against the label's tests, in one of three formats:
  assert style (MBPP/HumanEval): {"tests": ["assert add(1, 2) == 3", ...], "setup": "optional code"}
  stdin/stdout style (APPS/LiveCodeBench): {"io": [{"stdin": "1 2\\n", "stdout": "3\\n"}, ...]}
  check style (HumanEval/EvalPlus `test` field): {"check": "def check(candidate):\\n    assert ...",
      "entry_point": "add", "setup": "optional code"}
with optional per-row "time_limit" (CPU seconds per test, per call for check style) and "memory_limit"
(MB) in the label or the row's metadata. Reward = fraction of tests passed (or all-or-nothing); the
breakdown lists each test's verdict: pass, fail, timeout, memory, runtime_error, output_limit. A check
style label is one test (HumanEval scores a problem all or nothing); its breakdown adds "calls".
Check style: "check" is trusted code defining `check(candidate)` (plus any helpers and imports, numpy
included); "setup" runs before the solution in the sandbox and before the check code in the checker
(for HumanEval, the prompt: problem 32's check calls the prompt's `poly`). The check must call
`candidate` at least once, with plain data only (a label error otherwise); arguments are copies, so
a check cannot see the candidate mutate them; `candidate` supports calls, nothing else (no attributes).
A name the check uses that neither the check code, its setup nor Python's builtins define is the
program's (an encoder beside the decoder under test, a constant): a function or class of the program
is a proxy like `candidate`, a constant arrives as a copy. Setup's names win, so a dataset pins the
helpers it trusts by defining them in setup.

Security model (the sandbox's own mechanics and residual risks: rewards/sandbox/__init__.py).
- Isolation: every row runs in its own bubblewrap sandbox (no network, no host files but the system
  libraries and the Python install read-only, a private tmpfs, a dedicated unprivileged uid); each
  test runs in a fresh forked child with rlimits and a wall-clock limit enforced by SIGKILL.
- Verdicts are computed here, in the trusted parent, never read from the sandbox: expected values never
  enter it. For assert tests the parent recomputes each assert from the values of the sub-expressions
  it cannot evaluate itself, which come back as strict builtin data (rewards/assert_tests.py). For
  stdin/stdout tests the parent compares the program's output. For check-style tests the check code
  runs in a trusted process of its own (rewards/check_runner.py), never in the sandbox: `candidate`
  and the program's functions are proxies there whose every call runs once in a fresh sandbox child
  and comes back as strict data, or as the name and message of an exception that the proxy raises as
  the builtin of that name; a timeout, a crash, an exit or a value that is not data ends the test
  whatever the check code does. Exit codes, prints, SkipTest, patched test frameworks, frame walking,
  custom `__eq__` and early exits therefore cannot pass a test: at worst they choose the values a test
  sees, which is what writing the function does anyway.
- Without bubblewrap the verifier refuses to start with a clear message, unless the user opts into
  `allow_unsandboxed="unsafe-subprocess"`, which warns loudly at construction.

What is NOT protected (beyond the sandbox's own residual risks):
- Tests whose comparison itself runs in the sandbox (helpers from "setup", or expected values that are
  not literals, e.g. `assert f(x) == reference(x)`) can be forged by a solution that tampers with them:
  keep expected values literal (the common case) for unforgeable verdicts. Likewise, a check that
  calls a helper of the program trusts what the program made it: define trusted helpers in setup.
- Top-level code of the solution runs again for every test (every call or name lookup, for check style).
- The check code of check-style labels is trusted: it runs unsandboxed, as the scoring process's user,
  with the venv's packages. Only plain data from the program ever reaches it.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from temper.rewards.assert_tests import BadAssert, judge_values, plans
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.sandbox import Sandbox, SandboxUnavailable, kill_group, read_frames, standalone_source

log = logging.getLogger(__name__)

VERDICTS = ("pass", "fail", "timeout", "memory", "runtime_error", "output_limit")
MAX_TIME_LIMIT_S = 60.0
MAX_MEMORY_MB = 8192
CHECKER_SOURCE = standalone_source(Path(__file__).with_name("check_runner.py"))
# The checker starts with -S (no site: ~60 ms less per row) and gets this interpreter's packages (numpy
# for EvalPlus checks) on its path instead, without the .pth hooks it does not need.
CHECKER_PATH = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


class Params(BaseModel):
    """Parameters of the code verifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all_or_nothing: bool = False
    """Reward 1 only when every test passes (else the fraction passed)."""
    time_limit_s: float = Field(2.0, gt=0, le=MAX_TIME_LIMIT_S)
    """CPU seconds per test unless the row sets "time_limit"; the wall-clock limit is 2x + 1 s."""
    memory_limit_mb: int = Field(512, ge=64, le=MAX_MEMORY_MB)
    """Address-space limit per process unless the row sets "memory_limit"."""
    output_limit_kb: int = Field(4096, ge=1, le=1 << 20)
    """Most stdout (and any file) a test may write."""
    max_row_s: float = Field(9.0, gt=0)
    """Wall-clock budget of one row, all tests together; tests it cuts off are timeouts. Keep it below
    the scoring pool's per-sample timeout (`temper rewards score --timeout`, 10 s by default)."""
    output_match: Literal["exact", "lines", "tokens"] = "lines"
    """stdin/stdout comparison: byte-exact, per line ignoring trailing spaces and blank lines at the end,
    or whitespace-separated tokens."""
    max_code_chars: int = Field(200_000, ge=1)
    """Longer programs score 0 without being run."""
    allow_unsandboxed: Literal["no", "unsafe-subprocess"] = "no"
    """Without bubblewrap, "unsafe-subprocess" runs code in a plain subprocess (NO isolation)."""


class CodeVerifier(Verifier):
    """Scores a program by running it against the row's tests in a bubblewrap sandbox."""

    Params = Params
    isolation = "inline"

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        try:
            self.sandbox = Sandbox("bwrap")
        except SandboxUnavailable as e:
            if self.params.allow_unsandboxed != "unsafe-subprocess":
                raise
            msg = (f"code verifier: {e} -- running untrusted code WITHOUT a sandbox because "
                   "allow_unsandboxed='unsafe-subprocess' was set: it can read, write and kill anything "
                   "this user can.")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            self.sandbox = Sandbox("unsafe-subprocess")

    def verify(self, request: VerifyRequest) -> VerifyResult:
        start = time.monotonic()
        try:
            result = self._verify(request)
        except (_LabelError, BadAssert) as e:
            result = VerifyResult(0.0, {}, f"bad label: {e}")
        return VerifyResult(result.score, result.breakdown, result.error, round(time.monotonic() - start, 4))

    def verify_many(self, requests: Sequence[VerifyRequest], max_workers: int | None = None
                    ) -> list[VerifyResult]:
        """Scores requests in parallel, at most os.cpu_count() sandboxes at a time; keeps their order."""
        workers = max(1, min(max_workers or os.cpu_count() or 1, len(requests) or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="code-verifier") as pool:
            return list(pool.map(self.verify, requests))

    def _verify(self, request: VerifyRequest) -> VerifyResult:
        label = _parse_label(request.label)
        time_limit, memory_mb = self._limits(label, request.metadata)
        code = extract_code(request.response if isinstance(request.response, str) else "")
        n = 1 if "check" in label else len(label["io"]) if "io" in label else len(label["tests"])
        if len(code) > self.params.max_code_chars:
            return _result([], n, self.params.all_or_nothing, "program longer than max_code_chars")
        wall = 2 * time_limit + 1
        file_bytes = self.params.output_limit_kb * 1024
        job: dict[str, Any] = {"nonce": secrets.token_hex(16), "solution": code, "time_limit": time_limit,
                               "wall_limit": wall, "memory_bytes": memory_mb << 20,
                               "file_bytes": file_bytes, "nofile": 64}
        if "check" in label:
            return self._verify_check(label, job)
        if "io" in label:
            job.update(mode="stdio", setup="", tests=[case["stdin"] for case in label["io"]])
        else:
            test_plans = plans(tuple(label["tests"]), label.get("setup", ""))
            job.update(mode="assert", setup=label.get("setup", ""),
                       tests=[[[src, it] for src, it in p.holes] for p in test_plans])
        budget = min(self.params.max_row_s, 3.0 + n * (wall + 0.5))
        run = self.sandbox.run(job, wall_timeout=budget, stdout_cap=n * (file_bytes * 3 + 8192) + 65536)
        frames = read_frames(run.stdout, job["nonce"], n)
        if not frames and not run.timed_out and "bwrap:" in run.stderr_tail:
            return _result([], n, self.params.all_or_nothing, f"sandbox failed: {run.stderr_tail[-300:]}")
        verdicts, details = [], []
        missing = "timeout" if run.timed_out else "runtime_error"
        for i in range(n):
            frame = frames.get(i)
            if frame is None:
                verdict, detail = missing, "the sandbox ended before this test ran"
            elif frame["status"] != "ok":
                verdict, detail = frame["status"], str(frame.get("error", ""))[:200]
            elif "io" in label:
                verdict, detail = self._judge_output(frame, label["io"][i]["stdout"]), ""
            else:
                verdict, detail = judge_values(test_plans[i], frame.get("values"))
            verdicts.append(verdict if verdict in VERDICTS else "runtime_error")
            details.append(detail)
        return _result(verdicts, n, self.params.all_or_nothing, None, details)

    def _verify_check(self, label: dict[str, Any], job: dict[str, Any]) -> VerifyResult:
        """A check-style test: the label's check code runs in a trusted process of its own (see
        rewards/check_runner.py), talking to a sandbox that makes one call of the solution per request."""
        job.update(mode="check", setup=label.get("setup", ""), tests=[], entry_point=label["entry_point"])
        checker_job = {"nonce": job["nonce"], "setup": label.get("setup", ""), "check": label["check"],
                       "entry_point": label["entry_point"], "path": CHECKER_PATH}
        with self.sandbox.session(job) as box, tempfile.TemporaryDirectory(prefix="temper-check-") as tmp:
            checker_job.update(request_fd=box.stdin.fileno(), frame_fd=box.stdout.fileno())
            checker = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", CHECKER_SOURCE], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp, start_new_session=True,
                pass_fds=(box.stdin.fileno(), box.stdout.fileno()))
            box.stdin.close()  # the checker holds the sandbox's pipes now: when it ends, the harness sees EOF
            box.stdout.close()
            try:
                out, err = checker.communicate((json.dumps(checker_job) + "\n").encode("utf-8", "surrogatepass"),
                                               timeout=self.params.max_row_s)
            except subprocess.TimeoutExpired:
                out = None
            finally:
                if checker.poll() is None:
                    kill_group(checker)
                    checker.communicate()
        if out is None:
            return _result(["timeout"], 1, self.params.all_or_nothing, None,
                           [f"the test took longer than max_row_s={self.params.max_row_s}"])
        try:
            verdict = json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            return _result([], 1, self.params.all_or_nothing, f"the checker failed: {tail[0][:300]}")
        if "label_error" in verdict:
            return VerifyResult(0.0, {}, f"bad label: {verdict['label_error']}")
        status = verdict["verdict"] if verdict.get("verdict") in VERDICTS else "runtime_error"
        result = _result([status], 1, self.params.all_or_nothing, None, [str(verdict.get("detail", ""))])
        return VerifyResult(result.score, {**result.breakdown, "calls": verdict.get("calls", 0)})

    def _limits(self, label: dict[str, Any], metadata: dict[str, Any]) -> tuple[float, int]:
        def pick(*names: str) -> Any:
            for source in (label, metadata if isinstance(metadata, dict) else {}):
                for name in names:
                    if source.get(name) is not None:
                        return source[name]
            return None

        t = pick("time_limit", "time_limit_s")
        m = pick("memory_limit", "memory_limit_mb")
        try:
            t = self.params.time_limit_s if t is None else min(max(float(t), 0.05), MAX_TIME_LIMIT_S)
            m = self.params.memory_limit_mb if m is None else min(max(int(m), 64), MAX_MEMORY_MB)
        except (TypeError, ValueError) as e:
            raise _LabelError(f"time_limit/memory_limit must be numbers: {e}") from None
        if not math.isfinite(t):
            raise _LabelError("time_limit must be finite")
        return t, m

    def _judge_output(self, frame: dict[str, Any], expected: str) -> str:
        try:
            got = base64.b64decode(frame.get("stdout_b64", ""), validate=True).decode("utf-8", "replace")
        except ValueError:
            return "fail"
        return "pass" if _same_output(got, expected, self.params.output_match) else "fail"


class _LabelError(ValueError):
    pass


def _result(verdicts: list[str], n: int, all_or_nothing: bool, error: str | None,
            details: list[str] | None = None) -> VerifyResult:
    passed = sum(v == "pass" for v in verdicts)
    score = (1.0 if passed == n else 0.0) if all_or_nothing else passed / n
    breakdown: dict[str, Any] = {"passed": passed, "total": n, "verdicts": verdicts}
    if details and any(details):
        breakdown["details"] = details
    return VerifyResult(float(score) if verdicts else 0.0, breakdown, error)


# ----------------------------------------------------------------------------------------------------
# Inputs: the program and the label.

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


def extract_code(response: str) -> str:
    """The last ```python block, else the last fenced block of any language, else the whole response."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(response)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3", "py3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return response


def _parse_label(label: Any) -> dict[str, Any]:
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except ValueError:
            raise _LabelError("a string label must be JSON") from None
    if not isinstance(label, dict) or sum(key in label for key in ("tests", "io", "check")) != 1:
        raise _LabelError('expected one of {"tests": [...]}, {"io": [...]} or {"check": ..., "entry_point": ...}')
    if "check" in label:
        return _check_label(label)
    if "io" in label:
        io = label["io"]
        if not isinstance(io, list) or not io:
            raise _LabelError('"io" must be a non-empty list')
        for case in io:
            if not (isinstance(case, dict) and isinstance(case.get("stdin", ""), str)
                    and isinstance(case.get("stdout"), str)):
                raise _LabelError('each "io" case needs a string "stdout" (and optional string "stdin")')
        return {**label, "io": [{"stdin": c.get("stdin", ""), "stdout": c["stdout"]} for c in io]}
    tests = label.get("tests")
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise _LabelError('"tests" must be a non-empty list of assert statements')
    if not isinstance(label.get("setup", ""), str):
        raise _LabelError('"setup" must be a string of code')
    return {**label, "tests": tests}


def _check_label(label: dict[str, Any]) -> dict[str, Any]:
    check, entry, setup = label.get("check"), label.get("entry_point"), label.get("setup", "")
    if not isinstance(check, str) or not isinstance(setup, str):
        raise _LabelError('"check" (and "setup") must be strings of code')
    if not (isinstance(entry, str) and entry.isidentifier()):
        raise _LabelError('"entry_point" must name the function under test')
    try:
        tree = ast.parse(check)
    except SyntaxError as e:
        raise _LabelError(f"check does not parse: {e.msg} (line {e.lineno})") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise _LabelError('"check" must define check(candidate)')
    return {**label, "setup": setup}


def _same_output(got: str, expected: str, how: str) -> bool:
    if how == "exact":
        return got == expected
    if how == "tokens":
        return got.split() == expected.split()
    lines = [line.rstrip() for line in got.rstrip().splitlines()]
    return lines == [line.rstrip() for line in expected.rstrip().splitlines()]


