"""Tests for control_api.session: the guided flow, every failure path, keypad, no leaks."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_api.cards import CardBrand, CardError, max_pan_length, validate_pan
from control_api.events import (
    BillingDetails,
    CallEnded,
    CallerHoldChanged,
    Cancel,
    ErrorCode,
    FieldName,
    FieldUpdated,
    HoldCaller,
    Input,
    JoinProvider,
    KeyPressed,
    LateProviderResult,
    Output,
    Proceed,
    Process,
    ProcessPayment,
    ProviderAnswered,
    ProviderFailed,
    ProviderHungUp,
    ProviderLegState,
    ProviderResult,
    ReleaseProviderLeg,
    ResetField,
    Restarted,
    Result,
    RetrieveCaller,
    SessionFinished,
    SessionState,
    SessionUpdated,
    SetDetails,
    StartCapture,
    StartDigitCapture,
    StopDigitCapture,
)
from control_api.profiles import DEFAULT_FIELDS, PaymentProfile, ProviderConfig
from control_api.sandbox import SandboxProcessor
from control_api.session import PaymentSession, SessionError, SessionErrorCode
from tests.control_api.servicekit import CARDS, DETAILS, POSTAL, assert_no_leak, keys_for

TODAY = date(2025, 6, 15)
PROVIDER = ProviderConfig("sandbox", answer_timeout_s=30, processing_timeout_s=60)
PROFILE = PaymentProfile(
    name="card",
    account="acme",
    provider="sandbox",
    currency="GBP",
    min_amount=Decimal("1.00"),
    max_amount=Decimal("500.00"),
    fields=(*DEFAULT_FIELDS, FieldName.POSTAL_CODE),
    hold_timeout_s=300,
    capture_timeout_s=120,
)


def needs_hash(pan: str) -> bool:
    """Whether the number is shorter than its brand's longest (so # ends it)."""
    return len(pan) < max_pan_length(validate_pan(pan))


def kinds(out: list[Output]) -> list[type]:
    return [type(o) for o in out]


class Run:
    """Drives one session and records everything it emits, for the leak scan."""

    def __init__(self, profile: PaymentProfile = PROFILE) -> None:
        self.now = 1000.0
        self.s = PaymentSession("pay_1", "call-a", profile, PROVIDER, today=TODAY, now=self.now)
        self.log: list[str] = [repr(self.s)]

    def __call__(self, event: Input, dt: float = 0.5) -> list[Output]:
        self.now += dt
        out = self.s.handle(event, self.now)
        self.record(event, out)
        return out

    def record(self, event: object, out: list[Output]) -> None:
        self.log += [repr(event), str(event), *map(repr, out), *map(str, out), repr(self.s)]
        self.log.append(json.dumps(self.s.view().to_dict()))
        self.log.append(repr(self.s.view()))

    def timer(self) -> list[Output]:
        deadline = self.s.get_timer()
        assert deadline is not None
        assert self.s.handle_timer(deadline - 0.001) == []  # early: nothing
        self.now = deadline
        out = self.s.handle_timer(deadline)
        self.record("timer", out)
        return out

    def keys(self, text: str) -> list[Output]:
        out: list[Output] = []
        for key in text:
            out += self(KeyPressed(key), dt=0.2)
        return out

    def to_capturing(self) -> None:
        self(Proceed())
        self(ProviderAnswered())
        self(DETAILS)
        self(StartCapture())

    def to_ready(self, pan: str = "4111111111111111") -> None:
        self.to_capturing()
        self.keys(keys_for(pan))
        assert self.s.state is SessionState.READY

    def field(self, name: FieldName) -> dict[str, object]:
        return next(f for f in self.s.view().to_dict()["fields"] if f["name"] == name.value)


def assert_stranded_nobody(out: list[Output], result: Result, error: ErrorCode | None) -> None:
    """The invariant: the last actions release the provider leg, then retrieve the caller."""
    k = kinds(out)
    assert ReleaseProviderLeg in k and RetrieveCaller in k
    assert k.index(ReleaseProviderLeg) < k.index(RetrieveCaller)
    finished = [o for o in out if isinstance(o, SessionFinished)]
    assert len(finished) == 1 and finished[0].result is result and finished[0].error is error


# ------------------------------------------------------------------------------ happy path


@pytest.mark.parametrize("pan", list(CARDS))
def test_guided_payment_succeeds(pan: str) -> None:
    run = Run()
    v = run.s.view()
    assert v.state is SessionState.CREATED and v.version == 1
    assert v.required == PROFILE.fields and not v.caller_held

    out = run(Proceed())
    assert kinds(out)[:2] == [JoinProvider, HoldCaller]
    assert run.s.view().caller_held and run.s.provider_leg is ProviderLegState.JOINING
    run(ProviderAnswered())
    assert run.s.state is SessionState.AWAITING_DETAILS
    assert run.s.provider_leg is ProviderLegState.JOINED
    with pytest.raises(SessionError) as info:
        run(StartCapture())
    assert info.value.code is SessionErrorCode.DETAILS_REQUIRED
    run(DETAILS)
    out = run(StartCapture())
    assert kinds(out)[:2] == [RetrieveCaller, StartDigitCapture]
    assert run.s.state is SessionState.CAPTURING and not run.s.caller_held

    exp, cvv = CARDS[pan]
    run.keys(pan[:1])
    brand = run.field(FieldName.CARD_NUMBER)["brand"]
    assert brand == ("visa" if pan[0] == "4" else None)
    run.keys(pan[1:])
    if needs_hash(pan):
        assert run.field(FieldName.CARD_NUMBER)["state"] == "capturing"  # could be 19
        run.keys("#")
    f = run.field(FieldName.CARD_NUMBER)
    assert f["state"] == "complete" and f["valid"] is True and f["digits"] == len(pan)
    assert f["masked"] == "*" * (len(pan) - 4) + pan[-4:]
    assert f["brand"] is not None
    run.keys(exp)
    assert run.field(FieldName.EXPIRY)["masked"] == "****"
    run.keys(cvv)
    assert run.field(FieldName.CVV)["state"] == "complete"
    run.keys(POSTAL + "#")
    v = run.s.view()
    assert v.state is SessionState.READY and v.required == ()

    out = run(Process())
    assert kinds(out)[:2] == [StopDigitCapture, ProcessPayment]
    request = out[1]
    assert isinstance(request, ProcessPayment)
    assert request.card.number == pan and request.card.cvv == cvv
    assert request.amount == Decimal("12.50") and request.currency == "GBP"
    assert run(Process()) == []  # idempotent
    result = SandboxProcessor().authorise(request, TODAY)
    assert result is not None
    out = run(result)
    assert_stranded_nobody(out, Result.SUCCEEDED, None)
    v = run.s.view()
    assert v.result is Result.SUCCEEDED and v.reference == "sandbox-pay_1"
    assert v.provider_leg is ProviderLegState.RELEASED and not v.caller_held
    assert v.fields[0].masked.endswith(pan[-4:])  # the result screen keeps the last four
    assert run.s.get_timer() is None
    assert_no_leak(*run.log, cards=CARDS)


def test_session_keeps_no_digits_after_processing() -> None:
    run = Run()
    run.to_ready()
    run(Process())
    for f in run.s._fields.values():
        assert len(f.buf) == 0
    assert_no_leak(repr(vars(run.s)), *run.log, cards=CARDS)


def test_version_increases_on_every_visible_change_only() -> None:
    run = Run()
    versions = [run.s.version]
    run.to_capturing()
    versions.append(run.s.version)
    out = run(KeyPressed("4"))
    assert [o.version for o in out if isinstance(o, SessionUpdated)] == [run.s.version]
    versions.append(run.s.version)
    assert run(KeyPressed("A")) == []  # ignored key: no change, no new version
    assert run(CallerHoldChanged(held=False)) == []
    assert versions == sorted(set(versions))


# -------------------------------------------------------------------------- failure paths


def _joining() -> Run:
    run = Run()
    run(Proceed())
    return run


def _on_hold() -> Run:
    run = _joining()
    run(ProviderAnswered())
    run(DETAILS)
    return run


def _capturing() -> Run:
    run = Run()
    run.to_capturing()
    run.keys("41111")
    return run


def _processing() -> Run:
    run = Run()
    run.to_ready()
    run(Process())
    return run


@pytest.mark.parametrize(
    ("setup", "event", "result", "error"),
    [
        (_joining, ProviderFailed("no_answer", 480), Result.FAILED, ErrorCode.PROVIDER_NO_ANSWER),
        (_joining, ProviderFailed("busy", 486), Result.FAILED, ErrorCode.PROVIDER_BUSY),
        (_joining, ProviderFailed("rejected", 503), Result.FAILED, ErrorCode.PROVIDER_REJECTED),
        (_joining, ProviderFailed("error"), Result.FAILED, ErrorCode.PROVIDER_ERROR),
        (_joining, "timer", Result.FAILED, ErrorCode.PROVIDER_NO_ANSWER),
        (_joining, CallEnded("caller"), Result.INTERRUPTED, ErrorCode.CALLER_HUNG_UP),
        (_joining, Cancel(), Result.CANCELLED, ErrorCode.CANCELLED),
        (_on_hold, ProviderHungUp(), Result.FAILED, ErrorCode.PROVIDER_HUNG_UP),
        (_on_hold, "timer", Result.FAILED, ErrorCode.HOLD_TIMEOUT),
        (_on_hold, CallEnded("agent"), Result.INTERRUPTED, ErrorCode.AGENT_HUNG_UP),
        (_on_hold, CallEnded("caller"), Result.INTERRUPTED, ErrorCode.CALLER_HUNG_UP),
        (_on_hold, Cancel(), Result.CANCELLED, ErrorCode.CANCELLED),
        (_on_hold, Restarted(), Result.INTERRUPTED, ErrorCode.PROCESS_RESTART),
        (_capturing, ProviderHungUp(), Result.FAILED, ErrorCode.PROVIDER_HUNG_UP),
        (_capturing, "timer", Result.FAILED, ErrorCode.CAPTURE_TIMEOUT),
        (_capturing, CallEnded("caller"), Result.INTERRUPTED, ErrorCode.CALLER_HUNG_UP),
        (_capturing, CallEnded("agent"), Result.INTERRUPTED, ErrorCode.AGENT_HUNG_UP),
        (_capturing, Cancel(), Result.CANCELLED, ErrorCode.CANCELLED),
        (_capturing, Restarted(), Result.INTERRUPTED, ErrorCode.PROCESS_RESTART),
        (_processing, "timer", Result.FAILED, ErrorCode.PROCESSING_TIMEOUT),
        (
            _processing,
            ProviderResult("error", ErrorCode.PROVIDER_ERROR),
            Result.FAILED,
            ErrorCode.PROVIDER_ERROR,
        ),
        (_processing, ProviderResult("error"), Result.FAILED, ErrorCode.PROCESSING_ERROR),
        (
            _processing,
            ProviderResult("declined", ErrorCode.INSUFFICIENT_FUNDS),
            Result.DECLINED,
            ErrorCode.INSUFFICIENT_FUNDS,
        ),
        (_processing, ProviderResult("declined"), Result.DECLINED, ErrorCode.CARD_DECLINED),
        (_processing, Restarted(), Result.INTERRUPTED, ErrorCode.PROCESS_RESTART),
    ],
)
def test_every_failure_path_releases_provider_and_retrieves_caller(
    setup: object, event: Input | str, result: Result, error: ErrorCode
) -> None:
    run = setup()  # type: ignore[operator]
    was_capturing = run.s.state in (SessionState.CAPTURING, SessionState.READY)
    out = run.timer() if event == "timer" else run(event)
    assert_stranded_nobody(out, result, error)
    assert (StopDigitCapture in kinds(out)) is was_capturing
    v = run.s.view()
    assert v.state is SessionState.FINISHED and v.result is result and v.error is error
    assert not v.caller_held and v.provider_leg in (ProviderLegState.RELEASED,)
    assert run.s.get_timer() is None
    assert all(len(f.buf) == 0 for f in run.s._fields.values())
    # after the end: calls are no-ops, agent actions are refused, late results reported
    assert run(CallEnded("caller")) == []
    assert run(ProviderHungUp()) == []
    assert run(KeyPressed("4")) == []
    with pytest.raises(SessionError):
        run(Cancel())
    late = run(ProviderResult("approved", None, "ref-9"))
    assert kinds(late) == [LateProviderResult]
    assert kinds(run(ProviderAnswered())) == [ReleaseProviderLeg]
    assert_no_leak(*run.log, cards=CARDS)


def test_cancel_before_proceed_still_emits_release_and_retrieve() -> None:
    run = Run()
    out = run(Cancel())
    assert_stranded_nobody(out, Result.CANCELLED, ErrorCode.CANCELLED)
    assert run.s.provider_leg is ProviderLegState.NONE


def test_call_end_during_processing_waits_for_the_result() -> None:
    run = _processing()
    assert run(CallEnded("caller")) == []
    out = run(ProviderHungUp())
    assert run.s.state is SessionState.PROCESSING
    assert run.s.provider_leg is ProviderLegState.RELEASED
    assert kinds(out) == [SessionUpdated]
    out = run(ProviderResult("approved", None, "r1"))
    assert_stranded_nobody(out, Result.SUCCEEDED, None)
    assert run.s.call_ended == "caller"


def test_cancel_refused_while_processing() -> None:
    run = _processing()
    with pytest.raises(SessionError) as info:
        run(Cancel())
    assert info.value.code is SessionErrorCode.WRONG_STATE


def test_decline_code_outside_the_list_is_a_plain_decline() -> None:
    run = _processing()
    run(ProviderResult("declined", ErrorCode.PROVIDER_BUSY))
    assert run.s.error is ErrorCode.CARD_DECLINED
    run = _processing()
    run(ProviderResult("error", ErrorCode.INSUFFICIENT_FUNDS))
    assert run.s.error is ErrorCode.PROCESSING_ERROR


def test_sandbox_timeout_card_ends_by_deadline() -> None:
    run = Run()
    run.to_capturing()
    run.keys("4000000000000101#" + "0829" + "739" + POSTAL + "#")
    out = run(Process())
    request = next(o for o in out if isinstance(o, ProcessPayment))
    assert SandboxProcessor().authorise(request, TODAY) is None
    assert_stranded_nobody(run.timer(), Result.FAILED, ErrorCode.PROCESSING_TIMEOUT)


def test_provider_answers_late_is_hung_up_again() -> None:
    run = _joining()
    run.timer()
    assert kinds(run(ProviderAnswered())) == [ReleaseProviderLeg]


def test_ignored_call_events() -> None:
    run = Run()
    assert run(ProviderFailed("busy")) == []  # nothing dialled yet
    assert run(ProviderHungUp()) == []
    assert run(ProviderResult("approved")) == []
    run.to_capturing()
    assert run(ProviderFailed("busy")) == []  # already answered
    assert run(ProviderAnswered()) == []
    assert run(ProviderResult("approved")) == []  # nothing sent
    assert run.s.state is SessionState.CAPTURING


def test_manual_hold_and_retrieve_are_reflected() -> None:
    run = _on_hold()
    assert run.s.view().caller_held
    out = run(CallerHoldChanged(held=False))
    assert not run.s.view().caller_held and kinds(out) == [SessionUpdated]


def test_timer_when_finished_or_early_does_nothing() -> None:
    run = Run()
    assert run.s.get_timer() is None
    assert run.s.handle_timer(1e12) == []


# ------------------------------------------------------------------------------ agent input


@pytest.mark.parametrize(
    ("details", "code"),
    [
        (replace(DETAILS, currency="EUR"), SessionErrorCode.CURRENCY_NOT_ALLOWED),
        (replace(DETAILS, amount=Decimal("0.99")), SessionErrorCode.AMOUNT_OUT_OF_RANGE),
        (replace(DETAILS, amount=Decimal("500.01")), SessionErrorCode.AMOUNT_OUT_OF_RANGE),
        (replace(DETAILS, amount=Decimal("12.505")), SessionErrorCode.BAD_AMOUNT),
        (replace(DETAILS, amount=Decimal("NaN")), SessionErrorCode.BAD_AMOUNT),
        (replace(DETAILS, amount=Decimal("Infinity")), SessionErrorCode.BAD_AMOUNT),
        (replace(DETAILS, billing=BillingDetails("")), SessionErrorCode.BAD_BILLING),
        (replace(DETAILS, billing=BillingDetails("x" * 201)), SessionErrorCode.BAD_BILLING),
        (replace(DETAILS, billing=BillingDetails("A", "x" * 501)), SessionErrorCode.BAD_BILLING),
        (replace(DETAILS, billing=BillingDetails("A", country="gb")), SessionErrorCode.BAD_BILLING),
        (
            replace(DETAILS, billing=BillingDetails("Ada 4111 1111 1111 1111")),
            SessionErrorCode.BILLING_CONTAINS_CARD_NUMBER,
        ),
        (
            replace(DETAILS, billing=BillingDetails("Ada", "5555-5555-5555-4444")),
            SessionErrorCode.BILLING_CONTAINS_CARD_NUMBER,
        ),
    ],
)
def test_details_refused(details: SetDetails, code: SessionErrorCode) -> None:
    run = _joining()
    with pytest.raises(SessionError) as info:
        run(details)
    assert info.value.code is code
    assert_no_leak(str(info.value), repr(info.value), cards=CARDS)
    assert run.s.amount is None


def test_details_accepted_and_normalised() -> None:
    run = _joining()
    run(replace(DETAILS, amount=Decimal("12.5"), billing=BillingDetails("Ada", country="GB")))
    assert run.s.view().to_dict()["amount"] == "12.50"


@pytest.mark.parametrize(
    ("event", "state_maker"),
    [
        (Proceed(), _joining),
        (StartCapture(), _joining),
        (ResetField(FieldName.CVV), _on_hold),
        (Process(), _capturing),
        (DETAILS, _processing),
    ],
)
def test_wrong_state_is_refused(event: Input, state_maker: object) -> None:
    run = state_maker()  # type: ignore[operator]
    with pytest.raises(SessionError) as info:
        run(event)
    assert info.value.code is SessionErrorCode.WRONG_STATE


def test_reset_field() -> None:
    run = Run()
    run.to_ready()
    out = run(ResetField(FieldName.EXPIRY))
    assert run.s.state is SessionState.CAPTURING
    assert run.s.view().required == (FieldName.EXPIRY,)
    assert any(isinstance(o, FieldUpdated) and o.field is FieldName.EXPIRY for o in out)
    run.keys("1131")
    assert run.s.state is SessionState.READY
    with pytest.raises(SessionError) as info:
        Run(replace(PROFILE, fields=DEFAULT_FIELDS)).s.handle(ResetField(FieldName.POSTAL_CODE), 0)
    assert info.value.code is SessionErrorCode.WRONG_STATE
    run2 = Run(replace(PROFILE, fields=DEFAULT_FIELDS))
    run2.to_capturing()
    with pytest.raises(SessionError) as info:
        run2(ResetField(FieldName.POSTAL_CODE))
    assert info.value.code is SessionErrorCode.UNKNOWN_FIELD


# ---------------------------------------------------------------------------------- keypad


def test_keypad_convention() -> None:
    run = Run()
    run.to_capturing()
    run.keys("#")  # stray # on an empty field: nothing
    assert run.field(FieldName.CARD_NUMBER)["state"] == "pending"
    run.keys("411*")  # * clears the field being typed
    assert run.field(FieldName.CARD_NUMBER)["digits"] == 0
    run.keys("5555555555554444")  # Mastercard ends by itself at 16
    assert run.field(FieldName.CARD_NUMBER)["state"] == "complete"
    run.keys("#")  # a # after a self-ended field does nothing
    assert run.field(FieldName.EXPIRY)["state"] == "pending"
    run.keys("*")  # * on an empty field reopens the one before
    assert run.field(FieldName.CARD_NUMBER)["state"] == "pending"
    run.keys("378282246310005")  # Amex ends by itself at 15
    assert run.field(FieldName.CARD_NUMBER)["brand"] == "amex"
    run.keys("0927" + "615")  # Amex needs 4: 3 digits and # is invalid
    run.keys("#")
    cvv = run.field(FieldName.CVV)
    assert (
        cvv["state"] == "invalid" and cvv["error"] == "wrong_cvv_length" and cvv["valid"] is False
    )
    run.keys("6153")  # the next digit starts the field again
    assert run.field(FieldName.CVV)["state"] == "complete"
    run.keys("ABCD")  # ignored
    run.keys("9410")
    run.keys("#")
    assert run.s.state is SessionState.READY
    run.keys("1#")  # READY: digits and # do nothing
    assert run.s.state is SessionState.READY
    run.keys("*")  # READY: * reopens the last field
    assert run.s.state is SessionState.CAPTURING
    assert run.s.view().required == (FieldName.POSTAL_CODE,)
    assert_no_leak(*run.log, cards=CARDS)


def test_invalid_fields_and_star_on_invalid() -> None:
    run = Run()
    run.to_capturing()
    run.keys("4111111111111112#")
    f = run.field(FieldName.CARD_NUMBER)
    assert (f["state"], f["error"], f["masked"]) == ("invalid", "luhn_failed", "*" * 16)
    run.keys("*")
    assert run.field(FieldName.CARD_NUMBER)["state"] == "pending"
    run.keys("9" * 19)  # no brand: ends at 19
    assert run.field(FieldName.CARD_NUMBER)["error"] == CardError.UNKNOWN_BRAND.value
    run.keys("4111111111111111#0524")
    assert run.field(FieldName.EXPIRY)["error"] == "expired"
    run.keys("1399")
    assert run.field(FieldName.EXPIRY)["error"] == "bad_month"


def test_cvv_rechecked_when_card_changes() -> None:
    run = Run()
    run.to_capturing()
    run.keys("378282246310005" + "0927" + "6153")
    assert run.field(FieldName.CVV)["state"] == "complete"
    run(ResetField(FieldName.CARD_NUMBER))
    run.keys("4111111111111111#")
    assert run.field(FieldName.CVV)["error"] == "wrong_cvv_length"
    assert run.s.view().required == (FieldName.CVV, FieldName.POSTAL_CODE)


def test_show_last_four_off() -> None:
    run = Run(replace(PROFILE, show_last_four=False))
    run.to_capturing()
    run.keys("4111111111111111#")
    assert run.field(FieldName.CARD_NUMBER)["masked"] == "*" * 16
    assert run.field(FieldName.CARD_NUMBER)["brand"] == CardBrand.VISA.value


def test_key_press_resets_idle_deadline() -> None:
    run = Run()
    run.to_capturing()
    first = run.s.get_timer()
    run(KeyPressed("4"), dt=10)
    assert run.s.get_timer() == pytest.approx(first + 10 + 0.0, abs=1)  # type: ignore[operator]


def test_only_guided_profiles_and_matching_provider() -> None:
    with pytest.raises(ValueError, match="guided"):
        PaymentSession(
            "p", "c", replace(PROFILE, method="self_service"), PROVIDER, today=TODAY, now=0
        )
    with pytest.raises(ValueError, match="provider"):
        PaymentSession("p", "c", PROFILE, replace(PROVIDER, name="other"), today=TODAY, now=0)


# --------------------------------------------------------------------------- properties

_inputs = st.one_of(
    st.sampled_from("0123456789*#AB").map(KeyPressed),
    st.sampled_from(
        [
            Proceed(),
            ProviderAnswered(),
            ProviderFailed("busy"),
            ProviderHungUp(),
            DETAILS,
            StartCapture(),
            Process(),
            Cancel(),
            CallEnded("caller"),
            CallerHoldChanged(True),
            ProviderResult("approved"),
            ProviderResult("declined", ErrorCode.CARD_EXPIRED),
            Restarted(),
            *(ResetField(f) for f in FieldName),
        ]
    ),
)
_keys_then_noise = st.lists(
    st.one_of(
        st.sampled_from(list(CARDS)).map(lambda p: [KeyPressed(k) for k in p + "#"]),
        st.lists(_inputs, max_size=6),
    ),
    max_size=12,
)


@settings(max_examples=150)
@given(_keys_then_noise, st.lists(st.floats(0, 200), min_size=1, max_size=5))
def test_random_inputs_never_crash_never_leak_never_strand(
    chunks: list[list[Input]], gaps: list[float]
) -> None:
    run = Run()
    run.to_capturing()
    versions = [run.s.version]
    finishes = 0
    for i, chunk in enumerate(chunks):
        for event in chunk:
            try:
                out = run(event, dt=gaps[i % len(gaps)] / 10)
            except SessionError as exc:
                run.log += [str(exc), repr(exc)]
                continue
            if any(isinstance(o, SessionFinished) for o in out):
                finishes += 1
                k = kinds(out)
                assert k.index(ReleaseProviderLeg) < k.index(RetrieveCaller)
            versions.append(run.s.version)
        deadline = run.s.get_timer()
        if deadline is not None and deadline <= run.now + gaps[i % len(gaps)]:
            out = run.s.handle_timer(deadline)
            run.record("timer", out)
            finishes += any(isinstance(o, SessionFinished) for o in out)
    assert versions == sorted(versions)
    assert finishes <= 1
    if run.s.finished:
        assert finishes == 1 and not run.s.caller_held
        assert all(len(f.buf) == 0 for f in run.s._fields.values())
    v = run.s.view()
    for f in v.fields:
        assert set(f.masked[:-4]) <= {"*"} and len(f.masked) == f.digits
        if f.name is not FieldName.CARD_NUMBER or not f.valid:
            assert set(f.masked) <= {"*"}
    assert_no_leak(*run.log, cards=CARDS)
