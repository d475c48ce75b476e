"""Tests for control_api.storage: schema and WAL, session rows, idempotency keys, audit,
restart recovery, and the last-guard scrub of long digit runs."""

from __future__ import annotations

import sqlite3
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from control_api.events import (
    BillingDetails,
    KeyPressed,
    Proceed,
    ProviderAnswered,
    SetDetails,
    StartCapture,
)
from control_api.profiles import PaymentProfile, ProviderConfig
from control_api.session import PaymentSession
from control_api.storage import AuditEntry, SessionRecord, Storage

PROFILE = PaymentProfile("card", "acme", "sandbox", "GBP", Decimal("1"), Decimal("100"))
PROVIDER = ProviderConfig("sandbox")


def record(
    sid: str = "pay_a", *, state_to: str = "capturing", key: str | None = None
) -> SessionRecord:
    s = PaymentSession(sid, "call-a", PROFILE, PROVIDER, today=date(2026, 1, 1), now=0.0)
    if state_to != "created":
        s.handle(Proceed(), 1)
        s.handle(ProviderAnswered(), 2)
        s.handle(SetDetails(Decimal("5.00"), "GBP", BillingDetails("Ada", "1 Main St")), 3)
        s.handle(StartCapture(), 4)
    if state_to == "card":
        for k in "4111111111111111#":
            s.handle(KeyPressed(k), 5)
    return SessionRecord.from_view(
        s.view(), account="acme", created_at=10.0, updated_at=11.0, idempotency_key=key
    )


def test_file_uses_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pay.sqlite3"
    st = Storage(path, now=1.0)
    assert path.exists() and st.recovered == ()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (
        db.execute("PRAGMA user_version").fetchone()[0] == 2
    )  # 2: self-service resume, links, sms_outbox
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "audit"} <= tables
    assert st.ping()
    st.close()
    assert not st.ping()


def test_session_rows_round_trip_without_billing() -> None:
    st = Storage(":memory:", now=1.0)
    rec = record()
    st.insert_session(rec)
    got = st.session("pay_a")
    assert got is not None and got.state == "capturing" and got.amount == "5.00"
    assert got.view["billing"] is None and got.view["state"] == "capturing"
    assert "Main St" not in "\n".join(repr(r) for _, r in st.dump())
    later = record(state_to="card")
    st.update_session(later)
    got = st.session("pay_a")
    assert got is not None and got.last4 == "1111" and got.version == later.version
    assert got.created_at == 10.0  # creation time stays
    assert st.session("pay_none") is None
    assert [r.id for r in st.sessions()] == ["pay_a"]


def test_idempotency_keys_are_per_account() -> None:
    st = Storage(":memory:", now=1.0)
    st.insert_session(record("pay_a", key="k"))
    with pytest.raises(sqlite3.IntegrityError):
        st.insert_session(record("pay_b", key="k"))
    st.insert_session(record("pay_c", key=None))
    st.insert_session(record("pay_d", key=None))  # no key: no constraint
    found = st.session_by_key("acme", "k")
    assert found is not None and found.id == "pay_a"
    assert st.session_by_key("other", "k") is None


def test_restart_marks_live_sessions_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "pay.sqlite3"
    st = Storage(path, now=1.0)
    st.insert_session(record("pay_live"))
    done = record("pay_done")
    st.insert_session(
        SessionRecord(
            **{
                **{f: getattr(done, f) for f in SessionRecord.__dataclass_fields__},
                "state": "finished",
                "result": "succeeded",
            }
        )
    )
    st.close()
    st = Storage(path, now=99.0)
    assert st.recovered == ("pay_live",)
    live = st.session("pay_live")
    assert live is not None
    assert (live.state, live.result, live.error) == ("finished", "interrupted", "process_restart")
    assert live.view["state"] == "finished" and live.view["caller_held"] is False
    assert live.view["provider_leg"] == "released" and live.updated_at == 99.0
    assert live.version == record().version + 1
    done_rec = st.session("pay_done")
    assert done_rec is not None and done_rec.result == "succeeded"
    (row,) = st.audit_trail("pay_live")
    assert (row.actor_role, row.action, row.detail["was"]) == (
        "system",
        "session_finished",
        "capturing",
    )
    st.close()
    assert Storage(path, now=100.0).recovered == ()  # once only


def test_audit_rows_and_the_last_guard() -> None:
    st = Storage(":memory:", now=1.0)
    st.audit(AuditEntry(5.0, "agent", "acme", "pay_a", "call-a", "details_set", {"amount": "5"}))
    st.audit(
        AuditEntry(
            6.0, "system", None, "pay_a", "call-a", "oops", {"note": "card 4111 1111 1111 1111"}
        )
    )
    rows = st.audit_trail()
    assert [r.action for r in rows] == ["details_set", "oops"]
    assert rows[0].detail == {"amount": "5"} and rows[0].actor_account == "acme"
    assert rows[1].detail == {"note": "card [REDACTED]"}
    rec = record()
    rec.view["reference"] = "ref-5555555555554444"
    st.insert_session(rec)
    blob = "\n".join(repr(r) for _, r in st.dump())
    assert "5555555555554444" not in blob and "4111" not in blob
    assert st.audit_trail("pay_b") == []
