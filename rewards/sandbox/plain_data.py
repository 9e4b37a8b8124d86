"""What crosses the sandbox boundary: strict builtin data as tagged JSON, and nothing else.

Only values whose type is exactly a builtin data type are encoded (no subclasses, so no `__eq__` or
`__hash__` override survives the trip), and decoding creates exactly those types. The tags:
None/bool/int/float/str as themselves; {"L": [...]} list, {"T": [...]} tuple, {"S": [...]} set,
{"F": [...]} frozenset, {"D": [[key, value], ...]} dict, {"B": "hex"} bytes, {"C": [re, im]} complex.

Stdlib only, and standalone on purpose: the sandbox harness and the trusted checker of check-style
tests run as `python -c` without temper (runner.py's `standalone_source` defines this module
for them first); the code verifier imports it normally.
"""

MAX_DEPTH = 60
_TAGS = {"L": list, "T": tuple, "S": set, "F": frozenset}


class NotData(Exception):
    """A value that is not strict builtin data (or a malformed encoding of one)."""


def encode(v, materialize=False, depth=0):
    """Strict builtin data as tagged JSON; anything else (subclasses included) raises NotData.

    materialize: encode any other iterable (a generator, a map) as a list, for contexts that consume it.
    """
    if depth > MAX_DEPTH:
        raise NotData("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list or t is tuple or t is set or t is frozenset:
        tag = {list: "L", tuple: "T", set: "S", frozenset: "F"}[t]
        return {tag: [encode(x, False, depth + 1) for x in v]}
    if t is dict:
        return {"D": [[encode(k, False, depth + 1), encode(x, False, depth + 1)] for k, x in v.items()]}
    if t is bytes:
        return {"B": v.hex()}
    if t is complex:
        return {"C": [v.real, v.imag]}
    if materialize and hasattr(v, "__iter__"):
        return {"L": [encode(x, False, depth + 1) for x in v]}
    raise NotData(f"not plain builtin data: a value of type {t.__name__}")


def decode(v, depth=0):
    """Tagged JSON -> strict builtin data. Only exact builtin types can come out of here."""
    if depth > MAX_DEPTH + 4:
        raise NotData("value nested too deeply")
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is dict and len(v) == 1:
        (tag, body), = v.items()
        try:
            if tag in _TAGS and type(body) is list:
                return _TAGS[tag](decode(x, depth + 1) for x in body)
            if tag == "D" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
                return {decode(k, depth + 1): decode(x, depth + 1) for k, x in body}
            if tag == "B" and type(body) is str:
                return bytes.fromhex(body)
        except (TypeError, ValueError) as e:  # an unhashable key or set member, bad hex
            raise NotData(f"malformed value: {e}") from None
        if tag == "C" and type(body) is list and len(body) == 2 and all(type(x) is float for x in body):
            return complex(body[0], body[1])
    raise NotData("the sandbox returned a value that is not plain data")
