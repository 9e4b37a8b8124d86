"""Finding verifiers by name: built-ins, `temper.verifiers` entry points, or `module:attr` strings.

Built-ins are import strings, not classes, so listing them (`temper rewards list`) imports nothing heavy
and a built-in whose module is missing or broken shows up as unavailable instead of crashing the list.
Resolution is cached per process (configs/plugins.py), so calling it again in every Ray worker is cheap.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from temper.configs.plugins import cached_resolver, plugin_entry_points
from temper.rewards.base import NoParams, Verifier, VerifyRequest, VerifyResult

BUILTIN_VERIFIERS: dict[str, str] = {
    "math": "temper.rewards.math_verifier:MathVerifier",
    "format": "temper.rewards.format:FormatVerifier",
    "code": "temper.rewards.code:CodeVerifier",
    "judge": "temper.rewards.judge:JudgeVerifier",
}
ENTRY_POINT_GROUP = "temper.verifiers"


def _check(name: str, obj: Any) -> type[Verifier] | Callable[..., Any]:
    if inspect.isclass(obj):
        if not issubclass(obj, Verifier):
            raise ValueError(f"verifier {name!r}: class {obj.__name__} is not a temper.rewards.base.Verifier")
        return obj
    if callable(obj):
        return obj
    raise ValueError(f"verifier {name!r}: {obj!r} is neither a Verifier class nor a function")


_resolve = cached_resolver("verifier", BUILTIN_VERIFIERS, ENTRY_POINT_GROUP, _check)


def resolve_verifier(name: str) -> type[Verifier] | Callable[..., Any]:
    """A Verifier subclass or a plain function `f(request) -> float | VerifyResult`, by name."""
    return _resolve(name)


class FunctionVerifier(Verifier):
    """Wraps a plain-function plugin so it looks like any other verifier."""

    def __init__(self, fn: Callable[[VerifyRequest], float | VerifyResult]) -> None:
        super().__init__(NoParams())
        self.fn = fn

    def verify(self, request: VerifyRequest) -> VerifyResult:
        start = time.perf_counter()
        out = self.fn(request)
        seconds = time.perf_counter() - start
        if isinstance(out, VerifyResult):
            return out if out.seconds else VerifyResult(out.score, out.breakdown, out.error, seconds)
        if isinstance(out, bool | int | float):
            return VerifyResult(float(out), seconds=seconds)
        raise TypeError(f"verifier function returned {type(out).__name__}, expected float or VerifyResult")


def params_model(obj: type[Verifier] | Callable[..., Any]) -> type[BaseModel]:
    return obj.Params if inspect.isclass(obj) else NoParams


def build_verifier(name: str, params: dict[str, Any] | None = None) -> Verifier:
    """Resolve `name`, validate `params` with its Params model (pydantic.ValidationError), build it."""
    obj = resolve_verifier(name)
    validated = params_model(obj).model_validate(params or {})
    if inspect.isclass(obj):
        return obj(validated)
    return FunctionVerifier(obj)


@dataclass
class VerifierInfo:
    """One line of `temper rewards list`."""

    name: str
    source: str  # "builtin", "entry point (DIST)", or "import string"
    target: str  # module:attr
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> type, default, description
    doc: str = ""
    error: str | None = None  # why it is unavailable


def _describe_params(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    out = {}
    for pname, f in model.model_fields.items():
        annotation = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        out[pname] = {"type": annotation, "default": default, "description": f.description or ""}
    return out


def _info(name: str, source: str, target: str) -> VerifierInfo:
    info = VerifierInfo(name, source, target)
    try:
        obj = resolve_verifier(name)
    except Exception as e:  # noqa: BLE001 -- an unimportable plugin is listed as unavailable, with the reason
        info.error = f"{type(e).__name__}: {e}"
        return info
    info.params = _describe_params(params_model(obj))
    info.doc = (inspect.getdoc(obj) or "").split("\n")[0]
    return info


def list_verifiers() -> list[VerifierInfo]:
    """Every built-in and entry-point verifier, with its parameters (or why it cannot be imported)."""
    infos = [_info(name, "builtin", target) for name, target in BUILTIN_VERIFIERS.items()]
    for name, ep in sorted(plugin_entry_points(ENTRY_POINT_GROUP).items()):
        if name not in BUILTIN_VERIFIERS:
            dist = ep.dist.name if ep.dist is not None else "?"
            infos.append(_info(name, f"entry point ({dist})", ep.value))
    return infos
