"""Guided payments end to end: real SIP peers, the whole node, the API driven as the agent UI.

A baresip caller dials a baresip agent through the proxy; the agent (the test) picks a
profile over the control API; the node dials the embedded sandbox provider into the call and
holds the caller; the agent enters the details and retrieves the caller, who keys the card
on the keypad (RFC 2833 events, or in-band tones in the caller's audio); the agent watches
asterisks fill in, processes, and sees the result. Each case checks where the card digits
went: to the provider leg (the sandbox UA decoded them from RFC 4733), and nowhere else (not
the agent's audio, not a log line, not an API response, not a database row).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.control_api.servicekit import LogCapture, logs  # noqa: F401 (fixture)
from tests.e2e.paynode import OTHER_TOKEN, Agent, PayRig
from tests.leakdecoder import decode

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PAN = "4111111111111111"
EXPIRY = "1239"
CVV = "737"
KEYS = PAN + "#" + EXPIRY + CVV  # a 16-digit Visa ends with '#'; expiry and CVV end alone
DETAILS = {
    "amount": "42.50",
    "currency": "GBP",
    "billing": {"name": "Ada Lovelace", "address": "1 Test Street", "postal_code": "AB1 2CD"},
}


def secrets_in(text: str) -> list[str]:
    """Card data found in ``text``: the PAN or any 8-digit run of it, the expiry+CVV."""
    found = [PAN] if PAN in text else []
    found += [PAN[i : i + 8] for i in range(0, 9) if PAN[i : i + 8] in text and i < 12]
    if EXPIRY + CVV in text:
        found.append("expiry+cvv")
    return found


async def to_capture(rig: PayRig, agent: Agent, call_id: str) -> str:
    """Create the session, wait for the provider and the hold, enter details, capture."""
    view = await agent.start_payment(call_id)
    pid = view["id"]
    view = await agent.poll_until(pid, lambda v: v["state"] == "awaiting_details")
    assert view["caller_held"] is True and view["provider_leg"] == "joined"
    (call,) = (await agent.ok("GET", "/v1/calls"))["calls"]
    assert call["held"] is True
    await agent.ok("PATCH", f"/v1/payments/{pid}/details", DETAILS)
    await agent.ok("POST", f"/v1/payments/{pid}/capture")
    view = await agent.poll_until(pid, lambda v: v["state"] == "capturing")
    assert view["caller_held"] is False
    return pid


async def provider_digits(rig: PayRig, timeout: float = 3.0) -> str:
    """The keys the sandbox provider decoded from the RFC 4733 events of its leg (the last
    key's event may still be on its way when the session turns ready)."""
    (dialog,) = [d for d in rig.sandbox.dialogs if d.state != "ended"]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while dialog.digits_received < len(KEYS) and loop.time() < end:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # and nothing more after the last
    return str(dialog.take_digits())


def assert_no_leaks(rig: PayRig, agent: Agent, logs: LogCapture) -> None:  # noqa: F811
    responses = "\n".join(agent.seen)
    assert not secrets_in(responses), "card data in an API response"
    assert not secrets_in(logs.text()), "card data in a log line"
    assert not secrets_in(rig.db_dump()), "card data in the database"


async def test_guided_payment_rfc2833(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    async with PayRig(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await to_capture(rig, agent, call_id)
        assert rig.caller is not None
        await rig.caller.send_dtmf(KEYS, interval=0.25)
        view = await agent.poll_until(pid, lambda v: v["state"] == "ready", timeout=30)
        fields = {f["name"]: f for f in view["fields"]}
        assert fields["card_number"]["brand"] == "visa"
        assert fields["card_number"]["valid"] is True
        assert fields["card_number"]["masked"].endswith("1111")
        assert fields["card_number"]["digits"] == 16
        assert fields["expiry"]["masked"] == "****" and fields["cvv"]["masked"] == "***"
        # the provider leg got the real keys, as RFC 4733 events, once each
        assert await provider_digits(rig) == KEYS
        await agent.ok("POST", f"/v1/payments/{pid}/process")
        view = await agent.poll_until(pid, lambda v: v["state"] == "finished")
        assert view["result"] == "succeeded", view
        assert view["caller_held"] is False and view["provider_leg"] == "released"
        # the provider leg is hung up, the call goes on
        (call,) = (await agent.ok("GET", "/v1/calls"))["calls"]
        assert call["held"] is False and call["provider_leg"] == "none"
        # ...and its media with it: detached from the call, its port pair free again
        assert rig.node is not None
        endpoints = rig.node.proxy.relay.calls[call_id]
        assert endpoints.provider_port == 0 and endpoints.media.provider is None
        await rig.caller.hangup()
        assert rig.agent_ua is not None
        heard = await rig.agent_ua.recording()
        assert decode(heard) == [], "a key reached the agent's audio"
        # the other account sees neither the call nor the payment
        other = rig.agent(OTHER_TOKEN)
        assert (await other.call("GET", f"/v1/payments/{pid}"))[0] == 403
        assert (await other.ok("GET", "/v1/calls"))["calls"] == []
    assert_no_leaks(rig, agent, logs)


async def test_guided_payment_inband_keys(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The caller's phone sends the keys as tones in its audio: the proxy detects them,
    masks them from the agent and regenerates them as RFC 4733 toward the provider."""
    async with PayRig(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await to_capture(rig, agent, call_id)
        assert rig.caller is not None
        await rig.caller.send_dtmf_inband(KEYS, tone_ms=90.0, gap_ms=90.0, lead_ms=200.0)
        view = await agent.poll_until(pid, lambda v: v["state"] == "ready", timeout=30)
        assert {f["name"]: f["valid"] for f in view["fields"]} == {
            "card_number": True,
            "expiry": True,
            "cvv": True,
        }
        assert await provider_digits(rig) == KEYS
        await agent.ok("POST", f"/v1/payments/{pid}/process")
        view = await agent.poll_until(pid, lambda v: v["state"] == "finished")
        assert view["result"] == "succeeded", view
        await asyncio.sleep(0.3)
        await rig.caller.hangup()
        assert rig.agent_ua is not None
        heard = await rig.agent_ua.recording()
        assert decode(heard) == [], "a key reached the agent's audio"
        assert np.abs(heard).max() > 0
    assert_no_leaks(rig, agent, logs)
