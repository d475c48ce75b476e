"""The agent's Secure payments panel (control_api/panel.py) in headless chromium.

- A guided payment driven from the panel on a real call: a baresip caller dials a baresip
  agent through the node (tests/e2e/paynode.PayRig), the test as the agent signs in with a
  token, sees the call, picks the profile, proceeds, enters the details, retrieves the
  caller; the caller keys a test card on the keypad; the panel shows the asterisks grow,
  then ready; "Process transaction"; "Payment succeeded".
- On the control API over a fake call control (no SIP; fast): a wrong token shows the 401;
  a self-service profile: the phone input, "Send payment link", the amount, the SMS state
  (test_panel_selfservice.py follows a self-service session to its end); field reset and
  the Hold/Retrieve button; only /v1 routes called, the payment long-polled.

Every step takes the page's DOM (``driver.page_source``) and the tests scan them all for the
card: the PAN, any 8 digits of it in a row, the expiry and security code as keyed.
Screenshots go to ``artifacts/screenshots/<test>-<step>.png``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control_api.api import make_app, serve
from control_api.panel import PANEL_CSP, add_panel
from sipproxy.config import HostPort
from tests.browser.conftest import Browser
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.servicekit import ACME_NUMBER, AGENT, Harness

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]

PAN = "4111111111111111"  # the sandbox approves it
EXPIRY = "1239"
CVV = "737"
KEYS = PAN + "#" + EXPIRY + CVV  # a 16-digit Visa ends with '#'; expiry and CVV end alone


def card_in(html: str, pan: str = PAN, expiry: str = EXPIRY, cvv: str = CVV) -> list[str]:
    """What of the card shows in ``html``: the PAN, 8-digit runs of it, expiry+CVV."""
    found = [f"PAN[{i}:{i + 8}]" for i in range(len(pan) - 7) if pan[i : i + 8] in html]
    if expiry + cvv in html:
        found.append("expiry+cvv")
    return found


def assert_no_card(b: Browser, **card: str) -> None:
    for i, html in enumerate(b.pages):
        assert not card_in(html, **card), f"card data in the panel's DOM (snapshot {i})"


async def sign_in(b: Browser, base: str, token: str) -> None:
    await b.get(f"{base}/panel")
    await b.wait("the sign-in form", lambda: b.visible("token"))
    await b.type("token", token)
    await b.click("signin-button")


# ------------------------------------------------------------------ the panel on a fake call


@asynccontextmanager
async def panel_server(
    harness: Harness, requests: list[tuple[str, str, str]] | None = None
) -> AsyncIterator[str]:
    """The control API with the panel, over ``harness``'s service, on 127.0.0.1; every
    request (method, path with query, If-None-Match) is appended to ``requests``."""
    app = make_app(harness.service)
    add_panel(app)
    if requests is not None:

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            requests.append(
                (request.method, request.path_qs, request.headers.get("If-None-Match", ""))
            )
            return await handler(request)

        app.middlewares.append(record)
    runner, port = await serve(app, HostPort("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await harness.service.stop()  # wakes the page's long-poll
        await runner.cleanup()


async def test_panel_headers_and_assets() -> None:
    """No browser: the page and its two files, with the security headers."""
    harness = Harness()
    async with panel_server(harness) as base, aiohttp.ClientSession() as http:
        for path, kind in (
            ("/panel", "text/html"),
            ("/panel/static/panel.js", "text/javascript"),
            ("/panel/static/panel.css", "text/css"),
        ):
            async with http.get(base + path) as r:
                body = await r.text()
                assert r.status == 200, path
                assert r.content_type == kind
                assert r.headers["Content-Security-Policy"] == PANEL_CSP
                assert r.headers["Cache-Control"] == "no-store"
                assert r.headers["Referrer-Policy"] == "no-referrer"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                # nothing third-party: no URL to another origin, no inline script or style
                assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", body, re.I), path
                if kind == "text/html":
                    assert "<script>" not in body and "style=" not in body
                    assert 'src="/panel/static/panel.js"' in body
        async with http.get(base + "/panel/static/../api.py") as r:
            assert r.status == 404


@pytest.mark.viewport("phone")
async def test_wrong_token_shows_401_then_signs_in(browser: Browser) -> None:
    harness = Harness()
    async with panel_server(harness) as base:
        b = browser
        await sign_in(b, base, "not-a-token-" + "x" * 30)
        error = await b.wait_text("error", lambda t: "401" in t)
        assert "unauthorized" in error and "token was not accepted" in error, error
        assert await b.visible("signin") and not await b.visible("main")
        assert await b.js("return sessionStorage.length") == 0
        await b.source()
        await b.shot("wrong-token")
        # the right token: the panel, no call yet
        await b.type("token", AGENT)
        await b.click("signin-button")
        await b.wait("the panel", lambda: b.visible("no-call"))
        assert await b.text("error") == ""
        assert await b.js("return sessionStorage.length") == 1
        await b.shot("no-call")
        # a call arrives: the panel shows it within a poll
        harness.calls.add_call("call-a", called=ACME_NUMBER)
        assert await b.wait_text("call-payee", bool) == "Ada Lovelace"
        assert await b.text("call-type") == "Call"
        await b.source()
        assert b.console_errors() == []
        await b.blank()


@pytest.mark.viewport("phone")
async def test_self_service_link_on_the_real_service(browser: Browser) -> None:
    """The ``link`` profile is self-service: phone input and "Send payment link"; the amount
    and billing saved, the link goes out and the SMS state shows (the outbox sender)."""
    harness = Harness(calls=FakeCallControl(auto_answer=True))
    harness.calls.add_call("call-a", called=ACME_NUMBER)
    async with panel_server(harness) as base:
        b = browser
        await sign_in(b, base, AGENT)
        await b.wait_text("call-payee", bool)
        assert await b.visible("proceed-button")
        assert not await b.visible("selfservice-start")
        await b.select("profile-select", "link")
        await b.wait("the self-service box", lambda: b.visible("send-link-button"))
        assert not await b.visible("proceed-button")
        # not E.164: refused in the page, nothing sent
        await b.type("phone", "07700 900123")
        await b.click("send-link-button")
        assert "international form" in await b.wait_text("error", bool)
        await b.type("phone", "+447700900123")
        await b.click("send-link-button")

        await b.wait("the payment box", lambda: b.visible("payment"))
        assert await b.text("error") == ""
        # the session waits for the amount; saving the details sends the link
        await b.wait_attr("payment-state", "data-state", "created")
        assert await b.text("details-button") == "Save details and send link"
        assert not await b.visible("process-button")
        await b.type("amount", "12.50")
        await b.type("billing-name", "Ada Lovelace")
        await b.click("details-button")
        await b.wait_attr("payment-state", "data-state", "link_sent")
        await b.wait_text("sms-state", lambda t: t in {"queued", "sent"})
        assert (await b.text("sms-to")).startswith("+44")
        assert "900123" not in await b.text("sms-to"), "the number is masked"
        assert await b.text("link-expires")
        assert await b.text("payment-amount") == "GBP 12.50"
        await b.source()
        await b.shot("self-service-link-sent")
        await b.blank()
    assert_no_card(b)


async def test_reset_and_hold_on_a_fake_call(browser: Browser) -> None:
    """A wrong card number shows invalid with its reason; Reset clears it; the caller keys
    it again; the Hold/Retrieve button holds and retrieves the caller."""
    harness = Harness(calls=FakeCallControl(auto_answer=True))
    harness.calls.add_call("call-a", called=ACME_NUMBER)
    requests: list[tuple[str, str, str]] = []
    async with panel_server(harness, requests) as base:
        b = browser
        await sign_in(b, base, AGENT)
        await b.wait_text("call-payee", bool)
        assert await b.text("hold-button") == "Hold"
        await b.click("hold-button")
        await b.wait_text("call-held", lambda t: t == "On hold")
        assert await b.text("hold-button") == "Retrieve"
        await b.click("hold-button")
        await b.wait_text("call-held", lambda t: t == "With agent")
        await b.select("profile-select", "card")
        await b.click("proceed-button")
        await b.wait_attr("payment-state", "data-state", "awaiting_details")
        await b.type("amount", "12.50")
        await b.type("billing-name", "Ada Lovelace")
        await b.click("details-button")
        await b.wait("capture enabled", lambda: b.enabled("capture-button"))
        await b.click("capture-button")
        await b.wait_attr("payment-state", "data-state", "capturing")
        # a reload: signed in again from sessionStorage, back on the call's live payment
        await b.run(b.driver.refresh)
        await b.wait_attr("payment-state", "data-state", "capturing")
        assert not await b.visible("signin") and await b.text("payment-id") == "pay_a"
        bad = "4111111111111112"  # Luhn fails
        harness.calls.press("call-a", bad + "#")
        await b.wait_attr("field-card_number-state", "data-state", "invalid")
        assert "check digit" in await b.text("field-card_number-valid")
        assert await b.text("field-card_number-masked") == "*" * 16
        await b.source()
        await b.shot("invalid-card-number")
        await b.click("reset-card_number")
        await b.wait_attr("field-card_number-state", "data-state", "pending")
        assert await b.text("field-card_number-masked") == ""
        assert await b.text("field-card_number-valid") == ""
        harness.calls.press("call-a", PAN + "#")
        await b.wait_text("field-card_number-masked", lambda t: t == "*" * 12 + PAN[-4:])
        assert await b.text("field-card_number-brand") == "visa"
        await b.source()
        await b.click("cancel-button")
        await b.wait_attr("result-text", "data-result", "cancelled")
        await b.source()
        await b.blank()
    assert_no_card(b)
    assert_no_card(b, pan=bad)
    # only the page, its two files and the public API; the payment followed by long-poll
    paths = {p.split("?")[0] for _, p, _ in requests} - {"/favicon.ico"}  # the browser's
    assert paths <= {
        "/panel",
        "/panel/static/panel.js",
        "/panel/static/panel.css",
        "/v1/profiles",
        "/v1/calls",
        "/v1/calls/call-a/hold",
        "/v1/calls/call-a/retrieve",
        "/v1/calls/call-a/payments",
        "/v1/payments/pay_a",
        "/v1/payments/pay_a/details",
        "/v1/payments/pay_a/capture",
        "/v1/payments/pay_a/fields/card_number/reset",
        "/v1/payments/pay_a/cancel",
    }
    polls = [(p, tag) for m, p, tag in requests if p.startswith("/v1/payments/pay_a?")]
    assert polls and all(p == "/v1/payments/pay_a?wait=25" and tag for p, tag in polls)
    views = [p for m, p, _ in requests if m == "GET" and p.startswith("/v1/payments/pay_a")]
    assert len(views) < 40, f"{len(views)} GETs of the payment: not long-polling"


# ------------------------------------------------------------------ a real call (baresip)


@pytest.mark.e2e
async def test_guided_payment_from_the_panel(tmp_path: Path, browser: Browser) -> None:
    from tests.e2e.baresip import baresip_or_skip
    from tests.e2e.paynode import PayRig

    baresip_or_skip()

    b = browser
    async with PayRig(tmp_path) as rig:
        await rig.connect()
        assert rig.node is not None and rig.caller is not None
        base = f"http://127.0.0.1:{rig.node.api_port}"
        try:
            await b.get(f"{base}/panel")
            await b.wait("the sign-in form", lambda: b.visible("token"))
            await b.shot("1-sign-in")
            await b.type("token", rig.agent().token)
            await b.click("signin-button")
            await b.wait_text("call-payee", bool)
            assert await b.text("call-type") == "Call"
            assert await b.text("call-held") == "With agent"
            await b.source()
            await b.shot("2-call")

            # proceed: the provider is dialled in, the caller held
            await b.select("profile-select", "card")
            await b.click("proceed-button")
            await b.wait_attr("payment-state", "data-state", "awaiting_details")
            await b.wait_text("hold-button", lambda t: t == "Retrieve")
            assert await b.text("provider-leg") == "joined"
            await b.type("amount", "42.50")
            await b.type("billing-name", "Ada Lovelace")
            await b.type("billing-address", "1 Test Street")
            await b.type("billing-postal-code", "AB1 2CD")
            await b.type("billing-country", "GB")
            await b.click("details-button")
            await b.wait("capture enabled", lambda: b.enabled("capture-button"))
            await b.source()
            await b.shot("3-details")

            # retrieve the caller, who keys the card
            await b.click("capture-button")
            await b.wait_attr("payment-state", "data-state", "capturing")
            await b.wait_text("call-held", lambda t: t == "With agent")
            keying = asyncio.create_task(rig.caller.send_dtmf(KEYS, interval=0.25))
            seen: list[str] = []
            shot_mid = False
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while await b.attr("payment-state", "data-state") != "ready":
                assert loop.time() < end, f"never ready; card field went {seen}"
                masked = await b.text("field-card_number-masked")
                if not seen or seen[-1] != masked:
                    seen.append(masked)
                    await b.source()
                    if not shot_mid and len(masked) >= 8:
                        await b.shot("4-keying")
                        shot_mid = True
                await asyncio.sleep(0.05)
            await keying
            growing = [m for m in seen if m and set(m) == {"*"} and len(m) < 16]
            assert len(growing) >= 4, f"asterisks did not grow step by step: {seen}"
            assert [len(m) for m in growing] == sorted(len(m) for m in growing)
            assert await b.text("field-card_number-masked") == "*" * 12 + PAN[-4:]
            assert await b.text("field-card_number-brand") == "visa"
            assert await b.text("field-card_number-valid") == "valid"
            assert await b.text("field-expiry-masked") == "****"
            assert await b.text("field-cvv-masked") == "***"
            assert await b.enabled("process-button")
            await b.source()
            await b.shot("5-ready")

            await b.click("process-button")
            await b.wait_attr("result-text", "data-result", "succeeded", timeout=15)
            assert await b.text("result-text") == "Payment succeeded"
            assert (await b.text("result-reference")).startswith("Reference ")
            await b.wait_text("call-held", lambda t: t == "With agent")
            await b.source()
            await b.shot("6-result")
            assert b.console_errors() == []
        finally:
            await b.blank()
    assert_no_card(b)
    assert len(b.pages) >= 8
