"""The HTTP layer: the app that serves the route tables it is handed (`app.OrderflowApp`), the
primitives those tables are made of (routing, requests, problems, auth, the OpenAPI document),
and the orders' own tables (`routes`). It knows no feature package: the composition root
(`orderflow.server`) joins the tables."""
