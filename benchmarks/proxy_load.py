"""Proxy load: N concurrent calls set up over SIP through ``dtmfmask-proxy``, 20 ms G.711
both ways, against the same load through a bare uvloop relay (the Python floor).

Run: python benchmarks/proxy_load.py [--calls 50,200,500,1000] [--seconds 10]
                                     [--json] [--quick]

What runs where (loopback only, every address 127.0.0.1):

* the proxy: ``python -m sipproxy.app --config <generated yaml>`` (what ``dtmfmask-proxy``
  runs), pinned to the first allowed core (``taskset``); masking on every call (``mask:
  always``), look-ahead 15 ms;
* the bare relay: this script in ``--bare-relay-child`` mode, pinned to the same core: one
  uvloop ``DatagramProtocol`` per leg that ``sendto``s every datagram to the other leg's
  peer, no parsing;
* the load (this process, pinned to the second core, uvloop when installed): a minimal SIP
  UAC (the callers) and a minimal SIP UAS (the PBX), each on its own UDP port, and the RTP
  phones of both sides. Calls are set up over SIP (INVITE with PCMU + telephone-event 101,
  200 with SDP, ACK; at most 64 setups in flight); the bare relay gets the same addresses
  without SIP. The RTP sockets are pooled (16 calls per socket per side; the stream is
  known by the relay port it came from), SO_RCVBUF 4 MiB.

Per call, after a priming packet each way (it latches the relay's legs and anchors the
caller->agent timestamp mapping; see below), each side sends one 172-byte PCMU packet every
20 ms for ``--seconds``. Calls are spread over ``--phases`` send slots per 20 ms tick (10:
one batch every 2 ms, as independent calls would be; 1: every call in one burst per tick).
Caller audio is low-level noise; every ``--dtmf-every``-th call presses a key (in-band '5',
100 ms at -10 dBm0, 1/4 into the run), and the proxy's ``dtmfmask_digits_masked_total``
must count each of them once.

How the figures are measured:

* latency: per packet, ``time.time_ns()`` just before ``sendto`` to the kernel's receive
  timestamp (SO_TIMESTAMPNS, same clock) on the far phone's socket, so the load process's
  own scheduling after arrival is not counted. Agent->caller packets carry (call, k) in the
  first 8 payload bytes, which the proxy relays untouched. Caller->agent audio is decoded,
  masked and re-encoded and its RTP header rewritten (own SSRC, sequence, timestamp), so
  there the k-th packet is found from the header: the proxy keeps input timestamp steps
  (out_ts = in_ts + offset per source, DESIGN.md invariant 6), the offset is taken from the
  priming packet, k = k_prime + (ts - ts_prime) / 160. The proxy sends the agent-bound
  packet for input frame k as soon as frame k has been through the engine; its audio is the
  input delayed by the look-ahead (a constant 15 ms by design, inside the payload). The
  figure is therefore the added transit latency excluding the look-ahead (the agent hears
  audio ``latency + lookahead_ms`` late); ``lookahead_ms`` is printed next to it.
* loss: packets of the measured window (k in the window, first arrival) that never arrived,
  over those sent, 0.5 s after the last send. Duplicates are counted apart.
* reorder: per stream, packets arriving after one with a higher k.
* CPU per packet: utime + stime of the relay process (``/proc/<pid>/stat``, all threads)
  over the window (first send to 0.5 s after the last), divided by the packets sent into it
  in that window (both directions). The same for the bare relay; the ratio is the target.
* ``load_cpu_pct``: this process's CPU over the window; near 100 % the load side, not the
  relay, is the limit and the row says so (``gen_late_ms``: how late the last send batch
  started against its slot).

After the window the callers hang up (BYE); the PBX must see a BYE for every call and the
proxy's ``dtmfmask_calls`` must fall to 0. Every phase is bounded in time; the children
are killed on any error. Targets (DESIGN.md, the relay issue): 1,000 concurrent masked
calls (100,000 packets/s) on one core, loss under 0.1 %, p99 under 5 ms, CPU per packet
within 1.5x of the bare relay. A missed target is printed, never an error: exit 0.
"""

from __future__ import annotations

import os

# One BLAS thread in every process here (children inherit): the engine's products are small.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from struct import pack_into  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
FRAME = 160  # samples (bytes of PCMU) per 20 ms
PKT = 12 + FRAME
LOOKAHEAD_MS = 15.0
CALLS_PER_SOCKET = 16
SETUPS_IN_FLIGHT = 64
PRIME_ROUNDS = 4
KS = PRIME_ROUNDS + 4  # first k of the measured window (after the priming packets)
REC = 40  # bytes per arrival record (see _REC_DTYPE)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic value
DRAIN_S = 0.5

TARGETS = {
    "calls": 1000,
    "packets_per_s": 100_000,
    "loss": 0.001,
    "p99_ms": 5.0,
    "cpu_ratio": 1.5,
}

# arrival record: RTP header, first 8 payload bytes, kernel timespec, source port
_REC_DTYPE = np.dtype(
    [
        ("b0", "u1"), ("pt", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"),
        ("tcall", ">u4"), ("tk", ">u4"), ("sec", "<i8"), ("nsec", "<i8"), ("port", "<u2"),
        ("pad", "V2"),
    ]
)  # fmt: skip
assert _REC_DTYPE.itemsize == REC


def _new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_busy_s(cpus: tuple[int | None, ...]) -> list[float]:
    """Busy time (not idle, not iowait) of each listed core from /proc/stat, seconds."""
    out: list[float] = []
    try:
        with open("/proc/stat") as f:
            lines = {ln.split()[0]: ln.split()[1:] for ln in f if ln.startswith("cpu")}
    except OSError:
        return [0.0 for _ in cpus]
    tck = os.sysconf("SC_CLK_TCK")
    for c in cpus:
        v = [int(x) for x in lines.get(f"cpu{c}", [])[:8]] if c is not None else []
        out.append((sum(v) - v[3] - v[4]) / tck if len(v) >= 5 else 0.0)
    return out


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _audio_frames() -> tuple[list[bytes], list[bytes]]:
    """Noise frames (about -45 dBm0) and the frames of one key press ('5', 100 ms)."""
    from dtmfmask.g711 import ulaw_encode
    from dtmfmask.tones import dtmf_tone

    rng = np.random.default_rng(7)
    noise = [
        ulaw_encode(rng.normal(0, 60, FRAME).clip(-32768, 32767).astype(np.int16)).tobytes()
        for _ in range(50)
    ]
    tone = dtmf_tone("5", 5 * FRAME, -10.0) + rng.normal(0, 60, 5 * FRAME)
    codes = ulaw_encode(tone.clip(-32768, 32767).astype(np.int16)).tobytes()
    key = [codes[i * FRAME : (i + 1) * FRAME] for i in range(5)]
    return noise, key


# --------------------------------------------------------------------------- bare relay


def bare_relay_child() -> int:
    """One DatagramProtocol per leg, forwarding to the other leg's peer. Reads
    ``{"dest": [[caller_port, pbx_port], ...]}`` on stdin, answers ``{"ports": [[caller_leg,
    agent_leg], ...]}`` on stdout, relays until SIGTERM or stdin closes."""
    req = json.loads(sys.stdin.readline())
    loop, kind = _new_loop()

    class Leg(asyncio.DatagramProtocol):
        __slots__ = ("dest", "other", "transport")

        def __init__(self, dest: tuple[str, int]) -> None:
            self.dest = dest
            self.other: Leg | None = None
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.other.transport.sendto(data, self.dest)  # type: ignore[union-attr]

    async def main() -> None:
        ports = []
        transports = []
        for cport, pport in req["dest"]:
            # the caller leg's datagrams go to the PBX phone (sent from the agent leg)
            a = Leg((HOST, pport))  # caller leg: receives from the caller phone
            b = Leg((HOST, cport))  # agent leg: receives from the PBX phone
            ta, _ = await loop.create_datagram_endpoint(lambda a=a: a, local_addr=(HOST, 0))
            tb, _ = await loop.create_datagram_endpoint(lambda b=b: b, local_addr=(HOST, 0))
            a.other, b.other = b, a
            transports += [ta, tb]
            ports.append([ta.get_extra_info("sockname")[1], tb.get_extra_info("sockname")[1]])
        sys.stdout.write(json.dumps({"ports": ports, "loop": kind}) + "\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_reader(sys.stdin.fileno(), stop.set)  # EOF: the parent went away
        await stop.wait()
        for t in transports:
            t.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


# --------------------------------------------------------------------------- SIP peers


def _sdp(user: str, session: int, rtp_port: int) -> bytes:
    return (
        f"v=0\r\no={user} {session} 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


_M_AUDIO = re.compile(rb"^m=audio (\d+) ", re.M)


def _sdp_port(body: bytes) -> int | None:
    m = _M_AUDIO.search(body)
    return int(m.group(1)) if m else None


class _Sip(asyncio.DatagramProtocol):
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.handler(data, (addr[0], addr[1]))
        except Exception:  # a malformed message: count it, never stop the load
            self.handler.__self__.errors += 1


@dataclass
class _UacCall:
    i: int
    call_id: str
    invite: bytes = b""
    answered: asyncio.Future[int] | None = None  # the proxy's caller-leg RTP port, or -status
    bye_done: asyncio.Future[int] | None = None
    to_tag: str = ""
    contact: str = ""
    uri: str = ""


class Uac:
    """The callers: INVITE, ACK of every final response, BYE."""

    def __init__(self, run_id: str, proxy: tuple[str, int]) -> None:
        self.run_id = run_id
        self.proxy = proxy
        self.calls: dict[str, _UacCall] = {}
        self.errors = 0
        self.proto = _Sip(self.datagram)
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: self.proto, local_addr=(HOST, 0))
        self.port = t.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.close()

    def _send(self, text: str, body: bytes = b"") -> None:
        self.proto.transport.sendto(text.encode() + body, self.proxy)

    def _head(self, method: str, c: _UacCall, uri: str, branch: str, cseq: int) -> str:
        to = f"<sip:agent{c.i}@{HOST}>" + (f";tag={c.to_tag}" if c.to_tag else "")
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK-{branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f'From: "Load {c.i}" <sip:caller{c.i}@{HOST}>;tag=c{c.i}\r\n'
            f"To: {to}\r\nCall-ID: {c.call_id}\r\nCSeq: {cseq} {method}\r\n"
        )

    async def call(self, i: int, rtp_port: int, timeout: float) -> int:
        """Set up call ``i``; the proxy's caller-leg RTP port, or a negative status."""
        loop = asyncio.get_running_loop()
        c = _UacCall(i, f"load-{self.run_id}-{i}@{HOST}")
        c.answered = loop.create_future()
        self.calls[c.call_id] = c
        body = _sdp("caller", i, rtp_port)
        c.uri = f"sip:agent{i}@{self.proxy[0]}:{self.proxy[1]}"
        c.invite = (
            self._head("INVITE", c, c.uri, f"{self.run_id}-{c.i}-i", 1)
            + f"Contact: <sip:caller{i}@{HOST}:{self.port}>\r\nSubject: load-{self.run_id}-{i}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.proto.transport.sendto(c.invite, self.proxy)  # (re)transmit
            with contextlib.suppress(TimeoutError):
                wait = min(2.0, deadline - loop.time())
                return await asyncio.wait_for(asyncio.shield(c.answered), wait)
        return -408

    async def hangup(self, i: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        c = self.calls.get(f"load-{self.run_id}-{i}@{HOST}")
        if c is None or not c.to_tag:
            return False
        c.bye_done = loop.create_future()
        bye = (
            self._head("BYE", c, c.contact, f"{self.run_id}-{c.i}-b", 2)
            + "Content-Length: 0\r\n\r\n"
        )
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self._send(bye)
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(asyncio.shield(c.bye_done), 1.0)
                return 200 <= status < 300
        return False

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        from sipproxy.sipmessage import SipRequest, build_response, parse_message

        msg = parse_message(data)
        if isinstance(msg, SipRequest):  # e.g. the proxy hangs up: answer, do not care
            if msg.method != "ACK":
                self.proto.transport.sendto(build_response(msg, 200).serialize(), addr)
            return
        c = self.calls.get(msg.call_id)
        if c is None:
            return
        cseq = msg.cseq
        if cseq.method == "BYE":
            if msg.status >= 200 and c.bye_done is not None and not c.bye_done.done():
                c.bye_done.set_result(msg.status)
            return
        if cseq.method != "INVITE" or msg.status < 200:
            return
        c.to_tag = msg.to.tag or ""
        if 200 <= msg.status < 300:
            contact = msg.headers.get("Contact") or f"<sip:{addr[0]}:{addr[1]}>"
            c.contact = contact.split("<", 1)[-1].split(">", 1)[0]
            ack = (
                self._head("ACK", c, c.contact, f"{self.run_id}-{c.i}-a", 1)
                + "Content-Length: 0\r\n\r\n"
            )
            self._send(ack)  # every 2xx (retransmissions too)
            port = _sdp_port(msg.body)
            result = port if port else -488
        else:
            ack = (
                self._head("ACK", c, c.uri, f"{self.run_id}-{c.i}-i", 1)
                + "Content-Length: 0\r\n\r\n"
            )
            self._send(ack)
            result = -msg.status
        if c.answered is not None and not c.answered.done():
            c.answered.set_result(result)


class Uas:
    """The PBX: answers every INVITE 200 with SDP on the call's PBX-side RTP socket."""

    def __init__(self, run_id: str, rtp_port_of: Any) -> None:
        self.run_id = run_id
        self.rtp_port_of = rtp_port_of  # call index -> our RTP port
        self.proto = _Sip(self.datagram)
        self.port = 0
        self.errors = 0
        self.agent_port: dict[int, int] = {}  # call index -> the proxy's agent-leg RTP port
        self.by_call_id: dict[str, int] = {}
        self.answers: dict[str, bytes] = {}
        self.byes: set[int] = set()
        self.invited = asyncio.Event()
        self.bye_event = asyncio.Event()
        self.bye_target = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: self.proto, local_addr=(HOST, 0))
        self.port = t.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.close()

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        from sipproxy.sipmessage import SipRequest, build_response, parse_message

        msg = parse_message(data)
        if not isinstance(msg, SipRequest):
            return
        send = self.proto.transport.sendto
        if msg.method == "INVITE":
            if msg.call_id in self.answers:  # a retransmission: the same answer
                send(self.answers[msg.call_id], addr)
                return
            subject = msg.headers.get("Subject") or ""
            prefix = f"load-{self.run_id}-"
            if not subject.startswith(prefix):
                send(build_response(msg, 404).serialize(), addr)
                return
            i = int(subject[len(prefix) :])
            port = _sdp_port(msg.body)
            if port is None:
                send(build_response(msg, 488).serialize(), addr)
                return
            self.agent_port[i] = port
            self.by_call_id[msg.call_id] = i
            resp = build_response(
                msg, 200, to_tag=f"p{i}",
                headers=[("Contact", f"<sip:pbx@{HOST}:{self.port}>"),
                         ("Content-Type", "application/sdp")],
                body=_sdp("pbx", i, self.rtp_port_of(i)),
            ).serialize()  # fmt: skip
            self.answers[msg.call_id] = resp
            send(resp, addr)
        elif msg.method == "ACK":
            return
        else:  # BYE, CANCEL, OPTIONS, INFO...: 200
            send(build_response(msg, 200).serialize(), addr)
            if msg.method == "BYE" and msg.call_id in self.by_call_id:
                self.byes.add(self.by_call_id[msg.call_id])
                if len(self.byes) >= self.bye_target:
                    self.bye_event.set()


# --------------------------------------------------------------------------- RTP phones


class Phones:
    """Both sides' RTP sockets (pooled), the send loop, the arrival records."""

    def __init__(self, n: int, ticks: int, windows: int = 1) -> None:
        self.n = n
        self.ticks = ticks  # per measured window
        self.k_total = KS + windows * ticks
        self.k_lo = KS  # the measured window is k in [k_lo, k_lo + ticks)
        n_socks = max(1, -(-n // CALLS_PER_SOCKET))
        self.csocks = [self._socket() for _ in range(n_socks)]  # caller side
        self.psocks = [self._socket() for _ in range(n_socks)]  # PBX side
        self.cport = [s.getsockname()[1] for s in self.csocks]
        self.pport = [s.getsockname()[1] for s in self.psocks]
        cap = 2 * n * (self.k_total + PRIME_ROUNDS) + 4096
        self.cap = int(cap * 1.2)
        self.arena = bytearray(self.cap * REC)
        self.mv = memoryview(self.arena)
        self.pos = 0
        self.overflow = 0
        self.rx_errors = 0
        self.no_kernel_ts = 0
        # relay ports per call, set once the calls are up
        self.relay_c: list[int] = [0] * n  # the relay's caller-leg port
        self.relay_a: list[int] = [0] * n  # the relay's agent-leg port
        self.up: list[bool] = [False] * n
        self.sent_ns = np.zeros((2 * n, self.k_total), np.int64)
        self.send_errors = 0
        self.gen_late_s = 0.0
        self.prime_k = np.full(2 * n, -1, np.int64)
        self.prime_ts = np.zeros(2 * n, np.int64)
        self.noise, self.key = _audio_frames()
        self.ssrc = np.random.default_rng(11).integers(1, 2**32 - 1, 2 * n, dtype=np.int64)
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((HOST, 0))
        return s

    def caller_rtp_port(self, i: int) -> int:
        return self.cport[i % len(self.cport)]

    def pbx_rtp_port(self, i: int) -> int:
        return self.pport[i % len(self.pport)]

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for s in self.csocks + self.psocks:
            loop.add_reader(s.fileno(), self._drain, s)

    def close(self) -> None:
        for s in self.csocks + self.psocks:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(s.fileno())
            s.close()

    def _drain(self, sock: socket.socket) -> None:
        mv = self.mv
        for _ in range(256):
            pos = self.pos * REC
            if self.pos >= self.cap:
                try:
                    sock.recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                self.overflow += 1
                continue
            try:
                _, anc, _, addr = sock.recvmsg_into([mv[pos : pos + 20]], 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.rx_errors += 1
                return
            if anc:
                mv[pos + 20 : pos + 36] = anc[0][2][:16]
            else:
                self.no_kernel_ts += 1
                sec, nsec = divmod(time.time_ns(), 1_000_000_000)
                pack_into("<qq", mv, pos + 20, sec, nsec)
            pack_into("<H", mv, pos + 36, addr[1])
            self.pos += 1

    def records(self) -> np.ndarray:
        return np.frombuffer(self.arena, _REC_DTYPE, self.pos)

    def port_map(self) -> np.ndarray:
        m = np.full(65536, -1, np.int64)
        for i in range(self.n):
            if self.up[i]:
                m[self.relay_a[i]] = 2 * i  # caller -> agent, arrives from the agent leg
                m[self.relay_c[i]] = 2 * i + 1  # agent -> caller, from the caller leg
        return m

    def send(self, i: int, k: int, dtmf: bool) -> None:
        """Packet k of call i, both ways."""
        ck = self.key[k - self._key_k0(i)] if dtmf and 0 <= k - self._key_k0(i) < 5 else None
        buf = bytearray(PKT)
        pack_into("!HHII", buf, 0, 0x8000, k & 0xFFFF, (k * FRAME) & 0xFFFFFFFF,
                  int(self.ssrc[2 * i]))  # fmt: skip
        buf[12:] = ck if ck is not None else self.noise[(k + i) % 50]
        csock = self.csocks[i % len(self.csocks)]
        psock = self.psocks[i % len(self.psocks)]
        try:
            self.sent_ns[2 * i, k] = time.time_ns()
            csock.sendto(buf, (HOST, self.relay_c[i]))
        except OSError:
            self.sent_ns[2 * i, k] = 0
            self.send_errors += 1
        pbuf = bytearray(PKT)
        pack_into("!HHIIII", pbuf, 0, 0x8000, k & 0xFFFF, (k * FRAME) & 0xFFFFFFFF,
                  int(self.ssrc[2 * i + 1]), i, k)  # fmt: skip
        pbuf[20:] = self.noise[(k + 7 * i) % 50][8:]
        try:
            self.sent_ns[2 * i + 1, k] = time.time_ns()
            psock.sendto(pbuf, (HOST, self.relay_a[i]))
        except OSError:
            self.sent_ns[2 * i + 1, k] = 0
            self.send_errors += 1

    def _key_k0(self, i: int) -> int:
        return self.k_lo + self.ticks // 4 + (i % 10)

    def next_window(self) -> None:
        """Move to the next measured window (``windows`` > 1): later k (the streams go on
        where they were), arrival records and per-window counters start again."""
        if self.k_lo + 2 * self.ticks > self.k_total:
            raise ValueError("no window left")
        self.k_lo += self.ticks
        self.pos = 0
        self.overflow = self.rx_errors = self.no_kernel_ts = self.send_errors = 0
        self.gen_late_s = 0.0

    async def prime(self) -> dict[str, int]:
        """One packet each way per call until each stream has delivered one (bounded)."""
        loop = asyncio.get_running_loop()
        pmap = self.port_map()
        live = [i for i in range(self.n) if self.up[i]]
        missing = set(range(2 * self.n)) - {s for i in live for s in (2 * i, 2 * i + 1)}
        want = {s for i in live for s in (2 * i, 2 * i + 1)}
        for r in range(PRIME_ROUNDS):
            calls = sorted({s // 2 for s in want})
            for i in calls:
                self.send(i, r, False)
            deadline = loop.time() + 1.0
            while want and loop.time() < deadline:
                await asyncio.sleep(0.02)
                rec = self.records()
                s = pmap[rec["port"]]
                for j in np.flatnonzero(s >= 0):
                    st = int(s[j])
                    if st in want:
                        want.discard(st)
                        self.prime_k[st] = r
                        self.prime_ts[st] = int(rec["ts"][j])
            if not want:
                break
        self.pos = 0  # the window's records start here
        return {"streams_unprimed": len(want), "streams_not_up": len(missing)}

    async def stream(self, phases: int, dtmf_every: int) -> None:
        loop = asyncio.get_running_loop()
        live = [i for i in range(self.n) if self.up[i]]
        groups: list[list[tuple[int, bool]]] = [[] for _ in range(phases)]
        for j, i in enumerate(live):
            groups[j % phases].append((i, dtmf_every > 0 and i % dtmf_every == 0))
        step = 0.02 / phases
        t0 = loop.time() + 0.02
        for j in range(self.ticks * phases):
            target = t0 + j * step
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.gen_late_s = max(self.gen_late_s, -delay)
                if j % phases == 0:
                    await asyncio.sleep(0)  # let arrivals in even when late
            k = self.k_lo + j // phases
            for i, dtmf in groups[j % phases]:
                self.send(i, k, dtmf)

    def analyse(self) -> dict[str, Any]:
        rec = self.records()
        s = self.port_map()[rec["port"]]
        ok = s >= 0
        rec, s = rec[ok], s[ok]
        rx_ns = rec["sec"].astype(np.int64) * 1_000_000_000 + rec["nsec"].astype(np.int64)
        c2a = (s % 2) == 0
        k = np.empty(len(s), np.int64)
        # caller -> agent: from the rewritten RTP timestamp and the priming packet's
        d = (rec["ts"].astype(np.int64) - self.prime_ts[s]) % 2**32
        d = np.where(d >= 2**31, d - 2**32, d)
        unmatched = c2a & ((d % FRAME != 0) | (self.prime_k[s] < 0))
        k[c2a] = (self.prime_k[s] + d // FRAME)[c2a]
        # agent -> caller: the tag in the payload
        tag_ok = rec["tcall"].astype(np.int64) == s // 2
        k[~c2a] = rec["tk"][~c2a].astype(np.int64)
        unmatched |= ~c2a & ~tag_ok
        k_hi = self.k_lo + self.ticks
        win = (~unmatched) & (k >= self.k_lo) & (k < k_hi)
        s_w, k_w, rx_w, c2a_w = s[win], k[win], rx_ns[win], c2a[win]
        sent_mask = self.sent_ns[:, self.k_lo : k_hi] > 0
        sent = int(sent_mask.sum())
        key = s_w * self.k_total + k_w
        uniq = np.unique(key)
        received = len(uniq)
        dups = int(len(key) - received)
        # reorder: per stream, in arrival order, a k below the highest seen before it
        order = np.argsort(s_w, kind="stable")
        v = s_w[order] * (self.k_total + 1) + k_w[order]
        prev_max = np.maximum.accumulate(v)
        reordered = int(np.count_nonzero(v[1:] < prev_max[:-1])) if len(v) > 1 else 0
        lat = (rx_w - self.sent_ns[s_w, k_w]) / 1e6  # ms
        lat_ok = self.sent_ns[s_w, k_w] > 0

        def pct(x: np.ndarray) -> dict[str, float | None]:
            if len(x) == 0:
                return {"p50_ms": None, "p99_ms": None, "max_ms": None}
            return {
                "p50_ms": round(float(np.percentile(x, 50)), 4),
                "p99_ms": round(float(np.percentile(x, 99)), 4),
                "max_ms": round(float(x.max()), 4),
            }

        return {
            "sent": sent,
            "received": received,
            "loss": (sent - received) / sent if sent else None,
            "lost": sent - received,
            "duplicates": dups,
            "reordered": reordered,
            "reorder": reordered / received if received else None,
            "unmatched_packets": int(np.count_nonzero(unmatched)),
            "latency": pct(lat[lat_ok]),
            "latency_caller_to_agent": pct(lat[lat_ok & c2a_w]),
            "latency_agent_to_caller": pct(lat[lat_ok & ~c2a_w]),
            "records_overflow": self.overflow,
            "no_kernel_timestamp": self.no_kernel_ts,
            "send_errors": self.send_errors,
            "rx_errors": self.rx_errors,
            "gen_late_ms": round(self.gen_late_s * 1000, 3),
        }


# --------------------------------------------------------------------------- metrics


async def _scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        data = await reader.read(4 << 20)
        while chunk := await reader.read(1 << 20):
            data += chunk
        writer.close()
        return data

    try:
        data = await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError):
        return {}
    body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    out: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def _metrics_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    def d(name: str) -> float:
        return b.get(name, 0.0) - a.get(name, 0.0)

    drops = {}
    for name in b:
        if name.startswith("dtmfmask_rtp_drops_total{"):
            v = d(name)
            if v:
                drops[name.split('reason="', 1)[1].split('"', 1)[0]] = int(v)
    passes = d("dtmfmask_dsp_seconds_count")
    return {
        "rx_packets": int(d("dtmfmask_rtp_packets_received_total")),
        "tx_packets": int(d("dtmfmask_rtp_packets_sent_total")),
        "drops": drops,
        "digits_masked": int(d("dtmfmask_digits_masked_total")),
        "fail_closed_frames": int(d("dtmfmask_fail_closed_frames_total")),
        "dsp_passes": int(passes),
        "dsp_ms_per_pass": round(1000 * d("dtmfmask_dsp_seconds_sum") / passes, 4)
        if passes
        else None,
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Pinning:
    relay_cpu: int | None
    load_cpu: int | None

    def argv(self) -> list[str]:
        if self.relay_cpu is None:
            return []
        if shutil.which("taskset"):
            return ["taskset", "-c", str(self.relay_cpu)]
        return []

    def apply_to(self, pid: int) -> None:
        if self.relay_cpu is not None and not shutil.which("taskset"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {self.relay_cpu})


@dataclass
class Child:
    proc: subprocess.Popen[bytes] | None = None
    files: list[Any] = field(default_factory=list)

    def stop(self, grace: float = 10.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.files:
            with contextlib.suppress(Exception):
                f.close()
        return p.returncode


async def _wait_line(path: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes],
                     timeout: float) -> re.Match[str]:  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        m = pattern.search(path.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
        await asyncio.sleep(0.05)
    raise TimeoutError("the proxy did not print its ready line")


async def _measure(
    phones: Phones, pid: int, args: argparse.Namespace, pin: Pinning
) -> dict[str, Any]:
    """The measured window: stream, drain, CPU of the relay and of this process, and how
    busy the two cores were with anything else (other processes, softirq threads)."""
    loop = asyncio.get_running_loop()
    cores = (pin.relay_cpu, pin.load_cpu)
    busy0 = _core_busy_s(cores)
    cpu0, self0, t0 = _proc_cpu_s(pid), _self_cpu_s(), loop.time()
    await phones.stream(args.phases, args.dtmf_every)
    await asyncio.sleep(DRAIN_S)
    cpu1, self1, t1 = _proc_cpu_s(pid), _self_cpu_s(), loop.time()
    busy1 = _core_busy_s(cores)
    res = phones.analyse()
    window = t1 - t0
    res["window_s"] = round(window, 3)
    res["relay_cpu_s"] = round(cpu1 - cpu0, 3)
    res["relay_cpu_pct"] = round(100 * (cpu1 - cpu0) / window, 1)
    res["load_cpu_pct"] = round(100 * (self1 - self0) / window, 1)
    if pin.relay_cpu is not None:
        # busy time on each core not accounted to our process there: other work sharing it
        res["relay_core_other_pct"] = round(
            100 * max(busy1[0] - busy0[0] - (cpu1 - cpu0), 0.0) / window, 1
        )
        res["load_core_other_pct"] = round(
            100 * max(busy1[1] - busy0[1] - (self1 - self0), 0.0) / window, 1
        )
    res["cpu_us_per_packet"] = round((cpu1 - cpu0) / res["sent"] * 1e6, 3) if res["sent"] else None
    res["packets_per_s"] = round(res["received"] / args.seconds, 1)
    res["offered_packets_per_s"] = round(res["sent"] / args.seconds, 1)
    return res


_P = TypeVar("_P", bound=Pinning)


def raise_open_files(want: int) -> None:
    """The soft limit on open files raised towards ``want`` (up to the hard limit)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def pin_load(kind: type[_P]) -> _P:
    """The relay on the first CPU this process may use and the load (this process) on the
    second; no pinning with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    pin = kind(cpus[0], cpus[1]) if len(cpus) >= 2 else kind(None, None)
    if pin.load_cpu is not None:
        os.sched_setaffinity(0, {pin.load_cpu})
    return pin


async def set_up_calls(uac: Uac, uas: Uas, phones: Phones, n: int) -> dict[str, int]:
    """Calls 0..n-1 up over SIP, :data:`SETUPS_IN_FLIGHT` at a time (``phones.up`` marks
    those up); the failures by SIP status."""
    sem = asyncio.Semaphore(SETUPS_IN_FLIGHT)
    failures: dict[str, int] = {}

    async def one(i: int) -> None:
        async with sem:
            r = await uac.call(i, phones.caller_rtp_port(i), timeout=10.0)
        if r > 0 and i in uas.agent_port:
            phones.relay_c[i] = r
            phones.relay_a[i] = uas.agent_port[i]
            phones.up[i] = True
        else:
            failures[str(-r)] = failures.get(str(-r), 0) + 1

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60 + 0.1 * n)
    return failures


async def hang_up_calls(
    uac: Uac, uas: Uas, live: list[int], n: int, metrics_port: int, polls: int
) -> tuple[int, int]:
    """BYE on the ``live`` calls, :data:`SETUPS_IN_FLIGHT` at a time, then up to ``polls``
    scrapes of /metrics until the proxy holds no call: (BYEs answered, calls left or -1)."""
    uas.bye_target = len(live)
    sem = asyncio.Semaphore(SETUPS_IN_FLIGHT)

    async def bye(i: int) -> bool:
        async with sem:
            return await uac.hangup(i, timeout=5.0)

    oks = await asyncio.wait_for(asyncio.gather(*(bye(i) for i in live)), 30 + 0.05 * n)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(uas.bye_event.wait(), 5.0)
    calls_left = -1
    for _ in range(polls):
        final = await _scrape(metrics_port)
        calls_left = int(final.get("dtmfmask_calls", -1))
        if calls_left == 0:
            break
        await asyncio.sleep(0.1)
    return sum(oks), calls_left


async def run_proxy(n: int, args: argparse.Namespace, pin: Pinning) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run_id = f"{os.getpid()}x{n}"
    ticks = round(args.seconds / 0.02)
    phones = Phones(n, ticks)
    uas = Uas(run_id, phones.pbx_rtp_port)
    child = Child()
    uac: Uac | None = None
    tmp = tempfile.TemporaryDirectory(prefix="proxy_load_")
    try:
        await uas.start()
        mport = _free_port()
        port_min = args.port_min
        port_max = min(port_min + 8 * n + 200, 65534)
        cfg = Path(tmp.name) / "proxy.yaml"
        cfg.write_text(
            "proxy:\n"
            f"  sip: {{listen: {HOST}, udp_port: 0, tcp_port: 0}}\n"
            f"  media: {{address: {HOST}, port_min: {port_min}, port_max: {port_max},"
            " timeout_s: 600}\n"
            f'  upstream: {{pbx: "{HOST}:{uas.port}", transport: udp}}\n'
            "  trunks: {allow: [127.0.0.0/8]}\n"
            f"  masking: {{lookahead_ms: {LOOKAHEAD_MS:g}, mask: always}}\n"
            f'  metrics: {{listen: "{HOST}:{mport}"}}\n'
            "  drain_grace_s: 1\n"
        )
        out_path = Path(tmp.name) / "stdout"
        err_path = Path(tmp.name) / "stderr"
        fo, fe = open(out_path, "wb"), open(err_path, "wb")  # noqa: SIM115
        child.files += [fo, fe]
        child.proc = subprocess.Popen(
            [*pin.argv(), sys.executable, "-m", "sipproxy.app", "--config", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=REPO,
        )  # fmt: skip
        pin.apply_to(child.proc.pid)
        m = await _wait_line(out_path, re.compile(r"ready sip=[^:\s]+:(\d+)"), child.proc, 30)
        uac = Uac(run_id, (HOST, int(m.group(1))))
        await uac.start()
        uas.bye_target = n

        # -- setup over SIP, bounded
        t_setup = loop.time()
        failures = await set_up_calls(uac, uas, phones, n)
        setup_s = loop.time() - t_setup
        up = sum(phones.up)
        phones.start()
        prime = await phones.prime()
        before = await _scrape(mport)
        res = await _measure(phones, child.proc.pid, args, pin)
        after = await _scrape(mport)
        res["proxy_metrics"] = _metrics_delta(before, after)
        res["calls_in_proxy"] = int(after.get("dtmfmask_calls", -1))
        live = [i for i in range(n) if phones.up[i]]
        res["dtmf_calls"] = sum(1 for i in live if args.dtmf_every and i % args.dtmf_every == 0)

        # -- teardown over SIP, bounded
        bye_ok, calls_left = await hang_up_calls(uac, uas, live, n, mport, polls=20)
        res.update(
            calls=n, calls_up=up, setup_s=round(setup_s, 3), setup_failures=failures, **prime,
            bye_ok=bye_ok, pbx_saw_bye=len(uas.byes), calls_after_bye=calls_left,
            sip_errors=uac.errors + uas.errors,
        )  # fmt: skip
        return res
    finally:
        phones.close()
        if uac is not None:
            uac.close()
        uas.close()
        rc = child.stop()
        if rc not in (0, None) and args.verbose:
            print(f"proxy exit status {rc}", file=sys.stderr)
        tmp.cleanup()


async def run_bare(n: int, args: argparse.Namespace, pin: Pinning) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ticks = round(args.seconds / 0.02)
    phones = Phones(n, ticks)
    child = Child()
    try:
        child.proc = subprocess.Popen(
            [*pin.argv(), sys.executable, str(Path(__file__).resolve()), "--bare-relay-child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        pin.apply_to(child.proc.pid)
        dest = [[phones.caller_rtp_port(i), phones.pbx_rtp_port(i)] for i in range(n)]
        assert child.proc.stdin is not None and child.proc.stdout is not None
        child.proc.stdin.write((json.dumps({"dest": dest}) + "\n").encode())
        child.proc.stdin.flush()
        line = await asyncio.wait_for(
            loop.run_in_executor(None, child.proc.stdout.readline), 30 + 0.02 * n
        )
        info = json.loads(line)
        for i, (pc, pa) in enumerate(info["ports"]):
            phones.relay_c[i], phones.relay_a[i], phones.up[i] = pc, pa, True
        phones.start()
        prime = await phones.prime()
        res = await _measure(phones, child.proc.pid, args, pin)
        res.update(calls=n, calls_up=n, relay_loop=info["loop"], **prime)
        return res
    finally:
        phones.close()
        if child.proc is not None and child.proc.stdin is not None:
            with contextlib.suppress(OSError):
                child.proc.stdin.close()
        child.stop()


# --------------------------------------------------------------------------- report


def _verdict(n: int, proxy: dict[str, Any], bare: dict[str, Any] | None) -> dict[str, Any]:
    lat = proxy.get("latency", {})
    ratio = None
    if bare and bare.get("cpu_us_per_packet") and proxy.get("cpu_us_per_packet"):
        ratio = round(proxy["cpu_us_per_packet"] / bare["cpu_us_per_packet"], 3)
    loss, p99 = proxy.get("loss"), lat.get("p99_ms")
    return {
        "cpu_ratio": ratio,
        "met": {
            "loss": loss is not None and loss < TARGETS["loss"],
            "p99": p99 is not None and p99 < TARGETS["p99_ms"],
            "cpu_ratio": ratio is not None and ratio <= TARGETS["cpu_ratio"],
            "all_calls_up": proxy.get("calls_up") == n,
            "digits_masked": proxy.get("proxy_metrics", {}).get("digits_masked")
            == proxy.get("dtmf_calls"),
            "calls_released": proxy.get("calls_after_bye") == 0,
        },
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(out: dict[str, Any]) -> None:
    t = TARGETS
    print(
        f"proxy_load: {out['seconds']:g} s per run, {out['phases']} send slots per 20 ms, "
        f"look-ahead {out['lookahead_ms']:g} ms (not in the latency), load loop "
        f"{out['loop']}, relay on CPU {out['pinning']['relay_cpu']}, load on CPU "
        f"{out['pinning']['load_cpu']}"
    )
    print(
        f"targets: >= {t['calls']} calls ({t['packets_per_s']} pkt/s) on one core, masking on "
        f"every call, loss < {100 * t['loss']:g} %, p99 < {t['p99_ms']:g} ms, CPU/pkt <= "
        f"{t['cpu_ratio']:g}x bare"
    )
    hdr = (
        f"{'relay':>6} {'calls':>5} {'up':>5} {'pkt/s':>8} {'loss %':>7} {'reord':>6}"
        f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU µs/pkt':>10} {'relay CPU%':>10}"
        f" {'load CPU%':>9} {'x bare':>6}  verdict"
    )
    print(hdr)
    for r in out["results"]:
        for kind in ("proxy", "bare"):
            x = r.get(kind)
            if x is None:
                continue
            if "error" in x:
                print(f"{kind:>6} {r['calls']:>5}  error: {x['error']}")
                continue
            lat = x["latency"]
            loss = None if x["loss"] is None else 100 * x["loss"]
            verdict = ""
            if kind == "proxy":
                met = r["met"]
                missed = [k for k, ok in met.items() if not ok]
                verdict = "ok" if not missed else "MISSED: " + ", ".join(missed)
                if x["relay_cpu_pct"] >= 95:
                    verdict += " (relay core saturated)"
                if x["load_cpu_pct"] >= 90 or x["gen_late_ms"] > 20:
                    verdict += f" (load side behind by up to {x['gen_late_ms']:.0f} ms)"
            other = max(x.get("relay_core_other_pct", 0), x.get("load_core_other_pct", 0))
            if other >= 10:
                verdict += f" [cores shared: {other:.0f} % other work]"
                drops = x.get("proxy_metrics", {}).get("drops")
                if drops:
                    verdict += f" drops={drops}"
            print(
                f"{kind:>6} {r['calls']:>5} {x['calls_up']:>5} {x['packets_per_s']:>8.0f}"
                f" {_fmt(loss, '>7.3f')} {x['reordered']:>6} {_fmt(lat['p50_ms'], '>7.3f')}"
                f" {_fmt(lat['p99_ms'], '>7.3f')} {_fmt(lat['max_ms'], '>7.2f')}"
                f" {_fmt(x['cpu_us_per_packet'], '>10.2f')} {x['relay_cpu_pct']:>10.1f}"
                f" {x['load_cpu_pct']:>9.1f}"
                f" {_fmt(r.get('cpu_ratio') if kind == 'proxy' else None, '>6.2f')}  {verdict}"
            )
        p = r.get("proxy")
        if p and "error" not in p:
            m = p["proxy_metrics"]
            print(
                f"{'':>6} {'':>5} digits masked {m['digits_masked']}/{p['dtmf_calls']} key-press"
                f" calls, fail-closed frames {m['fail_closed_frames']}, DSP "
                f"{_fmt(m['dsp_ms_per_pass'], '.3f')} ms/pass, setup {p['setup_s']:.1f} s,"
                f" BYE ok {p['bye_ok']}, PBX saw {p['pbx_saw_bye']}, calls after BYE "
                f"{p['calls_after_bye']}; latency c->a p99 "
                f"{_fmt(p['latency_caller_to_agent']['p99_ms'], '.3f')} ms, a->c p99 "
                f"{_fmt(p['latency_agent_to_caller']['p99_ms'], '.3f')} ms"
            )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", default="50,200,500,1000", help="comma-separated call counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="media time per run")
    ap.add_argument("--phases", type=int, default=10, help="send slots per 20 ms tick (1-20)")
    ap.add_argument("--dtmf-every", type=int, default=10, help="every n-th call presses a key")
    ap.add_argument("--port-min", type=int, default=10000, help="the proxy's first RTP port")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare relay runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ap.add_argument("--quick", action="store_true", help="5 calls, 2 s (smoke test)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--bare-relay-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_relay_child:
        return bare_relay_child()
    if args.quick:
        args.calls, args.seconds = "5", 2.0
    calls = [int(c) for c in str(args.calls).split(",") if c.strip()]
    if not calls or min(calls) < 1 or max(calls) > 5000:
        ap.error("--calls: 1-5000 each")
    if not 0.2 <= args.seconds <= 300 or not 1 <= args.phases <= 20:
        ap.error("--seconds 0.2-300, --phases 1-20")
    if args.port_min + 8 * max(calls) + 200 > 65534:
        ap.error("--port-min too high for that many calls")

    # sockets: the proxy takes 4 per call, the load 2 per 16 calls
    raise_open_files(8 * max(calls) + 1024)
    pin = pin_load(Pinning)

    loop, kind = _new_loop()
    out: dict[str, Any] = {
        "quick": bool(args.quick),
        "seconds": args.seconds,
        "phases": args.phases,
        "lookahead_ms": LOOKAHEAD_MS,
        "loop": kind,
        "pinning": {"relay_cpu": pin.relay_cpu, "load_cpu": pin.load_cpu},
        "cpus": os.cpu_count(),
        "targets": TARGETS,
        "latency_method": (
            "per packet: time.time_ns() before sendto -> SO_TIMESTAMPNS kernel receive time "
            "at the far phone; caller->agent matched by the rewritten RTP timestamp (offset "
            "from a priming packet), agent->caller by (call, k) in the payload; the "
            "look-ahead is inside the masked audio, not in the packet timing, so the figures "
            "exclude it"
        ),
        "results": [],
    }
    try:
        for n in calls:
            r: dict[str, Any] = {"calls": n}
            budget = 120 + args.seconds + 0.2 * n
            for name, fn in (("proxy", run_proxy), ("bare", run_bare)):
                if name == "bare" and args.no_bare:
                    continue
                try:
                    r[name] = loop.run_until_complete(asyncio.wait_for(fn(n, args, pin), budget))
                except Exception as exc:  # report it, go on with the next run
                    r[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if "error" not in r.get("proxy", {"error": ""}):
                bare = r.get("bare")
                r.update(_verdict(n, r["proxy"], None if not bare or "error" in bare else bare))
            else:
                r.update(cpu_ratio=None, met={})
            out["results"].append(r)
    finally:
        loop.close()
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
