"""A function's own settings (SPEC 10): the rules for `calling`, `env`, `secrets`, `timeout`, `memory_mb` and
`max_workers`, as upload form fields and as a PATCH document.

Strategy: pure. Text or decoded JSON in, a `Changes` value out; every rule that refuses raises `BadRequest` with
`bad_env` or `bad_setting`, naming the field. `apply` folds changes into the settings of the version they start
from, so an upload and a PATCH share one set of rules. Secrets are validated here like environment names but
never echoed back in a message: an error names the secret, never its value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from . import cron
from .errors import BadRequest

__all__ = ["CALLINGS", "Changes", "from_form", "from_patch", "apply", "parse_env_lines", "check_environment",
           "SETTINGS"]

CALLINGS = ("args", "event", "http")
SETTINGS = ("calling", "env", "timeout", "memory_mb", "max_workers", "schedule")   # what a version holds
MAX_ENV_ENTRIES = 100         # SPEC 10: settings, not data; environments of more are a mistake
MAX_ENV_BYTES = 64 * 1024     # SPEC 10, env and secrets together: well below the kernel's argument+environment limit
MAX_TIMEOUT = 3600.0          # an hour: longer work belongs in async calls (SPEC 11), not a held connection
MEMORY_RANGE = (64, 65536)    # MiB: below 64 a Python worker cannot start; above is more than one host has
WORKERS_RANGE = (1, 64)       # parallel calls of one function: each worker is a process
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = {"PATH", "HOME", "TMPDIR", "LANG"}           # set by the sandbox for every worker
_RESERVED_PREFIXES = ("TINYFAAS_", "PYTHON", "LD_")      # ours, and those that change how Python or ld.so load


@dataclass(frozen=True, slots=True)
class Changes:
    """What an upload or a PATCH asks to change. `env` and `secrets` map names to values (None removes one);
    `replace_env`/`replace_secrets`: the given set replaces the old one instead of being merged into it."""
    settings: dict[str, Any] = field(default_factory=dict)   # calling, timeout, memory_mb, max_workers, schedule
    env: dict[str, str | None] | None = None
    secrets: dict[str, str | None] | None = None
    replace_env: bool = False
    replace_secrets: bool = False


def parse_env_lines(text: str, field_name: str) -> dict[str, str]:
    """`KEY=VALUE` lines: `#` comments and blank lines allowed; the value is the rest of the line after the first
    `=`, as it is (spaces kept)."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 and friends may be in a value
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise BadRequest(f"{field_name}, line {number}: expected NAME=VALUE", code="bad_env", field=field_name,
                             line=number)
        _check_name(name, field_name)
        if "\0" in value:
            raise BadRequest(f"{field_name}: the value of {name} contains NUL", code="bad_env", field=field_name)
        if name in env:
            raise BadRequest(f"{field_name}: {name} is set twice", code="bad_env", field=field_name)
        env[name] = value
    return env


def from_form(fields: dict[str, str]) -> Changes:
    """The settings fields of an upload form (all optional). `env` and `secrets` given replace the old sets."""
    settings: dict[str, Any] = {}
    if "calling" in fields:
        settings["calling"] = _calling(fields["calling"].strip())
    if "schedule" in fields:  # an empty field: no schedule
        settings["schedule"] = _schedule(fields["schedule"].strip() or None)
    for name in ("timeout", "memory_mb", "max_workers"):
        if name in fields:
            settings[name] = _number(name, fields[name].strip())
    env = parse_env_lines(fields["env"], "env") if "env" in fields else None
    secrets = parse_env_lines(fields["secrets"], "secrets") if "secrets" in fields else None
    return Changes(settings, env, secrets, replace_env=env is not None,  # type: ignore[arg-type]
                   replace_secrets=secrets is not None)


_PATCH_KEYS = {"calling", "env", "secrets", "timeout", "memory_mb", "max_workers", "schedule"}


def from_patch(doc: Any) -> Changes:
    """A PATCH document: a JSON object of settings. `env` and `secrets` are merged; a null value removes a name.
    `timeout`, `memory_mb` or `max_workers` set to null fall back to the server's flags."""
    if not isinstance(doc, dict) or not doc:
        raise BadRequest("send a JSON object with any of: " + ", ".join(sorted(_PATCH_KEYS)), code="bad_setting")
    unknown = sorted(set(doc) - _PATCH_KEYS)
    if unknown:
        raise BadRequest(f"unknown setting(s): {', '.join(unknown)}", code="bad_setting", fields=unknown)
    settings: dict[str, Any] = {}
    if "calling" in doc:
        settings["calling"] = _calling(doc["calling"])
    for name in ("timeout", "memory_mb", "max_workers"):
        if name in doc:
            settings[name] = None if doc[name] is None else _number(name, doc[name])
    if "schedule" in doc:
        settings["schedule"] = _schedule(doc["schedule"])
    return Changes(settings, _env_object(doc, "env"), _env_object(doc, "secrets"))


def apply(old_env: dict[str, str], old_secrets: dict[str, str], changes: Changes) -> tuple[dict[str, str],
                                                                                          dict[str, str]]:
    """The environment and secrets after `changes`; checked together, as the worker will receive them. A name
    both in the inherited env and in the secrets (a rollback to a version from before it became a secret) is the
    secret's: it is dropped from the env. Setting one name as both in the same change is refused."""
    env = _merge(old_env, changes.env, changes.replace_env)
    secrets = _merge(old_secrets, changes.secrets, changes.replace_secrets)
    named = set(changes.env or ()) | set(changes.secrets or ())
    env = {name: value for name, value in env.items() if name not in secrets or name in named}
    check_environment(env, secrets)
    return env, secrets


def check_environment(env: dict[str, str], secrets: dict[str, str]) -> None:
    both = sorted(set(env) & set(secrets))
    if both:
        raise BadRequest(f"{', '.join(both)}: set both as env and as a secret; choose one", code="bad_env")
    if len(env) + len(secrets) > MAX_ENV_ENTRIES:
        raise BadRequest(f"at most {MAX_ENV_ENTRIES} env and secret entries together", code="bad_env")
    size = sum(len(k.encode()) + len(v.encode()) + 2 for d in (env, secrets) for k, v in d.items())
    if size > MAX_ENV_BYTES:
        raise BadRequest(f"env and secrets together are {size} bytes; at most {MAX_ENV_BYTES}", code="bad_env")


def _merge(old: dict[str, str], new: dict[str, str | None] | None, replace: bool) -> dict[str, str]:
    if new is None:
        return dict(old)
    merged = {} if replace else dict(old)
    for name, value in new.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _env_object(doc: dict[str, Any], key: str) -> dict[str, str | None] | None:
    if key not in doc:
        return None
    value = doc[key]
    if not isinstance(value, dict):
        raise BadRequest(f"{key} must be a JSON object of NAME: value (null removes a name)", code="bad_env")
    for name, item in value.items():
        _check_name(name, key)
        if item is not None and not isinstance(item, str):
            raise BadRequest(f"{key}: the value of {name} must be a string or null", code="bad_env", field=key)
        if item is not None and "\0" in item:
            raise BadRequest(f"{key}: the value of {name} contains NUL", code="bad_env", field=key)
    return value


def _check_name(name: str, field_name: str) -> None:
    shown = name[:64]
    if not _NAME.fullmatch(name):
        raise BadRequest(f"{field_name}: {shown!r} is not a name of letters, digits and '_' (not starting with a "
                         f"digit)", code="bad_env", field=field_name)
    if name in _RESERVED or name.startswith(_RESERVED_PREFIXES):
        raise BadRequest(f"{field_name}: {name} is reserved (PATH, HOME, TMPDIR, LANG and names starting with "
                         f"TINYFAAS_, PYTHON or LD_ are the server's)", code="bad_env", field=field_name)


def _schedule(value: Any) -> str | None:
    """A cron expression, `@daily`-style name or `@every <n>s|m|h` (cron.py); None removes the schedule."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("schedule must be a string such as '*/5 * * * *' or '@every 30s', or null",
                         code="bad_schedule", field="schedule")
    return cron.parse(value).expr


def _calling(value: Any) -> str:
    if value not in CALLINGS:
        raise BadRequest(f"calling must be one of {', '.join(CALLINGS)}", code="bad_setting", field="calling")
    return str(value)


def _number(name: str, value: Any) -> float | int:
    """timeout (seconds, 0 < t <= 3600), memory_mb (64-65536), max_workers (1-64), from text or JSON."""
    try:
        number = float(value) if name == "timeout" else _integer(value)
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        number = math.nan
    if name == "timeout" and 0 < number <= MAX_TIMEOUT:
        return number
    low, high = MEMORY_RANGE if name == "memory_mb" else WORKERS_RANGE
    if name != "timeout" and low <= number <= high:
        return int(number)
    bounds = f"0 < {name} <= {MAX_TIMEOUT:g}" if name == "timeout" else f"{low} <= {name} <= {high}"
    raise BadRequest(f"{name} must be a number with {bounds}", code="bad_setting", field=name)


def _integer(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    raise ValueError(value)
