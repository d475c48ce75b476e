"""Tests for sipproxy.sdp: RFC 4566 parsing, payload formats, anchoring, RFC 3264."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.sdp import (
    Codec,
    SdpError,
    SessionDescription,
    anchor_media,
    audio_codecs,
    bump_version,
    codecs,
    has_g711,
    negotiate,
    parse_sdp,
    set_direction,
    telephone_event,
)


def crlf(text: str) -> str:
    return "\r\n".join(text.strip().splitlines()) + "\r\n"


ASTERISK = crlf("""
v=0
o=- 1193467162 1193467162 IN IP4 192.0.2.10
s=Asterisk
c=IN IP4 192.0.2.10
t=0 0
m=audio 18062 RTP/AVP 0 8 3 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:3 GSM/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
""")

FREESWITCH = crlf("""
v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 198.51.100.7
s=FreeSWITCH
c=IN IP4 198.51.100.7
t=0 0
m=audio 24580 RTP/AVP 9 0 8 96 101 13
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1; maxplaybackrate=16000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=rtcp:24581 IN IP4 198.51.100.7
""")

BARESIP_IPV6 = crlf("""
v=0
o=- 1505 2394 IN IP6 2001:db8::1
s=-
c=IN IP6 2001:db8::1
t=0 0
a=tool:baresip 3.10.1
m=audio 10000 RTP/AVP 96 97 0 8 101
b=AS:96
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:97 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp-mux
a=ssrc:3917425634 cname:abc
a=sendrecv
a=label:1
""")

CISCO = crlf("""
v=0
o=CiscoSystemsSIP-GW-UserAgent 4063 4466 IN IP4 203.0.113.5
s=SIP Call
c=IN IP4 203.0.113.5
t=0 0
m=audio 16386 RTP/AVP 18 0 100 101
c=IN IP4 203.0.113.6
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:100 X-NSE/8000
a=fmtp:100 192-194
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
m=image 0 udptl t38
""")

MULTI = crlf("""
v=0
o=alice 2890844526 2890844527 IN IP4 host.example.com
s=-
i=A Seminar
c=IN IP4 192.0.2.1
b=CT:128
t=0 0
a=recvonly
m=audio 49170 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
m=audio 0 RTP/AVP 8
m=image 49172 udptl t38
a=T38FaxVersion:0
y=1234567890
""")

HOLD_OLD = crlf("""
v=0
o=- 3 4 IN IP4 192.0.2.50
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 4000 RTP/AVP 8 101
a=rtpmap:101 telephone-event/8000
a=sendonly
""")

SAMPLES = [ASTERISK, FREESWITCH, BARESIP_IPV6, CISCO, MULTI, HOLD_OLD]


@pytest.mark.parametrize("text", SAMPLES)
def test_roundtrip_exact(text: str) -> None:
    sdp = parse_sdp(text)
    assert sdp.serialize() == text
    assert str(parse_sdp(text.encode())) == text
    assert parse_sdp(text.replace("\r\n", "\n")) == sdp
    assert sdp.to_bytes() == text.encode()


def test_fields() -> None:
    sdp = parse_sdp(MULTI)
    assert sdp.origin.session_version == 2890844527 and sdp.origin.address == "host.example.com"
    assert [m.kind for m in sdp.media] == ["audio", "video", "audio", "image"]
    assert [m.port for m in sdp.media] == [49170, 51372, 0, 49172]
    assert sdp.media[2].rejected and not sdp.media[0].rejected
    assert sdp.media[3].proto == "udptl" and sdp.media[3].formats == ("t38",)
    assert ("y", "1234567890") in sdp.media[3].lines
    assert sdp.direction == "recvonly" and sdp.media_direction(sdp.media[0]) == "recvonly"
    assert sdp.connection is not None and sdp.connection.address == "192.0.2.1"
    v6 = parse_sdp(BARESIP_IPV6)
    assert v6.connection is not None and v6.connection.addrtype == "IP6"
    assert v6.media[0].rtcp_mux and v6.media[0].rtcp_port is None
    fs = parse_sdp(FREESWITCH).media[0]
    assert fs.rtcp_port == 24581 and fs.ptime == 20 and fs.direction is None
    cisco = parse_sdp(CISCO)
    conn = cisco.media_connection(cisco.media[0])
    assert conn is not None and conn.address == "203.0.113.6"
    assert cisco.media[0].attribute("nope") is None


def test_multicast_connection_and_port_count() -> None:
    sdp = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP4 233.252.0.1/127/3\r\nt=0 0\r\n"
        "m=audio 5000/2 RTP/AVP 0\r\nc=IN IP6 ff15::101/3\r\n"
    )
    c = sdp.connection
    assert c is not None and (c.ttl, c.count) == (127, 3)
    assert str(c) == "IN IP4 233.252.0.1/127/3"
    mc = sdp.media[0].connection
    assert mc is not None and (mc.ttl, mc.count) == (None, 3) and str(mc) == "IN IP6 ff15::101/3"
    assert sdp.media[0].port_count == 2 and sdp.media[0].m_line == "audio 5000/2 RTP/AVP 0"


def test_codecs() -> None:
    ast = parse_sdp(ASTERISK).media[0]
    assert [(c.payload_type, c.name, c.clock_rate) for c in codecs(ast)] == [
        (0, "PCMU", 8000),
        (8, "PCMA", 8000),
        (3, "GSM", 8000),
        (101, "telephone-event", 8000),
    ]
    te = telephone_event(ast)
    assert te == Codec(101, "telephone-event", 8000, 1, "0-16")
    assert has_g711(ast)
    fs = parse_sdp(FREESWITCH).media[0]
    assert [c.name for c in audio_codecs(fs)] == ["G722", "PCMU", "PCMA", "opus"]
    assert codecs(fs)[3].channels == 2 and codecs(fs)[3].fmtp is not None
    cisco = parse_sdp(CISCO).media[0]
    assert not has_g711(parse_sdp(CISCO.replace(" 18 0 100", " 18 100")).media[0])
    assert codecs(cisco)[0] == Codec(18, "G729", 8000, 1, "annexb=no")
    assert telephone_event(cisco, 16000) is None
    # a dynamic PT without rtpmap is left out; non-numeric formats too
    m = parse_sdp(MULTI.replace("m=audio 49170 RTP/AVP 0 101", "m=audio 49170 RTP/AVP 0 101 96"))
    assert [c.payload_type for c in codecs(m.media[0])] == [0, 101]
    assert codecs(m.media[3]) == []


def test_anchor_basic_asterisk() -> None:
    sdp = parse_sdp(ASTERISK)
    out = anchor_media(sdp, "10.0.0.1", [30000])
    assert out.connection is not None and out.connection.address == "10.0.0.1"
    assert out.media[0].port == 30000
    assert out.origin.session_version == sdp.origin.session_version + 1
    assert out.media[0].direction == "sendrecv"
    assert out.media[0].attributes("maxptime") == ["150"]
    same = anchor_media(out, "10.0.0.1", [30000])
    assert same == out  # nothing changed: version not bumped
    assert sdp.media[0].port == 18062  # input untouched


def test_anchor_rtcp_lines() -> None:
    sdp = parse_sdp(FREESWITCH)
    out = anchor_media(sdp, "10.0.0.1", [30000])
    assert out.media[0].rtcp_port is None  # removed: RTCP on RTP + 1
    out = anchor_media(sdp, "10.0.0.1", [30000], rtcp_ports=[30001])
    assert out.media[0].rtcp_port is None
    out = anchor_media(sdp, "10.0.0.1", [30000], rtcp_ports=[40001])
    assert out.media[0].attributes("rtcp") == ["40001 IN IP4 10.0.0.1"]
    with pytest.raises(ValueError):
        anchor_media(sdp, "10.0.0.1", [30000], rtcp_ports=[])
    with pytest.raises(ValueError):
        anchor_media(sdp, "10.0.0.1", [])


def test_anchor_ipv6_and_media_level_connection() -> None:
    out = anchor_media(parse_sdp(BARESIP_IPV6), "2001:db8::99", [30000])
    assert out.connection is not None and out.connection.addrtype == "IP6"
    assert out.media[0].rtcp_mux
    cisco = anchor_media(parse_sdp(CISCO), "192.0.2.99", [30002])
    conn = cisco.media_connection(cisco.media[0])
    assert conn is not None and conn.address == "192.0.2.99"
    assert cisco.connection is not None and cisco.connection.address == "192.0.2.99"
    assert cisco.media[1].rejected
    v4_to_v6 = anchor_media(parse_sdp(ASTERISK), "fd00::1", [1])
    assert "c=IN IP6 fd00::1" in str(v4_to_v6)


def test_anchor_non_audio_reject_and_pass() -> None:
    sdp = parse_sdp(MULTI)
    out = anchor_media(sdp, "10.0.0.1", [30000])
    assert [m.port for m in out.media] == [30000, 0, 0, 0]
    passed = anchor_media(sdp, "10.0.0.1", [30000], non_audio="pass")
    assert [m.port for m in passed.media] == [30000, 51372, 0, 49172]
    video_conn = passed.media_connection(passed.media[1])
    assert video_conn is not None and video_conn.address == "192.0.2.1"
    audio_conn = passed.media_connection(passed.media[0])
    assert audio_conn is not None and audio_conn.address == "10.0.0.1"
    assert passed.direction == "recvonly"  # direction kept
    assert passed.lines[:3] == sdp.lines[:1] + passed.lines[1:2] + sdp.lines[2:3]


def test_anchor_keeps_hold_address() -> None:
    sdp = parse_sdp(HOLD_OLD)
    out = anchor_media(sdp, "10.0.0.1", [30000])
    assert out.connection is not None and out.connection.is_null
    assert out.media_direction(out.media[0]) == "sendonly"
    assert out.media[0].port == 30000
    replaced = anchor_media(sdp, "10.0.0.1", [30000], keep_null_address=False)
    assert replaced.connection is not None and replaced.connection.address == "10.0.0.1"


def test_anchor_adds_telephone_event() -> None:
    no_te = CISCO.replace("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n", "")
    cisco = parse_sdp(no_te.replace(" 100 101", " 100"))
    assert telephone_event(cisco.media[0]) is None
    out = anchor_media(cisco, "10.0.0.1", [30000], add_telephone_event=True)
    te = telephone_event(out.media[0])
    assert te == Codec(101, "telephone-event", 8000, 1, "0-16")
    assert out.media[0].formats[-1] == "101"
    lines = out.media[0].lines
    assert lines.index(("a", "rtpmap:101 telephone-event/8000")) == 5  # after the last fmtp
    # already present: unchanged
    ast = parse_sdp(ASTERISK)
    assert anchor_media(ast, "10.0.0.1", [1], add_telephone_event=True).media[0].formats == (
        ast.media[0].formats
    )
    # 101 taken, no rtpmap lines at all
    bare = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0 101\r\n"
        "c=IN IP4 192.0.2.1\r\na=sendrecv\r\n"
    )
    out = anchor_media(bare, "10.0.0.1", [2], add_telephone_event=True)
    assert out.media[0].lines[1] == ("a", "rtpmap:96 telephone-event/8000")
    assert codecs(out.media[0])[-1].payload_type == 96
    # every dynamic PT taken: left as is
    full = bare.media[0].__class__(
        "audio", 1, None, "RTP/AVP", tuple(str(p) for p in range(96, 128)), bare.media[0].lines
    )
    crowded = SessionDescription(bare.lines, (full,))
    assert (
        telephone_event(anchor_media(crowded, "10.0.0.1", [2], add_telephone_event=True).media[0])
        is None
    )


def test_set_direction_and_bump() -> None:
    sdp = parse_sdp(MULTI)
    held = set_direction(sdp, "sendonly", 0)
    assert held.media[0].direction == "sendonly" and held.direction is None
    assert held.media[1].direction == "recvonly"  # session-level value moved down
    assert held.origin.session_version == sdp.origin.session_version + 1
    assert set_direction(held, "sendonly", 0) == held
    assert bump_version(sdp).origin.session_version == 2890844528
    all_inactive = set_direction(sdp, "inactive")
    assert all(m.direction == "inactive" for m in all_inactive.media)


def test_negotiate() -> None:
    offer = parse_sdp(FREESWITCH)
    answer = parse_sdp(ASTERISK)
    n = negotiate(offer, answer)
    assert n.codec_answer is not None and n.codec_answer.name == "PCMU"
    assert n.codec_offer is not None and n.codec_offer.payload_type == 0
    assert (n.telephone_event_offer, n.telephone_event_answer, n.telephone_event_rate) == (
        101,
        101,
        8000,
    )
    assert n.direction == "sendrecv" and not n.rejected
    # dynamic payload types differ per side
    b_offer = parse_sdp(BARESIP_IPV6)
    b_answer = parse_sdp(
        BARESIP_IPV6.replace("96 97 0 8 101", "111 100")
        .replace("rtpmap:96 ", "rtpmap:111 ")
        .replace("rtpmap:101 ", "rtpmap:100 ")
        .replace("a=sendrecv", "a=recvonly")
    )
    n = negotiate(b_offer, b_answer)
    assert n.codec_offer is not None and n.codec_offer.payload_type == 96
    assert n.codec_answer is not None and n.codec_answer.payload_type == 111
    assert (n.telephone_event_offer, n.telephone_event_answer) == (101, 100)
    assert n.direction == "sendonly" and n.answer_direction == "recvonly"


def test_negotiate_hold_reject_and_errors() -> None:
    offer = parse_sdp(HOLD_OLD)
    answer = parse_sdp(ASTERISK.replace("a=sendrecv", "a=recvonly"))
    n = negotiate(offer, answer)
    assert n.offer_direction == "sendonly" and n.direction == "sendonly"
    assert n.codec_answer is not None and n.codec_answer.name == "PCMA"
    no_te = parse_sdp(
        ASTERISK.replace(" 101\r\n", "\r\n").replace("a=rtpmap:101 telephone-event/8000\r\n", "")
    )
    n = negotiate(offer, no_te)
    assert n.telephone_event_offer is None and n.telephone_event_answer is None
    rejected = parse_sdp(ASTERISK.replace("m=audio 18062", "m=audio 0"))
    n = negotiate(parse_sdp(ASTERISK), rejected)
    assert n.rejected and n.codec_answer is None and n.direction == "inactive"
    multi = parse_sdp(MULTI)
    with pytest.raises(SdpError) as info:
        negotiate(multi, parse_sdp(ASTERISK))
    assert info.value.rule == "RFC 3264 §6" and info.value.line == 0
    swapped = parse_sdp(MULTI.replace("m=video 51372 RTP/AVP 99", "m=audio 51372 RTP/AVP 99"))
    with pytest.raises(SdpError, match="RFC 3264"):
        negotiate(multi, swapped, media_index=1)
    video_only = parse_sdp(MULTI.replace("m=audio", "m=text"))
    with pytest.raises(SdpError, match="no audio"):
        negotiate(video_only, video_only)
    n = negotiate(multi, anchor_media(multi, "10.0.0.1", [1]))
    assert n.direction == "inactive" and n.codec_answer is not None  # both recvonly


HEAD = "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    ("text", "line", "rule"),
    [
        ("", 0, "RFC 4566 §5.1"),
        ("\r\n\r\n", 0, "RFC 4566 §5.1"),
        ("o=- 1 1 IN IP4 a\r\n", 1, "RFC 4566 §5.1"),
        ("v=1\r\n", 1, "RFC 4566 §5.1"),
        ("v=0\r\nbogus\r\n", 2, "RFC 4566 §5"),
        ("v=0\r\nA=x\r\n", 2, "RFC 4566 §5"),
        ("v=0\r\no=x\rx\r\n", 2, "RFC 4566 §5"),
        ("v=0\r\ns=-\r\n", 0, "RFC 4566 §5.2"),
        ("v=0\r\no=- 1 1 IN IP4 a\r\n", 0, "RFC 4566 §5.3"),
        ("v=0\r\no=- 1 IN IP4 a\r\ns=-\r\n", 2, "RFC 4566 §5.2"),
        ("v=0\r\no=- 1 x IN IP4 a\r\ns=-\r\n", 2, "RFC 4566 §5.2"),
        ("v=0\r\no=- 1 1 IN IP4 a\r\no=- 1 1 IN IP4 a\r\ns=-\r\n", 3, "RFC 4566 §5.2"),
        (HEAD.replace("c=IN IP4 192.0.2.1", "c=IN IP4"), 4, "RFC 4566 §5.7"),
        (HEAD.replace("192.0.2.1", "192.0.2.1/x"), 4, "RFC 4566 §5.7"),
        (HEAD.replace("192.0.2.1", "192.0.2.1/1/2/3"), 4, "RFC 4566 §5.7"),
        (HEAD.replace("IP4 192.0.2.1", "IP6 ff15::1/1/2"), 4, "RFC 4566 §5.7"),
        (HEAD.replace("192.0.2.1", "/1"), 4, "RFC 4566 §5.7"),
        (HEAD + "m=audio 1 RTP/AVP\r\n", 6, "RFC 4566 §5.14"),
        (HEAD + "m=audio x RTP/AVP 0\r\n", 6, "RFC 4566 §5.14"),
        (HEAD + "m=audio ² RTP/AVP 0\r\n", 6, "RFC 4566 §5.14"),
        (HEAD + "m=audio 70000 RTP/AVP 0\r\n", 6, "RFC 4566 §5.14"),
        (HEAD + "m=audio 1/0 RTP/AVP 0\r\n", 6, "RFC 4566 §5.14"),
        (HEAD + "m=audio 1 RTP/AVP 0\r\ns=x\r\n", 7, "RFC 4566 §5"),
        (HEAD + "a=rtpmap:96\r\n", 6, "RFC 4566 §6 rtpmap"),
        (HEAD + "a=rtpmap:200 x/8000\r\n", 6, "RFC 4566 §6 rtpmap"),
        (HEAD + "a=rtpmap:96 x/abc\r\n", 6, "RFC 4566 §6 rtpmap"),
        (HEAD + "a=rtpmap:96 x/8000/y\r\n", 6, "RFC 4566 §6 rtpmap"),
        (HEAD + "a=rtpmap:96 /8000\r\n", 6, "RFC 4566 §6 rtpmap"),
        (HEAD + "a=fmtp:\r\n", 6, "RFC 4566 §6 fmtp"),
        (HEAD + "a=ptime:0\r\n", 6, "RFC 4566 §6 ptime"),
        (HEAD + "a=ptime:inf\r\n", 6, "RFC 4566 §6 ptime"),
        (HEAD + "a=rtcp:\r\n", 6, "RFC 3605 §2.1"),
        (HEAD + "a=rtcp:99999\r\n", 6, "RFC 3605 §2.1"),
        (HEAD + "a=rtcp:9 IN IP4\r\n", 6, "RFC 3605 §2.1"),
        (
            HEAD.replace("c=IN IP4 192.0.2.1\r\n", "") + "m=audio 1 RTP/AVP 0\r\n",
            0,
            "RFC 4566 §5.7",
        ),
    ],
)
def test_errors(text: str, line: int, rule: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(text)
    assert info.value.line == line
    assert info.value.rule == rule
    assert rule in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_not_utf8_names_line() -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(b"v=0\r\ns=\xff\r\n")
    assert info.value.line == 2


def test_rejected_media_needs_no_connection() -> None:
    sdp = parse_sdp("v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
    assert sdp.media[0].rejected and sdp.media_connection(sdp.media[0]) is None
    assert sdp.media_direction(sdp.media[0]) == "sendrecv"


LINE_TYPES = st.sampled_from([*list("vosicbtmaxzk"), "m", "a", "c"])
VALUES = st.sampled_from(
    [
        "0",
        "- 1 2 IN IP4 a",
        "IN IP4 0.0.0.0",
        "IN IP6 ::1/3",
        "audio 1000 RTP/AVP 0 8 101",
        "audio 0 RTP/AVP 8",
        "video 9 RTP/AVP 99",
        "rtpmap:101 telephone-event/8000",
        "rtpmap:96 opus/48000/2",
        "fmtp:101 0-16",
        "sendonly",
        "inactive",
        "rtcp:9",
        "ptime:20",
        "rtcp-mux",
        "0 0",
    ]
)


@st.composite
def sdp_like(draw: st.DrawFn) -> str:
    lines = ["v=0", "o=- 1 2 IN IP4 a", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"]
    extra = draw(st.lists(st.tuples(LINE_TYPES, VALUES | st.text(max_size=20)), max_size=15))
    lines += [f"{t}={v}" for t, v in extra]
    return "\r\n".join(lines) + "\r\n"


def exercise(sdp: SessionDescription) -> None:
    assert parse_sdp(sdp.serialize()) == sdp
    for i, m in enumerate(sdp.media):
        codecs(m)
        telephone_event(m)
        has_g711(m)
        sdp.media_direction(m)
        _ = (m.ptime, m.rtcp_port, m.rtcp_mux, m.connection)
        if m.kind == "audio":
            negotiate(sdp, sdp, media_index=i)
    active = [m for _, m in sdp.audio() if not m.rejected]
    out = anchor_media(
        sdp, "10.0.0.1", [2000] * len(active), add_telephone_event=True, non_audio="pass"
    )
    assert parse_sdp(out.serialize()) == out
    set_direction(sdp, "sendonly")


@settings(max_examples=300)
@given(sdp_like())
def test_fuzz_structured_only_sdperror(text: str) -> None:
    try:
        sdp = parse_sdp(text)
    except SdpError:
        return
    exercise(sdp)


@settings(max_examples=200)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_random_only_sdperror(data: str | bytes) -> None:
    try:
        sdp = parse_sdp(data)
    except SdpError:
        return
    exercise(sdp)


@settings(max_examples=100)
@given(st.sampled_from(SAMPLES), st.integers(0, 2000), st.text(max_size=5))
def test_fuzz_mutated_samples_only_sdperror(text: str, at: int, junk: str) -> None:
    at %= len(text)
    try:
        sdp = parse_sdp(text[:at] + junk + text[at:])
    except SdpError:
        return
    exercise(sdp)
