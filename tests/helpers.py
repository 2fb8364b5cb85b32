"""Helpers the test folders share (fixtures live in the nearest conftest.py): what the app
serves, and small utilities."""

from __future__ import annotations

from orderflow.api.routing import Route
from orderflow.runtime import Runtime
from orderflow.server import build_app

#: Every route the service serves, the API's own description included, as the app has them.
ROUTES: tuple[Route[Runtime], ...] = build_app(Runtime()).routes
