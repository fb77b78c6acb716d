"""Drive the dashboard in a real headless Chromium: launch it, sign in, take screenshots.

Shared by the browser tests (tests/web/test_dashboard.py) and the render bench
(bench/dashboard_render.py). Screenshots go to AP_SCREENSHOT_DIR when it is set (`make
screenshots` points it at docs/screenshots), else to a temporary directory of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP: ViewportSize = {"width": 1360, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Return Debian's chromium, or explain how to get it."""
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError(
            "The dashboard's browser tests need Chromium: run `make browser` (as root it runs "
            "`apt-get install -y chromium`), or put a chromium binary on PATH."
        )
    return executable


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Launch headless chromium for the block."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Browser, base_url: str, api_key: str) -> BrowserContext:
    """Open a browser context signed in with `api_key` (through the form, as a person does)."""
    context = await browser.new_context(base_url=base_url, viewport=LAPTOP)
    page = await context.new_page()
    watch_errors(page)
    await page.goto("/signin")
    await page.fill("#api-key", api_key)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/sessions")
    await page.close()
    return context


def watch_errors(page: Page) -> None:
    """Fail loudly on an uncaught script error: print it where the test's output shows it."""
    page.on("pageerror", lambda error: print(f"dashboard script error: {error}"))


class Screenshots:
    """Write a page's screenshot in the light and the dark theme."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, fallback: Path) -> Screenshots:
        """Use AP_SCREENSHOT_DIR when set, else `fallback`."""
        return cls(Path(os.environ.get("AP_SCREENSHOT_DIR") or fallback))

    async def take(self, page: Page, name: str, *, full_page: bool = False) -> None:
        """Save <name>-light.png and <name>-dark.png of the page as it is now."""
        for scheme in ("light", "dark"):
            await page.emulate_media(color_scheme=scheme)
            await page.evaluate("document.fonts.ready.then(() => null)")
            await page.screenshot(
                path=str(self.directory / f"{name}-{scheme}.png"),
                full_page=full_page,
                animations="disabled",
                caret="hide",
            )
        await page.emulate_media(color_scheme="light")
