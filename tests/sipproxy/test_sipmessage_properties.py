"""Property tests: hostile input only ever raises SipParseError, quickly; round trips hold."""

from __future__ import annotations

import ipaddress
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipproxy.sipmessage import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    Via,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from tests.sipproxy import test_rfc4475 as t4475
from tests.sipproxy.test_sipmessage import INVITE

FAST = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=250),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CORPUS = [
    INVITE,
    t4475.WSINV,
    t4475.INTMETH,
    t4475.ESC01,
    t4475.ESCNULL,
    t4475.ESC02,
    t4475.LWSDISP,
    t4475.SCALAR02,
    t4475.INVITE_TAIL.strip().replace("\n", "\r\n").encode(),
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
    b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
]

SPECIAL = [
    *(bytes([c]) for c in b'\r\n \t:;,"\\<>%@=?\x00\xff'),
    b"\r\n",
    b"SIP/2.0",
    b"Content-Length: 99999\r\n",
    b"l: 0",
]


def only_sip_errors(data: bytes, max_size: int = 65536) -> None:
    try:
        m = parse_message(data, max_size=max_size)
    except SipParseError as e:
        assert isinstance(e.rule, str) and e.rule
        assert 0 <= e.offset <= max(len(data), max_size)
        return
    # whatever parses must serialize, and the canonical form must parse to the same message
    out = m.serialize()
    assert parse_message(out, max_size=len(out)) == m


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "truncate", "duplicate", "splice", "delete", "insert"]))
        i = draw(st.integers(0, max(n - 1, 0)))
        j = draw(st.integers(i, n))
        if op == "flip" and n:
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[j:]
        elif op == "duplicate":
            data[j:j] = data[i:j] * draw(st.integers(1, 3))
        elif op == "delete":
            del data[i:j]
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(SPECIAL))
        else:  # splice a header line from another message in
            other = draw(st.sampled_from(CORPUS)).split(b"\r\n")
            line = draw(st.sampled_from(other[1:] or [b""]))
            cut = data.find(b"\r\n", i)
            at = cut + 2 if cut >= 0 else len(data)
            data[at:at] = line + b"\r\n"
    return bytes(data)


@FAST
@given(st.binary(max_size=2000))
def test_random_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    only_sip_errors(data)


@FAST
@given(st.lists(st.sampled_from([*SPECIAL, b"a", b"INVITE ", b"sip:", b"Via: "]), max_size=60))
def test_random_sip_tokens_only_raise_sip_parse_error(parts: list[bytes]) -> None:
    only_sip_errors(b"".join(parts))


@FAST
@given(mutated())
def test_mutated_messages_only_raise_sip_parse_error(data: bytes) -> None:
    only_sip_errors(data)
    only_sip_errors(data, max_size=len(data) // 2 + 1)


@FAST
@given(st.lists(mutated(), min_size=1, max_size=4), st.lists(st.integers(1, 300), max_size=30))
def test_framer_on_mutated_streams_only_raises_sip_parse_error(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"\r\n\r\n".join(messages)
    f = StreamFramer(max_size=4096)
    pos = 0
    fed = 0
    for size in [*cuts, len(stream)]:
        chunk = stream[pos : pos + size]
        pos += size
        fed += len(chunk)
        f.feed(chunk)
        assert f.buffered <= fed
        assert len(f._buf) <= f.max_size + len(chunk)  # bounded: one message at most
        for _ in range(10):
            try:
                if f.next_message() is None:
                    break
            except SipParseError:
                if f.broken:
                    break
        fed = f.buffered


# ------------------------------------------------------------------------------------------
# Generated valid messages


TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
label = st.builds(
    lambda a, b: a + b,
    st.sampled_from("abcxyzABZ"),
    st.text("ab0-9z", max_size=6).map(lambda t: t.rstrip("-")),
)
hostnames = st.builds(lambda ls, top: ".".join([*ls, top]), st.lists(label, max_size=3), label)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{ipaddress.IPv6Address(a).compressed}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(0, 65535)
escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}")
USER_CHARS = "abcXYZ019-_.!~*'()&=+$,;?/"
users = st.lists(st.sampled_from(USER_CHARS) | escaped, min_size=1, max_size=10).map("".join)
PARAM_CHARS = "abcXYZ019-_.!~*'()[]/:&+$"
pchars = st.lists(st.sampled_from(PARAM_CHARS) | escaped, min_size=1, max_size=8).map("".join)
HNV_CHARS = "abcXYZ019-_.!~*'()[]/?:+$"
hnv = st.lists(st.sampled_from(HNV_CHARS) | escaped, min_size=1, max_size=8).map("".join)


@st.composite
def sip_uris(draw: st.DrawFn, with_headers: bool = True) -> SipUri:
    user = draw(st.none() | users)
    password = (
        draw(st.none() | pchars.filter(lambda p: all(c not in p for c in "[]/:"))) if user else None
    )
    return SipUri(
        draw(st.sampled_from(["sip", "sips"])),
        draw(hosts),
        user,
        password,
        draw(ports),
        tuple(draw(st.lists(st.tuples(pchars, st.none() | pchars), max_size=3))),
        tuple(draw(st.lists(st.tuples(hnv, hnv), max_size=2))) if with_headers else (),
    )


quoted = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters='"\\\r\n'), max_size=8
).map(lambda s: f'"{s}"')
gen_values = st.none() | tokens | hosts | quoted
params = st.lists(st.tuples(tokens, gen_values), max_size=3).map(tuple)
display = st.none() | st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=12
)


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    return NameAddr(draw(sip_uris()), draw(display), draw(params))


@st.composite
def vias(draw: st.DrawFn) -> Via:
    extra = draw(params.map(lambda ps: tuple(p for p in ps if p[0].lower() not in _VIA_KNOWN)))
    return Via(
        draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"])),
        draw(hosts),
        draw(ports),
        (("branch", "z9hG4bK" + draw(tokens)), *extra),
    )


_VIA_KNOWN = {"branch", "ttl", "rport", "received", "maddr"}


def test_str_round_trips_examples() -> None:
    uri = SipUri("sip", "[::1]", "a%20b", "pw", 5060, (("lr", None),), (("h", "v"),))
    assert parse_uri(str(uri)) == uri


@settings(FAST, max_examples=100)
@given(sip_uris())
def test_sip_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@settings(FAST, max_examples=100)
@given(name_addrs())
def test_name_addr_round_trip(na: NameAddr) -> None:
    assert parse_name_addr(str(na)) == na


@settings(FAST, max_examples=100)
@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert parse_via(str(via)) == via


values = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=30
).map(lambda s: s.strip(" \t"))


@st.composite
def messages(draw: st.DrawFn) -> SipRequest | SipResponse:
    h = Headers()
    for v in draw(st.lists(vias(), min_size=1, max_size=3)):
        h.add("Via", str(v))
    h.add("From", str(draw(name_addrs())))
    h.add("To", str(draw(name_addrs())))
    h.add("Call-ID", draw(tokens) + "@" + draw(hostnames))
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "INFO", "OPTIONS"]) | tokens)
    h.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    h.add("Max-Forwards", str(draw(st.integers(0, 255))))
    for contact in draw(st.lists(name_addrs(), max_size=2)):
        h.add("Contact", str(contact))
    for name, value in draw(
        st.lists(st.tuples(tokens.map(lambda t: "X-" + t), values), max_size=4)
    ):
        h.add(name, value)
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        uri = str(draw(sip_uris(with_headers=False)))
        return SipRequest(method, uri, h, body)
    reason = draw(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=20)
    )
    return SipResponse(draw(st.integers(100, 699)), reason, h, body)


@settings(FAST, max_examples=40)
@given(messages())
def test_message_round_trip(m: SipRequest | SipResponse) -> None:
    data = m.serialize()
    parsed = parse_message(data)
    assert parsed == m
    assert parsed.defects == ()
    assert parsed.serialize() == data


@settings(FAST, max_examples=15)
@given(st.lists(messages(), min_size=1, max_size=3), st.lists(st.integers(1, 200), max_size=40))
def test_framer_reassembles_any_chunking(
    ms: list[SipRequest | SipResponse], cuts: list[int]
) -> None:
    stream = b"".join(b"\r\n\r\n" + m.serialize() for m in ms)
    f = StreamFramer()
    got: list[SipRequest | SipResponse] = []
    pos = 0
    for size in [*cuts, len(stream)]:
        f.feed(stream[pos : pos + size])
        pos += size
        while (m := f.next_message()) is not None:
            got.append(m)
    assert got == ms
    assert f.keepalives == len(ms)
    assert f.buffered == 0


# ------------------------------------------------------------------------------------------
# Worst cases: linear time on 64 KiB of hostile input


def _head(extra: bytes) -> bytes:
    return INVITE.replace(b"Content-Length: 4\r\n", extra + b"Content-Length: 4\r\n")


WORST = {
    "semicolons": _head(b"X-A: " + b";" * 60000 + b"\r\n"),
    "commas in Via": _head(b"Via: " + b"SIP/2.0/UDP h;branch=z9hG4bK1," * 2000 + b"\r\n"),
    "many Vias": _head(b"v: SIP/2.0/UDP h;branch=z9hG4bK1\r\n" * 1800),
    "many headers": _head(b"a:b\r\n" * 12000),
    "folding": _head(b"X-F: a" + b"\r\n b" * 15000 + b"\r\n"),
    "quotes": _head(b"Contact: " + b'"\\"' * 20000 + b"\r\n"),
    "angles": _head(b"Contact: " + b"<" * 60000 + b"\r\n"),
    "escapes": _head(b"X-E: " + b"%" * 60000 + b"\r\n"),
    "long uri": INVITE.replace(b"sip:agent@", b"sip:" + b"a" * 60000 + b"@"),
    "long display": INVITE.replace(b'"Alice"', b"A " * 30000),
    "crlf": b"\r\n" * 32000,
}


@pytest.mark.parametrize("name", sorted(WORST))
def test_worst_cases_are_fast(name: str) -> None:
    data = WORST[name]
    t0 = time.perf_counter()
    only_sip_errors(data, max_size=len(data))
    f = StreamFramer(max_size=len(data) + 10)
    for i in range(0, len(data), 7):
        f.feed(data[i : i + 7])
    try:
        while f.next_message() is not None:
            pass
    except SipParseError:
        pass
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{name}: {elapsed:.3f}s"
