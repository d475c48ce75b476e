"""``dtmfmask-proxy``: everything one dtmfmask node runs, in one asyncio process.

- the SIP B2BUA and the media relay (:class:`sipproxy.app.Proxy`, the file's ``proxy:``);
- the payment service and the control API on ``payments.api.listen`` (``payments:``), with
  ``/metrics`` holding the proxy's and the payments' figures;
- the embedded sandbox provider (:class:`~control_api.sandbox_ua.SandboxUA`) for each
  ``type: sandbox`` provider whose ``sip_uri`` is on a loopback address, so the demo and
  tests need no outside service. A sandbox on another host is dialled, not started.

Both sections are validated before anything binds: every problem is printed, naming file,
line and key, and the exit status is 2. SIGTERM or SIGINT: live payment sessions end
``interrupted`` (provider released, caller retrieved), then the proxy drains. SIGHUP: the
``payments:`` section is read again; a bad file keeps the running configuration.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see sipproxy.app
os.environ.setdefault("OMP_NUM_THREADS", "1")

import asyncio
import contextlib
import ipaddress
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from control_api.api import make_app
from control_api.hostedpage import add_hosted_page
from control_api.panel import add_panel
from control_api.profiles import PaymentsConfig, load_payments
from control_api.sandbox_ua import SandboxUA
from control_api.service import PaymentService, ServiceError
from control_api.storage import Storage
from sipproxy.app import Proxy, command_line, complain, serve, stop_on_signals
from sipproxy.callcontrol import ProxyCallControl
from sipproxy.config import Config, ConfigError, load_config
from sipproxy.metrics import CONTENT_TYPE
from sipproxy.providerleg import provider_target
from sipproxy.server import bind_error

__all__ = ["Node", "main", "run"]

log = structlog.get_logger("control_api.node")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Node:
    """The proxy, the payment service, the control API and embedded sandbox providers."""

    def __init__(self, proxy_config: Config, payments: PaymentsConfig) -> None:
        self.proxy = Proxy(proxy_config)
        self.calls = ProxyCallControl(self.proxy.sip)
        self.storage = Storage(payments.storage.path, now=time.time())
        self.service = PaymentService(payments, self.calls, self.storage)
        self.proxy.registry.register(self.service.collect)
        self.app = make_app(self.service)
        self.app.router.add_get("/metrics", self._metrics)
        page = add_hosted_page(self.app, self.service)
        self.proxy.registry.register(page.collect)
        add_panel(self.app)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        self.api_port = 0
        # one UA per address: providers that differ only in the URI's user part (the
        # sandbox's behaviours: busy, noanswer...) share it
        sandboxes: dict[tuple[str, int], SandboxUA] = {}
        for provider in payments.providers.values():
            if provider.type != "sandbox":
                continue
            _, (host, port) = provider_target(provider.sip_uri)
            if _is_loopback(host) and (host, port) not in sandboxes:
                sandboxes[host, port] = SandboxUA(host, port)
        self.sandboxes = list(sandboxes.values())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.proxy.registry.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        await self.proxy.start()
        started: list[SandboxUA] = []
        try:
            for ua in self.sandboxes:
                try:
                    await ua.start()
                except OSError as exc:
                    raise bind_error("sandbox provider SIP", ua.host, ua.port, exc) from exc
                started.append(ua)
            self.service.start()
            listen = self.service.config.api.listen
            await self._runner.setup()
            site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise bind_error("control API", listen.host, listen.port, exc) from exc
        except BaseException:
            await self.service.stop()
            await self._runner.cleanup()
            for ua in started:
                await ua.close()
            await self.proxy.stop(grace_s=0)
            self.storage.close()
            raise
        for addr in self._runner.addresses:
            if isinstance(addr, tuple):
                self.api_port = int(addr[1])
                break
        # payment links point at the port actually bound (api.listen may say 0)
        self.service.api_bound(listen.host, self.api_port)
        log.info("control api ready", host=listen.host, port=self.api_port)

    async def stop(self, grace_s: float | None = None) -> None:
        # sessions first: their ends retrieve callers and release provider legs over SIP,
        # which the proxy must still be running to send
        await self.service.stop()
        await self._runner.cleanup()
        await self.proxy.stop(grace_s)
        for ua in self.sandboxes:
            await ua.close()
        self.storage.close()

    def reload(self) -> None:
        """SIGHUP: read the payments section again (a bad file is logged and ignored)."""
        try:
            self.service.reload_file()
        except ValueError:
            pass  # a bad file: the service logged every problem; the old config stays
        except ServiceError as exc:  # no file to read (the embedded defaults run)
            log.warning("SIGHUP ignored", reason=exc.message)


async def run(
    proxy_config: Config, payments: PaymentsConfig, *, ready: asyncio.Event | None = None
) -> int:
    node = Node(proxy_config, payments)
    await node.start()
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, node.reload)
    if ready is not None:
        ready.set()
    sip = node.proxy.sip
    print(
        f"dtmfmask-proxy: ready sip={proxy_config.sip.listen}:{sip.udp_port} "
        f"api=http://{payments.api.listen.host}:{node.api_port}/v1",
        flush=True,
    )
    await stop.wait()
    log.info("draining", grace_s=proxy_config.drain_grace_s, calls=len(node.proxy.b2bua.calls))
    await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = command_line(argv, __doc__.splitlines()[0])
    problems: list[str] = []
    proxy_config: Config | None = None
    payments: PaymentsConfig | None = None
    try:
        proxy_config = load_config(args.config)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        payments = load_payments(Path(args.config) if args.config else None)
    except (ConfigError, ValueError) as exc:
        problems.append(str(exc))
    if problems or proxy_config is None or payments is None:
        for problem in problems:
            complain(problem)
        return 2
    return serve(lambda: run(proxy_config, payments), args.log_format)


if __name__ == "__main__":
    raise SystemExit(main())
