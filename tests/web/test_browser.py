"""A real browser's EventSource against the edge: it reconnects after a restart, with no gap.

Needs Debian's chromium (`make browser` installs it, as `make test` does) and the playwright
package (a dev dependency; it brings the driver, not a browser).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from services.web.app import Edge
from tests.harness import Stack
from tests.integration.helpers import new_run, new_session
from tests.web.helpers import start_edge

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every type the run's events can have: EventSource hands a named event only to its listeners.
EVENT_TYPES = [
    "run.queued",
    "run.started",
    "run.attempt_started",
    "run.cancel_requested",
    "reasoning.summary.delta",
    "output_text.delta",
    "tool_call.started",
    "tool_call.progress",
    "tool_call.completed",
    "tool_call.approval_requested",
    "tool_call.approved",
    "tool_call.denied",
    "usage",
    "run.completed",
    "run.failed",
    "run.cancelled",
]
WATCH = """([url, types]) => {
  window.seen = []; window.opens = 0; window.errors = 0; window.done = false;
  // Promises the test awaits (the page's CSP forbids Playwright's eval-based waiting).
  const waiters = [];
  const check = () => {
    for (const waiter of waiters.splice(0)) {
      if (waiter.ready()) waiter.resolve(window.seen.length); else waiters.push(waiter);
    }
  };
  window.until = (count) => new Promise((resolve) => {
    waiters.push({ready: () => window.done || window.seen.length >= count, resolve});
    check();
  });
  const source = new EventSource(url);
  source.onopen = () => { window.opens += 1; };
  source.onerror = () => { window.errors += 1; };
  for (const type of types) {
    source.addEventListener(type, (event) => {
      window.seen.push(Number(event.lastEventId));
      if (type.startsWith("run.") && ["completed", "failed", "cancelled"]
          .includes(type.split(".")[1])) { window.done = true; source.close(); }
      check();
    });
  }
}"""
LOGIN = """async (apiKey) => {
  const response = await fetch("/auth/login", {
    method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({apiKey}),
  });
  return response.status;
}"""


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Launch Debian's headless chromium."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "This test needs Chromium: run `make browser` (as root it runs "
            "`apt-get install -y chromium`), or put a chromium binary on PATH."
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_event_source_resumes_without_gap_after_the_edge_restarts(
    stack: Stack, browser: Browser
) -> None:
    """Restart the edge mid-run: the page's EventSource reconnects with Last-Event-ID, no gap."""
    edge: Edge = await start_edge(stack.address, sse_retry_ms=200)
    try:
        page = await browser.new_page()
        await page.goto(edge.url + "/")
        assert await page.evaluate(LOGIN, stack.owner.api_key) == 200
        session = await new_session(stack.owner)
        run = await new_run(stack.owner, session.name, "hi [[tokens=60]] [[delay_ms=30]]")
        await page.evaluate(WATCH, [f"/v1/{run.name}:streamEvents", EVENT_TYPES])
        async with asyncio.timeout(15):
            await page.evaluate("window.until(8)")
        port = edge.port
        await edge.stop()
        edge = await start_edge(stack.address, http_port=port, sse_retry_ms=200)
        async with asyncio.timeout(30):
            await page.evaluate("window.until(Infinity)")
        assert await page.evaluate("window.done")
        seen = await page.evaluate("window.seen")
        assert seen == list(range(1, len(seen) + 1)), seen
        assert len(seen) > 60
        assert await page.evaluate("window.errors") >= 1  # it did lose the connection
        assert await page.evaluate("window.opens") >= 2  # and opened it again
        assert stack.owner.api_key not in page.url
    finally:
        await edge.stop()
