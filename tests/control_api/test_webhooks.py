"""Tests for control_api.webhooks against a real aiohttp receiver on 127.0.0.1: delivery
and signature, retries (5xx, 429 with Retry-After, timeouts, refused connections), giving up
(audited, counted), 4xx not retried, coalescing and the bounded queue, order per session,
shutdown, reload, the ``webhook:`` config keys, and a whole payment through the service
whose webhook bodies hold no card data."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import socket
import textwrap
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from control_api.profiles import Account, PaymentsConfig, WebhookConfig, parse_payments
from control_api.webhooks import (
    EVENT_FINISHED,
    EVENT_UPDATED,
    WebhookSender,
    retry_after_s,
    sign,
    verify,
)
from sipproxy.config import ConfigError
from tests.control_api.servicekit import (
    ACME_AGENT,
    CARDS,
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

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec-" + "k" * 40
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


# ------------------------------------------------------------------------------ receiver


@dataclass
class Got:
    """One request as the receiver saw it."""

    at: float
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]
    valid: bool
    status: int = 0


class Receiver:
    """A webhook receiver: checks every signature itself (not with the module's helper),
    answers per :attr:`plan` (``ok``, a status such as ``500``, ``429:<Retry-After>``,
    ``sleep:<s>``, ``gate``: wait for :attr:`gate`), records every request."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.plan: deque[str] = deque()
        self.got: list[Got] = []
        self.gate = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight_per_session = 0
        self.url = ""

    @property
    def accepted(self) -> list[Got]:
        return [g for g in self.got if 200 <= g.status < 300]

    def versions(self, sid: str, *, accepted: bool = True) -> list[int]:
        items = self.accepted if accepted else self.got
        return [g.body["version"] for g in items if g.body["id"] == sid]

    def _valid(self, headers: Any, raw: bytes) -> bool:
        ts = headers.get("X-Dtmfmask-Timestamp", "")
        sig = headers.get("X-Dtmfmask-Signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return False
        mac = hmac.new(self.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256)
        return hmac.compare_digest(sig, "v1=" + mac.hexdigest())

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        got = Got(
            time.monotonic(), dict(request.headers), raw, body, self._valid(request.headers, raw)
        )
        self.got.append(got)
        sid = body["id"]
        self.in_flight[sid] = self.in_flight.get(sid, 0) + 1
        self.max_in_flight_per_session = max(self.max_in_flight_per_session, self.in_flight[sid])
        try:
            if not got.valid:
                got.status = 401
                return web.Response(status=401)
            action = self.plan.popleft() if self.plan else "ok"
            headers = {}
            if action == "gate":
                await self.gate.wait()
                action = "ok"
            if action.startswith("sleep:"):
                await asyncio.sleep(float(action.split(":")[1]))
                action = "ok"
            if action.startswith("429:"):
                headers["Retry-After"] = action.split(":", 1)[1]
                action = "429"
            got.status = 204 if action == "ok" else int(action)
            return web.Response(status=got.status, headers=headers)
        finally:
            self.in_flight[sid] -= 1


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    r.url = f"http://127.0.0.1:{port}/hook"
    yield r
    r.gate.set()
    await runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# ------------------------------------------------------------------------------ helpers


def fast_sender(**kwargs: Any) -> WebhookSender:
    opts: dict[str, Any] = {
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.04,
        "grace_s": 0.3,
        **kwargs,
    }
    return WebhookSender(**opts)


def hook(url: str, **kwargs: Any) -> WebhookConfig:
    return WebhookConfig(url, SECRET, **{"timeout_s": 2.0, **kwargs})


def accounts(config: WebhookConfig | None) -> dict[str, Account]:
    return {
        "acme": Account("acme", "Acme", True, webhook=config),
        "other": Account("other", "Other", True),
    }


def make_sender(
    url: str, *, audits: list[tuple[Any, ...]] | None = None, **kwargs: Any
) -> WebhookSender:
    hook_opts = {k: kwargs.pop(k) for k in ("timeout_s", "max_attempts", "events") if k in kwargs}
    sender = fast_sender(**kwargs)
    sender.configure(accounts(hook(url, **hook_opts)))
    if audits is not None:
        sender.audit = lambda *a: audits.append(a)
    return sender


def view(sid: str, version: int, state: str = "capturing") -> dict[str, Any]:
    return {
        "id": sid,
        "call_id": f"call-{sid}",
        "profile": "card",
        "method": "guided",
        "state": state,
        "fields": [{"name": "card_number", "state": "capturing", "digits": version,
                    "masked": "*" * version, "brand": None, "valid": None}],
        "required": ["card_number"],
        "result": "succeeded" if state == "finished" else None,
        "error": None,
        "reference": None,
        "amount": "12.50",
        "currency": "GBP",
        "billing": None,
        "caller_held": False,
        "provider_leg": "joined",
        "version": version,
    }  # fmt: skip


def with_webhook(config: PaymentsConfig, hook_config: WebhookConfig | None) -> PaymentsConfig:
    accts = dict(config.accounts)
    accts["acme"] = replace(accts["acme"], webhook=hook_config)
    return replace(config, accounts=accts)


# ------------------------------------------------------------------- delivery, signature


async def test_delivery_and_signature(receiver: Receiver) -> None:
    sender = make_sender(receiver.url)
    before = int(time.time())
    sender.notify("acme", view("pay_a", 1))
    sender.notify("other", view("pay_o", 1))  # no webhook: nothing
    await sender.idle()
    sender.notify("acme", view("pay_a", 2, "finished"))
    await sender.idle()
    assert [g.status for g in receiver.got] == [204, 204]
    first, second = receiver.got
    assert first.valid and second.valid
    assert first.raw == json.dumps(view("pay_a", 1)).encode()  # the GET body, byte for byte
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["X-Dtmfmask-Event"] == EVENT_UPDATED
    assert second.headers["X-Dtmfmask-Event"] == EVENT_FINISHED
    ids = {g.headers["X-Dtmfmask-Delivery"] for g in receiver.got}
    assert len(ids) == 2 and all(UUID_RE.match(i) for i in ids)
    ts = int(first.headers["X-Dtmfmask-Timestamp"])
    assert before <= ts <= time.time() + 1
    assert first.headers["X-Dtmfmask-Signature"] == sign(SECRET, ts, first.raw)
    # the receiver's helper: good, tampered, replayed late, wrong secret, two signatures
    sig = first.headers["X-Dtmfmask-Signature"]
    assert verify(SECRET, first.raw, str(ts), sig)
    assert not verify(SECRET, first.raw + b" ", str(ts), sig)
    assert not verify(SECRET, first.raw, str(ts), sig, now=ts + 301)
    assert not verify(SECRET, first.raw, str(ts + 1), sig)
    assert not verify("x" * 40, first.raw, str(ts), sig)
    assert not verify(SECRET, first.raw, None, sig)
    assert verify(SECRET, first.raw, str(ts), f"v1=00, {sig}")
    assert sender.count("delivered", "acme") == 2
    assert sender.count("retried", "acme") == sender.count("failed", "acme") == 0
    assert "other" not in repr(sender)
    await sender.stop()


async def test_events_finished_only(receiver: Receiver) -> None:
    sender = make_sender(receiver.url, events="finished")
    for v in (1, 2, 3):
        sender.notify("acme", view("pay_a", v))
    sender.notify("acme", view("pay_a", 4, "finished"))
    await sender.idle()
    assert receiver.versions("pay_a") == [4]
    assert receiver.got[0].headers["X-Dtmfmask-Event"] == EVENT_FINISHED
    await sender.stop()


# ------------------------------------------------------------------------------ retries


async def test_retries_then_success(receiver: Receiver) -> None:
    receiver.plan.extend(["500", "503", "sleep:0.6", "ok"])
    sender = make_sender(receiver.url, timeout_s=0.2)
    sender.notify("acme", view("pay_a", 1))
    await sender.idle()
    assert len(receiver.got) == 4 and all(g.valid for g in receiver.got)
    assert len({g.headers["X-Dtmfmask-Delivery"] for g in receiver.got}) == 1  # one delivery
    assert receiver.versions("pay_a") == [1]
    assert sender.count("retried", "acme") == 3
    assert sender.count("delivered", "acme") == 1
    assert sender.count("failed", "acme") == 0
    await sender.stop()


async def test_429_honours_retry_after(receiver: Receiver) -> None:
    receiver.plan.extend(["429:1", "ok"])
    sender = make_sender(receiver.url)
    sender.notify("acme", view("pay_a", 1))
    await sender.idle()
    assert [g.status for g in receiver.got] == [429, 204]
    assert receiver.got[1].at - receiver.got[0].at >= 0.95  # not the 10 ms backoff
    assert sender.count("retried", "acme") == 1


async def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s("Tue, 14 Nov 2023 22:13:30 GMT", now) == pytest.approx(10.0)
    assert retry_after_s("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # past
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


async def test_gives_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.plan.extend(["500"] * 10)
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(receiver.url, audits=audits, max_attempts=3)
    sender.notify("acme", view("pay_a", 1))
    await sender.idle()
    assert [g.status for g in receiver.got] == [500, 500, 500]
    assert sender.count("retried", "acme") == 2
    assert sender.count("failed", "acme") == 1
    assert sender.count("delivered", "acme") == 0
    ((sid, call_id, action, detail),) = audits
    assert (sid, call_id, action) == ("pay_a", "call-pay_a", "webhook_failed")
    assert detail["attempts"] == 3 and detail["status"] == 500
    assert detail["host"] == "127.0.0.1" and detail["event"] == EVENT_UPDATED
    assert SECRET not in json.dumps(audits)
    await sender.stop()


async def test_refused_connection_is_retried_then_given_up() -> None:
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(closed_port_url(), audits=audits, max_attempts=2)
    sender.notify("acme", view("pay_a", 1, "finished"))
    await sender.idle()
    assert sender.count("retried", "acme") == 1
    assert sender.count("failed", "acme") == 1
    ((_, _, action, detail),) = audits
    assert action == "webhook_failed" and detail["status"] is None
    assert "Connect" in detail["error"] and detail["event"] == EVENT_FINISHED
    await sender.stop()


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
async def test_4xx_is_not_retried(receiver: Receiver, status: int) -> None:
    receiver.plan.append(str(status))
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(receiver.url, audits=audits)
    sender.notify("acme", view("pay_a", 1))
    await sender.idle()
    assert [g.status for g in receiver.got] == [status]
    assert sender.count("retried", "acme") == 0
    assert sender.count("failed", "acme") == 1
    assert audits[0][2] == "webhook_failed" and audits[0][3]["attempts"] == 1
    await sender.stop()


# ------------------------------------------------------------------- coalescing, bounds


async def test_coalescing_and_the_bounded_queue(receiver: Receiver) -> None:
    receiver.plan.append("gate")
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(receiver.url, audits=audits, concurrency=1, max_pending=2)
    sender.notify("acme", view("pay_z", 1))  # in flight, held at the gate
    await until(lambda: len(receiver.got) == 1)
    for v in (1, 2, 3):
        sender.notify("acme", view("pay_a", v))
    sender.notify("acme", view("pay_a", 4, "finished"))  # replaces v3: still one item
    sender.notify("acme", view("pay_a", 2))  # an older version never replaces a newer one
    assert sender.pending("acme") == 1 and sender.count("coalesced", "acme") == 3
    sender.notify("acme", view("pay_b", 1))  # [a(fin), b]
    sender.notify("acme", view("pay_c", 1))  # full: b dropped -> [a, c]
    sender.notify("acme", view("pay_d", 1, "finished"))  # c dropped -> [a, d]
    sender.notify("acme", view("pay_e", 1, "finished"))  # all finished: kept -> [a, d, e]
    sender.notify("acme", view("pay_f", 1))  # all finished: the update is dropped
    assert sender.pending("acme") == 3
    assert sender.count("dropped", "acme", reason="queue_full") == 3
    assert audits == []  # no finished was dropped
    families = {f.name: f for f in sender.collect()}
    assert families["dtmfmask_webhooks_pending"].samples[0].value == 3
    receiver.gate.set()
    await sender.idle()
    order = [(g.body["id"], g.body["version"]) for g in receiver.accepted]
    assert order == [("pay_z", 1), ("pay_a", 4), ("pay_d", 1), ("pay_e", 1)]
    await sender.stop()


async def test_finished_dropped_only_past_the_hard_bound(receiver: Receiver) -> None:
    receiver.plan.append("gate")
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(receiver.url, audits=audits, concurrency=1, max_pending=1,
                   max_pending_finished=2)  # fmt: skip
    sender.notify("acme", view("pay_z", 1))
    await until(lambda: len(receiver.got) == 1)
    for sid in ("pay_a", "pay_b", "pay_c"):
        sender.notify("acme", view(sid, 5, "finished"))
    assert sender.pending("acme") == 2
    ((sid, _, action, detail),) = audits
    assert (sid, action, detail["reason"]) == ("pay_a", "webhook_dropped", "queue_full")
    receiver.gate.set()
    await sender.idle()
    assert [g.body["id"] for g in receiver.accepted] == ["pay_z", "pay_b", "pay_c"]
    await sender.stop()


async def test_a_retry_gives_way_to_a_newer_version(receiver: Receiver) -> None:
    receiver.plan.append("500")
    sender = make_sender(receiver.url, backoff_base_s=0.3, backoff_max_s=0.3, jitter=lambda: 1.0)
    sender.notify("acme", view("pay_a", 1))
    await until(lambda: len(receiver.got) == 1)
    await asyncio.sleep(0.05)  # v1 now waits out its backoff
    sender.notify("acme", view("pay_a", 2))
    await sender.idle()
    assert receiver.versions("pay_a", accepted=False) == [1, 2]
    assert receiver.versions("pay_a") == [2]
    assert sender.count("coalesced", "acme") == 1 and sender.count("failed", "acme") == 0
    await sender.stop()


async def test_order_per_session(receiver: Receiver) -> None:
    rng = random.Random(4)
    receiver.plan.extend(rng.choice(["ok", "ok", "500", "sleep:0.01", "429:0"]) for _ in range(400))
    sender = make_sender(receiver.url, concurrency=4, max_attempts=20)
    sessions = [f"pay_{c}" for c in "abcdef"]
    last: dict[str, int] = {}
    for v in range(1, 13):
        for sid in sessions:
            state = "finished" if v == 12 else "capturing"
            sender.notify("acme", view(sid, v, state))
            last[sid] = v
        await asyncio.sleep(rng.choice([0, 0.002, 0.01]))
    await sender.idle()
    assert receiver.max_in_flight_per_session == 1
    for sid in sessions:
        sent = receiver.versions(sid, accepted=False)
        assert sent == sorted(sent), (sid, sent)  # retries repeat, never go back
        ok = receiver.versions(sid)
        assert ok == sorted(set(ok)) and ok[-1] == last[sid], (sid, ok)
    assert sender.count("failed", "acme") == 0
    assert sender.count("delivered", "acme") == len(receiver.accepted)
    await sender.stop()


# ----------------------------------------------------------------------- shutdown, reload


async def test_stop_delivers_within_grace(receiver: Receiver) -> None:
    sender = make_sender(receiver.url)
    for sid in ("pay_a", "pay_b", "pay_c"):
        sender.notify("acme", view(sid, 1))
    t0 = time.monotonic()
    await sender.stop(grace_s=5.0)  # returns as soon as they are out
    assert time.monotonic() - t0 < 4.0
    assert len(receiver.accepted) == 3
    assert sender.count("dropped", "acme") == 0


async def test_stop_drops_what_the_grace_does_not_cover(receiver: Receiver) -> None:
    receiver.plan.append("gate")
    audits: list[tuple[Any, ...]] = []
    sender = make_sender(receiver.url, audits=audits, concurrency=1)
    sender.notify("acme", view("pay_a", 1))  # in flight, never answered
    await until(lambda: len(receiver.got) == 1)
    sender.notify("acme", view("pay_b", 3, "finished"))
    sender.notify("acme", view("pay_c", 1))
    t0 = time.monotonic()
    await sender.stop(grace_s=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2.0
    assert sender.count("dropped", "acme", reason="shutdown") == 3
    assert [(a[0], a[2]) for a in audits] == [("pay_b", "webhook_dropped")]
    sender.notify("acme", view("pay_d", 1))  # after stop: counted, not sent
    assert sender.count("dropped", "acme", reason="shutdown") == 4
    assert sender.pending() == 0


async def test_reload_removes_and_changes_webhooks(receiver: Receiver) -> None:
    receiver.plan.append("gate")
    sender = make_sender(receiver.url, concurrency=1)
    sender.notify("acme", view("pay_a", 1))
    await until(lambda: len(receiver.got) == 1)
    sender.notify("acme", view("pay_b", 1))
    sender.configure(accounts(None))  # webhook removed: the waiting one goes
    assert sender.count("dropped", "acme", reason="unconfigured") == 1
    assert not sender.enabled_for("acme")
    sender.notify("acme", view("pay_c", 1))  # not configured: ignored
    receiver.gate.set()
    await sender.idle()
    assert [g.body["id"] for g in receiver.got] == ["pay_a"]
    # back, with another secret: the receiver refuses it (401: final)
    sender.configure(accounts(WebhookConfig(receiver.url, "n" * 40)))
    sender.notify("acme", view("pay_d", 1))
    await sender.idle()
    assert receiver.got[-1].status == 401 and sender.count("failed", "acme") == 1
    await sender.stop()


# ---------------------------------------------------------------------- the whole service


async def test_whole_payment_webhooks_carry_no_card_data(
    receiver: Receiver, logs: LogCapture
) -> None:
    config = with_webhook(make_config(), hook(receiver.url))
    bodies: list[str] = []
    for n, pan in enumerate(list(CARDS)[:2]):
        h = Harness(config, webhooks=fast_sender())
        call_id = f"call-{n}"
        sid = await h.to_capturing(call_id)
        for key in keys_for(pan):  # one at a time, so every step goes out uncoalesced
            h.calls.press(call_id, key)
            await h.service.webhooks.idle()
        assert h.view(sid)["state"] == "ready"
        h.service.process(ACME_AGENT, sid)
        await settle()
        await h.service.webhooks.idle()
        mine = [g for g in receiver.accepted if g.body["call_id"] == call_id]
        versions = [g.body["version"] for g in mine]
        assert versions == sorted(set(versions)) and len(versions) > 20
        assert mine[-1].body == h.view(sid)  # the poll's body
        assert mine[-1].headers["X-Dtmfmask-Event"] == EVENT_FINISHED
        assert mine[-1].body["result"] == "succeeded"
        assert all(g.valid for g in mine)
        assert {g.body["state"] for g in mine} >= {"capturing", "ready", "finished"}
        await h.service.stop()
        # the headers that carry data (not the random hex of the signature, the delivery
        # id and the clock: any 3-digit CVV turns up in those by chance)
        plain = ("Content-Type", "X-Dtmfmask-Event", "Content-Length", "User-Agent")
        bodies += [g.raw.decode() + repr([g.headers.get(k) for k in plain]) for g in mine]
    assert_no_leak(*bodies, logs.text())


async def test_service_audits_counts_and_reloads(receiver: Receiver) -> None:
    receiver.plan.extend(["500"] * 50)
    h = Harness(make_config(), webhooks=fast_sender())
    sid = h.create()
    await settle()
    assert not h.service.webhooks.enabled_for("acme")
    h.service.reload(with_webhook(make_config(), hook(receiver.url, max_attempts=2)))
    assert h.service.webhooks.enabled_for("acme")
    h.service.cancel(ACME_AGENT, sid)
    await h.service.webhooks.idle()
    assert receiver.got and {g.body["id"] for g in receiver.got} == {sid}
    failed = [e for e in h.storage.audit_trail(sid) if e.action == "webhook_failed"]
    assert failed and failed[-1].detail["status"] == 500 and failed[-1].actor_role == "system"
    assert failed[-1].detail["event"] == EVENT_FINISHED
    families = {f.name: f for f in h.service.collect()}
    fam = families["dtmfmask_webhooks_failed_total"]
    assert [(dict(s.labels), s.value) for s in fam.samples] == [({"account": "acme"}, len(failed))]
    for name in ("delivered", "retried", "dropped", "coalesced"):
        assert f"dtmfmask_webhooks_{name}_total" in families
    await h.service.stop()


async def test_service_stop_gives_last_updates_the_grace(receiver: Receiver) -> None:
    config = with_webhook(make_config(), hook(receiver.url, events="finished"))
    h = Harness(config, webhooks=fast_sender())
    sid = await h.to_capturing()
    await h.service.stop()  # the session ends interrupted; its webhook still goes out
    (got,) = receiver.accepted
    assert got.body["id"] == sid and got.body["result"] == "interrupted"
    assert got.body["error"] == "process_restart"


# ------------------------------------------------------------------------------- config

ENV = {"ACME_AGENT": "agent-token-" + "a" * 32, "ACME_HOOK": SECRET, "SHORT": "s" * 31}

BASE = """
payments:
  accounts:
    acme:
      payments: true
      tokens:
        - {role: agent, env: ACME_AGENT}
      webhook:
        url: https://hooks.example.com/dtmfmask?tenant=acme
        secret: {env: ACME_HOOK}
WEBHOOK
  providers:
    sandbox: {type: sandbox}
"""


def parse(extra: str = "", *, base: str = BASE) -> PaymentsConfig:
    text = textwrap.dedent(base).replace("WEBHOOK\n", extra)
    return parse_payments(text.lstrip("\n"), filename="profiles.yaml", env=ENV)


def errors(extra: str = "", *, base: str = BASE) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(extra, base=base)
    return str(info.value).splitlines()


async def test_config_defaults_and_keys() -> None:
    hook_config = parse().accounts["acme"].webhook
    assert hook_config == WebhookConfig(
        "https://hooks.example.com/dtmfmask?tenant=acme", SECRET, 5.0, 6, "all"
    )
    assert SECRET not in repr(hook_config)
    extra = "        timeout_s: 2.5\n        max_attempts: 3\n        events: finished\n"
    hook_config = parse(extra).accounts["acme"].webhook
    assert hook_config is not None
    assert (hook_config.timeout_s, hook_config.max_attempts, hook_config.events) == (
        2.5,
        3,
        "finished",
    )
    no_hook = (
        BASE.replace("      webhook:\n", "")
        .replace("        url", "#")
        .replace("        secret", "#")
    )
    assert parse(base=no_hook).accounts["acme"].webhook is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: ftp://h/x",
         "profiles.yaml:8:14: payments.accounts.acme.webhook.url: must be an http:// or "
         "https:// URL, got 'ftp://h/x'"),
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: https://u:p@h/x",
         "webhook.url: must not hold credentials"),
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: http:///x",
         "webhook.url: must name a host"),
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: http://h:99999/",
         "webhook.url: must be an http:// or https:// URL with a valid host and port"),
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: 'http://h/a b'",
         "webhook.url: must be a URL without spaces"),
        ("url: https://hooks.example.com/dtmfmask?tenant=acme", "url: 5",
         "webhook.url: must be an http:// or https:// URL, got 5"),
        ("secret: {env: ACME_HOOK}", "secret: " + SECRET,
         "profiles.yaml:9:17: payments.accounts.acme.webhook.secret: secrets are never "
         "written in this file"),
        ("secret: {env: ACME_HOOK}", "secret: {env: NOPE}",
         "webhook.secret.env: environment variable NOPE is not set"),
        ("secret: {env: ACME_HOOK}", "secret: {env: SHORT}",
         "webhook.secret.env: the secret in SHORT is too short (at least 32"),
        ("secret: {env: ACME_HOOK}", "secret: {env: 1BAD}",
         "webhook.secret.env: not a variable name"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK, sha256: abc}",
         "webhook.secret.sha256: unknown key; allowed: env"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK}\n        timeout_s: 0",
         "webhook.timeout_s: must be a number of seconds 0.5-60, got 0"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK}\n        max_attempts: 0",
         "webhook.max_attempts: must be a whole number 1-20, got 0"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK}\n        max_attempts: 2.5",
         "webhook.max_attempts: must be a whole number 1-20, got 2.5"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK}\n        events: some",
         "webhook.events: must be one of all, finished, got 'some'"),
        ("secret: {env: ACME_HOOK}", "secret: {env: ACME_HOOK}\n        retries: 3",
         "webhook.retries: unknown key; allowed: url, secret, timeout_s, max_attempts, events"),
        ("        secret: {env: ACME_HOOK}\n", "",
         "profiles.yaml:8:9: payments.accounts.acme.webhook.secret: required key is missing"),
        ("      webhook:\n        url: https://hooks.example.com/dtmfmask?tenant=acme\n"
         "        secret: {env: ACME_HOOK}\n", "      webhook: https://h/x\n",
         "webhook: must be a mapping of url, secret"),
    ],
)  # fmt: skip
async def test_config_errors(old: str, new: str, expected: str) -> None:
    base = textwrap.dedent(BASE)
    assert old in base
    found = errors(base=base.replace(old, new))
    assert len(found) == 1, found
    assert expected in found[0], found


async def test_example_file_documents_a_working_webhook() -> None:
    """The commented-out example under the demo account parses once uncommented."""
    text = (REPO / "profiles.yaml").read_text()
    block = re.search(r"\n(      # webhook:\n(?:      #   .*\n)+)", text)
    assert block is not None
    uncommented = "\n".join(
        line.replace("      # ", "      ", 1) for line in block.group(1).splitlines()
    )
    env = {
        "DTMFMASK_DEMO_AGENT_TOKEN": "a" * 40,
        "DTMFMASK_DEMO_ADMIN_TOKEN": "b" * 40,
        "DTMFMASK_DEMO_WEBHOOK_SECRET": SECRET,
        "DTMFMASK_LINK_SECRET": "l" * 40,
    }
    cfg = parse_payments(text.replace(block.group(1), uncommented + "\n"), env=env)
    hook_config = cfg.accounts["demo"].webhook
    assert hook_config is not None and hook_config.secret == SECRET
    assert hook_config.url.startswith("https://") and hook_config.max_attempts == 6
    # and the file as shipped needs no outside service
    assert parse_payments(text, env=env).accounts["demo"].webhook is None


async def test_sender_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        WebhookSender(concurrency=0)
    with pytest.raises(ValueError):
        WebhookSender(max_pending=10, max_pending_finished=5)
    assert UUID_RE.match(str(uuid.uuid4()))
