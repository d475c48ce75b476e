"""Tests for control_api.sms: the outbox sender, and the HTTP sender against a local aiohttp
server that checks what was sent (body, credentials), with timeouts, retries and errors."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from control_api.sms import (
    SMS_ERRORS,
    HttpSmsConfig,
    HttpSmsSender,
    OutboxSender,
    SmsResult,
    is_e164,
    mask_phone,
)
from control_api.storage import Storage
from tests.control_api.servicekit import LogCapture, logs

pytestmark = pytest.mark.asyncio
__all__ = ["logs"]

NOW = 1_765_432_198.25
PHONE = "+447700900123"
TEXT = "Acme: pay 12.50 GBP at https://pay.example/pay/abcDEF"


class Gateway:
    """A local SMS gateway: answers each request with the next planned reply."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.plan: list[int | str] = []  # a status, or "hang" (never answers)
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        step = self.plan.pop(0) if self.plan else 200
        if step == "hang":
            await asyncio.sleep(10)
        status = int(step)
        return web.json_response({"message_id": "gw-1"} if status < 300 else {}, status=status)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/send"))


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/send", gw.handle)
    gw.server = TestServer(app)
    await gw.server.start_server()
    yield gw
    await gw.server.close()


def config(gw: Gateway, **kw: Any) -> HttpSmsConfig:
    base = HttpSmsConfig(
        url=gw.url,
        body={"to": "{to}", "from": "{sender}", "message": "{text}", "note": "{{literal}}"},
        secret="gw-secret-" + "x" * 30,
        auth="bearer",
        sender="Acme",
        timeout_s=0.2,
        retries=2,
        backoff_s=0.01,
    )
    return replace(base, **kw)


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("+447700900123", True),
        ("+15551234567", True),
        ("+4915112345678901", False),  # 16 digits
        ("+123456", False),
        ("447700900123", False),
        ("+44 7700 900123", False),
        ("+04477009001", False),
        ("+4477009001２", False),  # a full-width digit
        ("", False),
    ],
)
async def test_e164(number: str, ok: bool) -> None:
    assert is_e164(number) is ok


async def test_mask_phone() -> None:
    assert mask_phone("+447700900123") == "+44*******123"
    assert mask_phone("+15551234567") == "+15******567"
    assert mask_phone("garbage") == "*******"


# ------------------------------------------------------------------------------- outbox


async def test_outbox_sender_writes_the_table() -> None:
    storage = Storage(":memory:", now=NOW)
    sender = OutboxSender(storage, wall=lambda: NOW)
    result = await sender.send(PHONE, TEXT)
    assert result == SmsResult("queued", message_id="outbox-1")
    (row,) = storage.outbox()
    assert (row.id, row.to, row.body, row.created, row.state) == (1, PHONE, TEXT, NOW, "queued")
    tables = {t for t, _ in storage.dump()}
    assert "sms_outbox" in tables


async def test_outbox_failure_is_a_failed_result(logs: LogCapture) -> None:
    storage = Storage(":memory:", now=NOW)
    storage.close()
    result = await OutboxSender(storage).send(PHONE, TEXT)
    assert (result.state, result.error) == ("failed", "outbox_error")
    assert "ProgrammingError" in result.detail
    assert "7700900" not in logs.text()  # the number is masked in the log


# --------------------------------------------------------------------------------- http


async def test_http_sends_the_configured_body_json(gateway: Gateway) -> None:
    result = await HttpSmsSender(config(gateway)).send(PHONE, TEXT)
    assert result == SmsResult("sent", message_id="gw-1", attempts=1)
    ((headers, body),) = gateway.requests
    assert headers["Authorization"] == "Bearer gw-secret-" + "x" * 30
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"to": PHONE, "from": "Acme", "message": TEXT, "note": "{literal}"}


async def test_http_form_body_and_other_credentials(gateway: Gateway) -> None:
    cfg = config(
        gateway,
        content_type="form",
        auth="header",
        auth_header="X-Api-Key",
        headers={"X-Tenant": "acme"},
    )
    assert (await HttpSmsSender(cfg).send(PHONE, TEXT)).state == "sent"
    headers, body = gateway.requests[-1]
    assert headers["X-Api-Key"] == cfg.secret and headers["X-Tenant"] == "acme"
    assert "Authorization" not in headers
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert dict(urllib.parse.parse_qsl(body.decode()))["message"] == TEXT
    basic = config(gateway, auth="basic", secret="user:pa:ss")
    assert (await HttpSmsSender(basic).send(PHONE, TEXT)).state == "sent"
    assert gateway.requests[-1][0]["Authorization"] == "Basic dXNlcjpwYTpzcw=="


async def test_http_retries_5xx_then_sends(gateway: Gateway) -> None:
    gateway.plan = [503, 429]
    result = await HttpSmsSender(config(gateway)).send(PHONE, TEXT)
    assert (result.state, result.attempts) == ("sent", 3)
    assert len(gateway.requests) == 3


async def test_http_gives_up_after_retries(gateway: Gateway, logs: LogCapture) -> None:
    gateway.plan = [500, 502, 503, 200]
    result = await HttpSmsSender(config(gateway)).send(PHONE, TEXT)
    assert (result.state, result.error, result.attempts) == ("failed", "gateway_error", 3)
    assert result.detail == "the gateway answered HTTP 503 (3 attempts)"
    assert len(gateway.requests) == 3
    text = logs.text()
    assert "sms not sent" in text and "+44*******123" in text and "7700900" not in text
    assert "gw-secret" not in text


async def test_http_4xx_is_not_retried(gateway: Gateway) -> None:
    gateway.plan = [401]
    result = await HttpSmsSender(config(gateway)).send(PHONE, TEXT)
    assert (result.state, result.error, result.attempts) == ("failed", "rejected", 1)
    assert "HTTP 401" in result.detail and "credentials" in result.detail
    assert len(gateway.requests) == 1


async def test_http_timeout(gateway: Gateway) -> None:
    gateway.plan = ["hang", "hang"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await HttpSmsSender(config(gateway, retries=1)).send(PHONE, TEXT)
    assert (result.state, result.error, result.attempts) == ("failed", "timeout", 2)
    assert result.detail == "no answer within 0.2 s (2 attempts)"
    assert loop.time() - start < 2


async def test_http_unreachable() -> None:
    server = TestServer(web.Application())
    await server.start_server()
    url = str(server.make_url("/send"))
    await server.close()  # nothing listens there any more
    cfg = HttpSmsConfig(url=url, body={"to": "{to}"}, retries=1, backoff_s=0.01, timeout_s=1)
    result = await HttpSmsSender(cfg).send(PHONE, TEXT)
    assert (result.state, result.error, result.attempts) == ("failed", "unreachable", 2)
    assert "ClientConnectorError" in result.detail


async def test_every_error_code_is_documented() -> None:
    assert set(SMS_ERRORS) == {
        "timeout",
        "unreachable",
        "rejected",
        "gateway_error",
        "outbox_error",
    }
