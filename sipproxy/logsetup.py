"""Logging: structlog, with one redaction processor that keeps card data out of every line.

DESIGN.md invariant 3: real digits never reach the logs. Rather than care at each call site,
every event, ours and the standard library's (aiohttp, asyncio), goes through one chain that
ends ``... -> format_exc_info -> redact_card_data -> render`` (:func:`configure_logging`), so
exception text and tracebacks are redacted too.

What :func:`redact_card_data` removes, in every value, at any depth of dicts/lists/tuples/sets
(keys included), for any object (it is turned into its ``str`` first):

- **Card-named keys**: a key with a word ``card``/``pan``/``cvv``/``cvc``/``csc``/``pin``/
  ``track``/``exp``/``expiry``/``expiration`` or containing ``digit``/``dtmf``/``cvv``/``cvc``
  (``card_number``, ``cardNumber``, ``dtmf_digits``, ``PAN``) has its whole value replaced by
  :data:`REDACTED`, whatever its type.
- **Digit runs** in strings: any run of 4 or more digits, allowing up to 3 spaces, tabs or
  dashes between digits (``4111 1111 1111 1111``, ``4111-1111``, ``1229``), Unicode digits
  included. A 3-digit CVV in free text is indistinguishable from any other small number and is
  not caught by this rule: log it under a card-named key, or better, not at all.
- **Big numbers**: an int or float of 12 digits or more (the shortest card numbers).
- **Keys** are values too: a key that is not an identifier (``"4111 1111"``) loses its digit
  runs; an identifier (``rfc4733_events``) only Luhn-valid runs of 12-19 digits.

What it keeps, because operators need it:

- IP addresses and ports in free text: ``10.0.0.1:5060``, ``[2001:db8::1]:5060``,
  ``2001:db8::1`` (an IPv6 literal whose all-decimal groups hold 12 digits or more is not
  kept: that is how a card number would hide in one).
- Numbers under 12 digits (ports, status codes, counters, durations).
- The values of :data:`KEPT_KEYS` (``call_id``, ``branch``, tags, ``timestamp``...) as they
  are, except any run of 12-19 digits that passes the Luhn check. SIP Call-IDs often hold
  digit runs (``1234567890@10.0.0.1``); an operator must be able to grep one across the
  proxy's and the PBX's logs, so they are kept unless the run could be a card number.

Time stamps are ISO 8601 under ``timestamp`` (a kept key). Messages carry numbers of 4 digits
and more as key-value pairs (``log.info("call ended", packets=12345)``), not inside the text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "KEPT_KEYS",
    "REDACTED",
    "configure_logging",
    "get_logger",
    "is_sensitive_key",
    "redact",
    "redact_card_data",
    "redact_text",
]

REDACTED: Final = "[REDACTED]"

KEPT_KEYS: Final = frozenset(
    {
        "call_id", "branch", "tag", "from_tag", "to_tag", "via", "cseq", "method", "status",
        "status_code", "reason", "addr", "peer", "local", "remote", "host", "port", "transport",
        "ssrc", "timestamp", "level", "logger", "pid",
    }
)  # fmt: skip
"""Keys whose string values are kept, except Luhn-valid 12-19 digit runs."""

_SENSITIVE_WORDS: Final = frozenset(
    {
        "card", "cards", "cardnumber", "cardno", "pan", "pans", "cvv", "cvv2", "cvc", "cvc2",
        "csc", "pin", "pins", "track", "track1", "track2", "exp", "expiry", "expiration",
        "expdate",
    }
)  # fmt: skip
_SENSITIVE_PARTS: Final = ("digit", "dtmf", "cvv", "cvc", "expir")
_MAX_DEPTH: Final = 8

_WORDS: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SEP: Final = r"[ \t\-]{0,3}"
_DIGIT_RUN: Final = re.compile(rf"\d(?:{_SEP}\d){{3,}}")
_LONG_RUN: Final = re.compile(rf"\d(?:{_SEP}\d){{11,}}")
# candidates for addresses kept in free text; each one is checked with ipaddress
_ADDRESS: Final = re.compile(
    r"\[(?P<v6b>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d{1,5})(?!\d))?"
    r"|(?<![\w.:])(?P<v4>\d{1,3}(?:\.\d{1,3}){3})(?::(?P<p4>\d{1,5})(?!\d))?(?![\w.])"
    r"|(?<![\w.:])(?P<v6>[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])"
)


def is_sensitive_key(key: str) -> bool:
    """Whether ``key`` names card data (its whole value is then redacted)."""
    low = key.lower()
    if any(part in low for part in _SENSITIVE_PARTS):
        return True
    return any(w.lower() in _SENSITIVE_WORDS for w in _WORDS.findall(key))


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _address_ok(m: re.Match[str]) -> bool:
    """Whether a candidate address is a real IP literal that cannot be hiding a card number."""
    host = m["v6b"] or m["v4"] or m["v6"]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        decimal_groups = [g for g in re.split(r"[:.]", host) if g.isdecimal()]
        if sum(len(g) for g in decimal_groups) >= 12:
            return False
    return True


def _redact_runs(text: str) -> str:
    return _DIGIT_RUN.sub(REDACTED, text)


def redact_text(text: str) -> str:
    """``text`` with every run of 4+ digits replaced, IP addresses and ports kept."""
    if not any(ch.isdigit() for ch in text):
        return text
    out: list[str] = []
    pos = 0
    for m in _ADDRESS.finditer(text):
        if not _address_ok(m):
            continue
        out.append(_redact_runs(text[pos : m.start()]))
        out.append(m[0])
        pos = m.end()
    out.append(_redact_runs(text[pos:]))
    return "".join(out)


def _redact_luhn(text: str) -> str:
    """Replace only runs of 12-19 digits that pass the Luhn check (for kept keys)."""

    def one(m: re.Match[str]) -> str:
        digits = _digits(m[0])
        for length in range(min(19, len(digits)), 11, -1):
            for start in range(len(digits) - length + 1):
                if _luhn_ok(digits[start : start + length]):
                    return REDACTED
        return m[0]

    return _LONG_RUN.sub(one, text)


def _redact_key(key: str) -> str:
    """Identifier-like keys (``rfc4733_events``) lose only Luhn-valid runs; others, all runs."""
    return _redact_luhn(key) if key.isidentifier() else redact_text(key)


def _big_number(value: int | float) -> bool:
    try:
        return abs(value) >= 10**11
    except OverflowError:  # pragma: no cover - inf/nan compare fine; defensive
        return True


def redact(value: object, key: str | None = None, _depth: int = 0) -> object:
    """``value`` with card data removed (see the module docstring); never mutates it."""
    if key is not None and is_sensitive_key(key):
        return REDACTED
    kept = key in KEPT_KEYS
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if kept:
            text = str(value)
            return value if _redact_luhn(text) == text else REDACTED
        return REDACTED if _big_number(value) else value
    if isinstance(value, str):
        return _redact_luhn(value) if kept else redact_text(value)
    if _depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        out: dict[object, object] = {}
        for k, v in value.items():
            k_text = k if isinstance(k, str) else str(k)
            out[_redact_key(k_text)] = redact(v, k_text, _depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact(v, key, _depth + 1) for v in value]
        return items if isinstance(value, list | set | frozenset) else tuple(items)
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not break logging
        return REDACTED
    return _redact_luhn(text) if kept else redact_text(text)


def redact_card_data(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: :func:`redact` applied to every key and value of the event."""
    out: EventDict = {}
    for k, v in event_dict.items():
        k_text = k if isinstance(k, str) else str(k)
        out[_redact_key(k_text)] = redact(v, k_text)
    return out


# -------------------------------------------------------------------------- configuration

_HANDLER_MARK: Final = "_dtmfmask_handler"


def configure_logging(
    *,
    fmt: Literal["json", "kv"] = "kv",
    level: int | str = "INFO",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send structlog and standard-library logging through one redacting chain to ``stream``.

    ``fmt``: ``json`` (one object per line) or ``kv`` (logfmt ``key=value`` lines). Calling it
    again replaces the handler it installed before. Returns that handler.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif fmt == "kv":
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "logger", "event"], drop_missing=True
        )
    else:
        raise ValueError(f"fmt must be json or kv, got {fmt!r}")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_card_data,  # the one place card data is removed: after all text exists
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (``sipproxy.relay``...), bound to ``initial``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
