"""The dashboard: one page (``GET /`` and ``GET /dashboard``) that watches and steers the service
through its own HTTP API, in plain JavaScript modules with no build step (`app.js` starts the
page and imports the others). Its files are read from the
package once, at import, into a fixed table (`api.assets`); each file is a route of its own, so a
request never names a file to read, and a path not in the table is the router's 404.

The composition root serves `DASHBOARD_ROUTES` beside the other tables; they need no service.
"""

from __future__ import annotations

from orderflow.api.assets import Asset, file_routes, linked_page, page_route, read
from orderflow.api.routing import Route

# The only files served: path → file.
FILES: dict[str, Asset] = {
    f"/dashboard/{name}": read(__name__, name)
    for name in (
        "app.js",
        "api.js",
        "dom.js",
        "orders.js",
        "detail.js",
        "chart.js",
        "ops.js",
        "style.css",
    )
}
PAGE = linked_page(__name__, "index.html", FILES)

DASHBOARD_ROUTES: tuple[Route[object], ...] = (
    page_route("/", "dashboard_root", "The dashboard (as at /dashboard)", PAGE),
    page_route(
        "/dashboard",
        "dashboard",
        "The dashboard: orders (search, pages, bulk actions), counts, throughput over 24 h,"
        " instances, webhooks",
        PAGE,
    ),
    *file_routes("dashboard_", "the dashboard's", FILES),
)

__all__ = ["DASHBOARD_ROUTES", "FILES", "PAGE", "Asset"]
