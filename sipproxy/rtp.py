"""RTP and RTCP (RFC 3550) for the relay's hot path: parse, build, demultiplex, rewrite.

Sans-I/O: bytes in, values out. Nothing here owns a socket, a clock or a random source;
callers pass arrival times and initial values in.

- :func:`parse_rtp` / :func:`build_rtp`: the full header (CSRCs, header extension, padding).
- :func:`peek_rtp`: the fast path, only what the relay needs, as a plain tuple.
- :func:`is_rtcp` / :func:`classify_packet`: RTP/RTCP multiplexing on one port (RFC 5761 §4)
  and the first-byte demultiplexing of RFC 7983 (STUN, DTLS, RTP/RTCP).
- :func:`parse_rtcp` / :func:`rewrite_rtcp_ssrcs`: the compound packet walk and SSRC rewriting.
- :class:`StreamRewriter`: gives an outgoing stream its own SSRC, contiguous sequence numbers
  and consistent timestamps whatever the input does (DESIGN.md invariant 6).

Errors are :class:`RtpError` / :class:`RtcpError`; ``reason`` is a short fixed label fit for a
metric, the message names the RFC rule broken and the byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from random import SystemRandom
from typing import Literal

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

RtpErrorReason = Literal["short", "version", "csrc", "extension", "padding"]
RtcpErrorReason = Literal["short", "version", "length", "padding", "count"]
PacketKind = Literal["rtp", "rtcp", "stun", "dtls", "unknown"]

_FIXED = struct.Struct("!BBHII")
_FIXED_UNPACK = _FIXED.unpack_from
_FIXED_PACK = _FIXED.pack
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEAD = struct.Struct("!HH")
_RTCP_HEAD = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!QIII")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")


class RtpError(ValueError):
    """An RTP packet broke RFC 3550 §5.1. ``reason`` is one of :data:`RtpErrorReason`."""

    def __init__(self, reason: RtpErrorReason, offset: int, message: str) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.reason: RtpErrorReason = reason
        self.offset = offset


class RtcpError(ValueError):
    """An RTCP packet broke RFC 3550 §6. ``reason`` is one of :data:`RtcpErrorReason`."""

    def __init__(self, reason: RtcpErrorReason, offset: int, message: str) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.reason: RtcpErrorReason = reason
        self.offset = offset


# --------------------------------------------------------------------------- RTP data types


@dataclass(slots=True)
class RtpExtension:
    """A header extension (RFC 3550 §5.3.1): 16-bit profile word and its data (4n bytes)."""

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpHeader:
    """The RTP header of RFC 3550 §5.1.

    The P and X bits are :attr:`padding` and :attr:`extension`, derived from
    ``padding_size`` (the padding count, 0 for none) and ``header_extension``.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    header_extension: RtpExtension | None = None
    padding_size: int = 0

    @property
    def version(self) -> int:
        return RTP_VERSION

    @property
    def padding(self) -> bool:
        return self.padding_size > 0

    @property
    def extension(self) -> bool:
        return self.header_extension is not None


@dataclass(slots=True)
class RtpPacket(RtpHeader):
    """A parsed RTP packet: the header fields and the payload (padding removed)."""

    payload: bytes = b""


RtpView = tuple[int, int, int, int, bool, int, int]
"""What :func:`peek_rtp` returns: (payload_type, sequence, timestamp, ssrc, marker,
payload_offset, payload_end). A plain tuple: a NamedTuple costs twice as much to make."""


# --------------------------------------------------------------------------- RTP parse/build


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpPacket:
    """Parse one RTP packet (RFC 3550 §5.1, §5.3.1). Raises :class:`RtpError`."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpError("short", size, f"RFC 3550 §5.1: {size} bytes, fixed header needs 12")
    b0, b1, seq, ts, ssrc = _FIXED_UNPACK(data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("version", 0, f"RFC 3550 §5.1: version {b0 >> 6}, must be 2")
    offset = RTP_HEADER_SIZE
    cc = b0 & 0x0F
    csrcs: tuple[int, ...] = ()
    if cc:
        offset += 4 * cc
        if offset > size:
            raise RtpError(
                "csrc", RTP_HEADER_SIZE, f"RFC 3550 §5.1: CSRC count {cc} runs past {size} bytes"
            )
        csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE)
    ext: RtpExtension | None = None
    if b0 & 0x10:
        if offset + 4 > size:
            raise RtpError(
                "extension", offset, "RFC 3550 §5.3.1: extension header runs past the packet"
            )
        profile, words = _EXT_HEAD.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if end > size:
            raise RtpError(
                "extension",
                offset + 2,
                f"RFC 3550 §5.3.1: extension length {words} words runs past {size} bytes",
            )
        ext = RtpExtension(profile, bytes(data[offset + 4 : end]))
        offset = end
    pad = 0
    stop = size
    if b0 & 0x20:
        pad = data[size - 1]
        if pad == 0 or pad > size - offset:
            raise RtpError(
                "padding",
                size - 1,
                f"RFC 3550 §5.1: padding count {pad} is 0 or exceeds the {size - offset}"
                " bytes after the header",
            )
        stop = size - pad
    payload = data[offset:stop]
    if type(payload) is not bytes:
        payload = bytes(payload)
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, b1 > 127, csrcs, ext, pad, payload)


def peek_rtp(data: bytes | bytearray | memoryview) -> RtpView:
    """The relay's fast path: validate as :func:`parse_rtp` does, copy nothing."""
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpError("short", size, f"RFC 3550 §5.1: {size} bytes, fixed header needs 12")
    b0, b1, seq, ts, ssrc = _FIXED_UNPACK(data, 0)
    if b0 == 0x80:  # V=2, no padding, no extension, no CSRC: the common case
        return (b1 & 0x7F, seq, ts, ssrc, b1 > 127, RTP_HEADER_SIZE, size)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("version", 0, f"RFC 3550 §5.1: version {b0 >> 6}, must be 2")
    offset = RTP_HEADER_SIZE + 4 * (b0 & 0x0F)
    if offset > size:
        raise RtpError(
            "csrc",
            RTP_HEADER_SIZE,
            f"RFC 3550 §5.1: CSRC count {b0 & 0x0F} runs past {size} bytes",
        )
    if b0 & 0x10:
        if offset + 4 > size:
            raise RtpError(
                "extension", offset, "RFC 3550 §5.3.1: extension header runs past the packet"
            )
        end = offset + 4 + 4 * _U16.unpack_from(data, offset + 2)[0]
        if end > size:
            raise RtpError(
                "extension", offset + 2, f"RFC 3550 §5.3.1: extension runs past {size} bytes"
            )
        offset = end
    stop = size
    if b0 & 0x20:
        pad = data[size - 1]
        if pad == 0 or pad > size - offset:
            raise RtpError(
                "padding",
                size - 1,
                f"RFC 3550 §5.1: padding count {pad} is 0 or exceeds the {size - offset}"
                " bytes after the header",
            )
        stop = size - pad
    return (b1 & 0x7F, seq, ts, ssrc, b1 > 127, offset, stop)


def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension: RtpExtension | None = None,
    padding: int = 0,
) -> bytes:
    """Build one RTP packet. ``padding`` is the number of padding bytes (0-255) to append.

    Raises ``ValueError`` for a field out of range (payload type 0-127, sequence 16 bits,
    timestamp and SSRC 32 bits, at most 15 CSRCs, extension data a multiple of 4 bytes).
    """
    if not csrcs and extension is None and not padding and 0 <= payload_type <= 127:
        try:
            return (
                _FIXED_PACK(0x80, payload_type | (0x80 if marker else 0), sequence, timestamp, ssrc)
                + payload
            )
        except struct.error:
            pass  # fall through to the checks below, which say what is wrong
    if not 0 <= payload_type <= 127:
        raise ValueError(f"RFC 3550 §5.1: payload type {payload_type} not in 0-127")
    if len(csrcs) > 15:
        raise ValueError(f"RFC 3550 §5.1: {len(csrcs)} CSRCs, at most 15")
    if not 0 <= padding <= 255:
        raise ValueError(f"RFC 3550 §5.1: padding {padding} not in 0-255")
    b0 = 0x80 | len(csrcs) | (0x20 if padding else 0) | (0x10 if extension is not None else 0)
    try:
        parts = [_FIXED_PACK(b0, payload_type | (0x80 if marker else 0), sequence, timestamp, ssrc)]
        if csrcs:
            parts.append(struct.pack(f"!{len(csrcs)}I", *csrcs))
        if extension is not None:
            if len(extension.data) % 4:
                raise ValueError("RFC 3550 §5.3.1: extension data must be a multiple of 4 bytes")
            parts.append(_EXT_HEAD.pack(extension.profile, len(extension.data) // 4))
            parts.append(extension.data)
    except struct.error as exc:
        raise ValueError(f"RFC 3550 §5.1: field out of range: {exc}") from None
    parts.append(bytes(payload))
    if padding:
        parts.append(bytes(padding - 1) + bytes((padding,)))
    return b"".join(parts)


def serialize_rtp(packet: RtpPacket) -> bytes:
    """Build the wire form of a parsed (or constructed) :class:`RtpPacket`."""
    return build_rtp(
        packet.payload_type,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
        packet.payload,
        marker=packet.marker,
        csrcs=packet.csrcs,
        extension=packet.header_extension,
        padding=packet.padding_size,
    )


def rewrite_rtp_header(
    data: bytes | bytearray | memoryview,
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool,
    payload_type: int | None = None,
) -> bytes:
    """Copy a packet with new sequence, timestamp, SSRC and marker (payload type kept
    unless given); CSRCs, extension, payload and padding are kept byte for byte.

    The caller has validated ``data`` (with :func:`peek_rtp`).
    """
    pt = data[1] & 0x7F if payload_type is None else payload_type
    return (
        _FIXED_PACK(data[0], pt | (0x80 if marker else 0), sequence, timestamp, ssrc)
        + data[RTP_HEADER_SIZE:]
    )


# --------------------------------------------------------------------------- demultiplexing


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """True if a packet on an rtcp-mux port is RTCP (RFC 5761 §4).

    RTCP packet types 192-223 sit where RTP's marker bit plus payload types 64-95 would, so
    a second byte in 192-223 is RTCP and anything else is RTP. Payload types 64-95 must not
    be used for RTP on a multiplexed port.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def classify_packet(data: bytes | bytearray | memoryview) -> PacketKind:
    """Demultiplex one datagram by its first byte (RFC 7983 §7) then RFC 5761 §4."""
    if not data:
        return "unknown"
    b0 = data[0]
    if b0 <= 3:
        return "stun"
    if 20 <= b0 <= 63:
        return "dtls"
    if 128 <= b0 <= 191:
        return "rtcp" if is_rtcp(data) else "rtp"
    return "unknown"


# --------------------------------------------------------------------------- RTCP

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206
RTCP_XR = 207


@dataclass(slots=True)
class RtcpSenderInfo:
    """The sender info block of an SR (RFC 3550 §6.4.1)."""

    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int


@dataclass(slots=True)
class RtcpReportBlock:
    """One reception report block (RFC 3550 §6.4.1). ``cumulative_lost`` is signed."""

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int


@dataclass(slots=True)
class RtcpPacket:
    """One packet of a compound RTCP packet (RFC 3550 §6.1).

    ``count`` is the 5-bit RC/SC/FMT field. ``ssrc`` is the sender SSRC (SR, RR, APP, XR,
    feedback), the first chunk's SSRC (SDES) or the first SSRC leaving (BYE); None when the
    packet carries none. ``offset``/``length`` place the packet in the compound packet.
    """

    packet_type: int
    count: int
    ssrc: int | None
    offset: int
    length: int
    padding: bool = False
    sender_info: RtcpSenderInfo | None = None
    report_blocks: tuple[RtcpReportBlock, ...] = ()
    sdes: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...] = ()
    bye_ssrcs: tuple[int, ...] = ()
    bye_reason: bytes | None = None
    media_ssrc: int | None = None


def _iter_rtcp(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, bool]]:
    """Walk a compound packet: (offset, packet type, count, end, padding) per packet.

    Checks RFC 3550 §6.4.1/A.2: version 2, lengths inside the datagram, padding only on the
    last packet and within it.
    """
    size = len(data)
    if size < 4:
        raise RtcpError("short", size, f"RFC 3550 §6.4.1: {size} bytes, header needs 4")
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise RtcpError(
                "short", offset, "RFC 3550 §6.1: trailing bytes shorter than an RTCP header"
            )
        b0, pt, words = _RTCP_HEAD.unpack_from(data, offset)
        if b0 >> 6 != RTP_VERSION:
            raise RtcpError("version", offset, f"RFC 3550 §6.4.1: version {b0 >> 6}, must be 2")
        end = offset + 4 + 4 * words
        if end > size:
            raise RtcpError(
                "length",
                offset + 2,
                f"RFC 3550 §6.4.1: length {words} words runs past {size} bytes",
            )
        padded = bool(b0 & 0x20)
        if padded:
            if end != size:
                raise RtcpError(
                    "padding", offset, "RFC 3550 §6.4.1: padding bit set on a non-final packet"
                )
            pad = data[end - 1]
            if pad == 0 or pad > end - offset - 4:
                raise RtcpError(
                    "padding", end - 1, f"RFC 3550 §6.4.1: padding count {pad} is 0 or too big"
                )
            yield offset, pt, b0 & 0x1F, end - pad, True
        else:
            yield offset, pt, b0 & 0x1F, end, False
        offset = end


def _report_blocks(
    data: bytes | bytearray | memoryview, start: int, count: int, end: int
) -> tuple[RtcpReportBlock, ...]:
    if start + 24 * count > end:
        raise RtcpError(
            "count", start, f"RFC 3550 §6.4.1: {count} report blocks run past the packet"
        )
    blocks = []
    for i in range(count):
        ssrc, frac, lost, high, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, start + 24 * i)
        cum = int.from_bytes(lost, "big", signed=True)
        blocks.append(RtcpReportBlock(ssrc, frac, cum, high, jitter, lsr, dlsr))
    return tuple(blocks)


def _sdes_chunks(
    data: bytes | bytearray | memoryview, start: int, count: int, end: int
) -> tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]:
    chunks = []
    pos = start
    for _ in range(count):
        if pos + 4 > end:
            raise RtcpError("count", pos, f"RFC 3550 §6.5: {count} SDES chunks run past the packet")
        ssrc = _U32.unpack_from(data, pos)[0]
        pos += 4
        items = []
        while True:
            if pos >= end:
                raise RtcpError("length", pos, "RFC 3550 §6.5: SDES chunk has no END item")
            item = data[pos]
            if item == 0:
                pos = (pos + 4) & ~3  # END, then pad to the next 32-bit boundary
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise RtcpError("length", pos, "RFC 3550 §6.5: SDES item runs past the packet")
            n = data[pos + 1]
            items.append((item, bytes(data[pos + 2 : pos + 2 + n])))
            pos += 2 + n
        chunks.append((ssrc, tuple(items)))
    return tuple(chunks)


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6). Raises :class:`RtcpError`.

    SR, RR, SDES and BYE are parsed; other types (APP, feedback, XR, unknown) give their
    header and the sender SSRC. The first-packet-must-be-SR/RR rule of §6.1 is not enforced
    (RFC 5506 reduced-size RTCP lifts it).
    """
    packets = []
    for offset, pt, count, end, padded in _iter_rtcp(data):
        body = offset + 4
        pkt = RtcpPacket(pt, count, None, offset, end - offset, padded)
        if pt in (RTCP_SR, RTCP_RR):
            need = body + (24 if pt == RTCP_SR else 4)
            if need > end:
                raise RtcpError("short", body, f"RFC 3550 §6.4: packet type {pt} body too short")
            pkt.ssrc = _U32.unpack_from(data, body)[0]
            if pt == RTCP_SR:
                pkt.sender_info = RtcpSenderInfo(*_SENDER_INFO.unpack_from(data, body + 4))
            pkt.report_blocks = _report_blocks(data, need, count, end)
        elif pt == RTCP_SDES:
            pkt.sdes = _sdes_chunks(data, body, count, end)
            if pkt.sdes:
                pkt.ssrc = pkt.sdes[0][0]
        elif pt == RTCP_BYE:
            if body + 4 * count > end:
                raise RtcpError("count", body, f"RFC 3550 §6.6: {count} SSRCs run past the packet")
            pkt.bye_ssrcs = struct.unpack_from(f"!{count}I", data, body)
            pkt.ssrc = pkt.bye_ssrcs[0] if count else None
            rpos = body + 4 * count
            if rpos < end:
                n = data[rpos]
                if rpos + 1 + n > end:
                    raise RtcpError("length", rpos, "RFC 3550 §6.6: BYE reason runs past packet")
                pkt.bye_reason = bytes(data[rpos + 1 : rpos + 1 + n])
        elif body + 4 <= end:
            pkt.ssrc = _U32.unpack_from(data, body)[0]
            if pt in (RTCP_RTPFB, RTCP_PSFB) and body + 8 <= end:
                pkt.media_ssrc = _U32.unpack_from(data, body + 4)[0]
        packets.append(pkt)
    return packets


SsrcMap = Mapping[int, int] | Callable[[int], int]


def rewrite_rtcp_ssrcs(
    data: bytes | bytearray | memoryview,
    ssrc_map: SsrcMap,
    *,
    rtp_timestamp: Callable[[int], int] | None = None,
) -> bytes:
    """Rewrite every SSRC in a compound RTCP packet through ``ssrc_map``.

    Covered: the sender SSRC of SR, RR, APP, XR and feedback packets, report block SSRCs,
    SDES chunk SSRCs, BYE SSRCs and the media SSRC of RTPFB/PSFB. A mapping leaves SSRCs it
    does not hold as they are; a callable is applied to every one. ``rtp_timestamp``, if
    given, maps the SR's RTP timestamp (e.g. :meth:`StreamRewriter.translate_timestamp`).
    Raises :class:`RtcpError` if the packet is malformed.
    """
    fn: Callable[[int], int]
    if callable(ssrc_map):
        fn = ssrc_map
    else:
        table = ssrc_map

        def fn(ssrc: int) -> int:
            return table.get(ssrc, ssrc)

    out = bytearray(data)

    def remap(pos: int) -> None:
        old = _U32.unpack_from(out, pos)[0]
        new = fn(old)
        if new != old:
            _U32.pack_into(out, pos, new & 0xFFFFFFFF)

    for pkt in parse_rtcp(data):
        body = pkt.offset + 4
        pt = pkt.packet_type
        if pt in (RTCP_SR, RTCP_RR):
            remap(body)
            blocks = body + (24 if pt == RTCP_SR else 4)
            for i in range(len(pkt.report_blocks)):
                remap(blocks + 24 * i)
            if pt == RTCP_SR and rtp_timestamp is not None and pkt.sender_info is not None:
                ts = rtp_timestamp(pkt.sender_info.rtp_timestamp) & 0xFFFFFFFF
                _U32.pack_into(out, body + 12, ts)
        elif pt == RTCP_SDES:
            pos = body
            for _ssrc, items in pkt.sdes:
                remap(pos)
                pos += 4 + sum(2 + len(value) for _t, value in items)
                pos = (pos + 4) & ~3
        elif pt == RTCP_BYE:
            for i in range(len(pkt.bye_ssrcs)):
                remap(body + 4 * i)
        elif pkt.ssrc is not None:
            remap(body)
            if pkt.media_ssrc is not None:
                remap(body + 4)
    return bytes(out)


# --------------------------------------------------------------------------- stream rewriting


Rewritten = tuple[int, int, bool]
"""Output (sequence, timestamp, marker) for one packet of a rewritten stream."""


MAX_DROPOUT = 3000
"""Forward sequence jump still taken as loss on the same stream (RFC 3550 A.1)."""
MAX_MISORDER = 100
"""Backward sequence jump taken as a late packet (dropped) rather than a restart (A.1)."""


class StreamRewriter:
    """Sans-I/O state for one outgoing RTP stream (DESIGN.md invariant 6).

    The output has one SSRC (:attr:`ssrc`), sequence numbers that step by exactly one per
    packet sent, and timestamps that follow the input's timestamp steps and never go back.
    Call :meth:`rewrite` for each input packet, :meth:`insert` for each packet the relay makes
    itself (hold audio, regenerated RFC 4733 events, masking frames).

    Input handling:

    - duplicate or late packets (up to :data:`MAX_MISORDER` behind) give ``None``: drop them;
    - lost packets (a forward sequence jump up to :data:`MAX_DROPOUT`) are closed up in the
      sequence space; the timestamp gap stays, so the receiver sees the missing audio time;
    - a new input SSRC (re-INVITE, PBX transfer), a sequence jump beyond those bounds, or a
      timestamp that would step back or jump further than ``max_ts_jump`` re-anchors: the
      output timestamp goes on from the last one by the time elapsed (``now``, if the caller
      passes arrival times) or by one packet's worth, and the marker bit is set.
    """

    __slots__ = (
        "_default_step",
        "_in_seq",
        "_in_ssrc",
        "_in_ts",
        "_last_now",
        "_max_ts_jump",
        "_offset",
        "_out_seq",
        "_out_ts",
        "_started",
        "_step",
        "clock_rate",
        "ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        *,
        initial_sequence: int,
        initial_timestamp: int,
        clock_rate: int = 8000,
        ptime_ms: int = 20,
        max_ts_jump_s: float = 60.0,
    ) -> None:
        if not 0 <= ssrc < TS_MOD:
            raise ValueError(f"SSRC {ssrc} is not 32-bit")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._out_seq = (initial_sequence - 1) % SEQ_MOD  # last sequence number sent
        self._out_ts = initial_timestamp % TS_MOD  # last timestamp sent
        self._default_step = clock_rate * ptime_ms // 1000
        self._step = self._default_step  # timestamp units per packet, as last seen
        self._max_ts_jump = int(max_ts_jump_s * clock_rate)
        self._offset = 0  # out_ts = in_ts + offset (mod 2**32) for the current source
        self._in_ssrc: int | None = None
        self._in_seq = 0
        self._in_ts = 0
        self._last_now: float | None = None
        self._started = False  # nothing sent yet: the first packet goes at initial_timestamp

    @classmethod
    def create(cls, clock_rate: int = 8000, ptime_ms: int = 20) -> StreamRewriter:
        """A rewriter with random SSRC, initial sequence and timestamp (RFC 3550 §5.1)."""
        rng = SystemRandom()
        return cls(
            rng.getrandbits(32),
            initial_sequence=rng.getrandbits(16),
            initial_timestamp=rng.getrandbits(32),
            clock_rate=clock_rate,
            ptime_ms=ptime_ms,
        )

    @property
    def last_sequence(self) -> int:
        return self._out_seq

    @property
    def last_timestamp(self) -> int:
        return self._out_ts

    def translate_timestamp(self, in_ts: int) -> int:
        """The output timestamp for input timestamp ``in_ts`` of the current source (SR use)."""
        return (in_ts + self._offset) % TS_MOD

    def _anchor_step(self, now: float | None) -> int:
        if not self._started:
            return 0
        if now is not None and self._last_now is not None:
            elapsed = round((now - self._last_now) * self.clock_rate)
            return min(max(elapsed, self._step), self._max_ts_jump)
        return self._step

    def rewrite(
        self, in_seq: int, in_ts: int, in_ssrc: int, marker: bool, now: float | None = None
    ) -> Rewritten | None:
        """Output (sequence, timestamp, marker) for one input packet, or None to drop it.

        ``now`` is the arrival time in seconds (any monotonic clock), used to place the
        timestamp after a re-anchor; without it a re-anchor steps one packet time.
        """
        if in_ssrc == self._in_ssrc:
            d_seq = (in_seq - self._in_seq) & 0xFFFF
            if d_seq == 0 or d_seq >= SEQ_MOD - MAX_MISORDER:
                return None  # duplicate, or late: its sequence slot is gone
            if d_seq <= MAX_DROPOUT:
                out_ts = (in_ts + self._offset) & 0xFFFFFFFF
                d_out = (out_ts - self._out_ts) & 0xFFFFFFFF
                if d_out <= self._max_ts_jump:
                    d_in = (in_ts - self._in_ts) & 0xFFFFFFFF
                    if d_seq == 1 and 0 < d_in <= self._max_ts_jump and not marker:
                        self._step = d_in
                    self._in_seq = in_seq
                    self._in_ts = in_ts
                    self._out_ts = out_ts
                    self._out_seq = seq = (self._out_seq + 1) & 0xFFFF
                    self._last_now = now
                    return (seq, out_ts, marker)
        # new source, restart, or a timestamp that would go back or leap: re-anchor
        out_ts = (self._out_ts + self._anchor_step(now)) & 0xFFFFFFFF
        self._offset = (out_ts - in_ts) & 0xFFFFFFFF
        self._in_ssrc = in_ssrc
        self._in_seq = in_seq
        self._in_ts = in_ts
        self._out_ts = out_ts
        self._out_seq = seq = (self._out_seq + 1) & 0xFFFF
        self._last_now = now
        self._started = True
        return (seq, out_ts, True)

    def insert(
        self, ts_advance: int, *, marker: bool = False, now: float | None = None
    ) -> Rewritten:
        """Output fields for a packet the relay makes itself, ``ts_advance`` timestamp units
        after the last packet sent (0 for a repeated RFC 4733 event packet)."""
        if not 0 <= ts_advance < TS_MOD >> 1:
            raise ValueError(f"timestamp advance {ts_advance} must be in 0..2**31-1")
        if not self._started:  # the first packet goes at the initial timestamp
            self._started = True
            ts_advance = 0
            marker = True
        self._out_ts = out_ts = (self._out_ts + ts_advance) & 0xFFFFFFFF
        self._out_seq = seq = (self._out_seq + 1) & 0xFFFF
        if now is not None:
            self._last_now = now
        return (seq, out_ts, marker)


SequenceRewriter = StreamRewriter
"""Alias: the same object serves as the sequence-number rewriter."""
