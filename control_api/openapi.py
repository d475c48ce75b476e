"""The control API's OpenAPI 3.1 document, written as data (served at ``/v1/openapi.json``).

Kept beside :mod:`control_api.api` by hand rather than generated: the routes are few, and a
reader (or the agent-UI developer) gets the error codes, the states and the long-poll rules
in one place. ``tests/control_api/test_api.py`` checks that every route of the app is here
and every error code the service and the session can produce is listed.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from control_api.cards import CardBrand, CardError
from control_api.events import ErrorCode, FieldName, FieldState, ProviderLegState, Result
from control_api.events import SessionState as State
from control_api.session import SessionErrorCode

__all__ = ["API_ERROR_CODES", "openapi_document"]

API_ERROR_CODES: Final[dict[str, str]] = {
    "unauthorized": "401: no bearer token, or one no account has",
    "forbidden": "403: the call or payment belongs to another account, or the route needs "
    "an admin token",
    "payments_disabled": "403: the payments feature is switched off for the account",
    "not_found": "404: no such route",
    "call_not_found": "404: no such call in progress (or no account claims its number)",
    "payment_not_found": "404: no such payment session",
    "method_not_allowed": "405: the route does not take this method",
    "session_in_progress": "409: the call already has a live payment session",
    "call_not_up": "409: the call is not answered yet (payments are for calls that are up)",
    "wrong_state": "409: the session's state does not allow this action",
    "no_config_file": "409: the configuration was not read from a file (reload)",
    "body_too_large": "413: the body is over 64 KiB",
    "invalid_json": "422: the body is not JSON",
    "invalid_body": "422: a key is unknown, missing or of the wrong type",
    "unknown_profile": "422: no such payment profile for the account",
    "bad_phone": "422: phone is not an E.164 number (+ and 7-15 digits, no spaces)",
    "phone_required": "422: self-service: no phone number known to send the link to",
    "no_guided_profile": "422: switch-to-guided: the account has no guided profile",
    "bad_brand": "422: hosted page: no such card brand in a progress report",
    "bad_idempotency_key": "422: Idempotency-Key is not 1-200 printable ASCII characters",
    "idempotency_key_reused": "422: the Idempotency-Key was used for another request",
    "bad_wait": "422: wait is not a number of seconds 0-30",
    "bad_version": "422: version is not a whole number",
    "config_invalid": "422: the configuration file has problems (listed); nothing changed",
    "http_error": "4xx: another HTTP-level refusal (e.g. a malformed request)",
    "internal_error": "500: a fault; the proxy's log has it",
    "not_ready": "503: the payment service is not running (readyz)",
    **{
        c.value: f"422: {c.value.replace('_', ' ')} (set details)"
        for c in SessionErrorCode
        if c is not SessionErrorCode.WRONG_STATE
    },
    "unknown_field": "422: the profile does not take that field (field reset, hosted page)",
    "details_required": "422: set amount, currency and billing first (capture, send link)",
    "bad_progress": "422: hosted page: a field's character count is out of range",
}
"""Every ``error.code`` the API answers with, and when."""


def _enum(values: Any, description: str = "", nullable: bool = False) -> dict[str, Any]:
    items: list[Any] = [v.value if hasattr(v, "value") else v for v in values]
    schema: dict[str, Any] = {"type": "string", "enum": items}
    if nullable:
        schema = {"type": ["string", "null"], "enum": [*items, None]}
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["string", "null"] if nullable else "string", "description": description}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


_SCHEMAS: Final[dict[str, Any]] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "code": _enum(API_ERROR_CODES, "stable, machine-readable"),
                    "message": _string("a sentence for people; never repeats the request"),
                    "problems": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "config_invalid only: file:line:column: key: why",
                    },
                },
                ["code", "message"],
            )
        }
    ),
    "Call": _obj(
        {
            "id": _string("the call's id (the caller leg's SIP Call-ID)"),
            "interaction_type": _enum(["call"], "payments are for calls only"),
            "payee": _string("the caller's display name, else their number"),
            "caller": _string("same as payee"),
            "called": _string("the dialled number (which account the call belongs to)"),
            "state": _enum(["ringing", "up"]),
            "started_at": {"type": "number", "description": "unix time"},
            "held": {"type": "boolean", "description": "the caller hears hold audio"},
            "provider_leg": _enum(["none", "joining", "joined"]),
            "payment": _string("the live payment session's id, if any", nullable=True),
            "profiles": {
                "type": "array",
                "items": {"type": "string"},
                "description": "profiles the account may use on this call",
            },
        }
    ),
    "CallList": _obj({"calls": {"type": "array", "items": _ref("Call")}}),
    "Profile": _obj(
        {
            "name": _string("the profile's id"),
            "method": _enum(["guided", "self_service"]),
            "purpose": _string("shown to the agent"),
            "provider": _string("the payment provider's id"),
            "currency": _string("ISO 4217"),
            "min_amount": _string("decimal string"),
            "max_amount": _string("decimal string"),
            "fields": {"type": "array", "items": _enum(FieldName)},
            "masking": _enum(["tone", "silence", "noise"]),
            "show_last_four": {"type": "boolean"},
        }
    ),
    "ProfileList": _obj(
        {
            "payments_enabled": {"type": "boolean"},
            "profiles": {"type": "array", "items": _ref("Profile")},
        }
    ),
    "Field": _obj(
        {
            "name": _enum(FieldName),
            "state": _enum(FieldState),
            "digits": {"type": "integer", "description": "how many digits were keyed"},
            "masked": _string("asterisks; after a valid card number its last four at most"),
            "brand": _enum(CardBrand, nullable=True),
            "valid": {"type": ["boolean", "null"], "description": "null until the field ends"},
            "error": _enum(CardError, "why the field was refused", nullable=True),
        }
    ),
    "Billing": _obj(
        {
            "name": _string("cardholder's name (1-200)"),
            "address": _string("up to 500 characters"),
            "postal_code": _string("up to 20 characters"),
            "country": _string("ISO 3166 alpha-2, e.g. GB"),
        },
        ["name"],
    ),
    "Payment": _obj(
        {
            "id": _string("the session id (pay_...)"),
            "call_id": _string("the call it runs on"),
            "profile": _string("the profile's id"),
            "method": _enum(["guided", "self_service"]),
            "state": _enum(
                State,
                "guided: created -> provider_joining -> awaiting_details -> capturing -> "
                "ready -> processing -> finished; self-service: created -> link_sent "
                "(sms_failed) -> customer_active -> processing -> finished; any state may go "
                "to finished",
            ),
            "fields": {"type": "array", "items": _ref("Field")},
            "required": {
                "type": "array",
                "items": _enum(FieldName),
                "description": "fields not yet complete",
            },
            "result": _enum(Result, nullable=True),
            "error": _enum(ErrorCode, "why it did not succeed", nullable=True),
            "reference": _string("the provider's reference", nullable=True),
            "amount": _string("decimal string", nullable=True),
            "currency": _string("ISO 4217"),
            "billing": {"oneOf": [_ref("Billing"), {"type": "null"}]},
            "caller_held": {"type": "boolean"},
            "provider_leg": _enum(ProviderLegState),
            "version": {
                "type": "integer",
                "description": "grows on every change; the ETag is this number in quotes",
            },
            "sms": {
                "oneOf": [_ref("Sms"), {"type": "null"}],
                "description": "self-service only: the link's SMS (null before the first)",
            },
            "link_expires_at": {
                "type": ["number", "null"],
                "description": "self-service only: unix time the link expires",
            },
        },
        [
            "id",
            "call_id",
            "profile",
            "method",
            "state",
            "fields",
            "required",
            "result",
            "error",
            "reference",
            "amount",
            "currency",
            "billing",
            "caller_held",
            "provider_leg",
            "version",
        ],
    ),
    "Sms": _obj(
        {
            "state": _enum(["queued", "sent", "failed"], "queued: in the outbox or on its way"),
            "error": _enum(
                ["timeout", "unreachable", "rejected", "gateway_error", "outbox_error"],
                "why it failed",
                nullable=True,
            ),
            "to": _string("the number, masked: +44*******123"),
        }
    ),
    "CreatePayment": _obj(
        {
            "profile": _string("a profile id from GET /v1/profiles"),
            "phone": _string(
                "self-service: E.164 number for the link (default: the caller's number if "
                "it is E.164)"
            ),
            "amount": {
                "type": ["string", "number"],
                "description": "self-service: with currency and billing, sends the link at once",
            },
            "currency": _string("self-service: the profile's currency"),
            "billing": _ref("Billing"),
        },
        ["profile"],
    ),
    "SendLink": _obj({"phone": _string("E.164; default: the number the link went to before")}, []),
    "SwitchToGuided": _obj(
        {"profile": _string("a guided profile; default: same provider and currency")}, []
    ),
    "Details": _obj(
        {
            "amount": {
                "type": ["string", "number"],
                "description": 'in major units, e.g. "12.50"; within the profile\'s limits',
            },
            "currency": _string("must be the profile's currency"),
            "billing": _ref("Billing"),
        }
    ),
    "Reloaded": _obj(
        {
            "reloaded": {"type": "boolean"},
            "source": _string("the file read"),
            "accounts": {"type": "integer"},
            "profiles": {"type": "integer"},
        }
    ),
    "Status": _obj({"status": _enum(["ok", "ready"])}),
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        401: "no or wrong bearer token",
        403: "another account's call or payment; payments_disabled; not admin",
        404: "unknown call or payment",
        409: "wrong state",
        422: "bad input",
    }
    return {
        str(c): {"description": words[c], "content": _json_content(_ref("Error"))} for c in codes
    }


_PAYMENT_ID: Final = {
    "name": "payment_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_CALL_ID: Final = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ETAG: Final = {"ETag": {"schema": {"type": "string"}, "description": 'the version: "7"'}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *codes: int,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    public: bool = False,
    description: str = "",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*codes)}}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(body)}
    if public:
        op["security"] = []
    else:
        op["responses"].update(_errors(401))
    return op


def _ok(schema: str, status: int = 200, etag: bool = False, why: str = "OK") -> dict[str, Any]:
    response: dict[str, Any] = {"description": why, "content": _json_content(_ref(schema))}
    if etag:
        response["headers"] = dict(_ETAG)
    return {str(status): response}


def _payment_op(
    summary: str, description: str = "", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An agent's action on one payment: the payment's view back, with its ETag."""
    return _op(
        summary,
        _ok("Payment", etag=True),
        403,
        404,
        409,
        422,
        params=[_PAYMENT_ID],
        body=body,
        description=description,
    )


def _payment_action(summary: str, description: str = "") -> dict[str, Any]:
    return {"post": _payment_op(summary, description)}


_DETAILS_OP: Final = _payment_op(
    "Set amount, currency and billing details",
    "Allowed from provider_joining to ready. Billing text that looks like a card "
    "number is refused (billing_contains_card_number): the caller keys the card.",
    _ref("Details"),
)

_PATHS: Final[dict[str, Any]] = {
    "/healthz": {"get": _op("Liveness", _ok("Status"), public=True)},
    "/readyz": {
        "get": _op(
            "Readiness (503 not_ready while stopped or storage fails)",
            {**_ok("Status"), "503": {"description": "not ready"}},
            public=True,
        )
    },
    "/v1/openapi.json": {
        "get": _op("This document", {"200": {"description": "OpenAPI 3.1"}}, public=True)
    },
    "/v1/calls": {
        "get": _op(
            "The account's calls in progress",
            {
                **_ok("CallList", etag=True),
                "304": {"description": "unchanged (If-None-Match)", "headers": dict(_ETAG)},
            },
            description="With the ETag of the last answer in If-None-Match, an unchanged "
            "list is a 304. The list may lag a new ringing call by up to a second.",
        )
    },
    "/v1/calls/{call_id}": {
        "get": _op("One call", _ok("Call"), 403, 404, params=[_CALL_ID]),
    },
    "/v1/calls/{call_id}/hold": {
        "post": _op("Hold the caller (hold audio)", _ok("Call"), 403, 404, params=[_CALL_ID])
    },
    "/v1/calls/{call_id}/retrieve": {
        "post": _op("Retrieve the caller from hold", _ok("Call"), 403, 404, params=[_CALL_ID])
    },
    "/v1/calls/{call_id}/payments": {
        "post": _op(
            "Start a payment on the call (guided, or self-service by SMS link)",
            {
                **_ok("Payment", 201, etag=True, why="created; Location names it"),
                **_ok("Payment", 200, etag=True, why="the Idempotency-Key's earlier session"),
            },
            403,
            404,
            409,
            422,
            params=[
                _CALL_ID,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                    "description": "the same key (per account) returns the same session",
                },
            ],
            body=_ref("CreatePayment"),
            description="Guided: the provider is dialled into the call and the caller held at "
            "once. Self-service: the link is sent by SMS to phone as soon as the amount is "
            "known (in this body, or PATCH details later). One live session per call (409 "
            "session_in_progress).",
        )
    },
    "/v1/profiles": {"get": _op("Payment profiles the account may use", _ok("ProfileList"))},
    "/v1/payments/{payment_id}": {
        "get": _op(
            "The agent's view of a payment (poll this)",
            {
                **_ok("Payment", etag=True),
                "304": {"description": "unchanged (If-None-Match)", "headers": dict(_ETAG)},
            },
            403,
            404,
            422,
            params=[
                _PAYMENT_ID,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": 30},
                    "description": "long-poll: with If-None-Match (or version), wait up to "
                    "this many seconds for a change; 304 if none",
                },
                {
                    "name": "version",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer"},
                    "description": "the version already seen (instead of If-None-Match)",
                },
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
        )
    },
    "/v1/payments/{payment_id}/details": {"patch": _DETAILS_OP, "post": _DETAILS_OP},
    "/v1/payments/{payment_id}/capture": _payment_action(
        "Retrieve the caller and start keying", "Needs details set (422 details_required)."
    ),
    "/v1/payments/{payment_id}/fields/{field}/reset": _payment_action(
        "Clear a field so the caller keys it again"
    ),
    "/v1/payments/{payment_id}/process": _payment_action(
        "Send the card to the provider",
        "Idempotent: a repeat while processing or after the result changes nothing.",
    ),
    "/v1/payments/{payment_id}/cancel": _payment_action(
        "Abandon the payment", "Refused once processing started (409 wrong_state)."
    ),
    "/v1/payments/{payment_id}/sms": {
        "post": _payment_op(
            "Self-service: send the payment link by SMS (again)",
            "Allowed in created (once the details are set), link_sent and "
            "sms_failed. A new link is issued and the earlier one stops working; the SMS "
            "state shows in the view (sms).",
            _ref("SendLink"),
        )
    },
    "/v1/payments/{payment_id}/switch-to-guided": {
        "post": _op(
            "Self-service: end it and start a guided payment on the call",
            _ok("Payment", 201, etag=True, why="the new guided session; Location names it"),
            403,
            404,
            409,
            422,
            params=[_PAYMENT_ID],
            body=_ref("SwitchToGuided"),
            description="The self-service session ends cancelled / switched_to_guided; the "
            "amount and billing carry over. 409 call_not_up if the call has ended (the "
            "customer can still pay by the link), 409 wrong_state once processing.",
        )
    },
    "/v1/admin/reload": {
        "post": _op(
            "Re-read profiles.yaml (admin token)",
            _ok("Reloaded"),
            403,
            409,
            422,
            description="A bad file is 422 config_invalid with its problems; the running "
            "configuration stays.",
        )
    },
}
_PATHS["/v1/payments/{payment_id}/fields/{field}/reset"]["post"]["parameters"].append(
    {"name": "field", "in": "path", "required": True, "schema": _enum(FieldName)}
)


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not change the shared one)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "dtmfmask control API",
                "version": "1.0.0",
                "description": "Card payments on live calls, guided (keypad) or self-service "
                "(SMS link to a hosted page): the agent sees field progress and asterisks, "
                "never card digits. Errors are "
                '{"error": {"code", "message"}}; codes are listed in x-error-codes.',
            },
            "servers": [{"url": "/"}],
            "security": [{"bearer": []}],
            "paths": _PATHS,
            "components": {
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "a token from profiles.yaml (payments.accounts.*."
                        "tokens); its role is agent or admin",
                    }
                },
                "schemas": _SCHEMAS,
            },
            "x-error-codes": API_ERROR_CODES,
        }
    )
