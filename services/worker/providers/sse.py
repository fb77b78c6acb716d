"""What every adapter shares: POST a streamed request, read server-sent events, map failures.

Adapters are written on httpx rather than the providers' SDKs: the worker keeps one pooled
`httpx.AsyncClient` for every model, httpx bounds each silence of a stream with its read
timeout (the SDKs' one timeout is for the whole call or the same httpx setting underneath),
and the platform retries on its own terms (only before the first token, each retry a run
event), which the SDKs' built-in, silent retries would get in the way of.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from services.rpc.errors import Reason
from services.rpc.hosted_models import HostedModelConfig
from services.worker.model import ModelError


@dataclass(frozen=True)
class Frame:
    """One server-sent event: its `event:` name (empty when unnamed) and its `data:`."""

    event: str
    data: str


def timeout_of(config: HostedModelConfig) -> httpx.Timeout:
    """Bound connecting and every wait for bytes, so that a stream that goes silent fails."""
    return httpx.Timeout(
        connect=config.connect_timeout_seconds,
        read=config.idle_timeout_seconds,
        write=config.connect_timeout_seconds,
        pool=config.connect_timeout_seconds,
    )


@contextlib.asynccontextmanager
async def post_stream(
    http: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
) -> AsyncIterator[AsyncIterator[Frame]]:
    """POST `body` and yield the response's frames; any failure becomes a ModelError."""
    try:
        async with http.stream(
            "POST", url, json=body, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                detail = (await response.aread())[:2000].decode(errors="replace")
                raise http_error(response.status_code, detail, response.headers)
            yield frames(response.aiter_lines())
    except httpx.ConnectTimeout:
        raise ModelError(
            Reason.MODEL_TIMEOUT,
            "The model endpoint could not be reached in time (connect timeout).",
            retryable=True,
        ) from None
    except httpx.TimeoutException as err:
        raise ModelError(
            Reason.MODEL_TIMEOUT, f"The model endpoint timed out ({type(err).__name__})."
        ) from None
    except (httpx.ConnectError, httpx.RemoteProtocolError) as err:
        raise ModelError(
            Reason.MODEL_ERROR,
            f"The model endpoint could not be reached: {type(err).__name__}: {err}",
            retryable=True,
        ) from None
    except httpx.HTTPError as err:
        raise ModelError(
            Reason.MODEL_ERROR, f"The model endpoint failed: {type(err).__name__}: {err}"
        ) from None


async def frames(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    """Group the lines of an event stream into frames (blank line ends one)."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield Frame(event, "\n".join(data))
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
        # comments (":") and other fields (id:, retry:) carry nothing an adapter needs
    if data:
        yield Frame(event, "\n".join(data))


def http_error(status: int, detail: str, headers: Mapping[str, str]) -> ModelError:
    """Say in plain words what an HTTP error from the model endpoint means."""
    message = _error_message(detail)
    match status:
        case 401 | 403:
            what = "refused the credentials (check the model's API key)"
        case 404:
            what = "does not know this model name (or this API path)"
        case 429:
            what = "is rate limiting the platform"
        case _ if status >= 500:
            what = "failed"
        case _:
            what = "rejected the request"
    return ModelError(
        Reason.MODEL_ERROR,
        f"The model endpoint {what}: HTTP {status}: {message}",
        retryable=status == 429 or status >= 500,
        retry_after=retry_after(headers),
        status=status,
    )


def _error_message(detail: str) -> str:
    """Return the error's message from an OpenAI- or Anthropic-shaped body, else the text."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        error = json.loads(detail).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    return detail[:500]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the wait the endpoint asked for, in seconds: retry-after-ms, else Retry-After."""
    with contextlib.suppress(ValueError):
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    return None


def malformed(what: str = "a malformed stream frame") -> ModelError:
    """Build the error of a stream that cannot be read."""
    return ModelError(Reason.MODEL_ERROR, f"The model endpoint sent {what}.")
