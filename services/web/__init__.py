"""The HTTP edge: HTTP/JSON and server-sent events over the control plane's public gRPC API.

Stateless: it holds no database connection and no private API. Every call goes to the
control plane with the caller's own credentials, so every authorization decision stays there.

    routes.py     the routes, read from the google.api.http annotations of the descriptors
    transcode.py  HTTP request → proto request; proto → canonical JSON
    errors.py     gRPC status → AIP-193 HTTP error
    login.py      the browser's sign-in: sealed session cookie, CSRF token, origin checks
    streams.py    server-streaming RPCs as SSE: shared upstream feeds, bounded subscribers
    openapi.py    the OpenAPI 3.1 document, generated from the same descriptors and comments
    app.py        the Starlette app and the Edge service (uvicorn, start, graceful stop)
"""
