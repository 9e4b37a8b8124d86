"""One episode's calls to the OpenAI-compatible endpoint, recorded exact to the token.

An agent sends whole conversations as JSON; the policy sampled token ids. Rendering each request afresh
with the chat template (what most gateways do) breaks twice: re-encoding decoded text drifts from what was
sampled, and templates that rewrite history (Qwen3 drops `<think>` from turns before the last user message)
make every call look like a new conversation, so one episode becomes many samples.

So a session keeps, for every answer it gave, a *tip*: the conversation the client now holds (its request's
messages plus the assistant message returned, compared as data) and where that answer ends in the recorded
token ids. A request whose messages extend a tip is prompted with those recorded ids followed by the *glue*
of the new messages: the template's text for them, taken as the difference between a short fixed stand-in
history ending in a plain assistant message, rendered with and without the new messages
(trajectory.ChatRenderer.stand_in_glue). The glue thus never depends on how the template re-renders older
turns; it is exactly what the native environments insert with the same `history = "as_sampled"` (after a
sampled end-of-turn token, the template's newline and the next turn; without one, the end-of-turn token too).

Segments. Each run of calls that extends its own latest answer is one segment, one training sample (an
`Episode`). A new segment starts on the first call, on a request that extends no tip (history rewritten), on
one that extends an older answer (a branch: its prompt is the recorded ids at that point, still exact), and
for the extra choices of an `n > 1` call. With `history = "template"` every call is rendered by the template
instead, and a segment continues only while that rendering extends its recorded ids (where a native
environment ends its episode with stop reason "template_mismatch", a session starts a new segment).

Retries. A request equal to one already answered (same messages, tools and settings) gets the recorded answer
again, and concurrent duplicates share one generation. Sampling again would leave two answers to one prompt:
recording both splits the trajectory, dropping the second would train on a conversation the agent never saw.
A client retries because an answer was lost, not because it wants another: use `n`, or an auxiliary call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from temper.environments.base import CompletionLike, Episode
from temper.environments.chat_encoding import encode_untrusted_chat
from temper.environments.tools import HermesParser
from temper.environments.trajectory import ChatRenderer, History, Trajectory

Sample = Callable[[list[int], int], Awaitable[list[CompletionLike]]]
"""sample(prompt_ids, n) -> n completions: the episode's `generate` with the request's settings bound."""


# ------------------------------------------------------------------------------------------ messages as data
def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: only text parts carry text for a chat template
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def canonical(message: dict[str, Any]) -> str:
    """A message as comparable data: what clients change when they send a message back (None fields, empty
    lists, content parts, the spacing of tool-call arguments) does not change it; anything else does."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key == "content":
            value = _text(value)
        elif key == "tool_calls" and value:
            value = [{"id": c.get("id"), "name": (c.get("function") or {}).get("name"),
                      "arguments": _arguments((c.get("function") or {}).get("arguments"))} for c in value]
        if value is None or value == [] or value == {}:
            continue
        out[key] = value
    out.setdefault("content", "")
    return json.dumps(out, sort_keys=True, default=str)


def canonical_tools(tools: list[dict[str, Any]] | None) -> str:
    return json.dumps(tools or [], sort_keys=True, default=str)


_CALL_BLOCK = re.compile(re.escape(HermesParser.OPEN) + ".*?" + re.escape(HermesParser.CLOSE), re.DOTALL)


def split_tool_calls(text: str, parser: HermesParser) -> tuple[str, list[dict[str, Any]]]:
    """(the text outside well-formed Hermes calls, kept as sampled, whitespace included, so a template that
    renders content then calls can reproduce the reply; those calls as {"name", "arguments"}). A malformed
    call stays in the text, where the agent sees what the model wrote."""
    calls, kept, start = [], [], 0
    for m in _CALL_BLOCK.finditer(text):
        parsed = parser.parse(m.group(0))
        if len(parsed) != 1 or parsed[0].error:
            continue
        kept.append(text[start : m.start()])
        start = m.end()
        calls.append({"name": parsed[0].name, "arguments": parsed[0].arguments})
    kept.append(text[start:])
    return "".join(kept), calls


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Segment:
    """One token-exact sample: a trajectory and the conversation at its end."""

    traj: Trajectory
    prompt: list[dict[str, Any]]
    tools: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    response: str = ""
    stop_reason: str = ""
    turns: int = 0
    tool_calls: int = 0


@dataclass(frozen=True)
class Tip:
    """The conversation a client holds after one answer, and where that answer ends in its segment."""

    segment: Segment
    offset: int
    conversation: tuple[str, ...]
    tools: str
    ended_with_eos: bool


@dataclass(frozen=True)
class Plan:
    """The prompt of a call, and the segment (and its length then) it would extend with `glue`."""

    prompt_ids: list[int]
    base: Segment | None
    offset: int
    glue: list[int]


@dataclass(frozen=True)
class Choice:
    message: dict[str, Any]
    """The OpenAI assistant message: content, and tool_calls when the reply made any."""
    finish_reason: str
    """"tool_calls", "length" or "stop"."""
    completion: CompletionLike
    text: str
    """The reply's text, special tokens kept, the end-of-turn token left out (as the native env reads it)."""


@dataclass(frozen=True)
class Answer:
    prompt_ids: list[int]
    choices: list[Choice]


class Session:
    """The calls of one episode. `chat` answers one request; `episodes()` is one Episode per segment."""

    def __init__(self, tokenizer: Any, history: History = "as_sampled") -> None:
        if history not in ("as_sampled", "template"):
            raise ValueError(f"history must be 'as_sampled' or 'template', not {history!r}")
        self.tokenizer = tokenizer
        self.history = history
        self.renderer = ChatRenderer(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.parser = HermesParser()
        self.segments: list[Segment] = []
        self.calls = 0
        """Calls answered by sampling and recorded (retries and auxiliary calls not counted)."""
        self.retries = 0
        self.auxiliary_calls = 0
        self.faults: list[str] = []
        """Why the episode must score 0, in order (a refused request, a spent budget); filled by its owners."""
        self.reported: Any = None
        """The reward an agent in another process sent with `POST .../temper/end` (server.py), if any."""
        self.log: list[dict[str, Any]] = []
        """Per recorded call: its segment, whether it extended one, its last message and token counts."""
        self.last_segment: int | None = None
        """The segment holding the latest answer (what a rubric judges)."""
        self._tips: list[Tip] = []
        self._answers: dict[str, asyncio.Future[Answer]] = {}
        self._call_ids = itertools.count()

    # ------------------------------------------------------------------ answering
    async def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, sample: Sample,
                   n: int = 1, settings: dict[str, Any] | None = None, parse_tools: bool = True) -> Answer:
        """Answer and record one request. settings: the request's other fields that change its answer (they
        tell a retry from a new request)."""
        key = json.dumps([[canonical(m) for m in messages], canonical_tools(tools), n, settings or {}, parse_tools],
                         sort_keys=True, default=str)

        async def answer() -> Answer:
            plan = self.plan(messages, tools)
            return self._record(plan, messages, tools, await sample(plan.prompt_ids, n), parse_tools)

        return await self._once(key, answer)

    async def complete(self, prompt: str, sample: Sample, n: int = 1,
                       settings: dict[str, Any] | None = None) -> Answer:
        """Answer and record a raw text completion (`/v1/completions`): its own segment, the prompt encoded
        as the client wrote it (a raw prompt is the client's to format, special tokens included)."""
        key = json.dumps(["text", prompt, n, settings or {}], sort_keys=True, default=str)

        async def answer() -> Answer:
            plan = Plan(self.renderer.encode(prompt), None, 0, [])
            return self._record(plan, [{"role": "user", "content": prompt}], None,
                                await sample(plan.prompt_ids, n), parse_tools=False)

        return await self._once(key, answer)

    async def _once(self, key: str, answer: Callable[[], Awaitable[Answer]]) -> Answer:
        """answer() once per key: a retry, concurrent or later, gets the same Answer."""
        pending = self._answers.get(key)
        if pending is not None:
            self.retries += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters may be gone: no warning
        self._answers[key] = future
        try:
            result = await answer()
        except BaseException as e:
            del self._answers[key]  # a failed call was not answered: its retry samples
            future.cancel() if isinstance(e, asyncio.CancelledError) else future.set_exception(e)
            raise
        future.set_result(result)
        return result

    async def auxiliary(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, sample: Sample,
                        n: int = 1, parse_tools: bool = True) -> Answer:
        """Answer without recording (a title, a summary): rendered afresh, never a training sample."""
        self.auxiliary_calls += 1
        prompt = encode_untrusted_chat(self.tokenizer, messages, tools, add_generation_prompt=True)
        completions = await sample(prompt, n)
        return Answer(prompt, [self._choice(c, parse_tools) for c in completions])

    # ------------------------------------------------------------------ planning
    def plan(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Plan:
        tools_key = canonical_tools(tools)
        if self.history == "as_sampled":
            tip = self._longest_tip(tuple(canonical(m) for m in messages), tools_key)
            if tip is not None:
                glue = self.glue(messages[len(tip.conversation) :], tools, tip.ended_with_eos)
                context = tip.segment.traj.context_ids[: len(tip.segment.traj.prompt_ids) + tip.offset]
                return Plan(context + glue, tip.segment, tip.offset, glue)
        full = encode_untrusted_chat(self.tokenizer, messages, tools, add_generation_prompt=True)
        if self.history == "template":
            for seg in reversed(self.segments):
                context = seg.traj.context_ids
                if seg.tools == tools_key and full[: len(context)] == context:
                    return Plan(full, seg, len(seg.traj.ids), full[len(context) :])
        return Plan(full, None, 0, [])

    def _longest_tip(self, conversation: tuple[str, ...], tools: str) -> Tip | None:
        best = None
        for tip in self._tips:  # the latest of the longest wins
            n = len(tip.conversation)
            if tip.tools == tools and conversation[:n] == tip.conversation and (best is None or n >= len(best.conversation)):
                best = tip
        return best

    def glue(self, new: list[dict[str, Any]], tools: list[dict[str, Any]] | None, ended_with_eos: bool) -> list[int]:
        """Token ids the template puts after an assistant turn once `new` messages follow (and the next
        assistant turn opens). ended_with_eos: that turn's sampled ids end with the end-of-turn token.
        Raises TemplatePrefixError where the template cannot give them (see ChatRenderer.stand_in_glue)."""
        return ChatRenderer(self.tokenizer, tools).stand_in_glue(new, ended_with_eos)

    # ------------------------------------------------------------------ recording
    def _record(self, plan: Plan, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                completions: list[CompletionLike], parse_tools: bool) -> Answer:
        tools_key = canonical_tools(tools)
        conversation = tuple(canonical(m) for m in messages)
        choices = []
        for c in completions:
            choice = self._choice(c, parse_tools)
            seg = plan.base
            extends = seg is not None and len(seg.traj.ids) == plan.offset
            if extends:  # still its latest answer: extend it
                seg.traj.add_env(plan.glue)
            else:  # first call, rewritten history, a branch, or a further choice: exact ids, a new sample
                seg = Segment(Trajectory(plan.prompt_ids), prompt=list(messages), tools=tools_key)
                self.segments.append(seg)
            self.last_segment = self.segments.index(seg)
            last = messages[-1] if messages else {}
            self.log.append({"call": self.calls, "segment": self.last_segment, "extends": extends,
                             "messages": len(messages), "last_message": {"role": last.get("role"),
                                                                         "content": _text(last.get("content"))},
                             "prompt_tokens": len(plan.prompt_ids), "glue_tokens": len(plan.glue) if extends else 0,
                             "completion_tokens": len(c.token_ids), "finish_reason": choice.finish_reason})
            seg.traj.add_sampled(c.token_ids, c.logprobs, c.token_versions)
            seg.messages = [*messages, choice.message]
            seg.response, seg.stop_reason = choice.text, choice.finish_reason
            seg.turns += 1
            seg.tool_calls += len(choice.message.get("tool_calls", ()))
            ended = bool(c.token_ids) and c.token_ids[-1] == self.eos
            self._tips.append(Tip(seg, len(seg.traj.ids), (*conversation, canonical(choice.message)), tools_key,
                                  ended))
            choices.append(choice)
        self.calls += 1
        return Answer(plan.prompt_ids, choices)

    def _choice(self, c: CompletionLike, parse_tools: bool) -> Choice:
        ids = c.token_ids[:-1] if c.token_ids and c.token_ids[-1] == self.eos else c.token_ids
        text = self.renderer.decode(ids)
        content, calls = split_tool_calls(text, self.parser) if parse_tools else (text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            message["tool_calls"] = [
                {"id": f"call_{next(self._call_ids)}", "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
                for call in calls
            ]
        finish = "tool_calls" if calls else ("length" if c.finish_reason == "length" else "stop")
        return Choice(message, finish, c, text)

    # ------------------------------------------------------------------ results
    def episodes(self) -> list[Episode]:
        """One Episode per segment, in the order they started."""
        return [
            Episode(
                prompt=seg.prompt,
                prompt_token_ids=seg.traj.prompt_ids,
                completion_token_ids=tuple(seg.traj.ids),
                logprobs=tuple(seg.traj.logprobs),
                loss_mask=tuple(seg.traj.loss_mask),
                response=seg.response,
                versions=seg.traj.sampled_versions,
                stop_reason=seg.stop_reason,
                token_versions=tuple(seg.traj.versions),
                messages=seg.messages,
                spans=tuple({"role": s.role, "start": s.start, "end": s.end} for s in seg.traj.spans),
                info={"segment": i, "segments": len(self.segments)},
                turns=seg.turns,
                tool_calls=seg.tool_calls,
            )
            for i, seg in enumerate(self.segments)
        ]
