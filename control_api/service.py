"""The payment service: the asyncio adapter around :class:`~control_api.session.PaymentSession`.

The session is sans-I/O; everything around it happens here, in one place:

- **Agent actions** (from :mod:`control_api.api`, already authenticated as a
  :class:`~control_api.profiles.TokenGrant`) become session inputs; what the session refuses
  comes back as :class:`ServiceError` (409 wrong state, 422 bad input, 403, 404).
- **Actions** the session emits are executed through :class:`~sipproxy.callcontrol.
  CallControl` (hold, retrieve, digit capture) and the session's
  :class:`~control_api.connectors.ProviderConnector` (join, process, release). Each action
  runs on its own: one that raises is logged and the next one still runs, so a finished
  session always gets ``ReleaseProviderLeg`` and ``RetrieveCaller`` executed (DESIGN.md
  invariant 5, nobody stranded).
- **Call-control events** (:class:`~sipproxy.callcontrol.CallGone`, ``Digit``,
  ``ProviderJoined``/``Failed``/``Left``, ``HoldChanged``) become session inputs for the
  call's session. Events that arrive while an action is being executed (a call-control
  implementation may emit them synchronously) are queued and handled right after, in order.
- **One timer per session** (``loop.call_at`` at :meth:`PaymentSession.get_timer`).
- **Long-poll**: every version change wakes the session's waiters (:meth:`wait_payment`).
- **Webhooks**: every version change is handed to the account's
  :class:`~control_api.webhooks.WebhookSender` (if it has a ``webhook:``), which POSTs the
  same view, signed, in the background.
- **Storage and audit**: the session row is rewritten on every version change; agent
  actions, field state changes, provider events and results are audited (never digits).
- **Self-service** (:class:`~control_api.selfservice.SelfServiceSession`): the session's
  ``SendPaymentLink`` becomes a link (:class:`~control_api.links.LinkService`; a resend
  revokes the earlier link) and an SMS (:class:`~control_api.sms.SmsSender`, the outbox by
  default), whose outcome goes back in as ``SmsOutcome``. The hosted page calls
  :meth:`PaymentService.page_view`, :meth:`~PaymentService.page_progress` (counts, never
  values) and :meth:`~PaymentService.page_submit` (the card, validated by the session, the
  link marked used, processed by the provider connector). Self-service sessions run on
  wall-clock time, do not end with the call, and are resumed from storage at
  :meth:`~PaymentService.start` (a link sent before a restart still works after it).
- **Rules**: a call belongs to the account whose ``numbers`` match its dialled number
  (others get 403; a call no account claims is 404 for everyone); payments need the
  account's feature on (403 ``payments_disabled``) and a call that is up (409
  ``call_not_up``); one live session per call (409 ``session_in_progress``); a create
  with a used ``Idempotency-Key`` returns the session it created.

Card digits pass through here in three places only, none of them looked at or logged:
``Digit`` events into the session, the hosted page's card into the self-service session
(:meth:`PaymentService.page_submit`), and the session's ``ProcessPayment`` into the
connector. Exceptions around them are logged by type only.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import sqlite3
import string
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import structlog

from control_api.cards import CardBrand, CardDetails
from control_api.connectors import ProviderConnector, make_connector
from control_api.events import (
    CallEnded,
    CallerHoldChanged,
    Cancel,
    CardRefused,
    ErrorCode,
    FieldName,
    FieldProgress,
    FieldUpdated,
    HoldCaller,
    Input,
    JoinProvider,
    KeyPressed,
    LateProviderResult,
    Output,
    PageOpened,
    Proceed,
    Process,
    ProcessPayment,
    ProviderAnswered,
    ProviderHungUp,
    ProviderResult,
    ReleaseProviderLeg,
    ResetField,
    Restarted,
    RetrieveCaller,
    SendLink,
    SendPaymentLink,
    SessionFinished,
    SessionState,
    SessionUpdated,
    SetDetails,
    SmsOutcome,
    StartCapture,
    StartDigitCapture,
    StopDigitCapture,
    SubmitCard,
    SwitchToGuided,
)
from control_api.events import ProviderFailed as SessionProviderFailed
from control_api.links import LinkError, LinkService, PageView
from control_api.profiles import PaymentProfile, PaymentsConfig, TokenGrant, load_payments
from control_api.selfservice import SelfServiceSession
from control_api.session import PaymentSession, SessionError, SessionErrorCode, check_details
from control_api.sms import (
    HttpSmsSender,
    OutboxSender,
    SmsResult,
    SmsSender,
    fill_template,
    is_e164,
    mask_phone,
)
from control_api.storage import AuditEntry, SessionRecord, Storage
from control_api.webhooks import WebhookSender
from sipproxy.callcontrol import (
    CallControl,
    CallControlEvent,
    CallGone,
    CallInfo,
    CallUp,
    Digit,
    HoldChanged,
    ProviderFailed,
    ProviderJoined,
    ProviderLeft,
)
from sipproxy.metrics import MetricFamily, as_labels, counter, gauge

__all__ = ["MAX_IDEMPOTENCY_KEY", "MAX_WAIT_S", "PaymentService", "ServiceError", "parse_amount"]

log = structlog.get_logger("control_api.service")

MAX_WAIT_S: Final = 30.0
"""Longest long-poll wait (``GET /v1/payments/{id}?wait=``)."""
MAX_IDEMPOTENCY_KEY: Final = 200
SMS_GRACE_S: Final = 3.0
"""How long :meth:`PaymentService.stop` waits for payment links being texted."""
MAX_FINISHED_IN_MEMORY: Final = 1000
"""Finished sessions kept in memory (for late provider events and fast reads); older ones
are served from storage."""
_ID_ALPHABET: Final = string.ascii_lowercase  # no digits: ids are never taken for card data


class ServiceError(Exception):
    """An API-visible refusal: HTTP ``status``, stable ``code``, a sentence without input;
    ``field`` names the card field a hosted-page refusal is about (``card_number``...)."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{status} {code}: {message}")


Actor = TokenGrant | None
"""Who did it: a token's account and role, or ``None`` for the system."""
AnySession = PaymentSession | SelfServiceSession


@dataclass(eq=False)
class _Live:
    """A session in memory and what the service keeps beside it. ``clock`` is the session's
    time: the loop's for guided sessions, wall-clock time for self-service ones."""

    session: AnySession
    account: str
    connector: ProviderConnector
    created_wall: float
    idempotency_key: str | None
    clock: Callable[[], float]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    audited_fields: dict[FieldName, tuple[str, str | None, str | None]] = field(
        default_factory=dict
    )


def _new_id() -> str:
    return "pay_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


ConnectorFactory = Callable[..., ProviderConnector]


class PaymentService:
    """Payment sessions on live calls. Construct, :meth:`start` inside the running loop,
    :meth:`stop` on shutdown (live sessions end ``interrupted``/``process_restart`` with the
    caller retrieved and the provider released)."""

    def __init__(
        self,
        config: PaymentsConfig,
        calls: CallControl,
        storage: Storage,
        *,
        connector_factory: ConnectorFactory = make_connector,
        today: Callable[[], date] = date.today,
        wall: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
        max_finished: int = MAX_FINISHED_IN_MEMORY,
        webhooks: WebhookSender | None = None,
        links: LinkService | None = None,
        sms: SmsSender | None = None,
    ) -> None:
        self._config = config
        self._accounts_by_number: tuple[PaymentsConfig, dict[str, str | None]] = (config, {})
        # moves whenever a call or a session may look different in GET /v1/calls (call
        # events, session inputs, reloads): the API caches the listing per generation
        self.calls_generation = 0
        self._calls = calls
        self.storage = storage
        self._factory = connector_factory
        self._today = today
        self._wall = wall
        self._new_id = new_id
        self._max_finished = max_finished
        self._connectors = self._make_connectors(config)
        self._sessions: dict[str, _Live] = {}
        self._by_call: dict[str, _Live] = {}  # the call's latest session, live or finished
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._queue: deque[CallControlEvent] = deque()
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = False
        self._running = False
        self.counts: dict[tuple[tuple[str, str], ...], int] = {}
        self._sms_tasks: set[asyncio.Task[None]] = set()
        self.webhooks = webhooks if webhooks is not None else WebhookSender()
        self.webhooks.audit = functools.partial(self._audit, None)
        self.webhooks.configure(config.accounts)
        self._own_links = links is None
        self._own_sms = sms is None
        self._bound: tuple[str, int] | None = None
        self.links = links if links is not None else self._make_links(config)
        self.sms = sms if sms is not None else self._make_sms(config)

    def __repr__(self) -> str:
        return f"PaymentService(sessions={len(self._sessions)}, running={self._running})"

    # ------------------------------------------------------------------ lifecycle

    @property
    def config(self) -> PaymentsConfig:
        return self._config

    @property
    def ready(self) -> bool:
        """Started, not stopping, and storage answers (``/readyz``)."""
        return self._running and self.storage.ping()

    def start(self) -> None:
        """Subscribe to call control; call inside the running loop (once)."""
        self._loop = asyncio.get_running_loop()
        if not self._subscribed:
            self._calls.subscribe(self._on_event)
            self._subscribed = True
        self._running = True
        for sid in self.storage.recovered:
            log.warning("session interrupted by restart", session_id=sid)
        self._resume_self_service()

    def _resume_self_service(self) -> None:
        """Self-service sessions waiting for the customer go on after a restart."""
        for rec in self.storage.live_self_service():
            if rec.id in self._sessions:
                continue
            try:
                if rec.resume is None:
                    raise ValueError("no resume data")
                session = SelfServiceSession.restore(rec.view, rec.resume)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("self-service session not resumed", session_id=rec.id, error=str(exc))
                continue
            connector = self._connectors.get(session.provider.name) or self._factory(
                session.provider, self._calls, today=self._today
            )
            live = _Live(
                session, rec.account, connector, rec.created_at, rec.idempotency_key, self._wall
            )
            self._sessions[rec.id] = live
            if (info := self._calls.call(rec.call_id)) is not None and info.state == "up":
                self._by_call.setdefault(rec.call_id, live)
            self._arm(live)
            log.info("self-service session resumed", session_id=rec.id, state=session.state.value)

    async def stop(self) -> None:
        """End every live session (``Restarted``: release, retrieve), cancel timers and
        tasks, wake long-pollers."""
        self._running = False
        for live in list(self._sessions.values()):
            if not live.session.finished:
                try:
                    self._feed(live, Restarted(), None)
                except Exception as exc:  # one broken session must not strand the others
                    log.error(
                        "stop: session not ended",
                        session_id=live.session.id,
                        error=type(exc).__name__,
                    )
        if self._sms_tasks:  # a link being texted: let it go out (the session outlives us)
            await asyncio.wait(set(self._sms_tasks), timeout=SMS_GRACE_S)
        tasks: list[asyncio.Task[None]] = []
        for live in self._sessions.values():
            self._disarm(live)
            tasks += live.tasks
            live.changed.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.stop()  # the sessions' last updates get its grace to go out

    def reload(self, config: PaymentsConfig, actor: Actor = None) -> None:
        """Use ``config`` from now on (tokens, accounts, numbers, profiles, providers).
        Sessions in progress keep the profile and provider they started with."""
        connectors = self._make_connectors(config)
        old = self._config
        self._config = config
        self.calls_generation += 1
        self._connectors = connectors
        self.webhooks.configure(config.accounts)
        if self._own_links and (
            config.links != old.links or config.link_base_url() != old.link_base_url()
        ):
            self.links = self._make_links(config)
        if self._own_sms and config.sms != old.sms:
            self.sms = self._make_sms(config)
        self._audit(actor, None, None, "config_reloaded", {"source": config.source})
        log.info(
            "payments configuration reloaded",
            source=config.source,
            accounts=len(config.accounts),
            profiles=len(config.profiles),
        )

    def reload_file(
        self,
        path: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        actor: Actor = None,
    ) -> PaymentsConfig:
        """Read ``path`` (default: the file the current config came from) and :meth:`reload`.
        A bad file raises :class:`~sipproxy.yamlreader.ConfigError` and changes nothing."""
        source = path if path is not None else self._config.source
        if path is None and not Path(source).is_file():
            raise ServiceError(409, "no_config_file", "the configuration was not read from a file")
        try:
            config = load_payments(source, env=os.environ if env is None else env)
        except ValueError as exc:
            self._audit(actor, None, None, "config_reload_failed", {"source": str(source)})
            log.error(
                "payments configuration reload refused; the old one stays",
                source=str(source),
                problems=str(exc),
            )
            raise
        self.reload(config, actor)
        return config

    def _make_links(self, config: PaymentsConfig) -> LinkService:
        secret = config.links.secret.encode() if config.links.secret else None
        return LinkService(self.storage, secret, self._link_base(config))

    def _link_base(self, config: PaymentsConfig) -> str:
        if config.links.base_url or self._bound is None:
            return config.link_base_url()
        host, port = self._bound
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def api_bound(self, host: str, port: int) -> None:
        """The control API (and the hosted page with it) listens on ``host:port``: links
        point there unless ``payments.links.base_url`` is set (``api.listen`` may say port
        0). The node calls this once its site is up."""
        self._bound = (host, port)
        if self._own_links:
            self.links.base_url = self._link_base(self._config)

    def _make_sms(self, config: PaymentsConfig) -> SmsSender:
        if config.sms.sender == "http" and config.sms.http is not None:
            return HttpSmsSender(config.sms.http)
        return OutboxSender(self.storage, wall=self._wall)

    def _make_connectors(self, config: PaymentsConfig) -> dict[str, ProviderConnector]:
        return {
            name: self._factory(provider, self._calls, today=self._today)
            for name, provider in config.providers.items()
        }

    # ------------------------------------------------------------------ auth and calls

    def authenticate(self, token: str) -> TokenGrant | None:
        return self._config.authenticate(token)

    def call_account(self, info: CallInfo) -> str | None:
        # agent UIs list calls several times a second: one pattern search per number and
        # configuration (the cache goes with a reload), not one per call per listing
        config = self._config
        cache = self._accounts_by_number
        if cache[0] is not config:
            cache = self._accounts_by_number = (config, {})
        try:
            return cache[1][info.called]
        except KeyError:
            if len(cache[1]) >= 4096:  # dialled numbers are many; keep the memory bounded
                cache[1].clear()
            account = cache[1][info.called] = config.account_for_number(info.called)
            return account

    def _call(self, grant: TokenGrant, call_id: str) -> CallInfo:
        info = self._calls.call(call_id)
        if info is None:
            raise ServiceError(404, "call_not_found", "no such call in progress")
        account = self.call_account(info)
        if account is None:
            raise ServiceError(404, "call_not_found", "no such call in progress")
        if account != grant.account:
            raise ServiceError(403, "forbidden", "the call belongs to another account")
        return info

    def _call_doc(
        self, info: CallInfo, account: str, profiles: list[str] | None = None
    ) -> dict[str, Any]:
        live = self._by_call.get(info.call_id)
        active = live.session.id if live is not None and not live.session.finished else None
        return {
            "id": info.call_id,
            "interaction_type": "call",
            "payee": info.caller,
            "caller": info.caller,
            "called": info.called,
            "state": info.state,
            "started_at": info.started_at,
            "held": info.held,
            "provider_leg": info.provider_leg,
            "payment": active,
            "profiles": (
                [p.name for p in self._config.profiles_for(account)]
                if profiles is None
                else list(profiles)
            ),
        }

    def list_calls(self, grant: TokenGrant) -> list[dict[str, Any]]:
        """The account's calls in progress, oldest first."""
        profiles = [p.name for p in self._config.profiles_for(grant.account)]
        out = [
            self._call_doc(info, grant.account, profiles)
            for info in self._calls.calls()
            if self.call_account(info) == grant.account
        ]
        out.sort(key=lambda d: d["started_at"])
        return out

    def get_call(self, grant: TokenGrant, call_id: str) -> dict[str, Any]:
        return self._call_doc(self._call(grant, call_id), grant.account)

    def hold_call(self, grant: TokenGrant, call_id: str) -> dict[str, Any]:
        self._call(grant, call_id)
        try:
            self._calls.hold(call_id)
        except KeyError:
            raise ServiceError(404, "call_not_found", "the call has ended") from None
        self._audit(grant, None, call_id, "call_held", {})
        return self.get_call(grant, call_id)

    def retrieve_call(self, grant: TokenGrant, call_id: str) -> dict[str, Any]:
        self._call(grant, call_id)
        self._calls.retrieve(call_id)
        self._audit(grant, None, call_id, "call_retrieved", {})
        return self.get_call(grant, call_id)

    # ------------------------------------------------------------------ profiles

    def profiles(self, grant: TokenGrant) -> dict[str, Any]:
        account = self._config.accounts.get(grant.account)
        enabled = account is not None and account.payments_enabled
        return {
            "payments_enabled": enabled,
            "profiles": [_profile_doc(p) for p in self._config.profiles_for(grant.account)],
        }

    # ------------------------------------------------------------------ payments

    def create_payment(
        self,
        grant: TokenGrant,
        call_id: str,
        profile_name: str,
        idempotency_key: str | None = None,
        *,
        phone: str | None = None,
        details: SetDetails | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Start a payment on the call. Returns the view and whether it was created now
        (``False``: the idempotency key's earlier session).

        Guided: the provider is dialled in and the caller held at once. Self-service: the
        link goes by SMS to ``phone`` (E.164; default the caller's number when it is one)
        as soon as the amount is known: at once when ``details`` are given, else when the
        agent sets them (or sends with :meth:`send_link`)."""
        account = self._config.accounts.get(grant.account)
        if account is None or not account.payments_enabled:
            raise ServiceError(
                403, "payments_disabled", "payments are not switched on for this account"
            )
        if idempotency_key is not None:
            if not (
                0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
                and idempotency_key.isascii()
                and idempotency_key.isprintable()
            ):
                raise ServiceError(
                    422,
                    "bad_idempotency_key",
                    f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                )
            rec = self.storage.session_by_key(grant.account, idempotency_key)
            if rec is not None:
                if rec.call_id != call_id or rec.profile != profile_name:
                    raise ServiceError(
                        422,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for another request",
                    )
                return self.get_payment(grant, rec.id), False
        info = self._call(grant, call_id)
        if info.state != "up":
            raise ServiceError(409, "call_not_up", "payments are taken on answered calls only")
        profile = next(
            (p for p in self._config.profiles_for(grant.account) if p.name == profile_name),
            None,
        )
        if profile is None:
            raise ServiceError(422, "unknown_profile", "no such payment profile for this account")
        if profile.method == "guided" and (phone is not None or details is not None):
            raise ServiceError(
                422, "invalid_body", "phone and details are for self-service profiles only"
            )
        if phone is not None and not is_e164(phone):
            raise ServiceError(
                422, "bad_phone", "phone must be an E.164 number such as +447700900123"
            )
        if details is not None:
            try:
                check_details(profile, details)
            except SessionError as exc:
                raise ServiceError(422, exc.code.value, exc.message) from None
        current = self._by_call.get(call_id)
        if current is not None and not current.session.finished:
            raise ServiceError(
                409, "session_in_progress", f"payment {current.session.id} is in progress"
            )
        provider = self._config.providers[profile.provider]
        connector = self._connectors[provider.name]
        loop = self._running_loop()
        session: AnySession
        if profile.method == "self_service":
            if phone is None and is_e164(info.caller):
                phone = info.caller
            session = SelfServiceSession(
                self._new_id(),
                call_id,
                profile,
                provider,
                today=self._today(),
                now=self._wall(),
                phone=phone,
            )
            clock = self._wall
        else:
            session = PaymentSession(
                self._new_id(), call_id, profile, provider, today=self._today(), now=loop.time()
            )
            clock = loop.time
        live = _Live(session, grant.account, connector, self._wall(), idempotency_key, clock)
        try:
            self.storage.insert_session(self._record(live))
        except sqlite3.IntegrityError:  # the same key raced in: same answer as above
            raise ServiceError(
                409, "session_in_progress", "a payment with this Idempotency-Key exists"
            ) from None
        self._sessions[session.id] = live
        self._by_call[call_id] = live
        self._count("created")
        self._audit(
            grant,
            session.id,
            call_id,
            "session_created",
            {"profile": profile.name, "provider": provider.name, "method": profile.method},
        )
        log.info(
            "payment session created",
            session_id=session.id,
            call_id=call_id,
            profile=profile.name,
            method=profile.method,
            account=grant.account,
        )
        if isinstance(session, PaymentSession):
            self._feed(live, Proceed(), grant)
        elif details is not None:
            self._act(live, details, grant)
            self._audit_details(grant, live)
        return session.view().to_dict(), True

    def get_payment(self, grant: TokenGrant, session_id: str) -> dict[str, Any]:
        """The agent's view (``version`` is the ETag)."""
        live = self._sessions.get(session_id)
        if live is not None:
            self._check_account(grant, live.account)
            return live.session.view().to_dict()
        rec = self.storage.session(session_id)
        if rec is None:
            raise ServiceError(404, "payment_not_found", "no such payment session")
        self._check_account(grant, rec.account)
        return dict(rec.view)

    async def wait_payment(
        self, grant: TokenGrant, session_id: str, seen_version: int | None, wait_s: float
    ) -> dict[str, Any]:
        """The view as soon as its version differs from ``seen_version``, or after
        ``wait_s`` (at most :data:`MAX_WAIT_S`) unchanged."""
        doc = self.get_payment(grant, session_id)
        live = self._sessions.get(session_id)
        if seen_version is None or doc["version"] != seen_version or wait_s <= 0 or live is None:
            return doc  # a stored record never changes again: no wait
        loop = self._running_loop()
        deadline = loop.time() + min(wait_s, MAX_WAIT_S)
        while self._running:
            event = live.changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
            doc = self.get_payment(grant, session_id)
            if doc["version"] != seen_version:
                return doc
        return self.get_payment(grant, session_id)

    def set_details(
        self, grant: TokenGrant, session_id: str, details: SetDetails
    ) -> dict[str, Any]:
        live = self._live(grant, session_id)
        self._act(live, details, grant)
        self._audit_details(grant, live)
        return live.session.view().to_dict()

    def _audit_details(self, grant: TokenGrant, live: _Live) -> None:
        s = live.session
        self._audit(
            grant, s.id, s.call_id, "details_set", {"amount": str(s.amount), "currency": s.currency}
        )

    def start_capture(self, grant: TokenGrant, session_id: str) -> dict[str, Any]:
        live = self._live(grant, session_id)
        self._act(live, StartCapture(), grant)
        self._audit(grant, session_id, live.session.call_id, "capture_started", {})
        return live.session.view().to_dict()

    def reset_field(self, grant: TokenGrant, session_id: str, name: str) -> dict[str, Any]:
        live = self._live(grant, session_id)
        try:
            field_name = FieldName(name)
        except ValueError:
            raise ServiceError(
                422, "unknown_field", f"fields are {', '.join(f.value for f in FieldName)}"
            ) from None
        self._act(live, ResetField(field_name), grant)
        self._audit(
            grant, session_id, live.session.call_id, "field_reset", {"field": field_name.value}
        )
        return live.session.view().to_dict()

    def process(self, grant: TokenGrant, session_id: str) -> dict[str, Any]:
        """Send the card to the provider; a repeat while processing or after is a no-op."""
        live = self._live_or_record(grant, session_id)
        if live is None:
            return self.get_payment(grant, session_id)  # finished long ago: idempotent
        before = live.session.version
        self._act(live, Process(), grant)
        if live.session.version != before:
            self._audit(grant, session_id, live.session.call_id, "process_requested", {})
        return live.session.view().to_dict()

    def cancel(self, grant: TokenGrant, session_id: str) -> dict[str, Any]:
        live = self._live(grant, session_id)
        self._act(live, Cancel(), grant)
        self._audit(grant, session_id, live.session.call_id, "cancel_requested", {})
        return live.session.view().to_dict()

    # ------------------------------------------------------------------ self-service

    def _self_service(self, grant: TokenGrant, session_id: str) -> tuple[_Live, SelfServiceSession]:
        live = self._live(grant, session_id)
        if not isinstance(live.session, SelfServiceSession):
            raise ServiceError(409, "wrong_state", "only self-service payments have a payment link")
        return live, live.session

    def send_link(
        self, grant: TokenGrant, session_id: str, phone: str | None = None
    ) -> dict[str, Any]:
        """Send the payment link by SMS (again: the earlier link is revoked), to ``phone``
        or the number it went to before."""
        live, session = self._self_service(grant, session_id)
        if phone is not None and not is_e164(phone):
            raise ServiceError(
                422, "bad_phone", "phone must be an E.164 number such as +447700900123"
            )
        to = phone or session.phone
        if to is None:
            raise ServiceError(
                422, "phone_required", "give the phone number (E.164) the link goes to"
            )
        self._act(live, SendLink(to), grant)
        self._audit(
            grant, session_id, session.call_id, "link_send_requested", {"to": mask_phone(to)}
        )
        return session.view().to_dict()

    def switch_to_guided(
        self, grant: TokenGrant, session_id: str, profile_name: str | None = None
    ) -> dict[str, Any]:
        """End the self-service session (``cancelled``/``switched_to_guided``) and start a
        guided one on its call, which must still be up: ``profile_name``, else the account's
        guided profile with the same provider and currency (else its first guided one). The
        amount and billing carry over when the guided profile takes them. Returns the new
        session's view."""
        live, session = self._self_service(grant, session_id)
        if session.state not in (
            SessionState.CREATED,
            SessionState.LINK_SENT,
            SessionState.SMS_FAILED,
            SessionState.CUSTOMER_ACTIVE,
        ):
            raise ServiceError(409, "wrong_state", f"not allowed in state {session.state.value}")
        info = self._calls.call(session.call_id)
        if info is None or info.state != "up":
            raise ServiceError(
                409, "call_not_up", "the call has ended: the customer can still pay by the link"
            )
        guided = [p for p in self._config.profiles_for(grant.account) if p.method == "guided"]
        if profile_name is not None:
            target = next((p for p in guided if p.name == profile_name), None)
            if target is None:
                raise ServiceError(
                    422, "unknown_profile", "no such guided payment profile for this account"
                )
        else:
            same = [
                p
                for p in guided
                if p.provider == session.profile.provider and p.currency == session.currency
            ]
            target = next(iter(same or guided), None)
            if target is None:
                raise ServiceError(
                    422, "no_guided_profile", "the account has no guided payment profile"
                )
        self._act(live, SwitchToGuided(), grant)
        self._by_call.pop(session.call_id, None)
        doc, _ = self.create_payment(grant, session.call_id, target.name)
        new = self._sessions[doc["id"]]
        if session.amount is not None and session.billing is not None:
            details = SetDetails(session.amount, session.currency, session.billing)
            try:
                self._feed(new, details, grant)
                self._audit_details(grant, new)
            except SessionError:
                pass  # the guided profile's limits differ: the agent enters them
        self._audit(grant, session_id, session.call_id, "switched_to_guided", {"guided": doc["id"]})
        return new.session.view().to_dict()

    # -- the hosted page (control_api.hostedpage): a link is the only credential

    def _page_session(self, token: str) -> tuple[_Live, SelfServiceSession]:
        sid = self.links.verify(token, self._wall())
        live = self._sessions.get(sid)
        if live is None or not isinstance(live.session, SelfServiceSession):
            raise LinkError("not_found")  # finished and evicted, or not resumable
        return live, live.session

    def _merchant(self, account: str) -> str:
        acct = self._config.accounts.get(account)
        return acct.name if acct is not None else account

    def page_view(self, token: str) -> PageView:
        """What the customer's page shows; opening it makes the session ``customer_active``.
        Raises :class:`LinkError` (the page shows one answer for every code)."""
        live, session = self._page_session(token)
        if session.state in (SessionState.LINK_SENT, SessionState.SMS_FAILED):
            self._feed(live, PageOpened(), None)
            self._audit(None, session.id, session.call_id, "page_opened", {})
        return session.page_view(self._merchant(live.account))

    def page_progress(self, token: str, field: str, digits: int, brand: str | None) -> None:
        """The customer has ``digits`` characters in ``field`` (never the values): the agent
        sees as many asterisks. Raises :class:`LinkError`, or :class:`ServiceError` 422 for
        a field the payment does not take or a count out of range, 409 once it is closed."""
        live, _ = self._page_session(token)
        try:
            name = FieldName(field)
        except ValueError:
            raise ServiceError(422, "unknown_field", "no such card field") from None
        if isinstance(digits, bool) or not isinstance(digits, int):
            raise ServiceError(422, "bad_progress", "digits must be a whole number")
        card_brand: CardBrand | None = None
        if brand is not None:
            try:
                card_brand = CardBrand(brand)
            except ValueError:
                raise ServiceError(422, "bad_brand", "no such card brand") from None
        try:
            self._feed(live, FieldProgress(name, digits, card_brand), None)
        except SessionError as exc:
            status = 409 if exc.code is SessionErrorCode.WRONG_STATE else 422
            raise ServiceError(status, exc.code.value, exc.message) from None

    async def page_submit(self, token: str, card: CardDetails) -> PageView:
        """Validate the card (a refusal is :class:`ServiceError` 422 with the card error code
        and ``field``; the link stays usable), mark the link used, process through the
        provider connector, and return the final view. A second submit: ``LinkError``."""
        live, session = self._page_session(token)
        try:
            outputs = self._feed(live, SubmitCard(card, self._today()), None)
        except SessionError as exc:
            del card
            if exc.code is SessionErrorCode.WRONG_STATE:
                raise LinkError("used") from None
            raise ServiceError(422, exc.code.value, exc.message) from None
        del card  # the session handed it to the connector's task; nothing here keeps it
        for out in outputs:
            if isinstance(out, CardRefused):  # nothing sent; the link stays usable
                code = out.error
                raise ServiceError(422, code.value, code.sentence, field=out.field.value)
        if not self.links.use(token, self._wall()):
            log.error("payment link used twice", session_id=session.id)  # not in one process
        self._audit(None, session.id, session.call_id, "card_submitted", {})
        limit = session.provider.processing_timeout_s + 1.0
        loop = self._running_loop()
        end = loop.time() + limit
        while not session.finished and self._running and (left := end - loop.time()) > 0:
            try:
                await asyncio.wait_for(live.changed.wait(), left)
            except TimeoutError:
                break
        return session.page_view(self._merchant(live.account))

    # -- lookups

    def _check_account(self, grant: TokenGrant, account: str) -> None:
        if account != grant.account:
            raise ServiceError(403, "forbidden", "the payment belongs to another account")

    def _live_or_record(self, grant: TokenGrant, session_id: str) -> _Live | None:
        live = self._sessions.get(session_id)
        if live is None:
            self.get_payment(grant, session_id)  # 404 / 403
            return None
        self._check_account(grant, live.account)
        return live

    def _live(self, grant: TokenGrant, session_id: str) -> _Live:
        live = self._live_or_record(grant, session_id)
        if live is None:
            raise ServiceError(409, "wrong_state", "the payment session has finished")
        return live

    def _act(self, live: _Live, event: Input, grant: TokenGrant) -> None:
        try:
            self._feed(live, event, grant)
        except SessionError as exc:
            status = 409 if exc.code is SessionErrorCode.WRONG_STATE else 422
            raise ServiceError(status, exc.code.value, exc.message) from None

    # ------------------------------------------------------------------ the engine

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("PaymentService.start() was not called")
        return self._loop

    def _feed(self, live: _Live, event: Input, actor: Actor) -> list[Output]:
        """One input into one session, its outputs executed, then queued events handled.
        Returns the outputs."""
        self.calls_generation += 1
        was_busy, self._busy = self._busy, True
        try:
            outputs = live.session.handle(event, live.clock())
            self._apply(live, outputs)
        finally:
            self._busy = was_busy
        if not was_busy:
            self._pump()
        return outputs

    def _apply(self, live: _Live, outputs: Iterable[Output]) -> None:
        for out in outputs:
            try:
                self._execute(live, out)
            except Exception as exc:  # log and go on: the next action must still run
                log.error(
                    "payment action failed",
                    session_id=live.session.id,
                    call_id=live.session.call_id,
                    action=type(out).__name__,
                    error=type(exc).__name__,
                )
        self._arm(live)

    def _execute(self, live: _Live, out: Output) -> None:
        call_id = live.session.call_id
        sid = live.session.id
        match out:
            case JoinProvider():
                self._spawn(live, self._join(live))
            case HoldCaller():
                try:
                    self._calls.hold(call_id)
                except KeyError:
                    log.info("hold: the call is gone", session_id=sid, call_id=call_id)
            case RetrieveCaller():
                self._calls.retrieve(call_id)
            case StartDigitCapture():
                self._calls.start_capture(call_id)
            case StopDigitCapture():
                self._calls.stop_capture(call_id)
            case ReleaseProviderLeg():
                live.connector.release(call_id)
            case ProcessPayment():
                self._spawn(live, self._process(live, out))
            case SendPaymentLink():
                task = self._spawn(live, self._send_link(live, out))
                self._sms_tasks.add(task)
                task.add_done_callback(self._sms_tasks.discard)
            case SessionUpdated():
                self.storage.update_session(self._record(live))
                live.changed.set()
                live.changed = asyncio.Event()
                self.webhooks.notify(live.account, live.session.view().to_dict())
            case FieldUpdated():
                self._field_audit(live, out)
            case CardRefused(field=name, error=error):
                self._audit(
                    None, sid, call_id, "card_refused", {"field": name.value, "error": error.value}
                )
            case SessionFinished(result=result, error=error, reference=reference):
                self._count("finished", result=result.value)
                self._audit(
                    None,
                    sid,
                    call_id,
                    "session_finished",
                    {
                        "result": result.value,
                        "error": error.value if error else None,
                        "reference": reference,
                    },
                )
                log.info(
                    "payment session finished",
                    session_id=sid,
                    call_id=call_id,
                    result=result.value,
                    error=error.value if error else None,
                )
                self._finished[sid] = None
                if isinstance(live.session, SelfServiceSession):
                    self.links.revoke(sid, self._wall())
                self._evict()
            case LateProviderResult(outcome=outcome, reference=reference):
                self._count("late_results")
                self._audit(
                    None,
                    sid,
                    call_id,
                    "late_provider_result",
                    {"outcome": outcome, "reference": reference},
                )
                log.warning(
                    "provider answered after the session ended: reconcile",
                    session_id=sid,
                    outcome=outcome,
                    reference=reference,
                )

    def _field_audit(self, live: _Live, out: FieldUpdated) -> None:
        """Audit a field's state, brand or error change (not every digit)."""
        brand = out.brand.value if out.brand else None
        error = out.error.value if out.error else None
        key = (out.state.value, brand, error)
        if live.audited_fields.get(out.field) == key:
            return
        live.audited_fields[out.field] = key
        self._audit(
            None,
            live.session.id,
            live.session.call_id,
            "field_updated",
            {
                "field": out.field.value,
                "state": out.state.value,
                "digits": out.digits,
                "brand": brand,
                "error": error,
            },
        )

    def _spawn(self, live: _Live, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._running_loop().create_task(coro)
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)
        return task

    async def _join(self, live: _Live) -> None:
        if live.session.finished:
            return  # ended (cancelled, hung up) before the task ran: do not dial
        try:
            await live.connector.join(live.session.call_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "provider join failed to start",
                session_id=live.session.id,
                call_id=live.session.call_id,
                error=type(exc).__name__,
            )
            self._audit(
                None,
                live.session.id,
                live.session.call_id,
                "provider_failed",
                {"reason": "error", "status": None},
            )
            self._feed(live, SessionProviderFailed("error"), None)

    async def _send_link(self, live: _Live, action: SendPaymentLink) -> None:
        """Issue the link (revoking the session's earlier ones), send it, report back."""
        session = live.session
        assert isinstance(session, SelfServiceSession)
        now = self._wall()
        try:
            self.links.revoke(session.id, now)
            _, url = self.links.issue(session.id, max(0.001, action.expires_at - now), now)
            expires = datetime.fromtimestamp(action.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            text = fill_template(
                self._config.sms.text,
                {
                    "merchant": self._merchant(live.account),
                    "purpose": session.profile.purpose or "payment",
                    "amount": str(session.amount),
                    "currency": session.currency,
                    "url": url,
                    "expires": expires,
                },
            )
            result = await self.sms.send(action.to, text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("payment link not sent", session_id=session.id, error=type(exc).__name__)
            result = SmsResult("failed", "outbox_error", f"{type(exc).__name__}")
        self._count("sms", state=result.state)
        self._audit(
            None,
            session.id,
            session.call_id,
            "sms_" + result.state,
            {
                "to": mask_phone(action.to),
                "link": action.link,
                "error": result.error,
                "detail": result.detail,
                "attempts": result.attempts,
            },
        )
        self._feed(live, SmsOutcome(result.state, result.error, action.link), None)

    async def _process(self, live: _Live, request: ProcessPayment) -> None:
        try:
            result = await live.connector.process(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # type only: the exception may have seen the card
            log.error(
                "provider processing raised", session_id=live.session.id, error=type(exc).__name__
            )
            result = ProviderResult("error", ErrorCode.PROCESSING_ERROR)
        del request  # the card: nothing here holds it any longer
        if result is None:
            return  # never answers: the session's processing deadline decides
        self._audit(
            None,
            live.session.id,
            live.session.call_id,
            "provider_result",
            {
                "outcome": result.outcome,
                "code": result.code.value if result.code else None,
                "reference": result.reference,
            },
        )
        self._feed(live, result, None)

    # -- timers

    def _arm(self, live: _Live) -> None:
        deadline = live.session.get_timer()
        if deadline == live.timer_at and (deadline is None or live.timer is not None):
            return
        self._disarm(live)
        if deadline is not None:
            live.timer_at = deadline
            loop = self._running_loop()
            at = loop.time() + max(
                0.0, deadline - live.clock()
            )  # the session's clock to the loop's
            live.timer = loop.call_at(at, self._fire, live)

    def _disarm(self, live: _Live) -> None:
        if live.timer is not None:
            live.timer.cancel()
        live.timer = None
        live.timer_at = None

    def _fire(self, live: _Live) -> None:
        at = live.timer_at
        live.timer = None
        live.timer_at = None
        if at is None:
            return
        now = max(live.clock(), at)  # call_at may run a hair early
        was_busy, self._busy = self._busy, True
        try:
            self._apply(live, live.session.handle_timer(now))
        except Exception as exc:
            log.error("session timer failed", session_id=live.session.id, error=type(exc).__name__)
        finally:
            self._busy = was_busy
        if not was_busy:
            self._pump()

    # -- call-control events

    def _on_event(self, event: CallControlEvent) -> None:
        self.calls_generation += 1
        self._queue.append(event)
        if len(self._queue) > 10_000:  # bounded: a runaway producer loses old events
            self._queue.popleft()
            log.error("call-control event queue full; oldest dropped")
        self._pump()

    def _pump(self) -> None:
        if self._busy:
            return
        while self._queue:
            event = self._queue.popleft()
            try:
                self._dispatch(event)
            except Exception as exc:
                log.error(
                    "call-control event not handled",
                    event=type(event).__name__,
                    call_id=event.call_id,
                    error=type(exc).__name__,
                )

    def _dispatch(self, event: CallControlEvent) -> None:
        if not self._running or isinstance(event, CallUp):
            return
        live = self._by_call.get(event.call_id)
        if live is None:
            return
        sid, call_id = live.session.id, event.call_id
        match event:
            case Digit(key=key):
                self._feed(live, KeyPressed(key), None)
            case CallGone(by=by):
                self._audit(None, sid, call_id, "call_ended", {"by": by})
                # the proxy ends a call when the media stops (the caller's side went away,
                # mostly) or on shutdown; the session knows two causes: caller and agent
                self._feed(live, CallEnded("agent" if by == "agent" else "caller"), None)
                self._by_call.pop(call_id, None)
            case ProviderJoined():
                self._audit(None, sid, call_id, "provider_joined", {})
                self._feed(live, ProviderAnswered(), None)
            case ProviderFailed(reason=reason, status=status):
                self._audit(
                    None, sid, call_id, "provider_failed", {"reason": reason, "status": status}
                )
                self._feed(live, SessionProviderFailed(reason, status), None)
            case ProviderLeft():
                self._audit(None, sid, call_id, "provider_left", {})
                self._feed(live, ProviderHungUp(), None)
            case HoldChanged(held=held):
                self._feed(live, CallerHoldChanged(held), None)

    # -- bookkeeping

    def _evict(self) -> None:
        while len(self._finished) > self._max_finished:
            sid, _ = self._finished.popitem(last=False)
            live = self._sessions.get(sid)
            if live is None or live.tasks:
                continue
            del self._sessions[sid]
            if self._by_call.get(live.session.call_id) is live:
                del self._by_call[live.session.call_id]

    def _record(self, live: _Live) -> SessionRecord:
        session = live.session
        return SessionRecord.from_view(
            session.view(),
            account=live.account,
            created_at=live.created_wall,
            updated_at=self._wall(),
            idempotency_key=live.idempotency_key,
            resume=session.snapshot() if isinstance(session, SelfServiceSession) else None,
        )

    def _audit(
        self,
        actor: Actor,
        session_id: str | None,
        call_id: str | None,
        action: str,
        detail: dict[str, Any],
    ) -> None:
        role = actor.role if actor is not None else "system"
        account = actor.account if actor is not None else None
        try:
            self.storage.audit(
                AuditEntry(self._wall(), role, account, session_id, call_id, action, detail)
            )
        except sqlite3.Error as exc:  # the payment goes on; the operator sees the gap
            log.error("audit row not written", action=action, error=type(exc).__name__)

    def _count(self, what: str, **labels: str) -> None:
        key = as_labels(what=what, **labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> list[MetricFamily]:
        """A :data:`sipproxy.metrics.Collector`: register it with the proxy's registry."""
        created = sum(v for k, v in self.counts.items() if dict(k)["what"] == "created")
        finished = {
            as_labels(result=dict(k)["result"]): v
            for k, v in self.counts.items()
            if dict(k)["what"] == "finished"
        }
        late = sum(v for k, v in self.counts.items() if dict(k)["what"] == "late_results")
        sms = {
            as_labels(state=dict(k)["state"]): v
            for k, v in self.counts.items()
            if dict(k)["what"] == "sms"
        }
        live = sum(1 for s in self._sessions.values() if not s.session.finished)
        return [
            counter("dtmfmask_payments_created_total", "Payment sessions created.", created),
            counter(
                "dtmfmask_payments_finished_total", "Payment sessions ended, by result.", finished
            ),
            counter(
                "dtmfmask_payments_late_results_total",
                "Provider results after the session ended (reconcile).",
                late,
            ),
            gauge("dtmfmask_payments_live", "Payment sessions in progress.", live),
            counter(
                "dtmfmask_payments_sms_total",
                "Self-service payment link messages, by outcome (queued, sent, failed).",
                sms,
            ),
            *self.webhooks.collect(),
        ]


def _profile_doc(p: PaymentProfile) -> dict[str, Any]:
    return {
        "name": p.name,
        "method": p.method,
        "purpose": p.purpose,
        "provider": p.provider,
        "currency": p.currency,
        "min_amount": str(p.min_amount),
        "max_amount": str(p.max_amount),
        "fields": [f.value for f in p.fields],
        "masking": p.masking,
        "show_last_four": p.show_last_four,
    }


def parse_amount(value: object) -> Decimal | None:
    """A JSON amount (decimal string, or a number read as :class:`Decimal`), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str) and 0 < len(value) <= 32:
        try:
            amount = Decimal(value.strip())
        except ArithmeticError:
            return None
        return amount if amount.is_finite() else None
    return None
