"""Our own versions of the RFC 4475 torture tests (SIP parser part, §3.1).

The messages are written for these tests after the descriptions in RFC 4475; names are the
RFC's. Valid ones must parse (and round-trip), invalid ones must raise SipParseError naming
the rule, or be accepted and flagged as a defect where RFC 4475 allows a liberal receiver to.
"""

from __future__ import annotations

import pytest

from sipproxy.sipmessage import (
    AbsoluteUri,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    parse_date,
    parse_message,
    parse_name_addr,
    parse_uri,
)

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.3\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


def raw(head: str, body: bytes = b"", content_length: int | str | None = "auto") -> bytes:
    """Head written with \\n line ends, turned into CRLF; Content-Length appended if asked."""
    lines = head.strip("\n").split("\n")
    if content_length == "auto":
        lines.append(f"Content-Length: {len(body)}")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def req(data: bytes) -> SipRequest:
    m = parse_message(data)
    assert isinstance(m, SipRequest)
    assert parse_message(m.serialize()) == m  # canonical form parses to the same message
    return m


def rejects(data: bytes, rule_part: str) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert rule_part in info.value.rule, (info.value.rule, str(info.value))
    assert 0 <= info.value.offset <= len(data)
    return info.value


# ------------------------------------------------------------------------------------------
# §3.1.1 valid messages


WSINV = raw(
    """
INVITE sip:agent7@pbx.example.com;unknownparam SIP/2.0
TO :
 sip:agent7@pbx.example.com ;   tag    = 8321234356
from   : "C Caller \\\\\\""       <sip:caller@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.kdjf8fdfsdf@192.0.2.1
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:caller@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33
""",
    SDP,
)


def test_wsinv_short_tortuous_invite() -> None:
    m = req(WSINV)
    assert m.method == "INVITE"
    assert m.uri == "sip:agent7@pbx.example.com;unknownparam"
    assert m.body == SDP
    # LWS, folding and case of names do not matter
    assert m.to.tag == "8321234356"
    assert m.from_.tag == "98asjd8"
    assert m.from_.display_name == 'C Caller \\"'
    assert m.max_forwards == 68
    assert (m.cseq.number, m.cseq.method) == (9, "INVITE")
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    # three Vias: one on its own, two comma-joined, with LWS around every separator
    vias = m.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = parse_name_addr(m.headers.get_all("Contact")[0])
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    route = parse_name_addr(m.headers.get("Route") or "")
    assert isinstance(route.uri, SipUri)
    assert route.uri.has_param("lr")
    assert route.uri.param("unknownwith") == "value"


INTMETH = raw(
    "!interesting-Method0123456789_*+`.%indeed'~ "
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
    "(doesn't-it)@example.com SIP/2.0\n"
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
    'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
    "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\n"
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>"
    ";fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\""
    ";tag=_token~1'+`*%!-.\n"
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
    "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
    "Max-Forwards: 255\n"
    "extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb\n"
)


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = req(INTMETH)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(m.uri)
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.headers.get("EXTENSIONHEADER-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


ESC01 = raw(
    """
INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
""",
    SDP,
)


def test_esc01_escaped_characters_in_uris() -> None:
    m = req(ESC01)
    uri = parse_uri(m.uri)
    assert isinstance(uri, SipUri)
    assert uri.user == "sips%3Auser%40example.com"  # kept escaped; one user, not a SIPS URI
    assert uri.host == "example.net"
    assert m.headers.get("Content-Type") == "application/sdp"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    contact = parse_name_addr(m.headers.get("Contact") or "")
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.has_param("lr")  # %6C%72 is "lr" once unescaped
    assert contact.uri.param("name") == "v%61lue%25%34%31"


ESCNULL = raw(
    """
REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsf0a
CSeq: 3923239 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0
""",
    content_length=None,
)


def test_escnull_escaped_nulls_in_uris() -> None:
    m = req(ESCNULL)
    assert m.body == b""
    assert len(m.headers.get_all("Contact")) == 2
    uri = m.to.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "null-%00-null"


ESC02 = raw(
    """
RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209asdjkf
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0
""",
    content_length=None,
)


def test_esc02_escapes_where_they_mean_nothing() -> None:
    m = req(ESC02)
    assert m.method == "RE%47IST%45R"  # an unknown method, not REGISTER
    assert m.to.display_name == "%Z%45"
    assert len(m.headers.get_all("Contact")) == 2  # C%6Fntact is an extension header
    assert m.headers.get("c%6fntact") == "<sip:alias2@host2.example.com>"


LWSDISP = raw(
    """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0
""",
    content_length=None,
)


def test_lwsdisp_no_lws_between_display_name_and_laquot() -> None:
    m = req(LWSDISP)
    assert m.from_.display_name == "caller"
    assert m.from_.tag == "323"


def _longreq() -> bytes:
    long = "very" * 80
    vias = "\n".join(
        f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{i}{long}" for i in range(40)
    )
    return raw(
        f"""
INVITE sip:user@example.com SIP/2.0
To: "I have a user name of {"extreme" * 30} proportion" <sip:user@example.com:6000;unknownparam1={long};{long}=unknownvalue;{long}>
From: sip:{"amazinglylongcallername" * 20}@example.net;tag=12{"982" * 60}424;unknownheaderparam{long}=unknowheaderparamvalue{long};unknownValuelessparam{long}
Call-ID: longreq.one{long}
CSeq: 3882340 INVITE
Unknown-{long}-Name: unknown-{long}-value; unknown-{long}-parameter-name = unknown-{long}-parameter-value
{vias}
Max-Forwards: 69
Contact: <sip:amazinglylongcallername@host5.example.net>
Content-Type: application/sdp
""",  # noqa: E501
        SDP,
    )


def test_longreq_long_values_and_many_vias() -> None:
    data = _longreq()
    assert len(data) > 15000
    m = req(data)
    assert len(m.vias) == 40
    assert m.vias[39].host == "sip39.example.com"
    assert m.from_.tag is not None and len(m.from_.tag) == 185


def test_dblreq_extra_bytes_after_content_length_are_discarded() -> None:
    register = raw(
        """
REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0
""",
        content_length=None,
    )
    invite = raw(
        """
INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
""",
        SDP,
    )
    m = parse_message(register + invite)
    assert isinstance(m, SipRequest)
    assert m.method == "REGISTER"
    assert m.body == b""
    assert [d.rule for d in m.defects] == ["§18.3"]
    assert m.defects[0].offset == len(register)


def test_semiuri_semicolon_in_user_part() -> None:
    m = req(
        raw(
            """
OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0
""",
            content_length=None,
        )
    )
    uri = parse_uri(m.uri)
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == ()
    assert m.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_unknown_transports_in_via() -> None:
    m = req(
        raw(
            """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0
""",
            content_length=None,
        )
    )
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_multipart_body_with_binary_content() -> None:
    binary = bytes(range(256)) + b"\r\n\r\n\x00\x00--boundary42\r\n"
    body = (
        b"--boundary42\r\n"
        b"Content-Type: message/sip\r\n\r\n"
        b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n"
        b"--boundary42\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + binary + b"\r\n--boundary42--\r\n"
    )
    m = req(
        raw(
            """
MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=boundary42
""",  # noqa: E501
            body,
        )
    )
    assert m.body == body
    assert m.vias[0].has_param("rport") and m.vias[0].rport is None
    assert m.vias[0].port == 5070


def test_unreason_utf8_reason_phrase() -> None:
    reason = "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
    data = raw(
        f"""
SIP/2.0 200 {reason}
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>
""",
        SDP,
    )
    m = parse_message(data)
    assert isinstance(m, SipResponse)
    assert (m.status, m.reason) == (200, reason)
    assert m.defects == ()
    assert parse_message(m.serialize()) == m


def test_noreason_empty_reason_phrase() -> None:
    data = raw(
        """
SIP/2.0 100 \n\
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
""",
        content_length=None,
    )
    m = parse_message(data)
    assert isinstance(m, SipResponse)
    assert (m.status, m.reason, m.defects) == (100, "", ())
    # without the SP after the code: accepted (liberal), flagged
    m2 = parse_message(data.replace(b"100 \r\n", b"100\r\n", 1))
    assert isinstance(m2, SipResponse)
    assert m2.reason == "" and len(m2.defects) == 1


def test_novelsc_and_unksm_non_sip_uris() -> None:
    m = req(
        raw(
            """
OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: <tel:+1-212-555-0199>;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0
""",
            content_length=None,
        )
    )
    assert parse_uri(m.uri) == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    assert m.from_.uri == AbsoluteUri("tel", "+1-212-555-0199")


def test_scalarlg_largest_valid_values() -> None:
    m = req(
        raw(
            """
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 2147483647 REGISTER
Call-ID: scalarlg.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 255
Expires: 2147483647
Contact: <sip:user@host129.example.com>
  ;expires=2147483647
""",
        )
    )
    assert m.cseq.number == 2**31 - 1
    assert m.max_forwards == 255


# ------------------------------------------------------------------------------------------
# §3.1.2 invalid messages


def test_badinv01_extraneous_header_field_separators() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Type: application/sdp
""",
        SDP,
    )
    err = rejects(data, "generic-param")
    assert data[err.offset : err.offset + 1] == b";"  # the second ';' of From's ';;'
    assert data.rfind(b"From", 0, err.offset) > 0
    # each of the three fields is refused on its own too
    for broken in (
        b"Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
        b'Contact: "Joe" <sip:joe@example.org>;;;;',
    ):
        fixed = data.replace(b";;tag", b";tag")
        if b"Via" in broken:
            fixed = fixed.replace(b"<sip:joe@example.org>;;;;", b"<sip:joe@example.org>")
        else:
            fixed = fixed.replace(b"192.0.2.15;;,;,,", b"192.0.2.15;branch=z9hG4bK1")
        with pytest.raises(SipParseError):
            parse_message(fixed)


def test_clerr_content_length_larger_than_message() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
""",
        SDP,
        content_length=9999,
    )
    err = rejects(data, "§18.3")
    assert err.offset == len(data)


def test_ncl_negative_content_length() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
""",
        SDP,
        content_length=-999,
    )
    err = rejects(data, "§20.14")
    assert data[err.offset : err.offset + 4] == b"-999"


SCALAR02 = raw(
    """
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1"""
    + "0" * 100
    + """
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
""",
)


def test_scalar02_overlarge_scalar_values() -> None:
    err = rejects(SCALAR02, "CSeq")
    assert SCALAR02[err.offset : err.offset + 5] == b"36893"
    # Max-Forwards over 255 alone is refused too (§20.22)
    only_mf = SCALAR02.replace(b"36893488147419103232", b"1")
    err = rejects(only_mf, "§20.22")
    assert only_mf[err.offset : err.offset + 3] == b"300"
    # a CSeq of 2**31 is one too many (§8.1.1.5)
    rejects(SCALAR02.replace(b"36893488147419103232", b"2147483648"), "§8.1.1.5")


def test_quotbal_unterminated_quoted_string() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
""",
        SDP,
    )
    err = rejects(data, "quoted-string")
    assert data[err.offset : err.offset + 4] == b'"Mr.'


INVITE_TAIL = """
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKkdjuw
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
"""


def test_ltgtruri_request_uri_in_angle_brackets() -> None:
    data = raw("INVITE <sip:user@example.com> SIP/2.0" + INVITE_TAIL, SDP)
    err = rejects(data, "absoluteURI")
    assert data[err.offset : err.offset + 1] == b"<"


def test_lwsruri_lws_inside_request_uri() -> None:
    data = raw("INVITE sip:user@example.com; lr SIP/2.0" + INVITE_TAIL, SDP)
    rejects(data, "Request-Line")


def test_lwsstart_multiple_sp_in_request_line_is_tolerated_and_flagged() -> None:
    data = raw("INVITE  sip:user@example.com  SIP/2.0" + INVITE_TAIL, SDP)
    m = parse_message(data)
    assert isinstance(m, SipRequest)
    assert m.uri == "sip:user@example.com"
    assert [d.offset for d in m.defects] == [6, 28]
    assert m.serialize().startswith(b"INVITE sip:user@example.com SIP/2.0\r\n")


def test_trws_trailing_sp_in_request_line_is_tolerated_and_flagged() -> None:
    data = raw("OPTIONS sip:remote-target@example.com SIP/2.0  " + INVITE_TAIL.replace(
        "INVITE", "OPTIONS"), SDP)  # fmt: skip
    m = parse_message(data)
    assert isinstance(m, SipRequest)
    assert m.version == "SIP/2.0"
    assert len(m.defects) == 1
    assert m.serialize().startswith(b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n")


def test_escruri_headers_in_request_uri() -> None:
    data = raw("INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0" + INVITE_TAIL)
    err = rejects(data, "§19.1.1")
    assert data[err.offset : err.offset + 1] == b"?"


def test_baddate_non_gmt_date_is_flagged() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
""",
        SDP,
    )
    m = parse_message(data)
    assert [d.rule for d in m.defects] == ["§20.17 Date"]
    assert data[m.defects[0].offset - 5 : m.defects[0].offset] == b"Date:"
    with pytest.raises(SipParseError):
        parse_date("Fri, 01 Jan 2010 16:00:00 EST")
    assert parse_date("Fri, 01 Jan 2010 16:00:00 GMT").hour == 16


def test_regbadct_uri_with_headers_not_in_angle_brackets() -> None:
    data = raw(
        """
REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0
""",
        content_length=None,
    )
    err = rejects(data, "§20.10")
    assert data[err.offset : err.offset + 1] == b"?"


def test_badaspec_spaces_inside_angle_brackets() -> None:
    data = raw(
        """
OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0
""",
        content_length=None,
    )
    err = rejects(data, "LAQUOT")
    assert data[err.offset : err.offset + 4] == b" sip"


def test_baddn_non_token_characters_in_display_name() -> None:
    data = raw(
        """
OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0
""",
        content_length=None,
    )
    err = rejects(data, "absoluteURI")
    assert data.rfind(b"From:", 0, err.offset) > 0


def test_badvers_unknown_protocol_version() -> None:
    data = raw(
        """
OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0
""",
        content_length=None,
    )
    err = rejects(data, "§7.1")
    assert err.status == 505
    assert data[err.offset : err.offset + 7] == b"SIP/7.0"


def test_mismatch01_cseq_method_differs_from_request_method() -> None:
    data = raw(
        """
OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0
""",
        content_length=None,
    )
    err = rejects(data, "§8.1.1.5")
    assert data[err.offset : err.offset + 6] == b"INVITE"


def test_bigcode_overlarge_response_code() -> None:
    data = raw(
        """
SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>
""",
        content_length=None,
    )
    err = rejects(data, "Status-Code")
    assert err.offset == 8
    rejects(data.replace(b"4294967301", b"999"), "§7.2")


def test_insuf_missing_required_headers() -> None:
    data = raw(
        """
INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
""",
        SDP,
    )
    err = rejects(data, "§8.1.1")
    for name in ("To", "From", "Call-ID"):
        assert name in err.description
    assert "Via" not in err.description and "CSeq" not in err.description


def test_mcl01_repeated_single_value_headers() -> None:
    data = raw(
        """
OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain
""",
        b"There's no way to know how many octets are supposed to be here.",
        content_length=None,
    )
    err = rejects(data, "§7.3.1")
    assert "Content-Length" in err.description
