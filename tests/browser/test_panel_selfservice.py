"""The panel's self-service part, against the view shape of plan ISSUE5 (S1's contract).

The node's self-service backend is built separately; until it lands, this test serves the
panel beside a small stand-in of the ``/v1`` routes the panel uses, answering with the
documented shapes (``method: "self_service"``, ``sms: {state, error, to}``,
``link_expires_at``, states ``link_sent``, ``customer_active``, ``sms_failed``...). The test
moves the stand-in's session along and checks what the agent sees: the phone prefilled with
the caller's E.164 number, "Send payment link", the SMS state, asterisks growing as the
customer types on the hosted page, the result; and, when the SMS fails, "Switch to guided",
after which the panel follows the new guided session.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from aiohttp import web

from control_api.api import serve
from control_api.panel import add_panel
from sipproxy.config import HostPort
from tests.browser.conftest import Browser

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]

TOKEN = "stand-in-agent-token-" + "s" * 20
CALLER = "+447700900123"
_PROFILE = {
    "provider": "sandbox",
    "currency": "GBP",
    "min_amount": "1.00",
    "max_amount": "500.00",
    "fields": ["card_number", "expiry", "cvv"],
    "masking": "tone",
    "show_last_four": True,
}
PROFILES = [
    {"name": "card", "method": "guided", "purpose": "Bill payment", **_PROFILE},
    {"name": "link", "method": "self_service", "purpose": "Pay by link", **_PROFILE},
]


def _field(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "state": "pending",
        "digits": 0,
        "masked": "",
        "brand": None,
        "valid": None,
        "error": None,
    }


class StandIn:
    """The /v1 routes the panel calls, with one call and sessions the test moves along."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.live: str | None = None
        self.changed = asyncio.Event()
        self.bodies: list[tuple[str, Any]] = []
        self.refuse: str | None = None  # an error code create answers with (an older node)

    def new_session(self, method: str, profile: str) -> dict[str, Any]:
        sid = f"pay_{len(self.sessions) + 1}"
        view: dict[str, Any] = {
            "id": sid,
            "call_id": "call-1",
            "profile": profile,
            "method": method,
            "state": "created",
            "fields": [_field(n) for n in ("card_number", "expiry", "cvv")],
            "required": ["card_number", "expiry", "cvv"],
            "result": None,
            "error": None,
            "reference": None,
            "amount": "42.50" if method == "self_service" else None,
            "currency": "GBP",
            "billing": None,
            "caller_held": False,
            "provider_leg": "none",
            "version": 1,
        }
        self.sessions[sid] = view
        self.live = sid
        return view

    def update(self, sid: str, **changes: Any) -> None:
        view = self.sessions[sid]
        view.update(changes)
        view["version"] += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def set_field(self, sid: str, name: str, **changes: Any) -> None:
        view = self.sessions[sid]
        fields = copy.deepcopy(view["fields"])
        for f in fields:
            if f["name"] == name:
                f.update(changes)
        self.update(sid, fields=fields)

    # -- routes

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": {"code": "unauthorized", "message": "no"}}),
                content_type="application/json",
            )

    async def profiles(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"payments_enabled": True, "profiles": PROFILES})

    async def calls(self, request: web.Request) -> web.Response:
        self._auth(request)
        live = self.live
        if live is not None and self.sessions[live]["state"] == "finished":
            live = None
        call = {
            "id": "call-1",
            "interaction_type": "call",
            "payee": CALLER,
            "caller": CALLER,
            "called": "0800100200",
            "state": "up",
            "started_at": 1_765_432_100.0,
            "held": False,
            "provider_leg": "none",
            "payment": live,
            "profiles": ["card", "link"],
        }
        return web.json_response({"calls": [call]})

    async def create(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        self.bodies.append(("create", body))
        if self.refuse is not None:
            error = {"code": self.refuse, "message": "body: unknown key; allowed: profile"}
            return web.json_response({"error": error}, status=422)
        profile = next(p for p in PROFILES if p["name"] == body["profile"])
        view = self.new_session(str(profile["method"]), body["profile"])
        if profile["method"] == "self_service":
            view.update(
                state="link_sent",
                sms={"state": "queued", "error": None, "to": "+44*******123"},
                link_expires_at=time.time() + 86400,
            )
        return web.json_response(view, status=201, headers={"ETag": f'"{view["version"]}"'})

    async def get(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        view = self.sessions[request.match_info["sid"]]
        tag = request.headers.get("If-None-Match")
        if tag == f'"{view["version"]}"':
            wait = float(request.query.get("wait", "0"))
            if wait > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)
            if tag == f'"{view["version"]}"':
                return web.Response(status=304, headers={"ETag": tag})
        return web.json_response(view, headers={"ETag": f'"{view["version"]}"'})

    async def switch(self, request: web.Request) -> web.Response:
        self._auth(request)
        sid = request.match_info["sid"]
        self.bodies.append(("switch", sid))
        self.update(sid, state="finished", result="cancelled", error="switched_to_guided")
        guided = self.new_session("guided", "card")
        guided.update(state="awaiting_details", caller_held=True, provider_leg="joined")
        return web.json_response(guided, headers={"ETag": f'"{guided["version"]}"'})

    def app(self) -> web.Application:
        app = web.Application()
        add_panel(app)
        r = app.router
        r.add_get("/v1/profiles", self.profiles)
        r.add_get("/v1/calls", self.calls)
        r.add_post("/v1/calls/call-1/payments", self.create)
        r.add_get("/v1/payments/{sid}", self.get)
        r.add_post("/v1/payments/{sid}/switch-to-guided", self.switch)
        return app


@asynccontextmanager
async def stand_in() -> AsyncIterator[tuple[StandIn, str]]:
    api = StandIn()
    runner, port = await serve(api.app(), HostPort("127.0.0.1", 0))
    try:
        yield api, f"http://127.0.0.1:{port}"
    finally:
        api.changed.set()
        await runner.cleanup()


async def choose_link(b: Browser, base: str) -> None:
    """Sign in to the panel and choose the self-service profile."""
    await b.get(f"{base}/panel")
    await b.wait("the sign-in form", lambda: b.visible("token"))
    await b.type("token", TOKEN)
    await b.click("signin-button")
    await b.wait_text("call-payee", lambda t: t == CALLER)
    await b.select("profile-select", "link")
    await b.wait("the self-service box", lambda: b.visible("send-link-button"))


async def start_link(b: Browser, base: str) -> None:
    await choose_link(b, base)
    assert not await b.visible("proceed-button")
    assert await b.js("return document.getElementById('phone').value") == CALLER
    await b.click("send-link-button")
    await b.wait("the SMS box", lambda: b.visible("sms"))


@pytest.mark.viewport("phone")
async def test_self_service_link_sent_customer_types_result(browser: Browser) -> None:
    b = browser
    async with stand_in() as (api, base):
        await start_link(b, base)
        assert api.bodies == [("create", {"profile": "link", "phone": CALLER})]
        assert await b.wait_text("sms-state", bool) == "queued"
        assert await b.text("sms-to") == "+44*******123"
        assert await b.text("link-expires")
        assert await b.attr("payment-state", "data-state") == "link_sent"
        assert not await b.visible("process-button"), "the customer submits, not the agent"
        assert not await b.visible("capture-button")
        assert await b.visible("resend-button")
        assert not await b.visible("switch-guided-button")
        await b.shot("1-link-queued")
        sid = "pay_1"
        api.update(sid, sms={"state": "sent", "error": None, "to": "+44*******123"})
        await b.wait_text("sms-state", lambda t: t == "sent")

        # the customer types on the hosted page: asterisks per key press
        api.update(sid, state="customer_active")
        await b.wait_attr("payment-state", "data-state", "customer_active")
        seen = []
        for n in range(1, 17):
            api.set_field(sid, "card_number", state="capturing", digits=n, masked="*" * n)
            seen.append(await b.wait_text("field-card_number-masked", lambda t, n=n: len(t) == n))
            if n == 8:
                await b.shot("2-customer-typing")
        assert seen == ["*" * n for n in range(1, 17)]
        assert not await b.visible("reset-card_number"), "the agent cannot reset a web form"
        api.set_field(
            sid, "card_number", state="complete", masked="*" * 12 + "1111", brand="visa", valid=True
        )
        await b.wait_text("field-card_number-valid", lambda t: t == "valid")
        api.update(sid, state="processing")
        await b.wait_attr("payment-state", "data-state", "processing")
        api.update(sid, state="finished", result="succeeded", reference="sandbox-pay_1")
        await b.wait_attr("result-text", "data-result", "succeeded")
        assert await b.text("result-text") == "Payment succeeded"
        await b.source()
        await b.shot("3-result")
        assert b.console_errors() == []
        await b.blank()


@pytest.mark.viewport("phone")
async def test_sms_failed_then_switch_to_guided(browser: Browser) -> None:
    b = browser
    async with stand_in() as (api, base):
        await start_link(b, base)
        api.update(
            "pay_1",
            state="sms_failed",
            sms={"state": "failed", "error": "gateway_error", "to": "+44*******123"},
        )
        await b.wait_text("sms-state", lambda t: t == "failed")
        assert "gateway error" in (await b.text("sms-error")).replace("_", " ")
        await b.wait("the switch button", lambda: b.visible("switch-guided-button"))
        await b.shot("1-sms-failed")
        await b.click("switch-guided-button")
        await b.wait_text("payment-id", lambda t: t == "pay_2")
        await b.wait_attr("payment-state", "data-state", "awaiting_details")
        assert await b.visible("details-form") and await b.visible("capture-button")
        assert not await b.visible("sms")
        assert await b.text("hold-button") in {"Hold", "Retrieve"}
        assert ("switch", "pay_1") in api.bodies
        await b.shot("2-switched-to-guided")
        await b.blank()


async def test_a_node_without_self_service_is_said_plainly(browser: Browser) -> None:
    b = browser
    async with stand_in() as (api, base):
        api.refuse = "invalid_body"
        await choose_link(b, base)
        await b.click("send-link-button")
        error = await b.wait_text("error", bool)
        assert "not available on this node" in error and "(422 invalid_body)" in error, error
        assert await b.visible("start") and not await b.visible("payment")
        await b.shot("refused")
        # the agent can still take the payment guided
        api.refuse = None
        await b.select("profile-select", "card")
        await b.click("proceed-button")
        await b.wait("the payment box", lambda: b.visible("payment"))
        assert await b.text("error") == ""
        await b.blank()
