"""Tests for control_api.service: the guided flow through call control, every failure path
ends with the provider released and the caller retrieved, rules, idempotency, long-poll,
restart, reload, and no card data anywhere."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from control_api.connectors import SandboxConnector
from control_api.events import BillingDetails, ProcessPayment, ProviderResult, SetDetails
from control_api.profiles import ProviderConfig
from control_api.sandbox import TIMEOUT_CARD
from control_api.service import PaymentService, ServiceError
from control_api.storage import Storage
from sipproxy.yamlreader import ConfigError
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.servicekit import (
    ACME_ADMIN,
    ACME_AGENT,
    ACME_NUMBER,
    CARDS,
    CLOSED_NUMBER,
    DECLINE,
    DETAILS,
    NOBODY_NUMBER,
    OTHER_AGENT,
    OTHER_NUMBER,
    PROCESSING_ERROR,
    WALL,
    Harness,
    LogCapture,
    assert_no_leak,
    keys_for,
    logs,
    make_config,
    settle,
    until,
)

pytestmark = pytest.mark.asyncio
__all__ = ["logs"]  # the fixture, imported for this module


def after_finish(calls: FakeCallControl, call_id: str = "call-a") -> list[str]:
    """Requests from the last one that ended capture or processing onward."""
    return calls.names(call_id)


def assert_nobody_stranded(h: Harness, sid: str, result: str, error: str | None) -> None:
    v = h.view(sid)
    assert (v["state"], v["result"], v["error"]) == ("finished", result, error)
    names = h.calls.names("call-a")
    last_release = len(names) - 1 - names[::-1].index("release_provider")
    assert "retrieve" in names[last_release:], names
    assert not h.calls.held("call-a")
    assert not h.calls.capturing("call-a")
    assert v["caller_held"] is False
    rec = h.storage.session(sid)
    assert rec is not None and (rec.state, rec.result, rec.error) == ("finished", result, error)


# ---------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("pan", list(CARDS))
async def test_guided_payment_end_to_end(pan: str, logs: LogCapture) -> None:
    h = Harness()
    sid = h.create()
    v = h.view(sid)
    assert v["state"] == "provider_joining" and v["caller_held"] is True
    await settle()
    assert h.calls.names("call-a") == ["hold", "join_provider"]
    assert h.calls.joined_uris == ["sip:sandbox@127.0.0.1:5090"]
    assert h.calls.held("call-a")
    h.calls.answer_provider("call-a")
    assert h.view(sid)["state"] == "awaiting_details"
    assert h.view(sid)["provider_leg"] == "joined"
    h.service.set_details(ACME_AGENT, sid, DETAILS)
    h.service.start_capture(ACME_AGENT, sid)
    assert not h.calls.held("call-a") and h.calls.capturing("call-a")
    h.calls.press("call-a", keys_for(pan))
    v = h.view(sid)
    assert v["state"] == "ready" and v["required"] == []
    card = v["fields"][0]
    assert card["masked"].endswith(pan[-4:]) and card["masked"].startswith("*")
    h.service.process(ACME_AGENT, sid)
    await settle()
    assert_nobody_stranded(h, sid, "succeeded", None)
    assert h.view(sid)["reference"] == f"sandbox-{sid}"
    rec = h.storage.session(sid)
    assert rec is not None and rec.last4 == pan[-4:] and rec.amount == "12.50"
    actions = [e.action for e in h.storage.audit_trail(sid)]
    for expected in (
        "session_created",
        "provider_joined",
        "details_set",
        "capture_started",
        "field_updated",
        "process_requested",
        "provider_result",
        "session_finished",
    ):
        assert expected in actions
    created = h.storage.audit_trail(sid)[0]
    assert (created.actor_role, created.actor_account) == ("agent", "acme")
    # no card data in logs (raw and rendered), views, rows
    assert_no_leak(logs.text(), json.dumps(h.view(sid)), h.dump(), repr(h.service))


async def test_declined_and_error_results() -> None:
    h = Harness()
    sid = await h.to_ready(DECLINE)
    h.service.process(ACME_AGENT, sid)
    await settle()
    assert_nobody_stranded(h, sid, "declined", "card_declined")
    h.calls.hang_up("call-a")
    sid = await h.to_ready(PROCESSING_ERROR, call_id="call-a")
    h.service.process(ACME_AGENT, sid)
    await settle()
    assert_nobody_stranded(h, sid, "failed", "processing_error")


# ------------------------------------------------------------------ every failure path


@pytest.mark.parametrize(
    ("reason", "status", "error"),
    [
        ("no_answer", 480, "provider_no_answer"),
        ("busy", 486, "provider_busy"),
        ("rejected", 603, "provider_rejected"),
        ("error", None, "provider_error"),
    ],
)
async def test_provider_join_fails(reason: Any, status: int | None, error: str) -> None:
    h = Harness()
    sid = h.create()
    await settle()
    h.calls.fail_provider("call-a", reason, status)
    assert_nobody_stranded(h, sid, "failed", error)
    trail = h.storage.audit_trail(sid)
    assert any(e.action == "provider_failed" and e.detail["status"] == status for e in trail)


async def test_provider_never_answers_then_answers_late() -> None:
    h = Harness(make_config(answer_s=0.05))
    sid = h.create()
    await until(lambda: h.view(sid)["state"] == "finished")
    assert_nobody_stranded(h, sid, "failed", "provider_no_answer")
    before = h.calls.names("call-a").count("release_provider")
    h.calls.answer_provider("call-a")  # answered after we gave up: hung up again
    assert h.calls.names("call-a").count("release_provider") == before + 1


async def test_join_that_cannot_start_is_provider_error() -> None:
    h = Harness()
    h.calls.fail["join_provider"] = RuntimeError("no media ports")
    sid = h.create()
    await settle()
    assert_nobody_stranded(h, sid, "failed", "provider_error")


async def test_provider_hangs_up_mid_session() -> None:
    h = Harness()
    sid = await h.to_capturing()
    h.calls.press("call-a", "4111")
    h.calls.provider_hangs_up("call-a")
    assert_nobody_stranded(h, sid, "failed", "provider_hung_up")


@pytest.mark.parametrize(
    ("by", "error"),
    [("caller", "caller_hung_up"), ("agent", "agent_hung_up"), ("proxy", "caller_hung_up")],
)
async def test_call_ends_mid_session(by: Any, error: str) -> None:
    h = Harness()
    sid = await h.to_capturing()
    h.calls.press("call-a", "41111")
    h.calls.hang_up("call-a", by)
    v = h.view(sid)
    assert (v["state"], v["result"], v["error"]) == ("finished", "interrupted", error)
    names = h.calls.names("call-a")
    assert names[-3:] == ["stop_capture", "release_provider", "retrieve"]


async def test_call_ends_while_provider_joining() -> None:
    h = Harness()
    sid = h.create()
    await settle()
    h.calls.hang_up("call-a", "caller")
    assert h.view(sid)["error"] == "caller_hung_up"
    assert h.calls.names("call-a")[-2:] == ["release_provider", "retrieve"]


async def test_cancel() -> None:
    h = Harness()
    sid = await h.to_capturing()
    h.service.cancel(ACME_AGENT, sid)
    assert_nobody_stranded(h, sid, "cancelled", "cancelled")
    with pytest.raises(ServiceError) as info:
        h.service.cancel(ACME_AGENT, sid)
    assert (info.value.status, info.value.code) == (409, "wrong_state")


async def test_processing_timeout() -> None:
    h = Harness(make_config(processing_s=0.05))
    sid = await h.to_ready(TIMEOUT_CARD)
    h.service.process(ACME_AGENT, sid)
    assert h.view(sid)["state"] == "processing"
    await until(lambda: h.view(sid)["state"] == "finished")
    assert_nobody_stranded(h, sid, "failed", "processing_timeout")


@pytest.mark.parametrize(
    ("cfg", "stage", "error"),
    [
        ({"hold_s": 0.05}, "awaiting", "hold_timeout"),
        ({"capture_s": 0.05}, "capturing", "capture_timeout"),
    ],
)
async def test_agent_or_caller_idle(cfg: dict[str, float], stage: str, error: str) -> None:
    h = Harness(make_config(**cfg))
    if stage == "awaiting":
        sid = h.create()
        await settle()
        h.calls.answer_provider("call-a")
    else:
        sid = await h.to_capturing()
    await until(lambda: h.view(sid)["state"] == "finished")
    assert_nobody_stranded(h, sid, "failed", error)


async def test_stop_ends_live_sessions_as_restart() -> None:
    h = Harness()
    sid = await h.to_capturing()
    await h.service.stop()
    assert_nobody_stranded(h, sid, "interrupted", "process_restart")
    assert not h.service.ready


async def test_crash_then_restart_marks_live_sessions_interrupted(tmp_path: Path) -> None:
    db = str(tmp_path / "pay.sqlite3")
    h = Harness(db=db)
    sid = await h.to_capturing()
    done = await h.to_ready(call_id="call-b")
    h.service.process(ACME_AGENT, done)
    await settle()
    h.storage.close()  # the process dies: nothing more is written

    h2 = Harness(db=db)
    assert h2.storage.recovered == (sid,)
    v = h2.view(sid)
    assert (v["state"], v["result"], v["error"]) == ("finished", "interrupted", "process_restart")
    assert v["caller_held"] is False and v["provider_leg"] == "released"
    assert h2.view(done)["result"] == "succeeded"
    last = h2.storage.audit_trail(sid)[-1]
    assert (last.actor_role, last.action) == ("system", "session_finished")
    assert last.detail["error"] == "process_restart"
    # a finished record refuses actions, process stays idempotent
    with pytest.raises(ServiceError) as info:
        h2.service.cancel(ACME_AGENT, sid)
    assert info.value.status == 409
    assert h2.service.process(ACME_AGENT, done)["result"] == "succeeded"
    with pytest.raises(ServiceError) as info:
        h2.view(sid, OTHER_AGENT)
    assert info.value.status == 403


# ------------------------------------------------------ call control that raises


async def test_every_finish_runs_release_and_retrieve_even_if_call_control_raises(
    logs: LogCapture,
) -> None:
    h = Harness()
    sid = await h.to_capturing()
    h.calls.fail["stop_capture"] = RuntimeError("media gone")
    h.calls.fail["release_provider"] = OSError("socket closed")
    h.service.cancel(ACME_AGENT, sid)
    names = h.calls.names("call-a")
    assert names[-3:] == ["stop_capture", "release_provider", "retrieve"]
    assert h.view(sid)["result"] == "cancelled"
    assert any(e.get("action") == "ReleaseProviderLeg" for e in logs.raw)


async def test_retrieve_that_raises_does_not_break_the_session() -> None:
    h = Harness()
    sid = h.create()
    await settle()
    h.calls.fail["retrieve"] = RuntimeError("boom")
    h.calls.fail_provider("call-a", "busy", 486)
    assert h.view(sid)["error"] == "provider_busy"
    assert h.calls.names("call-a")[-2:] == ["release_provider", "retrieve"]


async def test_connector_that_raises_while_processing_is_processing_error(
    logs: LogCapture,
) -> None:
    class Broken(SandboxConnector):
        async def process(self, request: ProcessPayment) -> ProviderResult | None:
            raise ValueError(f"bad card {request.card.number}")  # a careless PSP library

    def factory(provider: ProviderConfig, calls: Any, **kw: Any) -> Broken:
        return Broken(provider, calls, **kw)

    h = Harness(connector_factory=factory)
    sid = await h.to_ready()
    h.service.process(ACME_AGENT, sid)
    await settle()
    assert_nobody_stranded(h, sid, "failed", "processing_error")
    assert any(e.get("error") == "ValueError" for e in logs.raw)  # the type, not the text
    assert_no_leak(logs.text(), h.dump())


async def test_late_provider_result_is_audited_for_reconciliation() -> None:
    gate = asyncio.Event()

    class Slow(SandboxConnector):
        async def process(self, request: ProcessPayment) -> ProviderResult | None:
            await gate.wait()
            return ProviderResult("approved", None, "late-ref")

    h = Harness(
        make_config(processing_s=0.05),
        connector_factory=lambda p, c, **kw: Slow(p, c, **kw),
    )
    sid = await h.to_ready()
    h.service.process(ACME_AGENT, sid)
    await until(lambda: h.view(sid)["state"] == "finished")
    assert h.view(sid)["error"] == "processing_timeout"
    gate.set()
    await until(lambda: any(e.action == "late_provider_result" for e in h.storage.audit_trail(sid)))
    assert h.view(sid)["error"] == "processing_timeout"  # the record stays as it ended


# ---------------------------------------------------------------------------- rules


async def test_one_session_per_call() -> None:
    h = Harness()
    sid = h.create()
    with pytest.raises(ServiceError) as info:
        h.create()
    assert (info.value.status, info.value.code) == (409, "session_in_progress")
    assert h.service.get_call(ACME_AGENT, "call-a")["payment"] == sid
    h.service.cancel(ACME_AGENT, sid)
    assert h.create() != sid  # a finished session does not block the next
    await settle()
    # the first was cancelled before its dial task ran: only the second dials
    assert h.calls.names("call-a").count("join_provider") == 1


async def test_calls_belong_to_accounts_by_number() -> None:
    h = Harness()
    h.calls.add_call("acme-call", called=ACME_NUMBER)
    h.calls.add_call("other-call", called=OTHER_NUMBER)
    h.calls.add_call("nobody-call", called=NOBODY_NUMBER)
    h.calls.add_call("closed-call", called=CLOSED_NUMBER)
    assert [c["id"] for c in h.service.list_calls(ACME_AGENT)] == ["acme-call"]
    assert [c["id"] for c in h.service.list_calls(OTHER_AGENT)] == ["other-call"]
    c = h.service.get_call(ACME_AGENT, "acme-call")
    assert c["interaction_type"] == "call" and c["payee"] == "Ada Lovelace"
    assert c["profiles"] == ["card", "link"] and c["payment"] is None
    for grant, call_id, status, code in [
        (ACME_AGENT, "other-call", 403, "forbidden"),
        (ACME_AGENT, "nobody-call", 404, "call_not_found"),
        (OTHER_AGENT, "nobody-call", 404, "call_not_found"),
        (ACME_AGENT, "gone", 404, "call_not_found"),
    ]:
        with pytest.raises(ServiceError) as info:
            h.service.get_call(grant, call_id)
        assert (info.value.status, info.value.code) == (status, code)
        with pytest.raises(ServiceError):
            h.service.create_payment(grant, call_id, "card")
    with pytest.raises(ServiceError) as info:
        h.service.create_payment(
            h.service.authenticate("closed-token-" + "d" * 32),  # type: ignore[arg-type]
            "closed-call",
            "closed-card",
        )
    assert (info.value.status, info.value.code) == (403, "payments_disabled")


@pytest.mark.parametrize(
    ("profile", "state", "status", "code"),
    [
        ("nope", "up", 422, "unknown_profile"),
        ("other-card", "up", 422, "unknown_profile"),
        ("card", "ringing", 409, "call_not_up"),
    ],
)
async def test_create_refusals(profile: str, state: Any, status: int, code: str) -> None:
    h = Harness()
    h.calls.add_call("call-a", called=ACME_NUMBER, state=state)
    with pytest.raises(ServiceError) as info:
        h.service.create_payment(ACME_AGENT, "call-a", profile)
    assert (info.value.status, info.value.code) == (status, code)
    assert h.calls.requests == []


async def test_session_errors_map_to_409_and_422() -> None:
    h = Harness()
    sid = h.create()
    await settle()
    with pytest.raises(ServiceError) as info:
        h.service.start_capture(ACME_AGENT, sid)  # still joining
    assert (info.value.status, info.value.code) == (409, "wrong_state")
    bad = SetDetails(Decimal("9999"), "GBP", BillingDetails("Ada"))
    with pytest.raises(ServiceError) as info:
        h.service.set_details(ACME_AGENT, sid, bad)
    assert (info.value.status, info.value.code) == (422, "amount_out_of_range")
    card_in_name = SetDetails(Decimal("5"), "GBP", BillingDetails("4111 1111 1111 1111"))
    with pytest.raises(ServiceError) as info:
        h.service.set_details(ACME_AGENT, sid, card_in_name)
    assert info.value.code == "billing_contains_card_number"
    assert_no_leak(str(info.value), h.dump())
    with pytest.raises(ServiceError) as info:
        h.service.reset_field(ACME_AGENT, sid, "pin")
    assert (info.value.status, info.value.code) == (422, "unknown_field")
    with pytest.raises(ServiceError) as info:
        h.service.cancel(OTHER_AGENT, sid)
    assert info.value.status == 403
    with pytest.raises(ServiceError) as info:
        h.service.cancel(ACME_AGENT, "pay_none")
    assert (info.value.status, info.value.code) == (404, "payment_not_found")


async def test_reset_field_and_rekey() -> None:
    h = Harness()
    sid = await h.to_ready()
    h.service.reset_field(ACME_AGENT, sid, "cvv")
    v = h.view(sid)
    assert v["state"] == "capturing" and v["required"] == ["cvv"]
    h.calls.press("call-a", "123")
    assert h.view(sid)["state"] == "ready"
    assert any(
        e.action == "field_reset" and e.detail == {"field": "cvv"}
        for e in h.storage.audit_trail(sid)
    )


# ---------------------------------------------------------------------------- idempotency


async def test_create_idempotency_key(tmp_path: Path) -> None:
    db = str(tmp_path / "pay.sqlite3")
    h = Harness(db=db)
    h.calls.add_call("call-a", called=ACME_NUMBER)
    first, created = h.service.create_payment(ACME_AGENT, "call-a", "card", "k-1")
    again, created_again = h.service.create_payment(ACME_AGENT, "call-a", "card", "k-1")
    assert created and not created_again and again["id"] == first["id"]
    assert h.calls.names("call-a").count("hold") == 1
    with pytest.raises(ServiceError) as info:
        h.service.create_payment(ACME_AGENT, "call-a", "link", "k-1")
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")
    with pytest.raises(ServiceError) as info:
        h.service.create_payment(ACME_AGENT, "call-a", "card", "k\n2")
    assert info.value.code == "bad_idempotency_key"
    # the key outlives the process
    h.storage.close()
    h2 = Harness(db=db, calls=h.calls)
    replay, created = h2.service.create_payment(ACME_AGENT, "call-a", "card", "k-1")
    assert replay["id"] == first["id"] and not created


async def test_process_is_idempotent() -> None:
    seen: list[str] = []

    class Counting(SandboxConnector):
        async def process(self, request: ProcessPayment) -> ProviderResult | None:
            seen.append(request.session_id)
            await asyncio.sleep(0.01)
            return await super().process(request)

    h = Harness(connector_factory=lambda p, c, **kw: Counting(p, c, **kw))
    sid = await h.to_ready()
    first = h.service.process(ACME_AGENT, sid)
    second = h.service.process(ACME_AGENT, sid)
    assert first["state"] == second["state"] == "processing"
    await until(lambda: h.view(sid)["state"] == "finished")
    assert h.service.process(ACME_AGENT, sid)["result"] == "succeeded"
    assert seen == [sid]
    trail = [e.action for e in h.storage.audit_trail(sid)]
    assert trail.count("process_requested") == 1


# ---------------------------------------------------------------------------- long-poll


async def test_long_poll_returns_on_change_and_waits_otherwise() -> None:
    h = Harness()
    sid = await h.to_capturing()
    version = h.view(sid)["version"]
    loop = asyncio.get_running_loop()

    start = loop.time()
    unchanged = await h.service.wait_payment(ACME_AGENT, sid, version, 0.1)
    assert unchanged["version"] == version and loop.time() - start >= 0.09

    waiter = asyncio.create_task(h.service.wait_payment(ACME_AGENT, sid, version, 10))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    start = loop.time()
    h.calls.press("call-a", "4")
    doc = await asyncio.wait_for(waiter, 1)
    assert loop.time() - start < 0.1
    assert doc["version"] > version and doc["fields"][0]["digits"] == 1
    # an old version returns at once
    stale = await h.service.wait_payment(ACME_AGENT, sid, version, 10)
    assert stale["version"] == doc["version"]


async def test_stop_wakes_long_pollers() -> None:
    h = Harness()
    sid = await h.to_capturing()
    waiter = asyncio.create_task(
        h.service.wait_payment(ACME_AGENT, sid, h.view(sid)["version"], 10)
    )
    await asyncio.sleep(0.01)
    await h.service.stop()
    doc = await asyncio.wait_for(waiter, 1)
    assert doc["error"] == "process_restart"


# ---------------------------------------------------------------------------- reload


async def test_reload_keeps_old_config_on_bad_file(tmp_path: Path) -> None:
    h = Harness()
    bad = tmp_path / "profiles.yaml"
    bad.write_text("payments:\n  accounts:\n    acme: {payments: maybe}\n")
    with pytest.raises(ConfigError) as info:
        h.service.reload_file(bad, actor=ACME_ADMIN)
    assert "profiles.yaml:3" in str(info.value)
    assert h.service.authenticate("agent-token-" + "a" * 32) == ACME_AGENT
    good = tmp_path / "good.yaml"
    good.write_text(
        "payments:\n  accounts:\n    acme:\n      payments: true\n      numbers: ['0800*']\n"
        "      tokens: [{role: agent, env: NEW_TOKEN}]\n"
    )
    cfg = h.service.reload_file(good, env={"NEW_TOKEN": "n" * 40}, actor=ACME_ADMIN)
    assert h.service.config is cfg
    assert h.service.authenticate("agent-token-" + "a" * 32) is None
    assert h.service.authenticate("n" * 40) == ACME_AGENT
    actions = [e.action for e in h.storage.audit_trail()]
    assert actions[-2:] == ["config_reload_failed", "config_reloaded"]
    again = h.service.reload_file(env={"NEW_TOKEN": "n" * 40})  # re-reads the same file
    assert again.source == str(good)
    with pytest.raises(ServiceError) as err:
        Harness().service.reload_file()  # the test config came from no file
    assert err.value.code == "no_config_file"


async def test_sessions_keep_their_profile_across_reload() -> None:
    h = Harness()
    sid = await h.to_capturing()
    h.service.reload(make_config(capture_s=999))
    h.calls.press("call-a", keys_for("4111111111111111"))
    h.service.process(ACME_AGENT, sid)
    await settle()
    assert h.view(sid)["result"] == "succeeded"


async def test_metrics_collector() -> None:
    h = Harness()
    sid = h.create()
    h.service.cancel(ACME_AGENT, sid)
    families = {f.name: f for f in h.service.collect()}
    assert "dtmfmask_payments_finished_total" in families
    assert "dtmfmask_payments_live" in families


async def test_storage_wall_times_and_no_billing_kept() -> None:
    h = Harness()
    sid = await h.to_capturing()
    rec = h.storage.session(sid)
    assert rec is not None and rec.created_at == WALL and rec.view["billing"] is None
    assert "Baker" not in h.dump()
    assert isinstance(h.service, PaymentService) and isinstance(h.storage, Storage)
