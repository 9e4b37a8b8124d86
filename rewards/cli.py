"""`temper rewards ...`: debug rewards with no model and no GPU.

  list                                   every verifier, its source and parameters
  score  --verifier N [--params J] (--input ROWS.jsonl [--output OUT.jsonl] | --response T --label T)
  check  --verifier N --input DATA.jsonl  each row's reference answer must get full reward
  replay ROLLOUTS.jsonl (--verifier N [--params J] | --config RUN.toml)   what a changed verifier changes

Imports no torch, vllm or ray (a test checks). Exit codes: 0 = everything was scored (even all zeros),
1 = `check` found bad rows, 2 = misuse or unreadable input (the message names the file and line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pydantic import ValidationError

from temper.configs.data import DataError, read_jsonl
from temper.configs.load import ConfigError
from temper.configs.schema import RewardsConfig, RewardTerm
from temper.rewards.base import VerifyRequest, VerifyResult


class UsageError(Exception):
    """Misuse or unreadable input; printed without a traceback, exit code 2."""


# ---- input -------------------------------------------------------------------------------------------

def read_rows(path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line; UsageError naming file:line on any bad line."""
    try:
        rows = read_jsonl(path, required)
    except DataError as e:
        raise UsageError(str(e)) from None
    for number, row in rows:
        if "response" in required and not isinstance(row["response"], str):
            raise UsageError(f"{path}:{number}: 'response' must be a string")
    return rows


_REQUEST_KEYS = {"prompt", "response", "label", "messages", "metadata", "info"}


def to_request(row: dict[str, Any], response: str | None = None) -> VerifyRequest:
    metadata = row.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {k: v for k, v in row.items() if k not in _REQUEST_KEYS}
    messages, info = row.get("messages"), row.get("info")
    return VerifyRequest(
        response=row["response"] if response is None else response,
        label=row.get("label"),
        prompt=row.get("prompt"),
        metadata=metadata,
        messages=messages if isinstance(messages, list) else None,
        info=info if isinstance(info, dict) else {},
    )


def rewards_config(args: argparse.Namespace, n_rows: int) -> RewardsConfig:
    """From --config (its [rewards]) or --verifier/--params; workers capped at the number of rows."""
    if getattr(args, "config", None):
        if args.verifier:
            raise UsageError("give either --config or --verifier, not both")
        from temper.configs.load import load_config

        cfg = load_config(args.config).rewards
    else:
        if not args.verifier:
            raise UsageError("--verifier NAME is required (see `temper rewards list`)")
        try:
            params = json.loads(args.params) if args.params else {}
        except json.JSONDecodeError as e:
            raise UsageError(f"--params: not valid JSON ({e.msg})") from None
        if not isinstance(params, dict):
            raise UsageError("--params: expected a JSON object")
        cfg = RewardsConfig(terms=[RewardTerm(verifier=args.verifier, params=params)])
    updates: dict[str, Any] = {"num_workers": max(1, min(args.workers or os.cpu_count() or 1, n_rows))}
    if args.timeout is not None:
        updates["timeout_s"] = args.timeout
    cfg = RewardsConfig.model_validate({**cfg.model_dump(), **updates})
    from temper.rewards.rubric import validate_rewards_config

    validate_rewards_config(cfg)
    return cfg


def preflight(cfg: RewardsConfig) -> None:
    """UsageError when a term's verifier cannot work at all (a judge URL nobody answers): one clear message
    instead of a zero with the same reason on every row."""
    from temper.rewards.registry import params_model, resolve_verifier

    for i, term in enumerate(cfg.terms):
        cls = resolve_verifier(term.verifier)
        if isinstance(cls, type) and (problem := cls.preflight(params_model(cls).model_validate(term.params))):
            raise UsageError(f"rewards.terms[{i}] ({term.verifier}): {problem}")


def score_all(cfg: RewardsConfig, requests: list[VerifyRequest]) -> list[VerifyResult]:
    from temper.rewards.rubric import Rubric

    preflight(cfg)
    with Rubric(cfg, start_workers=False) as rubric:  # rows a quick check decides need no process
        return rubric.score(requests)


# ---- output ------------------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[VerifyResult]) -> dict[str, Any]:
    seconds = [r.seconds for r in results]
    return {
        "rows": len(results),
        "mean_reward": sum(r.score for r in results) / len(results) if results else 0.0,
        "errors": sum(r.error is not None for r in results),
        "timeouts": sum(r.error is not None and "timeout after" in r.error for r in results),
        "p50_seconds": _percentile(seconds, 0.5),
        "p99_seconds": _percentile(seconds, 0.99),
    }


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(headers: list[str], rows: list[list[Any]], widths: list[int]) -> None:
    cells = [[_short(c, w) for c, w in zip(row, widths, strict=True)] for row in rows]
    sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(s) for h, s in zip(headers, sizes, strict=True)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(s) for c, s in zip(r, sizes, strict=True)).rstrip())


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"rows {summary['rows']}  mean reward {summary['mean_reward']:.4f}  errors {summary['errors']}  "
        f"timeouts {summary['timeouts']}  p50 {summary['p50_seconds'] * 1000:.1f} ms  "
        f"p99 {summary['p99_seconds'] * 1000:.1f} ms"
    )


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror or e})") from None


def _scored(row: dict[str, Any], res: VerifyResult) -> dict[str, Any]:
    return {**row, "reward": res.score, "breakdown": res.breakdown, "error": res.error, "seconds": res.seconds}


# ---- commands ----------------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    from temper.rewards.registry import list_verifiers

    infos = list_verifiers()
    if args.format == "json":
        print(json.dumps([vars(i) for i in infos], default=str, indent=2))
        return 0
    rows = []
    for i in infos:
        params = ", ".join(f"{k}={v['default']!r}" for k, v in i.params.items()) or "-"
        status = f"UNAVAILABLE: {i.error}" if i.error else i.doc
        rows.append([i.name, i.source, i.target, params, status])
    print_table(["name", "source", "target", "params", "about"], rows, [20, 28, 40, 90, 100])
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    if args.input and (args.response is not None or args.label is not None):
        raise UsageError("give either --input or --response/--label, not both")
    if args.input:
        numbered = read_rows(args.input, ("response", "label"))
    elif args.response is not None and args.label is not None:
        numbered = [(1, {"response": args.response, "label": args.label})]
    else:
        raise UsageError("give --input ROWS.jsonl, or --response TEXT and --label TEXT")
    rows = [row for _, row in numbered]
    cfg = rewards_config(args, len(rows))
    results = score_all(cfg, [to_request(r) for r in rows]) if rows else []
    out_rows = [_scored(r, res) for r, res in zip(rows, results, strict=True)]
    summary = summarize(results)
    if args.output:
        write_jsonl(args.output, out_rows)
    if args.format == "json":
        print(json.dumps({"summary": summary, **({} if args.output else {"rows": out_rows})}, default=str))
        return 0
    if not args.output:
        table = [[r.get("id", n), r["reward"], r["error"] or "", r["breakdown"]]
                 for (n, _), r in zip(numbered, out_rows, strict=True)]
        print_table(["id", "reward", "error", "breakdown"], table, [12, 8, 40, 120])
    print_summary(summary)
    return 0


_REFERENCE_KEYS = ("response", "solution", "reference", "answer")


def cmd_check(args: argparse.Namespace) -> int:
    numbered = read_rows(args.input, ("label",))
    requests = []
    for _, row in numbered:
        key = args.reference_key or next((k for k in _REFERENCE_KEYS if isinstance(row.get(k), str)), None)
        if key is not None and isinstance(row.get(key), str):
            reference = row[key]
        elif isinstance(row.get("label"), str | int | float) and not isinstance(row.get("label"), bool):
            reference = f"\\boxed{{{row['label']}}}"  # the label, written the way a model should answer
        else:
            reference = ""
        requests.append(to_request({**row, "response": reference}))
    cfg = rewards_config(args, len(requests))
    results = score_all(cfg, requests) if requests else []
    full = sum(t.weight for t in cfg.terms)
    bad = []
    for (number, row), res in zip(numbered, results, strict=True):
        if res.score < full - 1e-9 or res.error:
            kind = "unparsable label" if res.error and "label" in res.error else "reference not accepted"
            bad.append({"line": number, "id": row.get("id"), "label": row.get("label"), "problem": kind,
                        "reward": res.score, "error": res.error, "breakdown": res.breakdown})
    summary = {**summarize(results), "bad_rows": len(bad)}
    if args.format == "json":
        print(json.dumps({"summary": summary, "bad": bad}, default=str))
    else:
        if bad:
            print_table(["line", "id", "label", "problem", "detail"],
                        [[b["line"], b["id"] or "", b["label"], b["problem"], b["error"] or b["breakdown"]]
                         for b in bad], [8, 12, 40, 24, 100])
        print(f"{args.input}: {len(bad)} of {len(results)} rows fail the self-check")
    return 1 if bad else 0


def _numbers(value: Any) -> list[float]:
    return [float(x) for x in value] if isinstance(value, list) and all(isinstance(x, int | float) for x in value) else []


def cmd_replay(args: argparse.Namespace) -> int:
    numbered = read_rows(args.rollouts, ("response", "label"))
    rows = [row for _, row in numbered]
    cfg = rewards_config(args, len(rows))
    from temper.rewards.rubric import add_turn_rewards

    results = score_all(cfg, [to_request(r) for r in rows]) if rows else []
    # A multi-turn rollout's reward also holds the environment's turn rewards: add them back as the run did.
    results = [add_turn_rewards(res, _numbers(row.get("turn_rewards")), cfg.turn_reward_weight)
               for row, res in zip(rows, results, strict=True)]
    changes = []
    for (number, row), res in zip(numbered, results, strict=True):
        old = row.get("breakdown") if isinstance(row.get("breakdown"), dict) else {}
        diff = {k: [old.get(k), res.breakdown.get(k)] for k in sorted(set(old) | set(res.breakdown))
                if old.get(k) != res.breakdown.get(k)}
        old_reward = row.get("reward")
        if old_reward != res.score or diff:
            changes.append({"line": number, "id": row.get("id"), "old_reward": old_reward,
                            "new_reward": res.score, "error": res.error, "breakdown_diff": diff})
    old_scores = [r["reward"] for r in rows if isinstance(r.get("reward"), int | float)]
    summary = {
        **summarize(results),
        "old_mean_reward": sum(old_scores) / len(old_scores) if old_scores else None,
        "changed_reward": sum(c["old_reward"] != c["new_reward"] for c in changes),
        "changed_breakdown_only": sum(c["old_reward"] == c["new_reward"] for c in changes),
    }
    if args.output:
        write_jsonl(args.output, [_scored(r, res) for r, res in zip(rows, results, strict=True)])
    if args.format == "json":
        print(json.dumps({"summary": summary, "changes": changes}, default=str))
        return 0
    if changes:
        print_table(["line", "id", "old", "new", "breakdown (old -> new)"],
                    [[c["line"], c["id"] or "", c["old_reward"], c["new_reward"],
                      "; ".join(f"{k}: {_short(a, 30)} -> {_short(b, 30)}" for k, (a, b) in
                                c["breakdown_diff"].items())] for c in changes], [8, 12, 8, 8, 160])
    old_mean = summary["old_mean_reward"]
    print(f"{summary['changed_reward']} of {len(rows)} samples changed reward "
          f"(mean {old_mean if old_mean is None else round(old_mean, 4)} -> {summary['mean_reward']:.4f}), "
          f"{summary['changed_breakdown_only']} changed only their breakdown")
    print_summary(summary)
    return 0


# ---- argument parsing --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temper rewards", description="Debug rewards without a model.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, verifier_required: bool = False) -> None:
        p.add_argument("--verifier", required=verifier_required, help="registered name or module:attr")
        p.add_argument("--params", help="verifier parameters as a JSON object")
        p.add_argument("--timeout", type=float, help="per-sample timeout in seconds (default 10); "
                       "code and judge terms bound their own time (see their params)")
        p.add_argument("--workers", type=int, default=0, help="scoring processes (default: all cores)")
        p.add_argument("--format", choices=["table", "json"], default="table")

    p = sub.add_parser("list", help="every verifier with its source and parameters")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("score", help="score responses against labels")
    common(p, verifier_required=True)
    p.add_argument("--input", help="JSONL rows with response and label")
    p.add_argument("--output", help="write the rows plus reward, breakdown, error, seconds here")
    p.add_argument("--response", help="one response (with --label)")
    p.add_argument("--label", help="its label")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("check", help="each row's reference answer must get full reward")
    common(p, verifier_required=True)
    p.add_argument("--input", required=True, help="the dataset (JSONL with label)")
    p.add_argument("--reference-key", help="row field holding the reference answer "
                   f"(default: first of {', '.join(_REFERENCE_KEYS)}, else the boxed label)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("replay", help="re-score saved rollouts with a changed verifier")
    p.add_argument("rollouts", help="rollouts.jsonl written by a training run")
    common(p)
    p.add_argument("--config", help="run config whose [rewards] to use instead of --verifier")
    p.add_argument("--output", help="write the re-scored rows here")
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse already printed the usage
        return int(e.code or 0)
    try:
        return args.func(args)
    except (UsageError, ConfigError) as e:
        print(f"temper rewards {args.command}: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # --timeout/--workers out of range
        print(f"temper rewards {args.command}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # unknown verifier name
        print(f"temper rewards {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
