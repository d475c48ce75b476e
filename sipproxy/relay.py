"""The asyncio adapter of the media plane: sockets and timers around :mod:`sipproxy.media`.

Each call gets two port pairs on the media address, one per leg (even RTP port, RTCP on the
next one), from a configured range, and a third while a payment provider is conferenced in
(:meth:`MediaRelay.open_provider`). Every datagram goes straight into the call's
:class:`~sipproxy.media.CallMedia` (RTP through its fast entries ``rx_caller``/``rx_agent``),
and what the call sends goes straight to the socket's ``sendto``: the agent-to-caller
direction never waits for anything.

Caller frames wait for the masking engine, which runs in batches (DESIGN.md "Work is batched"):
one engine pass has a fixed cost far above the cost of one more frame in it, so a batch opens
with the first queued frame and is flushed ``batch_window_s`` later, or at once when
``batch_calls`` calls have frames queued. At light load (fewer than ``light_load_frames``
frames in the last tick) each loop iteration flushes what it got instead: there is CPU to
spare, and the latency is then the look-ahead alone. A timer ticks every 20 ms (masking
frames for empty slots, RFC 4733 end timeouts, media timeouts, the load estimate) while any
call is open; it is a timer handle, not a task.

Works on the stdlib loop and on uvloop. On the stdlib loop the receive size is cut from
256 KiB to ``recv_size`` (DESIGN.md performance notes: glibc's mmap per large recvfrom).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .media import (
    CallMedia,
    LegName,
    LegParams,
    MediaConfig,
    MediaEngine,
    MediaEvent,
)

__all__ = ["CallEndpoints", "MediaRelay", "PortsExhausted", "RelayConfig", "RelayCounters"]


class PortsExhausted(RuntimeError):
    """No free RTP/RTCP port pair is left in the configured range."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Where media sockets live. ``port_min``..``port_max`` inclusive; RTP ports are even."""

    media_address: str = "127.0.0.1"
    port_min: int = 20000
    port_max: int = 29999
    # also open RTP+1 for RTCP (off: RTCP only multiplexed on the RTP port, RFC 5761)
    rtcp_sockets: bool = True
    # bytes per recvfrom on the stdlib loop (RTP packets of G.711 are 172 bytes)
    recv_size: int = 2048
    tick_s: float = 0.02
    # caller frames wait at most this long for the rest of their engine batch
    batch_window_s: float = 0.004
    # ...or until this many calls have frames queued
    batch_calls: int = 256
    # below this many frames per tick, flush every loop iteration (no batching delay)
    light_load_frames: int = 4

    def __post_init__(self) -> None:
        if not 1024 <= self.port_min <= self.port_max <= 65535:
            raise ValueError(f"port range {self.port_min}-{self.port_max} not within 1024-65535")
        lo = self.port_min + (self.port_min & 1)
        if lo + (1 if self.rtcp_sockets else 0) > self.port_max:
            raise ValueError(f"port range {self.port_min}-{self.port_max} holds no port pair")
        if not 256 <= self.recv_size <= 65536:
            raise ValueError(f"recv_size must be within 256..65536, got {self.recv_size}")
        if not 0.001 <= self.tick_s <= 0.1:
            raise ValueError(f"tick_s must be within 0.001..0.1, got {self.tick_s}")
        if not 0.0 <= self.batch_window_s <= 0.02:
            raise ValueError(f"batch_window_s must be within 0..0.02, got {self.batch_window_s}")
        if self.batch_calls < 1 or self.light_load_frames < 0:
            raise ValueError("batch_calls must be >= 1 and light_load_frames >= 0")


class RelayCounters:
    """Plain ints for the whole relay.

    ``datagrams_tx`` is read from the calls' leg counters (their ``tx_packets`` and
    ``rtcp_tx``, ended calls included), so the send path counts each datagram once.
    """

    __slots__ = (
        "_relay",
        "_tx_retired",
        "datagrams_rx",
        "dropped_unbound",
        "flushes",
        "socket_errors",
    )

    def __init__(self, relay: MediaRelay) -> None:
        self._relay = relay
        self._tx_retired = 0
        self.datagrams_rx = 0
        self.flushes = 0
        self.socket_errors = 0
        self.dropped_unbound = 0  # output for a socket that was already closed

    @property
    def datagrams_tx(self) -> int:
        live = sum(_tx_of(h.media) for h in self._relay.calls.values())
        return self._tx_retired + live - self.dropped_unbound

    def __repr__(self) -> str:
        return (
            f"RelayCounters(datagrams_rx={self.datagrams_rx}, datagrams_tx={self.datagrams_tx},"
            f" flushes={self.flushes}, socket_errors={self.socket_errors},"
            f" dropped_unbound={self.dropped_unbound})"
        )


def _tx_of(media: CallMedia) -> int:
    c, a, p = media.caller.counters, media.agent.counters, media.provider_counters
    return c.tx_packets + c.rtcp_tx + a.tx_packets + a.rtcp_tx + p.tx_packets + p.rtcp_tx


class _Endpoint(asyncio.DatagramProtocol):
    """One socket of one leg: hands datagrams to the call, stamped with the loop's time."""

    __slots__ = ("call", "counters", "leg", "relay", "rtcp", "rx", "time", "transport")

    def __init__(self, relay: MediaRelay, call: CallMedia, leg: LegName, rtcp: bool) -> None:
        self.relay = relay
        self.counters = relay.counters
        self.call = call
        self.leg: LegName = leg
        self.rtcp = rtcp
        self.transport: asyncio.DatagramTransport | None = None
        self.rx: Callable[[bytes, Any, float], None]
        if rtcp:
            self.rx = self._rx_rtcp
        elif leg == "caller":
            self.rx = call.rx_caller
        elif leg == "agent":
            self.rx = call.rx_agent
        else:
            self.rx = self._rx_provider
        self.time: Callable[[], float] = relay._time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the stdlib's selector transport is not a DatagramTransport subclass
        self.transport = cast(asyncio.DatagramTransport, transport)
        if hasattr(transport, "max_size"):  # the stdlib selector transport
            transport.max_size = self.relay.config.recv_size
        loop = self.relay._loop
        if loop is not None:
            self.time = loop.time  # a builtin on uvloop: no Python frame per datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counters.datagrams_rx += 1
        self.rx(data, addr, self.time())

    def _rx_rtcp(self, data: bytes, addr: Any, now: float) -> None:
        self.call.receive(self.leg, data, addr, now, rtcp_port=True)

    def _rx_provider(self, data: bytes, addr: Any, now: float) -> None:
        self.call.receive("provider", data, addr, now)

    def error_received(self, exc: Exception) -> None:
        self.counters.socket_errors += 1  # e.g. ICMP port unreachable from a peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


@dataclass(slots=True)
class CallEndpoints:
    """The sockets of one call. RTCP ports are RTP + 1 (when RTCP sockets are on);
    ``provider_port`` is 0 while no provider leg is open."""

    call_id: str
    media: CallMedia
    caller_port: int
    agent_port: int
    endpoints: dict[tuple[LegName, bool], _Endpoint] = field(default_factory=dict)
    provider_port: int = 0

    def transport(self, leg: LegName, rtcp: bool) -> asyncio.DatagramTransport | None:
        ep = self.endpoints.get((leg, rtcp)) or self.endpoints.get((leg, False))
        return None if ep is None else ep.transport


class MediaRelay:
    """All calls' media sockets on one loop, around one shared :class:`MediaEngine`.

    ``on_event`` receives every :class:`~sipproxy.media.MediaEvent` (digits, timeouts).
    """

    def __init__(
        self,
        engine: MediaEngine | None = None,
        config: RelayConfig | None = None,
        *,
        on_event: Callable[[MediaEvent], None] | None = None,
    ) -> None:
        self.engine = engine or MediaEngine()
        self.config = config or RelayConfig()
        self.on_event = on_event
        self.counters = RelayCounters(self)
        self.calls: dict[str, CallEndpoints] = {}
        self._used: set[int] = set()
        self._cursor = self.config.port_min + (self.config.port_min & 1)
        self._flush_scheduled = False  # call_soon(_flush) pending
        self._batch_timer: asyncio.TimerHandle | None = None  # call_at(_flush) pending
        self._light = True  # few frames per tick: flush every loop iteration
        self._frames_at_tick = 0
        self.engine.batch_calls = self.config.batch_calls
        self.engine.on_wake = self._wake
        self._tick_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ----------------------------------------------------------------------- calls

    async def open_call(
        self,
        call_id: str,
        caller: LegParams,
        agent: LegParams,
        media_config: MediaConfig | None = None,
    ) -> CallEndpoints:
        """Open both legs' sockets and the call's media. Raises :class:`PortsExhausted`."""
        if self._closed:
            raise RuntimeError("the media relay is closed")
        if call_id in self.calls:
            raise ValueError(f"call {call_id!r} already has media")
        loop = self._loop = asyncio.get_running_loop()
        media = self.engine.open_call(call_id, caller, agent, media_config, now=loop.time())
        handle = CallEndpoints(call_id, media, 0, 0)
        try:
            handle.caller_port = await self._bind_pair(handle, "caller")
            handle.agent_port = await self._bind_pair(handle, "agent")
        except BaseException:
            self._release(handle)
            raise
        for leg in ("caller", "agent"):
            rtp = handle.transport(leg, False)
            rtcp = handle.transport(leg, True)
            media.bind_senders(
                leg,
                None if rtp is None else rtp.sendto,
                None if rtcp is None else rtcp.sendto,
            )
        self.calls[call_id] = handle
        if self._tick_handle is None:
            self._schedule_tick(loop.time() + self.config.tick_s)
        return handle

    async def open_provider(self, call_id: str) -> int:
        """Bind the provider leg's RTP/RTCP pair for a call (from the same port range) and
        hand its senders to the call's media; returns the RTP port. The media's provider
        leg itself is attached by :meth:`CallMedia.attach_provider`. Raises ``KeyError``
        for an unknown call, ``ValueError`` if the call has a provider pair already,
        :class:`PortsExhausted` if the range is full."""
        handle = self.calls[call_id]
        if handle.provider_port:
            raise ValueError(f"call {call_id!r} already has a provider leg")
        try:
            port = await self._bind_pair(handle, "provider")
        except BaseException:
            self._close_endpoints(handle, "provider")
            raise
        if self.calls.get(call_id) is not handle:  # the call ended while we were binding
            self._close_endpoints(handle, "provider")
            self._used.discard(port)
            raise KeyError(call_id)
        handle.provider_port = port
        rtp = handle.transport("provider", False)
        rtcp = handle.endpoints.get(("provider", True))
        handle.media.bind_senders(
            "provider",
            None if rtp is None else rtp.sendto,
            None if rtcp is None or rtcp.transport is None else rtcp.transport.sendto,
        )
        return port

    def close_provider(self, call_id: str) -> None:
        """Close a call's provider sockets, free the port pair, detach the provider leg
        from its media (idempotent; nothing for an unknown call)."""
        handle = self.calls.get(call_id)
        if handle is None:
            return
        handle.media.detach_provider()
        handle.media.bind_senders("provider", None, None)
        self._close_endpoints(handle, "provider")
        if handle.provider_port:
            self._used.discard(handle.provider_port)
            handle.provider_port = 0

    @staticmethod
    def _close_endpoints(handle: CallEndpoints, leg: LegName) -> None:
        for rtcp in (False, True):
            ep = handle.endpoints.pop((leg, rtcp), None)
            if ep is not None and ep.transport is not None:
                ep.transport.close()

    def close_call(self, call_id: str) -> None:
        """Close a call's sockets and free its ports and engine stream (idempotent)."""
        handle = self.calls.pop(call_id, None)
        if handle is None:
            return
        self._release(handle)
        if not self.calls and self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    async def close(self) -> None:
        """Close every call; returns once the sockets are closed."""
        self._closed = True
        for call_id in list(self.calls):
            self.close_call(call_id)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        await asyncio.sleep(0)  # let the transports run connection_lost
        await asyncio.sleep(0)

    def _release(self, handle: CallEndpoints) -> None:
        self.counters._tx_retired += _tx_of(handle.media)
        for ep in handle.endpoints.values():
            if ep.transport is not None:
                ep.transport.close()
        handle.endpoints.clear()
        for port in (handle.caller_port, handle.agent_port, handle.provider_port):
            if port:
                self._used.discard(port)
        handle.provider_port = 0
        self.engine.close_call(handle.media)

    # ----------------------------------------------------------------------- ports

    async def _bind_pair(self, handle: CallEndpoints, leg: LegName) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        first = cfg.port_min + (cfg.port_min & 1)
        last = cfg.port_max - (1 if cfg.rtcp_sockets else 0)
        n_pairs = (last - first) // 2 + 1
        family = socket.AF_INET6 if ":" in cfg.media_address else socket.AF_INET
        for _ in range(n_pairs):
            port = self._cursor
            self._cursor = port + 2 if port + 2 <= last else first
            if port in self._used:
                continue
            socks: list[socket.socket] = []
            try:
                for rtcp in (False, True) if cfg.rtcp_sockets else (False,):
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    socks.append(sock)
                    sock.bind((cfg.media_address, port + rtcp))
            except OSError as exc:
                for sock in socks:
                    sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # someone else has it: try the next pair
                raise
            made: list[_Endpoint] = []
            try:
                for rtcp, sock in zip((False, True), socks, strict=False):
                    ep = _Endpoint(self, handle.media, leg, rtcp)
                    await loop.create_datagram_endpoint(lambda ep=ep: ep, sock=sock)  # type: ignore[misc]
                    made.append(ep)
            except BaseException:
                for ep in made:
                    if ep.transport is not None:
                        ep.transport.close()
                for sock in socks[len(made) :]:
                    sock.close()
                raise
            self._used.add(port)
            for ep in made:
                handle.endpoints[(leg, ep.rtcp)] = ep
            return port
        raise PortsExhausted(
            f"no free RTP/RTCP port pair in {cfg.port_min}-{cfg.port_max} on "
            f"{cfg.media_address} ({len(self._used)} pairs in use by this relay)"
        )

    # ----------------------------------------------------------------------- I/O

    def _time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _wake(self, full: bool) -> None:
        """The engine has work: a batch opened (``full`` False) or filled up (True)."""
        loop = self._loop
        if loop is None or self._flush_scheduled:
            return
        if full or self._light or self.config.batch_window_s == 0.0:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        elif self._batch_timer is None:
            self._batch_timer = loop.call_at(loop.time() + self.config.batch_window_s, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        self.counters.flushes += 1
        engine = self.engine
        engine.flush()
        if not engine._ready:
            return
        for media in engine.ready_calls():
            handle = self.calls.get(media.call_id)
            datagrams = media.datagrams_to_send()
            events = media.events()
            if handle is not None:
                for d in datagrams:
                    transport = handle.transport(d.leg, d.rtcp)
                    if transport is None:
                        self.counters.dropped_unbound += 1
                        continue
                    transport.sendto(d.data, d.address)
            elif datagrams:
                self.counters.dropped_unbound += len(datagrams)
            if self.on_event is not None:
                for ev in events:
                    self.on_event(ev)

    def _schedule_tick(self, when: float) -> None:
        assert self._loop is not None
        self._tick_handle = self._loop.call_at(when, self._tick, when)

    def _tick(self, when: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        frames = self.engine.batched_frames
        self._light = frames - self._frames_at_tick < self.config.light_load_frames
        self._frames_at_tick = frames
        self.engine.tick(now)  # queues fill frames and events: the engine wakes us
        nxt = when + self.config.tick_s
        if nxt < now:  # the loop stalled: do not fire a burst of ticks to catch up
            nxt = now + self.config.tick_s
        self._schedule_tick(nxt)
