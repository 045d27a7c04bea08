"""Who may call: callers, their grants and their tokens (stored only as salted hashes).

A caller has a name, a token and grants. A token looks like ``isk_<id>_<secret>``: the id is
public and names the stored hash, so a server verifies a token with one scrypt, never by
trying every caller. Only ``scrypt(token, salt)`` is stored, with a salt per caller.

A grant is ``PERMISSION:KIND/NAME``: ``read:feature_group/*``, ``write:feature_group/user_profile``,
``read:model/ranker``, ``write:interaction_type/click``, ``admin:*``. NAME may end in ``*``
(a prefix). Permissions:

* read: Retrieve, Infer, interactions Get (and the console's Look up / Try it);
* write: Persist, interactions Ingest, Hydrate and Sweep;
* admin: everything read and write allow on the same resources, and administration.

Write does not imply read. A request naming every resource of a kind (a Sweep, a Get of all
interaction types) needs a grant whose NAME is ``*``.

The callers document is stored in the config store beside the registry; once it exists
(revision > 0) every call needs a token, even after the last caller is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from inferstack.core.errors import InferstackError, InvalidArgumentError

Permission = Literal["read", "write", "admin"]
Kind = Literal["feature_group", "model", "interaction_type"]
PERMISSIONS: tuple[Permission, ...] = ("read", "write", "admin")
KINDS: tuple[Kind, ...] = ("feature_group", "model", "interaction_type")
ALL = "*"  # a request that names every resource of a kind
TOKEN_PREFIX = "isk_"
# scrypt cost: ~16 MiB and tens of milliseconds; servers cache verified tokens, so a call
# pays it once per token and worker.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"isk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})")


@dataclass(frozen=True, slots=True)
class Need:
    """What one request does to which resources: `names` of one kind (ALL = every one).
    Each part's service declares the needs of its requests; the server checks them against
    the caller's grants (server/auth.py) before the request runs."""

    permission: Permission
    kind: Kind
    names: Iterable[str]


def reads(kind: Kind, names: Iterable[str]) -> Need:
    return Need("read", kind, names)


def writes(kind: Kind, names: Iterable[str]) -> Need:
    return Need("write", kind, names)


def distinct(names: Iterable[str]) -> list[str]:
    """Names once each, in order: a denial names the first one asked for."""
    return list(dict.fromkeys(names))


class CallersConflictError(InferstackError):
    """Someone else changed the callers between our read and our write."""


def check_caller_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"caller name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Grant:
    permission: Permission
    kind: Kind | Literal["*"]
    pattern: str  # a name, a prefix ending in '*', or '*'

    @classmethod
    def parse(cls, text: str) -> Grant:
        """`read:feature_group/*`, `write:model/ranker`, `admin:*`; errors name the text."""
        permission, colon, rest = text.strip().partition(":")
        kind, slash, pattern = rest.partition("/")
        if not colon or permission not in PERMISSIONS:
            raise InvalidArgumentError(
                f"grant {text!r}: must start with one of {', '.join(PERMISSIONS)} and ':' "
                "(e.g. read:feature_group/user_profile)"
            )
        if kind == ALL and not slash:
            return cls(permission, "*", ALL)
        if kind not in KINDS:
            raise InvalidArgumentError(
                f"grant {text!r}: unknown resource kind {kind!r} "
                f"(kinds: {', '.join(KINDS)}, or '*' for every resource)"
            )
        if not pattern or "*" in pattern[:-1] or not _NAME.fullmatch(pattern.rstrip("*") or "x"):
            raise InvalidArgumentError(
                f"grant {text!r}: name a {kind} after '/', a prefix ending in '*', or '*'"
            )
        return cls(permission, kind, pattern)

    def __str__(self) -> str:
        return (
            f"{self.permission}:*"
            if self.kind == ALL
            else f"{self.permission}:{self.kind}/{self.pattern}"
        )

    def allows(self, permission: Permission, kind: Kind, name: str) -> bool:
        if self.permission != permission and self.permission != "admin":
            return False
        if self.kind != ALL and self.kind != kind:
            return False
        if self.pattern == ALL:
            return True
        if name == ALL:  # every resource of the kind: only a '*' grant covers it
            return False
        if self.pattern.endswith("*"):
            return name.startswith(self.pattern[:-1])
        return name == self.pattern


@dataclass(frozen=True)
class Caller:
    name: str
    token_id: str
    salt: str  # hex
    token_hash: str  # hex scrypt(token, salt)
    grants: tuple[Grant, ...]
    created: float = 0.0

    def verifies(self, token: str) -> bool:
        """Whether `token` is this caller's (constant-time comparison of the hashes)."""
        return hmac.compare_digest(hash_token(token, bytes.fromhex(self.salt)), self.token_hash)

    def allows(self, permission: Permission, kind: Kind, name: str) -> bool:
        return any(grant.allows(permission, kind, name) for grant in self.grants)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token_id": self.token_id,
            "salt": self.salt,
            "token_hash": self.token_hash,
            "grants": [str(g) for g in self.grants],
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Caller:
        return cls(
            name=str(data["name"]),
            token_id=str(data["token_id"]),
            salt=str(data["salt"]),
            token_hash=str(data["token_hash"]),
            grants=tuple(Grant.parse(g) for g in data["grants"]),
            created=float(data.get("created", 0.0)),
        )


def hash_token(token: str, salt: bytes) -> str:
    digest = hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return digest.hex()


def token_id_of(token: str) -> str | None:
    """The public id part of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def new_caller(name: str, grants: list[Grant], now: float) -> tuple[Caller, str]:
    """A caller with a fresh token: (caller to store, the token to show once)."""
    token_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    caller = Caller(
        check_caller_name(name), token_id, salt.hex(), hash_token(token, salt), tuple(grants), now
    )
    return caller, token


@dataclass(frozen=True)
class Callers:
    """The callers document. Revision 0 = never written: the server is open."""

    revision: int = 0
    callers: dict[str, Caller] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.revision > 0

    def by_token_id(self) -> dict[str, Caller]:
        return {caller.token_id: caller for caller in self.callers.values()}

    def with_caller(self, caller: Caller) -> Callers:
        if caller.name in self.callers:
            raise InvalidArgumentError(
                f"caller '{caller.name}' exists; revoke it first to give it a new token"
            )
        return Callers(self.revision + 1, {**self.callers, caller.name: caller})

    def without(self, name: str) -> Callers:
        if name not in self.callers:
            known = ", ".join(sorted(self.callers)) or "none"
            raise InvalidArgumentError(f"no caller '{name}' (callers: {known})")
        return Callers(self.revision + 1, {n: c for n, c in self.callers.items() if n != name})

    def encode(self) -> bytes:
        body = {"revision": self.revision, "callers": [c.to_json() for c in self.callers.values()]}
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> Callers:
        if not data:
            return cls()
        try:
            body = json.loads(data)
            callers = [Caller.from_json(c) for c in body["callers"]]
            return cls(int(body["revision"]), {c.name: c for c in callers})
        except (ValueError, TypeError, KeyError, InvalidArgumentError) as exc:
            raise InvalidArgumentError(f"{where}: not a callers document: {exc}") from exc
