"""The browser of the `browser` tests: Debian's Chromium, headless, driven by Playwright
(the session-wide `browser_session` fixture is in conftest.py)."""

import asyncio

from playwright.sync_api import Browser

# Debian's Chromium, headless, with nothing that would reach beyond this machine.
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserSession:
    """The session's browser. `enter()` before driving it, `leave()` after: between tests
    the thread has no running event loop, as the rest of the suite expects."""

    def __init__(self, browser: Browser, loop: asyncio.AbstractEventLoop | None) -> None:
        self.browser = browser
        self.loop = loop

    def enter(self) -> None:
        asyncio._set_running_loop(self.loop)

    def leave(self) -> None:
        asyncio._set_running_loop(None)
