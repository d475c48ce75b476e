// The Secure payments panel (control_api/panel.py): a reference agent UI over the public /v1
// API. No framework, no third-party code. Text goes into the page with textContent only.
"use strict";

(() => {
  const TOKEN_KEY = "dtmfmask.panel.token";
  const CALLS_EVERY_MS = 1500;
  const WAIT_S = 25;
  const E164 = /^\+[1-9][0-9]{6,14}$/;

  const STATE_WORDS = {
    created: "Starting",
    provider_joining: "Adding the payment provider; the caller is on hold",
    awaiting_details: "Enter the amount and billing details, then retrieve the caller",
    capturing: "The customer is keying the card details",
    ready: "All details captured: ready to process",
    processing: "Processing the transaction",
    finished: "Finished",
    link_sent: "Payment link sent; waiting for the customer",
    customer_active: "The customer is on the payment page",
    sms_failed: "The SMS could not be sent",
  };
  const SMS_ERRORS = {
    timeout: "the SMS gateway did not answer in time",
    unreachable: "the SMS gateway could not be reached",
    rejected: "the SMS gateway refused the message (number or account)",
    gateway_error: "the SMS gateway failed",
    outbox_error: "the SMS outbox could not be written",
  };
  const REASONS = {
    card_declined: "the card was declined",
    insufficient_funds: "insufficient funds",
    card_expired: "the card has expired",
    invalid_card: "the card details are not valid",
    provider_no_answer: "the payment provider did not answer",
    provider_busy: "the payment provider was busy",
    provider_rejected: "the payment provider refused the call",
    provider_hung_up: "the payment provider hung up",
    provider_error: "the payment provider could not be reached",
    processing_error: "the provider reported a processing error",
    processing_timeout: "the provider did not answer in time",
    hold_timeout: "the caller was on hold too long",
    capture_timeout: "nothing was keyed for too long",
    cancelled: "cancelled by the agent",
    caller_hung_up: "the caller hung up",
    agent_hung_up: "the agent's side hung up",
    process_restart: "the payment service restarted",
    switched_to_guided: "switched to a guided payment",
    link_expired: "the payment link expired",
  };
  const CARD_ERRORS = {
    empty: "nothing was entered",
    not_digits: "only the digits 0-9 are allowed",
    unknown_brand: "no supported card brand",
    wrong_length: "wrong number of digits for the brand",
    luhn_failed: "check digit fails (a digit was mistyped)",
    bad_month: "must be MMYY with a month 01-12",
    expired: "in the past",
    too_far_ahead: "too far ahead",
    wrong_cvv_length: "wrong length for the card",
    bad_postal_code: "not a postal code",
  };
  const RESULT_WORDS = {
    succeeded: "Payment succeeded",
    declined: "Payment declined",
    failed: "Payment failed",
    cancelled: "Payment cancelled",
    interrupted: "Payment interrupted",
  };
  const CODE_HINTS = {
    unauthorized: "The agent token was not accepted",
    forbidden: "Not allowed for this account",
    payments_disabled: "Payments are switched off for this account",
    session_in_progress: "This call already has a payment in progress",
    method_not_supported: "This node cannot take payments with this profile's method",
    invalid_body: "The payment service refused the request",
    call_not_found: "The call has ended",
    call_not_up: "The call is not answered yet",
    wrong_state: "Not possible at this step of the payment",
    network: "No connection",
  };
  const DETAILS_STATES = new Set([
    "provider_joining", "awaiting_details", "capturing", "ready",
    "created", "link_sent", "sms_failed",
  ]);
  const RESET_STATES = new Set(["capturing", "ready"]);
  const FOLD_STATES = new Set(["capturing", "ready", "link_sent", "customer_active"]);
  const LIVE_SMS_STATES = new Set(["link_sent", "sms_failed", "customer_active"]);

  const $ = (id) => document.getElementById(id);
  const show = (id, yes) => { $(id).hidden = !yes; };
  const text = (id, value) => {
    const s = value === null || value === undefined ? "" : String(value);
    const el = $(id);
    if (el.textContent !== s) el.textContent = s;
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  let token = null;
  let calls = [];
  let callId = null;
  let profiles = new Map();
  let payment = null; // the last view of the followed payment
  let paymentId = null;
  let etag = null;
  let pollGen = 0;
  let pollAbort = null;
  let callsGen = 0;
  let formFor = null; // the payment the details form was filled for
  let phoneEdited = false;
  let editingDetails = false;
  let errorSource = null;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ------------------------------------------------------------------ the API

  async function api(method, path, body, extraHeaders, signal) {
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    Object.assign(headers, extraHeaders || {});
    const init = { method, headers, cache: "no-store", credentials: "omit", signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "the control API cannot be reached");
    }
    const tag = r.headers.get("ETag");
    if (r.status === 304) return { status: 304, data: null, etag: tag };
    let data = null;
    if ((r.headers.get("Content-Type") || "").includes("application/json")) {
      try { data = await r.json(); } catch (e) { data = null; }
    }
    if (!r.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(r.status, err.code || "http_error", err.message || r.statusText);
    }
    return { status: r.status, data, etag: tag };
  }

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "panel-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ------------------------------------------------------------------ errors

  function describe(err) {
    if (!(err instanceof ApiError)) return "Something went wrong in the panel: " + err;
    const hint = err.plain ? null : CODE_HINTS[err.code];
    const what = hint ? hint + ": " + err.message : err.message;
    const status = err.status ? err.status + " " : "";
    return what.charAt(0).toUpperCase() + what.slice(1) + " (" + status + err.code + ")";
  }

  function showError(err, source) {
    text("error", describe(err));
    errorSource = source || "action";
  }

  function clearError(source) {
    if (!source || errorSource === source) {
      text("error", "");
      errorSource = null;
    }
  }

  // an action from a button: errors shown, a 401 signs out
  async function act(button, fn) {
    clearError();
    if (button) button.disabled = true;
    try {
      await fn();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) signOut(e);
      else showError(e);
    } finally {
      if (button) button.disabled = false;
      render();
    }
  }

  // ------------------------------------------------------------------ sign-in

  async function signIn(candidate) {
    token = candidate;
    try {
      const r = await api("GET", "/v1/profiles");
      profiles = new Map(r.data.profiles.map((p) => [p.name, p]));
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      show("signin", false);
      show("main", true);
      show("signout-button", true);
      clearError();
      text("status", r.data.payments_enabled ? "" : CODE_HINTS.payments_disabled + ".");
      callsLoop(++callsGen);
    } catch (e) {
      // the token is forgotten only when the API refused it (not when it was unreachable)
      signOut(e, e instanceof ApiError && (e.status === 0 || e.status >= 500));
    }
  }

  function signOut(err, keepToken) {
    token = null;
    if (!keepToken) sessionStorage.removeItem(TOKEN_KEY);
    callsGen++;
    stopPolling();
    calls = [];
    callId = null;
    payment = null;
    paymentId = null;
    show("main", false);
    show("signout-button", false);
    show("signin", true);
    text("status", "Sign in with your agent token.");
    if (err) showError(err, "signin");
    else clearError();
    $("token").focus();
  }

  // ------------------------------------------------------------------ calls

  async function callsLoop(gen) {
    while (gen === callsGen && token) {
      try {
        const r = await api("GET", "/v1/calls");
        if (gen !== callsGen) return;
        calls = r.data.calls;
        clearError("calls");
        const unknown = calls.some((c) => c.profiles.some((p) => !profiles.has(p)));
        if (unknown) await refreshProfiles();
        followCallPayment();
        render();
      } catch (e) {
        if (gen !== callsGen) return;
        if (e instanceof ApiError && e.status === 401) { signOut(e); return; }
        showError(e, "calls");
      }
      await sleep(CALLS_EVERY_MS);
    }
  }

  async function refreshProfiles() {
    const r = await api("GET", "/v1/profiles");
    profiles = new Map(r.data.profiles.map((p) => [p.name, p]));
  }

  function currentCall() {
    return calls.find((c) => c.id === callId) || null;
  }

  function pickCall() {
    if (currentCall()) return;
    const mine = paymentId && calls.find((c) => c.payment === paymentId);
    callId = mine ? mine.id : calls.length ? calls[0].id : null;
  }

  // follow the call's live payment when none is shown (a reload, another tab, or the guided
  // session a switch from self-service made)
  function followCallPayment() {
    pickCall();
    const call = currentCall();
    if (!call || !call.payment || call.payment === paymentId) return;
    const switched = payment && payment.state === "finished" &&
      payment.error === "switched_to_guided";
    if (paymentId === null || switched) follow(call.payment, null);
  }

  // ------------------------------------------------------------------ the payment

  function follow(id, view) {
    stopPolling();
    paymentId = id;
    payment = null;
    editingDetails = false;
    etag = null;
    if (view) setPayment(view);
    pollLoop(++pollGen);
  }

  function stopPolling() {
    pollGen++;
    if (pollAbort) pollAbort.abort();
    pollAbort = null;
  }

  function setPayment(view) {
    if (!view || view.id !== paymentId) return;
    if (payment && view.version < payment.version) return;
    payment = view;
    const call = calls.find((c) => c.id === view.call_id);
    if (call) call.held = view.caller_held;
    render();
  }

  async function pollLoop(gen) {
    let failures = 0;
    while (gen === pollGen && token && paymentId) {
      const ctrl = new AbortController();
      pollAbort = ctrl;
      try {
        const path = "/v1/payments/" + encodeURIComponent(paymentId);
        const r = etag
          ? await api("GET", path + "?wait=" + WAIT_S, undefined, { "If-None-Match": etag },
            ctrl.signal)
          : await api("GET", path, undefined, undefined, ctrl.signal);
        if (gen !== pollGen) return;
        failures = 0;
        clearError("poll");
        if (r.status === 200) {
          etag = r.etag;
          setPayment(r.data);
          if (r.data.state === "finished") return; // a finished session never changes
        }
      } catch (e) {
        if (gen !== pollGen || (e && e.name === "AbortError")) return;
        if (e instanceof ApiError && e.status === 401) { signOut(e); return; }
        showError(e, "poll");
        failures += 1;
        await sleep(Math.min(1000 * failures, 5000));
      }
    }
  }

  // ------------------------------------------------------------------ drawing

  function render() {
    if (!token) return;
    renderCall();
    renderStart();
    renderPayment();
  }

  function renderCall() {
    pickCall();
    const call = currentCall();
    show("no-call", !call);
    show("call", !!call);
    show("hold-button", !!call);
    const select = $("call-select");
    const many = calls.length > 1;
    show("call-select", many);
    show("call-select-label", many);
    const ids = calls.map((c) => c.id).join("\n");
    if (select.dataset.ids !== ids) {
      select.replaceChildren(...calls.map((c) => new Option(c.payee + " (" + c.id + ")", c.id)));
      select.dataset.ids = ids;
    }
    if (call) select.value = call.id;
    if (!call) {
      if (!paymentId) text("status", "Waiting for a call…");
      return;
    }
    text("call-payee", call.payee || "(unknown)");
    text("call-type", call.interaction_type === "call" ? "Call" : call.interaction_type);
    text("call-held", call.held ? "On hold" : "With agent");
    const hold = $("hold-button");
    const action = call.held ? "retrieve" : "hold";
    hold.dataset.action = action;
    text("hold-button", call.held ? "Retrieve" : "Hold");
    if (!paymentId) {
      text("status", call.state === "up" ? "" : "The call is not answered yet.");
    }
  }

  function renderStart() {
    const call = currentCall();
    const visible = !!call && !paymentId && call.state === "up";
    show("start", visible);
    if (!visible) return;
    const select = $("profile-select");
    const names = call.profiles.join("\n");
    if (select.dataset.names !== names) {
      const before = select.value;
      select.replaceChildren(...call.profiles.map((name) => {
        const p = profiles.get(name);
        const label = p && p.purpose ? p.purpose + " (" + name + ")" : name;
        return new Option(label, name);
      }));
      select.dataset.names = names;
      if (call.profiles.includes(before)) select.value = before;
    }
    const profile = profiles.get(select.value);
    const selfService = !!profile && profile.method === "self_service";
    const none = call.profiles.length === 0;
    text("profile-info", none ? "No payment profile is available to this account." : profile
      ? (selfService ? "Self-service: the customer pays on a web page from an SMS link. "
        : "Guided: the customer keys the card on the phone keypad. ") +
        profile.currency + " " + profile.min_amount + " to " + profile.max_amount
      : "");
    show("proceed-button", !selfService && !none);
    show("selfservice-start", selfService);
    const phone = $("phone");
    if (selfService && !phoneEdited && !phone.value && E164.test(call.caller || "")) {
      phone.value = call.caller;
    }
  }

  function formatTime(value) {
    if (value === null || value === undefined || value === "") return "";
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  function fillDetailsForm(view) {
    formFor = view.id;
    $("amount").value = view.amount || "";
    $("currency").value = view.currency || "";
    const b = view.billing || {};
    $("billing-name").value = b.name || "";
    $("billing-address").value = b.address || "";
    $("billing-postal-code").value = b.postal_code || "";
    $("billing-country").value = b.country || "";
  }

  function renderPayment() {
    show("payment", !!paymentId);
    if (!paymentId) return;
    const view = payment;
    if (!view) {
      text("payment-id", paymentId);
      text("payment-state", "Loading…");
      return;
    }
    const guided = view.method !== "self_service";
    const finished = view.state === "finished";
    text("status", finished ? "" : "Following payment " + view.id + " live.");
    text("payment-id", view.id);
    const waitingForAmount = !guided && view.state === "created";
    text("payment-state", waitingForAmount
      ? "Enter the amount and billing details: the link is sent when they are saved"
      : STATE_WORDS[view.state] || view.state);
    text("details-button", waitingForAmount ? "Save details and send link" : "Save details");
    $("payment-state").dataset.state = view.state;
    text("provider-leg", view.provider_leg || "");
    text("payment-amount", view.amount ? view.currency + " " + view.amount : "not set");

    if (formFor !== view.id) fillDetailsForm(view);
    // once capture started the card fields matter: the details fold into one line
    const fold = !editingDetails && view.amount !== null && view.amount !== undefined &&
      FOLD_STATES.has(view.state);
    show("details-form", DETAILS_STATES.has(view.state) && !fold);
    show("details-summary", DETAILS_STATES.has(view.state) && fold);
    text("details-summary-text", view.currency + " " + view.amount +
      (view.billing && view.billing.name ? ", " + view.billing.name : ""));
    show("capture-button", guided && view.state === "awaiting_details");
    $("capture-button").disabled = view.amount === null || view.amount === undefined;

    const shown = new Set();
    for (const f of view.fields || []) {
      const name = f.name;
      if (!$("field-" + name)) continue;
      shown.add(name);
      text("field-" + name + "-masked", f.masked || "");
      text("field-" + name + "-digits", f.digits ? String(f.digits) : "");
      text("field-" + name + "-state", f.state);
      $("field-" + name + "-state").dataset.state = f.state;
      text("field-" + name + "-brand", f.brand || "");
      const check = $("field-" + name + "-valid");
      check.dataset.valid = f.valid === null || f.valid === undefined ? "" : String(f.valid);
      text("field-" + name + "-valid", f.valid === true ? "valid"
        : f.valid === false ? "invalid: " + (CARD_ERRORS[f.error] || f.error || "") : "");
      const reset = $("reset-" + name);
      reset.hidden = !guided || finished;
      reset.disabled = !(RESET_STATES.has(view.state) && (f.digits > 0 || f.state !== "pending"));
    }
    for (const row of $("fields").rows) {
      row.hidden = !shown.has(row.id.slice("field-".length));
    }

    show("process-button", guided && !finished);
    $("process-button").disabled = view.state !== "ready";
    show("cancel-button", !finished && view.state !== "processing");

    const sms = view.sms || null;
    show("sms", !guided || !!sms);
    if (!guided || sms) {
      const s = sms || {};
      text("sms-state", s.state || "");
      $("sms-state").dataset.state = s.state || "";
      text("sms-to", s.to || "");
      text("sms-error", s.error ? "The SMS failed: " + (SMS_ERRORS[s.error] || s.error) +
        " (" + s.error + ")" : "");
      text("link-expires", formatTime(view.link_expires_at));
      show("resend-button", LIVE_SMS_STATES.has(view.state));
      show("sms-phone", LIVE_SMS_STATES.has(view.state));
      show("switch-guided-button", view.state === "sms_failed" || s.state === "failed");
    }

    show("result", finished);
    const result = $("result-text");
    result.dataset.result = view.result || "";
    if (finished) {
      let words = RESULT_WORDS[view.result] || "Payment " + view.result;
      if (view.result !== "succeeded" && view.error) {
        words += ": " + (REASONS[view.error] || view.error.replace(/_/g, " "));
      }
      text("result-text", words);
      text("result-reference", view.reference ? "Reference " + view.reference : "");
    }
  }

  // ------------------------------------------------------------------ actions

  function details() {
    const billing = { name: $("billing-name").value.trim() };
    const optional = [
      ["address", "billing-address"],
      ["postal_code", "billing-postal-code"],
      ["country", "billing-country"],
    ];
    for (const [key, id] of optional) {
      const value = $(id).value.trim();
      if (value) billing[key] = value;
    }
    return {
      amount: $("amount").value.trim(),
      currency: $("currency").value.trim().toUpperCase(),
      billing,
    };
  }

  async function startPayment(button, body) {
    const call = currentCall();
    if (!call) throw new ApiError(0, "call_not_found", "there is no active call");
    const r = await api("POST", "/v1/calls/" + encodeURIComponent(call.id) + "/payments", body,
      { "Idempotency-Key": newKey() });
    follow(r.data.id, r.data);
  }

  function paymentPath(suffix) {
    return "/v1/payments/" + encodeURIComponent(paymentId) + suffix;
  }

  function wire() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const candidate = $("token").value.trim();
      if (!candidate) return;
      clearError();
      signIn(candidate);
    });
    $("signout-button").addEventListener("click", () => signOut(null));
    $("call-select").addEventListener("change", (ev) => {
      callId = ev.target.value;
      render();
    });
    $("profile-select").addEventListener("change", () => render());
    $("phone").addEventListener("input", () => { phoneEdited = true; });
    $("hold-button").addEventListener("click", (ev) => act(ev.target, async () => {
      const call = currentCall();
      if (!call) return;
      const action = ev.target.dataset.action === "retrieve" ? "retrieve" : "hold";
      const r = await api("POST", "/v1/calls/" + encodeURIComponent(call.id) + "/" + action);
      Object.assign(call, r.data);
    }));
    $("proceed-button").addEventListener("click", (ev) => act(ev.target, () =>
      startPayment(ev.target, { profile: $("profile-select").value })));
    $("send-link-button").addEventListener("click", (ev) => act(ev.target, () => {
      const phone = $("phone").value.replace(/[\s()-]/g, "");
      if (!E164.test(phone)) {
        throw new ApiError(0, "bad_phone",
          "enter the mobile number in international form, e.g. +447700900123");
      }
      return startPayment(ev.target, { profile: $("profile-select").value, phone })
        .catch((e) => {
          // a node without self-service refuses the phone (invalid_body) or the method
          if (e instanceof ApiError && e.status === 422 &&
              (e.code === "invalid_body" || e.code === "method_not_supported")) {
            const plain = new ApiError(e.status, e.code,
              "Self-service payment links are not available on this node: " + e.message);
            plain.plain = true;
            throw plain;
          }
          throw e;
        });
    }));
    $("details-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      act($("details-button"), async () => {
        const r = await api("PATCH", paymentPath("/details"), details());
        editingDetails = false;
        setPayment(r.data);
        fillDetailsForm(r.data);
      });
    });
    $("edit-details-button").addEventListener("click", () => {
      editingDetails = true;
      render();
    });
    $("capture-button").addEventListener("click", (ev) => act(ev.target, async () => {
      setPayment((await api("POST", paymentPath("/capture"))).data);
    }));
    for (const button of document.querySelectorAll("button.reset")) {
      button.addEventListener("click", (ev) => act(ev.target, async () => {
        const name = encodeURIComponent(ev.target.dataset.field);
        setPayment((await api("POST", paymentPath("/fields/" + name + "/reset"))).data);
      }));
    }
    $("process-button").addEventListener("click", (ev) => act(ev.target, async () => {
      setPayment((await api("POST", paymentPath("/process"))).data);
    }));
    $("cancel-button").addEventListener("click", (ev) => act(ev.target, async () => {
      setPayment((await api("POST", paymentPath("/cancel"))).data);
    }));
    $("resend-button").addEventListener("click", (ev) => act(ev.target, async () => {
      const phone = $("sms-phone").value.replace(/[\s()-]/g, "");
      if (phone && !E164.test(phone)) {
        throw new ApiError(0, "bad_phone",
          "enter the mobile number in international form, e.g. +447700900123");
      }
      const r = await api("POST", paymentPath("/sms"), phone ? { phone } : {});
      $("sms-phone").value = "";
      setPayment(r.data);
    }));
    $("switch-guided-button").addEventListener("click", (ev) => act(ev.target, async () => {
      const r = await api("POST", paymentPath("/switch-to-guided"));
      if (r.data && r.data.id && r.data.id !== paymentId) follow(r.data.id, r.data);
      else setPayment(r.data);
    }));
    $("new-payment-button").addEventListener("click", () => {
      stopPolling();
      paymentId = null;
      payment = null;
      formFor = null;
      phoneEdited = false;
      editingDetails = false;
      $("phone").value = "";
      clearError();
      render();
    });
  }

  function boot() {
    wire();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      text("status", "Signing in…");
      signIn(saved);
    } else {
      signOut(null);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
