"""What a run asks of the cluster, against what the cluster can ever offer: checked before anything waits.

Ray queues an actor that no node can hold and waits for it silently, forever: two rollout workers and the
learner at one CPU each on a two-core machine printed nothing for 8 minutes. So the driver compares the
asks (CPUs/GPUs per role x count) with the nodes' totals first. Only necessary conditions are tested (each
actor fits some node; the sums fit the cluster), so a run this refuses could never have started. On an
autoscaling cluster the limit is what its node groups can grow to; while it grows, the driver waits with a
message and gives up after `ray.resource_wait_s`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from temper.configs.schema import RunConfig


@dataclass(frozen=True)
class Ask:
    role: str
    count: int
    count_field: str | None
    resources: dict[str, tuple[float, str]]
    """Ray resource ("CPU", "GPU") -> (per actor, the config field that sets it)."""


def asks(cfg: RunConfig) -> list[Ask]:
    r = cfg.ray
    n = cfg.learner.world_size
    worker = {"CPU": (r.worker_cpus, "ray.worker_cpus"), "GPU": (r.worker_gpus, "ray.worker_gpus")}
    worker |= {k: (v, f"ray.worker_resources.{k}") for k, v in r.worker_resources.items()}
    learner = {"CPU": (r.learner_cpus, "ray.learner_cpus"), "GPU": (r.learner_gpus, "ray.learner_gpus")}
    learner |= {k: (v, f"ray.learner_resources.{k}") for k, v in r.learner_resources.items()}
    return [
        Ask("rollout worker", cfg.rollout.num_workers, "rollout.num_workers", worker),
        Ask("learner rank" if n > 1 else "learner", n, "learner.world_size" if n > 1 else None, learner),
    ]


def _num(x: float) -> str:
    return f"{x:g}"


def _total_terms(all_asks: list[Ask], resource: str) -> tuple[float, str]:
    total, terms = 0.0, []
    for a in all_asks:
        per, field = a.resources.get(resource, (0.0, ""))
        if per <= 0:
            continue
        total += a.count * per
        terms.append(f"{a.count_field} = {a.count} x {field} = {_num(per)}" if a.count_field else f"{field} = {_num(per)}")
    return total, " + ".join(terms)


def shortfall(all_asks: list[Ask], nodes: list[dict[str, float]], cluster_hint: str = "") -> str | None:
    """Why `nodes` (each a resource -> total dict) can never hold every ask; None when they might.
    Custom resources (ray.worker_resources / learner_resources) are checked like CPUs and GPUs."""
    custom = sorted({k for a in all_asks for k in a.resources} - {"CPU", "GPU"})
    for resource, unit in (("CPU", "CPUs"), ("GPU", "GPUs"), *((k, f"of resource {k!r}") for k in custom)):
        have = sum(n.get(resource, 0.0) for n in nodes)
        need, terms = _total_terms(all_asks, resource)
        if need > have + 1e-9:
            where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
            more = unit if resource in ("CPU", "GPU") else f"nodes with {resource!r} (ray start --resources)"
            return (f"this run asks for {_num(need)} {unit} ({terms}) but the cluster has {_num(have)} "
                    f"({where}{cluster_hint}). Lower those fields, or give the cluster more {more}.")
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        for a in all_asks:
            per, field = a.resources.get(resource, (0.0, ""))
            if per > largest + 1e-9:
                return (f"one {a.role} asks for {_num(per)} {unit} ({field}) but the largest node has "
                        f"{_num(largest)}{cluster_hint}. Lower {field}.")
    return None


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def autoscaling_limit() -> list[dict[str, float]] | None:
    """The nodes an autoscaling cluster can grow to (one dict per possible node), or None when it cannot grow."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler state (a local or static cluster)
        return None
    if config is None or not any(g.max_count == -1 or g.max_count > g.min_count for g in config.node_group_configs):
        return None
    nodes = []
    for g in config.node_group_configs:
        count = g.max_count if g.max_count >= 0 else 64  # "unlimited": enough for any one run's check
        nodes += [dict(g.resources)] * count
    return nodes


def check_local(cfg: RunConfig) -> None:
    """Before starting a private cluster: its CPUs are ray.num_cpus (or all cores); GPUs are counted once it
    is up (`check`). Raises RuntimeError like `check`."""
    import os

    cpus = cfg.ray.num_cpus if cfg.ray.num_cpus is not None else os.cpu_count() or 1
    hint = f"; ray.num_cpus = {cfg.ray.num_cpus}" if cfg.ray.num_cpus is not None else f"; {cpus} cores here"
    problem = shortfall(asks(cfg), [{"CPU": float(cpus), "GPU": float("inf")}], hint)
    if problem is not None:
        raise RuntimeError(problem)


def check(cfg: RunConfig, private_cluster: bool, log=print, sleep=time.sleep) -> None:
    """Return when the cluster can hold the run; raise RuntimeError naming the fields when it never can,
    or when an autoscaling cluster has not grown enough within ray.resource_wait_s."""
    hint = f"; ray.num_cpus = {cfg.ray.num_cpus}" if private_cluster and cfg.ray.num_cpus is not None else ""
    all_asks = asks(cfg)
    problem = shortfall(all_asks, alive_nodes(), hint)
    if problem is None:
        return
    limit = None if private_cluster else autoscaling_limit()
    if limit is None or shortfall(all_asks, limit) is not None:
        raise RuntimeError(problem)
    deadline = time.monotonic() + cfg.ray.resource_wait_s
    next_note = 0.0
    while (problem := shortfall(all_asks, alive_nodes())) is not None:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"{problem} The cluster autoscales but did not grow enough within "
                               f"ray.resource_wait_s = {_num(cfg.ray.resource_wait_s)}s.")
        if now >= next_note:
            log(f"waiting for the autoscaler ({_num(deadline - now)}s left of ray.resource_wait_s): {problem}")
            next_note = now + 30
        sleep(5)


