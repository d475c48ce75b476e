"""The control API: aiohttp routes over :class:`~control_api.service.PaymentService`.

JSON under ``/v1``, bearer tokens from ``profiles.yaml`` (``Authorization: Bearer <token>``),
errors as ``{"error": {"code": "...", "message": "..."}}`` with stable codes (the full list,
with every route and schema, is the OpenAPI document at ``/v1/openapi.json``,
:mod:`control_api.openapi`):

=======  =====================================  ==============================================
method   path                                   what
=======  =====================================  ==============================================
GET      /v1/calls                              the account's calls in progress
GET      /v1/calls/{call_id}                    one call
POST     /v1/calls/{call_id}/hold               hold the caller (hold audio)
POST     /v1/calls/{call_id}/retrieve           back from hold
GET      /v1/profiles                           the payment profiles the account may use
POST     /v1/calls/{call_id}/payments           start a payment (``Idempotency-Key``)
GET      /v1/payments/{id}                      the agent's view; ETag, ``?wait=`` long-poll
PATCH    /v1/payments/{id}/details              amount, currency, billing (POST too)
POST     /v1/payments/{id}/capture              retrieve the caller, start keying
POST     /v1/payments/{id}/fields/{name}/reset  the caller keys that field again
POST     /v1/payments/{id}/process              send to the provider (idempotent)
POST     /v1/payments/{id}/cancel               abandon (before processing)
POST     /v1/payments/{id}/sms                  self-service: send the link (again)
POST     /v1/payments/{id}/switch-to-guided     self-service: end it, start a guided one
POST     /v1/admin/reload                       re-read profiles.yaml (admin role)
GET      /v1/openapi.json                       this API, OpenAPI 3.1 (no token)
GET      /healthz, /readyz                      liveness, readiness (no token)
=======  =====================================  ==============================================

Self-service: ``POST /v1/calls/{call_id}/payments`` with a self-service profile takes
``{"profile", "phone", "amount", "currency", "billing"}``, all but ``profile`` optional:
``phone`` (E.164, 422 ``bad_phone`` otherwise) defaults to the caller's number when it is
one; with the amount the SMS goes at once, without it when the details are set
(``PATCH .../details``) or on ``POST .../sms``.

Status codes: 401 no or wrong token, 403 another account's call or payment (or not admin),
403 ``payments_disabled``, 404 unknown, 409 wrong state, 422 bad input, 304 unchanged.

**Long-poll**: ``GET /v1/payments/{id}?wait=25`` with ``If-None-Match: "<version>"`` (the
ETag of the last answer) returns the moment the version changes, or 304 after ``wait``
seconds (at most 30). Without ``wait`` a matching ``If-None-Match`` is 304 at once.

No card data passes through here: request bodies carry amounts and billing details only
(a billing text that looks like a card number is refused), responses are session views
(asterisks, the last four at most), and error messages never repeat what was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final

import structlog
from aiohttp import web

from control_api.events import BillingDetails, SetDetails
from control_api.openapi import openapi_document
from control_api.profiles import PaymentsConfig, TokenGrant
from control_api.service import MAX_WAIT_S, PaymentService, ServiceError, parse_amount
from sipproxy.config import HostPort

__all__ = ["SERVICE", "make_app", "serve"]

log = structlog.get_logger("control_api.api")

SERVICE: Final = web.AppKey("payment_service", PaymentService)
# account -> (service generation, expiry on the loop clock, body, ETag) of GET /v1/calls
CALLS_CACHE: Final = web.AppKey("calls_cache", dict[str, tuple[int, float, bytes, str]])
CALLS_TTL_S: Final = 1.0
MAX_BODY: Final = 64 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store"}
_BILLING_KEYS: Final = ("name", "address", "postal_code", "country")
_DETAILS_KEYS: Final = ("amount", "currency", "billing")
_CREATE_KEYS: Final = ("profile", "phone", *_DETAILS_KEYS)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ------------------------------------------------------------------------------ plumbing


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dtmfmask"'
    return web.json_response({"error": body}, status=status, headers=headers)


def _json(data: Any, status: int = 200, etag: int | None = None) -> web.Response:
    headers = dict(_NO_STORE)
    if etag is not None:
        headers["ETag"] = f'"{etag}"'
    return web.json_response(data, status=status, headers=headers)


_HTTP_CODES: Final = {
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
    413: ("body_too_large", f"request bodies are at most {MAX_BODY} bytes"),
}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": {code, message}}``; nothing from the request echoed."""
    try:
        return await handler(request)
    except ServiceError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        return _error(exc.status, code, message)
    except Exception as exc:
        log.error(
            "control API request failed",
            method=request.method,
            route=_route_name(request),
            error=type(exc).__name__,
            exc_info=True,
        )
        return _error(500, "internal_error", "the request failed; see the proxy's log")


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "?"


def _service(request: web.Request) -> PaymentService:
    return request.app[SERVICE]


def _grant(request: web.Request) -> TokenGrant:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 1024:
        raise ServiceError(401, "unauthorized", "send Authorization: Bearer <token>")
    grant = _service(request).authenticate(token)
    if grant is None:
        raise ServiceError(401, "unauthorized", "unknown or revoked token")
    return grant


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise ServiceError(422, "invalid_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ServiceError(422, "invalid_body", "the body must be a JSON object")
    return data


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ServiceError(
            422, "invalid_body", f"{where}: unknown key; allowed: {', '.join(allowed)}"
        )


def _text(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ServiceError(422, "invalid_body", f"{where}.{key} must be a string")
    return value


def _etags(header: str | None) -> set[str] | None:
    """The entity tags of ``If-None-Match`` (``*`` kept), weak prefixes dropped."""
    if header is None:
        return None
    tags = set()
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip()
        if tag:
            tags.add(tag)
    return tags


# ------------------------------------------------------------------------------ routes


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if _service(request).ready:
        return _json({"status": "ready"})
    return _error(503, "not_ready", "the payment service is not running")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), headers={"Cache-Control": "max-age=60"})


async def list_calls(request: web.Request) -> web.Response:
    """Every agent UI polls this, and a listing of a few hundred calls costs milliseconds:
    the body is kept per account until anything that shows in it may have changed (the
    service's ``calls_generation``) or ``CALLS_TTL_S`` passes (a new call ringing moves no
    generation), and an unchanged listing is a 304 to ``If-None-Match``."""
    grant = _grant(request)
    service = _service(request)
    cache = request.app[CALLS_CACHE]
    now = asyncio.get_running_loop().time()
    hit = cache.get(grant.account)
    if hit is None or hit[0] != service.calls_generation or hit[1] <= now:
        body = json.dumps({"calls": service.list_calls(grant)}).encode()
        etag = '"calls-' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        hit = cache[grant.account] = (service.calls_generation, now + CALLS_TTL_S, body, etag)
    headers = {**_NO_STORE, "ETag": hit[3]}
    tags = _etags(request.headers.get("If-None-Match")) or set()
    if hit[3] in tags or "*" in tags:
        return web.Response(status=304, headers=headers)
    return web.Response(body=hit[2], content_type="application/json", headers=headers)


async def get_call(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_service(request).get_call(grant, request.match_info["call_id"]))


async def hold_call(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_service(request).hold_call(grant, request.match_info["call_id"]))


async def retrieve_call(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_service(request).retrieve_call(grant, request.match_info["call_id"]))


async def list_profiles(request: web.Request) -> web.Response:
    grant = _grant(request)
    return _json(_service(request).profiles(grant))


def _details(data: dict[str, Any]) -> SetDetails:
    """Amount, currency and billing from a request body (already key-checked)."""
    amount = parse_amount(data.get("amount"))
    if amount is None:
        raise ServiceError(
            422, "bad_amount", 'amount must be a decimal number or string such as "12.50"'
        )
    currency = _text(data, "currency", "body", required=True)
    billing = data.get("billing")
    if not isinstance(billing, dict):
        raise ServiceError(422, "bad_billing", "billing must be an object with a name")
    _check_keys(billing, _BILLING_KEYS, "billing")
    return SetDetails(
        amount,
        currency,
        BillingDetails(
            name=_text(billing, "name", "billing", required=True),
            address=_text(billing, "address", "billing"),
            postal_code=_text(billing, "postal_code", "billing"),
            country=_text(billing, "country", "billing"),
        ),
    )


def _phone(data: dict[str, Any]) -> str | None:
    if data.get("phone") is None:
        return None
    phone = data["phone"]
    if not isinstance(phone, str):
        raise ServiceError(422, "bad_phone", "phone must be an E.164 number such as +447700900123")
    return phone


async def create_payment(request: web.Request) -> web.Response:
    grant = _grant(request)
    data = await _body(request)
    _check_keys(data, _CREATE_KEYS, "body")
    profile = _text(data, "profile", "body", required=True)
    key = request.headers.get("Idempotency-Key")
    details = _details(data) if any(k in data for k in _DETAILS_KEYS) else None
    doc, created = _service(request).create_payment(
        grant,
        request.match_info["call_id"],
        profile,
        key,
        phone=_phone(data),
        details=details,
    )
    response = _json(doc, 201 if created else 200, etag=doc["version"])
    response.headers["Location"] = f"/v1/payments/{doc['id']}"
    return response


async def get_payment(request: web.Request) -> web.StreamResponse:
    grant = _grant(request)
    sid = request.match_info["payment_id"]
    service = _service(request)
    wait = _wait(request)
    tags = _etags(request.headers.get("If-None-Match"))
    doc = service.get_payment(grant, sid)
    seen: int | None = None
    if tags is not None and (f'"{doc["version"]}"' in tags or "*" in tags):
        seen = doc["version"]
    elif "version" in request.query:
        seen = _int_query(request, "version")
    if seen is not None and wait > 0:
        doc = await service.wait_payment(grant, sid, seen, wait)
    if seen is not None and doc["version"] == seen:
        return web.Response(status=304, headers={**_NO_STORE, "ETag": f'"{doc["version"]}"'})
    return _json(doc, etag=doc["version"])


def _wait(request: web.Request) -> float:
    text = request.query.get("wait")
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0 or len(text) > 16:
        raise ServiceError(422, "bad_wait", f"wait must be seconds, 0-{MAX_WAIT_S:g}")
    return min(wait, MAX_WAIT_S)


def _int_query(request: web.Request, name: str) -> int:
    text = request.query[name]
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise ServiceError(422, f"bad_{name}", f"{name} must be a whole number")
    return int(text)


async def set_details(request: web.Request) -> web.Response:
    grant = _grant(request)
    data = await _body(request)
    _check_keys(data, _DETAILS_KEYS, "body")
    details = _details(data)
    doc = _service(request).set_details(grant, request.match_info["payment_id"], details)
    return _json(doc, etag=doc["version"])


async def start_capture(request: web.Request) -> web.Response:
    grant = _grant(request)
    doc = _service(request).start_capture(grant, request.match_info["payment_id"])
    return _json(doc, etag=doc["version"])


async def reset_field(request: web.Request) -> web.Response:
    grant = _grant(request)
    doc = _service(request).reset_field(
        grant, request.match_info["payment_id"], request.match_info["field"]
    )
    return _json(doc, etag=doc["version"])


async def process(request: web.Request) -> web.Response:
    grant = _grant(request)
    doc = _service(request).process(grant, request.match_info["payment_id"])
    return _json(doc, etag=doc["version"])


async def cancel(request: web.Request) -> web.Response:
    grant = _grant(request)
    doc = _service(request).cancel(grant, request.match_info["payment_id"])
    return _json(doc, etag=doc["version"])


async def send_link(request: web.Request) -> web.Response:
    grant = _grant(request)
    data = await _body(request)
    _check_keys(data, ("phone",), "body")
    doc = _service(request).send_link(grant, request.match_info["payment_id"], _phone(data))
    return _json(doc, etag=doc["version"])


async def switch_to_guided(request: web.Request) -> web.Response:
    grant = _grant(request)
    data = await _body(request)
    _check_keys(data, ("profile",), "body")
    profile = _text(data, "profile", "body") or None
    doc = _service(request).switch_to_guided(grant, request.match_info["payment_id"], profile)
    response = _json(doc, 201, etag=doc["version"])
    response.headers["Location"] = f"/v1/payments/{doc['id']}"
    return response


async def admin_reload(request: web.Request) -> web.Response:
    grant = _grant(request)
    if grant.role != "admin":
        raise ServiceError(403, "forbidden", "reloading the configuration needs an admin token")
    try:
        config = _service(request).reload_file(actor=grant)
    except ValueError as exc:  # ConfigError: file, line, key and why; never a token
        problems = [str(p) for p in getattr(exc, "problems", ())] or [str(exc)]
        return _error(
            422,
            "config_invalid",
            "the file has problems; the running configuration is unchanged",
            problems=problems,
        )
    return _json(
        {
            "reloaded": True,
            "source": config.source,
            "accounts": len(config.accounts),
            "profiles": len(config.profiles),
        }
    )


# ------------------------------------------------------------------------------- the app


def make_app(service: PaymentService, config: PaymentsConfig | None = None) -> web.Application:
    """The control API application over ``service`` (started separately, see
    :meth:`PaymentService.start`). ``config``, if given and not the service's, is applied
    with :meth:`PaymentService.reload` first."""
    if config is not None and config is not service.config:
        service.reload(config)
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[SERVICE] = service
    app[CALLS_CACHE] = {}
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/v1/calls", list_calls)
    r.add_get("/v1/calls/{call_id}", get_call)
    r.add_post("/v1/calls/{call_id}/hold", hold_call)
    r.add_post("/v1/calls/{call_id}/retrieve", retrieve_call)
    r.add_post("/v1/calls/{call_id}/payments", create_payment)
    r.add_get("/v1/profiles", list_profiles)
    r.add_get("/v1/payments/{payment_id}", get_payment)
    r.add_patch("/v1/payments/{payment_id}/details", set_details)
    r.add_post("/v1/payments/{payment_id}/details", set_details)
    r.add_post("/v1/payments/{payment_id}/capture", start_capture)
    r.add_post("/v1/payments/{payment_id}/fields/{field}/reset", reset_field)
    r.add_post("/v1/payments/{payment_id}/process", process)
    r.add_post("/v1/payments/{payment_id}/cancel", cancel)
    r.add_post("/v1/payments/{payment_id}/sms", send_link)
    r.add_post("/v1/payments/{payment_id}/switch-to-guided", switch_to_guided)
    r.add_post("/v1/admin/reload", admin_reload)
    return app


async def serve(app: web.Application, listen: HostPort) -> tuple[web.AppRunner, int]:
    """Run ``app`` on ``listen`` (``payments.api.listen``); returns the runner (``await
    runner.cleanup()`` to stop) and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port)
    await site.start()
    port = listen.port
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    return runner, port
