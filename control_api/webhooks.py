"""Webhooks: every change of a payment session POSTed to the account's server, signed.

An account with a ``webhook:`` in ``profiles.yaml`` (:class:`~control_api.profiles.
WebhookConfig`) gets, for each new ``version`` of each of its payment sessions, an HTTP
``POST`` to its ``url`` whose body is exactly what ``GET /v1/payments/{id}`` returns for that
version (the agent's view: states, asterisks, brand, result; never card digits), with::

    Content-Type: application/json
    X-Dtmfmask-Event: payment.updated        (payment.finished once state is "finished")
    X-Dtmfmask-Delivery: 0b5c...-uuid        (the same on every retry of one delivery)
    X-Dtmfmask-Timestamp: 1765432198         (Unix seconds, set per attempt)
    X-Dtmfmask-Signature: v1=5d41...         (hex HMAC-SHA256, see below)

With ``events: finished`` only the ``payment.finished`` deliveries are sent.

**Verifying a delivery (the receiver's side).** The signature is
``v1=`` + hex(HMAC-SHA256(key = the secret's UTF-8 bytes, message = the timestamp header's
digits, ``"."``, then the raw request body bytes)). A receiver should:

1. read the raw body bytes (before any JSON parsing: re-serialising changes the bytes);
2. compute the HMAC over ``f"{timestamp}.".encode() + body`` and compare it with every
   ``v1=`` value in the signature header in constant time (``hmac.compare_digest``);
3. refuse a timestamp more than 5 minutes from its own clock (the replay window; keep clocks
   on NTP), and remember ``X-Dtmfmask-Delivery`` ids seen within that window to drop a
   replayed or retried duplicate;
4. apply the body only if its ``version`` is newer than the one it holds for that ``id``
   (deliveries of one session are sent in order, but a receiver that answers late may see
   a retry after its own timeout);
5. answer 2xx quickly (queue the work): anything else is a failed attempt.

:func:`verify` does 2 and 3 and is what the tests use as a receiver would.

**Delivery.** Per account, up to ``concurrency`` requests at a time, one session at a time
each, so one session's deliveries arrive in version order. A delivery is retried on network
errors, timeouts (``timeout_s``), 5xx and 429, after an exponential backoff with jitter
(``backoff_base_s * 2**(attempt-1)``, capped at ``backoff_max_s``, then a random 50-100 %
of it), or after ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_max_s``)
when the server sends a longer one; any other status (3xx, 4xx) is final, as is the
``max_attempts``-th failure: both are counted as failed, logged and audited
(``webhook_failed``).

**Bounded, coalescing.** Each account holds at most one undelivered item per session: a newer
version replaces the older one waiting (counted as coalesced; the receiver gets the newer
state, which includes everything the older one said), and a delivery waiting between retries
gives way to a newer version of its session. At most ``max_pending`` sessions wait per
account; past that the oldest waiting ``payment.updated`` is dropped (or the new one, if every
waiting item is a ``payment.finished``). A ``payment.finished`` is never dropped for room
below ``max_pending_finished`` (an outage of hours at a busy centre); past that hard bound
the oldest is dropped too, so memory stays bounded (DESIGN.md invariant 7). Dropped items
are counted by reason (``queue_full``, ``shutdown``, ``unconfigured``); a dropped
``payment.finished`` is also audited (``webhook_dropped``), so the operator can reconcile.

**Shut down** (:meth:`WebhookSender.stop`): no new deliveries; what is queued or in flight
gets ``grace_s`` to go out, then the rest is cancelled and counted as dropped.

**Card data**: the body is the view, which has none (the tests search every delivered body
and header for test PANs, expiries and CVVs); as a last guard, like the database, any run of
12 or more digits in a string is replaced before it is sent. The secret is never logged;
logs and audit rows name the URL's host only.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
import structlog

from control_api.profiles import Account, WebhookConfig
from sipproxy.metrics import Labels, MetricFamily, as_labels, counter, gauge

__all__ = [
    "EVENT_FINISHED",
    "EVENT_UPDATED",
    "REPLAY_WINDOW_S",
    "AuditFn",
    "WebhookSender",
    "sign",
    "verify",
]

log = structlog.get_logger("control_api.webhooks")

EVENT_UPDATED: Final = "payment.updated"
EVENT_FINISHED: Final = "payment.finished"
REPLAY_WINDOW_S: Final = 300
"""How far a delivery's timestamp may be from the receiver's clock (:func:`verify`)."""
USER_AGENT: Final = "dtmfmask-webhooks/1"
_REDACTED: Final = "[REDACTED]"
_LONG_DIGITS: Final = re.compile(r"\d(?:[ \t-]{0,3}\d){11,}")

AuditFn = Callable[[str | None, str | None, str, dict[str, Any]], None]
"""``audit(session_id, call_id, action, detail)``: a system audit row."""

DropReason = Literal["queue_full", "shutdown", "unconfigured"]
_Outcome = Literal["ok", "retry", "final"]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Dtmfmask-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = REPLAY_WINDOW_S,
) -> bool:
    """What a receiver checks: the timestamp header is within ``tolerance_s`` of ``now``
    and one ``v1=`` value of the signature header (comma-separated) matches."""
    if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
        return False
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    found = False
    for part in signature.split(","):
        found |= hmac.compare_digest(part.strip(), expected)
    return found


def retry_after_s(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header (delta seconds or an HTTP date) in seconds, else ``None``."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text[:9]))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _scrub(value: Any) -> Any:
    """The last guard: long digit runs out of every string about to be sent."""
    if isinstance(value, str):
        return _LONG_DIGITS.sub(_REDACTED, value)
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


@dataclass(eq=False, slots=True)
class _Delivery:
    """One version of one session, to be POSTed (its body is fixed at enqueue)."""

    session_id: str
    call_id: str | None
    version: int
    event: str
    body: bytes = field(repr=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def finished(self) -> bool:
        return self.event == EVENT_FINISHED


class _Endpoint:
    """One account's webhook: its config, waiting items, items in flight, workers."""

    def __init__(self, account: str, config: WebhookConfig) -> None:
        self.account = account
        self.config = config
        self.pending: OrderedDict[str, _Delivery] = OrderedDict()  # session id -> newest
        self.busy: set[str] = set()  # sessions with a delivery in flight
        self.workers: set[asyncio.Task[None]] = set()
        self.removed = False


class WebhookSender:
    """Delivers session views to accounts' webhooks. :meth:`configure` with the accounts
    (at start and on every reload), :meth:`notify` on every version change (synchronous,
    never blocks or raises), :meth:`stop` on shutdown. Set :attr:`audit` to write audit rows.
    Timing parameters are for tests; the defaults suit production."""

    def __init__(
        self,
        *,
        concurrency: int = 4,
        max_pending: int = 1000,
        max_pending_finished: int = 10_000,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        grace_s: float = 2.0,
        wall: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if concurrency < 1 or max_pending < 1 or max_pending_finished < max_pending:
            raise ValueError("concurrency and max_pending >= 1, max_pending_finished >= both")
        self.audit: AuditFn | None = None
        self._concurrency = concurrency
        self._max_pending = max_pending
        self._max_pending_finished = max_pending_finished
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self._grace_s = grace_s
        self._wall = wall
        self._jitter = jitter
        self._endpoints: dict[str, _Endpoint] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._client: aiohttp.ClientSession | None = None
        self._closing = False
        self.counts: dict[tuple[str, Labels], int] = {}

    def __repr__(self) -> str:
        return (
            f"WebhookSender(accounts={sorted(self._endpoints)}, pending={self.pending()}, "
            f"in_flight={sum(len(e.busy) for e in self._endpoints.values())})"
        )

    # ------------------------------------------------------------------ configuration

    def configure(self, accounts: Mapping[str, Account]) -> None:
        """Use the accounts' ``webhook`` settings from now on. A changed URL, secret or
        limit applies to waiting items and the next attempt of those in flight; an account
        whose webhook is gone has its waiting items dropped (``unconfigured``)."""
        for account in accounts.values():
            if account.webhook is None:
                continue
            ep = self._endpoints.get(account.id)
            if ep is None:
                self._endpoints[account.id] = _Endpoint(account.id, account.webhook)
            else:
                ep.config = account.webhook
        for account_id in list(self._endpoints):
            acct = accounts.get(account_id)
            if acct is None or acct.webhook is None:
                ep = self._endpoints.pop(account_id)
                ep.removed = True
                for item in ep.pending.values():
                    self._drop(ep, item, "unconfigured")
                ep.pending.clear()

    def enabled_for(self, account: str) -> bool:
        return account in self._endpoints

    def pending(self, account: str | None = None) -> int:
        """Items waiting (not in flight), for one account or all."""
        eps = self._endpoints.values() if account is None else [self._endpoints[account]]
        return sum(len(e.pending) for e in eps)

    # ------------------------------------------------------------------ enqueue

    def notify(self, account: str, view: Mapping[str, Any]) -> None:
        """A session's view changed (``view`` is what ``GET /v1/payments/{id}`` returns).
        Never raises: the payment goes on whatever happens to its webhook."""
        ep = self._endpoints.get(account)
        if ep is None:
            return
        try:
            self._enqueue(ep, view)
        except Exception as exc:
            log.error("webhook not queued", account=account, error=type(exc).__name__)

    def _enqueue(self, ep: _Endpoint, view: Mapping[str, Any]) -> None:
        finished = view.get("state") == "finished"
        if ep.config.events == "finished" and not finished:
            return
        item = _Delivery(
            session_id=str(view["id"]),
            call_id=view.get("call_id"),
            version=int(view["version"]),
            event=EVENT_FINISHED if finished else EVENT_UPDATED,
            body=json.dumps(_scrub(view)).encode("utf-8"),
        )
        if self._closing:
            self._drop(ep, item, "shutdown")
            return
        older = ep.pending.get(item.session_id)
        if older is not None:
            if older.version >= item.version:
                return
            ep.pending[item.session_id] = item  # keeps its place in the queue
            self._count("coalesced", ep.account)
        elif self._make_room(ep, item):
            ep.pending[item.session_id] = item
        self._kick(ep)

    def _make_room(self, ep: _Endpoint, item: _Delivery) -> bool:
        if len(ep.pending) < self._max_pending:
            return True
        victim = next((d for d in ep.pending.values() if not d.finished), None)
        if victim is not None:
            del ep.pending[victim.session_id]
            self._drop(ep, victim, "queue_full")
            return True
        if not item.finished:
            self._drop(ep, item, "queue_full")
            return False
        if len(ep.pending) >= self._max_pending_finished:
            _, oldest = ep.pending.popitem(last=False)
            self._drop(ep, oldest, "queue_full")
        return True

    def _kick(self, ep: _Endpoint) -> None:
        ready = sum(1 for sid in ep.pending if sid not in ep.busy)
        loop = asyncio.get_running_loop()
        while ready > 0 and len(ep.workers) < self._concurrency:
            task = loop.create_task(self._worker(ep))
            ep.workers.add(task)
            self._workers.add(task)
            task.add_done_callback(ep.workers.discard)
            task.add_done_callback(self._workers.discard)
            ready -= 1

    # ------------------------------------------------------------------ delivery

    def _claim(self, ep: _Endpoint) -> _Delivery | None:
        for sid in ep.pending:
            if sid not in ep.busy:
                ep.busy.add(sid)
                return ep.pending.pop(sid)
        return None

    async def _worker(self, ep: _Endpoint) -> None:
        while not ep.removed:
            item = self._claim(ep)
            if item is None:
                return
            try:
                await self._deliver(ep, item)
            except asyncio.CancelledError:
                self._drop(ep, item, "shutdown")
                raise
            except Exception as exc:  # a bug here must not end the account's deliveries
                log.error(
                    "webhook delivery broke",
                    account=ep.account,
                    session_id=item.session_id,
                    error=type(exc).__name__,
                )
                self._count("failed", ep.account)
            finally:
                ep.busy.discard(item.session_id)

    async def _deliver(self, ep: _Endpoint, item: _Delivery) -> None:
        attempt = 0
        while True:
            attempt += 1
            config = ep.config
            outcome, wait_s, detail = await self._attempt(config, item)
            if outcome == "ok":
                self._count("delivered", ep.account)
                log.debug(
                    "webhook delivered",
                    account=ep.account,
                    session_id=item.session_id,
                    version=item.version,
                    attempts=attempt,
                )
                return
            if outcome == "final" or attempt >= config.max_attempts:
                self._fail(ep, item, attempt, detail)
                return
            self._count("retried", ep.account)
            delay = min(self._backoff_max_s, self._backoff_base_s * 2.0 ** (attempt - 1))
            delay *= 0.5 + 0.5 * self._jitter()
            if wait_s is not None:
                delay = max(delay, min(wait_s, self._retry_after_max_s))
            log.info(
                "webhook attempt failed; retrying",
                account=ep.account,
                host=_host(config.url),
                session_id=item.session_id,
                attempt=attempt,
                retry_in_s=round(delay, 3),
                **detail,
            )
            await asyncio.sleep(delay)
            if ep.removed:
                self._drop(ep, item, "unconfigured")
                return
            if item.session_id in ep.pending:  # a newer version waits: it says more
                self._count("coalesced", ep.account)
                return

    async def _attempt(
        self, config: WebhookConfig, item: _Delivery
    ) -> tuple[_Outcome, float | None, dict[str, Any]]:
        """One POST: ``(outcome, Retry-After seconds, detail for logs and audit)``."""
        ts = int(self._wall())
        headers = {
            "Content-Type": "application/json",
            "X-Dtmfmask-Event": item.event,
            "X-Dtmfmask-Delivery": item.id,
            "X-Dtmfmask-Timestamp": str(ts),
            "X-Dtmfmask-Signature": sign(config.secret, ts, item.body),
        }
        try:
            async with self._session().post(
                config.url,
                data=item.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=config.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            return "retry", None, {"error": "timeout"}
        except (aiohttp.ClientError, OSError) as exc:
            return "retry", None, {"error": type(exc).__name__}
        if 200 <= status < 300:
            return "ok", None, {"status": status}
        if status == 429 or status >= 500:
            return "retry", retry_after_s(retry_after, self._wall()), {"status": status}
        return "final", None, {"status": status}

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._client

    # ------------------------------------------------------------------ outcomes

    def _fail(self, ep: _Endpoint, item: _Delivery, attempts: int, detail: dict[str, Any]) -> None:
        self._count("failed", ep.account)
        log.warning(
            "webhook delivery failed",
            account=ep.account,
            host=_host(ep.config.url),
            session_id=item.session_id,
            version=item.version,
            attempts=attempts,
            **detail,
        )
        self._audit(
            item,
            "webhook_failed",
            {
                "account": ep.account,
                "host": _host(ep.config.url),
                "event": item.event,
                "version": item.version,
                "delivery": item.id,
                "attempts": attempts,
                "status": detail.get("status"),
                "error": detail.get("error"),
            },
        )

    def _drop(self, ep: _Endpoint, item: _Delivery, reason: DropReason) -> None:
        self._count("dropped", ep.account, reason=reason)
        log.warning(
            "webhook delivery dropped",
            account=ep.account,
            session_id=item.session_id,
            version=item.version,
            webhook_event=item.event,
            reason=reason,
        )
        if item.finished:
            self._audit(
                item,
                "webhook_dropped",
                {
                    "account": ep.account,
                    "event": item.event,
                    "version": item.version,
                    "delivery": item.id,
                    "reason": reason,
                },
            )

    def _audit(self, item: _Delivery, action: str, detail: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit(item.session_id, item.call_id, action, detail)
        except Exception as exc:  # the audit's trouble must not stop deliveries
            log.error("webhook audit row not written", action=action, error=type(exc).__name__)

    def _count(self, what: str, account: str, **labels: str) -> None:
        key = (what, as_labels(account=account, **labels))
        self.counts[key] = self.counts.get(key, 0) + 1

    def count(self, what: str, account: str, **labels: str) -> int:
        """A counter's value (``delivered``, ``retried``, ``failed``, ``coalesced``,
        ``dropped`` with ``reason=``)."""
        if what == "dropped" and not labels:
            return sum(
                v
                for (w, lab), v in self.counts.items()
                if w == what and dict(lab)["account"] == account
            )
        return self.counts.get((what, as_labels(account=account, **labels)), 0)

    def collect(self) -> list[MetricFamily]:
        """Metric families (exported through :meth:`PaymentService.collect`)."""

        def by(what: str) -> dict[Labels, float]:
            return {lab: float(v) for (w, lab), v in self.counts.items() if w == what}

        pending = {as_labels(account=a): float(len(e.pending)) for a, e in self._endpoints.items()}
        return [
            counter(
                "dtmfmask_webhooks_delivered_total",
                "Webhook deliveries answered 2xx, by account.",
                by("delivered"),
            ),
            counter(
                "dtmfmask_webhooks_retried_total",
                "Webhook attempts that failed and were retried, by account.",
                by("retried"),
            ),
            counter(
                "dtmfmask_webhooks_failed_total",
                "Webhook deliveries given up (a final status or max_attempts), by account.",
                by("failed"),
            ),
            counter(
                "dtmfmask_webhooks_dropped_total",
                "Webhook deliveries dropped unsent, by account and reason.",
                by("dropped"),
            ),
            counter(
                "dtmfmask_webhooks_coalesced_total",
                "Webhook deliveries replaced by a newer version of the same session.",
                by("coalesced"),
            ),
            gauge("dtmfmask_webhooks_pending", "Webhook deliveries waiting, by account.", pending),
        ]

    # ------------------------------------------------------------------ lifecycle

    async def idle(self) -> None:
        """Return when nothing is waiting or in flight (tests, orderly drains)."""
        while self._workers:
            await asyncio.wait(list(self._workers))

    async def stop(self, grace_s: float | None = None) -> None:
        """Take no more; give what is queued or in flight ``grace_s`` (default: the
        constructor's) to go out; cancel and count the rest as dropped; close the client."""
        self._closing = True
        grace = self._grace_s if grace_s is None else grace_s
        if self._workers and grace > 0:
            await asyncio.wait(list(self._workers), timeout=grace)
        for ep in self._endpoints.values():
            for item in ep.pending.values():
                self._drop(ep, item, "shutdown")
            ep.pending.clear()
        tasks: Iterable[asyncio.Task[None]] = list(self._workers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
