"""An OpenAI-compatible HTTP endpoint in front of a rollout worker's engine, one session per episode.

Each episode gets a base URL of its own, `http://127.0.0.1:PORT/sessions/{sid}/v1`, and every request must
carry the run's secret as its bearer key; any `openai` client then works unchanged:
`AsyncOpenAI(base_url=handle.base_url, api_key=secret)`. Routes under that base: `POST /chat/completions`
(streaming too), `POST /completions`, `GET /models`, and `POST /temper/end` (an agent in another process
ends its session, optionally with `{"reward": x}`).

Generation goes through the episode's `generate(prompt_ids, n, max_tokens=...)`, the same callable native
environments get in `run_group`, so per-token versions, in-flight weight updates and the run's token limit
apply unchanged. Which of a request's sampling fields reach the engine:
- recorded calls: `max_tokens`/`max_completion_tokens`, `stop` and `seed`. `temperature` and `top_p` are
  accepted and the run's own are used: the learner's importance ratio assumes the run's distribution;
- auxiliary calls (header `X-Temper-Auxiliary: 1`, never trained on): all of them.
Those beyond `max_tokens` travel as `generate(..., sampling={...})` (Engine.generate's keyword), passed
only when a request sets one.

Errors are OpenAI-style JSON: 401 without the secret (checked before anything else), 404 for a session
that does not exist or has ended, 400 for a request that cannot be served as asked (naming the field),
503 once the session's episode is gone (its calls in flight are cancelled and answered 503 too).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from temper.environments.agent.protocol import (
    ChatRequest,
    CompletionRequest,
    RequestError,
    chat_chunks,
    chat_response,
    completion_response,
    parse,
)
from temper.environments.agent.sessions import Answer, History, Session
from temper.environments.base import Generate

log = logging.getLogger(__name__)

AUXILIARY_HEADER = "X-Temper-Auxiliary"
"""A request with this header set to 1 (or true, yes) is answered and never recorded."""


@dataclass
class _Entry:
    session: Session
    generate: Generate
    gone: bool = False
    ended: bool = False
    calls: set[asyncio.Task] = field(default_factory=set)


@dataclass(frozen=True)
class SessionHandle:
    sid: str
    base_url: str
    """What an `openai` client takes as `base_url`."""


class AgentEndpoint:
    """The HTTP server; `await start()` inside the caller's event loop, `open` a session per episode."""

    def __init__(self, tokenizer: Any, secret: str, model_name: str = "temper-policy",
                 host: str = "127.0.0.1") -> None:
        if not secret:
            raise ValueError("the agent endpoint needs a non-empty secret")
        self.tokenizer, self.secret, self.model_name, self.host = tokenizer, secret, model_name, host
        self.url = ""
        self._sessions: dict[str, _Entry] = {}
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen on a free port of `host`; returns the server's URL."""
        app = web.Application(middlewares=[self._errors])
        app.add_routes([
            web.post("/sessions/{sid}/v1/chat/completions", self._chat),
            web.post("/sessions/{sid}/v1/completions", self._completions),
            web.get("/sessions/{sid}/v1/models", self._models),
            web.post("/sessions/{sid}/v1/temper/end", self._end),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"
        return self.url

    async def close(self) -> None:
        for sid in list(self._sessions):
            self.fail(sid)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ sessions
    def open(self, generate: Generate, history: History = "as_sampled", session: Session | None = None) -> SessionHandle:
        """A new session generating through `generate` (session: one made by the caller, else a new one)."""
        sid = secrets.token_hex(8)
        self._sessions[sid] = _Entry(session or Session(self.tokenizer, history), generate)
        return SessionHandle(sid, f"{self.url}/sessions/{sid}/v1")

    def end(self, sid: str) -> Session:
        """Close a session (its URL answers 404 from now on) and hand back its record."""
        return self._sessions.pop(sid).session

    def fail(self, sid: str) -> None:
        """The episode is gone (its worker died, it was cancelled): calls answer 503, those in flight too."""
        entry = self._sessions.get(sid)
        if entry is not None:
            entry.gone = True
            for task in entry.calls:
                task.cancel()

    # ------------------------------------------------------------------ requests
    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            self._authorize(request)
            return await handler(request)
        except RequestError as e:
            entry = self._sessions.get(request.match_info.get("sid", ""))
            if e.status == 400 and entry is not None:  # the episode's fault: it scores 0 (environment.py)
                entry.session.faults.append(f"bad_request: {e}")
            return web.json_response(e.body(), status=e.status)
        except web.HTTPException as e:
            kind = "not_found_error" if e.status == 404 else "invalid_request_error"
            return web.json_response(RequestError(e.reason, None, e.status, kind).body(), status=e.status)
        except Exception as e:
            log.exception("agent endpoint: %s %s failed", request.method, request.path)
            return web.json_response(RequestError(f"{type(e).__name__}: {e}", None, 500, "server_error").body(),
                                     status=500)

    def _authorize(self, request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.secret}".encode()):
            raise RequestError("invalid API key: use the key of this run", status=401, kind="authentication_error")

    def _entry(self, request: web.Request) -> _Entry:
        entry = self._sessions.get(request.match_info["sid"])
        if entry is None or entry.ended:
            raise RequestError(f"session {request.match_info['sid']!r} does not exist or has ended", status=404,
                               kind="not_found_error")
        if entry.gone:
            raise RequestError("this session's episode is gone", status=503, kind="service_unavailable")
        return entry

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not JSON: {e}") from None

    async def _models(self, request: web.Request) -> web.Response:
        self._entry(request)
        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": 0, "owned_by": "temper"}]})

    async def _end(self, request: web.Request) -> web.Response:
        """An agent in another process ends its session, optionally with the reward: `{"reward": x}`."""
        entry = self._entry(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object, e.g. {\"reward\": 1.0}")
        entry.session.reported = body if body.get("reward") is not None else None
        entry.ended = True
        return web.json_response({"ended": True})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry(request)
        req: ChatRequest = parse(ChatRequest, await self._body(request))
        auxiliary = request.headers.get(AUXILIARY_HEADER, "").lower() in ("1", "true", "yes")
        sample = self._sampler(entry, req, auxiliary)
        messages, parse_tools = req.plain_messages(), req.tool_choice != "none"
        if auxiliary:
            call = entry.session.auxiliary(messages, req.tools, sample, req.n, parse_tools)
        else:
            settings = {"max_tokens": req.token_limit, "stop": req.stops, "seed": req.seed}
            call = entry.session.chat(messages, req.tools, sample, req.n, settings, parse_tools)
        answer = await self._answer(entry, call)
        if not req.stream:
            return web.json_response(chat_response(answer, req.model or self.model_name, self.tokenizer,
                                                   bool(req.logprobs)))
        chunks = chat_chunks(answer, req.model or self.model_name, self.tokenizer, bool(req.logprobs),
                             req.include_usage)
        return await self._stream(request, chunks)

    async def _completions(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        req: CompletionRequest = parse(CompletionRequest, await self._body(request))
        if req.stream:
            raise RequestError("stream: not supported for text completions (chat completions stream)", "stream")
        settings = {"max_tokens": req.token_limit, "stop": req.stops, "seed": req.seed}
        sample = self._sampler(entry, req, auxiliary=False)
        answer = await self._answer(entry, entry.session.complete(req.text, sample, req.n, settings))
        return web.json_response(completion_response(answer, req.model or self.model_name))

    def _sampler(self, entry: _Entry, req: ChatRequest | CompletionRequest, auxiliary: bool):
        overrides: dict[str, Any] = {"stop": req.stops or None, "seed": req.seed}
        if auxiliary:
            overrides.update(temperature=req.temperature, top_p=req.top_p)
        overrides = {k: v for k, v in overrides.items() if v is not None}

        def sample(prompt_ids: list[int], n: int):
            if overrides:
                return entry.generate(prompt_ids, n, max_tokens=req.token_limit, sampling=overrides)
            return entry.generate(prompt_ids, n, max_tokens=req.token_limit)

        return sample

    async def _answer(self, entry: _Entry, call: Awaitable[Answer]) -> Answer:
        """Run one call as a task `fail` can cancel; the engine's refusals (a prompt past the context) are
        the client's 400."""
        task = asyncio.ensure_future(call)
        entry.calls.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if entry.gone and task.cancelled():
                raise RequestError("this session's episode is gone", status=503, kind="service_unavailable") from None
            raise
        except ValueError as e:
            raise RequestError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - generation failed (the engine died): not the request's fault
            raise RequestError(f"generation failed: {type(e).__name__}: {e}", status=503,
                               kind="service_unavailable") from None
        finally:
            entry.calls.discard(task)

    async def _stream(self, request: web.Request, chunks) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
