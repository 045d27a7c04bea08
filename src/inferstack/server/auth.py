"""Authentication and authorization of every call, for every transport.

Each worker has one `Authorizer`, fed by the config store's callers document
(core/callers.py) through a watch, so a revocation reaches it within a second. The call
pipeline (server/pipeline.py) asks it, for every gRPC method, HTTP route and console call:

* `authenticate(method, header)`: the `authorization` value of the call -> the caller (or
  None when no callers are configured: the server is open). UNAUTHENTICATED when callers are
  configured and the token is missing, malformed, unknown or revoked.
* `authorize(method, caller, needs)`: each `Need` (permission, resource kind, names) must be
  allowed by the caller's grants, else PERMISSION_DENIED naming the first thing denied.

The parts' services say what a request touches (the feature groups of a Retrieve, the model
of an Infer, ...: core/callers.py `Need`) as a function that is only evaluated when callers
are configured, so an open server pays nothing for it. A verified token is remembered per
worker under its sha256, so a call pays one dictionary lookup; scrypt runs once per token
(in a thread, one at a time per worker, so guessing cannot take the loop or all cores).
Concurrent first calls of one token share its check, and one check per token id runs at a
time (another secret for the same id meanwhile is refused at once, counted as "busy"): a
flood of made-up secrets for a known id costs one scrypt at a time, and a first call of any
other caller waits behind at most one check per caller.
Tokens are never logged nor put in any message.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from inferstack import metrics
from inferstack.configstore.base import CallerStore, Watch
from inferstack.core.callers import ALL, Caller, Callers, Need, token_id_of
from inferstack.core.errors import PermissionDeniedError, UnauthenticatedError
from inferstack.server.requestcontext import set_caller

log = logging.getLogger(__name__)
MAX_REMEMBERED = 10_000  # verified (and refused) tokens remembered per worker
VERIFICATIONS_AT_ONCE = 1
NO_TOKEN = "no token: send the header 'authorization: Bearer <token>'"
BAD_TOKEN = "the token is not valid (unknown, revoked or malformed)"
BUSY_TOKEN = (
    "another token with this token id is being checked; retry in a moment "
    "(one check per token id at a time)"
)
_KIND_TEXT = {
    "feature_group": "feature group",
    "model": "model",
    "interaction_type": "interaction type",
}


Needs = Callable[[], Iterable[Need]]


@dataclass
class _State:
    callers: Callers
    by_token_id: dict[str, Caller]
    verified: dict[bytes, Caller] = field(default_factory=dict)
    refused: set[bytes] = field(default_factory=set)

    @classmethod
    def of(cls, callers: Callers) -> _State:
        return cls(callers, callers.by_token_id())


class Authorizer:
    """One per worker. `use` may be called from any thread (the config store's watch): it
    swaps one reference, and every remembered token goes with the old state."""

    def __init__(self, callers: Callers | None = None) -> None:
        self._state = _State.of(callers or Callers())
        self._verifying: asyncio.Semaphore | None = None
        self._counters: dict[tuple[str, str], Any] = {}  # (caller, method) -> its counter
        self._checks: dict[bytes, asyncio.Future[bool]] = {}  # token sha256 -> its check
        self._checking: set[str] = set()  # token ids with a check under way

    @property
    def required(self) -> bool:
        return self._state.callers.required

    @property
    def callers(self) -> Callers:
        return self._state.callers

    def use(self, callers: Callers) -> None:
        current = self._state.callers
        if current.required and not callers.required:
            # The document vanished (deleted by hand?): stay closed rather than open up.
            log.warning("the callers document is gone; keeping tokens required, none valid")
            callers = Callers(current.revision, {})
        if callers.revision != current.revision or callers.required != current.required:
            log.info(
                "callers revision %d in use (%d callers)", callers.revision, len(callers.callers)
            )
        self._state = _State.of(callers)

    async def caller_of(self, header: str | None) -> Caller | None:
        """The caller the `authorization` value names; None if the server is open."""
        state = self._state
        if not state.callers.required:
            return None
        token = bearer_token(header)
        if token is None:
            raise UnauthenticatedError(NO_TOKEN)
        key = hashlib.sha256(token.encode()).digest()
        caller = state.verified.get(key)
        if caller is not None:
            return caller
        caller = state.by_token_id.get(token_id_of(token) or "")
        if caller is None or key in state.refused:
            raise UnauthenticatedError(BAD_TOKEN)
        check = self._checks.get(key)
        if check is None:
            # One check per token id at a time: a flood of made-up secrets for a known id
            # costs one scrypt at a time and waits behind nobody else's first call; the
            # checks waiting are at most one per caller.
            if caller.token_id in self._checking:
                raise UnauthenticatedError(BUSY_TOKEN)
            check = asyncio.ensure_future(self._verify(state, caller, key, token))
            self._checks[key] = check
            self._checking.add(caller.token_id)
            check.add_done_callback(lambda _: self._checked(key, caller.token_id))
        # Concurrent first calls of one token share its one check; a caller that goes away
        # does not cancel it for the others.
        valid = await asyncio.shield(check)
        # Revoked while we hashed: the new state no longer holds this caller.
        if not valid or self._state.callers.callers.get(caller.name) is not caller:
            raise UnauthenticatedError(BAD_TOKEN)
        return caller

    async def _verify(self, state: _State, caller: Caller, key: bytes, token: str) -> bool:
        if self._verifying is None:
            self._verifying = asyncio.Semaphore(VERIFICATIONS_AT_ONCE)
        async with self._verifying:
            valid = await asyncio.to_thread(caller.verifies, token)
        remember = state.verified if valid else state.refused
        if len(remember) >= MAX_REMEMBERED:
            remember.clear()
        if valid:
            state.verified[key] = caller
        else:
            state.refused.add(key)
        return valid

    def _checked(self, key: bytes, token_id: str) -> None:
        self._checks.pop(key, None)
        self._checking.discard(token_id)

    async def authenticate(self, method: str, header: str | None) -> Caller | None:
        """The calling caller (set as the request context's caller), None when the server
        is open; UNAUTHENTICATED (counted) when callers are configured and the token is not
        valid."""
        if not self.required:
            return None
        try:
            caller = await self.caller_of(header)
        except UnauthenticatedError as exc:
            reason = {NO_TOKEN: "no_token", BUSY_TOKEN: "busy"}.get(str(exc), "bad_token")
            metrics.AUTH_DENIALS.labels("", method, reason).inc()
            raise
        assert caller is not None
        set_caller(caller.name)
        counter = self._counters.get((caller.name, method))
        if counter is None:  # labels() costs microseconds; a call should not pay it each time
            counter = self._counters[caller.name, method] = metrics.CALLER_REQUESTS.labels(
                caller.name, method
            )
        counter.inc()
        return caller

    @staticmethod
    def authorize(method: str, caller: Caller | None, needs: Needs | None) -> None:
        """PERMISSION_DENIED (counted) naming the first resource `caller` may not use."""
        if caller is None or needs is None:
            return
        for need in needs():
            for name in need.names:
                if not caller.allows(need.permission, need.kind, name):
                    metrics.AUTH_DENIALS.labels(caller.name, method, "permission").inc()
                    raise PermissionDeniedError(denial(caller.name, need, name))


def bearer_token(header: str | None) -> str | None:
    """The token of `Bearer <token>` (scheme case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def denial(caller: str, need: Need, name: str) -> str:
    one = _KIND_TEXT[need.kind]
    what = f"every {one}" if name == ALL else f"{one} '{name}'"
    return f"caller '{caller}' may not {need.permission} {what}"


def start(callers: CallerStore) -> tuple[Authorizer, Watch]:
    """An authorizer fed by the callers store from now on (stop the watch to end)."""
    authorizer = Authorizer(callers.load())
    return authorizer, callers.watch(authorizer.use)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def open_bind_problem(host: str, callers: Callers, insecure_open: bool) -> str | None:
    """Why serving `host` must not start (an open server reachable from other machines),
    or None."""
    if callers.required or is_loopback(host) or insecure_open:
        return None
    return (
        f"refusing to serve {host} with no callers configured: anyone reaching it could read "
        "and write everything. Add callers (`inferstack callers add NAME --grant ...`), bind "
        "127.0.0.1, or pass --insecure-open"
    )


def log_access(host: str, callers: Callers, tls: bool = False) -> None:
    """Say at start-up whether calls need a token, and how exposed an open server is."""
    if callers.required:
        log.info("callers configured (%d): every call needs a token", len(callers.callers))
        if not tls and not is_loopback(host):
            log.warning(
                "serving %s without TLS: callers' tokens travel in clear text and anyone on "
                "the path can reuse them; give --tls-cert and --tls-key (or tls: in the "
                "deployment file)",
                host,
            )
    elif is_loopback(host):
        log.warning(
            "no callers configured: every call is allowed; listening on loopback (%s) only. "
            "`inferstack callers add` requires tokens",
            host,
        )
    else:
        log.warning(
            "no callers configured and --insecure-open: ANY client that reaches %s may read "
            "and write everything",
            host,
        )
