"""Smoke test for benchmarks/proxy_load.py: the quick run (5 calls over SIP through the
proxy, and through the bare relay) exits 0 and prints one JSON object with every figure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "proxy_load.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None and not os.environ.get("CI"),
    reason="uvloop not installed (the [fast] extra); CI runs it regardless",
)


def test_proxy_load_quick_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert data["quick"] is True
    assert data["lookahead_ms"] > 0 and data["latency_method"]
    assert set(data["targets"]) == {"calls", "packets_per_s", "loss", "p99_ms", "cpu_ratio"}
    (r,) = data["results"]
    assert r["calls"] == 5
    for kind in ("proxy", "bare"):
        x = r[kind]
        assert "error" not in x, x
        assert x["calls_up"] == 5
        assert x["sent"] > 0 and 0 <= x["received"] <= x["sent"]
        assert 0.0 <= x["loss"] <= 1.0 and x["reordered"] >= 0 and x["duplicates"] >= 0
        for lat in ("latency", "latency_caller_to_agent", "latency_agent_to_caller"):
            assert set(x[lat]) == {"p50_ms", "p99_ms", "max_ms"}
            assert 0 < x[lat]["p50_ms"] <= x[lat]["p99_ms"] <= x[lat]["max_ms"]
        assert x["cpu_us_per_packet"] is not None and x["cpu_us_per_packet"] >= 0
        assert x["packets_per_s"] > 0
    p = r["proxy"]
    # over SIP and back: every call answered, hung up, and gone from the proxy
    assert p["bye_ok"] == 5 and p["pbx_saw_bye"] == 5 and p["calls_after_bye"] == 0
    m = p["proxy_metrics"]
    assert m["rx_packets"] > 0 and isinstance(m["drops"], dict)
    assert p["dtmf_calls"] == 1 and m["digits_masked"] >= 1
    assert set(r["met"]) >= {"loss", "p99", "cpu_ratio", "all_calls_up", "digits_masked"}
    assert r["cpu_ratio"] is None or r["cpu_ratio"] > 0
