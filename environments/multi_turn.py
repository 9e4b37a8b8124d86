"""Multi-turn episodes: setup, then (assistant turn -> step) until done, then teardown, exact to the token.

A subclass writes three methods and never sees a token:
- `setup(row)`: the opening messages and the tools the model may call (their schemas reach the model through
  the chat template), plus any per-episode state (a scratch folder, a sandbox session...);
- `step(state, messages, reply)`: the assistant's reply (its text; `messages` ends with it) -> observations
  to add (tool results), whether the episode is done, info for the verifiers, an optional reward for the turn;
- `teardown(state)`: always runs, also when the episode fails or is cancelled (release what setup took).

The loop below does the rest: it renders the opening with the chat template, samples each turn with its
max_tokens clamped to what is left of the completion budget and of the engine's context, appends the sampled
tokens as sampled and the tokens between turns as the difference of chat-template renderings (`history`, see
trajectory.py), and records why the episode stopped. A sample cut off by a budget stays a valid training
sample: its tokens are what the policy sampled and its reward is what the verifiers give the last reply.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from temper.configs.base import Strict
from temper.environments.base import Environment, Episode, Generate
from temper.environments.tools import Tool, ToolResult
from temper.environments.trajectory import ChatRenderer, History, TemplatePrefixError, Trajectory


class MultiTurnParams(Strict):
    max_turns: int = Field(4, ge=1)
    """Assistant turns per episode at most."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """Tokens after the prompt at most, sampled and inserted (None: only the engine's context limits it)."""
    episode_timeout_s: float = Field(120.0, gt=0)
    """Wall-clock limit per episode, checked between turns; tool timeouts are capped by what is left."""
    truncated_turns: Literal["end", "continue"] = "end"
    """A turn cut off at sampling.max_tokens: end the episode (stop "length"), or hand the cut reply to
    `step` like any other. A turn cut by the context or completion budget always ends it."""
    history: History = "as_sampled"
    """The context the next turn is sampled from. "as_sampled" (default): exactly what the policy sampled,
    the tokens of new messages taken after a fixed stand-in history, so they do not depend on how the
    template re-renders older turns: the episode is one sample, never "template_mismatch" (unless the
    template re-renders even the stand-in, e.g. hides every earlier assistant turn). "template": what the
    template renders; where it rewrites history (Qwen3-style templates drop earlier `<think>` reasoning) the
    episode ends with stop reason "template_mismatch", its tokens so far a valid sample (the agent endpoint's
    Session, which takes the same two values, starts a new segment there instead). Where the template keeps
    history the two give the same tokens."""


@dataclass
class EpisodeStart:
    """What `setup` returns: the opening messages, the tools, and the episode's own state."""

    messages: list[dict[str, Any]]
    tools: list[Tool] = field(default_factory=list)
    state: Any = None


@dataclass
class StepResult:
    """What `step` returns for one assistant turn.

    observations: messages to append (e.g. role "tool"); none and not done also ends the episode ("stop").
    stop_reason: why it ends when done (default "stop"); reward: the environment's reward for this turn;
    info: merged into the episode's info that the verifiers see; tool_results: counted in the metrics."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    stop_reason: str | None = None
    reward: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    tool_results: list[ToolResult] = field(default_factory=list)


class MultiTurnEnvironment(Environment):
    Params = MultiTurnParams

    async def setup(self, row: dict[str, Any]) -> EpisodeStart:
        """Default: the row's prompt as messages (see Environment.messages), no tools, no state."""
        return EpisodeStart(self.messages(row))

    @abstractmethod
    async def step(self, state: Any, messages: list[dict[str, Any]], reply: str) -> StepResult:
        """React to the assistant's reply (messages[-1] is it)."""

    async def teardown(self, state: Any) -> None:
        """Release what setup acquired. Runs after every episode, whatever happened."""

    async def run_group(self, row: dict[str, Any], generate: Generate, n: int) -> list[Episode]:
        return list(await asyncio.gather(*(self.run_episode(row, generate) for _ in range(n))))

    async def run_episode(self, row: dict[str, Any], generate: Generate) -> Episode:
        start = await self.setup(row)
        try:
            return await self._loop(row, start, generate)
        finally:
            await asyncio.shield(self.teardown(start.state))

    def _turn_budget(self, traj: Trajectory) -> tuple[int, str]:
        """Tokens the next turn may sample, and the limit that sets it."""
        limits = [(1 << 30, "")]
        if self.max_model_len:
            limits.append((self.max_model_len - len(traj.context_ids), "context_full"))
        if self.params.max_completion_tokens:
            limits.append((self.params.max_completion_tokens - len(traj.ids), "max_completion_tokens"))
        return min(limits)

    async def _loop(self, row: dict[str, Any], start: EpisodeStart, generate: Generate) -> Episode:
        p = self.params
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.episode_timeout_s
        renderer = ChatRenderer(self.tokenizer, [t.schema() for t in start.tools])
        messages = list(start.messages)
        traj = Trajectory(renderer.encode_prompt(messages, self.prompt_special_tokens == "text"))
        eos = self.tokenizer.eos_token_id
        turn_rewards: list[float] = []
        info: dict[str, Any] = {}
        calls, errors = 0, Counter()
        reply, turns, stop = "", 0, "max_turns"
        while turns < p.max_turns:
            budget, limit = self._turn_budget(traj)
            if budget <= 0:
                stop = limit
                break
            (c,) = await generate(traj.context_ids, 1, max_tokens=budget if limit else None)
            traj.add_sampled(c.token_ids, c.logprobs, c.token_versions)
            turns += 1
            sampled_text = renderer.decode(c.token_ids)
            ended_with_eos = bool(c.token_ids) and c.token_ids[-1] == eos
            reply = renderer.decode(c.token_ids[:-1] if ended_with_eos else c.token_ids)
            messages.append({"role": "assistant", "content": reply})
            if c.finish_reason == "length":  # cut off mid-turn: whatever it was doing is unfinished
                if limit and len(c.token_ids) >= budget:
                    stop = limit
                    break
                if p.truncated_turns == "end":
                    stop = "length"
                    break
            left = deadline - loop.time()
            if left <= 0:
                stop = "episode_timeout"
                break
            try:
                result = await asyncio.wait_for(self.step(start.state, messages, reply), left)
            except TimeoutError:
                stop = "episode_timeout"
                break
            if result.reward is not None:
                turn_rewards.append(float(result.reward))
            info.update(result.info)
            calls += len(result.tool_results)
            errors.update(r.error for r in result.tool_results if r.error)
            if result.done or not result.observations:
                stop = result.stop_reason or "stop"
                break
            if turns == p.max_turns:
                break  # no turn left to read the observations: don't add them
            try:
                if p.history == "as_sampled":
                    glue = renderer.stand_in_glue(result.observations, ended_with_eos)
                else:
                    glue = renderer.glue(messages, sampled_text, result.observations)
            except TemplatePrefixError as e:
                stop, info["template_mismatch"] = "template_mismatch", str(e)
                break
            budget, limit = self._turn_budget(traj)
            if len(glue) >= budget:  # the observations would leave no room for a reply
                stop = limit
                break
            traj.add_env(glue)
            messages.extend(result.observations)
        return Episode(
            prompt=row[self.prompt_key],
            prompt_token_ids=traj.prompt_ids,
            completion_token_ids=tuple(traj.ids),
            logprobs=tuple(traj.logprobs),
            loss_mask=tuple(traj.loss_mask),
            response=reply,
            versions=traj.sampled_versions,
            stop_reason=stop,
            token_versions=tuple(traj.versions),
            messages=messages,
            spans=tuple({"role": s.role, "start": s.start, "end": s.end} for s in traj.spans),
            turn_rewards=tuple(turn_rewards),
            info=info,
            turns=turns,
            tool_calls=calls,
            tool_errors=dict(errors),
        )
