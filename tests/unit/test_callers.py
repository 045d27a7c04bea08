"""Callers, grants and the authorizer as pure logic, plus the embedded callers document."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from inferstack.configstore.files import open_files
from inferstack.core.callers import (
    ALL,
    Caller,
    Callers,
    CallersConflictError,
    Grant,
    new_caller,
    reads,
    token_id_of,
    writes,
)
from inferstack.core.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from inferstack.server import auth
from inferstack.server.auth import Authorizer, bearer_token


def grants(*texts: str) -> list[Grant]:
    return [Grant.parse(text) for text in texts]


def test_grants_parse_and_print_back() -> None:
    for text in ("read:feature_group/*", "write:model/ranker", "admin:*", "read:model/rank*"):
        assert str(Grant.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("feature_group/x", "must start with one of read, write, admin"),
        ("delete:model/x", "must start with one of read, write, admin"),
        ("read:table/x", "unknown resource kind 'table'"),
        ("read:model/", "name a model after '/'"),
        ("read:model/a*b", "name a model after '/'"),
    ],
)
def test_a_bad_grant_names_itself_and_the_problem(text: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Grant.parse(text)
    assert repr(text) in str(caught.value) and named in str(caught.value)


def test_what_grants_allow() -> None:
    (group_read,) = grants("read:feature_group/user_profile")
    assert group_read.allows("read", "feature_group", "user_profile")
    assert not group_read.allows("write", "feature_group", "user_profile")  # no write from read
    assert not group_read.allows("read", "feature_group", "product_stats")
    assert not group_read.allows("read", "model", "user_profile")  # another kind
    (prefix,) = grants("write:interaction_type/cl*")
    assert prefix.allows("write", "interaction_type", "click")
    assert not prefix.allows("write", "interaction_type", ALL)  # a prefix is not "every"
    assert not Grant.parse("write:feature_group/x").allows("read", "feature_group", "x")
    (admin,) = grants("admin:*")
    assert admin.allows("read", "model", ALL) and admin.allows("write", "feature_group", "x")


def test_tokens_verify_only_against_their_caller_and_are_not_stored() -> None:
    caller, token = new_caller("ranker", grants("read:model/ranker"), 0.0)
    other, other_token = new_caller("other", grants("admin:*"), 0.0)
    assert caller.verifies(token) and not caller.verifies(other_token)
    assert token_id_of(token) == caller.token_id
    document = Callers(1, {"ranker": caller, "other": other}).encode()
    assert token.encode() not in document and other_token.encode() not in document
    assert Callers.decode(document, "x").callers["ranker"] == caller


def test_caller_names_are_checked_and_unique() -> None:
    with pytest.raises(InvalidArgumentError, match="caller name 'a b'"):
        new_caller("a b", grants("admin:*"), 0.0)
    caller, _ = new_caller("app", grants("admin:*"), 0.0)
    callers = Callers().with_caller(caller)
    with pytest.raises(InvalidArgumentError, match="caller 'app' exists"):
        callers.with_caller(caller)
    with pytest.raises(InvalidArgumentError, match=r"no caller 'nobody' \(callers: app\)"):
        callers.without("nobody")
    assert callers.without("app").required  # revoking the last caller does not open up


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
    ],
)
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def _authorizer() -> tuple[Authorizer, Caller, str]:
    caller, token = new_caller("ranker", grants("read:model/ranker"), 0.0)
    return Authorizer(Callers(1, {"ranker": caller})), caller, token


async def test_the_authorizer_knows_callers_by_token_and_forgets_revoked_ones() -> None:
    authorizer, caller, token = _authorizer()
    assert await authorizer.caller_of(f"Bearer {token}") is caller
    assert await authorizer.caller_of(f"Bearer {token}") is caller  # from the cache now
    other_last = "A" if token[-1] != "A" else "B"  # the same id, another secret
    for header in (None, "Bearer nonsense", f"Bearer {token}x", f"Bearer {token[:-1]}{other_last}"):
        with pytest.raises(UnauthenticatedError) as caught:
            await authorizer.caller_of(header)
        assert token not in str(caught.value)
    authorizer.use(Callers(2, {}))  # revoked: the cached verification goes too
    with pytest.raises(UnauthenticatedError, match="not valid"):
        await authorizer.caller_of(f"Bearer {token}")


async def test_an_open_server_asks_for_nothing_and_a_vanished_document_keeps_it_closed() -> None:
    assert await Authorizer().caller_of(None) is None
    authorizer, _, token = _authorizer()
    authorizer.use(Callers())  # the document deleted by hand
    assert authorizer.required
    with pytest.raises(UnauthenticatedError):
        await authorizer.caller_of(f"Bearer {token}")


def test_a_denial_names_the_caller_the_permission_and_the_resource() -> None:
    _, caller, _ = _authorizer()
    with pytest.raises(PermissionDeniedError) as caught:
        Authorizer.authorize("Persist", caller, lambda: [writes("feature_group", ["user_profile"])])
    assert str(caught.value) == "caller 'ranker' may not write feature group 'user_profile'"
    with pytest.raises(PermissionDeniedError, match="may not read every interaction type"):
        Authorizer.authorize("Get", caller, lambda: [reads("interaction_type", [ALL])])
    Authorizer.authorize("Infer", caller, lambda: [reads("model", ["ranker"])])  # allowed


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.internal", False)],
)  # fmt: skip
def test_which_binds_are_loopback(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback
    problem = auth.open_bind_problem(host, Callers(), insecure_open=False)
    assert (problem is None) is loopback
    assert auth.open_bind_problem(host, Callers(), insecure_open=True) is None
    assert auth.open_bind_problem(host, Callers(1, {}), insecure_open=False) is None


def test_the_embedded_store_saves_callers_compare_and_set_and_watches_them(
    tmp_path: Path,
) -> None:
    store = open_files(tmp_path).callers
    assert store.load() == Callers()
    seen: list[int] = []
    changed = threading.Event()

    def on_change(callers: Callers) -> None:
        seen.append(callers.revision)
        changed.set()

    watch = store.watch(on_change)
    try:
        caller, _ = new_caller("app", grants("admin:*"), 0.0)
        store.save(Callers().with_caller(caller), 0)
        with pytest.raises(CallersConflictError, match="revision 1, expected 0"):
            store.save(Callers().with_caller(caller), 0)
        assert store.load().callers["app"] == caller
        deadline = time.monotonic() + 5
        while 1 not in seen and time.monotonic() < deadline:
            changed.wait(0.1)
        assert 1 in seen
    finally:
        watch.stop()
    assert (tmp_path / "config" / "callers.json").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [("0.0.0.0", False, True), ("0.0.0.0", True, False), ("127.0.0.1", False, False)],
)
def test_tokens_in_clear_text_off_loopback_are_warned_about(
    host: str, tls: bool, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    _, caller, _ = _authorizer()
    with caplog.at_level(logging.WARNING, logger="inferstack.server.auth"):
        auth.log_access(host, Callers(1, {"ranker": caller}), tls=tls)
    assert any("tokens travel in clear text" in r.getMessage() for r in caplog.records) == warned


async def test_a_flood_of_made_up_secrets_costs_one_check_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 requests with a known token id and random secrets used to queue 60 scrypts ahead of
    every other caller's first call: now one check per token id runs at a time (the rest
    are refused at once), and concurrent first calls of one token share one check."""
    target, target_token = new_caller("target", grants("read:model/ranker"), 0.0)
    other, other_token = new_caller("other", grants("read:model/ranker"), 0.0)
    authorizer = Authorizer(Callers(1, {"target": target, "other": other}))
    checked: list[str] = []
    real_verifies = Caller.verifies

    def verifies(self: Caller, token: str) -> bool:
        checked.append(self.name)
        return real_verifies(self, token)

    monkeypatch.setattr(Caller, "verifies", verifies)
    made_up = [target_token[:-8] + f"{i:08d}" for i in range(60)]
    results = await asyncio.gather(
        *(authorizer.caller_of(f"Bearer {token}") for token in made_up),
        *(authorizer.caller_of(f"Bearer {other_token}") for _ in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(r, UnauthenticatedError) for r in results[:60])
    assert all(r is other for r in results[60:])
    assert checked.count("target") == 1  # one made-up secret checked, 59 refused at once
    assert checked.count("other") == 1  # ten first calls, one check
    assert await authorizer.caller_of(f"Bearer {target_token}") is target  # the real one
