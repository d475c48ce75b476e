"""The asyncio adapter of the signalling plane: SIP sockets and timers around the B2BUA.

All I/O of a running proxy is here and in :mod:`sipproxy.relay`: SIP over UDP and TCP in,
parse, hand to :class:`~sipproxy.b2bua.B2BUA`, send what it returns, arm one timer for its
next deadline. New calls' media is opened on the relay (binding sockets is a coroutine) and
the B2BUA is told when it is ready. Digits the media plane reports are published on a
per-call event stream for the payment logic and logged without their value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from sipproxy.b2bua import B2BUA, CallEvent, LegMedia, MediaRequest, Side
from sipproxy.media import CallDigit, LegParams, MediaConfig, MediaEvent, MediaTimeout
from sipproxy.relay import MediaRelay, PortsExhausted
from sipproxy.sipmessage import (
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
)
from sipproxy.transaction import Address, SendMessage

log = structlog.get_logger("sipproxy.server")

_LEG_OF: dict[Side, str] = {"caller": "caller", "pbx": "agent"}


@dataclass(slots=True)
class SipCounters:
    """Plain ints (exported on scrape)."""

    received: int = 0
    sent: int = 0
    parse_errors: int = 0
    answered_400: int = 0
    too_large: int = 0
    keepalives: int = 0
    send_errors: int = 0
    tcp_connections: int = 0
    tcp_closed_framing: int = 0  # connections closed on a framing error (§18.3)
    internal_errors: int = 0  # a message the B2BUA failed on (a bug): dropped, counted


class CallEvents:
    """The in-process, per-call stream of digit events (for the payment logic).

    Bounded: each subscriber's queue holds ``maxsize`` events; a subscriber that does not
    read loses the oldest ones (counted), never blocks the media plane.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = maxsize
        self._subs: dict[str, list[asyncio.Queue[CallDigit]]] = {}
        self.dropped = 0

    def subscribe(self, call_id: str) -> asyncio.Queue[CallDigit]:
        queue: asyncio.Queue[CallDigit] = asyncio.Queue(self.maxsize)
        self._subs.setdefault(call_id, []).append(queue)
        return queue

    def publish(self, event: CallDigit) -> None:
        for queue in self._subs.get(event.call_id, ()):
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    def close(self, call_id: str) -> None:
        self._subs.pop(call_id, None)


class RelayMedia:
    """:class:`~sipproxy.b2bua.MediaControl` on top of the media relay."""

    def __init__(self, relay: MediaRelay) -> None:
        self.relay = relay

    def configure(self, call_id: str, side: Side, leg: LegMedia, *, masked: bool) -> None:
        handle = self.relay.calls.get(call_id)
        params = _leg_params(leg)
        if handle is None or params is None:
            return
        handle.media.update_leg(_LEG_OF[side], params)  # type: ignore[arg-type]

    def release(self, call_id: str) -> None:
        self.relay.close_call(call_id)

    def sip_info_digit(self, call_id: str, digit: str, duration_ms: int, now: float) -> None:
        handle = self.relay.calls.get(call_id)
        if handle is not None:
            handle.media.on_sip_info(digit, duration_ms, now)

    def provider_media(self, call_id: str, leg: LegMedia | None) -> None:
        """The provider leg's negotiated media (its SDP answer), or None: the leg is gone."""
        handle = self.relay.calls.get(call_id)
        if handle is None:
            return
        params = None if leg is None else _leg_params(leg)
        if params is None:
            handle.media.detach_provider()
            self.relay.close_provider(call_id)
        else:
            handle.media.attach_provider(params, asyncio.get_running_loop().time())


_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_COPIED = (b"via", b"from", b"to", b"call-id", b"cseq")


def _reason(description: str) -> str:
    """A reason phrase from a parse error: printable ASCII, short, no CR/LF."""
    text = "".join(c if " " <= c < "\x7f" else "?" for c in description)
    return text[:60] or "Bad Request"


def _raw_response(data: bytes, status: int, description: str) -> bytes | None:
    """A response to a request too broken to parse, built from its raw header lines; None
    when it is not a request (or an ACK), or lacks a header a response must carry."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    start = lines[0].split(b" ")
    if len(start) != 3 or start[2] != b"SIP/2.0" or start[0] in (b"ACK", b""):
        return None
    copied: list[bytes] = []
    seen: set[bytes] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        if not sep or key not in _COPIED or any(c in value for c in b"\x00\r\n"):
            continue
        value = value.strip()
        if key == b"to" and b"tag=" not in value.lower():
            value += b";tag=" + secrets.token_hex(8).encode()
        seen.add(key)
        copied.append(name.strip() + b": " + value)
    if seen != set(_COPIED):
        return None
    reason = _reason(description).encode()
    return b"\r\n".join(
        [b"SIP/2.0 %d %s" % (status, reason), *copied, b"Content-Length: 0", b"", b""]
    )


def bind_error(what: str, host: str, port: int, exc: OSError) -> OSError:
    """An OSError that says which listener could not bind, and why, in one line."""
    errno = exc.errno
    if errno is None and isinstance(exc.__cause__, OSError):
        errno = exc.__cause__.errno
    reason = os.strerror(errno).lower() if errno else str(exc)
    return OSError(errno, f"{what} {host}:{port}: {reason}")


def _leg_params(leg: LegMedia) -> LegParams | None:
    if leg.codec not in ("PCMU", "PCMA"):
        return None
    remote_rtcp = (leg.remote[0], leg.remote[1] + 1) if leg.remote is not None else None
    return LegParams(
        codec=leg.codec,  # type: ignore[arg-type]
        payload_type=leg.codec_pt,
        event_payload_type=leg.telephone_event_pt,
        remote=leg.remote,
        remote_rtcp=remote_rtcp,
    )


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.server.datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.server.counters.send_errors += 1


@dataclass(eq=False)
class _TcpPeer:
    writer: asyncio.StreamWriter
    framer: StreamFramer
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class SipServer:
    """UDP and TCP SIP listeners feeding one B2BUA."""

    def __init__(
        self,
        b2bua: B2BUA,
        relay: MediaRelay,
        *,
        host: str,
        udp_port: int,
        tcp_port: int | None,
        max_message_size: int = 65536,
        events: CallEvents | None = None,
        media_config: MediaConfig | None = None,
    ) -> None:
        self.b2bua = b2bua
        self.media_config = media_config
        self.relay = relay
        self.host = host
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.max_message_size = max_message_size
        self.events = events or CallEvents()
        self.counters = SipCounters()
        self._udp: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_peers: dict[Address, _TcpPeer] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # the payment side's hooks (sipproxy.callcontrol.ProxyCallControl sets them)
        self.on_call_event: Callable[[CallEvent], None] | None = None
        self.on_digit: Callable[[CallDigit], None] | None = None
        relay.on_event = self._media_event

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.udp_port)
            )
        except OSError as exc:
            raise bind_error("SIP UDP", self.host, self.udp_port, exc) from exc
        self._udp = proto
        self.udp_port = transport.get_extra_info("sockname")[1]
        if self.tcp_port is not None:
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.tcp_port)
            except OSError as exc:
                transport.close()
                raise bind_error("SIP TCP", self.host, self.tcp_port, exc) from exc
            self.tcp_port = self._tcp.sockets[0].getsockname()[1]
        log.info("sip listening", host=self.host, udp_port=self.udp_port, tcp_port=self.tcp_port)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for peer in list(self._tcp_peers.values()):
            peer.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def unix_time(self, loop_time: float) -> float:
        """Wall-clock time of a moment on the loop's clock (for what people read)."""
        return time.time() - (self.now() - loop_time)

    # -- input ---------------------------------------------------------------------------------
    def datagram(self, data: bytes, addr: Address) -> None:
        self.counters.received += 1
        if not data.strip(b"\r\n"):
            self.counters.keepalives += 1  # RFC 5626 CRLF keep-alive
            return
        try:
            message = parse_message(data, max_size=self.max_message_size)
        except SipParseError as exc:
            self._bad_message(data, exc, addr, None)
            return
        self._receive(message, addr)

    def _receive(self, message: SipRequest | SipResponse, addr: Address) -> None:
        """One parsed message into the B2BUA. A failure there is a bug, but one peer's
        message must not take the listener down (DESIGN.md invariant 7): counted, logged."""
        try:
            sends = self.b2bua.receive(message, addr, self.now())
        except Exception as exc:
            self.counters.internal_errors += 1
            log.error("sip message failed", error=type(exc).__name__, source=addr)
            return
        self.dispatch(sends)

    def _bad_message(
        self, data: bytes, exc: SipParseError, addr: Address, peer: _TcpPeer | None
    ) -> None:
        """Answer 400 where the request can be answered, else count a drop (never crash)."""
        self.counters.parse_errors += 1
        if exc.status == 513:
            self.counters.too_large += 1
        log.info("sip message dropped", reason=exc.description, rule=exc.rule, source=addr)
        if data.startswith(b"SIP/"):
            return
        status = exc.status if exc.status in (400, 505, 513) else 400
        try:
            # the headers a response needs may still parse with the body cut off
            head = data.split(b"\r\n\r\n", 1)[0] + b"\r\nContent-Length: 0\r\n\r\n"
            request = parse_message(head, max_size=self.max_message_size)
        except SipParseError:
            # a header the response copies is itself broken (CSeq, To...): answer from the
            # raw lines (§8.2.6.2 asks for the request's Via, From, To, Call-ID and CSeq)
            raw = _raw_response(data, status, exc.description)
            if raw is not None:
                self.counters.answered_400 += 1
                self._send_bytes(raw, addr)
            return
        if isinstance(request, SipRequest) and request.method != "ACK":
            response = build_response(request, status, _reason(exc.description))
            self.counters.answered_400 += 1
            self._send(SendMessage(response, addr))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        addr: Address = (peername[0], peername[1])
        peer = _TcpPeer(writer, StreamFramer(self.max_message_size))
        self._tcp_peers[addr] = peer
        self.counters.tcp_connections += 1
        try:
            while data := await reader.read(65536):
                framer = peer.framer
                pings = framer.keepalives
                framer.feed(data)
                if framer.keepalives > pings:  # RFC 5626 §3.5.1: a pong for each ping
                    self.counters.keepalives += framer.keepalives - pings
                    writer.write(b"\r\n" * (framer.keepalives - pings))
                while True:
                    try:
                        message = framer.next_message()
                    except SipParseError as exc:
                        if framer.broken:  # no Content-Length, or too large: §18.3, close
                            self.counters.tcp_closed_framing += 1
                            self._bad_message(b"", exc, addr, peer)
                            return
                        self.counters.received += 1
                        self._bad_message(framer.last_frame, exc, addr, peer)
                        continue
                    if message is None:
                        break
                    self.counters.received += 1
                    self._receive(message, addr)
                await writer.drain()  # a peer that does not read stops being read
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._tcp_peers.get(addr) is peer:
                del self._tcp_peers[addr]
            writer.close()

    # -- output --------------------------------------------------------------------------------
    def dispatch(self, sends: list[SendMessage]) -> None:
        """Send what the B2BUA returned, then act on what it asks for: media to open, call
        events for the payment side, its next timer."""
        for send in sends:
            self._send(send)
        for request in self.b2bua.take_media_requests():
            self._spawn(self._open_media(request))
        events = self.b2bua.take_call_events()
        if events and self.on_call_event is not None:
            for event in events:
                self.on_call_event(event)
        self._arm_timer()

    def _send(self, send: SendMessage) -> None:
        if send.destination is None:
            return
        self._send_bytes(send.message.serialize(), send.destination)

    def _send_bytes(self, data: bytes, destination: Address) -> None:
        """On the TCP connection from ``destination`` if there is one, else over UDP."""
        peer = self._tcp_peers.get(destination)
        try:
            if peer is not None:
                peer.writer.write(data)
            elif self._udp is not None and self._udp.transport is not None:
                self._udp.transport.sendto(data, destination)
            else:
                return
            self.counters.sent += 1
        except OSError:
            self.counters.send_errors += 1

    def _arm_timer(self) -> None:
        due = self.b2bua.deadline()
        if due is None or due == self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_due = due
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self.dispatch(self.b2bua.timer(self.now()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_media(self, request: MediaRequest) -> None:
        caller = _leg_params(request.caller) or LegParams()
        try:
            handle = await self.relay.open_call(
                request.call_id, caller, LegParams(), self.media_config
            )
        except (PortsExhausted, OSError) as exc:
            log.warning("no media for call", call=request.call_id, error=type(exc).__name__)
            self.dispatch(self.b2bua.media_failed(request.call_id, self.now()))
            return
        ports = (handle.caller_port, handle.agent_port)
        self.dispatch(self.b2bua.media_ready(request.call_id, ports, self.now()))

    # -- media events --------------------------------------------------------------------------
    def _media_event(self, event: MediaEvent) -> None:
        if isinstance(event, CallDigit):
            log.info("digit detected", call=event.call_id, source=event.source)
            self.events.publish(event)
            if self.on_digit is not None:
                self.on_digit(event)
        elif isinstance(event, MediaTimeout):
            call = next((c for c in self.b2bua.calls if c.id == event.call_id), None)
            # a call still ringing (a PBX queue) without early media is not dead: the timeout
            # is for answered calls
            if call is not None and call.state == "up":
                log.info("no media: hanging up", call=call.id, idle_s=round(event.idle_s, 1))
                self.dispatch(self.b2bua.hangup(call, self.now(), "media timeout"))

    # -- drain ---------------------------------------------------------------------------------
    async def drain(self, grace_s: float, clock: Callable[[], float] | None = None) -> None:
        """Refuse new calls, wait up to ``grace_s`` for calls to end, then hang up the rest."""
        self.b2bua.drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_s
        while self.b2bua.calls and loop.time() < end:
            await asyncio.sleep(0.1)
        for call in list(self.b2bua.calls):
            self.dispatch(self.b2bua.hangup(call, self.now(), "shutdown"))
        # let the BYEs go out and their transactions finish briefly
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settle(), timeout=2.0)

    async def _settle(self) -> None:
        while self._tasks:
            await asyncio.sleep(0.05)
