"""Payment session records and the audit trail, in one SQLite file (the embedded default).

Stdlib :mod:`sqlite3`, WAL journal (readers never block the writer), ``synchronous=NORMAL``
(a power cut may lose the last rows, never corrupt the file), autocommit: every write is one
statement, small and quick enough to run on the event loop (a few tens of µs).

Four tables:

- ``sessions``: one row per payment session, rewritten when its version changes: ids,
  account, profile, state, result, error, provider reference, amount, currency, the last four
  digits of the card only if the agent was shown them, times, version, the create request's
  idempotency key, and the agent's view as JSON (asterisks and states; billing details are
  not kept). A live self-service session also keeps ``resume``: what it needs to go on after
  a restart (its profile as it started, amount, billing, the phone number, the link's
  expiry), cleared when it finishes.
- ``audit``: who (role and account, or ``system``) did what (``action``) to which session or
  call, when, with a JSON ``detail`` of states, counts and codes.
- ``links``: self-service payment links (:mod:`control_api.links`): the SHA-256 of the
  link's random id (never the link), its session, expiry, and when it was used or revoked.
- ``sms_outbox``: messages the embedded SMS sender "sent" (:class:`control_api.sms.
  OutboxSender`): ``id, to, body, created, state``; the demo and the tests read it.

**Never card digits** (DESIGN.md invariant 3): nothing written here comes from a card field
except states, digit counts, brand and the last four shown to the agent; as a last guard any
run of 12 or more digits in a written string is replaced before it reaches the file.

**Restart**: opening the file marks every session that was still live (not ``finished``) as
``finished``/``interrupted``/``process_restart`` (the session's ``Restarted`` input: the
process that held its call is gone), audits it, and lists it in :attr:`Storage.recovered`.
Self-service sessions are the exception: they do not need the call, so one waiting for the
customer stays live (:meth:`Storage.live_self_service`; the payment service resumes it) and
only one caught ``processing`` (the provider's answer is lost) ends ``interrupted``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from control_api.events import ErrorCode, FieldName, Result, SessionState
from control_api.session import SessionView

__all__ = ["AuditEntry", "LinkRow", "OutboxRow", "SessionRecord", "Storage"]

SCHEMA_VERSION: Final = 2
REDACTED: Final = "[REDACTED]"
_LONG_DIGITS: Final = re.compile(r"\d(?:[ \t-]{0,3}\d){11,}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    account TEXT NOT NULL,
    profile TEXT NOT NULL,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    error TEXT,
    reference TEXT,
    amount TEXT,
    currency TEXT NOT NULL,
    last4 TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL,
    idempotency_key TEXT,
    view TEXT NOT NULL,
    resume TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_idempotency
    ON sessions (account, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_call ON sessions (call_id);
CREATE INDEX IF NOT EXISTS sessions_live ON sessions (state) WHERE state != 'finished';
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor_role TEXT NOT NULL,
    actor_account TEXT,
    session_id TEXT,
    call_id TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id);
CREATE TABLE IF NOT EXISTS links (
    id_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    used_at REAL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS links_session ON links (session_id);
CREATE TABLE IF NOT EXISTS sms_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "to" TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
);
"""
RESUMABLE_STATES: Final = frozenset({"created", "link_sent", "sms_failed", "customer_active"})
"""Self-service states that outlive the process (not ``processing``: its answer is lost)."""


def _scrub(value: Any) -> Any:
    """The last guard: long digit runs out of any string about to be written."""
    if isinstance(value, str):
        return _LONG_DIGITS.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A payment session as stored (and as served once it is no longer in memory)."""

    id: str
    call_id: str
    account: str
    profile: str
    method: str
    state: str
    result: str | None
    error: str | None
    reference: str | None
    amount: str | None
    currency: str
    last4: str | None
    created_at: float
    updated_at: float
    version: int
    view: dict[str, Any] = field(repr=False)
    idempotency_key: str | None = None
    resume: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_view(
        cls,
        view: SessionView,
        *,
        account: str,
        created_at: float,
        updated_at: float,
        idempotency_key: str | None = None,
        resume: dict[str, Any] | None = None,
    ) -> SessionRecord:
        data = view.to_dict()
        data["billing"] = None  # personal data the record does not need
        last4 = None
        for f in view.fields:
            if f.name is FieldName.CARD_NUMBER and f.masked[-4:].isdigit():
                last4 = f.masked[-4:]  # shown to the agent, so it may be kept
        return cls(
            id=view.id,
            call_id=view.call_id,
            account=account,
            profile=view.profile,
            method=view.method,
            state=view.state.value,
            result=view.result.value if view.result else None,
            error=view.error.value if view.error else None,
            reference=view.reference,
            amount=str(view.amount) if view.amount is not None else None,
            currency=view.currency,
            last4=last4,
            created_at=created_at,
            updated_at=updated_at,
            version=view.version,
            view=data,
            idempotency_key=idempotency_key,
            resume=resume,
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row. ``actor_role`` is ``agent``, ``admin`` or ``system``."""

    ts: float
    actor_role: str
    actor_account: str | None
    session_id: str | None
    call_id: str | None
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LinkRow:
    """A payment link as stored: the hash of its random id, never the link itself."""

    id_hash: str
    session_id: str
    expires_at: float
    created_at: float
    used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message of the embedded SMS outbox."""

    id: int
    to: str
    body: str
    created: float
    state: str


_COLUMNS: Final = (
    "id, call_id, account, profile, method, state, result, error, reference, amount, "
    "currency, last4, created_at, updated_at, version, idempotency_key, view, resume"
)
_LINK_COLUMNS: Final = "id_hash, session_id, expires_at, created_at, used_at, revoked_at"


def _record(row: tuple[Any, ...]) -> SessionRecord:
    (sid, call_id, account, profile, method, state, result, error, reference, amount,
     currency, last4, created, updated, version, key, view, resume) = row  # fmt: skip
    return SessionRecord(
        id=sid,
        call_id=call_id,
        account=account,
        profile=profile,
        method=method,
        state=state,
        result=result,
        error=error,
        reference=reference,
        amount=amount,
        currency=currency,
        last4=last4,
        created_at=created,
        updated_at=updated,
        version=version,
        view=json.loads(view),
        idempotency_key=key,
        resume=json.loads(resume) if resume else None,
    )


# ----------------------------------------------------------------------------- storage


class Storage:
    """The SQLite file (``":memory:"`` for tests). Open it once at start."""

    def __init__(self, path: str | Path, *, now: float) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 2000")
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.recovered: tuple[str, ...] = self._recover(now)

    def __repr__(self) -> str:
        return f"Storage({self.path!r})"

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """A version 1 file (guided payments only) gains the ``resume`` column."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(sessions)")}
        if "resume" not in columns:
            self._db.execute("ALTER TABLE sessions ADD COLUMN resume TEXT")

    def ping(self) -> bool:
        """Whether the file answers (``/readyz``)."""
        try:
            self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # -- sessions

    def insert_session(self, rec: SessionRecord) -> None:
        """Raises :class:`sqlite3.IntegrityError` if the account already used the key."""
        self._db.execute(
            f"INSERT INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            self._values(rec),
        )

    def update_session(self, rec: SessionRecord) -> None:
        """Rewrite a session's row (its idempotency key and creation time stay)."""
        values = self._values(rec)
        self._db.execute(
            "UPDATE sessions SET state=?, result=?, error=?, reference=?, amount=?, "
            "currency=?, last4=?, updated_at=?, version=?, view=?, resume=? WHERE id=?",
            (*values[5:12], *values[13:15], values[16], values[17], rec.id),
        )

    def session(self, session_id: str) -> SessionRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id=?", (session_id,)
        ).fetchone()
        return None if row is None else _record(row)

    def session_by_key(self, account: str, key: str) -> SessionRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE account=? AND idempotency_key=?",
            (account, key),
        ).fetchone()
        return None if row is None else _record(row)

    def sessions(self) -> list[SessionRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM sessions ORDER BY created_at")
        return [_record(r) for r in rows]

    def live_self_service(self) -> list[SessionRecord]:
        """Self-service sessions still waiting for the customer (to resume at start)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE method = 'self_service' AND state != ? "
            "ORDER BY created_at",
            (SessionState.FINISHED.value,),
        )
        return [_record(r) for r in rows]

    @staticmethod
    def _values(rec: SessionRecord) -> tuple[Any, ...]:
        view = json.dumps(_scrub(rec.view), separators=(",", ":"), sort_keys=True)
        resume = None
        if rec.resume is not None:
            # the phone number (E.164, up to 15 digits) is the one long digit run kept
            kept = {"phone": rec.resume.get("phone")} if "phone" in rec.resume else {}
            data = {**_scrub({k: v for k, v in rec.resume.items() if k != "phone"}), **kept}
            resume = json.dumps(data, separators=(",", ":"), sort_keys=True)
        plain = (
            rec.id,
            rec.call_id,
            rec.account,
            rec.profile,
            rec.method,
            rec.state,
            rec.result,
            rec.error,
            rec.reference,
            rec.amount,
            rec.currency,
            rec.last4,
            rec.created_at,
            rec.updated_at,
            rec.version,
            rec.idempotency_key,
        )
        return (*(_scrub(v) for v in plain), view, resume)

    # -- links

    def insert_link(self, row: LinkRow) -> None:
        self._db.execute(
            f"INSERT INTO links ({_LINK_COLUMNS}) VALUES (?,?,?,?,?,?)",
            (row.id_hash, row.session_id, row.expires_at, row.created_at, row.used_at,
             row.revoked_at),
        )  # fmt: skip

    def link(self, id_hash: str) -> LinkRow | None:
        row = self._db.execute(
            f"SELECT {_LINK_COLUMNS} FROM links WHERE id_hash=?", (id_hash,)
        ).fetchone()
        return None if row is None else LinkRow(*row)

    def use_link(self, id_hash: str, now: float) -> bool:
        """Mark the link used; ``False`` if it was used (or revoked) already. One statement,
        so two processes on one file cannot both use it."""
        cur = self._db.execute(
            "UPDATE links SET used_at=? WHERE id_hash=? AND used_at IS NULL AND revoked_at IS NULL",
            (now, id_hash),
        )
        return cur.rowcount == 1

    def revoke_links(self, session_id: str, now: float) -> int:
        """Revoke the session's unused links (a new one was sent); how many."""
        cur = self._db.execute(
            "UPDATE links SET revoked_at=? WHERE session_id=? AND used_at IS NULL "
            "AND revoked_at IS NULL",
            (now, session_id),
        )
        return cur.rowcount

    # -- sms outbox

    def add_sms(self, to: str, body: str, created: float) -> int:
        """Queue one message in the outbox (:class:`control_api.sms.OutboxSender`); its id."""
        cur = self._db.execute(
            'INSERT INTO sms_outbox ("to", body, created, state) VALUES (?,?,?,?)',
            (to, _scrub(body), created, "queued"),
        )
        return int(cur.lastrowid or 0)

    def outbox(self) -> list[OutboxRow]:
        """Every message in the outbox, oldest first."""
        rows = self._db.execute('SELECT id, "to", body, created, state FROM sms_outbox ORDER BY id')
        return [OutboxRow(*r) for r in rows]

    # -- audit

    def audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (ts, actor_role, actor_account, session_id, call_id, action, "
            "detail) VALUES (?,?,?,?,?,?,?)",
            (
                entry.ts,
                entry.actor_role,
                _scrub(entry.actor_account),
                _scrub(entry.session_id),
                _scrub(entry.call_id),
                entry.action,
                json.dumps(_scrub(entry.detail), separators=(",", ":"), sort_keys=True),
            ),
        )

    def audit_trail(self, session_id: str | None = None) -> list[AuditEntry]:
        """Rows in order, all or one session's."""
        sql = "SELECT ts, actor_role, actor_account, session_id, call_id, action, detail FROM audit"
        args: tuple[str, ...] = ()
        if session_id is not None:
            sql += " WHERE session_id=?"
            args = (session_id,)
        rows = self._db.execute(sql + " ORDER BY id", args)
        return [
            AuditEntry(ts, role, account, sid, call_id, action, json.loads(detail))
            for ts, role, account, sid, call_id, action, detail in rows
        ]

    def dump(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Every row of every table, as ``(table, row)`` (tests search it for card data)."""
        tables = [
            r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in self._db.execute(f'SELECT * FROM "{table}"'):
                yield table, tuple(row)

    # -- restart

    def _recover(self, now: float) -> tuple[str, ...]:
        """Sessions live at a crash end ``interrupted``/``process_restart`` (but not the
        self-service ones waiting for the customer: they go on)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE state != ?", (SessionState.FINISHED.value,)
        ).fetchall()
        out: list[str] = []
        for rec in map(_record, rows):
            if rec.method == "self_service" and rec.state in RESUMABLE_STATES:
                continue
            view = dict(rec.view)
            view.update(
                state=SessionState.FINISHED.value,
                result=Result.INTERRUPTED.value,
                error=ErrorCode.PROCESS_RESTART.value,
                caller_held=False,
                version=rec.version + 1,
            )
            if view.get("provider_leg") not in (None, "none"):
                view["provider_leg"] = "released"
            self.update_session(
                replace(
                    rec,
                    state=SessionState.FINISHED.value,
                    result=Result.INTERRUPTED.value,
                    error=ErrorCode.PROCESS_RESTART.value,
                    updated_at=now,
                    version=rec.version + 1,
                    view=view,
                    resume=None,
                )
            )
            self.audit(
                AuditEntry(
                    now,
                    "system",
                    None,
                    rec.id,
                    rec.call_id,
                    "session_finished",
                    {
                        "result": Result.INTERRUPTED.value,
                        "error": ErrorCode.PROCESS_RESTART.value,
                        "was": rec.state,
                    },
                )
            )
            out.append(rec.id)
        return tuple(out)
