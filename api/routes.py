"""Every route of the API, in one table (the OpenAPI test and the access rules read it)."""
from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from api.views import admin, dashboard, ops, reports, sales


class Route(NamedTuple):
    method: str
    path: str  # canonical form; a trailing slash is optional for every path but "/"
    handler: object


ROUTES = (
    Route("GET", "/", dashboard.index),
    Route("GET", "/items/", reports.list_items),
    Route("GET", "/stores/", reports.list_stores),
    Route("GET", "/items/top/", reports.top_items),
    Route("GET", "/stores/top/", reports.top_stores),
    Route("GET", "/reports/summary/", reports.month_summary),
    Route("GET", "/reports/daily/", reports.daily),
    Route("POST", "/sales/", sales.post_sale),
    Route("POST", "/sales/batch/", sales.post_batch),
    Route("GET", "/clear/", admin.clear),
    Route("POST", "/clear/", admin.clear),
    Route("GET", "/create/", admin.create),
    Route("POST", "/create/", admin.create),
    Route("GET", "/health", ops.health),
    Route("GET", "/metrics", ops.metrics_view),
    Route("GET", "/openapi.json", ops.openapi),
)


def setup_routes(app: web.Application) -> None:
    for route in ROUTES:
        bare = route.path.rstrip("/")
        if not bare:
            app.router.add_route(route.method, "/", route.handler)
            continue
        app.router.add_route(route.method, bare, route.handler)
        if not bare.endswith(".json"):
            app.router.add_route(route.method, bare + "/", route.handler)
