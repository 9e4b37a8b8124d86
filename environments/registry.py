"""Environments by name: built-ins here, plugins from the `temper.environments` entry-point group, or
`module:attr` import strings. Resolution is cached, so it is idempotent in every Ray worker process."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from environments.base import Environment

BUILTIN_ENVIRONMENTS: dict[str, str] = {
    "single_turn": "environments.single_turn:SingleTurnEnvironment",
}


def _import(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@functools.cache
def resolve_environment(name: str) -> type[Environment]:
    """Built-in name, then entry point, then `module:attr`; ValueError listing known names otherwise."""
    if name in BUILTIN_ENVIRONMENTS:
        cls = _import(BUILTIN_ENVIRONMENTS[name])
    elif plugins := [ep for ep in entry_points(group="temper.environments") if ep.name == name]:
        cls = plugins[0].load()
    elif ":" in name:
        try:
            cls = _import(name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"environment {name!r}: cannot import ({e})") from None
    else:
        known = sorted(BUILTIN_ENVIRONMENTS) + sorted(ep.name for ep in entry_points(group="temper.environments"))
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(known)} (or use module:attr)")
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise TypeError(f"environment {name!r} is not an environments.base.Environment subclass")
    return cls
