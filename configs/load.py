"""Reading a run config: TOML file + `--set a.b=value` overrides -> a validated RunConfig.

Every mistake becomes one ConfigError whose message names the file, the line (when the key is in the
file) or the override, and the field, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from temper.configs.schema import RunConfig


class ConfigError(ValueError):
    """A user's mistake in a config file or override; the message is meant to be printed as is."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` -> (["a", "b", "c"], value); VALUE is read as TOML, else kept as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set learner.optimizer.lr=1e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words like `--set name=my-run`
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key -> 1-based line where the TOML file sets it (tables, dotted keys, array tables)."""
    lines: dict[str, int] = {}
    section: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?", stripped):
            section = [p.strip().strip('"') for p in m.group(1).split(".")]
            lines.setdefault(".".join(section), number)
        elif m := re.match(r"([A-Za-z0-9_\-.\"' ]+?)\s*=", stripped):
            key = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            lines.setdefault(".".join(section + key), number)
    return lines


def _describe(errors: ValidationError, lines: dict[str, str], overrides: dict[str, str], source: str) -> str:
    parts = []
    for err in errors.errors():
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) or "(top level)"
        where = source
        inside = [overrides[k] for k in overrides if loc and k.startswith(field + ".")]
        if inside:  # an error about a whole table that an override changed part of: name the override
            where = ", ".join(f"--set {o}" for o in inside)
        else:
            for depth in range(len(loc), 0, -1):  # the most specific prefix that we can place
                prefix = ".".join(loc[:depth])
                if prefix in overrides:
                    where = f"--set {overrides[prefix]}"
                    break
                if prefix in lines:
                    where = lines[prefix]
                    break
        msg = err["msg"].removeprefix("Value error, ")  # a schema validator's own sentence
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check the spelling)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{where}: {field}: {msg}")
    return "invalid config:\n  " + "\n  ".join(parts)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """child over base, recursively for tables; arrays and values are replaced whole."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A TOML file with its `extends = "other.toml"` chain resolved (relative to the file), and where
    each dotted key was set ("file:line"), the child's lines winning."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    lines = {key: f"{path}:{n}" for key, n in _key_lines(text).items()}
    parent = tree.pop("extends", None)
    if parent is None:
        return tree, lines
    if not isinstance(parent, str):
        raise ConfigError(f"{lines.get('extends', path)}: extends: expected a file name, got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen:
        raise ConfigError(f"{lines['extends']}: extends: cycle through {parent_path}")
    base, base_lines = _read_tree(parent_path, (*seen, path.resolve()))
    return _merge(base, tree), {**base_lines, **lines}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a run config; raise ConfigError naming file/line/field on any mistake.

    A recipe may start with `extends = "base.toml"` to change only what differs from another recipe."""
    path = Path(path)
    tree, lines = _read_tree(path)
    applied: dict[str, str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(tree, keys, value, f"--set {item}")
        applied[".".join(keys)] = item
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e, lines, applied, str(path))) from None
