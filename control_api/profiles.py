"""Payment configuration: the ``payments:`` section of ``profiles.yaml``.

One top-level section, ``payments:``, beside the proxy's ``proxy:`` (each reader ignores the
other's section; both refuse non-plain YAML tags and duplicate keys anywhere in the file). It
has three parts, each a mapping from an id (letters, digits, ``-``, ``_``; 1-64) to its
settings; the reference for every key is the comment beside it in ``profiles.yaml``:

- ``accounts``: who uses the API. ``payments`` switches the provisioned feature on or off
  (off: the account's profiles are not offered and sessions are refused), and ``tokens`` are
  its API tokens, each with a ``role`` (``agent`` or ``admin``) and the token given one way:

  * ``env: NAME``: the token is the value of the environment variable ``NAME`` at load time
    (at least 32 characters); it is hashed at once and only the hash is kept;
  * ``sha256: <64 hex digits>``: the SHA-256 of the token (``python -m control_api.profiles
    hash-token`` prints it), so the file holds no secret.

  A plain ``token:`` key is refused: the file never holds a token. Tokens are long random
  strings, so one unsalted SHA-256 is enough (no password-hashing KDF needed); they are
  compared in constant time, and one token may belong to one account and role only.

  ``webhook`` (optional) has payment changes POSTed to the account's server
  (:mod:`control_api.webhooks`): ``url`` (``http``/``https``, no credentials in it),
  ``secret`` given as ``env: NAME`` only (at least 32 characters; the HMAC-SHA256 key of the
  signature), ``timeout_s`` (default 5), ``max_attempts`` (default 6) and ``events``
  (``all``, the default: every change; ``finished``: only the final one).
- ``providers``: payment providers; ``type: sandbox`` is the embedded one (a SIP user agent on
  loopback and a processor deciding by test card numbers, :mod:`control_api.sandbox`).
- ``profiles``: what an agent picks to take a payment: ``account``, ``method`` (``guided`` or
  ``self_service``), ``purpose``, ``destination_account`` (the merchant account at the
  provider), ``provider``, ``currency`` and ``min_amount``/``max_amount`` (written as decimals:
  ``12.50``), ``fields`` (``[card_number, expiry, cvv]``, optionally ``postal_code`` last),
  ``masking`` (what the agent hears per key: ``tone``, ``silence``, ``noise``),
  ``show_last_four``, the timeouts, and ``link_ttl_s`` (self-service).

Self-service payments (SMS link to the hosted page) add two optional sections:

- ``links``: ``base_url``, where customers open ``<base_url>/pay/<token>`` (default
  ``http://<api.listen>``), and ``secret`` as ``env: NAME`` (at least 32 characters), the
  key that signs links. It is required when the file has a self-service profile; only a
  configuration read from no file (tests, the bare default) gets a random key per process,
  whose links die with the process.
- ``sms``: ``sender`` (``outbox``, the default: the SQLite ``sms_outbox`` table; ``http``: a
  gateway), ``text`` (the message, over ``{merchant}``, ``{purpose}``, ``{amount}``,
  ``{currency}``, ``{url}``, ``{expires}``), and ``http`` (``url``, ``auth`` none / bearer /
  basic / header with ``auth_header``, ``secret`` as ``env: NAME``, ``content_type`` json or
  form, ``headers``, ``body``: field name to template over ``{to}``, ``{text}``,
  ``{sender}``, ``sender``, ``timeout_s``, ``retries``).

With no ``payments:`` section the result is :func:`default_payments`: the sandbox provider and
no accounts (no token opens the API). Errors name file, line, column and key, all at once, in
one :class:`sipproxy.config.ConfigError`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal, TypeVar

import yaml

from control_api.events import FieldName
from control_api.sms import HttpSmsConfig
from control_api.yamlnodes import NodeReader, decode_text
from sipproxy.config import HostPort
from sipproxy.yamlreader import kind, read_file, show

__all__ = [
    "DEFAULT_API_LISTEN",
    "DEFAULT_FIELDS",
    "DEFAULT_SMS_TEXT",
    "DEFAULT_STORAGE_PATH",
    "MIN_TOKEN_LENGTH",
    "Account",
    "ApiConfig",
    "ApiToken",
    "LinksConfig",
    "MaskStyle",
    "Method",
    "PaymentProfile",
    "PaymentsConfig",
    "ProviderConfig",
    "Role",
    "SmsConfig",
    "StorageConfig",
    "TokenGrant",
    "WebhookConfig",
    "WebhookEvents",
    "currency_exponent",
    "default_payments",
    "hash_token",
    "load_payments",
    "parse_payments",
]

Role = Literal["agent", "admin"]
Method = Literal["guided", "self_service"]
MaskStyle = Literal["tone", "silence", "noise"]
ProviderType = Literal["sandbox"]
WebhookEvents = Literal["all", "finished"]
_T = TypeVar("_T")
ROLES: Final[tuple[Role, ...]] = ("agent", "admin")
METHODS: Final[tuple[Method, ...]] = ("guided", "self_service")
MASK_STYLES: Final[tuple[MaskStyle, ...]] = ("tone", "silence", "noise")
PROVIDER_TYPES: Final[tuple[ProviderType, ...]] = ("sandbox",)
WEBHOOK_EVENTS: Final[tuple[WebhookEvents, ...]] = ("all", "finished")
_S = TypeVar("_S", bound=str)

MIN_TOKEN_LENGTH: Final = 32
MIN_WEBHOOK_SECRET_LENGTH: Final = 32
MIN_LINK_SECRET_LENGTH: Final = 32
MAX_SMS_TEXT: Final = 640
DEFAULT_SMS_TEXT: Final = (
    "{merchant}: to pay {amount} {currency} ({purpose}) open {url} (valid until {expires})"
)
SMS_TEXT_NAMES: Final = ("merchant", "purpose", "amount", "currency", "url", "expires")
SMS_BODY_NAMES: Final = ("to", "text", "sender")
SmsSenderKind = Literal["outbox", "http"]
SmsAuth = Literal["none", "bearer", "basic", "header"]
SmsContentType = Literal["json", "form"]
SMS_SENDERS: Final[tuple[SmsSenderKind, ...]] = ("outbox", "http")
SMS_AUTHS: Final[tuple[SmsAuth, ...]] = ("none", "bearer", "basic", "header")
SMS_CONTENT_TYPES: Final[tuple[SmsContentType, ...]] = ("json", "form")
MAX_WEBHOOK_ATTEMPTS: Final = 20
MAX_URL_LENGTH: Final = 2048
DEFAULT_FIELDS: Final = (FieldName.CARD_NUMBER, FieldName.EXPIRY, FieldName.CVV)
MAX_LINK_TTL_S: Final = 72 * 3600.0
MAX_AMOUNT: Final = Decimal("1000000000")
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ENV: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")
_CURRENCY: Final = re.compile(r"[A-Z]{3}\Z")
_SIP_URI: Final = re.compile(r"sips?:[^\s@]+@[^\s@]+\Z")
# a dialled number as the request-URI user part carries it; a trailing '*' makes it a prefix
_NUMBER: Final = re.compile(r"[A-Za-z0-9+#._-]{1,64}\*?\Z|\*\Z")
# ISO 4217 currencies whose minor unit is not 2 decimals; every other code has 2.
_EXPONENTS: Final = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
         "VND", "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}  # fmt: skip


def currency_exponent(code: str) -> int:
    """Decimals of ``code``'s minor unit (ISO 4217): JPY 0, KWD 3, most 2."""
    return _EXPONENTS.get(code, 2)


def hash_token(token: str) -> str:
    """The SHA-256 (hex) stored for an API token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One API token: its role and the SHA-256 of its text (never the text)."""

    role: Role
    sha256: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """Who a presented token is."""

    account: str
    role: Role


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where an account's payment changes are POSTed (:mod:`control_api.webhooks`). The
    secret is the HMAC key of the signature; it comes from the environment, never the file."""

    url: str
    secret: str = field(repr=False)
    timeout_s: float = 5.0
    max_attempts: int = 6
    events: WebhookEvents = "all"


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    payments_enabled: bool
    tokens: tuple[ApiToken, ...] = ()
    numbers: tuple[str, ...] = ()
    """Dialled numbers whose calls belong to the account: exact, or a prefix ending in
    ``*`` (``0800*``; ``*`` alone: every call)."""
    webhook: WebhookConfig | None = None

    def number_match(self, called: str) -> int:
        """How well ``called`` matches :attr:`numbers`: -1 none; an exact match beats any
        prefix; a longer prefix beats a shorter one."""
        best = -1
        for n in self.numbers:
            if n.endswith("*"):
                if called.startswith(n[:-1]):
                    best = max(best, len(n) - 1)
            elif n == called:
                return 1 << 16
        return best


DEFAULT_API_LISTEN: Final = HostPort("127.0.0.1", 8080)
DEFAULT_STORAGE_PATH: Final = "dtmfmask.sqlite3"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where the control API listens (``host:port``; port 0: any free port, for tests)."""

    listen: HostPort = DEFAULT_API_LISTEN


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The SQLite file for payment session records and the audit trail. A relative path in a
    file is resolved against that file's directory; ``:memory:`` keeps nothing (tests)."""

    path: str = DEFAULT_STORAGE_PATH


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: ProviderType = "sandbox"
    sip_uri: str = "sip:sandbox@127.0.0.1:5090"
    answer_timeout_s: float = 30.0
    processing_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class PaymentProfile:
    name: str
    account: str
    provider: str
    currency: str
    min_amount: Decimal
    max_amount: Decimal
    method: Method = "guided"
    purpose: str = ""
    destination_account: str = ""
    fields: tuple[FieldName, ...] = DEFAULT_FIELDS
    masking: MaskStyle = "tone"
    show_last_four: bool = True
    hold_timeout_s: float = 300.0
    capture_timeout_s: float = 120.0
    link_ttl_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LinksConfig:
    """``payments.links``: self-service payment links (:mod:`control_api.links`).
    ``secret`` ``None``: a random key per process (allowed only with no file)."""

    base_url: str = ""
    """Where customers open ``<base_url>/pay/<token>``; empty: ``http://<api.listen>``."""
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SmsConfig:
    """``payments.sms``: how payment links are sent (:mod:`control_api.sms`)."""

    sender: SmsSenderKind = "outbox"
    text: str = DEFAULT_SMS_TEXT
    http: HttpSmsConfig | None = None


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """The ``payments:`` section."""

    accounts: Mapping[str, Account]
    providers: Mapping[str, ProviderConfig]
    profiles: Mapping[str, PaymentProfile]
    source: str = "<embedded default>"
    api: ApiConfig = field(default_factory=ApiConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)

    def link_base_url(self) -> str:
        """``links.base_url``, else the control API's own address."""
        if self.links.base_url:
            return self.links.base_url.rstrip("/")
        host, port = self.api.listen.host, self.api.listen.port
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def account_for_number(self, called: str) -> str | None:
        """The account a call to ``called`` belongs to (best match of the accounts'
        ``numbers``), or ``None``: then no token sees the call."""
        best: tuple[int, str] | None = None
        for account in self.accounts.values():
            score = account.number_match(called)
            if score >= 0 and (best is None or score > best[0]):
                best = (score, account.id)
        return None if best is None else best[1]

    def authenticate(self, token: str) -> TokenGrant | None:
        """The account and role of ``token``, or ``None``; constant time per stored token."""
        digest = hash_token(token)
        found: TokenGrant | None = None
        for account in self.accounts.values():
            for t in account.tokens:
                if hmac.compare_digest(digest, t.sha256):
                    found = TokenGrant(account.id, t.role)
        return found

    def profiles_for(self, account: str) -> tuple[PaymentProfile, ...]:
        """The profiles ``account`` may use; none when its payments feature is off."""
        acct = self.accounts.get(account)
        if acct is None or not acct.payments_enabled:
            return ()
        return tuple(p for p in self.profiles.values() if p.account == account)


def default_payments() -> PaymentsConfig:
    """No ``payments:`` section: the embedded sandbox provider, no accounts, no profiles."""
    return PaymentsConfig({}, {"sandbox": ProviderConfig("sandbox")}, {})


# ---------------------------------------------------------------------------- entry points


def load_payments(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> PaymentsConfig:
    """Read ``path`` (``None``: the embedded default) and validate its ``payments:`` section.
    ``env`` (default ``os.environ``) supplies ``env:`` tokens. Raises ``ConfigError``."""
    if path is None:
        return default_payments()
    cfg = parse_payments(read_file(path), filename=str(path), env=env, from_file=True)
    store = cfg.storage.path
    if store != ":memory:" and not Path(store).is_absolute():
        resolved = str(Path(path).resolve().parent / store)
        cfg = replace(cfg, storage=StorageConfig(resolved))
    return cfg


def parse_payments(
    text: str | bytes,
    *,
    filename: str = "<string>",
    env: Mapping[str, str] | None = None,
    from_file: bool = False,
) -> PaymentsConfig:
    """Validate the ``payments:`` section of YAML ``text``; errors name ``filename``.
    ``from_file``: the text is a configuration file (then self-service profiles need
    ``links.secret``)."""
    reader = _Reader(NodeReader(filename, decode_text(text, filename)), env or os.environ)
    reader.from_file = from_file
    return reader.read()


# ------------------------------------------------------------------------------- reading

_ACCOUNT_KEYS: Final = ("name", "payments", "tokens", "numbers", "webhook")
_WEBHOOK_KEYS: Final = ("url", "secret", "timeout_s", "max_attempts", "events")
_TOKEN_KEYS: Final = ("role", "env", "sha256", "token")
_PROVIDER_KEYS: Final = ("type", "sip_uri", "answer_timeout_s", "processing_timeout_s")
_PROFILE_KEYS: Final = (
    "account",
    "method",
    "purpose",
    "destination_account",
    "provider",
    "currency",
    "min_amount",
    "max_amount",
    "fields",
    "masking",
    "show_last_four",
    "hold_timeout_s",
    "capture_timeout_s",
    "link_ttl_s",
)


class _Reader:
    def __init__(self, nodes: NodeReader, env: Mapping[str, str]) -> None:
        self.r = nodes
        self.env = env
        self.from_file = False

    def read(self) -> PaymentsConfig:
        r = self.r
        try:
            node = r.section("payments")
            r.raise_problems()
            if node is None:
                return PaymentsConfig({}, default_payments().providers, {}, source=r.filename)
            top = (
                r.mapping(
                    node,
                    "payments",
                    ("accounts", "providers", "profiles", "api", "storage", "links", "sms"),
                )
                or {}
            )
            accounts = self._ids(top.get("accounts"), "payments.accounts", self._account)
            providers = self._ids(top.get("providers"), "payments.providers", self._provider)
            if top.get("providers") is None:
                providers = dict(default_payments().providers)
            profiles = self._ids(
                top.get("profiles"),
                "payments.profiles",
                lambda n, d, name: self._profile(n, d, name, accounts, providers),
            )
            self._check_tokens(top.get("accounts"), accounts)
            self._check_numbers(top.get("accounts"), accounts)
            api = self._api(top.get("api"))
            storage = self._storage(top.get("storage"))
            links = self._links(top.get("links"), profiles, node)
            sms = self._sms(top.get("sms"))
            r.raise_problems()
            return PaymentsConfig(
                accounts,
                providers,
                profiles,
                source=r.filename,
                api=api,
                storage=storage,
                links=links,
                sms=sms,
            )
        finally:
            r.close()

    def _ids(
        self,
        node: yaml.Node | None,
        dotted: str,
        one: Callable[[yaml.Node, str, str], _T | None],
    ) -> dict[str, _T]:
        if node is None:
            return {}
        m = self.r.mapping(node, dotted, None)
        out: dict[str, _T] = {}
        for name, value in (m or {}).items():
            sub = f"{dotted}.{name}"
            if not _ID.match(name):
                self.r.problem(value, sub, "ids are 1-64 letters, digits, '-' or '_'")
                continue
            item = one(value, sub, name)
            if item is not None:
                out[name] = item
        return out

    # -- accounts

    def _account(self, node: yaml.Node, dotted: str, name: str) -> Account | None:
        r = self.r
        m = r.mapping(node, dotted, _ACCOUNT_KEYS, required=("payments",))
        if m is None:
            return None
        display = name
        if "name" in m:
            display = r.string(m["name"], f"{dotted}.name", "a display name (1-200 chars)") or name
        enabled = r.boolean(m["payments"], f"{dotted}.payments") if "payments" in m else None
        tokens: list[ApiToken] = []
        if "tokens" in m:
            items = r.sequence(m["tokens"], f"{dotted}.tokens", "tokens ({role, env|sha256})")
            for i, item in enumerate(items or ()):
                token = self._token(item, f"{dotted}.tokens[{i}]")
                if token is not None:
                    tokens.append(token)
        numbers: list[str] = []
        if "numbers" in m:
            what = "dialled numbers (exact, or a prefix ending in *)"
            items = r.sequence(m["numbers"], f"{dotted}.numbers", what)
            for i, item in enumerate(items or ()):
                sub = f"{dotted}.numbers[{i}]"
                ok, value = r.scalar(item, sub)
                text = str(value) if ok and isinstance(value, str | int) else None
                if isinstance(value, bool) or text is None or not _NUMBER.match(text):
                    r.problem(
                        item,
                        sub,
                        "must be a dialled number (letters, digits, + # . _ -; up to 64) or a "
                        "prefix ending in *, written in quotes: '0800*'",
                    )
                elif isinstance(value, int):
                    r.problem(
                        item,
                        sub,
                        f"write numbers in quotes ('{text}'): YAML reads "
                        "a bare number as an integer and drops leading zeros or +",
                    )
                elif text in numbers:
                    r.problem(item, sub, f"{text!r} is listed twice")
                else:
                    numbers.append(text)
        webhook = self._webhook(m["webhook"], f"{dotted}.webhook") if "webhook" in m else None
        return Account(name, display, bool(enabled), tuple(tokens), tuple(numbers), webhook)

    def _webhook(self, node: yaml.Node, dotted: str) -> WebhookConfig | None:
        r = self.r
        m = r.mapping(node, dotted, _WEBHOOK_KEYS, required=("url", "secret"))
        if m is None:
            return None
        url: str | None = None
        if "url" in m:
            what = "an http:// or https:// URL"
            url = r.string(m["url"], f"{dotted}.url", what, max_len=MAX_URL_LENGTH)
            problem = _url_problem(url) if url is not None else None
            if problem is not None:
                r.problem(m["url"], f"{dotted}.url", f"{problem}, got {url!r}")
                url = None
        secret = (
            self._env_secret(m["secret"], f"{dotted}.secret", MIN_WEBHOOK_SECRET_LENGTH)
            if "secret" in m
            else None
        )
        d = WebhookConfig("", "")
        timeout = self._seconds(m, dotted, "timeout_s", d.timeout_s, 0.5, 60)
        attempts = d.max_attempts
        if "max_attempts" in m:
            sub = f"{dotted}.max_attempts"
            ok, value = r.scalar(m["max_attempts"], sub)
            if ok and type(value) is int and 1 <= value <= MAX_WEBHOOK_ATTEMPTS:
                attempts = value
            else:
                got = show(value) if ok else kind(m["max_attempts"])
                r.problem(
                    m["max_attempts"],
                    sub,
                    f"must be a whole number 1-{MAX_WEBHOOK_ATTEMPTS}, got {got}",
                )
        events = self._opt_choice(m, dotted, "events", WEBHOOK_EVENTS, d.events)
        if url is None or secret is None:
            return None
        return WebhookConfig(url, secret, timeout, attempts, events)

    def _env_secret(self, node: yaml.Node, dotted: str, min_len: int) -> str | None:
        """A secret given as ``{env: NAME}`` (never in the file), at least ``min_len``."""
        r = self.r
        if not isinstance(node, yaml.MappingNode):
            r.problem(
                node,
                dotted,
                "secrets are never written in this file: give {env: VARIABLE} (the secret in "
                "an environment variable)",
            )
            return None
        m = r.mapping(node, dotted, ("env",), required=("env",))
        if m is None or "env" not in m:
            return None
        return self._env_value(m["env"], f"{dotted}.env", "secret", min_len)

    def _env_value(self, node: yaml.Node, dotted: str, what: str, min_len: int) -> str | None:
        """The value of the environment variable named at ``node`` (the ``env:`` of a secret
        or token), at least ``min_len`` characters; ``what`` names it in the problems."""
        r = self.r
        var = r.string(node, dotted, "an environment variable name")
        if var is None:
            return None
        if not _ENV.match(var):
            r.problem(node, dotted, f"not a variable name: {var!r}")
            return None
        value = self.env.get(var)
        if value is None:
            r.problem(node, dotted, f"environment variable {var} is not set")
            return None
        if len(value) < min_len:
            r.problem(
                node,
                dotted,
                f"the {what} in {var} is too short (at least {min_len} characters: use a "
                "random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
            return None
        return value

    def _token(self, node: yaml.Node, dotted: str) -> ApiToken | None:
        r = self.r
        m = r.mapping(node, dotted, _TOKEN_KEYS, required=("role",))
        if m is None:
            return None
        if "token" in m:
            r.problem(
                m["token"],
                f"{dotted}.token",
                "tokens are never written in this file: give env: VARIABLE (the token in an "
                "environment variable) or sha256: <hex> (python -m control_api.profiles "
                "hash-token)",
            )
            return None
        role = r.choice(m["role"], f"{dotted}.role", ROLES) if "role" in m else None
        given = [k for k in ("env", "sha256") if k in m]
        if len(given) != 1:
            r.problem(node, dotted, "give exactly one of env: or sha256:")
            return None
        digest: str | None = None
        if given[0] == "env":
            value = self._env_value(m["env"], f"{dotted}.env", "token", MIN_TOKEN_LENGTH)
            if value is not None:
                digest = hash_token(value)
        else:
            text = r.string(m["sha256"], f"{dotted}.sha256", "64 lowercase hex digits")
            if text is not None and not _HEX64.match(text):
                r.problem(
                    m["sha256"],
                    f"{dotted}.sha256",
                    "must be 64 lowercase hex digits (the SHA-256 of the token)",
                )
            elif text is not None:
                digest = text
        if role is None or digest is None:
            return None
        return ApiToken(role, digest)

    def _check_tokens(self, node: yaml.Node | None, accounts: Mapping[str, Account]) -> None:
        seen: dict[str, str] = {}
        for account in accounts.values():
            for token in account.tokens:
                if token.sha256 in seen:
                    self.r.problem(
                        node,
                        f"payments.accounts.{account.id}.tokens",
                        f"the same token is also given for account {seen[token.sha256]}: "
                        "each token opens one account with one role",
                    )
                else:
                    seen[token.sha256] = account.id

    def _check_numbers(self, node: yaml.Node | None, accounts: Mapping[str, Account]) -> None:
        seen: dict[str, str] = {}
        for account in accounts.values():
            for number in account.numbers:
                if number in seen:
                    self.r.problem(
                        node,
                        f"payments.accounts.{account.id}.numbers",
                        f"{number!r} also belongs to account {seen[number]}: a call belongs "
                        "to one account",
                    )
                else:
                    seen[number] = account.id

    # -- api and storage

    def _api(self, node: yaml.Node | None) -> ApiConfig:
        if node is None:
            return ApiConfig()
        r = self.r
        m = r.mapping(node, "payments.api", ("listen",)) or {}
        if "listen" not in m:
            return ApiConfig()
        what = "an IP host:port to listen on, e.g. 127.0.0.1:8080 or [::1]:8080"
        ok, value = r.scalar(m["listen"], "payments.api.listen")
        listen = _host_port(value) if ok and isinstance(value, str) else None
        if listen is None:
            r.problem(m["listen"], "payments.api.listen", f"must be {what}, got {value!r}")
            return ApiConfig()
        return ApiConfig(listen)

    def _storage(self, node: yaml.Node | None) -> StorageConfig:
        if node is None:
            return StorageConfig()
        r = self.r
        m = r.mapping(node, "payments.storage", ("path",)) or {}
        if "path" not in m:
            return StorageConfig()
        path = r.string(
            m["path"], "payments.storage.path", "a file path (or :memory:)", max_len=4096
        )
        if path is None:
            return StorageConfig()
        if "\0" in path or path.endswith(("/", "\\")):
            r.problem(m["path"], "payments.storage.path", "must name a file, not a directory")
            return StorageConfig()
        return StorageConfig(path)

    # -- links and sms (self-service)

    def _links(
        self,
        node: yaml.Node | None,
        profiles: Mapping[str, PaymentProfile],
        top: yaml.Node,
    ) -> LinksConfig:
        r = self.r
        m = (r.mapping(node, "payments.links", ("base_url", "secret")) or {}) if node else {}
        base = ""
        if "base_url" in m:
            sub = "payments.links.base_url"
            got = r.string(m["base_url"], sub, "an http(s) URL", max_len=MAX_URL_LENGTH)
            problem = _url_problem(got) if got is not None else None
            if got is not None and problem is None and urllib.parse.urlsplit(got).query:
                problem = "must not have a ?query"
            if problem is not None:
                r.problem(m["base_url"], sub, f"{problem}, got {got!r}")
            elif got is not None:
                base = got.rstrip("/")
        secret = None
        if "secret" in m:
            secret = self._env_secret(m["secret"], "payments.links.secret", MIN_LINK_SECRET_LENGTH)
        elif self.from_file and any(p.method == "self_service" for p in profiles.values()):
            r.problem(
                node if node is not None else top,
                "payments.links.secret",
                "self-service profiles need a key to sign payment links: give links: {secret: "
                "{env: VARIABLE}} (at least 32 characters)",
            )
        return LinksConfig(base, secret)

    def _sms(self, node: yaml.Node | None) -> SmsConfig:
        if node is None:
            return SmsConfig()
        r = self.r
        m = r.mapping(node, "payments.sms", ("sender", "text", "http")) or {}
        sender = self._opt_choice(m, "payments.sms", "sender", SMS_SENDERS, "outbox")
        text = DEFAULT_SMS_TEXT
        if "text" in m:
            got = r.string(m["text"], "payments.sms.text", "the message", max_len=MAX_SMS_TEXT)
            if got is not None and self._template(
                m["text"], "payments.sms.text", got, SMS_TEXT_NAMES
            ):
                if "{url}" not in got:
                    r.problem(m["text"], "payments.sms.text", "must hold {url}: the link")
                else:
                    text = got
        http = self._sms_http(m["http"]) if "http" in m else None
        if sender == "http" and http is None and "http" not in m:
            r.problem(node, "payments.sms.http", "sender: http needs an http: section")
        return SmsConfig(sender, text, http)

    def _template(self, node: yaml.Node, dotted: str, text: str, names: tuple[str, ...]) -> bool:
        unknown = [
            n for n in re.findall(r"\{([^{}]*)\}", text.replace("{{", "").replace("}}", ""))
            if n not in names
        ]  # fmt: skip
        if unknown:
            self.r.problem(
                node,
                dotted,
                f"unknown placeholder {{{unknown[0]}}} (known: "
                + ", ".join(f"{{{n}}}" for n in names)
                + "; write {{ and }} for braces)",
            )
            return False
        return True

    def _sms_http(self, node: yaml.Node) -> HttpSmsConfig | None:
        r = self.r
        d = "payments.sms.http"
        keys = (
            "url", "auth", "auth_header", "secret", "content_type", "headers", "body", "sender",
            "timeout_s", "retries",
        )  # fmt: skip
        m = r.mapping(node, d, keys, required=("url", "body"))
        if m is None:
            return None
        url = None
        if "url" in m:
            url = r.string(m["url"], f"{d}.url", "an http(s) URL", max_len=MAX_URL_LENGTH)
            problem = _url_problem(url) if url is not None else None
            if problem is not None:
                r.problem(m["url"], f"{d}.url", f"{problem}, got {url!r}")
                url = None
        auth = self._opt_choice(m, d, "auth", SMS_AUTHS, "none")
        header = "X-Api-Key"
        if "auth_header" in m:
            got = r.string(m["auth_header"], f"{d}.auth_header", "an HTTP header name")
            if got is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", got):
                r.problem(m["auth_header"], f"{d}.auth_header", f"not a header name: {got!r}")
            elif got is not None:
                header = got
        secret = ""
        if "secret" in m:
            secret = self._env_secret(m["secret"], f"{d}.secret", 1) or ""
        elif auth != "none":
            r.problem(node, f"{d}.secret", f"auth: {auth} needs secret: {{env: VARIABLE}}")
        content = self._opt_choice(m, d, "content_type", SMS_CONTENT_TYPES, "json")
        headers = self._str_map(m.get("headers"), f"{d}.headers", None)
        body = self._str_map(m.get("body"), f"{d}.body", SMS_BODY_NAMES)
        if "body" in m and body is not None and not body:
            r.problem(m["body"], f"{d}.body", "must name at least one field")
        sender = self._opt_text(m, d, "sender", "the sender name or number the SMS shows")
        timeout = self._seconds(m, d, "timeout_s", 5.0, 0.5, 60)
        retries = 2
        if "retries" in m:
            ok, value = r.scalar(m["retries"], f"{d}.retries")
            if ok and type(value) is int and 0 <= value <= 10:
                retries = value
            else:
                got_text = show(value) if ok else kind(m["retries"])
                r.problem(
                    m["retries"], f"{d}.retries", f"must be a whole number 0-10, got {got_text}"
                )
        if url is None or body is None or headers is None:
            return None
        return HttpSmsConfig(
            url=url,
            body=body,
            secret=secret,
            auth=auth,
            auth_header=header,
            content_type=content,
            headers=headers,
            sender=sender,
            timeout_s=timeout,
            retries=retries,
        )

    def _str_map(
        self, node: yaml.Node | None, dotted: str, names: tuple[str, ...] | None
    ) -> dict[str, str] | None:
        """A mapping of names to strings (templates over ``names`` when given)."""
        if node is None:
            return {}
        m = self.r.mapping(node, dotted, None)
        if m is None:
            return None
        out: dict[str, str] = {}
        for key, value in m.items():
            got = self.r.string(value, f"{dotted}.{key}", "a string", max_len=MAX_SMS_TEXT)
            if got is None:
                return None
            if names is not None and not self._template(value, f"{dotted}.{key}", got, names):
                return None
            if names is None and any(c in got for c in "\r\n"):
                self.r.problem(value, f"{dotted}.{key}", "a header value is one line")
                return None
            out[key] = got
        return out

    # -- providers

    def _provider(self, node: yaml.Node, dotted: str, name: str) -> ProviderConfig | None:
        r = self.r
        m = r.mapping(node, dotted, _PROVIDER_KEYS, required=("type",))
        if m is None:
            return None
        d = ProviderConfig(name)
        ptype = r.choice(m["type"], f"{dotted}.type", PROVIDER_TYPES) if "type" in m else None
        uri = d.sip_uri
        if "sip_uri" in m:
            got = r.string(m["sip_uri"], f"{dotted}.sip_uri", "a SIP URI (sip:user@host:port)")
            if got is not None and not _SIP_URI.match(got):
                r.problem(
                    m["sip_uri"],
                    f"{dotted}.sip_uri",
                    f"must be a SIP URI such as sip:pay@192.0.2.5:5060, got {got!r}",
                )
            elif got is not None:
                uri = got
        answer = self._seconds(m, dotted, "answer_timeout_s", d.answer_timeout_s, 1, 300)
        processing = self._seconds(
            m, dotted, "processing_timeout_s", d.processing_timeout_s, 1, 600
        )
        if ptype is None:
            return None
        return ProviderConfig(name, ptype, uri, answer, processing)

    def _seconds(
        self,
        m: dict[str, yaml.Node],
        dotted: str,
        key: str,
        default: float,
        lo: float,
        hi: float,
    ) -> float:
        if key not in m:
            return default
        got = self.r.number(m[key], f"{dotted}.{key}", lo, hi, f"a number of seconds {lo:g}-{hi:g}")
        return default if got is None else got

    # -- profiles

    def _profile(
        self,
        node: yaml.Node,
        dotted: str,
        name: str,
        accounts: Mapping[str, Account],
        providers: Mapping[str, ProviderConfig],
    ) -> PaymentProfile | None:
        r = self.r
        required = ("account", "provider", "currency", "min_amount", "max_amount")
        m = r.mapping(node, dotted, _PROFILE_KEYS, required=required)
        if m is None:
            return None
        ok = all(k in m for k in required)
        account = self._ref(m, dotted, "account", accounts, "payments.accounts")
        provider = self._ref(m, dotted, "provider", providers, "payments.providers")
        method = self._opt_choice(m, dotted, "method", METHODS, "guided")
        purpose = self._opt_text(m, dotted, "purpose", "a short description (1-200 chars)")
        dest = self._opt_text(m, dotted, "destination_account", "a merchant account id")
        currency = None
        if "currency" in m:
            currency = r.string(m["currency"], f"{dotted}.currency", "an ISO 4217 code like GBP")
            if currency is not None and not _CURRENCY.match(currency):
                r.problem(
                    m["currency"],
                    f"{dotted}.currency",
                    f"must be an ISO 4217 code in capitals such as GBP, got {currency!r}",
                )
                currency = None
        places = currency_exponent(currency or "")
        lo = self._amount(m, dotted, "min_amount", places)
        hi = self._amount(m, dotted, "max_amount", places)
        if lo is not None and hi is not None and lo > hi:
            r.problem(
                m["max_amount"], f"{dotted}.max_amount", f"must be at least min_amount ({lo})"
            )
            hi = None
        fields = self._fields(m, dotted)
        masking = self._opt_choice(m, dotted, "masking", MASK_STYLES, "tone")
        show = True
        if "show_last_four" in m:
            got = r.boolean(m["show_last_four"], f"{dotted}.show_last_four")
            show = True if got is None else got
        d = PaymentProfile(name, "", "", "", Decimal(0), Decimal(0))
        hold = self._seconds(m, dotted, "hold_timeout_s", d.hold_timeout_s, 10, 3600)
        capture = self._seconds(m, dotted, "capture_timeout_s", d.capture_timeout_s, 10, 3600)
        ttl = self._seconds(m, dotted, "link_ttl_s", d.link_ttl_s, 300, MAX_LINK_TTL_S)
        if "link_ttl_s" in m and method != "self_service":
            r.problem(m["link_ttl_s"], f"{dotted}.link_ttl_s", "only for method: self_service")
        if (
            not ok
            or account is None
            or provider is None
            or currency is None
            or lo is None
            or hi is None
            or fields is None
        ):
            return None
        return PaymentProfile(
            name=name,
            account=account,
            provider=provider,
            currency=currency,
            min_amount=lo,
            max_amount=hi,
            method=method,
            purpose=purpose,
            destination_account=dest,
            fields=fields,
            masking=masking,
            show_last_four=show,
            hold_timeout_s=hold,
            capture_timeout_s=capture,
            link_ttl_s=ttl,
        )

    def _ref(
        self,
        m: dict[str, yaml.Node],
        dotted: str,
        key: str,
        known: Mapping[str, object],
        where: str,
    ) -> str | None:
        if key not in m:
            return None
        got = self.r.string(m[key], f"{dotted}.{key}", f"an id from {where}")
        if got is not None and got not in known:
            names = ", ".join(sorted(known)) or "none defined"
            self.r.problem(
                m[key], f"{dotted}.{key}", f"unknown {key} {got!r} (in {where}: {names})"
            )
            return None
        return got

    def _opt_choice(
        self,
        m: dict[str, yaml.Node],
        dotted: str,
        key: str,
        choices: tuple[_S, ...],
        default: _S,
    ) -> _S:
        if key not in m:
            return default
        got = self.r.choice(m[key], f"{dotted}.{key}", choices)
        return default if got is None else got

    def _opt_text(self, m: dict[str, yaml.Node], dotted: str, key: str, what: str) -> str:
        if key not in m:
            return ""
        return self.r.string(m[key], f"{dotted}.{key}", what) or ""

    def _amount(
        self, m: dict[str, yaml.Node], dotted: str, key: str, places: int
    ) -> Decimal | None:
        if key not in m:
            return None
        what = f"an amount above 0, at most {places} decimals"
        got = self.r.decimal(m[key], f"{dotted}.{key}", what)
        if got is None:
            return None
        exponent = got.as_tuple().exponent
        if (
            got <= 0
            or got > MAX_AMOUNT
            or (
                isinstance(exponent, int)
                and -exponent > places
                and got != got.quantize(Decimal(1).scaleb(-places))
            )
        ):
            self.r.problem(m[key], f"{dotted}.{key}", f"must be {what}, got {got}")
            return None
        return got

    def _fields(self, m: dict[str, yaml.Node], dotted: str) -> tuple[FieldName, ...] | None:
        if "fields" not in m:
            return DEFAULT_FIELDS
        sub = f"{dotted}.fields"
        what = "card_number, expiry, cvv, and optionally postal_code, in that order"
        items = self.r.sequence(m["fields"], sub, what)
        if items is None:
            return None
        names: list[str] = []
        for i, item in enumerate(items):
            ok, value = self.r.scalar(item, f"{sub}[{i}]")
            if not ok or not isinstance(value, str) or value not in set(FieldName):
                self.r.problem(
                    item,
                    f"{sub}[{i}]",
                    f"must be one of {', '.join(FieldName)}, got {value!r}"
                    if ok
                    else f"must be a field name, got a {type(value).__name__}",
                )
                return None
            names.append(value)
        allowed = (
            [f.value for f in DEFAULT_FIELDS],
            [*(f.value for f in DEFAULT_FIELDS), FieldName.POSTAL_CODE.value],
        )
        if names not in allowed:
            self.r.problem(m["fields"], sub, f"must be {what}, got [{', '.join(names)}]")
            return None
        return tuple(FieldName(n) for n in names)


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot take webhooks, or ``None`` when it can."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must be a URL without spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:
        return "must be an http:// or https:// URL with a valid host and port"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host (http://host:port/path)"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (user:password@): the signature authenticates"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "must not use port 0"
    return None


def _host_port(text: str) -> HostPort | None:
    """``ip:port`` or ``[ipv6]:port`` (port 0-65535), else ``None``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if text.startswith("[") != isinstance(ip, ipaddress.IPv6Address):
        return None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    port = int(port_text)
    return HostPort(host, port) if port <= 65535 else None


def main(argv: list[str] | None = None) -> int:
    """``python -m control_api.profiles hash-token``: read a token on stdin, print its hash."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash-token"]:
        print("usage: python -m control_api.profiles hash-token < token.txt", file=sys.stderr)
        return 2
    token = sys.stdin.readline().rstrip("\r\n")
    if len(token) < MIN_TOKEN_LENGTH:
        print(f"token too short (at least {MIN_TOKEN_LENGTH} characters)", file=sys.stderr)
        return 1
    print(f"sha256: {hash_token(token)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
