"""Provider connectors: how a payment provider joins a call and takes a card.

The payment session (:mod:`control_api.session`) says *what* to do (``JoinProvider``,
``ProcessPayment``, ``ReleaseProviderLeg``); a connector says *how*, for one provider, so a
real PSP can be added without touching the session logic or the service::

    connector = make_connector(provider_config, call_control)
    await connector.join(call_id)            # outcome: ProviderJoined / ProviderFailed events
    result = await connector.process(action) # ProviderResult, or None: no answer ever
    connector.release(call_id)               # idempotent

Deadlines are not the connector's business: the session's timers end a join that never
answers (``provider_no_answer``) and a process that never answers (``processing_timeout``).
A connector hands the card to the provider and keeps nothing: the :class:`ProcessPayment`
it was given is the only reference, dropped when :meth:`ProviderConnector.process` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Protocol

from control_api.events import ProcessPayment, ProviderResult
from control_api.profiles import ProviderConfig
from control_api.sandbox import SandboxProcessor
from sipproxy.callcontrol import CallControl

__all__ = ["ProviderConnector", "SandboxConnector", "make_connector"]


class ProviderConnector(Protocol):
    """One payment provider as the payment service drives it."""

    async def join(self, call_id: str) -> None:
        """Bring the provider into the call. Returns once the request is out; the outcome
        comes as ``ProviderJoined``/``ProviderFailed`` call-control events. Raises (any
        exception) if it cannot even try: the service reports ``provider_error``."""

    async def process(self, request: ProcessPayment) -> ProviderResult | None:
        """Authorise ``request``: the result, or ``None`` when the provider will never
        answer (the session's processing deadline then ends it). Raising is a
        ``processing_error``. Must not keep ``request.card`` after returning."""

    def release(self, call_id: str) -> None:
        """Take the provider off the call. Idempotent; never raises for a leg that is gone."""


class SandboxConnector:
    """The embedded ``sandbox`` provider: the provider leg is a SIP call to its ``sip_uri``
    (the sandbox user agent answers it and hears the digits as RFC 4733 events), and the
    authorisation is :class:`~control_api.sandbox.SandboxProcessor` deciding by test card."""

    def __init__(
        self,
        provider: ProviderConfig,
        calls: CallControl,
        *,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.provider = provider
        self._calls = calls
        self._today = today
        self._processor = SandboxProcessor()

    def __repr__(self) -> str:
        return f"SandboxConnector({self.provider.name!r}, {self.provider.sip_uri!r})"

    async def join(self, call_id: str) -> None:
        await self._calls.join_provider(
            call_id, self.provider.sip_uri, self.provider.answer_timeout_s
        )

    async def process(self, request: ProcessPayment) -> ProviderResult | None:
        # stateless: the processor reads the card and returns; nothing of it is kept here
        return self._processor.authorise(request, self._today())

    def release(self, call_id: str) -> None:
        self._calls.release_provider(call_id)


def make_connector(
    provider: ProviderConfig,
    calls: CallControl,
    *,
    today: Callable[[], date] = date.today,
) -> ProviderConnector:
    """The connector for ``provider``'s ``type`` (only ``sandbox`` so far)."""
    if provider.type == "sandbox":
        return SandboxConnector(provider, calls, today=today)
    raise ValueError(f"provider {provider.name!r}: no connector for type {provider.type!r}")
