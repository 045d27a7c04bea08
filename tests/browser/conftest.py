"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download is not available here, so it launches the system browser
by path (`make test` installs it with apt-get when missing; INFERSTACK_CHROMIUM overrides
the path). Every page records console errors and failed requests, for tests to assert on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    path = os.environ.get("INFERSTACK_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "no chromium found: `make test` installs it (apt-get install chromium), or set "
            "INFERSTACK_CHROMIUM to a Chromium executable"
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API keeps an event loop running on this thread while it
    # is open, and the asyncio tests of later modules need the thread's loop back.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        launched.close()


@dataclass
class Problems:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests."""

    messages: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(f"console: {message.text}")

    def exception(self, error: Exception) -> None:
        self.messages.append(f"exception: {error}")

    def response(self, response: Response) -> None:
        if response.status >= 400:
            self.messages.append(f"{response.status} {response.url}")


@dataclass
class Tab:
    page: Page
    problems: Problems


def open_tab(browser: Browser, viewport: dict[str, int]) -> Tab:
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    problems = Problems()
    page.on("console", problems.console)
    page.on("pageerror", problems.exception)
    page.on("response", problems.response)
    return Tab(page, problems)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    opened = open_tab(browser, DESKTOP)
    yield opened
    opened.page.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where page screenshots go: INFERSTACK_CONSOLE_SCREENSHOTS (e.g. docs/console, to
    refresh the README's pictures), else a temporary folder."""
    chosen = os.environ.get("INFERSTACK_CONSOLE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
