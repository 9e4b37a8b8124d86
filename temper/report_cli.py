"""`temper report RUN_DIR [RUN_DIR ...]`: a run's picture and headline numbers again, from its files alone.

Reads what every run leaves in its folder (metrics.jsonl, evals.json, summary.json, config.json); needs no
Ray, no engine and no GPU, and imports none of torch/vllm/ray, so it works on a laptop with a copied run
folder. Several runs are compared side by side (sync against async, one algorithm against another): their
reward and batch-accuracy curves on one axis by step and by wall time, held-out accuracy with its 95%
interval, where each run's step time went, and a table of headline numbers with 95% intervals.

Intervals: held-out and batch accuracy are Wilson score intervals (as the evals print them); the lift is
Newcombe's difference of two Wilson intervals (which treats before and after as independent samples, so
on the same prompts it is conservative); step time and throughput are the mean +- 1.96 standard errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temper.report import wilson_interval

LAST_STEPS = 10
"""Batch accuracy at the end of a run is pooled over this many last steps."""


@dataclass
class Run:
    path: Path
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def label(self) -> str:
        staleness = self.config.get("buffer", {}).get("max_staleness")
        mode = "" if staleness is None else " (sync)" if staleness == 0 else f" (async, staleness {staleness})"
        return self.path.name + mode

    @property
    def mode(self) -> str:
        staleness = self.config.get("buffer", {}).get("max_staleness")
        return "" if staleness is None else "sync" if staleness == 0 else f"async, staleness {staleness}"

    @property
    def heldout(self) -> list[dict[str, Any]]:
        return [e for e in self.evals if not e.get("without_tools")]


def load_run(path: str | Path) -> Run:
    """A run folder's files; ValueError naming the folder and file when one is missing or not readable."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{path}: not a temper run folder (no metrics.jsonl)")
    steps = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            steps.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{metrics}:{n}: not valid JSON ({e})") from None

    def read(name: str, empty: Any) -> Any:
        f = path / name
        if not f.is_file():
            return empty
        try:
            return json.loads(f.read_text())
        except ValueError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None

    return Run(path, steps, read("evals.json", []), read("summary.json", {}), read("config.json", {}))


# ---------------------------------------------------------------------- headline numbers
def mean_interval(xs: list[float]) -> tuple[float, float, float] | None:
    """Mean and its normal 95% interval (mean +- 1.96 standard errors); None for no values."""
    if not xs:
        return None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return (m, m, m)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = 1.96 * sd / math.sqrt(len(xs))
    return (m, m - half, m + half)


def lift_interval(after: dict[str, Any], before: dict[str, Any]) -> tuple[float, float, float]:
    """after - before accuracy, with Newcombe's 95% interval from the two Wilson intervals."""
    p1, l1, u1 = after["accuracy"], after["ci_low"], after["ci_high"]
    p2, l2, u2 = before["accuracy"], before["ci_low"], before["ci_high"]
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def batch_accuracy(run: Run) -> tuple[float, float, float] | None:
    """Batch accuracy pooled over the last LAST_STEPS steps, with its Wilson interval."""
    per_step = run.config.get("learner", {}).get("batch_groups", 0) * run.config.get("rollout", {}).get("group_size", 0)
    tail = [m["reward/accuracy"] for m in run.steps[-LAST_STEPS:] if "reward/accuracy" in m]
    if not tail or not per_step:
        return None
    n = per_step * len(tail)
    correct = round(sum(tail) * per_step)
    lo, hi = wilson_interval(correct, n)
    return (correct / n, lo, hi)


def headline(run: Run) -> dict[str, str]:
    """Row name -> the run's value as printed."""
    def pct(v: tuple[float, float, float] | None) -> str:
        return "-" if v is None else f"{v[0]:.1%} ({v[1]:.1%}-{v[2]:.1%})"

    def num(v: tuple[float, float, float] | None, fmt: str) -> str:
        return "-" if v is None else f"{v[0]:{fmt}} ({v[1]:{fmt}}-{v[2]:{fmt}})"

    held = run.heldout
    before = held[0] if held else None
    after = held[-1] if len(held) > 1 else None
    def acc(e: dict[str, Any] | None) -> tuple[float, float, float] | None:
        return None if e is None else (e["accuracy"], e["ci_low"], e["ci_high"])

    lift = lift_interval(after, before) if before and after else None
    tl = run.summary.get("timeline", {})
    rows = {
        "steps": str(len(run.steps)),
        "RL wall time (s)": f"{run.steps[-1].get('elapsed_seconds', 0):.0f}" if run.steps else "-",
        "held-out accuracy before": pct(acc(before)),
        "held-out accuracy after": pct(acc(after)),
        "lift (points)": "-" if lift is None else f"{lift[0] * 100:+.1f} ({lift[1] * 100:+.1f} to {lift[2] * 100:+.1f})",
        f"batch accuracy, last {LAST_STEPS} steps": pct(batch_accuracy(run)),
        "step time (s)": num(mean_interval([m["step_seconds"] for m in run.steps if "step_seconds" in m]), ".3f"),
        "generated tok/s per step": num(mean_interval([m["time/gen_tokens_per_s"] for m in run.steps
                                                       if "time/gen_tokens_per_s" in m]), ",.0f"),
        "staleness (mean)": num(mean_interval([m["buffer/staleness_mean"] for m in run.steps
                                               if "buffer/staleness_mean" in m]), ".2f"),
    }
    if tl:
        rows.update({
            "learner idle": f"{tl['learner']['idle_frac']:.0%}",
            "engine idle / paused": f"{tl['engine']['idle_frac']:.0%} / {tl['engine']['paused_frac']:.0%}",
            "overlap: achieved / ideal": (f"{tl['achieved_speedup']:.2f}x / {tl['ideal_speedup']:.2f}x "
                                          f"({tl['overlap_of_ideal']:.0%})"),
        })
    return rows


def table(runs: list[Run]) -> str:
    """The headline numbers, one column per run (95% intervals in parentheses)."""
    cols = [headline(r) for r in runs]
    names = list(dict.fromkeys(k for c in cols for k in c))
    head = ["", *(r.label for r in runs)]
    body = [[k, *(c.get(k, "-") for c in cols)] for k in names]
    widths = [max(len(row[j]) for row in [head, *body]) for j in range(len(head))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in body)])


# ---------------------------------------------------------------------- the picture
def smooth(ys: list[float], k: int) -> list[float]:
    """Trailing moving average over k points (the first points average what there is)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def plot(runs: list[Run], out: str | Path) -> str:
    """Reward/accuracy by step and by wall time, held-out accuracy with 95% intervals, time per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (by_step, by_time), (held, split) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = short_labels(runs)
    for j, run in enumerate(runs):
        c = colours[j % len(colours)]
        k = max(1, len(run.steps) // 20)
        xs = [m["step"] for m in run.steps]
        ts = [m.get("elapsed_seconds", 0.0) for m in run.steps]
        for key, style, what in (("reward/mean", "-", "reward"), ("reward/accuracy", "--", "batch accuracy")):
            ys = [m.get(key, math.nan) for m in run.steps]
            by_step.plot(xs, smooth(ys, k), style, color=c, lw=1.2, label=f"{names[j]}: {what}")
            by_time.plot(ts, smooth(ys, k), style, color=c, lw=1.2)
        ev = run.heldout
        if ev:
            held.errorbar([e["step"] for e in ev], [e["accuracy"] for e in ev], color=c, marker="o", capsize=3,
                          yerr=[[e["accuracy"] - e["ci_low"] for e in ev], [e["ci_high"] - e["accuracy"] for e in ev]],
                          label=names[j])
    for ax, xlabel, title in ((by_step, "step", "training batches (solid: reward, dashed: accuracy)"),
                              (by_time, "seconds of RL", "the same by wall time"),
                              (held, "step", "held-out accuracy (greedy, 95% CI)")):
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
    by_step.legend(fontsize=7)
    if any(r.heldout for r in runs):
        held.legend(fontsize=7)
    _plot_split(split, runs, names)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)


def short_labels(runs: list[Run]) -> list[str]:
    """What tells the runs apart in a picture: their modes when those differ, else their folder names."""
    modes = [r.mode for r in runs]
    if all(modes) and len(set(modes)) == len(runs):
        return modes
    return [r.path.name + (f" ({m})" if m else "") for r, m in zip(runs, modes, strict=True)]


def _plot_split(ax, runs: list[Run], names: list[str]) -> None:
    """Mean seconds per step, split into the learner's wait / train / weight sync (runs that have them)."""
    parts = (("time/learner_wait_s", "learner waits for a batch"), ("time/learner_compute_s", "learner trains"),
             ("time/weight_sync_s", "weight sync"))
    labels = []
    for name, run in zip(names, runs, strict=True):
        tl = run.summary.get("timeline")
        labels.append(f"{name}\nengines idle {tl['engine']['idle_frac']:.0%}\n{tl['overlap_of_ideal']:.0%} of ideal "
                      "overlap" if tl else name)
    left = [0.0] * len(runs)
    for key, name in parts:
        widths = [sum(m.get(key, 0.0) for m in r.steps) / max(len(r.steps), 1) for r in runs]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("seconds per step (mean)")
    ax.set_title("where each step's time went", fontsize=10)
    ax.set_xlim(0, max(left + [1e-3]) * 1.05)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="temper report", description="Re-render a run's plot and headline numbers from its folder; "
        "given several, compare them side by side. Needs no Ray, engine or GPU.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (RUN_DIR/metrics.jsonl ...)")
    parser.add_argument("--out", default=None,
                        help="the PNG to write (default: RUN_DIR/report.png for one run, ./report.png for several)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(p) for p in args.runs]
    except ValueError as e:
        print(f"temper report: {e}", file=sys.stderr)
        return 2
    out = args.out or (runs[0].path / "report.png" if len(runs) == 1 else Path("report.png"))
    print(table(runs))
    print(f"\nplot: {plot(runs, out)}")
    return 0
