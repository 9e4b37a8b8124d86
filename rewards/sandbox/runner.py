"""Runs the sandbox harness (harness.py beside this file) on a job, under bubblewrap, and kills it on time.

Why a module of its own: its callers decide *what* to run and judge the result; this file only knows
*how* to run it so that nothing can get out. One call is one sandbox: a fresh user, PID, network,
mount, IPC, UTS and cgroup namespace, a read-only view of the system libraries and of the Python install,
a size-limited tmpfs as /tmp (the working directory), no environment, no capabilities, no further user
namespaces, and a dedicated unprivileged uid taken in turn from a range of 4096, so RLIMIT_NPROC counts
only this run's processes (the kernel releases a dead process's count late, so uids are not reused
quickly). The harness is PID 1 of the namespace: when it exits or is killed the kernel kills every
process left inside. The parent enforces a wall-clock deadline by SIGKILLing bwrap's process group
(`--die-with-parent` takes the namespace down with it) and caps what it reads.

Running as root, bwrap is started as the sandbox uid (not as root: RLIMIT_NPROC does not apply to
uid 0, and a root-started bwrap keeps capabilities). An interpreter under a 0700 home folder is
unreadable to that uid, so the Python install is then mirrored once with hard links into a root-owned
cache folder (TEMPER_SANDBOX_CACHE, default /var/cache/temper) and bound read-only at its real path.

`isolation="unsafe-subprocess"` runs the same harness as a plain child process (same rlimits, a fresh
temporary folder, a new session, an empty environment) and isolates nothing else. It exists for
machines without bubblewrap and for the benchmark that measures what safety costs.

`run` is one job in, frames out (`read_frames` keeps the genuine ones). `session` keeps the sandbox
running for an interactive job (the check-style tests of rewards/code.py): the caller writes requests
and reads frames itself. `run_program` runs one plain program and returns what it printed (the python
tool), so that callers of that kind need not know the job and frame formats.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Isolation = Literal["bwrap", "unsafe-subprocess"]
UID_BASE = int(os.environ.get("TEMPER_SANDBOX_UID_BASE", "1800000"))
UID_COUNT = 4096


def standalone_source(script: Path) -> str:
    """The source of `script`, runnable as `python -c` where temper is not importable: the one module it
    may import by bare name, `plain_data` (this folder's codec, stdlib only), is defined first."""
    codec = (Path(__file__).parent / "plain_data.py").read_text()
    prelude = ("import sys as _sys, types as _types\n"
               "_sys.modules['plain_data'] = _module = _types.ModuleType('plain_data')\n"
               f"exec(compile({codec!r}, 'plain_data.py', 'exec'), _module.__dict__)\n"
               "del _sys, _types, _module\n")
    return prelude + script.read_text()


HARNESS_SOURCE = standalone_source(Path(__file__).parent / "harness.py")
WORKDIR = "/tmp"  # inside the sandbox
SESSION_GRACE_S = 1.0  # how long a finished session's harness gets to exit on its own before SIGKILL
_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)  # sandboxes running at once, process-wide
_uid_lock = threading.Lock()
_uid_next = 0


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot start a sandbox on this machine."""


@dataclass(frozen=True)
class RunOutcome:
    """What came back from one sandbox run.

    stdout: the harness's frames (JSON lines), at most `stdout_cap` bytes.
    stderr_tail: the last bytes of bwrap's and the harness's own stderr (diagnostics only).
    timed_out: the wall-clock deadline killed the run. overflowed: stdout passed its cap and was killed.
    returncode: bwrap's exit status (negative: killed by that signal). seconds: wall time of the run.
    """

    stdout: bytes
    stderr_tail: str
    timed_out: bool
    overflowed: bool
    returncode: int
    seconds: float


@dataclass(frozen=True)
class ProgramOutcome:
    """What one plain program did in a sandbox (`Sandbox.run_program`).

    status: "ok", "timeout", "memory", "output_limit" or "runtime_error".
    stdout: what it printed (invalid UTF-8 replaced), also when it failed.
    error: why it failed ("" when ok): the tail of its stderr (a traceback's last lines) or the reason.
    """

    status: str
    stdout: str
    error: str


class Sandbox:
    """Starts sandboxes. Thread-safe; at most os.cpu_count() run at once in this process."""

    def __init__(self, isolation: Isolation = "bwrap", tmpfs_mb: int = 256) -> None:
        self.isolation = isolation
        self.tmpfs_bytes = tmpfs_mb << 20
        self.as_root = os.geteuid() == 0
        if isolation == "bwrap":
            self.bwrap = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")
            if self.bwrap is None:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) is not installed, so untrusted code will not be run. Install it "
                    "(Debian/Ubuntu: apt-get install bubblewrap), or opt into running code WITHOUT "
                    "isolation with allow_unsandboxed='unsafe-subprocess'."
                )
            self.python_source, self.prefix = _python_root(self.as_root)
        else:
            self.bwrap = None
            self.prefix = os.path.realpath(sys.base_prefix)
        self.python = os.path.realpath(sys.executable)  # the install's binary, not the venv's link
        if isolation == "bwrap":
            self._probe()

    @property
    def nproc(self) -> int | None:
        """RLIMIT_NPROC for the sandbox uid: only meaningful with a dedicated uid (root parent)."""
        return 24 if self.isolation == "bwrap" and self.as_root else None

    def run(self, job: dict[str, Any], *, wall_timeout: float, stdout_cap: int,
            cancel: threading.Event | None = None) -> RunOutcome:
        """Runs the harness on `job` (see harness.py), killing everything after wall_timeout s, or
        as soon as `cancel` is set (then the outcome reads as timed out)."""
        with self._started(job, subprocess.PIPE) as (proc, payload, uid):
            start = time.monotonic()
            out, err = bytearray(), bytearray()
            timed_out = overflowed = False
            try:
                timed_out, overflowed = _pump(proc, payload, out, err, start + wall_timeout, stdout_cap, cancel)
            finally:
                if timed_out or overflowed or proc.poll() is None:
                    kill_group(proc)
                proc.wait()
                if uid is not None and (timed_out or overflowed or proc.returncode != 0):
                    _kill_uid(uid)
            return RunOutcome(bytes(out[:stdout_cap]), err[-2000:].decode("utf-8", "replace"), timed_out,
                              overflowed, proc.returncode, time.monotonic() - start)

    def run_program(self, code: str, *, time_limit_s: float, memory_mb: int, output_bytes: int,
                    cancel: threading.Event | None = None) -> ProgramOutcome:
        """Runs `code` as a script (stdin empty) in a fresh sandbox: CPU limit time_limit_s, wall-clock
        twice that, address space memory_mb, at most output_bytes of output. `cancel` kills it early."""
        nonce = secrets.token_hex(8)
        job = {"nonce": nonce, "mode": "stdio", "solution": code, "setup": "", "tests": [""],
               "time_limit": time_limit_s, "wall_limit": time_limit_s * 2, "memory_bytes": memory_mb << 20,
               "file_bytes": output_bytes, "nofile": 64}
        run = self.run(job, wall_timeout=time_limit_s * 2 + 5, stdout_cap=output_bytes * 2 + 65536, cancel=cancel)
        frame = read_frames(run.stdout, nonce, 1).get(0)
        if frame is None:
            return ProgramOutcome("timeout" if run.timed_out else "runtime_error", "",
                                  "the sandbox timed out" if run.timed_out else "the sandbox returned nothing")
        try:
            out = base64.b64decode(frame.get("stdout_b64", ""), validate=True).decode("utf-8", "replace")
        except ValueError:
            out = ""
        error = "" if frame["status"] == "ok" else str(frame.get("stderr_tail") or frame.get("error") or "")
        return ProgramOutcome(frame["status"], out, error)

    @contextmanager
    def session(self, job: dict[str, Any]) -> Iterator[subprocess.Popen]:
        """A running sandbox for an interactive job ("check" mode): the harness has read `job` and now
        answers each request line written to `proc.stdin` with a frame on `proc.stdout`. The caller does
        that I/O (or hands the pipes to another process) within its own deadline; leaving the block
        kills everything inside, whatever state it is in."""
        with self._started(job, subprocess.DEVNULL) as (proc, payload, uid):
            try:
                proc.stdin.write(payload + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass  # bwrap failed to start: the caller reads EOF
            try:
                yield proc
            finally:
                for f in (proc.stdin, proc.stdout):
                    f.close()
                try:  # the harness exits by itself at the end of its requests (when no one holds the pipe)
                    proc.wait(SESSION_GRACE_S)
                except subprocess.TimeoutExpired:
                    kill_group(proc)  # mid-request: the harness (init of the namespace) dies with bwrap
                    proc.wait()
                if uid is not None and proc.returncode != 0:
                    _kill_uid(uid)

    @contextmanager
    def _started(self, job: dict[str, Any], stderr: int) -> Iterator[tuple[subprocess.Popen, bytes, int | None]]:
        """The harness started (not yet fed) under a sandbox slot: (process, job as bytes, sandbox uid)."""
        job = dict(job, workdir=WORKDIR if self.isolation == "bwrap" else "", nproc=self.nproc,
                   isolated=self.isolation == "bwrap")
        with _SLOTS, tempfile.TemporaryDirectory(prefix="temper-unsafe-") as tmp:
            if self.isolation == "bwrap":
                argv, uid, cwd = self._bwrap_argv(), (_next_uid() if self.as_root else None), "/"
            else:
                job["workdir"] = tmp
                argv, uid, cwd = [self.python, "-I", "-S", "-B", "-c", HARNESS_SOURCE], None, tmp
            payload = json.dumps(job).encode("utf-8", "surrogatepass")
            ids: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env={},
                                    cwd=cwd, start_new_session=True, close_fds=True, **ids)
            try:
                yield proc, payload, uid
            finally:
                if proc.poll() is None:
                    kill_group(proc)
                    proc.wait()
                for f in (proc.stdin, proc.stdout, proc.stderr):
                    if f is not None and not f.closed:
                        f.close()

    def _bwrap_argv(self) -> list[str]:
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--as-pid-1", "--clearenv", "--hostname", "sandbox"]
        if self.as_root:
            argv += ["--cap-drop", "ALL"]
        argv += _system_binds()
        argv += ["--ro-bind", self.python_source, self.prefix,
                 "--proc", "/proc", "--dev", "/dev",
                 "--size", str(self.tmpfs_bytes), "--tmpfs", WORKDIR,
                 "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR,
                 self.python, "-I", "-S", "-B", "-c", HARNESS_SOURCE]
        return argv

    def _probe(self) -> None:
        """Starts one sandbox so a broken setup fails loudly at construction, not as zero rewards."""
        job = {"nonce": "probe", "mode": "stdio", "solution": "print(6 * 7)", "setup": "", "tests": [""],
               "time_limit": 5.0, "wall_limit": 10.0, "memory_bytes": 512 << 20, "file_bytes": 4096,
               "nofile": 64}
        got = self.run(job, wall_timeout=20.0, stdout_cap=1 << 16)
        if b'"stdout_b64": "NDIK"' not in got.stdout:
            raise SandboxUnavailable(f"bubblewrap could not start a sandbox here (exit {got.returncode}): "
                                     f"{got.stderr_tail.strip()[-500:] or got.stdout[-300:]!r}")


def read_frames(stdout: bytes, nonce: str, n: int) -> dict[int, dict[str, Any]]:
    """The harness's genuine frames, by test index: complete lines with this run's nonce, in order, at most
    n; anything else is ignored (a forged or cut-off line cannot shift or add a verdict)."""
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


def _pump(proc: subprocess.Popen, payload: bytes, out: bytearray, err: bytearray, deadline: float,
          cap: int, cancel: threading.Event | None = None) -> tuple[bool, bool]:
    """Writes the job and reads both pipes until EOF, the deadline, `cap` stdout bytes, or `cancel`."""
    sel = selectors.DefaultSelector()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    view = memoryview(payload)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                return True, False
            for key, _ in sel.select(min(left, 1.0 if cancel is None else 0.05)):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(key.fd, view[:1 << 16])
                    except (BrokenPipeError, BlockingIOError) as e:
                        n = 0 if isinstance(e, BlockingIOError) else len(view)
                    view = view[n:]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = key.data
                buf += chunk
                if buf is out and len(out) > cap:
                    return False, True
                if buf is err and len(err) > 1 << 16:
                    del err[: len(err) - (1 << 15)]
        return False, False
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if not f.closed:
                f.close()


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_uid(uid: int) -> None:
    """Belt and braces after an abnormal end: SIGKILL any process still running as the sandbox uid.

    Zombies do not count: they run nothing (a killed harness waits as one for the host's init to reap it).
    """
    for _ in range(50):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
                real_uid, zombie = int(fields["Uid"].split()[0]), fields["State"].split()[0] == "Z"
            except (OSError, KeyError, IndexError, ValueError):
                continue
            if real_uid == uid and not zombie:
                found = True
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return
        time.sleep(0.02)
    log.warning("processes of sandbox uid %d survived SIGKILL", uid)


def _next_uid() -> int:
    global _uid_next
    with _uid_lock:
        uid = UID_BASE + _uid_next % UID_COUNT
        _uid_next += 1
    return uid


def _system_binds() -> list[str]:
    """Read-only shared libraries, nothing else of the host (no /etc, /home, /root, /work, /var)."""
    argv: list[str] = []
    for path in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    return argv


def _world_traversable(path: str) -> bool:
    p = Path(path)
    return all(os.stat(d).st_mode & 0o005 == 0o005 for d in [*reversed(p.parents), p])


_mirror_lock = threading.Lock()


@lru_cache(maxsize=1)
def _python_root(as_root: bool) -> tuple[str, str]:
    """(host folder to bind, path it takes inside) for the running interpreter's install."""
    prefix = os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(sys.executable)
    if not exe.startswith(prefix + os.sep):
        raise SandboxUnavailable(f"the interpreter {exe} is not inside its prefix {prefix}")
    if not as_root or _world_traversable(prefix):
        return prefix, prefix
    with _mirror_lock:
        return _mirror(prefix, exe), prefix


def _mirror(prefix: str, exe: str) -> str:
    """A hard-link copy of the parts of the install the sandbox needs, readable by any uid."""
    stdlib = f"lib/python{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(f"{prefix}|{sys.version}|{os.stat(exe).st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("TEMPER_SANDBOX_CACHE", "/var/cache/temper"))
    target = cache / f"python-{key}"
    if (target / stdlib / "os.py").exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    skip = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in skip and folder == os.path.join(prefix, stdlib)]

    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        tmp.chmod(0o755)
        (tmp / "lib").mkdir(mode=0o755)
        (tmp / os.path.dirname(os.path.relpath(exe, prefix))).mkdir(mode=0o755, parents=True, exist_ok=True)
        _link_or_copy(exe, str(tmp / os.path.relpath(exe, prefix)))
        for lib in Path(prefix, "lib").glob("libpython*"):
            if lib.is_file():
                _link_or_copy(str(lib), str(tmp / "lib" / lib.name))
        shutil.copytree(os.path.join(prefix, stdlib), tmp / stdlib, ignore=ignore, symlinks=True,
                        copy_function=_link_or_copy)
        os.rename(tmp, target)
    except OSError:
        if not (target / stdlib / "os.py").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
