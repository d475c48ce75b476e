"""Tests for control_api.hostedpage over HTTP (aiohttp's test client): security headers, the
script inventory, CSRF, rate limits, link abuse, the form without JavaScript, progress
reports, and no card data in any answer or log line. pay.js's checks are compared with
control_api.cards in node (skipped without node)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control_api import api as api_module
from control_api.api import make_app as make_api
from control_api.cards import (
    CardError,
    CardValidationError,
    detect_brand,
    validate_cvv,
    validate_expiry,
    validate_pan,
    validate_postal_code,
)
from control_api.hostedpage import (
    ASSETS,
    CSP,
    HOSTED_PAGE,
    INVALID_LINK_PAGE,
    MESSAGES,
    SCRIPTS,
    STATIC_DIR,
    HostedPage,
    PageLimits,
    PayLinkAccessLogger,
    RateLimiter,
    add_hosted_page,
)
from control_api.profiles import LinksConfig
from control_api.service import PaymentService, ServiceError
from control_api.storage import Storage
from tests.control_api.callfakes import FakeCallControl
from tests.control_api.pagefakes import FakePageService
from tests.control_api.servicekit import (
    ACME_AGENT,
    ACME_NUMBER,
    ALL_CARDS,
    CARDS,
    DECLINE,
    DETAILS,
    POSTAL,
    TODAY,
    WALL,
    LogCapture,
    assert_no_leak,
    letters,
    logs,
    make_config,
    until,
)

__all__ = ["logs"]

VISA = "4111111111111111"
AMEX = "378282246310005"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    fake: FakePageService
    page: HostedPage
    client: TestClient[Any, Any]
    clock: Clock
    seen: list[str]

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.client.get(path, **kw) as resp:
            text = await resp.text()
            self._keep(resp, text)
            return resp.status, text, resp

    async def post(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.client.post(path, **kw) as resp:
            text = await resp.text()
            self._keep(resp, text)
            return resp.status, text, resp

    def _keep(self, resp: Any, text: str) -> None:
        # Content-Length is the body's size, nothing sent: left out, as a 3-digit size can
        # look like a test CVV to the leak scan
        headers = [(k, v) for k, v in resp.headers.items() if k != "Content-Length"]
        self.seen.append(f"{resp.status} {headers!r} {text}")

    async def open(self, token: str) -> str:
        """GET the page; the CSRF value it carries (the cookie is kept by the client)."""
        status, text, _ = await self.get(f"/pay/{token}")
        assert status == 200, text
        m = CSRF_RE.search(text)
        assert m is not None
        return m.group(1)

    async def submit(self, token: str, csrf: str | None, **fields: str) -> tuple[int, str, Any]:
        form = dict(fields)
        if csrf is not None:
            form["csrf"] = csrf
        return await self.post(f"/pay/{token}", data=form)

    async def progress(
        self, token: str, csrf: str | None, body: Any, **kw: Any
    ) -> tuple[int, str, Any]:
        headers = {"Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        headers.update(kw.pop("headers", {}))
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await self.post(f"/pay/{token}/progress", data=data, headers=headers, **kw)


def card_form(pan: str = VISA, **over: str) -> dict[str, str]:
    exp, cvv = ALL_CARDS[pan]
    form = {
        "card_number": " ".join(pan[i : i + 4] for i in range(0, len(pan), 4)),
        "expiry": f"{exp[:2]}/{exp[2:]}",
        "cvv": cvv,
        "postal_code": POSTAL,
    }
    form.update(over)
    return form


def make_app(fake: FakePageService, clock: Clock, limits: PageLimits | None) -> web.Application:
    # the control API's own error middleware, as in the node
    app = web.Application(middlewares=[api_module._errors], client_max_size=api_module.MAX_BODY)
    add_hosted_page(app, fake, limits=limits, csrf_key=b"k" * 32, clock=clock, today=lambda: TODAY)
    return app


@pytest_asyncio.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A page over a FakePageService; ``limits`` through indirect parametrisation."""
    limits = getattr(request, "param", None)
    fake = FakePageService()
    clock = Clock()
    app = make_app(fake, clock, limits)
    server = TestServer(app)
    await server.start_server(access_log_class=PayLinkAccessLogger)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Rig(fake, app[HOSTED_PAGE], client, clock, [])
    finally:
        await client.close()


def no_values_echoed(text: str) -> None:
    """Every input but the CSRF field is empty: nothing typed comes back."""
    for tag in re.findall(r"<input[^>]*>", text):
        if 'name="csrf"' not in tag:
            assert "value=" not in tag, tag


# ------------------------------------------------------------------------ the inventory


def test_assets_match_their_inventoried_hashes() -> None:
    assert [s.name for s in SCRIPTS] == ["pay.js"]  # the page's only script
    assert sorted(p.name for p in STATIC_DIR.glob("pay.*")) == sorted(a.name for a in ASSETS)
    for asset in ASSETS:
        body = (STATIC_DIR / asset.name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == asset.sha256, (
            f"{asset.name} changed: review it, then put its new SHA-256 in ASSETS"
        )


def test_a_changed_script_is_refused(tmp_path: Path) -> None:
    for asset in ASSETS:
        shutil.copy(STATIC_DIR / asset.name, tmp_path / asset.name)
    HostedPage(FakePageService(), static_dir=tmp_path)  # as inventoried: fine
    with open(tmp_path / "pay.js", "a") as f:
        f.write("\nfetch('https://evil.example/');\n")
    with pytest.raises(RuntimeError, match="inventor"):
        HostedPage(FakePageService(), static_dir=tmp_path)


@pytest.mark.asyncio
async def test_page_loads_only_inventoried_files_with_integrity(rig: Rig) -> None:
    token = rig.fake.add()
    _, text, _ = await rig.get(f"/pay/{token}")
    scripts = re.findall(r"<script[^>]*>", text)
    assert scripts == [f'<script src="/pay/static/pay.js" integrity="{ASSETS[0].integrity}" defer>']
    assert text.count("</script>") == 1  # no inline script
    links = re.findall(r"<link[^>]*>", text)
    assert links == [
        f'<link rel="stylesheet" href="/pay/static/pay.css" integrity="{ASSETS[1].integrity}">'
    ]
    assert "<style" not in text and " style=" not in text
    assert not re.search(r"\son[a-z]+=", text)  # no inline event handlers
    assert "http://" not in text and "https://" not in text  # nothing from elsewhere
    for asset in ASSETS:
        status, body, resp = await rig.get(asset.url)
        assert status == 200
        assert resp.headers["Content-Type"] == asset.content_type
        assert hashlib.sha256(body.encode()).hexdigest() == asset.sha256
        assert resp.headers["Cache-Control"] == "no-store"
    status, _, _ = await rig.get("/pay/static/other.js")
    assert status == 404


# ------------------------------------------------------------------------ headers


@pytest.mark.asyncio
async def test_security_headers_on_every_answer(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    answers = [
        await rig.get(f"/pay/{token}"),
        await rig.get("/pay/static/pay.js"),
        await rig.get("/pay/static/pay.css"),
        await rig.get("/pay/" + "x" * 44),
        await rig.progress(token, csrf, {"field": "card_number", "digits": 1, "brand": None}),
        await rig.progress(token, None, {"field": "card_number", "digits": 1, "brand": None}),
        await rig.submit(token, None, **card_form()),
        await rig.get(f"/pay/{token}/nothing-here"),
    ]
    async with rig.client.put(f"/pay/{token}") as resp:  # 405 from aiohttp itself
        answers.append((resp.status, "", resp))
    assert [a[0] for a in answers] == [200, 200, 200, 404, 204, 403, 403, 404, 405]
    for _, _, resp in answers:
        headers = resp.headers
        assert headers["Content-Security-Policy"] == (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        assert headers["Content-Security-Policy"] == CSP
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "Strict-Transport-Security" not in headers  # plain HTTP here


@pytest.mark.asyncio
async def test_headers_stay_off_other_routes(rig: Rig) -> None:
    status, _, resp = await rig.get("/v1/nothing")
    assert status == 404
    assert "Content-Security-Policy" not in resp.headers


# ------------------------------------------------------------------------ the form


@pytest.mark.asyncio
async def test_form_shows_payment_and_accessible_fields(rig: Rig) -> None:
    token = rig.fake.add(merchant="Acme & Sons <Ltd>", purpose='Invoice "A-7"')
    status, text, resp = await rig.get(f"/pay/{token}")
    assert status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="merchant">Acme &amp; Sons &lt;Ltd&gt;<' in text  # escaped
    assert 'id="purpose">Invoice &quot;A-7&quot;<' in text
    assert 'id="amount">£12.50<' in text
    assert '<button id="pay" type="submit">Pay £12.50</button>' in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert 'id="errors" role="alert" aria-live="assertive"' in text
    assert 'method="post" action=""' in text
    assert token not in text  # the form posts to itself: the token is not written out
    for name, autocomplete in [
        ("card_number", "cc-number"),
        ("expiry", "cc-exp"),
        ("cvv", "cc-csc"),
        ("postal_code", "postal-code"),
    ]:
        assert f'<label for="{name}">' in text
        tag = re.search(rf'<input id="{name}"[^>]*>', text)
        assert tag is not None, name
        assert f'autocomplete="{autocomplete}"' in tag.group(0)
        assert f'name="{name}"' in tag.group(0)
        assert f"{name}_error" in tag.group(0)  # aria-describedby
        if name != "postal_code":
            assert 'inputmode="numeric"' in tag.group(0)
        assert f'id="{name}_error" aria-live="polite"' in text
    no_values_echoed(text)


@pytest.mark.asyncio
async def test_form_asks_only_for_the_profiles_fields(rig: Rig) -> None:
    token = rig.fake.add(fields=("card_number", "expiry", "cvv"), currency="CHF")
    _, text, _ = await rig.get(f"/pay/{token}")
    assert 'id="postal_code"' not in text
    assert "12.50 CHF" in text
    csrf = CSRF_RE.search(text)
    assert csrf is not None
    status, text, _ = await rig.submit(token, csrf.group(1), **card_form(postal_code="x"))
    assert status == 200 and 'data-result="succeeded"' in text
    assert rig.fake.sessions["pay_a"].submits == [(16, 4, 3, None)]


@pytest.mark.asyncio
async def test_csrf_cookie_is_strict_httponly_and_scoped_to_the_link(rig: Rig) -> None:
    token = rig.fake.add()
    _, _, resp = await rig.get(f"/pay/{token}")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("pay_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert f"Path=/pay/{token}" in cookie
    assert "Secure" not in cookie  # plain HTTP in this test; set over TLS


@pytest.mark.asyncio
async def test_behind_a_trusted_tls_proxy() -> None:
    fake = FakePageService()
    token = fake.add()
    app = web.Application()
    add_hosted_page(app, fake, today=lambda: TODAY, trust_forwarded=True)
    async with TestClient(TestServer(app)) as client:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
        async with client.get(f"/pay/{token}", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
            assert "Secure" in resp.headers["Set-Cookie"]
        async with client.get("/pay/" + "Q" * 44, headers=headers) as resp:
            assert resp.status == 404
        assert list(app[HOSTED_PAGE]._bad_ip._hits) == ["198.51.100.7"]  # the client's address


@pytest.mark.asyncio
async def test_second_tab_keeps_the_first_tabs_token(rig: Rig) -> None:
    token = rig.fake.add()
    first = await rig.open(token)
    second = await rig.open(token)
    assert first == second


# ------------------------------------------------------------------------ submit without JS


@pytest.mark.asyncio
async def test_submit_without_javascript_succeeds(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 200
    assert 'id="result" class="succeeded" data-result="succeeded"' in text
    assert "Payment successful" in text
    assert "£12.50" in text and "Acme" in text
    assert rig.fake.sessions["pay_a"].submits == [(16, 4, 3, 5)]
    assert rig.page.count("submitted") == 1
    if "reference" in rig.fake.sessions["pay_a"].view.__dataclass_fields__:
        assert '<span id="reference">ref_sandbox_abcdef</span>' in text
    assert_no_leak(*rig.seen)


@pytest.mark.asyncio
async def test_expiry_forms_accepted(rig: Rig) -> None:
    for i, expiry in enumerate(("0829", "08 / 29", "08/2029", "08-29")):
        token = rig.fake.add(f"pay_{'abcd'[i]}")
        csrf = await rig.open(token)
        status, text, _ = await rig.submit(token, csrf, **card_form(expiry=expiry))
        assert status == 200, expiry
        assert 'data-result="succeeded"' in text


@pytest.mark.asyncio
async def test_declined_shows_a_plain_reason_and_no_card_data(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    status, text, _ = await rig.submit(token, csrf, **card_form(DECLINE))
    assert status == 200
    assert 'data-result="declined"' in text
    assert "Your card issuer declined the payment." in text
    assert "No money has been taken" in text
    assert DECLINE[-4:] not in text
    assert_no_leak(*rig.seen)


@pytest.mark.asyncio
async def test_every_problem_is_listed_and_nothing_typed_comes_back(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    bad = {
        "card_number": "4111 1111 1111 1112",  # Luhn
        "expiry": "13/29",
        "cvv": "73",
        "postal_code": "9",
    }
    status, text, _ = await rig.submit(token, csrf, **bad)
    assert status == 422
    assert "Please correct these 4:" in text
    assert MESSAGES["card_number"][CardError.LUHN_FAILED] in text
    assert MESSAGES["expiry"][CardError.BAD_MONTH] in text
    assert MESSAGES["cvv"][CardError.WRONG_CVV_LENGTH] in text
    assert MESSAGES["postal_code"][CardError.BAD_POSTAL_CODE] in text
    for name in ("card_number", "expiry", "cvv", "postal_code"):
        assert re.search(rf'<input id="{name}"[^>]*aria-invalid="true"', text), name
    no_values_echoed(text)
    assert "4111" not in text and "1112" not in text
    assert rig.fake.sessions["pay_a"].submits == []  # never reached the service
    # the link still works: correct it and pay
    csrf = CSRF_RE.search(text)
    assert csrf is not None
    status, text, _ = await rig.submit(token, csrf.group(1), **card_form())
    assert 'data-result="succeeded"' in text


@pytest.mark.parametrize(
    ("over", "field", "code"),
    [
        ({"card_number": ""}, "card_number", CardError.EMPTY),
        ({"card_number": "4111x"}, "card_number", CardError.NOT_DIGITS),
        ({"card_number": "9111111111111111"}, "card_number", CardError.UNKNOWN_BRAND),
        ({"card_number": "41111111111111"}, "card_number", CardError.WRONG_LENGTH),
        ({"card_number": "4" * 300}, "card_number", CardError.NOT_DIGITS),
        ({"expiry": "0125"}, "expiry", CardError.EXPIRED),
        ({"expiry": "0199"}, "expiry", CardError.EXPIRED),  # 1999
        ({"expiry": "0147"}, "expiry", CardError.TOO_FAR_AHEAD),
        ({"cvv": "7391"}, "cvv", "wrong_cvv_length_other"),  # Visa: 3 digits
        ({"postal_code": ""}, "postal_code", CardError.EMPTY),
    ],
)
@pytest.mark.asyncio
async def test_one_problem(rig: Rig, over: dict[str, str], field: str, code: str) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    status, text, _ = await rig.submit(token, csrf, **card_form(**over))
    assert status == 422
    assert "Please correct this:" in text
    assert f'id="{field}_error" aria-live="polite">{MESSAGES[field][code]}<' in text
    no_values_echoed(text)


@pytest.mark.asyncio
async def test_service_refusal_names_the_field(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.fail_submit = ServiceError(422, "luhn_failed", "the card number fails")
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 422
    assert MESSAGES["card_number"][CardError.LUHN_FAILED] in text
    rig.fake.fail_submit = CardValidationError(CardError.EXPIRED, "expiry")
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 422
    assert MESSAGES["expiry"][CardError.EXPIRED] in text
    rig.fake.fail_submit = ServiceError(409, "wrong_state", "the payment session has finished")
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 409
    assert 'id="unavailable"' in text


@pytest.mark.asyncio
async def test_a_failure_holding_the_card_is_logged_by_type_only(
    rig: Rig, logs: LogCapture
) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.fail_submit = RuntimeError(f"connector said {VISA} {CARDS[VISA][1]}")
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 500
    assert 'id="failure"' in text
    assert "RuntimeError" in logs.text()
    assert_no_leak(logs.text(), *rig.seen)


@pytest.mark.asyncio
async def test_a_double_click_without_javascript_shows_the_one_outcome(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.gate = asyncio.Event()
    first = asyncio.create_task(rig.submit(token, csrf, **card_form()))
    await until(lambda: rig.fake.sessions["pay_a"].submits != [])
    second = asyncio.create_task(rig.submit(token, csrf, **card_form()))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the first one's answer
    rig.fake.gate.set()
    (s1, t1, _), (s2, t2, _) = await first, await second
    assert (s1, s2) == (200, 200)
    assert 'data-result="succeeded"' in t1 and t1 == t2
    assert len(rig.fake.sessions["pay_a"].submits) == 1
    assert rig.page.count("resubmitted") == 1
    # afterwards the link is spent: the plain page
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert (status, text) == (404, INVALID_LINK_PAGE.decode())


@pytest.mark.asyncio
async def test_a_second_post_after_a_failed_first_goes_the_normal_way(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.gate = asyncio.Event()
    rig.fake.fail_late = RuntimeError("provider down")
    first = asyncio.create_task(rig.submit(token, csrf, **card_form()))
    await until(lambda: rig.fake.sessions["pay_a"].submits != [])
    second = asyncio.create_task(rig.submit(token, csrf, **card_form()))
    other = await rig.open(rig.fake.add("pay_b"))
    forged = await rig.submit(token, other, **card_form())  # no outcome without its CSRF
    assert forged[:2] == (404, INVALID_LINK_PAGE.decode())
    rig.fake.gate.set()
    status, text, _ = await first
    assert status == 500 and 'id="failure"' in text
    status, text, _ = await second  # the link is spent: the plain page, not a hang
    assert (status, text) == (404, INVALID_LINK_PAGE.decode())
    assert rig.page.count("resubmitted") == 0


@pytest.mark.asyncio
async def test_processing_page_when_the_answer_is_not_final(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.answer = replace(rig.fake.sessions["pay_a"].view, state="processing")
    status, text, _ = await rig.submit(token, csrf, **card_form())
    assert status == 200
    assert 'data-result="processing"' in text
    assert "do not pay again" in text


@pytest.mark.asyncio
async def test_a_finished_session_shows_its_result(rig: Rig) -> None:
    token = rig.fake.add()
    s = rig.fake.sessions["pay_a"]
    s.view = replace(s.view, state="finished", result="cancelled", error="cancelled")
    status, text, _ = await rig.get(f"/pay/{token}")
    assert status == 200
    assert 'data-result="cancelled"' in text
    assert 'id="payform"' not in text


# ------------------------------------------------------------------------ CSRF


@pytest.mark.asyncio
async def test_submit_without_or_with_a_wrong_csrf_token_is_refused(rig: Rig) -> None:
    token = rig.fake.add()
    other = rig.fake.add("pay_b")
    csrf = await rig.open(token)
    other_csrf = await rig.open(other)
    cases = [
        None,  # no field
        "",
        csrf[:-2] + "xx",  # wrong MAC
        other_csrf,  # another link's token (its cookie is not sent here either)
        "x" * 500,
    ]
    for sent in cases:
        status, text, _ = await rig.submit(token, sent, **card_form())
        assert status == 403, sent
        assert "Nothing was charged" in text
        assert 'id="payform"' in text
        no_values_echoed(text)
    assert rig.fake.sessions["pay_a"].submits == []
    assert rig.page.count("bad_csrf") == len(cases)
    # no cookie at all, right field
    rig.client.session.cookie_jar.clear()
    status, _, _ = await rig.submit(token, csrf, **card_form())
    assert status == 403
    assert rig.fake.sessions["pay_a"].submits == []
    # the 403 page set a fresh cookie and carries its token: that one works
    _, text, _ = await rig.submit(token, None, **card_form())
    m = CSRF_RE.search(text)
    assert m is not None
    status, text, _ = await rig.submit(token, m.group(1), **card_form())
    assert status == 200 and 'data-result="succeeded"' in text


@pytest.mark.asyncio
async def test_progress_needs_the_csrf_header(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    body = {"field": "card_number", "digits": 3, "brand": "visa"}
    for sent in (None, "", csrf + "x"):
        status, text, _ = await rig.progress(token, sent, body)
        assert status == 403, sent
        assert json.loads(text)["error"]["code"] == "bad_csrf"
    status, _, _ = await rig.progress(token, csrf, body, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert rig.fake.sessions["pay_a"].digits == {}
    status, _, _ = await rig.progress(token, csrf, body, headers={"Sec-Fetch-Site": "same-origin"})
    assert status == 204


@pytest.mark.asyncio
async def test_a_cookie_from_another_link_does_not_open_this_one(rig: Rig) -> None:
    a = rig.fake.add()
    b = rig.fake.add("pay_b")
    csrf_a = await rig.open(a)
    # the attacker copies link A's cookie and token to link B's path
    rig.client.session.cookie_jar.update_cookies(
        {"pay_csrf": csrf_a}, rig.client.make_url(f"/pay/{b}")
    )
    status, _, _ = await rig.submit(b, csrf_a, **card_form())
    assert status == 403
    status, _, _ = await rig.progress(b, csrf_a, {"field": "cvv", "digits": 1, "brand": None})
    assert status == 403
    assert rig.fake.sessions["pay_b"].submits == []


# ------------------------------------------------------------------------ link abuse


@pytest.mark.asyncio
async def test_every_bad_link_gets_the_same_plain_page(rig: Rig) -> None:
    good = rig.fake.add(merchant="Acme Widgets", purpose="Order seven")
    other = rig.fake.add("pay_b", merchant="Acme Widgets", purpose="Order seven")
    expired = rig.fake.add("pay_c", ttl_s=10)
    used = rig.fake.add("pay_d")
    csrf = await rig.open(used)
    status, _, _ = await rig.submit(used, csrf, **card_form())
    assert status == 200
    rig.fake.now = 20.0  # pay_c's link expired
    bad = {
        "unknown": "Q" * 44,
        "tampered": rig.fake.tamper(good),
        "other session's": rig.fake.splice(good, other),
        "expired": expired,
        "used (GET)": used,
        "short": "abc",
        "long": "a" * 600,
    }
    bodies = set()
    for case, token in bad.items():
        status, text, resp = await rig.get(f"/pay/{token}")
        assert status == 404, case
        assert "Set-Cookie" not in resp.headers, case
        bodies.add(text)
    # reused: a second submit of a paid link, with its own valid CSRF cookie
    status, text, _ = await rig.submit(used, csrf, **card_form())
    assert status == 404
    bodies.add(text)
    status, text, _ = await rig.submit(rig.fake.tamper(good), csrf, **card_form())
    assert status == 404
    bodies.add(text)
    assert bodies == {INVALID_LINK_PAGE.decode()}
    page = INVALID_LINK_PAGE.decode()
    assert "This payment link is not valid" in page
    for secret in ("Acme", "Widgets", "Order", "12.50", "£", "pay_", "expired", "used"):
        if secret == "expired":
            assert "It may have expired or already been used" in page  # one sentence for all
            continue
        if secret == "used":
            continue
        assert secret not in page, secret
    assert rig.page.count("bad_link") == len(bad) + 2
    assert rig.fake.sessions["pay_a"].submits == []


@pytest.mark.asyncio
async def test_progress_with_a_bad_link_is_one_answer(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    rig.fake.links[token[:22]].used = True
    status, text, _ = await rig.progress(token, csrf, {"field": "cvv", "digits": 1, "brand": None})
    assert status == 404
    assert json.loads(text) == {
        "error": {"code": "link_not_valid", "message": "This payment link is not valid"}
    }


# ------------------------------------------------------------------------ progress


@pytest.mark.asyncio
async def test_progress_reports_counts_to_the_session(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    for n in range(1, 5):
        status, text, _ = await rig.progress(
            token, csrf, {"field": "card_number", "digits": n, "brand": "visa"}
        )
        assert status == 204, text
    await rig.progress(token, csrf, {"field": "expiry", "digits": 2, "brand": None})
    session = rig.fake.sessions["pay_a"]
    assert session.digits == {"card_number": 4, "expiry": 2}
    assert session.brand == "visa"
    assert session.view.state == "customer_active"
    assert rig.page.count("progress") == 5


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"field": "card_number", "digits": 4, "brand": None, "value": "4111"}, 422),
        ({"field": "pin", "digits": 4, "brand": None}, 422),
        ({"field": "cvv", "digits": 20, "brand": None}, 422),
        ({"field": "cvv", "digits": -1, "brand": None}, 422),
        ({"field": "cvv", "digits": "3", "brand": None}, 422),
        ({"field": "cvv", "digits": True, "brand": None}, 422),
        ({"field": "cvv", "digits": 3, "brand": "visa"}, 422),
        ({"field": "card_number", "digits": 3, "brand": "acme"}, 422),
        ([1, 2], 422),
        ("not json", 422),
        (b"{" * 600, 422),
    ],
)
@pytest.mark.asyncio
async def test_progress_bodies_refused(rig: Rig, body: Any, status: int) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    got, text, _ = await rig.progress(token, csrf, body)
    assert got == status, text
    assert json.loads(text)["error"]["code"] == "invalid_body"
    assert "4111" not in text
    assert rig.fake.sessions["pay_a"].digits == {}


@pytest.mark.asyncio
async def test_progress_needs_json(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    status, _, _ = await rig.progress(
        token,
        csrf,
        "field=cvv&digits=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415


@pytest.mark.asyncio
async def test_progress_service_refusal_passes_through(rig: Rig) -> None:
    token = rig.fake.add(fields=("card_number", "expiry", "cvv"))
    csrf = await rig.open(token)
    status, text, _ = await rig.progress(
        token, csrf, {"field": "postal_code", "digits": 1, "brand": None}
    )
    assert status == 422
    assert json.loads(text)["error"]["code"] == "bad_field"


# ------------------------------------------------------------------------ rate limits


def test_rate_limiter_window_and_memory() -> None:
    lim = RateLimiter(3, 10.0, max_keys=2)
    assert [lim.hit("a", t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert lim.hit("a", 3.0) == pytest.approx(7.0)
    assert lim.hit("a", 10.5) == 0.0  # the first hit left the window
    lim.hit("b", 11.0)
    lim.hit("c", 11.0)
    assert len(lim) == 2  # "a", least recently used, forgotten
    with pytest.raises(ValueError):
        RateLimiter(0, 1.0)


@pytest.mark.parametrize("rig", [PageLimits(progress_per_token=(5, 60.0))], indirect=True)
@pytest.mark.asyncio
async def test_progress_rate_limited_per_link(rig: Rig) -> None:
    token = rig.fake.add()
    other = rig.fake.add("pay_b")
    csrf = await rig.open(token)
    other_csrf = await rig.open(other)
    body = {"field": "cvv", "digits": 1, "brand": None}
    statuses = [(await rig.progress(token, csrf, body))[0] for _ in range(7)]
    assert statuses == [204] * 5 + [429] * 2
    status, text, resp = await rig.progress(token, csrf, body)
    assert status == 429
    assert json.loads(text)["error"]["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await rig.progress(other, other_csrf, body))[0] == 204  # another link is fine
    assert rig.page.count("rate_limited", route="progress", scope="link") == 3
    rig.clock.t += 61
    assert (await rig.progress(token, csrf, body))[0] == 204


@pytest.mark.parametrize("rig", [PageLimits(submit_per_token=(2, 600.0))], indirect=True)
@pytest.mark.asyncio
async def test_submit_rate_limited_per_link(rig: Rig) -> None:
    token = rig.fake.add()
    csrf = await rig.open(token)
    bad = card_form(cvv="1")
    assert (await rig.submit(token, csrf, **bad))[0] == 422
    assert (await rig.submit(token, csrf, **bad))[0] == 422
    status, text, resp = await rig.submit(token, csrf, **card_form())
    assert status == 429
    assert 'id="too_many"' in text
    assert "Retry-After" in resp.headers
    assert rig.fake.sessions["pay_a"].submits == []
    families = {f.name: f for f in rig.page.collect()}
    limited = families["dtmfmask_payment_page_rate_limited_total"]
    assert sum(s.value for s in limited.samples) == 1


@pytest.mark.parametrize("rig", [PageLimits(submit_per_ip=(3, 600.0))], indirect=True)
@pytest.mark.asyncio
async def test_submit_rate_limited_per_ip(rig: Rig) -> None:
    tokens = [rig.fake.add(f"pay_{c}") for c in "abcd"]
    for token in tokens[:3]:
        csrf = await rig.open(token)
        assert (await rig.submit(token, csrf, **card_form(cvv="1")))[0] == 422
    csrf = await rig.open(tokens[3])
    assert (await rig.submit(tokens[3], csrf, **card_form()))[0] == 429
    assert rig.page.count("rate_limited", route="submit", scope="ip") == 1


@pytest.mark.parametrize("rig", [PageLimits(bad_attempts_per_ip=(5, 600.0))], indirect=True)
@pytest.mark.asyncio
async def test_link_guessing_is_cut_off(rig: Rig, logs: LogCapture) -> None:
    good = rig.fake.add()
    for i in range(5):
        status, _, _ = await rig.get(f"/pay/{rig.fake.tamper(good)[:-2]}x{'abcde'[i]}")
        assert status == 404
    # the sixth guess, and now even the good link, from this address: 429
    status, _, resp = await rig.get("/pay/" + "Z" * 44)
    assert status == 429
    assert "Retry-After" in resp.headers
    status, _, _ = await rig.get(f"/pay/{good}")
    assert status == 429
    assert rig.page.count("rate_limited", route="view", scope="bad_attempts") == 2
    assert rig.page.count("bad_link") == 5
    assert '"payment page rate limited"' in logs.text()
    assert good not in logs.text()  # a link is a credential: never logged
    assert "/pay/<link>" in logs.text()  # the access log, as PayLinkAccessLogger writes it
    rig.clock.t += 601
    status, _, _ = await rig.get(f"/pay/{good}")
    assert status == 200


@pytest.mark.parametrize("rig", [PageLimits(view_per_ip=(3, 60.0))], indirect=True)
@pytest.mark.asyncio
async def test_page_views_rate_limited_per_ip(rig: Rig) -> None:
    token = rig.fake.add()
    statuses = [(await rig.get(f"/pay/{token}"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


# ------------------------------------------------------------------------ no leaks


@pytest.mark.asyncio
async def test_no_card_data_in_answers_or_logs(rig: Rig, logs: LogCapture) -> None:
    for i, pan in enumerate([*CARDS, DECLINE]):
        token = rig.fake.add(f"pay_{'abcdef'[i]}")
        csrf = await rig.open(token)
        for n in range(1, len(pan) + 1):
            brand = detect_brand(pan[:n])
            body = {"field": "card_number", "digits": n, "brand": brand}
            assert (await rig.progress(token, csrf, body))[0] == 204
        # first with a mistyped CVV, then right
        status, _, _ = await rig.submit(token, csrf, **card_form(pan, cvv="12"))
        assert status == 422
        m = CSRF_RE.search(rig.seen[-1])
        assert m is not None
        status, _, _ = await rig.submit(token, m.group(1), **card_form(pan))
        assert status == 200
    assert_no_leak(logs.text(), *rig.seen, repr(rig.page), repr(rig.fake.sessions))


# ------------------------------------------------------------------------ pay.js


def _node_checks(script: str) -> Any:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed: pay.js's checks are not compared with cards.py")
    prelude = (
        "const vm = require('vm'); const fs = require('fs');"
        "const ctx = {document: {getElementById: () => null}}; vm.createContext(ctx);"
        f"vm.runInContext(fs.readFileSync({json.dumps(str(STATIC_DIR / 'pay.js'))}, 'utf8'), ctx);"
        "const c = ctx.dtmfmaskPayChecks;"
    )
    out = subprocess.run(
        [node, "-e", prelude + script], capture_output=True, text=True, timeout=20, check=True
    )
    return json.loads(out.stdout)


def _py_code(check: Any, *args: Any) -> str | None:
    try:
        check(*args)
    except CardValidationError as exc:
        return exc.code.value
    return None


def test_pay_js_checks_match_cards_py() -> None:
    numbers = [
        *ALL_CARDS,
        "",
        "4",
        "41111111111111111",
        "4111111111111112",
        "2221000000000009",
        "2720999999999996",
        "2721000000000004",
        "6200000000000005",
        "6200000000000006",  # UnionPay: no Luhn
        "3530111333300000",
        "30569309025904",
        "6759649826438453",
        "501800000009",
        "9111111111111111",
        "4111x",
    ]
    prefixes = ["", "3", "30", "35", "352", "3528", "5", "50", "501", "6", "62", "64", "2", "22"]
    expiries = ["", "0829", "08/29", "1325", "0125", "0126", "0199", "0146", "0147", "08/2029"]
    cvvs = [("", None), ("12", None), ("123", None), ("1234", None), ("123", "amex")]
    cvvs += [("1234", "amex"), ("1234", "visa"), ("12a", "visa")]
    postals = ["", "12", "94107", "SW1A 1AA", "a-b", "-ab", "12345678901", "AB!"]
    script = (
        "const today = new Date(2026, 0, 15);"
        "const brandOf = n => (c.detectBrand(n) || [null])[0];"
        "const spec = b => b ? c.detectBrand({visa: '4', amex: '34'}[b]) : null;"
        f"const out = {{"
        f"numbers: {json.dumps(numbers)}.map(c.checkNumber),"
        f"brands: {json.dumps(prefixes)}.map(brandOf),"
        f"expiries: {json.dumps(expiries)}.map(e => c.checkExpiry(e, today)),"
        f"cvvs: {json.dumps(cvvs)}.map(([v, b]) => c.checkCvv(v, spec(b))),"
        f"postals: {json.dumps(postals)}.map(c.checkPostal),"
        "messages: c.MESSAGES};"
        "process.stdout.write(JSON.stringify(out));"
    )
    js = _node_checks(script)
    assert js["numbers"] == [_py_code(validate_pan, n) for n in numbers]
    assert js["brands"] == [
        (b.value if (b := detect_brand(p)) is not None else None) for p in prefixes
    ]
    py_expiries = [
        _py_code(validate_expiry, e.replace("/", "")[:2] + e.replace("/", "")[-2:], TODAY)
        if len(e.replace("/", "")) == 6
        else _py_code(validate_expiry, e.replace("/", ""), TODAY)
        for e in expiries
    ]
    assert js["expiries"] == py_expiries
    from control_api.cards import CardBrand

    assert js["cvvs"] == [_py_code(validate_cvv, v, CardBrand(b) if b else None) for v, b in cvvs]
    assert js["postals"] == [_py_code(validate_postal_code, p) for p in postals]
    assert js["messages"] == {f: {str(c): m for c, m in ms.items()} for f, ms in MESSAGES.items()}


# ------------------------------------------------------------------------ the real service

PHONE = "+447700900123"
LINK_SECRET = "link-secret-" + "k" * 32


class Wall:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


@dataclass
class Live:
    """The page over a started PaymentService (self-service profile ``link``, the sandbox
    connector, the SMS outbox), mounted on the control API's app as the node does."""

    rig: Rig
    service: PaymentService
    storage: Storage
    calls: FakeCallControl
    wall: Wall
    sent: int = 0

    async def create(self, call_id: str = "call-a") -> tuple[str, str]:
        """A self-service payment on a new call: its id and the token from the SMS."""
        self.calls.add_call(call_id, called=ACME_NUMBER)
        doc, _ = self.service.create_payment(
            ACME_AGENT, call_id, "link", phone=PHONE, details=DETAILS
        )
        await until(lambda: len(self.storage.outbox()) > self.sent)
        self.sent += 1
        body = self.storage.outbox()[-1].body
        m = re.search(r"/pay/([A-Za-z0-9_-]{44})", body)
        assert m is not None
        return str(doc["id"]), m.group(1)

    def agent(self, sid: str) -> dict[str, Any]:
        return self.service.get_payment(ACME_AGENT, sid)


@pytest_asyncio.fixture
async def live() -> AsyncIterator[Live]:
    cfg = replace(make_config(), links=LinksConfig("https://pay.example", LINK_SECRET))
    calls = FakeCallControl()
    wall = Wall()
    storage = Storage(":memory:", now=WALL)
    ids = count()
    service = PaymentService(
        cfg,
        calls,
        storage,
        today=lambda: TODAY,
        wall=wall,
        new_id=lambda: "pay_" + letters(next(ids)),
    )
    service.start()
    app = make_api(service)
    add_hosted_page(app, service, csrf_key=b"k" * 32, today=lambda: TODAY)
    server = TestServer(app)
    await server.start_server(access_log_class=PayLinkAccessLogger)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    rig = Rig(FakePageService(), app[HOSTED_PAGE], client, Clock(), [])
    try:
        yield Live(rig, service, storage, calls, wall)
    finally:
        await client.close()
        await service.stop()
        storage.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("pan", [VISA, AMEX])
async def test_real_service_whole_payment(live: Live, pan: str, logs: LogCapture) -> None:
    sid, token = await live.create()
    assert live.agent(sid)["state"] == "link_sent"
    rig = live.rig
    csrf = await rig.open(token)
    assert 'id="merchant">Acme<' in rig.seen[-1] and "£12.50" in rig.seen[-1]
    assert live.agent(sid)["state"] == "customer_active"  # the agent sees the page opened
    cvv = ALL_CARDS[pan][1]
    typed = {"card_number": len(pan), "expiry": 4, "cvv": len(cvv), "postal_code": len(POSTAL)}
    for name, total in typed.items():
        for n in range(1, total + 1):
            brand = detect_brand(pan[:n]) if name == "card_number" else None
            body = {"field": name, "digits": n, "brand": brand and brand.value}
            status, text, _ = await rig.progress(token, csrf, body)
            assert status == 204, text
            field = next(f for f in live.agent(sid)["fields"] if f["name"] == name)
            assert field["masked"] == "*" * n  # an asterisk per key, as in a guided payment
    assert live.agent(sid)["fields"][0]["brand"] == validate_pan(pan).value
    status, text, _ = await rig.submit(token, csrf, **card_form(pan))
    assert status == 200, text
    assert 'data-result="succeeded"' in text
    view = live.agent(sid)
    assert (view["state"], view["result"]) == ("finished", "succeeded")
    # the link is spent: the page and a second submit get the one plain answer
    status, text, _ = await rig.get(f"/pay/{token}")
    assert (status, text) == (404, INVALID_LINK_PAGE.decode())
    status, text, _ = await rig.submit(token, csrf, **card_form(pan))
    assert (status, text) == (404, INVALID_LINK_PAGE.decode())
    assert token not in logs.text()
    dump = "\n".join(f"{t}: {r!r}" for t, r in live.storage.dump())
    assert_no_leak(logs.text(), dump, json.dumps(view), *rig.seen)


@pytest.mark.asyncio
async def test_real_service_declined_and_refused(live: Live, logs: LogCapture) -> None:
    sid, token = await live.create()
    rig = live.rig
    csrf = await rig.open(token)
    status, text, _ = await rig.submit(token, csrf, **card_form(expiry="0125"))
    assert status == 422
    assert MESSAGES["expiry"][CardError.EXPIRED] in text
    assert live.agent(sid)["state"] == "customer_active"  # refused here: never sent on
    status, text, _ = await rig.submit(token, csrf, **card_form(DECLINE))
    assert status == 200
    assert 'data-result="declined"' in text
    assert "Your card issuer declined the payment." in text
    assert live.agent(sid)["result"] == "declined"
    dump = "\n".join(f"{t}: {r!r}" for t, r in live.storage.dump())
    assert_no_leak(logs.text(), dump, *rig.seen)


@pytest.mark.asyncio
async def test_real_service_link_abuse(live: Live) -> None:
    a, token_a = await live.create("call-a")
    b, token_b = await live.create("call-b")
    _, token_c = await live.create("call-c")
    rig = live.rig
    csrf_c = await rig.open(token_c)
    assert (await rig.submit(token_c, csrf_c, **card_form()))[0] == 200
    last = token_a[-1]
    bad = {
        "tampered": token_a[:-1] + ("A" if last != "A" else "B"),
        "other session's": token_a[:22] + token_b[22:],
        "used": token_c,
        "unknown": "Q" * 44,
    }
    for case, token in bad.items():
        status, text, resp = await rig.get(f"/pay/{token}")
        assert (status, text) == (404, INVALID_LINK_PAGE.decode()), case
        assert "Set-Cookie" not in resp.headers
    live.wall.now += 73 * 3600  # past any link's life
    status, text, _ = await rig.get(f"/pay/{token_b}")
    assert (status, text) == (404, INVALID_LINK_PAGE.decode())
    for sid in (a, b):
        assert live.agent(sid)["state"] in ("link_sent", "finished")  # nobody opened them
    assert rig.page.count("bad_link") == len(bad) + 1


@pytest.mark.asyncio
async def test_real_service_progress_refusals(live: Live) -> None:
    sid, token = await live.create()
    rig = live.rig
    csrf = await rig.open(token)
    status, text, _ = await rig.progress(
        token, csrf, {"field": "expiry", "digits": 9, "brand": None}
    )
    assert status == 422, text
    assert json.loads(text)["error"]["code"] == "bad_progress"
    assert live.agent(sid)["fields"][1]["masked"] == ""
