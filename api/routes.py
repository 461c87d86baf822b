"""Every route of the API with who may call it, in one table.

The OpenAPI test and the access-matrix test read this table, so a route cannot be added
without a description and an access rule.
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler

from api.auth import ADMIN, OPEN, POST, READ, TILLS
from api.views import admin, catalogue, dashboard, keys, ops, reports, returns, sales, tills


class Route(NamedTuple):
    method: str
    path: str  # canonical form; a trailing slash is optional for every path but "/"
    handler: Handler
    access: str  # api.auth: OPEN, READ (owners), POST (point of sale), ADMIN


ROUTES = (
    Route("GET", "/", dashboard.index, READ),
    Route("GET", "/items/", reports.list_items, READ),
    Route("GET", "/stores/", reports.list_stores, READ),
    Route("GET", "/items/top/", reports.top_items, READ),
    Route("GET", "/stores/top/", reports.top_stores, READ),
    Route("GET", "/stores/{id}/report/", reports.store_report, READ),
    Route("GET", "/reports/summary/", reports.month_summary, READ),
    Route("GET", "/reports/daily/", reports.daily, READ),
    Route("GET", "/reports/trend/", reports.trend, READ),
    Route("GET", "/reports/totals/", reports.period_totals, READ),
    Route("GET", "/reports/hours/", reports.hours, READ),
    Route("GET", "/tills/", tills.list_tills, READ),
    Route("POST", "/sales/", sales.post_sale, POST),
    Route("POST", "/sales/batch/", sales.post_batch, POST),
    Route("GET", "/tills/me", sales.till_numbers, POST),
    Route("POST", "/sales/{id}/returns/", returns.post_return, POST),
    Route("POST", "/returns/batch/", returns.post_returns_batch, POST),
    Route("GET", "/clear/", admin.clear, ADMIN),
    Route("POST", "/clear/", admin.clear, ADMIN),
    Route("GET", "/create/", admin.create, ADMIN),
    Route("POST", "/create/", admin.create, ADMIN),
    Route("GET", "/catalogue/", catalogue.get_catalogue, TILLS),
    Route("POST", "/catalogue/items/", catalogue.create_item, ADMIN),
    Route("PATCH", "/catalogue/items/{id}", catalogue.update_item, ADMIN),
    Route("DELETE", "/catalogue/items/{id}", catalogue.retire_item, ADMIN),
    Route("GET", "/catalogue/items.csv", catalogue.export_items, READ),
    Route("POST", "/catalogue/items.csv", catalogue.import_items, ADMIN),
    Route("POST", "/catalogue/stores/", catalogue.create_store, ADMIN),
    Route("PATCH", "/catalogue/stores/{id}", catalogue.update_store, ADMIN),
    Route("DELETE", "/catalogue/stores/{id}", catalogue.retire_store, ADMIN),
    Route("GET", "/catalogue/stores.csv", catalogue.export_stores, READ),
    Route("POST", "/catalogue/stores.csv", catalogue.import_stores, ADMIN),
    Route("GET", "/admin/keys/", keys.list_keys, ADMIN),
    Route("POST", "/admin/keys/", keys.issue_key, ADMIN),
    Route("DELETE", "/admin/keys/{prefix}", keys.revoke_key, ADMIN),
    Route("GET", "/health", ops.health, OPEN),
    Route("GET", "/metrics", ops.metrics_view, READ),
    Route("GET", "/openapi.json", ops.openapi, READ),
)


def bare(path: str) -> str:
    return path.rstrip("/") or "/"


ACCESS = {(r.method, bare(r.path)): r.access for r in ROUTES}
DOCUMENTED_PATH = {bare(r.path): r.path for r in ROUTES}


def route_label(request: web.Request) -> str:
    """The documented path of the matched route ("/items/" for /items too), for metrics."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return DOCUMENTED_PATH.get(bare(resource.canonical), resource.canonical)


def access_rule(request: web.Request) -> str | None:
    """The rule of the route this request matched (None when it matched none)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return ACCESS.get((method, bare(resource.canonical)))


def setup_routes(app: web.Application) -> None:
    for route in ROUTES:
        path = bare(route.path)
        app.router.add_route(route.method, path, route.handler)
        if path != "/" and not path.endswith((".json", ".csv", "}")):
            app.router.add_route(route.method, path + "/", route.handler)
