"""A self-service payment with both pages in the browser: the agent's panel and, in a second
chromium (its own profile, a phone screen), the customer's hosted payment page.

The agent picks the self-service profile on the call, gives the phone number and the amount,
and the link goes out (the SMS outbox). The customer opens the link from the outbox and types
a test card key by key; the panel shows the asterisks grow with every key (the page reports
counts, never values), then the customer pays and both pages show the result. The panel's
DOM is scanned at every step for the card.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from control_api.api import make_app, serve
from control_api.hostedpage import add_hosted_page
from control_api.panel import add_panel
from sipproxy.config import HostPort
from tests.browser.conftest import Browser
from tests.browser.test_panel import assert_no_card, card_in, sign_in
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.servicekit import ACME_NUMBER, AGENT, Harness

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]

PAN = "5555555555554444"  # the sandbox approves it; Mastercard, 16 digits
EXPIRY = "1139"
CVV = "846"
POSTAL = "94107"
PHONE = "+447700900123"


@asynccontextmanager
async def node_pages(harness: Harness) -> AsyncIterator[str]:
    """The control API with the panel and the hosted page, as the node serves them."""
    app = make_app(harness.service)
    add_hosted_page(app, harness.service)
    add_panel(app)
    runner, port = await serve(app, HostPort("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await harness.service.stop()
        await runner.cleanup()


def link_token(harness: Harness) -> str:
    """The token of the last link in the SMS outbox."""
    body = harness.storage.outbox()[-1].body
    m = re.search(r"/pay/([A-Za-z0-9_-]+)", body)
    assert m is not None, "no link in the SMS"
    return m.group(1)


async def test_self_service_payment_panel_and_hosted_page(
    browser: Browser, customer_browser: Browser
) -> None:
    agent, customer = browser, customer_browser
    harness = Harness(calls=FakeCallControl(auto_answer=True))
    harness.calls.add_call("call-a", called=ACME_NUMBER)
    async with node_pages(harness) as base:
        # the agent sends the link
        await sign_in(agent, base, AGENT)
        await agent.wait_text("call-payee", bool)
        await agent.select("profile-select", "link")
        await agent.wait("the self-service box", lambda: agent.visible("send-link-button"))
        await agent.type("phone", PHONE)
        await agent.click("send-link-button")
        await agent.wait_attr("payment-state", "data-state", "created")
        await agent.type("amount", "42.50")
        await agent.type("billing-name", "Ada Lovelace")
        await agent.click("details-button")
        await agent.wait_attr("payment-state", "data-state", "link_sent")
        await agent.wait_text("sms-state", lambda t: t in {"queued", "sent"})
        await agent.source()
        await agent.shot("1-link-sent")

        # the customer opens it
        await customer.get(f"{base}/pay/{link_token(harness)}")
        await customer.wait("the payment form", lambda: customer.visible("card_number"))
        assert "42.50" in await customer.text("amount")
        await customer.shot("1-page")
        await agent.wait_attr("payment-state", "data-state", "customer_active")

        # key by key: the panel's asterisks grow with every one
        for n, digit in enumerate(PAN, 1):
            await customer.type("card_number", digit, clear=False)
            masked = await agent.wait_text(
                "field-card_number-masked", lambda t, n=n: t.count("*") == n
            )
            assert masked == "*" * n
            if n == 8:
                await agent.source()
                await agent.shot("2-customer-typing")
                await customer.shot("2-typing")
        await customer.type("expiry", EXPIRY, clear=False)
        await customer.type("cvv", CVV, clear=False)
        await customer.type("postal_code", POSTAL, clear=False)
        await agent.wait_text("field-cvv-masked", lambda t: t == "***")
        assert await agent.text("field-expiry-masked") == "****"
        assert not await agent.visible("process-button"), "the customer pays, not the agent"
        await agent.source()

        await customer.click("pay")
        await customer.wait_attr("result", "data-result", "succeeded", timeout=15)
        await customer.shot("3-result")
        await agent.wait_attr("result-text", "data-result", "succeeded", timeout=15)
        assert await agent.text("result-text") == "Payment succeeded"
        await agent.source()
        await agent.shot("3-result")
        assert agent.console_errors() == []
        assert customer.console_errors() == []
        # the customer's result page holds no card data either
        assert not card_in(await customer.source(), PAN, EXPIRY, CVV)
        await customer.blank()
        await agent.blank()
    assert_no_card(agent, pan=PAN, expiry=EXPIRY, cvv=CVV)
