"""Capture every log line the in-process services write during the suite, and scan it.

The services' own logging chain (services/rpc/logging.py, redaction included) is configured
once at debug level; each line goes to pytest's captured stdout, as before, and to a file.
At the end of the session the file must hold no API key, invitation token or internal token.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, TextIO

# A full API key, "ap_<12 hex>_<secret>"; the prefix alone is public and may be logged.
API_KEY = re.compile(r"ap_[0-9a-f]{12}_[A-Za-z0-9_-]{16,}")
# An invitation token, "apinv_<secret>": as good as a membership until it is used.
INVITATION_TOKEN = re.compile(r"apinv_[A-Za-z0-9_-]{32,}")
# Internal tokens of the stacks the tests start (harness.py registers them).
INTERNAL_TOKENS: set[str] = set()


class TeeLogger:
    """A structlog logger that writes each rendered line to the capture file and stdout."""

    def __init__(self, capture: TextIO) -> None:
        self._capture = capture

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        self._capture.write(message + "\n")
        print(message, file=sys.stdout)  # pytest's capture shows it next to a failing test

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class TeeLoggerFactory:
    """Hand every structlog logger the one capture file."""

    def __init__(self, capture: TextIO) -> None:
        self._logger = TeeLogger(capture)

    def __call__(self, *args: Any) -> TeeLogger:
        """Return the tee logger."""
        return self._logger


def leaks(path: Path) -> list[str]:
    """Return the captured lines holding an API key, an invitation token or an internal token."""
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if (
            API_KEY.search(line)
            or INVITATION_TOKEN.search(line)
            or any(token in line for token in INTERNAL_TOKENS)
        ):
            found.append(line[:300])
    return found
