"""``dtmfmask-proxy``: one asyncio process with the SIP B2BUA, the media relay and /metrics.

The config is validated before anything binds; a bad file is one error per problem, naming
file, line and key, and exit status 2. SIGTERM (or SIGINT) drains: new calls get 503, calls
in progress may end for ``drain_grace_s`` seconds, then the rest are hung up and the process
exits 0.
"""

from __future__ import annotations

import os

# One BLAS thread: the engine's matrix products are small and batched per tick; OpenBLAS's
# own threads only contend with the event loop (measured: 2.3x the CPU per relayed packet
# and 5.6 % loss at 200 calls). Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Literal

import structlog

from dtmfmask.masker import MaskConfig
from sipproxy.b2bua import B2BUA, B2BConfig
from sipproxy.config import Config, ConfigError, load_config
from sipproxy.logsetup import configure_logging
from sipproxy.media import LegCounters, MediaConfig, MediaCounters, MediaEngine
from sipproxy.metrics import (
    Histogram,
    LoopLagProbe,
    MetricFamily,
    MetricsServer,
    Registry,
    Totals,
    as_labels,
    counter,
    gauge,
)
from sipproxy.relay import MediaRelay, RelayConfig
from sipproxy.server import CallEvents, RelayMedia, SipServer, bind_error

log = structlog.get_logger("sipproxy.app")

_DROP_REASONS = (
    "short", "version", "csrc", "extension", "padding", "unknown_pt", "hijack", "late",
    "flood", "rtcp_malformed", "no_destination",
)  # fmt: skip
DSP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class TimedEngine(MediaEngine):
    """The shared masking engine, timing each batched pass (DSP time per tick)."""

    def __init__(self, mask_config: MaskConfig, capacity: int = 64) -> None:
        super().__init__(mask_config, capacity=capacity)
        self.dsp_seconds = Histogram(DSP_BUCKETS)

    def flush(self) -> None:
        start = time.perf_counter()
        super().flush()
        self.dsp_seconds.observe(time.perf_counter() - start)


class _CountingMedia(RelayMedia):
    """Folds a call's counters into the totals when its media is released, so the exported
    counters never go down when calls end."""

    def __init__(
        self, relay: MediaRelay, legs: Totals[LegCounters], media: Totals[MediaCounters]
    ) -> None:
        super().__init__(relay)
        self.legs = legs
        self.media = media

    def release(self, call_id: str) -> None:
        handle = self.relay.calls.get(call_id)
        if handle is not None:
            self.media.retire(handle.media.counters)
            for leg in ("caller", "agent"):
                self.legs.retire(handle.media.leg(leg).counters)
            self.legs.retire(handle.media.provider_counters)
        super().release(call_id)


class Proxy:
    """Everything one process runs, wired from a :class:`~sipproxy.config.Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        m = config.masking
        mask = MaskConfig(
            lookahead_ms=m.lookahead_ms,
            style=m.style,
            tone_hz=m.tone_hz,
            tone_level_dbm0=m.tone_level_dbm0,
        )
        self.engine = TimedEngine(mask)
        self.relay = MediaRelay(
            self.engine,
            RelayConfig(
                media_address=config.media.address,
                port_min=config.media.port_min,
                port_max=config.media.port_max,
            ),
        )
        self.leg_totals = Totals(LegCounters)
        self.media_totals = Totals(MediaCounters)
        sip = config.sip
        self.b2bua = B2BUA(
            B2BConfig(
                sip_host=sip.listen,
                sip_port=sip.udp_port,
                pbx=(config.upstream.pbx.host, config.upstream.pbx.port),
                media_address=config.media.address,
                trunks_allow=config.trunks.allow,
                codec_fallback=config.media.codec_fallback,
            ),
            _CountingMedia(self.relay, self.leg_totals, self.media_totals),
        )
        self.events = CallEvents()
        self.sip = SipServer(
            self.b2bua,
            self.relay,
            host=sip.listen,
            udp_port=sip.udp_port,
            tcp_port=sip.tcp_port,
            max_message_size=sip.max_message_size,
            events=self.events,
            media_config=MediaConfig(
                media_timeout_s=config.media.timeout_s,
                mask_always=config.masking.mask == "always",
            ),
        )
        self.registry = Registry()
        self.registry.register(self._collect)
        self.lag = LoopLagProbe()
        self.registry.register(self.lag.collect)
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        await self.sip.start()
        # the B2BUA puts its own address in Via/Contact: the port bound may have been 0
        self.b2bua.config = replace(
            self.b2bua.config, sip_port=self.sip.udp_port, tcp_port=self.sip.tcp_port
        )
        self.lag.start()
        listen = self.config.metrics.listen
        if listen is not None:
            self.metrics = MetricsServer(self.registry, listen.host, listen.port)
            try:
                await self.metrics.start()
            except OSError as exc:
                await self.sip.close()
                raise bind_error("metrics", listen.host, listen.port, exc) from exc
        pbx = self.config.upstream.pbx
        log.info("proxy ready", sip_port=self.sip.udp_port, pbx_host=pbx.host, pbx_port=pbx.port)

    async def stop(self, grace_s: float | None = None) -> None:
        await self.sip.drain(self.config.drain_grace_s if grace_s is None else grace_s)
        await self.sip.close()
        await self.relay.close()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.lag.stop()

    def _collect(self) -> list[MetricFamily]:
        b = self.b2bua.counters
        live_calls = [h.media for h in self.relay.calls.values()]
        media = self.media_totals.totals(c.counters for c in live_calls)
        legs = self.leg_totals.totals(
            [c.leg(leg).counters for c in live_calls for leg in ("caller", "agent")]
            + [c.provider_counters for c in live_calls]
        )
        sip = self.sip.counters
        return [
            gauge("dtmfmask_calls", "Calls in progress.", len(self.b2bua.calls)),
            counter(
                "dtmfmask_calls_total",
                "Calls by outcome.",
                {
                    as_labels(outcome="started"): b.calls_started,
                    as_labels(outcome="answered"): b.calls_answered,
                    as_labels(outcome="failed"): b.calls_failed,
                    as_labels(outcome="ended"): b.calls_ended,
                    as_labels(outcome="refused_trunk"): b.refused_trunk,
                    as_labels(outcome="refused_codec"): b.refused_codec,
                },
            ),
            counter("dtmfmask_rtp_packets_received_total", "RTP from peers.", legs["rx_packets"]),
            counter("dtmfmask_rtp_packets_sent_total", "RTP to peers.", legs["tx_packets"]),
            counter(
                "dtmfmask_rtp_drops_total",
                "RTP/RTCP packets dropped, by reason.",
                {as_labels(reason=r): legs[r] for r in _DROP_REASONS},
            ),
            counter("dtmfmask_digits_masked_total", "Key presses masked.", media["digits"]),
            counter(
                "dtmfmask_fail_closed_frames_total",
                "Frames sent as masking because the engine failed.",
                media["fail_closed_frames"],
            ),
            counter("dtmfmask_sip_messages_received_total", "SIP messages in.", sip.received),
            counter("dtmfmask_sip_parse_errors_total", "SIP parse errors.", sip.parse_errors),
            counter("dtmfmask_sip_info_digits_total", "Key presses as SIP INFO.", b.info_digits),
            self.engine.dsp_seconds.family(
                "dtmfmask_dsp_seconds", "Time of one batched DSP pass over all calls."
            ),
        ]


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (where the loop takes signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def command_line(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """``dtmfmask-proxy``'s arguments: ``--config`` and ``--log-format``."""
    ap = argparse.ArgumentParser(prog="dtmfmask-proxy", description=description)
    ap.add_argument("--config", help="profiles.yaml (default: the embedded loopback defaults)")
    ap.add_argument("--log-format", choices=("kv", "json"), default="kv")
    return ap.parse_args(argv)


def complain(problem: str) -> int:
    """Say ``problem`` on stderr; the exit status 2."""
    print(f"dtmfmask-proxy: {problem}", file=sys.stderr)
    return 2


def serve(start: Callable[[], Coroutine[Any, Any, int]], log_format: Literal["json", "kv"]) -> int:
    """Logging set up, uvloop if installed, then ``start()`` run to its exit status; a
    socket that cannot be bound is exit status 2 with the reason."""
    configure_logging(fmt=log_format)
    try:
        import uvloop

        uvloop.install()  # 3.8-5.9x the stdlib loop on UDP (DESIGN.md); optional
    except ImportError:
        pass
    try:
        return asyncio.run(start())
    except OSError as exc:  # e.g. the SIP port is taken
        return complain(f"cannot start: {exc.strerror or exc}")


async def run(config: Config, *, ready: asyncio.Event | None = None) -> int:
    proxy = Proxy(config)
    await proxy.start()
    stop = stop_on_signals()
    if ready is not None:
        ready.set()
    print(f"dtmfmask-proxy: ready sip={config.sip.listen}:{proxy.sip.udp_port}", flush=True)
    await stop.wait()
    log.info("draining", grace_s=config.drain_grace_s, calls=len(proxy.b2bua.calls))
    await proxy.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = command_line(argv, __doc__.splitlines()[0])
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return complain(str(exc))
    return serve(lambda: run(config), args.log_format)


if __name__ == "__main__":
    raise SystemExit(main())
