"""The trusted half of a check-style test: runs the row's `check(candidate)` outside the sandbox.

HumanEval/EvalPlus write tests as `def check(candidate): ...` with loops, helpers and tolerances. Run in
the sandbox next to the solution, the checker could be tampered with by it; run here, in a process of
its own that no untrusted code ever enters, it cannot. `candidate` is a proxy: each call is sent to the
sandbox (rewards/_sandbox_harness.py, "check" mode), where a fresh child runs the solution and makes
that one call, and what comes back is plain data (rewards/_plain_data.py), never an object of the
solution's: a return value of exact builtin types, or the name and message of an exception, which the
proxy raises here as the builtin exception of that name (anything else: `CandidateError`).

Some outcomes end the test however the check code reacts, so that no `try/except` in it can turn
them into a pass: a call that timed out, ran out of memory or output, exited, crashed, returned a value
that is not plain data, or raised `SystemExit`, `KeyboardInterrupt`, `StopIteration` and the like
(which would stop the checker's own loops or iterators early). The proxy raises `Aborted`, a
BaseException, and remembers it: the verdict is that outcome even if the check swallowed it.

Started by rewards/code.py as `python -I -S -B -c <source>` with the sandbox's request pipe and frame
pipe inherited; reads one job line on stdin: {"nonce", "setup", "check", "request_fd", "frame_fd",
"path" (the scoring interpreter's site-packages, so a check may import numpy)}; writes one verdict line:
{"verdict": pass | fail | timeout | memory | output_limit | runtime_error, "detail", "calls"}, or
{"label_error": why} when the check code itself is unusable. What the check code prints is discarded.
"""

import builtins
import json
import linecache
import os
import sys
import traceback

from _plain_data import NotData, decode, encode  # defined first by rewards/sandbox.py's standalone_source

# Exceptions a call may raise here under their own name: the ordinary ones a check expects or catches.
_REBUILT = {cls.__name__: cls for cls in (
    ArithmeticError, AssertionError, AttributeError, BufferError, EOFError, Exception, FloatingPointError,
    ImportError, IndexError, KeyError, LookupError, ModuleNotFoundError, NameError, NotImplementedError,
    OverflowError, RecursionError, RuntimeError, TypeError, UnboundLocalError, UnicodeError, ValueError,
    ZeroDivisionError)}
# Raised by a call, these end the test: they are how Python stops loops, iterators and programs.
_ABORTING = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "StopIteration", "StopAsyncIteration",
             "BaseException", "BaseExceptionGroup"}


class CandidateError(Exception):
    """The candidate raised an exception that is not one of the ordinary builtin ones."""


class Aborted(BaseException):
    """A call ended the test (status and detail); a BaseException so that `except Exception` misses it."""

    def __init__(self, status, detail):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class BadCheck(Exception):
    """The check passes the candidate something that cannot be sent into the sandbox."""


class Candidate:
    """Stands for the solution's function: every call runs in the sandbox and returns plain data."""

    def __init__(self, requests, frames, nonce):
        self._requests, self._frames, self._nonce = requests, frames, nonce
        self.calls = 0
        self.aborted = None
        self.last_raised = None
        self.bad_check = None

    def __call__(self, *args, **kwargs):
        if self.aborted is not None:
            raise self.aborted
        try:
            line = json.dumps({"args": encode(args), "kwargs": encode(kwargs)}, allow_nan=True)
        except (NotData, ValueError) as e:
            self.bad_check = BadCheck(f"check() passes candidate a value that cannot enter the sandbox ({e})")
            raise self.bad_check from None
        try:
            self._requests.write(line.encode("utf-8", "surrogatepass") + b"\n")
            self._requests.flush()
            frame = self._frame()
        except (OSError, ValueError) as e:
            return self._abort("runtime_error", f"the sandbox ended ({type(e).__name__})")
        self.calls += 1
        if frame is None:
            return self._abort("runtime_error", "the sandbox ended before answering")
        if frame["status"] != "ok":
            return self._abort(frame["status"], str(frame.get("error", ""))[:200])
        try:
            out = json.loads(frame.get("values", ""))
            if type(out) is dict and "ok" in out:
                return decode(out["ok"])
        except (ValueError, RecursionError, NotData) as e:
            return self._abort("runtime_error", f"the call returned malformed data ({str(e)[:100]})")
        if type(out) is dict and type(out.get("raised")) is list and len(out["raised"]) == 2 \
                and all(type(x) is str for x in out["raised"]):
            name, message = out["raised"]
            if name in _ABORTING:
                return self._abort("runtime_error", f"the call raised {name}")
            cls = _REBUILT.get(name)
            self.last_raised = cls(message) if cls is not None else CandidateError(f"{name}: {message}")
            raise self.last_raised
        if type(out) is dict and type(out.get("bad")) is str:
            return self._abort("runtime_error", out["bad"][:200])
        return self._abort("runtime_error", "the call returned malformed data")

    def _frame(self):
        """The next frame with our nonce and the expected index; None at EOF."""
        while True:
            line = self._frames.readline()
            if not line:
                return None
            try:
                frame = json.loads(line)
            except ValueError:
                continue
            if type(frame) is dict and frame.get("nonce") == self._nonce and frame.get("i") == self.calls \
                    and type(frame.get("status")) is str:
                return frame

    def _abort(self, status, detail):
        self.aborted = Aborted(status, detail)
        raise self.aborted


def _where(e):
    """The line of the check code (or setup) where `e` surfaced, for the breakdown."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in ("check.py", "setup.py")]
    line = f" ({frames[-1].filename} line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"{type(e).__name__}: {str(e)[:150]}{line}"


def run(job, candidate):
    """The verdict of one check-style test, as a dict (see the module docstring)."""
    namespace = {"__name__": "__check__", "__builtins__": builtins}
    for name, source in (("setup.py", job["setup"]), ("check.py", job["check"])):  # for tracebacks
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        if job["setup"]:
            exec(compile(job["setup"], "setup.py", "exec"), namespace)  # noqa: S102 (trusted: the dataset's)
        exec(compile(job["check"], "check.py", "exec"), namespace)  # noqa: S102
    except Exception as e:  # noqa: BLE001 -- the label's own code fails: a label error, not a verdict
        return {"label_error": f"the check code fails before check() is called: {_where(e)}"}
    check = namespace.get("check")
    if not callable(check):
        return {"label_error": "the check code defines no function check(candidate)"}
    try:
        check(candidate)
        verdict = {"verdict": "pass", "detail": ""}
    except Aborted:
        verdict = {}  # the sticky outcome below
    except AssertionError as e:
        verdict = {"verdict": "fail", "detail": _where(e)}
    except Exception as e:  # noqa: BLE001 -- any other exception fails the test, as it would in HumanEval
        kind = "runtime_error" if e is candidate.last_raised else "fail"
        verdict = {"verdict": kind, "detail": _where(e)}
    if candidate.bad_check is not None:
        return {"label_error": str(candidate.bad_check)}
    if candidate.aborted is not None:
        verdict = {"verdict": candidate.aborted.status, "detail": candidate.aborted.detail}
    elif candidate.calls == 0:
        return {"label_error": "check(candidate) returned without calling candidate"}
    return {**verdict, "calls": candidate.calls}


def main():
    job = json.loads(sys.stdin.readline())
    sys.path.extend(job["path"])
    verdicts = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- the check code's prints go nowhere
    requests = os.fdopen(job["request_fd"], "wb")
    frames = os.fdopen(job["frame_fd"], "rb")
    result = run(job, Candidate(requests, frames, job["nonce"]))
    verdicts.write(json.dumps(result) + "\n")
    verdicts.flush()


if __name__ == "__main__":
    main()
