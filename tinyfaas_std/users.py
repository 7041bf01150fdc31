"""Users and roles (SPEC 12): who may do what, and the file that says so.

Strategy: `UserStore` owns `data/users.json` (mode 0600, written atomically) and keeps the users in memory behind
its lock; every change bumps `generation`, which the authenticator's cache of verified credentials compares, so a
changed or removed user takes effect on the next request. A password is kept only as a PBKDF2-HMAC-SHA256 hash
(600,000 iterations, a random 16-byte salt per user). `may` is the whole permission rule, pure: a role, the user's
name patterns, what a route does (its `Access` in the route table) and the function it concerns.
"""

from __future__ import annotations

import base64
import enum
import fnmatch
import functools
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BadRequest, Conflict, NotFound
from .state import atomic_write

__all__ = ["User", "UserStore", "Access", "ROLES", "may", "hash_password", "verify_password", "check_user"]

ROLES = ("admin", "developer", "invoker", "viewer")
ITERATIONS = 600_000      # OWASP's 2023 figure for PBKDF2-HMAC-SHA256: about 0.2 s here, once per new header
MAX_USERS = 10_000        # a team, not a population
MAX_PATTERNS = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_PATTERN = re.compile(r"[A-Za-z0-9_*?\[\]-]{1,64}")  # glob patterns over function names


class Access(enum.Enum):
    """What a route does, as far as permissions go."""
    CALL = "call"            # sync and async calls of a function
    CALL_STATE = "call_state"  # GET /admin/calls/<id>: of the user's functions, to who may call or read them
    CHANGE = "change"        # upload, PATCH, rollback, delete of a function
    READ = "read"            # describe, logs, versions of a function; the list of functions
    STATUS = "status"        # /admin/status
    METRICS = "metrics"      # /metrics
    CANCEL = "cancel"        # DELETE /admin/calls/<id>
    USERS = "users"          # the users API
    SELF = "self"            # GET /admin/me: who the credentials are (every role)


# role -> what it may do (for the functions its patterns match, where a function is concerned)
_RIGHTS = {
    "admin": set(Access),
    "developer": {Access.SELF, Access.CALL, Access.CALL_STATE, Access.CHANGE, Access.READ, Access.STATUS,
                  Access.CANCEL},
    "invoker": {Access.SELF, Access.CALL, Access.CALL_STATE},
    "viewer": {Access.SELF, Access.READ, Access.CALL_STATE, Access.STATUS, Access.METRICS},
}


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    functions: tuple[str, ...] | None = None   # glob patterns; None: every function
    password_hash: str = ""

    def matches(self, function: str) -> bool:
        return self.functions is None or _matcher(self.functions)(function) is not None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role,
                "functions": list(self.functions) if self.functions is not None else None}


@functools.lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], Any]:
    """One compiled regular expression for a user's patterns: a call checks them with one match."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def may(user: User, access: Access, function: str | None = None) -> bool:
    """Whether `user` may do `access` (to `function`, when the route concerns one)."""
    if access not in _RIGHTS[user.role]:
        return False
    return function is None or user.role == "admin" or user.matches(function)


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    return f"pbkdf2_sha256${ITERATIONS}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        given = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(given, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def check_user(doc: Any, *, new: bool) -> dict[str, Any]:
    """The fields of a users API body (`name` and `password` required when `new`), or 400 `bad_user`."""
    if not isinstance(doc, dict):
        raise BadRequest('send a JSON object: {"name", "password", "role", "functions"?}', code="bad_user")
    allowed = {"name", "password", "role", "functions"} if new else {"password", "role", "functions"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", code="bad_user")
    missing = [f for f in (("name", "password", "role") if new else ()) if f not in doc]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}", code="bad_user")
    if "name" in doc and not (isinstance(doc["name"], str) and _NAME.fullmatch(doc["name"])):
        raise BadRequest("a user name is 1-64 characters of letters, digits and _ . @ -", code="bad_user")
    if "password" in doc and not (isinstance(doc["password"], str) and 8 <= len(doc["password"]) <= 1024):
        raise BadRequest("a password is 8 to 1024 characters", code="bad_user")
    if "role" in doc and doc["role"] not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", code="bad_user")
    if "functions" in doc and doc["functions"] is not None:
        patterns = doc["functions"]
        if isinstance(patterns, str):
            patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        if not (isinstance(patterns, list) and 0 < len(patterns) <= MAX_PATTERNS
                and all(isinstance(p, str) and _PATTERN.fullmatch(p) for p in patterns)):
            raise BadRequest("functions must be a list of name patterns such as 'report-*', or null for all",
                             code="bad_user")
        doc = {**doc, "functions": patterns}
    return doc


class UserStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self.generation = 0
        if path.exists():
            raw = json.loads(path.read_bytes())
            for item in raw.get("users", []):
                functions = item.get("functions")
                self._users[item["name"]] = User(item["name"], item["role"],
                                                 tuple(functions) if functions is not None else None,
                                                 item["password_hash"])

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)

    def all(self) -> list[User]:
        with self._lock:
            return sorted(self._users.values(), key=lambda u: u.name)

    def add(self, name: str, password: str, role: str, functions: list[str] | None) -> User:
        user = User(name, role, tuple(functions) if functions is not None else None, hash_password(password))
        with self._lock:
            if name in self._users:
                raise Conflict(f"there is already a user {name!r}", code="user_exists")
            if len(self._users) >= MAX_USERS:
                raise Conflict(f"at most {MAX_USERS} users", code="too_many_users")
            self._commit({**self._users, name: user})
        return user

    def change(self, name: str, changes: dict[str, Any]) -> User:
        password_hash = hash_password(changes["password"]) if "password" in changes else None
        with self._lock:
            user = self._users.get(name)
            if user is None:
                raise NotFound(f"no user {name[:64]!r}", code="user_not_found")
            functions = changes.get("functions", list(user.functions) if user.functions is not None else None)
            user = User(name, changes.get("role", user.role), tuple(functions) if functions is not None else None,
                        password_hash or user.password_hash)
            self._commit({**self._users, name: user})
        return user

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._users:
                raise NotFound(f"no user {name[:64]!r}", code="user_not_found")
            self._commit({k: v for k, v in self._users.items() if k != name})

    def _commit(self, users: dict[str, User]) -> None:
        """Under the lock: write, then make it the store (a failed write changes nothing)."""
        doc = {"version": 1, "users": [{**asdict(u), "functions": list(u.functions) if u.functions is not None
                                        else None} for u in sorted(users.values(), key=lambda u: u.name)]}
        atomic_write(self._path, json.dumps(doc, indent=1).encode(), mode=0o600)
        self._users = users
        self.generation += 1


def cli(argv: list[str]) -> int:
    """`python -m tinyfaas_std users add NAME --role ROLE [--functions 'a,b-*'] | list | remove NAME`: offline, on
    `data/users.json` (for bootstrap; a running server reads the file at start, the users API changes it live).
    The password comes from a prompt, or from stdin when it is not a terminal."""
    import argparse
    import getpass
    import sys

    parser = argparse.ArgumentParser(prog="python -m tinyfaas_std users")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TINYFAAS_DATA_DIR", "data")))
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--functions", help="comma-separated name patterns, e.g. 'report-*,billing'")
    verbs.add_parser("list")
    remove = verbs.add_parser("remove")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = UserStore(args.data_dir / "users.json")
    try:
        if args.verb == "add":
            password = getpass.getpass(f"password for {args.name}: ") if sys.stdin.isatty() else \
                sys.stdin.readline().rstrip("\n")
            doc = check_user({"name": args.name, "password": password, "role": args.role,
                              **({"functions": args.functions} if args.functions else {})}, new=True)
            store.add(doc["name"], doc["password"], doc["role"], doc.get("functions"))
            print(f"added {args.name} ({args.role})")
        elif args.verb == "remove":
            store.remove(args.name)
            print(f"removed {args.name}")
        else:
            for user in store.all():
                patterns = ",".join(user.functions) if user.functions is not None else "*"
                print(f"{user.name}\t{user.role}\t{patterns}")
    except (BadRequest, Conflict, NotFound) as exc:
        print(f"users: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
