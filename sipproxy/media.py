"""The media plane of calls, sans-I/O: datagrams and times in, datagrams and events out.

One :class:`CallMedia` per call holds its two legs, the caller's and the agent's. Each leg
has the codec and telephone-event payload type agreed in SDP (:class:`LegParams`), latches
its peer's address from the first valid packet (symmetric RTP) and sends its own outgoing
stream with its own SSRC, sequence numbers and timestamps (:class:`~sipproxy.rtp.StreamRewriter`).

- Caller -> agent: audio is decoded, masked (DESIGN.md invariant 1), re-encoded. RFC 4733
  events from the caller are never forwarded: they force masking for the event's duration,
  and while the caller sends no audio during an event, masking frames fill its 20 ms slots.
- Agent -> caller: relayed, header rewritten (transcoded if the legs' codecs differ).
- RTCP: relayed with SSRCs mapped to the other leg's streams.
- Digits from in-band audio, RFC 4733 and SIP INFO are counted once per key press
  (:class:`~dtmfmask.dedup.DigitDeduplicator`) and published as :class:`CallDigit`.

While a payment provider is conferenced in (:meth:`CallMedia.attach_provider`), a third leg
carries the caller's masked audio to it, with each new digit regenerated as a clean RFC 4733
event (or in-band tone) while capture is on (:meth:`CallMedia.set_capture`); the provider's
audio is mixed into what the agent and the caller hear. While the caller is held
(:meth:`CallMedia.set_hold`) it hears hold audio (:mod:`sipproxy.holdaudio`) instead of the
agent. Calls with neither keep the fast paths: one attribute check each.

One :class:`MediaEngine` serves every call: it owns the :class:`~dtmfmask.masker.MaskingEngine`
and, on :meth:`MediaEngine.flush`, runs the caller frames of all calls that arrived since the
last flush through it in one batched pass per frame length (DESIGN.md "Work is batched").
The I/O adapter (:mod:`sipproxy.relay`) calls ``receive`` per datagram, ``flush`` once per
loop iteration and ``tick`` every 20 ms, and sends what :meth:`CallMedia.datagrams_to_send`
returns.

Times are seconds on any monotonic clock (the adapter's ``loop.time()``). Counters are plain
ints, read on scrape. Nothing here logs, and no digit value appears in a repr.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dtmfmask.dedup import DigitDeduplicator
from dtmfmask.events import DigitEnded, DigitEvent, DigitStarted, Source
from dtmfmask.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from dtmfmask.masker import MaskConfig, MaskingEngine
from dtmfmask.rfc4733 import (
    EventGenerator,
    EventPacket,
    EventReceiver,
    RtpDigitEnded,
    RtpDigitStarted,
    RtpOtherEvent,
)
from dtmfmask.tones import SAMPLE_RATE, dtmf_tone

from .holdaudio import HoldAudio
from .rtp import (
    RtcpError,
    RtpError,
    RtpView,
    StreamRewriter,
    build_rtp,
    is_rtcp,
    parse_rtcp,
    peek_rtp,
    rewrite_rtcp_ssrcs,
    rewrite_rtp_header,
)

__all__ = [
    "DIGIT_SAMPLES",
    "Address",
    "CallDigit",
    "CallMedia",
    "Codec",
    "Datagram",
    "LegCounters",
    "LegName",
    "LegParams",
    "MediaConfig",
    "MediaCounters",
    "MediaEngine",
    "MediaEvent",
    "MediaTimeout",
]

Address = tuple[str, int]
LegName = Literal["caller", "agent", "provider"]
Codec = Literal["PCMU", "PCMA"]
Pcm = npt.NDArray[np.int16]

CODEC_PAYLOAD_TYPES: dict[Codec, int] = {"PCMU": 0, "PCMA": 8}
_TS_MOD = 1 << 32


def _ts_diff(a: int, b: int) -> int:
    """``a - b`` on the 32-bit RTP timestamp circle, signed."""
    d = (a - b) % _TS_MOD
    return d - _TS_MOD if d >= _TS_MOD // 2 else d


def _decode(codec: Codec, payload: bytes | memoryview) -> Pcm:
    return ulaw_decode(payload) if codec == "PCMU" else alaw_decode(payload)


def _encode(codec: Codec, pcm: Pcm) -> npt.NDArray[np.uint8]:
    return ulaw_encode(pcm) if codec == "PCMU" else alaw_encode(pcm)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class LegParams:
    """What SDP negotiation agreed for one leg.

    ``codec`` is the audio codec and ``payload_type`` its RTP payload type (0 for PCMU,
    8 for PCMA unless the offer mapped them dynamically). ``event_payload_type`` is the
    telephone-event type, None if the peer has none. ``remote``/``remote_rtcp`` are the
    addresses from SDP, used until the peer's own packets latch the real ones.
    """

    codec: Codec = "PCMU"
    payload_type: int | None = None
    event_payload_type: int | None = 101
    remote: Address | None = None
    remote_rtcp: Address | None = None
    ptime_ms: int = 20

    def __post_init__(self) -> None:
        if self.codec not in CODEC_PAYLOAD_TYPES:
            raise ValueError(f"codec must be PCMU or PCMA, got {self.codec!r}")
        if self.payload_type is not None and not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} not in 0-127")
        if self.event_payload_type is not None and not 0 <= self.event_payload_type <= 127:
            raise ValueError(f"telephone-event payload type {self.event_payload_type} not in 0-127")
        if self.event_payload_type is not None and self.event_payload_type == self.audio_pt:
            raise ValueError("audio and telephone-event cannot share a payload type")
        if not 10 <= self.ptime_ms <= 120:
            raise ValueError(f"ptime_ms must be within 10..120, got {self.ptime_ms}")

    @property
    def audio_pt(self) -> int:
        return CODEC_PAYLOAD_TYPES[self.codec] if self.payload_type is None else self.payload_type


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Per-call media options (operator's words). Times in seconds."""

    # a latched peer silent this long may be replaced by a new source address
    relatch_after_s: float = 2.0
    # report a MediaTimeout when neither leg has sent anything for this long
    media_timeout_s: float = 30.0
    # caller frames waiting for the next engine pass, per call; more is a flood (dropped)
    max_pending_frames: int = 16
    # relay datagrams waiting for the next send, per call
    max_outbox: int = 256
    # how late the caller's audio may be before a masking frame takes its slot in an event
    slot_slack_s: float = 0.03
    # masking frames made in one tick at most (a stalled loop does not produce a burst)
    max_fill_per_tick: int = 5
    # RFC 4733 press with no end packet is closed after this long
    event_end_timeout_s: float = 1.0
    # digits waiting for their turn on the provider leg; more are dropped (counted)
    provider_digit_queue: int = 32
    # provider audio waiting to be mixed, per destination (samples); more overflows
    mix_fifo_samples: int = 800
    # mask key presses on every call (True), or only while a payment captures the card
    # (False: ``mask: during_payment``; IVR menu keys reach the agent outside a payment)
    mask_always: bool = True

    def __post_init__(self) -> None:
        if self.relatch_after_s < 0 or self.media_timeout_s <= 0:
            raise ValueError("relatch_after_s must be >= 0 and media_timeout_s > 0")
        if (
            self.max_pending_frames < 1
            or self.max_outbox < 1
            or self.max_fill_per_tick < 1
            or self.provider_digit_queue < 1
            or self.mix_fifo_samples < 1
        ):
            raise ValueError("queue bounds must be at least 1")
        if not 0 <= self.slot_slack_s <= 1.0:
            raise ValueError("slot_slack_s must be within 0..1")


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram to send from ``leg``'s RTP socket (or its RTCP socket if ``rtcp``)."""

    leg: LegName
    rtcp: bool
    address: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class CallDigit:
    """A key press, counted once whatever transports carried it. ``at`` is its start
    (seconds, on the adapter's clock: estimated from the arrival of the packets that
    reported it, so under load it is only as good as they were on time; the counting
    itself runs on the media clock). The digit is kept out of the repr so it cannot reach a
    log through one (DESIGN.md invariant 3)."""

    call_id: str
    digit: str = field(repr=False)
    source: Source
    at: float


@dataclass(frozen=True, slots=True)
class MediaTimeout:
    """Neither leg has sent anything for ``idle_s`` seconds."""

    call_id: str
    idle_s: float


MediaEvent = CallDigit | MediaTimeout


@dataclass(slots=True)
class LegCounters:
    """Plain ints per leg; ``rx_*`` counts what the peer sent, ``tx_*`` what we sent it."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rtcp_rx: int = 0
    rtcp_tx: int = 0
    # drops, by reason
    short: int = 0
    version: int = 0
    csrc: int = 0
    extension: int = 0
    padding: int = 0
    unknown_pt: int = 0
    hijack: int = 0
    late: int = 0  # duplicate or out of order beyond repair (StreamRewriter said drop)
    flood: int = 0  # queue bound reached
    rtcp_malformed: int = 0
    no_destination: int = 0  # nothing latched and nothing in SDP yet
    # not drops
    relatch: int = 0
    events_rx: int = 0  # RFC 4733 packets received (never forwarded from the caller)


@dataclass(slots=True)
class MediaCounters:
    """Plain ints for the masked direction of one call."""

    frames_masked_path: int = 0  # caller frames through the engine
    fill_frames: int = 0  # masking frames sent in slots the caller left empty
    engine_failures: int = 0  # engine passes that raised
    fail_closed_frames: int = 0  # frames sent as silence because the engine did not run
    digits: int = 0  # key presses published
    duplicate_digits: int = 0  # reports folded into a press already counted
    # hold, the provider leg and the 3-party mix
    hold_frames: int = 0  # hold audio frames sent to the caller (paced by the agent)
    hold_tick_frames: int = 0  # ...and by the timer, while the agent sent nothing
    mix_agent_frames: int = 0  # agent-bound frames with provider audio mixed in
    mix_caller_frames: int = 0  # caller-bound frames with provider audio mixed in
    mix_overflow: int = 0  # provider packets that pushed older audio out of a full FIFO
    digits_to_provider: int = 0  # key presses sent on the provider leg (events or tones)
    provider_digits_dropped: int = 0  # digit queue full
    provider_events_dropped: int = 0  # telephone-event packets the provider sent us
    provider_unattached: int = 0  # datagrams on the provider socket with no leg attached
    provider_failures: int = 0  # provider slots that raised (the agent's frame still went)


# --------------------------------------------------------------------------- one leg

Sender = Callable[[bytes, Any], object]
"""Sends one datagram to an address (a transport's ``sendto``)."""

# the RTP fixed header, as peek_rtp reads it and build_rtp writes it
_HDR = struct.Struct("!BBHII")
_HDR_UNPACK = _HDR.unpack_from
_HDR_PACK = _HDR.pack
_LATE_D = _TS_MOD - SAMPLE_RATE * 2  # ts - fed (mod 2**32) above this: a slot already gone
_MS_PER_SAMPLE = 1000.0 / SAMPLE_RATE


class _Latch:
    """Symmetric RTP address latching for one socket of one leg.

    ``raw`` is the latched address exactly as the socket reported it (the fast paths compare
    against it); ``dest`` is where to send: the latched address, else the one from SDP.
    """

    __slots__ = ("_initial", "address", "dest", "last_rx", "raw", "relatch_after")

    def __init__(self, relatch_after: float, initial: Address | None) -> None:
        self.address: Address | None = None
        self.raw: object = None
        self.last_rx = float("-inf")
        self.relatch_after = relatch_after
        self._initial = initial  # from SDP: where to send until the peer's packets latch
        self.dest: Address | None = initial

    @property
    def destination(self) -> Address | None:
        return self.dest

    def set_initial(self, initial: Address | None) -> None:
        self._initial = initial
        self.dest = self.address if self.address is not None else initial

    def accept(self, addr: Any, now: float, counters: LegCounters) -> bool:
        if addr == self.raw:
            self.last_rx = now
            return True
        norm: Address = (addr[0], addr[1])
        if norm == self.address:
            self.last_rx = now
            return True
        if self.address is not None and now - self.last_rx < self.relatch_after:
            counters.hijack += 1
            return False
        if self.address is not None:
            counters.relatch += 1
        self.address = self.dest = norm
        self.raw = addr
        self.last_rx = now
        return True


class _Leg:
    """One leg: its peer (latched addresses, negotiated types, incoming SSRC) and the stream
    we send it. ``send_rtp``/``send_rtcp`` are set when an I/O adapter sends directly;
    otherwise what is sent waits in the call's outbox."""

    __slots__ = (
        "audio_pt",
        "codec",
        "counters",
        "event_pt",
        "in_ssrc",
        "name",
        "out",
        "out_ssrc",
        "params",
        "rtcp",
        "rtcp_mux",
        "rtp",
        "send_rtcp",
        "send_rtp",
    )

    def __init__(
        self,
        name: LegName,
        params: LegParams,
        config: MediaConfig,
        counters: LegCounters | None = None,
    ) -> None:
        self.name: LegName = name
        self.counters = LegCounters() if counters is None else counters
        self.rtp = _Latch(config.relatch_after_s, params.remote)
        self.rtcp = _Latch(config.relatch_after_s, None)
        self.out = StreamRewriter.create(ptime_ms=params.ptime_ms)
        self.out_ssrc = self.out.ssrc
        self.in_ssrc: int | None = None  # the peer's media SSRC, as last seen
        self.rtcp_mux = False  # the peer sent RTCP on its RTP port
        self.send_rtp: Sender | None = None
        self.send_rtcp: Sender | None = None
        self.update(params)

    def update(self, params: LegParams) -> None:
        self.params = params
        self.codec: Codec = params.codec
        self.audio_pt = params.audio_pt
        self.event_pt = params.event_payload_type
        self.rtp.set_initial(params.remote)
        rtcp_initial = params.remote_rtcp
        if rtcp_initial is None and params.remote is not None:
            rtcp_initial = (params.remote[0], params.remote[1] + 1)
        self.rtcp.set_initial(rtcp_initial)


# --------------------------------------------------------------------------- the provider


class _Fifo:
    """Provider audio waiting to be mixed toward one destination: at most ``capacity``
    samples; a push that does not fit pushes the oldest samples out (the provider's clock
    runs fast, or the destination stopped taking)."""

    __slots__ = ("_buf", "_size", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf: Pcm = np.zeros(capacity, np.int16)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        self._size = 0

    def push(self, pcm: Pcm) -> bool:
        """Append ``pcm``; False if older samples had to go to make room."""
        cap = self.capacity
        m = pcm.size
        size = self._size
        if m >= cap:
            self._buf[:] = pcm[m - cap :]
            self._size = cap
            return size == 0 and m == cap
        if size + m > cap:
            drop = size + m - cap
            self._buf[: size - drop] = self._buf[drop:size]
            size -= drop
            self._buf[size : size + m] = pcm
            self._size = cap
            return False
        self._buf[size : size + m] = pcm
        self._size = size + m
        return True

    def take(self, n: int) -> npt.NDArray[np.int32] | None:
        """The next ``n`` samples (zero-padded if fewer are waiting) as int32 for a
        saturating add, or None if nothing is waiting."""
        size = self._size
        if size == 0:
            return None
        if size >= n:
            out = self._buf[:n].astype(np.int32)
        else:
            out = np.zeros(n, np.int32)
            out[:size] = self._buf[:size]
            n = size
        self._buf[: size - n] = self._buf[n:size]
        self._size = size - n
        return out


def _mix(pcm: Pcm, add: npt.NDArray[np.int32]) -> Pcm:
    """``pcm + add``, saturating at the 16-bit limits."""
    total = pcm + add  # int32: no wrap
    # in place, and not np.clip: its wrapper costs more than the work on a 20 ms frame
    np.minimum(total, 32767, out=total)
    np.maximum(total, -32768, out=total)
    out: Pcm = total.astype(np.int16)
    return out


DIGIT_SAMPLES = SAMPLE_RATE // 10
"""A digit on the provider leg lasts 100 ms, whether an RFC 4733 event or an in-band tone."""
_TONE_GAP = 3 * SAMPLE_RATE // 50  # 60 ms of audio after an in-band tone before the next
_TONE_RAMP = SAMPLE_RATE // 500  # 2 ms raised-cosine edges: no click, no splatter
_EVENT_VOLUME = 10  # -dBm0 reported in the events (RFC 4733 §2.3.4): a normal key's level


@cache
def _digit_tone(digit: str) -> Pcm:
    """100 ms of ``digit`` as a clean in-band key: -7 dBm0 low tone, the high tone 2 dB
    stronger (normal practice for senders), soft edges."""
    x = dtmf_tone(digit, DIGIT_SAMPLES, -7.0, twist_db=-2.0)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(_TONE_RAMP) / _TONE_RAMP)
    x[:_TONE_RAMP] *= ramp
    x[-_TONE_RAMP:] *= ramp[::-1]
    tone: Pcm = np.rint(x).astype(np.int16)
    tone.flags.writeable = False
    return tone


# what the provider stream is doing, slot by slot
_IDLE, _EVENT, _EVENT_END, _TONE, _TONE_GAP_PHASE = range(5)


class _Provider:
    """The provider leg of a call: its :class:`_Leg`, the mix FIFOs, and the digits on their
    way to it.

    The stream sent to the provider is all ours (:meth:`StreamRewriter.insert`): one audio
    packet per slot, each slot a frame of the caller's masked audio (or a timer slot of
    silence while the caller sends nothing and a digit is under way). A digit replaces the
    audio of the slots it covers with an RFC 4733 event of :data:`DIGIT_SAMPLES` (the
    provider's telephone-event type, timestamp fixed at its start, marker on the first
    packet); its three end packets go one per slot alongside the audio, which resumes with
    the timestamp advanced by the event's duration. A provider without telephone-event gets
    a 100 ms in-band tone in place of the audio instead, then at least 60 ms of audio.
    Digits wait in a queue for the previous one to be done, so they never overlap.
    """

    __slots__ = (
        "_adv",
        "_ev_elapsed",
        "_ev_end",
        "_ev_gen",
        "_gap",
        "_phase",
        "_tone",
        "digits",
        "leg",
        "slot_time",
        "to_agent",
        "to_caller",
    )

    def __init__(self, leg: _Leg, config: MediaConfig) -> None:
        self.leg = leg
        self.to_agent = _Fifo(config.mix_fifo_samples)
        self.to_caller = _Fifo(config.mix_fifo_samples)
        self.digits: deque[str] = deque()
        self.slot_time = float("-inf")  # when the last slot was sent (media clock)
        self._adv = 0  # timestamp advance of the next audio packet from the last one sent
        self._phase = _IDLE
        self._ev_gen = EventGenerator(interval=SAMPLE_RATE // 50, volume=_EVENT_VOLUME)
        self._ev_elapsed = 0  # samples of the event so far
        self._ev_end: list[EventPacket] = []  # end packets still to send
        self._tone: Pcm | None = None  # tone samples still to send
        self._gap = 0  # audio samples still to send before the next tone

    @property
    def busy(self) -> bool:
        """A digit is being sent or waits: the timer keeps the stream going."""
        return self._phase != _IDLE or bool(self.digits)

    def _event_packet(self, p: EventPacket, seq: int | None = None) -> bytes:
        leg = self.leg
        assert leg.event_pt is not None
        if seq is None:  # the event's own timestamp goes in, not the stream's
            seq = leg.out.insert(0)[0]
        pt = leg.event_pt | 0x80 if p.marker else leg.event_pt
        return _HDR_PACK(0x80, pt, seq, p.timestamp, leg.out_ssrc) + p.payload

    def slot(self, pcm: Pcm, marker: bool, counters: MediaCounters) -> list[bytes]:
        """The packets of one slot of ``pcm`` (the caller's masked audio, ``pcm.size``
        samples), in sending order."""
        leg = self.leg
        n = pcm.size
        phase = self._phase
        if phase in (_EVENT, _EVENT_END) and leg.event_pt is None:
            # new SDP without telephone-event mid-event: nothing left to end it with
            self._ev_gen.stop(0)
            phase = self._phase = _IDLE
        if phase == _IDLE and self.digits and leg.rtp.dest is not None:
            digit = self.digits.popleft()
            counters.digits_to_provider += 1
            if leg.event_pt is not None:
                seq, ts, _ = leg.out.insert(self._adv)  # the event starts where audio would
                (first,) = self._ev_gen.start(digit, ts)
                self._adv = self._ev_elapsed = n
                self._phase = _EVENT
                return [self._event_packet(first, seq)]
            self._tone = _digit_tone(digit)
            phase = self._phase = _TONE
        packets: list[bytes] = []
        if phase == _EVENT:
            elapsed = self._ev_elapsed
            if elapsed < DIGIT_SAMPLES:
                updates = self._ev_gen.advance(elapsed)
                if updates:
                    packets.append(self._event_packet(updates[-1]))
                self._adv += n
                self._ev_elapsed = elapsed + n
                return packets
            self._ev_end = self._ev_gen.stop(DIGIT_SAMPLES)[-self._ev_gen.end_repeats :]
            phase = self._phase = _EVENT_END
        if phase == _EVENT_END:
            packets.append(self._event_packet(self._ev_end.pop(0)))
            if not self._ev_end:
                self._phase = _IDLE
        elif phase == _TONE:
            tone = self._tone
            assert tone is not None
            k = min(n, tone.size)
            pcm = pcm.copy()
            pcm[:k] = tone[:k]
            if k < tone.size:
                self._tone = tone[k:]
            else:
                self._tone = None
                self._gap = _TONE_GAP - (n - k)
                self._phase = _TONE_GAP_PHASE if self._gap > 0 else _IDLE
        elif phase == _TONE_GAP_PHASE:
            self._gap -= n
            if self._gap <= 0:
                self._phase = _IDLE
        seq, ts, m = leg.out.insert(self._adv, marker=marker)
        pt = leg.audio_pt | 0x80 if m else leg.audio_pt
        payload = _encode(leg.codec, pcm).tobytes()
        packets.append(_HDR_PACK(0x80, pt, seq, ts, leg.out_ssrc) + payload)
        self._adv = n
        return packets

    def cancel_digits(self) -> None:
        """Capture went off: queued digits never go. One under way finishes (its end
        packets), so the provider's receiver is not left with an open event."""
        self.digits.clear()


# --------------------------------------------------------------------------- the call

# A caller frame waiting for the engine, with the agent-stream header it will go in:
# (G.711 codes or None for a masking fill frame, samples, seq, ts, marker, arrival time).
# A plain tuple: the masked path makes one per packet.
_Frame = tuple[bytes | None, int, int, int, bool, float]
# An int in the queue is a release_mask at that input position, applied in order.
_Pending = _Frame | int


class CallMedia:
    """The media of one call. Create through :meth:`MediaEngine.open_call`.

    Inputs: :meth:`receive` (a datagram, its source, the socket it came on, its arrival
    time), :meth:`on_sip_info`, :meth:`tick`. Outputs: :meth:`datagrams_to_send` and
    :meth:`events`. The caller-to-agent audio goes out when the engine flushes.

    An I/O adapter may :meth:`bind_senders` so datagrams go straight to its sockets instead
    of the outbox, and feed RTP through :meth:`rx_caller` / :meth:`rx_agent` (the same as
    :meth:`receive` for an RTP socket, with a fast path for plain audio packets).
    """

    def __init__(
        self,
        engine: MediaEngine,
        call_id: str,
        caller: LegParams,
        agent: LegParams,
        config: MediaConfig,
        now: float,
    ) -> None:
        self.call_id = call_id
        self.config = config
        self.engine = engine
        self.caller = _Leg("caller", caller, config)
        self.agent = _Leg("agent", agent, config)
        self.counters = MediaCounters()
        self.stream = engine.masker.add_stream()
        if not config.mask_always:
            engine.masker.set_masking(self.stream, False, settle_samples=0)
        self.closed = False
        self._events: list[MediaEvent] = []
        self._outbox: list[Datagram] = []
        self._pending: deque[_Pending] = deque()
        self._n_pending_frames = 0
        self._max_pending = config.max_pending_frames
        self._codecs: tuple[Codec, Codec] = (caller.codec, agent.codec)
        self._receiver = self._make_receiver(caller)
        self._dedup = DigitDeduplicator()
        # caller timeline: sample position of everything queued for the engine so far, the
        # caller RTP timestamp that position corresponds to, and the slot clock
        self._fed = 0
        self._ts_at_fed = 0
        self._ssrc_fed: int | None = None  # None: nothing fed yet (then _ts_at_fed is moot)
        # (caller ts, position) of the newest audio frame; position -1: none yet
        self._anchor_ts = 0
        self._anchor_pos = -1
        self._slot_time = now  # arrival time of the newest frame queued (real or fill)
        self._event_open = False
        self._event_filled = False  # masking frames took slots during the open event
        self._fill_until = -1  # keep filling empty slots until the engine has had this much
        self._opened = now
        self._timeout_reported_at: float | None = None  # _last_rx when the timeout was sent
        # hold, the provider leg, the mix: all off the fast paths while _extra is False
        self._extra = False  # held or a provider attached
        self._held = False
        self._hold_audio: HoldAudio | None = None
        self._c_slot_time = float("-inf")  # when the last caller-bound hold frame went
        self._capture = False
        self._prov: _Provider | None = None
        self.provider_counters = LegCounters()  # kept across attach/detach, for metrics
        self._prov_senders: tuple[Sender | None, Sender | None] = (None, None)

    def _make_receiver(self, caller: LegParams) -> EventReceiver:
        pts = () if caller.event_payload_type is None else (caller.event_payload_type,)
        return EventReceiver(pts, end_timeout_ms=self.config.event_end_timeout_s * 1000.0)

    # ----------------------------------------------------------------------- public API

    def leg(self, name: LegName) -> _Leg:
        """One leg by name; ``KeyError`` for the provider leg while none is attached."""
        if name == "caller":
            return self.caller
        if name == "agent":
            return self.agent
        if self._prov is None:
            raise KeyError("no provider leg attached")
        return self._prov.leg

    def update_leg(self, name: LegName, params: LegParams) -> None:
        """New SDP for one leg (re-INVITE): codec, payload types, SDP addresses."""
        if name == "provider":
            self.attach_provider(params, self._opened)
            return
        leg = self.leg(name)
        leg.update(params)
        self._codecs = (self.caller.codec, self.agent.codec)
        if name == "caller":
            self._receiver.payload_types = (
                frozenset()
                if params.event_payload_type is None
                else frozenset((params.event_payload_type,))
            )

    def bind_senders(self, leg: LegName, rtp: Sender | None, rtcp: Sender | None) -> None:
        """Send ``leg``'s datagrams with ``rtp(data, address)`` (``rtcp`` for its RTCP
        socket) as they are made; None puts them in the outbox again. The provider leg's
        senders are kept for the leg attached now or later."""
        if leg == "provider":
            self._prov_senders = (rtp, rtcp)
            if self._prov is None:
                return
        target = self.leg(leg)
        target.send_rtp = rtp
        target.send_rtcp = rtcp

    # ----------------------------------------------------------------------- provider, hold

    @property
    def provider(self) -> _Leg | None:
        """The provider leg, if one is attached."""
        return None if self._prov is None else self._prov.leg

    @property
    def held(self) -> bool:
        return self._held

    @property
    def capture(self) -> bool:
        return self._capture

    def attach_provider(self, params: LegParams, now: float) -> None:
        """Attach the provider leg (its own stream, SSRC and counters), or give it new
        params (the provider's SDP answer: address, codec, telephone-event type). While
        ``params.remote`` is None (and nothing has latched) nothing is sent to it."""
        del now  # the leg keeps no time of its own until its peer sends
        prov = self._prov
        if prov is not None:
            prov.leg.update(params)
            return
        leg = _Leg("provider", params, self.config, self.provider_counters)
        leg.send_rtp, leg.send_rtcp = self._prov_senders
        self._prov = _Provider(leg, self.config)
        self.engine._providers += 1
        self._set_extra()

    def detach_provider(self) -> None:
        """Drop the provider leg: the mix and digit forwarding stop (idempotent)."""
        if self._prov is None:
            return
        self._prov = None
        self.engine._providers -= 1
        self._set_extra()

    def set_hold(self, held: bool, *, audio: HoldAudio | None = None) -> None:
        """Hold (True) or retrieve (False) the caller. While held, the caller hears hold
        audio (``audio``, else the default chime) in place of the agent's audio, paced by
        the agent's packets and by :meth:`tick` when the agent sends nothing; provider
        audio is not mixed toward it. Idempotent."""
        if audio is not None:
            self._hold_audio = audio
        if held == self._held:
            return
        self._held = held
        if held:
            if self._hold_audio is None:
                self._hold_audio = HoldAudio()
            self._c_slot_time = float("-inf")
            if self._prov is not None:
                self._prov.to_caller.clear()
        else:
            # the agent's stream takes over again: re-anchor the caller stream's timestamps
            # from the hold frames' (the agent's clock moved on while we sent our own)
            self.caller.out._in_ssrc = None
        self._set_extra()

    def set_capture(self, on: bool) -> None:
        """While on and a provider leg is attached, every new digit goes to the provider
        as a clean RFC 4733 event (or in-band tone). Off: queued digits are dropped. With
        ``mask_always`` off (``mask: during_payment``), capture also switches masking; it
        goes off only once the last key is over (:meth:`MaskingEngine.set_masking`)."""
        self._capture = on
        if not self.config.mask_always and not self.closed:
            self.engine.masker.set_masking(self.stream, on)
        if not on and self._prov is not None:
            self._prov.cancel_digits()

    def _set_extra(self) -> None:
        self._extra = self._held or self._prov is not None
        if self._extra and not self.closed:
            self.engine._extra[self.call_id] = self
        else:
            self.engine._extra.pop(self.call_id, None)

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[MediaEvent]:
        out, self._events = self._events, []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._outbox or self._events)

    @property
    def _last_rx(self) -> float:
        """When either leg last sent anything we accepted (or the call opened)."""
        c, a = self.caller, self.agent
        return max(self._opened, c.rtp.last_rx, c.rtcp.last_rx, a.rtp.last_rx, a.rtcp.last_rx)

    def rx_caller(self, data: bytes, addr: Any, now: float) -> None:
        """:meth:`receive` of one datagram on the caller's RTP socket. The fast path takes a
        plain audio packet (no marker, CSRC, extension or padding) from the latched address
        and the stream already being fed, and queues it for the engine."""
        src = self.caller
        latch = src.rtp
        size = len(data)
        if size > 12 and addr == latch.raw and self._n_pending_frames < self._max_pending:
            b0, b1, seq, ts, ssrc = _HDR_UNPACK(data)
            if (
                b0 == 0x80
                and b1 == src.audio_pt
                and ssrc == self._ssrc_fed
                and (ts - self._ts_at_fed) & 0xFFFFFFFF <= _LATE_D
                and not self.closed
            ):
                c = src.counters
                c.rx_packets += 1
                c.rx_bytes += size
                latch.last_rx = now
                src.in_ssrc = ssrc
                fields = self.agent.out.rewrite(seq, ts, ssrc, False, now)
                if fields is None:
                    c.late += 1
                    return
                n = size - 12  # G.711: one byte per sample; decoded in the batch at flush
                self._ts_at_fed = (ts + n) & 0xFFFFFFFF
                self._anchor_ts = ts
                fed = self._anchor_pos = self._fed
                pending = self._pending
                if not pending:
                    self.engine._mark_dirty(self)
                pending.append((data[12:], n, fields[0], fields[1], fields[2], now))
                self._n_pending_frames += 1
                self._fed = fed + n
                self._slot_time = now
                return
        self.receive("caller", data, addr, now)

    def rx_agent(self, data: bytes, addr: Any, now: float) -> None:
        """:meth:`receive` of one datagram on the agent's RTP socket. The fast path relays a
        plain audio packet from the latched address, same codec both sides, straight to the
        caller's sender: header rewritten, payload untouched."""
        src = self.agent
        latch = src.rtp
        size = len(data)
        if size > 12 and addr == latch.raw:
            dst = self.caller
            send = dst.send_rtp
            b0, b1, seq, ts, ssrc = _HDR_UNPACK(data)
            if (
                b0 == 0x80
                and b1 == src.audio_pt
                and send is not None
                and dst.codec == src.codec
                and dst.rtp.dest is not None
                and not self._extra
                and not self.closed
            ):
                c = src.counters
                c.rx_packets += 1
                c.rx_bytes += size
                latch.last_rx = now
                src.in_ssrc = ssrc
                fields = dst.out.rewrite(seq, ts, ssrc, False, now)
                if fields is None:
                    c.late += 1
                    return
                seq, ts, marker = fields
                packet = (
                    _HDR_PACK(0x80, dst.audio_pt | (marker << 7), seq, ts, dst.out_ssrc) + data[12:]
                )
                send(packet, dst.rtp.dest)
                d = dst.counters
                d.tx_packets += 1
                d.tx_bytes += size
                return
        self.receive("agent", data, addr, now)

    def receive(
        self, leg: LegName, data: bytes, addr: Any, now: float, *, rtcp_port: bool = False
    ) -> None:
        """One datagram that arrived on ``leg``'s RTP socket (its RTCP socket if
        ``rtcp_port``) from ``addr`` at ``now``. Never raises on what the peer sent."""
        if self.closed:
            return
        if leg == "provider":
            self._receive_provider(data, addr, now, rtcp_port)
            return
        src = self.caller if leg == "caller" else self.agent
        if rtcp_port or is_rtcp(data):
            self._receive_rtcp(src, data, addr, now, muxed=not rtcp_port)
            return
        c = src.counters
        fields = self._accept_rtp(src, data, addr, now)
        if fields is None:
            return
        pt, seq, ts, ssrc, marker, start, stop = fields
        is_audio = pt == src.audio_pt
        if src is self.agent:
            self._relay_to_caller(data, pt, seq, ts, ssrc, marker, start, stop, is_audio, now)
        elif is_audio:
            self._caller_audio(data, seq, ts, ssrc, marker, start, stop, now)
        else:
            c.events_rx += 1
            self.engine._ticking[self.call_id] = self
            payload = data[start:stop]
            for ev in self._receiver.receive(
                payload_type=pt,
                ssrc=ssrc,
                timestamp=ts,
                marker=marker,
                payload=payload,
                now=now * 1000.0,
            ):
                self._on_rtp_event(ev, ssrc)
            self._fill_slots(now, packet=True)

    @staticmethod
    def _accept_rtp(src: _Leg, data: bytes, addr: Any, now: float) -> RtpView | None:
        """An RTP packet from ``src``'s peer, parsed and checked (a payload type the leg
        agreed, a payload, the latched source), counted in; None: dropped and counted."""
        c = src.counters
        try:
            fields = peek_rtp(data)
        except RtpError as exc:
            setattr(c, exc.reason, getattr(c, exc.reason) + 1)
            return None
        pt, _seq, _ts, ssrc, _marker, start, stop = fields
        if pt != src.audio_pt and pt != src.event_pt:
            c.unknown_pt += 1
            return None
        if stop <= start:
            c.short += 1
            return None
        if not src.rtp.accept(addr, now, c):
            return None
        c.rx_packets += 1
        c.rx_bytes += len(data)
        src.in_ssrc = ssrc
        return fields

    def on_sip_info(self, digit: str, duration_ms: float, now: float) -> None:
        """A key press reported by SIP INFO (the B2BUA parsed it; it goes nowhere else).

        INFO has no media time of its own: it is placed on the call's media clock (engine
        input positions, see :meth:`_offer`) where the caller's audio is now, by the time
        since the newest frame came."""
        start = (self._fed + (now - self._slot_time) * SAMPLE_RATE) * _MS_PER_SAMPLE
        self._offer(digit, "info", start, start + max(duration_ms, 0.0), at=now)

    def tick(self, now: float) -> None:
        """Timer work, about every 20 ms: masking frames for empty slots during an RFC 4733
        event, closing events whose end never came, hold audio while the agent is silent,
        digits to the provider while the caller is silent, the media timeout."""
        self._tick_events(now)
        if self._extra:
            self._tick_extra(now)
        self._check_timeout(now)

    def _tick_events(self, now: float) -> bool:
        """The RFC 4733 part of :meth:`tick`; False once the call needs no more of it."""
        if self.closed:
            return False
        for ev in self._receiver.poll(now * 1000.0):
            self._on_rtp_event(ev, ev.ssrc)
        self._fill_slots(now)
        return (
            self._event_open
            or self._fed < self._fill_until
            or self._receiver.deadline() is not None
        )

    def _check_timeout(self, now: float) -> None:
        if self.closed:
            return
        last = self._last_rx
        idle = now - last
        if idle >= self.config.media_timeout_s and self._timeout_reported_at != last:
            self._timeout_reported_at = last
            self._events.append(MediaTimeout(self.call_id, idle))
            self.engine._mark_ready(self)

    def deadline(self) -> float:
        """When :meth:`tick` next has work (seconds): the adapter's timer can sleep until."""
        return self._last_rx + self.config.media_timeout_s

    # ----------------------------------------------------------------------- provider leg

    def _receive_provider(self, data: bytes, addr: Any, now: float, rtcp_port: bool) -> None:
        """What the provider sends: audio goes into the mix FIFOs; telephone-events are
        dropped (the provider has no business sending digits anywhere); RTCP is counted,
        not relayed."""
        prov = self._prov
        if prov is None:
            self.counters.provider_unattached += 1
            return
        leg = prov.leg
        c = leg.counters
        if rtcp_port or is_rtcp(data):
            try:
                parse_rtcp(data)
            except RtcpError:
                c.rtcp_malformed += 1
                return
            if (leg.rtcp if rtcp_port else leg.rtp).accept(addr, now, c):
                leg.rtcp_mux = leg.rtcp_mux or not rtcp_port
                c.rtcp_rx += 1
            return
        fields = self._accept_rtp(leg, data, addr, now)
        if fields is None:
            return
        pt, _seq, _ts, _ssrc, _marker, start, stop = fields
        if pt != leg.audio_pt:
            c.events_rx += 1
            self.counters.provider_events_dropped += 1
            return
        pcm = _decode(leg.codec, data[start:stop])
        if not prov.to_agent.push(pcm):
            self.counters.mix_overflow += 1
        if not self._held and not prov.to_caller.push(pcm):
            self.counters.mix_overflow += 1

    def _provider_slot(self, pcm: Pcm, now: float) -> None:
        """One slot of the provider stream: ``pcm`` (masked caller audio), or the digit
        under way in its place."""
        prov = self._prov
        assert prov is not None
        prov.slot_time = now
        leg = prov.leg
        packets = prov.slot(pcm, False, self.counters)
        addr = leg.rtp.dest
        if addr is None:
            leg.counters.no_destination += len(packets)
            return
        for packet in packets:
            self._send(leg, False, addr, packet)

    def _tick_extra(self, now: float) -> None:
        """Hold frames while the agent is silent; provider slots while the caller is silent
        and a digit is under way or waiting."""
        if self.closed:
            return
        step = self.caller.params.ptime_ms / 1000.0
        n = SAMPLE_RATE * self.caller.params.ptime_ms // 1000
        late = step + self.config.slot_slack_s
        most = self.config.max_fill_per_tick
        if self._held:
            if self._c_slot_time == float("-inf"):
                self._c_slot_time = now - late
            made = 0
            while now - self._c_slot_time >= late and made < most:
                self._hold_frame(n, now)
                self.counters.hold_tick_frames += 1
                self._c_slot_time += step
                made += 1
            if now - self._c_slot_time > 4 * step:
                self._c_slot_time = now - step  # a stalled loop: no burst to catch up
        prov = self._prov
        # caller frames queued for the engine (masking fill frames included) make their own
        # provider slots when it flushes
        if prov is not None and prov.busy and not self._pending:
            if now - prov.slot_time > 4 * step:
                prov.slot_time = now - late
            made = 0
            while now - prov.slot_time >= late and made < most:
                slot_time = prov.slot_time + step
                self._provider_slot(np.zeros(n, np.int16), now)
                prov.slot_time = slot_time
                made += 1

    # ----------------------------------------------------------------------- hold

    def _hold_from_agent(self, n: int, now: float) -> None:
        """An agent packet paces one hold frame, unless the timer made one just now."""
        if now - self._c_slot_time < self.caller.params.ptime_ms / 2000.0:
            return
        self._hold_frame(n, now)
        self.counters.hold_frames += 1
        self._c_slot_time = now

    def _hold_frame(self, n: int, now: float) -> None:
        dst = self.caller
        audio = self._hold_audio
        assert audio is not None
        pcm = audio.read(n)  # read even with nowhere to send: the pattern keeps its time
        addr = dst.rtp.dest
        if addr is None:
            dst.counters.no_destination += 1
            return
        seq, ts, marker = dst.out.insert(n, now=now)
        pt = dst.audio_pt | 0x80 if marker else dst.audio_pt
        payload = _encode(dst.codec, pcm).tobytes()
        self._send(dst, False, addr, _HDR_PACK(0x80, pt, seq, ts, dst.out_ssrc) + payload)

    # ----------------------------------------------------------------------- agent -> caller

    def _relay_to_caller(
        self,
        data: bytes,
        pt: int,
        seq: int,
        ts: int,
        ssrc: int,
        marker: bool,
        start: int,
        stop: int,
        is_audio: bool,
        now: float,
    ) -> None:
        dst = self.caller
        if len(self._outbox) >= self.config.max_outbox:
            self.agent.counters.flood += 1
            return
        if self._held:  # the caller hears hold audio instead; events are not passed on
            if is_audio:
                self._hold_from_agent(stop - start, now)
            return
        if is_audio:
            out_pt = dst.audio_pt
        elif dst.event_pt is not None:
            out_pt = dst.event_pt
        else:
            self.agent.counters.unknown_pt += 1  # the caller cannot take events
            return
        addr = dst.rtp.dest
        if addr is None:
            dst.counters.no_destination += 1
            return
        fields = dst.out.rewrite(seq, ts, ssrc, marker, now)
        if fields is None:
            self.agent.counters.late += 1
            return
        o_seq, o_ts, o_marker = fields
        add = None
        if is_audio and self._prov is not None:
            add = self._prov.to_caller.take(stop - start)
        if is_audio and (add is not None or dst.codec != self.agent.codec):
            pcm = _decode(self.agent.codec, data[start:stop])
            if add is not None:
                pcm = _mix(pcm, add)
                self.counters.mix_caller_frames += 1
            packet = build_rtp(
                out_pt,
                o_seq,
                o_ts,
                dst.out_ssrc,
                _encode(dst.codec, pcm).tobytes(),
                marker=o_marker,
            )
        else:
            packet = rewrite_rtp_header(data, o_seq, o_ts, dst.out_ssrc, o_marker, out_pt)
        self._send(dst, False, addr, packet)

    def _send(self, dst: _Leg, rtcp: bool, addr: Address, packet: bytes) -> None:
        send = dst.send_rtcp if rtcp else dst.send_rtp
        if send is not None:
            send(packet, addr)
        else:
            self._outbox.append(Datagram(dst.name, rtcp, addr, packet))
            self.engine._mark_ready(self)
        if rtcp:
            dst.counters.rtcp_tx += 1
        else:
            dst.counters.tx_packets += 1
            dst.counters.tx_bytes += len(packet)

    # ----------------------------------------------------------------------- RTCP

    def _receive_rtcp(self, src: _Leg, data: bytes, addr: Any, now: float, muxed: bool) -> None:
        c = src.counters
        latch = src.rtp if muxed else src.rtcp
        if not latch.accept(addr, now, c):
            return
        if muxed:
            src.rtcp_mux = True
        c.rtcp_rx += 1
        dst = self.agent if src is self.caller else self.caller
        if dst is self.caller and self._held:
            return  # its reports describe audio the held caller is not getting
        if len(self._outbox) >= self.config.max_outbox:
            c.flood += 1
            return
        # src's media SSRC -> the SSRC we send dst with; our SSRC towards src -> dst's own
        table: dict[int, int] = {}
        if src.in_ssrc is not None:
            table[src.in_ssrc] = dst.out_ssrc
        if dst.in_ssrc is not None:
            table[src.out_ssrc] = dst.in_ssrc
        try:
            packet = rewrite_rtcp_ssrcs(data, table, rtp_timestamp=dst.out.translate_timestamp)
        except RtcpError:
            c.rtcp_malformed += 1
            return
        addr_out = dst.rtp.dest if dst.rtcp_mux else dst.rtcp.dest
        if addr_out is None:
            dst.counters.no_destination += 1
            return
        self._send(dst, not dst.rtcp_mux, addr_out, packet)

    # ----------------------------------------------------------------------- caller -> agent

    def _caller_audio(
        self,
        data: bytes,
        seq: int,
        ts: int,
        ssrc: int,
        marker: bool,
        start: int,
        stop: int,
        now: float,
    ) -> None:
        c = self.caller.counters
        if self._n_pending_frames >= self._max_pending:
            c.flood += 1
            if (
                ssrc == self._ssrc_fed
                and self._anchor_pos >= 0
                and _ts_diff(ts, self._anchor_ts) > 0
            ):
                # dropped audio takes no engine positions: what follows it starts at _fed
                # (RFC 4733 timestamps keep mapping onto the positions the detector sees)
                self._anchor_ts = (ts + stop - start) & 0xFFFFFFFF
                self._anchor_pos = self._fed
            return
        if ssrc == self._ssrc_fed and (ts - self._ts_at_fed) & 0xFFFFFFFF > _LATE_D:
            # its slot is gone: already sent (a masking frame filled it, or a duplicate)
            c.late += 1
            return
        fields = self.agent.out.rewrite(seq, ts, ssrc, marker, now)
        if fields is None:
            c.late += 1
            return
        n = stop - start  # G.711: one byte per sample; decoded in the batch at flush
        self._ssrc_fed = ssrc
        self._ts_at_fed = (ts + n) & 0xFFFFFFFF
        self._anchor_ts = ts
        self._anchor_pos = self._fed
        self._queue((data[start:stop], n, fields[0], fields[1], fields[2], now))
        self._fed += n
        self._slot_time = now

    def _queue(self, item: _Pending) -> None:
        if type(item) is not int:
            self._n_pending_frames += 1
        if not self._pending:
            self.engine._mark_dirty(self)
        self._pending.append(item)

    def _position_of(self, ts: int) -> int:
        """Engine input position of caller RTP timestamp ``ts`` (by the newest audio frame)."""
        if self._anchor_pos < 0:
            return self._fed
        return max(self._anchor_pos + _ts_diff(ts, self._anchor_ts), 0)

    def _on_rtp_event(self, ev: RtpDigitStarted | RtpDigitEnded | RtpOtherEvent, ssrc: int) -> None:
        eng = self.engine.masker
        if isinstance(ev, RtpOtherEvent):
            return
        start = self._position_of(ev.timestamp)
        if isinstance(ev, RtpDigitStarted):
            self._event_open = True
            self._event_filled = False
            self._offer(
                ev.digit,
                "rfc4733",
                start * _MS_PER_SAMPLE,
                None,
                (ssrc, ev.timestamp),
                at=ev.started_at / 1000.0,
            )
            try:
                eng.force_mask(self.stream, start, None)
            except Exception:
                self.counters.engine_failures += 1
            return
        end = start + ev.duration
        self._offer(
            ev.digit,
            "rfc4733",
            start * _MS_PER_SAMPLE,
            end * _MS_PER_SAMPLE,
            (ssrc, ev.timestamp),
            at=ev.started_at / 1000.0,
        )
        self._event_open = False
        if self._event_filled or not self._audio_keeps_pace(
            ssrc, ev.timestamp, ev.timestamp + ev.duration
        ):
            # the caller sent no audio during the event: fill empty slots until the masked
            # tail has come out of the delay line
            self._fill_until = max(self._fill_until, end + eng.lookahead + 2 * 160)
        # else its own audio, in step with the event, carries the tail out
        self._queue(end)

    def _audio_keeps_pace(
        self, ssrc: int, first: int, reached: int, *, inside: bool = True
    ) -> bool:
        """On the caller's own clock, its audio goes on during the event of stream ``ssrc``
        that began at RTP timestamp ``first`` and has reported up to ``reached``: the audio
        queued is within a frame of ``reached`` (and, if ``inside``, some of it is from
        inside the event). Then the event's slots are the audio's, however late it comes."""
        if ssrc != self._ssrc_fed or self._anchor_pos < 0:
            return False
        n = SAMPLE_RATE * self.caller.params.ptime_ms // 1000
        audio_end = (self._anchor_ts + n) & 0xFFFFFFFF
        if inside and _ts_diff(audio_end, first) <= 0:
            return False
        return _ts_diff(reached & 0xFFFFFFFF, audio_end) <= n

    def _fill_slots(self, now: float, *, packet: bool = False) -> None:
        """Masking frames for the 20 ms slots the caller leaves empty during an event.

        Slots are judged on arrival times, but not while the caller's audio keeps pace with
        the open event on the caller's own media clock (:meth:`_audio_keeps_pace`; right
        after an event ``packet``, the audio sent with it may still wait in the socket, so
        audio from before the event counts): that audio is late, not missing. A late loop
        that took its slots would drop it, and with it part of an in-band copy of the key,
        split into two tones (two digits)."""
        if not (self._event_open or self._fed < self._fill_until):
            return
        if self._n_pending_frames >= self._max_pending:
            return
        if self._event_open:
            progress = self._receiver.progress()
            if progress is not None and self._audio_keeps_pace(*progress, inside=not packet):
                return
        step = self.caller.params.ptime_ms / 1000.0
        n = SAMPLE_RATE * self.caller.params.ptime_ms // 1000
        made = 0
        while (
            now - self._slot_time >= step + self.config.slot_slack_s
            and made < self.config.max_fill_per_tick
            and self._n_pending_frames < self._max_pending
            and (self._event_open or self._fed < self._fill_until)
        ):
            seq, ts, marker = self.agent.out.insert(n, now=now)
            self._queue((None, n, seq, ts, marker, now))
            self._fed += n
            if self._ssrc_fed is not None:
                self._ts_at_fed = (self._ts_at_fed + n) & 0xFFFFFFFF
            self._slot_time += step
            self.counters.fill_frames += 1
            made += 1
        if made and self._event_open:
            self._event_filled = True
        if now - self._slot_time > 4 * step:
            self._slot_time = now - step  # a stalled loop: do not catch up in a burst

    # called by the engine during flush -----------------------------------------------------

    def _release(self, end: int) -> None:
        try:
            self.engine.masker.release_mask(self.stream, end)
        except Exception:
            self.counters.engine_failures += 1

    def _next_frame(self) -> _Frame | None:
        """The next queued frame, applying queued mask releases that precede it."""
        pending = self._pending
        while pending:
            item = pending.popleft()
            if type(item) is int:
                self._release(item)
                continue
            self._n_pending_frames -= 1
            return item  # type: ignore[return-value]
        return None

    def _emit(self, frame: _Frame, payload: bytes | None) -> None:
        """Send one masked frame (encoded for the agent) to the agent; ``payload`` None means
        the engine did not run for it: silence goes instead (fail closed, invariant 4)."""
        dst = self.agent
        if payload is None:
            payload = _encode(dst.codec, np.zeros(frame[1], np.int16)).tobytes()
            self.counters.fail_closed_frames += 1
            if self._prov is not None:
                self._provider_slot(np.zeros(frame[1], np.int16), frame[5])
        else:
            self.counters.frames_masked_path += 1
        addr = dst.rtp.dest
        if addr is None:
            dst.counters.no_destination += 1
            return
        pt = dst.audio_pt
        packet = _HDR_PACK(0x80, pt | 0x80 if frame[4] else pt, frame[2], frame[3], dst.out_ssrc)
        self._send(dst, False, addr, packet + payload)

    def _engine_failed(self, frame: _Frame) -> None:
        """The engine raised on a pass holding ``frame``: mask what it holds in its delay
        line and the start of what comes next, whose detection lost its context."""
        eng = self.engine.masker
        self._emit(frame, None)
        try:
            pos = eng.position(self.stream)
            eng.force_mask(self.stream, pos - eng.lookahead, pos + frame[1])
        except Exception:
            pass
        else:
            self._resync(pos)

    def _resync(self, pos: int) -> None:
        """The engine is at input position ``pos`` after a failed pass: if it did not take
        the frame, shift the call's timeline (the positions RFC 4733 and INFO reports are
        mapped onto) by what it missed, so every source stays on the detector's clock."""
        queued = 0
        for item in self._pending:
            if not isinstance(item, int):
                queued += item[1]
        lag = self._fed - queued - pos
        if lag:
            self._fed -= lag
            if self._anchor_pos >= 0:
                self._anchor_pos -= lag
            self._fill_until -= lag

    def _on_engine_event(self, ev: DigitEvent, frame: _Frame, pos_after: int) -> None:
        # De-duplicated on the engine's own clock (its input positions), never on arrival
        # times: under overload one tone's start, seen again at its end through a later
        # frame's arrival, would land far from where its first report put it.
        if isinstance(ev, DigitStarted):
            end_ms = None
        elif isinstance(ev, DigitEnded):
            end_ms = ev.end * _MS_PER_SAMPLE
        else:  # pragma: no cover - the engine reports nothing else
            return
        # reported time: the frame that brought pos_after - 1 arrived at frame[5]
        at = frame[5] - (pos_after - ev.start) / SAMPLE_RATE
        self._offer(ev.digit, "inband", ev.start * _MS_PER_SAMPLE, end_ms, at=at)

    def _offer(
        self,
        digit: str,
        source: Source,
        start_ms: float,
        end_ms: float | None,
        press_id: tuple[int, int] | None = None,
        *,
        at: float,
    ) -> None:
        """One report of a key press to the de-duplicator. ``start_ms``/``end_ms`` are on
        the call's media clock: the masking engine's input position in ms (RFC 4733 mapped
        onto it by timestamp, :meth:`_position_of`), which neither a stalled loop nor
        bunched or stretched arrivals can move. ``at`` (seconds, the adapter's clock) is
        only what a new digit reports as its start."""
        try:
            new = self._dedup.offer(digit, source, start_ms, end_ms, press_id)
        except ValueError:
            return
        if new:
            self.counters.digits += 1
            self._events.append(CallDigit(self.call_id, digit, source, at))
            self.engine._mark_ready(self)
            prov = self._prov
            if self._capture and prov is not None:
                if len(prov.digits) < self.config.provider_digit_queue:
                    prov.digits.append(digit)
                else:
                    self.counters.provider_digits_dropped += 1
        else:
            self.counters.duplicate_digits += 1


# --------------------------------------------------------------------------- shared engine

_SILENCE_CODE: dict[Codec, int] = {"PCMU": 0xFF, "PCMA": 0xD5}


class MediaEngine:
    """The masking engine shared by every call, run in batches.

    ``flush`` takes the frames queued by all calls since the last flush and runs them in
    rounds (a call's first queued frame in round 1, its second in round 2...), each round one
    ``MaskingEngine.process`` call per frame length. A call that sent nothing is not in the
    batch.

    ``on_wake``, if set, is called as work appears, so an I/O adapter can time its flushes:
    with False when the first call queues a frame (or has events) after a flush, with True
    when ``batch_calls`` calls have frames queued (a full batch: flush soon).
    """

    def __init__(
        self,
        mask_config: MaskConfig | None = None,
        *,
        capacity: int = 64,
        masker: MaskingEngine | None = None,
        batch_calls: int = 256,
    ) -> None:
        self.masker = masker if masker is not None else MaskingEngine(mask_config, capacity)
        self.calls: dict[str, CallMedia] = {}
        self._by_stream: dict[int, CallMedia] = {}
        self._dirty: dict[int, CallMedia] = {}  # calls with frames queued
        self._ready: dict[str, CallMedia] = {}  # calls with datagrams or events waiting
        self._ticking: dict[str, CallMedia] = {}  # calls with RFC 4733 work for the timer
        self._extra: dict[str, CallMedia] = {}  # calls held or with a provider leg
        self._providers = 0  # calls with a provider leg: the masked path mixes and forwards
        self._next_sweep = float("-inf")  # media timeouts: checked a few times a second
        self.sweep_interval_s = 0.25
        self.batch_calls = batch_calls
        self.on_wake: Callable[[bool], None] | None = None
        self.passes = 0  # process() calls
        self.batched_frames = 0  # frames through them

    def open_call(
        self,
        call_id: str,
        caller: LegParams,
        agent: LegParams,
        config: MediaConfig | None = None,
        *,
        now: float = 0.0,
    ) -> CallMedia:
        if call_id in self.calls:
            raise ValueError(f"call {call_id!r} already has media")
        call = CallMedia(self, call_id, caller, agent, config or MediaConfig(), now)
        self.calls[call_id] = call
        self._by_stream[call.stream] = call
        return call

    def close_call(self, call: CallMedia) -> None:
        if call.closed:
            return
        call.closed = True
        self.calls.pop(call.call_id, None)
        self._by_stream.pop(call.stream, None)
        self._dirty.pop(call.stream, None)
        self._ticking.pop(call.call_id, None)
        self._extra.pop(call.call_id, None)
        call.detach_provider()
        call._pending.clear()
        call._n_pending_frames = 0
        call.bind_senders("caller", None, None)
        call.bind_senders("agent", None, None)
        call.bind_senders("provider", None, None)
        self.masker.remove_stream(call.stream)

    @property
    def pending(self) -> bool:
        """Frames are queued for the next :meth:`flush`."""
        return bool(self._dirty)

    @property
    def ready(self) -> bool:
        """Some call has datagrams or events waiting (:meth:`ready_calls`)."""
        return bool(self._ready)

    @property
    def queued_calls(self) -> int:
        """Calls with frames waiting for the next :meth:`flush` (the next batch's size)."""
        return len(self._dirty)

    def _mark_dirty(self, call: CallMedia) -> None:
        dirty = self._dirty
        dirty[call.stream] = call
        wake = self.on_wake
        if wake is not None:
            n = len(dirty)
            if n == 1:
                wake(False)
            elif n == self.batch_calls:
                wake(True)

    def _mark_ready(self, call: CallMedia) -> None:
        self._ready[call.call_id] = call
        if self.on_wake is not None and len(self._ready) == 1:
            self.on_wake(False)

    def tick(self, now: float) -> None:
        """Timer work for every call (:meth:`CallMedia.tick`): RFC 4733 slots and timeouts
        for the calls that have an event going, media timeouts for all a few times a
        second."""
        ticking = self._ticking
        if ticking:
            for call in list(ticking.values()):
                if not call._tick_events(now):
                    ticking.pop(call.call_id, None)
        extra = self._extra
        if extra:
            for call in list(extra.values()):
                call._tick_extra(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval_s
            for call in self.calls.values():
                call._check_timeout(now)

    def flush(self) -> None:
        """Run every queued caller frame through the engine, batched; the masked frames land
        in their calls' outboxes (or go to their senders)."""
        dirty = self._dirty
        if not dirty:
            return
        calls = list(dirty.values())
        dirty.clear()
        while calls:
            groups: dict[tuple[int, tuple[Codec, Codec]], tuple[list[CallMedia], list[_Frame]]]
            groups = {}
            still: list[CallMedia] = []
            for call in calls:
                pending = call._pending
                item = pending.popleft() if pending else None
                while type(item) is int:
                    call._release(item)
                    item = pending.popleft() if pending else None
                if item is None:
                    continue
                call._n_pending_frames -= 1
                frame: _Frame = item  # type: ignore[assignment]
                key = (frame[1], call._codecs)
                group = groups.get(key)
                if group is None:
                    groups[key] = ([call], [frame])
                else:
                    group[0].append(call)
                    group[1].append(frame)
                if pending:
                    still.append(call)
            for key, (group_calls, frames) in groups.items():
                self._run(key[0], key[1], group_calls, frames)
            calls = still

    def _run(
        self, n: int, codecs: tuple[Codec, Codec], calls: list[CallMedia], frames: list[_Frame]
    ) -> None:
        """One engine pass over frames of one length, decoded and encoded in one go each."""
        law_in, law_out = codecs
        k = len(calls)
        silence = bytes((_SILENCE_CODE[law_in],)) * n
        events: list[DigitEvent] = []
        try:
            sids = np.fromiter([c.stream for c in calls], np.int64, k)
            codes = b"".join([silence if f[0] is None else f[0] for f in frames])
            pcm = _decode(law_in, codes).reshape(k, n)
            out, events = self.masker.process(sids, pcm)
            if self._providers:
                self._provider_pass(calls, frames, out)
            encoded = _encode(law_out, out).tobytes()
        except Exception:
            for call, frame in zip(calls, frames, strict=True):
                call.counters.engine_failures += 1
                call._engine_failed(frame)
            if events:  # the detector ran: its reports still count (none lost, none twice)
                self._digit_events(calls, frames, events)
            return
        self.passes += 1
        self.batched_frames += k
        pack = _HDR_PACK
        pos = 0
        for i in range(k):
            call = calls[i]
            frame = frames[i]
            dst = call.agent
            end = pos + n
            call.counters.frames_masked_path += 1
            addr = dst.rtp.dest
            if addr is None:
                dst.counters.no_destination += 1
            else:
                pt = dst.audio_pt
                packet = (
                    pack(0x80, pt | 0x80 if frame[4] else pt, frame[2], frame[3], dst.out_ssrc)
                    + encoded[pos:end]
                )
                send = dst.send_rtp
                if send is not None:
                    send(packet, addr)
                else:
                    call._outbox.append(Datagram("agent", False, addr, packet))
                    self._mark_ready(call)
                d = dst.counters
                d.tx_packets += 1
                d.tx_bytes += n + 12
            pos = end
        if events:
            self._digit_events(calls, frames, events)

    def _digit_events(
        self, calls: list[CallMedia], frames: list[_Frame], events: list[DigitEvent]
    ) -> None:
        by_stream = {c.stream: i for i, c in enumerate(calls)}
        for ev in events:
            i = by_stream.get(ev.stream, -1)
            if i >= 0:
                c = calls[i]
                c._on_engine_event(ev, frames[i], self.masker.position(c.stream))

    def _provider_pass(self, calls: list[CallMedia], frames: list[_Frame], out: Pcm) -> None:
        """For the calls with a provider leg: send the masked frame on it (before the mix,
        so the provider hears the caller, not itself), then mix the provider's audio into
        the agent-bound frame, in place."""
        for i, call in enumerate(calls):
            prov = call._prov
            if prov is None:
                continue
            row = out[i]
            try:
                call._provider_slot(row, frames[i][5])
                add = prov.to_agent.take(row.size)
            except Exception:  # one call's provider leg must not cost the batch its frames
                call.counters.provider_failures += 1
                continue
            if add is not None:
                out[i] = _mix(row, add)
                call.counters.mix_agent_frames += 1

    def ready_calls(self) -> list[CallMedia]:
        """Calls with datagrams or events waiting (each once), and forget them."""
        calls = list(self._ready.values())
        self._ready.clear()
        return calls
