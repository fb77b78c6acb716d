"""Measure the dashboard's run inspector on a run with 10,000 events, in headless Chromium.

Starts its own stack as real processes on loopback (embedded Postgres, a control plane, a
worker; the dev model and the HTTP edge in this process), makes one run whose event log
holds --events events (output_text.delta mostly), then opens its inspector --loads times
and prints, from navigation start:

- first paint: the first timeline rows are on screen (the first page of events is in);
- fully rendered: every event is folded in and the timeline painted (data-loaded set,
  then one animation frame).

Target: fully rendered under 1 s on the 2-core development machine.

    .venv/bin/python bench/dashboard_render.py [--events 10000] [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc
from agentplatform.v1 import (
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from playwright.async_api import async_playwright
from pydantic import SecretStr

from devtools.devmodel import DevModel
from devtools.embedded_pg import EmbeddedPostgres
from devtools.measure import percentile
from devtools.processes import cluster
from services.control_plane.bootstrap import create_workspace
from services.migrate import migrate_all
from services.rpc.db import role_dsn
from services.web.app import Edge
from services.web.settings import WebSettings

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-sync"]
# Records, from navigation start, when the first timeline row shows and when the page says
# every event is in (data-loaded), plus one frame for that paint.
PROBE = """(() => {
  window.__marks = {};
  const seen = () => {
    if (!window.__marks.first && document.querySelector(".timeline .row")) {
      window.__marks.first = performance.now();
    }
    const page = document.querySelector("[data-testid=run-page][data-loaded]");
    if (page && !window.__marks.loaded) {
      window.__marks.loaded = performance.now();
      requestAnimationFrame(() => requestAnimationFrame(() => {
        window.__marks.done = performance.now();
        window.__marks.events = Number(page.dataset.loaded);
      }));
    }
  };
  new MutationObserver(seen).observe(document, {subtree: true, childList: true, attributes: true});
})();"""

# The page's CSP refuses Playwright's eval-based wait_for_function; this promise waits.
DONE = """new Promise((resolve) => {
  const check = () => (window.__marks && window.__marks.done ? resolve() : setTimeout(check, 5));
  check();
})"""


async def make_run(address: str, key: str, events: int) -> str:
    """Create a run whose log has `events` events and wait for its end; return its name."""
    md = (("authorization", f"Bearer {key}"),)
    channel = grpc.aio.insecure_channel(address)
    try:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        session = await sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="bench")),
            metadata=md,
        )
        # queued, started, usage, completed + one delta per token (a 1 ms delay per token:
        # without one the worker may store several tokens in one delta)
        run = await runs.CreateRun(
            run_service_pb2.CreateRunRequest(
                parent=session.name,
                input_text=f"[[tokens={events - 4}]] [[reasoning=0]] [[delay_ms=1]]",
            ),
            metadata=md,
        )
        last = 0
        async for response in runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=md, timeout=300
        ):
            last = response.event.sequence
        print(f"dashboard_render: run {run.name} has {last} events")
        return run.name
    finally:
        await channel.close(None)


async def measure(url: str, key: str, run: str, loads: int) -> None:
    """Open the run's inspector `loads` times; print first paint and fully rendered."""
    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("dashboard_render needs chromium on PATH (make browser)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = await browser.new_context(base_url=url, viewport={"width": 1360, "height": 860})
        await context.add_init_script(PROBE)
        page = await context.new_page()
        await page.goto("/signin")
        await page.fill("#api-key", key)
        await page.click("button[type=submit]")
        await page.wait_for_url("**/sessions")
        firsts, dones = [], []
        for index in range(loads + 1):  # the first load warms the caches and is not counted
            await page.goto(f"/{run}", wait_until="commit")
            await page.evaluate(DONE)
            marks = await page.evaluate("window.__marks")
            if index:
                firsts.append(marks["first"])
                dones.append(marks["done"])
        await browser.close()
    print(
        f"dashboard_render: {marks['events']} events, {loads} loads: "
        f"first paint p50 {percentile(firsts, 50):.0f} ms (max {max(firsts):.0f}), "
        f"fully rendered p50 {percentile(dones, 50):.0f} ms (max {max(dones):.0f}); "
        "target < 1000 ms"
    )


async def bench(args: argparse.Namespace) -> None:
    """Start the stack, make the run, measure the page."""
    data_dir = Path(tempfile.mkdtemp(prefix="ap-bench-dashboard-pg-"))
    server = EmbeddedPostgres(data_dir, fast_unsafe=True)
    admin = await asyncio.to_thread(server.start)
    model = DevModel()
    await model.start()
    try:
        await migrate_all(admin)
        conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
        made = await create_workspace(
            conn, workspace_display_name="Bench", owner_display_name="Bench owner"
        )
        await conn.close()
        async with cluster(admin, secrets.token_urlsafe(16), model.base_url) as c:
            cp = await c.control_plane(AP_RUN_RATE_PER_MINUTE="0", AP_LOG_LEVEL="warning")
            await c.worker("w1", cp, AP_LOG_LEVEL="warning")
            edge = Edge(
                WebSettings(
                    http_port=0,
                    metrics_port=0,
                    control_plane_address=cp.address,
                    cookie_secret=SecretStr(secrets.token_urlsafe(32)),
                    log_level="warning",
                )
            )
            await edge.start()
            try:
                print(
                    f"dashboard_render: {platform.node()} ({os.cpu_count()} cores, load "
                    f"{os.getloadavg()[0]:.1f}); headless chromium; dev model, no delay"
                )
                started = time.perf_counter()
                run = await make_run(cp.address, made.api_key, args.events)
                print(f"dashboard_render: made the run in {time.perf_counter() - started:.1f} s")
                await measure(edge.url, made.api_key, run, args.loads)
            finally:
                await edge.stop()
    finally:
        await model.stop()
        await asyncio.to_thread(server.stop)


def main() -> None:
    """Parse the arguments and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--loads", type=int, default=5)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
