"""`python -m tinyfaas_std`: read the settings, start the core and the HTTP server, stop cleanly on a signal."""

from __future__ import annotations

import ipaddress
import logging
import ssl
import sys
import threading

from . import client, serve_one, users
from .config import DEFAULT_PASSWORD, parse_config
from .faas import FunctionManager
from .httpd import make_server, stop_on_signals
from .sandbox import SandboxUnavailable, report_isolation
from .status import Sampler

log = logging.getLogger("tinyfaas_std")

ANSWER_GRACE = 2.0  # seconds for answers to calls that ended at shutdown (their workers stopped) to go out
JANITOR_INTERVAL = 5.0  # seconds between sweeps: idle workers, drained old versions, unused venvs


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        manager = FunctionManager(config)
    except SandboxUnavailable as exc:
        log.error("%s", exc)
        return 2
    sampler = Sampler(manager.worker_pids, isolation=manager.sandbox.isolation.public())
    try:
        server = make_server(config, manager, sampler)
    except ssl.SSLError as exc:  # a certificate or key that does not load
        log.error("--tls-cert/--tls-key: %s", exc)
        manager.close(0)
        return 2
    stopping = stop_on_signals(server, config.grace)

    def janitor() -> None:
        while not stopping.wait(JANITOR_INTERVAL):
            manager.reap_idle_workers()
            manager.collect_garbage()

    threading.Thread(target=janitor, name="janitor", daemon=True).start()  # before the line that says we serve
    host, port = server.socket.getsockname()[:2]
    scheme = "https" if config.tls_cert else "http"
    print(f"tinyfaas_std serving on {scheme}://{host}:{port} ({len(manager.names())} functions)", flush=True)
    if not config.tls_cert and not _is_loopback(config.host):
        log.warning("Basic Auth over plain HTTP on a non-loopback address: passwords cross the network in the "
                    "clear; serve HTTPS with --tls-cert/--tls-key or behind a TLS proxy")
    if config.password == DEFAULT_PASSWORD and not _is_loopback(config.host):
        log.warning("the default password is in use on a non-loopback address: set --password or "
                    "TINYFAAS_PASSWORD")
    report_isolation(manager.sandbox.isolation, "the server")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        manager.close(config.grace)
        server.wait_idle(ANSWER_GRACE)
        sampler.stop()
        server.server_close()
        log.info("stopped")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """`tinyfaas` and `python -m tinyfaas_std`: a client verb first runs the client (SPEC 12); `serve-one DIR` serves
    an exported function (SPEC 14); `serve`, no verb or only flags serve."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        return users.cli(argv[1:])
    if argv[:1] == ["serve-one"]:
        return serve_one.main(argv[1:])
    if argv and argv[0] in client.NAMES:
        return client.main(argv)
    return main(argv[1:] if argv[:1] == ["serve"] else argv)


if __name__ == "__main__":
    sys.exit(cli())
