"""Tests for self-service payments: the sans-I/O session (every transition), then through
PaymentService with the sandbox connector (SMS outbox, links, the page methods, switch to
guided, expiry, restart with a real SQLite file), the /v1 routes, the configuration keys,
and no card data in logs, rows (outbox included), views, responses or exceptions."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control_api.api import make_app
from control_api.cards import CardBrand, CardDetails, CardError
from control_api.events import (
    BillingDetails,
    CallEnded,
    Cancel,
    CardRefused,
    ErrorCode,
    FieldName,
    FieldProgress,
    PageOpened,
    Process,
    ProcessPayment,
    ProviderResult,
    Restarted,
    Result,
    SendLink,
    SendPaymentLink,
    SessionFinished,
    SessionState,
    SmsOutcome,
    StartCapture,
    SubmitCard,
    SwitchToGuided,
)
from control_api.links import LinkError, PageView
from control_api.profiles import (
    LinksConfig,
    PaymentsConfig,
    SmsConfig,
    load_payments,
    parse_payments,
)
from control_api.sandbox import TIMEOUT_CARD
from control_api.selfservice import SelfServiceSession
from control_api.service import PaymentService, ServiceError
from control_api.session import SessionError
from control_api.sms import HttpSmsConfig, SmsResult
from control_api.storage import Storage
from sipproxy.yamlreader import ConfigError
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.servicekit import (
    ACME_AGENT,
    ACME_NUMBER,
    AGENT,
    CARDS,
    DECLINE,
    DETAILS,
    OTHER_AGENT,
    POSTAL,
    TODAY,
    WALL,
    LogCapture,
    assert_no_leak,
    letters,
    logs,
    make_config,
    settle,
    until,
)
from tests.control_api.test_sms import Gateway

pytestmark = pytest.mark.asyncio
__all__ = ["logs"]

PHONE = "+447700900123"
PHONE2 = "+447700900456"
SECRET = "link-secret-" + "k" * 32
BASE = "https://pay.example"
PAN = "4111111111111111"


def card(pan: str = PAN, postal: str | None = POSTAL) -> CardDetails:
    from tests.control_api.servicekit import ALL_CARDS

    exp, cvv = ALL_CARDS[pan]
    return CardDetails(pan, exp, cvv, postal)


def config(**kw: Any) -> PaymentsConfig:
    cfg = make_config(**kw)
    return replace(cfg, links=LinksConfig(BASE, SECRET))


def link_profile_session(now: float = WALL, phone: str | None = PHONE, **changes: Any) -> Any:
    cfg = config()
    profile = replace(cfg.profiles["link"], **changes)
    return SelfServiceSession(
        "pay_s", "call-a", profile, cfg.providers["sandbox"], today=TODAY, now=now, phone=phone
    )


# =========================================================================== sans-I/O


def kinds(outputs: list[Any]) -> list[str]:
    return [type(o).__name__ for o in outputs]


async def test_created_then_details_send_the_link() -> None:
    s = link_profile_session()
    v = s.view().to_dict()
    assert (v["state"], v["method"], v["sms"], v["link_expires_at"]) == (
        "created",
        "self_service",
        None,
        None,
    )
    assert v["required"] == ["card_number", "expiry", "cvv", "postal_code"]
    assert s.get_timer() == WALL + 86400  # a created session expires too
    out = s.handle(DETAILS, WALL + 5)
    (send,) = [o for o in out if isinstance(o, SendPaymentLink)]
    assert (send.to, send.link, send.expires_at) == (PHONE, 1, WALL + 5 + 86400)
    assert "7700900" not in repr(send)  # the number is masked in repr
    v = s.view().to_dict()
    assert v["state"] == "link_sent" and v["amount"] == "12.50"
    assert v["sms"] == {"state": "queued", "error": None, "to": "+44*******123"}
    assert v["link_expires_at"] == WALL + 5 + 86400 == s.get_timer()
    assert set(v) >= {"fields", "required", "result", "error", "version", "sms"}


async def test_no_phone_waits_for_send_link() -> None:
    s = link_profile_session(phone=None)
    with pytest.raises(SessionError) as info:
        s.handle(SendLink(PHONE), WALL)
    assert info.value.code.value == "details_required"
    assert kinds(s.handle(DETAILS, WALL)) == ["SessionUpdated"]
    assert s.state is SessionState.CREATED
    out = s.handle(SendLink(PHONE2), WALL)
    assert isinstance(out[0], SendPaymentLink) and out[0].to == PHONE2
    assert s.view().state is SessionState.LINK_SENT
    with pytest.raises(SessionError):  # the amount is fixed once the link is out
        s.handle(DETAILS, WALL)


async def test_sms_failed_then_resend() -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(SmsOutcome("failed", "timeout", link=1), WALL)
    v = s.view().to_dict()
    assert v["state"] == "sms_failed" and v["sms"]["error"] == "timeout"
    out = s.handle(SendLink(PHONE2), WALL + 1)
    assert [o.link for o in out if isinstance(o, SendPaymentLink)] == [2]
    assert s.state is SessionState.LINK_SENT and s.view().sms.state == "queued"  # type: ignore[union-attr]
    before = s.version
    s.handle(SmsOutcome("failed", "timeout", link=1), WALL + 2)  # about the old one: ignored
    assert s.version == before and s.state is SessionState.LINK_SENT
    s.handle(SmsOutcome("sent", None, link=2), WALL + 2)
    assert s.view().sms == replace(s.view().sms, state="sent", error=None, to="+44*******456")  # type: ignore[arg-type]


async def test_page_progress_shows_asterisks() -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(PageOpened(), WALL)
    assert s.state is SessionState.CUSTOMER_ACTIVE
    out = s.handle(FieldProgress(FieldName.CARD_NUMBER, 6, CardBrand.VISA), WALL)
    assert "FieldUpdated" in kinds(out)
    f = s.view().to_dict()["fields"][0]
    assert (f["state"], f["digits"], f["masked"], f["brand"]) == (
        "capturing",
        6,
        "******",
        "visa",
    )
    s.handle(FieldProgress(FieldName.CARD_NUMBER, 0), WALL)
    assert s.view().to_dict()["fields"][0]["state"] == "pending"
    for bad, code in [
        (FieldProgress(FieldName.CARD_NUMBER, 20), "bad_progress"),
        (FieldProgress(FieldName.CVV, -1), "bad_progress"),
    ]:
        with pytest.raises(SessionError) as info:
            s.handle(bad, WALL)
        assert info.value.code.value == code
    no_postal = link_profile_session(
        fields=(FieldName.CARD_NUMBER, FieldName.EXPIRY, FieldName.CVV)
    )
    no_postal.handle(DETAILS, WALL)
    with pytest.raises(SessionError) as info:
        no_postal.handle(FieldProgress(FieldName.POSTAL_CODE, 3), WALL)
    assert info.value.code.value == "unknown_field"


async def test_submit_validates_then_processes() -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    version = s.version
    out = s.handle(SubmitCard(CardDetails("4111111111111112", "0829", "739", POSTAL)), WALL)
    assert kinds(out) == ["CardRefused", "FieldUpdated", "SessionUpdated"]
    assert out[0] == CardRefused("pay_s", FieldName.CARD_NUMBER, CardError.LUHN_FAILED)
    assert "4111" not in repr(out)
    v = s.view().to_dict()
    assert v["state"] == "customer_active" and v["version"] > version
    assert v["fields"][0]["state"] == "invalid" and v["fields"][0]["error"] == "luhn_failed"
    out = s.handle(SubmitCard(card(postal=None)), WALL)  # the profile asks for it
    assert out[0] == CardRefused("pay_s", FieldName.POSTAL_CODE, CardError.EMPTY)
    out = s.handle(SubmitCard(card()), WALL + 10)
    (pay,) = [o for o in out if isinstance(o, ProcessPayment)]
    assert pay.card.number == PAN and pay.amount == Decimal("12.50")
    assert PAN not in repr(out)
    v = s.view().to_dict()
    assert v["state"] == "processing" and v["required"] == []
    assert v["fields"][0]["masked"] == "************1111" and v["fields"][0]["brand"] == "visa"
    assert [f["masked"] for f in v["fields"][1:]] == ["****", "***", "*****"]
    assert s.get_timer() == WALL + 10 + 30  # the provider's processing timeout
    with pytest.raises(SessionError):
        s.handle(SubmitCard(card()), WALL)  # once only
    out = s.handle(ProviderResult("approved", None, "ref-1"), WALL + 11)
    assert kinds(out)[-2:] == ["SessionFinished", "SessionUpdated"]
    assert "ReleaseProviderLeg" not in kinds(out) and "RetrieveCaller" not in kinds(out)
    v = s.view().to_dict()
    assert (v["state"], v["result"], v["reference"]) == ("finished", "succeeded", "ref-1")
    assert s.snapshot() is None
    late = s.handle(ProviderResult("approved", None, "ref-2"), WALL + 12)
    assert kinds(late) == ["LateProviderResult"]


async def test_no_postal_profile_drops_a_postal_code() -> None:
    s = link_profile_session(fields=(FieldName.CARD_NUMBER, FieldName.EXPIRY, FieldName.CVV))
    s.handle(DETAILS, WALL)
    (pay,) = [o for o in s.handle(SubmitCard(card()), WALL) if isinstance(o, ProcessPayment)]
    assert pay.card.postal_code is None


@pytest.mark.parametrize(
    ("result", "want"),
    [
        (
            ProviderResult("declined", ErrorCode.INSUFFICIENT_FUNDS),
            ("declined", "insufficient_funds"),
        ),
        (ProviderResult("declined", None), ("declined", "card_declined")),
        (ProviderResult("error", None), ("failed", "processing_error")),
    ],
)
async def test_provider_outcomes(result: ProviderResult, want: tuple[str, str]) -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(SubmitCard(card()), WALL)
    s.handle(result, WALL)
    assert (s.result.value, s.error.value) == want  # type: ignore[union-attr]


async def test_timers_link_expiry_and_processing() -> None:
    s = link_profile_session(link_ttl_s=600)
    assert s.handle_timer(WALL + 599) == []
    out = s.handle_timer(WALL + 600)  # never sent: expires with the link's lifetime
    assert (s.result, s.error) == (Result.FAILED, ErrorCode.LINK_EXPIRED)
    assert any(isinstance(o, SessionFinished) for o in out)
    s = link_profile_session(link_ttl_s=600)
    s.handle(DETAILS, WALL + 100)
    s.handle(PageOpened(), WALL + 200)
    assert s.get_timer() == WALL + 700
    s.handle_timer(WALL + 700)
    assert s.error is ErrorCode.LINK_EXPIRED
    s = link_profile_session(link_ttl_s=600)
    s.handle(DETAILS, WALL)
    s.handle(SubmitCard(card(TIMEOUT_CARD)), WALL + 590)
    s.handle_timer(WALL + 600)  # the link's expiry no longer counts
    assert s.state is SessionState.PROCESSING
    s.handle_timer(WALL + 620)
    assert s.error is ErrorCode.PROCESSING_TIMEOUT


async def test_cancel_switch_call_end_restart() -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(CallEnded("caller"), WALL)
    assert s.state is SessionState.LINK_SENT and s.call_ended == "caller"  # outlives the call
    s.handle(Restarted(), WALL)
    assert s.state is SessionState.LINK_SENT  # waits for the customer across a restart
    s.handle(SwitchToGuided(), WALL)
    assert (s.result, s.error) == (Result.CANCELLED, ErrorCode.SWITCHED_TO_GUIDED)
    s = link_profile_session()
    s.handle(Cancel(), WALL)
    assert (s.result, s.error) == (Result.CANCELLED, ErrorCode.CANCELLED)
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(SubmitCard(card()), WALL)
    for refused in (Cancel(), SwitchToGuided(), SendLink(PHONE)):
        with pytest.raises(SessionError):
            s.handle(refused, WALL)
    s.handle(Restarted(), WALL)
    assert (s.result, s.error) == (Result.INTERRUPTED, ErrorCode.PROCESS_RESTART)


async def test_guided_actions_are_refused() -> None:
    s = link_profile_session()
    for event in (StartCapture(), Process()):
        with pytest.raises(SessionError) as info:
            s.handle(event, WALL)
        assert info.value.code.value == "wrong_state"
    with pytest.raises(ValueError):
        link_profile_session(method="guided")
    with pytest.raises(ValueError):
        link_profile_session(phone="07700 900123")


async def test_snapshot_and_restore() -> None:
    s = link_profile_session()
    s.handle(DETAILS, WALL)
    s.handle(SmsOutcome("sent", None, link=1), WALL)
    s.handle(FieldProgress(FieldName.CARD_NUMBER, 4, CardBrand.VISA), WALL)
    snap = s.snapshot()
    assert snap is not None and snap["phone"] == PHONE and snap["amount"] == "12.50"
    view = json.loads(json.dumps(s.view().to_dict()))
    view["billing"] = None  # storage does not keep it in the view
    back = SelfServiceSession.restore(view, json.loads(json.dumps(snap)))
    assert back.view().to_dict() == s.view().to_dict()
    assert back.get_timer() == s.get_timer() and back.billing == s.billing
    with pytest.raises(ValueError):
        SelfServiceSession.restore({**view, "version": 99, "state": "bogus"}, snap)


# ====================================================================== the service


class Clock:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


class Kit:
    """A started PaymentService with self-service settings, a movable wall clock, the
    sandbox connector and the SMS outbox (or a given sender)."""

    def __init__(
        self,
        cfg: PaymentsConfig | None = None,
        *,
        db: str = ":memory:",
        calls: FakeCallControl | None = None,
        clock: Clock | None = None,
        **kw: Any,
    ) -> None:
        self.calls = calls or FakeCallControl()
        self.clock = clock or Clock()
        self.storage = Storage(db, now=self.clock.now)
        ids = count()
        self.service = PaymentService(
            cfg or config(),
            self.calls,
            self.storage,
            today=lambda: TODAY,
            wall=self.clock,
            new_id=lambda: "pay_" + letters(next(ids) + 100 * (db != ":memory:")),
            **kw,
        )
        self.service.start()

    def create(self, call_id: str = "call-a", phone: str | None = PHONE, **kw: Any) -> str:
        if self.calls.call(call_id) is None:
            self.calls.add_call(call_id, called=ACME_NUMBER)
        doc, _ = self.service.create_payment(
            ACME_AGENT, call_id, "link", phone=phone, details=DETAILS, **kw
        )
        return str(doc["id"])

    def view(self, sid: str) -> dict[str, Any]:
        return self.service.get_payment(ACME_AGENT, sid)

    def token(self, index: int = -1) -> str:
        body = self.storage.outbox()[index].body
        m = re.search(r"/pay/([A-Za-z0-9_-]{44})", body)
        assert m is not None, body
        return m.group(1)

    def dump(self) -> str:
        return "\n".join(f"{table}: {row!r}" for table, row in self.storage.dump())


@pytest.mark.parametrize("pan", list(CARDS))
async def test_whole_self_service_payment(pan: str, logs: LogCapture) -> None:
    k = Kit()
    sid = k.create()
    await settle()
    v = k.view(sid)
    assert v["state"] == "link_sent" and v["sms"]["state"] == "queued"
    (row,) = k.storage.outbox()
    assert row.to == PHONE and row.state == "queued"
    assert row.body.startswith("Acme: to pay 12.50 GBP (payment) open https://pay.example/pay/")
    token = k.token()
    assert k.calls.requests == []  # the call was not touched: no hold, no provider leg

    page = k.service.page_view(token)
    assert page == PageView(
        sid, "Acme", "", "12.50", "GBP", ("card_number", "expiry", "cvv", "postal_code"),
        "customer_active",
    )  # fmt: skip
    assert k.view(sid)["state"] == "customer_active"
    exp, cvv = CARDS[pan]
    typed = {"card_number": len(pan), "expiry": 4, "cvv": len(cvv), "postal_code": 5}
    for name, n in typed.items():
        k.service.page_progress(token, name, n, "visa" if name == "card_number" else None)
    v = k.view(sid)
    assert [f["masked"] for f in v["fields"]] == ["*" * n for n in typed.values()]

    final = await k.service.page_submit(token, CardDetails(pan, exp, cvv, POSTAL))
    assert (final.state, final.result, final.error) == ("finished", "succeeded", None)
    v = k.view(sid)
    assert (v["result"], v["reference"]) == ("succeeded", f"sandbox-{sid}")
    assert v["fields"][0]["masked"] == "*" * (len(pan) - 4) + pan[-4:]
    with pytest.raises(LinkError) as info:
        await k.service.page_submit(token, CardDetails(pan, exp, cvv, POSTAL))
    assert info.value.code in ("used", "expired")  # used, and revoked as the session finished
    with pytest.raises(LinkError):
        k.service.page_view(token)
    rec = k.storage.session(sid)
    assert rec is not None and rec.resume is None and rec.last4 == pan[-4:]
    actions = [e.action for e in k.storage.audit_trail(sid)]
    for a in ("session_created", "details_set", "sms_queued", "page_opened", "field_updated",
              "card_submitted", "provider_result", "session_finished"):  # fmt: skip
        assert a in actions, a
    assert_no_leak(
        logs.text(), k.dump(), json.dumps(v), json.dumps(final.to_dict()), repr(k.service)
    )


async def test_card_refused_on_the_page_keeps_the_link(logs: LogCapture) -> None:
    k = Kit()
    sid = k.create()
    await settle()
    token = k.token()
    with pytest.raises(ServiceError) as info:
        await k.service.page_submit(token, CardDetails("4111111111111112", "0829", "739", POSTAL))
    err = info.value
    assert (err.status, err.code, err.field) == (422, "luhn_failed", "card_number")
    assert k.view(sid)["fields"][0]["state"] == "invalid"
    rec = k.storage.session(sid)  # the refusal reached storage (and long-pollers, webhooks)
    assert rec is not None and rec.view["fields"][0]["error"] == "luhn_failed"
    assert any(e.action == "card_refused" for e in k.storage.audit_trail(sid))
    with pytest.raises(ServiceError) as info:
        await k.service.page_submit(token, CardDetails(PAN, "0125", "739", POSTAL))
    assert (info.value.code, info.value.field) == ("expired", "expiry")
    final = await k.service.page_submit(token, card(DECLINE))
    assert (final.result, final.error) == ("declined", "card_declined")
    assert_no_leak(logs.text(), k.dump(), str(err), repr(err))


async def test_page_progress_refusals() -> None:
    k = Kit()
    k.create()
    await settle()
    token = k.token()
    for field, digits, brand, code in [
        ("pin", 1, None, "unknown_field"),
        ("card_number", 99, None, "bad_progress"),
        ("card_number", True, None, "bad_progress"),
        ("card_number", 3, "visa-ish", "bad_brand"),
    ]:
        with pytest.raises(ServiceError) as info:
            k.service.page_progress(token, field, digits, brand)
        assert (info.value.status, info.value.code) == (422, code)


async def test_links_tampered_and_other_sessions() -> None:
    k = Kit()
    a = k.create("call-a")
    b = k.create("call-b", phone=PHONE2)
    await settle()
    token_a, token_b = k.token(0), k.token(1)
    assert k.service.page_view(token_a).session_id == a
    assert k.service.page_view(token_b).session_id == b
    for bad in (
        token_a[:22] + token_b[22:],
        token_a[:-1] + ("A" if token_a[-1] != "A" else "B"),
        "x",
    ):
        with pytest.raises(LinkError) as info:
            k.service.page_view(bad)
        assert str(info.value) == "This payment link is not valid"


async def test_sms_failure_resend_and_switch_to_guided() -> None:
    results = [SmsResult("failed", "gateway_error", "the gateway answered HTTP 503 (3 attempts)")]

    class Flaky:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str]] = []

        async def send(self, to: str, text: str) -> SmsResult:
            self.sent.append((to, text))
            return results.pop(0) if results else SmsResult("sent", message_id="m-1")

    sender = Flaky()
    k = Kit(sms=sender)
    sid = k.create()
    await until(lambda: k.view(sid)["state"] == "sms_failed")
    v = k.view(sid)
    assert v["sms"] == {"state": "failed", "error": "gateway_error", "to": "+44*******123"}
    trail = k.storage.audit_trail(sid)
    failed = next(e for e in trail if e.action == "sms_failed")
    assert failed.detail["detail"].startswith("the gateway answered HTTP 503")
    first_url = re.search(r"https://\S+", sender.sent[0][1]).group(0)  # type: ignore[union-attr]
    doc = k.service.send_link(ACME_AGENT, sid, PHONE2)
    assert doc["state"] == "link_sent" and doc["sms"]["to"] == "+44*******456"
    await until(lambda: k.view(sid)["sms"]["state"] == "sent")
    assert sender.sent[1][0] == PHONE2
    with pytest.raises(LinkError):  # the first link was revoked by the resend
        k.service.page_view(first_url.rsplit("/", 1)[1])
    with pytest.raises(ServiceError) as info:
        k.service.send_link(ACME_AGENT, sid, "0770")
    assert (info.value.status, info.value.code) == (422, "bad_phone")

    guided = k.service.switch_to_guided(ACME_AGENT, sid)
    assert guided["method"] == "guided" and guided["state"] == "provider_joining"
    assert guided["amount"] == "12.50"  # carried over
    v = k.view(sid)
    assert (v["state"], v["result"], v["error"]) == ("finished", "cancelled", "switched_to_guided")
    assert k.service.get_call(ACME_AGENT, "call-a")["payment"] == guided["id"]
    await settle()
    assert k.calls.names("call-a")[:2] == ["hold", "join_provider"]
    with pytest.raises(ServiceError) as info:
        k.service.send_link(ACME_AGENT, guided["id"])
    assert (info.value.status, info.value.code) == (409, "wrong_state")


async def test_switch_needs_the_call_up_and_a_guided_profile() -> None:
    k = Kit()
    sid = k.create()
    await settle()
    k.calls.hang_up("call-a")
    assert k.view(sid)["state"] == "link_sent"  # the call ended; the link still works
    with pytest.raises(ServiceError) as info:
        k.service.switch_to_guided(ACME_AGENT, sid)
    assert (info.value.status, info.value.code) == (409, "call_not_up")
    cfg = config()
    no_guided = replace(cfg, profiles={"link": cfg.profiles["link"]})
    k2 = Kit(no_guided)
    sid2 = k2.create()
    with pytest.raises(ServiceError) as info:
        k2.service.switch_to_guided(ACME_AGENT, sid2)
    assert info.value.code == "no_guided_profile"
    with pytest.raises(ServiceError) as info:
        k2.service.switch_to_guided(ACME_AGENT, sid2, "nope")
    assert info.value.code == "unknown_profile"
    with pytest.raises(ServiceError) as info:
        k2.service.switch_to_guided(OTHER_AGENT, sid2)
    assert info.value.status == 403


async def test_customer_pays_after_the_call_ended() -> None:
    k = Kit()
    sid = k.create()
    await settle()
    k.calls.hang_up("call-a", "agent")
    final = await k.service.page_submit(k.token(), card())
    assert final.result == "succeeded"
    assert k.view(sid)["result"] == "succeeded"


async def test_phone_defaults_to_an_e164_caller_and_else_waits() -> None:
    k = Kit()
    k.calls.add_call("call-e", called=ACME_NUMBER, caller=PHONE2)
    doc, _ = k.service.create_payment(ACME_AGENT, "call-e", "link", details=DETAILS)
    assert doc["sms"]["to"] == "+44*******456"
    k.calls.add_call("call-n", called=ACME_NUMBER)  # the caller is a display name
    doc, _ = k.service.create_payment(ACME_AGENT, "call-n", "link")
    assert doc["state"] == "created" and doc["sms"] is None
    sid = doc["id"]
    with pytest.raises(ServiceError) as info:
        k.service.send_link(ACME_AGENT, sid)
    assert info.value.code == "phone_required"
    with pytest.raises(ServiceError) as info:
        k.service.send_link(ACME_AGENT, sid, PHONE)
    assert (info.value.status, info.value.code) == (422, "details_required")
    k.service.set_details(ACME_AGENT, sid, DETAILS)
    assert k.view(sid)["state"] == "created"
    assert k.service.send_link(ACME_AGENT, sid, PHONE)["state"] == "link_sent"
    with pytest.raises(ServiceError) as info:
        k.service.create_payment(ACME_AGENT, "call-n", "link", phone="+44 7700")
    assert info.value.code == "bad_phone"
    with pytest.raises(ServiceError) as info:
        k.service.create_payment(ACME_AGENT, "call-n", "card", phone=PHONE)
    assert info.value.code == "invalid_body"
    with pytest.raises(ServiceError) as info:
        k.service.process(ACME_AGENT, sid)  # the customer submits, not the agent
    assert info.value.status == 409


async def test_link_expiry_ends_the_session() -> None:
    cfg = config()
    profiles = dict(cfg.profiles)
    profiles["link"] = replace(profiles["link"], link_ttl_s=0.05)
    k = Kit(replace(cfg, profiles=profiles))
    sid = k.create()
    await settle()
    token = k.token()
    k.clock.now += 0.05
    with pytest.raises(LinkError) as info:
        k.service.page_view(token)
    assert info.value.code == "expired"
    await until(lambda: k.view(sid)["state"] == "finished")
    assert (k.view(sid)["result"], k.view(sid)["error"]) == ("failed", "link_expired")


async def test_processing_timeout_card() -> None:
    k = Kit(config(processing_s=0.05))
    sid = k.create()
    await settle()
    final = await k.service.page_submit(k.token(), card(TIMEOUT_CARD))
    assert (final.result, final.error) == ("failed", "processing_timeout")
    assert k.view(sid)["error"] == "processing_timeout"


async def test_restart_survival_with_a_real_sqlite_file(tmp_path: Path, logs: LogCapture) -> None:
    db = str(tmp_path / "pay.sqlite3")
    clock = Clock()
    k = Kit(db=db, clock=clock)
    sid = k.create()
    await settle()
    token = k.token()
    k.service.page_progress(token, "card_number", 4, "visa")
    await k.service.stop()  # a clean stop leaves self-service sessions waiting
    assert k.view(sid)["state"] == "customer_active"
    k.storage.close()

    clock.now += 3600
    k2 = Kit(db=db, clock=clock, calls=FakeCallControl())  # the call is gone too
    assert k2.storage.recovered == ()
    v = k2.view(sid)
    assert v["state"] == "customer_active" and v["fields"][0]["digits"] == 4
    assert k2.service.page_view(token).session_id == sid
    final = await k2.service.page_submit(token, card())
    assert final.result == "succeeded"
    assert k2.view(sid)["result"] == "succeeded"
    assert k2.storage.session(sid).resume is None  # type: ignore[union-attr]
    assert_no_leak(logs.text(), k2.dump())


async def test_crash_while_processing_ends_interrupted(tmp_path: Path) -> None:
    db = str(tmp_path / "pay.sqlite3")
    k = Kit(db=db, sms=None)
    sid = k.create()
    await settle()
    k.service.page_progress(k.token(), "card_number", 1, None)
    live = k.service._sessions[sid]
    live.session.handle(SubmitCard(card(TIMEOUT_CARD)), WALL)  # processing, never answered
    k.storage.update_session(k.service._record(live))
    k.storage.close()  # the process dies
    k2 = Kit(db=db)
    assert k2.storage.recovered == (sid,)
    v = k2.view(sid)
    assert (v["state"], v["result"], v["error"]) == ("finished", "interrupted", "process_restart")


async def test_without_a_secret_links_die_with_the_process(tmp_path: Path) -> None:
    db = str(tmp_path / "pay.sqlite3")
    k = Kit(make_config(), db=db)
    sid = k.create()
    await settle()
    token = k.token()
    assert k.service.page_view(token).session_id == sid
    assert (
        "http://127.0.0.1:8080/pay/" in k.storage.outbox()[0].body
    )  # api.listen    k.storage.close()
    k2 = Kit(make_config(), db=db)
    with pytest.raises(LinkError):
        k2.service.page_view(token)
    assert k2.view(sid)["state"] == "customer_active"  # resumed; a resend gives a new link


# ========================================================================= the API


async def test_api_routes(logs: LogCapture) -> None:
    k = Kit()
    k.calls.add_call("call-a", called=ACME_NUMBER)
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(k.service)))
    await client.start_server()
    seen: list[str] = []

    async def post(path: str, body: Any = None) -> tuple[int, Any]:
        async with client.post(
            path, json=body, headers={"Authorization": f"Bearer {AGENT}"}
        ) as resp:
            text = await resp.text()
            seen.append(f"{resp.status} {dict(resp.headers)!r} {text}")
            return resp.status, json.loads(text)

    try:
        status, doc = await post(
            "/v1/calls/call-a/payments", {"profile": "link", "phone": "447700900123"}
        )
        assert (status, doc["error"]["code"]) == (422, "bad_phone")
        status, doc = await post("/v1/calls/call-a/payments", {"profile": "link", "phone": 447})
        assert (status, doc["error"]["code"]) == (422, "bad_phone")
        status, doc = await post(
            "/v1/calls/call-a/payments", {"profile": "link", "phone": PHONE, "amount": "12.50"}
        )
        assert (status, doc["error"]["code"]) == (422, "invalid_body")  # currency missing
        body = {
            "profile": "link",
            "phone": PHONE,
            "amount": "12.50",
            "currency": "GBP",
            "billing": {"name": "Ada Lovelace"},
        }
        status, doc = await post("/v1/calls/call-a/payments", body)
        assert status == 201 and doc["state"] == "link_sent" and doc["method"] == "self_service"
        sid = doc["id"]
        await settle()
        status, doc = await post(f"/v1/payments/{sid}/sms", {"phone": PHONE2})
        assert status == 200 and doc["sms"]["to"] == "+44*******456"
        status, doc = await post(f"/v1/payments/{sid}/sms", {"phone": "+1"})
        assert (status, doc["error"]["code"]) == (422, "bad_phone")
        status, doc = await post(f"/v1/payments/{sid}/sms", {"to": PHONE})
        assert (status, doc["error"]["code"]) == (422, "invalid_body")
        status, doc = await post(f"/v1/payments/{sid}/process")
        assert (status, doc["error"]["code"]) == (409, "wrong_state")
        status, doc = await post(f"/v1/payments/{sid}/switch-to-guided", {"profile": 5})
        assert (status, doc["error"]["code"]) == (422, "invalid_body")
        status, doc = await post(f"/v1/payments/{sid}/switch-to-guided")
        assert status == 201 and doc["method"] == "guided"
        guided = doc["id"]
        status, doc = await post(f"/v1/payments/{sid}/switch-to-guided")
        assert (status, doc["error"]["code"]) == (409, "wrong_state")
        status, doc = await post(f"/v1/payments/{guided}/sms")
        assert (status, doc["error"]["code"]) == (409, "wrong_state")
        status, doc = await post("/v1/payments/pay_nope/sms")
        assert (status, doc["error"]["code"]) == (404, "payment_not_found")
        assert_no_leak(*seen, logs.text(), k.dump())
    finally:
        await client.close()
        await k.service.stop()


# =================================================================== configuration

ENV = {
    "DTMFMASK_DEMO_AGENT_TOKEN": "a" * 40,
    "DTMFMASK_DEMO_ADMIN_TOKEN": "b" * 40,
    "DTMFMASK_LINK_SECRET": "l" * 40,
    "DTMFMASK_SMS_TOKEN": "s" * 20,
}
REPO = Path(__file__).resolve().parents[2]


async def test_example_file_self_service_profile_and_keys() -> None:
    cfg = load_payments(REPO / "profiles.yaml", env=ENV)
    link = cfg.profiles["card-link"]
    assert link.method == "self_service" and link.link_ttl_s == 86400
    assert cfg.links.secret == "l" * 40 and cfg.link_base_url() == "http://127.0.0.1:8080"
    assert cfg.sms.sender == "outbox" and "{url}" in cfg.sms.text
    env = {k: v for k, v in ENV.items() if k != "DTMFMASK_LINK_SECRET"}
    with pytest.raises(ConfigError) as info:
        load_payments(REPO / "profiles.yaml", env=env)
    assert "payments.links.secret.env: environment variable DTMFMASK_LINK_SECRET" in str(info.value)


async def test_example_file_documents_a_working_sms_gateway() -> None:
    text = (REPO / "profiles.yaml").read_text()
    block = re.search(r"\n(    # http:\n(?:    #   .*\n)+)", text)
    assert block is not None
    lines = [line.replace("    # ", "    ", 1) for line in block.group(1).splitlines()]
    lines = [line for line in lines if not line.lstrip().startswith("#")]
    text = text.replace("sender: outbox", "sender: http").replace(
        block.group(1), "\n".join(lines) + "\n"
    )
    cfg = parse_payments(text, env=ENV)
    http = cfg.sms.http
    assert cfg.sms.sender == "http" and http is not None
    assert http.auth == "bearer" and http.secret == "s" * 20 and http.retries == 2
    assert dict(http.body) == {"to": "{to}", "from": "{sender}", "text": "{text}"}


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("links: {secret: plain-text-secret}", "secrets are never written in this file"),
        ("links: {secret: {env: SHORT}}", "too short"),
        ("links: {base_url: 'ftp://x'}", "must be an http:// or https:// URL"),
        ("links: {base_url: 'https://x/?a=1'}", "must not have a ?query"),
        ("sms: {sender: pigeon}", "payments.sms.sender"),
        ("sms: {text: 'pay {amount}'}", "must hold {url}"),
        ("sms: {text: '{url} {card}'}", "unknown placeholder {card}"),
        ("sms: {sender: http}", "sender: http needs an http: section"),
        ("sms: {http: {url: 'https://g', body: {to: '{phone}'}}}", "unknown placeholder {phone}"),
        ("sms: {http: {url: 'https://g', body: {t: '{to}'}, auth: bearer}}", "needs secret"),
        ("sms: {http: {url: 'https://g', body: {t: '{to}'}, retries: 11}}", "0-10"),
    ],
)
async def test_config_problems(yaml_text: str, problem: str) -> None:
    text = "payments:\n  " + yaml_text + "\n"
    with pytest.raises(ConfigError) as info:
        parse_payments(text, env={"SHORT": "x" * 5})
    assert problem in str(info.value)


async def test_secret_required_only_from_a_file(tmp_path: Path) -> None:
    text = (
        "payments:\n  accounts: {acme: {payments: true}}\n  profiles:\n"
        "    l: {account: acme, provider: sandbox, currency: GBP, min_amount: 1,"
        " max_amount: 9, method: self_service}\n"
    )
    assert parse_payments(text).links.secret is None  # no file: a key per process
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_payments(path)
    assert "self-service profiles need a key to sign payment links" in str(info.value)
    path.write_text(text + "  links: {secret: {env: K}, base_url: 'https://pay.example/'}\n")
    cfg = load_payments(path, env={"K": "k" * 32})
    assert cfg.link_base_url() == "https://pay.example"


async def test_storage_and_views_have_no_billing_or_phone_digits_beyond_the_resume() -> None:
    k = Kit()
    sid = k.create()
    await settle()
    rec = k.storage.session(sid)
    assert rec is not None and rec.view["billing"] is None
    assert PHONE not in json.dumps(rec.view)
    assert rec.resume is not None and rec.resume["phone"] == PHONE
    assert isinstance(BillingDetails(**rec.resume["billing"]), BillingDetails)


async def test_http_gateway_gets_the_link_and_no_card_data(logs: LogCapture) -> None:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/send", gw.handle)
    gw.server = TestServer(app)
    await gw.server.start_server()
    try:
        http = HttpSmsConfig(
            url=gw.url,
            body={"to": "{to}", "text": "{text}", "from": "{sender}"},
            secret="gw-token-" + "z" * 30,
            auth="bearer",
            sender="Acme",
            timeout_s=1,
            retries=1,
            backoff_s=0.01,
        )
        cfg = replace(config(), sms=SmsConfig("http", "Pay {amount} {currency}: {url}", http))
        k = Kit(cfg)
        sid = k.create()
        await until(lambda: k.view(sid)["sms"]["state"] == "sent")
        ((headers, body),) = gw.requests
        sent = json.loads(body)
        assert sent["to"] == PHONE and sent["from"] == "Acme"
        assert headers["Authorization"] == "Bearer " + http.secret
        m = re.fullmatch(
            r"Pay 12\.50 GBP: https://pay\.example/pay/([A-Za-z0-9_-]{44})", sent["text"]
        )
        assert m is not None, sent["text"]
        final = await k.service.page_submit(m.group(1), card())
        assert final.result == "succeeded"
        assert k.storage.outbox() == []  # the gateway sent it, not the outbox
        gw.plan = [503, 503]
        k2 = Kit(cfg)
        sid2 = k2.create("call-b")
        await until(lambda: k2.view(sid2)["state"] == "sms_failed")
        assert k2.view(sid2)["sms"]["error"] == "gateway_error"
        assert_no_leak(logs.text(), k.dump(), k2.dump(), *(b.decode() for _, b in gw.requests))
        assert http.secret not in logs.text()
    finally:
        await gw.server.close()


async def test_reload_keeps_the_per_process_link_key() -> None:
    k = Kit(make_config())
    k.create()
    await settle()
    token = k.token()
    k.service.reload(make_config(capture_s=99))
    assert k.service.page_view(token).state == "customer_active"
    k.service.reload(config())  # a configured secret replaces the random key
    with pytest.raises(LinkError):
        k.service.page_view(token)


async def test_stop_lets_a_link_in_flight_go_out_and_counts_it() -> None:
    class Slow:
        async def send(self, to: str, text: str) -> SmsResult:
            await asyncio.sleep(0.05)
            return SmsResult("sent")

    k = Kit(sms=Slow())
    sid = k.create()
    await k.service.stop()
    v = k.view(sid)
    assert (v["state"], v["sms"]["state"]) == ("link_sent", "sent")
    families = {f.name: f for f in k.service.collect()}
    assert "dtmfmask_payments_sms_total" in families
    assert list(k.service.counts.values()).count(1) >= 2 and any(
        dict(key).get("state") == "sent" for key in k.service.counts
    )


async def test_links_point_at_the_bound_api_unless_configured() -> None:
    k = Kit(make_config())
    k.service.api_bound("127.0.0.1", 45678)
    k.create()
    await settle()
    assert "http://127.0.0.1:45678/pay/" in k.storage.outbox()[-1].body
    k2 = Kit()  # links.base_url configured: it wins
    k2.service.api_bound("::1", 45678)
    assert k2.service.links.base_url == BASE
    k3 = Kit(make_config())
    k3.service.api_bound("::1", 45678)
    assert k3.service.links.base_url == "http://[::1]:45678"


async def test_a_version_1_file_gains_the_resume_column(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, account TEXT NOT "
        "NULL, profile TEXT NOT NULL, method TEXT NOT NULL, state TEXT NOT NULL, result TEXT, "
        "error TEXT, reference TEXT, amount TEXT, currency TEXT NOT NULL, last4 TEXT, "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL, version INTEGER NOT NULL, "
        "idempotency_key TEXT, view TEXT NOT NULL); PRAGMA user_version = 1;"
    )
    old.close()
    k = Kit(db=str(db))
    sid = k.create()
    await settle()
    rec = k.storage.session(sid)
    assert rec is not None and rec.resume is not None
