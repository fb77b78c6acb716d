"""HTTP/JSON transcoding: canonical JSON in and out, AIP-193 errors, limits."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import clone_database
from tests.harness import Stack, start_stack
from tests.web.helpers import bearer, running_edge


def _error(response: httpx.Response, http_status: int, status: str, reason: str) -> dict[str, Any]:
    """Assert an AIP-193 error body; return its `error` object."""
    assert response.status_code == http_status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == http_status
    assert error["status"] == status
    infos = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert len(infos) == 1, error
    assert infos[0]["reason"] == reason
    assert infos[0]["domain"] == "agentplatform.dev"
    return error  # type: ignore[no-any-return]


def _field(error: dict[str, Any]) -> str:
    violations = [
        v
        for d in error["details"]
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    ]
    assert len(violations) == 1, error
    return str(violations[0]["field"])


async def test_a_session_and_run_round_trip_as_canonical_json(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """Create, get and list speak proto3 JSON: camelCase, enums by name, int64 as strings."""
    auth = bearer(stack.owner.api_key)
    created = await http.post(
        "/v1/sessions", json={"title": "http", "metadata": {"k": "v"}}, headers=auth
    )
    assert created.status_code == 200, created.text
    session = created.json()
    assert session["title"] == "http" and session["metadata"] == {"k": "v"}
    run = await http.post(
        f"/v1/{session['name']}/runs",
        json={"inputText": "hi [[tokens=2]]", "concurrencyPolicy": "ENQUEUE"},
        headers=auth,
    )
    assert run.status_code == 200, run.text
    assert run.json()["state"] == "QUEUED"
    assert run.json()["lastEventSequence"] == "1"
    got = await http.get(f"/v1/{session['name']}", headers=auth)
    assert got.json()["name"] == session["name"]
    await http.post("/v1/sessions", json={"title": "second"}, headers=auth)
    listed = await http.get("/v1/sessions", params={"pageSize": "1"}, headers=auth)
    assert listed.status_code == 200
    assert len(listed.json()["sessions"]) == 1 and listed.json()["nextPageToken"]


async def test_a_session_is_patched_by_its_mask_and_deleted_over_http(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """PATCH takes updateMask from the query; DELETE takes force; an active run is 400 named."""
    auth = bearer(stack.owner.api_key)
    session = (
        await http.post("/v1/sessions", json={"title": "t", "instructions": "i"}, headers=auth)
    ).json()
    name = session["name"]
    patched = await http.patch(
        f"/v1/{name}",
        json={"title": "ignored", "instructions": ""},
        params={"updateMask": "instructions"},
        headers=auth,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "t" and "instructions" not in patched.json()
    bad = await http.patch(f"/v1/{name}", json={}, params={"updateMask": "model"}, headers=auth)
    assert _error(bad, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")["details"][0]["metadata"] == {
        "field": "update_mask",
        "path": "model",
    }
    run = (await http.post(f"/v1/{name}/runs", json={"inputText": "[[hang]]"}, headers=auth)).json()
    refused = _error(
        await http.delete(f"/v1/{name}", headers=auth),
        400,
        "FAILED_PRECONDITION",
        "RUN_ALREADY_ACTIVE",
    )
    assert refused["details"][0]["metadata"] == {"active_run": run["name"]}
    deleted = await http.delete(f"/v1/{name}", params={"force": "true"}, headers=auth)
    assert deleted.status_code == 200, deleted.text
    _error(await http.get(f"/v1/{name}", headers=auth), 404, "NOT_FOUND", "NOT_FOUND")
    _error(await http.delete(f"/v1/{name}", headers=auth), 404, "NOT_FOUND", "NOT_FOUND")
    gone = await http.delete(f"/v1/{name}", params={"allowMissing": "true"}, headers=auth)
    assert gone.status_code == 200, gone.text


async def test_the_control_planes_errors_pass_through_with_their_details(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """NOT_FOUND → 404, no key → 401, a bad name → 400 naming the field: code and reason kept."""
    auth = bearer(stack.owner.api_key)
    missing = "sessions/00000000-0000-4000-8000-000000000000"
    _error(await http.get(f"/v1/{missing}", headers=auth), 404, "NOT_FOUND", "NOT_FOUND")
    _error(await http.get("/v1/sessions"), 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
    error = _error(
        await http.get("/v1/sessions/nope", headers=auth),
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
    )
    assert _field(error) == "name"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputTxt": "hi"}, "inputTxt"),
        ({"inputText": 5}, "inputText"),
        ({"inputText": "hi", "concurrencyPolicy": "SOMETIMES"}, "concurrencyPolicy"),
    ],
)
async def test_bad_fields_in_the_body_are_400_naming_the_field(
    stack: Stack,
    http: httpx.AsyncClient,
    body: dict[str, Any],
    field: str,
) -> None:
    """An unknown field or a value of the wrong type is INVALID_ARGUMENT with its name."""
    session = "sessions/00000000-0000-4000-8000-000000000000"
    response = await http.post(
        f"/v1/{session}/runs", json=body, headers=bearer(stack.owner.api_key)
    )
    error = _error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert _field(error) == field


async def test_nested_unknown_fields_and_query_parameters_are_named(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """The path of a nested field, and an unknown or ill-typed query parameter, are named."""
    auth = bearer(stack.owner.api_key)
    nested = await http.post("/v1/sessions", json={"titel": "x"}, headers=auth)
    assert _field(_error(nested, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")) == "session.titel"
    duration = await http.post("/v1/sessions", json={"runTimeout": "soon"}, headers=auth)
    assert _field(_error(duration, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")) == (
        "session.runTimeout"
    )
    unknown = await http.get("/v1/sessions", params={"color": "red"}, headers=auth)
    assert _field(_error(unknown, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")) == "color"
    typed = await http.get("/v1/sessions", params={"pageSize": "many"}, headers=auth)
    assert _field(_error(typed, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")) == "pageSize"


async def test_malformed_or_non_json_bodies_are_400(stack: Stack, http: httpx.AsyncClient) -> None:
    """Broken JSON, a JSON array and a form post are refused before any RPC, naming the body."""
    auth = bearer(stack.owner.api_key) | {"content-type": "application/json"}
    for content in (b'{"title": ', b"[1, 2]"):
        response = await http.post("/v1/sessions", content=content, headers=auth)
        error = _error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert _field(error) in ("body", "session")
    form = await http.post("/v1/sessions", data={"title": "x"}, headers=bearer(stack.owner.api_key))
    assert _field(_error(form, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")) == "body"


async def test_a_body_over_the_limit_is_413(stack: Stack) -> None:
    """A body larger than AP_MAX_BODY_BYTES is refused with LIMIT_EXCEEDED, streamed or not."""
    async with (
        running_edge(stack.address, max_body_bytes=2048) as small,
        httpx.AsyncClient(base_url=small.url) as http,
    ):
        body = {"title": "x" * 4096}
        response = await http.post("/v1/sessions", json=body, headers=bearer(stack.owner.api_key))
        error = _error(response, 413, "INVALID_ARGUMENT", "LIMIT_EXCEEDED")
        assert _field(error) == "body"

        async def chunks() -> AsyncIterator[
            bytes
        ]:  # no Content-Length: the limit holds while reading
            for _ in range(8):
                yield b"x" * 512

        streamed = await http.post(
            "/v1/sessions", content=chunks(), headers=bearer(stack.owner.api_key)
        )
        _error(streamed, 413, "INVALID_ARGUMENT", "LIMIT_EXCEEDED")


async def test_unknown_paths_are_404_and_wrong_methods_405(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """No route → 404 NOT_FOUND; a route's path with another method → 405 with Allow."""
    auth = bearer(stack.owner.api_key)
    _error(await http.get("/v1/nothing/here", headers=auth), 404, "NOT_FOUND", "NOT_FOUND")
    wrong = await http.put("/v1/sessions", headers=auth)
    _error(wrong, 405, "UNIMPLEMENTED", "NOT_IMPLEMENTED")
    assert wrong.headers["allow"] == "GET, POST"


async def test_the_per_key_rate_limit_is_429_with_retry_after(
    pg_admin_dsn: str, template_dsn: str
) -> None:
    """The control plane's RESOURCE_EXHAUSTED becomes 429 and its RetryInfo a Retry-After."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with (
        start_stack(
            dsn,
            internal_token=secrets.token_urlsafe(24),
            with_worker=False,
            run_rate_per_minute=1,
            run_rate_burst=1,
        ) as limited,
        running_edge(limited.address) as edge,
        httpx.AsyncClient(base_url=edge.url) as http,
    ):
        auth = bearer(limited.owner.api_key)
        session = (await http.post("/v1/sessions", json={}, headers=auth)).json()["name"]
        body = {"inputText": "hi", "concurrencyPolicy": "ENQUEUE"}
        first = await http.post(f"/v1/{session}/runs", json=body, headers=auth)
        assert first.status_code == 200, first.text
        second = await http.post(f"/v1/{session}/runs", json=body, headers=auth)
        _error(second, 429, "RESOURCE_EXHAUSTED", "RATE_LIMITED")
        assert int(second.headers["retry-after"]) >= 1


async def test_static_files_are_served_at_the_root_with_security_headers(
    http: httpx.AsyncClient,
) -> None:
    """The dashboard's folder is served at /, framed by nobody, sniffed by nobody."""
    response = await http.get("/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert (await http.get("/healthz")).text == "ok"
    assert (await http.get("/readyz")).status_code == 200


async def test_cors_is_off_by_default_and_opens_per_origin(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """No origin may call from a browser unless listed; a listed one may, with a Bearer key."""
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    app, evil = "https://app.example", "https://evil.example"
    closed = await http.options("/v1/sessions", headers=preflight | {"origin": app})
    assert "access-control-allow-origin" not in closed.headers
    async with (
        running_edge(stack.address, cors_origins=[app]) as edge,
        httpx.AsyncClient(base_url=edge.url) as opened,
    ):
        allowed = await opened.options("/v1/sessions", headers=preflight | {"origin": app})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == app
        assert "access-control-allow-credentials" not in allowed.headers
        refused = await opened.options("/v1/sessions", headers=preflight | {"origin": evil})
        assert "access-control-allow-origin" not in refused.headers
        listed = await opened.get(
            "/v1/sessions", headers=bearer(stack.owner.api_key) | {"origin": app}
        )
        assert listed.headers["access-control-allow-origin"] == app
