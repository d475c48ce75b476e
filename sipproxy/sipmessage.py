"""SIP messages (RFC 3261): parse, inspect, build and serialize, sans-I/O.

No sockets, no asyncio, no clock: bytes in, message objects out, and back.

Entry points:

- :func:`parse_message` parses one datagram into a :class:`SipRequest` or :class:`SipResponse`.
- :class:`StreamFramer` cuts a TCP byte stream into messages (Content-Length framing).
- ``message.serialize()`` gives canonical bytes with a correct Content-Length.
- :func:`build_response` makes a response to a request as RFC 3261 §8.2.6 asks.
- :func:`parse_cseq`, :func:`parse_via`, :func:`parse_name_addr`, :func:`parse_uri`,
  :func:`parse_max_forwards`, :func:`parse_date` parse the header values a B2BUA needs.

Every rejection is a :class:`SipParseError` naming the RFC 3261 rule that was broken and the
byte offset where it was found. Errors never quote the input: SIP messages carry phone numbers
and, in INFO bodies, key presses (DESIGN.md invariant 3).

Header values are decoded as UTF-8 with ``surrogateescape``, so bytes that are not UTF-8
(an old phone's Latin-1 display name) survive a parse/serialize round trip unchanged.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DEFAULT_MAX_SIZE",
    "AbsoluteUri",
    "CSeq",
    "Headers",
    "NameAddr",
    "SipDefect",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_response",
    "canonical_name",
    "parse_cseq",
    "parse_date",
    "parse_max_forwards",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
]

DEFAULT_MAX_SIZE: Final = 65536
"""Largest message accepted, in bytes (64 KiB, the largest a UDP datagram can carry)."""

SIP_VERSION: Final = "SIP/2.0"
_MAX_CSEQ: Final = 2**31  # §8.1.1.5: "MUST be less than 2**31"
_ENC: Final = "utf-8"
_ERRS: Final = "surrogateescape"


# ---------------------------------------------------------------------------------------------
# Errors


class SipParseError(ValueError):
    """The input broke a rule of RFC 3261.

    ``rule`` names the rule (section and ABNF production), ``offset`` is where it was found:
    a byte offset into the message for :func:`parse_message` and :class:`StreamFramer`, a
    character offset into the string for the header-value parsers. ``status`` is the response
    code a UAS should answer with (400, or 505 for a bad version, 513 for an oversized message).
    """

    def __init__(self, description: str, rule: str, offset: int, status: int = 400) -> None:
        super().__init__(f"{description} (RFC 3261 {rule}) at offset {offset}")
        self.description = description
        self.rule = rule
        self.offset = offset
        self.status = status


@dataclass(frozen=True, slots=True)
class SipDefect:
    """Something tolerated on input (liberal receiver), fixed on output by serialize()."""

    description: str
    rule: str
    offset: int


# ---------------------------------------------------------------------------------------------
# Character classes (RFC 3261 §25.1)

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_TOKEN = _ALNUM | frozenset("-.!%*_+`'~")
_MARK = frozenset("-_.!~*'()")
_UNRESERVED = _ALNUM | _MARK
_USER_UNRESERVED = frozenset("&=+$,;?/")
_PASSWORD_EXTRA = frozenset("&=+$,")
_PARAM_UNRESERVED = frozenset("[]/:&+$")
_HNV_UNRESERVED = frozenset("[]/?:+$")
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
_HOSTCHARS = _ALNUM | frozenset("-.")
_WS = " \t"
_SCHEME_CHARS = _ALNUM | frozenset("+-.")
# absoluteURI (RFC 2396 uric plus the characters hier_part and opaque_part allow)
_URIC = _UNRESERVED | frozenset(";/?:@&=+$,%[]#")


def _is_token(s: str) -> bool:
    return bool(s) and all(c in _TOKEN for c in s)


# ---------------------------------------------------------------------------------------------
# Header names

_COMPACT: Final = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "b": "Referred-By",
}

_KNOWN_NAMES: Final = {
    n.lower(): n
    for n in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "In-Reply-To",
        "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
        "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
        "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
        "Record-Route", "Refer-To", "Referred-By", "Replaces", "Reply-To", "Require",
        "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Session-Expires", "Subject",
        "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
        "Warning", "WWW-Authenticate",
    )
}  # fmt: skip

# Headers whose value is a comma-separated list (§7.3.1). Authorization and friends are not:
# their commas separate auth-params of a single value.
_LIST_HEADERS: Final = frozenset(
    n.lower()
    for n in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Proxy-Require",
        "Reason", "Record-Route", "Require", "Route", "Service-Route", "Supported",
        "Unsupported", "Via", "Warning",
    )
)  # fmt: skip

# Lists of addresses or hops: an empty element there is an error, not something to skip.
_STRICT_LISTS: Final = frozenset(
    ("via", "route", "record-route", "contact", "path", "service-route")
)

# Headers that may appear only once (§7.3.1: only list headers may be repeated).
_SINGLE: Final = frozenset(
    ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")
)


def canonical_name(name: str) -> str:
    """The full, conventionally capitalised form of a header name (compact forms expanded).

    Unknown names are returned as given; lookups on them stay case-insensitive.
    """
    low = name.lower()
    if len(low) == 1 and low in _COMPACT:
        return _COMPACT[low]
    return _KNOWN_NAMES.get(low, name)


def _key(name: str) -> str:
    return canonical_name(name).lower()


# ---------------------------------------------------------------------------------------------
# Comma-separated lists


def split_list(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements (§7.3.1).

    Commas inside quoted strings and inside ``<...>`` are not separators. Elements are
    stripped of surrounding whitespace; empty elements are kept (as "").
    """
    return [element for element, _ in _split_list_at(value)]


def _split_list_at(value: str) -> list[tuple[str, int]]:
    """Like split_list, with the character offset of each element in ``value``."""
    out: list[tuple[str, int]] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i = _skip_quoted(value, i)
            continue
        if c == "<":
            j = value.find(">", i + 1)
            if j < 0:
                raise SipParseError("'<' without a closing '>'", "§25.1 RAQUOT", i)
            i = j + 1
            continue
        if c == ",":
            out.append(_strip_at(value, start, i))
            start = i + 1
        i += 1
    out.append(_strip_at(value, start, n))
    return out


def _strip_at(value: str, start: int, end: int) -> tuple[str, int]:
    while start < end and value[start] in _WS:
        start += 1
    while end > start and value[end - 1] in _WS:
        end -= 1
    return value[start:end], start


def _skip_quoted(s: str, i: int) -> int:
    """s[i] is '"'; return the index just past the closing quote."""
    n = len(s)
    j = i + 1
    while j < n:
        c = s[j]
        if c == "\\":
            if j + 1 >= n:
                break
            if s[j + 1] in "\r\n":
                raise SipParseError("quoted-pair may not escape CR or LF", "§25.1 quoted-pair", j)
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    raise SipParseError("unterminated quoted-string", "§25.1 quoted-string", i)


# ---------------------------------------------------------------------------------------------
# Headers


class Headers:
    """Ordered SIP header fields: case-insensitive names, compact forms expanded.

    List-valued headers (Via, Route, Contact, ...) are stored one element per entry, so
    ``get_all("Via")`` gives each hop whether the peer sent one Via per line or one line of
    comma-separated Vias. Order and multiplicity are otherwise kept as received.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    # -- reading
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        k = _key(name)
        for n, v in self._items:
            if n.lower() == k:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        k = _key(name)
        return [v for n, v in self._items if n.lower() == k]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        k = _key(name)
        return any(n.lower() == k for n, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._items] == [(n.lower(), v) for n, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h

    # -- writing
    def add(self, name: str, value: str) -> None:
        """Append ``name: value`` (split into elements if ``name`` is a list header)."""
        self._items.extend(self._entries(name, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert above the first ``name`` field (or at the top): how a proxy adds its Via."""
        entries = self._entries(name, value)
        k = _key(name)
        at = next((i for i, (n, _) in enumerate(self._items) if n.lower() == k), 0)
        self._items[at:at] = entries

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field by this one, where the first of them stood."""
        entries = self._entries(name, value)
        k = _key(name)
        at = next((i for i, (n, _) in enumerate(self._items) if n.lower() == k), None)
        self._items = [(n, v) for n, v in self._items if n.lower() != k]
        if at is None:
            self._items.extend(entries)
        else:
            self._items[at:at] = entries

    def remove(self, name: str) -> int:
        """Remove every ``name`` field; return how many were removed."""
        k = _key(name)
        before = len(self._items)
        self._items = [(n, v) for n, v in self._items if n.lower() != k]
        return before - len(self._items)

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first ``name`` value (a proxy's own Via, a used Route)."""
        k = _key(name)
        for i, (n, v) in enumerate(self._items):
            if n.lower() == k:
                del self._items[i]
                return v
        return None

    @staticmethod
    def _entries(name: str, value: str) -> list[tuple[str, str]]:
        if not _is_token(name):
            raise ValueError("header name must be a token (RFC 3261 §25.1 field-name)")
        if "\r" in value or "\n" in value:
            raise ValueError("header value may not contain CR or LF (RFC 3261 §7.3.1)")
        full = canonical_name(name)
        value = value.strip(_WS)
        low = full.lower()
        if low in _LIST_HEADERS and value:
            parts = split_list(value)
            return [(full, p) for p in parts if p or low in _STRICT_LISTS]
        return [(full, value)]


# ---------------------------------------------------------------------------------------------
# Messages


def _serialize_headers(headers: Headers, body: bytes) -> list[bytes]:
    lines = []
    for name, value in headers:
        if name.lower() == "content-length":
            continue
        lines.append(f"{name}: {value}\r\n".encode(_ENC, _ERRS))
    lines.append(f"Content-Length: {len(body)}\r\n\r\n".encode())
    return lines


class _MessageMixin:
    headers: Headers

    @property
    def call_id(self) -> str:
        return _require(self.headers, "Call-ID")

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(_require(self.headers, "CSeq"))

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(_require(self.headers, "From"))

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(_require(self.headers, "To"))


def _require(headers: Headers, name: str) -> str:
    v = headers.get(name)
    if v is None:
        raise SipParseError(f"missing {name} header", "§8.1.1", 0)
    return v


@dataclass(eq=True, slots=True)
class SipRequest(_MessageMixin):
    """A SIP request. ``uri`` is the Request-URI as text; see :func:`parse_uri`.

    ``headers`` never needs a Content-Length: serialize() writes the body's length.
    ``defects`` lists what a liberal parse tolerated (not part of equality).
    """

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    defects: tuple[SipDefect, ...] = field(default=(), compare=False)

    def serialize(self) -> bytes:
        start = f"{self.method} {self.uri} {self.version}\r\n".encode(_ENC, _ERRS)
        return b"".join([start, *_serialize_headers(self.headers, self.body), self.body])

    def copy(self) -> SipRequest:
        return SipRequest(self.method, self.uri, self.headers.copy(), self.body, self.version)

    @property
    def max_forwards(self) -> int | None:
        v = self.headers.get("Max-Forwards")
        return None if v is None else parse_max_forwards(v)


@dataclass(eq=True, slots=True)
class SipResponse(_MessageMixin):
    """A SIP response. See :class:`SipRequest` for ``headers`` and ``defects``."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    defects: tuple[SipDefect, ...] = field(default=(), compare=False)

    def serialize(self) -> bytes:
        start = f"{self.version} {self.status} {self.reason}\r\n".encode(_ENC, _ERRS)
        return b"".join([start, *_serialize_headers(self.headers, self.body), self.body])

    def copy(self) -> SipResponse:
        return SipResponse(self.status, self.reason, self.headers.copy(), self.body, self.version)


SipMessage = SipRequest | SipResponse


# ---------------------------------------------------------------------------------------------
# Header value types


Params = tuple[tuple[str, str | None], ...]


def _param(params: Params, name: str) -> str | None:
    low = name.lower()
    for k, v in params:
        if k.lower() == low:
            return v
    return None


def _has_param(params: Params, name: str) -> bool:
    low = name.lower()
    return any(k.lower() == low for k, _ in params)


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm (§20.42). ``host`` keeps IPv6 brackets; ``params`` are raw, in order."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = SIP_VERSION

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        return _has_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """The rport value (RFC 3581); None when absent or empty, see has_param('rport')."""
        v = self.param("rport")
        return int(v) if v else None

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class SipUri:
    """A SIP or SIPS URI (§19.1). user, password, params and headers stay %-escaped."""

    scheme: Literal["sip", "sips"]
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """A uri-parameter by (unescaped, case-insensitive) name."""
        return _param(tuple((_unescape(k), v) for k, v in self.params), name)

    def has_param(self, name: str) -> bool:
        return _has_param(tuple((_unescape(k), v) for k, v in self.params), name)

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + ("" if self.password is None else f":{self.password}") + "@"
        port = "" if self.port is None else f":{self.port}"
        hdrs = "&".join(f"{k}={v}" for k, v in self.headers)
        return f"{self.scheme}:{userinfo}{self.host}{port}{_format_params(self.params)}" + (
            f"?{hdrs}" if hdrs else ""
        )


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of another scheme (tel:, urn:, ...), kept as text after the scheme."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | AbsoluteUri


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From, To, Contact, Route...: optional display name, URI, header parameters.

    ``display_name`` is unquoted and unescaped; ``params`` are raw (quoted values keep
    their quotes).
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        params = (*(p for p in self.params if p[0].lower() != "tag"), ("tag", tag))
        return NameAddr(self.uri, self.display_name, params)

    def __str__(self) -> str:
        dn = "" if self.display_name is None else _quote(self.display_name) + " "
        return f"{dn}<{self.uri}>{_format_params(self.params)}"


def _quote(s: str) -> str:
    out = ['"']
    for c in s:
        o = ord(c)
        if c in '"\\' or (o < 0x20 and c != "\t") or o == 0x7F:
            out.append("\\")
        out.append(c)
    out.append('"')
    return "".join(out)


def _unescape(s: str) -> str:
    """Decode %HH escapes (invalid escapes are left as they are)."""
    if "%" not in s:
        return s
    raw = s.encode(_ENC, _ERRS)
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        if raw[i] == 0x25 and _is_hex2(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(raw[i])
        i += 1
    return out.decode(_ENC, _ERRS)


def _is_hex2(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)


# ---------------------------------------------------------------------------------------------
# Header value parsers (offsets are character offsets into the value given)


class _Scanner:
    """A cursor over a header value with the LWS-aware separators of §25.1."""

    __slots__ = ("i", "n", "s")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0
        self.n = len(s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def at_end(self) -> bool:
        return self.i >= self.n

    def skip_ws(self) -> bool:
        start = self.i
        while self.i < self.n and self.s[self.i] in _WS:
            self.i += 1
        return self.i > start

    def sep(self, ch: str) -> bool:
        """SWS ch SWS (SLASH, SEMI, EQUAL, COLON, COMMA): consume it if next."""
        j = self.i
        while j < self.n and self.s[j] in _WS:
            j += 1
        if j < self.n and self.s[j] == ch:
            self.i = j + 1
            self.skip_ws()
            return True
        return False

    def take(self, chars: frozenset[str]) -> str:
        start = self.i
        while self.i < self.n and self.s[self.i] in chars:
            self.i += 1
        return self.s[start : self.i]

    def token(self, what: str, rule: str) -> str:
        t = self.take(_TOKEN)
        if not t:
            raise SipParseError(f"expected {what}", rule, self.i)
        return t

    def quoted(self) -> str:
        """A quoted-string starting at i; returns it unescaped, without the quotes."""
        end = _skip_quoted(self.s, self.i)
        inner = self.s[self.i + 1 : end - 1]
        self.i = end
        return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)

    def fail(self, description: str, rule: str) -> SipParseError:
        return SipParseError(description, rule, self.i)


def _digits(text: str, what: str, rule: str, offset: int, max_digits: int = 10) -> int:
    if not text or not all(c in _DIGITS for c in text):
        raise SipParseError(f"{what} must be digits", rule, offset)
    stripped = text.lstrip("0")
    if len(stripped) > max_digits:
        raise SipParseError(f"{what} is too large", rule, offset)
    return int(stripped or "0")


def parse_cseq(value: str) -> CSeq:
    """``CSeq = 1*DIGIT LWS Method`` (§20.16), the number below 2**31 (§8.1.1.5)."""
    sc = _Scanner(value)
    sc.skip_ws()
    start = sc.i
    num = sc.take(_DIGITS)
    number = _digits(num, "CSeq sequence number", "§20.16 CSeq", start)
    if number >= _MAX_CSEQ:
        raise SipParseError("CSeq sequence number must be below 2**31", "§8.1.1.5", start)
    if not sc.skip_ws():
        raise sc.fail("CSeq needs LWS between number and method", "§20.16 CSeq")
    method = sc.token("a method token after the CSeq number", "§20.16 CSeq")
    sc.skip_ws()
    if not sc.at_end():
        raise sc.fail("unexpected text after the CSeq method", "§20.16 CSeq")
    return CSeq(number, method)


def parse_max_forwards(value: str) -> int:
    """``Max-Forwards = 1*DIGIT``, range 0-255 (§20.22)."""
    v = value.strip(_WS)
    lead = len(value) - len(value.lstrip(_WS))
    n = _digits(v, "Max-Forwards", "§20.22 Max-Forwards", lead, max_digits=3)
    if n > 255:
        raise SipParseError("Max-Forwards must be in 0-255", "§20.22 Max-Forwards", lead)
    return n


def _parse_host(sc: _Scanner, rule: str) -> str:
    start = sc.i
    if sc.peek() == "[":
        end = sc.s.find("]", sc.i)
        if end < 0:
            raise sc.fail("IPv6reference without ']'", rule)
        inner = sc.s[sc.i + 1 : end]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise sc.fail("invalid IPv6 address", rule) from None
        sc.i = end + 1
        return sc.s[start : sc.i]
    host = sc.take(_HOSTCHARS)
    if not _valid_host(host):
        raise SipParseError("invalid host (hostname / IPv4address / IPv6reference)", rule, start)
    return host


_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_IPV4_RE = re.compile(
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
)


def _valid_host(host: str) -> bool:
    if not host:
        return False
    if host.replace(".", "").isdigit():
        return _IPV4_RE.fullmatch(host) is not None
    return _HOSTNAME_RE.fullmatch(host) is not None


def _parse_port(sc: _Scanner, rule: str) -> int:
    start = sc.i
    port = _digits(sc.take(_DIGITS), "port", rule, start, max_digits=5)
    if port > 65535:
        raise SipParseError("port must be below 65536", rule, start)
    return port


def _gen_value(sc: _Scanner, rule: str) -> str:
    """gen-value = token / host / quoted-string, returned raw."""
    start = sc.i
    if sc.peek() == '"':
        sc.quoted()
        return sc.s[start : sc.i]
    v = sc.take(_TOKEN | frozenset("[]:"))
    if not v:
        raise sc.fail("expected a parameter value (token / host / quoted-string)", rule)
    return v


def _generic_params(
    sc: _Scanner, rule: str, check: Callable[[str, str | None], str | None] | None = None
) -> Params:
    """*( SEMI generic-param ), then only whitespace to the end.

    ``check(name, value)`` may return an error description for a parameter.
    """
    params: list[tuple[str, str | None]] = []
    while True:
        if not sc.sep(";"):
            break
        if sc.peek() in (";", ",", ""):
            raise sc.fail("empty parameter after ';'", rule)
        start = sc.i
        name = sc.token("a parameter name", rule)
        value = _gen_value(sc, rule) if sc.sep("=") else None
        if check is not None:
            problem = check(name, value)
            if problem is not None:
                raise SipParseError(problem, rule, start)
        params.append((name, value))
    sc.skip_ws()
    if not sc.at_end():
        raise sc.fail("unexpected character after the parameters", rule)
    return tuple(params)


def _is_number(v: str | None, max_value: int) -> bool:
    if v is None or not v or not all(c in _DIGITS for c in v):
        return False
    return len(v.lstrip("0")) <= len(str(max_value)) and int(v) <= max_value


def _check_via_param(name: str, value: str | None) -> str | None:
    low = name.lower()
    if low == "ttl" and not _is_number(value, 255):
        return "Via ttl must be 0-255"
    if low == "rport" and value is not None and not _is_number(value, 65535):
        return "Via rport must be empty or a port number (RFC 3581)"
    if low == "branch" and (value is None or not _is_token(value)):
        return "Via branch must be a token"
    if low in ("received", "maddr") and (value is None or value.startswith('"')):
        return f"Via {low} must be a host"
    return None


def parse_via(value: str) -> Via:
    """One via-parm (§20.42): ``sent-protocol LWS sent-by *( SEMI via-params )``.

    Pass one element: the Headers type already splits comma-separated Vias.
    """
    rule = "§20.42 Via"
    sc = _Scanner(value)
    sc.skip_ws()
    name = sc.token("protocol-name", rule)
    if not sc.sep("/"):
        raise sc.fail("expected '/' after protocol-name", rule)
    version = sc.token("protocol-version", rule)
    if not sc.sep("/"):
        raise sc.fail("expected '/' after protocol-version", rule)
    transport = sc.token("transport", rule)
    if not sc.skip_ws():
        raise sc.fail("expected LWS before sent-by", rule)
    host = _parse_host(sc, rule)
    port = _parse_port(sc, rule) if sc.sep(":") else None
    params = _generic_params(sc, rule, _check_via_param)
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


def parse_uri(text: str, *, request_uri: bool = False) -> Uri:
    """A SIP/SIPS URI (§19.1, §25.1 SIP-URI), or any other absoluteURI.

    With ``request_uri=True`` URI headers are refused (§19.1.1: not allowed in a
    Request-URI).
    """
    colon = text.find(":")
    scheme = text[:colon] if colon > 0 else ""
    if (
        not scheme
        or not scheme[0].isascii()
        or not scheme[0].isalpha()
        or not all(c in _SCHEME_CHARS for c in scheme)
    ):
        raise SipParseError("URI must start with a scheme followed by ':'", "§25.1 absoluteURI", 0)
    low = scheme.lower()
    if low in ("sip", "sips"):
        return _parse_sip_uri("sips" if low == "sips" else "sip", text, colon + 1, request_uri)
    rest = text[colon + 1 :]
    for i, c in enumerate(rest):
        if c not in _URIC and c.isascii():
            raise SipParseError(
                "character not allowed in an absoluteURI", "§25.1 absoluteURI", colon + 1 + i
            )
    if not rest:
        raise SipParseError("empty absoluteURI", "§25.1 absoluteURI", colon + 1)
    return AbsoluteUri(scheme, rest)


def _check_escaped(s: str, allowed: frozenset[str], base: int, what: str, rule: str) -> None:
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "%":
            if not _is_hex2(s[i + 1 : i + 3].encode(_ENC, _ERRS)):
                raise SipParseError(f"bad %-escape in {what}", "§25.1 escaped", base + i)
            i += 3
            continue
        if c not in allowed:
            raise SipParseError(f"character not allowed in {what}", rule, base + i)
        i += 1


def _parse_sip_uri(
    scheme: Literal["sip", "sips"], text: str, pos: int, request_uri: bool
) -> SipUri:
    rule = "§19.1.1 / §25.1 SIP-URI"
    user = password = None
    at = text.find("@", pos)
    if at >= 0:
        userinfo = text[pos:at]
        colon = userinfo.find(":")
        user = userinfo if colon < 0 else userinfo[:colon]
        if not user:
            raise SipParseError("empty user part before '@'", rule, pos)
        _check_escaped(user, _UNRESERVED | _USER_UNRESERVED, pos, "user", rule)
        if colon >= 0:
            password = userinfo[colon + 1 :]
            _check_escaped(
                password, _UNRESERVED | _PASSWORD_EXTRA, pos + colon + 1, "password", rule
            )
        pos = at + 1
    sc = _Scanner(text)
    sc.i = pos
    host = _parse_host(sc, rule)
    port = None
    if sc.peek() == ":":
        sc.i += 1
        port = _parse_port(sc, rule)
    params: list[tuple[str, str | None]] = []
    pchars = _UNRESERVED | _PARAM_UNRESERVED | frozenset("%")
    while sc.peek() == ";":
        sc.i += 1
        start = sc.i
        name = sc.take(pchars)
        if not name:
            raise sc.fail("empty uri-parameter", rule)
        _check_escaped(name, pchars, start, "uri-parameter", rule)
        value = None
        if sc.peek() == "=":
            sc.i += 1
            start = sc.i
            value = sc.take(pchars)
            if not value:
                raise sc.fail("empty uri-parameter value", rule)
            _check_escaped(value, pchars, start, "uri-parameter", rule)
        params.append((name, value))
    headers: list[tuple[str, str]] = []
    if sc.peek() == "?":
        if request_uri:
            raise sc.fail("URI headers are not allowed in a Request-URI", "§19.1.1 Table 1")
        hchars = _UNRESERVED | _HNV_UNRESERVED | frozenset("%")
        while True:
            sc.i += 1
            start = sc.i
            hname = sc.take(hchars)
            if not hname:
                raise sc.fail("empty URI header name", rule)
            _check_escaped(hname, hchars, start, "URI header", rule)
            if sc.peek() != "=":
                raise sc.fail("URI header needs '='", rule)
            sc.i += 1
            start = sc.i
            hvalue = sc.take(hchars)
            _check_escaped(hvalue, hchars, start, "URI header", rule)
            headers.append((hname, hvalue))
            if sc.peek() != "&":
                break
    if not sc.at_end():
        raise sc.fail("unexpected character in SIP URI", rule)
    return SipUri(scheme, host, user, password, port, tuple(params), tuple(headers))


def parse_name_addr(value: str) -> NameAddr:
    """``( name-addr / addr-spec ) *( SEMI generic-param )`` (§20.10, §20.20, §20.39).

    In addr-spec form (no ``<>``) the URI may not contain ``;``, ``,`` or ``?``: a ``;``
    starts the header parameters (§20.10).
    """
    rule = "§25.1 name-addr / addr-spec"
    sc = _Scanner(value)
    sc.skip_ws()
    display: str | None = None
    if sc.peek() == '"':
        display = sc.quoted()
        sc.skip_ws()
        if sc.peek() != "<":
            raise sc.fail("a quoted display-name must be followed by '<'", "§25.1 name-addr")
    elif sc.peek() != "<":
        # *(token LWS) followed by '<' is a display name; otherwise this is an addr-spec.
        start = sc.i
        words: list[str] = []
        while True:
            w = sc.take(_TOKEN)
            if not w:
                break
            words.append(w)
            had_ws = sc.skip_ws()
            if sc.peek() == "<" or not had_ws:
                break
        if sc.peek() == "<" and words:
            display = " ".join(words)
        else:
            sc.i = start
    if sc.peek() == "<":
        sc.i += 1
        start = sc.i
        end = value.find(">", start)
        if end < 0:
            raise sc.fail("'<' without a closing '>'", "§25.1 RAQUOT")
        inner = value[start:end]
        if not inner or inner[0] in _WS or inner[-1] in _WS:
            raise SipParseError(
                "no whitespace allowed inside <> around an addr-spec", "§25.1 LAQUOT/RAQUOT", start
            )
        uri = _uri_at(inner, start)
        sc.i = end + 1
    else:
        start = sc.i
        j = start
        while j < sc.n and sc.s[j] not in " \t;,":
            j += 1
        text = value[start:j]
        if "?" in text:
            raise SipParseError(
                "a URI with '?' must be enclosed in <> (name-addr form)",
                "§20.10",
                start + text.index("?"),
            )
        if not text:
            raise sc.fail("expected a name-addr or addr-spec", rule)
        uri = _uri_at(text, start)
        sc.i = j
    params = _generic_params(sc, "§25.1 generic-param")
    return NameAddr(uri, display, params)


def _uri_at(text: str, base: int) -> Uri:
    try:
        return parse_uri(text)
    except SipParseError as e:
        raise SipParseError(e.description, e.rule, base + e.offset, e.status) from None


_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ("
    + "|".join(_MONTHS)
    + r") (\d{4}) (\d\d):(\d\d):(\d\d) GMT"
)


def parse_date(value: str) -> datetime.datetime:
    """``Date = rfc1123-date`` (§20.17), which must be in GMT."""
    m = _DATE_RE.fullmatch(value.strip(_WS))
    if m is None:
        raise SipParseError("Date must be an RFC 1123 date in GMT", "§20.17 Date", 0)
    try:
        return datetime.datetime(
            int(m[4]), _MONTHS.index(m[3]) + 1, int(m[2]), int(m[5]), int(m[6]), int(m[7]),
            tzinfo=datetime.UTC,
        )  # fmt: skip
    except ValueError:
        raise SipParseError("Date is not a real date", "§20.17 Date", 0) from None


# ---------------------------------------------------------------------------------------------
# Message parsing


@dataclass(slots=True)
class _Field:
    name: str  # canonical
    value: str  # unfolded, stripped
    raw_start: int  # byte offset of the value region (just after the colon)
    raw_end: int  # byte offset of the end of the field (before its final CRLF)


_FOLD_RE = re.compile(rb"[ \t]*\r\n[ \t]+")


def _unfold(raw: bytes) -> str:
    return _FOLD_RE.sub(b" ", raw).strip(b" \t").decode(_ENC, _ERRS)


def _value_offset(data: bytes, f: _Field, char_index: int) -> int:
    """Map a character offset in an unfolded value back to a byte offset in the message."""
    raw = data[f.raw_start : f.raw_end]
    # Rebuild the unfolded bytes with, for each byte, its position in raw.
    pos: list[int] = []
    last = 0
    for m in _FOLD_RE.finditer(raw):
        pos.extend(range(last, m.start()))
        pos.append(m.start())
        last = m.end()
    pos.extend(range(last, len(raw)))
    unfolded = _FOLD_RE.sub(b" ", raw)
    lead = len(unfolded) - len(unfolded.lstrip(b" \t"))
    nbytes = len(f.value[:char_index].encode(_ENC, _ERRS))
    k = lead + nbytes
    return f.raw_start + (pos[k] if k < len(pos) else len(raw))


def _find_head_end(data: bytes, start: int) -> int:
    """Offset of the CRLFCRLF that ends the header section, or -1."""
    return data.find(b"\r\n\r\n", start)


def _skip_crlf(data: bytes, i: int) -> int:
    n = len(data)
    while i + 1 < n + 1 and data[i : i + 2] == b"\r\n":
        i += 2
    return i


_FIELD_RE = re.compile(rb"([!%'*+\-.0-9A-Z_`a-z~]+)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n")


def _parse_fields(data: bytes, start: int, end: int) -> list[_Field]:
    """Header fields between ``start`` (first header line) and ``end`` (the final CRLFCRLF)."""
    fields: list[_Field] = []
    limit = end + 2  # include the CRLF that ends the last line
    pos = start
    match = _FIELD_RE.match
    while pos < limit:
        m = match(data, pos, limit)
        if m is None:
            return _parse_fields_slowly(data, start, end)  # finds and reports the error
        name = canonical_name(m[1].decode("ascii"))
        fields.append(_Field(name, _unfold(m[2]), m.start(2), m.end(2)))
        pos = m.end()
    return fields


def _parse_fields_slowly(data: bytes, start: int, end: int) -> list[_Field]:
    """Line by line, to say exactly what is wrong where."""
    fields: list[_Field] = []
    if start >= end + 2:
        return fields
    line_start = start
    limit = end + 2  # include the CRLF that ends the last line
    while line_start < limit:
        line_end = data.find(b"\r\n", line_start, limit)
        if line_end < 0:
            line_end = limit - 2
        line = data[line_start:line_end]
        bad = max(line.find(b"\r"), line.find(b"\n"))
        if bad >= 0:
            raise SipParseError(
                "bare CR or LF inside a header line", "§7.3.1 (lines end in CRLF)", line_start + bad
            )
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise SipParseError(
                    "continuation line with no header field before it", "§7.3.1 LWS", line_start
                )
            fields[-1].raw_end = line_end
        else:
            colon = line.find(b":")
            if colon < 0:
                raise SipParseError("header line without ':'", "§7.3.1 message-header", line_start)
            raw_name = line[:colon].rstrip(b" \t")
            name = raw_name.decode("latin-1")
            if not _is_token(name):
                bad_at = next((k for k, c in enumerate(name) if c not in _TOKEN), len(name))
                raise SipParseError(
                    "header name must be a token", "§25.1 field-name", line_start + bad_at
                )
            fields.append(_Field(canonical_name(name), "", line_start + colon + 1, line_end))
        line_start = line_end + 2
    for f in fields:
        f.value = _unfold(data[f.raw_start : f.raw_end])
    return fields


def _parse_content_length(data: bytes, fields: list[_Field]) -> int | None:
    cls = [f for f in fields if f.name == "Content-Length"]
    if not cls:
        return None
    if len(cls) > 1:
        raise SipParseError(
            "more than one Content-Length", "§7.3.1 / §20.14 Content-Length", cls[1].raw_start
        )
    f = cls[0]
    try:
        return _digits(f.value, "Content-Length", "§20.14 Content-Length", 0, max_digits=9)
    except SipParseError as e:
        raise SipParseError(e.description, e.rule, _value_offset(data, f, e.offset)) from None


def _parse_version(raw: bytes, offset: int) -> str:
    m = re.fullmatch(rb"(?i:SIP)/(\d+)\.(\d+)", raw)
    if m is None:
        raise SipParseError("malformed SIP-Version", "§25.1 SIP-Version", offset)
    if (m[1].lstrip(b"0"), m[2].lstrip(b"0")) != (b"2", b""):
        raise SipParseError(
            "unsupported SIP version (only SIP/2.0)", "§7.1 / §21.5.7 (505)", offset, status=505
        )
    return SIP_VERSION


def _split_start_line(
    line: bytes, offset: int, defects: list[SipDefect], rule: str, *, request: bool
) -> list[tuple[bytes, int]]:
    """Split a start line into its three elements at SP.

    Runs of SP between elements are tolerated and flagged (RFC 4475 §3.1.2.10). In a
    Status-Line the SP before the Reason-Phrase is kept literally: the phrase may hold SP.
    """
    parts: list[tuple[bytes, int]] = []
    i = 0
    n = len(line)
    while len(parts) < 2:
        j = line.find(b" ", i)
        if j < 0:
            break
        parts.append((line[i:j], offset + i))
        k = j + 1
        if request or len(parts) == 1:
            while k < n and line[k] == 0x20:
                k += 1
            if k > j + 1:
                defects.append(SipDefect("more than one SP between elements", rule, offset + j))
        i = k
    parts.append((line[i:], offset + i))
    return parts


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> SipRequest | SipResponse:
    """Parse one SIP message from a datagram (§7, §18.3).

    Liberal where RFC 3261 allows it: leading CRLFs, LWS and folding anywhere LWS may
    appear, any case of header names, compact forms, extra SP in the start line (a defect),
    no Content-Length (the body is the rest of the datagram). Strict where safety needs it:
    Content-Length larger than the data, several Content-Length, mandatory headers (Via,
    From, To, Call-ID, CSeq) missing or malformed, CSeq method not the request method.
    Bytes after Content-Length are discarded (§18.3) and recorded as a defect.
    """
    if len(data) > max_size:
        raise SipParseError("message larger than the configured maximum", "§18.1.1", max_size,
                            status=513)  # fmt: skip
    return _parse(data, stream=False)


def _parse(data: bytes, *, stream: bool) -> SipRequest | SipResponse:
    """Errors come in message order: start line, then each header field, then the body."""
    defects: list[SipDefect] = []
    start = _skip_crlf(data, 0)
    if start >= len(data):
        raise SipParseError("empty message", "§7 (start-line)", start)
    line_end = data.find(b"\r\n", start)
    if line_end < 0:
        raise SipParseError("start-line must end with CRLF", "§7 (start-line)", len(data))
    line = data[start:line_end]
    bad = max(line.find(b"\r"), line.find(b"\n"))
    if bad >= 0:
        raise SipParseError("bare CR or LF in the start line", "§7.1 / §7.2", start + bad)
    if line[:1] in (b" ", b"\t"):
        raise SipParseError("start line may not begin with whitespace", "§7.1 / §7.2", start)
    msg = _parse_start_line(line, start, defects)

    head_end = _find_head_end(data, start)
    if head_end < 0:
        raise SipParseError(
            "header section must end with an empty line (CRLFCRLF)", "§7 (CRLF)", len(data)
        )
    fields = _parse_fields(data, line_end + 2, head_end) if head_end > line_end else []
    _check_fields(data, msg, fields, defects)
    missing = [n for n in ("To", "From", "Call-ID", "CSeq", "Via") if n not in msg.headers]
    if missing:
        raise SipParseError(
            "missing mandatory header(s): " + ", ".join(missing), "§8.1.1 / §20", start
        )

    body_start = head_end + 4
    content_length = _parse_content_length(data, fields)
    available = len(data) - body_start
    if content_length is None:
        if stream:
            raise SipParseError(
                "Content-Length is mandatory on stream transports", "§18.3 / §20.14", start
            )
        msg.body = data[body_start:]
    else:
        if content_length > available:
            raise SipParseError("Content-Length larger than the body received", "§18.3", len(data))
        msg.body = data[body_start : body_start + content_length]
        if content_length < available:
            defects.append(
                SipDefect(
                    "bytes after the Content-Length body discarded",
                    "§18.3",
                    body_start + content_length,
                )
            )
    msg.defects = tuple(defects)
    return msg


def _parse_start_line(line: bytes, start: int, defects: list[SipDefect]) -> SipMessage:
    if line[:4].upper() == b"SIP/":
        rule = "§7.2 / §25.1 Status-Line"
        parts = _split_start_line(line, start, defects, rule, request=False)
        if len(parts) < 2:
            raise SipParseError("Status-Line needs a Status-Code", rule, start + len(line))
        version = _parse_version(parts[0][0], parts[0][1])
        code_text, code_at = parts[1]
        if len(code_text) != 3 or not code_text.isdigit():
            raise SipParseError("Status-Code must be 3 digits", "§25.1 Status-Code", code_at)
        status = int(code_text)
        if not 100 <= status <= 699:
            raise SipParseError("Status-Code must be 100-699", "§7.2 / §21", code_at)
        if len(parts) < 3:
            defects.append(SipDefect("no SP after the Status-Code", rule, start + len(line)))
            reason = ""
        else:
            reason = parts[2][0].decode(_ENC, _ERRS)
        return SipResponse(status, reason, Headers(), b"", version)
    rule = "§7.1 / §25.1 Request-Line"
    parts = _split_start_line(line, start, defects, rule, request=True)
    if len(parts) != 3:
        raise SipParseError(
            "Request-Line must be Method SP Request-URI SP SIP-Version", rule, start + len(line)
        )
    (method_b, m_at), (uri_b, u_at), (vtext, v_at) = parts
    if vtext.endswith(b" "):
        defects.append(SipDefect("SP at the end of the Request-Line", rule, v_at))
        vtext = vtext.rstrip(b" ")
    if b" " in vtext:
        raise SipParseError(
            "Request-Line must be Method SP Request-URI SP SIP-Version (no LWS in the URI)",
            rule,
            v_at,
        )
    method = method_b.decode(_ENC, _ERRS)
    uri = uri_b.decode(_ENC, _ERRS)
    if not _is_token(method):
        raise SipParseError("Method must be a token", "§25.1 Method", m_at)
    try:
        parse_uri(uri, request_uri=True)
    except SipParseError as e:
        raise SipParseError(
            e.description, e.rule, u_at + len(uri[: e.offset].encode(_ENC, _ERRS)), e.status
        ) from None
    version = _parse_version(vtext, v_at)
    return SipRequest(method, uri, Headers(), b"", version)


def _parse_call_id(value: str) -> str:
    for i, c in enumerate(value):
        if c in _WS or ord(c) < 0x21 or ord(c) == 0x7F:
            raise SipParseError('Call-ID must be word ["@" word]', "§20.8 / §25.1 callid", i)
    if not value:
        raise SipParseError("empty Call-ID", "§20.8 / §25.1 callid", 0)
    return value


def _parse_contact(value: str) -> object:
    return value if value == "*" else parse_name_addr(value)


# Header fields parse_message validates: the ones a B2BUA routes and matches on.
_VALIDATORS: Final[dict[str, Callable[[str], object]]] = {
    "call-id": _parse_call_id,
    "cseq": parse_cseq,
    "from": parse_name_addr,
    "to": parse_name_addr,
    "max-forwards": parse_max_forwards,
    "via": parse_via,
    "contact": _parse_contact,
    "route": parse_name_addr,
    "record-route": parse_name_addr,
}


def _check_fields(
    data: bytes, msg: SipMessage, fields: list[_Field], defects: list[SipDefect]
) -> None:
    """Validate, split and store each field, in message order."""
    seen: set[str] = set()
    items = msg.headers._items
    for f in fields:
        low = f.name.lower()
        if low in _SINGLE:
            if low in seen:
                raise SipParseError(f"{f.name} may appear only once", "§7.3.1", f.raw_start)
            seen.add(low)
        if low == "content-length":
            continue  # framing, not content: serialize() writes it from the body
        validate = _VALIDATORS.get(low)
        try:
            if low in _LIST_HEADERS and f.value:
                elements = _split_list_at(f.value)
                for element, at in elements:
                    if not element and low in _STRICT_LISTS:
                        raise SipParseError("empty element in a comma-separated list", "§7.3.1", at)
                    if validate is not None and element:
                        try:
                            validate(element)
                        except SipParseError as e:
                            raise SipParseError(e.description, e.rule, at + e.offset) from None
                items.extend((f.name, v) for v, _ in elements if v)
                continue
            if validate is not None:
                result = validate(f.value)
                if (
                    isinstance(result, CSeq)
                    and isinstance(msg, SipRequest)
                    and result.method != msg.method
                ):
                    raise SipParseError(
                        "CSeq method must match the request method",
                        "§8.1.1.5",
                        f.value.rfind(result.method),
                    )
            elif low == "date":
                try:
                    parse_date(f.value)
                except SipParseError as e:
                    defects.append(SipDefect(e.description, e.rule, f.raw_start))
        except SipParseError as e:
            raise SipParseError(
                e.description, e.rule, _value_offset(data, f, e.offset), e.status
            ) from None
        items.append((f.name, f.value))


# ---------------------------------------------------------------------------------------------
# Stream framing (TCP, TLS)


class StreamFramer:
    """Cuts a stream into SIP messages by Content-Length (§18.3), sans-I/O.

    ``feed()`` bytes as they arrive, then call ``next_message()`` until it returns None.
    A message that is framed correctly but malformed raises :class:`SipParseError` from
    ``next_message()`` once, and framing carries on with the next message (answer it 400).
    A framing error (no or bad Content-Length, a message over ``max_size``) is fatal:
    ``broken`` turns True and every later ``next_message()`` raises it again; close the
    connection. CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped.

    Buffering is bounded: at most one incomplete message (``max_size``) plus whatever
    complete messages were fed and not yet taken.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan_from = 0
        self._frames: list[bytes] = []
        self.last_frame = b""  # the raw bytes of the message next_message() last returned
        self._error: SipParseError | None = None
        self._crlf_run = 0
        self._pending_total: int | None = None
        self.keepalives = 0
        """Count of CRLFCRLF keep-alive pings seen (RFC 5626 §3.5.1: answer each with CRLF)."""

    @property
    def broken(self) -> bool:
        """A framing error happened: drain next_message(), then close the connection."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held: queued complete messages plus the incomplete one."""
        return len(self._buf) + sum(len(f) for f in self._frames)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buf += data
        self._frame()

    def next_message(self) -> SipRequest | SipResponse | None:
        if self._frames:
            # kept so a framed but malformed request can still be answered 400 (§18.3)
            self.last_frame = self._frames.pop(0)
            return _parse(self.last_frame, stream=True)
        if self._error is not None:
            raise self._error
        return None

    def _fail(self, err: SipParseError) -> None:
        self._error = err
        self._buf.clear()
        self._scan_from = 0
        self._pending_total = None

    def _frame(self) -> None:
        buf = self._buf
        while buf:
            if self._pending_total is None:
                # Skip keep-alives and stray CRLFs before a start-line (§7.5).
                skip = 0
                while buf[skip : skip + 2] == b"\r\n":
                    skip += 2
                if skip:
                    runs = self._crlf_run + skip // 2
                    self.keepalives += runs // 2  # "\r\n\r\n" pings: answer each with "\r\n"
                    self._crlf_run = runs % 2
                    del buf[:skip]
                    self._scan_from = 0
                    continue
                if buf == b"\r":
                    return
                self._crlf_run = 0
                end = buf.find(b"\r\n\r\n", max(0, self._scan_from - 3))
                if end < 0:
                    if len(buf) > self.max_size:
                        self._fail(SipParseError(
                            "header section longer than the configured maximum", "§18.3",
                            self.max_size, status=513,
                        ))  # fmt: skip
                    else:
                        self._scan_from = len(buf)
                    return
                try:
                    length = self._content_length(bytes(buf[: end + 4]), end)
                except SipParseError as e:
                    self._fail(e)
                    return
                if end + 4 + length > self.max_size:
                    self._fail(SipParseError(
                        "message larger than the configured maximum", "§18.3", self.max_size,
                        status=513,
                    ))  # fmt: skip
                    return
                self._pending_total = end + 4 + length
            total = self._pending_total
            if len(buf) < total:
                return  # wait for the rest of the body
            self._frames.append(bytes(buf[:total]))
            del buf[:total]
            self._pending_total = None
            self._scan_from = 0

    @staticmethod
    def _content_length(head: bytes, end: int) -> int:
        line_end = head.find(b"\r\n")
        fields = _parse_fields(head, line_end + 2, end) if end > line_end else []
        length = _parse_content_length(head, fields)
        if length is None:
            raise SipParseError(
                "Content-Length is mandatory on stream transports", "§18.3 / §20.14", 0
            )
        return length


# ---------------------------------------------------------------------------------------------
# Building responses

REASON_PHRASES: Final = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to ``request`` as §8.2.6 asks.

    Copies every Via (in order), From, Call-ID and CSeq, and To; adds a To tag when the
    request had none and the status is not 100 (``to_tag``, or a random one). A 100 copies
    Timestamp (§8.2.6.1). ``headers`` are appended after those.
    """
    if not 100 <= status <= 699:
        raise ValueError("status must be 100-699")
    h = Headers()
    for v in request.headers.get_all("Via"):
        h.add("Via", v)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            raise SipParseError(f"request has no {name}", "§8.2.6.2", 0)
        if name == "To" and status != 100:
            to = parse_name_addr(value)
            if to.tag is None:
                value = str(to.with_tag(to_tag or secrets.token_hex(8)))
        h.add(name, value)
    if status == 100:
        ts = request.headers.get("Timestamp")
        if ts is not None:
            h.add("Timestamp", ts)
    for name, value in headers:
        h.add(name, value)
    return SipResponse(status, reason if reason is not None else REASON_PHRASES.get(status, ""),
                       h, body)  # fmt: skip
