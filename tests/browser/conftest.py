"""Browser tests: Debian's headless chromium driven by Selenium through chromedriver.

Nothing is downloaded at test time: the browser is ``/usr/bin/chromium`` and the driver
``/usr/bin/chromedriver`` (``scripts/setup`` installs the ``chromium`` and
``chromium-driver`` packages). Without them the tests skip with the reason, except under CI
(env ``CI`` set), where their absence is a failure.

The ``browser`` fixture gives a :class:`Browser` on one chromium shared by the session: a
desktop-sized window by default, a phone screen (412x915, emulated: a window cannot be
narrower than 500 px) with ``@pytest.mark.viewport("phone")``. ``customer_browser`` is a
second, separate chromium (own profile) on a phone screen, for the customer's page.

Tests here are asyncio tests whose server (the node, or the control API on a fake call
control) runs on the test's own loop, so every WebDriver call (a blocking HTTP round trip to
chromedriver) goes through ``asyncio.to_thread``: the loop keeps serving the page's requests
meanwhile.
:meth:`Browser.shot` writes ``artifacts/screenshots/<test>-<step>.png``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
VIEWPORTS = {"phone": (412, 915), "desktop": (1280, 1000)}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: tests that drive headless chromium")
    config.addinivalue_line("markers", "e2e: end-to-end tests that run real SIP user agents")
    config.addinivalue_line(
        "markers", 'viewport(name): the browser fixture\'s window, "phone" or "desktop"'
    )


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: install the Debian package {package} (scripts/setup)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


class Browser:
    """A Selenium Chrome session with async helpers that address elements by id."""

    def __init__(self, driver: Any, name: str) -> None:
        self.driver = driver
        self.name = name
        self.pages: list[str] = []  # every page_source taken (tests scan them all)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def blank(self) -> None:
        """Leave the page (its long-poll ends) before the server stops."""
        await self.run(self.driver.get, "about:blank")

    async def source(self) -> str:
        html: str = await self.run(lambda: self.driver.page_source)
        self.pages.append(html)
        return html

    async def js(self, script: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, script, *args)

    async def text(self, element_id: str) -> str:
        return str(
            await self.js(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
                element_id,
            )
        )

    async def attr(self, element_id: str, name: str) -> Any:
        return await self.js(
            "const e = document.getElementById(arguments[0]); "
            "return e ? e.getAttribute(arguments[1]) : null;",
            element_id,
            name,
        )

    async def visible(self, element_id: str) -> bool:
        """Shown: in the page, not hidden itself or by an ancestor."""
        return bool(
            await self.js(
                "const e = document.getElementById(arguments[0]);"
                "return !!e && e.getClientRects().length > 0;",
                element_id,
            )
        )

    async def enabled(self, element_id: str) -> bool:
        return bool(
            await self.js("return !document.getElementById(arguments[0]).disabled;", element_id)
        )

    async def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        def click() -> None:
            self.driver.find_element(By.ID, element_id).click()

        await self.run(click)

    async def type(self, element_id: str, value: str, *, clear: bool = True) -> None:
        from selenium.webdriver.common.by import By

        def type_() -> None:
            element = self.driver.find_element(By.ID, element_id)
            if clear:
                element.clear()
            element.send_keys(value)

        await self.run(type_)

    async def select(self, element_id: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        def select() -> None:
            Select(self.driver.find_element(By.ID, element_id)).select_by_value(value)

        await self.run(select)

    async def wait(
        self, what: str, check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05
    ) -> Any:
        """Poll the async ``check`` until it returns something truthy."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await check()
            if value:
                return value
            if loop.time() > end:
                await self.shot(f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
                raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
            await asyncio.sleep(every)

    async def wait_text(
        self, element_id: str, predicate: Callable[[str], bool], timeout: float = 10.0
    ) -> str:
        async def check() -> str | None:
            text = await self.text(element_id)
            return text if predicate(text) else None

        return str(await self.wait(f"#{element_id}", check, timeout))

    async def wait_attr(
        self, element_id: str, name: str, value: str, timeout: float = 10.0
    ) -> None:
        async def check() -> bool:
            return bool(await self.attr(element_id, name) == value)

        await self.wait(f"#{element_id}[{name}={value}]", check, timeout)

    async def shot(self, step: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{step}.png"
        await self.run(self.driver.save_screenshot, str(path))
        return path

    def console_errors(self) -> list[str]:
        """The page's console errors since the last call: script errors and CSP violations
        (an HTTP error status the page handles, such as a 401, is not one)."""
        entries = self.driver.get_log("browser")
        return [
            e["message"]
            for e in entries
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]
        ]


def launch_chromium(tmp: Path) -> Any:
    """A new headless chromium (desktop window) with its profile under ``tmp``; skips (or,
    under CI, fails) when chromium is not installed."""
    missing = chromium_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need chromium under CI: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    width, height = VIEWPORTS["desktop"]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--password-store=basic",
        f"--window-size={width},{height}",
        f"--user-data-dir={tmp / 'profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(15)
    return driver


def phone_screen(driver: Any, on: bool = True) -> None:
    """Emulate a phone's screen (a window cannot be narrower than 500 px)."""
    if on:
        width, height = VIEWPORTS["phone"]
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
        )
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _test_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless chromium for the session (starting one costs about 2 s)."""
    tmp = tmp_path_factory.mktemp("chromium")
    driver = launch_chromium(tmp)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp / "profile", ignore_errors=True)


@pytest.fixture
def customer_browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Browser]:
    """A second, separate chromium (its own profile: cookies, storage) on a phone screen:
    the customer beside the agent's ``browser``."""
    driver = launch_chromium(tmp_path)
    phone_screen(driver)
    try:
        yield Browser(driver, _test_name(request) + "-customer")
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.fixture
def browser(request: pytest.FixtureRequest, chromium: Any) -> Iterator[Browser]:
    """The session's chromium on a blank page, sized for the test: desktop, or a phone
    screen (412x915, mobile viewport) with ``@pytest.mark.viewport("phone")``. Each test's
    server has its own port, so its origin (and sessionStorage) is new."""
    marker = request.node.get_closest_marker("viewport")
    viewport = marker.args[0] if marker else "desktop"
    chromium.get("about:blank")
    phone_screen(chromium, viewport == "phone")
    chromium.get_log("browser")  # drop what earlier tests left
    try:
        yield Browser(chromium, _test_name(request))
    finally:
        chromium.get("about:blank")
