"""Capture RTP on the loopback interface without being in the path (AF_PACKET on "lo").

Needs CAP_NET_RAW (root in the test containers): ``LoopbackSniffer.available()`` says
whether it can run, tests skip the wire-level checks otherwise. Each packet is seen once
(the loopback's outgoing copy is dropped). Used to check what a UA really puts on the wire,
e.g. the RFC 4733 telephone-events baresip sends::

    with LoopbackSniffer(ports=range(20000, 20024)) as sniff:
        ...
    events = [p for p in sniff.packets if p.pt == 101]
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


@dataclass(frozen=True)
class RtpPacket:
    t: float  # time.monotonic() at capture
    src: tuple[str, int]
    dst: tuple[str, int]
    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes


class LoopbackSniffer:
    """Collect RTP packets (version 2, UDP) on lo whose destination port is in ``ports``."""

    def __init__(self, ports: Iterable[int], max_packets: int = 100_000) -> None:
        self.ports = frozenset(ports)
        self.max_packets = max_packets
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except (PermissionError, OSError, AttributeError):
            return False
        s.close()
        return True

    def __enter__(self) -> LoopbackSniffer:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind(("lo", 0))
        s.settimeout(0.1)
        self._sock = s
        self._thread = threading.Thread(target=self._run, name="lo-sniffer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set() and len(self.packets) < self.max_packets:
            try:
                frame, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            pkt = self._parse(frame)
            if pkt is not None:
                self.packets.append(pkt)

    def _parse(self, frame: bytes) -> RtpPacket | None:
        if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
            return None  # not IPv4
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:  # UDP
            return None
        sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
        if dport not in self.ports:
            return None
        rtp = ip[ihl + 8 :]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            return None
        b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", rtp[:12])
        if 72 <= (b1 & 0x7F) <= 76:  # RTCP on a port in the range
            return None
        hdr = 12 + 4 * (b0 & 0x0F)
        src = (socket.inet_ntoa(ip[12:16]), sport)
        dst = (socket.inet_ntoa(ip[16:20]), dport)
        return RtpPacket(
            time.monotonic(), src, dst, b1 & 0x7F, bool(b1 >> 7), seq, ts, ssrc, bytes(rtp[hdr:])
        )
