"""The trusted half of a check-style test: runs the row's `check(candidate)` outside the sandbox.

HumanEval/EvalPlus write tests as `def check(candidate): ...` with loops, helpers and tolerances. Run in
the sandbox next to the solution, the checker could be tampered with by it; run here, in a process of
its own that no untrusted code ever enters, it cannot. `candidate` is a proxy: each call is sent to the
sandbox (rewards/sandbox/harness.py, "check" mode), where a fresh child runs the solution and makes
that one call, and what comes back is plain data (rewards/sandbox/plain_data.py), never an object of
the solution's: a return value of exact builtin types, or the name and message of an exception, which
the proxy raises here as the builtin exception of that name (anything else: `CandidateError`).

The program's other names. As in the usual harnesses, the check code may use what the program defines
beside the entry point (an encoder beside the decoder under test, a constant). Its builtins are a
`ProgramNames` mapping: a name that neither the check code nor the setup binds, and that is not a
builtin, is asked of the sandbox on first use. A function or class of the program comes back as a
proxy like `candidate` (every call runs in the sandbox), plain data as a copy, anything else (a module,
an object) as a NameError that says so. Lookup order is therefore: the check code's and setup's own
names, Python's builtins, then the program's; so setup pins trusted helpers, and a program that
defines `abs` or redefines setup's helper changes nothing here.

Some outcomes end the test however the check code reacts, so that no `try/except` in it can turn
them into a pass: a call that timed out, ran out of memory or output, exited, crashed, returned a value
that is not plain data, or raised `SystemExit`, `KeyboardInterrupt`, `StopIteration` and the like
(which would stop the checker's own loops or iterators early). The proxy raises `Aborted`, a
BaseException, and remembers it: the verdict is that outcome even if the check swallowed it.

Started by rewards/code.py as `python -I -S -B -c <source>` with the sandbox's request pipe and frame
pipe inherited; reads one job line on stdin: {"nonce", "setup", "check", "entry_point", "request_fd",
"frame_fd", "path" (the scoring interpreter's site-packages, so a check may import numpy)}; writes one
verdict line: {"verdict": pass | fail | timeout | memory | output_limit | runtime_error, "detail",
"calls"}, or {"label_error": why} when the check code itself is unusable (it fails, or returns without
calling candidate, without consulting the program at all). What the check code prints is discarded.
"""

import builtins
import json
import linecache
import os
import sys
import traceback

from plain_data import NotData, decode, encode  # defined first by the sandbox's standalone_source

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


class Channel:
    """The sandbox session: one request at a time, answers in order. The first outcome that ends the test
    sticks: every later request raises it again."""

    def __init__(self, requests, frames, nonce):
        self._requests, self._frames, self._nonce = requests, frames, nonce
        self.answered = 0
        self.aborted = None
        self.last_raised = None
        self.bad_check = None

    def call(self, name, args, kwargs):
        """The program's `name` called once in the sandbox: its value as plain data, or its exception."""
        try:
            request = {"call": name, "args": encode(args), "kwargs": encode(kwargs)}
        except NotData as e:
            self.bad_check = BadCheck(f"check() passes {name}() a value that cannot enter the sandbox ({e})")
            raise self.bad_check from None
        out = self._ask(request)
        if "ok" in out:
            return self._decode(out["ok"])
        if type(out.get("raised")) is list and len(out["raised"]) == 2 and all(type(x) is str for x in out["raised"]):
            kind, message = out["raised"]
            if kind in _ABORTING:
                return self._abort("runtime_error", f"the call raised {kind}")
            cls = _REBUILT.get(kind)
            self.last_raised = cls(message) if cls is not None else CandidateError(f"{kind}: {message}")
            raise self.last_raised
        return self._abort("runtime_error", out["bad"][:200] if type(out.get("bad")) is str
                           else "the call returned malformed data")

    def lookup(self, name):
        """What the program binds to `name`: ("value", data), ("callable", None), ("other", type name) or
        ("missing", None)."""
        out = self._ask({"get": name})
        if "ok" in out:
            return "value", self._decode(out["ok"])
        for kind in ("callable", "other"):
            if type(out.get(kind)) is str:
                return kind, out[kind][:100]
        if out.get("missing") is True:
            return "missing", None
        return self._abort("runtime_error", "the sandbox answered a name lookup with malformed data")

    def _ask(self, request):
        """Sends one request; the answer's values as a dict, or Aborted for any status but "ok"."""
        if self.aborted is not None:
            raise self.aborted
        try:
            line = json.dumps(request, allow_nan=True)
            self._requests.write(line.encode("utf-8", "surrogatepass") + b"\n")
            self._requests.flush()
            frame = self._frame()
        except (OSError, ValueError) as e:
            return self._abort("runtime_error", f"the sandbox ended ({type(e).__name__})")
        self.answered += 1
        if frame is None:
            return self._abort("runtime_error", "the sandbox ended before answering")
        if frame["status"] != "ok":
            return self._abort(frame["status"], str(frame.get("error", ""))[:200])
        try:
            out = json.loads(frame.get("values", ""))
        except (ValueError, RecursionError):
            out = None
        if type(out) is not dict:
            return self._abort("runtime_error", "the call returned malformed data")
        return out

    def _decode(self, value):
        try:
            return decode(value)
        except (RecursionError, NotData) as e:
            return self._abort("runtime_error", f"the call returned malformed data ({str(e)[:100]})")

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
            if type(frame) is dict and frame.get("nonce") == self._nonce and frame.get("i") == self.answered \
                    and type(frame.get("status")) is str:
                return frame

    def _abort(self, status, detail):
        self.aborted = Aborted(status, detail)
        raise self.aborted


class Proxy:
    """Stands for a function or class of the program: every call runs in the sandbox, returns plain data."""

    def __init__(self, channel, name):
        self._channel, self._name = channel, name
        self.calls = 0

    def __call__(self, *args, **kwargs):
        if self._channel.aborted is not None:
            raise self._channel.aborted  # the test has ended: no further call is made
        self.calls += 1
        return self._channel.call(self._name, args, kwargs)

    def __repr__(self):
        return f"<the program's {self._name}, called in the sandbox>"


class ProgramNames(dict):
    """The check code's builtins: Python's own, then, for any other name, what the program binds to it
    (asked of the sandbox once, on first use). The check code's and setup's globals come before both."""

    def __init__(self, channel, candidate, entry_point):
        super().__init__(vars(builtins))
        self._channel, self._candidate, self._entry_point = channel, candidate, entry_point
        self.asked = []  # names looked up in the program, in order
        self._unusable = {}  # name -> why it is not available here

    def __missing__(self, name):
        if name == self._entry_point:
            self[name] = self._candidate  # the function under test by its own name: the same proxy
            return self._candidate
        if name not in self._unusable:
            self.asked.append(name)
            kind, value = self._channel.lookup(name)
            if kind == "value":
                self[name] = value
                return value
            if kind == "callable":
                self[name] = Proxy(self._channel, name)
                return self[name]
            self._unusable[name] = (
                f"name {name!r} is a {value} of the program, which cannot reach check(): only plain data, "
                "functions and classes cross (import modules in the check code)" if kind == "other"
                else f"name {name!r} is not defined by the check code, its setup or the program")
        raise NameError(self._unusable[name], name=name)


def _where(e):
    """The line of the check code (or setup) where `e` surfaced, for the breakdown."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in ("check.py", "setup.py")]
    line = f" ({frames[-1].filename} line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"{type(e).__name__}: {str(e)[:150]}{line}"


def run(job, channel):
    """The verdict of one check-style test, as a dict (see the module docstring)."""
    candidate = Proxy(channel, job["entry_point"])
    names = ProgramNames(channel, candidate, job["entry_point"])
    namespace = {"__name__": "__check__", "__builtins__": names}
    for name, source in (("setup.py", job["setup"]), ("check.py", job["check"])):  # for tracebacks
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    stage, raised = "before check() is called", None
    try:
        if job["setup"]:
            exec(compile(job["setup"], "setup.py", "exec"), namespace)  # noqa: S102 (trusted: the dataset's)
        exec(compile(job["check"], "check.py", "exec"), namespace)  # noqa: S102
        check = namespace.get("check")
        if not callable(check):
            return {"label_error": "the check code defines no function check(candidate)"}
        stage = "in check() before it calls candidate"
        check(candidate)
        verdict = {"verdict": "pass", "detail": ""}
    except Aborted:
        verdict = {}  # the sticky outcome below
    except Exception as e:  # noqa: BLE001 -- any exception fails the test, as it would in HumanEval
        raised = e
        kind = "runtime_error" if e is channel.last_raised else "fail"
        verdict = {"verdict": kind, "detail": _where(e)}
    if channel.bad_check is not None:
        return {"label_error": str(channel.bad_check)}
    if channel.aborted is not None:
        verdict = {"verdict": channel.aborted.status, "detail": channel.aborted.detail}
    elif candidate.calls == 0 and raised is None:
        return {"label_error": "check(candidate) returned without calling candidate"}
    elif candidate.calls == 0 and not names.asked:  # the program played no part: the label's own fault
        return {"label_error": f"the check code fails {stage}: {_where(raised)}"}
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
    result = run(job, Channel(requests, frames, job["nonce"]))
    verdicts.write(json.dumps(result) + "\n")
    verdicts.flush()


if __name__ == "__main__":
    main()
