"""Guided payments that go wrong, end to end: nobody stranded, nothing leaked.

DESIGN.md invariant 5 and issue 4 ("Never stranded, never leaked"): every failure ends with
the provider leg released and the caller retrieved. One test per path, each on its own rig
(a baresip caller and agent, the whole node, the embedded sandbox provider, all real SIP on
127.0.0.1), each checking:

- the session's ``result`` and ``error`` (the agent UI's long-poll);
- the provider leg is gone at the far end: the sandbox UA's dialog ended the way the path
  wants (BYE from the proxy, CANCEL, its own BYE) or never existed (busy);
- the caller is retrieved: the view's ``caller_held`` is false, and while the call is up,
  ``GET /v1/calls/{id}`` says ``held: false``, ``provider_leg: none``, no payment; and the
  caller *hears the agent again*: the agent sends a steady 1 kHz tone, the caller's
  recording ends in that tone, not in hold audio (where the hold lasted long enough, the
  recording shows it too, so the check can tell the two apart);
- no card data in any API response, log line, database row, or the agent's audio.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control_api.sandbox import TIMEOUT_CARD
from control_api.sandbox_ua import SandboxDialog
from tests.control_api.servicekit import LogCapture, logs  # noqa: F401 (fixture)
from tests.e2e.paynode import (
    OTHER_TOKEN,
    Agent,
    PayRig,
    agent_tone,
    assert_no_card_data,
    tone_shares,
)
from tests.leakdecoder import decode

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

PAN = "4111111111111111"
DECLINED_PAN = "4000000000000002"  # the sandbox declines it: card_declined
EXPIRY = "1239"
CVV = "737"
CARDS = [(pan, EXPIRY, CVV) for pan in (PAN, DECLINED_PAN, TIMEOUT_CARD)]
DETAILS = {
    "amount": "42.50",
    "currency": "GBP",
    "billing": {"name": "Ada Lovelace", "address": "1 Test Street", "postal_code": "AB1 2CD"},
}
HEARD_AFTER_S = 1.0  # how long the caller listens after the session ends, before hanging up
KEY_S = 0.25  # from one key press to the next (baresip's press: 180 ms of event + end packets)
REPEAT_S = 0.45  # ... when it is the same key again: see press()


def keys(pan: str) -> str:
    """What the caller keys: a 16-digit Visa ends with '#'; expiry and CVV end alone."""
    return pan + "#" + EXPIRY + CVV


def rig_for(tmp: Path, **kw: Any) -> PayRig:
    return PayRig(tmp, agent_source=agent_tone(), **kw)


# ------------------------------------------------------------------------------ agent steps


async def create(agent: Agent, call_id: str, profile: str = "card") -> str:
    view = await agent.start_payment(call_id, profile)
    assert view["caller_held"] is True and view["provider_leg"] == "joining", view
    return str(view["id"])


async def joined(agent: Agent, call_id: str, pid: str) -> None:
    """The provider answered: awaiting details, the caller on hold."""
    view = await agent.poll_until(pid, lambda v: v["state"] != "provider_joining")
    assert view["state"] == "awaiting_details", view
    assert view["caller_held"] is True and view["provider_leg"] == "joined", view
    call = await agent.ok("GET", f"/v1/calls/{call_id}")
    assert call["held"] is True and call["provider_leg"] == "joined", call
    assert call["payment"] == pid


async def capturing(rig: PayRig, agent: Agent, call_id: str) -> str:
    """Create, wait for the provider, enter the details and start capture: the caller is
    back, keying."""
    pid = await create(agent, call_id)
    await joined(agent, call_id, pid)
    await agent.ok("PATCH", f"/v1/payments/{pid}/details", DETAILS)
    await agent.ok("POST", f"/v1/payments/{pid}/capture")
    view = await agent.poll_until(pid, lambda v: v["state"] == "capturing")
    assert view["caller_held"] is False
    return pid


async def press(rig: PayRig, digits: str) -> None:
    """The caller presses ``digits`` on the phone (RFC 2833 events), a same key again after
    a longer gap. Known product issue, reported: the proxy merges two presses of one key
    (distinct RTP timestamps) when the gap it measures by arrival time is under 20 ms
    (dtmfmask.dedup rule 1), so ~40 ms of jitter, or of a stalled event loop (the node shares
    the test's, on loaded cores), loses a repeated digit sent 60 ms after the last."""
    assert rig.caller is not None
    for i, key in enumerate(digits):
        if i:
            await asyncio.sleep(REPEAT_S if key == digits[i - 1] else KEY_S)
        await rig.caller.send_dtmf(key, interval=None)


async def key_some(rig: PayRig, agent: Agent, pid: str, digits: str = "4111") -> None:
    """The caller keys the first digits of the card; the agent sees them counted."""
    await press(rig, digits)
    await agent.poll_until(
        pid, lambda v: v["fields"][0]["digits"] == len(digits), timeout=len(digits) * 0.5 + 5
    )


async def key_card_and_process(rig: PayRig, agent: Agent, call_id: str, pan: str) -> str:
    pid = await capturing(rig, agent, call_id)
    await press(rig, keys(pan))
    view = await agent.poll_until(pid, lambda v: v["state"] == "ready", timeout=20)
    assert all(f["valid"] for f in view["fields"]), view
    # the provider leg got the keys, as RFC 4733 events, once each (the last may still be
    # on its way)
    dialog = await provider_dialog(rig)
    loop = asyncio.get_running_loop()
    end = loop.time() + 3.0
    while dialog.digits_received < len(keys(pan)) and loop.time() < end:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert dialog.take_digits() == keys(pan), "the provider did not get the keys"
    view = await agent.ok("POST", f"/v1/payments/{pid}/process")
    assert view["state"] == "processing", view
    return pid


async def finished(
    agent: Agent, pid: str, result: str, error: str, *, timeout: float = 15.0
) -> dict[str, Any]:
    """The session's end as the agent UI sees it: the result, and nobody stranded."""
    view = await agent.poll_until(pid, lambda v: v["state"] == "finished", timeout=timeout)
    assert (view["result"], view["error"]) == (result, error), view
    assert view["caller_held"] is False, view
    assert view["provider_leg"] == "released", view
    return view


async def call_retrieved(agent: Agent, call_id: str) -> None:
    """The call goes on: off hold, no provider leg, no payment in progress."""
    call = await agent.ok("GET", f"/v1/calls/{call_id}")
    assert call["held"] is False, call
    assert call["provider_leg"] == "none", call
    assert call["payment"] is None, call


async def call_gone(agent: Agent, call_id: str) -> None:
    status, body, _ = await agent.call("GET", f"/v1/calls/{call_id}")
    assert status == 404 and body["error"]["code"] == "call_not_found", (status, body)
    assert (await agent.ok("GET", "/v1/calls"))["calls"] == []


# ------------------------------------------------------------------------------ far ends


async def provider_dialog(rig: PayRig, timeout: float = 5.0) -> SandboxDialog:
    """The one call the sandbox provider got (once its INVITE is in)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not rig.sandbox.dialogs:
        assert loop.time() < end, "the provider was never dialled"
        await asyncio.sleep(0.02)
    (dialog,) = rig.sandbox.dialogs
    return dialog  # type: ignore[no-any-return]


async def provider_ended(rig: PayRig, dialog: SandboxDialog, by: str) -> None:
    """The provider leg is over at the provider's end, ended as ``by`` says ("remote": our
    BYE; "cancel": our CANCEL; "local": the provider's own BYE)."""
    await dialog.wait_for("terminated", timeout=5.0)
    assert dialog.ended_by == by, dialog.ended_by
    assert [d for d in rig.sandbox.dialogs if d.state != "terminated"] == []
    c = rig.sandbox.counters
    assert c.invites == 1, c  # dialled once, never again
    assert c.byes_received == (1 if by == "remote" else 0), c
    assert c.cancelled == (1 if by == "cancel" else 0), c


async def caller_hears_agent(rig: PayRig, *, hold_heard: bool) -> None:
    """The call is up and the caller is back with the agent: listen a while, hang up, and
    find the agent's tone (not hold audio) in the end of what the caller heard. With
    ``hold_heard``, the hold before it must show too (the tone was gone meanwhile)."""
    assert rig.caller is not None
    await asyncio.sleep(HEARD_AFTER_S)
    await rig.caller.hangup()
    shares = tone_shares(await rig.caller.recording())
    tail = sorted(shares[-7:-1])  # the last 0.6 s but the window the hang-up may cut short
    # all the agent's tone (one window may hold a gap a loaded machine left in the stream)
    assert len(shares) >= 8 and tail[1] > 0.8, f"the caller does not hear the agent: {tail}"
    if hold_heard:
        held = [s for s in shares if s < 0.2]
        assert len(held) >= 5, f"the caller never heard the hold audio: {shares}"


async def agent_heard_no_keys(rig: PayRig) -> None:
    """After the call: no key the caller pressed reached the agent's audio."""
    assert rig.agent_ua is not None
    heard = await rig.agent_ua.recording()
    assert np.abs(heard).max() > 0  # the agent heard the call (the provider's prompt)
    assert decode(heard) == [], "a key reached the agent's audio"


def assert_clean(rig: PayRig, agents: list[Agent], logs: LogCapture) -> None:  # noqa: F811
    """No card data anywhere, and nothing went wrong on the way (an action that raised is
    logged as an error: a release or a retrieve that failed would strand someone)."""
    assert_no_card_data(rig, agents, logs.text(), CARDS)
    lines = [json.loads(line) for line in logs.stream.getvalue().splitlines() if line.strip()]
    errors = [e for e in lines if e.get("level") in ("error", "critical")]
    assert errors == [], errors


# ------------------------------------------------------------------------------ the paths


async def test_provider_no_answer(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The provider rings and never answers: the answer timeout cancels the INVITE."""
    async with rig_for(tmp_path, answer_timeout=1.5) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await create(agent, call_id, "card-noanswer")
        dialog = await provider_dialog(rig)
        assert dialog.behaviour == "noanswer" and dialog.state == "ringing"
        await finished(agent, pid, "failed", "provider_no_answer")
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "cancel")
        await caller_hears_agent(rig, hold_heard=True)
    assert_clean(rig, [agent], logs)


async def test_provider_busy(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The provider answers 486 Busy Here: no dialog, no leg, the caller straight back."""
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await create(agent, call_id, "card-busy")
        await finished(agent, pid, "failed", "provider_busy")
        await call_retrieved(agent, call_id)
        c = rig.sandbox.counters
        assert (c.invites, c.rejected, c.answered) == (1, 1, 0), c
        assert rig.sandbox.dialogs == []  # refused before any dialog
        await caller_hears_agent(rig, hold_heard=False)
    assert_clean(rig, [agent], logs)


async def test_provider_hangs_up(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The provider answers, then sends BYE 2 s later while the agent has not even entered
    the details: the caller, on hold all along, is retrieved."""
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await create(agent, call_id, "card-hangup")
        await joined(agent, call_id, pid)
        dialog = await provider_dialog(rig)
        await finished(agent, pid, "failed", "provider_hung_up", timeout=10)
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "local")
        assert rig.sandbox.counters.byes_sent == 1
        await caller_hears_agent(rig, hold_heard=True)
    assert_clean(rig, [agent], logs)


async def test_processing_timeout(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The provider never answers the authorisation (the timeout test card)."""
    async with rig_for(tmp_path, processing_timeout=1.5) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await key_card_and_process(rig, agent, call_id, TIMEOUT_CARD)
        dialog = await provider_dialog(rig)
        assert dialog.state == "confirmed"  # the leg stays up while the provider decides
        view = await finished(agent, pid, "failed", "processing_timeout")
        assert view["reference"] is None
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        await caller_hears_agent(rig, hold_heard=False)
        await agent_heard_no_keys(rig)
    assert_clean(rig, [agent], logs)


async def test_declined(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await key_card_and_process(rig, agent, call_id, DECLINED_PAN)
        dialog = await provider_dialog(rig)
        view = await finished(agent, pid, "declined", "card_declined")
        assert view["reference"]  # the provider's reference, for the agent to quote
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        await caller_hears_agent(rig, hold_heard=False)
        await agent_heard_no_keys(rig)
    assert_clean(rig, [agent], logs)


async def test_caller_hangs_up_mid_capture(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await capturing(rig, agent, call_id)
        await key_some(rig, agent, pid)
        dialog = await provider_dialog(rig)
        assert rig.caller is not None and rig.agent_ua is not None
        await rig.caller.hangup()
        await rig.agent_ua.wait_for("CALL_CLOSED", 5)
        await finished(agent, pid, "interrupted", "caller_hung_up")
        await call_gone(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        assert dialog.take_digits() == ""  # wiped with the dialog
        await agent_heard_no_keys(rig)
    assert_clean(rig, [agent], logs)


async def test_agent_hangs_up_mid_capture(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await capturing(rig, agent, call_id)
        await key_some(rig, agent, pid)
        dialog = await provider_dialog(rig)
        assert rig.caller is not None and rig.agent_ua is not None
        await rig.agent_ua.hangup()
        await rig.caller.wait_for("CALL_CLOSED", 5)
        await finished(agent, pid, "interrupted", "agent_hung_up")
        await call_gone(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        await agent_heard_no_keys(rig)
    assert_clean(rig, [agent], logs)


async def test_agent_cancels_while_caller_held(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await create(agent, call_id)
        await joined(agent, call_id, pid)
        dialog = await provider_dialog(rig)
        await asyncio.sleep(1.0)  # on hold long enough to show in the caller's recording
        view = await agent.ok("POST", f"/v1/payments/{pid}/cancel")
        assert (view["result"], view["error"]) == ("cancelled", "cancelled"), view
        await finished(agent, pid, "cancelled", "cancelled")
        # a finished session takes no more actions
        status, body, _ = await agent.call("POST", f"/v1/payments/{pid}/cancel")
        assert status == 409 and body["error"]["code"] == "wrong_state", (status, body)
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        await caller_hears_agent(rig, hold_heard=True)
    assert_clean(rig, [agent], logs)


async def test_node_restart_mid_capture(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """The node stops (SIGTERM) while the caller keys the card: the session ends
    interrupted/process_restart with the provider leg hung up and the caller retrieved,
    the record says so in the database, and the restarted node serves it."""
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await capturing(rig, agent, call_id)
        await key_some(rig, agent, pid)
        sandbox = rig.sandbox
        dialog = await provider_dialog(rig)
        await rig.stop_node()
        # the provider leg got our BYE before the node (and its embedded sandbox) closed
        assert dialog.state == "terminated" and dialog.ended_by == "remote", dialog.ended_by
        assert sandbox.counters.byes_received == 1, sandbox.counters
        assert rig.caller is not None
        await rig.caller.wait_for("CALL_CLOSED", 5)
        con = sqlite3.connect(rig.db)
        try:
            row = con.execute(
                "SELECT state, result, error, json_extract(view, '$.caller_held'), "
                "json_extract(view, '$.provider_leg') FROM sessions WHERE id=?",
                (pid,),
            ).fetchone()
        finally:
            con.close()
        assert row == ("finished", "interrupted", "process_restart", 0, "released"), row
        await rig.start_node()
        again = rig.agent()
        view = await again.ok("GET", f"/v1/payments/{pid}")
        assert (view["state"], view["result"], view["error"]) == (
            "finished",
            "interrupted",
            "process_restart",
        ), view
        assert view["caller_held"] is False and view["provider_leg"] == "released", view
        assert view["fields"][0]["digits"] == 4 and view["fields"][0]["masked"] == "****"
        await agent_heard_no_keys(rig)
    assert_clean(rig, [agent, again], logs)


async def test_second_session_on_a_call_is_refused(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """One live session per call: another create is 409 session_in_progress and changes
    nothing; the same Idempotency-Key gets the first session back."""
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent = rig.agent()
        pid = await create(agent, call_id)
        await joined(agent, call_id, pid)
        for key in ({"Idempotency-Key": "another"}, {}):
            status, body, _ = await agent.call(
                "POST", f"/v1/calls/{call_id}/payments", {"profile": "card"}, headers=key
            )
            assert status == 409 and body["error"]["code"] == "session_in_progress", body
        status, view, _ = await agent.call(
            "POST",
            f"/v1/calls/{call_id}/payments",
            {"profile": "card"},
            headers={"Idempotency-Key": f"k-{call_id}-card"},
        )
        assert 200 <= status < 300 and view["id"] == pid, (status, view)
        assert rig.sandbox.counters.invites == 1  # no second provider leg dialled
        view = await agent.ok("GET", f"/v1/payments/{pid}")
        assert view["state"] == "awaiting_details" and view["caller_held"] is True, view
        dialog = await provider_dialog(rig)
        await agent.ok("POST", f"/v1/payments/{pid}/cancel")
        await finished(agent, pid, "cancelled", "cancelled")
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "remote")
        await caller_hears_agent(rig, hold_heard=False)
    assert_clean(rig, [agent], logs)


async def test_other_accounts_call_is_forbidden(tmp_path: Path, logs: LogCapture) -> None:  # noqa: F811
    """Another account's agent can neither see, hold, nor take a payment on the call, nor
    see or cancel its payment: 403, and nothing happens."""
    async with rig_for(tmp_path) as rig:
        call_id = await rig.connect()
        agent, other = rig.agent(), rig.agent(OTHER_TOKEN)
        for method, path, body in (
            ("GET", f"/v1/calls/{call_id}", None),
            ("POST", f"/v1/calls/{call_id}/hold", None),
            ("POST", f"/v1/calls/{call_id}/payments", {"profile": "card"}),
        ):
            status, data, _ = await other.call(method, path, body)
            assert status == 403 and data["error"]["code"] == "forbidden", (path, status, data)
        assert (await other.ok("GET", "/v1/calls"))["calls"] == []
        assert rig.sandbox.counters.invites == 0  # no provider dialled
        await call_retrieved(agent, call_id)  # and not held
        pid = await create(agent, call_id)
        await joined(agent, call_id, pid)
        for method, path in (
            ("GET", f"/v1/payments/{pid}"),
            ("POST", f"/v1/payments/{pid}/cancel"),
            ("POST", f"/v1/calls/{call_id}/retrieve"),
        ):
            status, data, _ = await other.call(method, path)
            assert status == 403 and data["error"]["code"] == "forbidden", (path, status, data)
        view = await agent.ok("GET", f"/v1/payments/{pid}")
        assert view["state"] == "awaiting_details" and view["caller_held"] is True, view
        dialog = await provider_dialog(rig)
        await agent.ok("POST", f"/v1/payments/{pid}/cancel")
        await finished(agent, pid, "cancelled", "cancelled")
        await call_retrieved(agent, call_id)
        await provider_ended(rig, dialog, "remote")
    assert_clean(rig, [agent, other], logs)
