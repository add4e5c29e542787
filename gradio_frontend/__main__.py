"""Starts the web UI.

    python -m gradio_frontend --triton-url localhost:8001 --protocol grpc [--host 127.0.0.1] [--port 7860]

Every flag has an environment default (TRITON_URL, TRITON_PROTOCOL, TRITON_TIMEOUT,
GRADIO_SERVER_NAME, GRADIO_SERVER_PORT) so the same image runs locally and in docker-compose.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from common import upload
from common.ports import DEFAULT_PORTS, PortInUseError, check_free, env_name, env_port
from gradio_frontend import uploads

# Before gradio is imported (by gradio_frontend.app, in main): gradio reads GRADIO_TEMP_DIR at import time.
uploads.activate()

from client.utils import default_url, split_scheme  # noqa: E402
from gradio_frontend.settings import DEFAULT_PROTOCOL, DEFAULT_TIMEOUT_S  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--triton-url",
        default=None,
        help="host:port of Triton's gRPC (8001) or HTTP (8000) endpoint, by --protocol [$TRITON_URL]",
    )
    p.add_argument("--protocol", choices=("grpc", "http"), default=DEFAULT_PROTOCOL, help="[$TRITON_PROTOCOL]")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request [$TRITON_TIMEOUT]")
    # Loopback by default: the demo has no authentication. Containers set GRADIO_SERVER_NAME=0.0.0.0.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="[$GRADIO_SERVER_NAME]")
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="[$GRADIO_SERVER_PORT]"
    )
    p.add_argument(
        "--serve-triton",
        action="store_true",
        help="also start a local Triton on the committed model repository first (what `make demo` does)",
    )
    args = p.parse_args(argv)
    try:
        if args.triton_url is None:  # the protocol's port, as the client chooses it ($TRITON_GRPC_PORT / _HTTP_PORT)
            args.triton_url = default_url(args.protocol)
        elif not args.serve_triton:  # checked as the client will check it: one line now, not at the first click
            split_scheme(args.triton_url)
    except ValueError as err:
        p.error(str(err))
    return args


def exit_if_ports_taken(args: argparse.Namespace) -> None:
    """One line and exit code 2 when a port is taken, before anything starts: otherwise Triton starts (its
    readiness probe may even reach the other demo's Triton) and Gradio then raises "Cannot find empty port"."""
    ports = {"GRADIO_SERVER_PORT (or --port)": args.port}
    try:
        check_free(args.host, ports)
        if args.serve_triton:
            check_free("127.0.0.1", {env_name(kind): env_port(kind) for kind in DEFAULT_PORTS})
    except PortInUseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_if_ports_taken(args)
    # Only now: importing gradio takes seconds, and --help, a bad setting or a taken port answer well before that.
    from starlette.middleware import Middleware

    from gradio_frontend.app import build_app
    from gradio_frontend.body_limit import BodyLimit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = None
    # Ctrl-C (re-armed: shells start background jobs with it ignored) and SIGTERM both end in the `finally`
    # below, which stops Triton and deletes the upload folder.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
    if args.serve_triton:
        # Imported here: the UI alone (as in its container) needs neither the launcher nor the repository.
        from serving.runtime.server import DRAIN_GRACE_S, TritonServer

        # Other callers may use this Triton too (its ports are public): stopping drains them as `make serve` does.
        server = TritonServer(drain_grace=DRAIN_GRACE_S)
    try:
        if server is not None:  # inside the try: a Ctrl-C while Triton loads stops it too
            server.start()
            print(f"Triton ready in {server.wait_ready(600):.1f} s ({server.config_name} configs)", flush=True)
            args.triton_url = server.grpc_url if args.protocol == "grpc" else server.http_url
        demo = build_app(args.triton_url, args.protocol, timeout=args.timeout)
        print(f"Web UI: http://{args.host}:{args.port} (Triton {args.protocol} at {args.triton_url})", flush=True)
        # share=False always: a public tunnel would expose the server to the internet.
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            footer_links=["api"],
            # The server takes no larger file (common/upload.py); Gradio would otherwise store any size first.
            max_file_size=upload.MAX_BYTES,
            # And no larger photo inline (pasted, webcam), nor any other body (gradio_frontend/body_limit.py).
            app_kwargs={"middleware": [Middleware(BodyLimit)]},
        )
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            uploads.remove()


if __name__ == "__main__":
    main()
