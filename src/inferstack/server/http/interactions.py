"""The interaction store's JSON gateway, for curl users: POST /v1/interactions/ingest,
/get, /hydrate and /sweep.

    curl -s localhost:6567/v1/interactions/ingest -d '{"batches": [{"type": "click",
         "event_ids": ["e1"], "user_id": [42], "items": [1334], "timestamps": [1714557600000],
         "attributes": {"source": ["app"]}}]}'
    curl -s localhost:6567/v1/interactions/get -d '{"user": 42, "types": ["click"], "limit": 10}'

Users and items are given as "users"/"items" or under the type's key names ("user_id",
"product_id"); "user" may also be given under its key name. `since` is unix milliseconds or
an ISO 8601 date or time. Errors and values JSON cannot carry look exactly as in the feature
store's gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from inferstack.core import limits
from inferstack.core.callers import Need
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch, History
from inferstack.interactions.events import InteractionCatalog
from inferstack.interactions.service import InteractionService
from inferstack.server.http.routes import Body
from inferstack.server.pipeline import Endpoint
from inferstack.wire.columns import to_numpy
from inferstack.wire.interactions import (
    check_types,
    ordered_columns,
    since_ms,
    sweep_limit,
    user_keys,
)
from inferstack.wire.json import json_values

Handler = Callable[[InteractionService, Body], Awaitable[dict[str, Any]]]
BATCH_FIELDS = ("type", "event_ids", "timestamps", "attributes")


def routes(service: InteractionService) -> dict[str, tuple[str, Endpoint[Body, Any]]]:
    """POST /v1/interactions/{ingest,get,hydrate,sweep}."""
    handlers: dict[str, tuple[Handler, Callable[[Body], list[Need]]]] = {
        "ingest": (ingest, lambda body: service.ingest_needs(_batch_types(body))),
        "get": (get, lambda body: service.get_needs(_named_types(body))),
        "hydrate": (hydrate, lambda body: service.hydrate_needs(_named_types(body))),
        "sweep": (sweep, lambda body: service.sweep_needs()),
    }
    return {
        f"/v1/interactions/{name}": (
            f"http_interactions_{name}",
            Endpoint(_bound(handler, service), touches),
        )
        for name, (handler, touches) in handlers.items()
    }


def _bound(handler: Handler, service: InteractionService) -> Callable[[Body], Awaitable[Any]]:
    async def handle(body: Body) -> dict[str, Any]:
        return await handler(service, body)

    return handle


def _batch_types(body: Body) -> list[str]:
    batches = body.get("batches")
    if isinstance(batches, list):
        limits.check(len(batches), limits.MAX_EVENT_BATCHES, "event batches")
    if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
        raise InvalidArgumentError("'batches' must be a list of event batches (JSON objects)")
    types = []
    for index, batch in enumerate(batches):
        name = batch.get("type")
        if not isinstance(name, str):
            raise InvalidArgumentError(f"batch {index}: 'type' must be a string")
        types.append(name)
    return types


def _named_types(body: Body) -> list[str]:
    types = body.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidArgumentError("'types' must be a list of interaction type names")
    return types


async def ingest(service: InteractionService, body: dict[str, Any]) -> dict[str, Any]:
    return {"stored": await service.ingest(parse_batches(body, service.catalog))}


async def get(service: InteractionService, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, ("user", "types", "limit", "since"), service.catalog, "")
    types = _types(body)
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise InvalidArgumentError("'limit' must be a whole number")
    since = body.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | str)):
        raise InvalidArgumentError("'since' must be unix milliseconds or an ISO 8601 time")
    user = _user(body, service.catalog, types)
    histories = await service.get(user, types, limit, None if since is None else since_ms(since))
    return histories_to_json(histories)


async def hydrate(service: InteractionService, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, ("user", "types"), service.catalog, "")
    types = _types(body)
    return {"loaded": await service.hydrate(_user(body, service.catalog, types), types)}


async def sweep(service: InteractionService, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, ("limit",), None, "")
    limit = body.get("limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidArgumentError("'limit' must be a whole number")
    checked = sweep_limit(limit)
    swept = await (service.sweep(checked) if checked else service.sweep())
    return {"users": swept.users, "events": swept.events, "lost_claims": swept.lost_claims}


def parse_batches(body: dict[str, Any], catalog: InteractionCatalog) -> list[EventBatch]:
    """The body's event batches; a field of the wrong shape is INVALID_ARGUMENT naming the
    batch and the field (the service then checks every value)."""
    _only(body, ("batches",), None, "")
    batches = body.get("batches")
    if isinstance(batches, list):
        limits.check(len(batches), limits.MAX_EVENT_BATCHES, "event batches")
    if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
        raise InvalidArgumentError("'batches' must be a list of event batches (JSON objects)")
    return [_batch(batch, catalog, f"batch {index}") for index, batch in enumerate(batches)]


def _batch(batch: dict[str, Any], catalog: InteractionCatalog, where: str) -> EventBatch:
    name = batch.get("type")
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{where}: 'type' must be a string")
    kind = catalog.types.get(name)  # unknown: the service names it with the known ones
    user_key = kind.user.name if kind else "users"
    item_key = kind.item.name if kind else "items"
    known = (*BATCH_FIELDS, "users", "items", user_key, item_key)
    _only(batch, known, None, f"{where}: ")
    attributes = batch.get("attributes", {})
    if not isinstance(attributes, dict):
        raise InvalidArgumentError(f"{where}: 'attributes' must map each attribute to a list")
    columns = {
        "event_ids": batch.get("event_ids"),
        "users": _either(batch, "users", user_key, where),
        "items": _either(batch, "items", item_key, where),
        "timestamps": batch.get("timestamps"),
        **{f"attributes.{key}": value for key, value in attributes.items()},
    }
    for field, values in columns.items():
        if values is None:
            also = {"users": user_key, "items": item_key}.get(field, field)
            named = f"'{field}'" + (f" (or '{also}')" if also != field else "")
            raise InvalidArgumentError(f"{where}: {named} is missing")
        if not isinstance(values, list) or any(
            issubclass(kind, list | dict) for kind in set(map(type, values))
        ):
            raise InvalidArgumentError(f"{where}: '{field}' must be a list of values")
    return EventBatch(
        type=name,
        event_ids=columns["event_ids"],
        users=columns["users"],
        items=columns["items"],
        timestamps=columns["timestamps"],
        attributes=attributes,
    )


def _either(batch: dict[str, Any], plain: str, key: str, where: str) -> Any:
    if plain != key and plain in batch and key in batch:
        raise InvalidArgumentError(f"{where}: give '{plain}' or '{key}', not both")
    return batch.get(key, batch.get(plain))


def _only(
    body: dict[str, Any], fields: Sequence[str], catalog: InteractionCatalog | None, where: str
) -> None:
    """Refuse unknown fields (a typo must not be ignored); with a catalog, any type's user
    key name is also a field (it names the user)."""
    allowed = set(fields)
    if catalog is not None:
        allowed |= {kind.user.name for kind in catalog.types.values()}
    for name in body:
        if name not in allowed:
            raise InvalidArgumentError(
                f"{where}unknown field '{name}' (fields: {', '.join(sorted(allowed))})"
            )


def _types(body: dict[str, Any]) -> list[str]:
    types = body.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidArgumentError("'types' must be a list of interaction type names")
    return check_types(types)


def _user(body: dict[str, Any], catalog: InteractionCatalog, types: list[str]) -> Any:
    """The one user: "user", or under the user key name of the types asked for."""
    given = {name: value for name, value in body.items() if name not in ("types", "limit", "since")}
    if len(given) != 1:
        raise InvalidArgumentError(
            "give the user once: 'user' or the interaction types' user key (e.g. 'user_id')"
        )
    ((name, user),) = given.items()
    wrong = [key for key in user_keys(catalog, types) if name not in ("user", key)]
    if wrong:
        raise InvalidArgumentError(
            f"'{name}' is not the user key of the interaction types asked for ('{wrong[0]}')"
        )
    if isinstance(user, bool) or not isinstance(user, int | str):
        raise InvalidArgumentError(f"'{name}' must be one user id (a number or a string)")
    return user


def histories_to_json(histories: Sequence[History]) -> dict[str, Any]:
    return {
        "histories": {
            history.type: {
                "count": history.count,
                "hot": history.hot,
                "columns": {
                    name: json_values(to_numpy(history.types[name], history.columns[name]).tolist())
                    for name in ordered_columns(history)
                },
            }
            for history in histories
        }
    }
