"""Shared pieces for the payment service and API tests: config, test cards, a harness, the
leak scan and log capture."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import date
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
import structlog

from control_api.cards import max_pan_length, validate_pan
from control_api.events import BillingDetails, FieldName, SetDetails
from control_api.profiles import (
    Account,
    ApiToken,
    PaymentProfile,
    PaymentsConfig,
    ProviderConfig,
    TokenGrant,
    hash_token,
)
from control_api.sandbox import TIMEOUT_CARD
from control_api.service import PaymentService
from control_api.storage import Storage
from sipproxy.logsetup import configure_logging
from tests.control_api.callfakes import FakeCallControl

TODAY = date(2026, 1, 15)
WALL = 1_765_432_198.25  # no 6-digit window of a test card, no expiry or CVV in it
AGENT = "agent-token-" + "a" * 32
ADMIN = "admin-token-" + "b" * 32
OTHER = "other-token-" + "c" * 32
CLOSED = "closed-token-" + "d" * 32
ACME_AGENT = TokenGrant("acme", "agent")
ACME_ADMIN = TokenGrant("acme", "admin")
OTHER_AGENT = TokenGrant("other", "agent")
ACME_NUMBER = "0800100200"
OTHER_NUMBER = "0900300400"
CLOSED_NUMBER = "0700500600"
NOBODY_NUMBER = "0111222333"

# test cards (control_api/sandbox.py) with the expiries and CVVs keyed here; none of these
# may appear in any log line, response, header, row or exception text
CARDS = {
    "4111111111111111": ("0829", "739"),
    "5555555555554444": ("1131", "846"),
    "378282246310005": ("0927", "6153"),
    "6011111111111117": ("0330", "952"),
}
DECLINE = "4000000000000002"
PROCESSING_ERROR = "4000000000000119"
POSTAL = "94107"
SPECIAL = {
    DECLINE: ("0728", "318"),
    PROCESSING_ERROR: ("0628", "427"),
    TIMEOUT_CARD: ("0528", "683"),
}
ALL_CARDS = {**CARDS, **SPECIAL}
DETAILS = SetDetails(Decimal("12.50"), "GBP", BillingDetails("Ada Lovelace", "12 Baker St"))


def secrets(cards: Mapping[str, tuple[str, str]] = ALL_CARDS) -> list[str]:
    """Everything that would be a leak: any 6-digit window of a PAN, expiries, CVVs, the
    postal code."""
    out = [POSTAL]
    for pan, (exp, cvv) in cards.items():
        out += [exp, cvv]
        out += [pan[i : i + 6] for i in range(len(pan) - 5)]
    return out


def assert_no_leak(*texts: str, cards: Mapping[str, tuple[str, str]] = ALL_CARDS) -> None:
    """No secret of ``cards`` (by default every test card) in ``texts``."""
    blob = "\n".join(texts)
    for secret in secrets(cards):
        at = blob.find(secret)
        where = blob[max(0, at - 60) : at].replace(secret, "#") if at >= 0 else ""
        assert at < 0, f"card data leaked: {len(secret)} digits found after {where!r}"


def keys_for(pan: str) -> str:
    """What the caller keys for ``pan``: the number (``#`` if shorter than the brand's
    longest), expiry, CVV, postal code and ``#``."""
    exp, cvv = ALL_CARDS[pan]
    end = "#" if len(pan) < max_pan_length(validate_pan(pan)) else ""
    return pan + end + exp + cvv + POSTAL + "#"


def make_config(
    *,
    answer_s: float = 30.0,
    processing_s: float = 30.0,
    hold_s: float = 300.0,
    capture_s: float = 120.0,
) -> PaymentsConfig:
    provider = ProviderConfig(
        "sandbox", "sandbox", "sip:sandbox@127.0.0.1:5090", answer_s, processing_s
    )
    card = PaymentProfile(
        name="card",
        account="acme",
        provider="sandbox",
        currency="GBP",
        min_amount=Decimal("1.00"),
        max_amount=Decimal("500.00"),
        fields=(FieldName.CARD_NUMBER, FieldName.EXPIRY, FieldName.CVV, FieldName.POSTAL_CODE),
        hold_timeout_s=hold_s,
        capture_timeout_s=capture_s,
    )
    accounts = {
        "acme": Account(
            "acme",
            "Acme",
            True,
            (ApiToken("agent", hash_token(AGENT)), ApiToken("admin", hash_token(ADMIN))),
            ("0800100*",),
        ),
        "other": Account(
            "other", "Other", True, (ApiToken("agent", hash_token(OTHER)),), ("0900*",)
        ),
        "closed": Account(
            "closed", "Closed", False, (ApiToken("agent", hash_token(CLOSED)),), ("0700*",)
        ),
    }
    profiles = {
        "card": card,
        "link": replace(card, name="link", method="self_service"),
        "other-card": replace(card, name="other-card", account="other"),
        "closed-card": replace(card, name="closed-card", account="closed"),
    }
    return PaymentsConfig(accounts, {"sandbox": provider}, profiles, source="<test>")


def letters(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = "abcdefghijklmnopqrstuvwxyz"[r] + out
        if n == 0:
            return out


class Harness:
    """A started service on a fake call control and an in-memory (or given) database."""

    def __init__(
        self,
        config: PaymentsConfig | None = None,
        *,
        db: str = ":memory:",
        calls: FakeCallControl | None = None,
        **kwargs: Any,
    ) -> None:
        self.calls = calls or FakeCallControl()
        self.storage = Storage(db, now=WALL)
        ids = count()
        self.service = PaymentService(
            config or make_config(),
            self.calls,
            self.storage,
            today=lambda: TODAY,
            wall=lambda: WALL,
            new_id=lambda: "pay_" + letters(next(ids)),
            **kwargs,
        )
        self.service.start()

    def create(
        self, call_id: str = "call-a", *, grant: TokenGrant = ACME_AGENT, key: str | None = None
    ) -> str:
        if self.calls.call(call_id) is None:
            self.calls.add_call(call_id, called=ACME_NUMBER)
        doc, _ = self.service.create_payment(grant, call_id, "card", key)
        return str(doc["id"])

    def view(self, sid: str, grant: TokenGrant = ACME_AGENT) -> dict[str, Any]:
        return self.service.get_payment(grant, sid)

    async def to_capturing(self, call_id: str = "call-a") -> str:
        sid = self.create(call_id)
        await settle()
        self.calls.answer_provider(call_id)
        self.service.set_details(ACME_AGENT, sid, DETAILS)
        self.service.start_capture(ACME_AGENT, sid)
        return sid

    async def to_ready(self, pan: str = "4111111111111111", call_id: str = "call-a") -> str:
        sid = await self.to_capturing(call_id)
        self.calls.press(call_id, keys_for(pan))
        assert self.view(sid)["state"] == "ready", self.view(sid)
        return sid

    def dump(self) -> str:
        return "\n".join(f"{table}: {row!r}" for table, row in self.storage.dump())


async def settle(rounds: int = 5) -> None:
    """Let spawned tasks (provider join, processing) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


class LogCapture:
    """Every log line rendered through sipproxy.logsetup's chain (JSON), and every raw
    event before redaction (so a test proves nothing relies on the redactor)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.raw: list[dict[str, Any]] = []

    def record(self, logger: Any, method: str, event: Any) -> Any:
        self.raw.append(dict(event))
        return event

    def text(self) -> str:
        rendered = re.sub(r'"timestamp": ?"[^"]*"', "", self.stream.getvalue())
        raw = "\n".join(json.dumps(e, default=repr) for e in self.raw)
        return rendered + "\n" + raw


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    cap = LogCapture()
    handler = configure_logging(fmt="json", level="DEBUG", stream=cap.stream)
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[cap.record, *processors], cache_logger_on_first_use=False)
    yield cap
    root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
