"""What a run shows a person: the console summary, the 95% intervals, and the PNG plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def describe_accuracy(correct: int, n: int) -> str:
    lo, hi = wilson_interval(correct, n)
    return f"{correct / max(n, 1):6.1%}  (95% CI {lo:.1%}-{hi:.1%}, n={n})"


def eval_record(step: int, items: list[dict[str, Any]], without_tools: bool = False) -> dict[str, Any]:
    """One evaluation (items: per row {"correct", "tool_calls", "tool_errors"}) with 95% intervals: accuracy,
    and for runs whose episodes call tools, the share of episodes that called one and of calls that failed."""
    n, correct = len(items), sum(bool(x["correct"]) for x in items)
    lo, hi = wilson_interval(correct, n)
    rec: dict[str, Any] = {"step": step, "correct": correct, "n": n, "accuracy": correct / max(n, 1),
                           "ci_low": lo, "ci_high": hi}
    if without_tools:
        rec["without_tools"] = True
    calls = sum(x["tool_calls"] for x in items)
    if calls:
        callers = sum(x["tool_calls"] > 0 for x in items)
        errors = sum(x["tool_errors"] for x in items)
        rec["tool_call_rate"] = {"count": callers, "n": n, "rate": callers / n, "ci": wilson_interval(callers, n)}
        rec["tool_error_rate"] = {"count": errors, "n": calls, "rate": errors / calls,
                                  "ci": wilson_interval(min(errors, calls), calls)}
    return rec


def describe_eval(rec: dict[str, Any]) -> str:
    """Accuracy with its interval, then the tool-call and tool-error rates when there were calls."""
    text = describe_accuracy(rec["correct"], rec["n"])
    if "tool_call_rate" in rec:
        calls, errors = rec["tool_call_rate"], rec["tool_error_rate"]
        text += (f"; tool calls in {calls['rate']:.1%} of episodes (95% CI {calls['ci'][0]:.1%}-{calls['ci'][1]:.1%}),"
                 f" errors in {errors['rate']:.1%} of {errors['n']} calls "
                 f"(95% CI {errors['ci'][0]:.1%}-{errors['ci'][1]:.1%})")
    return text


def plot_run(steps: list[dict[str, Any]], evals: list[dict[str, Any]], out: str | Path) -> str:
    """Reward and batch accuracy by step, with held-out accuracy (and its interval) at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [m["step"] for m in steps]
    ax1.plot(xs, [m["reward/mean"] for m in steps], label="reward mean", lw=1)
    ax1.plot(xs, [m["reward/accuracy"] for m in steps], label="batch accuracy", lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("training batches")
    ax1.legend()
    evals = [e for e in evals if not e.get("without_tools")]
    ex = [e["step"] for e in evals]
    acc = [e["accuracy"] for e in evals]
    lo = [e["accuracy"] - e["ci_low"] for e in evals]
    hi = [e["ci_high"] - e["accuracy"] for e in evals]
    ax2.errorbar(ex, acc, yerr=[lo, hi], marker="o", capsize=3)
    ax2.set_xlabel("step")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_title("held-out accuracy (greedy, 95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)
