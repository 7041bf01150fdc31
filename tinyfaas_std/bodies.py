"""The invocation body: a pure parser from request bytes to the arguments of `main`.

Accepted shapes (SPEC section 5): empty (no arguments), a JSON array (`main(*array)`), or a JSON object with
optional `args` (array) and `kwargs` (object). JSON is read strictly: UTF-8 only, no NaN/Infinity, nesting and
integer size bounded, so what reaches a function (and its log record) is JSON any other tool can read back.
Every rejection is `BadRequest`; nothing else escapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest

__all__ = ["Call", "parse_invocation", "loads_strict", "MAX_DEPTH", "MAX_INT_DIGITS"]

MAX_DEPTH = 64          # arguments are data, not programs; deeper input is a mistake or an attack
MAX_INT_DIGITS = 4300   # int() of huge literals is quadratic: CPython's own guard (sys.int_info) rejects more

_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not valid JSON", code="bad_json")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True, slots=True)
class Call:
    args: list[Any]
    kwargs: dict[str, Any]
    args_json: str
    kwargs_json: str


def _depth_ok(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(_depth_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_depth_ok(v, depth + 1) for v in value.values())
    return True


def loads_strict(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
        value = _decoder.decode(text)  # integers past MAX_INT_DIGITS raise ValueError in int() itself
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", code="bad_json") from None
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_DEPTH} levels", code="bad_json") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"the body is not valid JSON: {exc}", code="bad_json") from None
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and not _depth_ok(value, 0):  # cheap test first
        raise BadRequest(f"JSON nested deeper than {MAX_DEPTH} levels", code="bad_json")
    return value


def parse_invocation(body: bytes) -> Call:
    if not body.strip():
        return Call([], {}, "[]", "{}")
    value = loads_strict(body)
    if isinstance(value, list):
        args, kwargs = value, {}
    elif isinstance(value, dict):
        unknown = set(value) - {"args", "kwargs"}
        if unknown:
            raise BadRequest(f"unknown keys {sorted(unknown)}: use 'args' and 'kwargs'", code="bad_arguments")
        args, kwargs = value.get("args", []), value.get("kwargs", {})
        if not isinstance(args, list):
            raise BadRequest("'args' must be a JSON array", code="bad_arguments")
        if not isinstance(kwargs, dict):
            raise BadRequest("'kwargs' must be a JSON object", code="bad_arguments")
    else:
        raise BadRequest("the body must be empty, a JSON array, or an object with 'args'/'kwargs'",
                         code="bad_arguments")
    return Call(args, kwargs, _encode(args) if args else "[]", _encode(kwargs) if kwargs else "{}")
