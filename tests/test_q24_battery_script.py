"""Smoke test for benchmarks/q24_battery.py: the CI-sized run exits 0 and prints one JSON
object with every section's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "q24_battery.py"


def test_q24_battery_quick_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert data["quick"] is True
    assert {"battery", "sweeps", "talkoff", "masking", "lookahead", "timing_s"} <= set(data)
    assert set(data["timing_s"]) >= {"battery", "sweeps", "talkoff", "masking", "lookahead"}

    battery = data["battery"]
    assert set(battery["groups"]) == {
        "keys", "offset", "twist", "level", "duration", "gap", "noise"
    }  # fmt: skip
    for g in battery["groups"].values():
        assert g["pass"] + g["fail"] == g["checked"] <= g["cases"]
        assert len(g["failures"]) == g["fail"]
    assert set(battery["report_only_noise"]) == {"12", "9", "6"}
    for n in battery["report_only_noise"].values():
        assert 0.0 <= n["found_fraction"] <= 1.0 and n["extra_digits"] >= 0

    sweeps = data["sweeps"]
    for kind in ("normal", "reverse"):
        assert {"rows", "accept_limit_db", "reject_from_db"} <= set(sweeps["twist"][kind])
    assert len(sweeps["offset"]) == 8
    for o in sweeps["offset"].values():
        assert len(o["accept_band_pct"]) == len(o["reject_from_pct"]) == 2
    assert {"weakest_all_found_dbm0", "strongest_none_found_dbm0"} <= set(sweeps["level"])
    assert {"shortest_always_found_ms", "longest_never_found_ms"} <= set(sweeps["duration"])
    assert "shortest_gap_two_digits_ms" in sweeps["gap"]
    snrs = [r["snr_db"] for r in sweeps["noise"]["rows"]]
    assert snrs == [24.0, 21.0, 18.0, 15.0, 12.0, 9.0, 6.0, 3.0]

    talkoff = data["talkoff"]
    assert talkoff["bellcore_limit_per_hour"] == 157.0
    assert {"digits", "per_hour", "minutes"} <= set(talkoff["music"])
    assert "speech" in talkoff

    masking = data["masking"]
    assert {"speech", "battery", "mixed"} <= set(masking)
    assert {"detections", "cases_with_detections", "cases"} <= set(masking["battery"])

    la = data["lookahead"]
    assert [r["lookahead_ms"] for r in la["rows"]] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    for r in la["rows"]:
        assert {"uncovered_cases", "uncovered_report_only_cases", "detections"} <= set(r)
    assert "shortest_covering_except_report_only_ms" in la
    assert "shortest_covering_all_ms" in la
