"""The Q.24 receiver: the battery (CI size), streaming, batching, talk-off."""

from __future__ import annotations

import numpy as np
import pytest

from dtmfmask.detector import BLOCK, DtmfDetector, detect_signal
from dtmfmask.events import DigitEnded, DigitStarted
from dtmfmask.tones import DIGITS, dtmf_tone
from tests.dtmfmask.engine_helpers import detect_many, digits
from tests.signals import Case, mix_presses_into_speech, q24_battery

CASES = [c for c in q24_battery(ci_sized=True) if not c.report_only]


@pytest.fixture(scope="module")
def battery_events() -> dict[str, list]:
    found = detect_many([c.signal for c in CASES])
    return {c.name: ev for c, ev in zip(CASES, found, strict=True)}


@pytest.mark.parametrize("case", [c for c in CASES if c.expected is not None], ids=lambda c: c.name)
def test_q24_battery(case: Case, battery_events: dict[str, list]) -> None:
    events = battery_events[case.name]
    assert digits(events) == case.expected
    # each reported key starts within 10 ms of the tone's first sample and ends with it
    starts = [e for e in events if isinstance(e, DigitStarted)]
    ends = [e for e in events if isinstance(e, DigitEnded)]
    assert len(ends) == len(starts)
    for press, start, end in zip(case.expected_presses, starts, ends, strict=True):
        assert abs(start.start - press.start) <= 80
        assert abs(end.end - press.end) <= 120


def test_battery_covers_every_q24_figure() -> None:
    groups = {c.group for c in CASES}
    assert {"keys", "offset", "twist", "level", "duration", "gap", "noise"} <= groups
    assert {c.law for c in CASES} == {"linear", "ulaw", "alaw"}


def test_frames_of_any_length_give_the_same_events() -> None:
    x = np.concatenate([np.zeros(333), dtmf_tone("5", 480), np.zeros(700), dtmf_tone("#", 400)])
    x = np.concatenate([x, np.zeros(1000)])
    whole = detect_signal(x)
    det = DtmfDetector()
    sid = det.add_stream()
    rng = np.random.default_rng(1)
    events = []
    pos = 0
    while pos < x.size:
        n = int(rng.integers(1, 500))
        events += det.process([sid], x[pos : pos + n].reshape(1, -1))
        pos += n
    events += det.finish(sid)
    assert digits(events) == digits(whole) == "5#"
    assert [e for e in events if isinstance(e, DigitEnded)] == [
        e for e in whole if isinstance(e, DigitEnded)
    ]


def test_batched_streams_match_single_streams() -> None:
    rng = np.random.default_rng(7)
    signals = []
    for _ in range(24):
        parts = [np.zeros(int(rng.integers(0, 800)))]
        for d in rng.choice(list(DIGITS), 3):
            parts += [dtmf_tone(str(d), int(rng.integers(320, 800)), -20), np.zeros(400)]
        signals.append(np.concatenate(parts) + rng.normal(0, 30, sum(p.size for p in parts)))
    batched = detect_many(signals)
    for sig, ev in zip(signals, batched, strict=True):
        single = detect_signal(sig)
        assert digits(ev) == digits(single)
        assert [e.start for e in ev if isinstance(e, DigitStarted)] == [
            e.start for e in single if isinstance(e, DigitStarted)
        ]


def test_streams_are_independent_and_reusable() -> None:
    det = DtmfDetector(capacity=2)
    a, b = det.add_stream(), det.add_stream()
    tone = dtmf_tone("7", 480).reshape(1, -1)
    # stream a hears a key, b silence: only a reports
    ev = det.process([a, b], np.concatenate([tone, np.zeros_like(tone)]))
    ev += det.process([a, b], np.zeros((2, 800)))
    assert [(e.stream, e.digit) for e in ev if isinstance(e, DigitStarted)] == [(a, "7")]
    det.remove_stream(a)
    c = det.add_stream()  # reuses the slot with fresh state and positions from zero
    assert det.position(c) == 0
    ev = det.process([c], np.concatenate([dtmf_tone("9", 480), np.zeros(800)]).reshape(1, -1))
    assert digits(ev) == "9"
    assert ev[0].start < 2 * BLOCK
    # growing past the initial capacity keeps existing streams' state
    more = [det.add_stream() for _ in range(40)]
    assert len(set(more)) == 40


def test_bad_batch_shape_is_a_clear_error() -> None:
    det = DtmfDetector()
    sid = det.add_stream()
    with pytest.raises(ValueError, match="2 frames for 1 streams"):
        det.process([sid], np.zeros((2, 160)))


def test_no_digits_in_speech(talkoff_speech: np.ndarray) -> None:
    """Talk-off: zero false digits over 30 minutes of speech (Bellcore allows ~157/h)."""
    chunks = np.array_split(talkoff_speech, 60)  # one stream per 30 s, batched
    found = detect_many(chunks)
    false = [e for ev in found for e in ev if isinstance(e, DigitStarted)]
    assert false == []


def test_no_digits_in_music(music: np.ndarray) -> None:
    found = detect_many(np.array_split(music, 8))
    assert [e for ev in found for e in ev if isinstance(e, DigitStarted)] == []


def test_key_presses_mixed_into_speech(talkoff_speech: np.ndarray) -> None:
    """Presses over speech that goes on underneath: every press at least 6 dB above the
    speech under it is found, and nothing that was not pressed is ever reported."""
    rng = np.random.default_rng(11)
    signals, truths, clear = [], [], []
    for i in range(12):
        speech = talkoff_speech[i * 160_000 : (i + 1) * 160_000].astype(np.float64)
        keys = "".join(rng.choice(list(DIGITS), 16))
        mixed, presses = mix_presses_into_speech(speech, keys, (-20.0, -4.0), rng=100 + i)
        signals.append(mixed)
        truths.append(presses)
        clear.append(
            [
                np.mean((mixed[p.start : p.end] - speech[p.start : p.end]) ** 2)
                >= 4.0 * np.mean(speech[p.start : p.end] ** 2)
                for p in presses
            ]
        )
    found = detect_many(signals)
    n_clear = 0
    for events, presses, ok in zip(found, truths, clear, strict=True):
        starts = [e for e in events if isinstance(e, DigitStarted)]
        # every reported key is a real press, reported once
        matched = []
        for e in starts:
            hit = [j for j, p in enumerate(presses) if p.start - 80 <= e.start < p.end]
            assert len(hit) == 1 and presses[hit[0]].digit == e.digit, e
            matched.append(hit[0])
        assert len(matched) == len(set(matched))
        # every clearly audible press is reported
        for j, audible in enumerate(ok):
            n_clear += audible
            assert not audible or j in matched, presses[j]
    assert n_clear >= 120  # the test is not vacuous


@pytest.mark.parametrize(
    ("row", "col", "twist", "snr"),
    [
        (0.015, 0.015, 8.0, 15.0),
        (-0.015, -0.015, -4.0, 15.0),
        (0.015, -0.015, 0.0, None),
        (-0.015, 0.015, 0.0, None),
    ],
)
def test_corners_of_the_acceptance_window(
    row: float, col: float, twist: float, snr: float | None
) -> None:
    """Both tones at ±1.5 % at once. Q.24 moves one figure at a time; a real generator's
    clock error moves both tones the same way, which must survive the largest twist in
    15 dB S/N. Opposite offsets (a 3 % spread, the limit the harmonic-pair check allows)
    are accepted on clean keys."""
    from tests.signals import add_white_noise, build_sequence

    signal, presses = build_sequence(
        DIGITS * 2, on_ms=40, off_ms=40, twist_db=twist, row_offset=row, col_offset=col, rng=5
    )
    if snr is not None:
        signal = add_white_noise(signal, snr, rng=6, presses=presses)
    assert digits(detect_signal(signal)) == DIGITS * 2


@pytest.mark.parametrize("few", [0, 10_000])
def test_state_machine_paths_agree(few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The array-wise and the stream-by-stream state machines give the same events."""
    import dtmfmask.detector as detector_module

    rng = np.random.default_rng(21)
    signals = []
    for _ in range(40):  # many keys in progress at once
        parts = [np.zeros(int(rng.integers(0, 300)))]
        for d in rng.choice(list(DIGITS), 4):
            parts += [
                dtmf_tone(str(d), int(rng.integers(300, 900)), -15),
                np.zeros(int(rng.integers(320, 700))),
            ]
        signals.append(np.concatenate(parts))
    monkeypatch.setattr(detector_module, "_FEW_STREAMS", few)
    batched = detect_many(signals)
    monkeypatch.setattr(detector_module, "_FEW_STREAMS", 10_000)
    for sig, ev in zip(signals, batched, strict=True):
        single = detect_signal(sig)
        assert [(type(e), e.digit, e.start) for e in ev] == [
            (type(e), e.digit, e.start) for e in single
        ]


def test_no_key_reaches_a_repr() -> None:
    """DESIGN invariant 3: a key press logged or shown in a traceback through its repr must
    not give the key away, whichever part of the engine reported it."""
    from dtmfmask.dedup import DigitDeduplicator
    from dtmfmask.rfc4733 import EventGenerator, EventReceiver, TelephoneEvent

    x = np.concatenate([np.zeros(400), dtmf_tone("7", 480), np.zeros(1200)])
    reprs = [repr(e) for e in detect_signal(x)]
    receiver = EventReceiver()
    for i, pkt in enumerate(EventGenerator().digit("9", 1000, 800)):
        for ev in receiver.receive(
            payload_type=101, ssrc=1, timestamp=pkt.timestamp, marker=pkt.marker,
            payload=pkt.payload, now=i * 20.0,
        ):  # fmt: skip
            reprs.append(repr(ev))
    reprs += [repr(t) for t in TelephoneEvent.parse(TelephoneEvent(9, True, 10, 800).build())]
    dedup = DigitDeduplicator()
    dedup.offer("5", "inband", 0.0, 100.0)
    reprs.append(repr(dedup._presses))  # what a debugger or a traceback with locals shows
    assert len(reprs) >= 5
    for text in reprs:
        assert "'7'" not in text and "'9'" not in text and "'5'" not in text, text
        assert "event=9" not in text, text
