"""``flower-superlink`` with its Fleet API alone on the public address.

Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (``flwr run``,
``flwr supernode register``) and the Runtime / ServerAppIo API (its SuperExec and ServerApps) on
one HTTP listener (``--host`` / ``--port``; ``--fleet-api-address`` and ``--control-api-address``
only reach deprecated gRPC servers the 1.42 SuperNode no longer speaks to). Put on the public
address, a site could start runs and register nodes. This runs the same SuperLink (Flower's own
argument parsing, application and lifespan, same TLS and SuperNode authentication) with two
listeners on that one application:

- ``--host`` / ``--port`` (the coordinator's loopback or an address only researchers reach): every
  API, as ``flower-superlink`` serves them;
- ``--fleet-address HOST:PORT`` (the public address): the Fleet API only (``/v1/fleet/...``, the
  only paths a 1.42 SuperNode calls); anything else is answered 404 before it reaches Flower.

    python -m mmdomain_federated.split_superlink --fleet-address 203.0.113.5:9092 -- \\
        --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key \\
        --enable-supernode-auth --host 127.0.0.1 --port 9093 --database superlink.db

Everything after ``--`` is ``flower-superlink``'s own arguments. SIGTERM / SIGINT stop both
listeners (the loopback one in the main thread owns Flower's lifespan: its SuperExec, state).
Open connections get ``GRACE_SECONDS`` to finish, then are closed: a ``flwr run --stream`` client
holds its log stream open for as long as the run goes on, and uvicorn's default (wait for every
connection, however long) made SIGTERM hang while one was connected.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time

#: The path prefix of the Fleet API (``flwr.superlink.routers.fleet.router``); the 1.42 SuperNode
#: calls nothing else (``flwr.supernode.fleet_http_client``).
FLEET_PREFIX = "/v1/fleet/"
GRACE_SECONDS = 3  # uvicorn's timeout_graceful_shutdown: then streaming connections are cut


class FleetOnly:
    """ASGI wrapper: HTTP requests under ``FLEET_PREFIX`` go to the app, everything else gets 404."""

    def __init__(self, app, prefix: str = FLEET_PREFIX):
        self.app, self.prefix = app, prefix

    def allowed(self, path: str) -> bool:
        return path.startswith(self.prefix) and "/../" not in path + "/" and "//" not in path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan: owned by the main listener
            return
        body = b"not found: this address serves the Fleet API only\n"
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 203.0.113.5:9092), got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m mmdomain_federated.split_superlink",
                                     description="flower-superlink with the Fleet API alone on the public address "
                                                 "(arguments after -- go to flower-superlink)")
    parser.add_argument("--fleet-address", type=parse_host_port, required=True,
                        help="HOST:PORT of the public Fleet-only listener")
    args = parser.parse_args(ours)

    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    fs = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module (the package exports the function)
    from flwr.superlink.main import create_app

    sys.argv = ["flower-superlink", *rest]
    config = fs._parse_superlink_lifespan_config()  # Flower's parsing and checks (TLS + auth, etc.)
    if config.simulation:
        parser.error("--simulation has no Fleet API to put on a public address")
    if (args.fleet_address[0], args.fleet_address[1]) == (config.host, config.port):
        parser.error("--fleet-address must differ from --host:--port (the listener serving every API)")
    app = create_app(config, fs.SuperLinkLifespan)
    log_config = get_uvicorn_log_config(console_handler.level)
    tls = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile}
    public = uvicorn.Server(uvicorn.Config(FleetOnly(app), host=args.fleet_address[0], port=args.fleet_address[1],
                                           lifespan="off", access_log=True, log_config=log_config, workers=1,
                                           timeout_graceful_shutdown=GRACE_SECONDS, **tls))
    thread = threading.Thread(target=public.run, name="fleet-public-listener", daemon=True)
    thread.start()  # not the main thread: no signal handlers of its own; stopped below
    while thread.is_alive() and not public.started:
        time.sleep(0.05)
    if not public.started:  # uvicorn logged why (address in use, not an address of this machine)
        sys.exit(f"cannot listen on {args.fleet_address[0]}:{args.fleet_address[1]} (the Fleet API's address)")
    try:
        uvicorn.run(app=app, host=config.host, port=config.port, reload=False, access_log=True,
                    log_config=log_config, workers=1, timeout_graceful_shutdown=GRACE_SECONDS, **tls)
    finally:
        public.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
