"""Browser sign-in: the sealed cookie, CSRF and origin checks, replicas, logout."""

from __future__ import annotations

import secrets

import httpx
from agentplatform.events import TERMINAL_TYPES as TERMINAL
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.web.app import Edge
from services.web.login import COOKIE_NAME
from tests.harness import Stack
from tests.integration.helpers import new_run, new_session
from tests.web.helpers import EventReader, bearer, running_edge

EVIL = "https://evil.example"


async def _login(http: httpx.AsyncClient, api_key: str) -> str:
    response = await http.post("/auth/login", json={"apiKey": api_key})
    assert response.status_code == 200, response.text
    return str(response.json()["csrfToken"])


def _reason(response: httpx.Response) -> tuple[int, str, dict[str, str]]:
    error = response.json()["error"]
    info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
    return response.status_code, info["reason"], info.get("metadata", {})


async def test_login_sets_a_sealed_http_only_strict_cookie(stack: Stack, edge: Edge) -> None:
    """The cookie is HttpOnly, SameSite=Strict, not Secure over plain HTTP, and not the key."""
    async with httpx.AsyncClient(base_url=edge.url) as http:
        response = await http.post("/auth/login", json={"apiKey": stack.owner.api_key})
        assert response.status_code == 200, response.text
        cookie = response.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert "secure" not in attributes
        value = http.cookies[COOKIE_NAME]
        secret_part = stack.owner.api_key.rsplit("_", 1)[-1]
        assert stack.owner.api_key not in value and secret_part not in value
        assert response.json()["profile"]["name"].startswith("users/")
        listed = await http.get("/v1/sessions")  # the cookie alone authenticates
        assert listed.status_code == 200, listed.text


async def test_the_cookie_is_secure_when_the_request_came_over_tls(
    stack: Stack, edge: Edge
) -> None:
    """Behind a trusted TLS proxy (X-Forwarded-Proto: https) the cookie is marked Secure."""
    async with httpx.AsyncClient(base_url=edge.url) as http:
        response = await http.post(
            "/auth/login",
            json={"apiKey": stack.owner.api_key},
            headers={"x-forwarded-proto": "https"},
        )
        assert "secure" in {a.strip().lower() for a in response.headers["set-cookie"].split(";")}


async def test_a_bad_key_gets_no_cookie(stack: Stack, edge: Edge) -> None:
    """A key the control plane refuses is 401 UNAUTHENTICATED with no Set-Cookie."""
    async with httpx.AsyncClient(base_url=edge.url) as http:
        response = await http.post("/auth/login", json={"apiKey": "ap_000000000000_nope"})
        assert _reason(response)[:2] == (401, "UNAUTHENTICATED")
        assert "set-cookie" not in response.headers
        query = await http.post("/auth/login", params={"apiKey": stack.owner.api_key}, json={})
        assert query.status_code == 400  # a key in a URL is refused, never read


async def test_login_from_another_site_is_refused(stack: Stack, edge: Edge) -> None:
    """Nobody can sign a victim's browser in to their own key from another site."""
    async with httpx.AsyncClient(base_url=edge.url) as http:
        for headers in ({"origin": EVIL}, {"sec-fetch-site": "cross-site"}):
            response = await http.post(
                "/auth/login", json={"apiKey": stack.owner.api_key}, headers=headers
            )
            assert _reason(response) == (403, "PERMISSION_DENIED", {"check": "csrf"})
            assert "set-cookie" not in response.headers


async def test_cookie_requests_that_change_state_need_the_csrf_token_and_same_origin(
    stack: Stack, edge: Edge
) -> None:
    """No token, a wrong one, or another origin: 403; same-origin with the token: 200."""
    async with httpx.AsyncClient(base_url=edge.url) as http:
        token = await _login(http, stack.owner.api_key)
        own_origin = edge.url
        refused = [
            {},
            {"x-csrf-token": "wrong"},
            {"x-csrf-token": token, "origin": EVIL},
            {"x-csrf-token": token, "sec-fetch-site": "cross-site"},
            {"x-csrf-token": token, "sec-fetch-site": "same-site"},
        ]
        for headers in refused:
            response = await http.post("/v1/sessions", json={}, headers=headers)
            assert _reason(response) == (403, "PERMISSION_DENIED", {"check": "csrf"}), headers
        allowed = await http.post(
            "/v1/sessions",
            json={"title": "by cookie"},
            headers={"x-csrf-token": token, "origin": own_origin, "sec-fetch-site": "same-origin"},
        )
        assert allowed.status_code == 200, allowed.text
        # A program's Bearer key carries no ambient authority: no token needed.
    async with httpx.AsyncClient(base_url=edge.url) as program:
        made = await program.post("/v1/sessions", json={}, headers=bearer(stack.owner.api_key))
        assert made.status_code == 200


async def test_any_replica_accepts_the_cookie_and_none_accepts_a_forgery(
    stack: Stack, edge: Edge
) -> None:
    """A second edge with the same secret opens the cookie; altered or foreign cookies are 401."""
    async with (
        running_edge(stack.address) as replica,
        running_edge(stack.address, cookie_secret=SecretStr(secrets.token_urlsafe(32))) as alien,
        httpx.AsyncClient(base_url=edge.url) as http,
    ):
        token = await _login(http, stack.owner.api_key)
        cookie = http.cookies[COOKIE_NAME]
        async with httpx.AsyncClient(base_url=replica.url, cookies={COOKIE_NAME: cookie}) as other:
            assert (await other.get("/v1/sessions")).status_code == 200
            session = await other.get("/auth/session")
            assert session.json()["csrfToken"] == token
        tampered = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
        for base, value in ((edge.url, tampered), (alien.url, cookie), (edge.url, "v1.x")):
            async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: value}) as forged:
                assert _reason(await forged.get("/v1/sessions"))[:2] == (401, "UNAUTHENTICATED")


async def test_logout_clears_the_cookie_and_ends_its_streams(stack: Stack, edge: Edge) -> None:
    """Logout ends the login's open event streams at once and clears the cookie."""
    session = await new_session(stack.owner)
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        token = await _login(http, stack.owner.api_key)
        async with http.stream("GET", f"/v1/{session.name}:streamEvents") as stream:
            assert stream.status_code == 200
            logout = await http.post("/auth/logout", headers={"x-csrf-token": token})
            assert logout.status_code == 204
            assert await EventReader(stream).read() == []  # the stream ended by itself
        assert COOKIE_NAME not in http.cookies
        assert (await http.get("/v1/sessions")).status_code == 401


async def test_logout_of_the_login_a_shared_feed_runs_as_hands_it_to_another_key(
    stack: Stack, edge: Edge
) -> None:
    """The cookie's key stops being used upstream; a bearer subscriber goes on without a gap."""
    session = await new_session(stack.owner)
    url = f"/v1/{session.name}:streamEvents"
    handovers = REGISTRY.get_sample_value("ap_sse_upstream_handovers_total") or 0.0
    async with (
        httpx.AsyncClient(base_url=edge.url, timeout=15) as browser,
        httpx.AsyncClient(base_url=edge.url, timeout=15) as program,
    ):
        created = await program.post(
            "/v1/apiKeys", json={"displayName": "browser"}, headers=bearer(stack.owner.api_key)
        )
        assert created.status_code == 200, created.text
        token = await _login(browser, created.json()["key"])
        async with (
            browser.stream("GET", url) as cookie_stream,
            program.stream("GET", url, headers=bearer(stack.owner.api_key)) as key_stream,
        ):
            assert edge.hub is not None and edge.hub.upstream_count == 1
            reader, cookie_reader = EventReader(key_stream), EventReader(cookie_stream)
            await new_run(stack.owner, session.name, "hi [[tokens=2]]")
            before = await reader.read(until=TERMINAL)
            assert [e.id for e in await cookie_reader.read(until=TERMINAL)] == [
                e.id for e in before
            ]
            logout = await browser.post("/auth/logout", headers={"x-csrf-token": token})
            assert logout.status_code == 204
            assert await cookie_reader.read() == []  # the login's stream ended
            assert (
                REGISTRY.get_sample_value("ap_sse_upstream_handovers_total") or 0.0
            ) == handovers + 1
            await new_run(stack.owner, session.name, "again [[tokens=2]]")
            after = await reader.read(until=TERMINAL)
            ids = [int(e.id) for e in before + after]
            assert ids == list(range(ids[0], ids[0] + len(ids)))
