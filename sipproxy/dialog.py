"""SIP dialogs (RFC 3261 §12, with RFC 3262 PRACK), sans-I/O.

A :class:`Dialog` holds the state of §12.1: Call-ID, local and remote tags, local and remote
CSeq numbers, local and remote URIs, remote target, route set and secure flag. It builds
in-dialog requests (§12.2.1.1) and checks in-dialog requests it receives (§12.2.2). It does
not send anything and keeps no timers: hand the requests it builds to the transaction layer
(:mod:`sipproxy.transaction`), which also routes the ACK for a 2xx we sent back to us.

Entry points:

- :meth:`Dialog.uac` (we sent the request; from a 1xx or 2xx with a To tag) and
  :meth:`Dialog.uas` (we answer the request; from our 1xx or 2xx with a To tag).
- :func:`new_invite`: a fresh out-of-dialog INVITE (new Call-ID, From tag, branch), the
  B2BUA's leg towards the PBX.
- :func:`dialog_id_uac` / :func:`dialog_id_uas`: the :class:`DialogId` of a message, to
  find its dialog.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sipproxy.sipmessage import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    build_response,
    parse_name_addr,
    parse_uri,
)
from sipproxy.transaction import new_branch

__all__ = [
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "dialog_id_uac",
    "dialog_id_uas",
    "new_call_id",
    "new_invite",
    "new_tag",
]

MAX_FORWARDS: Final = "70"
_TARGET_REFRESH: Final = frozenset(("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"))


class DialogError(ValueError):
    """A message cannot create or update this dialog (names the RFC 3261 rule)."""


def new_tag() -> str:
    """A From/To tag: 64 random bits (§19.3 asks for at least 32)."""
    return secrets.token_hex(8)


def new_call_id(host: str | None = None) -> str:
    """A Call-ID: 128 random bits, ``@host`` if given (§8.1.1.4)."""
    word = secrets.token_hex(16)
    return f"{word}@{host}" if host else word


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag, remote tag (as seen from our side)."""

    call_id: str
    local_tag: str
    remote_tag: str


def dialog_id_uac(message: SipRequest | SipResponse) -> DialogId:
    """The id of the dialog a message belongs to where we are the UAC of the dialog
    (our tag is in From of responses to our requests and of our requests)."""
    return DialogId(message.call_id, message.from_.tag or "", message.to.tag or "")


def dialog_id_uas(request: SipRequest) -> DialogId:
    """The id of the dialog a request we received belongs to (its To tag is ours)."""
    return DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def _contact_uri(message: SipRequest | SipResponse) -> str | None:
    contact = message.headers.get("Contact")
    if contact is None or contact == "*":
        return None
    return str(parse_name_addr(contact).uri)


class Dialog:
    """One dialog, from one side. Build with :meth:`uac` or :meth:`uas`.

    ``local_seq`` is the CSeq number of our last request (None before our first on the UAS
    side); ``remote_seq`` of the peer's last (None until it sends one, on the UAC side).
    """

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: str,
        remote_uri: str,
        remote_target: str,
        route_set: Iterable[str],
        local_seq: int | None,
        remote_seq: int | None,
        secure: bool,
        state: DialogState,
        local_contact: str | None = None,
        is_uac: bool,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = list(route_set)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self.state = state
        self.local_contact = local_contact
        self.is_uac = is_uac
        self.invite_seq: int | None = None
        """CSeq number of the last INVITE we sent: the ACK for its 2xx uses it (§13.2.2.4)."""
        self.last_rseq: int | None = None
        """RSeq of the last reliable provisional we accepted (RFC 3262 §4)."""

    # -- creation
    @classmethod
    def uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The UAC side (§12.1.2), from our request and a 101-299 response with a To tag.

        A 1xx makes an early dialog; a 2xx a confirmed one. Route set: the response's
        Record-Route in reverse order.
        """
        if not 101 <= response.status <= 299:
            raise DialogError("only 101-299 responses create dialogs (RFC 3261 §12.1)")
        remote_tag = response.to.tag
        if not remote_tag:
            raise DialogError("response has no To tag (RFC 3261 §12.1.2)")
        target = _contact_uri(response)
        if target is None:
            raise DialogError("response has no Contact (RFC 3261 §12.1.2)")
        local_contact = request.headers.get("Contact")
        dialog = cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=remote_tag,
            local_uri=str(request.from_.uri),
            remote_uri=str(request.to.uri),
            remote_target=target,
            route_set=reversed(response.headers.get_all("Record-Route")),
            local_seq=request.cseq.number,
            remote_seq=None,
            secure=_is_sips(request.uri),
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            local_contact=local_contact,
            is_uac=True,
        )
        if request.method == "INVITE":
            dialog.invite_seq = request.cseq.number
        return dialog

    @classmethod
    def uas(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The UAS side (§12.1.1), from the request we answer and our 101-299 response.

        Route set: the request's Record-Route in order. Our Contact is the response's.
        """
        if not 101 <= response.status <= 299:
            raise DialogError("only 101-299 responses create dialogs (RFC 3261 §12.1)")
        local_tag = response.to.tag
        if not local_tag:
            raise DialogError("response has no To tag (RFC 3261 §12.1.1)")
        target = _contact_uri(request)
        if target is None:
            raise DialogError("request has no Contact (RFC 3261 §12.1.1)")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=str(request.to.uri),
            remote_uri=str(request.from_.uri),
            remote_target=target,
            route_set=request.headers.get_all("Record-Route"),
            local_seq=None,
            remote_seq=request.cseq.number,
            secure=_is_sips(request.uri),
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            local_contact=response.headers.get("Contact"),
            is_uac=False,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        side = "UAC" if self.is_uac else "UAS"
        return f"<Dialog {side} {self.state.value} local_seq={self.local_seq}>"

    # -- responses to our requests
    def receive_response(self, request: SipRequest, response: SipResponse) -> None:
        """Update from a response to our in-dialog ``request`` (or to the INVITE that made
        an early dialog): a 2xx to INVITE confirms an early dialog and, with the route set
        recomputed (§13.2.2.4), refreshes the target; a 2xx to a target refresh request
        refreshes the remote target (§12.2.1.2). 481 and 408 end the dialog (§12.2.1.2)."""
        if response.status in (481, 408):
            self.state = DialogState.TERMINATED
            return
        if response.to.tag and response.to.tag != self.remote_tag:
            raise DialogError("response To tag is another dialog's (RFC 3261 §12.2.1.2)")
        method = request.method
        if 200 <= response.status < 300:
            if method == "INVITE" and self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED
                self.route_set = list(reversed(response.headers.get_all("Record-Route")))
            if method in _TARGET_REFRESH:
                target = _contact_uri(response)
                if target is not None:
                    self.remote_target = target
        elif 101 <= response.status < 200 and self.state is DialogState.EARLY:
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target
        elif response.status >= 300 and method == "INVITE" and self.state is DialogState.EARLY:
            self.state = DialogState.TERMINATED  # the early dialog died with the INVITE

    # -- requests from the peer
    def receive_request(self, request: SipRequest) -> SipResponse | None:
        """Check an in-dialog request from the peer (§12.2.2).

        Returns the response to reject it with (481 if it is not this dialog's, 500 if its
        CSeq is lower than the last one), or None when it is accepted: then the remote CSeq
        is updated, a target refresh updates the remote target, and BYE ends the dialog.
        ACK and CANCEL carry their INVITE's CSeq and are never rejected for it.
        """
        if dialog_id_uas(request) != self.id:
            return build_response(request, 481)
        number = request.cseq.number
        method = request.method
        if method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and number < self.remote_seq:
                return build_response(request, 500, headers=[("Retry-After", "0")])
            self.remote_seq = number
        if method in _TARGET_REFRESH:
            target = _contact_uri(request)
            if target is not None:
                self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    # -- requests we send
    def next_hop(self) -> str:
        """The URI to resolve to send our next request (§8.1.2): the first route, or the
        remote target when the route set is empty."""
        if self.route_set:
            return str(parse_name_addr(self.route_set[0]).uri)
        return self.remote_target

    def build_request(
        self,
        method: str,
        *,
        via: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        cseq: int | None = None,
        branch: str | None = None,
    ) -> SipRequest:
        """An in-dialog request (§12.2.1.1): BYE, re-INVITE, UPDATE, INFO, ...

        ``via`` is our sent-by with its transport, e.g. ``"SIP/2.0/UDP 192.0.2.1:5060"``;
        a fresh branch (or ``branch``) and ``rport`` are added. The CSeq number is the next
        local one unless ``cseq`` is given (ACK uses its INVITE's). Target refresh requests
        carry our Contact. Request-URI and Route follow the loose or strict routing rule.
        """
        if self.state is DialogState.TERMINATED and method != "ACK":
            raise DialogError("the dialog has terminated (RFC 3261 §12.3)")
        if cseq is None:
            # §12.2.1.1: local sequence number + 1; the UAS side starts from a random one.
            cseq = (self.local_seq + 1) if self.local_seq is not None else _initial_cseq()
            self.local_seq = cseq
        if method == "INVITE":
            self.invite_seq = cseq
        request_uri, routes = self._routing()
        h = Headers()
        h.add("Via", f"{via};branch={branch or new_branch()};rport")
        h.add("Max-Forwards", MAX_FORWARDS)
        for route in routes:
            h.add("Route", route)
        h.add("From", f"<{self.local_uri}>;tag={self.local_tag}")
        h.add("To", f"<{self.remote_uri}>;tag={self.remote_tag}")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if method in _TARGET_REFRESH and self.local_contact is not None:
            h.add("Contact", self.local_contact)
        for name, value in headers:
            h.add(name, value)
        return SipRequest(method, request_uri, h, body)

    def build_ack(
        self,
        *,
        via: str,
        invite_seq: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> SipRequest:
        """The ACK for a 2xx to our INVITE (§13.2.2.4): the INVITE's CSeq number, a new
        branch; send it straight to the transport (it is not a transaction)."""
        number = invite_seq if invite_seq is not None else self.invite_seq
        if number is None:
            raise DialogError("no INVITE was sent on this dialog (RFC 3261 §13.2.2.4)")
        return self.build_request("ACK", via=via, cseq=number, headers=headers, body=body)

    def accept_reliable_provisional(self, response: SipResponse) -> bool:
        """RFC 3262 §4: should this reliable provisional (Require: 100rel, RSeq) be passed
        on and PRACKed? False for a retransmission or one out of order."""
        rseq_text = response.headers.get("RSeq")
        if rseq_text is None or not rseq_text.strip().isdigit():
            return False
        rseq = int(rseq_text)
        if self.last_rseq is not None and rseq != self.last_rseq + 1:
            return False
        self.last_rseq = rseq
        return True

    def build_prack(
        self, response: SipResponse, *, via: str, headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> SipRequest:  # fmt: skip
        """PRACK for a reliable provisional (RFC 3262 §7.2): ``RAck: RSeq CSeq-num method``."""
        rseq = response.headers.get("RSeq")
        if rseq is None:
            raise DialogError("response has no RSeq (RFC 3262 §7.1)")
        cseq = response.cseq
        rack = ("RAck", f"{rseq.strip()} {cseq.number} {cseq.method}")
        return self.build_request("PRACK", via=via, headers=[rack, *headers], body=body)

    def _routing(self) -> tuple[str, list[str]]:
        """Request-URI and Route values (§12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = parse_name_addr(self.route_set[0])
        if isinstance(first.uri, SipUri) and first.uri.has_param("lr"):
            return self.remote_target, list(self.route_set)
        # Strict router: its URI becomes the Request-URI (without the parameters a
        # Request-URI may not carry, §19.1.1), the remote target goes last in Route.
        uri = first.uri
        if isinstance(uri, SipUri):
            params = tuple(p for p in uri.params if p[0].lower() not in ("method",))
            uri = SipUri(uri.scheme, uri.host, uri.user, uri.password, uri.port, params)
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]


def _initial_cseq() -> int:
    return 1 + secrets.randbelow(2**16)


def _is_sips(uri: str) -> bool:
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        return False
    return isinstance(parsed, SipUri) and parsed.scheme == "sips"


def new_invite(
    request_uri: str,
    *,
    from_uri: str,
    to_uri: str,
    contact: str,
    via: str,
    from_display_name: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = "application/sdp",
) -> SipRequest:
    """A new out-of-dialog INVITE (§8.1.1): fresh Call-ID, From tag and branch.

    ``via`` is our sent-by with transport (``"SIP/2.0/UDP 192.0.2.1:5060"``); ``contact`` a
    URI. ``Content-Type`` is added only when there is a body.
    """
    parse_uri(request_uri, request_uri=True)
    from_ = parse_name_addr(f"<{from_uri}>").with_tag(new_tag())
    if from_display_name is not None:
        from_ = type(from_)(from_.uri, from_display_name, from_.params)
    h = Headers()
    h.add("Via", f"{via};branch={new_branch()};rport")
    h.add("Max-Forwards", MAX_FORWARDS)
    h.add("From", str(from_))
    h.add("To", f"<{to_uri}>")
    h.add("Call-ID", call_id or new_call_id())
    h.add("CSeq", f"{cseq} INVITE")
    h.add("Contact", f"<{contact}>")
    if body and content_type:
        h.add("Content-Type", content_type)
    for name, value in headers:
        h.add(name, value)
    return SipRequest("INVITE", request_uri, h, body)
