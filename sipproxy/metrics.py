"""Metrics: plain ints on the hot paths, Prometheus text exposition on scrape.

DESIGN.md: never touch a metrics library per packet (a ``prometheus_client`` counter's
``inc()`` takes a lock, about 0.85 µs). The relay, the SIP layer and the DSP engine count in
plain ints and dataclass fields they own; at scrape time a :class:`Registry` calls its
collectors, small callables that read those ints and return :class:`MetricFamily` values, and
:meth:`Registry.render` writes them in the Prometheus text format, version 0.0.4
(``# HELP``/``# TYPE`` lines, escaped label values, ``_bucket``/``_sum``/``_count`` for
histograms).

- :func:`counter` / :func:`gauge`: one family from a value or from ``{labels: value}``.
- :class:`Histogram`: fixed buckets, ``observe()`` is a bisect and two int adds; for things
  timed once per tick or per probe, not per packet (DSP time per tick, event-loop lag).
- :class:`Totals`: sums of plain-int counter dataclasses over objects that come and go (calls,
  legs), so a counter never goes down when a call ends.
- :class:`LoopLagProbe`: a task that measures how late ``asyncio.sleep`` wakes.
- :class:`MetricsServer`: ``GET /metrics`` (and ``HEAD``), 404 for any other path.

The HTTP endpoint uses aiohttp rather than a hand-written asyncio server: aiohttp is a
runtime dependency anyway (the control API, DESIGN.md), and a scrape endpoint on a network
port must survive what any HTTP client sends (oversized or slow headers, pipelining,
keep-alive, HEAD), which aiohttp's parser already bounds; a minimal server would re-implement
that for one route. Rendering stays ours: it is a few string joins, and keeps the hot-path
rule obvious (nothing here is called per packet).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from aiohttp import web

__all__ = [
    "CONTENT_TYPE",
    "DSP_TICK_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "Collector",
    "Histogram",
    "LoopLagProbe",
    "MetricFamily",
    "MetricType",
    "MetricsServer",
    "Registry",
    "Sample",
    "Totals",
    "as_labels",
    "counter",
    "gauge",
    "render_family",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["counter", "gauge", "histogram", "summary", "untyped"]
Labels = tuple[tuple[str, str], ...]

# DSP time for one 20 ms tick of every call: the budget is 20 ms, trouble starts well before.
DSP_TICK_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05)
# How late the loop runs a timer: a 20 ms media tick tolerates a few ms.
LOOP_LAG_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}

# ---------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a family: ``<name><suffix>{labels} value``."""

    value: float
    labels: Labels = ()
    suffix: str = ""


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric with its help text, type and samples; checked when built."""

    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...]

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"bad metric name {self.name!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")
        allowed = _SUFFIXES[self.type]
        for s in self.samples:
            if s.suffix not in allowed:
                raise ValueError(f"{self.name}: suffix {s.suffix!r} not allowed for {self.type}")
            names = [key for key, _ in s.labels]
            if len(set(names)) != len(names):
                raise ValueError(f"{self.name}: repeated label name in {names}")
            for key in names:
                if not _LABEL_NAME.match(key) or key.startswith("__"):
                    raise ValueError(f"{self.name}: bad label name {key!r}")
                reserved_ok = (key == "le" and s.suffix == "_bucket") or (
                    key == "quantile" and self.type == "summary" and s.suffix == ""
                )
                if key in ("le", "quantile") and not reserved_ok:
                    raise ValueError(f"{self.name}: label {key!r} is reserved")


Collector = Callable[[], Iterable[MetricFamily]]
"""Reads current plain-int counters and returns families. Called once per scrape."""


def _labels(labels: Mapping[str, str] | Labels | None) -> Labels:
    if not labels:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple((str(k), str(v)) for k, v in items)


def _family(
    name: str,
    type_: MetricType,
    help_: str,
    value: float | Mapping[Labels, float],
    labels: Mapping[str, str] | None,
) -> MetricFamily:
    if isinstance(value, Mapping):
        samples = tuple(Sample(float(v), _labels(k)) for k, v in value.items())
    else:
        samples = (Sample(float(value), _labels(labels)),)
    return MetricFamily(name, type_, help_, samples)


def counter(
    name: str,
    help: str,
    value: float | Mapping[Labels, float],
    labels: Mapping[str, str] | None = None,
) -> MetricFamily:
    """A counter family (``name`` ends in ``_total``).

    ``value`` is one number (with optional ``labels``) or ``{(("reason", "short"),): 3, ...}``.
    """
    return _family(name, "counter", help, value, labels)


def gauge(
    name: str,
    help: str,
    value: float | Mapping[Labels, float],
    labels: Mapping[str, str] | None = None,
) -> MetricFamily:
    """A gauge family; ``value`` as for :func:`counter`."""
    return _family(name, "gauge", help, value, labels)


# ----------------------------------------------------------------------------- histogram


class Histogram:
    """Cumulative histogram with fixed upper bounds; not thread-safe (one loop owns it)."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        b = tuple(float(x) for x in bounds)
        if (
            not b
            or any(x >= y for x, y in itertools.pairwise(b))
            or not all(math.isfinite(x) for x in b)
        ):
            raise ValueError("histogram bounds must be finite and strictly increasing")
        self.bounds = b
        self._counts = [0] * (len(b) + 1)  # the last slot is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # le is inclusive: a value equal to a bound counts in that bucket
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def family(self, name: str, help: str, labels: Mapping[str, str] | None = None) -> MetricFamily:
        base = _labels(labels)
        samples: list[Sample] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            samples.append(Sample(running, (*base, ("le", _format_value(bound))), "_bucket"))
        samples.append(Sample(self.sum, base, "_sum"))
        samples.append(Sample(self.count, base, "_count"))
        return MetricFamily(name, "histogram", help, tuple(samples))


# -------------------------------------------------------------------------------- totals

T = TypeVar("T")


class Totals(Generic[T]):
    """Field-by-field sums of a plain-int counter dataclass (``LegCounters``, ...).

    Hot paths keep one dataclass per call or leg. When one ends, :meth:`retire` folds it in,
    so :meth:`totals` over the live ones plus the retired sum never goes down.
    """

    def __init__(self, cls: type[T]) -> None:
        if not is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        self.names: tuple[str, ...] = tuple(f.name for f in fields(cls))
        self._retired: dict[str, float] = dict.fromkeys(self.names, 0)

    def retire(self, stats: T) -> None:
        for name in self.names:
            self._retired[name] += getattr(stats, name)

    def totals(self, live: Iterable[T] = ()) -> dict[str, float]:
        out = dict(self._retired)
        for stats in live:
            for name in self.names:
                out[name] += getattr(stats, name)
        return out


# ------------------------------------------------------------------------------ registry


class Registry:
    """Collectors called on each scrape, rendered in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self.collector_errors = 0
        self.scrapes = 0

    def register(self, collector: Collector) -> Collector:
        """Add ``collector``; returns it, so it can be used as a decorator."""
        self._collectors.append(collector)
        return collector

    def unregister(self, collector: Collector) -> None:
        self._collectors.remove(collector)

    def collect(self) -> list[MetricFamily]:
        """Every family, first one of a name wins; a collector that raises is skipped."""
        self.scrapes += 1
        out: list[MetricFamily] = []
        seen: set[str] = set()
        for collector in list(self._collectors):
            try:
                families = list(collector())
            except Exception:  # one broken collector must not cost the whole scrape
                self.collector_errors += 1
                continue
            for fam in families:
                if fam.name in seen:
                    self.collector_errors += 1
                    continue
                seen.add(fam.name)
                out.append(fam)
        out.append(
            counter(
                "dtmfmask_metrics_collector_errors_total",
                "Collectors that raised or repeated a metric name during a scrape.",
                self.collector_errors,
            )
        )
        return out

    def render(self) -> str:
        """The Prometheus text exposition (0.0.4) of every family."""
        return "".join(render_family(f) for f in self.collect())


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1 << 53:
        return str(int(value))
    return repr(value)


def render_family(fam: MetricFamily) -> str:
    """One family as exposition text: HELP, TYPE, then a line per sample."""
    lines = [f"# HELP {fam.name} {_escape_help(fam.help)}", f"# TYPE {fam.name} {fam.type}"]
    for s in fam.samples:
        label_text = ""
        if s.labels:
            label_text = "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels) + "}"
        lines.append(f"{fam.name}{s.suffix}{label_text} {_format_value(s.value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ event-loop lag


class LoopLagProbe:
    """How late the event loop runs a timer: sleeps ``interval_s``, measures the overshoot.

    A loop blocked by a slow callback (a DSP pass too long, a sync call) shows here first.
    """

    def __init__(
        self,
        interval_s: float = 0.25,
        *,
        clock: Callable[[], float] = time.monotonic,
        bounds: Sequence[float] = LOOP_LAG_BUCKETS,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._clock = clock
        self.histogram = Histogram(bounds)
        self.last_s = 0.0
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def record(self, lag_s: float) -> None:
        lag_s = max(lag_s, 0.0)
        self.last_s = lag_s
        self.max_s = max(self.max_s, lag_s)
        self.histogram.observe(lag_s)

    async def run(self) -> None:
        while True:
            start = self._clock()
            await asyncio.sleep(self.interval_s)
            self.record(self._clock() - start - self.interval_s)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # ours, unless the caller of stop() is itself being cancelled
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    def collect(self) -> list[MetricFamily]:
        return [
            self.histogram.family(
                "dtmfmask_event_loop_lag_seconds", "How late the event loop ran a timer."
            ),
            gauge(
                "dtmfmask_event_loop_lag_max_seconds",
                "Largest event-loop lag seen since start.",
                self.max_s,
            ),
        ]


# --------------------------------------------------------------------------- HTTP server


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (port 0: any free port; see :attr:`port`)."""

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.host = host
        self._requested_port = port
        self.port = 0
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)  # add_get also answers HEAD
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.registry.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port, reuse_address=True)
        await site.start()
        for addr in self._runner.addresses:
            if isinstance(addr, tuple):
                self.port = int(addr[1])
                break

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def as_labels(**labels: Any) -> Labels:
    """``as_labels(reason="short")`` -> ``(("reason", "short"),)``, a key for counter dicts."""
    return tuple((k, str(v)) for k, v in labels.items())
