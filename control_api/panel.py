"""The agent's Secure payments panel: a reference UI for the control API, served by it.

``add_panel(app)`` adds ``GET /panel`` (the page) and ``GET /panel/static/panel.js``,
``/panel/static/panel.css`` (from ``control_api/static/``). The page is plain HTML, CSS and a
script of our own; nothing third-party (no framework, font or CDN). It uses only the public
``/v1`` API, exactly as any agent UI would, so it doubles as the API's living example:

- the agent types an agent token (kept in ``sessionStorage``, sent as ``Authorization:
  Bearer``; a 401 anywhere brings the sign-in form back with the API's message);
- ``GET /v1/calls`` every 1.5 s shows the account's active call: payee, interaction type
  ("Call"), hold state, and a Hold/Retrieve button (``POST /v1/calls/{id}/hold|retrieve``);
- ``GET /v1/profiles`` fills the profile dropdown. A guided profile shows "Proceed to
  payment" (``POST /v1/calls/{id}/payments`` with an ``Idempotency-Key``); a self-service one
  shows a phone input (the caller's number when it is E.164) and "Send payment link" (the
  same route with ``{"profile", "phone"}``; the session then waits in ``created`` for the
  amount and billing, and saving them sends the link; a node without self-service answers
  422, which is shown like every other error);
- the payment is followed by long-poll: ``GET /v1/payments/{id}?wait=25`` with
  ``If-None-Match`` (304: unchanged, ask again). Each field's asterisks, digit count, state,
  brand and validity are drawn from the view as it changes; per-field reset, the amount /
  currency / billing form (``PATCH .../details``), "Retrieve caller and start capture"
  (``.../capture``), "Process transaction" (``.../process``), cancel, and the result
  (succeeded; declined or failed with the reason);
- a self-service view's ``sms`` object (``state``, ``to``, ``error``) and
  ``link_expires_at`` are shown, with "Resend link" (``POST .../sms``) and "Switch to
  guided" (``POST .../switch-to-guided``) once the SMS failed.

Errors are shown as the API words them, with the code, in one place (``#error``). Text is
only ever set with ``textContent`` (no HTML from data). The page holds no card data: the
API's views carry asterisks and, after a valid card number, at most its last four.

Security headers: a strict Content-Security-Policy (``default-src 'none'; script-src 'self';
style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors
'none'; base-uri 'none'``), ``Cache-Control: no-store``, ``Referrer-Policy: no-referrer``,
``X-Content-Type-Options: nosniff``.

Stable element ids (the browser tests use them; keep them)::

    signin            section: the sign-in form (shown until a token is accepted)
    token             input (password): the agent token
    signin-button     button "Sign in"
    signout-button    button "Sign out" (forgets the token)
    error             role=alert: the last error, "message (code)"; empty when none
    status            a line saying what the panel waits for
    main              section: everything after sign-in
    no-call           "No active call"
    call              the active call's box
    call-select       select: which call, shown when the account has more than one
    call-payee        the payee (caller's display name or number)
    call-type         the interaction type: "Call"
    call-held         "On hold" / "With agent"
    hold-button       button "Hold" / "Retrieve" (data-action="hold" / "retrieve")
    start             the box to start a payment
    profile-select    select: the profiles the call may use (value: the profile id)
    profile-info      the profile's purpose, method and limits
    proceed-button    button "Proceed to payment" (guided profiles)
    selfservice-start the self-service box (self-service profiles)
    phone             input: the number the link is sent to (E.164)
    send-link-button  button "Send payment link"
    payment           the payment box (while one is followed)
    payment-id        the session id
    payment-state     the state in words; data-state holds the API's state
    payment-amount    "GBP 42.50" once set
    provider-leg      the provider leg's state
    details-form      the amount, currency and billing form
    amount, currency, billing-name, billing-address, billing-postal-code, billing-country
    details-button    button "Save details" ("Save details and send link" while a
                      self-service session waits for its amount)
    details-summary   the details in one line once capture started (the form folds away)
    details-summary-text  "GBP 12.50, Ada Lovelace"
    edit-details-button   button "Edit details" (unfolds the form)
    capture-button    button "Retrieve caller and start capture"
    fields            tbody: one row per card field
    field-<name>      the row of a field (card_number, expiry, cvv, postal_code)
    field-<name>-masked   its asterisks (and the last four once valid)
    field-<name>-digits   how many digits were keyed
    field-<name>-state    pending, capturing, complete, invalid
    field-<name>-brand    the card brand (card_number)
    field-<name>-valid    "valid" / "invalid: <why>" / ""
    reset-<name>      button "Reset" for that field
    process-button    button "Process transaction"
    cancel-button     button "Cancel payment"
    sms               the self-service SMS box
    sms-state         queued, sent, failed (data-state too)
    sms-to            the masked number it went to
    sms-error         why it failed
    link-expires      when the link expires
    sms-phone         input: a number to resend to (empty: the same)
    resend-button     button "Resend link"
    switch-guided-button  button "Switch to guided"
    result            the result box
    result-text       "Payment succeeded" / "Payment declined: ..." / "Payment failed: ..."
                      (data-result holds the API's result)
    result-reference  the provider's reference
    new-payment-button  button "New payment" (back to the profile choice)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["PANEL_CSP", "STATIC_DIR", "add_panel"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
PANEL_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": PANEL_CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_STATIC: Final = {
    "panel.js": "text/javascript",
    "panel.css": "text/css",
}

_FIELD_LABELS: Final = (
    ("card_number", "Card number"),
    ("expiry", "Expiry (MMYY)"),
    ("cvv", "Security code"),
    ("postal_code", "Postal code"),
)


def _field_rows() -> str:
    rows = []
    for name, label in _FIELD_LABELS:
        rows.append(
            f'<tr id="field-{name}" hidden>'
            f'<th scope="row">{label}</th>'
            f'<td><output id="field-{name}-masked" class="masked"></output></td>'
            f'<td id="field-{name}-digits" class="num"></td>'
            f'<td id="field-{name}-state"></td>'
            f'<td id="field-{name}-brand"></td>'
            f'<td id="field-{name}-valid"></td>'
            f'<td><button type="button" id="reset-{name}" data-field="{name}" '
            f'class="reset" disabled>Reset</button></td>'
            "</tr>"
        )
    return "\n".join(rows)


PANEL_HTML: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Secure payments</title>
<link rel="stylesheet" href="/panel/static/panel.css">
<script src="/panel/static/panel.js" defer></script>
</head>
<body>
<header>
  <h1>Secure payments</h1>
  <button type="button" id="signout-button" hidden>Sign out</button>
</header>
<p id="error" role="alert" aria-live="assertive"></p>
<p id="status" aria-live="polite">Loading…</p>

<section id="signin" hidden aria-labelledby="signin-title">
  <h2 id="signin-title">Sign in</h2>
  <form id="signin-form" autocomplete="off">
    <label for="token">Agent token</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false"
           required>
    <button type="submit" id="signin-button">Sign in</button>
  </form>
</section>

<main id="main" hidden>
  <section id="call-box" aria-labelledby="call-title">
    <h2 id="call-title">Active call</h2>
    <p id="no-call">No active call</p>
    <label for="call-select" id="call-select-label" hidden>Call</label>
    <select id="call-select" hidden></select>
    <dl id="call" hidden>
      <dt>Payee</dt><dd id="call-payee"></dd>
      <dt>Interaction</dt><dd id="call-type"></dd>
      <dt>Caller</dt><dd id="call-held"></dd>
    </dl>
    <button type="button" id="hold-button" hidden data-action="hold">Hold</button>
  </section>

  <section id="start" hidden aria-labelledby="start-title">
    <h2 id="start-title">Take a payment</h2>
    <label for="profile-select">Payment profile</label>
    <select id="profile-select"></select>
    <p id="profile-info" class="hint"></p>
    <button type="button" id="proceed-button" class="primary">Proceed to payment</button>
    <div id="selfservice-start" hidden>
      <label for="phone">Customer's mobile number (E.164, e.g. +447700900123)</label>
      <input id="phone" type="tel" autocomplete="off" inputmode="tel">
      <button type="button" id="send-link-button" class="primary">Send payment link</button>
    </div>
  </section>

  <section id="payment" hidden aria-labelledby="payment-title">
    <h2 id="payment-title">Payment</h2>
    <dl class="facts">
      <dt>Session</dt><dd id="payment-id"></dd>
      <dt>State</dt><dd id="payment-state" data-state=""></dd>
      <dt>Amount</dt><dd id="payment-amount"></dd>
      <dt>Provider</dt><dd id="provider-leg"></dd>
    </dl>

    <form id="details-form" hidden autocomplete="off">
      <fieldset>
        <legend>Amount and billing details</legend>
        <label for="amount">Amount</label>
        <input id="amount" inputmode="decimal" required placeholder="12.50">
        <label for="currency">Currency</label>
        <input id="currency" maxlength="3" required>
        <label for="billing-name">Cardholder name</label>
        <input id="billing-name" required>
        <label for="billing-address">Address</label>
        <input id="billing-address">
        <label for="billing-postal-code">Postal code</label>
        <input id="billing-postal-code">
        <label for="billing-country">Country (ISO, e.g. GB)</label>
        <input id="billing-country" maxlength="2">
        <button type="submit" id="details-button">Save details</button>
      </fieldset>
    </form>
    <p id="details-summary" hidden><span id="details-summary-text"></span>
      <button type="button" id="edit-details-button">Edit details</button></p>
    <button type="button" id="capture-button" hidden class="primary"
    >Retrieve caller and start capture</button>

    <section id="sms" hidden aria-labelledby="sms-title">
      <h3 id="sms-title">Payment link by SMS</h3>
      <dl class="facts">
        <dt>SMS</dt><dd id="sms-state" data-state=""></dd>
        <dt>To</dt><dd id="sms-to"></dd>
        <dt>Link expires</dt><dd id="link-expires"></dd>
      </dl>
      <p id="sms-error" class="bad"></p>
      <label for="sms-phone">Resend to (empty: the same number)</label>
      <input id="sms-phone" type="tel" autocomplete="off" inputmode="tel">
      <button type="button" id="resend-button">Resend link</button>
      <button type="button" id="switch-guided-button" hidden>Switch to guided</button>
    </section>

    <table id="fields-table">
      <caption>Card details keyed by the customer</caption>
      <thead><tr><th scope="col">Field</th><th scope="col">Keyed</th>
        <th scope="col">Digits</th><th scope="col">State</th><th scope="col">Brand</th>
        <th scope="col">Check</th><th scope="col"></th></tr></thead>
      <tbody id="fields">
{_field_rows()}
      </tbody>
    </table>

    <div class="actions">
      <button type="button" id="process-button" class="primary" disabled
      >Process transaction</button>
      <button type="button" id="cancel-button" hidden>Cancel payment</button>
    </div>

    <section id="result" hidden aria-labelledby="result-title">
      <h3 id="result-title">Result</h3>
      <p id="result-text" data-result=""></p>
      <p id="result-reference"></p>
      <button type="button" id="new-payment-button">New payment</button>
    </section>
  </section>
</main>
</body>
</html>
"""


def _static_handler(
    name: str, content_type: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    path = STATIC_DIR / name

    async def handler(request: web.Request) -> web.Response:
        # read per request: small files, and an edited script shows on reload
        return web.Response(
            body=path.read_bytes(),
            content_type=content_type,
            charset="utf-8",
            headers=_HEADERS,
        )

    return handler


async def _panel(request: web.Request) -> web.Response:
    return web.Response(
        text=PANEL_HTML, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def add_panel(app: web.Application) -> None:
    """Serve the Secure payments panel on ``app`` (the control API's application)."""
    app.router.add_get("/panel", _panel)
    for name, content_type in _STATIC.items():
        app.router.add_get(f"/panel/static/{name}", _static_handler(name, content_type))
