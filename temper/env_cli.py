"""`temper env try`: one episode of a run's environment against scripted assistant replies, or its model.

With `--reply`, no engine, no GPU, no Ray: the replies stand in for the model (each is encoded with the run's
tokenizer and ends with its EOS, or is cut at the turn's token budget), so a person sees exactly what training
would see: every turn's tokens and loss mask, the tool calls and their results (an agent's: each call and its
segment), why the episode stopped, and the reward the run's verifiers (plus the environment's turn rewards)
give it.

    temper env try configs/tool_demo.toml --row '{"prompt": "What is 347 * 58?", "label": "20126"}' \\
        --reply '<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 58"}}</tool_call>' \\
        --reply '\\boxed{20126}'

Without `--reply`, the run's model (model.path, or the demo's) answers on a vLLM engine, as in training.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from temper.configs.data import DataError, read_jsonl
from temper.configs.load import ConfigError, load_config
from temper.configs.schema import RunConfig


class UsageError(Exception):
    pass


def read_row(text: str) -> dict[str, Any]:
    """--row: a JSON object, a .json file holding one, or FILE.jsonl:LINE."""
    if text.lstrip().startswith("{"):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--row: not valid JSON ({e.msg})") from None
    else:
        path, _, line = text.rpartition(":") if text.rsplit(":", 1)[-1].isdigit() else (text, "", "")
        try:
            if line:
                rows = dict(read_jsonl(path))
                if int(line) not in rows:
                    raise UsageError(f"--row: {path} has no row on line {line}")
                return rows[int(line)]
            row = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, DataError) as e:
            raise UsageError(f"--row: {e}") from None
    if not isinstance(row, dict):
        raise UsageError("--row: expected a JSON object")
    return row


def tokenizer_for(cfg: RunConfig, path: str | None):
    from transformers import AutoTokenizer

    if path or cfg.model.path:
        return AutoTokenizer.from_pretrained(path or cfg.model.path)
    if cfg.demo.enabled:  # the demo's tokenizer alone is instant to make; no need for its model
        import tempfile

        from temper.demos import addition, calculator

        build = calculator.build_tokenizer if cfg.demo.task == "calculator" else addition.build_tokenizer
        return build(Path(tempfile.mkdtemp(prefix="temper-env-try-")))
    raise UsageError("no tokenizer: set model.path in the config or pass --tokenizer PATH")


class Replies:
    """The scripted stand-in for the engine."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        self.tok, self.replies, self.turn = tokenizer, replies, 0

    async def __call__(self, prompt_ids: list[int], n: int, max_tokens: int | None = None, **sampling: Any):
        from temper.rollout.engine import Completion

        if self.turn >= len(self.replies):
            raise UsageError(f"the episode wants assistant turn {self.turn + 1}, but only {len(self.replies)} "
                             "--reply were given")
        text = self.replies[self.turn]
        self.turn += 1
        ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
        finish = "stop"
        if max_tokens is not None and len(ids) > max_tokens:
            ids, finish = ids[:max_tokens], "length"
        return [Completion(tuple(ids), (0.0,) * len(ids), text, finish, (0,) * len(ids))]


def run(cfg: RunConfig, row: dict[str, Any], replies: list[str], tokenizer_path: str | None):
    """The episode and its samples' verdicts, through the same row -> scored group steps as training
    (rollout/groups.py), scored in this process. No replies: the run's model answers, on a vLLM engine."""
    from temper.rewards.rubric import Rubric
    from temper.rollout.groups import GroupRunner, make_environment

    if not replies:
        from temper.prepare import prepare

        cfg = prepare(cfg, log=lambda *a: print(*a, file=sys.stderr)).cfg  # the demo's model, built if needed
    tok = tokenizer_for(cfg, tokenizer_path)
    with Rubric(cfg.rewards, processes=0) as rubric:
        env = make_environment(cfg, tok)

        async def episode():
            engine = None
            try:
                if replies:
                    generate = Replies(tok, replies)
                else:
                    from temper.rollout.engine import Engine

                    engine = Engine(cfg.model.path, cfg.rollout.engine, cfg.rollout.sampling, cfg.model.dtype,
                                    cfg.seed)
                    await engine.init()
                    generate = engine.generate
                return await GroupRunner(cfg, env, rubric).scored(row, generate, 1)
            finally:
                await env.aclose()
                if engine is not None:
                    engine.shutdown()

        scored = asyncio.run(episode())
    return tok, scored


def show_calls(calls: list[dict[str, Any]]) -> None:
    """An agent's calls (environments/agent): what each sent last, and where its tokens went."""
    for c in calls:
        last = c["last_message"]
        content = (last["content"] or "")[:80].replace("\n", "\u21b5")
        print(f"call {c['call'] + 1}: {c['messages']} messages, the last {last['role']}: {content!r}\n"
              f"    -> segment {c['segment'] + 1} ({'extended by ' + str(c['glue_tokens']) + ' glue tokens' if c['extends'] else 'new'}); "
              f"prompt {c['prompt_tokens']} tokens, reply {c['completion_tokens']} tokens, {c['finish_reason']}")
    print()


def show(tok, scored) -> None:
    ep, result = scored[-1]
    if "calls" in ep.info:
        show_calls(ep.info["calls"])
        print(f"retries answered again: {ep.info['retries']}; auxiliary calls (not trained on): "
              f"{ep.info['auxiliary_calls']}\n")
    for i, (segment, _) in enumerate(scored):
        if len(scored) > 1:
            print(f"=== segment {i + 1} of {len(scored)} (one training sample each, sharing the reward)")
        show_tokens(tok, segment)
    print(f"\nstop reason: {ep.stop_reason}; turns: {ep.turns}; tool calls: {ep.tool_calls}; "
          f"tool errors: {ep.tool_errors or 'none'}")
    if ep.turn_rewards:
        print(f"environment's turn rewards: {list(ep.turn_rewards)}")
    print(f"reward: {result.score:g} ({'correct' if result.correct else 'not correct'}); "
          f"breakdown: {json.dumps(result.breakdown, default=str)}")
    if result.error:
        print(f"verifier error: {result.error}")


def show_tokens(tok, ep) -> None:
    print(f"prompt: {len(ep.prompt_token_ids)} tokens")
    spans = ep.spans or ({"role": "assistant", "start": 0, "end": len(ep.completion_token_ids)},)
    turn = 0
    for span in spans:
        ids = ep.completion_token_ids[span["start"] : span["end"]]
        text = tok.decode(list(ids), skip_special_tokens=False)
        mask = set(ep.loss_mask[span["start"] : span["end"]])
        if span["role"] == "assistant":
            turn += 1
            print(f"\nturn {turn}, assistant: {len(ids)} tokens, loss mask {mask}")
        else:  # its special tokens are the template's alone: a tag the tool printed is shown but is ordinary text
            specials = [tok.convert_ids_to_tokens(i) for i in ids if i in tok.added_tokens_decoder]
            print(f"  environment: {len(ids)} tokens, loss mask {mask}, special tokens {len(specials)}: "
                  f"{' '.join(specials) or 'none'}")
        print("    " + text.replace("\n", "\u21b5\n    "))  # newlines shown, since the template's matter


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="temper env try", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["try"])
    parser.add_argument("config", help="run config (TOML): its [environment], [rewards], [data] and tokenizer")
    parser.add_argument("--row", required=True, help="a JSON object, a .json file, or FILE.jsonl:LINE")
    parser.add_argument("--reply", action="append", default=[],
                        help="the assistant's reply for the next turn (repeat, in order); none: the run's model "
                             "(the demo's, built if needed) answers on a vLLM engine")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: model.path, or the demo's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        tok, scored = run(cfg, read_row(args.row), args.reply, args.tokenizer)
    except (UsageError, ConfigError) as e:
        print(f"temper env try: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        from dataclasses import asdict

        ep, result = scored[-1]
        out = {"episode": asdict(ep), "reward": asdict(result)}
        if len(scored) > 1:  # an agent's episode in several samples: the last holds the answer, all share the reward
            out["segments"] = [asdict(e) for e, _ in scored]
        print(json.dumps(out, default=str))
    else:
        show(tok, scored)
    return 0
