"""De-duplication while one report's end is not known yet: a copy of the key from another
source that starts within the press is that press, however late its start (an overloaded
node may drop or mask the first frames of an in-band copy)."""

from __future__ import annotations

from dtmfmask.dedup import DigitDeduplicator


def test_a_late_inband_start_within_an_open_rfc4733_press_is_that_press() -> None:
    d = DigitDeduplicator(window_ms=60.0)
    assert d.offer("5", "rfc4733", 0.0, None, (1, 800)) is True
    assert d.offer("5", "inband", 100.0, None) is False  # its first 100 ms were lost
    assert d.offer("5", "inband", 100.0, 160.0) is False
    assert d.offer("5", "rfc4733", 0.0, 160.0, (1, 800)) is False


def test_an_open_inband_report_within_an_ended_press_is_that_press() -> None:
    d = DigitDeduplicator(window_ms=60.0)
    assert d.offer("5", "rfc4733", 0.0, 200.0, (1, 800)) is True
    assert d.offer("5", "inband", 120.0, None) is False


def test_the_next_press_after_an_ended_one_is_new() -> None:
    d = DigitDeduplicator(window_ms=60.0)
    assert d.offer("5", "rfc4733", 0.0, 100.0, (1, 800)) is True
    assert d.offer("5", "inband", 0.0, 100.0) is False
    # the next press, 40 ms later, in-band first (its RFC 4733 start was lost)
    assert d.offer("5", "inband", 140.0, None) is True
    assert d.offer("5", "rfc4733", 140.0, 240.0, (1, 1920)) is False


def test_an_open_press_does_not_swallow_presses_long_after_it() -> None:
    """A press whose end was never reported (a lost end) takes no copy starting more than
    ``open_ms`` after it."""
    d = DigitDeduplicator(window_ms=60.0, open_ms=500.0)
    assert d.offer("5", "inband", 0.0, None) is True  # its end was lost
    assert d.offer("5", "rfc4733", 400.0, None, (1, 3200)) is False
    d = DigitDeduplicator(window_ms=60.0, open_ms=500.0)
    assert d.offer("5", "inband", 0.0, None) is True
    assert d.offer("5", "rfc4733", 1000.0, None, (1, 8000)) is True
    assert d.offer("5", "inband", 1010.0, 1100.0) is False  # and its copy goes with it


def test_a_break_in_the_inband_copy_while_rfc4733_holds_the_key_is_one_press() -> None:
    """Audio frames lost in the middle of a key (masking frames take their slots): the
    in-band copy ends and starts again 20 ms later, while RFC 4733 says the key is down."""
    d = DigitDeduplicator(window_ms=60.0, gap_ms=20.0)
    assert d.offer("5", "rfc4733", 200.0, None, (1, 1600)) is True
    assert d.offer("5", "inband", 200.0, None) is False
    assert d.offer("5", "inband", 200.0, 260.0) is False
    assert d.offer("5", "inband", 280.0, None) is False  # the key is still down
    assert d.offer("5", "rfc4733", 200.0, 360.0, (1, 1600)) is False
    assert d.offer("5", "inband", 280.0, 360.0) is False


def test_the_next_press_after_the_rfc4733_end_is_new() -> None:
    d = DigitDeduplicator(window_ms=60.0, gap_ms=20.0)
    assert d.offer("5", "rfc4733", 0.0, 100.0, (1, 800)) is True
    assert d.offer("5", "inband", 0.0, 100.0) is False
    assert d.offer("5", "inband", 140.0, None) is True  # after the end: a new press
    assert d.offer("5", "rfc4733", 140.0, 240.0, (1, 1920)) is False
