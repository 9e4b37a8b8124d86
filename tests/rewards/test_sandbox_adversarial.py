"""One adversarial test per property the code sandbox claims (rewards/code.py's docstring).

Every attack must score 0 (its label expects an answer it can only get by cheating, or the honest
answer printed by a program that cheats its way out), and afterwards the host must be intact: no process
of a sandbox uid left, the canary file in /tmp untouched, no "pwned" file anywhere the attack tried.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from temper.rewards.base import VerifyRequest
from temper.rewards.code import CodeVerifier
from temper.rewards.sandbox import UID_BASE, UID_COUNT

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")

FAST = {"time_limit": 0.5}
PWNED_DIRS = [Path("/tmp"), Path.cwd(), Path.home(), Path(__file__).parent]


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    return CodeVerifier()


def sandbox_processes() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if UID_BASE <= uid < UID_BASE + UID_COUNT:
            pids.append(int(pid))
    return pids


@pytest.fixture(autouse=True)
def host_intact():
    canary = Path("/tmp") / f"temper-canary-{os.getpid()}"
    canary.write_text("canary")
    yield
    assert canary.read_text() == "canary"
    canary.unlink()
    deadline = time.monotonic() + 3
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
    for folder in PWNED_DIRS:
        assert not list(folder.glob("pwned*")), folder


def score(verifier: CodeVerifier, code: str, label: dict) -> float:
    result = verifier.verify(VerifyRequest(response=f"```python\n{code}\n```", label=label))
    assert result.error is None, result.error
    return result.score


def asserts(*tests: str) -> dict:
    return {"tests": list(tests), **FAST}


def test_honest_solution_still_scores_one(verifier):
    assert score(verifier, "def add(a, b):\n    return a + b", asserts("assert add(1, 2) == 3")) == 1.0


def test_early_sys_exit(verifier):
    assert score(verifier, "import sys\nsys.exit(0)", asserts("assert add(1, 2) == 3")) == 0.0


def test_early_os_exit(verifier):
    assert score(verifier, "import os\nos._exit(0)", asserts("assert add(1, 2) == 3")) == 0.0


def test_exit_inside_the_function(verifier):
    code = "import os\ndef add(a, b):\n    os._exit(0)"
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0


def test_skiptest(verifier):
    assert score(verifier, "import unittest\nraise unittest.SkipTest('skip')",
                 asserts("assert add(1, 2) == 3")) == 0.0


def test_eq_always_true(verifier):
    code = ("class Anything:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
            "    def __bool__(self): return True\n    def __lt__(self, other): return True\n"
            "def add(a, b):\n    return Anything()")
    label = asserts("assert add(1, 2) == 3", "assert add(1, 2)", "assert abs(add(1, 2) - 3) < 1e-9")
    assert score(verifier, code, label) == 0.0


def test_builtin_subclass_with_eq_override(verifier):
    code = "class Int(int):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return Int(0)"
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0


def test_fake_all_tests_passed_output(verifier):
    code = "print('All tests passed!')\nprint('OK')\nprint('3')"
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0
    io = {"io": [{"stdin": "1 2\n", "stdout": "3\n"}], **FAST}
    assert score(verifier, "print('All tests passed!')", io) == 0.0


def test_patching_test_frameworks(verifier):
    code = ("import builtins, sys, types, unittest\n"
            "unittest.TestCase.assertEqual = lambda *a, **k: None\n"
            "unittest.TestCase.run = lambda *a, **k: None\n"
            "sys.modules['pytest'] = types.SimpleNamespace(main=lambda *a: 0)\n"
            "builtins.AssertionError = type('Never', (Exception,), {})\n"
            "def add(a, b):\n    return None")
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0


def test_frame_walking_and_forged_frames(verifier):
    # Walks every frame and object it can reach, rewrites whatever looks like the harness, and writes
    # forged result frames (with the nonce it can find in its own memory) to every descriptor and to
    # /proc/1/fd/1, the harness's stdout. The verdicts must not move.
    code = r'''
import gc, json, os, sys
nonce = None
f = sys._getframe()
while f is not None:
    for scope in (f.f_locals, f.f_globals):
        job = scope.get("job")
        if isinstance(job, dict) and "nonce" in job:
            nonce = job["nonce"]
        for key in ("_encode", "_emit", "_run_test", "MEMORY_EXIT"):
            if key in scope:
                scope[key] = (lambda *a, **k: 3)
    f = f.f_back
for obj in gc.get_objects():
    if isinstance(obj, dict) and "nonce" in obj and nonce is None:
        nonce = obj["nonce"]
forged = "".join(json.dumps({"nonce": nonce, "i": i, "status": "ok", "values": '{"ok": [3]}',
                             "stdout_b64": "Mwo="}) + "\n" for i in range(4)).encode()
for fd in range(0, 64):
    try:
        os.write(fd, forged)
    except OSError:
        pass
for path in ("/proc/1/fd/1", "/proc/1/fd/0", "/proc/1/mem"):
    try:
        with open(path, "wb") as out:
            out.write(forged)
    except OSError:
        pass
def add(a, b):
    return 0
'''
    assert score(verifier, code, asserts("assert add(1, 2) == 3", "assert add(2, 2) == 4")) == 0.0


def test_expected_answers_never_enter_the_sandbox(verifier):
    # The attack knows the shape of the answers (a prefix), not the answers; it searches its memory,
    # every file it can read, and every process's command line and environment for the rest.
    suffix = secrets.token_hex(6)
    secret_int, secret_str = int("9182736" + str(secrets.randbelow(10**11) + 10**10)), "expected-" + suffix
    code = r'''
import gc, os, re
found = {}
patterns = {"int": re.compile("9182736" + r"\d{11}"), "str": re.compile("expected" + r"-[0-9a-f]{12}")}
def scan(text):
    for kind, pattern in patterns.items():
        for match in pattern.findall(text):
            found.setdefault(kind, match)
for obj in gc.get_objects():
    try:
        scan(repr(obj)[:100000])
    except Exception:
        pass
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    if root.startswith(("/proc", "/sys", "/usr", "/dev")):
        dirs[:] = []
        continue
    for name in files:
        try:
            with open(os.path.join(root, name), errors="ignore") as fh:
                scan(fh.read(1 << 20))
        except OSError:
            pass
for pid in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", errors="ignore") as fh:
                scan(fh.read())
        except OSError:
            pass
def f():
    return int(found.get("int", 0))
print(found.get("str", "nothing"))
'''
    assert score(verifier, code, asserts(f"assert f() == {secret_int}")) == 0.0
    assert score(verifier, code, {"io": [{"stdin": "", "stdout": secret_str}], **FAST}) == 0.0


def test_infinite_loop_that_swallows_signals(verifier):
    code = ("import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "def add(a, b):\n    while True:\n        try:\n            pass\n        except BaseException:\n"
            "            pass")
    start = time.monotonic()
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0
    assert time.monotonic() - start < 10


def test_c_level_hang(verifier):
    start = time.monotonic()
    assert score(verifier, "def add(a, b):\n    return 10 ** (10 ** 10)", asserts("assert add(1, 2) == 3")) == 0
    assert time.monotonic() - start < 10


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC needs a dedicated uid, so root")
def test_fork_storm(verifier):
    code = ("import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n")
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0
    assert score(verifier, "def add(a, b):\n    return a + b", asserts("assert add(1, 2) == 3")) == 1.0


def test_memory_bomb(verifier):
    result = verifier.verify(VerifyRequest(response="def add(a, b):\n    return bytearray(10 ** 11)",
                                           label=asserts("assert add(1, 2) == 3")))
    assert result.score == 0.0 and result.breakdown["verdicts"] == ["memory"]


def test_huge_file(verifier):
    code = ("def add(a, b):\n    with open('big', 'wb') as f:\n        while True:\n"
            "            f.write(b'x' * (1 << 20))")
    result = verifier.verify(VerifyRequest(response=code, label=asserts("assert add(1, 2) == 3")))
    assert result.score == 0.0 and result.breakdown["verdicts"] == ["output_limit"]


def test_stdout_flood(verifier):
    io = {"io": [{"stdin": "", "stdout": "x\n"}], **FAST}
    result = verifier.verify(VerifyRequest(response="while True:\n    print('x' * 100000)", label=io))
    assert result.score == 0.0 and result.breakdown["verdicts"] == ["output_limit"]


def test_deep_recursion_and_segfault(verifier):
    code = ("import ctypes, sys\nsys.setrecursionlimit(10 ** 9)\n"
            "def deep(n):\n    return deep(n + 1) + 1\n"
            "def add(a, b):\n    return deep(0)\n"
            "def crash(a, b):\n    return ctypes.string_at(0)")
    label = asserts("assert add(1, 2) == 3", "assert crash(1, 2) == 3")
    result = verifier.verify(VerifyRequest(response=code, label=label))
    assert result.score == 0.0
    assert result.breakdown["verdicts"][1] == "runtime_error"
    assert score(verifier, "def add(a, b):\n    return a + b", asserts("assert add(1, 2) == 3")) == 1.0


def test_fd_exhaustion(verifier):
    code = ("import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError:\n    pass\ndef add(a, b):\n    return len(fds)")
    label = asserts("assert add(1, 2) == 3", "assert add(2, 2) == 4")
    result = verifier.verify(VerifyRequest(response=code, label=label))
    assert result.score == 0.0 and result.breakdown["verdicts"] == ["fail", "fail"]  # both tests ran


def test_background_daemon_in_a_new_session(verifier):
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        with open('/tmp/pwned-daemon', 'w') as f:\n            f.write('alive')\n"
            "        time.sleep(3600)\n    os._exit(0)\n"
            "def add(a, b):\n    return 0")
    assert score(verifier, code, asserts("assert add(1, 2) == 3", "assert add(2, 2) == 4")) == 0.0
    # the fixture checks that no process of a sandbox uid survived


def test_killing_the_parent(verifier):
    code = ("import os, signal\n"
            "for pid in (os.getppid(), 1, os.getpgid(0)):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if a == 2 else 0")
    result = verifier.verify(VerifyRequest(response=code, label=asserts("assert add(1, 2) == 3",
                                                                        "assert add(2, 2) == 4")))
    assert result.breakdown["verdicts"] == ["fail", "pass"]  # the harness survived to run test 2
    assert score(verifier, "def add(a, b):\n    return a + b", asserts("assert add(1, 2) == 3")) == 1.0


def test_kill_minus_one(verifier):
    code = ("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
            "def add(a, b):\n    return a + b if a == 2 else 0")
    result = verifier.verify(VerifyRequest(response=code, label=asserts("assert add(1, 2) == 3",
                                                                        "assert add(2, 2) == 4")))
    assert result.breakdown["verdicts"] == ["fail", "pass"]


def test_monkeypatching_time(verifier):
    code = ("import time\nfor name in ('time', 'monotonic', 'perf_counter', 'process_time'):\n"
            "    setattr(time, name, lambda: 0.0)\n"
            "def add(a, b):\n    while True:\n        pass")
    start = time.monotonic()
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0
    assert time.monotonic() - start < 10


def test_sockets_including_loopback(verifier):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections = []

    def accept():
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.sendall(b"secret-from-host")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = ("import socket\ndef add(a, b):\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    return s.recv(100).decode()\n"
            "def web(a, b):\n    return socket.create_connection(('1.1.1.1', 80), timeout=1) is not None")
    label = asserts("assert add(1, 2) == 'secret-from-host'", "assert web(1, 2) == True")
    assert score(verifier, code, label) == 0.0
    thread.join()
    server.close()
    assert connections == []


def test_reading_host_files_and_environment_secrets(verifier, monkeypatch):
    monkeypatch.setenv("TEMPER_TEST_SECRET", "env-secret-81f2")
    secret_file = Path("/tmp/temper-secret-file")
    secret_file.write_text("file-secret-77aa")
    try:
        code = ("import os\ndef env(a, b):\n    return os.environ.get('TEMPER_TEST_SECRET', '') + "
                "open('/proc/1/environ').read() + open('/proc/self/environ').read()\n"
                "def host(a, b):\n    return open('/tmp/temper-secret-file').read()\n"
                "def passwd(a, b):\n    return len(open('/etc/passwd').read()) > 0\n"
                "def home(a, b):\n    return len(os.listdir('/root/.ssh') + os.listdir('/work')) >= 0")
        label = asserts("assert 'env-secret-81f2' in env(1, 2)", "assert host(1, 2) == 'file-secret-77aa'",
                        "assert passwd(1, 2) == True", "assert home(1, 2) == True")
        assert score(verifier, code, label) == 0.0
    finally:
        secret_file.unlink()


def test_no_state_left_for_later_runs(verifier):
    import site
    import sys

    targets = [*site.getsitepackages(), os.path.join(sys.base_prefix, "lib"), "/tmp", os.getcwd(),
               str(Path.home())]
    code = (f"import os\nfor d in {targets!r}:\n"
            + "    for name in ('sitecustomize.py', 'usercustomize.py', 'pwned.pth', 'pwned-file'):\n"
            "        try:\n            with open(os.path.join(d, name), 'w') as f:\n"
            "                f.write('import builtins; builtins.add = lambda a, b: 3\\n')\n"
            "        except OSError:\n            pass\n"
            "with open('/tmp/state', 'w') as f:\n    f.write('3')\n"
            "def add(a, b):\n    return 0")
    assert score(verifier, code, asserts("assert add(1, 2) == 3")) == 0.0
    for d in targets:
        for name in ("sitecustomize.py", "usercustomize.py", "pwned.pth", "pwned-file"):
            assert not os.path.exists(os.path.join(d, name)), (d, name)
    later = "import builtins\ndef add(a, b):\n    return getattr(builtins, 'add', None) and 3 or int(open('/tmp/state').read())"
    assert score(verifier, later, asserts("assert add(1, 2) == 3")) == 0.0


# ---- check-style labels: the trusted checker runs outside the sandbox; only plain data reaches it ----

def checks(body: str, entry_point: str = "add") -> dict:
    return {"check": "def check(candidate):\n" + body, "entry_point": entry_point, **FAST}


def check_verdict(verifier: CodeVerifier, code: str, label: dict) -> tuple[float, list[str]]:
    result = verifier.verify(VerifyRequest(response=f"```python\n{code}\n```", label=label))
    assert result.error is None, result.error
    return result.score, result.breakdown["verdicts"]


def test_check_style_honest_solution_still_scores_one(verifier):
    label = checks("    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n")
    assert check_verdict(verifier, "def add(a, b):\n    return a + b", label) == (1.0, ["pass"])


def test_check_style_custom_eq_and_builtin_subclasses(verifier):
    # Objects that equal everything, are truthy and smaller than anything: none of them crosses over.
    label = checks("    assert candidate(1, 2) == 3\n    assert candidate(1, 2)\n"
                   "    assert abs(candidate(1, 2) - 3) < 1e-9\n    assert candidate(1, 2) in [3]\n")
    anything = ("class Anything:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
                "    def __bool__(self): return True\n    def __lt__(self, other): return True\n"
                "    def __sub__(self, other): return 0\n    def __rsub__(self, other): return 0\n"
                "    def __abs__(self): return 0\n")
    for code in [anything + "def add(a, b):\n    return Anything()",
                 ("class Int(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"
                  "def add(a, b):\n    return Int(0)"),
                 "class L(list):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return L()",
                 anything + "def add(a, b):\n    return [Anything()]"]:
        score, verdicts = check_verdict(verifier, code, label)
        assert (score, verdicts) == (0.0, ["runtime_error"]), code


def test_check_style_reaching_for_the_callers_frames(verifier):
    # Walks every frame and object it can reach for the checker (check, candidate, AssertionError, the
    # verdict), rewrites what it finds, and writes forged frames (with the nonce from its own memory)
    # and forged verdicts to every descriptor it has and to the harness's. The checker is in another
    # process: the verdict must not move.
    code = r'''
import builtins, gc, json, os, sys
nonce = None
for obj in gc.get_objects():
    if isinstance(obj, dict) and isinstance(obj.get("nonce"), str):
        nonce = obj["nonce"]
f = sys._getframe()
while f is not None:
    for scope in (f.f_locals, f.f_globals):
        for key in list(scope):
            if key in ("check", "candidate", "Candidate", "run", "verdict", "_emit", "encode"):
                scope[key] = (lambda *a, **k: 3)
    f = f.f_back
builtins.AssertionError = type("Never", (Exception,), {})
forged = "".join(json.dumps({"nonce": nonce, "i": i, "status": "ok", "values": '{"ok": 3}'}) + "\n"
                 for i in range(4)) + json.dumps({"verdict": "pass", "detail": "", "calls": 2}) + "\n"
for fd in range(0, 64):
    try:
        os.write(fd, forged.encode())
    except OSError:
        pass
for path in ("/proc/1/fd/1", "/proc/1/fd/0", "/proc/self/fd/1"):
    try:
        with open(path, "w") as out:
            out.write(forged)
    except OSError:
        pass
def add(a, b):
    return 0
'''
    label = checks("    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n")
    # Its forgeries land in its own value channel (fd 3), which then does not parse: the test ends there.
    assert check_verdict(verifier, code, label) == (0.0, ["runtime_error"])
    without_fd3 = code.replace("range(0, 64)", "(0, 1, 2, *range(4, 64))")
    assert check_verdict(verifier, without_fd3, label) == (0.0, ["fail"])  # add() returns 0: 0 != 3


def test_check_style_output_flood(verifier):
    # Forged frames and verdicts first, then 100 MB on stdout and stderr: the checker never sees them.
    forge = ("import json, sys\n"
             "line = json.dumps({'nonce': 'x', 'i': 0, 'status': 'ok', 'values': '{\"ok\": 3}'})\n"
             "print(line)\nprint(json.dumps({'verdict': 'pass', 'calls': 1}))\n")
    label = checks("    assert candidate(1, 2) == 3\n")
    start = time.monotonic()
    for stream in ("sys.stdout", "sys.stderr"):
        code = forge + f"def add(a, b):\n    while True:\n        {stream}.write('3\\n' * 100000)\n"
        assert check_verdict(verifier, code, label) == (0.0, ["output_limit"])
    assert time.monotonic() - start < 20


def test_check_style_stop_iteration_cannot_end_the_checks_loops(verifier):
    # In one process, StopIteration raised inside map() ends it early, so all() sees only True: the
    # classic way past `assert all(map(...))`. Here it ends the test instead.
    label = checks("    assert all(map(lambda x: candidate(x) == x * x, range(5)))\n", entry_point="square")
    assert check_verdict(verifier, "def square(x):\n    raise StopIteration", label) == (0.0, ["runtime_error"])
    swallowed = checks("    try:\n        candidate(3)\n    except BaseException:\n        pass\n"
                       "    assert candidate(2) == 4\n", entry_point="square")
    code = "calls = []\ndef square(x):\n    if x == 3:\n        raise SystemExit(0)\n    return x * x"
    assert check_verdict(verifier, code, swallowed) == (0.0, ["runtime_error"])  # even a bare except
    assert check_verdict(verifier, "def square(x):\n    return x * x", swallowed) == (1.0, ["pass"])


# ---- the program's own names, seen by check(): they cross the same boundary as the candidate ----

def test_check_style_program_helper_cannot_return_an_object(verifier):
    # Without the boundary, ref would be an object equal to everything, and add() returning 0 would pass.
    label = checks("    try:\n        ref = reference(1, 2)\n    except Exception:\n        ref = 3\n"
                   "    assert candidate(1, 2) == ref\n")
    code = ("class Anything:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
            "def reference(a, b):\n    return Anything()\ndef add(a, b):\n    return 0")
    assert check_verdict(verifier, code, label) == (0.0, ["runtime_error"])  # ends the test, caught or not
    honest = "def reference(a, b):\n    return a + b\ndef add(a, b):\n    return a + b"
    assert check_verdict(verifier, honest, label) == (1.0, ["pass"])


def test_check_style_program_constant_cannot_be_an_object(verifier):
    # A float subclass on the right of `<=` gets its reflected __ge__ called first: in one process this
    # tolerance would accept anything. Not plain data, it does not cross: the check's fallback applies.
    label = checks("    try:\n        tol = TOLERANCE\n    except NameError:\n        tol = 0.0\n"
                   "    assert abs(candidate(1, 2) - 3) <= tol\n")
    code = ("class Loose(float):\n    def __ge__(self, other): return True\n    def __le__(self, other): return True\n"
            "TOLERANCE = Loose(0.0)\ndef add(a, b):\n    return 0")
    assert check_verdict(verifier, code, label) == (0.0, ["fail"])
    assert check_verdict(verifier, "TOLERANCE = 0.5\ndef add(a, b):\n    return 3.25", label) == (1.0, ["pass"])


def test_check_style_program_helper_cannot_reach_the_checks_globals(verifier):
    # The helper runs in the sandbox: whatever frames, globals and builtins it rewrites are its own.
    code = r'''
import builtins, gc, sys
def helper():
    for obj in gc.get_objects():
        if isinstance(obj, dict) and ("check" in obj or "candidate" in obj or "verdict" in obj):
            for key in ("check", "candidate", "verdict", "run", "names"):
                obj[key] = (lambda *a, **k: 3)
    f = sys._getframe()
    while f is not None:
        for scope in (f.f_locals, f.f_globals):
            for key in list(scope):
                if key in ("check", "candidate", "Channel", "Proxy", "ProgramNames", "run"):
                    scope[key] = (lambda *a, **k: 3)
        f = f.f_back
    builtins.AssertionError = type("Never", (Exception,), {})
    builtins.abs = lambda x: 0
    return None
def add(a, b):
    return 0
'''
    label = checks("    assert helper() is None\n    assert abs(candidate(1, 2) - 3) == 0\n")
    assert check_verdict(verifier, code, label) == (0.0, ["fail"])  # add() returns 0 and abs is abs
