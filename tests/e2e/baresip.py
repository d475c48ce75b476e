"""Drive real baresip user agents on 127.0.0.1 from asyncio tests.

``BaresipUA`` is an async context manager around one ``baresip`` process with a private
config dir, its own ports, a WAV audio source, recordings of what it sends and hears, and
the ``ctrl_tcp`` command/event channel::

    async with BaresipUA("alice", workdir=tmp / "a", source=speech) as a, \\
               BaresipUA("bob", workdir=tmp / "b", auto_answer=True) as b:
        await a.dial(b)                                   # or a.dial("sip:bob@127.0.0.1:5080")
        await a.wait_for("CALL_ESTABLISHED")
        await b.wait_for("CALL_ESTABLISHED")
        await a.send_dtmf("4111")                         # RFC 2833 telephone-events
        await b.wait_for("CALL_DTMF_START", param="4")
        await a.hangup()                                  # waits for CALL_CLOSED
        await b.wait_for("CALL_CLOSED")
        heard = await b.recording()                       # int16 samples at 8 kHz

It is async because the proxy under test runs an asyncio loop: a blocking harness would
freeze an in-process proxy. Synchronous tests wrap a scenario in ``asyncio.run``.

Recipe (Debian ``baresip-core`` 1.0.0-4, verified here; ``baresip -h`` prints the version)
==========================================================================================
Packages: ``baresip-core`` only (the modules below are in it: g711, aufile, sndfile, menu,
ctrl_tcp, account). No ALSA device or sound server is needed.

Command line: ``baresip -f <dir> -t <lifetime_s> [-s]``, stdin from /dev/null, stdout and
stderr to ``<dir>/baresip.log``. No ``-d`` (we want the pid and the exit code). ``-t`` is a
watchdog: baresip quits by itself after that many seconds, so a killed test run leaves no
orphan behind. ``-s`` adds a SIP trace (full messages with SDP) to the log (``sip_trace=``).

``<dir>/config`` (everything else at its default; the ``#`` notes are not written)::

    poll_method          epoll
    sip_listen           127.0.0.1:<P>       # UDP+TCP on P, and a TLS listener on P+1 (TCP)
    net_interface        127.0.0.1           # SDP c= and RTP on 127.0.0.1. NOT "lo": on this
                                             #  kernel baresip fails "lo: No such device"
    call_local_timeout   120
    call_max_calls       4
    audio_source         aufile,<8 kHz mono s16 WAV>
    audio_player         aufile,/dev/null    # aufile has no player in 1.0.0: no player at
    audio_alert          aufile,/dev/null    #  all, which is what we want (see "Quirks")
    jitter_buffer_delay  0-0                 # frames; decode as packets arrive
    rtp_ports            <lo>-<hi>           # per-UA range, RTP even port + RTCP next one
    statmode_default     off                 # else menu prints a status line every 100 ms
    module_path          /usr/lib/baresip/modules
    module               g711.so             # PCMU, PCMA
    module               aufile.so           # WAV source
    module               sndfile.so          # records <snd_path>/dump-<time>-{enc,dec}.wav
    module_tmp           account.so          # reads <dir>/accounts
    module_app           menu.so             # the commands: dial, hangup, accept, sndcode...
    module_app           ctrl_tcp.so
    ctrl_tcp_listen      127.0.0.1:<C>
    snd_path             <dir>/rec

``<dir>/accounts``, one line (``;regint=0``: no REGISTER; ``answermode=auto`` answers 180
then 200 at once; ``outbound`` adds ``Route: <sip:host:port;lr>`` and sends every request
there, which is how to put a proxy in the path while dialling any request URI)::

    <sip:alice@127.0.0.1:<P>>;regint=0;answermode=manual;audio_codecs=pcmu,pcma;ptime=20
        [;outbound="sip:127.0.0.1:<proxy port>"]

``<dir>/contacts``: empty. ``uuid`` is created by baresip (harmless).

ctrl_tcp: netstrings (``<len>:<json>,``) both ways. Send
``{"command": "dial", "params": "sip:...", "token": "7"}``; the reply is
``{"response": true, "ok": true|false, "data": "...", "token": "7"}`` (an unknown command
gives ``ok: false``, ``data: "command not found (foo)"``). Events arrive unasked on the same
socket: ``{"event": true, "type": "CALL_ESTABLISHED", "class": "call", "accountaor": ...,
"direction": "incoming"|"outgoing", "peeruri": ..., "id": <Call-ID>, "param": ...}``.
Commands used: ``dial <uri>``, ``hangup``, ``accept``, ``sndcode <digits>``,
``ausrc aufile,<wav>`` (switch the audio source mid-call), ``quit``.

Event sequence of a direct call (caller A, callee B with auto-answer), as seen here:
A ``CALL_LOCAL_SDP`` (offer), B ``CALL_REMOTE_SDP``/``CALL_LOCAL_SDP``, A ``CALL_RINGING``,
A ``CALL_REMOTE_SDP`` (answer), both ``CALL_ESTABLISHED``, both ``CALL_RTPESTAB``, periodic
``CALL_RTCP``. A manual-answer callee gets ``CALL_INCOMING`` and waits for ``accept``.
Key presses received as RFC 2833: ``CALL_DTMF_START`` (``param`` = the digit) then
``CALL_DTMF_END`` (no digit). Hang-up: ``CALL_CLOSED`` with ``param`` "Connection reset by
user" on the side that hung up, "Connection reset by peer" on the other. Shut-down:
``SHUTDOWN``, ``EXIT``, then the ``quit`` reply, then the process exits 0 (~50 ms).

SDP offered (PCMU and PCMA, telephone-event always on PT 101)::

    m=audio 20002 RTP/AVP 0 8 101
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=ptime:20

DTMF: ``sndcode`` sends RFC 2833 / RFC 4733 telephone-events only: no SIP INFO, no in-band
tone. baresip 1.0.0 has no ``dtmfmode`` / ``dtmf_mode`` setting at all (no such string in
the binary or modules; ``dtmfmode=rtpevent|info|auinfo`` came in later releases), so the
only sending mode is RFC 2833, and it cannot offer an SDP without telephone-event. In-band
key presses are made by putting tones in the audio source (``send_dtmf_inband``).
Receiving, it reports RFC 2833 events as CALL_DTMF_START/END and logs ``received event:
'4' (end=0)``; it also parses SIP INFO ``application/dtmf-relay`` (``Signal=``), not
exercised here. On the wire (captured on lo with ``rtpsniff.LoopbackSniffer``): PT 101,
same SSRC as the audio, volume 10, marker on the first packet, one packet per 20 ms with
duration 160, 320, ... 1440 (180 ms), then three end packets (E=1, duration 1440): 12
packets, 240 ms per key. Audio packets keep flowing in between (the event packets take
sequence numbers among them). A string (``sndcode 4111``) goes back to back, one event (own
timestamp, marker) per key, 240 ms apart; ``send_dtmf`` sends one ``sndcode`` per key,
``interval`` apart (0.3 s default).

Quirks:
- End of the source WAV ends the call: aufile raises AUDIO_ERROR "end of file", the menu
  module hangs up (CALL_CLOSED param "end of file"). aufile does not loop. The harness
  pads every source with silence to ``source_pad_s`` (default 60 s).
- aufile wants exactly 8 kHz mono 16-bit PCM when the codec is 8 kHz (else it fails).
- There is no null audio player in 1.0.0; naming one that does not exist
  (``aufile,/dev/null``: aufile is only a source here) gives "(play)" with no player and no
  error, and no CPU spent on playback.
- Recordings (sndfile, an audio *filter*): ``dump-YYYY-MM-DD-HH-MM-SS-dec.wav`` is what the UA
  received (decoded, after the jitter buffer), ``-enc.wav`` what it sent; 8 kHz mono PCM16.
  The decode filter runs without any player: decoding is driven by packet arrival. The
  WAV header is only final once the call is torn down (libsndfile writes sizes on close);
  ``recording()`` waits for that. Names have one-second resolution: a second call on the
  same UA within the same second overwrites the first call's files.
- Alignment: on a direct call the caller's ``-enc`` recording matches its source sample
  for sample from sample 0, and the callee's ``-dec`` matches that at lag 0 (checked under
  a load of 5 on 2 cores: no lost or inserted frame mid-call). But the callee starts
  sending as it sends its 200 OK: under load its first RTP packet(s) reach the caller
  before the caller has processed the answer and set its decoder ("incoming rtp ...
  established" logged before "Set audio decoder"), and are dropped: the caller's recording
  then lacks the first 20-40 ms of the callee's audio (seen 1 run in 30). Find the lag with
  ``align()`` (it allows negative lags) and compare with ``overlap()``; never assume 0.
- Ports: SIP port P also takes TCP P+1 (TLS). Each UA gets one block of 24 ports:
  SIP P, TLS P+1, ctrl P+2, RTP/RTCP P+4..P+23, from 20000-32000 (below the ephemeral
  range). baresip also binds two random UDP ports (DNS client); nothing to configure.
- ``net_interface lo`` fails here ("lo: could not get IPv4 address (No such device)"): give
  the address. ``sip_listen`` sets the SIP port, ``net_interface`` the SDP/RTP address.
- ``stdio.so`` (the default UI) fails without a terminal: do not load it.
- Debian's config template loads alsa, stun, turn, ice: a private config avoids them.
- A graceful ``quit`` waits for SIP transactions (a BYE to a dead peer can take 32 s):
  ``stop()`` sends ``quit``, waits ``quit_timeout``, then SIGTERM twice (baresip's second
  SIGTERM exits at once), then SIGKILL, and always reaps the process.

Timings on the 2-core test machine (same with 3 busy-loop processes and 3 suites running at
once, load ~5): process start to ctrl_tcp accepting 0.08-0.10 s; dial to CALL_ESTABLISHED on
both sides and first RTP (CALL_RTPESTAB) 11-27 ms; sndcode to CALL_DTMF_END at the far end
~200 ms; hangup to CALL_CLOSED at the far end 2-14 ms; recording final at once after that;
quit to exit 2-20 ms. Default timeouts: 10 s start-up and waits, 5 s per command, 3 s quit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dtmfmask.tones import DIGITS, SAMPLE_RATE, dtmf_tone
from dtmfmask.wav import read_wav, write_wav

BARESIP = "baresip"
DEBIAN_PACKAGE = "baresip-core"
MODULE_PATH = "/usr/lib/baresip/modules"
REQUIRED_MODULES = ("g711", "aufile", "sndfile", "account", "menu", "ctrl_tcp")
HOST = "127.0.0.1"

PORT_BLOCK = 24  # SIP, TLS (SIP+1), ctrl, spare, 20 for RTP/RTCP
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768-60999)

Samples = npt.NDArray[np.int16]


class BaresipUnavailable(RuntimeError):
    """baresip (or one of the modules the harness needs) is not installed."""


class BaresipError(AssertionError):
    """A baresip UA did not do what the test waited for (timeout, failed command, exit).

    An AssertionError so pytest shows it as a test failure, with the UA's recent events
    and the tail of its log in the message."""


def baresip_path() -> str:
    """Path of the baresip binary; BaresipUnavailable if it or a needed module is missing."""
    exe = shutil.which(BARESIP)
    if exe is None:
        raise BaresipUnavailable(
            f"{BARESIP} not found: install the Debian package {DEBIAN_PACKAGE}"
        )
    missing = [m for m in REQUIRED_MODULES if not Path(MODULE_PATH, f"{m}.so").exists()]
    if missing:
        raise BaresipUnavailable(
            f"baresip modules missing from {MODULE_PATH}: {', '.join(missing)} "
            f"(install {DEBIAN_PACKAGE})"
        )
    return exe


def baresip_or_skip() -> str:
    """:func:`baresip_path`, or the calling test skipped when baresip is missing, except
    under CI (env CI set), which installs baresip-core: there its absence is a failure."""
    import pytest  # here, not at the top: the demo uses this module without pytest

    try:
        return baresip_path()
    except BaresipUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


# --------------------------------------------------------------------------- ports

_claimed: set[int] = set()
_claim_lock = threading.Lock()


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def claim_port_block(size: int = PORT_BLOCK, tries: int = 200) -> int:
    """First port of ``size`` consecutive ports free for UDP and TCP on 127.0.0.1 and not
    handed out before in this process. Another process may still take one before baresip
    binds it: ``BaresipUA`` retries start-up on a fresh block when that happens."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    lo, hi = PORT_RANGE
    with _claim_lock:
        for _ in range(tries):
            base = rng.randrange(lo, hi - size) & ~1  # even, so the RTP range starts even
            ports = range(base, base + size)
            if any(p in _claimed for p in ports):
                continue
            if all(_bindable(p) for p in ports):
                _claimed.update(ports)
                return base
    raise BaresipError(f"no block of {size} free ports in {lo}-{hi}")


def release_port_block(base: int, size: int = PORT_BLOCK) -> None:
    with _claim_lock:
        _claimed.difference_update(range(base, base + size))


# --------------------------------------------------------------------------- audio


def as_samples(audio: npt.ArrayLike | str | os.PathLike[str]) -> Samples:
    """int16 samples from an array (16-bit linear units) or an 8 kHz WAV path."""
    if isinstance(audio, str | os.PathLike):
        return read_wav(audio).samples.astype(np.int16)
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def write_source_wav(
    path: Path, audio: npt.ArrayLike | str | os.PathLike[str] | None, pad_s: float
) -> Path:
    """Write ``audio`` as an aufile source: 8 kHz mono PCM16, padded with silence to at least
    ``pad_s`` seconds (the end of the file ends the call)."""
    x = np.zeros(0, dtype=np.int16) if audio is None else as_samples(audio)
    n = max(len(x), int(pad_s * SAMPLE_RATE))
    out = np.zeros(n, dtype=np.int16)
    out[: len(x)] = x
    write_wav(path, out)
    return path


def inband_dtmf(
    digits: str,
    *,
    tone_ms: float = 100.0,
    gap_ms: float = 100.0,
    level_dbm0: float = -10.0,
    lead_ms: float = 100.0,
) -> npt.NDArray[np.float64]:
    """``digits`` as in-band DTMF: ``lead_ms`` of silence, then each key ``tone_ms`` long
    followed by ``gap_ms`` of silence (float samples, 16-bit linear units)."""
    ms = SAMPLE_RATE // 1000
    parts = [np.zeros(int(lead_ms * ms))]
    for d in digits:
        parts.append(dtmf_tone(d, int(tone_ms * ms), level_dbm0))
        parts.append(np.zeros(int(gap_ms * ms)))
    return np.concatenate(parts)


def _wav_is_final(path: Path) -> bool:
    """True once libsndfile has written the real sizes into the header (on close)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    return struct.unpack("<I", head[4:8])[0] == size - 8


# --------------------------------------------------------------------------- the UA

_tokens = itertools.count(1)


class BaresipUA:
    """One baresip process. Use as ``async with BaresipUA(...) as ua:``.

    name: SIP user name (``sip:<name>@127.0.0.1:<sip_port>``) and log label.
    workdir: private directory (config, accounts, log, recordings); created, never removed.
    source: what the UA sends: samples (16-bit linear, 8 kHz), a WAV path, or None for
        silence; padded with silence to ``source_pad_s`` seconds.
    auto_answer: answer incoming calls at once (else wait for ``accept()``).
    codecs: offered/accepted audio codecs in order, among "PCMU", "PCMA".
    dtmf_mode: only "rfc2833" (what baresip 1.0.0 sends; kept for the API of newer ones).
    sip_port: fixed SIP port (TCP sip_port+1 is taken too); default: a free one.
    outbound: "host:port" of an outbound proxy: every request goes there (Route ;lr).
    lifetime_s: baresip quits by itself after this long (watchdog against orphans).
    sip_trace: log full SIP messages (baresip -s).
    """

    def __init__(
        self,
        name: str,
        *,
        workdir: str | os.PathLike[str],
        source: npt.ArrayLike | str | os.PathLike[str] | None = None,
        auto_answer: bool = False,
        codecs: tuple[str, ...] = ("PCMU", "PCMA"),
        dtmf_mode: str = "rfc2833",
        sip_port: int | None = None,
        outbound: str | None = None,
        ptime: int = 20,
        source_pad_s: float = 60.0,
        lifetime_s: float = 600.0,
        sip_trace: bool = False,
        start_timeout: float = 10.0,
        quit_timeout: float = 3.0,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        if dtmf_mode != "rfc2833":
            raise ValueError(
                f"dtmf_mode {dtmf_mode!r}: Debian's baresip 1.0.0 only sends RFC 2833 events "
                "(use send_dtmf_inband for in-band key presses)"
            )
        bad = [c for c in codecs if c.upper() not in ("PCMU", "PCMA")]
        if bad or not codecs:
            raise ValueError(f"codecs must be among PCMU, PCMA: {codecs!r}")
        self.name = name
        self.dir = Path(workdir).resolve()
        self.source = source
        self.auto_answer = auto_answer
        self.codecs = tuple(c.upper() for c in codecs)
        self.outbound = outbound
        self.ptime = ptime
        self.source_pad_s = source_pad_s
        self.lifetime_s = lifetime_s
        self.sip_trace = sip_trace
        self.start_timeout = start_timeout
        self.quit_timeout = quit_timeout
        self.extra_config = extra_config
        self._fixed_sip_port = sip_port

        self.sip_port = 0
        self.ctrl_port = 0
        self.rtp_ports = (0, 0)
        self._block: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._log_file: Any = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._cursor = 0
        self._changed: asyncio.Condition | None = None
        self._reader_error: BaseException | None = None
        self._switch_n = 0

    # ---------------------------------------------------------------- addresses

    @property
    def aor(self) -> str:
        return f"sip:{self.name}@{HOST}:{self.sip_port}"

    def uri(self, host: str = HOST, port: int | None = None) -> str:
        """A request URI for this UA's user at host:port (default: the UA itself)."""
        return f"sip:{self.name}@{host}:{self.sip_port if port is None else port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "baresip.log"

    @property
    def rec_dir(self) -> Path:
        return self.dir / "rec"

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> BaresipUA:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(exist_ok=True)
        src = write_source_wav(self.dir / "source.wav", self.source, self.source_pad_s)
        lines = [
            "poll_method\tepoll",
            f"sip_listen\t{HOST}:{self.sip_port}",
            f"net_interface\t{HOST}",
            "call_local_timeout\t120",
            "call_max_calls\t4",
            f"audio_source\taufile,{src}",
            "audio_player\taufile,/dev/null",
            "audio_alert\taufile,/dev/null",
            "jitter_buffer_delay\t0-0",
            f"rtp_ports\t{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "statmode_default\toff",
            f"module_path\t{MODULE_PATH}",
            "module\tg711.so",
            "module\taufile.so",
            "module\tsndfile.so",
            "module_tmp\taccount.so",
            "module_app\tmenu.so",
            "module_app\tctrl_tcp.so",
            f"ctrl_tcp_listen\t{HOST}:{self.ctrl_port}",
            f"snd_path\t{self.rec_dir}",
            *self.extra_config,
        ]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = [
            "regint=0",
            f"answermode={'auto' if self.auto_answer else 'manual'}",
            "audio_codecs=" + ",".join(c.lower() for c in self.codecs),
            f"ptime={self.ptime}",
        ]
        if self.outbound:
            params.append(f'outbound="sip:{self.outbound}"')
        (self.dir / "accounts").write_text(f"<{self.aor}>;" + ";".join(params) + "\n")
        (self.dir / "contacts").write_text("")

    async def start(self) -> None:
        """Start baresip and connect to ctrl_tcp; on failure nothing is left running."""
        exe = baresip_path()
        try:
            for attempt in range(3):  # a port taken between probe and bind: new block, again
                self._assign_ports()
                self._write_config()
                try:
                    await self._spawn(exe)
                    return
                except BaresipError:
                    await self._kill()
                    self._release_ports()
                    log = self._log_tail(4000)
                    if attempt == 2 or ("in use" not in log and "Address already" not in log):
                        raise
        except BaseException:
            await self.stop()
            raise

    def _assign_ports(self) -> None:
        self._block = claim_port_block()
        b = self._block
        self.sip_port = self._fixed_sip_port or b
        self.ctrl_port = b + 2
        self.rtp_ports = (b + 4, b + PORT_BLOCK - 1)

    def _release_ports(self) -> None:
        if self._block is not None:
            release_port_block(self._block)
            self._block = None

    async def _spawn(self, exe: str) -> None:
        self.events.clear()
        self._cursor = 0
        self._reader_error = None
        self._changed = asyncio.Condition()
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = self.log_path.open("ab")
        args = [exe, "-f", str(self.dir), "-t", str(int(self.lifetime_s))]
        if self.sip_trace:
            args.append("-s")
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # no terminal signals; stop() reaps it
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.returncode is not None:
                raise self._error(f"exited with {self.proc.returncode} during start-up")
            try:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, self.ctrl_port), timeout=1.0
                )
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise self._error(
                        f"ctrl_tcp {HOST}:{self.ctrl_port} not accepting after "
                        f"{self.start_timeout} s"
                    ) from None
                await asyncio.sleep(0.05)
        self._read_task = asyncio.create_task(self._read_loop(), name=f"baresip-{self.name}")

    async def stop(self) -> None:
        """quit, then SIGTERM, SIGKILL; always reaps the process and closes the files."""
        proc = self.proc
        if proc is not None and proc.returncode is None and self._writer is not None:
            with contextlib.suppress(BaresipError, OSError, ConnectionError):
                await self.command("quit", timeout=self.quit_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.quit_timeout)
        await self._kill()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
            self._read_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._release_ports()

    async def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), wait)
                return

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    # ---------------------------------------------------------------- ctrl_tcp

    async def _read_loop(self) -> None:
        assert self._reader is not None and self._changed is not None
        try:
            while True:
                head = await self._reader.readuntil(b":")
                n = int(head[:-1])
                if not 0 <= n <= 1 << 20:
                    raise ValueError(f"bad netstring length {n}")
                body = await self._reader.readexactly(n + 1)
                if body[-1:] != b",":
                    raise ValueError("netstring without trailing comma")
                msg = json.loads(body[:-1])
                if msg.get("response"):
                    fut = self._pending.pop(str(msg.get("token")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    msg["_t"] = time.monotonic()
                    self.events.append(msg)
                async with self._changed:
                    self._changed.notify_all()
        except asyncio.IncompleteReadError as exc:  # baresip closed the socket (exit)
            self._reader_error = exc
        except (OSError, ValueError) as exc:
            self._reader_error = exc
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(self._error("ctrl_tcp connection closed"))
            async with self._changed:
                self._changed.notify_all()

    async def command(
        self, command: str, params: str | None = None, *, timeout: float = 5.0, check: bool = True
    ) -> str:
        """Run a baresip command; returns the reply's ``data``. BaresipError if the reply is
        not ``ok`` (when ``check``) or does not come within ``timeout``."""
        if self._writer is None:
            raise self._error(f"{command}: not started")
        token = str(next(_tokens))
        msg: dict[str, Any] = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        body = json.dumps(msg).encode()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            self._writer.write(b"%d:%s," % (len(body), body))
            await self._writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise self._error(f"no reply to {command!r} within {timeout} s") from None
        finally:
            self._pending.pop(token, None)
        if check and not reply.get("ok"):
            raise self._error(f"{command} {params or ''}: {reply.get('data')!r}")
        return str(reply.get("data", ""))

    # ---------------------------------------------------------------- events

    async def wait_for(
        self,
        event_type: str,
        timeout: float = 10.0,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The next event of ``event_type`` (and matching ``fields``, e.g. ``param="4"``,
        and ``predicate``) after the previous match: events that came before this call are
        found too. Advances the cursor past the match. BaresipError on timeout or exit."""
        assert self._changed is not None

        def match(ev: dict[str, Any]) -> bool:
            return (
                ev.get("type") == event_type
                and all(ev.get(k) == v for k, v in fields.items())
                and (predicate is None or predicate(ev))
            )

        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for i in range(self._cursor, len(self.events)):
                    if match(self.events[i]):
                        self._cursor = i + 1
                        return self.events[i]
                left = deadline - time.monotonic()
                if self._reader_error is not None or left <= 0:
                    why = "baresip exited" if self._reader_error is not None else "timeout"
                    want = f"{event_type} {fields or ''}".strip()
                    raise self._error(f"{why} waiting {timeout} s for {want}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    def skip_events(self) -> None:
        """Forget the events so far: the next wait_for only sees newer ones."""
        self._cursor = len(self.events)

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    def dtmf_received(self) -> str:
        """Digits received as RFC 2833 events (CALL_DTMF_START), in order, whole history."""
        return "".join(
            str(e.get("param", "")) for e in self.events if e.get("type") == "CALL_DTMF_START"
        )

    # ---------------------------------------------------------------- call control

    async def dial(self, target: str | BaresipUA) -> None:
        """Call ``target`` (a SIP URI, or another UA dialled directly). Returns once baresip
        accepted the command; wait for CALL_ESTABLISHED / CALL_CLOSED yourself."""
        uri = target.uri() if isinstance(target, BaresipUA) else target
        await self.command("dial", uri)

    async def accept(self) -> None:
        await self.command("accept")

    async def hangup(self, *, wait: bool = True, timeout: float = 10.0) -> dict[str, Any] | None:
        """Hang up the current call; with ``wait``, return its CALL_CLOSED event."""
        await self.command("hangup")
        return await self.wait_for("CALL_CLOSED", timeout) if wait else None

    async def send_dtmf(self, digits: str, *, interval: float | None = 0.3) -> None:
        """Key presses as RFC 2833 events (baresip: 180 ms + 3 end packets per key). One
        ``sndcode`` per key, ``interval`` seconds apart (keys closer than 240 ms queue
        back to back, still one event each); ``interval=None`` sends the whole string in one
        ``sndcode``."""
        bad = [d for d in digits if d not in DIGITS]
        if bad:
            raise ValueError(f"not DTMF keys: {bad!r}")
        if interval is None:
            await self.command("sndcode", digits)
            return
        for i, d in enumerate(digits):
            if i:
                await asyncio.sleep(interval)
            await self.command("sndcode", d)

    async def set_source(self, audio: npt.ArrayLike | str | os.PathLike[str] | None) -> Path:
        """Switch what the UA sends, mid-call (``ausrc aufile,...``): it starts now, from the
        beginning of ``audio``, then silence (padded to ``source_pad_s``)."""
        self._switch_n += 1
        path = write_source_wav(self.dir / f"source-{self._switch_n}.wav", audio, self.source_pad_s)
        await self.command("ausrc", f"aufile,{path}")
        return path

    async def send_dtmf_inband(self, digits: str, **tone_args: Any) -> Path:
        """Key presses as in-band tones in the audio, starting now (see ``inband_dtmf``)."""
        return await self.set_source(inband_dtmf(digits, **tone_args))

    # ---------------------------------------------------------------- recordings

    def recording_path(self, direction: str = "dec") -> Path | None:
        """The newest recording: "dec" = what this UA heard, "enc" = what it sent."""
        if direction not in ("dec", "enc"):
            raise ValueError("direction is 'dec' (heard) or 'enc' (sent)")
        files = sorted(self.rec_dir.glob(f"dump-*-{direction}.wav"))
        return files[-1] if files else None

    async def recording(self, direction: str = "dec", timeout: float = 5.0) -> Samples:
        """Samples of the newest recording once its call is over and the file is final."""
        deadline = time.monotonic() + timeout
        while True:
            path = self.recording_path(direction)
            if path is not None and _wav_is_final(path):
                return read_wav(path).samples.astype(np.int16)
            if time.monotonic() > deadline:
                raise self._error(
                    f"no final {direction} recording in {self.rec_dir} after {timeout} s "
                    f"(found {path}; the call must be closed first)"
                )
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- diagnostics

    def _log_tail(self, n: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()[-n:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").replace("\r", "\n")

    def log_text(self) -> str:
        return self._log_tail(1 << 24)

    def _error(self, what: str) -> BaresipError:
        recent = ", ".join(self.event_types()[-15:])
        return BaresipError(
            f"baresip {self.name} (sip {self.sip_port}, ctrl {self.ctrl_port}, "
            f"rc {self.returncode}): {what}\n  events: {recent}\n"
            f"  log {self.log_path} (tail):\n{self._log_tail()}"
        )


# --------------------------------------------------------------------------- signal tools


def overlap(
    reference: npt.ArrayLike, recorded: npt.ArrayLike, lag: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The parts of both that line up when ``recorded[lag + i]`` matches ``reference[i]``."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    r0, c0 = (0, lag) if lag >= 0 else (-lag, 0)
    m = max(0, min(len(ref) - r0, len(rec) - c0))
    return ref[r0 : r0 + m], rec[c0 : c0 + m]


def align(
    reference: npt.ArrayLike, recorded: npt.ArrayLike, max_lag: int = 2 * SAMPLE_RATE
) -> tuple[int, float]:
    """(lag, correlation): ``recorded[lag + i]`` best matches ``reference[i]``, with
    ``-max_lag <= lag <= max_lag`` (negative: the recording lacks the reference's first
    ``-lag`` samples, e.g. packets that arrived before the 200 OK was processed);
    correlation is the normalised correlation over the overlap at that lag."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    size = 1 << (len(ref) + len(rec)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.arange(-min(max_lag, len(ref) - 1), min(max_lag, len(rec) - 1) + 1)
    lag = int(lags[np.argmax(xc[lags])])  # negative lags wrap around to the end
    a, b = overlap(ref, rec, lag)
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return lag, float(np.dot(a, b) / denom) if denom > 0 else 0.0
