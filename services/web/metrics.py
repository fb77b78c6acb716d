"""The HTTP edge's Prometheus metrics: requests, and the event streams it fans out.

`docs/http.md` says what each one means.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "ap_http_requests",
    "HTTP requests answered, by route (the RPC, or the edge's own path) and HTTP status.",
    ["route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "ap_http_request_duration_seconds",
    "Time from a request's arrival to its response (a stream: until it opens), by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SSE_SUBSCRIBERS = Gauge("ap_sse_subscribers", "Server-sent event streams open to clients now.")
SSE_UPSTREAMS = Gauge(
    "ap_sse_upstream_streams", "gRPC streams to the control plane feeding them now."
)
SSE_GUARDS = Gauge(
    "ap_sse_guard_streams",
    "gRPC streams that carry no event, one per further key on a shared feed: the control "
    "plane ends it when that key loses the right to stream.",
)
SSE_HANDOVERS = Counter(
    "ap_sse_upstream_handovers",
    "Shared feeds whose upstream moved to another key's credentials (its key left or lost "
    "the right to stream), resuming after the last event.",
)
SSE_SHARED_JOINS = Counter(
    "ap_sse_shared_joins", "Subscribers served from an open feed instead of a new upstream stream."
)
SSE_DROPPED = Counter(
    "ap_sse_dropped_subscribers",
    "Subscribers dropped for falling behind: slow (queue full) or send_timeout (no bytes "
    "accepted); each resumes with Last-Event-ID.",
    ["reason"],
)
LOGINS = Counter("ap_http_logins", "Cookie sign-ins, by outcome: ok, refused.", ["outcome"])

for _reason in ("slow", "send_timeout"):
    SSE_DROPPED.labels(_reason)
for _outcome in ("ok", "refused"):
    LOGINS.labels(_outcome)
