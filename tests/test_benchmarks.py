"""Smoke test for benchmarks/dsp_throughput.py: it runs, exits 0 and prints the JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "dsp_throughput.py"


def test_dsp_throughput_quick_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    results = data["results"]
    assert isinstance(results, list) and results
    assert {r["mode"] for r in results} == {"detect", "detect+mask"}
    for r in results:
        assert isinstance(r["streams"], int) and r["streams"] >= 1
        assert isinstance(r["audio_s_per_cpu_s"], float) and r["audio_s_per_cpu_s"] > 0
        assert isinstance(r["bytes_per_stream"], int) and r["bytes_per_stream"] > 0
    # every stream count is measured in both modes
    by_streams: dict[int, set[str]] = {}
    for r in results:
        by_streams.setdefault(r["streams"], set()).add(r["mode"])
    assert all(modes == {"detect", "detect+mask"} for modes in by_streams.values())
    assert data["numpy"] and data["blas"]
