"""Tests for sipproxy.rtp: RFC 3550 parse/build, RFC 5761 demux, RTCP, stream rewriting."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.rtp import (
    MAX_DROPOUT,
    RtcpError,
    RtpError,
    RtpExtension,
    RtpPacket,
    StreamRewriter,
    build_rtp,
    classify_packet,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
    peek_rtp,
    rewrite_rtcp_ssrcs,
    rewrite_rtp_header,
    serialize_rtp,
)

PAYLOAD = bytes(range(160))


# ------------------------------------------------------------------ RTP parse / build


def test_parse_plain_packet() -> None:
    data = build_rtp(8, 0xFFFF, 0xFFFFFFFF, 0xDEADBEEF, PAYLOAD, marker=True)
    assert data[:2] == b"\x80\x88"
    pkt = parse_rtp(data)
    assert pkt.version == 2
    assert (pkt.payload_type, pkt.sequence, pkt.timestamp, pkt.ssrc) == (
        8,
        0xFFFF,
        0xFFFFFFFF,
        0xDEADBEEF,
    )
    assert pkt.marker and not pkt.padding and not pkt.extension
    assert pkt.csrcs == () and pkt.header_extension is None
    assert pkt.payload == PAYLOAD
    assert peek_rtp(data) == (8, 0xFFFF, 0xFFFFFFFF, 0xDEADBEEF, True, 12, 172)


def test_parse_full_packet_roundtrip() -> None:
    ext = RtpExtension(0xBEDE, b"\x10\xaa\x00\x00")
    data = build_rtp(
        101, 7, 8000, 42, b"\x01\x0a\x00\xa0", csrcs=(1, 2, 3), extension=ext, padding=3
    )
    pkt = parse_rtp(memoryview(data))
    assert pkt.csrcs == (1, 2, 3)
    assert pkt.header_extension == ext and pkt.extension
    assert pkt.padding and pkt.padding_size == 3
    assert pkt.payload == b"\x01\x0a\x00\xa0"
    assert serialize_rtp(pkt) == data
    pt, seq, ts, ssrc, marker, start, end = peek_rtp(data)
    assert (pt, seq, ts, ssrc, marker) == (101, 7, 8000, 42, False)
    assert data[start:end] == b"\x01\x0a\x00\xa0"


def test_parse_accepts_bytearray_and_padding_only() -> None:
    data = bytearray(build_rtp(0, 1, 2, 3, b"", padding=4))
    pkt = parse_rtp(data)
    assert pkt.payload == b"" and pkt.padding_size == 4


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"", "short", 0),
        (b"\x80\x00" + bytes(9), "short", 11),
        (b"\x40\x00" + bytes(10), "version", 0),
        (b"\x00\x00" + bytes(10), "version", 0),
        (b"\x82\x00" + bytes(10) + bytes(4), "csrc", 12),
        (b"\x90\x00" + bytes(10) + b"\x00\x00", "extension", 12),
        (b"\x90\x00" + bytes(10) + b"\xbe\xde\x00\x02" + bytes(4), "extension", 14),
        (b"\xa0\x00" + bytes(10) + b"\x00", "padding", 12),
        (b"\xa0\x00" + bytes(10) + b"ab\x00", "padding", 14),
        (b"\xa0\x00" + bytes(10) + b"ab\x04", "padding", 14),
        (b"\xb0\x00" + bytes(10) + b"\x00\x00\x00\x00" + b"\x02", "padding", 16),
    ],
)
def test_parse_errors(data: bytes, reason: str, offset: int) -> None:
    for fn in (parse_rtp, peek_rtp):
        with pytest.raises(RtpError) as info:
            fn(data)
        assert info.value.reason == reason
        assert info.value.offset == offset
        assert "RFC 3550" in str(info.value)
        assert f"at byte {offset}" in str(info.value)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"payload_type": -1},
        {"sequence": 65536},
        {"timestamp": -1},
        {"ssrc": 1 << 32},
        {"csrcs": tuple(range(16))},
        {"padding": 256},
        {"extension": RtpExtension(1, b"abc")},
        {"extension": RtpExtension(70000, b"")},
    ],
)
def test_build_rejects_out_of_range(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match="RFC 3550"):
        build_rtp(**args)  # type: ignore[arg-type]


def test_rewrite_header_keeps_the_rest() -> None:
    data = build_rtp(0, 1, 2, 3, PAYLOAD, csrcs=(9,), padding=2)
    out = rewrite_rtp_header(data, 10, 20, 30, True)
    pkt = parse_rtp(out)
    assert (pkt.sequence, pkt.timestamp, pkt.ssrc, pkt.marker) == (10, 20, 30, True)
    assert pkt.csrcs == (9,) and pkt.payload == PAYLOAD and pkt.padding_size == 2
    assert parse_rtp(rewrite_rtp_header(data, 1, 2, 3, False, payload_type=8)).payload_type == 8


st_packet = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    header_extension=st.none()
    | st.builds(
        RtpExtension,
        st.integers(0, 0xFFFF),
        st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4)),
    ),
    padding_size=st.integers(0, 255),
    payload=st.binary(max_size=300),
)


@given(st_packet)
def test_roundtrip_property(pkt: RtpPacket) -> None:
    data = serialize_rtp(pkt)
    assert parse_rtp(data) == pkt
    pt, seq, ts, ssrc, marker, start, end = peek_rtp(data)
    assert (pt, seq, ts, ssrc, marker) == (
        pkt.payload_type,
        pkt.sequence,
        pkt.timestamp,
        pkt.ssrc,
        pkt.marker,
    )
    assert data[start:end] == pkt.payload


@given(st.binary(max_size=200))
def test_fuzz_parse_only_rtperror(data: bytes) -> None:
    try:
        pkt = parse_rtp(data)
    except RtpError as exc:
        assert exc.reason in {"short", "version", "csrc", "extension", "padding"}
        with pytest.raises(RtpError):
            peek_rtp(data)
    else:
        assert peek_rtp(data)[:5] == (
            pkt.payload_type,
            pkt.sequence,
            pkt.timestamp,
            pkt.ssrc,
            pkt.marker,
        )


@given(st.binary(min_size=1, max_size=40).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]))
def test_fuzz_parse_version2_only_rtperror(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        parse_rtp(data)


# ------------------------------------------------------------------ demultiplexing


def test_rfc5761_demux() -> None:
    for pt in range(128):
        for marker in (False, True):
            data = build_rtp(pt, 0, 0, 0, marker=marker)
            assert is_rtcp(data) == (marker and 64 <= pt <= 95)
    for rtcp_pt in range(192, 224):
        assert is_rtcp(bytes([0x80, rtcp_pt, 0, 1]) + bytes(4))
    assert not is_rtcp(b"\x80")
    assert classify_packet(build_rtp(0, 0, 0, 0)) == "rtp"
    assert classify_packet(b"\x81\xc9\x00\x01" + bytes(4)) == "rtcp"
    assert classify_packet(b"\x00\x01\x00\x00") == "stun"
    assert classify_packet(b"\x16\xfe\xfd") == "dtls"
    assert classify_packet(b"") == "unknown"
    assert classify_packet(b"\xff") == "unknown"


# ------------------------------------------------------------------ RTCP


def sr_packet(ssrc: int, blocks: list[int]) -> bytes:
    body = struct.pack("!IQIII", ssrc, 0x0102030405060708, 160000, 50, 8000)
    for block_ssrc in blocks:
        body += struct.pack("!IB3sIIII", block_ssrc, 12, b"\xff\xff\xfe", 70000, 30, 5, 6)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def rr_packet(ssrc: int, blocks: list[int]) -> bytes:
    body = struct.pack("!I", ssrc)
    for block_ssrc in blocks:
        body += struct.pack("!IB3sIIII", block_ssrc, 0, b"\x00\x00\x05", 1, 2, 3, 4)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def sdes_packet(ssrc: int, cname: bytes) -> bytes:
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def bye_packet(ssrcs: list[int], reason: bytes = b"", padding: int = 0) -> bytes:
    body = b"".join(struct.pack("!I", s) for s in ssrcs)
    if reason:
        body += bytes([len(reason)]) + reason
        body += bytes(-len(body) % 4)
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    b0 = 0x80 | len(ssrcs) | (0x20 if padding else 0)
    return struct.pack("!BBH", b0, 203, len(body) // 4) + body


def test_parse_compound() -> None:
    data = (
        sr_packet(0x11, [0x22, 0x33])
        + sdes_packet(0x11, b"user@host")
        + bye_packet([0x11], b"bye", padding=4)
    )
    sr, sdes, bye = parse_rtcp(data)
    assert sr.packet_type == 200 and sr.ssrc == 0x11 and sr.count == 2
    assert sr.sender_info is not None and sr.sender_info.rtp_timestamp == 160000
    assert [b.ssrc for b in sr.report_blocks] == [0x22, 0x33]
    assert sr.report_blocks[0].cumulative_lost == -2
    assert sr.report_blocks[0].fraction_lost == 12
    assert sdes.ssrc == 0x11 and sdes.sdes == ((0x11, ((1, b"user@host"),)),)
    assert bye.bye_ssrcs == (0x11,) and bye.bye_reason == b"bye" and bye.padding
    assert sdes.offset == len(sr_packet(0x11, [0x22, 0x33]))


def test_parse_rr_app_feedback() -> None:
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 0x44, b"name")
    pli = struct.pack("!BBHII", 0x81, 206, 2, 0x55, 0x66)
    rr, a, fb = parse_rtcp(rr_packet(0x77, [0x88]) + app + pli)
    assert rr.ssrc == 0x77 and rr.report_blocks[0].cumulative_lost == 5
    assert a.ssrc == 0x44
    assert fb.ssrc == 0x55 and fb.media_ssrc == 0x66
    empty = parse_rtcp(struct.pack("!BBH", 0x80, 203, 0))
    assert empty[0].ssrc is None and empty[0].bye_ssrcs == ()


def test_rewrite_rtcp_ssrcs() -> None:
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 0x11, b"name")
    pli = struct.pack("!BBHII", 0x81, 205, 2, 0x11, 0x22)
    data = (
        sr_packet(0x11, [0x22, 0x99])
        + sdes_packet(0x11, b"a")
        + app
        + pli
        + bye_packet([0x11, 0x99])
    )
    out = rewrite_rtcp_ssrcs(data, {0x11: 0xAA, 0x22: 0xBB}, rtp_timestamp=lambda ts: ts + 5)
    sr, sdes, a, fb, bye = parse_rtcp(out)
    assert sr.ssrc == 0xAA and [b.ssrc for b in sr.report_blocks] == [0xBB, 0x99]
    assert sr.sender_info is not None and sr.sender_info.rtp_timestamp == 160005
    assert sdes.ssrc == 0xAA
    assert a.ssrc == 0xAA
    assert fb.ssrc == 0xAA and fb.media_ssrc == 0xBB
    assert bye.bye_ssrcs == (0xAA, 0x99)
    assert len(out) == len(data)
    assert rewrite_rtcp_ssrcs(data, lambda s: s) == data
    rr = rewrite_rtcp_ssrcs(rr_packet(1, [2]), lambda s: s + 100)
    assert parse_rtcp(rr)[0].ssrc == 101 and parse_rtcp(rr)[0].report_blocks[0].ssrc == 102


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\xc8", "short"),
        (rr_packet(1, []) + b"\x80", "short"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version"),
        (rr_packet(1, []) + b"\x00\xc9\x00\x01" + bytes(4), "version"),
        (b"\x80\xc9\x00\x05" + bytes(4), "length"),
        (b"\xa0\xcb\x00\x01" + bytes(4) + rr_packet(1, []), "padding"),
        (b"\xa0\xcb\x00\x01" + bytes(4), "padding"),
        (b"\xa0\xcb\x00\x01" + b"\x00\x00\x00\x05", "padding"),
        (b"\x80\xc8\x00\x01" + bytes(4), "short"),
        (b"\x80\xc9\x00\x00", "short"),
        (b"\x81\xc9\x00\x01" + bytes(4), "count"),
        (b"\x82\xca\x00\x02" + bytes(4) + b"\x00\x00\x00\x00", "count"),
        (b"\x81\xca\x00\x01" + b"\x00\x00\x00\x01", "length"),
        (b"\x81\xca\x00\x02" + b"\x00\x00\x00\x01" + b"\x01\x09ab", "length"),
        (b"\x82\xcb\x00\x01" + bytes(4), "count"),
        (b"\x81\xcb\x00\x02" + bytes(4) + b"\x09abc", "length"),
    ],
)
def test_rtcp_errors(data: bytes, reason: str) -> None:
    with pytest.raises(RtcpError) as info:
        parse_rtcp(data)
    assert info.value.reason == reason
    assert "RFC 3550" in str(info.value) and "at byte" in str(info.value)
    with pytest.raises(RtcpError):
        rewrite_rtcp_ssrcs(data, {})


@given(st.binary(max_size=120))
def test_fuzz_rtcp_only_rtcperror(data: bytes) -> None:
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:] if data and data[0] & 1 else data
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        with pytest.raises(RtcpError):
            rewrite_rtcp_ssrcs(data, lambda s: s ^ 1)
    else:
        out = rewrite_rtcp_ssrcs(data, lambda s: s ^ 1)
        assert len(out) == len(data)
        assert [p.packet_type for p in parse_rtcp(out)] == [p.packet_type for p in packets]


# ------------------------------------------------------------------ stream rewriting


def make_rewriter() -> StreamRewriter:
    return StreamRewriter(0x5151, initial_sequence=65530, initial_timestamp=2**32 - 500)


def test_rewriter_basic_stream_and_wrap() -> None:
    rw = make_rewriter()
    out = [rw.rewrite(100 + i, 1000 + 160 * i, 7, False) for i in range(10)]
    assert out[0] == (65530, 2**32 - 500, True)  # first packet marks the start
    seqs = [o[0] for o in out if o]
    assert seqs == [(65530 + i) % 65536 for i in range(10)]
    tss = [o[1] for o in out if o]
    assert tss == [(2**32 - 500 + 160 * i) % 2**32 for i in range(10)]
    assert not any(o[2] for o in out[1:] if o)
    assert rw.translate_timestamp(1000) == 2**32 - 500
    assert rw.last_sequence == seqs[-1] and rw.last_timestamp == tss[-1]


def test_rewriter_loss_duplicate_late() -> None:
    rw = make_rewriter()
    a = rw.rewrite(10, 1600, 1, False)
    b = rw.rewrite(13, 1600 + 3 * 160, 1, False)  # two lost: seq closes up, ts keeps the gap
    assert a and b and b[0] == (a[0] + 1) % 65536 and b[1] == (a[1] + 480) % 2**32
    assert rw.rewrite(13, 1600 + 3 * 160, 1, False) is None  # duplicate
    assert rw.rewrite(12, 1600 + 2 * 160, 1, False) is None  # late
    c = rw.rewrite(14, 1600 + 4 * 160, 1, True)  # talkspurt marker passes through
    assert c and c[0] == (b[0] + 1) % 65536 and c[2]


def test_rewriter_ssrc_change_and_ts_jump() -> None:
    rw = make_rewriter()
    first = rw.rewrite(10, 1000, 1, False)
    second = rw.rewrite(11, 1160, 1, False)
    switched = rw.rewrite(5000, 99_999_999, 2, False)  # PBX transfer: new SSRC
    assert first and second and switched
    assert switched[0] == (second[0] + 1) % 65536
    assert switched[1] == (second[1] + 160) % 2**32 and switched[2]
    nxt = rw.rewrite(5001, 99_999_999 + 160, 2, False)
    assert nxt and nxt[1] == (switched[1] + 160) % 2**32 and not nxt[2]
    back = rw.rewrite(5002, 5, 2, False)  # timestamp goes back: re-anchor
    assert back and back[2] and back[1] == (nxt[1] + 160) % 2**32
    restart = rw.rewrite(5002 + MAX_DROPOUT + 10, 5 + 160, 2, False)  # seq leap: re-anchor
    assert restart and restart[2] and restart[0] == (back[0] + 1) % 65536


def test_rewriter_uses_arrival_time_on_reanchor() -> None:
    rw = make_rewriter()
    a = rw.rewrite(1, 0, 1, False, now=10.0)
    b = rw.rewrite(1, 0, 2, False, now=12.0)  # new source after 2 s
    assert a and b and b[1] == (a[1] + 16000) % 2**32
    c = rw.rewrite(9, 0, 3, False, now=12.0)  # no time passed: one packet time
    assert c and c[1] == (b[1] + 160) % 2**32


def test_rewriter_insert() -> None:
    rw = make_rewriter()
    first = rw.insert(0)
    assert first == (65530, 2**32 - 500, True)
    a = rw.rewrite(1, 1000, 1, False)
    assert a and a[0] == 65531 and a[2]
    ev = [rw.insert(160), rw.insert(0), rw.insert(0, marker=True)]
    assert [e[0] for e in ev] == [65532, 65533, 65534]
    assert ev[0][1] == ev[1][1] == ev[2][1] == (a[1] + 160) % 2**32
    b = rw.rewrite(2, 1160, 1, False)  # would land on the inserted packets' time: ok
    assert b and b[0] == 65535 and b[1] == ev[0][1]
    with pytest.raises(ValueError):
        rw.insert(-1)
    with pytest.raises(ValueError):
        StreamRewriter(-1, initial_sequence=0, initial_timestamp=0)
    rnd = StreamRewriter.create()
    assert 0 <= rnd.ssrc < 2**32


input_event = st.one_of(
    st.tuples(
        st.just("rtp"),
        st.integers(-5, 40),  # seq step (0 duplicate, <0 late, >1 loss)
        st.integers(-2000, 5000) | st.just(2**31) | st.integers(0, 2**32 - 1),  # ts step
        st.integers(0, 3),  # ssrc
        st.booleans(),
    ),
    st.tuples(st.just("insert"), st.integers(0, 480), st.just(0), st.just(0), st.booleans()),
)


@settings(max_examples=300)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(input_event, max_size=80),
)
def test_rewriter_properties(
    seq0: int, ts0: int, in_seq0: int, in_ts0: int, events: list[tuple[str, int, int, int, bool]]
) -> None:
    rw = StreamRewriter(1, initial_sequence=seq0, initial_timestamp=ts0)
    in_seq = {s: in_seq0 for s in range(4)}
    in_ts = {s: in_ts0 for s in range(4)}
    outputs: list[tuple[int, int, bool]] = []
    last_in: tuple[int, int, int] | None = None  # (ssrc, seq, ts) of the last forwarded input
    for kind, dseq, dts, ssrc, marker in events:
        if kind == "insert":
            outputs.append(rw.insert(dseq, marker=marker))
            last_in = None
            continue
        in_seq[ssrc] = (in_seq[ssrc] + dseq) % 2**16
        in_ts[ssrc] = (in_ts[ssrc] + dts) % 2**32
        out = rw.rewrite(in_seq[ssrc], in_ts[ssrc], ssrc, marker)
        if out is None:
            continue
        if outputs and last_in is not None and last_in[0] == ssrc and not out[2]:
            # in step with the input: same source, no re-anchor
            assert (out[1] - outputs[-1][1]) % 2**32 == (in_ts[ssrc] - last_in[2]) % 2**32
        if last_in is not None and last_in[0] == ssrc:
            step_in = (in_ts[ssrc] - last_in[2]) % 2**32
            seq_step = (in_seq[ssrc] - last_in[1]) % 2**16
            if step_in <= 160 * 100 and 0 < seq_step <= MAX_DROPOUT:
                assert (out[1] - outputs[-1][1]) % 2**32 == step_in
        if last_in is not None and last_in[0] != ssrc:
            assert out[2]  # new source: marker set
        outputs.append(out)
        last_in = (ssrc, in_seq[ssrc], in_ts[ssrc])
    if outputs:
        assert outputs[0][0] == seq0 and outputs[0][1] == ts0 and outputs[0][2]
    for prev, cur in itertools.pairwise(outputs):
        assert cur[0] == (prev[0] + 1) % 2**16  # contiguous
        assert (cur[1] - prev[1]) % 2**32 < 2**31  # never backwards
