"""sipproxy.sipmessage: headers, value parsers, serialization, framing, responses."""

from __future__ import annotations

import pytest

from sipproxy.sipmessage import (
    AbsoluteUri,
    CSeq,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    Via,
    build_response,
    canonical_name,
    parse_cseq,
    parse_max_forwards,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
)

INVITE = (
    b"INVITE sip:agent@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1;received=192.0.2.9\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:agent@pbx.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Timestamp: 54\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def invite() -> SipRequest:
    m = parse_message(INVITE)
    assert isinstance(m, SipRequest)
    return m


# ------------------------------------------------------------------------------------------
# Headers


def test_compact_forms_map_to_full_names() -> None:
    for short, full in {
        "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
        "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
        "v": "Via", "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires",
        "b": "Referred-By",
    }.items():  # fmt: skip
        assert canonical_name(short) == full
        assert canonical_name(short.upper()) == full
    assert canonical_name("cSEQ") == "CSeq"
    assert canonical_name("X-Custom") == "X-Custom"


def test_headers_lookup_is_case_insensitive_and_compact_aware() -> None:
    h = Headers([("v", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"), ("X-Foo", "1")])
    assert h.get("VIA") == "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"
    assert h.get("via") == h.get("v")
    assert "x-foo" in h and "X-Bar" not in h
    assert h.get("X-Bar", "none") == "none"
    assert next(iter(h))[0] == "Via"


def test_headers_split_list_values_but_not_inside_quotes_or_brackets() -> None:
    h = Headers()
    h.add("Contact", '"Doe, John" <sip:j@a.example.com;x=1,2>;q=0.5, <sip:k@b.example.com>')
    assert h.get_all("Contact") == [
        '"Doe, John" <sip:j@a.example.com;x=1,2>;q=0.5',
        "<sip:k@b.example.com>",
    ]
    h.add("Route", "<sip:p1.example.com;lr>,<sip:p2.example.com;lr>")
    assert len(h.get_all("Route")) == 2
    # auth headers are single values whose commas separate auth-params
    h.add("Authorization", 'Digest username="a", realm="b", nonce="c"')
    assert len(h.get_all("Authorization")) == 1
    # unknown headers are never split
    h.add("X-List", "a, b")
    assert h.get_all("X-List") == ["a, b"]


def test_split_list_escaped_quote() -> None:
    assert split_list(r'"a \", b" <sip:x@y.example.com>, <sip:z@w.example.com>') == [
        r'"a \", b" <sip:x@y.example.com>',
        "<sip:z@w.example.com>",
    ]
    with pytest.raises(SipParseError):
        split_list('"unterminated, <sip:a@b.example.com>')


def test_headers_prepend_set_remove_pop() -> None:
    h = Headers([("From", "<sip:a@b.example.com>;tag=1"), ("Via", "SIP/2.0/UDP x;branch=z9hG4bK1")])
    h.prepend("Via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
    assert h.get("Via") == "SIP/2.0/UDP me.example.com;branch=z9hG4bKme"
    assert [n for n, _ in h] == ["From", "Via", "Via"]
    assert h.pop_first("Via") == "SIP/2.0/UDP me.example.com;branch=z9hG4bKme"
    h.set("Max-Forwards", "69")
    h.set("From", "<sip:c@d.example.com>;tag=2")
    assert [n for n, _ in h] == ["From", "Via", "Max-Forwards"]
    assert h.remove("via") == 1 and "Via" not in h
    assert h.pop_first("Via") is None
    h.prepend("Route", "<sip:r.example.com;lr>")
    assert next(iter(h)) == ("Route", "<sip:r.example.com;lr>")


def test_headers_refuse_injection() -> None:
    h = Headers()
    with pytest.raises(ValueError):
        h.add("X-A", "evil\r\nVia: x")
    with pytest.raises(ValueError):
        h.add("Bad Name", "v")


# ------------------------------------------------------------------------------------------
# Value parsers


def test_parse_cseq() -> None:
    assert parse_cseq("  0009 \t INVITE ") == CSeq(9, "INVITE")
    for bad in ("INVITE", "1INVITE", "-1 INVITE", "1 INVITE x", "99999999999999999999 ACK", ""):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_parse_max_forwards() -> None:
    assert parse_max_forwards("0") == 0
    assert parse_max_forwards(" 070 ") == 70
    for bad in ("256", "-1", "", "7a", "1" * 5000):
        with pytest.raises(SipParseError) as info:
            parse_max_forwards(bad)
        assert "§20.22" in info.value.rule


def test_parse_via_pieces() -> None:
    v = parse_via("SIP/2.0/udp [2001:db8::1]:5062;branch=z9hG4bKx;received=192.0.2.7;rport=4000")
    assert v == Via(
        "UDP",
        "[2001:db8::1]",
        5062,
        (("branch", "z9hG4bKx"), ("received", "192.0.2.7"), ("rport", "4000")),
    )
    assert (v.branch, v.received, v.rport) == ("z9hG4bKx", "192.0.2.7", 4000)
    assert parse_via(str(v)) == v
    for bad in (
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;branch",
        "SIP/2.0/UDP host;ttl=300",
        "SIP/2.0/UDP host;rport=x",
        "SIP/2.0/UDP -bad-.example.com",
        "SIP/2.0/UDP 999.1.1.1",
        "SIP/2.0/UDP [zz::1]",
        "SIP/2.0/UDP host junk",
    ):
        with pytest.raises(SipParseError) as info:
            parse_via(bad)
        assert "Via" in info.value.rule, bad


def test_parse_uri_sip() -> None:
    u = parse_uri(
        "SIPS:alice:secret@Example.COM:5061;transport=tcp;lr?subject=project%20x&priority=urgent"
    )
    assert u == SipUri(
        "sips",
        "Example.COM",
        "alice",
        "secret",
        5061,
        (("transport", "tcp"), ("lr", None)),
        (("subject", "project%20x"), ("priority", "urgent")),
    )
    assert isinstance(u, SipUri) and u.param("TRANSPORT") == "tcp"
    assert parse_uri(str(u)) == u
    assert parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone") == SipUri(
        "sip", "gateway.com", "+1-212-555-1212", "1234", None, (("user", "phone"),)
    )
    assert parse_uri("sip:[::1]") == SipUri("sip", "[::1]")
    assert parse_uri("tel:+358-555-1234567") == AbsoluteUri("tel", "+358-555-1234567")
    for bad, offset in (
        ("sip:", 4),
        ("sip:@host", 4),
        ("sip:us er@host", 6),
        ("sip:user@host;;", 14),
        ("sip:user@host:65536", 14),
        ("sip:user@host;a=", 16),
        ("sip:us%4@host", 6),
        ("<sip:a@b>", 0),
        ("sip:a@b c", 7),
    ):
        with pytest.raises(SipParseError) as info:
            parse_uri(bad)
        assert info.value.offset == offset, bad
    with pytest.raises(SipParseError):
        parse_uri("sip:a@b?x=y", request_uri=True)


def test_parse_name_addr_forms() -> None:
    na = parse_name_addr('"A \\"B\\"" <sip:a@example.com;transport=udp>;tag=x;q=0.7')
    assert na.display_name == 'A "B"'
    assert isinstance(na.uri, SipUri) and na.uri.param("transport") == "udp"
    assert na.params == (("tag", "x"), ("q", "0.7"))
    assert parse_name_addr(str(na)) == na
    # addr-spec form: ';' starts header params, not URI params (§20.10)
    spec = parse_name_addr("sip:a@example.com;tag=9")
    assert spec == NameAddr(SipUri("sip", "example.com", "a"), None, (("tag", "9"),))
    assert parse_name_addr("Alice  Smith <sip:a@example.com>").display_name == "Alice Smith"
    assert spec.with_tag("10").tag == "10"
    for bad in ('"x" sip:a@b.example.com', "<sip:a@b.example.com", "<sip:a@b.example.com> x", ""):
        with pytest.raises(SipParseError):
            parse_name_addr(bad)


# ------------------------------------------------------------------------------------------
# Messages


def test_parse_invite_and_accessors() -> None:
    m = invite()
    assert (m.method, m.uri, m.version, m.body) == (
        "INVITE",
        "sip:agent@pbx.example.com",
        "SIP/2.0",
        b"v=0\n",
    )
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.cseq == CSeq(314159, "INVITE")
    assert m.max_forwards == 70
    assert m.vias[0].has_param("rport") and m.vias[0].port == 5060
    assert m.from_.tag == "1928301774" and m.to.tag is None
    assert "Content-Length" not in m.headers  # framing: serialize() writes it


def test_serialize_is_canonical_with_correct_content_length() -> None:
    m = invite()
    m.body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    out = m.serialize()
    assert out.endswith(b"Content-Length: 31\r\n\r\n" + m.body)
    assert parse_message(out) == m
    m.headers.add("Content-Length", "999")  # ignored: the body decides
    assert m.serialize() == out
    # folded, compact, odd-case input serializes with full names, one field per line
    folded = INVITE.replace(b"Max-Forwards: 70", b"max-FORWARDS:\r\n  70").replace(
        b"Call-ID:", b"i:"
    )
    again = parse_message(folded)
    assert b"Max-Forwards: 70\r\nFrom" in again.serialize()
    assert b"\r\nCall-ID: a84b" in again.serialize()


def test_missing_content_length_on_udp_means_rest_of_datagram() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"") + b"more"
    assert parse_message(data).body == b"v=0\nmore"


def test_leading_crlf_is_skipped_and_offsets_stay_absolute() -> None:
    data = b"\r\n\r\n" + INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert data[info.value.offset : info.value.offset + 3] == b"BYE"


def test_error_offsets_inside_folded_values() -> None:
    data = INVITE.replace(
        b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1;received=192.0.2.9",
        b"Via: SIP/2.0/TCP proxy.example.com;\r\n   branch=z9hG4bK1;;received=192.0.2.9",
    )
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert data[info.value.offset - 16 : info.value.offset + 1] == b"branch=z9hG4bK1;;"


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"", "§7"),
        (b"\r\n\r\n", "§7"),
        (INVITE[:60], "§7"),
        (INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"), "§7.3.1"),
        (INVITE.replace(b"Max-Forwards", b"Max Forwards"), "field-name"),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"), "§7.3.1"),
        (INVITE.replace(b"\r\nVia", b"\r\n Via", 1), "§7.3.1"),
        (b" " + INVITE, "§7.1"),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/2\r\n", 1), "SIP-Version"),
        (INVITE.replace(b"INVITE sip", b"INV@TE sip"), "Method"),
        (INVITE.replace(b"Call-ID: a84b", b"Call-ID: a8 4b"), "callid"),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 4x"), "§20.14"),
        (INVITE.replace(b"To: ", b"To: <sip:x@y.example.com>\r\nTo: "), "§7.3.1"),
        (INVITE.replace(b"Contact: <sip:alice@192.0.2.1>", b"Contact: <sip:a@b>,,"), "§7.3.1"),
        (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", "§8.1.1"),
    ],
)
def test_rejections(data: bytes, rule: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert rule in info.value.rule
    assert 0 <= info.value.offset <= max(len(data), 1)


def test_max_size() -> None:
    big = INVITE.replace(b"Content-Length: 4", b"Content-Length: 3004") + b"x" * 3000
    assert parse_message(big, max_size=4000).body.endswith(b"x")
    with pytest.raises(SipParseError) as info:
        parse_message(big, max_size=3000)
    assert info.value.status == 513


def test_errors_do_not_quote_the_input() -> None:
    secret = b"4111111111111111"
    data = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: " + secret + b"0 INVITE")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert secret.decode() not in str(info.value)


def test_surrogateescape_keeps_non_utf8_bytes() -> None:
    data = INVITE.replace(b'"Alice"', b'"M\xfcller"')
    m = parse_message(data)
    assert m.from_.display_name == "M\udcfcller"
    assert b'"M\xfcller"' in m.serialize()


# ------------------------------------------------------------------------------------------
# Responses


def test_build_response_copies_dialog_headers_and_adds_to_tag() -> None:
    req = invite()
    r = build_response(req, 486, to_tag="as83kd9", headers=[("Retry-After", "30")])
    assert (r.status, r.reason) == (486, "Busy Here")
    assert r.headers.get_all("Via") == req.headers.get_all("Via")
    for name in ("From", "Call-ID", "CSeq"):
        assert r.headers.get(name) == req.headers.get(name)
    assert r.to.tag == "as83kd9"
    assert r.headers.get("Retry-After") == "30"
    assert "Timestamp" not in r.headers
    parsed = parse_message(r.serialize())
    assert isinstance(parsed, SipResponse) and parsed == r
    trying = build_response(req, 100)
    assert trying.to.tag is None and trying.headers.get("Timestamp") == "54"
    random_tag = build_response(req, 180).to.tag
    assert random_tag is not None and len(random_tag) >= 8
    # an existing To tag is kept
    req.headers.set("To", "<sip:agent@pbx.example.com>;tag=existing")
    assert build_response(req, 200).to.tag == "existing"


# ------------------------------------------------------------------------------------------
# Stream framing


def drain(f: StreamFramer) -> list[SipRequest | SipResponse]:
    out = []
    while (m := f.next_message()) is not None:
        out.append(m)
    return out


def test_framer_byte_at_a_time_with_keepalives() -> None:
    stream = b"\r\n\r\n" + INVITE + b"\r\n\r\n\r\n\r\n" + INVITE
    f = StreamFramer()
    got = []
    for i in range(len(stream)):
        f.feed(stream[i : i + 1])
        got += drain(f)
    assert got == [invite(), invite()]
    assert f.keepalives == 3
    assert f.buffered == 0 and not f.broken


def test_framer_recovers_after_a_malformed_but_framed_message() -> None:
    bad = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: x INVITE")
    f = StreamFramer()
    f.feed(bad + INVITE)
    with pytest.raises(SipParseError):
        f.next_message()
    assert f.next_message() == invite()
    assert f.next_message() is None


@pytest.mark.parametrize(
    "data",
    [
        INVITE.replace(b"Content-Length: 4\r\n", b""),  # no Content-Length on a stream
        INVITE.replace(b"Content-Length: 4", b"Content-Length: -4"),
        INVITE.replace(b"Content-Length: 4", b"Content-Length: 4\r\nl: 4"),
        INVITE.replace(b"Content-Length: 4", b"Content-Length: 70000"),  # over max_size
        b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 70000,  # endless header section
    ],
)
def test_framer_fatal_errors(data: bytes) -> None:
    f = StreamFramer()
    f.feed(INVITE + data)
    assert f.next_message() == invite()  # what came before is still delivered
    with pytest.raises(SipParseError):
        f.next_message()
    assert f.broken
    assert f.buffered == 0
    f.feed(INVITE)  # ignored once broken
    with pytest.raises(SipParseError):
        f.next_message()
