"""Perform one tool call for a run: look up, validate, resolve the credential, call, audit.

Everything that goes wrong with the tool itself becomes a `CallResult` with `is_error` and a
stable `error_code`, worded for the model to read and correct itself; only a malformed
request is a gRPC error. Every call, refused or not, leaves one audit row of metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import structlog

from services.gateway import store
from services.gateway.http_tool import (
    ArgumentError,
    Injection,
    UnsupportedEncodingError,
    header_safe,
    prepare_call,
    read_capped,
)
from services.gateway.mcp_tool import McpUnavailableError, call_remote_tool
from services.gateway.redact import REDACTED, redact
from services.gateway.schemas import argument_errors
from services.gateway.ssrf import DestinationBlockedError

log = structlog.get_logger(service="gateway")

# (workspace id, secret id, run name) → the secret's value; raises CredentialError.
SecretResolver = Callable[[uuid.UUID, str, str], Awaitable[bytes]]


class CredentialError(Exception):
    """The credential cannot be had; the message says why, without any value."""


@dataclass(frozen=True)
class Limits:
    """The platform's limits on tool calls."""

    default_timeout: float
    max_timeout: float
    max_response_bytes: int
    max_concurrent_calls: int

    def timeout(self, timeout_ms: int) -> float:
        """Return a tool's timeout in seconds: its own, else the default, never above the max."""
        wanted = timeout_ms / 1000 if timeout_ms > 0 else self.default_timeout
        return min(wanted, self.max_timeout)


@dataclass
class CallResult:
    """What the model gets back, and the metadata the audit keeps."""

    text: str
    is_error: bool = False
    truncated: bool = False
    error_code: str = ""
    http_status: int | None = None
    response_bytes: int = 0
    detail: str = ""


def _failure(code: str, message: str, detail: str = "") -> CallResult:
    return CallResult(f"Error {code}: {message}", is_error=True, error_code=code, detail=detail)


def argument_shape(arguments: Any) -> dict[str, str]:
    """Describe arguments by top-level key and JSON type, never by value."""
    if not isinstance(arguments, dict):
        return {"": type(arguments).__name__}
    return {str(k)[:64]: type(v).__name__ for k, v in list(arguments.items())[:32]}


@dataclass
class _Audit:
    kind: str = ""
    credential: str = ""
    destination: str = ""
    shape: dict[str, str] = field(default_factory=dict)


class ToolCaller:
    """Call tools for runs, within the platform's limits and the SSRF guard."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        mcp_http: httpx.AsyncClient,
        resolve_secret: SecretResolver,
        limits: Limits,
    ) -> None:
        self._pool = pool
        self._http = http
        self._mcp_http = mcp_http
        self._resolve_secret = resolve_secret
        self.limits = limits
        self._in_flight: defaultdict[uuid.UUID, int] = defaultdict(int)

    async def call(
        self, workspace_id: uuid.UUID, run: str, tool: str, arguments_json: str, call_id: str
    ) -> CallResult:
        """Call a workspace's tool with the model's arguments; audit it whatever happens."""
        started = time.monotonic()
        audit = _Audit()
        result = _failure("INTERNAL", "The gateway failed unexpectedly.")
        try:
            result = await self._call(workspace_id, run, tool, arguments_json, audit)
            return result
        except asyncio.CancelledError:
            # The worker cancelled the RPC (its run stopped): the tool request is abandoned.
            result = _failure("CANCELLED", "The call was cancelled.")
            raise
        finally:
            duration_ms = int((time.monotonic() - started) * 1000)
            outcome = result.error_code or "OK"
            log.info(
                "tool_call",
                tool=tool,
                kind=audit.kind,
                outcome=outcome,
                http_status=result.http_status,
                duration_ms=duration_ms,
                detail=result.detail,
            )
            async with self._pool.acquire() as conn:
                await store.call_audit_insert(
                    conn,
                    store.AuditEntry(
                        workspace_id=workspace_id,
                        run=run,
                        call_id=call_id,
                        tool=tool,
                        kind=audit.kind,
                        argument_shape=audit.shape,
                        credential=audit.credential,
                        destination=audit.destination,
                        outcome=outcome,
                        http_status=result.http_status,
                        response_bytes=result.response_bytes,
                        truncated=result.truncated,
                        detail=result.detail,
                        duration_ms=duration_ms,
                    ),
                )

    async def _call(  # noqa: PLR0911 - each refusal is its own answer to the model
        self, workspace_id: uuid.UUID, run: str, tool: str, arguments_json: str, audit: _Audit
    ) -> CallResult:
        async with self._pool.acquire() as conn:
            row = await store.tool_get(conn, workspace_id, tool)
        if row is None:
            return _failure("UNKNOWN_TOOL", f"There is no tool named {tool!r}.")
        audit.kind = "mcp" if row["mcp_server"] else "http"
        audit.credential = row["credential"]
        try:
            arguments = json.loads(arguments_json or "{}")
        except ValueError:
            return _failure("INVALID_ARGUMENTS", "The arguments are not valid JSON.")
        audit.shape = argument_shape(arguments)
        if not isinstance(arguments, dict):
            return _failure("INVALID_ARGUMENTS", "The arguments must be a JSON object.")
        errors = argument_errors(row["parameters_json"], arguments)
        if errors:
            return _failure(
                "INVALID_ARGUMENTS",
                "The arguments do not match the tool's parameters: " + "; ".join(errors),
            )
        with self._slot(workspace_id) as admitted:
            if not admitted:
                return _failure(
                    "CONCURRENCY_LIMIT",
                    f"This workspace already has {self.limits.max_concurrent_calls} tool calls "
                    "in flight; try again after one finishes.",
                )
            if row["mcp_server"]:
                timeout = self.limits.timeout(row["server_timeout_ms"] or 0)
                audit.destination = str(httpx.URL(row["mcp_server_url"]).netloc.decode())
                return await self._call_mcp(row, arguments, timeout)
            timeout = self.limits.timeout(row["timeout_ms"])
            audit.destination = _destination(row["url_template"])
            return await self._call_http(workspace_id, run, row, arguments, timeout)

    @contextlib.contextmanager
    def _slot(self, workspace_id: uuid.UUID) -> Iterator[bool]:
        if self._in_flight[workspace_id] >= self.limits.max_concurrent_calls:
            yield False
            return
        self._in_flight[workspace_id] += 1
        try:
            yield True
        finally:
            self._in_flight[workspace_id] -= 1
            if not self._in_flight[workspace_id]:
                del self._in_flight[workspace_id]

    async def _call_http(  # noqa: PLR0911 - each failure is its own answer to the model
        self,
        workspace_id: uuid.UUID,
        run: str,
        row: asyncpg.Record,
        arguments: dict[str, Any],
        timeout: float,
    ) -> CallResult:
        secrets: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                credential = None
                injection = None
                if row["credential"]:
                    injection = Injection.parse(row["credential_injection"])
                    try:
                        credential = await self._resolve_secret(
                            workspace_id, row["credential"], run
                        )
                    except CredentialError as err:
                        return _failure("CREDENTIAL_UNAVAILABLE", str(err))
                    secrets.append(credential)
                    if not header_safe(credential):
                        return _failure(
                            "CREDENTIAL_UNAVAILABLE",
                            "The credential is empty or holds characters a request cannot carry.",
                        )
                prepared = prepare_call(
                    row["method"], row["url_template"], arguments, injection, credential
                )
                request = self._http.build_request(
                    prepared.method,
                    prepared.url,
                    params=prepared.params or None,
                    json=prepared.json_body,
                    headers=prepared.headers,
                )
                response = await self._http.send(request, stream=True)
                try:
                    body, truncated, raw_bytes = await read_capped(
                        response, self.limits.max_response_bytes
                    )
                finally:
                    await response.aclose()
        except ArgumentError as err:
            return _failure("INVALID_ARGUMENTS", str(err))
        except DestinationBlockedError as err:
            return _failure(
                "DESTINATION_BLOCKED",
                "The gateway's network policy refuses this tool's destination.",
                detail=redact(err.cause, secrets),
            )
        except TimeoutError:
            return _failure("TOOL_TIMEOUT", f"The tool did not answer within {timeout:g} s.")
        except UnsupportedEncodingError as err:
            return _failure("RESPONSE_UNREADABLE", f"Unsupported content encoding {err}.")
        except (httpx.HTTPError, zlib.error) as err:
            return _failure(
                "TOOL_UNREACHABLE",
                f"The tool could not be reached: {type(err).__name__}.",
                detail=redact(str(err)[:300], secrets),
            )
        return _http_result(
            response,
            body=body,
            truncated=truncated,
            raw_bytes=raw_bytes,
            secrets=secrets,
            limits=self.limits,
        )

    async def _call_mcp(
        self, row: asyncpg.Record, arguments: dict[str, Any], timeout: float
    ) -> CallResult:
        try:
            text, is_error = await call_remote_tool(
                row["mcp_server_url"], self._mcp_http, row["remote_name"], arguments, timeout
            )
        except DestinationBlockedError as err:
            return _failure(
                "DESTINATION_BLOCKED",
                "The gateway's network policy refuses this MCP server.",
                detail=err.cause,
            )
        except TimeoutError:
            return _failure("TOOL_TIMEOUT", f"The MCP server did not answer within {timeout:g} s.")
        except McpUnavailableError as err:
            return _failure("TOOL_UNREACHABLE", "The MCP server failed.", detail=str(err))
        data = text.encode()
        cap = self.limits.max_response_bytes
        result = CallResult(
            _cut(data, cap), is_error=is_error, response_bytes=len(data), truncated=len(data) > cap
        )
        if is_error:
            result.error_code = "TOOL_ERROR"
        return result


def _destination(url_template: str) -> str:
    split = url_template.split("/", 3)
    return split[2] if len(split) > 2 else ""


def _cut(data: bytes, cap: int) -> str:
    if len(data) <= cap:
        return data.decode("utf-8", errors="replace")
    kept = data[:cap].decode("utf-8", errors="ignore")
    return f"{kept}\n[truncated: the result exceeded {cap} bytes]"


def _http_result(
    response: httpx.Response,
    *,
    body: bytes,
    truncated: bool,
    raw_bytes: int,
    secrets: list[bytes],
    limits: Limits,
) -> CallResult:
    status = response.status_code
    text = body.decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[truncated: the result exceeded {limits.max_response_bytes} bytes]"
    text = redact(text, secrets)
    result = CallResult(text, truncated=truncated, http_status=status, response_bytes=raw_bytes)
    if 300 <= status < 400:
        result.is_error = True
        result.error_code = "HTTP_REDIRECT"
        result.text = (
            f"Error HTTP_REDIRECT: the tool answered HTTP {status}; the gateway does not "
            "follow redirects."
        )
    elif status >= 400:
        result.is_error = True
        result.error_code = "HTTP_STATUS"
        result.text = f"Error HTTP_STATUS: the tool answered HTTP {status}: {text}"
    if REDACTED in result.text:
        result.detail = "credential redacted from the result"
    return result
