"""The proxy's configuration: the ``proxy:`` section of ``profiles.yaml``.

:func:`load_config` reads the file, :func:`parse_config` a string, :func:`default_config` is
the embedded default (a loopback demo: the proxy on 127.0.0.1:5060, the PBX on
127.0.0.1:5070). The result is a tree of frozen dataclasses (:class:`Config`); every field
has a default, so a file only names what it changes. Key names follow the operator's words
and the reference for each key is the comment beside it in ``profiles.yaml``.

The file also holds other top-level sections (``payments:``, read by control_api): they are
ignored here, except that the whole file must still be YAML that ``safe_load`` accepts
(no ``!!python/...`` tags) and has no duplicate keys. Inside ``proxy`` every key is checked:
an unknown key is an error, not a silent no-op.

Reading is hostile-input safe: files over :data:`MAX_FILE_SIZE` are refused before parsing;
the text must be UTF-8; YAML is composed to a node graph (libyaml's C parser where PyYAML
was built with it) and never constructed wholesale, so an alias bomb costs nothing: values
are read from the nodes the schema names, and aliases are never expanded beyond them.

Every problem is reported at once in one :class:`ConfigError`, one line each::

    profiles.yaml:12:5: proxy.media.port_min: must be an even port 1024-65534, got 7001
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml

from sipproxy.yamlreader import (
    MAX_FILE_SIZE,
    MERGE,
    ConfigError,
    ConfigProblem,
    Y,
    YamlReader,
    decode_text,
    kind,
    read_file,
    show,
)

__all__ = [
    "MAX_FILE_SIZE",
    "MIN_LOOKAHEAD_MS",
    "PORTS_PER_CALL",
    "CodecFallback",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HostPort",
    "MaskMode",
    "MaskStyle",
    "MaskingConfig",
    "MediaConfig",
    "MetricsConfig",
    "SipConfig",
    "Transport",
    "TrunksConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "parse_config",
]

PORTS_PER_CALL: Final = 6
"""Media ports one call needs: caller, agent and provider legs, each an RTP port and RTCP."""

MAX_TRUNKS: Final = 10_000

MIN_LOOKAHEAD_MS: Final = 15.0
"""Shortest look-ahead with zero leak in the masker's measurements (README, "Why 15 ms")."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Transport = Literal["udp", "tcp"]
CodecFallback = Literal["reject", "rfc4733_only"]
MaskStyle = Literal["tone", "silence", "noise"]
MaskMode = Literal["always", "during_payment"]
_S = TypeVar("_S", bound=str)

# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class HostPort:
    """``host:port``; IPv6 hosts are written in brackets (``[::1]:5070``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipConfig:
    """Where the proxy takes SIP from callers (and the PBX's replies)."""

    listen: str = "127.0.0.1"
    udp_port: int = 5060
    tcp_port: int = 5060
    max_message_size: int = 65536


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The RTP/RTCP ports the relay anchors calls on (RTP on even ports, RTCP on port + 1)."""

    address: str = "127.0.0.1"
    port_min: int = 30000
    port_max: int = 30998
    timeout_s: float = 60.0
    codec_fallback: CodecFallback = "reject"

    @property
    def rtp_ports(self) -> range:
        """The even ports RTP may use; each one's RTCP port is the odd port above it."""
        return range(self.port_min, self.port_max + 1, 2)

    @property
    def max_calls(self) -> int:
        """Calls the port range can hold at once, with every call's provider leg open."""
        return 2 * len(self.rtp_ports) // PORTS_PER_CALL


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The PBX behind the proxy."""

    pbx: HostPort = HostPort("127.0.0.1", 5070)
    transport: Transport = "udp"


def _loopback() -> tuple[IPNetwork, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class TrunksConfig:
    """Who may send calls in: the carrier's or SBC's addresses."""

    allow: tuple[IPNetwork, ...] = field(default_factory=_loopback)

    def allows(self, address: str) -> bool:
        """Whether a call from ``address`` (an IP literal, no port) is let in."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)


@dataclass(frozen=True, slots=True)
class MaskingConfig:
    """How key presses are hidden from the agent (``dtmfmask.masker.MaskConfig``)."""

    style: MaskStyle = "tone"
    lookahead_ms: float = 15.0
    tone_hz: float = 500.0
    tone_level_dbm0: float = -20.0
    mask: MaskMode = "always"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus scrape endpoint; ``listen=None`` turns it off."""

    listen: HostPort | None = HostPort("127.0.0.1", 9464)


@dataclass(frozen=True, slots=True)
class Config:
    """The ``proxy:`` section of ``profiles.yaml``."""

    sip: SipConfig = field(default_factory=SipConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    trunks: TrunksConfig = field(default_factory=TrunksConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    drain_grace_s: float = 30.0
    source: str = "<embedded default>"


# ------------------------------------------------------------------------------- errors


# ---------------------------------------------------------------------------- entry points


def default_config() -> Config:
    """The embedded default: a working loopback demo."""
    return Config()


def load_config(path: str | Path | None = None) -> Config:
    """Read ``path`` (``None``: the embedded default) and validate its ``proxy:`` section.

    Raises :class:`ConfigError` for every problem, including an unreadable file.
    """
    if path is None:
        return default_config()
    return parse_config(read_file(path), filename=str(path))


def parse_config(text: str | bytes, *, filename: str = "<string>") -> Config:
    """Validate the ``proxy:`` section of YAML ``text``; errors name ``filename``."""
    text = decode_text(text, filename)
    reader = _Reader(filename, text)
    cfg = reader.read()
    if reader.problems:
        raise ConfigError(reader.problems)
    return cfg


# ---------------------------------------------------------------------------- YAML reading

_MISSING: Final = object()
_BROKEN: Final = object()
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z"
)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Reader(YamlReader):
    """Walks the ``proxy:`` section; records problems and falls back to defaults."""

    def __init__(self, filename: str, text: str) -> None:
        super().__init__(filename, text)
        self._prefix = ""

    # -- document

    def read(self) -> Config:
        try:
            root = self.root()
            if root is None:  # empty file, or broken (recorded)
                return Config(source=self.filename) if not self.problems else Config()
            if not isinstance(root, yaml.MappingNode):
                self.problem(
                    root,
                    None,
                    f"the file must be a mapping with a proxy: section, got {kind(root)}",
                )
                return Config()
            top = self._mapping(root, None, allowed=None)
            proxy = top.get("proxy")
            return self._proxy(proxy) if proxy is not None else Config(source=self.filename)
        finally:
            self.close()

    # -- generic shapes

    def _mapping(
        self, node: yaml.Node, dotted: str | None, allowed: tuple[str, ...] | None
    ) -> dict[str, yaml.Node]:
        """A mapping's string keys to value nodes; null is an empty mapping."""
        out: dict[str, yaml.Node] = {}
        if isinstance(node, yaml.ScalarNode) and node.tag == Y + "null":
            return out
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                node, dotted, f"must be a mapping of {', '.join(allowed or ())}, got {kind(node)}"
            )
            return out
        for k, v in node.value:
            if k.tag == MERGE:
                if allowed is not None:
                    self.problem(
                        k, dotted, "merge keys (<<) are not supported here; write the keys out"
                    )
                continue
            if not (isinstance(k, yaml.ScalarNode) and k.tag == Y + "str"):
                if allowed is not None:
                    self.problem(k, dotted, f"keys must be names, got {kind(k)}")
                continue
            name = k.value
            if allowed is not None and name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                self.problem(
                    k,
                    f"{dotted}.{name}" if dotted else name,
                    "unknown key"
                    + (f" (did you mean {hint[0]}?)" if hint else "")
                    + f"; allowed: {', '.join(allowed)}",
                )
                continue
            out.setdefault(name, v)  # duplicates were reported by check_graph
        return out

    def _scalar(self, node: yaml.Node, dotted: str) -> Any:
        """The Python value of a scalar node (safe_load semantics).

        _MISSING for a collection (the caller names what it wanted); _BROKEN, after recording
        the problem, for a scalar its tag cannot construct (``!!int x``).
        """
        if not isinstance(node, yaml.ScalarNode):
            return _MISSING
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError) as exc:
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
            self.problem(node, dotted, f"cannot be read as {kind(node)}: {reason}")
            return _BROKEN

    def _section(
        self, parent: dict[str, yaml.Node], name: str, dotted: str, allowed: tuple[str, ...]
    ) -> tuple[dict[str, yaml.Node], str]:
        node = parent.get(name)
        if node is None:
            return {}, dotted
        return self._mapping(node, dotted, allowed), dotted

    # -- typed values: each returns the default after recording a problem

    def _int(
        self, m: dict[str, yaml.Node], key: str, default: int, lo: int, hi: int, what: str
    ) -> int:
        node = m.get(key)
        if node is None:
            return default
        value = self._scalar(node, self._dotted(key))
        if value is _BROKEN:
            return default
        if type(value) is not int or not lo <= value <= hi:
            got = show(value) if value is not _MISSING else kind(node)
            self.problem(node, self._dotted(key), f"must be {what}, got {got}")
            return default
        return value

    def _float(
        self, m: dict[str, yaml.Node], key: str, default: float, lo: float, hi: float, what: str
    ) -> float:
        node = m.get(key)
        if node is None:
            return default
        value = self._scalar(node, self._dotted(key))
        if value is _BROKEN:
            return default
        if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
            got = show(value) if value is not _MISSING else kind(node)
            if isinstance(value, str) and _is_float(value):
                got += " (text to YAML: write a plain number such as 1000 or 1.0e+3)"
            self.problem(node, self._dotted(key), f"must be {what}, got {got}")
            return default
        return float(value)

    def _choice(
        self, m: dict[str, yaml.Node], key: str, default: _S, choices: tuple[_S, ...]
    ) -> _S:
        node = m.get(key)
        if node is None:
            return default
        value = self._scalar(node, self._dotted(key))
        if value is _BROKEN:
            return default
        for choice in choices:
            if value == choice and isinstance(value, str):
                return choice
        got = show(value) if value is not _MISSING else kind(node)
        self.problem(node, self._dotted(key), f"must be one of {', '.join(choices)}, got {got}")
        return default

    def _ip(self, m: dict[str, yaml.Node], key: str, default: str, *, specific: bool) -> str:
        node = m.get(key)
        if node is None:
            return default
        value = self._scalar(node, self._dotted(key))
        if value is _BROKEN:
            return default
        what = (
            "a specific IP address (it is written into SDP), e.g. 192.0.2.10"
            if specific
            else "an IP address to bind, e.g. 0.0.0.0, 127.0.0.1 or ::"
        )
        try:
            if not isinstance(value, str):
                raise ValueError
            ip = ipaddress.ip_address(value)
        except ValueError:
            got = show(value) if value is not _MISSING else kind(node)
            self.problem(node, self._dotted(key), f"must be {what}, got {got}")
            return default
        if specific and ip.is_unspecified:
            self.problem(node, self._dotted(key), f"must be {what}, got {value!r}")
            return default
        return str(ip)

    def _optional_hostport(
        self,
        m: dict[str, yaml.Node],
        key: str,
        default: HostPort | None,
    ) -> HostPort | None:
        """An IP ``host:port`` to listen on (port 0: any free port), or null: off."""
        node = m.get(key)
        if node is not None and isinstance(node, yaml.ScalarNode) and node.tag == Y + "null":
            return None
        return self._hostport(m, key, default or HostPort("127.0.0.1", 0), names=False, port_lo=0)

    def _hostport(
        self, m: dict[str, yaml.Node], key: str, default: HostPort, *, names: bool, port_lo: int
    ) -> HostPort:
        node = m.get(key)
        if node is None:
            return default
        value = self._scalar(node, self._dotted(key))
        if value is _BROKEN:
            return default
        host_what = "an IP address or a host name" if names else "an IP address"
        what = (
            f"host:port with {host_what} and a port {port_lo}-65535 (IPv6 in brackets: [::1]:5070)"
        )
        hp = _parse_hostport(value, names=names, port_lo=port_lo)
        if hp is None:
            got = show(value) if value is not _MISSING else kind(node)
            self.problem(node, self._dotted(key), f"must be {what}, got {got}")
            return default
        return hp

    def _dotted(self, key: str) -> str:
        return f"{self._prefix}.{key}"

    def _enter(self, dotted: str) -> None:
        self._prefix = dotted

    # -- the proxy section

    def _proxy(self, node: yaml.Node) -> Config:
        top = self._mapping(
            node,
            "proxy",
            ("sip", "media", "upstream", "trunks", "masking", "metrics", "drain_grace_s"),
        )
        d = Config()

        sip_m, p = self._section(
            top, "sip", "proxy.sip", ("listen", "udp_port", "tcp_port", "max_message_size")
        )
        self._enter(p)
        port_what = "a port 0-65535 (0: any free port)"
        sip = SipConfig(
            listen=self._ip(sip_m, "listen", d.sip.listen, specific=False),
            udp_port=self._int(sip_m, "udp_port", d.sip.udp_port, 0, 65535, port_what),
            tcp_port=self._int(sip_m, "tcp_port", d.sip.tcp_port, 0, 65535, port_what),
            max_message_size=self._int(
                sip_m,
                "max_message_size",
                d.sip.max_message_size,
                2048,
                1 << 20,
                "an integer 2048-1048576 (bytes)",
            ),
        )

        media_m, p = self._section(
            top,
            "media",
            "proxy.media",
            ("address", "port_min", "port_max", "timeout_s", "codec_fallback"),
        )
        self._enter(p)
        media = MediaConfig(
            address=self._ip(media_m, "address", d.media.address, specific=True),
            port_min=self._even_port(media_m, "port_min", d.media.port_min),
            port_max=self._even_port(media_m, "port_max", d.media.port_max),
            timeout_s=self._float(
                media_m, "timeout_s", d.media.timeout_s, 1.0, 86400.0, "a number of seconds 1-86400"
            ),
            codec_fallback=self._choice(
                media_m, "codec_fallback", d.media.codec_fallback, ("reject", "rfc4733_only")
            ),
        )
        media = self._check_media_range(media_m, media, d.media)

        up_m, p = self._section(top, "upstream", "proxy.upstream", ("pbx", "transport"))
        self._enter(p)
        upstream = UpstreamConfig(
            pbx=self._hostport(up_m, "pbx", d.upstream.pbx, names=True, port_lo=1),
            transport=self._choice(up_m, "transport", d.upstream.transport, ("udp", "tcp")),
        )

        tr_m, p = self._section(top, "trunks", "proxy.trunks", ("allow",))
        self._enter(p)
        trunks = TrunksConfig(allow=self._networks(tr_m, "allow", d.trunks.allow))

        mk_m, p = self._section(
            top,
            "masking",
            "proxy.masking",
            ("style", "lookahead_ms", "tone_hz", "tone_level_dbm0", "mask"),
        )
        self._enter(p)
        masking = MaskingConfig(
            style=self._choice(mk_m, "style", d.masking.style, ("tone", "silence", "noise")),
            lookahead_ms=self._float(
                mk_m,
                "lookahead_ms",
                d.masking.lookahead_ms,
                MIN_LOOKAHEAD_MS,
                500.0,
                f"a number of ms {MIN_LOOKAHEAD_MS:g}-500 (shorter lets key presses leak)",
            ),
            tone_hz=self._float(
                mk_m, "tone_hz", d.masking.tone_hz, 50.0, 3900.0, "a frequency in Hz 50-3900"
            ),
            tone_level_dbm0=self._float(
                mk_m,
                "tone_level_dbm0",
                d.masking.tone_level_dbm0,
                -60.0,
                3.0,
                "a level in dBm0 from -60 to 3",
            ),
            mask=self._choice(mk_m, "mask", d.masking.mask, ("always", "during_payment")),
        )

        mt_m, p = self._section(top, "metrics", "proxy.metrics", ("listen",))
        self._enter(p)
        metrics = MetricsConfig(listen=self._optional_hostport(mt_m, "listen", d.metrics.listen))

        self._enter("proxy")
        drain = self._float(
            top, "drain_grace_s", d.drain_grace_s, 0.0, 86400.0, "a number of seconds 0-86400"
        )

        cfg = Config(
            sip=sip,
            media=media,
            upstream=upstream,
            trunks=trunks,
            masking=masking,
            metrics=metrics,
            drain_grace_s=drain,
            source=self.filename,
        )
        self._check_clashes(cfg, sip_m, mt_m)
        return cfg

    def _even_port(self, m: dict[str, yaml.Node], key: str, default: int) -> int:
        node = m.get(key)
        value = self._int(m, key, default, 1024, 65534, "an even port 1024-65534")
        if node is not None and value % 2:
            self.problem(node, self._dotted(key), f"must be an even port 1024-65534, got {value}")
            return default
        return value

    def _check_media_range(
        self, m: dict[str, yaml.Node], media: MediaConfig, d: MediaConfig
    ) -> MediaConfig:
        need = PORTS_PER_CALL - 2  # port_max is an RTP port too, its RTCP is port_max + 1
        bad = {"proxy.media.port_min", "proxy.media.port_max"}
        if media.port_max - media.port_min >= need or any(p.key in bad for p in self.problems):
            return media
        node = m.get("port_max") or m.get("port_min")
        self.problem(
            node,
            "proxy.media.port_max",
            f"must be at least port_min + {need} (one call takes {PORTS_PER_CALL} "
            f"ports: caller, agent and provider legs, RTP and RTCP each), got "
            f"port_min {media.port_min}, port_max {media.port_max}",
        )
        return MediaConfig(
            media.address, d.port_min, d.port_max, media.timeout_s, media.codec_fallback
        )

    def _networks(
        self, m: dict[str, yaml.Node], key: str, default: tuple[IPNetwork, ...]
    ) -> tuple[IPNetwork, ...]:
        node = m.get(key)
        if node is None:
            return default
        dotted = self._dotted(key)
        if not isinstance(node, yaml.SequenceNode):
            self.problem(
                node,
                dotted,
                f"must be a list of IP addresses or CIDRs "
                f"(e.g. [192.0.2.10, 198.51.100.0/24]), got {kind(node)}",
            )
            return default
        if not node.value:
            self.problem(
                node,
                dotted,
                "must list at least one IP address or CIDR, got [] (which would refuse every call)",
            )
            return default
        if len(node.value) > MAX_TRUNKS:
            self.problem(node, dotted, f"at most {MAX_TRUNKS} entries, got {len(node.value)}")
            return default
        nets: list[IPNetwork] = []
        ok = True
        for i, item in enumerate(node.value):
            value = self._scalar(item, f"{dotted}[{i}]")
            if value is _BROKEN:
                ok = False
                continue
            try:
                if not isinstance(value, str):
                    raise ValueError("not a string")
                nets.append(ipaddress.ip_network(value, strict=True))
            except ValueError as exc:
                ok = False
                got = show(value) if value is not _MISSING else kind(item)
                hint = ""
                if isinstance(value, str) and "host bits set" in str(exc):
                    hint = f" (host bits set: did you mean {ipaddress.ip_network(value, False)}?)"
                self.problem(
                    item, f"{dotted}[{i}]", f"must be an IP address or CIDR, got {got}{hint}"
                )
        return tuple(nets) if ok else default

    def _check_clashes(
        self, cfg: Config, sip_m: dict[str, yaml.Node], mt_m: dict[str, yaml.Node]
    ) -> None:
        same_host = (
            cfg.sip.listen == cfg.media.address
            or ipaddress.ip_address(cfg.sip.listen).is_unspecified
        )
        lo, hi = cfg.media.port_min, cfg.media.port_max + 1
        if same_host and cfg.sip.udp_port and lo <= cfg.sip.udp_port <= hi:
            self.problem(
                sip_m.get("udp_port"),
                "proxy.sip.udp_port",
                f"must lie outside the media ports {lo}-{hi} on the same address, "
                f"got {cfg.sip.udp_port}",
            )
        listen = cfg.metrics.listen
        if (
            listen is not None
            and listen.port
            and listen.port == cfg.sip.tcp_port
            and (
                listen.host == cfg.sip.listen
                or ipaddress.ip_address(listen.host).is_unspecified
                or ipaddress.ip_address(cfg.sip.listen).is_unspecified
            )
        ):
            self.problem(
                mt_m.get("listen"),
                "proxy.metrics.listen",
                f"must not use proxy.sip.tcp_port {cfg.sip.tcp_port} on the same "
                f"address, got {listen}",
            )


def _parse_hostport(value: object, *, names: bool, port_lo: int) -> HostPort | None:
    if not isinstance(value, str):
        return None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
        try:
            if not isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
                return None
        except ValueError:
            return None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            return None
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not names or not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
                return None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        return None
    port = int(port_text)
    if not port_lo <= port <= 65535:
        return None
    return HostPort(host, port)
