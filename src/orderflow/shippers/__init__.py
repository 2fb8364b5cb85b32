"""Shippers beyond the simulated one, one module each, picked by `--shipper`:

    http.py     HttpShipper: POSTs the order, signed per Standard Webhooks, to an http(s):// URL,
                through HttpClient (httpclient.py: a small HTTP/1.1 client with a keep-alive pool)
    python.py   PythonShipper: awaits a user's async function (``python:package.module:function``)

Nothing is re-exported here, so loading one shipper never imports another's dependencies.
"""
