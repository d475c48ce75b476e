"""Cross-transport de-duplication: one key press, one digit."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtmfmask.dedup import DigitDeduplicator
from dtmfmask.events import Source
from dtmfmask.tones import DIGITS


def test_one_press_on_all_three_transports_counts_once() -> None:
    d = DigitDeduplicator()
    assert d.offer("5", "inband", 1000.0, 1100.0) is True
    assert d.offer("5", "rfc4733", 1003.0, 1105.0) is False
    assert d.offer("5", "info", 1450.0, 1550.0) is False


@pytest.mark.parametrize("order", list(itertools.permutations(["inband", "rfc4733", "info"])))
def test_any_arrival_order_counts_once(order: tuple[Source, ...]) -> None:
    d = DigitDeduplicator()
    reports = {"inband": (1000.0, 1100.0), "rfc4733": (1010.0, 1090.0), "info": (1300.0, 1400.0)}
    counted = [d.offer("7", src, *reports[src]) for src in order]
    assert counted == [True, False, False]


def test_offered_at_start_then_again_at_end() -> None:
    d = DigitDeduplicator()
    assert d.offer("1", "inband", 0.0, None) is True
    assert d.offer("1", "rfc4733", 2.0, None) is False
    assert d.offer("1", "inband", 0.0, 90.0) is False
    assert d.offer("1", "rfc4733", 4.0, 95.0) is False


def test_repeated_presses_of_one_key_count_each() -> None:
    d = DigitDeduplicator()
    # Q.24 minimum timing: 40 ms tones, 40 ms gaps.
    starts = [0.0, 80.0, 160.0, 240.0]
    assert [d.offer("3", "inband", s, s + 40) for s in starts] == [True] * 4
    # RFC 4733 reports the same presses, late and each a little stretched.
    assert [d.offer("3", "rfc4733", s + 15, s + 60) for s in starts] == [False] * 4
    assert [d.offer("3", "info", s + 700, s + 740) for s in starts] == [False] * 4
    assert d.offer("3", "inband", 320.0, 360.0) is True


def test_late_reports_from_another_source_do_not_merge_real_presses() -> None:
    d = DigitDeduplicator()
    assert d.offer("9", "rfc4733", 0.0, 100.0) is True
    assert d.offer("9", "rfc4733", 140.0, 240.0) is True
    # In-band reports both after a look-ahead delay, the first one stretched over the gap.
    assert d.offer("9", "inband", 0.0, 180.0) is False
    assert d.offer("9", "inband", 141.0, 240.0) is False


def test_same_source_break_shorter_than_gap_is_one_press() -> None:
    d = DigitDeduplicator()  # gap_ms=20
    assert d.offer("4", "inband", 0.0, 100.0) is True
    assert d.offer("4", "inband", 115.0, 200.0) is False  # 15 ms break: one press
    assert d.offer("4", "inband", 240.0, 300.0) is True  # 40 ms gap: a new press
    assert d.offer("4", "inband", 332.0, 400.0) is True  # 40 ms measured as 32: still new


def test_named_presses_are_matched_by_name_not_by_time() -> None:
    """RFC 4733 names its presses (SSRC, timestamp). Two presses of one key whose reported
    times run together (their arrival was delayed: a stalled loop, jitter) are still two;
    the same press offered again at its end, with times off by more than the window, is
    still one."""
    d = DigitDeduplicator()
    assert d.offer("1", "rfc4733", 0.0, None, press_id=(7, 1000)) is True
    assert d.offer("1", "rfc4733", 0.0, 190.0, press_id=(7, 1000)) is False
    # the next press's start, estimated from a late first packet, lands 5 ms after the end
    assert d.offer("1", "rfc4733", 195.0, None, press_id=(7, 3000)) is True
    assert d.offer("1", "rfc4733", 130.0, 300.0, press_id=(7, 3000)) is False
    # in-band reports of the same two presses still join them, by time
    assert d.offer("1", "inband", 2.0, 180.0) is False
    assert d.offer("1", "inband", 205.0, 290.0) is False


def test_gap_is_configurable() -> None:
    d = DigitDeduplicator(gap_ms=40.0)
    assert d.offer("4", "inband", 0.0, 100.0) is True
    assert d.offer("4", "inband", 130.0, 200.0) is False
    assert d.offer("4", "inband", 240.0, 300.0) is True


def test_different_digits_close_together_are_both_counted() -> None:
    d = DigitDeduplicator()
    assert d.offer("1", "inband", 0.0, 40.0) is True
    assert d.offer("2", "inband", 40.0, 80.0) is True
    assert d.offer("1", "rfc4733", 5.0, 45.0) is False
    assert d.offer("2", "rfc4733", 42.0, 85.0) is False
    assert d.offer("2", "info", 50.0, 90.0) is False
    assert d.offer("1", "info", 60.0, 100.0) is False


def test_late_info_is_matched_to_the_oldest_unmatched_press() -> None:
    d = DigitDeduplicator(info_tolerance_ms=1500.0)
    assert d.offer("8", "inband", 0.0, 100.0) is True
    assert d.offer("8", "inband", 200.0, 300.0) is True
    assert d.offer("8", "info", 900.0, 1000.0) is False
    assert d.offer("8", "info", 1100.0, 1200.0) is False
    # A third INFO has nothing left to match: it is a press media never saw.
    assert d.offer("8", "info", 1300.0, 1400.0) is True


def test_info_beyond_its_tolerance_is_a_new_press() -> None:
    d = DigitDeduplicator(info_tolerance_ms=500.0)
    assert d.offer("0", "inband", 0.0, 100.0) is True
    assert d.offer("0", "info", 600.0, 700.0) is True


def test_info_first_then_media() -> None:
    d = DigitDeduplicator()
    assert d.offer("#", "info", 800.0, 900.0) is True
    assert d.offer("#", "inband", 100.0, 200.0) is False
    assert d.offer("#", "rfc4733", 102.0, 198.0) is False


def test_info_only_repeated_presses() -> None:
    d = DigitDeduplicator()
    assert d.offer("*", "info", 0.0, 100.0) is True
    assert d.offer("*", "info", 300.0, 400.0) is True
    assert d.offer("*", "info", 300.0, 400.0) is False  # the same INFO twice


def test_media_press_outside_window_is_new() -> None:
    d = DigitDeduplicator(window_ms=60.0)
    assert d.offer("6", "inband", 0.0, 40.0) is True
    assert d.offer("6", "rfc4733", 100.0, 140.0) is True


def test_open_press_matches_within_window_only() -> None:
    d = DigitDeduplicator(window_ms=60.0)
    assert d.offer("6", "rfc4733", 0.0, None) is True
    assert d.offer("6", "inband", 50.0, None) is False
    assert d.offer("6", "rfc4733", 500.0, None) is True


def test_bad_arguments() -> None:
    d = DigitDeduplicator()
    with pytest.raises(ValueError):
        d.offer("E", "inband", 0.0, None)
    with pytest.raises(ValueError):
        d.offer("1", "fax", 0.0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        d.offer("1", "inband", 10.0, 5.0)
    with pytest.raises(ValueError):
        DigitDeduplicator(window_ms=-1)


def test_memory_is_bounded() -> None:
    d = DigitDeduplicator(memory=16)
    for i in range(10_000):
        assert d.offer(DIGITS[i % 16], "inband", i * 100.0, i * 100.0 + 50) is True
    assert len(d._presses) == 16


presses = st.lists(
    st.tuples(
        st.sampled_from(DIGITS[:3]),  # few keys, so repeats of one key are common
        st.integers(40, 300),  # tone length, ms
        st.integers(40, 400),  # gap after it, ms
    ),
    min_size=1,
    max_size=12,
)


@given(presses=presses, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_every_press_counted_once_whatever_the_sources(
    presses: list[tuple[str, int, int]], seed: int
) -> None:
    """Media reports jitter by a few ms, INFO lags by up to a second; each press is one digit.

    Every press reaches at least one media source (in-band or RFC 4733); any source may
    miss any press. A press seen by INFO alone is left out: next to a same-key press whose
    INFO is missing, it cannot be told from that press's late INFO, by any rule.
    """
    rng = random.Random(seed)
    reports: list[tuple[float, str, Source, float, float]] = []  # (arrival, digit, src, s, e)
    t = 0.0
    for digit, length, gap in presses:
        media: list[Source] = [s for s in ("inband", "rfc4733") if rng.random() < 0.7]
        sources: list[Source] = (media or ["inband"]) + (["info"] if rng.random() < 0.7 else [])
        info_lag = rng.uniform(100, 1000)
        for src in sources:
            if src == "info":
                s = t + info_lag
                reports.append((s, digit, "info", s, s + length))
            else:
                s = t + rng.uniform(-5, 5)
                e = t + length + rng.uniform(-5, 5)
                reports.append((e + rng.uniform(0, 150), digit, src, s, e))
        t += length + gap
    reports.sort()
    d = DigitDeduplicator(info_tolerance_ms=1200.0)
    counted = [dg for _, dg, src, s, e in reports if d.offer(dg, src, s, e)]
    # Reports arrive out of order across sources, so compare as multisets.
    assert sorted(counted) == sorted(dg for dg, _, _ in presses)
