"""Structured JSON logging through structlog, with secrets redacted.

Libraries log through the standard library (asyncpg's pool, asyncio's unhandled-exception
handler); their records are handed to structlog too, so every line, traceback included, is
one JSON object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset(
    {"authorization", "api_key", "token", "internal_token", "password", "secret", "value"}
)


def _redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A last line of defence: callers should never log secrets, but a stray key must not leak.
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "[redacted]"
    return event_dict


class _ToStructlog(logging.Handler):
    """Hand a standard-library log record to structlog, its traceback as a field."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            if record.stack_info:
                fields["stack"] = record.stack_info
            structlog.get_logger().log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


_STDLIB_BRIDGE = _ToStructlog()


def configure_logging(
    *, level: str = "info", fmt: str = "json", logger_factory: Any = None
) -> None:
    """Configure structlog (and stdlib logging) to write one line per event to stderr.

    `logger_factory` replaces the stderr writer (the tests tee every line to a file they scan).
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=logger_factory or structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _STDLIB_BRIDGE not in root.handlers:
        root.addHandler(_STDLIB_BRIDGE)
    root.setLevel(logging.WARNING)
