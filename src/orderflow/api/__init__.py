"""The HTTP API: a thin ASGI application over msgspec (see `app.create_app`)."""
