"""The program that runs inside the sandbox (stdlib only; temper is not importable in there).

It is started as `python -I -S -B -c <this source>` and is PID 1 of the sandbox's PID namespace, so
untrusted code cannot signal it (the kernel ignores signals to a namespace's init from inside it). It
never runs untrusted code itself: it reads the job from stdin, makes itself non-dumpable (so processes
of the same uid cannot ptrace it, read its memory or open its file descriptors through /proc), and runs
every test in a fresh forked child. The child swaps its stdin/stdout/stderr for scratch files, closes
every other descriptor, lowers its rlimits, and only then executes the untrusted code. The harness waits
with a wall-clock limit, SIGKILLs the child if needed, kills every other process of the namespace
(`kill(-1)` from init), and writes one JSON frame per test to its stdout, the channel only it holds.

A frame reports what happened (status, the program's stdout, or the values of the test's expressions);
it never says whether a test passed: expected values are not in here, the trusted parent judges.

Job (the first line of stdin, JSON): nonce, mode ("assert" | "stdio" | "check"), solution, setup,
tests (assert: a list of [[expression_source, materialize_iterables], ...] per test; stdio: a list of
stdin strings; check: unused), entry_point (check), time_limit (CPU s), wall_limit (s), memory_bytes,
file_bytes, nproc (or null), nofile, workdir, isolated (true only under bubblewrap: enables the kill(-1)
sweep). In "check" mode the harness then reads one request per line of stdin until EOF and answers each
with a frame; a fresh child runs setup and solution, then does what the request asks, values in the
plain-data encoding (plain_data.py):
  {"call": name, "args": ..., "kwargs": ...}  calls the program's `name` (default: entry_point) once;
  {"get": name}                                 reports what the program binds to `name`.
Frame (stdout, one JSON line): nonce, i, status ("ok" | "timeout" | "memory" | "output_limit" |
"runtime_error"), and for "ok" either stdout_b64 (stdio) or values (the child's JSON text: assert
{"ok": [value, ...]} or {"bad": why}; call {"ok": value}, {"raised": [type name, message]} or
{"bad": why}; get {"ok": value}, {"callable": type name}, {"other": type name} or {"missing": true}).
A stdio "runtime_error" also carries stdout_b64 and stderr_tail (its last 400 characters).
"""

import base64
import ctypes
import errno
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

from plain_data import NotData, decode, encode  # defined first by runner.standalone_source: no temper here

MEMORY_EXIT = 3  # the child exits with this after a MemoryError; a label for a failure, nothing more
FILE_EXIT = 4  # ... and with this after a write past the file-size limit (EFBIG)


def main():
    requests = os.fdopen(os.dup(0), "rb")  # test children close it (closerange) before any untrusted code
    job = json.loads(requests.readline())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _set_dumpable(False)
    if job["nproc"] is not None:
        _limit(resource.RLIMIT_NPROC, job["nproc"])
    _limit(resource.RLIMIT_NOFILE, job["nofile"])
    _limit(resource.RLIMIT_CORE, 0)
    tests = iter(requests.readline, b"") if job["mode"] == "check" else job["tests"]
    for i, test in enumerate(tests):
        try:
            frame = _run_test(job, i, test)
        except Exception as e:  # noqa: BLE001  (e.g. a full tmpfs: a failed test, not a crash)
            frame = {"status": "runtime_error", "error": f"harness: {e}"}
        shutil.rmtree(os.path.join(job["workdir"], f"t{i}"), ignore_errors=True)
        frame["nonce"] = job["nonce"]
        frame["i"] = i
        _emit(frame)
    if job["mode"] != "check":  # a check-style caller has stopped listening by now
        _emit({"nonce": job["nonce"], "done": True})


def _run_test(job, i, test):
    work = os.path.join(job["workdir"], f"t{i}")
    os.mkdir(work, 0o700)
    stdin_bytes = test.encode("utf-8", "surrogateescape") if job["mode"] == "stdio" else b""
    fds = []
    try:
        in_fd = _scratch(job["workdir"], stdin_bytes, fds)
        out_fd = _scratch(job["workdir"], b"", fds)
        err_fd = _scratch(job["workdir"], b"", fds)
        val_fd = _scratch(job["workdir"], b"", fds) if job["mode"] != "stdio" else None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = _fork()
        if pid is None:
            return {"status": "runtime_error", "error": "could not fork a test process"}
        if pid == 0:
            code = 70
            try:
                code = _child(job, test, work, in_fd, out_fd, err_fd, val_fd)
            finally:
                os._exit(code)
        start = time.monotonic()
        killed = _wait_or_kill(pid, job["wall_limit"])
        _, status, usage = os.wait4(pid, 0)
        seconds = round(time.monotonic() - start, 4)
        _sweep(job, pid)
        out = _read(out_fd, job["file_bytes"] + 1)
        err = _read(err_fd, 1 << 16)[-400:].decode("utf-8", "replace")
        values = _read(val_fd, job["file_bytes"] + 1) if val_fd is not None else b""
    finally:
        for fd in fds:
            os.close(fd)
    cpu = usage.ru_utime + usage.ru_stime
    frame = {"seconds": seconds, "cpu": round(cpu, 4)}
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if killed or sig == signal.SIGXCPU or cpu >= job["time_limit"]:
        frame["status"] = "timeout"
    elif sig == signal.SIGXFSZ or code == FILE_EXIT or len(out) > job["file_bytes"] or len(values) > job["file_bytes"]:
        frame["status"] = "output_limit"
    elif code == MEMORY_EXIT:
        frame["status"] = "memory"
    elif code != 0:
        frame["status"] = "runtime_error"
        frame["error"] = f"killed by signal {sig}" if sig else _last_line(err)
        if job["mode"] == "stdio":  # what the program printed before it failed (the python tool shows it)
            frame["stdout_b64"] = base64.b64encode(out).decode("ascii")
            frame["stderr_tail"] = err
    elif job["mode"] == "stdio":
        frame["status"] = "ok"
        frame["stdout_b64"] = base64.b64encode(out).decode("ascii")
    elif not values:
        frame["status"] = "runtime_error"
        frame["error"] = "the program ended before the test's expressions were evaluated"
    else:
        frame["status"] = "ok"
        frame["values"] = values.decode("utf-8", "replace")
    return frame


def _child(job, test, work, in_fd, out_fd, err_fd, val_fd):
    """Runs in the forked child; returns its exit code. Untrusted code runs from here on."""
    os.dup2(in_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    keep = 3
    if val_fd is not None:
        os.dup2(val_fd, 3)
        keep = 4
    os.closerange(keep, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if not job["isolated"]:
        os.setsid()
    os.chdir(work)
    cpu = max(1, int(job["time_limit"] + 0.999))
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _limit(resource.RLIMIT_AS, job["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, job["file_bytes"] + 1)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a write past the limit now kills
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = ["solution.py"]
    import builtins
    import types

    builtins.exit = builtins.quit = sys.exit  # `site` would add these; -S leaves them out
    if job["mode"] == "stdio":
        module = types.ModuleType("__main__")
        sys.modules["__main__"] = module
        code = _exec_main(job["solution"], module.__dict__)
    elif job["mode"] == "check":
        code = _exec_call(job, test, {"__name__": "__solution__", "__builtins__": builtins})
    else:
        code = _exec_assert(job, test, {"__name__": "__solution__", "__builtins__": builtins})
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001  (a full disk: the output-limit check reports it)
        code = code or 1
    return code


def _exec_main(source, namespace):
    try:
        exec(compile(source, "solution.py", "exec"), namespace)  # noqa: S102
        return 0
    except SystemExit as e:
        return 0 if e.code is None or e.code == 0 else _report(e)
    except MemoryError:
        return MEMORY_EXIT
    except OSError as e:
        return FILE_EXIT if e.errno == errno.EFBIG else _report(e)
    except BaseException as e:  # noqa: BLE001  (untrusted code: every outcome is a verdict)
        return _report(e)


def _exec_assert(job, holes, namespace):
    def values():
        try:
            out = [encode(eval(compile(source, "test.py", "eval"), namespace), materialize)
                   for source, materialize in holes]
            return json.dumps({"ok": out}, allow_nan=True)
        except NotData as e:
            return json.dumps({"bad": str(e)})

    return _exec_then(job, namespace, values)


def _exec_call(job, request, namespace):
    """One request of a check-style test: what the call does (a value, an exception), or what the program
    binds to a name, is written as data for the trusted checker; the program's own failures and the
    limits end the child (a status)."""
    def values():
        req = json.loads(request)
        if "get" in req:
            return _describe(namespace, req["get"])
        name = req.get("call", job["entry_point"])
        args, kwargs = decode(req["args"]), decode(req["kwargs"])
        fn = namespace.get(name)
        if not callable(fn):
            return json.dumps({"bad": f"the program defines no function {name!r}"})
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:  # the call's outcome, sent back as a value
            if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.EFBIG):
                raise  # a limit: the exit code reports it
            return json.dumps({"raised": [str(type(e).__name__), str(e)[:1000]]})
        try:
            return json.dumps({"ok": encode(value)}, allow_nan=True)
        except NotData as e:
            return json.dumps({"bad": str(e)})

    return _exec_then(job, namespace, values)


def _describe(namespace, name):
    """What the program binds to `name`, for the checker: plain data crosses as itself, a function or
    class as the fact that it can be called (each call is a request of its own), anything else as its type."""
    if type(name) is not str or name not in namespace:
        return json.dumps({"missing": True})
    value = namespace[name]
    if callable(value):
        return json.dumps({"callable": str(type(value).__name__)})
    try:
        return json.dumps({"ok": encode(value)}, allow_nan=True)
    except NotData:
        return json.dumps({"other": str(type(value).__name__)})


def _exec_then(job, namespace, values):
    """Runs setup and solution in `namespace`, then writes `values()` (JSON text) to the values file;
    returns the child's exit code. Untrusted code runs here: every outcome is a verdict."""
    try:
        if job["setup"]:
            exec(compile(job["setup"], "setup.py", "exec"), namespace)  # noqa: S102
        exec(compile(job["solution"], "solution.py", "exec"), namespace)  # noqa: S102
        text = values()
    except MemoryError:
        return MEMORY_EXIT
    except OSError as e:
        return FILE_EXIT if e.errno == errno.EFBIG else _report(e)
    except BaseException as e:  # noqa: BLE001  (untrusted code: every outcome is a verdict)
        return _report(e)
    _write_values(text)
    return 0


def _write_values(text):
    data = text.encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(3, data):]


def _report(e):
    try:
        import traceback

        traceback.print_exception(e)
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110  (a tampered traceback module)
        pass
    return 1


def _wait_or_kill(pid, wall_limit):
    """Waits for the child up to wall_limit seconds; SIGKILLs it after. True when it was killed."""
    deadline = time.monotonic() + wall_limit
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                return True
            if pidfd is not None:
                if select.select([pidfd], [], [], left)[0]:
                    return False
            else:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return False
                time.sleep(min(left, 0.002))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _sweep(job, pid):
    """Kills whatever the test left running (daemons, new sessions) before the next test starts."""
    if not job["isolated"]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)  # as PID 1 of the namespace: everyone but us
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return  # no process left but us
        time.sleep(0.002)


def _fork():
    """fork(), retried for a while: RLIMIT_NPROC counts dead processes for a moment after a fork bomb."""
    deadline = time.monotonic() + 3.0
    while True:
        try:
            return os.fork()
        except BlockingIOError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _scratch(workdir, content, fds):
    """An anonymous file in the run's tmpfs (created, then unlinked, so no test can find it by name)."""
    path = os.path.join(workdir, f".scratch-{time.monotonic_ns()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fds.append(fd)
    os.unlink(path)
    while content:
        content = content[os.write(fd, content):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(fd, cap):
    if fd is None:
        return b""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, total = [], 0
    while total < cap:
        chunk = os.read(fd, min(1 << 20, cap - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "non-zero exit"


def _limit(which, soft, hard=None):
    hard = soft if hard is None else hard
    old_hard = resource.getrlimit(which)[1]
    if old_hard != resource.RLIM_INFINITY:
        hard = min(hard, old_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _set_dumpable(flag):
    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, int(flag), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def _emit(frame):
    data = (json.dumps(frame) + "\n").encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(1, data):]


if __name__ == "__main__":
    main()
