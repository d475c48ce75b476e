"""Tests for control_api.api over HTTP (aiohttp's test client): the agent UI's flow, status
codes, ETag and long-poll, idempotency, admin reload, the OpenAPI document, and no card data
in any response body or header."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from control_api import service as service_module
from control_api.api import _HTTP_CODES as API_HTTP_CODES
from control_api.api import CALLS_TTL_S, make_app, serve
from control_api.openapi import API_ERROR_CODES, openapi_document
from control_api.profiles import hash_token, load_payments
from control_api.sandbox import TIMEOUT_CARD
from control_api.session import SessionErrorCode
from sipproxy.config import HostPort
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.servicekit import (
    ACME_NUMBER,
    ADMIN,
    AGENT,
    CARDS,
    CLOSED,
    CLOSED_NUMBER,
    NOBODY_NUMBER,
    OTHER,
    OTHER_NUMBER,
    Harness,
    LogCapture,
    assert_no_leak,
    keys_for,
    logs,
    make_config,
)

pytestmark = pytest.mark.asyncio
__all__ = ["logs"]


class Api:
    """A test client that keeps every response (status, headers, body) for the leak scan."""

    def __init__(self, h: Harness, client: TestClient[Any, Any]) -> None:
        self.h = h
        self.client = client
        self.seen: list[str] = []

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = AGENT,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, ClientResponse]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.client.request(method, path, data=data, headers=hdrs) as resp:
            text = await resp.text()
            self.seen.append(f"{resp.status} {dict(resp.headers)!r} {text}")
            doc = json.loads(text) if text else None
            return resp.status, doc, resp

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, ClientResponse]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> tuple[int, Any, ClientResponse]:
        return await self.call("POST", path, **kw)


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    h = Harness()
    h.calls.add_call("call-a", called=ACME_NUMBER)
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(h.service)))
    await client.start_server()
    yield Api(h, client)
    await client.close()
    await h.service.stop()


def code(doc: Any) -> str:
    return str(doc["error"]["code"])


async def ready_payment(api: Api, pan: str = "4111111111111111") -> str:
    status, doc, _ = await api.post("/v1/calls/call-a/payments", body={"profile": "card"})
    assert status == 201, doc
    sid = str(doc["id"])
    await asyncio.sleep(0)
    api.h.calls.answer_provider("call-a")
    details = {"amount": "12.50", "currency": "GBP", "billing": {"name": "Ada Lovelace"}}
    status, doc, _ = await api.call("PATCH", f"/v1/payments/{sid}/details", body=details)
    assert status == 200, doc
    status, doc, _ = await api.post(f"/v1/payments/{sid}/capture")
    assert status == 200 and doc["state"] == "capturing", doc
    api.h.calls.press("call-a", keys_for(pan))
    return sid


# ---------------------------------------------------------------------------- the flow


@pytest.mark.parametrize("pan", list(CARDS))
async def test_agent_ui_flow_and_no_card_data_anywhere(
    api: Api, pan: str, logs: LogCapture
) -> None:
    status, doc, _ = await api.get("/v1/calls")
    assert status == 200
    (call,) = doc["calls"]
    assert call["payee"] == "Ada Lovelace" and call["interaction_type"] == "call"
    assert call["profiles"] == ["card", "link"]
    status, doc, _ = await api.get("/v1/profiles")
    assert status == 200 and doc["payments_enabled"] is True
    assert [p["name"] for p in doc["profiles"]] == ["card", "link"]

    status, doc, resp = await api.post(
        "/v1/calls/call-a/payments", body={"profile": "card"}, headers={"Idempotency-Key": "k1"}
    )
    assert status == 201 and doc["state"] == "provider_joining" and doc["caller_held"]
    sid = doc["id"]
    assert resp.headers["Location"] == f"/v1/payments/{sid}"
    assert resp.headers["ETag"] == f'"{doc["version"]}"'
    status, again, _ = await api.post(
        "/v1/calls/call-a/payments", body={"profile": "card"}, headers={"Idempotency-Key": "k1"}
    )
    assert status == 200 and again["id"] == sid
    status, doc, _ = await api.post("/v1/calls/call-a/payments", body={"profile": "card"})
    assert (status, code(doc)) == (409, "session_in_progress")
    status, doc, _ = await api.get("/v1/calls/call-a")
    assert doc["payment"] == sid and doc["held"] is True

    # the agent UI long-polls while the provider joins
    _, doc, _ = await api.get(f"/v1/payments/{sid}")
    etag = f'"{doc["version"]}"'
    poll = asyncio.create_task(
        api.get(f"/v1/payments/{sid}?wait=10", headers={"If-None-Match": etag})
    )
    await asyncio.sleep(0.05)
    assert not poll.done()
    api.h.calls.answer_provider("call-a")
    status, doc, _ = await asyncio.wait_for(poll, 1)
    assert status == 200 and doc["state"] == "awaiting_details"

    details = {
        "amount": "12.50",
        "currency": "GBP",
        "billing": {"name": "Ada Lovelace", "address": "12 Baker St", "country": "GB"},
    }
    status, doc, _ = await api.call("PATCH", f"/v1/payments/{sid}/details", body=details)
    assert status == 200 and doc["amount"] == "12.50"
    status, doc, _ = await api.post(f"/v1/payments/{sid}/capture")
    assert status == 200 and doc["state"] == "capturing" and not doc["caller_held"]
    api.h.calls.press("call-a", keys_for(pan))
    status, doc, _ = await api.get(f"/v1/payments/{sid}")
    assert doc["state"] == "ready" and doc["required"] == []
    card = doc["fields"][0]
    assert card["masked"] == "*" * (len(pan) - 4) + pan[-4:] and card["valid"] is True
    assert {f["masked"] for f in doc["fields"][1:]} <= {"*" * n for n in range(1, 11)}

    status, doc, _ = await api.post(f"/v1/payments/{sid}/process")
    assert status == 200 and doc["state"] in ("processing", "finished")
    status, doc, _ = await api.post(f"/v1/payments/{sid}/process")  # idempotent
    assert status == 200
    for _ in range(50):
        status, doc, _ = await api.get(f"/v1/payments/{sid}")
        if doc["state"] == "finished":
            break
        await asyncio.sleep(0.01)
    assert doc["result"] == "succeeded" and doc["provider_leg"] == "released"
    assert not doc["caller_held"]
    assert api.h.calls.names("call-a")[-2:] == ["release_provider", "retrieve"]

    assert_no_leak(*api.seen, logs.text(), api.h.dump())


async def test_failure_over_http_retrieves_the_caller(api: Api) -> None:
    status, doc, _ = await api.post("/v1/calls/call-a/payments", body={"profile": "card"})
    sid = doc["id"]
    await asyncio.sleep(0)
    api.h.calls.fail_provider("call-a", "busy", 486)
    status, doc, _ = await api.get(f"/v1/payments/{sid}")
    assert (doc["result"], doc["error"]) == ("failed", "provider_busy")
    assert api.h.calls.names("call-a")[-2:] == ["release_provider", "retrieve"]
    status, doc, _ = await api.post(f"/v1/payments/{sid}/cancel")
    assert (status, code(doc)) == (409, "wrong_state")


async def test_cancel_over_http(api: Api) -> None:
    sid = await ready_payment(api)
    status, doc, _ = await api.post(f"/v1/payments/{sid}/cancel")
    assert status == 200 and doc["result"] == "cancelled"
    assert api.h.calls.names("call-a")[-3:] == ["stop_capture", "release_provider", "retrieve"]


async def test_reset_field_route(api: Api) -> None:
    sid = await ready_payment(api)
    status, doc, _ = await api.post(f"/v1/payments/{sid}/fields/expiry/reset")
    assert status == 200 and doc["required"] == ["expiry"]
    status, doc, _ = await api.post(f"/v1/payments/{sid}/fields/pin/reset")
    assert (status, code(doc)) == (422, "unknown_field")


async def test_hold_and_retrieve_routes(api: Api) -> None:
    status, doc, _ = await api.post("/v1/calls/call-a/hold")
    assert status == 200 and doc["held"] is True
    status, doc, _ = await api.post("/v1/calls/call-a/retrieve")
    assert status == 200 and doc["held"] is False
    api.h.calls.add_call("other-call", called=OTHER_NUMBER)
    status, doc, _ = await api.post("/v1/calls/other-call/hold")
    assert (status, code(doc)) == (403, "forbidden")
    assert ("hold", "other-call") not in api.h.calls.requests


# ---------------------------------------------------------------------------- ETag / poll


async def test_etag_304_and_long_poll_timing(api: Api) -> None:
    sid = await ready_payment(api)
    status, doc, resp = await api.get(f"/v1/payments/{sid}")
    etag = resp.headers["ETag"]
    assert etag == f'"{doc["version"]}"'
    loop = asyncio.get_running_loop()

    start = loop.time()
    status, body, resp = await api.get(f"/v1/payments/{sid}", headers={"If-None-Match": etag})
    assert status == 304 and body is None and resp.headers["ETag"] == etag
    assert loop.time() - start < 0.2
    status, _, _ = await api.get(f"/v1/payments/{sid}", headers={"If-None-Match": "W/" + etag})
    assert status == 304

    start = loop.time()
    status, _, _ = await api.get(f"/v1/payments/{sid}?wait=0.2", headers={"If-None-Match": etag})
    assert status == 304 and 0.18 <= loop.time() - start < 1.0

    status, doc, _ = await api.get(f"/v1/payments/{sid}", headers={"If-None-Match": '"1"'})
    assert status == 200  # a stale ETag gets the body
    status, _, _ = await api.get(f"/v1/payments/{sid}?wait=0.05&version={doc['version']}")
    assert status == 304

    poll = asyncio.create_task(api.get(f"/v1/payments/{sid}?wait=25&version={doc['version']}"))
    await asyncio.sleep(0.05)
    start = loop.time()
    await api.post(f"/v1/payments/{sid}/fields/cvv/reset", token=AGENT)
    status, polled, _ = await asyncio.wait_for(poll, 2)
    assert status == 200 and polled["required"] == ["cvv"]
    assert loop.time() - start < 0.2

    for bad in ("-1", "nan", "abc", "inf"):
        status, doc, _ = await api.get(f"/v1/payments/{sid}?wait={bad}")
        assert (status, code(doc)) == (422, "bad_wait")
    status, doc, _ = await api.get(f"/v1/payments/{sid}?wait=1&version=x")
    assert (status, code(doc)) == (422, "bad_version")


# ---------------------------------------------------------------------------- status codes


async def test_401_without_or_with_a_wrong_token(api: Api) -> None:
    for token in (None, "not-a-token", ""):
        status, doc, resp = await api.get("/v1/calls", token=token)
        assert (status, code(doc)) == (401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, doc, _ = await api.get("/v1/calls", token=None, headers={"Authorization": "Basic x"})
    assert status == 401
    for path in ("/healthz", "/readyz", "/v1/openapi.json"):
        status, _, _ = await api.get(path, token=None)
        assert status == 200


async def test_403_404_for_accounts_and_unknowns(api: Api) -> None:
    api.h.calls.add_call("other-call", called=OTHER_NUMBER)
    api.h.calls.add_call("nobody-call", called=NOBODY_NUMBER)
    api.h.calls.add_call("closed-call", called=CLOSED_NUMBER)
    status, doc, _ = await api.get("/v1/calls/other-call")
    assert (status, code(doc)) == (403, "forbidden")
    status, doc, _ = await api.get("/v1/calls/other-call", token=OTHER)
    assert status == 200
    for token in (AGENT, OTHER):
        status, doc, _ = await api.get("/v1/calls/nobody-call", token=token)
        assert (status, code(doc)) == (404, "call_not_found")
    status, doc, _ = await api.get("/v1/calls", token=OTHER)
    assert [c["id"] for c in doc["calls"]] == ["other-call"]
    status, doc, _ = await api.post(
        "/v1/calls/closed-call/payments", token=CLOSED, body={"profile": "closed-card"}
    )
    assert (status, code(doc)) == (403, "payments_disabled")
    status, doc, _ = await api.get("/v1/profiles", token=CLOSED)
    assert doc == {"payments_enabled": False, "profiles": []}

    _, doc, _ = await api.post("/v1/calls/call-a/payments", body={"profile": "card"})
    sid = doc["id"]
    status, doc, _ = await api.get(f"/v1/payments/{sid}", token=OTHER)
    assert (status, code(doc)) == (403, "forbidden")
    status, doc, _ = await api.post(f"/v1/payments/{sid}/cancel", token=OTHER)
    assert status == 403
    status, doc, _ = await api.get("/v1/payments/pay_nope")
    assert (status, code(doc)) == (404, "payment_not_found")
    status, doc, _ = await api.get("/v1/nothing")
    assert (status, code(doc)) == (404, "not_found")
    status, doc, _ = await api.call("DELETE", "/v1/calls")
    assert (status, code(doc)) == (405, "method_not_allowed")
    status, doc, _ = await api.post("/v1/calls/gone/payments", body={"profile": "card"})
    assert (status, code(doc)) == (404, "call_not_found")


async def test_409_and_422(api: Api, logs: LogCapture) -> None:
    api.h.calls.add_call("ringing", called=ACME_NUMBER, state="ringing")
    status, doc, _ = await api.post("/v1/calls/ringing/payments", body={"profile": "card"})
    assert (status, code(doc)) == (409, "call_not_up")
    for body, raw, expected in [
        (None, b"{not json", "invalid_json"),
        (None, b"[1, 2]", "invalid_body"),
        ({"profile": 3}, None, "invalid_body"),
        ({"profile": "card", "4111111111111111": 1}, None, "invalid_body"),
        ({"profile": "nope"}, None, "unknown_profile"),
        ({"profile": "link", "phone": "07700 900123"}, None, "bad_phone"),
        ({"profile": "card", "phone": "+447700900123"}, None, "invalid_body"),
    ]:
        status, doc, _ = await api.post("/v1/calls/call-a/payments", body=body, raw=raw)
        assert (status, code(doc)) == (422, expected), doc
    status, doc, _ = await api.post(
        "/v1/calls/call-a/payments", body={"profile": "card"}, headers={"Idempotency-Key": "a"}
    )
    sid = doc["id"]
    status, doc, _ = await api.post(
        "/v1/calls/call-a/payments", body={"profile": "link"}, headers={"Idempotency-Key": "a"}
    )
    assert (status, code(doc)) == (422, "idempotency_key_reused")
    status, doc, _ = await api.post(f"/v1/payments/{sid}/capture")
    assert (status, code(doc)) == (409, "wrong_state")
    status, doc, _ = await api.post(f"/v1/payments/{sid}/process")
    assert (status, code(doc)) == (409, "wrong_state")
    base: dict[str, Any] = {"amount": "12.50", "currency": "GBP", "billing": {"name": "Ada"}}
    changes: list[tuple[dict[str, Any], str]] = [
        ({"amount": "lots"}, "bad_amount"),
        ({"amount": True}, "bad_amount"),
        ({"amount": 9999}, "amount_out_of_range"),
        ({"amount": "1.234"}, "bad_amount"),
        ({"currency": "EUR"}, "currency_not_allowed"),
        ({"currency": None}, "invalid_body"),
        ({"billing": "Ada"}, "bad_billing"),
        ({"billing": {"name": ""}}, "bad_billing"),
        ({"billing": {"name": "Ada", "pan": "x"}}, "invalid_body"),
        ({"billing": {"name": "4111 1111 1111 1111"}}, "billing_contains_card_number"),
        (
            {"billing": {"name": "Ada", "address": "5555555555554444"}},
            "billing_contains_card_number",
        ),
        ({"extra": 1}, "invalid_body"),
    ]
    for change, expected in changes:
        status, doc, _ = await api.call(
            "PATCH", f"/v1/payments/{sid}/details", body={**base, **change}
        )
        assert (status, code(doc)) == (422, expected), (change, doc)
    status, doc, _ = await api.post(f"/v1/payments/{sid}/details", body=base)  # POST works too
    assert status == 200 and doc["amount"] == "12.50"
    status, doc, _ = await api.post(f"/v1/payments/{sid}/details", raw=b"x" * 70_000)
    assert (status, code(doc)) == (413, "body_too_large")
    assert_no_leak(*api.seen, logs.text(), api.h.dump())


async def test_processing_timeout_over_http(tmp_path: Path) -> None:
    h = Harness(make_config(processing_s=0.05))
    h.calls.add_call("call-a", called=ACME_NUMBER)
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(h.service)))
    await client.start_server()
    try:
        api = Api(h, client)
        sid = await ready_payment(api, TIMEOUT_CARD)
        _, doc, _ = await api.post(f"/v1/payments/{sid}/process")
        _status, doc, _ = await api.get(
            f"/v1/payments/{sid}?wait=2", headers={"If-None-Match": f'"{doc["version"]}"'}
        )
        assert (doc["result"], doc["error"]) == ("failed", "processing_timeout")
        assert h.calls.names("call-a")[-2:] == ["release_provider", "retrieve"]
        assert_no_leak(*api.seen, h.dump())
    finally:
        await client.close()
        await h.service.stop()


# ---------------------------------------------------------------------------- health, admin


async def test_readyz_follows_the_service(api: Api) -> None:
    status, doc, _ = await api.get("/readyz", token=None)
    assert status == 200 and doc == {"status": "ready"}
    await api.h.service.stop()
    status, doc, _ = await api.get("/readyz", token=None)
    assert (status, code(doc)) == (503, "not_ready")
    status, doc, _ = await api.get("/healthz", token=None)
    assert status == 200


async def test_admin_reload(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    text = f"""
payments:
  accounts:
    acme:
      payments: true
      numbers: ['0800*']
      tokens:
        - {{role: agent, sha256: {hash_token(AGENT)}}}
        - {{role: admin, sha256: {hash_token(ADMIN)}}}
  storage: {{path: ':memory:'}}
"""
    path.write_text(text)
    h = Harness(load_payments(path, env={}), calls=FakeCallControl())
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(h.service)))
    await client.start_server()
    try:
        api = Api(h, client)
        status, doc, _ = await api.post("/v1/admin/reload")
        assert (status, code(doc)) == (403, "forbidden")
        path.write_text(text.replace("payments: true", "payments: maybe"))
        status, doc, _ = await api.post("/v1/admin/reload", token=ADMIN)
        assert (status, code(doc)) == (422, "config_invalid")
        assert any("payments.accounts.acme.payments" in p for p in doc["error"]["problems"])
        assert h.service.config.accounts["acme"].payments_enabled  # the old one stays
        path.write_text(text.replace("['0800*']", "['0900*']"))
        status, doc, _ = await api.post("/v1/admin/reload", token=ADMIN)
        assert status == 200 and doc["reloaded"] is True and doc["accounts"] == 1
        assert h.service.config.accounts["acme"].numbers == ("0900*",)
        trail = [(e.actor_role, e.action) for e in h.storage.audit_trail()]
        assert ("admin", "config_reloaded") in trail
    finally:
        await client.close()
        await h.service.stop()


# ---------------------------------------------------------------------------- OpenAPI


async def test_openapi_describes_every_route_and_error_code(api: Api) -> None:
    status, doc, _ = await api.get("/v1/openapi.json", token=None)
    assert status == 200 and doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1")
    for route in api.client.app.router.routes():  # type: ignore[union-attr]
        if route.method == "HEAD":
            continue
        path = route.resource.canonical  # type: ignore[union-attr]
        assert path in doc["paths"], path
        assert route.method.lower() in doc["paths"][path], (route.method, path)
    # every code the service and the API raise, and the session refuses with, is listed
    here = Path(service_module.__file__).parent
    source = (here / "service.py").read_text() + (here / "api.py").read_text()
    raised = set(re.findall(r'(?:ServiceError|_error)\(\s*\d{3},\s*"([a-z_]+)"', source))
    raised |= {code for code, _ in API_HTTP_CODES.values()} | {"bad_version"}
    assert len(raised) > 15 and raised <= set(API_ERROR_CODES), raised - set(API_ERROR_CODES)
    assert {c.value for c in SessionErrorCode} <= set(API_ERROR_CODES)
    assert set(doc["x-error-codes"]) == set(API_ERROR_CODES)
    schemas = doc["components"]["schemas"]
    assert {"Payment", "Call", "Profile", "Field", "Error", "Details"} <= set(schemas)
    # every $ref resolves, every path parameter is declared
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([A-Za-z]+)"', text)):
        assert ref in schemas, ref
    for path, ops in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for op in ops.values():
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert name in declared, (path, name)


async def test_serve_binds_the_configured_address() -> None:
    h = Harness()
    runner, port = await serve(make_app(h.service), HostPort("127.0.0.1", 0))
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
    finally:
        await runner.cleanup()
        await h.service.stop()


async def test_call_list_etag_304_and_fresh_after_a_change(api: Api) -> None:
    """The call list carries an ETag (an unchanged list is a 304) and is kept per account
    until anything that shows in it may have changed: a hold is seen at once."""
    status, doc, resp = await api.get("/v1/calls")
    assert status == 200 and [c["held"] for c in doc["calls"]] == [False]
    etag = resp.headers["ETag"]
    status, _, resp = await api.get("/v1/calls", headers={"If-None-Match": etag})
    assert status == 304 and resp.headers["ETag"] == etag
    assert resp.headers["Cache-Control"] == "no-store"
    status, _, _ = await api.post("/v1/calls/call-a/hold")
    assert status == 200
    status, doc, resp = await api.get("/v1/calls", headers={"If-None-Match": etag})
    assert status == 200 and [c["held"] for c in doc["calls"]] == [True]
    assert resp.headers["ETag"] != etag
    # a call that comes in ringing moves nothing the service hears: seen within the TTL
    api.h.calls.add_call("call-b", called=ACME_NUMBER)
    await asyncio.sleep(CALLS_TTL_S + 0.05)
    status, doc, _ = await api.get("/v1/calls")
    assert [c["id"] for c in doc["calls"]] == ["call-a", "call-b"]
