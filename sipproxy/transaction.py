"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" state), sans-I/O.

No sockets, no asyncio, no clock of its own: the caller passes ``now`` (seconds, any
monotonic origin) to every call, sends the :class:`SendMessage` events it gets back, and
calls ``timer(now)`` when ``deadline()`` is reached.

Entry points:

- :class:`TransactionLayer` matches messages to transactions (§17.1.3, §17.2.3), creates
  server transactions for new requests, answers CANCEL, and reports everything to the
  transaction user (TU) as events. This is what the B2BUA uses.
- :class:`ClientInviteTransaction`, :class:`ClientNonInviteTransaction`,
  :class:`ServerInviteTransaction`, :class:`ServerNonInviteTransaction`: the four state
  machines of §17.1.1, §17.1.2, §17.2.1 and §17.2.2, usable on their own.
- Events (frozen dataclasses): :class:`SendMessage`, :class:`RequestReceived`,
  :class:`ResponseReceived`, :class:`AckReceived`, :class:`CancelReceived`,
  :class:`StrayResponse`, :class:`StrayAck`, :class:`ProceedingTimeout`,
  :class:`TransactionTimeout`, :class:`TransportError`, :class:`TransactionTerminated`.

Where RFC 6026 changes RFC 3261 it is followed: a 2xx to an INVITE moves both INVITE
transactions to "Accepted" for 64*T1 instead of destroying them, so retransmitted 2xx
responses (and 2xx from other forks) still reach the client TU, and retransmitted INVITEs
are absorbed by the server.
"""

from __future__ import annotations

import enum
import heapq
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sipproxy.sipmessage import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    parse_via,
)

__all__ = [
    "BRANCH_MAGIC_COOKIE",
    "DEFAULT_TIMERS",
    "AckReceived",
    "Address",
    "CancelReceived",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "Event",
    "ProceedingTimeout",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "State",
    "StrayAck",
    "StrayResponse",
    "TimerConfig",
    "Transaction",
    "TransactionKey",
    "TransactionLayer",
    "TransactionStateError",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportError",
    "build_ack_for_non2xx",
    "build_cancel",
    "client_key",
    "new_branch",
    "server_key",
]

BRANCH_MAGIC_COOKIE: Final = "z9hG4bK"
"""Every branch an RFC 3261 element generates starts with this (§8.1.1.7)."""

Address = tuple[str, int]
"""Where a message goes or came from: (host, port). The adapter owns what it means."""

SipMessage = SipRequest | SipResponse


class TransactionStateError(RuntimeError):
    """The TU asked for something the transaction's state does not allow.

    For example a provisional response after a final one (§17.2.1), or any response on a
    transaction that has terminated. Network input never raises this: what the peer sends
    out of order is absorbed or reported as an event.
    """


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Timer values (§17.1.1.1, Table 4 of §A). Seconds.

    ``timer_c`` is the proxy's Timer C (§16.6 step 11): how long a client INVITE waits in
    Proceeding for a final response before it is cancelled. None (the default) waits for
    ever, as a UAC does: the TU decides when to give up ringing (a PBX queue may send 183 and
    hold a call for many minutes). RFC 3261 asks for more than 3 minutes when set.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float | None = None

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L, M (and the CANCEL guard of §9.1)."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Timer D on unreliable transports: at least 32 s (§17.1.1.2)."""
        return max(32.0, self.timeout)


DEFAULT_TIMERS: Final = TimerConfig()


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies a transaction (§17.1.3 client, §17.2.3 server).

    ``method`` is the CSeq method, with ACK folded into INVITE on the server side. ``sent_by``
    (lower-case host and port of the top Via) is part of server keys only. A request without
    an RFC 3261 branch gets a synthetic ``branch`` built from the fields of §17.2.3's RFC 2543
    rule that ACK and CANCEL share with their INVITE.
    """

    branch: str
    method: str
    server: bool
    sent_by: str = ""

    def with_method(self, method: str) -> TransactionKey:
        return TransactionKey(self.branch, method, self.server, self.sent_by)


def new_branch() -> str:
    """A fresh branch: the magic cookie and 96 random bits (unguessable, §8.1.1.7)."""
    return BRANCH_MAGIC_COOKIE + secrets.token_hex(12)


def client_key(message: SipMessage) -> TransactionKey:
    """The client-transaction key of a request we send or a response we receive (§17.1.3)."""
    via = parse_via(_top_via(message))
    branch = via.branch
    if not branch:
        raise SipParseError("top Via has no branch", "§8.1.1.7", 0)
    return TransactionKey(branch, message.cseq.method, server=False)


def server_key(request: SipRequest) -> TransactionKey:
    """The server-transaction key of a request we receive (§17.2.3)."""
    via = parse_via(_top_via(request))
    method = "INVITE" if request.method == "ACK" else request.method
    default_port = 5061 if via.transport in ("TLS", "WSS") else 5060
    sent_by = f"{via.host.lower()}:{via.port or default_port}"
    branch = via.branch or ""
    if not branch.startswith(BRANCH_MAGIC_COOKIE):
        # RFC 2543 peer (§17.2.3): match on Request-URI, From tag, Call-ID, CSeq number and
        # top Via; the To tag is left out so the ACK (which has one) finds its INVITE.
        branch = "\x00rfc2543\x00" + "\x00".join(
            (request.uri, request.from_.tag or "", request.call_id,
             str(request.cseq.number), str(via))
        )  # fmt: skip
    return TransactionKey(branch, method, server=True, sent_by=sent_by)


def _top_via(message: SipMessage) -> str:
    via = message.headers.get("Via")
    if via is None:
        raise SipParseError("missing Via header", "§8.1.1.7", 0)
    return via


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send ``message`` to ``destination``. ``key``: the transaction it belongs to, if any."""

    message: SipMessage
    destination: Address | None
    key: TransactionKey | None = None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU; answer it with ``send_response(key, ...)``."""

    request: SipRequest
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU on client transaction ``key``.

    For INVITE this includes every 2xx (first, retransmitted, or from another fork): the
    TU sends the ACK for a 2xx (§13.2.2.4). Non-2xx finals were already ACKed.
    """

    response: SipResponse
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The ACK for a 2xx we sent on server INVITE transaction ``key`` (it ends 2xx resending)."""

    request: SipRequest
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL for the pending INVITE ``key``; the layer already answered the CANCEL 200.

    The TU should answer the INVITE with 487 (§9.2) and cancel its own outgoing leg.
    """

    request: SipRequest
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (§18.1.2: normally discarded).

    A 2xx to INVITE arriving here (after Timer M) may still concern a dialog.
    """

    response: SipResponse


@dataclass(frozen=True, slots=True)
class StrayAck:
    """An ACK matching no server INVITE transaction and no 2xx we sent: discard it."""

    request: SipRequest


@dataclass(frozen=True, slots=True)
class ProceedingTimeout:
    """Timer C fired on client INVITE ``key``: a CANCEL goes out; the final comes later."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """``timer`` expired with no answer: B or F (no final response), H (no ACK for our
    non-2xx final), L (no ACK for our 2xx: §13.3.1.4 says end the session),
    ``"cancel"`` (no final 64*T1 after CANCEL, §9.1)."""

    key: TransactionKey
    timer: str


@dataclass(frozen=True, slots=True)
class TransportError:
    """The adapter could not send for transaction ``key`` (§17.1.4, §17.2.4)."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """Transaction ``key`` is gone: later messages for it are strays or new requests."""

    key: TransactionKey


Event = (
    SendMessage
    | RequestReceived
    | ResponseReceived
    | AckReceived
    | CancelReceived
    | StrayResponse
    | StrayAck
    | ProceedingTimeout
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
)


# ---------------------------------------------------------------------------------------------
# Building ACK and CANCEL


def _copy_for(request: SipRequest, method: str, to: str) -> SipRequest:
    h = Headers()
    h.add("Via", _top_via(request))
    for name, value in (
        ("Max-Forwards", "70"),
        ("From", request.headers.get("From") or ""),
        ("To", to),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.number} {method}"),
    ):
        h.add(name, value)
    for route in request.headers.get_all("Route"):
        h.add("Route", route)
    return SipRequest(method, request.uri, h)


def build_ack_for_non2xx(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 300-699 final (§17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and top Via (branch) as the INVITE, the
    response's To (with its tag), the INVITE's Route headers, no body.
    """
    return _copy_for(invite, "ACK", response.headers.get("To") or "")


def build_cancel(invite: SipRequest, reason: str | None = None) -> SipRequest:
    """A CANCEL for ``invite`` (§9.1): same Request-URI, Call-ID, From, To, CSeq number,
    top Via and Route; optionally a Reason header (RFC 3326)."""
    cancel = _copy_for(invite, "CANCEL", invite.headers.get("To") or "")
    if reason is not None:
        cancel.headers.add("Reason", reason)
    return cancel


# ---------------------------------------------------------------------------------------------
# Transactions


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class _Base:
    """Timers, state and termination shared by the four machines."""

    key: TransactionKey
    state: State

    def __init__(
        self,
        request: SipRequest,
        peer: Address | None,
        *,
        reliable: bool,
        timers: TimerConfig,
        key: TransactionKey,
    ) -> None:
        self.request = request
        self.peer = peer
        self.reliable = reliable
        self.config = timers
        self.key = key
        self._due: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def deadline(self) -> float | None:
        """When ``timer()`` next has something to do; None when no timer runs."""
        return min(self._due.values(), default=None)

    def timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``, earliest first."""
        out: list[Event] = []
        while self._due:
            name, due = min(self._due.items(), key=lambda item: item[1])
            if due > now:
                break
            del self._due[name]
            out += self._fire(name, now)
        return out

    def transport_error(self, now: float) -> list[Event]:
        """The adapter failed to send a message of this transaction (§17.1.4, §17.2.4)."""
        if self.terminated:
            return []
        return [TransportError(self.key), *self._terminate()]

    def _fire(self, name: str, now: float) -> list[Event]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _send(self, message: SipMessage) -> SendMessage:
        return SendMessage(message, self.peer, self.key)

    def _start(self, name: str, now: float, delay: float) -> None:
        self._due[name] = now + delay

    def _terminate(self) -> list[Event]:
        self.state = State.TERMINATED
        self._due.clear()
        return [TransactionTerminated(self.key)]

    def _wait_or_terminate(self, name: str, now: float, delay: float) -> list[Event]:
        """Timers D, I, J, K: zero on reliable transports, so terminate at once."""
        if self.reliable:
            return self._terminate()
        self._start(name, now, delay)
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value}>"


class ClientInviteTransaction(_Base):
    """§17.1.1 (Figure 5) with RFC 6026's Accepted state.

    ``start()`` sends the INVITE. Responses go to ``receive()``: provisionals and every 2xx
    are passed up; a 300-699 is ACKed here and passed up once.
    """

    def __init__(
        self,
        request: SipRequest,
        destination: Address | None,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("ClientInviteTransaction is for INVITE requests")
        super().__init__(request, destination, reliable=reliable, timers=timers,
                         key=client_key(request))  # fmt: skip
        self.state = State.CALLING
        self._interval = timers.t1
        self._ack: SipRequest | None = None
        self._started = False

    def start(self, now: float) -> list[Event]:
        if self._started:
            raise TransactionStateError("transaction already started")
        self._started = True
        if not self.reliable:
            self._start("A", now, self._interval)
        self._start("B", now, self.config.timeout)
        return [self._send(self.request)]

    def cancel_sent(self, now: float) -> None:
        """A CANCEL went out: give up if no final arrives within 64*T1 (§9.1)."""
        if self.state in (State.CALLING, State.PROCEEDING):
            self._due.pop("C", None)
            self._start("cancel", now, self.config.timeout)

    def receive(self, response: SipResponse, now: float) -> list[Event]:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                self._proceeding(now)
                return [ResponseReceived(response, self.key)]
            if status < 300:
                self.state = State.ACCEPTED
                self._due.clear()
                self._start("M", now, self.config.timeout)
                return [ResponseReceived(response, self.key)]
            self.state = State.COMPLETED
            self._due.clear()
            self._ack = build_ack_for_non2xx(self.request, response)
            out: list[Event] = [self._send(self._ack), ResponseReceived(response, self.key)]
            return out + self._wait_or_terminate("D", now, self.config.timer_d)
        if self.state is State.ACCEPTED and 200 <= status < 300:
            return [ResponseReceived(response, self.key)]  # retransmission or another fork
        if self.state is State.COMPLETED and status >= 300 and self._ack is not None:
            return [self._send(self._ack)]  # the final was retransmitted: our ACK was lost
        return []  # anything else is absorbed

    def _proceeding(self, now: float) -> None:
        if self.state is State.CALLING:
            self.state = State.PROCEEDING
            self._due.pop("A", None)
            self._due.pop("B", None)
        if self.config.timer_c is not None and "cancel" not in self._due:
            self._start("C", now, self.config.timer_c)  # reset by each provisional

    def _fire(self, name: str, now: float) -> list[Event]:
        if name == "A":
            self._interval *= 2  # INVITE retransmissions are not capped at T2 (§17.1.1.2)
            self._start("A", now, self._interval)
            return [self._send(self.request)]
        if name == "B":
            return [TransactionTimeout(self.key, "B"), *self._terminate()]
        if name == "C":
            self.cancel_sent(now)
            return [ProceedingTimeout(self.key)]
        if name == "cancel":
            return [TransactionTimeout(self.key, "cancel"), *self._terminate()]
        return self._terminate()  # D, M


class ClientNonInviteTransaction(_Base):
    """§17.1.2 (Figure 6). Every response is passed up once per state change; finals end it."""

    def __init__(
        self,
        request: SipRequest,
        destination: Address | None,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError("ClientNonInviteTransaction is not for INVITE or ACK")
        super().__init__(request, destination, reliable=reliable, timers=timers,
                         key=client_key(request))  # fmt: skip
        self.state = State.TRYING
        self._interval = timers.t1
        self._started = False

    def start(self, now: float) -> list[Event]:
        if self._started:
            raise TransactionStateError("transaction already started")
        self._started = True
        if not self.reliable:
            self._start("E", now, self._interval)
        self._start("F", now, self.config.timeout)
        return [self._send(self.request)]

    def receive(self, response: SipResponse, now: float) -> list[Event]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed: retransmitted finals are absorbed
        if response.status < 200:
            self.state = State.PROCEEDING
            return [ResponseReceived(response, self.key)]
        self.state = State.COMPLETED
        self._due.clear()
        out: list[Event] = [ResponseReceived(response, self.key)]
        return out + self._wait_or_terminate("K", now, self.config.t4)

    def _fire(self, name: str, now: float) -> list[Event]:
        if name == "E":
            # Trying: double up to T2; Proceeding: every T2 (§17.1.2.2).
            self._interval = (
                self.config.t2 if self.state is State.PROCEEDING
                else min(2 * self._interval, self.config.t2)
            )  # fmt: skip
            self._start("E", now, self._interval)
            return [self._send(self.request)]
        if name == "F":
            return [TransactionTimeout(self.key, "F"), *self._terminate()]
        return self._terminate()  # K


class _Server(_Base):
    def __init__(
        self,
        request: SipRequest,
        source: Address | None,
        *,
        reliable: bool,
        timers: TimerConfig,
    ) -> None:
        super().__init__(request, source, reliable=reliable, timers=timers,
                         key=server_key(request))  # fmt: skip
        self.last_response: SipResponse | None = None
        self._started = False

    def start(self, now: float) -> list[Event]:
        """Pass the request to the TU (and, for INVITE, send 100 Trying if configured)."""
        if self._started:
            raise TransactionStateError("transaction already started")
        self._started = True
        return [RequestReceived(self.request, self.key)]

    def _check_response(self, response: SipResponse) -> None:
        if self.terminated:
            raise TransactionStateError("transaction has terminated")
        if response.cseq.method != self.request.method:
            raise TransactionStateError("response CSeq method is not the request's")


class ServerInviteTransaction(_Server):
    """§17.2.1 (Figure 7) with RFC 6026's Accepted state.

    ``send_trying``: answer 100 Trying at once (a B2BUA or proxy should: §16.2, §17.2.1).
    ``retransmit_2xx``: on unreliable transports, resend our 2xx at T1, 2*T1, ... T2 until
    its ACK arrives (the UAS core's job in §13.3.1.4, done here in Accepted state); the
    :class:`TransactionLayer` routes that ACK (which has a new branch) here.
    """

    def __init__(
        self,
        request: SipRequest,
        source: Address | None,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
        send_trying: bool = True,
        retransmit_2xx: bool = True,
    ) -> None:
        if request.method != "INVITE":
            raise ValueError("ServerInviteTransaction is for INVITE requests")
        super().__init__(request, source, reliable=reliable, timers=timers)
        self.state = State.PROCEEDING
        self.send_trying = send_trying
        self.retransmit_2xx = retransmit_2xx
        self.acked = False
        self._interval = timers.t1

    @property
    def has_final(self) -> bool:
        return self.state is not State.PROCEEDING

    def start(self, now: float) -> list[Event]:
        out = super().start(now)
        if self.send_trying:
            trying = build_response(self.request, 100)
            self.last_response = trying
            out.insert(0, self._send(trying))
        return out

    def send_response(self, response: SipResponse, now: float) -> list[Event]:
        self._check_response(response)
        status = response.status
        if self.state is State.ACCEPTED:
            if 200 <= status < 300:  # the TU resending its 2xx itself
                return [self._send(response)]
            raise TransactionStateError("only 2xx may follow a 2xx (RFC 6026 Accepted state)")
        if self.state is not State.PROCEEDING:
            raise TransactionStateError(f"cannot send a response in {self.state.value}")
        self.last_response = response
        if status < 200:
            return [self._send(response)]
        if status < 300:
            self.state = State.ACCEPTED
            if self.retransmit_2xx and not self.reliable:
                self._start("G2xx", now, self._interval)
            self._start("L", now, self.config.timeout)
            return [self._send(response)]
        self.state = State.COMPLETED
        if not self.reliable:
            self._start("G", now, self._interval)
        self._start("H", now, self.config.timeout)
        return [self._send(response)]

    def receive(self, request: SipRequest, now: float) -> list[Event]:
        """A retransmitted INVITE or an ACK matching this transaction."""
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._due.clear()
                return self._wait_or_terminate("I", now, self.config.t4)
            if self.state is State.ACCEPTED:
                return self.ack_2xx(request)
            return []  # Proceeding (no final yet) or Confirmed: absorbed
        if request.method != "INVITE":
            return []
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            return [self._send(self.last_response)]
        if self.state is State.ACCEPTED and self.retransmit_2xx and self.last_response:
            return [self._send(self.last_response)]
        return []

    def ack_2xx(self, ack: SipRequest) -> list[Event]:
        """The ACK for our 2xx arrived: stop resending it; the TU gets the first copy."""
        self._due.pop("G2xx", None)
        if self.acked:
            return []
        self.acked = True
        return [AckReceived(ack, self.key)]

    def _fire(self, name: str, now: float) -> list[Event]:
        if name in ("G", "G2xx"):
            self._interval = min(2 * self._interval, self.config.t2)
            self._start(name, now, self._interval)
            assert self.last_response is not None
            return [self._send(self.last_response)]
        if name == "H":
            return [TransactionTimeout(self.key, "H"), *self._terminate()]
        if name == "L" and not self.acked:
            return [TransactionTimeout(self.key, "L"), *self._terminate()]
        return self._terminate()  # I, L after the ACK


class ServerNonInviteTransaction(_Server):
    """§17.2.2 (Figure 8).

    Not in RFC 3261: if the TU gives no final response within 64*T1 (the client gave up at
    Timer F by then), the transaction ends with ``TransactionTimeout(key, "F")`` so a
    forgetful TU cannot make it live for ever.
    """

    def __init__(
        self,
        request: SipRequest,
        source: Address | None,
        *,
        reliable: bool = False,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError("ServerNonInviteTransaction is not for INVITE or ACK")
        super().__init__(request, source, reliable=reliable, timers=timers)
        self.state = State.TRYING

    @property
    def has_final(self) -> bool:
        return self.state not in (State.TRYING, State.PROCEEDING)

    def start(self, now: float) -> list[Event]:
        self._start("F", now, self.config.timeout)
        return super().start(now)

    def send_response(self, response: SipResponse, now: float) -> list[Event]:
        self._check_response(response)
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise TransactionStateError(f"cannot send a response in {self.state.value}")
        self.last_response = response
        if response.status < 200:
            self.state = State.PROCEEDING
            return [self._send(response)]
        self.state = State.COMPLETED
        self._due.clear()
        out: list[Event] = [self._send(response)]
        return out + self._wait_or_terminate("J", now, self.config.timeout)

    def receive(self, request: SipRequest, now: float) -> list[Event]:
        """A retransmitted request: absorbed in Trying, answered from cache after."""
        if request.method == self.request.method and self.last_response is not None:
            return [self._send(self.last_response)]
        return []

    def _fire(self, name: str, now: float) -> list[Event]:
        if name == "F":
            return [TransactionTimeout(self.key, "F"), *self._terminate()]
        return self._terminate()  # J


ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
Transaction = ClientTransaction | ServerTransaction


# ---------------------------------------------------------------------------------------------
# The layer


_DialogAck = tuple[str, int, str, str]  # Call-ID, CSeq number, From tag, To tag


class TransactionLayer:
    """All transactions of one SIP endpoint: matching, creation, timers, CANCEL.

    Memory is bounded: a transaction is dropped when it terminates, and beyond
    ``max_transactions`` live transactions new requests are answered 503 statelessly
    (ACKs are never answered). Every method returns the events to act on, in order.
    """

    def __init__(
        self,
        *,
        timers: TimerConfig = DEFAULT_TIMERS,
        send_trying: bool = True,
        retransmit_2xx: bool = True,
        max_transactions: int = 100_000,
    ) -> None:
        self.timers = timers
        self.send_trying = send_trying
        self.retransmit_2xx = retransmit_2xx
        self.max_transactions = max_transactions
        self._transactions: dict[TransactionKey, Transaction] = {}
        self._heap: list[tuple[float, int, TransactionKey]] = []
        self._scheduled: dict[TransactionKey, float] = {}
        self._seq = 0
        self._acks_2xx: dict[_DialogAck, TransactionKey] = {}
        self._ack_index_of: dict[TransactionKey, _DialogAck] = {}
        self._pending_cancel: dict[TransactionKey, str | None] = {}

    # -- inspection
    def __len__(self) -> int:
        return len(self._transactions)

    def get(self, key: TransactionKey) -> Transaction | None:
        return self._transactions.get(key)

    def new_branch(self) -> str:
        return new_branch()

    def deadline(self) -> float | None:
        """When ``timer()`` next has work; None when no timer runs."""
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            if self._scheduled.get(key) == due:
                return due
            heapq.heappop(heap)  # stale: rescheduled or gone
        return None

    # -- TU actions
    def send_request(
        self, request: SipRequest, destination: Address | None, now: float, *,
        reliable: bool = False,
    ) -> tuple[TransactionKey, list[Event]]:  # fmt: skip
        """Start a client transaction for ``request`` (its top Via must carry a branch)."""
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, destination, reliable=reliable,
                                          timers=self.timers)  # fmt: skip
        elif request.method == "ACK":
            raise ValueError("ACK is not a transaction: send it directly (§17.1)")
        else:
            txn = ClientNonInviteTransaction(request, destination, reliable=reliable,
                                             timers=self.timers)  # fmt: skip
        if txn.key in self._transactions:
            raise ValueError("a transaction with this branch and method exists")
        self._transactions[txn.key] = txn
        return txn.key, self._after(txn, txn.start(now))

    def cancel(self, key: TransactionKey, now: float, reason: str | None = None) -> list[Event]:
        """Cancel client INVITE ``key`` (§9.1).

        Sent at once if a provisional was received, else when the first one arrives
        (§9.1 forbids a CANCEL before); nothing if a final was received.
        """
        txn = self._transactions.get(key)
        if not isinstance(txn, ClientInviteTransaction):
            return []
        if txn.state is State.CALLING:
            self._pending_cancel[key] = reason
            return []
        return self._send_cancel(txn, now, reason)

    def _send_cancel(
        self, txn: ClientInviteTransaction, now: float, reason: str | None
    ) -> list[Event]:
        self._pending_cancel.pop(txn.key, None)
        if txn.state is not State.PROCEEDING:
            return []
        cancel = build_cancel(txn.request, reason)
        ckey = client_key(cancel)
        if ckey in self._transactions:
            return []  # already cancelling
        ctxn = ClientNonInviteTransaction(cancel, txn.peer, reliable=txn.reliable,
                                          timers=self.timers)  # fmt: skip
        self._transactions[ckey] = ctxn
        txn.cancel_sent(now)
        out = self._after(ctxn, ctxn.start(now))
        self._schedule(txn)
        return out

    def send_response(self, key: TransactionKey, response: SipResponse, now: float) -> list[Event]:
        """Send the TU's response on server transaction ``key``."""
        txn = self._transactions.get(key)
        if not isinstance(txn, ServerInviteTransaction | ServerNonInviteTransaction):
            raise TransactionStateError("no such server transaction (terminated?)")
        out = txn.send_response(response, now)
        if isinstance(txn, ServerInviteTransaction) and 200 <= response.status < 300:
            to_tag = response.to.tag or ""
            index = (response.call_id, response.cseq.number, txn.request.from_.tag or "", to_tag)
            self._acks_2xx[index] = key
            self._ack_index_of[key] = index
        return self._after(txn, out)

    def transport_error(self, key: TransactionKey, now: float) -> list[Event]:
        txn = self._transactions.get(key)
        return [] if txn is None else self._after(txn, txn.transport_error(now))

    # -- input
    def receive(
        self, message: SipMessage, now: float, *, source: Address | None = None,
        reliable: bool | None = None,
    ) -> list[Event]:  # fmt: skip
        """A parsed message from the network. ``source`` is where responses to a new request
        go; ``reliable`` defaults to "the top Via's transport is not UDP"."""
        if isinstance(message, SipResponse):
            return self._receive_response(message, now)
        return self._receive_request(message, now, source, reliable)

    def timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``."""
        out: list[Event] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            if self._scheduled.get(key) != due:
                continue
            del self._scheduled[key]
            txn = self._transactions.get(key)
            if txn is None:
                continue
            fired = self._after(txn, txn.timer(now))
            out += fired
            if isinstance(txn, ClientInviteTransaction) and any(
                isinstance(e, ProceedingTimeout) for e in fired
            ):
                out += self._send_cancel(txn, now, 'SIP;cause=408;text="Timer C"')
        return out

    # -- internals
    def _receive_response(self, response: SipResponse, now: float) -> list[Event]:
        try:
            key = client_key(response)
        except (SipParseError, ValueError):
            return [StrayResponse(response)]
        txn = self._transactions.get(key)
        if isinstance(txn, ClientInviteTransaction):
            out = self._after(txn, txn.receive(response, now))
            if key in self._pending_cancel:
                if txn.state is State.PROCEEDING:
                    out += self._send_cancel(txn, now, self._pending_cancel[key])
                elif txn.state is not State.CALLING:
                    self._pending_cancel.pop(key, None)
            return out
        if isinstance(txn, ClientNonInviteTransaction):
            return self._after(txn, txn.receive(response, now))
        return [StrayResponse(response)]

    def _receive_request(
        self, request: SipRequest, now: float, source: Address | None, reliable: bool | None
    ) -> list[Event]:
        try:
            key = server_key(request)
            if reliable is None:
                reliable = parse_via(_top_via(request)).transport != "UDP"
        except (SipParseError, ValueError):
            return [StrayAck(request)] if request.method == "ACK" else []
        txn = self._transactions.get(key)
        if isinstance(txn, ServerInviteTransaction | ServerNonInviteTransaction):
            return self._after(txn, txn.receive(request, now))
        if request.method == "ACK":
            return self._receive_ack_2xx(request)
        if len(self._transactions) >= self.max_transactions:
            return [SendMessage(build_response(request, 503, headers=[("Retry-After", "5")]),
                                source)]  # fmt: skip
        new: ServerTransaction
        if request.method == "INVITE":
            new = ServerInviteTransaction(
                request, source, reliable=reliable, timers=self.timers,
                send_trying=self.send_trying, retransmit_2xx=self.retransmit_2xx,
            )  # fmt: skip
        else:
            new = ServerNonInviteTransaction(request, source, reliable=reliable,
                                             timers=self.timers)  # fmt: skip
            if request.method == "CANCEL":
                self._transactions[key] = new
                return self._receive_cancel(new, now)
        self._transactions[key] = new
        return self._after(new, new.start(now))

    def _receive_cancel(self, txn: ServerNonInviteTransaction, now: float) -> list[Event]:
        """§9.2: 200 if the CANCEL matches a transaction, 481 if not; tell the TU if the
        INVITE is still pending. The TU sends the 487."""
        txn._started = True
        target = self._transactions.get(txn.key.with_method("INVITE"))
        out: list[Event] = []
        if isinstance(target, ServerInviteTransaction):
            status = 200
            if not target.has_final:
                out.append(CancelReceived(txn.request, target.key))
        else:
            status = 481
        sent = txn.send_response(build_response(txn.request, status), now)
        return self._after(txn, sent) + out

    def _receive_ack_2xx(self, ack: SipRequest) -> list[Event]:
        try:
            index = (ack.call_id, ack.cseq.number, ack.from_.tag or "", ack.to.tag or "")
        except (SipParseError, ValueError):
            return [StrayAck(ack)]
        key = self._acks_2xx.get(index)
        txn = self._transactions.get(key) if key is not None else None
        if isinstance(txn, ServerInviteTransaction):
            return self._after(txn, txn.ack_2xx(ack))
        return [StrayAck(ack)]

    def _after(self, txn: Transaction, events: Iterable[Event]) -> list[Event]:
        """Bookkeeping after any call into ``txn``: drop it if it ended, else reschedule."""
        out = list(events)
        if txn.terminated:
            self._remove(txn.key)
        else:
            self._schedule(txn)
        return out

    def _schedule(self, txn: Transaction) -> None:
        due = txn.deadline()
        key = txn.key
        if due is None:
            self._scheduled.pop(key, None)
            return
        if self._scheduled.get(key) == due:
            return
        self._scheduled[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        if len(self._heap) > 64 + 4 * len(self._scheduled):
            self._heap[:] = [e for e in self._heap if self._scheduled.get(e[2]) == e[0]]
            heapq.heapify(self._heap)

    def _remove(self, key: TransactionKey) -> None:
        self._transactions.pop(key, None)
        self._scheduled.pop(key, None)
        self._pending_cancel.pop(key, None)
        index = self._ack_index_of.pop(key, None)
        if index is not None and self._acks_2xx.get(index) == key:
            del self._acks_2xx[index]
