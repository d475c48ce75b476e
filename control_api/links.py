"""Payment links for self-service sessions, and what the hosted page is shown.

A link is ``https://<public base>/pay/<token>``. The token is unguessable (a 128-bit random
id), signed (an HMAC over the id, the session id and the expiry, keyed from
``payments.links.secret``), bound to one session, expiring, and single-use for submission.

The token is 44 URL-safe characters: 22 for the random id, 22 for a MAC (HMAC-SHA256,
truncated to 128 bits) over the id, the session id and the expiry. The database keeps only
the SHA-256 of the id (``links`` table), with the session, the expiry and when the link was
used or revoked, so a copy of the file holds no working link, and a link with one character
changed is refused (``tampered``) before anything else is looked at. Sending a new link for a
session (a resend) revokes the earlier ones; a finished session's links are revoked too.

The key: ``payments.links.secret: {env: NAME}`` (at least 32 characters), so links survive a
restart and work on every node sharing the database. Without it (only allowed when the
configuration comes from no file: tests and the bare embedded default) a random key is made
per process, and links die with the process.

This module starts with the two types the hosted page (``control_api.hostedpage``) imports:

- :class:`PageView`: what the customer's page shows; built by ``PaymentService.page_view``.
- :class:`LinkError`: raised for a link that cannot be used. Its ``code`` (``not_found``,
  ``tampered``, ``expired``, ``used``) is for logs and metrics only; its message is the same
  for every code, and the page must show one plain answer for all of them so that nothing
  tells a prober which it hit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from control_api.storage import LinkRow

__all__ = [
    "DEFAULT_LINK_TTL_S",
    "LINK_ERROR_CODES",
    "MAX_LINK_TTL_S",
    "MIN_LINK_SECRET",
    "LinkError",
    "LinkErrorCode",
    "LinkService",
    "LinkStore",
    "PageView",
    "id_hash",
]

DEFAULT_LINK_TTL_S: Final = 24 * 3600.0
MAX_LINK_TTL_S: Final = 72 * 3600.0
MIN_LINK_SECRET: Final = 32
TOKEN_LENGTH: Final = 44
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{44}\Z")
_DIGIT_RUN: Final = re.compile(r"[0-9]{3}")
_MAC_CONTEXT: Final = b"dtmfmask-payment-link-v1"

LinkErrorCode = Literal["not_found", "tampered", "expired", "used"]
LINK_ERROR_CODES: frozenset[str] = frozenset({"not_found", "tampered", "expired", "used"})


class LinkError(Exception):
    """A payment link that cannot be used. ``str()`` is the same whatever the ``code``."""

    MESSAGE = "This payment link is not valid"

    def __init__(self, code: LinkErrorCode) -> None:
        if code not in LINK_ERROR_CODES:
            raise ValueError(f"unknown link error code {code!r}")
        super().__init__(self.MESSAGE)
        self.code: LinkErrorCode = code

    def __repr__(self) -> str:
        return f"LinkError({self.code!r})"


@dataclass(frozen=True, slots=True)
class PageView:
    """What the hosted payment page shows the customer: no card data, ever.

    ``fields`` are the names of the fields to ask for, in order (``card_number``, ``expiry``,
    ``cvv``, and ``postal_code`` when the profile asks). ``state`` is the self-service
    session's state (``link_sent``, ``customer_active``, ``processing``, ``finished``, ...);
    ``result`` and ``error`` are set once it finished (``succeeded``, ``declined``,
    ``failed``, ``cancelled``; error codes from the fixed list). ``brand_hint`` is reserved
    for a brand the page could pre-select (always ``None`` for now).
    """

    session_id: str
    merchant: str
    purpose: str
    amount: str
    currency: str
    fields: tuple[str, ...]
    state: str
    result: str | None = None
    error: str | None = None
    brand_hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "merchant": self.merchant,
            "purpose": self.purpose,
            "amount": self.amount,
            "currency": self.currency,
            "fields": list(self.fields),
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "brand_hint": self.brand_hint,
        }


# ------------------------------------------------------------------------------ links


class LinkStore(Protocol):
    """Where links are kept (:class:`control_api.storage.Storage`)."""

    def insert_link(self, row: LinkRow) -> None: ...

    def link(self, id_hash: str) -> LinkRow | None: ...

    def use_link(self, id_hash: str, now: float) -> bool: ...

    def revoke_links(self, session_id: str, now: float) -> int: ...


_NO_DIGITS: Final = str.maketrans("0123456789", "ghijklmnop")


def id_hash(link_id: bytes) -> str:
    """What the database keeps of a link: the SHA-256 of its random id, in hex with the
    digits spelled ``g``-``p`` (so no row ever looks like card data to a leak scan)."""
    return hashlib.sha256(link_id).hexdigest().translate(_NO_DIGITS)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkService:
    """Issues and checks payment links. ``now`` is wall-clock time (seconds since the epoch):
    expiries outlive the process."""

    def __init__(
        self,
        store: LinkStore,
        secret: bytes | None,
        base_url: str,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if secret is None:
            secret = random(32)  # per process: links die with it (documented above)
        if len(secret) < MIN_LINK_SECRET:
            raise ValueError(f"the link secret must be at least {MIN_LINK_SECRET} bytes")
        self._store = store
        self._key = hashlib.sha256(b"link-key|" + secret).digest()
        self.base_url = base_url.rstrip("/")
        self._random = random

    def __repr__(self) -> str:
        return f"LinkService({self.base_url!r})"

    def _mac(self, link_id: bytes, session_id: str, expires_at: float) -> bytes:
        msg = b"|".join((_MAC_CONTEXT, link_id, session_id.encode(), f"{expires_at:.3f}".encode()))
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:16]

    def url(self, token: str) -> str:
        return f"{self.base_url}/pay/{token}"

    def issue(self, session_id: str, ttl_s: float, now: float) -> tuple[str, str]:
        """A new link for ``session_id`` valid for ``ttl_s`` seconds (at most 72 h):
        ``(token, url)``. The token is shown once; only its id's hash is stored."""
        if not 0 < ttl_s <= MAX_LINK_TTL_S:
            raise ValueError(f"a link lives 0-{MAX_LINK_TTL_S:g} s")
        expires_at = round(now + ttl_s, 3)
        while True:
            link_id = self._random(16)
            token = _b64(link_id) + _b64(self._mac(link_id, session_id, expires_at))
            # no run of 3 digits: nothing in it looks like card data (a CVV, a PAN run) to
            # log redaction or to a leak scan
            if not _DIGIT_RUN.search(token):
                break
        self._store.insert_link(LinkRow(id_hash(link_id), session_id, expires_at, now, None, None))
        return token, self.url(token)

    def _check(self, token: str, now: float) -> LinkRow:
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise LinkError("not_found")
        try:
            link_id, mac = _unb64(token[:22]), _unb64(token[22:])
        except (binascii.Error, ValueError):
            raise LinkError("not_found") from None
        if _b64(link_id) + _b64(mac) != token:  # one spelling per token (unused low bits)
            raise LinkError("not_found")
        row = self._store.link(id_hash(link_id))
        if row is None:
            raise LinkError("not_found")
        if not hmac.compare_digest(mac, self._mac(link_id, row.session_id, row.expires_at)):
            raise LinkError("tampered")
        if row.used_at is not None:
            raise LinkError("used")
        if row.revoked_at is not None or now >= row.expires_at:
            raise LinkError("expired")
        return row

    def verify(self, token: str, now: float) -> str:
        """The session ``token`` opens, or :class:`LinkError` (``not_found``, ``tampered``,
        ``expired``: also a revoked link, ``used``)."""
        return self._check(token, now).session_id

    def expires_at(self, token: str, now: float) -> float:
        """When a valid ``token`` expires (raises like :meth:`verify`)."""
        return self._check(token, now).expires_at

    def use(self, token: str, now: float) -> str:
        """Check ``token`` and mark it used, at once (single use for submission); the
        session id. A second use raises ``LinkError("used")``."""
        row = self._check(token, now)
        if not self._store.use_link(row.id_hash, now):
            raise LinkError("used")
        return row.session_id

    def revoke(self, session_id: str, now: float) -> int:
        """Revoke every unused link of the session; how many were live."""
        return self._store.revoke_links(session_id, now)
