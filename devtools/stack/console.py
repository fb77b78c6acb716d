"""The stack's own output, and the error that stops it with a message."""

from __future__ import annotations

import sys


class StackError(Exception):
    """Report why the stack could not start, with what a developer needs to fix it."""


def say(message: str = "") -> None:
    """Print a line of the stack's own output right away, even into a pipe."""
    print(message, flush=True)


def warn(message: str) -> None:
    """Print a problem to stderr right away."""
    print(message, file=sys.stderr, flush=True)
