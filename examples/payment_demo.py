"""The live demo: a guided card payment on a real call, on loopback, on embedded defaults.

Run with ``scripts/demo`` (or ``.venv/bin/python -m examples.payment_demo``). It starts:

- an *agent* phone (baresip, auto-answer), standing in for the PBX and the agent's headset;
- the dtmfmask node on ``profiles.yaml`` (the proxy, the control API and the embedded sandbox
  provider), with free ports for SIP and the API so nothing else on the machine is in the way;
- a *caller* phone (baresip) that dials the agent through the proxy.

Then the script plays the agent UI over the control API: it lists the call, picks the
``card-payment`` profile (the sandbox provider is dialled in, the caller hears hold audio),
enters amount and billing details, retrieves the caller, and the caller keys a test card on
the keypad (RFC 2833 events). The terminal shows the agent's view as it changes (asterisks
per field, brand, states), then the result. Finally it checks where the keys went: the
provider leg got every key, and the project's adversarial decoder finds none in what the
agent heard. Exit status 0 means all of that held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import sqlite3
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from control_api.node import Node
from control_api.profiles import StorageConfig, load_payments
from sipproxy.config import HostPort, load_config
from sipproxy.logsetup import configure_logging
from tests.e2e.baresip import BaresipUA, BaresipUnavailable
from tests.leakdecoder import decode

ROOT = Path(__file__).resolve().parent.parent
CARD = "4111111111111111"  # the sandbox approves it (control_api/sandbox.py)
LINK_CARD = "5555555555554444"  # for the self-service payment: approved too
PHONE = "+447700900123"  # a drama number (Ofcom): where the demo "texts" the link
KEYS = CARD + "#" + "1230" + "123" + "90210#"  # card (16 digits: '#'), MMYY, CVV, postcode


def _voice(seconds: float) -> np.ndarray:
    """Something voice-like for the agent to say, so the caller hears the agent again."""
    t = np.arange(int(seconds * 8000)) / 8000
    f0 = 150 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    env = np.maximum(np.sin(2 * np.pi * 2.7 * t), 0) ** 1.5
    return 2000 * env * sum(np.sin(k * phase) / k for k in range(1, 10))


def show(view: dict[str, Any]) -> str:
    """One line of the agent's view."""
    parts = []
    for f in view["fields"]:
        masked = f["masked"] or "-"
        brand = f" {f['brand']}" if f.get("brand") else ""
        ok = {True: " ok", False: " invalid", None: ""}[f["valid"]]
        parts.append(f"{f['name']}={masked}{brand}{ok}")
    held = "held" if view["caller_held"] else "with agent"
    extra = f" result={view['result']}" if view["result"] else ""
    error = f" error={view['error']}" if view["error"] else ""
    return (
        f"  v{view['version']:<3} {view['state']:<17} caller {held:<10} "
        f"provider {view['provider_leg']:<9} {'  '.join(parts)}{extra}{error}"
    )


class AgentUI:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.etag: str | None = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as r:
            data = await r.json()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def watch(self, pid: str, until: set[str], timeout: float = 60.0) -> dict[str, Any]:
        """Long-poll the payment, printing every new version, until its state is in ``until``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            headers = dict(self.headers)
            if self.etag:
                headers["If-None-Match"] = self.etag
            async with self.http.get(
                f"{self.base}/v1/payments/{pid}?wait=10", headers=headers
            ) as r:
                if r.status == 304:
                    continue
                view = await r.json()
                self.etag = r.headers.get("ETag")
            print(show(view), flush=True)
            if view["state"] in until:
                return view
        raise TimeoutError(f"the payment never reached {sorted(until)}")


def outbox_link(db: Path) -> str:
    """The newest payment link texted (the embedded SMS sender writes an outbox table)."""
    con = sqlite3.connect(db)
    try:
        (body,) = con.execute("SELECT body FROM sms_outbox ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        con.close()
    match = re.search(r"https?://\S+/pay/\S+", body)
    if match is None:
        raise RuntimeError("no payment link in the SMS")
    return match.group(0)


async def send_link(ui: AgentUI, call_id: str, db: Path) -> tuple[str, str]:
    """The agent sends a payment link by SMS (profile card-link); its session and URL."""
    body = {
        "profile": "card-link",
        "phone": PHONE,
        "amount": "19.99",
        "currency": "GBP",
        "billing": {"name": "Ada Lovelace"},
    }
    view = await ui.request("POST", f"/v1/calls/{call_id}/payments", body)
    return view["id"], outbox_link(db)


async def self_service(
    ui: AgentUI, call_id: str, db: Path, http: aiohttp.ClientSession
) -> dict[str, Any]:
    """A self-service payment: the agent texts a link; the customer opens the hosted page
    and submits the form (as a phone's browser would without script); the agent watches."""
    ui.etag = None
    pid, url = await send_link(ui, call_id, db)
    print(f"agent    sends a payment link by SMS (session {pid}); the outbox holds {url}")
    async with http.get(url) as r:
        page = await r.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    if r.status != 200 or csrf is None:
        raise RuntimeError(f"the hosted page did not open: {r.status}")
    form = {
        "csrf": csrf.group(1),
        "card_number": LINK_CARD,
        "expiry": "12/30",
        "cvv": "123",
        "postal_code": "90210",
    }
    print("customer opens the link on their phone and pays")
    async with http.post(url, data=form) as r:
        result_page = await r.text()
    shown = re.search(r'data-result="([a-z_]+)"', result_page)
    if shown is None:
        raise RuntimeError(f"the hosted page did not take the card: {r.status}")
    print(f"customer sees: payment {shown.group(1)}")
    return await ui.watch(pid, {"finished"})


async def show_pages(
    ui: AgentUI, call_id: str, db: Path, base: str, token: str, seconds: float
) -> None:
    """Leave the node up so a person can open both pages in a browser."""
    _, url = await send_link(ui, call_id, db)
    print(
        f"\nopen     the agent's panel: {base}/panel  (agent token: {token})\n"
        f"         the customer's page: {url}  (test card {LINK_CARD}, any future expiry)\n"
        f"         the call stays up for {seconds:.0f} s; Ctrl-C ends the demo early\n",
        flush=True,
    )
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)


async def demo(config_path: Path, workdir: Path, linger: float = 0.0) -> int:
    os.environ.setdefault("DTMFMASK_DEMO_AGENT_TOKEN", secrets.token_urlsafe(32))
    os.environ.setdefault("DTMFMASK_DEMO_ADMIN_TOKEN", secrets.token_urlsafe(32))
    os.environ.setdefault("DTMFMASK_LINK_SECRET", secrets.token_urlsafe(32))  # card-link
    token = os.environ["DTMFMASK_DEMO_AGENT_TOKEN"]
    proxy_config = load_config(config_path)
    payments = load_payments(config_path)

    agent_phone = BaresipUA("agent", workdir=workdir / "agent", auto_answer=True, source=_voice(60))
    await agent_phone.start()
    # the example file's addresses, with free ports: the PBX is the agent phone
    proxy_config = replace(
        proxy_config,
        sip=replace(proxy_config.sip, udp_port=0, tcp_port=0),
        upstream=replace(proxy_config.upstream, pbx=HostPort("127.0.0.1", agent_phone.sip_port)),
        metrics=replace(proxy_config.metrics, listen=None),
        drain_grace_s=0,
    )
    payments = replace(
        payments,
        api=replace(payments.api, listen=HostPort("127.0.0.1", 0)),
        storage=StorageConfig(str(workdir / "dtmfmask.sqlite3")),
    )
    node = Node(proxy_config, payments)
    try:
        await node.start()
    except BaseException:
        await agent_phone.stop()
        raise
    base = f"http://127.0.0.1:{node.api_port}"
    print(f"node     SIP 127.0.0.1:{node.proxy.sip.udp_port}, control API {base}/v1")
    caller = BaresipUA(
        "caller", workdir=workdir / "caller", outbound=f"127.0.0.1:{node.proxy.sip.udp_port}"
    )
    try:
        await caller.start()
        # unsafe=True: keep cookies from an IP address (the page's CSRF cookie on 127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            ui = AgentUI(http, base, token)
            await caller.dial(agent_phone.uri())
            await caller.wait_for("CALL_ESTABLISHED", 10)
            await agent_phone.wait_for("CALL_ESTABLISHED", 10)
            (call,) = (await ui.request("GET", "/v1/calls"))["calls"]
            print(
                f"call     {call['id']}: payee {call['payee']!r}, {call['interaction_type']}, "
                f"profiles {call['profiles']}"
            )
            profile = "card-payment"
            view = await ui.request(
                "POST", f"/v1/calls/{call['id']}/payments", {"profile": profile}
            )
            pid = view["id"]
            print(f"agent    proceeds to payment with {profile!r}: session {pid}")
            await ui.watch(pid, {"awaiting_details", "finished"})
            details = {
                "amount": "42.50",
                "currency": "GBP",
                "billing": {"name": "Ada Lovelace", "address": "1 Demo Street"},
            }
            print("agent    enters amount and billing details, retrieves the caller")
            await ui.request("PATCH", f"/v1/payments/{pid}/details", details)
            await ui.request("POST", f"/v1/payments/{pid}/capture")
            await ui.watch(pid, {"capturing", "finished"})
            print(f"caller   keys the card on the keypad ({len(KEYS)} keys, RFC 2833)")
            typing = asyncio.create_task(caller.send_dtmf(KEYS, interval=0.25))
            view = await ui.watch(pid, {"ready", "finished"})
            await typing
            if view["state"] != "ready":
                print("FAIL     the card was not captured", file=sys.stderr)
                return 1
            (dialog,) = [d for d in node.sandboxes[0].dialogs if d.state != "ended"]
            for _ in range(40):
                if dialog.digits_received >= len(KEYS):
                    break
                await asyncio.sleep(0.05)
            at_provider = dialog.take_digits() == KEYS
            print("agent    clicks process")
            await ui.request("POST", f"/v1/payments/{pid}/process")
            view = await ui.watch(pid, {"finished"})
            await asyncio.sleep(1.0)  # the caller and agent talk a little after the payment
            link_view = await self_service(ui, call["id"], workdir / "dtmfmask.sqlite3", http)
            if linger:
                await show_pages(ui, call["id"], workdir / "dtmfmask.sqlite3", base, token, linger)
            await caller.hangup()
        heard = await agent_phone.recording()
    finally:
        await caller.stop()
        await node.stop(grace_s=0)
        await agent_phone.stop()

    leaks = decode(heard)
    print(f"result   {view['result']} (reference {view['reference']})")
    print(
        f"provider {'got every key' if at_provider else 'DID NOT get the keys'} "
        f"(RFC 4733 events on its own leg)"
    )
    print(
        f"agent    heard {len(heard) / 8000:.1f} s of audio; the adversarial decoder finds "
        f"{len(leaks)} key presses in it"
    )
    print(f"link     self-service payment by SMS link: {link_view['result']}")
    ok = (
        view["result"] == "succeeded"
        and link_view["result"] == "succeeded"
        and at_provider
        and not leaks
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "profiles.yaml"))
    ap.add_argument("--keep", help="keep the phones' logs and recordings in this directory")
    ap.add_argument(
        "--log-level", default="WARNING", help="the node's log level (INFO: every event)"
    )
    ap.add_argument(
        "--web",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before hanging up, keep the node up this long and print the addresses of the "
        "agent's panel and a customer's payment page to open in a browser",
    )
    args = ap.parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            return asyncio.run(demo(Path(args.config), Path(args.keep), args.web))
        with tempfile.TemporaryDirectory(prefix="dtmfmask-demo-") as tmp:
            return asyncio.run(demo(Path(args.config), Path(tmp), args.web))
    except BaresipUnavailable as exc:
        print(f"payment demo needs baresip (scripts/setup installs it): {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
