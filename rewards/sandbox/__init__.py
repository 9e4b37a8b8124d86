"""The code sandbox: runs untrusted Python under bubblewrap and says what happened, nothing more.

A leaf on purpose: it imports nothing else of temper, so the code verifier (rewards/code.py), which
decides what to run and judges it, and the `python` tool (environments/python_tool.py), which shows
the model what its code printed, share one sandbox and cannot reach into each other.

  runner.py      starts one sandbox per job and kills it on time (`Sandbox.run`, `Sandbox.session`,
                 `Sandbox.run_program` for a plain program)
  harness.py     the program that runs inside (stdlib only): forks a limited child per test or call
  plain_data.py  what may cross the boundary: strict builtin data, as tagged JSON

Isolation. Every job runs in its own bubblewrap sandbox: new user/PID/network/mount/IPC/UTS/cgroup
namespaces (no network at all, loopback included), read-only system libraries and Python install and
nothing else of the host, a size-limited private tmpfs as working folder, read-only / and /dev, an
empty environment, no capabilities, no nested user namespaces, a dedicated unprivileged uid, dies with
its parent. Inside, `python -I -S -B` (no site, no .pth, no sitecustomize, no bytecode writes). Each
test runs in a fresh forked child with rlimits (CPU seconds, address space, file size, open files,
processes) and a wall-clock limit enforced by SIGKILL; the whole sandbox has a wall-clock deadline
enforced from outside by SIGKILL, and the PID namespace dies with its init.

The result channel is the harness's stdout. The harness (PID 1 of the namespace, which the kernel
protects from signals sent from inside) never runs untrusted code, is non-dumpable (no ptrace, no
/proc/1/mem, no /proc/1/fd for the same uid without capabilities); test children get no descriptor
of it. Frames carry a per-run random nonce and must arrive complete and in order, else they are
ignored (`read_frames`); the nonce is defence in depth only (forked children inherit a copy of it).
Values cross as strict builtin data only (exact int/float/complex/str/bytes/bool/None/list/tuple/set/
frozenset/dict, no subclasses), so no `__eq__` override survives the trip.

Nothing stays behind: the sandbox's files live in its tmpfs, its processes die with its PID namespace
(and are SIGKILLed by uid after an abnormal end), and the Python it runs ignores site/user state.
Without bubblewrap, `Sandbox("bwrap")` raises SandboxUnavailable; `Sandbox("unsafe-subprocess")` runs
the same harness in a plain subprocess and isolates nothing (callers must opt in and warn).

What is NOT isolated (residual risks):
- CPU time and memory of the machine as a whole: rlimits are per process, so up to ~20 processes of one
  sandbox can each use the memory limit (no cgroup caps); a sandbox can also slow its neighbours.
- Kernel attack surface: no seccomp filter; a kernel bug reachable from an unprivileged user namespace
  (or the shared libraries, /proc, /dev/null, /dev/urandom...) is not defended against.
- Everything under /usr/lib (and the Python standard library) is readable inside.
- Only the standard library is importable (no numpy): it is the interpreter's own stdlib, not the venv.
- Timing is wall-clock and CPU, so a loaded machine can turn a borderline program into a timeout.
- Host state made by trusted code: running as root with the interpreter under a 0700 home, a hard-link
  mirror of the Python install is created once in /var/cache/temper (root-owned, read-only inside).
"""

from temper.rewards.sandbox.plain_data import NotData, decode, encode
from temper.rewards.sandbox.runner import (
    UID_BASE,
    UID_COUNT,
    ProgramOutcome,
    RunOutcome,
    Sandbox,
    SandboxUnavailable,
    kill_group,
    read_frames,
    standalone_source,
)

__all__ = ["UID_BASE", "UID_COUNT", "NotData", "ProgramOutcome", "RunOutcome", "Sandbox", "SandboxUnavailable",
           "decode", "encode", "kill_group", "read_frames", "standalone_source"]
