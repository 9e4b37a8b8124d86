"""Environments by name: built-ins here, plugins from the `temper.environments` entry-point group, or
`module:attr` import strings. Resolution is cached, so it is idempotent in every Ray worker process."""

from __future__ import annotations

from typing import Any

from temper.configs.plugins import cached_resolver
from temper.environments.base import Environment

BUILTIN_ENVIRONMENTS: dict[str, str] = {
    "single_turn": "temper.environments.single_turn:SingleTurnEnvironment",
    "tool": "temper.environments.tool_env:ToolEnvironment",
    "agent": "temper.environments.agent.environment:AgentEnvironment",
}


def _check(name: str, cls: Any) -> type[Environment]:
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise TypeError(f"environment {name!r} is not a temper.environments.base.Environment subclass")
    return cls


_resolve = cached_resolver("environment", BUILTIN_ENVIRONMENTS, "temper.environments", _check)


def resolve_environment(name: str) -> type[Environment]:
    """Built-in name, then `module:attr`, then entry point; ValueError listing known names otherwise."""
    return _resolve(name)
