"""Minimal SIP peers on 127.0.0.1 for tests of the running proxy (UDP and TCP sockets).

``UdpPeer`` and ``TcpPeer`` send raw or built messages and queue what they receive, parsed.
``FakePbx`` is a UDP PBX that answers INVITE with 180 then 200 (SDP), and BYE with 200.
Not a SIP stack: just enough to drive calls and look at the proxy's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from sipproxy.sipmessage import (
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
)

Message = SipRequest | SipResponse
Addr = tuple[str, int]
_n = itertools.count(1)

OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
ANSWER = OFFER.replace("o=caller", "o=pbx")


def invite(
    target: Addr, *, via: str, transport: str = "UDP", rtp_port: int = 41000, extra: str = ""
) -> SipRequest:
    n = next(_n)
    body = OFFER.format(port=rtp_port)
    text = (
        f"INVITE sip:agent@{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via};branch=z9hG4bK-t{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{n}\r\n"
        f"To: <sip:agent@127.0.0.1>\r\nCall-ID: call{n}-{id(body)}@test\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@{via};transport={transport.lower()}>\r\n{extra}"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def in_dialog(
    method: str, inv: SipRequest, ok: SipResponse, *, via: str, transport: str = "UDP",
    cseq: int | None = None,
) -> SipRequest:  # fmt: skip
    """ACK (CSeq of the INVITE) or BYE/OPTIONS (``cseq``) in the dialog ``inv``/``ok`` made."""
    n = next(_n)
    number = inv.cseq.number if method == "ACK" else (cseq or inv.cseq.number + 1)
    contact = ok.headers.get("Contact") or ""
    uri = contact.strip("<>").split(">")[0]
    text = (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch=z9hG4bK-d{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: {inv.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
        f"Call-ID: {inv.call_id}\r\nCSeq: {number} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def options(target: Addr, *, via: str) -> SipRequest:
    n = next(_n)
    text = (
        f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch=z9hG4bK-o{n};rport\r\nMax-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=o{n}\r\nTo: <sip:{target[0]}>\r\n"
        f"Call-ID: ping{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


class _Inbox:
    """What a peer received, in order. ``expect`` takes the first message not taken yet that
    matches (concurrent ``expect`` calls with different ``call_id`` do not steal each
    other's); ``quiet`` takes whatever else comes."""

    def __init__(self) -> None:
        self.seen: list[Message] = []
        self._taken: set[int] = set()
        self._arrived = asyncio.Event()

    def put(self, message: Message, addr: Addr) -> None:
        self.seen.append(message)
        self._arrived.set()

    async def expect(
        self, what: str | int, timeout: float = 3.0, call_id: str | None = None
    ) -> Message:
        """Request ``what`` (a method) or response ``what`` (a status), of ``call_id``."""
        async with asyncio.timeout(timeout):
            while True:
                for i, message in enumerate(self.seen):
                    if i in self._taken or (call_id is not None and message.call_id != call_id):
                        continue
                    if (isinstance(message, SipRequest) and message.method == what) or (
                        isinstance(message, SipResponse) and message.status == what
                    ):
                        self._taken.add(i)
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    async def quiet(self, seconds: float) -> list[Message]:
        """Everything not taken yet, after waiting ``seconds``."""
        await asyncio.sleep(seconds)
        out = [m for i, m in enumerate(self.seen) if i not in self._taken]
        self._taken.update(range(len(self.seen)))
        return out


class UdpPeer(_Inbox, asyncio.DatagramProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        peer.port = transport.get_extra_info("sockname")[1]
        return peer

    @property
    def via(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            message = parse_message(data)
        except ValueError:
            return
        self.on_message(message, (addr[0], addr[1]))

    def on_message(self, message: Message, addr: Addr) -> None:
        self.put(message, addr)

    def send(self, message: Message | bytes, addr: Addr) -> None:
        assert self.transport is not None
        data = message if isinstance(message, bytes) else message.serialize()
        self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpPeer(_Inbox):
    """One TCP connection to the proxy; what comes back on it is framed and queued."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer
        self.port = writer.get_extra_info("sockname")[1]
        self.framer = StreamFramer()
        self.raw = bytearray()
        self.unparsed = 0
        self.closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, addr: Addr) -> TcpPeer:
        reader, writer = await asyncio.open_connection(*addr)
        return cls(reader, writer)

    @property
    def via(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.raw += data
                self.framer.feed(data)
                while True:
                    try:
                        message = self.framer.next_message()
                    except ValueError:  # the proxy echoes a broken header in its 400
                        if self.framer.broken:
                            raise
                        self.unparsed += 1
                        continue
                    if message is None:
                        break
                    self.put(message, ("127.0.0.1", 0))
        except (ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()

    def send(self, message: Message | bytes) -> None:
        data = message if isinstance(message, bytes) else message.serialize()
        self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class FakePbx(UdpPeer):
    """Answers INVITE (180, then 200 with SDP), re-INVITE, BYE and OPTIONS with 200."""

    def __init__(self) -> None:
        super().__init__()
        self.rtp_port = 42000
        self.answer = True

    def on_message(self, message: Message, addr: Addr) -> None:
        self.put(message, addr)
        if not isinstance(message, SipRequest) or message.method in ("ACK", "CANCEL"):
            return
        contact = [("Contact", f"<sip:agent@127.0.0.1:{self.port}>")]
        if message.method == "INVITE":
            if message.to.tag is None:
                self.send(build_response(message, 180, to_tag="pbx"), addr)
            if not self.answer:
                return
            body = ANSWER.format(port=self.rtp_port).encode()
            hdrs = [*contact, ("Content-Type", "application/sdp")]
            self.send(build_response(message, 200, to_tag="pbx", headers=hdrs, body=body), addr)
        else:
            self.send(build_response(message, 200, headers=contact), addr)
