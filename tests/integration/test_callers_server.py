"""Callers against a real `inferstack serve`: every service (feature store, inferflow,
interactions) over gRPC and HTTP with no token, a wrong token, a revoked token, a caller
without the grant and the right caller; revocation reaching every worker within a second;
the console behind the same tokens; metrics per caller; no token in any log line; and a
non-loopback bind without callers refused.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from inferstack.client import FeatureStoreClient
from inferstack.client.inferflow import InferflowClient
from inferstack.client.interactions import InteractionsClient
from inferstack.sampledata.generate import GROUP_FILES
from tests.ranker import ranker_sample
from tests.servers import RunningServer, inferstack, start_server

APP_GRANTS = [
    "read:feature_group/*",
    "read:model/ranker",
    "read:interaction_type/*",
    "write:interaction_type/click",
]
NARROW_GRANTS = ["read:feature_group/product_stats", "write:interaction_type/order"]
REVOCATION_DEADLINE = 1.0  # seconds: what the issue promises
FRESH_CONNECTIONS = 16  # calls on this many new connections reach every one of 2 workers


def add_caller(data: Path, name: str, *grants: str) -> str:
    args = [arg for grant in grants for arg in ("--grant", grant)]
    added = inferstack("callers", "add", name, *args, "--json", data_dir=data)
    token: str = json.loads(added.stdout)["token"]
    return token


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sample = ranker_sample(tmp_path_factory.mktemp("ranker"), scale=0.01)
    data = tmp_path_factory.mktemp("data")
    inferstack("apply", "-f", str(sample), data_dir=data)
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data)
    return data


@dataclass
class Tokens:
    app: str
    narrow: str
    revoked: str

    @property
    def wrong(self) -> str:
        """The app's token id with another secret: well-formed, not valid."""
        return self.app[:-4] + ("AAAA" if not self.app.endswith("AAAA") else "BBBB")

    def all(self) -> list[str]:
        return [self.app, self.narrow, self.revoked, self.wrong]


@pytest.fixture(scope="module")
def tokens(data: Path) -> Tokens:
    tokens = Tokens(
        app=add_caller(data, "app", *APP_GRANTS),
        narrow=add_caller(data, "narrow", *NARROW_GRANTS),
        revoked=add_caller(data, "gone", "admin:*"),
    )
    inferstack("callers", "revoke", "gone", data_dir=data)
    return tokens


@pytest.fixture(scope="module")
def server(data: Path, tokens: Tokens) -> Iterator[RunningServer]:
    running = start_server(data)
    yield running
    assert running.stop() == 0
    log = running.log.read_text()
    for token in tokens.all():
        secret = token.split("_", 2)[2]  # isk_<id>_<secret>; the secret may itself hold "_"
        assert token not in log and secret not in log


# -- one call per service and transport; each gives (status, message) ---------------------

Outcome = tuple[str, str]


def _grpc(call: Callable[[], Any]) -> Outcome:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def grpc_retrieve(server: RunningServer, token: str | None) -> Outcome:
    with FeatureStoreClient(server.grpc_target, token=token, connections=1) as client:
        return _grpc(lambda: client.retrieve("user", {"user_id": [1]}, ["user_profile"]))


def grpc_infer(server: RunningServer, token: str | None) -> Outcome:
    with InferflowClient(server.grpc_target, token=token, connections=1) as client:
        return _grpc(lambda: client.infer("ranker", {"user_id": 1, "product_ids": [1, 2]}))


def grpc_get(server: RunningServer, token: str | None) -> Outcome:
    with InteractionsClient(server.grpc_target, token=token, connections=1) as client:
        return _grpc(lambda: client.get(1, ["click"], limit=10))


def grpc_ingest(server: RunningServer, token: str | None) -> Outcome:
    now = int(time.time() * 1000) - 1000
    with InteractionsClient(server.grpc_target, token=token, connections=1) as client:
        return _grpc(lambda: client.ingest("click", [f"e-{now}"], [1], [7], [now], source=["app"]))


HTTP_STATUS = {200: "OK", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}


def http_post(server: RunningServer, path: str, body: dict[str, Any], token: str | None) -> Outcome:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        server.http_base + path, json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return HTTP_STATUS[response.status], ""
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read())["error"]
        assert error["code"] == HTTP_STATUS[exc.code]
        if exc.code == 401:
            assert exc.headers["WWW-Authenticate"].startswith("Bearer")
        return error["code"], error["message"]


def http_retrieve(server: RunningServer, token: str | None) -> Outcome:
    body = {"entity": "user", "keys": {"user_id": [1]}, "features": ["user_profile"]}
    return http_post(server, "/v1/retrieve", body, token)


def http_infer(server: RunningServer, token: str | None) -> Outcome:
    body = {"model": "ranker", "context": {"user_id": 1, "product_ids": [1, 2]}}
    return http_post(server, "/v1/infer", body, token)


def http_get(server: RunningServer, token: str | None) -> Outcome:
    body = {"user": 1, "types": ["click"], "limit": 10}
    return http_post(server, "/v1/interactions/get", body, token)


def http_ingest(server: RunningServer, token: str | None) -> Outcome:
    now = int(time.time() * 1000) - 1000
    batch = {
        "type": "click",
        "event_ids": [f"h-{now}"],
        "users": [1],
        "items": [7],
        "timestamps": [now],
        "attributes": {"source": ["app"]},
    }
    return http_post(server, "/v1/interactions/ingest", {"batches": [batch]}, token)


Call = Callable[[RunningServer, str | None], Outcome]
# call, and what the narrow caller is refused
CALLS: dict[str, tuple[Call, str]] = {
    "grpc-featurestore": (grpc_retrieve, "may not read feature group 'user_profile'"),
    "http-featurestore": (http_retrieve, "may not read feature group 'user_profile'"),
    "grpc-inferflow": (grpc_infer, "may not read model 'ranker'"),
    "http-inferflow": (http_infer, "may not read model 'ranker'"),
    "grpc-interactions-get": (grpc_get, "may not read interaction type 'click'"),
    "http-interactions-get": (http_get, "may not read interaction type 'click'"),
    "grpc-interactions-ingest": (grpc_ingest, "may not write interaction type 'click'"),
    "http-interactions-ingest": (http_ingest, "may not write interaction type 'click'"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_every_service_and_transport_checks_the_caller(
    server: RunningServer, tokens: Tokens, name: str
) -> None:
    call, refused = CALLS[name]
    status, message = call(server, None)
    assert status == "UNAUTHENTICATED" and "no token" in message
    for token in (tokens.wrong, "not-a-token", tokens.revoked):
        status, message = call(server, token)
        assert (status, message) == ("UNAUTHENTICATED", message) and "not valid" in message
        assert token not in message
    status, message = call(server, tokens.narrow)
    assert (status, message) == ("PERMISSION_DENIED", f"caller 'narrow' {refused}")
    assert call(server, tokens.app) == ("OK", "")


def test_persist_outside_the_grants_names_the_group(server: RunningServer, tokens: Tokens) -> None:
    with FeatureStoreClient(server.grpc_target, token=tokens.app, connections=1) as client:
        status, message = _grpc(lambda: client.persist("user_profile", {"user_id": [1]}, {}))
    assert (status, message) == (
        "PERMISSION_DENIED",
        "caller 'app' may not write feature group 'user_profile'",
    )


def test_a_retrieve_of_every_group_needs_each_of_them(
    server: RunningServer, tokens: Tokens
) -> None:
    with FeatureStoreClient(server.grpc_target, token=tokens.narrow, connections=1) as client:
        assert _grpc(lambda: client.retrieve("product", {"product_id": [1]}))[0] == "OK"
        status, message = _grpc(lambda: client.retrieve("user", {"user_id": [1]}))
    assert status == "PERMISSION_DENIED" and "feature group 'user_profile'" in message


def _statuses_on_fresh_connections(server: RunningServer, token: str) -> set[str]:
    return {grpc_retrieve(server, token)[0] for _ in range(FRESH_CONNECTIONS)}


def test_a_new_caller_and_its_revocation_reach_every_worker(
    server: RunningServer, data: Path
) -> None:
    token = add_caller(data, "short-lived", "read:feature_group/user_profile")
    deadline = time.monotonic() + REVOCATION_DEADLINE
    while _statuses_on_fresh_connections(server, token) != {"OK"}:
        assert time.monotonic() < deadline, "a new caller was not accepted within a second"
    # Every worker has now verified (and cached) the token; revoking must still reach them.
    inferstack("callers", "revoke", "short-lived", data_dir=data)
    deadline = time.monotonic() + REVOCATION_DEADLINE
    while _statuses_on_fresh_connections(server, token) != {"UNAUTHENTICATED"}:
        assert time.monotonic() < deadline, "a revoked token still worked after a second"


def test_the_console_signs_in_with_a_token_and_applies_grants(
    server: RunningServer, tokens: Tokens
) -> None:
    def page(path: str, token: str | None) -> tuple[int, str, Any]:
        headers = {}
        if token is not None:
            basic = base64.b64encode(f"me:{token}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        request = urllib.request.Request(server.http_base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.headers

    status, _, headers = page("/ui/catalog", None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert page("/ui/catalog", tokens.wrong)[0] == 401
    assert page("/ui/catalog", tokens.narrow)[0] == 200
    lookup = "/ui/lookup?entity=user&user_id=1"
    status, body, _ = page(lookup, tokens.narrow)
    assert status == 403 and "may not read feature group" in body
    assert page(lookup, tokens.app)[0] == 200
    status, body, _ = page("/ui/try?model=ranker&user_id=1&product_ids=1,2&run=1", tokens.narrow)
    assert status == 403 and "may not read model" in body
    assert page("/ui/try?model=ranker&user_id=1&product_ids=1,2&run=1", tokens.app)[0] == 200


def test_metrics_count_calls_and_denials_per_caller(server: RunningServer, tokens: Tokens) -> None:
    assert grpc_retrieve(server, tokens.app)[0] == "OK"
    assert grpc_retrieve(server, tokens.narrow)[0] == "PERMISSION_DENIED"
    assert grpc_retrieve(server, None)[0] == "UNAUTHENTICATED"
    with urllib.request.urlopen(server.http_base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'inferstack_caller_requests_total{caller="app",method="Retrieve"}' in text
    assert (
        'inferstack_auth_denials_total{caller="narrow",method="Retrieve",reason="permission"}'
        in text
    )
    assert 'inferstack_auth_denials_total{caller="",method="Retrieve",reason="no_token"}' in text


def test_the_cli_sends_its_token(server: RunningServer, data: Path, tokens: Tokens) -> None:
    target = ["--target", server.grpc_target]
    refused = inferstack("get", "user", "user_id=1", "-f", "user_profile", *target,
                         data_dir=data, check=False)  # fmt: skip
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    by_flag = inferstack("get", "user", "user_id=1", "-f", "user_profile", *target,
                         "--token", tokens.app, "--json", data_dir=data)  # fmt: skip
    assert json.loads(by_flag.stdout)
    by_env = inferstack(
        "interactions", "get", "1", "-t", "click", *target, "--json",
        data_dir=data, env={"INFERSTACK_TOKEN": tokens.app},
    )  # fmt: skip
    assert by_env.returncode == 0
    listed = json.loads(inferstack("callers", "list", "--json", data_dir=data).stdout)
    assert {c["name"] for c in listed["callers"]} >= {"app", "narrow"}
    assert "gone" not in {c["name"] for c in listed["callers"]}
    assert tokens.app not in json.dumps(listed)


def test_an_open_server_binds_loopback_only_and_says_so(tmp_path: Path) -> None:
    refused = inferstack("serve", "--host", "0.0.0.0", "--port", "0", "--http-port", "-1",
                         data_dir=tmp_path, check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "refusing to serve 0.0.0.0 with no callers configured" in refused.stderr
    assert "--insecure-open" in refused.stderr
    running = start_server(tmp_path, workers=1)
    try:
        assert "no callers configured: every call is allowed" in running.log.read_text()
        assert grpc_retrieve(running, None)[0] == "NOT_FOUND"  # open: no entity, no refusal
    finally:
        assert running.stop() == 0


def _until_known(server: RunningServer, token: str) -> None:
    """A caller added while the server runs is known to every worker within a second."""
    deadline = time.monotonic() + 5
    while grpc_retrieve(server, token)[0] == "UNAUTHENTICATED" and time.monotonic() < deadline:
        time.sleep(0.1)


def test_infer_returns_no_value_the_caller_may_not_read(
    server: RunningServer, data: Path, tokens: Tokens
) -> None:
    # The ranker answers product.price and product.category_id (product_stats) and reads
    # user_profile and user_category_affinity, whose features it returns when asked.
    scorer = add_caller(data, "scorer", "read:model/ranker")
    shopper = add_caller(data, "shopper", "read:model/ranker", "read:feature_group/product_stats")
    for token in (scorer, shopper):
        _until_known(server, token)
    context = {"user_id": 1, "product_ids": [1, 2]}
    with InferflowClient(server.grpc_target, token=tokens.app, connections=1) as client:
        explained = client.infer("ranker", context, explain=True)
    user_feature = next(name for name in explained.defaults if name.startswith("user."))

    def grpc_call(token: str, returned: list[str], explain: bool) -> Outcome:
        with InferflowClient(server.grpc_target, token=token, connections=1) as client:
            return _grpc(lambda: client.infer("ranker", context, returned, explain=explain))

    def http_call(token: str, returned: list[str], explain: bool) -> Outcome:
        body = {"model": "ranker", "context": context, "return_features": returned}
        return http_post(server, "/v1/infer", {**body, "explain": explain}, token)

    for call in (grpc_call, http_call):
        # The model's own response features are values of product_stats.
        status, message = call(scorer, [], False)
        assert status == "PERMISSION_DENIED", (call, status)
        assert "may not read feature group 'product_stats'" in message
        assert call(shopper, [], False)[0] == "OK"
        # return_features: each value's group needs its own grant.
        status, message = call(shopper, [user_feature], False)
        assert status == "PERMISSION_DENIED", (call, status)
        assert "may not read feature group 'user_profile'" in message
        # explain's default counts tell which rows exist in every group the model reads.
        status, message = call(shopper, [], True)
        assert status == "PERMISSION_DENIED", (call, status)
        assert "may not read feature group 'user_profile'" in message
    # The console's Try it shows what explain shows.
    basic = base64.b64encode(f"me:{shopper}".encode()).decode()
    request = urllib.request.Request(
        server.http_base + "/ui/try?model=ranker&user_id=1&product_ids=1,2&run=1",
        headers={"Authorization": f"Basic {basic}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert "may not read feature group &#39;user_profile&#39;" in refused.value.read().decode()
