"""The dashboard in a real headless Chromium, against a real stack, edge, vault and gateway.

One browser for the module and one page visit per scenario: each test acts as a person
would (type, click, wait for text) and writes screenshots of the pages it visits, light
and dark (tests/web/dashboard.py says where).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
    tool_pb2,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from playwright.async_api import Browser, BrowserContext, Page, expect

from services.web.app import Edge
from tests.approvals.helpers import add_tool
from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, start_gateway_stack
from tests.harness import Client
from tests.integration.helpers import get_run, new_run, new_session
from tests.web.dashboard import PHONE, Screenshots, chromium, signed_in, watch_errors
from tests.web.helpers import start_edge

# Records every text the streaming reply shows, and every state of the live pill.
WATCH_STREAM = """() => {
  window.texts = []; window.states = [];
  new MutationObserver(() => {
    const text = document.querySelector("[data-testid=stream-text]");
    if (text && window.texts.at(-1) !== text.textContent) window.texts.push(text.textContent);
    const pill = document.querySelector("[data-testid=live-state]");
    if (pill && window.states.at(-1) !== pill.dataset.state) window.states.push(pill.dataset.state);
  }).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""


@dataclass
class Site:
    """The module's stack, the edge in front of it, a browser, and the owner signed in."""

    gw: GatewayStack
    edge: Edge
    browser: Browser
    owner: BrowserContext
    shots: Screenshots

    @property
    def url(self) -> str:
        """Return the edge's base URL."""
        return self.edge.url

    async def restart_edge(self) -> None:
        """Stop the edge and start a new one on the same port (its streams end)."""
        port = self.edge.port
        await self.edge.stop()
        self.edge = await start_edge(self.gw.stack.address, http_port=port, sse_retry_ms=200)

    async def page(self, path: str, context: BrowserContext | None = None) -> Page:
        """Open a page of the dashboard."""
        page = await (context or self.owner).new_page()
        watch_errors(page)
        await page.goto(path)
        return page


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def site(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    """Run a gateway stack, an edge and one browser for the module."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    shots = Screenshots.from_env(tmp_path_factory.mktemp("screenshots"))
    async with (
        start_gateway_stack(dsn, tmp_path_factory.mktemp("vault")) as gw,
        chromium() as browser,
    ):
        edge = await start_edge(gw.stack.address, sse_retry_ms=200)
        running = Site(
            gw, edge, browser, await signed_in(browser, edge.url, gw.owner.api_key), shots
        )
        try:
            yield running
        finally:
            await running.owner.close()
            await running.edge.stop()


async def _add_member(owner: Client, role: str) -> str:
    """Make a member with `role` in the owner's workspace and return an API key for them."""
    people = workspace_service_pb2_grpc.WorkspaceServiceStub(owner.channel)
    member = await people.CreateMember(
        workspace_service_pb2.CreateMemberRequest(
            member=workspace_pb2.Member(display_name=f"Vera {role}", role=role)
        ),
        metadata=owner.auth,
        timeout=10,
    )
    keys = api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel)
    made = await keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(display_name=f"{role} key", user=member.user)
        ),
        metadata=owner.auth,
        timeout=10,
    )
    return made.key


async def test_sign_in_shows_who_and_sign_out_ends_it(site: Site) -> None:
    """Sign in with a key through the form: name, workspace and role show; sign out works."""
    context = await site.browser.new_context(base_url=site.url)
    page = await context.new_page()
    await page.goto("/sessions/anything")
    await expect(page.locator("#api-key")).to_be_visible()
    await site.shots.take(page, "signin")
    await page.fill("#api-key", "ap_wrong_key")
    await page.click("button[type=submit]")
    await expect(page.locator(".form-error")).to_contain_text("not valid")
    await page.fill("#api-key", site.gw.owner.api_key)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/sessions/anything")
    who = page.get_by_test_id("whoami")
    await expect(who).to_contain_text("Test workspace user")
    await expect(who).to_contain_text("owner")
    await expect(who).to_contain_text("Test workspace")
    assert site.gw.owner.api_key not in page.url
    assert site.gw.owner.api_key not in await page.evaluate("JSON.stringify(localStorage)")
    await page.click("button.signout")
    await expect(page.locator("#api-key")).to_be_visible()
    assert await page.evaluate("fetch('/v1/sessions').then(r => r.status)") == 401
    await context.close()


async def test_create_session_send_message_and_watch_reply_stream(site: Site) -> None:
    """Create a session, send a message: the reply streams in token by token, then lands."""
    page = await site.page("/sessions")
    await page.get_by_role("button", name="New session").click()
    await page.fill("dialog input[name=title]", "Release notes")
    await page.fill("dialog input[name=metadata]", "team=docs")
    await page.get_by_role("button", name="Create session").click()
    await page.wait_for_url("**/sessions/*")
    await expect(page.locator("h1")).to_contain_text("Release notes")
    await expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live")
    await page.evaluate(WATCH_STREAM)
    await page.get_by_test_id("composer-input").fill("Draft it [[tokens=20]] [[delay_ms=150]]")
    await page.get_by_test_id("composer-input").press("Enter")
    user = page.locator(".message.user").last
    await expect(user).to_contain_text("Draft it", timeout=15000)
    await expect(user.locator(".author")).to_have_text("Test workspace user")
    reply = page.locator(".transcript .message.assistant").last
    await expect(reply).to_be_visible(timeout=20000)
    texts: list[str] = await page.evaluate("window.texts")
    growing = [t for t in texts if t]
    # Partial texts, each extending the last: it streamed in. (A worker stores what
    # accumulated while its last append was in flight in one batch, so on a busy machine a
    # render may add more than one token.)
    assert len(growing) >= 3, growing
    assert all(b.startswith(a) for a, b in itertools.pairwise(growing)), growing
    final = await reply.locator(".message-text").text_content()
    assert final is not None and final.startswith(growing[-1].rstrip())
    assert await page.locator(".streaming-reply").count() == 0  # replaced, not doubled
    await site.shots.take(page, "session")
    await page.set_viewport_size(PHONE)
    await site.shots.take(page, "session-phone")
    await page.close()


async def test_run_inspector_shows_tool_call_arguments_and_result(site: Site) -> None:
    """A run that called a tool: the inspector shows its arguments, result and duration."""
    gw, owner = site.gw, site.gw.owner
    schema = {
        "type": "object",
        "properties": {"item": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["item"],
    }
    await gw.add_http_tool(owner, "lookup", gw.tools.base + "/echo/{item}", parameters=schema)
    session = await new_session(owner, "Tool use")
    run = await new_run(
        owner, session.name, 'Look [[tool=lookup args={"item": "kiwi", "count": 3}]] [[tokens=8]]'
    )
    await owner.stream(run.name)
    page = await site.page(f"/{run.name}?event=3")
    await expect(page.get_by_test_id("ending")).to_contain_text("Completed")
    calls = page.get_by_test_id("tool-calls")
    await expect(calls.locator(".tool-name")).to_have_text("lookup")
    await expect(calls.get_by_test_id("tool-args")).to_contain_text('"item": "kiwi"')
    await expect(calls.get_by_test_id("tool-result")).to_contain_text("kiwi")
    await expect(page.locator(".row.selected")).to_have_attribute("data-seq", "3")
    await expect(page.get_by_test_id("event-detail")).to_contain_text("#3")
    for stat in ("ttft", "duration", "input", "output"):
        assert (await page.locator(f"[data-stat={stat}]").text_content()) not in ("", "—")
    await page.get_by_role("button", name="tool_call.started").click()  # filter it out
    await expect(page.locator(".row .type", has_text="tool_call.started")).to_have_count(0)
    await page.get_by_role("button", name="Show all").click()
    async with page.expect_download() as download:
        await page.get_by_test_id("export").click()
    exported = await asyncio.to_thread(Path(await (await download.value).path()).read_text)
    assert '"tool_call.completed"' in exported
    await site.shots.take(page, "run", full_page=True)
    await page.close()
    tools = await site.page("/tools")
    row = tools.get_by_test_id("tool-stats").locator("tr[data-tool=lookup]")
    await expect(row).to_contain_text("1")
    assert (await row.locator("[data-col=median]").text_content()) != "—"
    await site.shots.take(tools, "tools")
    await tools.close()


async def test_a_tool_call_waiting_for_approval_is_approved_from_the_inspector(
    site: Site,
) -> None:
    """A call of an ALWAYS_ASK tool shows a card with its arguments; Approve runs it once."""
    gw, owner = site.gw, site.gw.owner
    await add_tool(gw, "guarded", tool_pb2.ALWAYS_ASK)
    session = await new_session(owner, "Needs a yes")
    run = await new_run(
        owner, session.name, 'Fetch [[tool=guarded args={"item": "plum"}]] [[tokens=4]]'
    )
    page = await site.page(f"/{run.name}")
    card = page.get_by_test_id("approvals")
    await expect(card).to_contain_text("guarded", timeout=15000)
    await expect(card).to_contain_text('"item": "plum"')
    await site.shots.take(page, "run-approval")
    await card.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("ending")).to_contain_text("Completed", timeout=15000)
    await expect(card).to_be_hidden()
    await expect(page.get_by_test_id("tool-result")).to_contain_text("plum")
    await expect(page.locator(".filter[data-type='tool_call.approved']")).to_contain_text("1")
    await expect(page.locator(".filter[data-type='tool_call.completed']")).to_contain_text("1")
    await page.close()


async def test_cancel_a_running_run_from_the_inspector(site: Site) -> None:
    """Cancel a running run: the inspector shows it stop, with its terminal event."""
    owner = site.gw.owner
    session = await new_session(owner, "Long one")
    run = await new_run(owner, session.name, "Go on [[tokens=400]] [[delay_ms=50]]")
    page = await site.page(f"/{run.name}")
    await expect(page.get_by_test_id("run-output")).to_contain_text("alpha", timeout=15000)
    await page.get_by_test_id("cancel-run").click()
    await expect(page.get_by_test_id("ending")).to_contain_text("Cancelled", timeout=15000)
    await expect(page.locator(".filter[data-type='run.cancelled']")).to_contain_text("1")
    assert (await get_run(owner, run.name)).state == 5  # CANCELLED
    await page.close()


async def test_run_started_over_grpc_streams_live_and_survives_an_edge_restart(site: Site) -> None:
    """A run made over gRPC appears live; the edge restarts mid-stream; no gap, no duplicate."""
    owner = site.gw.owner
    session = await new_session(owner, "Live from the CLI")
    page = await site.page(f"/{session.name}")
    await expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live")
    await page.evaluate(WATCH_STREAM)
    run = await new_run(owner, session.name, "From gRPC [[tokens=60]] [[delay_ms=40]]")
    stream = page.get_by_test_id("stream-text")
    await expect(stream).to_contain_text("golf", timeout=15000)
    await site.restart_edge()
    await expect(page.locator(".transcript .message.assistant")).to_have_count(1, timeout=30000)
    states: list[str] = await page.evaluate("window.states")
    assert "reconnecting" in states and states[-1] == "live", states
    events = await owner.stream(run.name)
    stored = "".join(e.output_text_delta.text for e in events if e.type == "output_text.delta")
    shown = await page.locator(".transcript .message.assistant .message-text").text_content()
    assert shown == stored  # the transcript's stored reply
    texts: list[str] = await page.evaluate("window.texts")
    assert texts and stored.startswith(texts[-1]), (texts[-1:], stored)  # no token twice
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    await page.close()


async def test_viewer_reads_but_has_no_composer_and_no_admin_pages(site: Site) -> None:
    """A viewer sees the session read-only; admin pages are not offered and are refused."""
    owner = site.gw.owner
    session = await new_session(owner, "Shared")
    key = await _add_member(owner, "viewer")
    context = await signed_in(site.browser, site.url, key)
    page = await site.page(f"/{session.name}", context)
    await expect(page.get_by_test_id("read-only")).to_be_visible()
    assert await page.get_by_test_id("composer-input").count() == 0
    nav = page.locator("nav.nav")
    await expect(nav).to_contain_text("Members")
    for hidden in ("Secrets", "API keys", "Master key"):
        await expect(nav).not_to_contain_text(hidden)
    await page.goto("/admin/keys")
    await expect(page.locator("main")).to_contain_text("needs the owner role")
    assert await page.evaluate("fetch('/v1/apiKeys').then(r => r.status)") == 403
    await context.close()


async def test_another_workspaces_session_is_not_found(site: Site) -> None:
    """A session of another workspace, by URL: "Not found", nothing of it shown."""
    other = await site.gw.stack.new_workspace("Elsewhere")
    theirs = await new_session(other, "Their secret plans")
    page = await site.page(f"/{theirs.name}")
    await expect(page.get_by_test_id("not-found")).to_be_visible()
    assert "Their secret plans" not in await page.content()
    await site.shots.take(page, "not-found")
    await page.close()


async def test_admin_pages_and_secrets_never_show_a_value(site: Site) -> None:
    """Every admin page renders for the owner; the secrets page has names, never values."""
    owner = site.gw.owner
    value = f"hunter2-{secrets.token_hex(8)}"
    vault = secret_service_pb2_grpc.SecretServiceStub(owner.channel)
    await vault.PutSecret(
        secret_service_pb2.PutSecretRequest(name="secrets/deploy-token", value=value.encode()),
        metadata=owner.auth,
        timeout=10,
    )
    page = await site.page("/admin/secrets")
    await expect(page.get_by_test_id("secrets")).to_contain_text("deploy-token")
    await page.fill("input[aria-label='Secret name']", "webhook")
    other = f"pa55-{secrets.token_hex(8)}"
    await page.fill("input[aria-label='Secret value']", other)
    await page.get_by_role("button", name="Store").click()
    await expect(page.get_by_test_id("secrets")).to_contain_text("webhook")
    html = await page.content()
    assert value not in html and other not in html
    await site.shots.take(page, "secrets")
    for path, testid, name in (
        ("/admin/members", "members", "members"),
        ("/admin/registry", "tools", "registry"),
        ("/admin/keys", "api-keys", "api-keys"),
        ("/admin/master-key", "master-key", "master-key"),
        ("/sessions", None, "sessions"),
    ):
        await page.goto(path)
        if testid:
            await expect(page.get_by_test_id(testid)).to_be_visible()
        else:
            await expect(page.locator(".sessions-table tbody tr").first).to_be_visible()
        assert value not in await page.content()
        await site.shots.take(page, name)
    await page.goto("/admin/keys")
    await page.fill("input[aria-label='Key label']", "laptop")
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_test_id("new-key")).to_contain_text("ap_")
    await page.close()


async def test_sessions_list_filters_and_shows_latest_run(site: Site) -> None:
    """The sessions list filters by title and by the latest run's status."""
    owner = site.gw.owner
    done = await new_session(owner, "Quarterly filter report")
    run = await new_run(owner, done.name, "[[tokens=3]]")
    await owner.stream(run.name)
    page = await site.page("/sessions")
    await page.fill("input.search", "quarterly")
    rows = page.locator(".sessions-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("Completed")
    await expect(rows.first.locator("[data-col=runs]")).to_have_text("1")
    # tokens from the usage rollups (QueryUsage by session)
    await expect(rows.first.locator("[data-col=tokens]")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    await page.fill("input.search", "")
    await page.select_option("select[aria-label='Latest run status']", "CANCELLED")
    await expect(rows.first).to_contain_text("Long one")
    await page.close()
