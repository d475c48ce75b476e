"""SDP (RFC 4566) and the offer/answer model (RFC 3264) as a B2BUA needs them.

Sans-I/O, values in and values out. A :class:`SessionDescription` keeps every line in its
order, known or not, so ``str(parse_sdp(text))`` gives the text back (with CRLF endings);
accessors read the lines on demand and rewrite functions return new descriptions.

- :func:`parse_sdp` / :meth:`SessionDescription.serialize`
- payload formats: :func:`codecs`, :func:`telephone_event`, :func:`has_g711`
- anchoring media at the proxy: :func:`anchor_media`, :func:`set_direction`
- offer/answer: :func:`negotiate`

Errors are :class:`SdpError` with the 1-based line number (0 for the whole description) and
the rule broken.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Line = tuple[str, str]
"""One ``<type>=<value>`` line as (type, value)."""

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")

STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}
"""RFC 3551 §6 static audio payload types: PT -> (encoding name, clock rate, channels)."""

_MEDIA_ONLY_FORBIDDEN = frozenset("vost")
_NULL_ADDRESSES = frozenset({"0.0.0.0", "::"})


class SdpError(ValueError):
    """An SDP broke a rule of RFC 4566 / RFC 3264. ``line`` is 1-based, 0 for the whole."""

    def __init__(self, line: int, rule: str, message: str) -> None:
        where = f"line {line}" if line else "SDP"
        super().__init__(f"{where}: {message} ({rule})")
        self.line = line
        self.rule = rule


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line (RFC 4566 §5.2)."""

    username: str
    session_id: str
    session_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line (RFC 4566 §5.7); ``ttl``/``count`` only for multicast."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @property
    def is_null(self) -> bool:
        """0.0.0.0 (or ::): the RFC 2543 way to put a call on hold (RFC 3264 §8.4)."""
        return self.address in _NULL_ADDRESSES

    def __str__(self) -> str:
        addr = self.address
        if self.ttl is not None:
            addr += f"/{self.ttl}"
        if self.count is not None:
            addr += f"/{self.count}"
        return f"{self.nettype} {self.addrtype} {addr}"


@dataclass(frozen=True, slots=True)
class Codec:
    """One payload format of an m-line: PT, encoding name, clock rate, channels, fmtp."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    def same_format(self, other: Codec) -> bool:
        """Same encoding (names compare case-insensitively, RFC 4855 §3), rate, channels."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )


@dataclass(frozen=True, slots=True)
class Media:
    """One media description: the m= line's fields and the lines after it, in order."""

    kind: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    lines: tuple[Line, ...] = ()

    @property
    def rejected(self) -> bool:
        """Port 0: a rejected or disabled stream (RFC 3264 §5.1, §6)."""
        return self.port == 0

    @property
    def m_line(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join((self.kind, port, self.proto, *self.formats))

    @property
    def connection(self) -> Connection | None:
        for t, v in self.lines:
            if t == "c":
                return _parse_connection(v, 0)
        return None

    def attributes(self, name: str) -> list[str]:
        """Values of every ``a=name:value`` (or ``""`` for a flag ``a=name``)."""
        return _attributes(self.lines, name)

    def attribute(self, name: str) -> str | None:
        values = self.attributes(name)
        return values[0] if values else None

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, None if absent."""
        return _direction(self.lines)

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        return int(float(value)) if value else None

    @property
    def rtcp_port(self) -> int | None:
        """The port of a=rtcp (RFC 3605), None if absent."""
        value = self.attribute("rtcp")
        return int(value.split()[0]) if value else None

    @property
    def rtcp_mux(self) -> bool:
        return self.attribute("rtcp-mux") is not None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole SDP: session-level lines (v=, o=, s=, ... in order) and the media sections."""

    lines: tuple[Line, ...]
    media: tuple[Media, ...] = ()

    @property
    def origin(self) -> Origin:
        for t, v in self.lines:
            if t == "o":
                return _parse_origin(v, 0)
        raise SdpError(0, "RFC 4566 §5.2", "no o= line")

    @property
    def connection(self) -> Connection | None:
        """The session-level c= line."""
        for t, v in self.lines:
            if t == "c":
                return _parse_connection(v, 0)
        return None

    @property
    def direction(self) -> Direction | None:
        """The session-level direction attribute, None if absent."""
        return _direction(self.lines)

    def media_connection(self, media: Media) -> Connection | None:
        """The c= line that applies to ``media``: its own, else the session's (§5.7)."""
        return media.connection or self.connection

    def media_direction(self, media: Media) -> Direction:
        """The direction that applies to ``media`` (RFC 3264 §5.1, §8.4).

        Media-level attribute, else session-level, else sendrecv; a null c= address
        (0.0.0.0, the RFC 2543 hold) takes away the receive side.
        """
        direction = media.direction or self.direction or "sendrecv"
        conn = self.media_connection(media)
        if conn is not None and conn.is_null:
            direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(  # type: ignore[assignment]
                direction, direction
            )
        return direction

    def audio(self) -> list[tuple[int, Media]]:
        """(index, media) of every audio m-line."""
        return [(i, m) for i, m in enumerate(self.media) if m.kind == "audio"]

    def serialize(self) -> str:
        out = [f"{t}={v}" for t, v in self.lines]
        for m in self.media:
            out.append(f"m={m.m_line}")
            out.extend(f"{t}={v}" for t, v in m.lines)
        return "\r\n".join(out) + "\r\n"

    def __str__(self) -> str:
        return self.serialize()

    def to_bytes(self) -> bytes:
        return self.serialize().encode("utf-8")


# --------------------------------------------------------------------------- parsing


def _attributes(lines: Sequence[Line], name: str) -> list[str]:
    out = []
    for t, v in lines:
        if t != "a":
            continue
        key, sep, value = v.partition(":")
        if key == name:
            out.append(value if sep else "")
    return out


def _direction(lines: Sequence[Line]) -> Direction | None:
    for t, v in lines:
        if t == "a" and v in DIRECTIONS:
            return v
    return None


def _is_uint(text: str) -> bool:
    """ASCII digits only (``int()`` would also take '+1', '1_0', ' 1' and other scripts)."""
    return text.isascii() and text.isdigit()


def _parse_origin(value: str, lineno: int) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(lineno, "RFC 4566 §5.2", f"o= needs 6 fields, got {len(parts)}")
    if not _is_uint(parts[2]):
        raise SdpError(lineno, "RFC 4566 §5.2", f"o= session version {parts[2]!r} not a number")
    version = int(parts[2])
    return Origin(parts[0], parts[1], version, parts[3], parts[4], parts[5])


def _parse_connection(value: str, lineno: int) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(lineno, "RFC 4566 §5.7", f"c= needs 3 fields, got {len(parts)}")
    nettype, addrtype, addr = parts
    address, *extra = addr.split("/")
    if not address or len(extra) > 2:
        raise SdpError(lineno, "RFC 4566 §5.7", f"c= address {addr!r} is malformed")
    if not all(_is_uint(x) for x in extra):
        raise SdpError(lineno, "RFC 4566 §5.7", f"c= TTL/count in {addr!r} not a number")
    numbers = [int(x) for x in extra]
    if addrtype == "IP6":  # IP6 multicast has no TTL: address/count
        ttl, count = None, (numbers[0] if numbers else None)
        if len(numbers) > 1:
            raise SdpError(lineno, "RFC 4566 §5.7", "IP6 c= takes no TTL")
    else:
        ttl = numbers[0] if numbers else None
        count = numbers[1] if len(numbers) > 1 else None
    return Connection(nettype, addrtype, address, ttl, count)


def _parse_m_line(value: str, lineno: int) -> Media:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(
            lineno, "RFC 4566 §5.14", "m= needs <media> <port> <proto> <fmt> at the least"
        )
    kind, port_s, proto, *formats = parts
    port_part, sep, count_part = port_s.partition("/")
    if not _is_uint(port_part) or (sep and not _is_uint(count_part)):
        raise SdpError(lineno, "RFC 4566 §5.14", f"m= port {port_s!r} is not a number")
    port = int(port_part)
    port_count = int(count_part) if sep else None
    if not 0 <= port <= 65535 or (port_count is not None and port_count < 1):
        raise SdpError(lineno, "RFC 4566 §5.14", f"m= port {port_s!r} out of range")
    return Media(kind, port, port_count, proto, tuple(formats))


def _check_attribute(value: str, lineno: int) -> None:
    """Validate the attributes the B2BUA relies on; others pass untouched."""
    key, _, rest = value.partition(":")
    if key == "rtpmap":
        pt, _, enc = rest.partition(" ")
        parts = enc.strip().split("/")
        if (
            not _is_uint(pt)
            or not 0 <= int(pt) <= 127
            or len(parts) not in (2, 3)
            or not parts[0]
            or not _is_uint(parts[1])
            or (len(parts) == 3 and not _is_uint(parts[2]))
        ):
            raise SdpError(
                lineno,
                "RFC 4566 §6 rtpmap",
                f"a=rtpmap must be <payload type> <encoding>/<rate>[/<params>]: {value!r}",
            )
    elif key == "fmtp":
        fmt = rest.partition(" ")[0]
        if not fmt:
            raise SdpError(lineno, "RFC 4566 §6 fmtp", "a=fmtp has no format")
    elif key == "ptime":
        if not _is_uint(rest.replace(".", "", 1)) or float(rest) <= 0:
            raise SdpError(lineno, "RFC 4566 §6 ptime", f"a=ptime {rest!r} not a positive number")
    elif key == "rtcp":
        port = rest.split()[0] if rest.split() else ""
        if not _is_uint(port) or int(port) > 65535 or len(rest.split()) not in (1, 4):
            raise SdpError(
                lineno,
                "RFC 3605 §2.1",
                f"a=rtcp must be <port> [<nettype> <addrtype> <address>]: {value!r}",
            )


def parse_sdp(data: str | bytes) -> SessionDescription:
    """Parse an SDP (RFC 4566 §5). Accepts CRLF or bare LF line ends (§5); blank lines are
    skipped. Raises :class:`SdpError`."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = data.count(b"\n", 0, exc.start) + 1
            raise SdpError(bad, "RFC 4566 §5", "not UTF-8") from None
    else:
        text = data
    session: list[Line] = []
    media: list[Media] = []
    current: list[Line] | None = None
    seen_v = False
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(lineno, "RFC 4566 §5", f"expected <type>=<value>, got {line[:40]!r}")
        t, v = line[0], line[2:]
        if "\r" in v or "\x00" in v:
            raise SdpError(lineno, "RFC 4566 §5", "CR or NUL inside a line")
        if not seen_v:
            if t != "v":
                raise SdpError(lineno, "RFC 4566 §5.1", "the first line must be v=")
            if v.strip() != "0":
                raise SdpError(lineno, "RFC 4566 §5.1", f"version {v!r}, must be 0")
            seen_v = True
        elif t == "m":
            if current is not None:
                media[-1] = replace(media[-1], lines=tuple(current))
            media.append(_parse_m_line(v, lineno))
            current = []
            continue
        elif current is not None and t in _MEDIA_ONLY_FORBIDDEN:
            raise SdpError(lineno, "RFC 4566 §5", f"{t}= is session-level only, found in media")
        if t == "o":
            if any(st == "o" for st, _ in session):
                raise SdpError(lineno, "RFC 4566 §5.2", "more than one o= line")
            _parse_origin(v, lineno)
        elif t == "c":
            _parse_connection(v, lineno)
        elif t == "a":
            _check_attribute(v, lineno)
        (session if current is None else current).append((t, v))
    if current is not None:
        media[-1] = replace(media[-1], lines=tuple(current))
    if not seen_v:
        raise SdpError(0, "RFC 4566 §5.1", "empty SDP: no v= line")
    types = {t for t, _ in session}
    for required, rule in (("o", "RFC 4566 §5.2"), ("s", "RFC 4566 §5.3")):
        if required not in types:
            raise SdpError(0, rule, f"no {required}= line")
    sdp = SessionDescription(tuple(session), tuple(media))
    if sdp.connection is None:
        for i, m in enumerate(sdp.media):
            if not m.rejected and m.connection is None:
                raise SdpError(0, "RFC 4566 §5.7", f"m-line {i} has no c= and nor has the session")
    return sdp


# --------------------------------------------------------------------------- payload formats


def codecs(media: Media) -> list[Codec]:
    """The payload formats of an RTP m-line, in m-line (preference) order.

    Static payload types without a=rtpmap come from RFC 3551; a dynamic one with no rtpmap
    is left out. fmtp parameters are attached.
    """
    rtpmap: dict[str, tuple[str, int, int]] = {}
    for value in media.attributes("rtpmap"):
        key, _, enc = value.partition(" ")
        parts = enc.strip().split("/")
        rtpmap.setdefault(key, (parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 1))
    fmtp: dict[str, str] = {}
    for value in media.attributes("fmtp"):
        fmt, _, params = value.partition(" ")
        fmtp.setdefault(fmt, params.strip())
    out = []
    for fmt in media.formats:
        if not _is_uint(fmt) or int(fmt) > 127:
            continue
        pt = int(fmt)
        if fmt in rtpmap:
            name, rate, channels = rtpmap[fmt]
        elif pt in STATIC_PAYLOAD_TYPES:
            name, rate, channels = STATIC_PAYLOAD_TYPES[pt]
        else:
            continue
        out.append(Codec(pt, name, rate, channels, fmtp.get(fmt)))
    return out


def telephone_event(media: Media, clock_rate: int | None = None) -> Codec | None:
    """The RFC 4733 telephone-event format of the m-line (the first, or the first at
    ``clock_rate``), None if absent."""
    for codec in codecs(media):
        if codec.name.lower() == "telephone-event" and clock_rate in (None, codec.clock_rate):
            return codec
    return None


def has_g711(media: Media) -> bool:
    """True if the m-line offers PCMU or PCMA (at 8000 Hz)."""
    return any(c.name.upper() in ("PCMU", "PCMA") and c.clock_rate == 8000 for c in codecs(media))


_NON_AUDIO_CODECS = frozenset({"telephone-event", "cn", "red"})


def audio_codecs(media: Media) -> list[Codec]:
    """:func:`codecs` without telephone-event, comfort noise and RED: the voice codecs."""
    return [c for c in codecs(media) if c.name.lower() not in _NON_AUDIO_CODECS]


# --------------------------------------------------------------------------- rewriting


def _addrtype(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name; RFC 4566 allows an FQDN


def bump_version(sdp: SessionDescription) -> SessionDescription:
    """The same description with o= session version + 1 (RFC 3264 §8)."""
    origin = sdp.origin
    new = replace(origin, session_version=origin.session_version + 1)
    lines = tuple(("o", str(new)) if t == "o" else (t, v) for t, v in sdp.lines)
    return replace(sdp, lines=lines)


def _with_telephone_event(media: Media) -> Media:
    if telephone_event(media, 8000) is not None:
        return media
    used = {int(f) for f in media.formats if _is_uint(f)}
    used.update(int(v.partition(" ")[0]) for v in media.attributes("rtpmap"))
    pt = next((p for p in (101, *range(96, 128)) if p not in used), None)
    if pt is None:
        return media  # no dynamic payload type left
    new_lines = [("a", f"rtpmap:{pt} telephone-event/8000"), ("a", f"fmtp:{pt} 0-16")]
    lines = list(media.lines)
    last = max(
        (i for i, (t, v) in enumerate(lines) if t == "a" and v.startswith(("rtpmap:", "fmtp:"))),
        default=None,
    )
    if last is None:
        last = max((i for i, (t, _) in enumerate(lines) if t in "icbk"), default=-1)
    lines[last + 1 : last + 1] = new_lines
    return replace(media, formats=(*media.formats, str(pt)), lines=tuple(lines))


def _rewrite_rtcp_lines(
    lines: list[Line], rtp_port: int, rtcp_port: int | None, conn: Connection
) -> list[Line]:
    out = [(t, v) for t, v in lines if not (t == "a" and v.partition(":")[0] == "rtcp")]
    if rtcp_port is not None and rtcp_port != rtp_port + 1:
        at = next(
            (i for i, (t, v) in enumerate(lines) if t == "a" and v.partition(":")[0] == "rtcp"),
            len(out),
        )
        at = min(at, len(out))
        out.insert(at, ("a", f"rtcp:{rtcp_port} {conn}"))
    return out


def anchor_media(
    sdp: SessionDescription,
    address: str,
    audio_ports: Sequence[int],
    *,
    rtcp_ports: Sequence[int | None] | None = None,
    non_audio: Literal["reject", "pass"] = "reject",
    add_telephone_event: bool = False,
    keep_null_address: bool = True,
) -> SessionDescription:
    """Put the proxy in the media path: its ``address`` in every c= line used by audio and
    ``audio_ports[k]`` on the k-th active (port ≠ 0) audio m-line.

    - Rejected streams keep port 0. Non-audio m-lines are rejected (port 0) with
      ``non_audio="reject"``; with ``"pass"`` they keep their port and, if they used the
      session-level c=, get their own c= with the original address.
    - A null address (0.0.0.0 / ::, the RFC 2543 hold) is kept with ``keep_null_address``.
    - a=rtcp (RFC 3605): removed, or set to ``rtcp_ports[k]`` when given and not RTP + 1.
    - ``add_telephone_event`` adds telephone-event/8000 with fmtp 0-16 where absent.
    - Direction attributes and all other lines are kept. The o= version is bumped if
      anything changed (RFC 3264 §8).

    Raises ``ValueError`` if the number of ports does not match the active audio m-lines.
    """
    active = [i for i, m in sdp.audio() if not m.rejected]
    if len(audio_ports) != len(active):
        raise ValueError(f"{len(active)} active audio m-lines, {len(audio_ports)} ports given")
    if rtcp_ports is not None and len(rtcp_ports) != len(active):
        raise ValueError(f"{len(active)} active audio m-lines, {len(rtcp_ports)} RTCP ports")
    proxy_conn = Connection("IN", _addrtype(address), address)
    session_conn = sdp.connection

    def swap(conn: Connection) -> Connection:
        if keep_null_address and conn.is_null:
            return conn
        return proxy_conn

    session_lines = tuple(
        ("c", str(swap(_parse_connection(v, 0)))) if t == "c" else (t, v) for t, v in sdp.lines
    )
    new_media = []
    for i, m in enumerate(sdp.media):
        if m.kind != "audio" or m.rejected:
            if m.kind != "audio" and not m.rejected:
                if non_audio == "reject":
                    m = replace(m, port=0, port_count=None)
                elif m.connection is None and session_conn is not None:
                    lines = list(m.lines)
                    at = max((j for j, (t, _) in enumerate(lines) if t == "i"), default=-1)
                    lines.insert(at + 1, ("c", str(session_conn)))
                    m = replace(m, lines=tuple(lines))
            new_media.append(m)
            continue
        k = active.index(i)
        lines = [
            ("c", str(swap(_parse_connection(v, 0)))) if t == "c" else (t, v) for t, v in m.lines
        ]
        conn = sdp.media_connection(m)
        used = swap(conn) if conn is not None else proxy_conn
        lines = _rewrite_rtcp_lines(
            lines, audio_ports[k], rtcp_ports[k] if rtcp_ports is not None else None, used
        )
        m = replace(m, port=audio_ports[k], lines=tuple(lines))
        if add_telephone_event:
            m = _with_telephone_event(m)
        new_media.append(m)
    out = SessionDescription(session_lines, tuple(new_media))
    return bump_version(out) if out != sdp else sdp


def set_direction(
    sdp: SessionDescription, direction: Direction, media_index: int | None = None
) -> SessionDescription:
    """Set the direction attribute of one m-line (or of every one), replacing any present
    at media level and dropping the session-level one; bumps the o= version on change."""
    session_lines = tuple((t, v) for t, v in sdp.lines if not (t == "a" and v in DIRECTIONS))
    session_dir = sdp.direction
    new_media = []
    for i, m in enumerate(sdp.media):
        if media_index is None or i == media_index:
            lines = [(t, v) for t, v in m.lines if not (t == "a" and v in DIRECTIONS)]
            lines.append(("a", direction))
            m = replace(m, lines=tuple(lines))
        elif session_dir is not None and m.direction is None:
            m = replace(m, lines=(*m.lines, ("a", session_dir)))
        new_media.append(m)
    out = SessionDescription(session_lines, tuple(new_media))
    return bump_version(out) if out != sdp else sdp


# --------------------------------------------------------------------------- offer/answer


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The outcome of an offer/answer exchange for one audio stream (RFC 3264 §6).

    ``codec_offer``/``codec_answer`` are the first voice codec of the answer that the offer
    also has, as each side numbers it. ``direction`` is from the offerer's point of view.
    """

    media_index: int
    rejected: bool
    codec_offer: Codec | None
    codec_answer: Codec | None
    telephone_event_offer: int | None
    telephone_event_answer: int | None
    telephone_event_rate: int | None
    offer_direction: Direction
    answer_direction: Direction
    direction: Direction


def _combine(offer: Direction, answer: Direction) -> Direction:
    offer_sends = offer in ("sendrecv", "sendonly") and answer in ("sendrecv", "recvonly")
    offer_recvs = offer in ("sendrecv", "recvonly") and answer in ("sendrecv", "sendonly")
    if offer_sends and offer_recvs:
        return "sendrecv"
    if offer_sends:
        return "sendonly"
    return "recvonly" if offer_recvs else "inactive"


def negotiate(
    offer: SessionDescription, answer: SessionDescription, media_index: int | None = None
) -> Negotiation:
    """What an offer and its answer agreed for the audio stream at ``media_index`` (default:
    the first audio m-line of the offer). Raises :class:`SdpError` if the answer breaks
    RFC 3264 §6 (a different number of m-lines, or another media type at that index)."""
    if len(offer.media) != len(answer.media):
        raise SdpError(
            0,
            "RFC 3264 §6",
            f"answer has {len(answer.media)} m-lines, offer {len(offer.media)}",
        )
    if media_index is None:
        audio = offer.audio()
        if not audio:
            raise SdpError(0, "RFC 3264 §6", "offer has no audio m-line")
        media_index = audio[0][0]
    om, am = offer.media[media_index], answer.media[media_index]
    if om.kind != am.kind:
        raise SdpError(
            0, "RFC 3264 §6", f"m-line {media_index}: answer {am.kind!r} for offer {om.kind!r}"
        )
    offer_codecs = audio_codecs(om)
    codec_offer = codec_answer = None
    for ac in audio_codecs(am):
        match = next((oc for oc in offer_codecs if oc.same_format(ac)), None)
        if match is not None:
            codec_offer, codec_answer = match, ac
            break
    te_answer = telephone_event(am)
    te_offer = telephone_event(om, te_answer.clock_rate if te_answer else None)
    if te_offer is None or te_answer is None:  # negotiated only if both sides have it
        te_offer = te_answer = None
    od, ad = offer.media_direction(om), answer.media_direction(am)
    rejected = am.rejected or om.rejected
    return Negotiation(
        media_index=media_index,
        rejected=rejected,
        codec_offer=None if rejected else codec_offer,
        codec_answer=None if rejected else codec_answer,
        telephone_event_offer=te_offer.payload_type if te_offer and not rejected else None,
        telephone_event_answer=te_answer.payload_type if te_answer and not rejected else None,
        telephone_event_rate=te_answer.clock_rate if te_answer and not rejected else None,
        offer_direction=od,
        answer_direction=ad,
        direction="inactive" if rejected else _combine(od, ad),
    )
