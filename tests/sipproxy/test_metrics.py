"""Tests for sipproxy.metrics: exposition format, histograms, totals, lag probe, HTTP."""

from __future__ import annotations

import asyncio
import math
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sipproxy.metrics import (
    CONTENT_TYPE,
    DSP_TICK_BUCKETS,
    Histogram,
    LoopLagProbe,
    MetricFamily,
    MetricsServer,
    Registry,
    Sample,
    Totals,
    as_labels,
    counter,
    gauge,
)

# ------------------------------------------------------------------ a strict format check

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_LABELS = (
    rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*)?\}}"
)
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|\+Inf|-Inf)"
HELP = re.compile(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\\\|\\n)*)\Z")
TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)\Z")
SAMPLE = re.compile(rf"({_NAME})({_LABELS})? ({_VALUE})\Z")


def check_exposition(text: str) -> dict[str, str]:
    """Strict 0.0.4 check: every line is HELP, TYPE or a sample of the family just typed.

    Returns {family: type}. Raises AssertionError on the first bad line.
    """
    assert text.endswith("\n"), "exposition must end with a newline"
    types: dict[str, str] = {}
    current: str | None = None
    series: set[str] = set()
    helped: set[str] = set()
    for n, line in enumerate(text[:-1].split("\n"), start=1):
        if m := HELP.match(line):
            assert m[1] not in helped, f"line {n}: second HELP for {m[1]}"
            helped.add(m[1])
            continue
        if m := TYPE.match(line):
            assert m[1] not in types, f"line {n}: second TYPE for {m[1]}"
            types[m[1]] = m[2]
            current = m[1]
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n}: not a valid line: {line!r}"
        assert current is not None, f"line {n}: sample before any TYPE"
        kind = types[current]
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
        allowed = {current + s for s in suffixes.get(kind, ("",))}
        assert m[1] in allowed, f"line {n}: {m[1]} does not belong to {current} ({kind})"
        key = m[1] + (m[2] or "")
        assert key not in series, f"line {n}: repeated series {key}"
        series.add(key)
    return types


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


# -------------------------------------------------------------------------------- render


def test_render_counters_gauges_and_escaping() -> None:
    reg = Registry()
    reg.register(
        lambda: [
            counter(
                "dtmfmask_rtp_drops_total",
                'Dropped RTP packets, by "reason".\nSecond line \\ backslash.',
                {as_labels(reason="short"): 3, as_labels(reason='a"b\\c\nd'): 1},
            ),
            gauge("dtmfmask_calls", "Calls in progress.", 7),
            gauge(
                "dtmfmask_odd",
                "Odd values.",
                {
                    as_labels(v="nan"): math.nan,
                    as_labels(v="inf"): math.inf,
                    as_labels(v="-inf"): -math.inf,
                    as_labels(v="frac"): 0.125,
                },
            ),
        ]
    )
    text = reg.render()
    assert check_exposition(text) == {
        "dtmfmask_rtp_drops_total": "counter",
        "dtmfmask_calls": "gauge",
        "dtmfmask_odd": "gauge",
        "dtmfmask_metrics_collector_errors_total": "counter",
    }
    assert (
        '# HELP dtmfmask_rtp_drops_total Dropped RTP packets, by "reason".\\nSecond line '
        "\\\\ backslash.\n" in text
    )
    assert 'dtmfmask_rtp_drops_total{reason="short"} 3\n' in text
    assert 'dtmfmask_rtp_drops_total{reason="a\\"b\\\\c\\nd"} 1\n' in text
    assert "dtmfmask_calls 7\n" in text
    for line in ('{v="nan"} NaN', '{v="inf"} +Inf', '{v="-inf"} -Inf', '{v="frac"} 0.125'):
        assert line in text
    fams = parse(text)
    drops = fams["dtmfmask_rtp_drops"]
    got = {s.labels["reason"]: s.value for s in drops.samples}
    assert got == {"short": 3.0, 'a"b\\c\nd': 1.0}
    assert drops.documentation == 'Dropped RTP packets, by "reason".\nSecond line \\ backslash.'


@settings(max_examples=150, deadline=None)
@given(
    help_text=st.text(
        st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from('\\\n" '),
        max_size=40,
    ),
    values=st.dictionaries(st.text(max_size=20), st.integers(0, 2**53), min_size=1, max_size=5),
)
def test_any_help_and_label_value_round_trips(help_text: str, values: dict[str, int]) -> None:
    reg = Registry()
    reg.register(
        lambda: [counter("x_total", help_text, {as_labels(k=k): v for k, v in values.items()})]
    )
    text = reg.render()
    check_exposition(text)
    fam = parse(text)["x"]
    assert fam.documentation.strip() == help_text.strip()  # its parser trims HELP text
    assert {s.labels["k"]: s.value for s in fam.samples} == values


def test_metric_family_checks_names_and_labels() -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        counter("dtmfmask_drops", "x", 1)
    with pytest.raises(ValueError, match="bad metric name"):
        gauge("2bad", "x", 1)
    with pytest.raises(ValueError, match="bad metric name"):
        gauge("bad-name", "x", 1)
    with pytest.raises(ValueError, match="bad label name"):
        gauge("g", "x", 1, labels={"bad-label": "v"})
    with pytest.raises(ValueError, match="bad label name"):
        gauge("g", "x", 1, labels={"__reserved": "v"})
    with pytest.raises(ValueError, match="reserved"):
        gauge("g", "x", 1, labels={"le": "1"})
    with pytest.raises(ValueError, match="repeated label"):
        MetricFamily("g", "gauge", "x", (Sample(1, (("a", "1"), ("a", "2"))),))
    with pytest.raises(ValueError, match="suffix"):
        MetricFamily("g", "gauge", "x", (Sample(1, (), "_bucket"),))


# ----------------------------------------------------------------------------- histogram


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    fam = h.family("dtmfmask_dsp_tick_seconds", "DSP time per tick.", {"node": "a"})
    reg = Registry()
    reg.register(lambda: [fam])
    text = reg.render()
    check_exposition(text)
    assert 'dtmfmask_dsp_tick_seconds_bucket{node="a",le="0.1"} 2\n' in text
    assert 'dtmfmask_dsp_tick_seconds_bucket{node="a",le="1"} 4\n' in text
    assert 'dtmfmask_dsp_tick_seconds_bucket{node="a",le="+Inf"} 5\n' in text
    assert 'dtmfmask_dsp_tick_seconds_count{node="a"} 5\n' in text
    parsed = parse(text)["dtmfmask_dsp_tick_seconds"]
    sums = [s.value for s in parsed.samples if s.name.endswith("_sum")]
    assert sums == [pytest.approx(8.65)]


def test_histogram_rejects_bad_bounds() -> None:
    for bounds in ([], [1.0, 1.0], [2.0, 1.0], [1.0, math.inf], [math.nan]):
        with pytest.raises(ValueError):
            Histogram(bounds)
    Histogram(DSP_TICK_BUCKETS)


# -------------------------------------------------------------------------------- totals


@dataclass(slots=True)
class FakeLegCounters:
    rx_packets: int = 0
    short: int = 0
    hijack: int = 0


def test_totals_never_go_down_when_calls_end() -> None:
    totals = Totals(FakeLegCounters)
    a, b = FakeLegCounters(rx_packets=10, short=1), FakeLegCounters(rx_packets=5, hijack=2)
    assert totals.totals([a, b]) == {"rx_packets": 15, "short": 1, "hijack": 2}
    totals.retire(a)
    a.rx_packets += 100  # a stale reference keeps counting: not seen any more
    assert totals.totals([b]) == {"rx_packets": 15, "short": 1, "hijack": 2}
    b.rx_packets += 1
    assert totals.totals([b])["rx_packets"] == 16
    with pytest.raises(TypeError):
        Totals(int)


def test_dataclass_counters_exported_per_reason() -> None:
    totals = Totals(FakeLegCounters)
    live = [FakeLegCounters(rx_packets=3, short=2)]
    reg = Registry()

    @reg.register
    def relay():
        t = totals.totals(live)
        return [
            counter("dtmfmask_rtp_received_packets_total", "RTP packets in.", t["rx_packets"]),
            counter(
                "dtmfmask_rtp_dropped_packets_total",
                "RTP packets dropped, by reason.",
                {as_labels(reason=r): t[r] for r in ("short", "hijack")},
            ),
        ]

    text = reg.render()
    check_exposition(text)
    assert "dtmfmask_rtp_received_packets_total 3\n" in text
    assert 'dtmfmask_rtp_dropped_packets_total{reason="hijack"} 0\n' in text
    live[0].rx_packets += 1  # read on scrape: the next scrape sees it
    assert "dtmfmask_rtp_received_packets_total 4\n" in reg.render()


# ------------------------------------------------------------------------------ registry


def test_broken_collector_is_skipped_and_counted() -> None:
    reg = Registry()

    def broken():
        raise RuntimeError("boom")

    reg.register(broken)
    reg.register(lambda: [counter("bad_name", "no _total", 1)])  # raises while building
    reg.register(lambda: [gauge("dup", "first", 1)])
    reg.register(lambda: [gauge("dup", "second", 2), gauge("ok", "fine", 3)])
    text = reg.render()
    check_exposition(text)
    assert "dup 1\n" in text and "dup 2\n" not in text and "ok 3\n" in text
    assert "dtmfmask_metrics_collector_errors_total 3\n" in text
    reg.unregister(broken)
    assert "dtmfmask_metrics_collector_errors_total 5\n" in reg.render()  # 3 + 2 more


def test_empty_registry_renders_its_own_counter() -> None:
    text = Registry().render()
    assert check_exposition(text) == {"dtmfmask_metrics_collector_errors_total": "counter"}


# ------------------------------------------------------------------------------ lag probe


def test_lag_probe_records_overshoot() -> None:
    probe = LoopLagProbe(interval_s=0.01)
    probe.record(-0.001)  # clock jitter: never negative
    probe.record(0.003)
    probe.record(0.2)
    assert probe.last_s == 0.2 and probe.max_s == 0.2
    assert probe.histogram.count == 3
    fams = {f.name: f for f in probe.collect()}
    assert fams["dtmfmask_event_loop_lag_max_seconds"].samples[0].value == 0.2
    with pytest.raises(ValueError):
        LoopLagProbe(interval_s=0)


def test_lag_probe_sees_a_blocked_loop() -> None:
    async def scenario() -> LoopLagProbe:
        probe = LoopLagProbe(interval_s=0.01)
        probe.start()
        await asyncio.sleep(0.03)
        time.sleep(0.08)  # a callback that blocks the loop
        await asyncio.sleep(0.03)
        assert probe.start() is probe.start()  # idempotent while running
        await probe.stop()
        await probe.stop()  # twice is fine
        return probe

    probe = asyncio.run(scenario())
    assert probe.histogram.count >= 2
    assert probe.max_s >= 0.05


# ---------------------------------------------------------------------------------- HTTP


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_get_metrics_on_loopback() -> None:
    async def scenario() -> list[tuple[int, dict[str, str], bytes]]:
        reg = Registry()
        calls = {"n": 0}

        def collector():
            calls["n"] += 1
            return [gauge("dtmfmask_calls", "Calls in progress.", calls["n"])]

        reg.register(collector)
        probe = LoopLagProbe(interval_s=0.005)
        reg.register(probe.collect)
        probe.start()
        async with MetricsServer(reg, "127.0.0.1", 0) as server:
            assert server.port > 0
            base = f"http://127.0.0.1:{server.port}"
            await asyncio.sleep(0.02)
            out = []
            for path, method in [
                ("/metrics", "GET"),
                ("/metrics", "GET"),
                ("/", "GET"),
                ("/metrics/extra", "GET"),
                ("/other", "GET"),
                ("/metrics", "HEAD"),
            ]:
                out.append(await asyncio.to_thread(_get, base + path, method))
        await probe.stop()
        return out

    first, second, root, extra, other, head = asyncio.run(scenario())
    status, headers, body = first
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE
    text = body.decode()
    types = check_exposition(text)
    assert types["dtmfmask_event_loop_lag_seconds"] == "histogram"
    fams = parse(text)
    assert fams["dtmfmask_calls"].samples[0].value == 1
    assert parse(second[2].decode())["dtmfmask_calls"].samples[0].value == 2  # read per scrape
    assert fams["dtmfmask_event_loop_lag_seconds"].type == "histogram"
    for status, _, _ in (root, extra, other):
        assert status == 404
    assert head[0] == 200 and head[2] == b""


def test_http_server_stops_and_frees_its_port() -> None:
    async def scenario() -> int:
        server = MetricsServer(Registry())
        await server.start()
        port = server.port
        await server.stop()
        return port

    port = asyncio.run(scenario())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
