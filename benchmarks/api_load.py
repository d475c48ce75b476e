"""API load: N calls with media through one dtmfmask node (proxy + payment service + control
API in one process) while agent UIs poll the control API, against the same media without
API load, in the same run (issue 4's benchmark).

Run: python benchmarks/api_load.py [--calls 200] [--seconds 6] [--rate 1000] [--json]

What runs where (loopback only, every address 127.0.0.1), following ``proxy_load.py``:

* the node: ``python -m control_api.node --config <generated yaml>`` (the proxy, the payment
  service, the control API and the embedded sandbox provider, one asyncio process), pinned to
  the first allowed core (``taskset``); masking on every call, look-ahead 15 ms;
* the media load (this process, pinned to the second core): ``proxy_load``'s SIP UAC (the
  callers), SIP UAS (the PBX) and RTP phones, imported from it: N calls set up over SIP,
  one 172-byte PCMU packet every 20 ms each way per call;
* the API load (a child of this script, ``--api-child``, pinned to the second core too):
  an aiohttp client with keep-alive connections in two bounded pools (short requests,
  long-polls), token auth as an agent UI.

The run:

1. N calls up over SIP, primed (``proxy_load``).
2. ``--sessions`` guided payment sessions created through the API
   (``POST /v1/calls/{id}/payments``, the embedded sandbox provider): the node dials the
   sandbox and holds the caller, as for a real payment; the run waits until every session
   has its provider joined (``awaiting_details``) and sets the details once. Those calls
   keep sending media both ways, but the proxy now plays hold audio to the caller and mixes
   the provider in, so their packets cannot be matched and they are **left out of the media
   figures** (loss, latency); their packets are still counted in CPU per packet. Sessions go
   on calls without a key press (``--dtmf-every``), so the digit count still checks.
3. Window A: ``--seconds`` of media, no API requests at all.
4. The API load starts; after ``--warmup`` seconds, window B: ``--seconds`` of media with the
   API load running. The API figures cover window B.
5. Hang up every call over SIP; the node must count 0 calls after.

The API load, open loop at ``--rate`` requests/s (intended send times on a fixed clock;
latency is measured from the intended time, so a client or pool that falls behind shows as
latency, not as a lower rate):

* half (``--long-share``) are long-polls: ``GET /v1/payments/{id}?wait=25`` with
  ``If-None-Match`` set to the latest ETag the client has seen for that session: they are
  held by the node until the session changes (or 304 after 25 s). At most ``--lp-conns``
  are outstanding (one connection each); a long-poll due while that many are open is not
  sent and is counted as ``lp_skipped``;
* the other half are short polls: ``GET /v1/payments/{id}`` with ``If-None-Match`` (304 when
  unchanged) and, a ``--calls-share`` of them, ``GET /v1/calls`` (the account's whole call
  list; the node gives that route no ETag, so every poll is a full 200);
* what makes long-polls return: ``--changes`` per second ``PATCH /v1/payments/{id}/details``
  (the agent editing the amount: one version change each, round robin over the sessions;
  each wakes every long-poll open on that session). Their latency is reported apart, and
  so is the *notify* latency: from sending the change to a long-poll returning its version.

Media figures are measured exactly as ``proxy_load.py`` measures them (kernel receive
timestamps; the look-ahead is inside the audio, not in the figure). CPU per packet: the
node's CPU (utime + stime over the window) over the packets the phones sent into it (all
calls, both directions; the provider legs are extra work inside the node). ``API CPU µs/req``:
the node's extra CPU in window B over window A, per API response received in window B.
Targets (issue 4): media loss < 0.1 % and p99 added latency < 5 ms with the API load on. A
missed target is printed, never an error: exit 0.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_load as pl  # noqa: E402

HOST = pl.HOST
TOKEN = "api-load-agent-token-0123456789abcdef"
PROFILE = "card"
TARGETS = {"loss": pl.TARGETS["loss"], "p99_ms": pl.TARGETS["p99_ms"]}
LP_CLIENT_TIMEOUT_S = 40.0
SHORT_TIMEOUT_S = 10.0
PARAMS = (
    "calls", "seconds", "sessions", "rate", "long_share", "calls_share", "wait", "changes",
    "lp_conns", "short_conns", "warmup", "phases", "dtmf_every",
)  # fmt: skip

CONFIG = """\
proxy:
  sip: {{listen: {host}, udp_port: 0, tcp_port: 0}}
  media: {{address: {host}, port_min: {port_min}, port_max: {port_max}, timeout_s: 600}}
  upstream: {{pbx: "{host}:{pbx_port}", transport: udp}}
  trunks: {{allow: [127.0.0.0/8]}}
  masking: {{lookahead_ms: {lookahead:g}, mask: always}}
  metrics: {{listen: null}}
  drain_grace_s: 1
payments:
  api: {{listen: "{host}:0"}}
  storage: {{path: "{db}"}}
  accounts:
    load:
      payments: true
      numbers: ["*"]
      tokens:
        - {{role: agent, sha256: {token_hash}}}
  providers:
    sandbox: {{type: sandbox, sip_uri: "sip:sandbox@{host}:{sandbox_port}",
               answer_timeout_s: 20, processing_timeout_s: 20}}
  profiles:
    {profile}:
      account: load
      method: guided
      purpose: Bill payment
      destination_account: load-merchant
      provider: sandbox
      currency: GBP
      min_amount: 1.00
      max_amount: 500.00
      fields: [card_number, expiry, cvv]
      hold_timeout_s: 3600
      capture_timeout_s: 3600
"""

PROFILED_NODE = """\
import cProfile, sys, time
from control_api.node import main
prof = cProfile.Profile(time.process_time)
prof.enable()
try:
    rc = main(sys.argv[1:])
finally:
    prof.disable()
    prof.dump_stats({out!r})
sys.exit(rc)
"""


def _details(amount: str) -> dict[str, Any]:
    return {"amount": amount, "currency": "GBP", "billing": {"name": "Load Test"}}


def _pct(x: list[float] | np.ndarray) -> dict[str, float | None]:
    a = np.asarray(x, float)
    if len(a) == 0:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


def _version(etag: str | None) -> int | None:
    if not etag:
        return None
    text = etag.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------- API load child


class ApiDriver:
    """The agent UIs: open-loop short polls, long-polls and changes (see the module doc).

    Every request is recorded with its times (``time.monotonic()``: CLOCK_MONOTONIC, the
    same clock in the parent), so the report covers exactly the parent's media window,
    however late this process reads the parent's messages."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.base: str = cfg["base"]
        self.auth = {"Authorization": f"Bearer {cfg['token']}"}
        self.sids: list[str] = cfg["sessions"]
        self.version: dict[str, int] = {s: int(v) for s, v in cfg["versions"].items()}
        self.rate = float(cfg["rate"])
        self.long_share = float(cfg["long_share"])
        self.calls_share = float(cfg["calls_share"])
        self.wait = float(cfg["wait"])
        self.lp_max = int(cfg["lp_conns"])
        self.short_conns = int(cfg["short_conns"])
        self.changes = float(cfg["changes"])
        self.rng = random.Random(1234)
        self.change_sent: dict[tuple[str, int], float] = {}
        self.lp_open = 0
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        # (kind, outcome, t_done, latency ms or None); outcome: HTTP status or "error Name"
        self.done: list[tuple[str, str, float, float | None]] = []
        self.sent: list[tuple[str, float]] = []  # (kind, t actually sent)
        self.lp_spans: list[list[float]] = []  # [start, end (inf while open)]
        self.notify: list[tuple[float, float]] = []  # (t_done, ms)
        self.skipped: list[float] = []
        self.late: list[tuple[float, float]] = []  # (t, s behind the clock)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _saw(self, sid: str, etag: str | None) -> int | None:
        v = _version(etag)
        if v is not None and v > self.version.get(sid, 0):
            self.version[sid] = v
        return v

    def _error(self, kind: str, exc: BaseException) -> None:
        self.done.append((kind, f"error {type(exc).__name__}", time.monotonic(), None))

    async def short(self, http: Any, kind: str, t_int: float, sid: str) -> None:
        self.sent.append((kind, time.monotonic()))
        if kind == "calls":
            url, headers = f"{self.base}/v1/calls", self.auth
        else:
            url = f"{self.base}/v1/payments/{sid}"
            headers = {**self.auth, "If-None-Match": f'"{self.version[sid]}"'}
        try:
            async with http.get(url, headers=headers) as r:
                await r.read()
                status = r.status
                if kind == "payment" and status == 200:
                    self._saw(sid, r.headers.get("ETag"))
        except Exception as exc:
            self._error(kind, exc)
            return
        t = time.monotonic()
        self.done.append((kind, str(status), t, 1000 * (t - t_int)))

    async def long_poll(self, http: Any, sid: str) -> None:
        if self.lp_open >= self.lp_max:
            self.skipped.append(time.monotonic())
            return
        t0 = time.monotonic()
        self.sent.append(("long", t0))
        span = [t0, math.inf]
        self.lp_spans.append(span)
        self.lp_open += 1
        url = f"{self.base}/v1/payments/{sid}?wait={self.wait:g}"
        headers = {**self.auth, "If-None-Match": f'"{self.version[sid]}"'}
        try:
            async with http.get(url, headers=headers) as r:
                await r.read()
                status = r.status
                v = self._saw(sid, r.headers.get("ETag")) if status == 200 else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.stopping:
                self._error("long", exc)
            return
        finally:
            self.lp_open -= 1
            span[1] = time.monotonic()
        t = span[1]
        self.done.append(("long", str(status), t, 1000 * (t - t0)))
        if v is not None and (sid, v) in self.change_sent:
            self.notify.append((t, 1000 * (t - self.change_sent[sid, v])))

    async def change(self, http: Any, t_int: float, sid: str, amount: str) -> None:
        self.sent.append(("change", time.monotonic()))
        self.change_sent.setdefault((sid, self.version[sid] + 1), time.monotonic())
        try:
            async with http.patch(
                f"{self.base}/v1/payments/{sid}/details", json=_details(amount), headers=self.auth
            ) as r:
                await r.read()
                status = r.status
                v = self._saw(sid, r.headers.get("ETag"))
        except Exception as exc:
            self._error("change", exc)
            return
        t = time.monotonic()
        if status == 200 and v is not None:
            self.change_sent.setdefault((sid, v), t_int)
        self.done.append(("change", str(status), t, 1000 * (t - t_int)))

    async def polls(self, short_http: Any, long_http: Any) -> None:
        """The open-loop clock: request n is due at t0 + n / rate."""
        t0 = time.monotonic()
        n = 0
        n_short = 0
        while not self.stopping:
            now = time.monotonic()
            due = int((now - t0) * self.rate)
            if due > n:
                self.late.append((now, now - (t0 + (n + 1) / self.rate)))
            while n < due:
                t_int = t0 + n / self.rate
                sid = self.sids[self.rng.randrange(len(self.sids))]
                if int((n + 1) * self.long_share) > int(n * self.long_share):
                    self._spawn(self.long_poll(long_http, sid))
                else:
                    c = self.calls_share
                    kind = "calls" if int((n_short + 1) * c) > int(n_short * c) else "payment"
                    n_short += 1
                    self._spawn(self.short(short_http, kind, t_int, sid))
                n += 1
            await asyncio.sleep(0.001)

    async def edits(self, http: Any) -> None:
        if self.changes <= 0:
            return
        t0 = time.monotonic()
        n = 0
        while not self.stopping:
            t_int = t0 + n / self.changes
            delay = t_int - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            sid = self.sids[n % len(self.sids)]
            amount = "10.00" if (n // len(self.sids)) % 2 else "10.01"
            self._spawn(self.change(http, t_int, sid, amount))
            n += 1

    def report(self, t0: float, t1: float) -> dict[str, Any]:
        """Figures over [t0, t1]: requests sent and answered in it, latency of those
        answered in it, long-polls open at t1."""
        window = max(t1 - t0, 1e-9)
        inside = [d for d in self.done if t0 <= d[2] <= t1]
        ok = {"payment": ("200", "304"), "calls": ("200",), "long": ("200", "304"),
              "change": ("200",)}  # fmt: skip
        status: dict[str, Counter[str]] = {k: Counter() for k in ok}
        lat: dict[str, list[float]] = {k: [] for k in ok}
        errors: Counter[str] = Counter()
        for kind, outcome, _, ms in inside:
            status[kind][outcome] += 1
            if outcome in ok[kind] and ms is not None:
                lat[kind].append(ms)
            else:
                errors[f"{kind}: {outcome}"] += 1
        sent = Counter(k for k, t in self.sent if t0 <= t <= t1)
        done = {  # HTTP answers (errors such as client timeouts are not answers)
            k: sum(v for o, v in c.items() if not o.startswith("error")) for k, c in status.items()
        }
        polls_sent = sent["payment"] + sent["calls"] + sent["long"]
        polls_done = done["payment"] + done["calls"] + done["long"]
        open_spans = [sp for sp in self.lp_spans if sp[0] <= t1 < sp[1]]
        return {
            "window_s": round(window, 3),
            "offered_per_s": self.rate,
            "sent": dict(sent),
            "sent_per_s": round(polls_sent / window, 1),
            "answered": done,
            "answered_per_s": round(polls_done / window, 1),
            "responses_per_s": round(sum(done.values()) / window, 1),
            "status": {k: dict(c) for k, c in status.items()},
            "short": _pct(lat["payment"] + lat["calls"]),
            "short_payment": _pct(lat["payment"]),
            "short_calls": _pct(lat["calls"]),
            "long_held": _pct(lat["long"]),
            "change": _pct(lat["change"]),
            "notify": _pct([ms for t, ms in self.notify if t0 <= t <= t1]),
            "lp_open_at_end": len(open_spans),
            "lp_open_max": _max_open(self.lp_spans, t0, t1),
            "lp_skipped": sum(1 for t in self.skipped if t0 <= t <= t1),
            "errors": dict(errors),
            "error_count": sum(errors.values()),
            "client_late_ms": round(
                1000 * max([x for t, x in self.late if t0 <= t <= t1], default=0.0), 2
            ),
        }


def _max_open(spans: list[list[float]], t0: float, t1: float) -> int:
    """Most long-polls open at once within [t0, t1]."""
    events = []
    for start, end in spans:
        if end < t0 or start > t1:
            continue
        events.append((max(start, t0), 1))
        if end <= t1:
            events.append((end, -1))
    events.sort(key=lambda e: (e[0], -e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


async def _api_child_main(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    drv = ApiDriver(cfg)
    timeout_s = aiohttp.ClientTimeout(total=SHORT_TIMEOUT_S)
    timeout_l = aiohttp.ClientTimeout(total=LP_CLIENT_TIMEOUT_S)
    short_conn = aiohttp.TCPConnector(limit=drv.short_conns, keepalive_timeout=60)
    long_conn = aiohttp.TCPConnector(limit=drv.lp_max, keepalive_timeout=60)
    async with (
        aiohttp.ClientSession(connector=short_conn, timeout=timeout_s) as short_http,
        aiohttp.ClientSession(connector=long_conn, timeout=timeout_l) as long_http,
    ):
        print(json.dumps({"ready": True}), flush=True)
        line = await reader.readline()  # "start"
        if line.strip() != b"start":
            return {"error": "no start"}
        runners = [
            loop.create_task(drv.polls(short_http, long_http)),
            loop.create_task(drv.edits(short_http)),
        ]
        t_mark = time.monotonic()
        while True:
            words = (await reader.readline()).split()
            if words and words[0] == b"mark":
                t_mark = float(words[1])
            elif not words or words[0] == b"stop":
                t_stop = float(words[1]) if len(words) > 1 else time.monotonic()
                break
        out = drv.report(t_mark, t_stop)
        drv.stopping = True
        for t in runners:
            t.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for t in list(drv.tasks):  # what is still in flight is not part of the figures
            t.cancel()
        await asyncio.gather(*drv.tasks, return_exceptions=True)
    return out


def api_child() -> int:
    cfg = json.loads(sys.stdin.readline())
    loop, _ = pl._new_loop()
    try:
        out = loop.run_until_complete(_api_child_main(cfg))
    finally:
        loop.close()
    print(json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- media phones


class MeasuredPhones(pl.Phones):
    """``proxy_load``'s phones, with some calls left out of the media figures (the calls
    with a payment session: hold audio and the provider mix replace what they relay)."""

    def __init__(self, n: int, ticks: int, windows: int) -> None:
        super().__init__(n, ticks, windows)
        self.excluded: set[int] = set()

    def port_map(self) -> np.ndarray:
        m = super().port_map()
        for i in self.excluded:
            m[self.relay_a[i]] = -1
            m[self.relay_c[i]] = -1
        return m

    def analyse(self) -> dict[str, Any]:
        lo, hi = self.k_lo, self.k_lo + self.ticks
        sent_all = int((self.sent_ns[:, lo:hi] > 0).sum())
        rows = [s for i in self.excluded for s in (2 * i, 2 * i + 1)]
        saved = self.sent_ns[rows, lo:hi].copy()
        self.sent_ns[rows, lo:hi] = 0
        try:
            res = super().analyse()
        finally:
            self.sent_ns[rows, lo:hi] = saved
        res["sent_all_calls"] = sent_all
        return res


# --------------------------------------------------------------------------- one run


class _Pin(pl.Pinning):
    """``proxy_load``'s pinning, plus the argv that pins a child to the load core."""

    def argv_load(self) -> list[str]:
        if self.load_cpu is None or not shutil.which("taskset"):
            return []
        return ["taskset", "-c", str(self.load_cpu)]


class _Http:
    """A tiny client for the setup steps (not part of the measured load)."""

    def __init__(self, base: str) -> None:
        import aiohttp

        self.base = base
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json() if r.content_type == "application/json" else None
            return r.status, data, dict(r.headers)

    async def close(self) -> None:
        await self.session.close()


async def _create_sessions(
    http: _Http, call_ids: dict[int, str], indices: list[int], timeout: float
) -> tuple[dict[str, int], dict[int, str], dict[str, int]]:
    """Create a session on each call, wait until its provider is joined, set the details.
    Returns {session: version}, {call index: session}, and problems counted by kind."""
    problems: Counter[str] = Counter()
    sids: dict[int, str] = {}
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            st, doc, _ = await http.call(
                "POST", f"/v1/calls/{call_ids[i]}/payments", {"profile": PROFILE},
                {"Idempotency-Key": f"load-{os.getpid()}-{i}"},
            )  # fmt: skip
        if st not in (200, 201) or not doc:
            problems[f"create HTTP {st} {(doc or {}).get('error', {}).get('code', '')}"] += 1
            return
        sids[i] = doc["id"]

    await asyncio.gather(*(one(i) for i in indices))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    versions: dict[str, int] = {}

    async def joined(i: int, sid: str) -> None:
        etag = None
        while loop.time() < deadline:
            headers = {"If-None-Match": etag} if etag else None
            st, doc, hdrs = await http.call("GET", f"/v1/payments/{sid}?wait=2", None, headers)
            if st == 200:
                etag = hdrs.get("ETag")
                if doc["state"] == "awaiting_details":
                    break
                if doc["state"] == "finished":
                    problems[f"session ended: {doc.get('error')}"] += 1
                    return
            elif st != 304:
                problems[f"poll HTTP {st}"] += 1
                return
        else:
            problems["provider not joined in time"] += 1
            return
        st, doc, hdrs = await http.call("PATCH", f"/v1/payments/{sid}/details", _details("10.00"))
        if st != 200:
            problems[f"details HTTP {st}"] += 1
            return
        versions[sid] = int(doc["version"])

    await asyncio.gather(*(joined(i, sid) for i, sid in sids.items()))
    ok = {i: s for i, s in sids.items() if s in versions}
    return versions, ok, dict(problems)


async def run(args: argparse.Namespace, pin: _Pin) -> dict[str, Any]:
    n = args.calls
    loop = asyncio.get_running_loop()
    run_id = f"{os.getpid()}a{n}"
    ticks = round(args.seconds / 0.02)
    phones = MeasuredPhones(n, ticks, windows=2)
    uas = pl.Uas(run_id, phones.pbx_rtp_port)
    node = pl.Child()
    api = pl.Child()
    uac: pl.Uac | None = None
    http: _Http | None = None
    tmp = tempfile.TemporaryDirectory(prefix="api_load_")
    out: dict[str, Any] = {"calls": n}
    try:
        await uas.start()
        sandbox_port = pl._free_port(socket.SOCK_DGRAM)
        cfg = Path(tmp.name) / "node.yaml"
        cfg.write_text(
            CONFIG.format(
                host=HOST,
                port_min=args.port_min,
                port_max=min(args.port_min + 8 * n + 200, 65534),
                pbx_port=uas.port,
                lookahead=pl.LOOKAHEAD_MS,
                db=Path(tmp.name) / "node.sqlite3",
                token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                sandbox_port=sandbox_port,
                profile=PROFILE,
            )
        )
        out_path, err_path = Path(tmp.name) / "stdout", Path(tmp.name) / "stderr"
        fo, fe = open(out_path, "wb"), open(err_path, "wb")  # noqa: SIM115
        node.files += [fo, fe]
        if args.node_profile:  # CPU time (not wall time) per function: preemption is not cost
            code = PROFILED_NODE.format(out=str(Path(args.node_profile).resolve()))
            argv = [*pin.argv(), sys.executable, "-c", code, "--config", str(cfg)]
        else:
            argv = [*pin.argv(), sys.executable, "-m", "control_api.node", "--config", str(cfg)]
        node.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=pl.REPO
        )
        pin.apply_to(node.proc.pid)
        ready = re.compile(r"ready sip=[^:\s]+:(\d+) api=http://[^:\s]+:(\d+)/v1")
        try:
            m = await pl._wait_line(out_path, ready, node.proc, 30)
        except Exception:
            tail = err_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the node did not start: {tail}") from None
        api_port = int(m.group(2))
        base = f"http://{HOST}:{api_port}"
        uac = pl.Uac(run_id, (HOST, int(m.group(1))))
        await uac.start()
        uas.bye_target = n

        # -- calls up over SIP, bounded (as proxy_load)
        t_setup = loop.time()
        failures = await pl.set_up_calls(uac, uas, phones, n)
        out["setup_s"] = round(loop.time() - t_setup, 3)
        out["setup_failures"] = failures
        out["calls_up"] = sum(phones.up)
        phones.start()
        out.update(await phones.prime())
        live = [i for i in range(n) if phones.up[i]]

        # -- payment sessions through the API
        http = _Http(base)
        st, doc, _ = await http.call("GET", "/v1/calls")
        if st != 200:
            raise RuntimeError(f"GET /v1/calls: HTTP {st}")
        call_ids: dict[int, str] = {}
        for c in doc["calls"]:
            mm = re.fullmatch(r"agent(\d+)", c["called"])
            if mm:
                call_ids[int(mm.group(1))] = c["id"]
        out["calls_listed"] = len(doc["calls"])
        de = args.dtmf_every
        candidates = [i for i in live if i in call_ids and not (de and i % de == 0)]
        want = min(args.sessions, len(candidates))
        step = max(1, len(candidates) // want) if want else 1
        chosen = candidates[::step][:want]
        t_s = loop.time()
        versions, sids, problems = await _create_sessions(http, call_ids, chosen, 30.0)
        out["sessions"] = len(sids)
        out["sessions_setup_s"] = round(loop.time() - t_s, 3)
        out["session_problems"] = problems
        phones.excluded = set(chosen)  # tried ones too: held or not, left out
        if not sids:
            raise RuntimeError(f"no payment session could be created: {problems}")
        measured = [i for i in live if i not in phones.excluded]
        out["calls_measured"] = len(measured)
        out["dtmf_calls"] = sum(1 for i in measured if de and i % de == 0)
        await asyncio.sleep(0.5)

        # -- window A: media only
        out["without_api"] = await _window(phones, node.proc.pid, api_port, args, pin)

        # -- the API load, then window B
        api.proc = subprocess.Popen(
            [*pin.argv_load(), sys.executable, str(Path(__file__).resolve()), "--api-child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=pl.REPO,
        )  # fmt: skip
        child_cfg = {
            "base": base, "token": TOKEN, "sessions": list(versions),
            "versions": versions, "rate": args.rate, "long_share": args.long_share,
            "calls_share": args.calls_share, "wait": args.wait, "lp_conns": args.lp_conns,
            "short_conns": args.short_conns, "changes": args.changes,
        }  # fmt: skip
        assert api.proc.stdin is not None and api.proc.stdout is not None
        stdin, stdout = api.proc.stdin, api.proc.stdout

        def send(text: str) -> None:
            stdin.write(text.encode())
            stdin.flush()

        async def readline() -> dict[str, Any]:
            line = await asyncio.wait_for(loop.run_in_executor(None, stdout.readline), 30)
            if not line:
                raise RuntimeError("the API load child exited")
            return dict(json.loads(line))

        send(json.dumps(child_cfg) + "\n")
        await readline()  # ready
        api_cpu0 = pl._proc_cpu_s(api.proc.pid)
        send("start\n")
        await asyncio.sleep(args.warmup)
        phones.next_window()
        marks: dict[str, float] = {}

        def mark() -> None:
            marks["t0"], marks["cpu0"] = loop.time(), pl._proc_cpu_s(api.proc.pid)  # type: ignore[union-attr]
            send(f"mark {time.monotonic()!r}\n")

        def stop() -> None:
            marks["t1"], marks["cpu1"] = loop.time(), pl._proc_cpu_s(api.proc.pid)  # type: ignore[union-attr]
            send(f"stop {time.monotonic()!r}\n")

        out["with_api"] = await _window(
            phones, node.proc.pid, api_port, args, pin, around=(mark, stop)
        )
        out["api"] = await readline()
        out["api"]["client_process_cpu_pct"] = round(
            100 * (marks["cpu1"] - marks["cpu0"]) / max(marks["t1"] - marks["t0"], 1e-9), 1
        )
        out["api"]["client_warmup_cpu_s"] = round(marks["cpu0"] - api_cpu0, 3)
        stdin.close()

        # -- hang up; the node must hold no call after
        bye_ok, calls_left = await pl.hang_up_calls(uac, uas, live, n, api_port, polls=30)
        out.update(
            bye_ok=bye_ok, pbx_saw_bye=len(uas.byes), calls_after_bye=calls_left,
            sip_errors=uac.errors + uas.errors,
        )  # fmt: skip
        return out
    finally:
        if http is not None:
            await http.close()
        phones.close()
        if uac is not None:
            uac.close()
        uas.close()
        if api.proc is not None and api.proc.stdin is not None:
            with contextlib.suppress(OSError):
                api.proc.stdin.close()
        api.stop(grace=5)
        rc = node.stop(grace=20)
        if rc not in (0, None) and args.verbose:
            print(f"node exit status {rc}", file=sys.stderr)
        tmp.cleanup()


async def _window(
    phones: MeasuredPhones,
    pid: int,
    api_port: int,
    args: argparse.Namespace,
    pin: pl.Pinning,
    around: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """One measured media window; ``around``: callables run just before and just after it
    (the API figures cover the same time)."""
    before = await pl._scrape(api_port)
    if around:
        around[0]()
    res = await pl._measure(phones, pid, args, pin)
    if around:
        around[1]()
    after = await pl._scrape(api_port)
    res["proxy_metrics"] = pl._metrics_delta(before, after)
    res["metrics_scraped"] = bool(before) and bool(after)  # a scrape can time out (overload)
    res["calls_in_node"] = int(after.get("dtmfmask_calls", -1))
    sent_all = res["sent_all_calls"]
    res["cpu_us_per_packet"] = round(res["relay_cpu_s"] / sent_all * 1e6, 3) if sent_all else None
    return res


def _met(w: dict[str, Any], dtmf_calls: int) -> dict[str, bool]:
    loss, p99 = w.get("loss"), w.get("latency", {}).get("p99_ms")
    return {
        "loss": loss is not None and loss < TARGETS["loss"],
        "p99": p99 is not None and p99 < TARGETS["p99_ms"],
        "digits_masked": w.get("metrics_scraped", False)
        and w.get("proxy_metrics", {}).get("digits_masked") == dtmf_calls,
    }


def _summarise(r: dict[str, Any]) -> None:
    a, b = r.get("without_api"), r.get("with_api")
    if not a or not b:
        return
    r["met_without_api"] = _met(a, r["dtmf_calls"])
    r["met_with_api"] = _met(b, r["dtmf_calls"])
    api = r.get("api", {})
    answered = sum(api.get("answered", {}).values())
    if answered and a.get("window_s") and b.get("window_s"):
        extra = b["relay_cpu_s"] / b["window_s"] - a["relay_cpu_s"] / a["window_s"]
        # meaningless (and left out) when the node got less CPU with the API load than
        # without it: then something else took the core
        per = extra * b["window_s"] / answered * 1e6
        r["api_cpu_us_per_request"] = round(per, 1) if per > 0 else None
    else:
        r["api_cpu_us_per_request"] = None
    r["targets_met"] = (
        r["met_with_api"]["loss"]
        and r["met_with_api"]["p99"]
        and r.get("calls_up") == r["calls"]
        and r.get("calls_after_bye") == 0
        and api.get("error_count", 1) == 0
    )


# --------------------------------------------------------------------------- report


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(out: dict[str, Any]) -> None:
    p = out["params"]
    print(
        f"api_load: {p['seconds']:g} s per window, node (proxy + API + sandbox) on CPU "
        f"{out['pinning']['relay_cpu']}, load on CPU {out['pinning']['load_cpu']}, look-ahead "
        f"{pl.LOOKAHEAD_MS:g} ms (not in the latency), load loop {out['loop']}"
    )
    print(
        f"API load: {p['rate']:g} req/s offered ({100 * p['long_share']:g} % long-polls "
        f"?wait={p['wait']:g}; short: {100 * (1 - p['calls_share']):g} % GET /v1/payments/{{id}}"
        f" If-None-Match, {100 * p['calls_share']:g} % GET /v1/calls), {p['changes']:g} "
        f"changes/s (PATCH details), pools {p['short_conns']} short + {p['lp_conns']} long"
    )
    print(
        f"targets (issue 4): with the API load on, media loss < {100 * TARGETS['loss']:g} %, "
        f"p99 added latency < {TARGETS['p99_ms']:g} ms"
    )
    for r in out["results"]:
        if "error" in r:
            print(f"{r['calls']} calls: error: {r['error']}")
            continue
        print(
            f"calls {r['calls']} (up {r['calls_up']}), payment sessions {r['sessions']} "
            f"(setup {r['sessions_setup_s']:.1f} s"
            + (f", problems {r['session_problems']}" if r["session_problems"] else "")
            + f"): media figures over the {r['calls_measured']} calls without a session"
        )
        hdr = (
            f"{'API load':>9} {'pkt/s':>7} {'loss %':>7} {'reord':>5} {'p50 ms':>7}"
            f" {'p99 ms':>7} {'max ms':>7} {'CPU µs/pkt':>10} {'node CPU%':>9}"
            f" {'load CPU%':>9} {'other%':>6}  verdict"
        )
        print(hdr)
        for name, key, met in (
            ("off", "without_api", r.get("met_without_api", {})),
            ("on", "with_api", r.get("met_with_api", {})),
        ):
            w = r[key]
            lat = w["latency"]
            loss = None if w["loss"] is None else 100 * w["loss"]
            missed = [k for k, ok in met.items() if not ok]
            verdict = "ok" if not missed else "MISSED: " + ", ".join(missed)
            if w["relay_cpu_pct"] >= 95:
                verdict += " (node core saturated)"
            if w["gen_late_ms"] > 20:
                verdict += f" (media generator late by up to {w['gen_late_ms']:.0f} ms)"
            other = max(w.get("relay_core_other_pct", 0), w.get("load_core_other_pct", 0))
            print(
                f"{name:>9} {w['packets_per_s']:>7.0f} {_f(loss, '>7.3f')} {w['reordered']:>5}"
                f" {_f(lat['p50_ms'], '>7.3f')} {_f(lat['p99_ms'], '>7.3f')}"
                f" {_f(lat['max_ms'], '>7.2f')} {_f(w['cpu_us_per_packet'], '>10.2f')}"
                f" {w['relay_cpu_pct']:>9.1f} {w['load_cpu_pct']:>9.1f} {other:>6.0f}  {verdict}"
            )
        a = r["api"]
        s, sp, sc = a["short"], a["short_payment"], a["short_calls"]
        print(
            f"API (window B, {a['window_s']:.1f} s): polls {a['sent_per_s']:.0f}/s sent of "
            f"{a['offered_per_s']:g}/s offered, {a['answered_per_s']:.0f} polls/s answered, "
            f"{a['responses_per_s']:.0f} responses/s in all (changes too); node CPU "
            f"{_f(r['api_cpu_us_per_request'], '.0f')} µs per response (B - A)"
        )
        print(
            f"  short polls p50/p99/max {_f(s['p50_ms'], '.2f')}/{_f(s['p99_ms'], '.2f')}/"
            f"{_f(s['max_ms'], '.2f')} ms (n {s['n']}); GET /v1/payments/{{id}} "
            f"{_f(sp['p50_ms'], '.2f')}/{_f(sp['p99_ms'], '.2f')}/{_f(sp['max_ms'], '.2f')}"
            f" ms {a['status']['payment']}; GET /v1/calls {_f(sc['p50_ms'], '.2f')}/"
            f"{_f(sc['p99_ms'], '.2f')}/{_f(sc['max_ms'], '.2f')} ms"
        )
        nt, ch = a["notify"], a["change"]
        print(
            f"  long-polls: {a['sent'].get('long', 0)} sent, answered {a['status']['long']}"
            f", outstanding {a['lp_open_at_end']} at the end (max {a['lp_open_max']}), "
            f"skipped (pool full) {a['lp_skipped']}; notify p50/p99/max "
            f"{_f(nt['p50_ms'], '.2f')}/{_f(nt['p99_ms'], '.2f')}/{_f(nt['max_ms'], '.2f')} ms;"
            f" changes {ch['n']} p50/p99 {_f(ch['p50_ms'], '.2f')}/{_f(ch['p99_ms'], '.2f')} ms"
        )
        print(
            f"  errors {a['error_count']}"
            + (f" {a['errors']}" if a["errors"] else "")
            + f"; API client CPU {a['client_process_cpu_pct']:.0f} %, client late up to "
            f"{a['client_late_ms']:.1f} ms"
        )
        b = r["with_api"]
        m = b["proxy_metrics"]
        digits = m["digits_masked"] if b.get("metrics_scraped", True) else "? (/metrics timed out)"
        print(
            f"  digits masked {digits}/{r['dtmf_calls']} key-press calls, "
            f"fail-closed frames {m['fail_closed_frames']}, drops {m['drops'] or 0}; BYE ok "
            f"{r['bye_ok']}, PBX saw {r['pbx_saw_bye']}, calls after BYE {r['calls_after_bye']}"
        )
        mw = r["met_with_api"]
        words = [
            f"loss < {100 * TARGETS['loss']:g} %: {'met' if mw['loss'] else 'MISSED'}",
            f"p99 < {TARGETS['p99_ms']:g} ms: {'met' if mw['p99'] else 'MISSED'}",
        ]
        print(
            "targets with the API load on: "
            + ", ".join(words)
            + (" -> all met" if r["targets_met"] else " -> NOT all met")
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="concurrent calls with media")
    ap.add_argument("--seconds", type=float, default=6.0, help="media time per window")
    ap.add_argument("--sessions", type=int, default=20, help="payment sessions to poll")
    ap.add_argument("--rate", type=float, default=1000.0, help="API requests/s offered")
    ap.add_argument("--long-share", type=float, default=0.5, help="share of long-polls")
    ap.add_argument("--calls-share", type=float, default=0.2,
                    help="share of short polls that are GET /v1/calls")  # fmt: skip
    ap.add_argument("--wait", type=float, default=25.0, help="long-poll ?wait= seconds")
    ap.add_argument("--changes", type=float, default=10.0, help="session changes/s (PATCH)")
    ap.add_argument("--lp-conns", type=int, default=1000, help="long-poll connection pool")
    ap.add_argument("--short-conns", type=int, default=32, help="short-request pool")
    ap.add_argument("--warmup", type=float, default=2.0, help="API load before window B, s")
    ap.add_argument("--phases", type=int, default=10, help="media send slots per 20 ms")
    ap.add_argument("--dtmf-every", type=int, default=10, help="every n-th call presses a key")
    ap.add_argument("--port-min", type=int, default=21000, help="the node's first RTP port")
    ap.add_argument("--node-profile", help="run the node under cProfile, stats to this file")
    ap.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ap.add_argument("--quick", action="store_true", help="10 calls, 2 s, 100 req/s (smoke)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--api-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.api_child:
        return api_child()
    if args.quick:
        args.calls, args.seconds, args.rate, args.sessions = 10, 2.0, 100.0, 4
        args.warmup = 1.0
    if not 1 <= args.calls <= 5000 or not 1 <= args.sessions <= args.calls:
        ap.error("--calls 1-5000, --sessions 1-calls")
    if not 0.2 <= args.seconds <= 300 or not 1 <= args.phases <= 20:
        ap.error("--seconds 0.2-300, --phases 1-20")
    if not 0 <= args.long_share <= 1 or not 0 <= args.calls_share <= 1 or args.rate <= 0:
        ap.error("--long-share and --calls-share 0-1, --rate > 0")
    if args.port_min + 8 * args.calls + 200 > 65534:
        ap.error("--port-min too high for that many calls")
    args.no_bare = True

    pl.raise_open_files(8 * args.calls + 2 * args.lp_conns + 2 * args.short_conns + 2048)
    pin = pl.pin_load(_Pin)

    loop, kind = pl._new_loop()
    out: dict[str, Any] = {
        "params": {k: getattr(args, k) for k in PARAMS},
        "quick": bool(args.quick),
        "lookahead_ms": pl.LOOKAHEAD_MS,
        "loop": kind,
        "pinning": {"relay_cpu": pin.relay_cpu, "load_cpu": pin.load_cpu},
        "cpus": os.cpu_count(),
        "targets": TARGETS,
        "results": [],
    }
    try:
        budget = 180 + 3 * args.seconds + args.warmup + 0.3 * args.calls
        try:
            r = loop.run_until_complete(asyncio.wait_for(run(args, pin), budget))
            _summarise(r)
        except Exception as exc:  # report it, exit 0
            r = {"calls": args.calls, "error": f"{type(exc).__name__}: {exc}"}
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
