"""Tests for sipproxy.logsetup: no card data in any captured log line; operators' fields kept."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.logsetup import (
    REDACTED,
    configure_logging,
    get_logger,
    is_sensitive_key,
    redact,
    redact_text,
)

PANS = ["4111111111111111", "5555555555554444", "378282246310005"]


def spellings(pan: str) -> list[str]:
    """The PAN as people and programs write it."""
    if len(pan) == 15:  # Amex: 4-6-5
        groups = [pan[:4], pan[4:10], pan[10:]]
    else:
        groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    return [pan, " ".join(groups), "-".join(groups), "  ".join(groups), " - ".join(groups)]


ALL_SPELLINGS = [s for pan in PANS for s in spellings(pan)]
CVV, CVV_AMEX, EXPIRY, EXPIRY_DIGITS = "123", "1234", "12/29", "1229"
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave the root logger and structlog as other tests expect them."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(params=["kv", "json"])
def capture(request) -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = configure_logging(fmt=request.param, level="DEBUG", stream=buf)
    structlog.contextvars.clear_contextvars()
    yield buf
    structlog.contextvars.clear_contextvars()
    logging.getLogger().removeHandler(handler)
    structlog.reset_defaults()


def assert_no_card_data(output: str) -> None:
    # the timestamp is the one place long digit strings may legitimately appear
    text = re.sub(TIMESTAMP, "", output)
    digits_only = re.sub(r"\D", "", text)
    for pan in PANS:
        assert pan not in digits_only, f"{pan} leaked:\n{output}"
        for spelling in spellings(pan):
            assert spelling not in output
        for i in range(len(pan) - 8):
            assert pan[i : i + 8] not in digits_only, f"part of {pan} leaked:\n{output}"


def lines(buf: io.StringIO) -> list[str]:
    return [line for line in buf.getvalue().splitlines() if line]


# ------------------------------------------------------------------------ every position


@pytest.mark.parametrize("spelling", ALL_SPELLINGS)
def test_pan_never_in_output_whatever_its_position(capture: io.StringIO, spelling: str) -> None:
    log = get_logger("sipproxy.test")
    log.info(f"caller typed {spelling} then hash")
    log.info("caller typed %s then %s", spelling, "hash")
    log.info("kv", value=spelling, note=f"x{spelling}y", text=f"pan:{spelling}.")
    log.info("nested", payload={"a": [1, {"b": (spelling, {spelling})}], spelling: "as a key"})
    log.info("types", raw=spelling.encode(), obj=_Holder(spelling), n=int(_digits(spelling)))
    log.info("float", f=float(_digits(spelling)))
    log.bind(bound=spelling).warning("bound")
    structlog.contextvars.bind_contextvars(ctx=spelling)
    log.error("context")
    structlog.contextvars.clear_contextvars()
    logging.getLogger("aiohttp.server").warning("foreign %s", spelling)
    logging.getLogger("asyncio").error("foreign kwargs", extra={"pan_extra": spelling})
    out = capture.getvalue()
    assert len(lines(capture)) == 10
    assert_no_card_data(out)


@pytest.mark.parametrize("pan", PANS)
def test_pan_in_exception_text_and_traceback(capture: io.StringIO, pan: str) -> None:
    log = get_logger("sipproxy.test")
    try:
        try:
            raise KeyError(f"no profile for {pan}")
        except KeyError as inner:
            raise ValueError(f"card {' '.join([pan[:4], pan[4:]])} declined") from inner
    except ValueError as exc:
        log.exception("payment failed")
        log.error("payment failed", exc_info=True, error=exc)
        logging.getLogger("aiohttp.web").exception("handler raised %s", exc)
    out = capture.getvalue()
    assert "Traceback" in out and "ValueError" in out and "KeyError" in out
    assert_no_card_data(out)


def test_cvv_and_expiry_under_card_named_keys(capture: io.StringIO) -> None:
    log = get_logger("sipproxy.test")
    log.info(
        "captured",
        cvv=CVV,
        CVV2=CVV_AMEX,
        card_cvc=int(CVV),
        expiry=EXPIRY,
        expiration_date=EXPIRY_DIGITS,
        exp_month=12,
        cardNumber=PANS[0],
        PAN=PANS[1],
        dtmf_digits="4111#",
        digit="7",
        card={"number": PANS[2], "cvv": CVV, "expiry": EXPIRY},
        fields=[{"name": "cvv", "cvv": CVV}],
    )
    log.info(f"expiry {EXPIRY_DIGITS} and amex cvv {CVV_AMEX} in text")
    out = capture.getvalue()
    assert_no_card_data(out)
    text = re.sub(TIMESTAMP, "", out)
    for value in (CVV, CVV_AMEX, EXPIRY, EXPIRY_DIGITS, "4111#"):
        assert value not in text
    assert not re.search(r"\d", text.replace("CVV2", ""))  # no other digits here


# ------------------------------------------------------------------------- kept for ops


def test_operator_fields_survive_in_json() -> None:
    buf = io.StringIO()
    handler = configure_logging(fmt="json", stream=buf)
    try:
        get_logger("sipproxy.relay").info(
            "call answered from 10.0.0.1:5060 via [2001:db8::1]:5062 and 2001:db8::7",
            call_id="1234567890@10.0.0.1",
            branch="z9hG4bK776asdhds",
            from_tag="1928301774",
            addr="192.0.2.10:5060",
            peer="[2001:db8::5]:5070",
            port=30000,
            status=486,
            ssrc=2864434397,
            packets=12345,
            duration_ms=20,
            rtp_ports="30000-30003",
        )
        (line,) = lines(buf)
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    event = json.loads(line)
    assert event["event"] == (
        "call answered from 10.0.0.1:5060 via [2001:db8::1]:5062 and 2001:db8::7"
    )
    assert event["call_id"] == "1234567890@10.0.0.1"
    assert event["branch"] == "z9hG4bK776asdhds"
    assert event["from_tag"] == "1928301774"
    assert event["addr"] == "192.0.2.10:5060"
    assert event["peer"] == "[2001:db8::5]:5070"
    assert (event["port"], event["status"], event["ssrc"]) == (30000, 486, 2864434397)
    assert (event["packets"], event["duration_ms"]) == (12345, 20)
    assert event["rtp_ports"] == REDACTED  # a digit run in a key that is not kept
    assert event["level"] == "info" and event["logger"] == "sipproxy.relay"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", event["timestamp"])


def test_kv_format_and_level_filter() -> None:
    buf = io.StringIO()
    handler = configure_logging(fmt="kv", level="warning", stream=buf)
    try:
        log = get_logger("sipproxy.sip")
        log.info("dropped")  # below the level
        log.warning("call refused", addr="198.51.100.7:5060", status=403)
        (line,) = lines(buf)
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    assert re.match(r"timestamp=\S+ level=warning logger=sipproxy.sip event=\"call refused\"", line)
    assert "addr=198.51.100.7:5060" in line and "status=403" in line


def test_call_id_holding_a_card_number_is_still_redacted(capture: io.StringIO) -> None:
    log = get_logger("sipproxy.test")
    for pan in PANS:
        log.info("call", call_id=f"{pan}@10.0.0.1", branch=f"z9hG4bK-{pan}", timestamp=int(pan))
    assert_no_card_data(capture.getvalue())


def test_configure_twice_keeps_one_handler() -> None:
    buf1, buf2 = io.StringIO(), io.StringIO()
    configure_logging(stream=buf1)
    handler = configure_logging(stream=buf2)
    try:
        get_logger("x").info("once")
        assert buf1.getvalue() == "" and buf2.getvalue().count("once") == 1
        with pytest.raises(ValueError):
            configure_logging(fmt="xml")  # type: ignore[arg-type]
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    "key",
    ["card", "card_number", "cardNumber", "CardNumber", "PAN", "pan", "cvv", "CVV2", "cvc",
     "card_cvc", "expiry", "exp", "exp_month", "expiration_date", "digits", "dtmf",
     "dtmf_buffer", "last_digit", "pin", "track2", "cardno", "cvvValue", "rfc4733Digits"],
)  # fmt: skip
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)
    assert redact({key: {"anything": 1}}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    ["call_id", "discarded", "company", "span", "expand", "packets", "address", "capacity",
     "expected", "cardinality", "participants", "spinner", "status", "port", "event"],
)  # fmt: skip
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no digits here", "no digits here"),
        ("123 is short", "123 is short"),
        ("1234", REDACTED),
        ("call 12 took 20 ms", "call 12 took 20 ms"),
        ("10.0.0.1:5060", "10.0.0.1:5060"),
        ("from 10.0.0.1 to 10.0.0.2:65535", "from 10.0.0.1 to 10.0.0.2:65535"),
        ("[2001:db8::1]:5060", "[2001:db8::1]:5060"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1234:5678", "fe80::1234:5678"),
        ("4111:1111:1111:1111::", f"{REDACTED}:{REDACTED}:{REDACTED}:{REDACTED}::"),
        ("999.1.1.1:5060", f"999.1.1.1:{REDACTED}"),  # not an address
        ("10.0.0.1:50604111111111111111", f"10.0.0.1:{REDACTED}"),
        ("sip:4111111111111111@10.0.0.1:5060", f"sip:{REDACTED}@10.0.0.1:5060"),
        ("ports 30000-30999", f"ports {REDACTED}"),
        ("٤١١١١١١١١١١١١١١١", REDACTED),  # Arabic-Indic digits
        ("４１１１　１１１１", f"{REDACTED}\u3000{REDACTED}"),  # fullwidth, ideographic space
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_values_and_structure() -> None:
    value = {
        "n": 5060,
        "big": 4111111111111111,
        "f": 1e15,
        "ok": True,
        "none": None,
        "list": ["4111 1111", ("x", 99999)],
        "set": {"5555-5555"},
        4111111111111111: "int key",
    }
    got = redact(value)
    assert got == {
        "n": 5060,
        "big": REDACTED,
        "f": REDACTED,
        "ok": True,
        "none": None,
        "list": [REDACTED, ("x", 99999)],
        "set": [REDACTED],
        REDACTED: "int key",
    }
    assert value["list"][0] == "4111 1111"  # the input is not mutated


def test_deep_and_cyclic_structures_are_bounded() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert "[REDACTED]" in str(redact(cyclic))
    deep: dict[str, object] = {"v": "x"}
    for _ in range(50):
        deep = {"d": deep}
    assert "x" not in str(redact(deep))


def test_broken_str_does_not_break_logging() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert redact(Broken()) == REDACTED


# --------------------------------------------------------------------------- properties


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError


cards = st.integers(12, 18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n).map(_luhn_complete)
)


@settings(max_examples=300, deadline=None)
@given(
    pan=cards,
    seps=st.lists(st.sampled_from(["", " ", "-", "  ", " - ", "\t"]), min_size=19, max_size=19),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    key=st.sampled_from(["value", "call_id", "branch", "note", "addr", "peer", "msg"]),
)
def test_any_card_number_in_any_text_is_removed(pan, seps, before, after, key) -> None:
    written = "".join(d + s for d, s in zip(pan, seps, strict=False)).rstrip(" -\t")
    for out in (redact_text(before + written + after), redact({key: before + written + after})):
        assert pan not in re.sub(r"\D", "", str(out)), out


class _Holder:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __str__(self) -> str:
        return f"Holder({self.secret})"


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)
