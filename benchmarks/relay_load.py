"""Relay load: N concurrent calls of 20 ms PCMU both ways through the media relay on loopback.

The relay runs in a child process (uvloop unless --loop asyncio), every call masked on the
caller->agent side. This process plays both phones of every call (uvloop when installed),
sends one packet per direction per call every 20 ms, and prints packets/s, loss, the added
latency (p50/p99, send to receive, caller->agent matched by RTP timestamp) and the relay's
CPU time per relayed packet.

    python benchmarks/relay_load.py --calls 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

HOST = "127.0.0.1"
FRAME = 160


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# --------------------------------------------------------------------------- relay side


def relay_main(conn: Connection, kind: str, addrs: list[tuple[Any, Any]], port_min: int) -> None:
    from sipproxy.media import LegParams
    from sipproxy.relay import MediaRelay, RelayConfig

    async def main() -> None:
        relay = MediaRelay(
            config=RelayConfig(HOST, port_min, min(port_min + 4 * len(addrs) + 100, 65535))
        )
        ports = []
        for i, (caller, agent) in enumerate(addrs):
            h = await relay.open_call(
                f"call-{i}", LegParams(remote=tuple(caller)), LegParams(remote=tuple(agent))
            )
            ports.append((h.caller_port, h.agent_port))
        conn.send(ports)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "start"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        rx0, tx0 = relay.counters.datagrams_rx, relay.counters.datagrams_tx
        await loop.run_in_executor(None, conn.recv)  # "stop"
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        eng = relay.engine
        conn.send(
            {
                "cpu_s": cpu,
                "rx": relay.counters.datagrams_rx - rx0,
                "tx": relay.counters.datagrams_tx - tx0,
                "flushes": relay.counters.flushes,
                "frames_per_pass": eng.batched_frames / max(eng.passes, 1),
                "fail_closed": sum(c.counters.fail_closed_frames for c in eng.calls.values()),
            }
        )
        await relay.close()

    loop = _new_loop(kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


# --------------------------------------------------------------------------- load side


class Phone(asyncio.DatagramProtocol):
    def __init__(self, sent: dict[int, float], recv: list[tuple[int, float]]) -> None:
        self.sent = sent  # ts offset -> send time (of what this phone sends)
        self.recv = recv  # (ts offset, arrival) of what this phone receives
        self.first_ts: int | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ts = int.from_bytes(data[4:8], "big")
        if self.first_ts is None:
            self.first_ts = ts
        self.recv.append(((ts - self.first_ts) % 2**32, time.perf_counter()))


async def load(calls: int, seconds: float, kind_relay: str, port_min: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    phones: list[tuple[Phone, Phone]] = []
    stats: list[tuple[dict[int, float], list[tuple[int, float]]]] = []
    for _ in range(calls):
        pair = []
        for _side in range(2):
            sent: dict[int, float] = {}
            recv: list[tuple[int, float]] = []
            _, p = await loop.create_datagram_endpoint(
                lambda s=sent, r=recv: Phone(s, r), local_addr=(HOST, 0)
            )
            sock = p.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            pair.append(p)
            stats.append((sent, recv))
        phones.append((pair[0], pair[1]))
    addrs = [
        (c.transport.get_extra_info("sockname")[:2], a.transport.get_extra_info("sockname")[:2])  # type: ignore[union-attr]
        for c, a in phones
    ]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=relay_main, args=(child, kind_relay, addrs, port_min))
    proc.start()
    ports = await loop.run_in_executor(None, parent.recv)
    parent.send("start")
    payload = bytes(np.full(FRAME, 0xFF, np.uint8))  # µ-law silence
    n_ticks = int(seconds / 0.02)
    t0 = loop.time() + 0.05
    ssrc = 0x10000
    for k in range(n_ticks):
        await asyncio.sleep(max(t0 + k * 0.02 - loop.time(), 0))
        now = time.perf_counter()
        ts = k * FRAME
        hdr_tail = ts.to_bytes(4, "big")
        for i, ((caller, agent), (cport, aport)) in enumerate(zip(phones, ports, strict=True)):
            seq = (k & 0xFFFF).to_bytes(2, "big")
            pkt_c = b"\x80\x00" + seq + hdr_tail + (ssrc + 2 * i).to_bytes(4, "big") + payload
            pkt_a = b"\x80\x00" + seq + hdr_tail + (ssrc + 2 * i + 1).to_bytes(4, "big") + payload
            caller.transport.sendto(pkt_c, (HOST, cport))  # type: ignore[union-attr]
            agent.transport.sendto(pkt_a, (HOST, aport))  # type: ignore[union-attr]
            stats[2 * i][0][ts] = now
            stats[2 * i + 1][0][ts] = now
    await asyncio.sleep(0.3)
    parent.send("stop")
    relay_stats = await loop.run_in_executor(None, parent.recv)
    proc.join(10)
    for c, a in phones:
        c.transport.close()  # type: ignore[union-attr]
        a.transport.close()  # type: ignore[union-attr]
    # latency: what phone j received was sent by the other phone of its call
    lat = []
    received = 0
    for i in range(calls):
        for me, other in ((2 * i, 2 * i + 1), (2 * i + 1, 2 * i)):
            sent_by_other = stats[other][0]
            recv = stats[me][1]
            received += len(recv)
            for ts, at in recv:
                if ts in sent_by_other:
                    lat.append(at - sent_by_other[ts])
    sent_total = 2 * calls * n_ticks
    arr = np.array(lat) * 1e6 if lat else np.zeros(1)
    return {
        "calls": calls,
        "seconds": seconds,
        "sent": sent_total,
        "received": received,
        "loss": 1.0 - received / sent_total,
        "pps": sent_total / seconds,
        "p50_us": float(np.percentile(arr, 50)),
        "p99_us": float(np.percentile(arr, 99)),
        **relay_stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--port-min", type=int, default=20000)
    args = ap.parse_args(argv)
    # one loop, one core: BLAS worker threads only spin (they doubled the CPU figure here)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        args.loop = "asyncio"
    print(
        f"{'calls':>6} {'loop':>8} {'pkt/s':>8} {'loss %':>7} {'p50 µs':>8} {'p99 µs':>8}"
        f" {'CPU µs/pkt':>10} {'relay CPU %':>11} {'frames/pass':>11}"
    )
    for n in args.calls:
        load_loop = _new_loop("uvloop" if args.loop == "uvloop" else "asyncio")
        try:
            r = load_loop.run_until_complete(load(n, args.seconds, args.loop, args.port_min))
        finally:
            load_loop.close()
        per_pkt = r["cpu_s"] / max(r["rx"], 1) * 1e6
        print(
            f"{n:>6} {args.loop:>8} {r['pps']:>8.0f} {100 * r['loss']:>7.2f} {r['p50_us']:>8.0f}"
            f" {r['p99_us']:>8.0f} {per_pkt:>10.1f} {100 * r['cpu_s'] / args.seconds:>11.1f}"
            f" {r['frames_per_pass']:>11.1f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
