"""Finding a plugin object by name, shared by the verifier and environment registries.

A name is a built-in (looked up in the caller's name -> "module:attr" dict, imported lazily so listing
stays cheap), an entry point of the caller's group (out-of-tree packages), or a `module:attr` string (the
escape hatch). Lives in configs/ because it imports nothing heavy and both registries sit above it.
Both registries resolve through `cached_resolver`, so both cache the same way: once per name and process,
which makes resolving again in every Ray worker cheap and idempotent (a failure is not cached).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

T = TypeVar("T")


def import_target(target: str, kind: str) -> Any:
    """`package.module:attr.sub` -> the object; ValueError when the string is not of that shape."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{kind} {target!r}: expected 'module:attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def plugin_entry_points(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def resolve_plugin(name: str, kind: str, builtins: dict[str, str], group: str) -> Any:
    """Built-in name, then `module:attr`, then entry point; ValueError naming the known ones otherwise."""
    if name in builtins:
        return import_target(builtins[name], kind)
    if ":" in name:
        try:
            return import_target(name, kind)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{kind} {name!r}: cannot import it ({type(e).__name__}: {e})") from None
    eps = plugin_entry_points(group)
    if name not in eps:
        known = ", ".join(sorted(set(builtins) | set(eps)))
        raise ValueError(f"unknown {kind} {name!r}; known: {known} (or name one as 'module:attr')")
    return eps[name].load()


def cached_resolver(kind: str, builtins: dict[str, str], group: str,
                    check: Callable[[str, Any], T]) -> Callable[[str], T]:
    """`name -> object` for one registry: `resolve_plugin`, then `check(name, obj)` (which returns the
    object or raises naming what is wrong with it), cached per name."""

    @functools.cache
    def resolve(name: str) -> T:
        return check(name, resolve_plugin(name, kind, builtins, group))

    return resolve
