"""The worker's Prometheus metrics: how fast runs produce output and how tool calls end.

`docs/operations.md` says what each one means and how to read it.
"""

from __future__ import annotations

import time

from agentplatform.events import TEXT_PAYLOADS
from agentplatform.v1 import run_pb2
from prometheus_client import Counter, Gauge, Histogram

TOOL_CALL_OUTCOMES = ("ok", "error", "timeout", "cancelled")

TIME_TO_FIRST_EVENT = Histogram(
    "ap_run_time_to_first_event_seconds",
    "Time from a worker's claim of an attempt to its first output event (reply or reasoning "
    "text), the model's own latency included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOOL_CALLS = Counter(
    "ap_tool_calls",
    "Tool calls a worker made for its runs, by tool, outcome (ok, error: the tool or the "
    "gateway reported one, timeout, cancelled: the run stopped first) and workspace.",
    ["tool", "outcome", "workspace"],
)
HOSTED_MODEL_UP = Gauge(
    "ap_hosted_model_up",
    "1 if the worker's start-up check found the offered model answering (reachable, the "
    "credentials accepted, the model name known), 0 if not; the log line "
    "hosted_model_check_failed says why.",
    ["model", "api"],
)


class FirstOutputClock:
    """Time one attempt from its claim to its first output event, observed once."""

    def __init__(self) -> None:
        """Start the clock: the attempt was just claimed."""
        self._started = time.perf_counter()
        self._seen = False

    def saw(self, event: run_pb2.RunEvent) -> None:
        """Observe the elapsed time if `event` is the attempt's first output event."""
        if not self._seen and event.WhichOneof("payload") in TEXT_PAYLOADS:
            self._seen = True
            TIME_TO_FIRST_EVENT.observe(time.perf_counter() - self._started)


def record_tool_call(tool: str, outcome: str, workspace: str) -> None:
    """Count one tool call of a workspace by how it ended (one of TOOL_CALL_OUTCOMES)."""
    TOOL_CALLS.labels(tool, outcome, workspace).inc()
