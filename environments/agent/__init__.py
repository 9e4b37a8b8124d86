"""Bring your own agent: an OpenAI-compatible endpoint whose calls are recorded exact to the token.

`sessions.Session` records one episode's calls (no HTTP); `server.AgentEndpoint` serves sessions over HTTP to
any `openai` client, generating through the same `generate` callable native environments get.
"""

from temper.environments.agent.sessions import Answer, Choice, History, Session
from temper.environments.chat_encoding import encode_untrusted_chat

__all__ = ["Answer", "Choice", "History", "Session", "encode_untrusted_chat"]
