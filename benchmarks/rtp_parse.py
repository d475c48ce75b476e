"""RTP/RTCP parse and build cost per packet (sipproxy.rtp), CPU time.

Run: python benchmarks/rtp_parse.py [--packets N]
Prints a table of ns per packet (time.process_time, best of 5 rounds) and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipproxy.rtp import (
    RtpExtension,
    StreamRewriter,
    build_rtp,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
    peek_rtp,
    rewrite_rtcp_ssrcs,
    rewrite_rtp_header,
)


def _best(fn: Callable[[], object], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - t0)
    return best


def ns_per_call(fn: Callable[[], object], n: int, rounds: int = 15) -> float:
    """Best of ``rounds`` CPU-time rounds of ``n`` calls, less a no-op call's cost.

    Short rounds and the minimum keep out noise from other work on a shared machine.
    """
    overhead = _best(lambda: None, n, rounds)
    return max(_best(fn, n, rounds) - overhead, 0.0) / n * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, default=20_000, help="calls per round")
    n = ap.parse_args().packets

    payload = bytes(160)  # 20 ms of G.711
    plain = build_rtp(0, 1234, 160_000, 0x11223344, payload)
    full = build_rtp(
        0,
        1234,
        160_000,
        0x11223344,
        payload,
        marker=True,
        csrcs=(1, 2),
        extension=RtpExtension(0xBEDE, bytes(8)),
        padding=4,
    )
    mv = memoryview(plain)
    sr = bytes.fromhex(
        "81c8000c11223344" + "00" * 20 + "55667788" + "00" * 20 + "81ca0003112233440104616263640000"
    )
    rw = StreamRewriter(0xCAFEBABE, initial_sequence=1, initial_timestamp=1)
    state = {"seq": 0, "ts": 0}

    def rewrite() -> object:
        state["seq"] = (state["seq"] + 1) & 0xFFFF
        state["ts"] = (state["ts"] + 160) & 0xFFFFFFFF
        return rw.rewrite(state["seq"], state["ts"], 0x11223344, False)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("parse_rtp (plain, 172 B)", lambda: parse_rtp(plain)),
        ("parse_rtp (memoryview)", lambda: parse_rtp(mv)),
        ("parse_rtp (CSRC+ext+pad)", lambda: parse_rtp(full)),
        ("peek_rtp (plain)", lambda: peek_rtp(plain)),
        ("peek_rtp (CSRC+ext+pad)", lambda: peek_rtp(full)),
        ("is_rtcp", lambda: is_rtcp(plain)),
        ("build_rtp (plain)", lambda: build_rtp(0, 1234, 160_000, 0x11223344, payload)),
        ("rewrite_rtp_header", lambda: rewrite_rtp_header(plain, 5, 6, 7, False)),
        ("StreamRewriter.rewrite", rewrite),
        ("peek+rewrite+header", lambda: rewrite_rtp_header(plain, *rewrite_fields(), False)),
        ("parse_rtcp (SR+SDES)", lambda: parse_rtcp(sr)),
        ("rewrite_rtcp_ssrcs (SR+SDES)", lambda: rewrite_rtcp_ssrcs(sr, {0x11223344: 9})),
    ]

    def rewrite_fields() -> tuple[int, int, int]:
        _pt, seq, ts, ssrc, marker, _start, _end = peek_rtp(plain)
        state["seq"] += 1
        r = rw.rewrite((seq + state["seq"]) & 0xFFFF, ts, ssrc, marker)
        assert r is not None
        return r[0], r[1], rw.ssrc

    print(f"{'operation':32} {'ns/packet':>10} {'Mpkt/s':>8}")
    print("-" * 52)
    for name, fn in cases:
        count = n if "rtcp_ssrcs" not in name and "parse_rtcp" not in name else n // 4
        ns = ns_per_call(fn, count)
        print(f"{name:32} {ns:10.0f} {1e3 / ns if ns else float('inf'):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
