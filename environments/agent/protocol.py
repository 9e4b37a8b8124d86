"""The OpenAI wire format the agent endpoint speaks: requests validated into typed models, answers built
into the response and stream-chunk JSON the `openai` client parses.

What cannot be served faithfully is refused with a 400 naming the field, never silently changed:
- `top_logprobs` above 0: the engine records only the sampled token's log-prob;
- `tool_choice` "required" or a named function: nothing constrains the decoding to a call;
- fields this endpoint does not know (`response_format`, `logit_bias`, ...), and non-zero penalties.
Fields that change nothing an agent can observe (`user`, `metadata`, `store`, `parallel_tool_calls`) are
accepted and ignored. Sampling settings are the caller's business (see server.py: which ones reach the engine).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from temper.environments.agent.sessions import Answer


class RequestError(ValueError):
    """A request the endpoint refuses: HTTP status, message, and the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class Sampling(BaseModel):
    """The fields chat and text completions share."""

    model_config = ConfigDict(extra="forbid")

    model: str = ""
    """Any name: an agent written for another model runs unchanged; the policy answers."""
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None

    @model_validator(mode="after")
    def _no_penalties(self):
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name}: only 0 is supported (penalties would change what the policy samples)")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _servable(self):
        if self.top_logprobs:
            raise ValueError("top_logprobs: only 0 is supported (the engine records the sampled token's log-prob)")
        if self.tool_choice not in (None, "auto", "none"):
            raise ValueError(f"tool_choice: only 'auto' and 'none' are supported, not {self.tool_choice!r}")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_unset=True) for m in self.messages]


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False

    @model_validator(mode="after")
    def _servable(self):
        if self.logprobs:
            raise ValueError("logprobs: only 0 is supported for text completions")
        if self.echo:
            raise ValueError("echo: not supported")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise RequestError("prompt: one prompt per request", "prompt")
        return self.prompt[0]


def parse(model: type[BaseModel], body: Any) -> Any:
    """The request body as `model`, or a RequestError naming the first field at fault."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if not where and message.split(":", 1)[0] in model.model_fields:  # a check across fields names its own
            where = message.split(":", 1)[0]
        if err["type"] == "extra_forbidden":
            message = f"{where}: not supported by this endpoint"
        elif not message.startswith(f"{where}:"):
            message = f"{where}: {message}" if where else message
        raise RequestError(message, where or None) from None


# ------------------------------------------------------------------------------------------------ answers
def _logprobs(tokenizer: Any, choice) -> dict[str, Any]:
    c = choice.completion
    n = len(c.token_ids) - (1 if c.token_ids and c.token_ids[-1] == tokenizer.eos_token_id else 0)
    entries = []
    for tok, lp in zip(c.token_ids[:n], c.logprobs[:n]):
        text = tokenizer.decode([tok])
        entries.append({"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": []})
    return {"content": entries, "refusal": None}


def usage(answer: Answer) -> dict[str, int]:
    completion = sum(len(c.completion.token_ids) for c in answer.choices)
    return {"prompt_tokens": len(answer.prompt_ids), "completion_tokens": completion,
            "total_tokens": len(answer.prompt_ids) + completion}


def chat_response(answer: Answer, model: str, tokenizer: Any, logprobs: bool) -> dict[str, Any]:
    choices = [
        {"index": i, "message": c.message, "finish_reason": c.finish_reason,
         "logprobs": _logprobs(tokenizer, c) if logprobs else None}
        for i, c in enumerate(answer.choices)
    ]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(answer)}


def chat_chunks(answer: Answer, model: str, tokenizer: Any, logprobs: bool, include_usage: bool):
    """The answer as stream chunks: per choice its role, its content, its tool calls, its finish reason."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, lp=None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": lp}]}
        return {**out, "usage": None} if include_usage else out

    for i, c in enumerate(answer.choices):
        yield chunk(i, {"role": "assistant", "content": ""})
        if c.message.get("content"):
            yield chunk(i, {"content": c.message["content"]}, lp=_logprobs(tokenizer, c) if logprobs else None)
        calls = c.message.get("tool_calls") or []
        if calls:
            yield chunk(i, {"tool_calls": [{"index": j, **call} for j, call in enumerate(calls)]})
        yield chunk(i, {}, c.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": usage(answer)}


def completion_response(answer: Answer, model: str) -> dict[str, Any]:
    choices = [{"index": i, "text": c.text, "finish_reason": "length" if c.finish_reason == "length" else "stop",
                "logprobs": None} for i, c in enumerate(answer.choices)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(answer)}
