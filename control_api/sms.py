"""SMS senders: how a self-service payment link reaches the customer's phone.

One interface, :class:`SmsSender` (``await sender.send(to_e164, text) -> SmsResult``), two
implementations, chosen by ``payments.sms.sender`` in ``profiles.yaml``:

- :class:`OutboxSender` (``outbox``, the embedded default): the message is written to the
  ``sms_outbox`` table of the payments SQLite file (``id, to, body, created, state``), where
  the demo and the tests read it. Nothing leaves the machine; the result is ``queued``.
- :class:`HttpSmsSender` (``http``): a real SMS gateway over HTTP(S). The endpoint, the
  credentials (from environment variables, never the file) and the request body (a mapping of
  the gateway's field names to templates over ``{to}``, ``{text}``, ``{sender}``, sent as
  JSON or as a form) come from ``payments.sms.http``; every request has a timeout, and
  timeouts, connection failures, 429 and 5xx answers are retried with a short backoff. The
  result is ``sent`` (2xx) or ``failed`` with a stable error code and a sentence saying what
  happened (``timeout``: "no answer within 5 s (3 attempts)").

The text holds the link and the payment's description, never card data (there is none yet:
the customer types it on the page). Phone numbers are personal data: logs carry the masked
form (:func:`mask_phone`: ``+44*******123``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import aiohttp
import structlog

__all__ = [
    "SMS_ERRORS",
    "HttpSmsSender",
    "OutboxSender",
    "OutboxStore",
    "SmsError",
    "SmsResult",
    "SmsSender",
    "SmsState",
    "fill_template",
    "is_e164",
    "mask_phone",
]

log = structlog.get_logger("control_api.sms")

SmsState = Literal["queued", "sent", "failed"]
SmsError = Literal["timeout", "unreachable", "rejected", "gateway_error", "outbox_error"]
SMS_ERRORS: Final[dict[str, str]] = {
    "timeout": "the gateway did not answer in time (after every retry)",
    "unreachable": "the gateway could not be reached (connection refused, DNS, TLS)",
    "rejected": "the gateway refused the message (HTTP 4xx: credentials, number, format)",
    "gateway_error": "the gateway failed (HTTP 5xx or 429 after every retry)",
    "outbox_error": "the outbox could not be written",
}
"""Every ``error`` a failed :class:`SmsResult` carries, and what it means."""

_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}\Z")
MAX_TEXT: Final = 1000


def is_e164(number: str) -> bool:
    """Whether ``number`` is an E.164 number as written for SMS: ``+``, country code, 7-15
    digits in all, nothing else (no spaces or dashes)."""
    return bool(_E164.match(number))


def mask_phone(number: str) -> str:
    """``+447700900123`` -> ``+44*******123``: the first two and last three digits."""
    if not is_e164(number):
        return "*" * len(number)
    digits = number[1:]
    return "+" + digits[:2] + "*" * (len(digits) - 5) + digits[-3:]


@dataclass(frozen=True, slots=True)
class SmsResult:
    """What happened to one message. ``error`` (a code of :data:`SMS_ERRORS`) and
    ``detail`` (a sentence for the operator, no phone number in it) only when ``failed``."""

    state: SmsState
    error: SmsError | None = None
    detail: str = ""
    message_id: str | None = None
    attempts: int = 1


class SmsSender(Protocol):
    """Sends one text to one phone. Never raises: a failure is a ``failed`` result."""

    async def send(self, to_e164: str, text: str) -> SmsResult: ...


# ------------------------------------------------------------------------------ outbox


class OutboxStore(Protocol):
    """Where :class:`OutboxSender` writes (:class:`control_api.storage.Storage`)."""

    def add_sms(self, to: str, body: str, created: float) -> int: ...


class OutboxSender:
    """The embedded default: messages go to the ``sms_outbox`` table, state ``queued``."""

    def __init__(self, store: OutboxStore, *, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall

    def __repr__(self) -> str:
        return f"OutboxSender({self._store!r})"

    async def send(self, to_e164: str, text: str) -> SmsResult:
        try:
            row = self._store.add_sms(to_e164, text, self._wall())
        except Exception as exc:  # sqlite3.Error, a closed file: the session says failed
            log.error("sms outbox not written", to=mask_phone(to_e164), error=type(exc).__name__)
            return SmsResult(
                "failed", "outbox_error", f"the outbox write failed: {type(exc).__name__}"
            )
        log.info("sms queued in the outbox", to=mask_phone(to_e164), outbox_id=row)
        return SmsResult("queued", message_id=f"outbox-{row}")


# -------------------------------------------------------------------------------- http


@dataclass(frozen=True, slots=True)
class HttpSmsConfig:
    """``payments.sms.http``: one gateway request per message.

    ``body`` maps the gateway's field names to templates; ``{to}`` (E.164), ``{text}`` and
    ``{sender}`` are replaced. ``content_type`` ``json`` sends it as a JSON object, ``form``
    as ``application/x-www-form-urlencoded``. ``headers`` are sent as they are, plus the
    credentials: ``auth`` ``bearer`` (``Authorization: Bearer <secret>``), ``basic`` (the
    secret is ``user:password``), or ``header`` (``<auth_header>: <secret>``). ``retries`` is
    how many times a timeout, a connection failure, 429 or 5xx is tried again."""

    url: str
    body: Mapping[str, str]
    secret: str = field(default="", repr=False)
    auth: Literal["none", "bearer", "basic", "header"] = "none"
    auth_header: str = "X-Api-Key"
    content_type: Literal["json", "form"] = "json"
    headers: Mapping[str, str] = field(default_factory=dict)
    sender: str = ""
    timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.5


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """``{name}`` replaced for known names only (``{{`` is a literal brace)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        return values.get(m.group(1), m.group(0))

    return re.sub(r"\{\{|\}\}|\{([a-z_]+)\}", one, template)


class HttpSmsSender:
    """An SMS gateway over HTTP. Retries timeouts, connection failures, 429 and 5xx."""

    def __init__(
        self,
        config: HttpSmsConfig,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    ) -> None:
        self.config = config
        self._factory = session_factory

    def __repr__(self) -> str:
        return f"HttpSmsSender({self.config.url!r})"

    def request(self, to_e164: str, text: str) -> tuple[dict[str, str], bytes]:
        """The headers and body one message is sent with (tests check them)."""
        c = self.config
        values = {"to": to_e164, "text": text, "sender": c.sender}
        fields = {k: fill_template(v, values) for k, v in c.body.items()}
        headers = dict(c.headers)
        if c.content_type == "json":
            headers["Content-Type"] = "application/json"
            data = json.dumps(fields, ensure_ascii=False).encode()
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = urllib.parse.urlencode(fields).encode()
        if c.auth == "bearer":
            headers["Authorization"] = f"Bearer {c.secret}"
        elif c.auth == "basic":
            token = base64.b64encode(c.secret.encode("utf-8")).decode("ascii")
            headers["Authorization"] = f"Basic {token}"  # the secret is user:password
        elif c.auth == "header":
            headers[c.auth_header] = c.secret
        return headers, data

    async def send(self, to_e164: str, text: str) -> SmsResult:
        c = self.config
        headers, data = self.request(to_e164, text)
        attempts = c.retries + 1
        last = SmsResult("failed", "unreachable", "not tried", attempts=0)
        timeout = aiohttp.ClientTimeout(total=c.timeout_s)
        async with self._factory() as http:
            for attempt in range(1, attempts + 1):
                last = await self._once(http, headers, data, timeout, attempt)
                if last.state == "sent" or last.error == "rejected":
                    break
                if attempt < attempts:
                    await asyncio.sleep(c.backoff_s * 2 ** (attempt - 1))
        if last.state == "sent":
            log.info("sms sent", to=mask_phone(to_e164), attempts=last.attempts)
        else:
            log.warning(
                "sms not sent",
                to=mask_phone(to_e164),
                error=last.error,
                detail=last.detail,
                attempts=last.attempts,
            )
        return last

    async def _once(
        self,
        http: aiohttp.ClientSession,
        headers: dict[str, str],
        data: bytes,
        timeout: aiohttp.ClientTimeout,
        attempt: int,
    ) -> SmsResult:
        c = self.config
        tries = f"({attempt} attempt{'s' if attempt > 1 else ''})"
        try:
            async with http.post(c.url, data=data, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            return SmsResult(
                "failed", "timeout", f"no answer within {c.timeout_s:g} s {tries}", attempts=attempt
            )
        except aiohttp.ClientError as exc:
            return SmsResult(
                "failed",
                "unreachable",
                f"the gateway could not be reached: {type(exc).__name__} {tries}",
                attempts=attempt,
            )
        if 200 <= status < 300:
            return SmsResult("sent", message_id=_message_id(raw), attempts=attempt)
        if status == 429 or status >= 500:
            return SmsResult(
                "failed",
                "gateway_error",
                f"the gateway answered HTTP {status} {tries}",
                attempts=attempt,
            )
        return SmsResult(
            "failed",
            "rejected",
            f"the gateway refused the message with HTTP {status} (check the credentials, the "
            f"number and payments.sms.http.body) {tries}",
            attempts=attempt,
        )


def _message_id(raw: bytes) -> str | None:
    """The gateway's message id, if its JSON answer has an ``id``/``message_id``/``sid``."""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict):
        for key in ("message_id", "id", "sid"):
            value = doc.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)[:100]
    return None
