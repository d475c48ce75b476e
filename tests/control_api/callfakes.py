"""An in-memory :class:`sipproxy.callcontrol.CallControl` for the control API's unit tests.

It behaves like the protocol says (idempotent release/retrieve/stop_capture, ``KeyError``
from ``hold``/``join_provider`` for a call that is gone, ``RuntimeError`` for a second
provider leg), records every request in :attr:`FakeCallControl.requests`, and lets the test
emit events: :meth:`answer_provider`, :meth:`fail_provider`, :meth:`provider_hangs_up`,
:meth:`hang_up`, :meth:`press`. Like a real implementation may, it emits ``HoldChanged``
synchronously from inside ``hold``/``retrieve`` (the service must cope with re-entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from sipproxy.callcontrol import (
    CallControlEvent,
    CallGone,
    CallInfo,
    Digit,
    HoldChanged,
    ProviderFailed,
    ProviderJoined,
    ProviderLeft,
)


class FakeCallControl:
    def __init__(self, *, auto_answer: bool = False) -> None:
        self._calls: dict[str, CallInfo] = {}
        self._capture: set[str] = set()
        self._handlers: list[Callable[[CallControlEvent], None]] = []
        self.requests: list[tuple[str, str]] = []
        self.joined_uris: list[str] = []
        self.auto_answer = auto_answer
        self.fail: dict[str, BaseException] = {}  # method name -> exception to raise

    # -- test side

    def add_call(
        self,
        call_id: str,
        *,
        called: str = "0800100200",
        caller: str = "Ada Lovelace",
        state: Literal["ringing", "up"] = "up",
    ) -> CallInfo:
        # a fixed clock: a random time could hold a test CVV and fail the leak scans
        started = 1_765_432_100.0 + len(self._calls)
        info = CallInfo(call_id, caller, called, state, started, False, "none")
        self._calls[call_id] = info
        return info

    def emit(self, event: CallControlEvent) -> None:
        for handler in list(self._handlers):
            handler(event)

    def answer_provider(self, call_id: str) -> None:
        self._set(call_id, provider_leg="joined")
        self.emit(ProviderJoined(call_id))

    def fail_provider(
        self,
        call_id: str,
        reason: Literal["no_answer", "busy", "rejected", "error"],
        status: int | None,
    ) -> None:
        self._set(call_id, provider_leg="none")
        self.emit(ProviderFailed(call_id, reason, status))

    def provider_hangs_up(self, call_id: str) -> None:
        self._set(call_id, provider_leg="none")
        self.emit(ProviderLeft(call_id))

    def hang_up(self, call_id: str, by: Literal["caller", "agent", "proxy"] = "caller") -> None:
        self._calls.pop(call_id, None)
        self._capture.discard(call_id)
        self.emit(CallGone(call_id, by))

    def press(self, call_id: str, keys: str) -> None:
        """The caller keys ``keys``; delivered only while capture is on (as the proxy does)."""
        for key in keys:
            if call_id in self._capture:
                self.emit(Digit(call_id, key))

    def capturing(self, call_id: str) -> bool:
        return call_id in self._capture

    def held(self, call_id: str) -> bool:
        info = self._calls.get(call_id)
        return info is not None and info.held

    def names(self, call_id: str | None = None) -> list[str]:
        return [m for m, c in self.requests if call_id is None or c == call_id]

    def _set(self, call_id: str, **changes: object) -> None:
        info = self._calls.get(call_id)
        if info is not None:
            self._calls[call_id] = replace(info, **changes)  # type: ignore[arg-type]

    def _record(self, method: str, call_id: str) -> None:
        self.requests.append((method, call_id))
        exc = self.fail.get(method)
        if exc is not None:
            raise exc

    # -- CallControl

    def calls(self) -> list[CallInfo]:
        return list(self._calls.values())

    def call(self, call_id: str) -> CallInfo | None:
        return self._calls.get(call_id)

    async def join_provider(self, call_id: str, sip_uri: str, answer_timeout_s: float) -> None:
        self._record("join_provider", call_id)
        info = self._calls.get(call_id)
        if info is None or info.state != "up":
            raise KeyError(call_id)
        if info.provider_leg != "none":
            raise RuntimeError("a provider leg exists")
        self.joined_uris.append(sip_uri)
        self._set(call_id, provider_leg="joining")
        if self.auto_answer:
            asyncio.get_running_loop().call_soon(self.answer_provider, call_id)

    def release_provider(self, call_id: str) -> None:
        self._record("release_provider", call_id)
        self._set(call_id, provider_leg="none")

    def hold(self, call_id: str) -> None:
        self._record("hold", call_id)
        info = self._calls.get(call_id)
        if info is None:
            raise KeyError(call_id)
        if not info.held:
            self._set(call_id, held=True)
            self.emit(HoldChanged(call_id, True))

    def retrieve(self, call_id: str) -> None:
        self._record("retrieve", call_id)
        info = self._calls.get(call_id)
        if info is not None and info.held:
            self._set(call_id, held=False)
            self.emit(HoldChanged(call_id, False))

    def start_capture(self, call_id: str) -> None:
        self._record("start_capture", call_id)
        if call_id in self._calls:
            self._capture.add(call_id)

    def stop_capture(self, call_id: str) -> None:
        self._record("stop_capture", call_id)
        self._capture.discard(call_id)

    def subscribe(self, handler: Callable[[CallControlEvent], None]) -> None:
        self._handlers.append(handler)
