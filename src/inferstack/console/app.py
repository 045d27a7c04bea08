"""The console's routes under /ui, added to a server's aiohttp app (or an app of its own for
`inferstack ui`).

Pages are rendered on the server with Jinja2, autoescaping every value (feature names,
descriptions and string values come from users). Look up and Try it call the feature and
inferflow services through the worker's call pipeline, as the gateways do, so the same
limits and checks apply; they are counted in the request metrics as `ui_lookup` and
`ui_infer`.

When callers are configured (server/auth.py), every page needs a caller's token: the browser
asks for it with its own sign-in prompt (HTTP Basic: any user name, the token as password)
and resends it with each request; scripts may send `Authorization: Bearer <token>`. Any
caller may browse the catalog, models and health; Look up needs read on the entity's feature
groups and Try it read on the model, exactly as the gateways do. Use TLS off loopback: Basic
credentials travel as readable as the Bearer header.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from inferstack import metrics
from inferstack.console import filters
from inferstack.console.catalog import CatalogView, catalog_view, search
from inferstack.console.graph import layout
from inferstack.console.health import HealthView, History, health_view, parse
from inferstack.console.lookup import look_up, parse_keys
from inferstack.console.modelview import node_details
from inferstack.console.systems import SystemProbe
from inferstack.console.tryit import RANDOM_CHOICES, context_of, random_ids, try_model
from inferstack.core.callers import Caller, Need, reads
from inferstack.core.errors import InferstackError, InvalidArgumentError, UnauthenticatedError
from inferstack.core.keys import parse_integer
from inferstack.featurestore.service import FeatureService
from inferstack.inferflow.describe import describe, plan_graph
from inferstack.inferflow.service import BrokenModel, InferflowService
from inferstack.server.components import Components
from inferstack.server.http.routes import HTTP_STATUS
from inferstack.server.pipeline import Pipeline
from inferstack.server.settings import ServeSettings

STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
# Nothing runs but our own script and nothing loads from elsewhere, even if a value ever
# slipped through escaping.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
METRICS_KEEP = 1.0  # seconds a parsed reading of the metrics is reused
DEFAULT_HIGHEST_ID = 1000
MAX_RANDOM = RANDOM_CHOICES[-1]  # candidates drawn at most
MAX_ID = 2**63 - 1  # the largest int64 id

MetricsText = Callable[[], Awaitable[str]]
T = TypeVar("T")


async def local_metrics() -> str:
    """This server's metrics (every worker's, under the supervisor), rendered off the loop."""
    return (await asyncio.to_thread(metrics.render)).decode()


@dataclass
class Console:
    features: FeatureService
    inferflow: InferflowService
    systems: SystemProbe
    pipeline: Pipeline  # the worker's: its callers, admission gate and request metrics
    metrics_text: MetricsText = local_metrics
    history: History = field(default_factory=History)
    templates: Environment = field(default_factory=lambda: _environment())
    _catalog: CatalogView | None = None
    _reading: tuple[float, HealthView] | None = None
    _reading_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def catalog(self) -> CatalogView:
        registry = self.features.catalog.registry
        if self._catalog is None or self._catalog.revision != registry.revision:
            self._catalog = catalog_view(registry)
        return self._catalog

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("revision", self.features.catalog.revision)
        body = self.templates.get_template(template).render(**context)
        response = web.Response(text=body, status=status, content_type="text/html")
        response.headers.update(SECURITY_HEADERS)
        return response

    async def health(self) -> HealthView:
        async with self._reading_lock:  # refreshes arriving together share one reading
            now = time.time()
            if self._reading is None or now - self._reading[0] > METRICS_KEEP:
                samples = await asyncio.to_thread(parse, await self.metrics_text())
                self._reading = (now, health_view(now, samples, self.history.add(now, samples)))
            return self._reading[1]


CONSOLE_KEY = web.AppKey("console", Console)


def add_console(
    app: web.Application,
    pipeline: Pipeline,
    components: Components,
    settings: ServeSettings,
    metrics_text: MetricsText = local_metrics,
) -> None:
    """Serve the console under /ui on an app that is not started yet (a worker extension:
    server/worker.py `Extension`)."""
    app[CONSOLE_KEY] = Console(
        components.service,
        components.inferflow,
        SystemProbe(components, settings),
        pipeline,
        metrics_text,
    )
    app.middlewares.append(_signed_in)
    routes = app.router
    routes.add_get("/ui", _to_catalog)
    routes.add_get("/ui/", _to_catalog)
    routes.add_get("/ui/catalog", catalog_page)
    routes.add_get("/ui/lookup", lookup_page)
    routes.add_get("/ui/models", models_page)
    routes.add_get("/ui/models/{name}", models_page)
    routes.add_get("/ui/try", try_page)
    routes.add_get("/ui/health", health_page)
    routes.add_get("/ui/health/panel", health_panel)
    routes.add_get("/ui/static/{name}", static_file)


CALLER_KEY = "inferstack_console_caller"
SIGN_IN = 'Basic realm="inferstack console", charset="UTF-8"'


@web.middleware
async def _signed_in(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """With callers configured, a console page needs a caller's token (Basic or Bearer)."""
    authorizer = request.app[CONSOLE_KEY].pipeline.authorizer
    if not request.path.startswith("/ui") or not authorizer.required:
        return await handler(request)
    try:
        header = _bearer_of(request.headers.get("Authorization"))
        request[CALLER_KEY] = await authorizer.authenticate("ui", header)
    except UnauthenticatedError as exc:
        return web.Response(
            status=401,
            text=f"{exc}; sign in with any user name and a caller token as password\n",
            headers={"WWW-Authenticate": SIGN_IN, **SECURITY_HEADERS},
        )
    return await handler(request)


def _bearer_of(header: str | None) -> str | None:
    """A Basic header's password (the token) as a Bearer header; anything else as it is."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return header
    try:
        _, _, token = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return f"Bearer {token}" if token else None


def _caller(request: web.Request) -> Caller | None:
    caller: Caller | None = request.get(CALLER_KEY)
    return caller


async def _to_catalog(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/catalog")


async def catalog_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    query = request.query.get("q", "")
    everything = console.catalog()
    matches = search(everything, query)
    return console.render(
        "catalog.html",
        page="catalog",
        view=everything,
        query=query,
        matches=matches,
        matched_groups={match.partition(".")[0] for match in matches or ()},
        shown=everything.feature_count if matches is None else len(matches),
    )


async def lookup_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    catalog = console.features.catalog
    entities = sorted(catalog.entities)
    name = request.query.get("entity") or (entities[0] if entities else "")
    entity = catalog.entities.get(name)
    texts = {key.name: request.query.get(key.name, "") for key in entity.keys} if entity else {}
    context: dict[str, Any] = {
        "page": "lookup",
        "entities": entities,
        "entity": entity,
        "texts": texts,
        "view": None,
        "error": None,
    }
    status = 200
    if entity is None and name:
        context["error"] = f"entity '{name}' not found"
        status = 404
    elif entity is not None and any(text.strip() for text in texts.values()):
        keys = texts
        try:
            groups = list(catalog.groups_by_entity.get(entity.name, []))
            context["view"] = await _as_call(
                console.pipeline,
                "ui_lookup",
                lambda: look_up(console.features, entity, parse_keys(entity, keys)),
                _caller(request),
                lambda: [reads("feature_group", groups)],
            )
        except InferstackError as exc:
            status, context["error"] = HTTP_STATUS.get(exc.status, 400), str(exc)
    return console.render("lookup.html", status, **context)


async def models_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    models = console.inferflow.models
    names = sorted(models)
    name = request.match_info.get("name") or (names[0] if names else "")
    context: dict[str, Any] = {
        "page": "models",
        "names": names,
        "name": name,
        "drawing": None,
        "details": {},
        "error": None,
    }
    ready = models.get(name)
    status = 200
    if ready is None and name:
        context["error"], status = f"model '{name}' not found", 404
    elif isinstance(ready, BrokenModel):
        context["error"] = f"model '{name}' v{ready.version} cannot serve: {ready.reason}"
        status = 503
    elif ready is not None:
        details = node_details(describe(ready.plan), console.features.catalog)
        context.update(drawing=layout(plan_graph(ready.plan)), details=details, plan=ready.plan)
    return console.render("models.html", status, **context)


async def try_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    models = console.inferflow.models
    names = sorted(models)
    name = request.query.get("model") or (names[0] if names else "")
    ready = models.get(name)
    context: dict[str, Any] = {
        "page": "try",
        "names": names,
        "name": name,
        "config": None,
        "texts": {},
        "chosen": [],
        "available": [],
        "result": None,
        "error": None,
        "random_choices": RANDOM_CHOICES,
        "highest": DEFAULT_HIGHEST_ID,
    }
    if ready is None or isinstance(ready, BrokenModel):
        reason = f"model '{name}' not found" if ready is None else ready.reason
        context["error"] = reason if name else "no model config is applied yet"
        return console.render("try.html", 404 if ready is None else 503, **context)
    plan = ready.plan
    config = plan.definition
    texts = {c.name: request.query.get(c.name, "") for c in config.context}
    chosen = [f for f in request.query.getall("feature", []) if f]
    context.update(
        config=config,
        texts=texts,
        chosen=chosen,
        candidates=plan.candidates,
        available=[ref.name for refs in plan.available.values() for ref in refs.values()],
        response_features=[ref.name for ref in plan.response_features],
    )
    status = 200
    if "run" in request.query or "random" in request.query:
        try:
            if "random" in request.query:
                texts[plan.candidates.name] = _random_candidates(request, context)
            inputs = context_of(config, texts)
            context["result"] = await _as_call(
                console.pipeline,
                "ui_infer",
                lambda: try_model(console.inferflow, name, inputs, chosen),
                _caller(request),
                # Try it shows what explain does (defaulted cells, stage times).
                lambda: console.inferflow.infer_needs(name, chosen, explain=True),
            )
        except InferstackError as exc:
            status, context["error"] = HTTP_STATUS.get(exc.status, 400), str(exc)
    return console.render("try.html", status, **context)


def _random_candidates(request: web.Request, context: dict[str, Any]) -> str:
    candidates = context["candidates"]
    if candidates.type.base == "string":
        raise InvalidArgumentError(
            f"random candidates need integer ids; '{candidates.name}' is {candidates.type}"
        )
    count = _integer(request.query.get("random", ""), "random", RANDOM_CHOICES[1], MAX_RANDOM)
    highest = _integer(request.query.get("highest", ""), "highest", DEFAULT_HIGHEST_ID, MAX_ID)
    context["highest"] = highest
    count = min(count, candidates.max_rows)
    return "\n".join(str(v) for v in random_ids(count, highest, np.random.default_rng()))


def _integer(text: str, field_name: str, default: int, highest: int) -> int:
    """A whole number from 1 to `highest` (a query string is anyone's to write)."""
    if not text.strip():
        return default
    value = parse_integer(text.strip())
    if value is None or not 1 <= value <= highest:
        shown = text if len(text) <= 40 else f"{text[:40]}..."
        raise InvalidArgumentError(
            f"'{field_name}' must be a whole number from 1 to {highest}, got {shown!r}"
        )
    return value


async def health_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    return console.render("health.html", **await _health_context(console))


async def health_panel(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    return console.render("health_panel.html", **await _health_context(console))


async def _health_context(console: Console) -> dict[str, Any]:
    error = None
    try:
        view = await console.health()
    except Exception as exc:  # a metrics URL that does not answer: say so, keep the rest
        view, error = None, f"metrics unavailable: {type(exc).__name__}: {exc}"
    return {
        "page": "health",
        "view": view,
        "systems": await console.systems.states(),
        "error": error,
    }


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    body = resources.files("inferstack.console").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=content_type, charset="utf-8")
    response.headers["Cache-Control"] = "max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _as_call(
    pipeline: Pipeline,
    method: str,
    work: Callable[[], Awaitable[T]],
    caller: Caller | None,
    needs: Callable[[], Iterable[Need]],
) -> T:
    """Run a Look up or Try it call as any other, through the worker's call pipeline: the
    signed-in caller's grants checked, admitted by the worker's gate (or refused with its
    error), and counted in the request metrics under `method`."""
    return await pipeline.run(method, work, caller=caller, touches=needs)


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("inferstack.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(filters.FILTERS)
    return environment
