"""A whole dtmfmask node on 127.0.0.1 with real SIP peers, for guided-payment tests.

``PayRig`` starts a baresip agent (auto-answer, standing in for the PBX and its agent), the
node (:class:`control_api.node.Node`: proxy, payment service, control API, embedded sandbox
provider) and a baresip caller that dials the agent through the proxy. ``Agent`` drives the
control API as the agent UI would and keeps every response it got (headers and bodies), so a
test can search them all for card data.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from control_api.node import Node
from control_api.profiles import parse_payments
from dtmfmask.tones import SAMPLE_RATE, dbm0_to_amplitude
from sipproxy.config import parse_config
from tests.e2e.baresip import BaresipUA

AGENT_TOKEN = "agent-token-for-tests-0123456789abcdef"
OTHER_TOKEN = "other-account-token-0123456789abcdef00"

CONFIG = """
proxy:
  sip: {{listen: 127.0.0.1, udp_port: 0, tcp_port: 0}}
  media: {{address: 127.0.0.1, port_min: {media_lo}, port_max: {media_hi}, timeout_s: 30}}
  upstream: {{pbx: "127.0.0.1:{pbx_port}"}}
  trunks: {{allow: [127.0.0.0/8]}}
  metrics: {{listen: null}}
  drain_grace_s: 0
payments:
  api: {{listen: "127.0.0.1:0"}}
  storage: {{path: "{db}"}}
  accounts:
    demo:
      payments: true
      numbers: ["*"]
      tokens:
        - {{role: agent, sha256: {agent_hash}}}
    other:
      payments: true
      numbers: ["999*"]
      tokens:
        - {{role: agent, sha256: {other_hash}}}
  providers:
    sandbox: {{type: sandbox, sip_uri: "sip:sandbox@127.0.0.1:{sandbox_port}",
               answer_timeout_s: {answer_timeout}, processing_timeout_s: {processing_timeout}}}
    sandbox_noanswer: {{type: sandbox, sip_uri: "sip:noanswer@127.0.0.1:{sandbox_port}",
                        answer_timeout_s: {answer_timeout}}}
    sandbox_busy: {{type: sandbox, sip_uri: "sip:busy@127.0.0.1:{sandbox_port}"}}
    sandbox_hangup: {{type: sandbox, sip_uri: "sip:hangup@127.0.0.1:{sandbox_port}"}}
  profiles:
{profiles}"""


PROFILE = """\
    {name}:
      account: demo
      method: guided
      purpose: Bill payment
      destination_account: demo-merchant
      provider: {provider}
      currency: GBP
      min_amount: 1.00
      max_amount: 500.00
      fields: [card_number, expiry, cvv]
      hold_timeout_s: {hold_timeout}
      capture_timeout_s: 60
"""
# profile -> provider: the sandbox's behaviours by the provider URI's user part
PROFILES = {
    "card": "sandbox",
    "card-noanswer": "sandbox_noanswer",
    "card-busy": "sandbox_busy",
    "card-hangup": "sandbox_hangup",
}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Agent:
    """The agent UI: the control API with a bearer token, every exchange kept."""

    base: str
    token: str
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.http.request(method, self.base + path, json=body, headers=hdrs) as r:
            text = await r.text()
            self.seen.append(f"{r.status} {dict(r.headers)!r} {text}")
            data = None
            if text and r.content_type == "application/json":
                data = await r.json()
            return r.status, data, dict(r.headers)

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data, _ = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    async def start_payment(self, call_id: str, profile: str = "card") -> dict[str, Any]:
        """``POST /v1/calls/{call_id}/payments`` (an Idempotency-Key per call and profile);
        the new session's view (201)."""
        status, view, _ = await self.call(
            "POST",
            f"/v1/calls/{call_id}/payments",
            {"profile": profile},
            headers={"Idempotency-Key": f"k-{call_id}-{profile}"},
        )
        assert status == 201, (status, view)
        return dict(view)

    async def poll_until(
        self, payment_id: str, predicate: Any, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Long-poll the payment until ``predicate(view)``, as the agent UI does."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        etag: str | None = None
        view: dict[str, Any] | None = None
        while True:
            headers = {"If-None-Match": etag} if etag else {}
            status, data, hdrs = await self.call(
                "GET", f"/v1/payments/{payment_id}?wait=2", headers=headers
            )
            if status == 200:
                view, etag = data, hdrs.get("ETag")
                if predicate(view):
                    return view
            else:
                assert status == 304, (status, data)
            assert loop.time() < end, f"payment never reached the state wanted: {view}"


class PayRig:
    """Agent UA, node and caller UA; use as ``async with PayRig(tmp) as rig``."""

    def __init__(
        self,
        tmp: Path,
        *,
        source: np.ndarray | None = None,
        agent_source: np.ndarray | None = None,
        answer_timeout: float = 3.0,
        processing_timeout: float = 3.0,
        hold_timeout: float = 60.0,
    ) -> None:
        self.tmp = tmp
        self.source = source  # what the caller sends (None: silence)
        self.agent_source = agent_source  # what the agent sends (None: silence)
        self.answer_timeout = answer_timeout
        self.processing_timeout = processing_timeout
        self.hold_timeout = hold_timeout
        self.db = tmp / "node.sqlite3"
        self.sandbox_port = free_udp_port()
        self.agent_ua: BaresipUA | None = None
        self.caller: BaresipUA | None = None
        self.node: Node | None = None
        self.http: aiohttp.ClientSession | None = None
        self.config_text = ""

    async def __aenter__(self) -> PayRig:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        self.agent_ua = BaresipUA(
            "agent", workdir=self.tmp / "agent", auto_answer=True, source=self.agent_source
        )
        await self.agent_ua.start()
        self.config_text = CONFIG.format(
            media_lo=12000 + (self.sandbox_port % 40) * 200,
            media_hi=12000 + (self.sandbox_port % 40) * 200 + 198,
            pbx_port=self.agent_ua.sip_port,
            db=self.db,
            agent_hash=_sha(AGENT_TOKEN),
            other_hash=_sha(OTHER_TOKEN),
            sandbox_port=self.sandbox_port,
            answer_timeout=self.answer_timeout,
            processing_timeout=self.processing_timeout,
            profiles="".join(
                PROFILE.format(name=n, provider=p, hold_timeout=self.hold_timeout)
                for n, p in PROFILES.items()
            ),
        )
        node = await self.start_node()
        self.http = aiohttp.ClientSession()
        self.caller = BaresipUA(
            "caller",
            workdir=self.tmp / "caller",
            source=self.source,
            outbound=f"127.0.0.1:{node.proxy.sip.udp_port}",
        )
        await self.caller.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.caller is not None:
            await self.caller.stop()
        if self.http is not None:
            await self.http.close()
        if self.node is not None:
            await self.node.stop(grace_s=0)
            self.node = None
        if self.agent_ua is not None:
            await self.agent_ua.stop()

    async def start_node(self) -> Node:
        """A node on the rig's configuration and database file (a second one after
        :meth:`stop_node` is the same node restarted: same SIP, sandbox and media ports
        as configured, new control API port)."""
        assert self.node is None, "stop the running node first"
        node = Node(parse_config(self.config_text), parse_payments(self.config_text))
        await node.start()
        self.node = node
        return node

    async def stop_node(self) -> Node:
        """Stop the node as SIGTERM does (live sessions end ``interrupted``); the stopped
        node is returned (its sandbox UA keeps the dialogs it saw)."""
        node, self.node = self.node, None
        assert node is not None
        await node.stop()
        return node

    def agent(self, token: str = AGENT_TOKEN) -> Agent:
        assert self.node is not None and self.http is not None
        return Agent(f"http://127.0.0.1:{self.node.api_port}", token, self.http)

    async def connect(self) -> str:
        """Dial through the proxy until both UAs are in the call; the call's API id."""
        assert self.caller is not None and self.agent_ua is not None and self.node is not None
        await self.caller.dial(self.agent_ua.uri())
        await self.caller.wait_for("CALL_ESTABLISHED", 10)
        await self.agent_ua.wait_for("CALL_ESTABLISHED", 10)
        (call,) = self.node.proxy.b2bua.calls
        return call.id

    @property
    def sandbox(self) -> Any:
        assert self.node is not None
        (ua,) = self.node.sandboxes
        return ua

    def db_dump(self) -> str:
        """Every row of every table of the node's database, as text."""
        con = sqlite3.connect(self.db)
        try:
            out = []
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in con.execute(f"SELECT * FROM {table}"):
                    out.append(f"{table}: {row!r}")
            return "\n".join(out)
        finally:
            con.close()


# ------------------------------------------------------------------------------ audio checks

AGENT_TONE_HZ = 1000.0
"""What the agent says in the failure tests: a steady tone no hold chime (440/550 Hz), sandbox
prompt (425 Hz) or DTMF pair comes near, so the caller's recording shows whom they heard."""


def agent_tone(seconds: float = 60.0, hz: float = AGENT_TONE_HZ, level_dbm0: float = -20.0) -> Any:
    """A steady sine as a baresip source (16-bit linear units, 8 kHz)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return dbm0_to_amplitude(level_dbm0) * np.sin(2 * np.pi * hz * t)


def tone_shares(
    samples: Any, hz: float = AGENT_TONE_HZ, window_s: float = 0.1, floor_dbm0: float = -50.0
) -> list[float]:
    """Per window of ``samples``: the share of its energy within 30 Hz of ``hz`` (0 for a
    window quieter than ``floor_dbm0``: silence is nobody talking)."""
    n = int(window_s * SAMPLE_RATE)
    x = np.asarray(samples, dtype=np.float64)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    band = np.abs(freqs - hz) <= 30.0
    hann = np.hanning(n)
    floor = dbm0_to_amplitude(floor_dbm0) / np.sqrt(2)
    out = []
    for i in range(0, len(x) - n + 1, n):
        w = x[i : i + n]
        if np.sqrt(np.mean(w * w)) < floor:
            out.append(0.0)
            continue
        power = np.abs(np.fft.rfft(w * hann)) ** 2
        out.append(float(power[band].sum() / power.sum()))
    return out


# ------------------------------------------------------------------------------ leak checks


def card_data_in(text: str, cards: Iterable[tuple[str, str, str]]) -> list[str]:
    """What of ``cards`` ((pan, expiry, cvv) keyed in the test) shows in ``text``: the PAN,
    any 10 digits of it in a row that hold two non-zero digits (mostly-zero test PANs would
    otherwise match float reprs), the expiry and CVV as keyed. Names, never the digits."""
    found = []
    for pan, expiry, cvv in cards:
        windows = [pan[i : i + 10] for i in range(len(pan) - 9)]
        windows = [w for w in windows if sum(c != "0" for c in w) >= 2]
        if pan in text or any(w in text for w in windows):
            found.append(f"PAN {pan[:1]}...{len(pan)}")
        if expiry + cvv in text:
            found.append(f"expiry+cvv of PAN {pan[:1]}...{len(pan)}")
    return found


def assert_no_card_data(
    rig: PayRig, agents: Iterable[Agent], log_text: str, cards: Iterable[tuple[str, str, str]]
) -> None:
    """No card data in any API response the agents got, any log line, any database row."""
    cards = list(cards)
    responses = "\n".join(line for a in agents for line in a.seen)
    assert not card_data_in(responses, cards), "card data in an API response"
    assert not card_data_in(log_text, cards), "card data in a log line"
    assert not card_data_in(rig.db_dump(), cards), "card data in the database"
