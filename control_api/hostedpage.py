"""The hosted payment page: where a self-service customer types their card, from an SMS link.

:func:`add_hosted_page` adds these routes to the control API's application (no bearer token:
the link's token is the credential, checked by the payment service on every request):

======  ========================  =========================================================
method  path                      what
======  ========================  =========================================================
GET     /pay/{token}              the form (or the result, once the payment has finished)
POST    /pay/{token}              the form's submit: plain ``application/x-www-form-urlencoded``,
                                  works without JavaScript; answers with the result page, or
                                  the form again, empty, with a message per field (422) or
                                  after a bad CSRF token (403)
POST    /pay/{token}/progress     from pay.js: ``{"field", "digits", "brand"}``, a count of
                                  the characters in one field (never a value) so the agent
                                  sees asterisks; 204, errors as ``{"error": {code, message}}``
GET     /pay/static/pay.js        our script (inventoried below), no other script exists
GET     /pay/static/pay.css       our stylesheet (system fonts; no web fonts)
======  ========================  =========================================================

**Bad links.** A link that is unknown, tampered with, expired or already used, and a
session that belongs to another link, all get one page, byte for byte the same
(:data:`INVALID_LINK_PAGE`, status 404 in every case: a 410 for some codes would tell a
prober which one it hit). It says "This payment link is not valid" and nothing about any
session. The service's :class:`~control_api.links.LinkError` code goes to the log and the
counters only.

**Security headers** on every response under ``/pay/`` (page, static, errors, 429s; set in
``on_response_prepare``, so even aiohttp's own 404/405 get them): :data:`CSP` (``default-src
'none'``, scripts and styles from this origin only, ``connect-src 'self'`` for the progress
posts, forms post only here, no framing, no ``<base>``), ``Cache-Control: no-store``,
``Referrer-Policy: no-referrer`` (the token is in the URL), ``X-Content-Type-Options:
nosniff``, ``X-Frame-Options: DENY``, ``Cross-Origin-Opener-Policy`` and
``-Resource-Policy: same-origin``, a ``Permissions-Policy`` that switches off camera,
microphone, geolocation and the Payment Request API, ``X-Robots-Tag: noindex``, and
``Strict-Transport-Security`` when the request came over TLS.

**Script inventory (PCI DSS 6.4.3).** :data:`ASSETS` lists every script and stylesheet the
page loads, with why it is there and its SHA-256 (:data:`SCRIPTS`: the scripts among them,
which is ``pay.js`` alone). The page loads them with Subresource
Integrity (``integrity="sha256-..."``), and :func:`add_hosted_page` refuses to start if a file
on disk differs from its inventoried hash: a change to pay.js is authorised by changing the
hash here, in review. There is no inline script or style (the CSP would block it anyway).

**CSRF**: signed double submit. The GET sets cookie ``pay_csrf`` (``HttpOnly``,
``SameSite=Strict``, ``Path=/pay/<token>``, ``Secure`` over TLS) and puts the same value in
a hidden form field ``csrf``; pay.js sends it as ``X-CSRF-Token``. A POST is served only if
cookie and field (or header) are equal and carry a valid HMAC for this link, and the browser
does not say it came from another site (``Sec-Fetch-Site: cross-site``). The HMAC key
is random per process unless given (``csrf_key``): after a restart an open page's first
submit gets the form back (403) with a fresh token and a message, never a payment.

**Rate limits** (:class:`PageLimits`, sliding windows, per client IP and per link, bounded
memory): page views, progress posts and submits; and bad attempts (bad links, bad CSRF) per
IP, after which that IP gets 429 on every ``/pay/`` route until the window passes. Every 429
is counted (:meth:`HostedPage.collect`) and logged (route, scope, address; never the token).

**One submit.** pay.js disables the button on submit; without it, a double click sends the
form twice: the second POST (same link, valid CSRF) waits for the first one's answer and
shows the same outcome, rather than "not valid" for the link the first one just spent.

**Never reflected**: nothing typed comes back in any answer. A form with problems comes back
empty, with fixed sentences (:data:`MESSAGES`); the form posts to ``action=""`` so the token
is not written into the page either. Card values are read, checked with
:mod:`control_api.cards` (the same checks pay.js makes, so a customer without JavaScript gets
every message at once) and handed to ``page_submit``, which checks them again.

**Element ids** (stable: the browser tests use them):

==================  =============================================================
id                  element
==================  =============================================================
``#payform``        the form (``method=post``, ``action=""``)
``#card_number``    card number input (``autocomplete=cc-number``, numeric keypad)
``#expiry``         expiry ``MM/YY`` input (``autocomplete=cc-exp``)
``#cvv``            security code input (``autocomplete=cc-csc``)
``#postal_code``    postal code input (only when the profile asks for it)
``#pay``            the submit button
``#errors``         error summary (``role=alert``, ``aria-live``); empty when all is well
``#<field>_error``  one field's message (``aria-live=polite``), e.g. ``#cvv_error``
``#brand``          the brand pay.js detected (``aria-live=polite``), in ``#brand_line``
                    (``hidden`` until the script runs)
``#merchant``       merchant name; ``#purpose``, ``#amount`` likewise
``#result``         the outcome page's section; ``data-result`` = ``succeeded``,
                    ``declined``, ``failed``, ``cancelled``, ``interrupted`` or
                    ``processing``; ``#reference`` holds the provider's reference
                    (once :class:`~control_api.links.PageView` carries one)
``#invalid_link``   the one page for every bad link (404)
``#too_many``       429; ``#unavailable``: the session cannot take a card (409);
                    ``#failure``: something broke (500)
==================  =============================================================
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final, Protocol

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from control_api.cards import (
    CardBrand,
    CardDetails,
    CardError,
    CardValidationError,
    validate_cvv,
    validate_expiry,
    validate_pan,
    validate_postal_code,
)
from control_api.links import LinkError, PageView
from control_api.service import ServiceError
from sipproxy.metrics import MetricFamily, as_labels, counter

__all__ = [
    "ASSETS",
    "CSP",
    "HOSTED_PAGE",
    "INVALID_LINK_PAGE",
    "MESSAGES",
    "SCRIPTS",
    "SECURITY_HEADERS",
    "Asset",
    "HostedPage",
    "PageLimits",
    "PageService",
    "PayLinkAccessLogger",
    "RateLimiter",
    "add_hosted_page",
]

log = structlog.get_logger("control_api.hostedpage")

STATIC_DIR: Final = Path(__file__).with_name("static")

# ------------------------------------------------------------------------- the inventory


@dataclass(frozen=True, slots=True)
class Asset:
    """One file the payment page loads, as authorised: name, type, why, and its SHA-256."""

    name: str
    content_type: str
    purpose: str
    sha256: str

    @property
    def url(self) -> str:
        return f"/pay/static/{self.name}"

    @property
    def integrity(self) -> str:
        """The Subresource Integrity value (``sha256-<base64>``)."""
        return "sha256-" + base64.b64encode(bytes.fromhex(self.sha256)).decode("ascii")


ASSETS: Final[tuple[Asset, ...]] = (
    Asset(
        "pay.js",
        "text/javascript; charset=utf-8",
        "our own: brand detection, field checks before submit, key counts to the agent's view",
        "5bbaf16be9a2c1a4db57f01796ca8dff11cfaf15285df5dac7196779f636940a",
    ),
    Asset(
        "pay.css",
        "text/css; charset=utf-8",
        "our own: phone-sized layout, system fonts only",
        "0c1f9530a80721258510370429f8e20991c7f0e7d47e72fb887bf295ab3c3bc9",
    ),
)
"""Every script and stylesheet on the payment page (PCI DSS 6.4.3). Nothing else loads."""

SCRIPTS: Final[tuple[Asset, ...]] = tuple(a for a in ASSETS if a.name.endswith(".js"))
"""The script inventory proper: ``pay.js`` and nothing else."""

_JS: Final = ASSETS[0]
_CSS: Final = ASSETS[1]

# ------------------------------------------------------------------------- headers

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The page's Content-Security-Policy. ``connect-src 'self'`` is what the progress posts
need (``default-src 'none'`` would block them); nothing else is allowed."""

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "X-Robots-Tag": "noindex, nofollow",
}
HSTS: Final = "max-age=31536000"

CSRF_COOKIE: Final = "pay_csrf"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
MAX_PROGRESS_BODY: Final = 512
MAX_TOKEN: Final = 512
"""A longer path segment is no link of ours: refused before the service sees it."""

FIELD_ORDER: Final = ("card_number", "expiry", "cvv", "postal_code")

# ------------------------------------------------------------------------- messages

MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {
    "card_number": {
        CardError.EMPTY: "Enter your card number.",
        CardError.NOT_DIGITS: "The card number can only contain digits.",
        CardError.UNKNOWN_BRAND: "We do not recognise this card number. Check the first digits.",
        CardError.WRONG_LENGTH: (
            "The card number has the wrong number of digits. Check it and try again."
        ),
        CardError.LUHN_FAILED: "The card number is not valid. Check for a mistyped digit.",
    },
    "expiry": {
        CardError.EMPTY: "Enter the expiry date.",
        CardError.NOT_DIGITS: "Enter the expiry date as MM/YY.",
        CardError.BAD_MONTH: "Enter the expiry date as MM/YY, with a month from 01 to 12.",
        CardError.EXPIRED: "This card has expired. Check the expiry date or use another card.",
        CardError.TOO_FAR_AHEAD: "The expiry date is too far in the future. Check the year.",
    },
    "cvv": {
        CardError.EMPTY: "Enter the security code.",
        CardError.NOT_DIGITS: "The security code can only contain digits.",
        CardError.WRONG_CVV_LENGTH: (
            "The security code is 3 digits on the back of the card "
            "(4 on the front for American Express)."
        ),
        # the same code once the brand is known
        "wrong_cvv_length_amex": (
            "The security code is the 4 digits on the front of an American Express card."
        ),
        "wrong_cvv_length_other": "The security code is the 3 digits on the back of the card.",
    },
    "postal_code": {
        CardError.EMPTY: "Enter your postal code.",
        CardError.BAD_POSTAL_CODE: "Enter a valid postal code: 3 to 10 letters or digits.",
    },
}
"""What the customer is told, per field and :class:`~control_api.cards.CardError` code (the
same sentences as pay.js). Fixed text: never any of the input."""

_CODE_FIELD: Final = {
    CardError.UNKNOWN_BRAND: "card_number",
    CardError.WRONG_LENGTH: "card_number",
    CardError.LUHN_FAILED: "card_number",
    CardError.BAD_MONTH: "expiry",
    CardError.EXPIRED: "expiry",
    CardError.TOO_FAR_AHEAD: "expiry",
    CardError.WRONG_CVV_LENGTH: "cvv",
    CardError.BAD_POSTAL_CODE: "postal_code",
}
_LABELS: Final = {
    "card_number": "Card number",
    "expiry": "Expiry date",
    "cvv": "Security code",
    "postal_code": "Postal code",
}
_HINTS: Final = {
    "card_number": "The long number on the front of your card.",
    "expiry": "MM/YY, as printed on the card.",
    "cvv": "3 digits on the back (4 on the front for American Express).",
    "postal_code": "The postal code of the card's billing address.",
}
_INPUT_ATTRS: Final = {
    "card_number": 'inputmode="numeric" autocomplete="cc-number" maxlength="23"',
    "expiry": 'inputmode="numeric" autocomplete="cc-exp" maxlength="7" placeholder="MM/YY"',
    "cvv": 'inputmode="numeric" autocomplete="cc-csc" maxlength="4"',
    "postal_code": 'autocomplete="postal-code" maxlength="10" autocapitalize="characters"',
}
_DECLINE_REASONS: Final = {
    "card_declined": "Your card issuer declined the payment.",
    "insufficient_funds": "Your card issuer declined the payment: not enough funds available.",
    "card_expired": "Your card issuer says the card has expired.",
    "invalid_card": "Your card issuer did not accept the card details.",
}
_CURRENCY_SIGNS: Final = {"GBP": "£", "EUR": "€", "USD": "$"}
_CSRF_NOTICE: Final = (
    "For your security this page was refreshed before your details were sent. "
    "Nothing was charged. Please enter your card details again."
)

# ------------------------------------------------------------------------- what we call


class PageService(Protocol):
    """The three :class:`~control_api.service.PaymentService` methods the page calls."""

    def page_view(self, token: str) -> PageView: ...

    def page_progress(self, token: str, field: str, digits: int, brand: str | None) -> None: ...

    async def page_submit(self, token: str, card: CardDetails) -> PageView: ...


# ------------------------------------------------------------------------- rate limits


@dataclass(frozen=True, slots=True)
class PageLimits:
    """How many requests per window (seconds). Per link and per client IP."""

    view_per_ip: tuple[int, float] = (60, 60.0)
    progress_per_token: tuple[int, float] = (240, 60.0)
    progress_per_ip: tuple[int, float] = (600, 60.0)
    submit_per_token: tuple[int, float] = (10, 600.0)
    submit_per_ip: tuple[int, float] = (30, 600.0)
    bad_attempts_per_ip: tuple[int, float] = (20, 600.0)
    """Bad links and bad CSRF tokens: once spent, the IP gets 429 everywhere under /pay/."""
    max_keys: int = 10_000
    """Keys (IPs, links) each limiter remembers; the least recently seen go first."""


class RateLimiter:
    """A sliding-window log: at most ``limit`` hits per ``window`` seconds per key. Memory is
    bounded: ``limit`` times per key, ``max_keys`` keys (least recently used dropped)."""

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit, window and max_keys must be positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may be served again; 0 if it may now."""
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return 0.0
        return max(hits[0] + self.window - now, 0.001)

    def record(self, key: str, now: float) -> None:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.limit)
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        hits.append(now)

    def hit(self, key: str, now: float) -> float:
        """Count one request if allowed (returns 0), else return the seconds to wait."""
        wait = self.retry_after(key, now)
        if wait == 0.0:
            self.record(key, now)
        return wait


class _Limited(Exception):
    def __init__(self, route: str, scope: str, retry_after: float) -> None:
        super().__init__(f"{route} rate limited per {scope}")
        self.route = route
        self.scope = scope
        self.retry_after = retry_after


# ------------------------------------------------------------------------- HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _money(amount: str, currency: str) -> str:
    """``£12.50``, ``12.50 CHF``; empty while the amount is not set."""
    if not amount:
        return ""
    sign = _CURRENCY_SIGNS.get(currency.upper())
    return f"{sign}{amount}" if sign else f"{amount} {currency.upper()}"


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(title)}</title>\n"
        f'<link rel="stylesheet" href="{_CSS.url}" integrity="{_CSS.integrity}">\n'
        f'<script src="{_JS.url}" integrity="{_JS.integrity}" defer></script>\n'
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _plain_page(page_id: str, title: str, text: str) -> str:
    return _document(
        title, f'<main id="{page_id}">\n<h1>{_e(title)}</h1>\n<p>{_e(text)}</p>\n</main>'
    )


INVALID_LINK_PAGE: Final = _plain_page(
    "invalid_link",
    "This payment link is not valid",
    "It may have expired or already been used. If you still need to pay, please contact "
    "the business that sent it to you.",
).encode()
"""The one answer to every bad link (404): the same bytes whatever was wrong."""

_TOO_MANY_PAGE: Final = _plain_page(
    "too_many",
    "Too many attempts",
    "Please wait a few minutes, then open the link again.",
).encode()
_UNAVAILABLE_PAGE: Final = _plain_page(
    "unavailable",
    "This payment can no longer be made here",
    "Please contact the business that sent you the link.",
).encode()
_ERROR_PAGE: Final = _plain_page(
    "failure",
    "Something went wrong",
    "We could not load or send this page. Please try again in a few minutes.",
).encode()


def _header(view: PageView, *, asking: bool = True) -> str:
    """Merchant, amount and purpose; the amount is the page's heading while it asks to pay
    (the outcome page has its own)."""
    amount = f'<span class="amount" id="amount">{_e(_money(view.amount, view.currency))}</span>'
    line = f"<h1>Pay {amount}</h1>" if asking else f'<p class="purpose">Amount: {amount}</p>'
    return (
        "<header>\n"
        f'<p class="merchant" id="merchant">{_e(view.merchant)}</p>\n'
        f"{line}\n"
        f'<p class="purpose" id="purpose">{_e(view.purpose)}</p>\n'
        "</header>"
    )


def _field_html(name: str, message: str | None) -> str:
    described = f"{name}_hint {name}_error"
    invalid = ' aria-invalid="true"' if message else ""
    extra = ""
    if name == "card_number":
        extra = (
            '\n<p class="hint" id="brand_line" hidden>Card type: '
            '<span id="brand" aria-live="polite"></span></p>'
        )
        described += " brand_line"
    return (
        '<div class="field">\n'
        f'<label for="{name}">{_e(_LABELS[name])}</label>\n'
        f'<input id="{name}" name="{name}" type="text" {_INPUT_ATTRS[name]} '
        f'spellcheck="false" autocorrect="off" required aria-describedby="{described}"'
        f"{invalid}>\n"
        f'<p class="hint" id="{name}_hint">{_e(_HINTS[name])}</p>{extra}\n'
        f'<p class="field-error" id="{name}_error" aria-live="polite">'
        f"{_e(message or '')}</p>\n"
        "</div>"
    )


def _message(field: str, code: str) -> str:
    return MESSAGES.get(field, {}).get(code, "Check this and try again.")


def form_page(
    view: PageView,
    csrf: str,
    problems: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> str:
    """The payment form. ``problems``: field -> CardError code; ``notice``: a fixed sentence.
    Inputs are always empty: what was typed never comes back."""
    problems = problems or {}
    errors = ""
    if notice:
        errors = f"<p>{_e(notice)}</p>"
    elif problems:
        items = "".join(
            f"<li>{_e(_LABELS[f])}: {_e(_message(f, c))}</li>"
            for f, c in sorted(problems.items(), key=lambda fc: FIELD_ORDER.index(fc[0]))
        )
        head = (
            "Please correct this:"
            if len(problems) == 1
            else f"Please correct these {len(problems)}:"
        )
        errors = f"<p>{head}</p><ul>{items}</ul>"
    fields = [f for f in FIELD_ORDER if f in view.fields]
    parts: list[str] = []
    for name in fields:
        code = problems.get(name)
        msg = _message(name, code) if code else None
        parts.append(_field_html(name, msg))
    # expiry and security code side by side: they are short
    if "expiry" in fields and "cvv" in fields:
        i = fields.index("expiry")
        if fields[i + 1 : i + 2] == ["cvv"]:
            parts[i : i + 2] = [
                '<div class="field-row">\n' + "\n".join(parts[i : i + 2]) + "\n</div>"
            ]
    pay_label = f"Pay {_money(view.amount, view.currency)}".rstrip()
    body = (
        "<main>\n"
        f"{_header(view)}\n"
        f'<div id="errors" role="alert" aria-live="assertive" tabindex="-1">{errors}</div>\n'
        '<form id="payform" method="post" action="" autocomplete="on">\n'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(csrf)}">\n'
        + "\n".join(parts)
        + f'\n<button id="pay" type="submit">{_e(pay_label)}</button>\n'
        "</form>\n"
        '<p class="note">Your card details go only to the payment provider: the person you '
        "spoke to cannot see them.</p>\n"
        "</main>"
    )
    return _document(f"Pay {view.merchant}", body)


def result_page(view: PageView, reference: str | None) -> str:
    """The outcome: success with the reference, or a plain reason. No card data."""
    money = _money(view.amount, view.currency)
    result = view.result or "processing"
    ref = ""
    if result == "succeeded":
        title = "Payment successful"
        of = f" of {money}" if money else ""
        text = f"Thank you. Your payment{of} to {view.merchant} has been taken."
        if reference:
            ref = (
                f'<p class="reference">Reference: <span id="reference">{_e(reference)}</span></p>\n'
            )
    elif result == "declined":
        title = "Payment declined"
        reason = _DECLINE_REASONS.get(view.error or "", "Your card issuer declined the payment.")
        text = (
            f"{reason} No money has been taken. Please contact {view.merchant} "
            "if you want to pay another way."
        )
    elif result == "failed":
        title = "Payment not completed"
        text = (
            "The payment could not be completed. Please contact "
            f"{view.merchant} before trying again."
        )
    elif result == "cancelled":
        title = "Payment cancelled"
        text = (
            f"This payment was cancelled. Please contact {view.merchant} if you still need to pay."
        )
    elif result == "interrupted":
        title = "Payment interrupted"
        text = (
            f"The payment was interrupted. Please contact {view.merchant} to check whether it "
            "went through."
        )
    else:
        title = "Processing your payment"
        text = (
            "We are waiting for the payment provider's answer. Please do not pay again: "
            f"{view.merchant} will confirm the outcome."
        )
    body = (
        "<main>\n"
        f"{_header(view, asking=False)}\n"
        f'<section id="result" class="{_e(result)}" data-result="{_e(result)}" '
        'aria-live="polite">\n'
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="outcome">{_e(text)}</p>\n'
        f"{ref}</section>\n</main>"
    )
    return _document(title, body)


# ------------------------------------------------------------------------- the page

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostedPage:
    """The handlers, their rate limiters and counters. Built by :func:`add_hosted_page`."""

    def __init__(
        self,
        service: PageService,
        *,
        limits: PageLimits | None = None,
        csrf_key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = date.today,
        trust_forwarded: bool = False,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.service = service
        self.limits = limits or PageLimits()
        self._key = csrf_key if csrf_key is not None else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError("csrf_key must be at least 16 bytes")
        self._clock = clock
        self._today = today
        self._trust_forwarded = trust_forwarded
        self.assets = _load_assets(static_dir)
        lim = self.limits

        def limiter(spec: tuple[int, float]) -> RateLimiter:
            return RateLimiter(spec[0], spec[1], lim.max_keys)

        self._per_ip = {
            "view": limiter(lim.view_per_ip),
            "progress": limiter(lim.progress_per_ip),
            "submit": limiter(lim.submit_per_ip),
        }
        self._per_link = {
            "progress": limiter(lim.progress_per_token),
            "submit": limiter(lim.submit_per_token),
        }
        self._bad_ip = limiter(lim.bad_attempts_per_ip)
        self.counts: dict[tuple[tuple[str, str], ...], int] = {}
        # submits waiting for the provider, by link: a second POST of the same form (a
        # double click without the script) gets the first one's outcome, not "not valid"
        self._inflight: dict[str, asyncio.Future[PageView | None]] = {}

    def __repr__(self) -> str:
        return f"HostedPage(counts={sum(self.counts.values())})"

    # -- bookkeeping

    def _count(self, what: str, **labels: str) -> None:
        key = as_labels(what=what, **labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def count(self, what: str, **labels: str) -> int:
        """How many times ``what`` (``rate_limited``, ``bad_link``, ``bad_csrf``,
        ``submitted``, ``invalid_form``, ``progress``) happened, with these labels."""
        want = set(labels.items())
        return sum(
            n
            for key, n in self.counts.items()
            if dict(key).get("what") == what and want <= set(key)
        )

    def collect(self) -> list[MetricFamily]:
        """A :data:`sipproxy.metrics.Collector` for the proxy's registry."""
        limited = {
            as_labels(route=dict(k)["route"], scope=dict(k)["scope"]): v
            for k, v in self.counts.items()
            if dict(k)["what"] == "rate_limited"
        }
        return [
            counter(
                "dtmfmask_payment_page_rate_limited_total",
                "Hosted payment page requests refused with 429, by route and scope.",
                limited,
            ),
            counter(
                "dtmfmask_payment_page_bad_links_total",
                "Hosted payment page requests with a link that is not valid.",
                self.count("bad_link"),
            ),
            counter(
                "dtmfmask_payment_page_bad_csrf_total",
                "Hosted payment page posts refused for a missing or wrong CSRF token.",
                self.count("bad_csrf"),
            ),
            counter(
                "dtmfmask_payment_page_submits_total",
                "Card details handed to the payment service from the hosted page.",
                self.count("submitted"),
            ),
        ]

    def _secure(self, request: web.Request) -> bool:
        """Over TLS: directly, or (``trust_forwarded``) as the reverse proxy says."""
        if request.secure:
            return True
        if not self._trust_forwarded:
            return False
        proto = request.headers.get("X-Forwarded-Proto", "")
        return proto.rsplit(",", 1)[-1].strip().lower() == "https"

    async def secure_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: the security headers on every answer under ``/pay/``."""
        if request.path.startswith("/pay/") or request.path == "/pay":
            response.headers.update(SECURITY_HEADERS)
            if self._secure(request):
                response.headers["Strict-Transport-Security"] = HSTS

    def _client(self, request: web.Request) -> str:
        if self._trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return request.remote or "unknown"

    def _limit(self, route: str, ip: str, token: str) -> None:
        """Refuse if the IP spent its bad attempts, or the route's limit per IP or (where it
        has one) per link is spent; count a hit on each only when all allow it."""
        checks = [(self._per_ip[route], ip, "ip")]
        if route in self._per_link:
            checks.append((self._per_link[route], token[:MAX_TOKEN], "link"))
        now = self._clock()
        waits = [(self._bad_ip.retry_after(ip, now), "bad_attempts")]
        waits += [(lim.retry_after(key, now), scope) for lim, key, scope in checks]
        for wait, scope in waits:
            if wait > 0:
                self._count("rate_limited", route=route, scope=scope)
                log.warning("payment page rate limited", route=route, scope=scope, remote=ip)
                raise _Limited(route, scope, wait)
        for lim, key, _ in checks:
            lim.record(key, now)

    def _bad_attempt(self, what: str, ip: str, **labels: str) -> None:
        self._count(what, **labels)
        self._bad_ip.record(ip, self._clock())

    # -- CSRF

    def _csrf_mac(self, token: str, nonce: str) -> str:
        mac = hmac.new(self._key, f"pay-csrf\0{token}\0{nonce}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:18]).decode("ascii")

    def _csrf_valid(self, token: str, value: str | None) -> bool:
        if not value or len(value) > 100:
            return False
        nonce, _, mac = value.partition(".")
        return bool(nonce) and hmac.compare_digest(
            mac.encode("ascii", "replace"), self._csrf_mac(token, nonce).encode("ascii")
        )

    def _csrf_for(self, request: web.Request, token: str) -> str:
        """The page's CSRF value: the cookie's if it is valid for this link (a second tab
        keeps the first one's working), else a new one."""
        current = request.cookies.get(CSRF_COOKIE)
        if current is not None and self._csrf_valid(token, current):
            return current
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._csrf_mac(token, nonce)}"

    def _csrf_ok(self, request: web.Request, token: str, sent: str | None) -> bool:
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            return False  # a browser says another site sent it: no need to look further
        cookie = request.cookies.get(CSRF_COOKIE)
        if cookie is None or sent is None:
            return False
        same = hmac.compare_digest(cookie.encode("utf-8"), sent.encode("utf-8"))
        return same and self._csrf_valid(token, cookie)

    def _set_csrf(
        self, response: web.Response, request: web.Request, token: str, value: str
    ) -> None:
        response.set_cookie(
            CSRF_COOKIE,
            value,
            path=f"/pay/{token}",
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )

    # -- answers

    def _html(self, body: str | bytes, status: int = 200) -> web.Response:
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, status=status, content_type="text/html", charset="utf-8")

    def _invalid(self) -> web.Response:
        return self._html(INVALID_LINK_PAGE, 404)

    def _too_many(self, exc: _Limited, json_body: bool) -> web.Response:
        headers = {"Retry-After": str(max(1, round(exc.retry_after + 0.5)))}
        if json_body:
            return _json_error(429, "rate_limited", "too many requests; try again later", headers)
        response = self._html(_TOO_MANY_PAGE, 429)
        response.headers.update(headers)
        return response

    def _form(
        self,
        request: web.Request,
        token: str,
        view: PageView,
        *,
        status: int = 200,
        problems: Mapping[str, str] | None = None,
        notice: str | None = None,
    ) -> web.Response:
        csrf = self._csrf_for(request, token)
        response = self._html(form_page(view, csrf, problems, notice), status)
        self._set_csrf(response, request, token, csrf)
        return response

    def _outcome(self, view: PageView) -> web.Response:
        reference = getattr(view, "reference", None)  # when PageView carries one
        return self._html(result_page(view, reference if isinstance(reference, str) else None))

    # -- routes

    async def static(self, request: web.Request) -> web.StreamResponse:
        asset, body = self.assets[request.match_info["name"]]
        return web.Response(body=body, headers={"Content-Type": asset.content_type})

    async def view(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        ip = self._client(request)
        try:
            self._limit("view", ip, token)
        except _Limited as exc:
            return self._too_many(exc, json_body=False)
        view = self._open_page(token, ip)
        if isinstance(view, web.Response):
            return view
        return self._form(request, token, view)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        ip = self._client(request)
        try:
            self._limit("submit", ip, token)
        except _Limited as exc:
            return self._too_many(exc, json_body=False)
        form = await request.post()
        sent = form.get(CSRF_FIELD)
        csrf_ok = self._csrf_ok(request, token, sent if isinstance(sent, str) else None)
        pending = self._inflight.get(token)
        if pending is not None and csrf_ok:
            first = await asyncio.shield(pending)
            if first is not None:
                self._count("resubmitted")
                return self._outcome(first)
        view = self._open_page(token, ip)
        if isinstance(view, web.Response):
            return view
        if not csrf_ok:
            self._bad_attempt("bad_csrf", ip, route="submit")
            log.info("payment page post without a valid CSRF token", route="submit", remote=ip)
            return self._form(request, token, view, status=403, notice=_CSRF_NOTICE)
        values: dict[str, str] = {f: _form_text(form, f) for f in FIELD_ORDER if f in view.fields}
        card, problems = _check_card(values, self._today())
        del values, form
        if card is None:
            self._count("invalid_form")
            return self._form(request, token, view, status=422, problems=problems)
        self._count("submitted")
        done: asyncio.Future[PageView | None] = asyncio.get_running_loop().create_future()
        self._inflight[token] = done
        try:
            final = await self.service.page_submit(token, card)
            done.set_result(final)
        except LinkError as exc:
            self._count("bad_link", route="submit")
            log.info("payment link refused", route="submit", code=exc.code, remote=ip)
            return self._invalid()
        except (ServiceError, CardValidationError) as exc:
            field, code = _problem(exc)
            if field is not None and code is not None:
                self._count("invalid_form")
                return self._form(request, token, view, status=422, problems={field: code})
            status = exc.status if isinstance(exc, ServiceError) else 422
            log.info("payment page submit refused", status=status, code=code)
            return self._html(_UNAVAILABLE_PAGE, 409 if status == 409 else 422)
        except Exception as exc:  # type only: the card was in scope
            log.error("payment page submit failed", error=type(exc).__name__)
            return self._html(_ERROR_PAGE, 500)
        finally:
            del card
            if self._inflight.get(token) is done:
                del self._inflight[token]
            if not done.done():
                done.set_result(None)  # a POST that waited on it goes the normal way
        return self._outcome(final)

    async def progress(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        ip = self._client(request)
        try:
            self._limit("progress", ip, token)
        except _Limited as exc:
            return self._too_many(exc, json_body=True)
        if not self._csrf_ok(request, token, request.headers.get(CSRF_HEADER)):
            self._bad_attempt("bad_csrf", ip, route="progress")
            log.info("payment page post without a valid CSRF token", route="progress", remote=ip)
            return _json_error(403, "bad_csrf", "reload the page")
        if request.content_type != "application/json":
            return _json_error(415, "bad_content_type", "send application/json")
        raw = await request.content.read(MAX_PROGRESS_BODY + 1)
        try:
            field, digits, brand = _progress_body(raw)
        except ValueError as exc:
            return _json_error(422, "invalid_body", str(exc))
        try:
            self.service.page_progress(token, field, digits, brand)
        except LinkError as exc:
            self._bad_attempt("bad_link", ip, route="progress")
            log.info("payment link refused", route="progress", code=exc.code, remote=ip)
            return _json_error(404, "link_not_valid", LinkError.MESSAGE)
        except ServiceError as exc:
            return _json_error(exc.status, exc.code, exc.message)
        self._count("progress")
        return web.Response(status=204)

    def _open_page(self, token: str, ip: str) -> PageView | web.Response:
        """The page's view while it takes the card; else the answer: link not valid, or the
        outcome (processing or finished)."""
        view = self._page_view(token, ip)
        if view is None:
            return self._invalid()
        if view.result is not None or view.state == "processing":
            return self._outcome(view)
        return view

    def _page_view(self, token: str, ip: str) -> PageView | None:
        if not token or len(token) > MAX_TOKEN:
            self._bad_attempt("bad_link", ip, route="page")
            return None
        try:
            return self.service.page_view(token)
        except LinkError as exc:
            self._bad_attempt("bad_link", ip, route="page")
            log.info("payment link refused", route="page", code=exc.code, remote=ip)
            return None

    def wrap(self, handler: Handler) -> Handler:
        """HTML routes answer with a page, whatever fails (the API's middleware would answer
        JSON)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:
                log.error(
                    "payment page request failed", method=request.method, error=type(exc).__name__
                )
                return self._html(_ERROR_PAGE, 500)

        return wrapped


# ------------------------------------------------------------------------- parsing


def _json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _form_text(form: Mapping[str, Any], name: str, limit: int = 40) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > limit:
        return "\x00"  # nothing of ours is that long: refused as not digits / bad format
    return value


def _normal_expiry(text: str) -> str:
    compact = re.sub(r"[\s/.-]", "", text)
    if len(compact) == 6 and compact.isascii() and compact.isdigit():
        compact = compact[:2] + compact[4:]  # MMYYYY
    return compact


def _check_card(
    values: Mapping[str, str], today: date
) -> tuple[CardDetails | None, dict[str, str]]:
    """The form's values checked with control_api.cards (every field, not just the first
    problem); a :class:`CardDetails` only if all pass."""
    problems: dict[str, str] = {}
    number = re.sub(r"[\s-]", "", values.get("card_number", ""))
    expiry = _normal_expiry(values.get("expiry", ""))
    cvv = values.get("cvv", "").strip()
    postal: str | None = None
    brand: CardBrand | None = None
    try:
        brand = validate_pan(number)
    except CardValidationError as exc:
        problems["card_number"] = exc.code.value
    try:
        validate_expiry(expiry, today)
    except CardValidationError as exc:
        problems["expiry"] = exc.code.value
    try:
        validate_cvv(cvv, brand)
    except CardValidationError as exc:
        problems["cvv"] = exc.code.value
        if exc.code is CardError.WRONG_CVV_LENGTH and brand is not None:
            problems["cvv"] += "_amex" if brand is CardBrand.AMEX else "_other"
    if "postal_code" in values:
        try:
            postal = validate_postal_code(values["postal_code"])
        except CardValidationError as exc:
            problems["postal_code"] = exc.code.value
    if problems:
        return None, problems
    return CardDetails(number, expiry, cvv, postal), problems


def _problem(exc: ServiceError | CardValidationError) -> tuple[str | None, str | None]:
    """The card field and CardError code a refusal names, if it names one."""
    code = exc.code.value if isinstance(exc, CardValidationError) else exc.code
    field = getattr(exc, "field", None)
    try:
        card_code = CardError(code)
    except ValueError:
        return None, code
    if not isinstance(field, str) or field not in FIELD_ORDER:
        field = _CODE_FIELD.get(card_code)
    return field, card_code.value


def _progress_body(raw: bytes) -> tuple[str, int, str | None]:
    """``{"field", "digits", "brand"}`` and nothing else; the error never repeats the body."""
    if len(raw) > MAX_PROGRESS_BODY:
        raise ValueError(f"the body must be at most {MAX_PROGRESS_BODY} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict) or set(data) - {"field", "digits", "brand"}:
        raise ValueError("the body must be an object with field, digits and brand only")
    field, digits, brand = data.get("field"), data.get("digits"), data.get("brand")
    if field not in FIELD_ORDER:
        raise ValueError(f"field must be one of {', '.join(FIELD_ORDER)}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 19:
        raise ValueError("digits must be a whole number 0-19")
    if brand is not None and brand not in {b.value for b in CardBrand}:
        raise ValueError("brand must be a card brand or null")
    if brand is not None and field != "card_number":
        raise ValueError("only card_number has a brand")
    return str(field), digits, brand


def _load_assets(static_dir: Path) -> dict[str, tuple[Asset, bytes]]:
    """Every inventoried file, read once; one whose SHA-256 is not the inventory's is
    refused (it was changed without being authorised)."""
    loaded: dict[str, tuple[Asset, bytes]] = {}
    for asset in ASSETS:
        body = (static_dir / asset.name).read_bytes()
        actual = hashlib.sha256(body).hexdigest()
        if actual != asset.sha256:
            raise RuntimeError(
                f"{asset.name}: SHA-256 {actual} is not the inventoried {asset.sha256} "
                "(control_api/hostedpage.py ASSETS): review the change and update the inventory"
            )
        loaded[asset.name] = (asset, body)
    return loaded


# ------------------------------------------------------------------------- wiring

_PAY_PATH: Final = re.compile(r"/pay/(?!static/)[^/?#]+")


class PayLinkAccessLogger(AbstractAccessLogger):
    """An aiohttp access log that never writes a payment link: ``/pay/<token>`` becomes
    ``/pay/<link>`` (a link is a credential until it is used). Pass it as
    ``web.AppRunner(app, access_log_class=PayLinkAccessLogger)`` wherever the API runs with
    an access log (the node runs without one)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # no body size: 4-digit numbers are redacted from log lines as possible card data
        self.logger.info(
            '%s "%s %s" %s %.3fs',
            request.remote or "-",
            request.method,
            _PAY_PATH.sub("/pay/<link>", request.path),
            response.status,
            time,
        )


HOSTED_PAGE: Final = web.AppKey("hosted_page", HostedPage)


def add_hosted_page(
    app: web.Application,
    service: PageService,
    *,
    limits: PageLimits | None = None,
    csrf_key: bytes | None = None,
    clock: Callable[[], float] = time.monotonic,
    today: Callable[[], date] = date.today,
    trust_forwarded: bool = False,
) -> HostedPage:
    """Add the hosted payment page's routes to ``app`` (before it starts); returns the page
    (also at ``app[HOSTED_PAGE]``; register :meth:`HostedPage.collect` for ``/metrics``).

    ``limits``: :class:`PageLimits`; ``csrf_key``: the CSRF HMAC key (default random per
    process); ``clock`` (monotonic seconds) and ``today`` for tests; ``trust_forwarded``: take
    the client address from the last ``X-Forwarded-For`` entry and TLS from
    ``X-Forwarded-Proto`` (cookie ``Secure``, HSTS), for a node behind exactly one trusted
    reverse proxy (otherwise those headers are ignored: anyone can send them)."""
    page = HostedPage(
        service,
        limits=limits,
        csrf_key=csrf_key,
        clock=clock,
        today=today,
        trust_forwarded=trust_forwarded,
    )
    app[HOSTED_PAGE] = page
    app.on_response_prepare.append(page.secure_headers)
    r = app.router
    names = "|".join(re.escape(a.name) for a in ASSETS)
    r.add_get(f"/pay/static/{{name:(?:{names})}}", page.static)
    r.add_get("/pay/{token}", page.wrap(page.view))
    r.add_post("/pay/{token}", page.wrap(page.submit))
    r.add_post("/pay/{token}/progress", page.progress)
    return page
