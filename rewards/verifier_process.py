"""One killable process that runs verifiers: how the rubric puts a hard timeout on a verifier call.

Why processes and not SIGALRM: an alarm only fires on the main thread (rollout workers score from
threads inside an async Ray actor) and cannot interrupt C-level work (a sympy simplify stuck in a big
integer power). So each of these is a spawned process (fork is unsafe in a multi-threaded actor) that
holds the rubric's verifiers; the parent sends it one (term, request) at a time and waits at most
`timeout_s`. Past that the process is SIGKILLed and respawned on the next call, and the sample scores 0
with the reason. It exits on stop(), when the parent's pipe closes, and (watched by a thread) when the
parent dies. rewards/rubric.py decides which calls come here and how many processes there are.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from temper.configs.schema import RewardsConfig
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult

STARTUP_TIMEOUT_S = 120.0  # importing sympy & co. in a fresh process; not part of any sample's budget


def run_verifier(verifier: Verifier, request: VerifyRequest) -> VerifyResult:
    """Call a verifier, turning its exceptions into a zero score with the reason."""
    start = time.perf_counter()
    try:
        res = verifier.verify(request)
        if not isinstance(res, VerifyResult):
            raise TypeError(f"verify() returned {type(res).__name__}, expected VerifyResult")
        return res
    except Exception as e:  # noqa: BLE001 -- the one place exceptions become rewards: a zero with the reason
        return VerifyResult(0.0, {}, f"{type(e).__name__}: {e}", time.perf_counter() - start)


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn: Any, cfg_json: str, indices: list[int], parent_pid: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        from temper.rewards.registry import build_verifier

        cfg = RewardsConfig.model_validate_json(cfg_json)
        verifiers = {i: build_verifier(cfg.terms[i].verifier, cfg.terms[i].params) for i in indices}
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which fails the calls
        conn.send(("ready", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, request = msg
        result = run_verifier(verifiers[index], request)
        try:
            conn.send(result)
        except Exception as e:  # noqa: BLE001 -- e.g. a breakdown value that does not pickle
            conn.send(VerifyResult(0.0, {}, f"result not serialisable: {type(e).__name__}: {e}", result.seconds))


class VerifierProcess:
    """One killable scoring process holding the verifiers of terms `indices`; respawned on the next call
    after a timeout or crash."""

    def __init__(self, ctx: Any, cfg_json: str, indices: list[int]) -> None:
        self.ctx, self.cfg_json, self.indices = ctx, cfg_json, indices
        self.proc: Any = None
        self.conn: Any = None
        self.ready = False

    def start(self) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker_main, args=(child_conn, self.cfg_json, self.indices, os.getpid()), daemon=True
        )
        self.proc.start()
        child_conn.close()
        self.conn, self.ready = parent_conn, False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
            self.conn.close()
        self.proc = self.conn = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if not self.ready:  # still importing (or never asked): nothing to finish, so do not wait for it
            self.kill()
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(2)
        self.kill()

    def call(self, index: int, request: VerifyRequest, timeout_s: float) -> tuple[VerifyResult, str]:
        """(result, outcome) with outcome in ok / timeout / crash."""
        if self.proc is None or not self.proc.is_alive():
            self.kill()
            self.start()
        if not self.ready:
            if not self.conn.poll(STARTUP_TIMEOUT_S):
                self.kill()
                return VerifyResult(0.0, {}, "scoring worker did not start"), "crash"
            _, err = self.conn.recv()
            if err is not None:
                self.kill()
                return VerifyResult(0.0, {}, f"scoring worker failed to start: {err}"), "crash"
            self.ready = True
        start = time.perf_counter()
        try:
            self.conn.send((index, request))
            if self.conn.poll(timeout_s):
                return self.conn.recv(), "ok"
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self.kill()
            return VerifyResult(0.0, {}, f"scoring worker crashed (exit code {code})",
                                time.perf_counter() - start), "crash"
        self.kill()
        return VerifyResult(0.0, {}, f"timeout after {timeout_s}s", time.perf_counter() - start), "timeout"
