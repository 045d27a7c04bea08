"""The HTTP transport: JSON routes over the call pipeline (routes.py), the request context
middleware, the app with /healthz and /metrics, and one thin module of routes per part."""
