"""The Ray bootstrap: join the cluster a user started, or start a private one that nothing else joins.

A run joins the cluster of `ray job submit` / `ray start` when there is one and starts its own otherwise.
A private cluster keeps its files (and its address) in its own temp folder, so another `temper train` on the
same machine never joins it by accident and dies when this run stops it; teardown (temper/cleanup.py) stops
it and removes the folder. The console keeps temper's own lines: engine warnings and loader output stay in
the worker logs of the Ray session (`ray_logs_dir`, copied to RUN_DIR/ray-logs for a private cluster), and
Ray's start-up notices that the user cannot act on are not printed at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import threading
from typing import Any

from temper import resources
from temper.cleanup import Teardown, descendants, kill_survivors
from temper.configs.load import ConfigError
from temper.configs.schema import RunConfig


def connect_ray(cfg: RunConfig, teardown: Teardown, log=print) -> bool:
    """Join the cluster of `ray job submit` / `ray start` when there is one (ray.address = "local": never);
    else start a private one. Returns True for a private cluster.

    A private cluster keeps its files (and its address) in its own temp folder, so another `temper train`
    on the same machine never joins it by accident and dies when this run stops it; teardown removes it."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # The console shows temper's own lines; engine warnings and loader output stay in the worker logs
    # (see `ray_logs_dir`). Errors in actors still reach the driver as exceptions.
    quiet = {"log_to_driver": False, "logging_level": "WARNING"}
    target = None if address == "local" else address or ray_start_cluster()
    if target:
        try:
            with _sigterm_kept():
                ray.init(address=target, **quiet)
            return False
        except ConnectionError:
            if address:
                raise
    _start_private_cluster(cfg, teardown, quiet, log)
    return True


def ray_start_cluster() -> str | None:
    """The address of the cluster `ray start` last started on this machine (Ray's own record of it), or None.

    Not ray.init(address="auto"): that also joins any Ray cluster it finds running here, another
    `temper train`'s private one included, which then dies under this run when that run ends."""
    from ray._private.utils import read_ray_address  # where `ray start` records it; RAY_TMPDIR respected

    return read_ray_address()


@contextlib.contextmanager
def _sigterm_kept():
    """ray.init replaces the SIGTERM handler (with sys.exit, and its core worker's with one that aborts the
    process): put the caller's back, so `kill` and `ray job stop` clean up as Ctrl-C does."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _start_private_cluster(cfg: RunConfig, teardown: Teardown, quiet: dict[str, Any], log) -> None:
    import ray

    try:  # CPUs are known before the cluster starts: a run that can never fit is refused at once
        resources.check_local(cfg)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    # The driver's pid in the name tells one run's cluster folder from another's on a shared machine.
    teardown.private_ray = tempfile.mkdtemp(prefix=f"temper-ray-{os.getpid()}-", dir="/tmp")
    private_cluster_auth()
    for attempt in (1, 2):
        before = descendants()
        try:
            with _sigterm_kept():
                ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=teardown.private_ray, **quiet)
            return
        except Exception as e:
            # Ray gives its raylet a fixed 30 s to register; a busy machine can miss that once.
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            log("the local Ray cluster missed Ray's 30 s start-up window (a busy machine?); starting it again")
            ray.shutdown()
            kill_survivors([p for p in descendants() if p not in before], grace_s=1)


def private_cluster_auth() -> None:
    """Token authentication for a private cluster, set in the environment (every Ray process inherits it).

    Ray >= 2.59 secures local clusters with a token and saves it to ~/.ray/auth_token, where a later
    `ray start --head` would pick it up and `ray job submit` would then be refused. A per-run token in the
    environment keeps this private cluster secured without leaving that file behind. The mode is set too:
    with RAY_AUTH_MODE unset, ray.init warns on every run that it "enabled token authentication" (Ray's
    authentication_token_setup.py), a WARNING nobody can act on; set explicitly, Ray respects it silently.
    A user's own RAY_AUTH_MODE (e.g. "disabled") wins."""
    from ray._raylet import Config

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"].lower() == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    Config.initialize("")  # this process read its config when ray was imported: as Ray does when it sets the mode


def ray_logs_dir() -> str | None:
    """Where this Ray session writes every actor's stdout/stderr (worker-*.out/.err), on the head node."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # no public API names the session folder
    return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None
