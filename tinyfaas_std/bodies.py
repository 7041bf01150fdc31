"""The invocation body: a pure parser from request bytes to the arguments of `main`.

Accepted shapes (SPEC section 5): empty (no arguments), a JSON array (`main(*array)`), or a JSON object with
optional `args` (array) and `kwargs` (object). JSON is read strictly: UTF-8 only, no NaN/Infinity, nesting and
integer size bounded, so what reaches a function (and its log record) is JSON any other tool can read back.
Every rejection is `BadBody` (a `ValueError`); nothing else escapes.

This module runs in two places: the worker loads it by path inside the function's venv (the server forwards the
raw body and never decodes it on the hot path), and the server uses it to describe a call whose worker died
before answering. So it imports the standard library only, nothing from `tinyfaas_std`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports this module too: keep its start-up (and memory) small
    from typing import Any

__all__ = ["BadBody", "Call", "parse_invocation", "loads_strict", "depth_ok", "encode", "MAX_DEPTH",
           "MAX_INT_DIGITS"]

MAX_DEPTH = 64          # arguments are data, not programs; deeper input is a mistake or an attack
MAX_INT_DIGITS = 4300   # int() of huge literals is quadratic: CPython's own guard (sys.int_info) rejects more



def _unserialisable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps builds a new C encoder on every call; this one is built once. Compact, ASCII-only (so lone
# surrogates stay escaped), no NaN/Infinity. Without a markers dict a cyclic value ends in RecursionError.
_iterencode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unserialisable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)


def encode(value: object) -> str:
    """Compact ASCII JSON; raises ValueError (NaN), TypeError (not JSON) or RecursionError (too deep, cyclic)."""
    return "".join(_iterencode(value, 0))


class BadBody(ValueError):
    """The body is not an invocation; `code` is the machine code of the 400 answer."""

    def __init__(self, message: str, code: str = "bad_json") -> None:
        super().__init__(message)
        self.code = code


def _reject_constant(name: str) -> Any:
    raise BadBody(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


class Call:
    """The arguments of one call. (A plain class: `dataclasses` would cost every worker ~1 MB of imports.)"""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def fragment(self) -> bytes:
        """`"args":...,"kwargs":...` for the log record, ASCII only (lone surrogates stay escaped). A number
        too large for a float (`1e400` parses as infinity) has no JSON form: BadBody, like `Infinity` itself."""
        try:
            return b'"args":%s,"kwargs":%s' % ((encode(self.args) if self.args else "[]").encode(),
                                                (encode(self.kwargs) if self.kwargs else "{}").encode())
        except ValueError:
            raise BadBody("a number in the body is too large to be a float (e.g. 1e400)") from None


def depth_ok(value: Any, depth: int = 1) -> bool:
    """Whether no array or object in `value` sits deeper than MAX_DEPTH; `depth` is the level `value` would
    have if it is one (a top-level array is level 1). Scalars add no level. Tuples count as arrays, so a worker
    can check a function's result with the same rule."""
    if isinstance(value, (list, tuple)):
        return depth <= MAX_DEPTH and all(depth_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth <= MAX_DEPTH and all(depth_ok(v, depth + 1) for v in value.values())
    return True


def loads_strict(data: bytes) -> Any:
    try:
        value = _decoder.decode(data.decode("utf-8"))  # integers past MAX_INT_DIGITS fail in int() itself
    except UnicodeDecodeError:
        raise BadBody("the body is not UTF-8") from None
    except RecursionError:
        raise BadBody(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BadBody:
        raise
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise BadBody(f"the body is not valid JSON: {exc}") from None
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and not depth_ok(value):  # cheap test first
        raise BadBody(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def parse_invocation(body: bytes) -> Call:
    if not body.strip():
        return Call([], {})
    value = loads_strict(body)
    if isinstance(value, list):
        return Call(value, {})
    if not isinstance(value, dict):
        raise BadBody("the body must be empty, a JSON array, or an object with 'args'/'kwargs'", "bad_arguments")
    unknown = set(value) - {"args", "kwargs"}
    if unknown:
        raise BadBody(f"unknown keys {sorted(unknown)}: use 'args' and 'kwargs'", "bad_arguments")
    args, kwargs = value.get("args", []), value.get("kwargs", {})
    if not isinstance(args, list):
        raise BadBody("'args' must be a JSON array", "bad_arguments")
    if not isinstance(kwargs, dict):
        raise BadBody("'kwargs' must be a JSON object", "bad_arguments")
    return Call(args, kwargs)
