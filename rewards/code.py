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

Security model (see rewards/sandbox.py for the mechanics).
- Isolation: every row runs in its own bubblewrap sandbox: new user/PID/network/mount/IPC/UTS/cgroup
  namespaces (no network at all, loopback included), read-only system libraries and Python install and
  nothing else of the host, a size-limited private tmpfs as working folder, read-only / and /dev, an
  empty environment, no capabilities, no nested user namespaces, a dedicated unprivileged uid, dies with
  its parent. Inside, `python -I -S -B` (no site, no .pth, no sitecustomize, no bytecode writes). Each
  test runs in a fresh forked child with rlimits (CPU seconds, address space, file size, open files,
  processes) and a wall-clock limit enforced by SIGKILL; the whole sandbox has a wall-clock deadline
  enforced from outside by SIGKILL, and the PID namespace dies with its init.
- Verdicts are computed here, in the trusted parent, never read from the sandbox: expected values never
  enter it. For assert tests the parent parses each assert with `ast`, keeps the literals and a small
  set of pure builtins (==, <, abs, round, sorted, len, math.isclose, ...) on its side, and sends only
  the sub-expressions it cannot evaluate (the calls into the solution) into the sandbox, which returns
  their values as strict builtin data (exact int/float/complex/str/bytes/bool/None/list/tuple/set/
  frozenset/dict, no subclasses, so no `__eq__` override survives the trip); the parent then recomputes
  the assert. For stdin/stdout tests the parent compares the program's output. For check-style tests
  the check code runs in a trusted process of its own (rewards/_check_runner.py), never in the
  sandbox: `candidate` there is a proxy whose every call runs once in a fresh sandbox child and comes
  back as strict data, or as the name and message of an exception that the proxy raises as the
  builtin of that name; a timeout, a crash, an exit or a value that is not data ends the test whatever
  the check code does. Exit codes, prints, SkipTest, patched test frameworks, frame walking, custom
  `__eq__` and early exits therefore cannot pass a test: at worst they choose the values a test sees,
  which is what writing the function does anyway.
- The result channel is the harness's stdout. The harness (PID 1 of the namespace, which the kernel
  protects from signals sent from inside) never runs untrusted code, is non-dumpable (no ptrace, no
  /proc/1/mem, no /proc/1/fd for the same uid without capabilities); test children get no descriptor
  of it. Frames carry a per-run random nonce and must arrive complete and in order, else they are
  ignored; the nonce is defence in depth only (forked children inherit a copy of it in memory).
- Nothing stays behind: the sandbox's files live in its tmpfs, its processes die with its PID namespace
  (and are SIGKILLed by uid after an abnormal end), and the Python it runs ignores site/user state.
- Without bubblewrap the verifier refuses to start with a clear message, unless the user opts into
  `allow_unsandboxed="unsafe-subprocess"`, which warns loudly at construction.

What is NOT isolated (residual risks):
- CPU time and memory of the machine as a whole: rlimits are per process, so up to ~20 processes of one
  sandbox can each use the memory limit (no cgroup caps); a sandbox can also slow its neighbours.
- Kernel attack surface: no seccomp filter; a kernel bug reachable from an unprivileged user namespace
  (or the shared libraries, /proc, /dev/null, /dev/urandom...) is not defended against.
- Everything under /usr/lib (and the Python standard library) is readable inside.
- Tests whose comparison itself runs in the sandbox (helpers from "setup", or expected values that are
  not literals, e.g. `assert f(x) == reference(x)`) can be forged by a solution that tampers with them:
  keep expected values literal (the common case) for unforgeable verdicts.
- Top-level code of the solution runs again for every test (every call, for check style); timing is
  wall-clock and CPU, so a loaded machine can turn a borderline solution into a timeout.
- The check code of check-style labels is trusted: it runs unsandboxed, as the scoring process's user,
  with the venv's packages. Only plain data from the candidate ever reaches it.
- Only the standard library is importable (no numpy): it is the interpreter's own stdlib, not the venv.
- Host state made by trusted code: running as root with the interpreter under a 0700 home, a hard-link
  mirror of the Python install is created once in /var/cache/temper (root-owned, read-only inside).
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
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from temper.rewards._plain_data import NotData, decode
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.sandbox import Sandbox, SandboxUnavailable, kill_group, standalone_source

log = logging.getLogger(__name__)

VERDICTS = ("pass", "fail", "timeout", "memory", "runtime_error", "output_limit")
MAX_TIME_LIMIT_S = 60.0
MAX_MEMORY_MB = 8192
CHECKER_SOURCE = standalone_source("_check_runner.py")
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
        except _LabelError as e:
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
            plans = _plans(tuple(label["tests"]), label.get("setup", ""))
            job.update(mode="assert", setup=label.get("setup", ""),
                       tests=[[[src, it] for src, it in p.holes] for p in plans])
        budget = min(self.params.max_row_s, 3.0 + n * (wall + 0.5))
        run = self.sandbox.run(job, wall_timeout=budget, stdout_cap=n * (file_bytes * 3 + 8192) + 65536)
        frames = _frames(run.stdout, job["nonce"], n)
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
                verdict, detail = _judge_values(plans[i], frame.get("values"))
            verdicts.append(verdict if verdict in VERDICTS else "runtime_error")
            details.append(detail)
        return _result(verdicts, n, self.params.all_or_nothing, None, details)

    def _verify_check(self, label: dict[str, Any], job: dict[str, Any]) -> VerifyResult:
        """A check-style test: the label's check code runs in a trusted process of its own (see
        rewards/_check_runner.py), talking to a sandbox that makes one call of the solution per request."""
        job.update(mode="check", setup=label.get("setup", ""), tests=[], entry_point=label["entry_point"])
        checker_job = {"nonce": job["nonce"], "setup": label.get("setup", ""), "check": label["check"],
                       "path": CHECKER_PATH}
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


def _frames(stdout: bytes, nonce: str, n: int) -> dict[int, dict[str, Any]]:
    """Complete, nonce-tagged frames in order; anything else is ignored."""
    frames: dict[int, dict[str, Any]] = {}
    for line in stdout.split(b"\n")[:-1]:  # the last piece has no newline: incomplete
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if not isinstance(frame, dict) or frame.get("nonce") != nonce or "done" in frame:
            continue
        i = frame.get("i")
        if type(i) is int and i == len(frames) and i < n and isinstance(frame.get("status"), str):
            frames[i] = frame
    return frames


# ----------------------------------------------------------------------------------------------------
# Assert tests: the parent's half. Each assert becomes a plan: its expression, where every sub-expression
# the parent cannot evaluate on its own is a "hole" filled with a value computed in the sandbox.

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
class _Plan:
    expr: ast.expr
    holes: tuple[tuple[str, bool], ...]  # (source sent into the sandbox, materialize iterables)
    hole_ids: dict[int, int]  # id(node) -> index into the values


@lru_cache(maxsize=512)
def _plans(tests: tuple[str, ...], setup: str) -> list[_Plan]:
    try:
        shadowed = _bound_names(ast.parse(setup)) if setup else set()
    except SyntaxError as e:
        raise _LabelError(f"setup does not parse: {e}") from None
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


def _plan(test: str, k: int, shadowed: set[str]) -> _Plan:
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as e:
        raise _LabelError(f"test {k} does not parse: {e.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise _LabelError(f"test {k} must be a single assert statement")
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
    return _Plan(expr, tuple(holes), hole_ids)


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


def _judge_values(plan: _Plan, text: Any) -> tuple[str, str]:
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

    def __init__(self, plan: _Plan, values: list[Any]) -> None:
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
