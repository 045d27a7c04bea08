"""A worker's HTTP app: the JSON gateways of the three parts, /healthz and /metrics, with
the request context middleware around everything (request ids, log lines, 413 as JSON)."""

from __future__ import annotations

from aiohttp import web

from inferstack import metrics
from inferstack.featurestore.service import FeatureService
from inferstack.inferflow.service import InferflowService
from inferstack.interactions.service import InteractionService
from inferstack.server.http import featurestore, inferflow, interactions, middleware
from inferstack.server.http.routes import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    add_json_routes,
)
from inferstack.server.pipeline import Pipeline


def make_app(
    pipeline: Pipeline,
    features: FeatureService,
    inferflow_service: InferflowService,
    interaction_service: InteractionService,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)  # larger bodies: 413 (json_body)
    middleware.install(app, pipeline.request_log)
    for routes in (
        featurestore.routes(features),
        inferflow.routes(inferflow_service),
        interactions.routes(interaction_service),
    ):
        add_json_routes(app, pipeline, routes, body_timeout)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics_page)
    return app


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


async def metrics_page(request: web.Request) -> web.Response:
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response
